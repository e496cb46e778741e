#!/bin/sh
# Install edge-agent from this checkout into a venv and as a systemd service.
# Usage: sudo scripts/install.sh [install-service options, e.g. --no-start]
# VENV=/opt/edge-agent by default. On a Jetson the venv sees JetPack's TensorRT and
# OpenCV (--system-site-packages; pip's OpenCV has no GStreamer, so no `cpu` extra).
set -eu
VENV=${VENV:-/opt/edge-agent}
cd "$(dirname "$0")/.."
if [ -e /etc/nv_tegra_release ]; then
    python3 -m venv --system-site-packages "$VENV"
    "$VENV/bin/pip" install --upgrade pip
    "$VENV/bin/pip" install .
else
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --upgrade pip
    "$VENV/bin/pip" install ".[cpu]"
fi
"$VENV/bin/edge-agent" doctor || echo "doctor reported blocking problems (see above); installing anyway" >&2
exec "$VENV/bin/edge-agent" install-service --exec-path "$VENV/bin/edge-agent" "$@"
