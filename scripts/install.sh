#!/bin/sh
# Install edge-agent from this checkout into a venv and as a systemd service.
# Usage: sudo scripts/install.sh [install-service options: --no-start, --root DIR, ...]
#   VENV    the venv (default /opt/edge-agent)
#   PYTHON  the interpreter it is made from (default: the distribution's /usr/bin/python3)
# Every check that can refuse runs before anything is installed, and says in one line
# what fixes it. On a Jetson the venv sees JetPack's TensorRT and OpenCV
# (--system-site-packages; pip's OpenCV has no GStreamer, so no `cpu` extra there).
set -eu
VENV=${VENV:-/opt/edge-agent}
PY=${PYTHON:-/usr/bin/python3}
cd "$(dirname "$0")/.."
die() { echo "install.sh: $*" >&2; exit 1; }

root=/  # --root DIR (install-service's option) also decides where "is this a Jetson" is read
prev=""
for arg in "$@"; do
    [ "$prev" = --root ] && root=$arg
    case $arg in --root=*) root=${arg#--root=} ;; esac
    prev=$arg
done
[ "$root" != / ] || [ "$(id -u)" = 0 ] || die "run as root: sudo scripts/install.sh"

# The service user must be able to execute the interpreter behind the venv: the unit has
# ProtectHome=yes, and /root and /home/* are not readable by it anyway (203/EXEC).
command -v "$PY" >/dev/null 2>&1 || die "no $PY: install the distribution's python3 (apt-get install python3), or set PYTHON"
# The venv's python links to the path we call it by, so that path and the real file count.
for p in "$(command -v "$PY")" "$("$PY" -c 'import os, sys; print(os.path.realpath(sys.executable))')"; do
    case $p in
        /root/*|/home/*|/run/user/*)
            die "$PY is $p, which the service cannot execute (ProtectHome=yes): use the distribution's python3 (PYTHON=/usr/bin/python3)" ;;
    esac
done
if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
    # Debian and Ubuntu ship venv's pip bootstrap separately.
    command -v apt-get >/dev/null 2>&1 || die "$PY cannot create venvs: install its venv module"
    echo "install.sh: installing python3-venv (apt-get)"
    apt-get install -y -qq python3-venv >/dev/null || die "apt-get install python3-venv failed"
fi

if [ -e "$root/etc/nv_tegra_release" ]; then
    # JetPack: TensorRT's Python bindings exist only for the system Python, and pycuda is
    # built here against JetPack's CUDA. numpy 1.19.5 (pip's, Python 3.6) dies with SIGILL
    # on Xavier without OPENBLAS_CORETYPE (numpy#18131); the Jetson drop-in sets it too.
    export OPENBLAS_CORETYPE=ARMV8
    "$PY" -c 'import tensorrt' 2>/dev/null \
        || die "TensorRT's Python bindings are missing: sudo apt-get install python3-libnvinfer (JetPack), then run this again"
    [ -x "$root/usr/local/cuda/bin/nvcc" ] \
        || die "no $root/usr/local/cuda/bin/nvcc (pycuda is built against it): sudo apt-get install nvidia-cuda-dev (JetPack), then run this again"
    # The tracker's scipy comes from Ubuntu like TensorRT and OpenCV (a pip scipy would be
    # built here for an hour, against a numpy that may not be JetPack's).
    if ! "$PY" -c 'import scipy.optimize' 2>/dev/null; then
        echo "install.sh: installing python3-scipy (apt-get; the tracker's linear_sum_assignment)"
        apt-get install -y -qq python3-scipy >/dev/null \
            || die "apt-get install python3-scipy failed (the tracker needs it; or set tracking.enabled: false)"
    fi
    "$PY" -m venv --system-site-packages "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    CUDA_ROOT=/usr/local/cuda PATH=/usr/local/cuda/bin:$PATH "$VENV/bin/pip" install ".[gpu]" \
        || die "pip could not build pycuda against /usr/local/cuda: see the output above (it needs build-essential and python3-dev)"
    "$VENV/bin/python" -c 'import tensorrt, pycuda.driver' \
        || die "the venv $VENV cannot import tensorrt and pycuda: see the error above"
else
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install ".[cpu]"
fi

touch "$VENV/.edge-agent-venv"  # ours: `edge-agent uninstall-service --purge` removes it
# (from /: the installed package, not this checkout's agent/)
if ! (cd / && "$VENV/bin/python" -c 'import sys; from agent import native; sys.exit(native.LIB is None)'); then
    echo "install.sh: the C fast paths (agent/native) were not built (no C compiler?): NMS and tracking" \
         "run their numpy paths, slower; apt-get install gcc and run this again to build them"
fi

# The embedded defaults run the demo video: generate it (from a seed, ~8 s) where the
# installed package looks for bundled data, $VENV/share/edge-agent (20 MB we keep out of git).
video="$VENV/share/edge-agent/data/demo/demo.mp4"
if [ ! -s "$video" ]; then
    echo "install.sh: generating the demo video ($video)"
    "$VENV/bin/python" scripts/make_video.py --out "$video" >/dev/null
fi
"$VENV/bin/edge-agent" doctor || echo "install.sh: doctor reported blocking problems (see above); installing anyway" >&2
exec "$VENV/bin/edge-agent" install-service --exec-path "$VENV/bin/edge-agent" "$@"
