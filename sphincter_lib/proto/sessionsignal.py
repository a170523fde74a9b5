"""Session rooms across nodes (Redis mode): session ids that name a node, the signalling
messages between nodes, and the records kept in Redis (sans-IO: text in, text out).

Redis carries only this signalling, never a session's bytes (docs/PROTOCOL.md, "Session rooms
across nodes"). Under the prefix ``P`` (``--redis-prefix``):

=========================  ==================================================================
``P:sroom:{CODE}``         the session room ``CODE``: ``"<tag> <sha256 of its key, hex> <node>"``
                           (:func:`room_record`), set by the node holding its agent's control
                           link, ``PX --redis-lease``, renewed by that node
``P:snode:<tag>``          how other nodes reach the source port of the node ``tag``:
                           ``"<host> <port> <proxy> <node>"`` (:func:`node_record`; proxy ``1``:
                           it wants a PROXY header from its trusted proxies), ``PX --redis-lease``
``P:sn:<tag>``             channel: the node ``tag``'s signalling messages (:func:`parse_message`)
=========================  ==================================================================

A node *tag* is 8 lowercase hex digits the node draws at start. In Redis mode a session id is
22 random characters then the tag of the node that holds the session's WebSocket client
(:func:`make_sid`); it still matches :func:`~.sessionwire.valid_sid`. A node reached by a data
link whose id names another node forwards it there (:func:`sid_tag`).

Messages (one line of ASCII, fields separated by one space):

- ``open <CODE> <SID> <FROM>``: the client's node asks the room's node to send ``OPEN <SID>``;
- ``refused <SID> <KIND> <REASON>``: the room's node answers that the session will not open
  (``KIND``: ``agent``, the agent refused or is gone, 4502; ``room``, the room is full, 4429);
- ``ended <CODE> <SID>``: the client's node says the session ended (the room's count of its
  sessions, for ``--max-sessions-per-room`` across nodes);
- ``replaced <CODE>``: a named session room's agent connected to another node, which took the
  room's record: the node that had it hangs its agent up.

A named session room without ``write=KEY`` has the same key on every node, derived from its token
(:func:`named_key`).
"""

import base64
import hashlib
import hmac
import re

from .addresses import parse_ip
from .sessionwire import clean_reason, valid_sid

#: characters of a session id before the node tag (``secrets.token_urlsafe(16)``)
RANDOM_LEN = 22
_TAG = re.compile(r"^[0-9a-f]{8}$")
_CODE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: why the room's node refused a session: what the client's node closes with
AGENT, ROOM = "agent", "room"


def valid_tag(text):
    return bool(_TAG.match(text or ""))


def make_sid(random_part, tag):
    """A session id drawn on the node ``tag``: ``random_part`` (22 URL-safe characters) + tag."""
    if len(random_part) != RANDOM_LEN or not valid_tag(tag):
        raise ValueError("bad session id parts")
    sid = random_part + tag
    assert valid_sid(sid)
    return sid


def sid_tag(sid):
    """The node tag in a session id, or "" (an id drawn by a single node, or not well-formed)."""
    tag = sid[RANDOM_LEN:] if valid_sid(sid) else ""
    return tag if valid_tag(tag) else ""


def key_digest(key):
    """What Redis keeps of a session room's key: its SHA-256, hex (never the key)."""
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


# -- keys ----------------------------------------------------------------------------------
def room_key(prefix, code):
    return "%s:sroom:{%s}" % (prefix, code.upper())


def node_key(prefix, tag):
    return "%s:snode:%s" % (prefix, tag)


def channel(prefix, tag):
    return "%s:sn:%s" % (prefix, tag)


# -- records -------------------------------------------------------------------------------
def room_record(tag, digest, node):
    return "%s %s %s" % (tag, digest, node or "-")


def parse_room_record(text):
    """``(tag, digest, node)`` or None."""
    parts = (text or "").split(" ")
    if len(parts) != 3 or not valid_tag(parts[0]) or not re.match(r"^[0-9a-f]{64}$", parts[1]):
        return None
    return parts[0], parts[1], parts[2]


def node_record(host, port, proxy, node):
    return "%s %d %d %s" % (host, port, 1 if proxy else 0, node or "-")


def parse_node_record(text):
    """``(host, port, proxy, node)`` or None."""
    parts = (text or "").split(" ")
    if len(parts) != 4 or not parts[1].isdigit() or not 0 < int(parts[1]) < 65536 or parts[2] not in ("0", "1"):
        return None
    return parts[0], int(parts[1]), parts[2] == "1", parts[3]


# -- messages ------------------------------------------------------------------------------
def open_message(code, sid, origin):
    return "open %s %s %s" % (code, sid, origin)


def refused_message(sid, kind, reason):
    return "refused %s %s %s" % (sid, kind if kind in (AGENT, ROOM) else AGENT, clean_reason(reason))


def ended_message(code, sid):
    return "ended %s %s" % (code, sid)


def replaced_message(code):
    return "replaced %s" % code


def named_key(token, name):
    """A named session room's key when the rooms file gives none: derived from its token (bytes,
    a secret every node has), so that every node agrees on it; 24 URL-safe characters."""
    mac = hmac.new(token, b"sphincter session key " + name.upper().encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:18]).decode()


def parse_message(text):
    """``("open", code, sid, origin)``, ``("refused", sid, kind, reason)``, ``("ended", code,
    sid)``, or None for anything else (ignored: a newer node may say more)."""
    word, _, rest = (text or "").partition(" ")
    if word == "open":
        parts = rest.split(" ")
        if len(parts) == 3 and _CODE.match(parts[0]) and valid_sid(parts[1]) and valid_tag(parts[2]):
            return ("open", parts[0], parts[1], parts[2])
    elif word == "refused":
        sid, _, rest = rest.partition(" ")
        kind, _, reason = rest.partition(" ")
        if valid_sid(sid) and kind in (AGENT, ROOM):
            return ("refused", sid, kind, clean_reason(reason or "refused"))
    elif word == "ended":
        parts = rest.split(" ")
        if len(parts) == 2 and _CODE.match(parts[0]) and valid_sid(parts[1]):
            return ("ended", parts[0], parts[1])
    elif word == "replaced" and _CODE.match(rest):
        return ("replaced", rest)
    return None


def proxy_line(peer, target):
    """A PROXY v1 header for a data link forwarded to another node: from ``peer`` (the agent's
    ``host:port`` as logged) to ``target`` ((host, port)); ``PROXY UNKNOWN`` when the two are
    not of one IP family (the receiving node then counts the forwarding node)."""
    host, _, port = (peer or "").rpartition(":")
    src, dst = parse_ip(host), parse_ip(target[0])
    if src is None or dst is None or src.version != dst.version or not port.isdigit():
        return b"PROXY UNKNOWN\r\n"
    return ("PROXY TCP%d %s %s %d %d\r\n" % (src.version, src, dst, int(port), target[1])).encode("ascii")
