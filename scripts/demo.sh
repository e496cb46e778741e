#!/usr/bin/env bash
# The demo on a fresh machine: set up, start a local mosquitto, run the agent on the
# bundled demo video with the fast model (CPU), printing detection records and
# publishing them to mqtt://127.0.0.1:1883 (watch with: .venv/bin/edge-agent watch).
# With no arguments it runs one pass of the 20 s video; arguments go to `edge-agent run`
# instead (`--max-frames 0`: loop until Ctrl-C, as the service does).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(scripts/setup.sh demo)  # stdout carries only the detection records
[ $# -gt 0 ] || set -- --max-frames 600
export PATH="$PATH:/usr/sbin"
broker_pid=""
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  mosquitto -p 1883 >/tmp/edge-agent-demo-mosquitto.log 2>&1 &
  broker_pid=$!
  trap 'kill $broker_pid 2>/dev/null || true' EXIT
  sleep 0.5
fi
$PY -m agent.cli run --broker mqtt://127.0.0.1:1883 "$@"
