"""agent/engines/: the runtime never imports the build side, and no module imports in a circle.

What the runtime imports is checked the way it happens: a fresh interpreter imports
the pipeline or a backend, then lists sys.modules. The cycle check reads every import
in agent/engines/*.py with ast, lazy ones inside functions included (a lazy import is
still a cycle for whoever reads the code).
"""

import ast
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINES = os.path.join(ROOT, "agent", "engines")
BUILD_SIDE = ("agent.engines.build", "agent.engines.worker", "agent.engines.trt_build")


def _imported_by(module):
    code = "import json, sys, {}; print(json.dumps(sorted(m for m in sys.modules if m.startswith('agent'))))".format(
        module)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.parametrize("module", ["agent.pipeline", "agent.backends.tensorrt", "agent.backends.onnxruntime",
                                    "agent.engines.artifact"])
def test_runtime_does_not_import_the_build_side(module):
    loaded = _imported_by(module)
    assert module in loaded
    assert not [m for m in BUILD_SIDE if m in loaded], loaded


def test_build_engine_imports_the_build_side():
    """The check above would pass on names that no longer exist: the build side is where it says."""
    loaded = _imported_by("agent.engines.build")
    assert [m for m in BUILD_SIDE if m in loaded] == ["agent.engines.build", "agent.engines.worker"]


def _engines_imports():
    """{module: {modules of agent.engines it imports, anywhere in the file}}."""
    graph = {}
    for name in sorted(os.listdir(ENGINES)):
        if not name.endswith(".py"):
            continue
        module = "agent.engines" + ("" if name == "__init__.py" else "." + name[:-3])
        package = "agent.engines" if name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        with open(os.path.join(ENGINES, name)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")
                base = base[:len(base) - node.level + 1] if node.level else []
                origin = ".".join(base + ([node.module] if node.module else []))
                names = [origin] + [origin + "." + a.name for a in node.names]
            else:
                continue
            targets.update(n for n in names if n.startswith("agent.engines"))
        graph[module] = targets
    for module in graph:  # 'from . import x' named the package and x; keep the modules only
        graph[module] = {t for t in graph[module] if t in graph and t != module and t != "agent.engines"}
    return graph


def test_no_import_cycle_in_engines():
    graph = _engines_imports()
    assert {"agent.engines.artifact", "agent.engines.build", "agent.engines.files"} <= set(graph)

    def visit(module, path):
        for target in sorted(graph[module]):
            assert target not in path, "import cycle: " + " -> ".join(path + [target])
            visit(target, path + [target])

    for module in graph:
        visit(module, [module])


def test_runtime_modules_import_no_build_module_even_lazily():
    graph = _engines_imports()
    for module in ("agent.engines.artifact", "agent.engines.manifest", "agent.engines.files", "agent.engines.child"):
        seen, todo = set(), [module]
        while todo:
            current = todo.pop()
            for target in graph[current] - seen:
                seen.add(target)
                todo.append(target)
        assert not seen & set(BUILD_SIDE), (module, sorted(seen & set(BUILD_SIDE)))
