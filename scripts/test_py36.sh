#!/usr/bin/env bash
# The test suite again under a real Python 3.6 (JetPack 4's), with the last releases of the
# dependencies that support it: what a Jetson Xavier NX on JetPack 4.5/4.6 runs. Only the
# type check (mypy) and the training smoke test (PyTorch) are left out.
#   scripts/test_py36.sh [/path/to/python3.6] [pytest args]
# The virtual environment is kept in .venv36/ (ignored) and reused. Called by scripts/test.sh
# when a Python 3.6 interpreter exists.
set -euo pipefail
cd "$(dirname "$0")/.."
py36=${1:?usage: scripts/test_py36.sh /path/to/python3.6 [pytest args]}
shift
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
venv=.venv36
if [ ! -f "$venv/.complete-4" ]; then
  echo "setup: Python 3.6 environment in $venv"
  rm -rf "$venv"
  "$py36" -m venv "$venv"
  "$venv/bin/python" -m pip install -q "pip==21.3.1"  # 3.6's own pip cannot read manylinux2014 tags
  # The last releases for Python 3.6 of what the agent and its tests import (JetPack 4 gets these).
  "$venv/bin/python" -m pip install -q --only-binary=:all: "numpy==1.19.5" "opencv-python-headless==4.6.0.66" \
    "onnxruntime==1.10.0" "onnx==1.10.2" "protobuf<4" "click==8.0.4" "PyYAML==6.0.1" "dataclasses==0.8" \
    "pytest==7.0.1" "jsonschema==3.2.0" "hypothesis==6.31.6" "scipy==1.5.4" "pandas==1.1.5" \
    "Jinja2==3.0.3"
  "$venv/bin/python" -m pip install -q "paho-mqtt==1.6.1" "pycocotools==2.0.6" "motmetrics==1.2.5"
  touch "$venv/.complete-4"
fi
"$venv/bin/python" -c "import sys; assert sys.version_info[:2] == (3, 6), sys.version; print('python', sys.version.split()[0])"
# The tests import the checkout (PYTHONPATH): build its C fast paths for this interpreter in place,
# as pip does at install (agent/native/_fastpath.cpython-36m-*.so beside the main venv's).
"$venv/bin/python" setup.py -q build_ext --inplace
# test_service_systemd.py installs with the distribution's python3 whatever runs pytest: the
# main run covers it. The tracking accuracy test renders its video here, with OpenCV 4.6's
# own FFmpeg: the same frames, encoded into other bytes than the main run's (same quality), so
# its detections and scores differ a little from the main run's (benchmarks/README.md).
# The 3-node RabbitMQ cluster costs ~30 s to start and the broker side does not depend on the
# agent's Python: its failover test runs in the main run; the mosquitto failover and bridge
# tests of test_fleet.py (the same failover code, under paho-mqtt 1.6) run here.
PYTHONPATH="$PWD" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
  --ignore=tests/test_typecheck.py --ignore=tests/test_training.py --ignore=tests/test_service_systemd.py \
  --deselect "tests/test_fleet.py::test_cluster_failover_when_the_connected_node_is_killed" "$@" tests
