"""A device on a broker cluster (issue 19): failover between the brokers of mqtt.url, and a
site broker bridged to a central one. Real brokers only: a 3-node RabbitMQ MQTT cluster
(tests/rabbitmq_cluster.py, started once per session) and mosquitto.

The failover time is measured and printed (run with -s to see it); the bound asserted
is generous, for a loaded 2-core machine: the test is about what arrives, not how fast.
"""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import jsonschema

from conftest import ROOT, Broker, PersistentBroker, free_port
from test_mqtt import Subscriber, first_occurrences, make_config, record, schema, start_sink, wait_state

BRIDGE_EXAMPLE = os.path.join(ROOT, "docs", "mosquitto-bridge.conf")


def spooled_rows(state_dir):
    """Rows left in the agent's spool (the file stays after the agent exits)."""
    db = sqlite3.connect(os.path.join(state_dir, "spool.sqlite"))
    try:
        return db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]
    finally:
        db.close()


def gaps(seqs, last):
    return sorted(set(range(1, last + 1)) - set(seqs))


class Emitter(object):
    """A camera stand-in: records for cam0 at ``rate``/s into ``sink`` until stop()."""

    def __init__(self, sink, rate=30.0):
        self.sink, self.rate, self.last = sink, rate, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self):
        t_next = time.time()
        while not self._stop.is_set():
            self.last += 1
            self.sink.emit(record(self.last))
            t_next += 1.0 / self.rate
            time.sleep(max(0.0, t_next - time.time()))

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.last


# --- the 3-node RabbitMQ cluster ------------------------------------------------------------

