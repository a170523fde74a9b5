"""HTTP CONNECT through a proxy (proto/httpconnect.py): proxy URLs, the environment and
NO_PROXY, the request, and the answer fed whole, split at every offset and byte by byte."""

import base64

import pytest

from sphincter_lib.proto.httpconnect import (ConnectResponse, Proxy, ProxyError, bypass,
                                             connect_request, parse_proxy_url, proxy_from_env)


def basic(user, password):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


#: (text, host, port, Proxy-Authorization)
PROXY_URLS = [
    ("http://proxy.example:3128", "proxy.example", 3128, None),
    ("http://proxy.example:3128/", "proxy.example", 3128, None),
    ("HTTP://proxy.example", "proxy.example", 80, None),
    ("proxy.example:8080", "proxy.example", 8080, None),
    ("http://10.0.0.1:3128", "10.0.0.1", 3128, None),
    ("http://[2001:db8::1]:3128", "2001:db8::1", 3128, None),
    ("http://[2001:db8::1]", "2001:db8::1", 80, None),
    ("http://alice:s3cret@proxy:3128", "proxy", 3128, basic("alice", "s3cret")),
    ("http://alice%40corp:p%3Ass@proxy:3128", "proxy", 3128, basic("alice@corp", "p:ss")),
    ("http://alice@proxy:3128", "proxy", 3128, basic("alice", "")),
    ("  http://proxy:1  ", "proxy", 1, None),
]


@pytest.mark.parametrize("text,host,port,auth", PROXY_URLS)
def test_proxy_urls(text, host, port, auth):
    p = parse_proxy_url(text)
    assert (p.host, p.port, p.auth) == (host, port, auth)


@pytest.mark.parametrize("text,needle", [
    ("https://proxy:3128", "unsupported proxy scheme 'https'"),
    ("socks5://proxy:1080", "unsupported proxy scheme"),
    ("http://proxy:0", "invalid proxy port"),
    ("http://proxy:70000", "invalid proxy port"),
    ("http://proxy:abc", "invalid proxy port"),
    ("http://", "no proxy host"),
    ("http://:3128", "no proxy host"),
    ("http://proxy:3128/path", "no path"),
    ("http://[::1", "invalid proxy address"),
    ("http://alice:s3cret@proxy:3128/x", "alice:***@"),
])
def test_bad_proxy_urls_say_why_and_never_show_the_password(text, needle):
    with pytest.raises(ValueError) as info:
        parse_proxy_url(text)
    assert needle in str(info.value)
    assert "s3cret" not in str(info.value)


def test_the_url_kept_for_messages_hides_the_password():
    assert parse_proxy_url("http://alice:s3cret@proxy:3128").url == "http://alice:***@proxy:3128"
    assert parse_proxy_url("http://proxy:3128").url == "http://proxy:3128"


#: (host, port, NO_PROXY, bypassed)
BYPASS = [
    ("relay.example.org", 443, "", False),
    ("relay.example.org", 443, "*", True),
    ("relay.example.org", 443, "example.org", True),
    ("relay.example.org", 443, ".example.org", True),
    ("example.org", 443, ".example.org", True),
    ("relay.example.org", 443, "ample.org", False),
    ("relay.example.org", 443, "other.org, example.org", True),
    ("relay.example.org", 443, "other.org example.org", True),
    ("relay.example.org", 443, "example.org:443", True),
    ("relay.example.org", 443, "example.org:8443", False),
    ("RELAY.Example.ORG.", 443, "example.org", True),
    ("127.0.0.1", 8080, "127.0.0.1", True),
    ("127.0.0.1", 8080, "localhost", False),
    ("10.1.2.3", 80, "10.0.0.0/8", True),
    ("11.1.2.3", 80, "10.0.0.0/8", False),
    ("::1", 80, "::1", True),             # a bare v6 address: no port read from it
    ("::1", 80, "[::1]", True),
    ("::1", 80, "[::1]:80", True),
    ("::1", 80, "::/0", True),
    ("relay.example.org", 80, "10.0.0.0/8", False),
    ("relay.example.org", 80, "not/a/net", False),
]


@pytest.mark.parametrize("host,port,no_proxy,bypassed", BYPASS)
def test_no_proxy(host, port, no_proxy, bypassed):
    assert bypass(host, port, no_proxy) is bypassed


