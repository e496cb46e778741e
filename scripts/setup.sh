#!/usr/bin/env bash
# One-time set-up of a development/demo machine (CPU backend). Idempotent.
#   - mosquitto (the local broker the demo and the tests use) from the distribution
#     (and for `test`, rabbitmq-server: the tests' 3-node MQTT cluster)
#   - a project venv, .venv, made from $PYTHON (default python3: the distribution's on a stock
#     Debian/Ubuntu, where PEP 668 forbids pip outside a venv), remade when $PYTHON changes
#   - gcc where no C compiler is (it builds the agent's C fast paths, agent/native)
#   - the agent in it, editable, with the CPU extras (ONNX Runtime, pip OpenCV) and test tools
#   - the demo video, generated from a seed (the demo models are committed)
# Prints nothing on stdout but the venv's python (for the callers: PY=$(scripts/setup.sh)).
# On a Jetson use docs/service.md instead: JetPack's OpenCV and TensorRT must not be
# shadowed by pip's opencv-python.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$(dirname "$0")/.."
exec 3>&1 1>&2  # progress to stderr
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
apt_install() {
  [ -n "${APT_UPDATED:-}" ] || { $SUDO apt-get update -qq; APT_UPDATED=1; }
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
BASE=${PYTHON:-python3}
what=${1:-demo}   # demo | test

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "setup: installing mosquitto (apt-get)"
  apt_install mosquitto mosquitto-clients
fi
export PATH="$PATH:/usr/sbin"
# A C compiler builds the agent's CPU fast paths (agent/native: NMS, tracking) at pip install;
# without one the install goes on and the numpy paths run, but the tests hold the C paths to
# their references, so `test` needs it (a stock Debian has none).
if ! command -v cc >/dev/null 2>&1; then
  echo "setup: installing gcc (apt-get; builds agent/native, the C fast paths)"
  apt_install gcc libc6-dev
fi

base=$("$BASE" -c 'import os, sys; print(os.path.realpath(sys.executable))')
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.base 2>/dev/null)" != "$base" ]; then
  if ! "$BASE" -c 'import ensurepip, venv' 2>/dev/null; then
    echo "setup: installing python3-venv (apt-get; Debian ships venv's pip separately)"
    apt_install python3-venv
  fi
  echo "setup: creating .venv from $base"
  rm -rf .venv
  "$BASE" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  echo "$base" > .venv/.base
fi
PY=.venv/bin/python

extras="cpu,eval"
[ "$what" = test ] && extras="cpu,eval,dev"
echo "setup: pip install -e .[$extras]"
$PY -m pip install -q --disable-pip-version-check -e ".[$extras]"

if [ "$what" = test ]; then
  # systemd-analyze checks the unit; torch runs the training smoke test (CPU build).
  if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "setup: installing systemd (for systemd-analyze and the service tests)"
    apt_install systemd || true
  fi
  # rabbitmq-server: the tests start their own 3-node MQTT cluster (tests/rabbitmq_cluster.py);
  # the package's own service is not used, so it is stopped where the install started it.
  if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    echo "setup: installing rabbitmq-server (apt-get; for the broker-cluster tests)"
    apt_install rabbitmq-server
    $SUDO systemctl disable --now rabbitmq-server >/dev/null 2>&1 || true
  fi
  # An aarch64 cross compiler and qemu: the tests run agent/native's C built for the Jetson's CPU.
  if ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || ! command -v qemu-aarch64 >/dev/null 2>&1; then
    echo "setup: installing gcc-aarch64-linux-gnu and qemu-user (apt-get; the C fast paths on aarch64)"
    apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
  fi
  $PY -m pip install -q --disable-pip-version-check --no-deps tensorrt-stubs
  $PY -c "import torch" 2>/dev/null || $PY -m pip install -q --disable-pip-version-check "torch==2.13.0"
fi

if [ ! -s data/demo/demo.mp4 ]; then
  echo "setup: generating the demo video (data/demo/demo.mp4)"
  $PY scripts/make_video.py --out data/demo/demo.mp4
fi
if [ ! -s data/demo/val/instances.json ]; then
  # The val split the model card and `edge-agent benchmark` measure on, and the INT8
  # calibration split (the train split is only needed to retrain: scripts/make_dataset.py).
  echo "setup: generating the demo val and calib sets (data/demo)"
  $PY scripts/make_dataset.py --out data/demo --train 0
fi
echo "setup: done"
echo "$PWD/.venv/bin/python" >&3
