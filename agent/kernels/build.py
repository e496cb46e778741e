"""Compile the kernels: cubins for the GPU (cached), shared libraries for host tests.

``load_kernels(arch)`` is what the service calls: it returns the cached cubin
(or PTX) paths for this device and compiles only when they are missing, so a
deployed box needs nvcc at most once. Files are keyed by the sha256 of the
kernel sources, the shim and the target, and written atomically
(agent.engines.files.atomic_output), so a crash mid-build never leaves a truncated module.
"""

import hashlib
import logging
import os
import re
import shutil
import subprocess
from typing import Dict

from agent.engines.files import atomic_output
from agent.errors import AgentError
from agent.kernels import KERNEL_DIR, SHIM, SOURCES, source_path

log = logging.getLogger("edge_agent.kernels")


class KernelBuildError(AgentError):
    """nvcc or g++ is missing or failed; the message carries the compiler's output."""


class UnreadableKernels(KernelBuildError):
    """Compiled kernels are cached but this user cannot read them (e.g. built by root with umask 077)."""


# Where CUDA installs nvcc when it is not on PATH: sudo's secure_path drops /usr/local/cuda/bin
# (``sudo -u edge-agent edge-agent build-engine``), and JetPack never puts it on PATH.
DEFAULT_CUDA_HOME = "/usr/local/cuda"


def find_nvcc(nvcc=None):
    """Path of the nvcc to run, or None: ``nvcc`` on PATH, else $CUDA_HOME/bin, else /usr/local/cuda/bin.

    An explicit ``nvcc`` (a name or a path) is used as given, without searching.
    """
    if nvcc:
        return shutil.which(nvcc) or nvcc
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), DEFAULT_CUDA_HOME):
        path = os.path.join(home, "bin", "nvcc") if home else ""
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _nvcc_or_raise(nvcc):
    path = find_nvcc(nvcc)
    if path is None:
        raise KernelBuildError("nvcc not found on PATH, in $CUDA_HOME/bin or {}/bin".format(DEFAULT_CUDA_HOME))
    return path


def default_cache_dir():
    """$EDGE_AGENT_KERNEL_CACHE, else $XDG_CACHE_HOME/edge-agent/kernels (~/.cache)."""
    env = os.environ.get("EDGE_AGENT_KERNEL_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "edge-agent", "kernels")


def normalize_arch(arch):
    """'72', 'sm_72', 'compute_72', (7, 2) or 7.2 -> '72'; '12.0', 'sm_120', (12, 0) -> '120'.

    Raises KernelBuildError (what build-engine, doctor and the backend catch) on anything else.
    """
    if isinstance(arch, (tuple, list)) and len(arch) == 2:
        major, minor = (str(v) for v in arch)
    else:
        # The dotted form is a compute capability (major has 1-2 digits since Blackwell's 10.x
        # and 12.x, minor 1); the undotted one is nvcc's own ('72', '120').
        m = re.match(r"^(?:sm_|compute_)?(?:(\d{1,2})\.(\d)|(\d{2,3}))$", str(arch).strip())
        if not m:
            major = minor = ""
        elif m.group(3):
            major, minor = m.group(3)[:-1], m.group(3)[-1]
        else:
            major, minor = m.group(1), m.group(2)
    if not (major.isdigit() and minor.isdigit() and len(minor) == 1 and 1 <= int(major) <= 99):
        raise KernelBuildError("compute capability: expected e.g. '7.2', '12.0', 'sm_72', 'sm_120' or (7, 2), "
                               "got {!r}".format(arch))
    return str(int(major)) + minor


def _sources_hash():
    h = hashlib.sha256()
    for name in sorted(SOURCES + (SHIM,)):
        h.update(name.encode())
        with open(source_path(name), "rb") as f:
            h.update(f.read())
    return h


def digest(arch):
    """sha256 over the kernel sources, the shim and the target arch (cache key)."""
    h = _sources_hash()
    h.update(normalize_arch(arch).encode())
    return h.hexdigest()


def _run(cmd, env=None):
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, env=env)
    except OSError as e:
        raise KernelBuildError("{}: {}".format(cmd[0], e))
    if p.returncode != 0:
        raise KernelBuildError("{} failed ({}):\n{}".format(" ".join(cmd), p.returncode, p.stdout))
    return p.stdout


