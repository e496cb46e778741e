#!/usr/bin/env bash
# The test suite on a fresh machine: set up (mosquitto, .venv with the agent, test tools,
# torch CPU), then the static checks and pytest. Extra arguments go to pytest.
# PYTHON picks the interpreter .venv is made from (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(scripts/setup.sh test)
export PATH="$PATH:/usr/sbin"
echo "check: runtime code parses on Python 3.6 (vermin)"
$PY -c "import sys, vermin; sys.argv[0] = 'vermin'; sys.exit(vermin.main())" \
  -q -t=3.6- --violations --backport dataclasses --no-tips agent
py36=""
for candidate in "$HOME"/.pyenv/versions/3.6*/bin/python3.6 $(command -v python3.6 || true); do
  if [ -x "$candidate" ] && "$candidate" -c "" 2>/dev/null; then py36=$candidate; break; fi
done
if [ -n "$py36" ]; then
  echo "check: runtime code compiles with a real Python 3.6 ($py36)"
  "$py36" -m compileall -q agent >/dev/null
fi
# Debian's OpenCV with GStreamer in .venv-gst (as on a Jetson), and gst-rtsp-server, which the
# systemd tests also use as a camera that comes back.
scripts/setup_gst.sh
$PY -m pytest -q -p no:cacheprovider "$@" tests
echo "check: the GStreamer paths (gst://, CSI, Jetson RTSP H.264/H.265) with Debian's OpenCV (.venv-gst)"
REQUIRE_GSTREAMER=1 .venv-gst/bin/python -m pytest -q -p no:cacheprovider tests/test_gstreamer.py
if [ -n "$py36" ]; then
  echo "check: the test suite under Python 3.6 with JetPack 4's dependency releases (scripts/test_py36.sh)"
  scripts/test_py36.sh "$py36" "$@"
else
  # No Python 3.6 here: at least the MQTT tests against paho-mqtt 1.6 (JetPack 4's; its API
  # differs from 2.x, see agent/publish/paho_compat.py), from a throwaway target directory.
  echo "check: the MQTT tests against paho-mqtt 1.6.1 (the last release for Python 3.6)"
  paho16=$(mktemp -d)
  trap 'rm -rf "$paho16"' EXIT
  $PY -m pip install -q --disable-pip-version-check --no-deps --target "$paho16" "paho-mqtt==1.6.1"
  PYTHONPATH="$paho16${PYTHONPATH:+:$PYTHONPATH}" $PY -c \
    "import paho.mqtt as m; assert m.__version__ == '1.6.1', m.__version__; print('paho-mqtt', m.__version__)"
  PYTHONPATH="$paho16${PYTHONPATH:+:$PYTHONPATH}" $PY -m pytest -q -p no:cacheprovider tests/test_mqtt.py
fi
