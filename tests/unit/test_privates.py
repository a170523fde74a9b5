"""Nobody reads or writes another object's underscore names (ARCHITECTURE.md, style 12).

Read with ``ast``, nothing imported: in every module of the package, ``x._name`` is allowed
only when ``x`` is ``self`` or ``cls`` (dunders aside, and namedtuple's documented
``_replace``/``_asdict``/``_fields``/``_make``). What still does it is in :data:`ALLOWED`, each
with its reason; the list should only shrink.
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PKG = os.path.join(ROOT, "sphincter_lib")

#: namedtuple's public API, underscored so as not to clash with field names
NAMEDTUPLE = {"_replace", "_asdict", "_fields", "_make"}

#: (module path under sphincter_lib/, attribute) pairs still allowed, and why
ALLOWED = {
    # argparse has no public list of a parser's actions (options.py walks them for --help/env)
    ("options.py", "_actions"),
    # gevent's socket wraps the OS socket as _sock: the event loop's direct, non-blocking
    # send and read need the OS socket itself (no public name in gevent 1.x to 24.x)
    ("relay/wsconn.py", "_sock"),
    # redis-py's connection classes are extended by overriding _connect (its own SSLConnection
    # and Sentinel connections do): the one hook that picks the address before each new socket
    ("cluster/sentinel.py", "_connect"),
}


def _modules():
    for root, dirs, files in os.walk(PKG):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                yield os.path.relpath(path, PKG).replace(os.sep, "/"), path


def _reaches():
    """(module, line, attribute) of every ``x._name`` where ``x`` is not self or cls."""
    for rel, path in _modules():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            attr = node.attr
            if not attr.startswith("_") or attr.startswith("__") or attr in NAMEDTUPLE:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            yield rel, node.lineno, attr


def test_no_one_touches_another_objects_privates():
    bad = ["%s:%d .%s" % r for r in _reaches() if (r[0], r[2]) not in ALLOWED]
    assert not bad, "reaching into another object's underscore names: " + ", ".join(bad)


def test_the_allowlist_has_no_stale_entry():
    used = {(rel, attr) for rel, _, attr in _reaches()}
    stale = sorted(ALLOWED - used)
    assert not stale, "no longer needed, remove from ALLOWED: %s" % stale
