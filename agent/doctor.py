"""``edge-agent doctor``: check this machine for what the configured agent needs.

Each check returns a Check: level OK/WARN/FAIL, a detail and a fix. Only a
FAIL marked ``blocking`` (it stops the configured backend, model or cameras
from working) makes doctor exit non-zero; a missing TensorRT on a CPU box
is a WARN unless the config asks for ``backend: tensorrt``.
"""

import collections
import importlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

from . import health
from .errors import ConfigError
from .publish.broker import parse_url

Check = collections.namedtuple("Check", "name level detail fix blocking")
OK, WARN, FAIL = "OK", "WARN", "FAIL"


def _check(name, level, detail, fix="", blocking=False):
    return Check(name, level, detail, fix, bool(blocking and level == FAIL))


def _output(cmd, timeout=5.0):
    """stdout of ``cmd`` or None (missing, failed, or too slow)."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        out, _ = proc.communicate(timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        return None
    return out.strip() if proc.returncode == 0 else None


def _import(name):
    try:
        return importlib.import_module(name), None
    except Exception as e:  # ImportError, or a broken native library (OSError)
        return None, "{}: {}".format(type(e).__name__, e)


def check_python():
    v = sys.version_info
    detail = "{}.{}.{} ({})".format(v[0], v[1], v[2], sys.executable)
    if v < (3, 6):
        return _check("python", FAIL, detail, "use Python >= 3.6 (JetPack 4: the system python3)", blocking=True)
    return _check("python", OK, detail)


def check_numpy():
    np, err = _import("numpy")
    if np is None:
        return _check("numpy", FAIL, "not importable ({})".format(err), "pip install 'numpy>=1.19'", blocking=True)
    return _check("numpy", OK, np.__version__)


def check_native():
    """The C fast paths (agent/native): built at install when a C compiler was there; else WARN."""
    from . import native

    path = native._find()
    if native.LIB is not None:
        return _check("native", OK, "C fast paths for NMS and tracking ({})".format(os.path.basename(path)))
    detail = "not loaded: {}".format(path) if path else "not built (no C compiler when the agent was installed)"
    return _check("native", WARN, detail + ": NMS and tracking run their numpy paths (slower, same results)",
                  "install a C compiler (apt-get install gcc) and reinstall the agent (scripts/install.sh)")


def check_opencv(config):
    cv2, err = _import("cv2")
    needs_gst = any(c.source.startswith(("csi://", "gst://")) for c in config.cameras)
    if cv2 is None:
        fix = "on Jetson: apt install python3-opencv (JetPack's, with GStreamer); elsewhere: pip install opencv-python-headless"
        return _check("opencv", FAIL, "not importable ({})".format(err), fix, blocking=True)
    match = re.search(r"GStreamer:\s*(\S+)", cv2.getBuildInformation())
    gst = bool(match) and match.group(1).upper() not in ("NO", "OFF")
    detail = "{}, GStreamer {}".format(cv2.__version__, "yes" if gst else "no")
    if not gst and needs_gst:
        return _check("opencv", FAIL, detail + " (a csi:// or gst:// camera is configured)",
                      "pip uninstall opencv-python opencv-python-headless; use JetPack's OpenCV "
                      "(venv with --system-site-packages)", blocking=True)
    if not gst:
        return _check("opencv", WARN, detail + " (CSI and gst:// cameras unavailable)",
                      "on Jetson use JetPack's OpenCV, not pip's opencv-python")
    return _check("opencv", OK, detail)


def _trt_usable():
    trt = _import("tensorrt")[0]
    return hasattr(trt, "__version__") and _import("pycuda.driver")[0] is not None


def check_onnxruntime(config):
    ort, err = _import("onnxruntime")
    needed = config.backend == "onnxruntime" or (config.backend == "auto" and not _trt_usable())
    if ort is None:
        return _check("onnxruntime", FAIL if needed else WARN, "not installed ({})".format(err),
                      "pip install onnxruntime (on Jetson: the onnxruntime-gpu wheel for your JetPack)",
                      blocking=needed)
    return _check("onnxruntime", OK, "{} ({})".format(ort.__version__, ", ".join(ort.get_available_providers())))


def check_tensorrt(config):
    trt, err = _import("tensorrt")
    needed = config.backend == "tensorrt"
    if trt is not None and not hasattr(trt, "__version__"):
        trt, err = None, "only a namespace package (tensorrt-stubs?), no runtime"
    if trt is None:
        return _check("tensorrt", FAIL if needed else WARN, "not installed ({})".format(err),
                      "Jetson: sudo apt install python3-libnvinfer (venv: --system-site-packages); "
                      "x86: pip install tensorrt", blocking=needed)
    return _check("tensorrt", OK, trt.__version__)


def check_pycuda(config):
    mod, err = _import("pycuda.driver")
    needed = config.backend == "tensorrt"
    if mod is None:
        return _check("pycuda", FAIL if needed else WARN, "not installed ({})".format(err),
                      "export CUDA_ROOT=/usr/local/cuda PATH=/usr/local/cuda/bin:$PATH; pip install pycuda",
                      blocking=needed)
    return _check("pycuda", OK, getattr(importlib.import_module("pycuda"), "VERSION_TEXT", "installed"))


def _libcuda_version():
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(version)) == 0:
            return "{}.{}".format(version.value // 1000, (version.value % 1000) // 10)
    return None


def check_cuda(config):
    needed = config.backend == "tensorrt"
    smi = _output(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if smi:
        return _check("cuda", OK, "driver: " + smi.splitlines()[0])
    version = _libcuda_version()
    if version:
        return _check("cuda", OK, "libcuda, CUDA driver API {}".format(version))
    return _check("cuda", FAIL if needed else WARN, "no NVIDIA driver (no nvidia-smi, no libcuda)",
                  "install the NVIDIA driver (x86) or JetPack (Jetson); CPU-only boxes use backend onnxruntime",
                  blocking=needed)


def check_models(config):
    sizes = config.sizes if config.size == "auto" else {config.size: config.sizes[config.size]}
    missing = ["{} ({})".format(n, s.onnx) for n, s in sorted(sizes.items()) if not os.path.isfile(s.onnx)]
    if missing:
        return _check("models", FAIL, "missing: " + ", ".join(missing), "fix sizes.<name>.onnx in the config",
                      blocking=True)
    return _check("models", OK, ", ".join("{}={}".format(n, s.onnx) for n, s in sorted(sizes.items())))


def check_camera(cam):
    """Cheap checks only: CSI cameras are not opened (that could wedge nvargus)."""
    from .errors import SourceError
    from .sources import parse_uri, redact

    name = "camera " + cam.id
    try:
        spec = parse_uri(cam.source, "cameras[id={}].source".format(cam.id), check_paths=True)
    except SourceError as e:
        return _check(name, FAIL, str(e), "fix the source URI or the path", blocking=True)
    if spec.kind == "csi":
        if not os.path.exists("/etc/nv_tegra_release"):
            return _check(name, FAIL, "csi://{}: not a Jetson".format(spec.target), "use v4l2://, rtsp:// or a file",
                          blocking=True)
        if not os.path.exists("/tmp/argus_socket"):
            return _check(name, WARN, "csi://{}: nvargus-daemon socket absent".format(spec.target),
                          "sudo systemctl restart nvargus-daemon")
        return _check(name, OK, "csi://{} (not opened)".format(spec.target))
    if spec.kind == "v4l2":
        if not os.path.exists(spec.target):
            return _check(name, WARN, "{}: no such device (yet)".format(spec.target),
                          "plug the camera in; prefer /dev/v4l/by-id/... paths; v4l2-ctl --list-devices")
        if not os.access(spec.target, os.R_OK | os.W_OK):
            return _check(name, FAIL, "{}: no read/write permission".format(spec.target),
                          "add the user to group video: sudo usermod -aG video $USER", blocking=True)
        return _check(name, OK, spec.target)
    if spec.kind == "rtsp":
        match = re.match(r"^rtsps?://(?:[^@/]*@)?([^:/]+|\[[^\]]+\])(?::(\d+))?", spec.target)
        host, port = match.group(1).strip("[]"), int(match.group(2) or 554)
        err = _tcp(host, port)
        if err:
            return _check(name, WARN, "{}: {}".format(redact(spec.target), err),
                          "check the camera's address, network and credentials")
        return _check(name, OK, "{} reachable".format(redact(spec.target)))
    return _check(name, OK, "{} {}".format(spec.kind, spec.target))


def _tcp(host, port, timeout=2.0):
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return "cannot connect to {}:{} ({})".format(host, port, e.strerror or e)
    return None


def check_broker(config):
    """Each broker of mqtt.url reachable over TCP; WARN naming the ones that are not (not blocking:
    the agent spools to disk and moves to the next broker)."""
    if not config.mqtt.enabled:
        return _check("broker", OK, "MQTT disabled (mqtt.enabled: false)")
    urls = config.mqtt.urls
    down, up = [], []
    for i, url in enumerate(urls):
        key = "mqtt.url" if isinstance(config.mqtt.url, str) else "mqtt.url[{}]".format(i)
        try:
            _, host, port, _ = parse_url(url)
        except ConfigError:
            return _check("broker", FAIL, "{}: cannot parse {}".format(key, url), "mqtt://host[:port]")
        err = _tcp(host, port)
        (down if err else up).append("{}: {}".format(key, err) if err else "{}:{}".format(host, port))
    if down:
        fix = "start the broker or fix mqtt.url; records are spooled meanwhile"
        if up:
            fix = "the agent uses the others meanwhile ({}); ".format(", ".join(up)) + fix
        return _check("broker", WARN, "; ".join(down), fix)
    return _check("broker", OK, "{} reachable".format(", ".join(up)))


def check_engines(config):
    path = config.engines_dir
    probe = path
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(path) and not os.access(probe or "/", os.W_OK):
        return _check("engines", FAIL, "{}: missing and cannot be created".format(path),
                      "sudo install -d -o edge-agent {} (the service uses /var/lib/edge-agent/engines)".format(path))
    if os.path.isdir(path):
        try:
            tempfile.TemporaryFile(dir=path).close()
        except OSError as e:
            return _check("engines", FAIL, "{}: not writable ({})".format(path, e.strerror),
                          "chown the directory to the agent's user")
    notes = []
    try:
        from .backends import resolve_backend_name
        from .engines import artifact

        backend = resolve_backend_name(config.backend)
        sizes = sorted(config.sizes) if config.size == "auto" else [config.size]
        for size in sizes:
            _, manifest, reasons = artifact.status(artifact.spec_from_config(config, size, backend))
            if manifest is None:
                notes.append("{}: {}".format(size, "; ".join(reasons)))
                if backend == "tensorrt" and not config.tensorrt.auto_build:
                    return _check("engines", FAIL, "{} ({})".format(path, notes[-1]), artifact.fix_command(size),
                                  blocking=True)
    except Exception as e:  # BackendUnavailable and friends are reported by their own checks
        notes.append("manifests not checked ({})".format(e))
    detail = "{} writable".format(path) + (" ({})".format(", ".join(notes)) if notes else "")
    return _check("engines", OK, detail)


def check_kernels(config):
    """The fused GPU path's CUDA kernels: compiled beside the engines, or an nvcc to compile them once."""
    from .backends import resolve_backend_name

    try:
        backend = resolve_backend_name(config.backend)
    except Exception:  # reported by the backend checks
        backend = config.backend
    if backend != "tensorrt":
        return _check("cuda kernels", OK, "not used (backend {})".format(backend))
    from .engines import artifact

    sizes = sorted(config.sizes) if config.size == "auto" else [config.size]
    ccs = set()
    for size in sizes:
        try:
            _, manifest, _ = artifact.status(artifact.spec_from_config(config, size, backend))
        except Exception:  # reported by check_engines
            manifest = None
        cc = (manifest or {}).get("device", {}).get("compute_capability")
        if cc:
            ccs.add(cc)
    from .kernels import build as kernel_build

    cache = artifact.kernels_dir(config.engines_dir)
    compiled = 0
    for cc in sorted(ccs):
        try:
            kernel_build.load_kernels(cc, cache_dir=cache, compile_if_missing=False)
            compiled += 1
        except kernel_build.UnreadableKernels as e:
            # e.g. build-engine run as root with umask 077: the service would recompile or fall back.
            return _check("cuda kernels", WARN, str(e), "make them readable (sudo chmod 0644 {}/*) or rerun "
                                                        "build-engine as the service user".format(cache))
        except kernel_build.KernelBuildError:
            pass
    if ccs and compiled == len(ccs):
        return _check("cuda kernels", OK, "compiled for compute capability {} in {}".format(", ".join(sorted(ccs)),
                                                                                            cache))
    nvcc = kernel_build.find_nvcc()
    if nvcc:
        return _check("cuda kernels", OK, "not compiled yet; nvcc found ({}): build-engine or the first start "
                                          "compiles them".format(nvcc))
    return _check("cuda kernels", WARN, "not compiled in {} and no nvcc (PATH, $CUDA_HOME/bin, {}/bin): the "
                                        "TensorRT backend post-processes on the CPU".format(
                                            cache, kernel_build.DEFAULT_CUDA_HOME),
                  "install the CUDA toolkit, then edge-agent build-engine --size all (compiles them once)")