def test_cluster_failover_when_the_connected_node_is_killed(rabbitmq_cluster, tmp_path, demo_models, small_video):
    """``edge-agent run`` with the three nodes in mqtt.url, on node 1; a persistent QoS 1 subscriber
    on node 3. kill -9 of node 1's beam: the agent goes on through node 2, nothing is missing."""
    cluster = rabbitmq_cluster
    urls = cluster.urls
    state = tmp_path / "state"
    jsonl = tmp_path / "records.jsonl"
    config = tmp_path / "config.yaml"
    config.write_text(
        "device_id: fleet1\nsizes:\n  fast:\n    onnx: {fast}\n  accurate:\n    onnx: {acc}\n"
        "cameras:\n  - id: cam0\n    source: {video}\n    loop: true\n"
        "output:\n  jsonl: {jsonl}\nengines_dir: {d}/engines\nstate_dir: {state}\n"
        "mqtt:\n  enabled: true\n  keepalive_s: 10\n  url: [{urls}]\n".format(
            fast=demo_models["fast"], acc=demo_models["accurate"], video=small_video, jsonl=jsonl, d=tmp_path,
            state=state, urls=", ".join(urls)))
    sub = Subscriber(urls[2], ["edge-agent/fleet1/#"], client_id="fleet-sub-" + tmp_path.name[-8:], persistent=True)
    log = tmp_path / "agent.log"
    with open(str(log), "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(config)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=err)
    brokers = lambda: [s.get("broker") for s in sub.json("fleet1/status") if s["state"] == "online"]  # noqa: E731
    try:
        ok = sub.wait_for(lambda: len(sub.on("cam0/detections")) >= 30 or proc.poll() is not None, timeout=90)
        assert ok and proc.poll() is None, log.read_text()[-2000:]
        assert brokers()[-1] == urls[0]

        cluster.kill_node(0)
        killed = time.monotonic()
        assert sub.wait_for(lambda: urls[1] in brokers(), timeout=60), (brokers(), log.read_text()[-2000:])
        failover_s = time.monotonic() - killed
        seen = len(sub.on("cam0/detections"))
        assert sub.wait_for(lambda: len(sub.on("cam0/detections")) >= seen + 30, timeout=30)
        print("\nfailover: node 1 killed -> status through node 2 after {:.2f} s".format(failover_s))
        assert failover_s < 30.0  # the target is 5 s (measured, printed above); this only catches a hang

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-2000:]
        assert sub.wait_for(lambda: sub.json("fleet1/status")[-1]["state"] == "offline", timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sub.close()
        cluster.start_node(0)  # the next test gets all three nodes

    with open(str(jsonl)) as f:
        written = [json.loads(line)["seq"] for line in f if line.strip()]
    seqs = [r["seq"] for r in sub.json("cam0/detections")]
    assert written == list(range(1, len(written) + 1)) and len(written) > 60
    assert gaps(seqs, written[-1]) == [] and max(seqs) == written[-1]  # every record, through either node
    assert first_occurrences(seqs) == written
    print("records: {}, duplicates (QoS 1): {}".format(len(written), len(seqs) - len(set(seqs))))
    assert spooled_rows(str(state)) == 0
    assert sub.json("fleet1/spool")[-1]["queued"] == 0
    connected = re.findall(r"MQTT connected to (\S+)", log.read_text())
    assert connected[:2] == urls[:2], connected
    for s in sub.json("fleet1/status"):
        jsonschema.validate(s, schema("status"))


# --- mosquitto: a broker down at start; every broker down, then one back ----------------------

def test_a_dead_first_broker_at_start_moves_to_the_next(broker, tmp_path):
    dead = "mqtt://127.0.0.1:{}".format(free_port())
    sub = Subscriber(broker.url, ["edge-agent/dev1/status"])
    sink = start_sink(make_config(tmp_path, [dead, broker.url], client_id="gate-7"))
    try:
        assert wait_state(sink, "connected", timeout=10), sink.state()
        assert sub.wait_for(lambda: sub.json("/status") and sub.json("/status")[-1]["broker"] == broker.url)
        assert sink.url == broker.url and sink.client_id == "gate-7"  # a configured client id stays
    finally:
        sink.close()
        sub.close()
    will = sub.json("/status")[-1]
    assert will["state"] == "offline" and "broker" not in will  # a clean stop, not the will
    jsonschema.validate(sub.json("/status")[0], schema("status"))



def test_every_broker_down_spools_then_drains_in_order_through_the_one_back(tmp_path):
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    a, b = (PersistentBroker(d).start() for d in dirs)
    subs = [Subscriber(x.url, ["edge-agent/dev1/#"], client_id="drain-" + n, persistent=True)
            for x, n in ((a, "a"), (b, "b"))]
    sink = start_sink(make_config(tmp_path, [a.url, b.url]), reconnect_min_s=0.2, reconnect_max_s=1.0)
    try:
        assert wait_state(sink, "connected"), sink.state()
        camera = Emitter(sink)
        time.sleep(1.0)
        a.stop()
        b.stop()
        assert wait_state(sink, "disconnected"), sink.state()
        time.sleep(3.0)
        spooled = sink.store_forward.spool.count
        assert spooled > 60  # 3 s at 30/s went to the disk spool, as with one broker
        b.start()
        assert wait_state(sink, "connected", timeout=20), sink.state()
        time.sleep(1.0)
        last = camera.stop()
        assert subs[1].wait_for(lambda: sink.store_forward.spool.count == 0 and max(
            r["seq"] for r in subs[1].json("/detections")) == last, timeout=30), sink.counters()
        assert sink.url == b.url and sink.counters()["dropped_boot"] == 0
    finally:
        sink.close()
        for s in subs:
            s.close()
        a.stop()
        b.stop()
    on_a = [r["seq"] for r in subs[0].json("/detections")]
    on_b = [r["seq"] for r in subs[1].json("/detections")]
    assert gaps(on_a + on_b, last) == []
    drained = [s for s in first_occurrences(on_b) if s not in set(on_a)]
    assert drained == sorted(drained) and len(drained) >= spooled  # the spool drained oldest first
    assert [s["broker"] for s in subs[1].json("/status") if s["state"] == "online"][-1] == b.url


# --- mosquitto: a site broker bridged to a central one (docs/mosquitto-bridge.conf) ----------

class SiteBroker(Broker):
    """mosquitto with docs/mosquitto-bridge.conf: the shipped example, its ports and paths replaced."""

    def __init__(self, workdir, central_port):
        Broker.__init__(self, workdir)
        self.central_port = central_port

    def conf_lines(self):
        with open(BRIDGE_EXAMPLE) as f:
            text = f.read()
        for pattern, repl in ((r"^listener 1883 0\.0\.0\.0$", ""),  # Broker.start() writes its own listener
                              (r"^address central\.example\.net:1883$", "address 127.0.0.1:{}".format(self.central_port)),
                              (r"^persistence_location /var/lib/mosquitto/$", "persistence_location {}/".format(self.workdir))):
            text, n = re.subn(pattern, repl, text, flags=re.M)
            assert n == 1, "docs/mosquitto-bridge.conf changed: no line matches {}".format(pattern)
        return [text, "user root\n" if os.geteuid() == 0 else ""]


def test_bridge_from_a_site_broker_loses_nothing_when_the_central_one_goes(tmp_path):
    (tmp_path / "central").mkdir()
    (tmp_path / "site").mkdir()
    central = PersistentBroker(tmp_path / "central").start()
    consumer = Subscriber(central.url, ["edge-agent/dev1/#"], client_id="central-consumer", persistent=True)
    site = SiteBroker(tmp_path / "site", central.port).start()
    sink = start_sink(make_config(tmp_path, site.url))
    try:
        assert wait_state(sink, "connected"), sink.state()
        assert consumer.wait_for(lambda: consumer.on("dev1/status"), timeout=20), "the bridge did not connect"
        camera = Emitter(sink)
        time.sleep(1.0)
        central.stop()  # the link is down: the site broker queues for it
        time.sleep(3.0)
        central.start()
        time.sleep(1.0)
        last = camera.stop()
        assert consumer.wait_for(lambda: gaps([r["seq"] for r in consumer.json("/detections")], last) == [],
                                 timeout=60), gaps([r["seq"] for r in consumer.json("/detections")], last)[:10]
        assert sink.store_forward.spool.count == 0  # the agent never saw the outage: the site broker took it
    finally:
        sink.close()
        consumer.close()
        site.stop()
        central.stop()
    seqs = [r["seq"] for r in consumer.json("/detections")]
    order = first_occurrences(seqs)
    assert sorted(order) == list(range(1, last + 1)) and last > 100
    # Order is not promised across the bridge's reconnect: mosquitto keeps it only with
    # max_inflight_messages 1 (mosquitto.conf(5)); with the default 20 a live record can pass
    # the backlog (CI saw 124 arrive between 51 and 52). Consumers order by seq (docs/fleet.md).
    # What it may do is bounded: a record passes the backlog only at the reconnect.
    passed = sum(1 for a, b in zip(order, order[1:]) if b < a)
    assert passed <= 20, (passed, order)
