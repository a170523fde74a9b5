"""The declared room interface (``rooms/interface.py``) is the whole truth of the seam.

Read with ``ast``, nothing imported:

- the interface module imports nothing of the package but ``closecodes`` (no implementation);
- in ``relay/``, every attribute read or called on a room-side object names something the
  interface declares. Objects are known by the name they go by in relay/ (a variable or an
  attribute): ``registry`` is a room model, ``room`` a room, ``sub`` a subscriber, ``outbox``
  a room's outbox, ``sroom`` a session room. A new name for one of them belongs in ``holders`` below.
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PKG = os.path.join(ROOT, "sphincter_lib")


def _parse(*parts):
    path = os.path.join(PKG, *parts)
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def _declared():
    """The interface's name tuples, read from its source (not imported)."""
    tree = _parse("rooms", "interface.py")
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
            if isinstance(value, ast.BinOp):            # ROOM_FIGURES + (...)
                left, right = value.left, value.right
                values[name] = values[left.id] + tuple(ast.literal_eval(right))
            elif isinstance(value, ast.Tuple):
                try:
                    values[name] = tuple(ast.literal_eval(value))
                except ValueError:
                    pass
    return values


def test_interface_imports_no_implementation():
    tree = _parse("rooms", "interface.py")
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported.extend(alias.name for alias in node.names)
    assert imported == ["..closecodes"], imported


def test_relay_uses_only_declared_names():
    declared = _declared()
    holders = {
        "registry": set(declared["MODEL_NAMES"]),
        "room": set(declared["ROOM_NAMES"]),
        "sub": set(declared["SUBSCRIBER_NAMES"]),
        "outbox": set(declared["OUTBOX_NAMES"]),
        "sroom": set(declared["SESSION_ROOM_NAMES"]),
    }
    relay = os.path.join(PKG, "relay")
    bad, seen = [], 0
    for name in sorted(os.listdir(relay)):
        if not name.endswith(".py"):
            continue
        for node in ast.walk(_parse("relay", name)):
            if not isinstance(node, ast.Attribute):
                continue
            value = node.value
            holder = value.id if isinstance(value, ast.Name) else \
                value.attr if isinstance(value, ast.Attribute) else None
            if holder in holders:
                seen += 1
                if node.attr not in holders[holder]:
                    bad.append("relay/%s:%d %s.%s" % (name, node.lineno, holder, node.attr))
    assert seen > 50, "the relay's names for room objects changed: update HOLDERS"
    assert not bad, "undeclared in rooms/interface.py: %s" % ", ".join(bad)
