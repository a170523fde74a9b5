"""The lines a source may send before its data: ``AUTH <TOKEN>`` and ``RESUME <CODE> <KEY>`` (sans-IO).

A :class:`Preamble` is fed the first bytes of a source connection and says,
once it knows, what they were: an ``AUTH`` token, a ``RESUME`` request, and
the bytes after those lines (the start of the source's data). Which lines are
expected depends on the relay's configuration:

- ``require_auth``: the first line must be ``AUTH <token>`` (``--source-tokens``);
- ``accept_auth``: a first line starting with ``AUTH `` is a token (named rooms
  exist), anything else is data;
- ``accept_resume``: after the optional ``AUTH`` line, a line starting with
  ``RESUME `` is a resume request (``--room-grace`` > 0), anything else is data;
- ``accept_sessions``: after the optional ``AUTH`` line, ``SESSIONS`` opens a session room's
  control link and ``SESSION <SID>`` is a session's data link (see
  :mod:`~sphincter_lib.proto.sessionwire`); anything else goes on to ``RESUME``/data.

An optional line is recognised by its first bytes: as long as what arrived
could still be the start of ``AUTH ``/``RESUME ``, :meth:`Preamble.feed`
returns None (more needed). :meth:`Preamble.timeout` ends the wait: what
arrived is data (or, for a required ``AUTH``, an error).
"""

from .sessionwire import SESSION, valid_sid

AUTH, RESUME = b"AUTH ", b"RESUME "


class Result:
    """What the preamble held: ``token`` (bytes or None), ``resume`` ((code, key) or None),
    ``rest`` (data bytes that followed), ``error`` (the ``ERROR`` reason, or None),
    ``sessions`` (True: a ``SESSIONS`` line, a session room's control link) and ``sid``
    (a ``SESSION <SID>`` line's id, a data link; else None)."""

    __slots__ = ("token", "resume", "rest", "error", "sessions", "sid")

    def __init__(self, token=None, resume=None, rest=b"", error=None, sessions=False, sid=None):
        self.token, self.resume, self.rest, self.error = token, resume, rest, error
        self.sessions, self.sid = sessions, sid

    def __repr__(self):
        return "Result(token=%r, resume=%r, rest=%r, error=%r, sessions=%r, sid=%r)" % (
            self.token, self.resume, self.rest, self.error, self.sessions, self.sid)


_LINE, _MORE, _NO, _LONG = "line", "more", "no", "long"


class Preamble:
    """Feed bytes until a :class:`Result` comes out (then it is done: feed no more)."""

    def __init__(self, require_auth=False, accept_auth=False, accept_resume=False, max_line=1024,
                 accept_sessions=False):
        self.require_auth = require_auth
        self.accept_auth = accept_auth or require_auth
        self.accept_resume = accept_resume
        self.accept_sessions = accept_sessions
        self.max_line = max_line
        self._buf = b""
        self._token = None
        self._stage = "auth"

    @property
    def required_pending(self):
        """True while a required ``AUTH`` line has not arrived."""
        return self._stage == "auth" and self.require_auth

    @property
    def waiting(self):
        """True while nothing is decided (more bytes or :meth:`timeout` will tell)."""
        return self._stage is not None

    def feed(self, data):
        """Bytes from the source (``b""``: end of stream). A Result once decided, else None."""
        if self._stage is None:
            return None
        if not data:
            return self._finish(eof=True)
        self._buf += data
        return self._advance()

    def timeout(self):
        """The wait is over: decide with what arrived (None if already decided)."""
        if self._stage is None:
            return None
        return self._finish(eof=False)

    # -- internals -------------------------------------------------------------------
    def _advance(self):
        if self._stage == "auth":
            if not self.accept_auth:
                self._stage = "session" if self.accept_sessions else "resume"
            else:
                kind, value = self._line(AUTH)
                if kind == _MORE:
                    return None
                if kind == _LONG or (kind == _NO and self.require_auth):
                    return self._fail("unauthorized")
                if kind == _LINE:
                    self._token = value
                self._stage = "session" if self.accept_sessions else "resume"
        if self._stage == "session":
            kind, value = self._line(SESSION)
            if kind == _MORE:
                return None
            if kind == _LONG:
                return self._fail("bad session line")
            if kind == _LINE:
                return self._session(value)
            self._stage = "resume"
        if not self.accept_resume:
            return self._done()
        kind, value = self._line(RESUME)
        if kind == _MORE:
            return None
        if kind == _NO:
            return self._done()
        parts = value.split() if kind == _LINE else ()
        if len(parts) != 2:
            return self._fail("cannot resume")
        try:
            code, key = parts[0].decode("ascii"), parts[1].decode("ascii")
        except UnicodeDecodeError:
            return self._fail("cannot resume")
        self._stage = None
        return Result(self._token, (code, key), self._buf)

    def _line(self, prefix):
        """(_LINE, what follows the prefix) and the line consumed; or _MORE, _NO, _LONG."""
        buf = self._buf
        n = min(len(buf), len(prefix))
        if buf[:n] != prefix[:n]:
            return _NO, None
        if len(buf) < len(prefix):
            return _MORE, None
        end = buf.find(b"\n", 0, self.max_line)
        if end < 0:
            return (_LONG if len(buf) >= self.max_line else _MORE), None
        self._buf = buf[end + 1:]
        return _LINE, buf[len(prefix):end].rstrip(b"\r")

    def _session(self, value):
        """``value``: what followed ``SESSION`` on its line."""
        self._stage = None
        if value == b"S":
            return Result(self._token, None, self._buf, sessions=True)
        sid = value[1:].decode("ascii", "replace") if value[:1] == b" " else ""
        if not valid_sid(sid):
            return Result(self._token, None, b"", "bad session line")
        return Result(self._token, None, self._buf, sid=sid)

    def _done(self):
        self._stage = None
        return Result(self._token, None, self._buf)

    def _fail(self, reason):
        self._stage = None
        return Result(self._token, None, b"", reason)

    def _finish(self, eof):
        stage, buf = self._stage, self._buf
        if stage == "auth" and self.require_auth:
            return self._fail("unauthorized" if eof else "auth timeout")
        prefix = {"auth": AUTH, "session": SESSION}.get(stage, RESUME)
        if (stage == "auth" and not self.accept_auth) or (stage == "resume" and not self.accept_resume):
            return self._done()
        if stage == "session":
            if buf and buf[:len(prefix)] == prefix[:len(buf)] and len(buf) >= len(prefix):
                return self._fail("bad session line")
            self._stage = "resume"
            if not self.accept_resume:
                return self._done()
            prefix = RESUME
        if buf and buf[:len(prefix)] == prefix[:len(buf)] and len(buf) >= len(prefix):
            return self._fail("unauthorized" if stage == "auth" else "cannot resume")
        return self._done()
