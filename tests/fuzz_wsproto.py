"""atheris (libFuzzer) target for the WebSocket frame parser.

    python tests/fuzz_wsproto.py -max_total_time=300      # make fuzz (FUZZ_SECONDS)
    python tests/fuzz_wsproto.py -runs=100000             # tests/process/test_fuzz.py, bounded

Per input: choose parser options and split points from the input itself, feed
the rest; check that only ProtocolError (1002/1007/1009) escapes, that the
outcome does not depend on how the bytes were split, that text events are
valid UTF-8, that no data event exceeds the cap, and that parse_close and the
source AUTH check never crash.  A crash writes ``crash-<sha1>`` (the input)
to the current directory; libFuzzer prints how to reproduce.
"""
import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
with atheris.instrument_imports():
    from sphincter_lib.relay import security
    from sphincter_lib.proto import frames as wsproto
    from sphincter_lib.errors import ProtocolError


def run(parser, chunks):
    events = []
    for chunk in chunks:
        got, err = parser.feed_partial(chunk)
        events.extend(got)
        if err is not None:
            assert err.code in (1002, 1007, 1009), err.code
            return events, err.code
    return events, None


def TestOneInput(data):
    fdp = atheris.FuzzedDataProvider(data)
    cap = fdp.ConsumeIntInRange(0, 1 << 16)
    require_mask = fdp.ConsumeBool()
    keep = fdp.ConsumeBool()
    cuts = sorted(fdp.ConsumeIntInRange(0, 4096) for _ in range(fdp.ConsumeIntInRange(0, 8)))
    wire = fdp.ConsumeBytes(fdp.remaining_bytes())

    def make():
        return wsproto.FrameParser(max_message_bytes=cap, require_mask=require_mask, keep_data=keep)

    whole = run(make(), [wire])
    chunks, prev = [], 0
    for c in cuts:
        c = min(c, len(wire))
        chunks.append(wire[prev:c])
        prev = max(prev, c)
    chunks.append(wire[prev:])
    assert run(make(), chunks) == whole, "outcome depends on the split"
    for op, payload in whole[0]:
        if op == wsproto.TEXT:
            payload.decode("utf-8")
        if op in (wsproto.TEXT, wsproto.BINARY):
            assert len(payload) <= cap
            if not keep:
                assert payload == b""
        elif op in (wsproto.PING, wsproto.PONG, wsproto.CLOSE):
            assert len(payload) <= 125
    try:
        wsproto.parse_close(wire[:125])
    except ProtocolError as exc:
        assert exc.code in (1002, 1007)
    security.check_auth_line(wire[:200], (b"token-a", b"b"))


def main(argv):
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
