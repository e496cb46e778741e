"""mypy over the TensorRT modules, against tensorrt-stubs (TensorRT 10.x)."""

import ast
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# build.py and gate.py: the TensorRT build goes through the same accuracy gate as ONNX Runtime's.
FILES = ["agent/trt_compat.py", "agent/engines/trt_build.py", "agent/backends/tensorrt.py", "agent/engines/build.py",
         "agent/engines/gate.py"]


def _mypy(args, env=None):
    pytest.importorskip("mypy")
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports", "--no-incremental"] + args + FILES,
                          cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300)


def test_mypy_passes():
    res = _mypy([])
    assert res.returncode == 0, res.stdout


def _repair_stubs(out):
    """Copy tensorrt-stubs, fixing what stops mypy reading it (no py.typed, a few syntax errors)."""
    import importlib.util

    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tensorrt-stubs is not installed")
    site = os.path.dirname(list(spec.submodule_search_locations)[0])
    for pkg in ("tensorrt", "tensorrt_bindings"):
        src, dst = os.path.join(site, pkg), os.path.join(out, pkg)
        if not os.path.isfile(os.path.join(src, "__init__.pyi")):
            pytest.skip("{} has no stubs (a real TensorRT install?)".format(src))
        shutil.copytree(src, dst)
        for name in os.listdir(dst):
            if not name.endswith(".pyi"):
                continue
            path = os.path.join(dst, name)
            lines = open(path).read().split("\n")
            for i, line in enumerate(lines):
                if not line.lstrip().startswith("def "):
                    continue
                fixed = re.sub(r"\b(in|def|class|from|lambda)(\s*:)", r"\1_\2", line)  # keywords as parameter names
                try:
                    ast.parse(fixed.strip() + " ...")
                except SyntaxError:  # a parameter without default after defaulted ones
                    m = re.match(r"(\s*def \w+\()(.*)(\)\s*->.*)$", fixed)
                    if m:
                        params, seen = m.group(2).split(", "), False
                        for j, p in enumerate(params):
                            seen = seen or "=" in p
                            if seen and "=" not in p and ":" in p and not p.startswith("*"):
                                params[j] = p + " = ..."
                        fixed = m.group(1) + ", ".join(params) + m.group(3)
                lines[i] = fixed
            open(path, "w").write("\n".join(lines))
        open(os.path.join(dst, "py.typed"), "w").write("partial\n")


def test_mypy_against_repaired_stubs_proves_each_ignore(tmp_path):
    """With the stubs readable, TensorRT calls are checked and every ignore must be needed."""
    _repair_stubs(str(tmp_path))
    res = _mypy(["--warn-unused-ignores"], env={"MYPYPATH": str(tmp_path)})
    assert res.returncode == 0, res.stdout
