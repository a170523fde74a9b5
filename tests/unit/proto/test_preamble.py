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
