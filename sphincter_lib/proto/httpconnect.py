"""HTTP ``CONNECT`` tunnels through a proxy, sans-IO: which proxy, the request, the answer.

:func:`parse_proxy_url` reads ``http://[user:pass@]HOST[:PORT]`` (the ``--proxy`` option and
the ``HTTPS_PROXY``/``HTTP_PROXY`` environment variables); :func:`proxy_from_env` picks the
variable for a URL's scheme and honours ``NO_PROXY``; :func:`connect_request` is the bytes
to send; :class:`ConnectResponse` is fed what the proxy answers::

    answer = ConnectResponse()
    while not answer.done:
        answer.feed(sock.recv(4096))     # feed(b"") is the end of the connection
    # answer.rest: bytes after the head (the tunnel's first bytes; normally none)

A head longer than ``max_head`` bytes, an end before the blank line, or an answer other than
2xx raises :class:`ProxyError` with a one-line reason (the proxy's status line for a refusal).
"""

import base64
import ipaddress

from ..errors import SphincterError

#: largest answer head (status line and headers) accepted from a proxy
MAX_HEAD = 16 * 1024
#: the port of an ``http://`` proxy URL without one
DEFAULT_PORT = 80


class ProxyError(SphincterError):
    """The proxy cannot give us a tunnel (one line: why). ``status``: its HTTP status, if any."""

    def __init__(self, message, status=None):
        SphincterError.__init__(self, message)
        self.status = status


class Proxy:
    """A parsed proxy URL: ``host``, ``port``, ``auth`` (the ``Proxy-Authorization`` value or
    None) and ``url`` (as written, without the password, for messages)."""

    def __init__(self, host, port, auth=None, url=""):
        self.host, self.port, self.auth, self.url = host, port, auth, url

    def __repr__(self):
        return "Proxy(%r)" % self.url

    def __eq__(self, other):
        return isinstance(other, Proxy) and (self.host, self.port, self.auth) == (
            other.host, other.port, other.auth)

    __hash__ = None


def _unquote(text):
    """Percent-decoding of a URL's user or password (pure, UTF-8)."""
    out, i, raw = bytearray(), 0, text.encode("utf-8")
    while i < len(raw):
        if raw[i:i + 1] == b"%" and _is_hex(raw[i + 1:i + 3]):
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(two):
    return len(two) == 2 and all(c in b"0123456789abcdefABCDEF" for c in two)


def parse_proxy_url(text):
    """``http://[user:pass@]HOST[:PORT][/]`` (the scheme may be left out) -> :class:`Proxy`;
    ValueError with a short reason otherwise (only HTTP proxies are spoken to)."""
    text = text.strip()
    rest = text
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme.lower() != "http":
            raise ValueError("unsupported proxy scheme %r (only http://HOST:PORT)" % scheme)
    rest = rest.rstrip("/")
    if "/" in rest or "?" in rest or "#" in rest:
        raise ValueError("a proxy URL has no path: %r" % _hide_password(text))
    auth = None
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user, _, password = userinfo.partition(":")
        token = ("%s:%s" % (_unquote(user), _unquote(password))).encode("utf-8")
        auth = "Basic " + base64.b64encode(token).decode("ascii")
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise ValueError("invalid proxy address %r" % _hide_password(text))
        port_text = after[1:]
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host, port_text = rest, ""
    if not host or any(c.isspace() for c in host):
        raise ValueError("no proxy host in %r" % _hide_password(text))
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError("invalid proxy port in %r" % _hide_password(text))
        port = int(port_text)
    else:
        port = DEFAULT_PORT
    return Proxy(host, port, auth, _hide_password(text))


def _hide_password(text):
    """The URL with its password replaced by ``***`` (for messages and logs)."""
    scheme, sep, rest = text.rpartition("://")
    if "@" not in rest:
        return text
    userinfo, _, hostpart = rest.rpartition("@")
    user = userinfo.partition(":")[0]
    return "%s%s%s:***@%s" % (scheme, sep, user, hostpart)


