"""Failover time on a real 3-node RabbitMQ MQTT cluster: kill -9 of the node the agent is on.

Each run starts ``edge-agent run`` (the demo model on a looping video, 30 fps) with the
three nodes in mqtt.url, a persistent QoS 1 subscriber on node 3, waits for records through
node 1, kills node 1's beam and measures the time until the subscriber receives the agent's
status naming node 2 (the first thing the agent publishes after a connection). Then it runs
on for 3 s, stops the agent (SIGTERM), checks the subscriber saw every seq and the spool is
empty, and starts node 1 again for the next run.

    python benchmarks/bench_failover.py [--runs 5] [--cluster DIR]   (as root: nodes run as rabbitmq)

--cluster DIR uses a cluster started by ``python tests/rabbitmq_cluster.py start DIR``;
without it one is started in a temporary directory and stopped at the end.
"""

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from agent.publish import paho_compat  # noqa: E402
from rabbitmq_cluster import RabbitCluster  # noqa: E402


class Subscriber(object):
    """Persistent QoS 1 subscriber: (receive time, topic, payload) of every message."""

    def __init__(self, url, topic):
        self.messages, self.lock = [], threading.Lock()
        self.client = paho_compat.make_client("failover-sub-" + uuid.uuid4().hex[:6], clean_session=False)
        ready = threading.Event()

        def on_connect(ok, reason):
            if ok:
                self.client.subscribe(topic, qos=1)
                ready.set()

        def on_message(msg):
            with self.lock:
                self.messages.append((time.monotonic(), msg.topic, json.loads(msg.payload.decode("utf-8"))))

        paho_compat.set_callbacks(self.client, on_connect=on_connect, on_message=on_message)
        self.client.connect_async("127.0.0.1", int(url.rsplit(":", 1)[1]), 30)
        self.client.loop_start()
        assert ready.wait(10), "subscriber cannot connect to " + url
        time.sleep(0.3)

    def on(self, suffix):
        with self.lock:
            return [(t, p) for t, topic, p in self.messages if topic.endswith(suffix)]

    def wait(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return False

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def one_run(cluster, workdir, video, n):
    urls = cluster.urls
    d = os.path.join(workdir, "run{}".format(n))
    os.makedirs(d)
    device = "failover{}".format(n)
    config = os.path.join(d, "config.yaml")
    with open(config, "w") as f:
        f.write("device_id: {dev}\nsizes:\n  fast:\n    onnx: {m}/demo-fast.onnx\n  accurate:\n    onnx: "
                "{m}/demo-accurate.onnx\ncameras:\n  - id: cam0\n    source: {video}\n    loop: true\n"
                "output:\n  jsonl: null\nengines_dir: {d}/engines\nstate_dir: {d}/state\n"
                "mqtt:\n  enabled: true\n  keepalive_s: 10\n  url: [{urls}]\n".format(
                    dev=device, m=os.path.join(ROOT, "models"), video=video, d=d, urls=", ".join(urls)))
    sub = Subscriber(urls[2], "edge-agent/{}/#".format(device))
    with open(os.path.join(d, "agent.log"), "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", config], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        if not sub.wait(lambda: len(sub.on("/detections")) >= 30, 120):
            raise RuntimeError("no records from the agent; see " + os.path.join(d, "agent.log"))
        cluster.kill_node(0)
        killed = time.monotonic()
        moved = sub.wait(lambda: any(p.get("broker") == urls[1] for _, p in sub.on("/status")), 60)
        failover = [t for t, p in sub.on("/status") if p.get("broker") == urls[1]][0] - killed if moved else None
        first_record = [t for t, _ in sub.on("/detections") if t > killed]
        time.sleep(3.0)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        sub.wait(lambda: sub.on("/status")[-1][1]["state"] == "offline", 15)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
        cluster.start_node(0)
    seqs = [p["seq"] for _, p in sub.on("/detections")]
    db = sqlite3.connect(os.path.join(d, "state", "spool.sqlite"))
    spooled = db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]
    db.close()
    return {"failover_s": None if failover is None else round(failover, 3),
            "first_record_after_kill_s": round(first_record[0] - killed, 3) if first_record else None,
            "records": max(seqs), "gaps": len(set(range(1, max(seqs) + 1)) - set(seqs)),
            "duplicates": len(seqs) - len(set(seqs)), "spool_left": spooled}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cluster", help="a cluster directory from tests/rabbitmq_cluster.py start DIR")
    args = ap.parse_args()
    from conftest import write_video

    workdir = tempfile.mkdtemp(prefix="bench-failover-")
    cluster_dir = args.cluster or tempfile.mkdtemp(prefix="bench-failover-rabbitmq-")
    cluster = RabbitCluster(cluster_dir, nodes=3)
    try:
        if not args.cluster:
            cluster.start()
        video = write_video(os.path.join(workdir, "video.avi"))
        runs = []
        for n in range(args.runs):
            runs.append(one_run(cluster, workdir, video, n))
            print(json.dumps(runs[-1]), flush=True)
        times = sorted(r["failover_s"] for r in runs if r["failover_s"] is not None)
        print(json.dumps({"runs": len(runs), "failover_s": times,
                          "median_s": times[len(times) // 2] if times else None,
                          "gaps": sum(r["gaps"] for r in runs), "spool_left": sum(r["spool_left"] for r in runs)}))
    finally:
        if not args.cluster:
            cluster.stop()
            shutil.rmtree(cluster_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
