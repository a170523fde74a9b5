"""Unit tests of sphincter_lib.proto.addresses (pure functions)."""
import ipaddress

import pytest

from sphincter_lib.proto.addresses import (canonical, client_address, format_peer, ip_key,
                                           is_local_client, is_trusted, parse_ip, peer_name)
from sphincter_lib.relay.config import networks

LOOPBACK = networks("127.0.0.1,::1")          # the --trusted-proxies default


def env(remote="127.0.0.1", port="40000", xff=None, real=None):
    e = {"REMOTE_ADDR": remote, "REMOTE_PORT": port}
    if xff is not None:
        e["HTTP_X_FORWARDED_FOR"] = xff
    if real is not None:
        e["HTTP_X_REAL_IP"] = real
    return e


# ------------------------------------------------------------------ format_peer

@pytest.mark.parametrize("address, shown", [
    (("127.0.0.1", 80), "127.0.0.1:80"),
    (("::1", 8080), "[::1]:8080"),
    (("::ffff:10.0.0.1", 9, 0, 0), "[::ffff:10.0.0.1]:9"),     # 4-tuple from AF_INET6
    ("/run/sphincter.sock", "/run/sphincter.sock"),
    (None, "None"),
])
def test_format_peer(address, shown):
    assert format_peer(address) == shown


# ------------------------------------------------------------------ parse_ip