def _env(env, name):
    """``name`` in lower case first (curl's and urllib's order), then upper case."""
    return env.get(name.lower()) or env.get(name.upper()) or ""


def bypass(host, port, no_proxy):
    """True when ``NO_PROXY`` (comma- or space-separated) names ``host``: ``*``; a domain
    (``example.org`` or ``.example.org``: itself and every name under it), with an optional
    ``:PORT``; an IP address; or a network in CIDR notation (``10.0.0.0/8``)."""
    host = host.strip("[]").lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for entry in no_proxy.replace(",", " ").split():
        entry = entry.lower()
        if entry == "*":
            return True
        if "/" in entry and ip is not None:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name, port_text = entry, ""
        if entry.startswith("["):
            name, _, after = entry[1:].partition("]")
            port_text = after[1:]
        elif entry.count(":") == 1:
            name, _, port_text = entry.partition(":")
        if port_text and port_text != str(port):
            continue
        name = name.lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def proxy_from_env(tls, host, port, env):
    """The proxy for a ``wss://`` (``tls``) or ``ws://`` URL to ``host:port`` from ``env``:
    ``https_proxy``/``HTTPS_PROXY`` or ``http_proxy``/``HTTP_PROXY``, unless ``no_proxy``/
    ``NO_PROXY`` names the host. Returns ``(variable name, Proxy)`` or None; ValueError
    (naming the variable) for a value that is not an HTTP proxy URL."""
    name = "https_proxy" if tls else "http_proxy"
    text = _env(env, name)
    if not text.strip() or bypass(host, port, _env(env, "no_proxy")):
        return None
    which = name if env.get(name) else name.upper()
    try:
        return which, parse_proxy_url(text)
    except ValueError as exc:
        raise ValueError("%s: %s" % (which, exc))


def connect_request(host, port, auth=None):
    """The ``CONNECT host:port`` request head (bytes); ``auth``: a Proxy-Authorization value."""
    target = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
    lines = ["CONNECT %s HTTP/1.1" % target, "Host: %s" % target]
    if auth:
        lines.append("Proxy-Authorization: %s" % auth)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ConnectResponse:
    """The proxy's answer to a ``CONNECT``, fed in pieces (see the module docstring).

    :meth:`feed` returns True once the head is complete and says 2xx (:attr:`done`; the
    bytes after it are in :attr:`rest`), False while more is needed, and raises
    :class:`ProxyError` for a refusal, a malformed or too long head, or ``feed(b"")`` (the
    connection ended) before the head is complete. Nothing is accepted after :attr:`done`.
    """

    def __init__(self, max_head=MAX_HEAD):
        self.max_head = max_head
        self.done = False
        self.status = None
        self.rest = b""
        self._buf = b""

    def feed(self, data):
        if self.done:
            raise ProxyError("data fed after the proxy's answer")
        if not data:
            raise ProxyError("the proxy closed the connection before answering" if not self._buf
                             else "the proxy closed the connection in the middle of its answer")
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > self.max_head:
                raise ProxyError("the proxy's answer head is longer than %d bytes" % self.max_head)
            return False
        if end + 4 > self.max_head:
            raise ProxyError("the proxy's answer head is longer than %d bytes" % self.max_head)
        head, self.rest = self._buf[:end], self._buf[end + 4:]
        self._buf = b""
        self._check(head.decode("latin-1"))
        self.done = True
        return True

    def _check(self, head):
        status_line = head.split("\r\n", 1)[0]
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (
                len(parts[1]) == 3 and parts[1].isdigit()):
            raise ProxyError("not an HTTP answer from the proxy: %r" % status_line[:80])
        self.status = int(parts[1])
        if not 200 <= self.status < 300:
            raise ProxyError("the proxy refused the tunnel: %s" % " ".join(parts[1:])[:120],
                             self.status)
