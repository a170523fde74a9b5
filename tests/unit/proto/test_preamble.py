"""The source preamble (AUTH / RESUME lines), fed whole and byte by byte."""

import pytest

from sphincter_lib.proto.preamble import Preamble


def run(data, split=None, **kw):
    p = Preamble(**kw)
    chunks = [data] if split is None else [data[i:i + split] for i in range(0, len(data), split)]
    for chunk in chunks:
        r = p.feed(chunk)
        if r is not None:
            return r, p
    return None, p


def outcome(r):
    return (r.token, r.resume, r.rest, r.error)


@pytest.mark.parametrize("split", [None, 1, 2, 3, 7])
def test_required_auth_then_data(split):
    r, _ = run(b"AUTH s3cret\nhello\n", split, require_auth=True)
    # byte by byte the data after the AUTH line comes out as soon as it is known not to be RESUME
    assert r.token == b"s3cret" and r.error is None and b"hello\n".startswith(r.rest)


def test_required_auth_wrong_first_line():
    r, _ = run(b"hello\n", require_auth=True)
    assert outcome(r) == (None, None, b"", "unauthorized")
    r, _ = run(b"AUTX", require_auth=True)
    assert r.error == "unauthorized"


def test_required_auth_timeout_and_eof():
    p = Preamble(require_auth=True)
    assert p.feed(b"AUTH abc") is None
    assert p.timeout().error == "auth timeout"
    p = Preamble(require_auth=True)
    assert p.feed(b"AUTH abc") is None
    assert p.feed(b"").error == "unauthorized"


def test_too_long_auth_line():
    r, _ = run(b"AUTH " + b"x" * 2000, require_auth=True, max_line=1024)
    assert r.error == "unauthorized"


@pytest.mark.parametrize("split", [None, 1, 4])
def test_optional_auth_recognised_else_data(split):
    r, _ = run(b"AUTH named-token\r\nline\n", split, accept_auth=True)
    assert r.token == b"named-token" and r.error is None
    r, _ = run(b"AUDIT log line\n", split, accept_auth=True)
    assert r.token is None and r.rest.startswith(b"AU") and r.error is None


def test_optional_auth_waits_on_a_prefix_then_timeout_is_data():
    p = Preamble(accept_auth=True)
    assert p.feed(b"AUT") is None and p.waiting
    r = p.timeout()
    assert outcome(r) == (None, None, b"AUT", None)


@pytest.mark.parametrize("split", [None, 1, 5])
def test_resume_line(split):
    r, _ = run(b"RESUME X7K9P2 abcDEF_-123\nmore data", split, accept_resume=True)
    assert r.resume == ("X7K9P2", "abcDEF_-123") and r.error is None
    assert b"more data".startswith(r.rest)


@pytest.mark.parametrize("line", [b"RESUME X7K9P2\n", b"RESUME a b c\n", b"RESUME \xff\xfe k\n"])
def test_bad_resume_lines_fail(line):
    r, _ = run(line, accept_resume=True)
    assert r.error == "cannot resume"


def test_auth_then_resume():
    r, _ = run(b"AUTH tok\nRESUME ABCDEF key\nx", require_auth=True, accept_resume=True)
    assert outcome(r) == (b"tok", ("ABCDEF", "key"), b"x", None)


def test_auth_then_nothing_waits_for_a_possible_resume():
    p = Preamble(require_auth=True, accept_resume=True)
    assert p.feed(b"AUTH tok\n") is None
    assert outcome(p.timeout()) == (b"tok", None, b"", None)


def test_data_that_is_not_resume_goes_through_at_once():
    r, _ = run(b"{\"scene\": 1}\n", accept_resume=True)
    assert outcome(r) == (None, None, b"{\"scene\": 1}\n", None)


def test_nothing_expected_is_data_at_once():
    assert outcome(run(b"AUTH x\n")[0]) == (None, None, b"AUTH x\n", None)


def test_eof_before_anything_is_empty_data():
    p = Preamble(accept_resume=True)
    assert outcome(p.feed(b"")) == (None, None, b"", None)
    assert p.feed(b"more") is None        # decided: done


# --- session rooms (issue 20): SESSIONS (control link), SESSION <SID> (data link) -------------

SID = "abcdefghijklmnopqrstuv"


def feed_all(data, **kw):
    """Fed at every split point: one result, whatever the chunks (rest completed by the caller)."""
    results = []
    for cut in range(1, len(data) + 1):
        p = Preamble(**kw)
        r = p.feed(data[:cut])
        if r is None and cut < len(data):
            r = p.feed(data[cut:])
            if r is not None:
                results.append(r)
                continue
        elif r is not None:
            r.rest += data[cut:]
        results.append(r if r is not None else p.timeout())
    return results


@pytest.mark.parametrize("kw", [dict(accept_sessions=True),
                                dict(accept_sessions=True, accept_auth=True, accept_resume=True)])
def test_sessions_line_is_a_control_link(kw):
    for r in feed_all(b"SESSIONS\nrest", **kw):
        assert (r.sessions, r.sid, r.error) == (True, None, None)
        assert b"rest".endswith(r.rest)


@pytest.mark.parametrize("kw", [dict(accept_sessions=True),
                                dict(accept_sessions=True, accept_auth=True, accept_resume=True)])
def test_session_line_is_a_data_link_and_keeps_what_follows(kw):
    data = b"SESSION " + SID.encode() + b"\r\nSSH-2.0-OpenSSH\r\n"
    for r in feed_all(data, **kw):
        assert (r.sessions, r.sid, r.error) == (False, SID, None)
        assert b"SSH-2.0-OpenSSH\r\n".endswith(r.rest)


def test_auth_then_sessions():
    r, _ = run(b"AUTH tok3n\nSESSIONS\n", None, require_auth=True, accept_sessions=True)
    assert (r.token, r.sessions, r.error) == (b"tok3n", True, None)


@pytest.mark.parametrize("line", [b"SESSION short\n", b"SESSION " + b"x" * 21 + b"\n",
                                  b"SESSIONX\n", b"SESSION " + b"a!" * 15 + b"\n"])
def test_bad_session_lines_are_refused(line):
    r, _ = run(line, None, accept_sessions=True)
    assert r.error == "bad session line" and r.rest == b""


def test_session_line_too_long_is_refused():
    r, _ = run(b"SESSION " + b"a" * 2000, None, accept_sessions=True, max_line=1024)
    assert r.error == "bad session line"


def test_without_accept_sessions_the_lines_are_data():
    r, _ = run(b"SESSIONS\n", None, accept_resume=True)
    assert (r.sessions, r.sid, r.rest) == (False, None, b"SESSIONS\n")


def test_other_data_goes_on_to_resume_and_data():
    r, _ = run(b"RESUME ABCDEF key\nx", None, accept_sessions=True, accept_resume=True)
    assert r.resume == ("ABCDEF", "key") and not r.sessions
    r, _ = run(b"hello", None, accept_sessions=True)
    assert r.rest == b"hello" and not r.sessions


def test_a_partial_session_line_at_the_timeout():
    p = Preamble(accept_sessions=True)
    assert p.feed(b"SESS") is None
    r = p.timeout()
    assert (r.rest, r.error, r.sessions) == (b"SESS", None, False)     # could not be a line yet: data
    p = Preamble(accept_sessions=True)
    assert p.feed(b"SESSIONS") is None
    assert p.timeout().error == "bad session line"
