"""The relay's own option value types (the shared ones are in :mod:`sphincter_lib.options`).

Each takes the option's text and returns the value, or raises ``argparse.ArgumentTypeError``
with what was expected; :mod:`sphincter_lib.relay.config` names the option in the one-line
error."""

import argparse
import ipaddress
import re

from ..options import seconds


_REDIS_URL = re.compile(r"^(redis|rediss)://([^@/\s]*@)?(\[[0-9a-fA-F:.]+\]|[^:/@\s\[\]]+)(:\d{1,5})?(/\d+)?/?$")


def redis_url(text):
    """``redis://[user:pass@]host[:port][/db]`` or ``rediss://...``; empty: no Redis."""
    text = text.strip()
    if not text:
        return ""
    m = _REDIS_URL.match(text)
    if not m or (m.group(4) and not 0 < int(m.group(4)[1:]) <= 65535):
        raise argparse.ArgumentTypeError(
            "invalid Redis URL %r (expected redis://[USER:PASSWORD@]HOST:PORT/DB or rediss://...)"
            % _hide_password(text))
    return text


def _hide_password(url):
    return re.sub(r"(://[^:@/]*:)[^@/]*@", r"\1***@", url)


def sentinels(text):
    """``HOST:PORT[,HOST:PORT...]`` (Redis Sentinel; PORT defaults to 26379); empty: none."""
    from ..proto.sentinel import parse_sentinels
    try:
        return parse_sentinels(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def password(text):
    """Any text on one line (a password); empty: none."""
    text = str(text)
    if "\n" in text or "\r" in text:
        raise argparse.ArgumentTypeError("invalid password (one line)")
    return text


def node_address(text):
    """``HOST:PORT`` (``[v6]:PORT``; PORT 0: the source port as bound); empty: none."""
    text = text.strip()
    if not text:
        return ""
    host, _, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or any(c.isspace() for c in host) or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError("invalid address %r (HOST:PORT)" % text)
    return (host, int(port))


_NAME = re.compile(r"^[A-Za-z0-9._-]{0,64}$")


def node_name(text):
    """Letters, digits, '.', '_' and '-' (at most 64)."""
    text = text.strip()
    if not _NAME.match(text):
        raise argparse.ArgumentTypeError("invalid name %r (letters, digits, '.', '_', '-'; at most 64)"
                                         % text)
    return text


def networks(text):
    """Comma-separated IP addresses or CIDR networks; empty for none."""
    nets = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise argparse.ArgumentTypeError("invalid address or network %r" % item)
    return tuple(nets)


def tokens(text):
    """Comma-separated source tokens and/or ``@file`` (one token per line); '' for none."""
    from .security import parse_tokens
    try:
        return parse_tokens(str(text))
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError("invalid tokens: %s" % exc)


def origins(text):
    """Comma-separated origins (``https://example.com``, ``https://*.example.com``); '' for any."""
    items = tuple(o.strip() for o in str(text).split(",") if o.strip())
    for o in items:
        if o != "*" and "://" not in o:
            raise argparse.ArgumentTypeError("invalid origin %r (e.g. https://example.com)" % o)
    return items


#: events per second (float), 0 meaning 'no limit': parsed like a duration
rate = seconds


def secret(text):
    """A bearer token: empty (feature off) or at least 16 characters without white space."""
    value = str(text).strip()
    if value and (len(value) < 16 or any(c.isspace() for c in value)):
        raise argparse.ArgumentTypeError("invalid token (at least 16 characters, no spaces)")
    return value