def _compiler_env(out_dir):
    """The environment with TMPDIR inside ``out_dir`` (created): nvcc writes /tmp/tmpxft_* files,
    and under the Jetson drop-in (ProtectSystem=strict, PrivateTmp=no) /tmp is read-only."""
    tmpdir = os.path.join(out_dir, ".tmp")
    if not os.path.isdir(tmpdir):
        os.makedirs(tmpdir)
    return dict(os.environ, TMPDIR=tmpdir)


def _atomic_compile(cmd_for, out_path):
    """Run the compiler into a temp file beside out_path, fsync, then rename; raises KernelBuildError.

    The compiler creates the temp file itself, so it gets 0666 & ~umask like any new file:
    0644 under the usual umask, readable by the service user when root compiled it.
    """
    with atomic_output(out_path) as tmp:
        _run(cmd_for(tmp), env=_compiler_env(os.path.dirname(out_path)))


def nvcc_archs(nvcc=None):
    """Virtual archs this nvcc supports (['75', '80', ...]); [] when it cannot tell (CUDA < 11)."""
    try:
        out = _run([_nvcc_or_raise(nvcc), "--list-gpu-arch"])
    except KernelBuildError:
        return []
    return sorted(set(re.findall(r"compute_(\d+)", out)), key=int)


def _paths(out_dir, arch, ext):
    tag = digest(arch)[:16]
    return {
        os.path.splitext(s)[0]: os.path.join(out_dir, "{}-sm{}-{}.{}".format(os.path.splitext(s)[0], arch, tag, ext))
        for s in SOURCES
    }


def compile_kernels(out_dir, arch, nvcc=None, ptx=False):
    """Compile every kernel to a cubin for ``arch`` (or PTX); returns {'nms': path, ...}.

    Falls back to PTX for the newest virtual arch nvcc supports at or below the
    device (the driver JITs it) when nvcc cannot emit a cubin for ``arch``, for
    example a GPU newer than the toolkit. ``nvcc``: see find_nvcc. Raises KernelBuildError.
    """
    arch = normalize_arch(arch)
    nvcc = _nvcc_or_raise(nvcc)
    if not os.path.isdir(out_dir):
        os.makedirs(out_dir)
    if not ptx:
        paths = _paths(out_dir, arch, "cubin")
        try:
            for stem, path in paths.items():
                src = source_path(stem + ".cu")
                _atomic_compile(lambda tmp: [nvcc, "-cubin", "-O3", "-arch=sm_" + arch, "-o", tmp, src], path)
            return paths
        except KernelBuildError as e:
            if shutil.which(nvcc) is None:
                raise
            log.warning("cubin for sm_%s failed, falling back to PTX: %s", arch, str(e).splitlines()[0])
    known = nvcc_archs(nvcc)
    supported = [a for a in known if int(a) <= int(arch)]
    if known and not supported:
        raise KernelBuildError(
            "{} supports compute_{}..compute_{}; none runs on sm_{} (use the device's CUDA toolkit)".format(
                nvcc, known[0], known[-1], arch))
    virt = supported[-1] if supported else arch
    paths = _paths(out_dir, arch, "ptx")
    for stem, path in paths.items():
        src = source_path(stem + ".cu")
        _atomic_compile(lambda tmp: [nvcc, "-ptx", "-O3", "-arch=compute_" + virt, "-o", tmp, src], path)
    return paths


def load_kernels(arch, cache_dir=None, nvcc=None, compile_if_missing=True):
    """Paths of this device's compiled kernels, preferring cached cubins over PTX.

    Compiles (once) when nothing matching the current sources is cached.
    Raises KernelBuildError when nothing is cached and compiling is not
    allowed or fails; UnreadableKernels when cached files exist that this user cannot read.
    """
    arch = normalize_arch(arch)
    cache_dir = cache_dir or default_cache_dir()
    for ext in ("cubin", "ptx"):
        paths = _paths(cache_dir, arch, ext)
        if all(os.path.isfile(p) for p in paths.values()):
            unreadable = sorted(p for p in paths.values() if not os.access(p, os.R_OK))
            if unreadable:
                raise UnreadableKernels("compiled kernels not readable by uid {} (mode {:o}): {}".format(
                    os.getuid(), os.stat(unreadable[0]).st_mode & 0o777, ", ".join(unreadable)))
            return paths
    if not compile_if_missing:
        raise KernelBuildError("no compiled kernels for sm_{} in {} (run compile_kernels)".format(arch, cache_dir))
    log.info("compiling CUDA kernels for sm_%s into %s", arch, cache_dir)
    return compile_kernels(cache_dir, arch, nvcc=nvcc)


