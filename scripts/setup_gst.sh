#!/usr/bin/env bash
# The environment for tests/test_gstreamer.py, set up the way a Jetson is (Debian/Ubuntu). Idempotent.
#   - Debian's OpenCV, built with GStreamer like JetPack's (pip's opencv-python has none),
#     with the plugins and codecs the tests stream with and gst-rtsp-server (a real RTSP camera)
#   - .venv-gst: a venv from the system Python with --system-site-packages, so `cv2` is the
#     system OpenCV as in a Jetson venv; the agent is installed there without the `cpu` extra,
#     whose pip OpenCV would shadow it
# Then: REQUIRE_GSTREAMER=1 .venv-gst/bin/python -m pytest tests/test_gstreamer.py
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
cd "$(dirname "$0")/.."
VENV=${GST_VENV:-.venv-gst}
SYSPY=/usr/bin/python3

packages="python3-opencv python3-gi python3-venv gir1.2-gstreamer-1.0 gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav"
missing=""
for p in $packages; do
  dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "setup_gst: installing$missing (apt-get)"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup_gst: creating $VENV (--system-site-packages: the system OpenCV, as on a Jetson)"
  $SYSPY -m venv --system-site-packages "$VENV"
fi
# Debian's cv2 is built against Debian's numpy: pin it so pip never installs a newer one
# (numpy 2 breaks it) over the system one.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
$SYSPY -c "import numpy; print('numpy==' + numpy.__version__)" > "$constraints"
# -I: the checkout on sys.path (the current directory) must not pass for an installed agent.
if ! "$VENV/bin/python" -I -c "
import os, sys, agent, click, yaml, paho.mqtt, onnxruntime, pytest
sys.exit(os.path.dirname(agent.__file__) != sys.argv[1])" "$PWD/agent" 2>/dev/null; then
  echo "setup_gst: pip install -e . onnxruntime pytest into $VENV (no cpu extra: no pip OpenCV)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$constraints" -e . onnxruntime pytest
fi
"$VENV/bin/python" - <<'EOF'
import re, sys
import cv2
build = re.search(r"GStreamer:\s*(\S+)", cv2.getBuildInformation())
if not cv2.__file__.startswith("/usr/") or not build or build.group(1).upper() in ("NO", "OFF"):
    sys.exit("setup_gst: .venv-gst's cv2 ({} {}) is not the system OpenCV with GStreamer".format(
        cv2.__version__, cv2.__file__))
print("setup_gst: OpenCV {} with GStreamer {} ({})".format(cv2.__version__, build.group(1), cv2.__file__))
EOF