def check_jetson():
    """L4T release, power mode and clocks; only on a Jetson."""
    release = None
    try:
        with open("/etc/nv_tegra_release") as f:
            release = f.readline().strip().lstrip("# ")
    except OSError:
        return []
    out = [_check("l4t", OK, release)]
    mode = _output(["nvpmodel", "-q"])
    if mode:
        out.append(_check("power mode", OK, " ".join(mode.split())))
    else:
        out.append(_check("power mode", WARN, "nvpmodel -q unavailable", "sudo nvpmodel -q (mode 2 = 15W 6-core on NX)"))
    clocks = _output(["jetson_clocks", "--show"])
    if clocks:
        out.append(_check("clocks", OK, " ".join(clocks.splitlines()[:2])))
    else:
        gpu = health.gpu_freq_mhz()
        out.append(_check("clocks", WARN, "GPU {} MHz".format(gpu) if gpu else "unknown",
                          "sudo jetson_clocks for steady benchmark numbers"))
    return out


def check_health():
    h = health.read_health()
    parts = []
    if "memory" in h:
        parts.append("memory {used_percent}% of {total_mb} MB".format(**h["memory"]))
    if "load_average" in h:
        parts.append("load {}".format(h["load_average"][0]))
    temps = h.get("temperatures_c", {})
    if temps:
        parts.append("max temp {:.1f} C".format(max(temps.values())))
    level = WARN if temps and max(temps.values()) >= 85 else OK
    return _check("health", level, ", ".join(parts) or "nothing readable", "improve cooling" if level == WARN else "")


def run_checks(config):
    """All checks for ``config``, in display order."""
    checks = [check_python(), check_numpy(), check_native(), check_opencv(config), check_onnxruntime(config),
              check_tensorrt(config), check_pycuda(config), check_cuda(config), check_models(config)]
    checks += [check_camera(cam) for cam in config.cameras]
    checks += [check_broker(config), check_engines(config), check_kernels(config)]
    checks += check_jetson()
    checks.append(check_health())
    return checks


def format_check(c):
    line = "{:<4} {:<14} {}".format(c.level, c.name, c.detail)
    if c.fix and c.level != OK:
        line += "  -> fix: " + c.fix
    return line