#: (tls, env, the variable that applies, or None)
ENV = [
    (True, {}, None),
    (True, {"HTTPS_PROXY": "http://p:1"}, "HTTPS_PROXY"),
    (True, {"https_proxy": "http://p:1"}, "https_proxy"),
    (True, {"https_proxy": "http://p:1", "HTTPS_PROXY": "http://q:2"}, "https_proxy"),
    (True, {"HTTP_PROXY": "http://p:1"}, None),            # wss uses only HTTPS_PROXY
    (False, {"HTTP_PROXY": "http://p:1"}, "HTTP_PROXY"),
    (False, {"http_proxy": "http://p:1"}, "http_proxy"),
    (False, {"HTTPS_PROXY": "http://p:1"}, None),
    (True, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.org"}, None),
    (True, {"HTTPS_PROXY": "http://p:1", "no_proxy": "*"}, None),
    (True, {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "other.org"}, "HTTPS_PROXY"),
    (True, {"HTTPS_PROXY": "   "}, None),
]


@pytest.mark.parametrize("tls,env,which", ENV)
def test_proxy_from_env(tls, env, which):
    found = proxy_from_env(tls, "relay.example.org", 443, env)
    if which is None:
        assert found is None
    else:
        assert found[0] == which
        assert found[1] == parse_proxy_url(env[which])


def test_a_bad_env_proxy_names_the_variable():
    with pytest.raises(ValueError) as info:
        proxy_from_env(True, "relay", 443, {"HTTPS_PROXY": "socks5://p:1"})
    assert str(info.value).startswith("HTTPS_PROXY: unsupported proxy scheme")


@pytest.mark.parametrize("host,port,auth,expected", [
    ("relay.example.org", 443, None,
     b"CONNECT relay.example.org:443 HTTP/1.1\r\nHost: relay.example.org:443\r\n\r\n"),
    ("2001:db8::1", 8080, None, b"CONNECT [2001:db8::1]:8080 HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n"),
    ("r", 1, "Basic YTpi", b"CONNECT r:1 HTTP/1.1\r\nHost: r:1\r\nProxy-Authorization: Basic YTpi\r\n\r\n"),
])
def test_connect_request(host, port, auth, expected):
    assert connect_request(host, port, auth) == expected


#: (the proxy's answer, status, rest)
ANSWERS = [
    (b"HTTP/1.1 200 Connection established\r\n\r\n", 200, b""),
    (b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n", 200, b""),
    (b"HTTP/1.1 200 OK\r\n\r\n\x16\x03\x01", 200, b"\x16\x03\x01"),
    (b"HTTP/1.1 204 No Content\r\nX: y\r\n\r\n", 204, b""),
]


def feeds(data):
    """Every way to cut ``data`` in pieces worth trying: whole, at every offset, byte by byte."""
    yield [data]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]
    yield [data[i:i + 1] for i in range(len(data))]


@pytest.mark.parametrize("answer,status,rest", ANSWERS)
def test_good_answers_fed_in_every_way(answer, status, rest):
    head_len = answer.index(b"\r\n\r\n") + 4
    for pieces in feeds(answer):
        r, fed = ConnectResponse(), 0
        for piece in pieces:
            if r.done:
                break
            fed += len(piece)
            assert r.feed(piece) is (fed >= head_len)
        assert r.done and r.status == status
        tail = b"".join(pieces)[fed:]
        assert r.rest + tail == rest


#: (the proxy's answer (then its end), the start of the error, the status)
REFUSALS = [
    (b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n",
     "the proxy refused the tunnel: 407 Proxy Authentication Required", 407),
    (b"HTTP/1.0 403 Access violation\r\n\r\n", "the proxy refused the tunnel: 403 Access violation", 403),
    (b"HTTP/1.1 502 Bad Gateway\r\n\r\n<html>", "the proxy refused the tunnel: 502 Bad Gateway", 502),
    (b"HTTP/1.1 301\r\n\r\n", "the proxy refused the tunnel: 301", 301),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP answer from the proxy", None),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP answer from the proxy", None),
    (b"HTTP/1.1 OK\r\n\r\n", "not an HTTP answer from the proxy", None),
    (b"", "the proxy closed the connection before answering", None),
    (b"HTTP/1.1 200 Conn", "the proxy closed the connection in the middle of its answer", None),
]


@pytest.mark.parametrize("answer,message,status", REFUSALS)
def test_refusals_fed_in_every_way(answer, message, status):
    for pieces in (list(feeds(answer)) if answer else [[]]):
        r = ConnectResponse()
        with pytest.raises(ProxyError) as info:
            for piece in pieces + [b""]:
                r.feed(piece)
        assert str(info.value).startswith(message), str(info.value)
        assert info.value.status == status
        assert "\n" not in str(info.value)


def test_the_head_is_bounded():
    r = ConnectResponse(max_head=64)
    assert r.feed(b"HTTP/1.1 200 OK\r\n") is False
    with pytest.raises(ProxyError, match="longer than 64 bytes"):
        r.feed(b"X-Padding: " + b"x" * 60)
    r = ConnectResponse(max_head=64)             # complete in one piece, but too long
    with pytest.raises(ProxyError, match="longer than 64 bytes"):
        r.feed(b"HTTP/1.1 200 OK\r\nX-Padding: " + b"x" * 60 + b"\r\n\r\n")
    r = ConnectResponse(max_head=64)             # exactly at the bound: fine
    head = b"HTTP/1.1 200 OK\r\nX: " + b"x" * (64 - 24) + b"\r\n\r\n"
    assert len(head) == 64 and r.feed(head) is True


def test_nothing_is_fed_after_the_answer():
    r = ConnectResponse()
    r.feed(b"HTTP/1.1 200 OK\r\n\r\n")
    with pytest.raises(ProxyError):
        r.feed(b"more")


def test_proxy_equality_ignores_the_text():
    assert Proxy("h", 1, None, "http://h:1") == Proxy("h", 1, None, "h:1")
    assert Proxy("h", 1) != Proxy("h", 2)
