import os
import re

import pytest

from sphincter_lib.relay import config
from sphincter_lib.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_defaults():
    s = config.defaults()
    assert (s.tcp_host, s.tcp_port, s.ws_host, s.ws_port) == ("0.0.0.0", 9000, "0.0.0.0", 8080)
    assert s.framing == "lines" and s.max_message_bytes == 1 << 20
    assert s.banner is True and s.config is None


def test_precedence_cli_over_env_over_file_over_default(tmp_path):
    conf = tmp_path / "s.conf"
    conf.write_text("tcp-port = 1111\nws-port = 2222\nframing = raw\n# a comment\n")
    env = {"SPHINCTER_TCP_PORT": "3333", "SPHINCTER_WS_PORT": "4444"}
    s = config.parse(["-c", str(conf), "--tcp-port", "5555"], env=env)
    assert s.tcp_port == 5555          # CLI beats env
    assert s.ws_port == 4444           # env beats file
    assert s.framing == "raw"          # file beats default
    assert s.max_rooms == 1000         # default
    s = config.parse([], env={"SPHINCTER_CONFIG": str(conf)})
    assert s.tcp_port == 1111 and s.config == str(conf)


@pytest.mark.parametrize("argv,env,needle", [
    (["--tcp-port", "abc"], {}, "--tcp-port"),
    (["--tcp-port", "70000"], {}, "--tcp-port"),
    (["--ws-port", "-1"], {}, "--ws-port"),
    (["--max-message-bytes", "-5"], {}, "--max-message-bytes"),
    (["--max-message-bytes", "0"], {}, "--max-message-bytes"),
    (["--max-rooms", "0"], {}, "--max-rooms"),
    (["--framing", "json"], {}, "--framing"),
    (["--banner", "maybe"], {}, "--banner"),
    (["--ping-timeout", "0"], {}, "--ping-timeout"),
    (["--trusted-proxies", "10.0.0.0/33"], {}, "--trusted-proxies"),
    (["--log-level", "loud"], {}, "--log-level"),
    ([], {"SPHINCTER_TCP_PORT": "nope"}, "--tcp-port"),
    (["--max-message-bytes", "2MiB", "--subscriber-buffer-bytes", "1MiB"], {}, "--subscriber-buffer-bytes"),
    (["--max-client-message-bytes", "lots"], {}, "--max-client-message-bytes"),
    (["--max-client-message-bytes", "0"], {}, "--max-client-message-bytes"),
    ([], {"SPHINCTER_MAX_CLIENT_MESSAGE_BYTES": "-1"}, "--max-client-message-bytes"),
    (["--no-such-option"], {}, "--no-such-option"),
    (["--source-proxy-protocol", "maybe"], {}, "--source-proxy-protocol"),
    ([], {"SPHINCTER_SOURCE_PROXY_PROTOCOL": "2"}, "--source-proxy-protocol"),
    (["--source-proxy-protocol", "on", "--trusted-proxies", ""], {}, "--source-proxy-protocol"),
    (["--redis-sentinels", "a:0", "--redis-sentinel-master", "m"], {}, "--redis-sentinels"),
    (["--redis-sentinels", "[::1", "--redis-sentinel-master", "m"], {}, "--redis-sentinels"),
    (["--redis-sentinels", "a:26379"], {}, "--redis-sentinels: needs --redis-sentinel-master"),
    ([], {"SPHINCTER_REDIS_SENTINEL_MASTER": "m"}, "--redis-sentinel-master: needs --redis-sentinels"),
    (["--redis-sentinels", "a", "--redis-sentinel-master", "bad name"], {}, "--redis-sentinel-master"),
])
def test_bad_values_name_the_option(argv, env, needle):
    with pytest.raises(ConfigError) as info:
        config.parse(argv, env=env)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_bad_config_file_key_and_missing_file(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("tcp-prot = 1\n")
    with pytest.raises(ConfigError, match="tcp-prot"):
        config.parse(["-c", str(conf)], env={})
    with pytest.raises(ConfigError, match="missing.conf"):
        config.parse(["-c", str(tmp_path / "missing.conf")], env={})


def test_bad_client_message_size_is_one_line_naming_the_option_and_auto():
    with pytest.raises(ConfigError) as info:
        config.parse(["--max-client-message-bytes", "big"], env={})
    assert str(info.value) == ("argument --max-client-message-bytes: invalid size 'big' "
                               "(e.g. 65536, 64KiB, 1MiB or auto)")


def limits(argv, env=None, conf=None):
    """(read-only subscriber's limit, writer's limit) as parsed from ``argv``/``env``/``conf``."""
    s = config.parse(argv + (["-c", conf] if conf else []), env=env or {})
    return s.client_message_limit(False), s.client_message_limit(True)


def test_client_message_limits_auto_follows_framing_and_role():
    assert config.defaults().max_client_message_bytes == 0           # 'auto'
    assert limits([]) == (4096, 4096)                                 # lines
    assert limits(["--framing", "raw"]) == (4096, 1 << 20)            # raw: writers get 1MiB
    assert limits(["--framing", "raw", "--max-message-bytes", "64KiB"]) == (4096, 64 << 10)
    assert limits(["--framing", "raw", "--max-client-message-bytes", "AUTO"]) == (4096, 1 << 20)
    s = config.with_overrides(config.defaults(), framing="raw", max_message_bytes=8 << 10)
    assert (s.client_message_limit(False), s.client_message_limit(True)) == (4096, 8 << 10)


def test_client_message_limit_set_explicitly_always_wins(tmp_path):
    conf = tmp_path / "s.conf"
    conf.write_text("framing = raw\nmax-client-message-bytes = 2KiB\n")
    raw = ["--framing", "raw"]
    assert limits(raw + ["--max-client-message-bytes", "4KiB"]) == (4096, 4096)
    assert limits(raw, env={"SPHINCTER_MAX_CLIENT_MESSAGE_BYTES": "16KiB"}) == (16 << 10, 16 << 10)
    assert limits([], conf=str(conf)) == (2048, 2048)
    assert limits(["--max-client-message-bytes", "8MiB"]) == (8 << 20, 8 << 20)     # lines too
    # flag over env over file, as for every option
    assert limits(["--max-client-message-bytes", "auto"], env={"SPHINCTER_MAX_CLIENT_MESSAGE_BYTES": "16KiB"},
                  conf=str(conf)) == (4096, 1 << 20)
    assert limits([], env={"SPHINCTER_MAX_CLIENT_MESSAGE_BYTES": "16KiB"}, conf=str(conf)) == (16 << 10,) * 2


@pytest.mark.parametrize("text,value", [("65536", 65536), ("64KiB", 65536), ("1MiB", 1 << 20),
                                        ("1m", 1 << 20), ("1MB", 10 ** 6), ("2 GiB", 2 << 30)])
def test_sizes(text, value):
    assert config.size(text) == value


def test_help_shows_every_option_with_env_var_and_default():
    text = config.build_parser().format_help()
    flat = " ".join(text.split())
    for opt in config.OPTIONS:
        assert opt.flag in text and opt.env in flat
    assert "SPHINCTER_CONFIG" in flat
    assert "(default: 9000)" in flat


def test_example_config_names_every_option_and_parses():
    path = os.path.join(ROOT, "conf", "sphincter.conf")
    text = open(path).read()
    for opt in config.OPTIONS:
        assert re.search(r"^# %s = " % re.escape(opt.name), text, re.M), opt.name
    # uncommented, the example is a valid config equal to the defaults
    active = tmp = "\n".join(line[2:] for line in text.splitlines() if re.match(r"^# [a-z-]+ = ", line))
    cfg = os.path.join(os.environ.get("TMPDIR", "/tmp"), "sphincter-example-%d.conf" % os.getpid())
    with open(cfg, "w") as f:
        f.write(tmp)
    try:
        assert config.parse(["-c", cfg], env={}) == config.Settings(config=cfg, **{
            k: v for k, v in vars(config.defaults()).items() if k != "config"})
    finally:
        os.unlink(cfg)
    assert active


def test_readme_option_table_lists_every_option():
    text = open(os.path.join(ROOT, "README.md")).read()
    for opt in config.OPTIONS:
        assert "| `%s` | `%s` | `%s` |" % (opt.flag, opt.env, opt.name) in text, opt.name


def test_settings_are_read_only_values():
    """Plain classes (CPython 3.6 has no dataclasses), still frozen and compared by value."""
    s = config.defaults()
    with pytest.raises(AttributeError):
        s.tcp_port = 1
    with pytest.raises(AttributeError):
        del s.tcp_port
    t = config.with_overrides(s, tcp_port=1)
    assert (t.tcp_port, s.tcp_port) == (1, 9000) and t != s
    assert config.with_overrides(t, tcp_port=9000) == s and not s.check_config
    with pytest.raises(ConfigError):
        config.with_overrides(s, subscriber_buffer_bytes=1)
    with pytest.raises(TypeError):
        config.Settings(tcp_port=1)


def test_source_proxy_protocol_option(tmp_path):
    assert config.defaults().source_proxy_protocol is False
    assert config.parse(["--source-proxy-protocol", "on"], env={}).source_proxy_protocol is True
    assert config.parse([], env={"SPHINCTER_SOURCE_PROXY_PROTOCOL": "on"}).source_proxy_protocol is True
    conf = tmp_path / "s.conf"
    conf.write_text("source-proxy-protocol = on\n")
    assert config.parse(["-c", str(conf)], env={}).source_proxy_protocol is True
    with pytest.raises(ConfigError) as info:
        config.parse(["--source-proxy-protocol", "yes please"], env={})
    assert str(info.value) == ("argument --source-proxy-protocol: invalid boolean 'yes please' "
                               "(use on/off, true/false, yes/no)")


def test_source_proxy_protocol_is_not_for_a_tls_source_port(tmp_path):
    """Checked before the certificate is loaded: the files need not exist."""
    s = config.Settings(**dict(vars(config.defaults()), source_tls_cert=str(tmp_path / "c.pem"),
                               source_tls_key=str(tmp_path / "k.pem"), source_proxy_protocol=True))
    with pytest.raises(ConfigError) as info:
        config.check(s)
    message = str(info.value)
    assert message.startswith("argument --source-proxy-protocol: not with --source-tls-cert")
    assert "\n" not in message


def test_sentinel_options_from_flags_env_and_file(tmp_path):
    s = config.parse(["--redis-sentinels", "a:1, b", "--redis-sentinel-master", "mymaster"], env={})
    assert s.redis_sentinels == (("a", 1), ("b", 26379)) and s.redis_sentinel_master == "mymaster"
    env = {"SPHINCTER_REDIS_SENTINELS": "[::1]:5", "SPHINCTER_REDIS_SENTINEL_MASTER": "m",
           "SPHINCTER_REDIS_SENTINEL_PASSWORD": "pw"}
    s = config.parse([], env=env)
    assert s.redis_sentinels == (("::1", 5),) and s.redis_sentinel_password == "pw"
    conf = tmp_path / "s.conf"
    conf.write_text("redis-sentinels = h:2\nredis-sentinel-master = m\n")
    assert config.parse(["-c", str(conf)], env={}).redis_sentinels == (("h", 2),)
    assert config.parse([], env={}).redis_sentinels == ()
