"""What remote commands cost the frame path: a running agent's records while commands arrive.

Starts a real mosquitto on a free port and ``edge-agent run`` (demo video looped in real
time, 30 FPS, size fast, ``mqtt.commands: true``), subscribes to its detection records and,
per phase, measures from the records themselves: frames per second, ``timing_ms.total``
p50/p95 (capture to hand-off) and seq gaps. Phases, each ``--seconds`` long:

- idle: no commands;
- status: ``status`` commands as fast as replies come back (one in flight);
- garbage: malformed payloads at ~250/s on the command topics;
- benchmark: one ``benchmark`` command (a child process at nice 19) running meanwhile.

    python benchmarks/bench_control.py [--seconds 10]
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from agent.publish import paho_compat  # noqa: E402
from agent.timing import percentiles  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    from conftest import write_video

    tmp = tempfile.mkdtemp(prefix="bench-control-")
    port = free_port()
    url = "mqtt://127.0.0.1:{}".format(port)
    with open(os.path.join(tmp, "mosquitto.conf"), "w") as f:
        f.write("listener {} 127.0.0.1\nallow_anonymous true\n".format(port))
    broker = subprocess.Popen(["mosquitto", "-c", os.path.join(tmp, "mosquitto.conf")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    video = write_video(os.path.join(tmp, "video.avi"), frames=90)
    config = os.path.join(tmp, "config.yaml")
    with open(config, "w") as f:
        f.write("device_id: bench\ncameras:\n  - {{id: cam0, source: {}, loop: true}}\noutput: {{jsonl: null}}\n"
                "state_dir: {}/state\nengines_dir: {}/engines\nmqtt: {{enabled: true, url: '{}', commands: true}}\n"
                .format(video, tmp, tmp, url))
    agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", config], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "agent.log"), "w"))
    records, replies, lock = [], [], threading.Lock()

    def on_message(msg):
        data = json.loads(msg.payload.decode("utf-8"))
        with lock:
            (records if msg.topic.endswith("/detections") else replies).append((time.monotonic(), data))

    time.sleep(0.5)
    client = paho_compat.make_client("bench-sub")
    paho_compat.set_callbacks(client, on_message=on_message)
    client.connect("127.0.0.1", port, 30)
    client.subscribe("edge-agent/bench/cam0/detections", 1)
    client.subscribe("edge-agent/bench/reply/#", 1)
    client.loop_start()
    try:
        deadline = time.time() + 120
        while not records and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(3.0)  # warm-up
        rows = []
        for phase in ("idle", "status", "garbage", "benchmark"):
            start = time.monotonic()
            stop = start + args.seconds
            rng = random.Random(1)
            sent = 0
            if phase == "benchmark":
                client.publish("edge-agent/bench/cmd/benchmark", json.dumps({"id": "bench"}), qos=1)
            while time.monotonic() < stop:
                if phase == "status":
                    with lock:
                        n = len(replies)
                    client.publish("edge-agent/bench/cmd/status", json.dumps({"id": "s{}".format(sent)}), qos=1)
                    sent += 1
                    while time.monotonic() < stop:
                        with lock:
                            if len(replies) > n:
                                break
                        time.sleep(0.002)
                elif phase == "garbage":
                    for _ in range(25):
                        client.publish("edge-agent/bench/cmd/" + rng.choice(["size", "zap", "reload"]),
                                       bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))), qos=1)
                        sent += 1
                    time.sleep(0.1)
                else:
                    time.sleep(0.1)
            with lock:
                window = [d for t, d in records if start <= t < stop]
            seqs = [d["seq"] for d in window]
            totals = [d["timing_ms"]["total"] for d in window]
            p = percentiles(totals) or {"p50": float("nan"), "p95": float("nan")}
            gaps = sum(1 for a, b in zip(seqs, seqs[1:]) if b != a + 1)
            rows.append((phase, sent, len(window) / args.seconds, p["p50"], p["p95"], gaps))
        if phase == "benchmark":  # let the benchmark finish before stopping (its result is printed below)
            deadline = time.time() + 300
            while time.time() < deadline:
                with lock:
                    done = [d for _, d in replies if d.get("id") == "bench" and d.get("final")]
                if done:
                    break
                time.sleep(0.5)
        print("{:<10} {:>9} {:>7} {:>12} {:>12} {:>5}".format("phase", "commands", "FPS", "total p50 ms",
                                                              "total p95 ms", "gaps"))
        for row in rows:
            print("{:<10} {:>9} {:>7.1f} {:>12.1f} {:>12.1f} {:>5}".format(*row))
        with lock:
            final = [d for _, d in replies if d.get("id") == "bench" and d.get("final")]
        if final:
            print("benchmark command: {}: {}".format(final[-1]["status"], final[-1]["message"]))
    finally:
        client.loop_stop()
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
