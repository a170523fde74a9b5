"""``sphincter pipe``'s options (agent/pipe_options.py): values, one-line errors naming the
option, the proxy from the environment, and the README's table in step with the declarations."""

import os
import re

import pytest

from sphincter_lib.agent import pipe_options
from sphincter_lib.errors import ConfigError
from sphincter_lib.proto.httpconnect import parse_proxy_url

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
URL = "wss://relay.example.org/ws?room=ssh&key=K"


def parse(*argv, env=None):
    return pipe_options.parse(list(argv), env or {})


def test_defaults():
    ns = parse(URL)
    assert (ns.url, ns.listen, ns.headers, ns.proxy, ns.tls_ca) == (URL, None, (), None, "")
    assert (ns.connect_timeout, ns.close_timeout, ns.read_size) == (10.0, 10.0, 64 * 1024)
    assert (ns.max_message_bytes, ns.log_level) == (16 << 20, "warning")


@pytest.mark.parametrize("argv,env,attr,value", [
    (["--listen", "127.0.0.1:2000"], {}, "listen", ("127.0.0.1", 2000)),
    (["--listen", "[::1]:0"], {}, "listen", ("::1", 0)),
    ([], {"SPHINCTER_PIPE_LISTEN": "localhost:22"}, "listen", ("localhost", 22)),
    (["--header", "Authorization: Bearer x y", "--header", "Cookie:a=1"], {}, "headers",
     (("Authorization", "Bearer x y"), ("Cookie", "a=1"))),
    ([], {"SPHINCTER_PIPE_HEADER": "X-A: 1"}, "headers", (("X-A", "1"),)),
    ([], {"SPHINCTER_PIPE_HEADER": "[X-A: 1, X-B: 2]"}, "headers", (("X-A", "1"), ("X-B", "2"))),
    (["--read-size", "1MiB"], {}, "read_size", 1 << 20),
    (["--close-timeout", "0.5"], {}, "close_timeout", 0.5),
    (["--proxy", "http://p:3128"], {}, "proxy", parse_proxy_url("http://p:3128")),
    (["--proxy", "direct"], {"HTTPS_PROXY": "http://p:3128"}, "proxy", None),
    ([], {"HTTPS_PROXY": "http://p:3128"}, "proxy", parse_proxy_url("http://p:3128")),
    ([], {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": ".example.org"}, "proxy", None),
    ([], {"HTTP_PROXY": "http://p:3128"}, "proxy", None),        # wss: only HTTPS_PROXY
])
def test_values(argv, env, attr, value):
    assert getattr(parse(URL, *argv, env=env), attr) == value


def test_the_proxy_says_where_it_came_from():
    assert parse(URL, env={"https_proxy": "http://p:1"}).proxy_source == "https_proxy"
    assert parse(URL, "--proxy", "http://p:1").proxy_source == "--proxy"
    assert parse("ws://h/ws", env={"HTTP_PROXY": "http://p:1"}).proxy_source == "HTTP_PROXY"


@pytest.mark.parametrize("argv,env,needle", [
    ([], {}, "URL"),
    (["http://h/ws"], {}, "argument URL: not a ws:// or wss:// URL"),
    ([URL, "--listen", "2000"], {}, "argument --listen"),
    ([URL, "--listen", "h:99999"], {}, "argument --listen"),
    ([URL, "--header", "Authorization"], {}, "argument --header"),
    ([URL, "--header", "Bad Name: x"], {}, "argument --header"),
    ([URL, "--header", "Upgrade: h2c"], {}, "argument --header: header 'Upgrade' is the handshake's own"),
    ([URL, "--header", "X: a\rb"], {}, "argument --header"),
    ([URL, "--proxy", "https://p:1"], {}, "argument --proxy: unsupported proxy scheme"),
    ([URL, "--tls-ca", "/nonexistent.pem"], {}, "argument --tls-ca: no such file"),
    ([URL, "--read-size", "0"], {}, "argument --read-size"),
    ([URL, "--read-size", "2MiB"], {}, "argument --read-size: at most"),
    ([URL, "--connect-timeout", "0"], {}, "argument --connect-timeout"),
    ([URL, "--log-level", "loud"], {}, "argument --log-level"),
    ([URL], {"SPHINCTER_PIPE_CLOSE_TIMEOUT": "soon"}, "--close-timeout"),
    ([URL], {"HTTPS_PROXY": "socks5://p:1080"}, "environment variable HTTPS_PROXY: unsupported"),
    ([URL, "--proxy", "http://u:s3cret@p:1/x"], {}, "u:***@"),
])
def test_errors_are_one_line_naming_the_option(argv, env, needle):
    with pytest.raises(ConfigError) as info:
        parse(*argv, env=env)
    text = str(info.value)
    assert needle in text and "\n" not in text and "s3cret" not in text, text


def test_tls_ca_only_with_wss(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert parse(URL, "--tls-ca", str(ca)).tls_ca == str(ca)
    with pytest.raises(ConfigError, match="--tls-ca: only with a wss:// URL"):
        parse("ws://h/ws", "--tls-ca", str(ca))


def test_the_readme_table_lists_every_option_with_its_env_var_and_default():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("### `sphincter pipe`"):]
    section = section[:section.index("\n## ")]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(--[a-z-]+)`.*$", section, re.M)}
    for opt in pipe_options.OPTIONS:
        flag = "--" + opt.name
        row = rows.get(flag) or next((r for r in rows.values() if "`%s`" % flag in r), None)
        assert row, "README: no row for %s" % flag
        env = "SPHINCTER_PIPE_" + opt.name.upper().replace("-", "_")
        assert env in row or "..._" + env.rsplit("_", 1)[1] in row, (flag, row)
        if opt.default not in ("", None):
            assert "`%s`" % opt.default in row, (flag, row)