def kernel_signatures(names=None):
    """[(kernel name, [parameter declarations])] of every extern "C" __global__ kernel."""
    out = []
    for name in names or [os.path.splitext(s)[0] for s in SOURCES]:
        with open(source_path(name + ".cu")) as f:
            text = f.read()
        for m in re.finditer(r'extern "C" __global__ void (\w+)\(([^)]*)\)', text):
            out.append((m.group(1), [" ".join(p.split()) for p in m.group(2).split(",")]))
    return out


# The oldest compilers the host build must work with: GCC 7.5 (JetPack 4, Ubuntu 18.04) and
# 9.4 (JetPack 5, Ubuntu 20.04) have no -std=c++20; the shim has a C++17 path for them.
HOST_STDS = ("c++20", "c++17")
_host_std = {}  # type: Dict[str, str]


def host_cxx_std(cxx="g++"):
    """The newest of HOST_STDS that ``cxx`` accepts (probed once per compiler)."""
    if cxx not in _host_std:
        _host_std[cxx] = HOST_STDS[-1]
        for std in HOST_STDS:
            try:
                p = subprocess.run([cxx, "-std=" + std, "-fsyntax-only", "-x", "c++", "-"], input="",
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
            except OSError:  # no compiler: host_library reports it when it runs it
                break
            if p.returncode == 0:
                _host_std[cxx] = std
                break
    return _host_std[cxx]


def host_library(out_dir, names=None, cxx="g++", std=None):
    """Build kernel sources for the CPU through the shim into one .so; returns its path (tests only).

    ``std``: the C++ standard ('c++17', 'c++20'); default: the newest ``cxx`` supports.
    Equivalent to ``g++ -std=c++20 -O2 -ffp-contract=off -shared -fPIC -pthread -x c++ -include
    cuda_host_shim.h nms.cu ...`` but as one translation unit that includes the
    sources: the C++ headers the shim needs are parsed once instead of per file
    (~5 s each on a 2-core CI box). Kernel and macro names are prefixed per file
    (ea_nms_*, EA_NMS_*, ...) so they do not collide. Each kernel also gets an
    ``ea_launch_<kernel>(gx, gy, gz, bx, by, bz, params...)`` trampoline.
    """
    names = list(names or [os.path.splitext(s)[0] for s in SOURCES])
    lines = ['#include "{}"'.format(source_path(SHIM))]
    lines += ['#include "{}"'.format(source_path(name + ".cu")) for name in names]
    for kernel, params in kernel_signatures(names):
        # ea_launch_<kernel>(grid xyz, block xyz, kernel params...): lets tests drive
        # gpu.py's launch code (argument order, geometry) on the CPU.
        args = ", ".join(p.split()[-1].lstrip("*") for p in params)
        lines.append('extern "C" void ea_launch_{k}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, '
                     'unsigned by, unsigned bz, {p}) {{ EA_LAUNCH({k}, dim3(gx, gy, gz), dim3(bx, by, bz), {a}); }}'
                     .format(k=kernel, p=", ".join(params), a=args))
    text = "\n".join(lines) + "\n"
    std = std or host_cxx_std(cxx)
    key = hashlib.sha256((text + _sources_hash().hexdigest() + cxx + std).encode()).hexdigest()[:12]
    so = os.path.join(out_dir, "libea_{}_host-{}.so".format("_".join(names), key))
    if os.path.isfile(so):
        return so
    unity = os.path.join(out_dir, "ea_{}_host-{}.cc".format("_".join(names), key))
    with open(unity, "w") as f:
        f.write(text)
    # -Bsymbolic and -fno-gnu-unique: the library uses its own kernels, pool and thread-locals even
    # when a differently built one (another -std, an edited shim) is loaded in the same process;
    # otherwise the dynamic linker unifies their same-named symbols and launches deadlock.
    _atomic_compile(lambda tmp: [cxx, "-std=" + std, "-O2", "-ffp-contract=off", "-shared", "-fPIC", "-pthread",
                                 "-fno-gnu-unique", "-Wl,-Bsymbolic", unity, "-o", tmp], so)
    return so


__all__ = ["KERNEL_DIR", "KernelBuildError", "UnreadableKernels", "find_nvcc", "compile_kernels", "load_kernels", "host_library", "digest"]
