"""Unit tests of sphincter_lib.relay.security (pure policy objects)."""
import ssl
import subprocess

import pytest

from sphincter_lib.relay import security


def test_tokens_parse_commas_and_files(tmp_path):
    f = tmp_path / "tokens"
    f.write_text("# comment\nfromfile\n\n")
    assert security.parse_tokens(["a,b", " c ", "@%s" % f]) == (b"a", b"b", b"c", b"fromfile")
    assert security.parse_tokens(None) == ()
    assert security.parse_tokens("x") == (b"x",)


def test_tokens_reject_whitespace(tmp_path):
    f = tmp_path / "t"
    f.write_text("has space\n")
    with pytest.raises(ValueError):
        security.parse_tokens("@%s" % f)


@pytest.mark.parametrize("line,ok", [
    (b"AUTH s3cret\n", True),
    (b"AUTH s3cret\r\n", True),
    (b"AUTH other\n", True),
    (b"AUTH s3cre\n", False),
    (b"AUTH s3cretX\n", False),
    (b"auth s3cret\n", False),
    (b"AUTH  s3cret\n", False),
    (b"s3cret\n", False),
    (b"AUTH \n", False),
    (b"", False),
])
def test_check_auth_line(line, ok):
    assert security.check_auth_line(line, (b"s3cret", b"other")) is ok


def test_no_tokens_never_matches():
    assert not security.check_auth_line(b"AUTH \n", ())


@pytest.mark.parametrize("origin,ok", [
    ("https://example.com", True),
    ("https://EXAMPLE.com/", True),
    ("http://example.com", False),
    ("https://evil.com", False),
    ("https://example.com.evil.com", False),
    ("https://a.sub.test", True),
    ("https://a.b.sub.test:8443", True),
    ("https://sub.test", False),
    ("https://evilsub.test", False),
    ("null", False),
    ("", True),       # non-browser client: no Origin
    (None, True),
])
def test_origin_policy(origin, ok):
    p = security.OriginPolicy(["https://example.com", "https://*.sub.test"])
    assert p.allowed(origin) is ok


def test_origin_policy_require_and_wildcard():
    assert not security.OriginPolicy(["https://a.b"], require_origin=True).allowed(None)
    assert security.OriginPolicy([]).allowed("https://anything")
    assert security.OriginPolicy(["*"]).allowed("null")


def test_connection_caps():
    caps = security.ConnectionCaps(2)
    a = caps.acquire("127.0.0.1")
    b = caps.acquire("127.0.0.1")
    assert a and b and caps.acquire("127.0.0.1") is None
    assert caps.acquire("127.0.0.2")
    caps.release(a)
    assert caps.acquire("127.0.0.1")
    unlimited = security.ConnectionCaps(0)
    assert all(unlimited.acquire("1.1.1.1") for _ in range(1000))


def test_rate_limiter_bucket_refills():
    now = [0.0]
    rl = security.RateLimiter(rate=2, burst=3, clock=lambda: now[0])
    assert [rl.allow("1.2.3.4") for _ in range(4)] == [True, True, True, False]
    assert rl.blocked("1.2.3.4")
    assert rl.allow("5.6.7.8")          # other addresses unaffected
    now[0] += 0.5                        # one token back
    assert rl.allow("1.2.3.4") and not rl.allow("1.2.3.4")
    now[0] += 100
    assert sum(rl.allow("1.2.3.4") for _ in range(10)) == 3   # capped at burst


def test_unknown_client_is_neither_counted_nor_limited():
    caps = security.ConnectionCaps(1)
    slots = [caps.acquire(None) for _ in range(5)]
    assert all(slot is security.UNCOUNTED for slot in slots) and not caps.full(None)
    assert len(caps) == 0
    for slot in slots:
        caps.release(slot)
    assert caps.acquire("127.0.0.1") and caps.full("127.0.0.1")
    rl = security.RateLimiter(rate=1, burst=1)
    assert all(rl.allow(None) for _ in range(10)) and not rl.blocked(None)
    assert not rl.buckets


def test_rate_limiter_memory_bounded():
    rl = security.RateLimiter(rate=1, burst=1, max_keys=100)
    for i in range(5000):
        rl.allow("10.0.%d.%d" % (i // 256, i % 256))
    assert len(rl.buckets) == 100


def test_rate_limiter_off():
    rl = security.RateLimiter(rate=0, burst=1)
    assert all(rl.allow("1.1.1.1") for _ in range(100))


def test_guess_time_math():
    assert security.CODE_SPACE == 887503681
    # 1000 live rooms, 1 guess/s: ~887,504 s ~ 10.3 days
    t = security.guess_time_seconds(1000, 1.0)
    assert 10 * 86400 < t < 10.5 * 86400


def test_server_ssl_context(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    ctx = security.server_ssl_context(str(cert), str(key))
    if hasattr(ssl, "TLSVersion"):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    else:   # CPython 3.6
        assert ctx.options & ssl.OP_NO_TLSv1 and ctx.options & ssl.OP_NO_TLSv1_1
    with pytest.raises((OSError, ssl.SSLError)):
        security.server_ssl_context(str(cert), str(tmp_path / "missing.pem"))
