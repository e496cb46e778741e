#!/usr/bin/env bash
# One-time set-up of a development/demo machine (CPU backend). Idempotent.
#   - mosquitto (the local broker the demo and the tests use) from the distribution
#   - the agent, editable, with the CPU extras (ONNX Runtime, pip OpenCV) and test tools
#   - the demo video, generated from a seed (the demo models are committed)
# On a Jetson use docs/service.md instead: JetPack's OpenCV and TensorRT must not be
# shadowed by pip's opencv-python.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
what=${1:-demo}   # demo | test

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "setup: installing mosquitto (apt-get)"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi
export PATH="$PATH:/usr/sbin"

extras="cpu,eval"
[ "$what" = test ] && extras="cpu,eval,dev"
echo "setup: pip install -e .[$extras]"
$PY -m pip install -q --disable-pip-version-check -e ".[$extras]"

if [ "$what" = test ]; then
  # systemd-analyze checks the unit; torch runs the training smoke test (CPU build).
  if ! command -v systemd-analyze >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    echo "setup: installing systemd (for systemd-analyze)"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null || true
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
