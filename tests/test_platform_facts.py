"""Facts about the platforms we target, with their sources, checked against what the project declares.

When a fact changes (a new JetPack, a dropped Python), change it here with its source; the
tests then say which pin or build setting has to follow.
"""

import ast
import os
import subprocess

import pytest
from packaging.requirements import Requirement

from agent.kernels import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# pycuda's changelog (https://documentation.tiker.net/pycuda/misc.html#change-log) and its PyPI
# release metadata (python_requires): Device.retain_primary_context, which
# agent/backends/tensorrt.py and agent/engines/trt_build.py use, first appears in 2020.1;
# 2022.1 is the last release installable on Python 3.6 (JetPack 4's system Python).
PYCUDA = {
    "retain_primary_context_since": "2020.1",
    "last_for_python36": "2022.1",
    "releases": ["2019.1", "2019.1.2", "2020.1", "2021.1", "2022.1", "2022.2", "2024.1"],
}

# The C++ compilers of the JetPacks we support, and the newest standard each implements fully
# (language and library, -std=c++20 accepted):
# - JetPack 4.x is Ubuntu 18.04: gcc 7.5.0 (packages.ubuntu.com/bionic/gcc-7);
# - JetPack 5.x is Ubuntu 20.04: gcc 9.4.0 (packages.ubuntu.com/focal/gcc-9);
# - GCC's C++ status pages (gcc.gnu.org/projects/cxx-status.html) and libstdc++'s
#   (gcc.gnu.org/onlinedocs/libstdc++/manual/status.html): C++17 complete in GCC 7 for the
#   language; -std=c++20 (not just c++2a) from GCC 10; std::atomic_ref from libstdc++ 10,
#   atomic wait/notify from 11. So C++17 is the newest standard we can assume.
GCC = {
    "jetpack4": {"ubuntu": "18.04", "gcc": (7, 5), "max_std": "c++17"},
    "jetpack5": {"ubuntu": "20.04", "gcc": (9, 4), "max_std": "c++17"},
}
STD_ORDER = ["c++11", "c++14", "c++17", "c++20", "c++23"]


def _extra(name):
    """extras_require[name] from setup.py, read without running it."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            extras = ast.literal_eval(node.value)
            return [Requirement(r) for r in extras[name]]
    raise AssertionError("no extras_require in setup.py")


def _allowed(reqs, python):
    """pycuda releases the requirement list admits on ``python`` ('3.6')."""
    env = {"python_version": python, "python_full_version": python + ".0"}
    active = [r for r in reqs if r.marker is None or r.marker.evaluate(env)]
    assert len(active) == 1, "exactly one pycuda requirement should apply on Python {}".format(python)
    return [v for v in PYCUDA["releases"] if active[0].specifier.contains(v, prereleases=False)]


@pytest.mark.parametrize("python", ["3.6", "3.8", "3.11"])
def test_gpu_extra_pycuda_has_retain_primary_context(python):
    allowed = _allowed(_extra("gpu"), python)
    assert allowed, "no pycuda release fits Python {}".format(python)
    assert min(allowed, key=lambda v: tuple(map(int, v.split(".")))) == PYCUDA["retain_primary_context_since"]


def test_gpu_extra_pycuda_installable_on_python36():
    allowed = _allowed(_extra("gpu"), "3.6")
    newest = max(allowed, key=lambda v: tuple(map(int, v.split("."))))
    assert newest == PYCUDA["last_for_python36"]
    assert "2022.2" in _allowed(_extra("gpu"), "3.8")  # the cap applies to Python 3.6 only


def test_cxx17_is_the_newest_standard_we_can_assume():
    assumable = min((facts["max_std"] for facts in GCC.values()), key=STD_ORDER.index)
    assert assumable == "c++17"
    # The host build falls back to it, and never needs more (tests/test_kernels_host.py builds
    # and runs the kernels with -std=c++17 next to the compiler's newest).
    assert build.HOST_STDS[-1] == assumable
    assert all(STD_ORDER.index(s) >= STD_ORDER.index(assumable) for s in build.HOST_STDS)


def test_shim_c17_path_uses_no_cxx20_library_feature(tmp_path):
    """Under -std=c++17 the shim must not reach std::atomic_ref or atomic wait (absent from GCC 7.5/9.4's
    libstdc++): the feature-test macros it keys on are unset, and the header compiles."""
    src = tmp_path / "probe.cc"
    src.write_text('#include "{}"\n#if defined(__cpp_lib_atomic_ref) || defined(__cpp_lib_atomic_wait)\n'
                   '#error C++20 atomics under -std=c++17\n#endif\nint main() {{ return 0; }}\n'
                   .format(os.path.join(build.KERNEL_DIR, "cuda_host_shim.h")))
    p = subprocess.run(["g++", "-std=c++17", "-Wall", "-Werror", "-fsyntax-only", str(src)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, universal_newlines=True)
    assert p.returncode == 0, p.stdout
