"""``sphincter connect --relay`` (agent/options.py): HOST:PORT of the source port, or a ws:// /
wss:// URL of the relay's HTTP port made into its source-link URL (``/ws?source=1``); ``--proxy``
and the proxy variables apply to a URL only; every error is one line naming the option."""

import pytest

from sphincter_lib.agent import options
from sphincter_lib.errors import ConfigError
from sphincter_lib.proto.httpconnect import parse_proxy_url


def parse(*argv, env=None):
    return options.parse(["--from", "tcp:127.0.0.1:5900"] + list(argv), env or {})


@pytest.mark.parametrize("given, url", [
    ("wss://relay.example.org/", "wss://relay.example.org/ws?source=1"),
    ("wss://relay.example.org", "wss://relay.example.org/ws?source=1"),
    ("WS://h:8080", "ws://h:8080/ws?source=1"),
    ("wss://h/sphincter/", "wss://h/sphincter/ws?source=1"),
    ("wss://h/custom/path?x=1", "wss://h/custom/path?x=1&source=1"),
    ("ws://h?a=b", "ws://h/ws?a=b&source=1"),
    ("ws://[::1]:80/ws?source=1", "ws://[::1]:80/ws?source=1"),
])
def test_source_url(given, url):
    assert options.source_url(given) == url


@pytest.mark.parametrize("given, host, port", [
    ("wss://relay.example.org/", "relay.example.org", 443),
    ("ws://relay.example.org/", "relay.example.org", 80),
    ("ws://127.0.0.1:8080/ws", "127.0.0.1", 8080),
])
def test_a_url_relay(given, host, port):
    ns = parse("--relay", given)
    assert tuple(ns.relay) == (host, port)
    assert ns.relay_url == options.source_url(given)
    assert ns.proxy is None


def test_a_tcp_relay_stays_as_it_was():
    ns = parse("--relay", "relay.example.org:9000", env={"HTTPS_PROXY": "http://p:3128"})
    assert tuple(ns.relay) == ("relay.example.org", 9000)
    assert (ns.relay_url, ns.proxy) == (None, None)


@pytest.mark.parametrize("argv, env, proxy, source", [
    (["--proxy", "http://u:p@p:3128"], {}, "http://u:p@p:3128", "--proxy"),
    ([], {"HTTPS_PROXY": "http://p:3128"}, "http://p:3128", "HTTPS_PROXY"),
    ([], {"https_proxy": "http://p:3128"}, "http://p:3128", "https_proxy"),
    ([], {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": ".example.org"}, None, ""),
    (["--proxy", "direct"], {"HTTPS_PROXY": "http://p:3128"}, None, "--proxy direct"),
])
def test_the_proxy_of_a_wss_relay(argv, env, proxy, source):
    ns = parse("--relay", "wss://relay.example.org/", *argv, env=env)
    assert ns.proxy == (parse_proxy_url(proxy) if proxy else None)
    assert ns.proxy_source == source


@pytest.mark.parametrize("argv, needle", [
    (["--relay", "wss://:443/"], "argument --relay: no host"),
    (["--relay", "ws://h:0/"], "argument --relay: invalid port"),
    (["--relay", "https://h/"], "argument --relay: expected HOST:PORT, ws://"),
    (["--relay", "wss://h/#frag"], "argument --relay: no fragment"),
    (["--relay", "h:9000", "--proxy", "http://p:3128"], "argument --proxy: only with --relay ws://"),
    (["--relay", "ws://h/", "--tls"], "argument --tls: with a WebSocket relay, use --relay wss://"),
    (["--relay", "wss://h/", "--proxy", "ftp://p"], "argument --proxy"),
    (["--relay", "wss://h/", "--tls-server-name", "x"], "argument --tls-server-name: not with"),
])
def test_errors_name_the_option(argv, needle):
    with pytest.raises(ConfigError) as info:
        parse(*argv)
    assert needle in str(info.value) and "\n" not in str(info.value)
