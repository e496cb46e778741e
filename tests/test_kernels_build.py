"""agent/kernels/build.py: finding nvcc, where it writes temp files, cached kernel modes, arch names.

nvcc runs here (CUDA 13 on the CPU machine): the tests that need it use the real one.
The "fake CUDA root" tests put a small nvcc shell script under a directory that is not
on PATH, as a box reached through ``sudo`` (secure_path) sees /usr/local/cuda/bin: the
script records the TMPDIR it is given and proves it is writable, which is exactly what
build.py is responsible for passing.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from agent.errors import AgentError
from agent.kernels import SOURCES, build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = shutil.which("nvcc")

FAKE_NVCC = """#!/bin/sh
# Records TMPDIR, checks it is writable (as nvcc's tmpxft_* files need), writes the -o file.
echo "$TMPDIR" >> "{log}"
: > "$TMPDIR/tmpxft_fake" && rm "$TMPDIR/tmpxft_fake" || exit 3
while [ $# -gt 0 ]; do
  if [ "$1" = "-o" ]; then shift; echo fake > "$1"; fi
  shift
done
"""


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _fake_cuda_root(tmp_path):
    root = tmp_path / "cuda"
    (root / "bin").mkdir(parents=True)
    log = tmp_path / "nvcc-tmpdir.log"
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(FAKE_NVCC.format(log=log))
    nvcc.chmod(0o755)
    return str(root), log


def _path_without_nvcc():
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if not os.path.isfile(os.path.join(p, "nvcc")))


# --------------------------------------------------------------------------- arch names


@pytest.mark.parametrize("arch, expected", [
    ("7.2", "72"), ("8.6", "86"), ("10.0", "100"), ("12.0", "120"), ("12.1", "121"),
    ("72", "72"), ("120", "120"), ("sm_72", "72"), ("sm_120", "120"), ("compute_100", "100"),
    ((7, 2), "72"), ((12, 0), "120"), ([10, 0], "100"), (7.2, "72"), (12.0, "120"),
])
def test_normalize_arch_one_and_two_digit_majors(arch, expected):
    assert build.normalize_arch(arch) == expected


@pytest.mark.parametrize("arch", ["", "7", "sm_7", "7.25", "sm_72x", "gfx90a", (7,), ("a", 2), None, "123.0"])
def test_normalize_arch_bad_input_is_a_kernel_build_error(arch):
    # KernelBuildError is what build-engine (compile_kernels_for), doctor and the backend catch.
    with pytest.raises(build.KernelBuildError, match="compute capability: expected") as info:
        build.normalize_arch(arch)
    assert isinstance(info.value, AgentError)


def test_blackwell_capability_goes_through_the_build_engine_step(tmp_path, monkeypatch):
    """compile_kernels_for with a 12.0 manifest: cubins for sm_120, no ValueError escaping."""
    from agent.engines.artifact import cached_kernels
    from agent.engines.build import compile_kernels_for

    root, _ = _fake_cuda_root(tmp_path)
    monkeypatch.setenv("PATH", _path_without_nvcc())
    monkeypatch.setenv("CUDA_HOME", root)
    lines = []
    paths = compile_kernels_for(str(tmp_path), {"device": {"compute_capability": "12.0"}},
                                progress=lines.append)
    assert paths and all("-sm120-" in p for p in paths.values()), (paths, lines)
    assert cached_kernels(str(tmp_path), "12.0") == paths


# --------------------------------------------------------------------------- finding nvcc, TMPDIR


@pytest.mark.parametrize("via", ["CUDA_HOME", "/usr/local/cuda"])
def test_nvcc_found_off_path_and_given_a_writable_tmpdir(tmp_path, monkeypatch, via):
    """sudo's secure_path drops /usr/local/cuda/bin; nvcc's tmpxft_* files must not go to /tmp."""
    root, log = _fake_cuda_root(tmp_path)
    monkeypatch.setenv("PATH", _path_without_nvcc())
    if via == "CUDA_HOME":
        monkeypatch.setenv("CUDA_HOME", root)
        monkeypatch.setattr(build, "DEFAULT_CUDA_HOME", str(tmp_path / "no-cuda"))
    else:
        monkeypatch.delenv("CUDA_HOME", raising=False)
        monkeypatch.setattr(build, "DEFAULT_CUDA_HOME", root)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "read-only-tmp-stand-in"))  # does not exist
    assert build.find_nvcc() == os.path.join(root, "bin", "nvcc")
    cache = tmp_path / "kernels"
    paths = build.compile_kernels(str(cache), "7.2")
    assert sorted(paths) == sorted(s[:-3] for s in SOURCES)
    assert all(open(p).read() == "fake\n" for p in paths.values())
    tmpdirs = set(log.read_text().split())
    assert tmpdirs == {str(cache / ".tmp")}, tmpdirs  # inside the kernel cache, and it was writable


def test_no_nvcc_anywhere_is_a_named_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _path_without_nvcc())
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(build, "DEFAULT_CUDA_HOME", str(tmp_path / "no-cuda"))
    assert build.find_nvcc() is None
    with pytest.raises(build.KernelBuildError, match=r"nvcc not found on PATH, in \$CUDA_HOME/bin"):
        build.compile_kernels(str(tmp_path / "k"), "7.2")


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
def test_real_nvcc_with_unusable_tmpdir_and_file_modes(tmp_path, monkeypatch, umask_022):
    """The real nvcc fails ('Could not open output file /nonexistent/tmpxft_...') unless we set TMPDIR;
    the cubins are created 0666 & ~umask, so a root build-engine leaves them readable to the service."""
    monkeypatch.setenv("TMPDIR", "/nonexistent")
    cache = str(tmp_path / "kernels")
    paths = build.compile_kernels(cache, "7.5")
    assert all(p.endswith(".cubin") for p in paths.values())
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in paths.values()} == {0o644}
    os.umask(0o027)
    for p in paths.values():
        os.remove(p)
    paths = build.compile_kernels(cache, "7.5")
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in paths.values()} == {0o640}
    assert not [f for f in os.listdir(cache) if ".tmp-" in f]  # no temp files left behind


# --------------------------------------------------------------------------- unreadable cached kernels

CHILD = """
import json, sys
from agent import doctor
from agent.engines import artifact
from agent.config import load_config
from agent.kernels import build
try:
    build.load_kernels("7.5", cache_dir=sys.argv[2], compile_if_missing=False)
    loaded = "ok"
except build.UnreadableKernels as e:
    loaded = "unreadable: " + str(e)
# TensorRT cannot build an engine here: stand in for the engine manifest's compute capability only.
artifact.status = lambda spec: (None, {"device": {"compute_capability": "7.5"}}, [])
check = doctor.check_kernels(load_config(sys.argv[1], check_files=False))
print(json.dumps({"loaded": loaded, "check": check._asdict()}))
"""


def _as_service_user():
    """Run the child as another user when we are root (root reads anything); else as ourselves."""
    if os.getuid() != 0:
        return None
    return lambda: (os.setgid(65534), os.setuid(65534))  # nobody


@pytest.mark.skipif(os.path.realpath(sys.executable).startswith(("/root/", "/home/")),
                    reason="this interpreter lives under /root or /home, which user nobody cannot enter "
                           "(the main CI run uses the distribution's python3 and runs this test)")
def test_unreadable_cached_kernels_are_a_named_problem(monkeypatch):
    """build-engine as root with umask 077 leaves 0600 cubins: load_kernels and doctor say so."""
    work = tempfile.mkdtemp(prefix="ea-kernels-")  # not pytest's tmp_path: 0700, the other user could not enter
    try:
        os.chmod(work, 0o755)
        engines_dir = os.path.join(work, "engines")
        cache = os.path.join(engines_dir, "kernels")
        root = os.path.join(work, "cuda")
        os.makedirs(os.path.join(root, "bin"))
        with open(os.path.join(root, "bin", "nvcc"), "w") as f:
            f.write(FAKE_NVCC.format(log=os.path.join(work, "log")))
        os.chmod(os.path.join(root, "bin", "nvcc"), 0o755)
        monkeypatch.setenv("CUDA_HOME", root)
        paths = build.compile_kernels(cache, "7.5", nvcc=os.path.join(root, "bin", "nvcc"))
        for d in (engines_dir, cache):
            os.chmod(d, 0o755)
        config = os.path.join(work, "config.yaml")
        with open(config, "w") as f:
            f.write("backend: tensorrt\nsizes:\n  fast:\n    onnx: {}/x.onnx\ncameras:\n  - id: cam0\n"
                    "    source: /dev/null\nengines_dir: {}\n".format(work, engines_dir))
        os.chmod(config, 0o644)

        def child():
            p = subprocess.run([sys.executable, "-c", CHILD, config, cache], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True, preexec_fn=_as_service_user(),
                               timeout=60)
            assert p.returncode == 0, p.stderr
            return json.loads(p.stdout)

        for p in paths.values():
            os.chmod(p, 0o644)
        got = child()
        assert got["loaded"] == "ok" and got["check"]["level"] == "OK", got
        for p in paths.values():
            os.chmod(p, 0o600 if os.getuid() == 0 else 0o200)
        got = child()
        assert got["loaded"].startswith("unreadable: compiled kernels not readable by uid"), got
        check = got["check"]
        assert check["level"] == "WARN" and "not readable" in check["detail"], check
        assert os.path.basename(sorted(paths.values())[0]) in check["detail"] and "chmod 0644" in check["fix"], check
    finally:
        shutil.rmtree(work)
