"""The folder tree is the architecture (ARCHITECTURE.md, "Layout"): the rules it states hold.

Read with ``ast``, nothing imported, every import counted (those inside functions too):

- ``proto/`` is pure (sans-IO): no gevent, no sockets, no ``select``, no sleeping; it imports
  nothing of the package but ``proto/`` itself, ``errors`` and ``closecodes``;
- imports flow one way: ``agent`` and ``relay`` use ``proto``; ``relay`` uses ``rooms`` (and
  starts ``cluster``, which implements ``rooms``' interface); ``agent`` imports nothing of the
  relay's side; the shared top-level modules import no subpackage;
- no import circle among the package's modules;
- ``relay/ws.py`` is the only module that imports gevent-websocket, ``__main__`` the only one
  that patches with gevent;
- loggers form one tree, ``sphincter.<side>.<module>``, each listed in the README.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PKG = "sphincter_lib"

#: top-level modules every side may use ("" is the package itself: ``__version__``)
SHARED = {"", "errors", "closecodes", "logformat", "options", "tcp"}
#: what each part of the package may import from the package
ALLOWED = {
    "proto": {"proto", "errors", "closecodes"},
    "rooms": {"rooms", "proto"} | SHARED,
    "cluster": {"cluster", "rooms", "proto"} | SHARED,
    "relay": {"relay", "rooms", "cluster", "proto"} | SHARED,
    "agent": {"agent", "proto"} | SHARED,
}
ALLOWED.update((name, SHARED) for name in SHARED)
ENTRY = {"cli", "__main__"}              # the command line: may import anything
IO_MODULES = {"gevent", "geventwebsocket", "socket", "select", "selectors", "ssl", "asyncio",
              "threading", "subprocess"}


def package_modules():
    """{dotted name: path} of every module (a package by its own name)."""
    found = {}
    for folder, dirs, files in os.walk(os.path.join(ROOT, PKG)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        base = os.path.relpath(folder, ROOT).replace(os.sep, ".")
        for f in files:
            if f.endswith(".py"):
                found[base if f == "__init__.py" else base + "." + f[:-3]] = os.path.join(folder, f)
    return found


MODULES = package_modules()


def parse(name):
    with open(MODULES[name], "rb") as f:
        return ast.parse(f.read(), MODULES[name])


def imports(name):
    """[(imported module, lineno)] of every import statement in module ``name``: relative
    imports resolved; ``from package import module`` counted as that module."""
    is_package = MODULES[name].endswith("__init__.py")
    out = []
    for node in ast.walk(parse(name)):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".")
                base = parts[:len(parts) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                sub = module + "." + alias.name
                out.append((sub if sub in MODULES else module, node.lineno))
    return out


def side(name):
    """'proto', 'relay', ... for a subpackage's modules; the module's own name at the top level."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def package_imports(name):
    return [(m, line) for m, line in imports(name) if m == PKG or m.startswith(PKG + ".")]


SIDES = {"proto", "rooms", "relay", "cluster", "agent"}


def test_the_layout_is_there():
    assert {side(n) for n in MODULES if n.count(".") >= 2} == SIDES
    top = {side(n) for n in MODULES if n.count(".") <= 1} - SIDES
    assert top <= SHARED | ENTRY, "top-level modules the layout does not name: %s" % sorted(
        top - SHARED - ENTRY)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if side(n) == "proto"))
def test_proto_is_pure(name):
    bad = [(m, line) for m, line in imports(name) if m.split(".")[0] in IO_MODULES]
    tree = parse(name)
    bad += [("time.sleep", node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr == "sleep"
            and isinstance(node.value, ast.Name) and node.value.id == "time"]
    bad += [("time.sleep", node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "time"
            and any(a.name == "sleep" for a in node.names)]
    assert not bad, "%s does I/O: %s" % (name, bad)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if side(n) not in ENTRY))
def test_imports_flow_one_way(name):
    assert side(name) in ALLOWED, "%s: a top-level module the layout does not name" % name
    allowed = ALLOWED[side(name)]
    bad = [(m, line) for m, line in package_imports(name) if side(m) not in allowed]
    assert not bad, "%s (%s/) may import only %s; it imports %s" % (
        name, side(name), sorted(allowed), bad)


def test_no_import_circle():
    graph = {name: sorted({m for m, _ in package_imports(name) if m in MODULES and m != name})
             for name in MODULES}
    state, stack, circles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not circles, "import circles: %s" % [" -> ".join(c) for c in circles]


def test_only_relay_ws_imports_gevent_websocket():
    users = sorted(n for n in MODULES if any(m.split(".")[0] == "geventwebsocket" for m, _ in imports(n)))
    assert users == [PKG + ".relay.ws"]


def test_only_main_patches():
    def patches(name):
        for node in ast.walk(parse(name)):
            if isinstance(node, ast.Import) and any(a.name.startswith("gevent.monkey") for a in node.names):
                return True
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gevent") and (
                    node.module.startswith("gevent.monkey") or any(a.name == "monkey" for a in node.names)):
                return True
        return False

    assert sorted(n for n in MODULES if patches(n)) == [PKG + ".__main__"]


def test_package_inits_import_nothing():
    """Importing a subpackage costs nothing and patches nothing: its ``__init__`` is a docstring."""
    for name, path in MODULES.items():
        if path.endswith("__init__.py"):
            assert imports(name) == [], name


def string_literal(node):
    """A string literal's value, else None (``ast.Str`` before CPython 3.8, ``ast.Constant`` after)."""
    value = getattr(node, "value", getattr(node, "s", None))
    return value if isinstance(value, str) else None


def logger_names(name):
    """[(logger name, or None when not a string literal; lineno)] of ``getLogger`` calls."""
    return [(string_literal(node.args[0]) if node.args else None, node.lineno)
            for node in ast.walk(parse(name))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "getLogger"]


def test_loggers_form_one_tree_listed_in_the_readme():
    """``sphincter.<side>.<module>`` (more names under the module's side are allowed: the
    access log), written out so a log line's name is found with grep; the README lists them."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    seen = set()
    for name in MODULES:
        for logger, line in logger_names(name):
            where = "%s:%d" % (name, line)
            assert logger, "%s: name the logger with a string, 'sphincter.<side>.<module>'" % where
            own = "sphincter" + name[len(PKG):]
            assert logger == own or (side(name) and logger.startswith("sphincter.%s." % side(name))), (
                "%s: logger %r, expected %r" % (where, logger, own))
            assert "`%s`" % logger in readme, "%s: logger %r is not in the README's table" % (where, logger)
            seen.add(logger)
    assert "sphincter.relay.server" in seen and "sphincter.agent.connect" in seen
