"""A small WebSocket *client* (RFC 6455) on top of :mod:`..proto.frames`.

The protocol part is sans-IO: :func:`handshake_request` builds the upgrade
request, :func:`check_handshake` validates the server's answer (status 101,
``Upgrade``/``Connection`` headers, the ``Sec-WebSocket-Accept`` value, the
subprotocol), :func:`encode_client_frame` builds masked client frames and
:class:`ClientSession` turns the bytes a server sends into messages (answering
pings, echoing a close). :class:`ClientConnection` is the thin blocking adapter over
a (gevent-cooperative) socket that ``sphincter connect`` and ``sphincter pipe`` use: one
greenlet reads (:meth:`~ClientConnection.recv`) while another sends; sends never interleave
inside a frame, and the reader never waits for a sender to queue its pong.
"""

import base64
import os
import socket
import ssl
import struct
import threading

from ..proto import frames
from ..closecodes import CloseCode
from ..errors import ProtocolError, SphincterError
from ..proto.frames import BINARY, CLOSE, PING, PONG, TEXT

_CODE = struct.Struct("!H")


class HandshakeError(SphincterError):
    """The server did not accept the WebSocket upgrade (one line: why)."""


class ConnectionClosed(SphincterError):
    """The WebSocket connection is closed: ``code`` and ``reason`` from the server's close frame
    (``code`` None when the connection just ended)."""

    def __init__(self, code=None, reason=""):
        SphincterError.__init__(self, "closed (%s%s)" % (code if code is not None else "no close frame",
                                                        (" " + reason) if reason else ""))
        self.code = code
        self.reason = reason


# --- URLs and the handshake (pure) -----------------------------------------------

def parse_url(url):
    """``ws://host[:port]/path?q`` -> ``(tls, host, port, resource)``; ValueError if not a ws URL."""
    lower = url.lower()
    if lower.startswith("ws://"):
        tls, rest = False, url[5:]
    elif lower.startswith("wss://"):
        tls, rest = True, url[6:]
    else:
        raise ValueError("not a ws:// or wss:// URL: %r" % url)
    hostport, slash, path = rest.partition("/")
    resource = "/" + path if slash else "/"
    if "?" in hostport:
        hostport, _, query = hostport.partition("?")
        resource = "/?" + query
    if hostport.startswith("["):
        host, _, after = hostport[1:].partition("]")
        port_text = after[1:] if after.startswith(":") else ""
    elif hostport.count(":") == 1:
        host, _, port_text = hostport.partition(":")
    else:
        host, port_text = hostport, ""
    if not host:
        raise ValueError("no host in %r" % url)
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError("invalid port in %r" % url)
        port = int(port_text)
    else:
        port = 443 if tls else 80
    return tls, host, port, resource


