"""Autobahn|Testsuite harness: spec generation, running wstest, report parsing.

Runs under the project's Python 3; only ``wstest`` itself runs on CPython 2.7, from
the virtualenv made by ``make autobahn-venv`` (default ``build/autobahn-venv``).

    python tests/autobahn/harness.py run --url ws://127.0.0.1:8080/... --set ci
    python tests/autobahn/harness.py summary build/autobahn/reports

Case sets (compression cases 12.* and 13.* are always excluded: Sphincter does not
implement permessage-deflate):

* ``full``: sections 1-7, 9 and 10, all 301 cases.  Against Sphincter's echo
  endpoint this takes ~25 s here, so CI runs it (tests/relay/test_autobahn.py).
* ``ci``: sections 1-7 and 10 whole, plus the smaller section-9 cases (messages up
  to 1 MiB, bursts up to 1000 x 256 B/16 KiB): 259 cases, for slower machines
  (``SPHINCTER_AUTOBAHN_SET=ci``).
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_VENV = os.path.join(ROOT, "build", "autobahn-venv")

#: Cases never run: permessage-deflate (not implemented).
EXCLUDE_ALWAYS = ["12.*", "13.*"]

CASE_SETS = {
    "full": {"cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"],
             "exclude": []},
    # 9.1.4-9.1.6 / 9.2.4-9.2.6: 4-16 MiB single messages; 9.3.*/9.4.*: 4-16 MiB
    # in many fragments/frames; 9.5.*/9.6.*: 1 MiB at various chop sizes; 9.8.x
    # for x > 3: 1000 messages of 64 KiB+.  Those are the slow ones.
    "ci": {"cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*",
                     "9.1.1", "9.1.2", "9.1.3", "9.2.1", "9.2.2", "9.2.3",
                     "9.7.1", "9.7.2", "9.7.3", "9.8.1", "9.8.2", "9.8.3"],
           "exclude": []},
}

#: Behaviours as written by wstest, best first.
BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
#: Behaviours that count as passing.
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}

CaseResult = collections.namedtuple(
    "CaseResult",
    "case_id behavior behavior_close remote_close_code duration_ms detail")


def make_spec(url, outdir, cases, exclude=(), agent="Sphincter", fail_by_drop=False):
    """Return a fuzzingclient spec (a dict ready for json.dump)."""
    return {
        "outdir": outdir,
        "options": {"failByDrop": fail_by_drop},
        "servers": [{"agent": agent, "url": url}],
        "cases": list(cases),
        "exclude-cases": list(EXCLUDE_ALWAYS) + list(exclude),
        "exclude-agent-cases": {},
    }


def wstest_path(venv=DEFAULT_VENV):
    return os.path.join(venv, "bin", "wstest")


def run_fuzzingclient(url, outdir, case_set="ci", cases=None, venv=DEFAULT_VENV,
                      timeout=600, agent="Sphincter", log=None):
    """Run wstest -m fuzzingclient against *url*; return parsed results.

    *cases* (a list of patterns) overrides *case_set*.  Raises
    ``subprocess.TimeoutExpired`` past *timeout* seconds (the child is killed).
    """
    chosen = CASE_SETS[case_set]
    spec = make_spec(url, os.path.abspath(outdir), cases or chosen["cases"],
                     [] if cases else chosen["exclude"], agent=agent)
    os.makedirs(outdir, exist_ok=True)
    fd, spec_path = tempfile.mkstemp(prefix="autobahn-spec-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(spec, f, indent=2)
    workdir = tempfile.mkdtemp(prefix="autobahn-run-")
    out = log if log is not None else subprocess.DEVNULL
    try:
        # wstest starts a web server for reports unless told not to (-u 0 is not
        # honoured by every mode), so run it in its own cwd and kill on timeout.
        proc = subprocess.Popen([wstest_path(venv), "-m", "fuzzingclient", "-s", spec_path],
                                cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        if proc.returncode != 0:
            raise RuntimeError("wstest exited with %s" % proc.returncode)
    finally:
        os.unlink(spec_path)
    return parse_reports(outdir, agent=agent)


def case_key(case_id):
    return tuple(int(p) for p in case_id.split("."))


def parse_reports(outdir, agent=None):
    """Read ``index.json`` (and each case's own JSON) into sorted CaseResults."""
    with open(os.path.join(outdir, "index.json")) as f:
        index = json.load(f)
    if agent is None:
        if len(index) != 1:
            raise ValueError("several agents in report, name one: %s" % sorted(index))
        agent = next(iter(index))
    results = []
    for case_id, c in index[agent].items():
        detail = {}
        path = os.path.join(outdir, c.get("reportfile", ""))
        if c["behavior"] not in ("OK",) or c["behaviorClose"] not in ("OK", "INFORMATIONAL"):
            if os.path.isfile(path):
                with open(path) as f:
                    full = json.load(f)
                detail = {k: full.get(k) for k in (
                    "description", "expectation", "result", "resultClose",
                    "remoteCloseCode", "remoteCloseReason", "wasClean",
                    "wasNotCleanReason")}
        results.append(CaseResult(case_id, c["behavior"], c["behaviorClose"],
                                  c.get("remoteCloseCode"), c.get("duration"), detail))
    results.sort(key=lambda r: case_key(r.case_id))
    return results


def counts(results):
    """{behavior: n} over all results."""
    out = collections.Counter(r.behavior for r in results)
    return {b: out.get(b, 0) for b in BEHAVIORS if out.get(b)}


def failing(results):
    """Results whose behaviour or close behaviour is not acceptable."""
    return [r for r in results
            if r.behavior not in PASSING or r.behavior_close not in ("OK", "INFORMATIONAL")]


def summary_table(results):
    """Markdown: one row per section (1, 2, ... 10), columns per behaviour."""
    by_section = collections.OrderedDict()
    for r in results:
        by_section.setdefault(r.case_id.split(".")[0], []).append(r)
    cols = BEHAVIORS + ["close not OK", "time (s)"]
    lines = ["| section | cases | " + " | ".join(cols) + " |",
             "|---|---:|" + "---:|" * len(cols)]
    total = []
    for sec, rs in by_section.items():
        lines.append(_row(sec, rs))
        total.extend(rs)
    lines.append(_row("**all**", total))
    return "\n".join(lines)


def _row(label, rs):
    c = collections.Counter(r.behavior for r in rs)
    bad_close = sum(1 for r in rs if r.behavior_close not in ("OK", "INFORMATIONAL"))
    secs = sum(r.duration_ms or 0 for r in rs) / 1000.0
    cells = [str(c.get(b, 0)) for b in BEHAVIORS] + [str(bad_close), "%.1f" % secs]
    return "| %s | %d | %s |" % (label, len(rs), " | ".join(cells))


def details(results):
    """Markdown list of the non-OK cases with expected vs actual."""
    lines = []
    for r in results:
        if r.behavior == "OK" and r.behavior_close in ("OK", "INFORMATIONAL"):
            continue
        d = r.detail
        lines.append("- **%s** %s / close %s (code %s): %s — %s; close: %s" % (
            r.case_id, r.behavior, r.behavior_close, r.remote_close_code,
            (d.get("description") or "").strip().replace("\n", " ")[:160],
            (d.get("result") or "").strip().replace("\n", " ")[:200],
            (d.get("resultClose") or "").strip().replace("\n", " ")[:200]))
    return "\n".join(lines) or "(none)"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run wstest fuzzingclient against a URL")
    r.add_argument("--url", required=True)
    r.add_argument("--set", default="ci", choices=sorted(CASE_SETS))
    r.add_argument("--cases", nargs="*", help="case patterns (override --set)")
    r.add_argument("--out", default=os.path.join(ROOT, "build", "autobahn", "reports"))
    r.add_argument("--venv", default=DEFAULT_VENV)
    r.add_argument("--timeout", type=float, default=3600)
    s = sub.add_parser("summary", help="summarise an existing report directory")
    s.add_argument("out")
    args = p.parse_args(argv)
    if args.cmd == "run":
        t0 = time.monotonic()
        results = run_fuzzingclient(args.url, args.out, args.set, args.cases, args.venv,
                                    args.timeout, log=sys.stderr)
        print("ran %d cases in %.0f s" % (len(results), time.monotonic() - t0))
    else:
        results = parse_reports(args.out)
    print(summary_table(results))
    print()
    print(details(results))
    return 1 if failing(results) else 0


if __name__ == "__main__":
    sys.exit(main())
