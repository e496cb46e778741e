"""``edge-agent simulate`` (agent.fleet) against a real mosquitto: every seq, statuses, last wills, bad input."""

import collections
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import jsonschema
import pytest

from agent.fleet import Consumer, load_replay
from agent.publish import paho_compat
from conftest import ROOT, Broker, free_port, run_cli

SCHEMAS = os.path.join(ROOT, "agent", "schemas")


def schema(name):
    with open(os.path.join(SCHEMAS, name + ".schema.json")) as f:
        return json.load(f)


class Collector(object):
    """A plain paho subscriber to ``edge-agent/#`` (QoS 1): every (topic, payload dict, retain) in order."""

    def __init__(self, url):
        host, port = url.rsplit("/", 1)[1].split(":")
        self.messages = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho_compat.make_client("collector-{}".format(time.time()))
        paho_compat.set_callbacks(self.client, on_message=self._on_message,
                                  on_subscribe=lambda mid, ok: subscribed.set())
        self.client.connect(host, int(port), 30)
        self.client.subscribe("edge-agent/#", 1)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK from {}".format(url)

    def _on_message(self, msg):
        with self.lock:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def wait(self, predicate, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(list(self.messages)):
                    return list(self.messages)
            time.sleep(0.05)
        with self.lock:
            return list(self.messages)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def simulate(url, *args):
    result = run_cli(["simulate", "--broker", url, "--json"] + list(args), timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def by_device(messages, kind):
    out = collections.defaultdict(list)
    for topic, payload, retain in messages:
        if topic.endswith("/" + kind):
            out[topic.split("/")[1]].append((payload, retain))
    return out


def test_every_device_delivers_every_seq_with_its_own_ids_and_status(broker):
    collector = Collector(broker.url)
    consumer = Consumer(broker.url).start()
    try:
        summary = simulate(broker.url, "--devices", "5", "--fps", "5", "--duration", "3")
        assert summary["published"] == 75 and summary["acked"] == 75
        assert summary["last_seq"] == {"sim-{:04d}".format(i): 15 for i in range(1, 6)}
        messages = collector.wait(lambda ms: sum(t.endswith("/detections") for t, _, _ in ms) >= 75
                                  and sum(p.get("state") == "offline" for _, p, _ in ms) >= 5)
        assert consumer.wait_for(75, 10)
        stats = consumer.stats(summary["last_seq"])
    finally:
        collector.close()
        consumer.close()

    records = by_device(messages, "detections")
    statuses = by_device(messages, "status")
    assert sorted(records) == sorted(summary["last_seq"]) == sorted(statuses)
    detections, status = schema("detections"), schema("status")
    boots = set()
    for device, recs in records.items():
        assert [r["seq"] for r, _ in recs] == list(range(1, 16)), device
        assert {(r["device_id"], r["camera_id"]) for r, _ in recs} == {(device, "cam0")}
        boot = {r["boot_id"] for r, _ in recs}
        assert len(boot) == 1
        boots |= boot
        for r, _ in recs:
            jsonschema.validate(r, detections)
        # Replayed from the recorded run: real detections, not empty frames.
        assert sum(len(r["detections"]) for r, _ in recs) > 15
        states = [(p["state"], p.get("reason"), p["boot_id"]) for p, _ in statuses[device]]
        assert states == [("online", None) + tuple(boot), ("offline", "stopped") + tuple(boot)], device
        for p, _ in statuses[device]:
            jsonschema.validate(p, status)
            assert p["broker"] == broker.url
    assert len(boots) == 5  # one boot id per device

    # The consumer counted what the collector saw.
    assert (stats["unique"], stats["gaps"], stats["missing"], stats["streams"]) == (75, 0, 0, 5)
    assert 0 <= stats["delay_p50_s"] <= stats["delay_p95_s"]

    # Retained: a late subscriber gets every device's last status, offline.
    late = Collector(broker.url)
    try:
        retained = late.wait(lambda ms: len(ms) >= 5, timeout=5)
    finally:
        late.close()
    assert sorted((t, p["state"], p["reason"], r) for t, p, r in retained) == [
        ("edge-agent/sim-{:04d}/status".format(i), "offline", "stopped", True) for i in range(1, 6)]


def test_dropped_connections_publish_every_last_will(broker):
    collector = Collector(broker.url)
    try:
        summary = simulate(broker.url, "--devices", "3", "--fps", "5", "--duration", "1", "--drop-at-end",
                           "--device-prefix", "lost")
        messages = collector.wait(lambda ms: sum(p.get("state") == "offline" for _, p, _ in ms) >= 3)
    finally:
        collector.close()
    assert summary["published"] == 15
    statuses = by_device(messages, "status")
    boots = {d: {r["boot_id"] for r, _ in recs} for d, recs in by_device(messages, "detections").items()}
    assert sorted(statuses) == ["lost-0001", "lost-0002", "lost-0003"]
    for device, payloads in statuses.items():
        assert [(p["state"], p.get("reason")) for p, _ in payloads] == [("online", None),
                                                                          ("offline", "connection lost")]
        assert {p["boot_id"] for p, _ in payloads} == boots[device]
        jsonschema.validate(payloads[-1][0], schema("status"))


def test_devices_are_spread_round_robin_over_the_brokers(broker, tmp_path):
    other = Broker(tmp_path / "other")
    os.makedirs(other.workdir)
    other.start()
    collectors = [Collector(broker.url), Collector(other.url)]
    try:
        summary = simulate(broker.url, "--broker", other.url, "--devices", "4", "--fps", "5", "--duration", "1")
        seen = [c.wait(lambda ms: sum(p.get("state") == "offline" for _, p, _ in ms) >= 2) for c in collectors]
    finally:
        for c in collectors:
            c.close()
        other.stop()
    assert summary["published"] == 20
    expected = (["sim-0001", "sim-0003"], ["sim-0002", "sim-0004"])
    for messages, url, devices in zip(seen, (broker.url, other.url), expected):
        records = by_device(messages, "detections")
        assert sorted(records) == devices
        assert all([r["seq"] for r, _ in recs] == list(range(1, 6)) for recs in records.values())
        assert {p["broker"] for t, p, _ in messages if t.endswith("/status")} == {url}


@pytest.mark.parametrize("args, culprit", [
    (["--devices", "0"], "'--devices'"),
    (["--fps", "0"], "'--fps'"),
    (["--broker", "http://127.0.0.1:1883"], "'--broker': (URL 1 of 1)"),
    (["--broker", "mqtt://127.0.0.1:1883", "--broker", "mqtt://host:port"], "'--broker': (URL 2 of 2): bad port"),
    (["--broker", "mqtts://127.0.0.1"], "plain mqtt:// only"),
])
def test_bad_input_names_the_option(args, culprit):
    result = run_cli(["simulate"] + args, timeout=30)
    assert result.returncode == 2
    assert culprit in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_broker_exits_1_naming_it():
    port = free_port()
    result = run_cli(["simulate", "--devices", "2", "--broker", "mqtt://127.0.0.1:{}".format(port),
                      "--connect-timeout", "1"], timeout=30)
    assert result.returncode == 1
    assert "--broker: 2 of 2 devices not connected" in result.stderr
    assert "127.0.0.1:{}".format(port) in result.stderr


def test_replay_is_a_recorded_run_that_validates():
    records = load_replay()
    assert len(records) >= 100
    detections = schema("detections")
    for r in records:
        jsonschema.validate(r, detections)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))