@pytest.mark.parametrize("text, ip", [
    ("203.0.113.7", "203.0.113.7"),
    (" 203.0.113.7 ", "203.0.113.7"),
    ("203.0.113.7:5555", "203.0.113.7"),
    ("2001:db8::1", "2001:db8::1"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("[2001:db8::1]:443", "2001:db8::1"),
    ("fe80::1%eth0", "fe80::1"),
    ("::ffff:127.0.0.1", "127.0.0.1"),         # IPv4-mapped: the IPv4 address
    ("[::ffff:10.1.2.3]:80", "10.1.2.3"),
    ("::1", "::1"),
])
def test_parse_ip_accepts_what_proxies_send(text, ip):
    assert parse_ip(text) == ipaddress.ip_address(ip)
    assert canonical(text) == ip


@pytest.mark.parametrize("text", ["", "unknown", "_hidden", "1.2.3", "300.1.1.1", "[::1", "a:b",
                                  "1.2.3.4:80:90", None, 7])
def test_parse_ip_rejects_the_rest(text):
    assert parse_ip(text) is None and canonical(text) is None


# ------------------------------------------------------------------ is_trusted

def test_ipv4_mapped_peer_matches_ipv4_trusted_network():
    assert is_trusted("::ffff:127.0.0.1", networks("127.0.0.1"))
    assert is_trusted("::ffff:10.9.8.7", networks("10.0.0.0/8"))
    assert not is_trusted("::ffff:11.9.8.7", networks("10.0.0.0/8"))
    assert is_trusted("::1", LOOPBACK) and is_trusted("127.0.0.1", LOOPBACK)
    assert not is_trusted("127.0.0.2", LOOPBACK)
    assert not is_trusted("garbage", LOOPBACK) and not is_trusted("", LOOPBACK)
    assert not is_trusted("127.0.0.1", ())


def test_trusted_networks_in_ipv4_mapped_form_still_match():
    mapped = networks("::ffff:127.0.0.1,::ffff:10.0.0.0/104")
    assert is_trusted("::ffff:127.0.0.1", mapped) and is_trusted("127.0.0.1", mapped)
    assert is_trusted("10.20.30.40", mapped) and not is_trusted("11.0.0.1", mapped)
    assert not is_trusted("::1", mapped)


# ------------------------------------------------------------------ client_address

def test_untrusted_peer_is_the_client_whatever_it_claims():
    assert client_address(env("198.51.100.1", xff="203.0.113.7", real="203.0.113.8"),
                          LOOPBACK) == "198.51.100.1"
    assert client_address(env("127.0.0.1", xff="203.0.113.7"), ()) == "127.0.0.1"


def test_trusted_proxy_x_forwarded_for():
    assert client_address(env(xff="203.0.113.7"), LOOPBACK) == "203.0.113.7"
    assert client_address(env("::1", xff="2001:db8::5"), LOOPBACK) == "2001:db8::5"


def test_x_forwarded_for_walks_back_past_trusted_proxies_only():
    trusted = networks("127.0.0.1,10.0.0.0/8")
    # client, a trusted inner proxy, then the peer
    assert client_address(env(xff="203.0.113.7, 10.1.1.1"), trusted) == "203.0.113.7"
    # a spoofed first entry before an untrusted hop is not believed
    assert client_address(env(xff="1.1.1.1, 203.0.113.7, 10.1.1.1"), trusted) == "203.0.113.7"
    # all hops trusted: the farthest
    assert client_address(env(xff="10.2.2.2, 10.1.1.1"), trusted) == "10.2.2.2"


def test_trusted_proxy_x_real_ip():
    assert client_address(env(real="203.0.113.9"), LOOPBACK) == "203.0.113.9"
    assert client_address(env(real=" 2001:db8::9 "), LOOPBACK) == "2001:db8::9"


def test_x_forwarded_for_wins_over_x_real_ip():
    assert client_address(env(xff="203.0.113.7", real="203.0.113.9"), LOOPBACK) == "203.0.113.7"


def test_unusable_x_forwarded_for_falls_back_to_x_real_ip():
    assert client_address(env(xff="unknown, 203.0.113.7", real="203.0.113.9"),
                          LOOPBACK) == "203.0.113.9"
    assert client_address(env(xff=" , ", real="203.0.113.9"), LOOPBACK) == "203.0.113.9"


def test_trusted_proxy_that_says_nothing_leaves_the_client_unknown():
    """A trusted proxy that is not on loopback and forwards nothing: the client is unknown."""
    lan = networks("10.0.0.0/8,127.0.0.1,::1")
    assert client_address(env("10.1.2.3"), lan) is None
    assert client_address(env("::ffff:10.1.2.3"), lan) is None
    assert client_address(env("10.1.2.3", real="not an address"), lan) is None
    assert client_address(env("10.1.2.3", xff=""), lan) is None


def test_loopback_peer_without_forwarding_header_is_the_client():
    """`make run` and a browser on the same host: the loopback peer is the client itself
    (Werkzeug ProxyFix, Rails RemoteIp), as 127.0.0.0/8, ::1 or IPv4-mapped."""
    assert client_address(env(), LOOPBACK) == "127.0.0.1"
    assert client_address(env("::1"), LOOPBACK) == "::1"
    assert client_address(env("::ffff:127.0.0.1"), LOOPBACK) == "127.0.0.1"
    assert client_address(env("::ffff:127.0.0.1"), networks("::ffff:127.0.0.1")) == "127.0.0.1"
    assert client_address(env("127.0.0.5"), networks("127.0.0.0/8")) == "127.0.0.5"
    assert client_address(env("127.0.0.5"), LOOPBACK) == "127.0.0.5"      # not trusted at all


def test_loopback_peer_that_sends_a_forwarding_header_is_a_proxy():
    """Any forwarding header, even an unusable one, says the loopback peer is a proxy: a
    header it cannot use leaves the client unknown rather than making it the proxy."""
    assert client_address(env(xff="203.0.113.7"), LOOPBACK) == "203.0.113.7"
    assert client_address(env("::1", real="203.0.113.9"), LOOPBACK) == "203.0.113.9"
    assert client_address(env(real="not an address"), LOOPBACK) is None
    assert client_address(env(xff=""), LOOPBACK) is None
    assert client_address(env("::1", xff="unknown"), LOOPBACK) is None
    forwarded = dict(env(), HTTP_FORWARDED="for=203.0.113.7")
    assert client_address(forwarded, LOOPBACK) is None


@pytest.mark.parametrize("remote, headers, local", [
    ("127.0.0.1", {}, True),
    ("127.255.0.9", {}, True),
    ("::1", {}, True),
    ("::ffff:127.0.0.1", {}, True),
    ("[::1]:5555", {}, True),
    ("10.0.0.1", {}, False),
    ("::", {}, False),
    ("0.0.0.0", {}, False),
    ("/run/sock", {}, False),
    ("", {}, False),
    ("127.0.0.1", {"HTTP_X_FORWARDED_FOR": "203.0.113.7"}, False),
    ("127.0.0.1", {"HTTP_X_REAL_IP": ""}, False),
    ("::1", {"HTTP_FORWARDED": "for=x"}, False),
])
def test_is_local_client(remote, headers, local):
    assert is_local_client(dict(headers, REMOTE_ADDR=remote)) is local


def test_dual_stack_listener_sees_ipv4_mapped_proxy():
    """`--ws-host ::`: nginx on 127.0.0.1 arrives as ::ffff:127.0.0.1 and is still trusted."""
    e = env("::ffff:127.0.0.1", xff="203.0.113.7")
    assert client_address(e, networks("127.0.0.1")) == "203.0.113.7"
    assert client_address(env("::ffff:198.51.100.1"), LOOPBACK) == "198.51.100.1"


def test_unparsable_peer_is_returned_as_is():
    assert client_address({"REMOTE_ADDR": "/run/sock"}, LOOPBACK) == "/run/sock"
    assert client_address({}, LOOPBACK) == ""


# ------------------------------------------------------------------ peer_name

def test_peer_name():
    assert peer_name(env("198.51.100.1", "5555"), "198.51.100.1") == "198.51.100.1:5555"
    assert peer_name(env("::ffff:198.51.100.1", "5555"), "198.51.100.1") == "198.51.100.1:5555"
    assert peer_name(env("127.0.0.1", "5555"), "203.0.113.7") == "203.0.113.7"
    assert peer_name(env("127.0.0.1", "5555"), None) == "127.0.0.1:5555"
    assert peer_name(env("127.0.0.1", "5555"), client_address(env("127.0.0.1", "5555"),
                                                             LOOPBACK)) == "127.0.0.1:5555"
    assert peer_name(env("127.0.0.1", ""), None) == "127.0.0.1"
    assert peer_name(env("::1", 5555), "::1") == "[::1]:5555"


# ------------------------------------------------------------------ ip_key

def test_ip_key_groups_ipv6_by_64():
    assert ip_key("2001:db8:1:2::5") == ip_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert ip_key("2001:db8:1:2::5") != ip_key("2001:db8:1:3::5")
    assert ip_key("::ffff:10.1.2.3") == ip_key("10.1.2.3") == "10.1.2.3"
    assert ip_key("127.0.0.1") == "127.0.0.1"
    assert ip_key("fe80::1%eth0") == "fe80::/64"


def test_ip_key_unknown_client_and_non_ip():
    assert ip_key(None) is None
    assert ip_key("/run/sock") == "/run/sock"