def new_key():
    """A fresh ``Sec-WebSocket-Key``: base64 of 16 random bytes."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def handshake_request(host, port, resource, key, subprotocols=(), tls=False, headers=()):
    """The upgrade request (bytes). ``headers``: extra ``(name, value)`` pairs."""
    default_port = 443 if tls else 80
    host_header = ("[%s]" % host) if ":" in host else host
    if port != default_port:
        host_header += ":%d" % port
    lines = ["GET %s HTTP/1.1" % resource, "Host: %s" % host_header, "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: %s" % key, "Sec-WebSocket-Version: 13"]
    if subprotocols:
        lines.append("Sec-WebSocket-Protocol: %s" % ", ".join(subprotocols))
    for name, value in headers:
        lines.append("%s: %s" % (name, value))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def check_handshake(head, key, subprotocols=()):
    """Validate the response head (bytes up to and including the blank line).

    Returns the subprotocol the server chose (None if it chose none); raises
    :class:`HandshakeError` with a one-line reason otherwise.
    """
    try:
        text = head.decode("latin-1")
    except Exception:  # pragma: no cover - latin-1 decodes anything
        raise HandshakeError("unreadable response")
    lines = text.split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1."):
        raise HandshakeError("not an HTTP response: %r" % lines[0][:80])
    if status[1] != "101":
        raise HandshakeError("server answered %s instead of 101" % " ".join(status[1:])[:80])
    fields = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HandshakeError("malformed header line %r" % line[:80])
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    if "websocket" not in ",".join(fields.get("upgrade", [])).lower():
        raise HandshakeError("no 'Upgrade: websocket' in the response")
    if "upgrade" not in [t.strip() for t in ",".join(fields.get("connection", [])).lower().split(",")]:
        raise HandshakeError("no 'Connection: Upgrade' in the response")
    accept = fields.get("sec-websocket-accept", [])
    if accept != [frames.accept_key(key)]:
        raise HandshakeError("wrong Sec-WebSocket-Accept")
    chosen = fields.get("sec-websocket-protocol", [])
    if not chosen:
        return None
    if len(chosen) > 1 or chosen[0] not in subprotocols:
        raise HandshakeError("server chose a subprotocol we did not offer: %r" % ", ".join(chosen))
    return chosen[0]


# --- frames (pure) -----------------------------------------------------------------

def encode_client_frame(opcode, payload, mask=None):
    """A complete masked client frame; ``mask``: 4 bytes (random by default)."""
    if mask is None:
        mask = os.urandom(4)
    n = len(payload)
    b0 = 0x80 | opcode
    if n < 126:
        head = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return head + mask + frames.unmask(payload, mask)


def encode_client_close(code=CloseCode.NORMAL, reason="", mask=None):
    payload = b"" if code is None else _CODE.pack(code) + reason.encode("utf-8")[:frames.MAX_CLOSE_REASON]
    return encode_client_frame(CLOSE, payload, mask)


class ClientSession:
    """What to do with the bytes a server sends (sans-IO).

    :meth:`receive` returns ``(messages, replies)``: ``messages`` are
    ``(opcode, payload)`` pairs (``TEXT`` or ``BINARY``, whole, UTF-8 checked),
    ``replies`` are frames to send back (pongs, the close echo). After a
    close frame from the server, :attr:`close_code` / :attr:`close_reason` are
    set and :attr:`closed` is True. A protocol violation raises
    :class:`~sphincter_lib.errors.ProtocolError` (close with its ``code``).
    """

    def __init__(self, max_message_bytes=16 << 20):
        self.parser = frames.FrameParser(max_message_bytes=max_message_bytes, require_mask=False)
        self.closed = False
        self.close_sent = False
        self.close_code = None
        self.close_reason = ""

    def receive(self, data):
        messages, replies = [], []
        if self.closed:
            return messages, replies
        for opcode, payload in self.parser.feed(data):
            if opcode in (TEXT, BINARY):
                messages.append((opcode, payload))
            elif opcode == PING:
                replies.append(encode_client_frame(PONG, payload))
            elif opcode == CLOSE:
                self.closed = True
                self.close_code, self.close_reason = frames.parse_close(payload)
                if not self.close_sent:
                    self.close_sent = True
                    replies.append(encode_client_close(self.close_code))
                break
        return messages, replies

    def close_frame(self, code=CloseCode.NORMAL, reason=""):
        """The close frame to send (once); None if one was sent already."""
        if self.close_sent:
            return None
        self.close_sent = True
        return encode_client_close(code, reason)


# --- a thin blocking adapter (gevent-cooperative when sockets are patched) ------------

class ClientConnection:
    """One client connection: :meth:`open` it, then :meth:`recv` / :meth:`send`.

    ``recv`` returns ``(opcode, payload)`` for each data message and raises
    :class:`ConnectionClosed` when the server closed (or the socket ended).
    All waits are bounded by ``timeout`` during the handshake; afterwards
    reads block (use gevent timeouts around them if needed). One greenlet may
    :meth:`recv` while others :meth:`send`: frames are sent whole, one at a time
    (a pong the reader owes while a send is under way goes right after it).
    """

    #: bytes asked of each recv
    read_size = 64 * 1024
    #: largest response head accepted during the handshake
    max_head = 16 * 1024

    def __init__(self, url, subprotocols=(), timeout=10.0, max_message_bytes=16 << 20,
                 ssl_context=None, headers=()):
        self.url = url
        self.tls, self.host, self.port, self.resource = parse_url(url)
        self.subprotocols = tuple(subprotocols)
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.headers = tuple(headers)
        self.session = ClientSession(max_message_bytes)
        self.subprotocol = None
        self.sock = None
        self._pending = []
        self._send_lock = threading.Lock()     # gevent's lock once patched
        self._owed = []                        # control frames the reader could not send at once

    def open(self, sock=None):
        """Connect and upgrade; ``sock``: a connection made already (through a proxy, TLS
        done: see :mod:`.dial`) to upgrade instead of connecting to the URL's host."""
        if sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            if self.tls:
                try:
                    ctx = self.ssl_context or ssl.create_default_context()
                    sock = ctx.wrap_socket(sock, server_hostname=self.host)
                except BaseException:
                    sock.close()
                    raise
        else:
            sock.settimeout(self.timeout)
        try:
            key = new_key()
            sock.sendall(handshake_request(self.host, self.port, self.resource, key,
                                           self.subprotocols, self.tls, self.headers))
            head, rest = self._read_head(sock)
            self.subprotocol = check_handshake(head, key, self.subprotocols)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        if rest:
            self._take(rest)
        return self

    def _read_head(self, sock):
        buf = b""
        while b"\r\n\r\n" not in buf:
            if len(buf) > self.max_head:
                raise HandshakeError("response head too long")
            chunk = sock.recv(4096)
            if not chunk:
                raise HandshakeError("connection closed during the handshake")
            buf += chunk
        end = buf.index(b"\r\n\r\n") + 4
        return buf[:end], buf[end:]

    def _take(self, data):
        messages, replies = self.session.receive(data)
        for frame in replies:
            self._reply(frame)
        self._pending.extend(messages)

    def _reply(self, frame):
        """A control frame from the reader: sent now, or right after the send under way."""
        if self._send_lock.acquire(False):
            try:
                self.sock.sendall(frame)
                self._send_owed()
            finally:
                self._send_lock.release()
        else:
            self._owed.append(frame)

    def recv(self):
        """The next data message ``(opcode, payload)``; raises :class:`ConnectionClosed`."""
        while not self._pending:
            if self.session.closed:
                raise ConnectionClosed(self.session.close_code, self.session.close_reason)
            try:
                data = self.sock.recv(self.read_size)
            except socket.timeout:
                raise                          # the caller's deadline (a timeout set on the socket)
            except OSError:
                data = b""
            if not data:
                self.session.closed = True
                raise ConnectionClosed(self.session.close_code, self.session.close_reason)
            try:
                self._take(data)
            except ProtocolError as exc:
                self._sendall(self.session.close_frame(exc.code, "protocol error") or b"")
                self.session.closed = True
                raise ConnectionClosed(None, "protocol error from server: %s" % exc)
        return self._pending.pop(0)

    def send(self, payload, text=None):
        """Send one message: ``str`` as text, ``bytes`` as binary (``text`` overrides)."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
            text = True if text is None else text
        self._sendall(encode_client_frame(TEXT if text else BINARY, payload))

    def _sendall(self, frame):
        if frame:
            with self._send_lock:
                self.sock.sendall(frame)
                self._send_owed()

    def _send_owed(self):
        while self._owed:
            self.sock.sendall(self._owed.pop(0))

    def send_close(self, code=CloseCode.NORMAL, reason=""):
        """Start the closing handshake: send our close frame (once) and keep the connection;
        :meth:`recv` then returns what the server still sends and raises
        :class:`ConnectionClosed` with the server's answer."""
        self._sendall(self.session.close_frame(code, reason))

    def close(self, code=CloseCode.NORMAL, reason=""):
        """Send a close frame (best effort, unless one was sent) and close the socket."""
        if self.sock is None:
            return
        try:
            frame = self.session.close_frame(code, reason)
            if frame:
                if self._send_lock.acquire(False):     # never wait behind a stuck send
                    try:
                        self.sock.settimeout(self.timeout)
                        self.sock.sendall(frame)
                    finally:
                        self._send_lock.release()
        except OSError:
            pass
        try:
            self.sock.close()
        finally:
            self.sock = None
