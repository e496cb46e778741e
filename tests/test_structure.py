"""The shape of the package: no import cycle among agent/ modules, no module too long without a reason."""

import ast
import os

from conftest import ROOT

AGENT = os.path.join(ROOT, "agent")
LONG = 400  # lines; a longer module says why at its top


def modules():
    """{dotted name: path} of every module under agent/."""
    out = {}
    for folder, _, files in os.walk(AGENT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
    return out


def imports(name, path, known):
    """The agent modules ``name`` imports anywhere in its body (lazy imports count: a cycle is a cycle)."""
    package = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module or ""
            # ``from pkg import sub`` imports the submodule; ``from pkg import name`` the package.
            targets = [base + "." + a.name if base + "." + a.name in known else base for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("agent"):
                found.add(t)
    return found


def test_no_import_cycle_among_agent_modules():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    # A cycle exists iff some module reaches itself; report the first one found, as a path.
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node]):
                assert nxt != start, "import cycle: " + " -> ".join(path + [start])
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))


def test_the_cycle_check_finds_a_cycle(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from . import b\n")
    b.write_text("def f():\n    from .a import x\n")
    known = {"agent.x.a": str(a), "agent.x.b": str(b)}
    assert imports("agent.x.a", str(a), known) == {"agent.x.b"}
    assert imports("agent.x.b", str(b), known) == {"agent.x.a"}


def test_long_modules_say_why():
    for name, path in sorted(modules().items()):
        text = open(path).read()
        if text.count("\n") > LONG:
            doc = ast.get_docstring(ast.parse(text)) or ""
            assert "longer than" in doc, "{} has {} lines and no reason at its top".format(name, text.count("\n"))