def _doc_block(marker):
    with open(os.path.join(ROOT, "docs", "fleet.md")) as f:
        text = f.read()
    return text.split(marker, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def _query(path, sql):
    """One row of ``sql`` on the docs consumer's database; None before it has its table."""
    if not path.exists():
        return None
    db = sqlite3.connect(str(path), timeout=10)
    try:
        return db.execute(sql).fetchone()
    except sqlite3.OperationalError:  # the table is not made yet
        return None
    finally:
        db.close()


@pytest.mark.skipif(paho_compat.PAHO_VERSION < (2, 0), reason="the docs' consumer is written for paho-mqtt 2.x")
def test_the_docs_consumer_group_stores_every_record_once(broker, tmp_path):
    script = tmp_path / "consumer.py"
    script.write_text(_doc_block("<!-- consumer -->"))
    host, port = broker.url.rsplit("/", 1)[1].split(":")
    database = tmp_path / "records.sqlite"
    fleet = "SELECT COUNT(*), COUNT(DISTINCT device_id), MAX(seq) FROM records WHERE device_id != 'probe'"
    consumers = [subprocess.Popen([sys.executable, str(script), host, port, "store-{}".format(i)], cwd=str(tmp_path))
                 for i in (1, 2)]
    try:
        # Probe records until the group stores one (a member has subscribed); then the fleet.
        probe = paho_compat.make_client("probe")
        probe.connect(host, int(port), 30)
        probe.loop_start()
        for seq in range(1, 100):
            record = {"boot_id": "probe", "camera_id": "cam0", "seq": seq, "device_id": "probe", "timestamp": 0}
            probe.publish("edge-agent/probe/cam0/detections", json.dumps(record), qos=1)
            time.sleep(0.2)
            if (_query(database, "SELECT COUNT(*) FROM records") or (0,))[0]:
                break
        probe.disconnect()
        probe.loop_stop()
        summary = simulate(broker.url, "--devices", "6", "--fps", "5", "--duration", "2")
        deadline = time.monotonic() + 15
        while (_query(database, fleet) or (0,))[0] < 60 and time.monotonic() < deadline:
            time.sleep(0.2)
        rows = _query(database, fleet)
    finally:
        for p in consumers:
            p.terminate()
            p.wait(10)
    assert summary["published"] == 60
    assert rows == (60, 6, 10)  # every record once: 6 devices, seqs 1..10
