"""Room codes and room names.

Codes: six characters from an alphabet without look-alikes. The alphabet is
the uppercase letters and digits minus ``0 O 1 I L`` (31 symbols, so 31**6 ≈
887 million codes). Codes are drawn with :mod:`secrets`; the RNG is
injectable for tests.

Names (``--rooms-file``): 3–32 characters from ``A-Z a-z 0-9 _ -``. Codes and
names share one key space, case-insensitive: :func:`room_key`.
"""

import re
import secrets

from ..errors import RoomNotFound

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
LENGTH = 6
_ALLOWED = frozenset(ALPHABET)


def make_code(taken=(), choice=secrets.choice, attempts=100):
    """Return a new code not in ``taken`` (a container of live codes)."""
    for _ in range(attempts):
        code = "".join(choice(ALPHABET) for _ in range(LENGTH))
        if code not in taken:
            return code
    raise RuntimeError("could not draw a free room code in %d attempts" % attempts)


def normalize(text):
    """Return the canonical form of a code typed by a person, or raise RoomNotFound.

    Case-insensitive; surrounding white space is ignored.
    """
    code = (text or "").strip().upper()
    if len(code) != LENGTH or not _ALLOWED.issuperset(code):
        raise RoomNotFound()
    return code


_NAME = re.compile(r"^[A-Za-z0-9_-]{3,32}$")


def is_name(text):
    """True for a valid room name (as written in a rooms file)."""
    return bool(_NAME.match(text or ""))


def room_key(text):
    """The lookup key of a code or name typed by a person, or raise RoomNotFound."""
    key = (text or "").strip()
    if not _NAME.match(key):
        raise RoomNotFound()
    return key.upper()


def resume_key(nbytes=16):
    """A fresh secret for ``RESUME``/``WRITE`` lines: ``nbytes`` (≥ 16) random bytes, URL-safe text."""
    return secrets.token_urlsafe(max(16, nbytes))


def is_valid(text):
    try:
        normalize(text)
    except RoomNotFound:
        return False
    return True
