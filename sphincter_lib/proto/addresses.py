"""Client addresses: peer formatting, the client behind trusted proxies, per-address keys.

Pure functions (no sockets, no gevent, no logging).

Who is the client?  A peer that is not a trusted proxy is the client.  A
trusted proxy (``--trusted-proxies``) is believed when it says who its client
is: ``X-Forwarded-For`` first (walked from the nearest hop back past further
trusted proxies), else ``X-Real-IP``.  A trusted *loopback* peer that sends no
forwarding header at all (none of those two, nor ``Forwarded``) is a client on
this host talking to the server directly (a browser during ``make run``), so it
is the client, as in Werkzeug's ProxyFix and Rails' RemoteIp.  Any other
trusted proxy that says nothing usable leaves the client *unknown*
(:func:`client_address` returns None): its own address is not a client, and
counting every viewer behind it as one address would let one stranger's
unknown-room attempts lock every viewer out.

Addresses are compared as IP addresses, not strings: an IPv4-mapped IPv6
peer (``::ffff:127.0.0.1``, what a dual-stack ``::`` listener sees for an
IPv4 client) is its IPv4 address, so it matches IPv4 trusted networks and
shares a per-address key with the same client seen over IPv4.
"""

import ipaddress


def format_peer(address):
    """``host:port`` (``[v6]:port``) for a socket address tuple; ``str()`` of anything else."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return ("[%s]:%d" if ":" in host else "%s:%d") % (host, address[1])
    return str(address)


def parse_ip(text):
    """An ``ipaddress`` object for *text*, or None if it is not an IP address.

    Accepts what proxies put in headers: surrounding space, ``[v6]``,
    ``v4:port``, ``[v6]:port`` and a ``%zone`` suffix.  IPv4-mapped IPv6
    addresses come back as their IPv4 address."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if text.startswith("["):                   # [v6] or [v6]:port
        text, bracket, port = text[1:].partition("]")
        if not bracket or not (port == "" or (port[:1] == ":" and port[1:].isdigit())):
            return None
    elif text.count(":") == 1:                 # v4:port (a bare v6 has two colons or more)
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    text = text.partition("%")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def canonical(text):
    """*text* as a canonical IP address string (mapped IPv4 unwrapped), or None."""
    ip = parse_ip(text)
    return None if ip is None else str(ip)


def is_trusted(addr, trusted):
    """True if *addr* (text) is an IP address inside one of the *trusted* networks.

    An IPv4 address also matches networks written in IPv4-mapped form
    (``::ffff:127.0.0.1``), as a dual-stack workaround might list them."""
    ip = parse_ip(addr)
    if ip is None:
        return False
    mapped = ipaddress.IPv6Address("::ffff:%s" % ip) if ip.version == 4 else None
    for net in trusted:
        if ip.version == net.version:
            if ip in net:
                return True
        elif mapped is not None and mapped in net:
            return True
    return False


def client_address(environ, trusted):
    """The client's address for a WSGI *environ*, as a canonical IP string, or None.

    - the peer (``REMOTE_ADDR``) is not in *trusted*: the peer;
    - a trusted peer sent ``X-Forwarded-For``: the nearest hop that is not a
      trusted proxy (or the farthest hop when all are trusted);
    - else a trusted peer sent ``X-Real-IP``: that address;
    - else a loopback peer that sent no forwarding header: the peer
      (see :func:`is_local_client`);
    - else (nothing usable): None — the client is unknown.

    A hop that is not an IP address makes the header unusable (then
    ``X-Real-IP`` is tried).  A peer address that does not parse (e.g. a
    Unix socket path) is returned as it is."""
    remote = environ.get("REMOTE_ADDR", "")
    if not trusted or not is_trusted(remote, trusted):
        return canonical(remote) or remote
    forwarded = _forwarded_for(environ.get("HTTP_X_FORWARDED_FOR"), trusted)
    if forwarded is not None:
        return forwarded
    real = canonical(environ.get("HTTP_X_REAL_IP") or "")
    if real is None and is_local_client(environ):
        return canonical(remote)
    return real


#: WSGI keys of the headers a proxy forwards a client address in; a peer that sends
#: any of them (even one this module cannot use, like ``Forwarded``) is a proxy
FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP", "HTTP_FORWARDED")


def is_local_client(environ):
    """True if the peer is a loopback address (127.0.0.0/8, ``::1``, ``::ffff:127.x.y.z``)
    that sent none of :data:`FORWARDING_HEADERS`: a client on this host, not a proxy."""
    ip = parse_ip(environ.get("REMOTE_ADDR", ""))
    return (ip is not None and ip.is_loopback
            and not any(key in environ for key in FORWARDING_HEADERS))


def _forwarded_for(header, trusted):
    if not header:
        return None
    hops = [canonical(h) for h in header.split(",") if h.strip()]
    if not hops or None in hops:
        return None
    for hop in reversed(hops):                 # nearest hop first
        if not is_trusted(hop, trusted):
            return hop
    return hops[0]


def peer_name(environ, client):
    """For logs: *client* (from :func:`client_address`) with the peer's port when the
    client is the peer itself; the proxy's address and port when the client is unknown."""
    remote, port = environ.get("REMOTE_ADDR", ""), str(environ.get("REMOTE_PORT") or "")
    if client is not None and canonical(remote) != client:
        return client                          # forwarded: the port is the proxy's
    host = remote if client is None else client
    return format_peer((host, int(port))) if port.isdigit() else host


def ip_key(addr):
    """The unit per-address limits apply to: the IPv4 address, or the IPv6 /64
    (one customer usually owns a whole /64, so per-address limits would be moot).
    None (an unknown client) stays None: no per-address limit applies."""
    if addr is None:
        return None
    ip = parse_ip(addr)
    if ip is None:
        return str(addr)
    if ip.version == 6:
        return str(ipaddress.ip_network("%s/64" % ip, strict=False))
    return str(ip)
