"""The MQTT sink against a real mosquitto: topics, schemas, last will, outages, auth, TLS, watch."""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import jsonschema
import numpy as np
import paho.mqtt
import pytest

from agent.config import load_config
from agent.errors import ConfigError
from agent.publish import JsonLinesSink, make_sinks, paho_compat
from agent.publish.mqtt import MqttSink
from agent.publish.snapshot import read_comment
from agent.publish import schema as payloads
from agent.publish.schema import BOOT_ID
from conftest import ROOT, Broker, run_cli

PAHO_MAJOR = int(paho.mqtt.__version__.split(".")[0])

SCHEMAS = os.path.join(ROOT, "agent", "schemas")


def schema(name):
    with open(os.path.join(SCHEMAS, name + ".schema.json")) as f:
        return json.load(f)


def make_config(tmp_path, url, device="dev1", **mqtt):
    m = {"enabled": True, "url": url}
    m.update(mqtt)
    return load_config(None, {"device_id": device, "state_dir": str(tmp_path / "state"), "mqtt": m},
                       environ={}, check_files=False)


def record(seq, cam="cam0", labels=()):
    dets = [{"class_id": i, "label": lab, "confidence": 0.9, "box": [10.0, 20.0, 60.0, 80.0],
             "box_norm": [0.03125, 0.08333, 0.1875, 0.33333]} for i, lab in enumerate(labels)]
    return {"schema_version": 2, "device_id": "dev1", "camera_id": cam, "boot_id": BOOT_ID, "seq": seq,
            "frame_index": seq - 1, "timestamp": time.time(), "model_size": "fast",
            "image": {"width": 320, "height": 240}, "detections": dets,
            "timing_ms": {"preprocess": 1.0, "infer": 5.0, "postprocess": 0.5, "publish": 0.1, "total": 7.0}}


def timing(summary, cam="cam0"):
    """The timing payload the service would send for ``summary``."""
    return payloads.timing("dev1", cam, summary, 5.0)


class Subscriber(object):
    """A real paho subscriber collecting (topic, payload bytes, retain) in order."""

    def __init__(self, url, topics, client_id=None, persistent=False, protocol="3.1.1"):
        self.messages = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        port = int(url.rsplit(":", 1)[1])
        cid = client_id or "test-sub-" + uuid.uuid4().hex[:8]
        self.client = paho_compat.make_client(cid, protocol, clean_session=not persistent)

        def on_connect(ok, reason):
            if ok:
                for t in topics:
                    self.client.subscribe(t, qos=1)
                self.connected.set()

        def on_disconnect(reason):
            self.connected.clear()

        paho_compat.set_callbacks(self.client, on_connect=on_connect, on_disconnect=on_disconnect,
                                  on_message=self._on_message)
        self.client.reconnect_delay_set(0.1, 0.2)
        self.client.connect_async("127.0.0.1", port, 30)
        self.client.loop_start()
        assert self.connected.wait(5), "test subscriber could not connect to " + url
        time.sleep(0.2)  # let the SUBACK arrive

    def _on_message(self, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def on(self, suffix):
        with self.lock:
            return [(t, p, r) for t, p, r in self.messages if t.endswith(suffix)]

    def json(self, suffix):
        return [json.loads(p.decode("utf-8")) for _, p, _ in self.on(suffix)]

    def wait_for(self, predicate, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def start_sink(config, status=None, **kw):
    kw.setdefault("reconnect_min_s", 0.1)
    kw.setdefault("reconnect_max_s", 0.5)
    sink = MqttSink(config, **kw)
    status = status or {"backend": "onnxruntime", "size": "fast", "engine_id": "e1", "cameras": {"cam0": {}}}
    sink.start(payloads.status(config, status, time.time()))
    return sink


def wait_state(sink, prefix, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if sink.state().startswith(prefix):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_topics_payloads_match_schemas(broker, tmp_path, protocol):
    config = make_config(tmp_path, broker.url, protocol=protocol,
                         snapshot={"enabled": True, "interval_s": 60, "max_bytes": 6000})
    sub = Subscriber(broker.url, ["edge-agent/#"], protocol=protocol)
    sink = start_sink(config)
    assert wait_state(sink, "connected"), sink.state()
    image = np.random.RandomState(0).randint(0, 255, (240, 320, 3)).astype(np.uint8)  # noise: hard to compress
    for seq in range(1, 6):
        sink.emit(record(seq, labels=["person"]), image=image)
    sink.timing("cam0", timing({"fps": 29.5, "frames": 5, "dropped": 1, "queue_depth": 0,
                                "stages": {"infer": {"p50": 5.0, "p95": 6.0, "p99": 7.0, "mean": 5.1}}}))
    sink.health(payloads.health("dev1", {"cpu_percent": 12.5}, {"cam0": "running"}))
    assert sub.wait_for(lambda: len(sub.on("/detections")) == 5 and sub.on("/timing") and sub.on("/health")
                        and sub.on("/snapshot") and sub.on("/spool"))
    sink.close()
    assert sub.wait_for(lambda: any(s["state"] == "offline" for s in sub.json("/status")))
    sub.close()

    assert [r["seq"] for r in sub.json("dev1/cam0/detections")] == [1, 2, 3, 4, 5]
    for name, suffix in (("detections", "/detections"), ("timing", "/timing"), ("health", "/health"),
                         ("spool", "/spool"), ("status", "/status")):
        for payload in sub.json(suffix):
            jsonschema.validate(payload, schema(name))
            assert payload["schema_version"] == 2
    online, offline = sub.json("/status")[0], sub.json("/status")[-1]
    assert online["state"] == "online" and online["engine_id"] == "e1" and online["cameras"] == ["cam0"]
    assert online["boot_id"] == BOOT_ID and online["backend"] == "onnxruntime"
    assert offline["state"] == "offline" and offline["reason"] == "stopped"
    jpeg = sub.on("dev1/cam0/snapshot")[0][1]
    assert len(sub.on("/snapshot")) == 1  # interval 60 s: one snapshot only
    assert jpeg[:2] == b"\xff\xd8" and len(jpeg) <= 6000  # noise at 320x240 needs downscaling to fit
    assert read_comment(jpeg)["seq"] == 1

    # Retained: a late subscriber still learns the device's last state.
    late = Subscriber(broker.url, ["edge-agent/+/status"], protocol=protocol)
    assert late.wait_for(lambda: late.on("/status"))
    topic, payload, retained = late.on("/status")[0]
    assert topic == "edge-agent/dev1/status" and retained and json.loads(payload)["state"] == "offline"
    late.close()


@pytest.mark.parametrize("mode,expected", [("detections", [2, 3, 5]), ("changes", [1, 2, 4, 5, 6])])
def test_publish_modes(broker, tmp_path, mode, expected):
    sub = Subscriber(broker.url, ["edge-agent/+/+/detections"])
    sink = start_sink(make_config(tmp_path, broker.url, publish=mode))
    assert wait_state(sink, "connected")  # else close() may leave them in the spool, by design
    labels = {1: [], 2: ["car"], 3: ["car"], 4: [], 5: ["dog"], 6: []}
    for seq in range(1, 7):
        sink.emit(record(seq, labels=labels[seq]))
    sink.close()
    assert sub.wait_for(lambda: len(sub.on("/detections")) >= len(expected), timeout=5)
    time.sleep(0.2)
    sub.close()
    assert [r["seq"] for r in sub.json("/detections")] == expected


AGENT_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from agent.config import load_config
from agent.errors import ConfigError
from agent.publish import schema
from agent.publish.mqtt import MqttSink
config = load_config(None, {{"device_id": "victim", "state_dir": {state!r},
                             "mqtt": {{"enabled": True, "url": {url!r}, "keepalive_s": 60}}}},
                     environ={{}}, check_files=False)
sink = MqttSink(config)
sink.start(schema.status(config, {{"backend": "onnxruntime", "size": "fast", "engine_id": None,
                                   "cameras": {{"cam0": {{}}}}}}, time.time()))
while sink.state() != "connected":
    time.sleep(0.02)
print("connected", flush=True)
time.sleep(60)
"""


def test_last_will_after_kill9(broker, tmp_path):
    script = AGENT_SCRIPT.format(root=ROOT, state=str(tmp_path / "state"), url=broker.url)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, universal_newlines=True)
    try:
        assert proc.stdout.readline().strip() == "connected"
        sub = Subscriber(broker.url, ["edge-agent/victim/status"])
        assert sub.wait_for(lambda: sub.json("/status") and sub.json("/status")[0]["state"] == "online")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        assert sub.wait_for(lambda: sub.json("/status")[-1]["state"] == "offline", timeout=5)
        will = sub.json("/status")[-1]
        jsonschema.validate(will, schema("status"))
        assert will["reason"] == "connection lost" and will["device_id"] == "victim"
        assert will["broker"] == broker.url  # the will names the broker it was left with
        sub.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    late = Subscriber(broker.url, ["edge-agent/victim/status"])
    assert late.wait_for(lambda: late.on("/status"))
    assert late.on("/status")[0][2] and late.json("/status")[0]["state"] == "offline"  # retained
    late.close()


def test_real_agent_records_status_and_last_will(broker, tmp_path, demo_models, small_video):
    """``edge-agent run --broker --device-id``: schema-valid records and status, then kill -9 -> last will."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "sizes:\n  fast:\n    onnx: {fast}\n  accurate:\n    onnx: {acc}\n"
        "cameras:\n  - id: cam0\n    source: {video}\n    loop: true\n"
        "output:\n  jsonl: null\nengines_dir: {d}/engines\nstate_dir: {d}/state\n".format(
            fast=demo_models["fast"], acc=demo_models["accurate"], video=small_video, d=tmp_path))
    sub = Subscriber(broker.url, ["edge-agent/real/#"])
    log = tmp_path / "agent.log"
    with open(str(log), "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(config), "--broker",
                                 broker.url, "--device-id", "real"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
        ok = sub.wait_for(lambda: len(sub.on("real/cam0/detections")) >= 5 or proc.poll() is not None, timeout=60)
        assert ok and proc.poll() is None, log.read_text()[-2000:]
        records = sub.json("real/cam0/detections")
        for r in records:
            jsonschema.validate(r, schema("detections"))
        assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
        assert sub.wait_for(lambda: sub.json("real/status")[-1].get("pipeline_state") == "running")
        online = sub.json("real/status")
        assert online[-1]["cameras"] == ["cam0"] and online[-1]["model_size"] == "fast"
        assert online[-1]["backend"] == "onnxruntime" and online[-1]["state"] == "online"
        for s in online:
            jsonschema.validate(s, schema("status"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert sub.wait_for(lambda: sub.json("real/status")[-1]["state"] == "offline", timeout=5)
        assert sub.json("real/status")[-1]["reason"] == "connection lost"
        assert sub.on("real/status")[-1][0] == "edge-agent/real/status"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        sub.close()


def run_outage(broker, tmp_path, outage_s, cap, rate=30.0):
    """Emit at ``rate``/s across a broker outage; returns (emitted, seqs received, sink counters, max spool)."""
    sub = Subscriber(broker.url, ["edge-agent/dev1/cam0/detections", "edge-agent/dev1/spool"],
                     client_id="outage-watcher", persistent=True)
    sink = start_sink(make_config(tmp_path, broker.url, spool_max_records=cap), reconnect_max_s=0.5)
    assert wait_state(sink, "connected")
    emitted = [0]
    peak = [0]
    stop = threading.Event()

    def camera():
        seq = 0
        t_next = time.time()
        while not stop.is_set():
            seq += 1
            sink.emit(record(seq))
            emitted[0] = seq
            peak[0] = max(peak[0], sink.store_forward.spool.count)
            t_next += 1.0 / rate
            time.sleep(max(0.0, t_next - time.time()))

    t = threading.Thread(target=camera)
    t.start()
    time.sleep(1.5)
    broker.stop()
    assert wait_state(sink, "disconnected"), sink.state()
    time.sleep(outage_s)
    broker.start()
    assert wait_state(sink, "connected", timeout=10), sink.state()
    time.sleep(1.0)
    stop.set()
    t.join()
    total = emitted[0]
    sub.wait_for(lambda: sink.store_forward.spool.count == 0 and {r["seq"] for r in sub.json("/detections")} >= set(
        range(total - 10, total + 1)), timeout=15)
    # The retained counters tell the truth once the backlog is gone, before any clean stop.
    assert sub.wait_for(lambda: sub.json("/spool") and sub.json("/spool")[-1]["queued"] == 0, timeout=5), \
        sub.json("/spool")[-1]
    counters = sink.counters()
    sink.close()
    assert sub.wait_for(lambda: sub.json("/spool") and sub.json("/spool")[-1]["dropped_boot"] == counters["dropped_boot"])
    seqs = [r["seq"] for r in sub.json("/detections")]
    spool_msgs = sub.json("/spool")
    sub.close()
    for p in spool_msgs:
        jsonschema.validate(p, schema("spool"))
    return total, seqs, spool_msgs[-1], peak[0]


def first_occurrences(seqs):
    seen, order = set(), []
    for s in seqs:
        if s not in seen:
            seen.add(s)
            order.append(s)
    return order


def test_ten_second_outage_no_gaps(persistent_broker, tmp_path):
    total, seqs, counters, peak = run_outage(persistent_broker, tmp_path, outage_s=10.0, cap=100000)
    assert total > 300
    assert sorted(set(seqs)) == list(range(1, total + 1))  # zero gaps (duplicates allowed)
    assert first_occurrences(seqs) == list(range(1, total + 1))  # and in order
    assert counters["dropped_boot"] == 0 and peak > 250  # the outage really went through the spool


def test_outage_beyond_spool_cap_counts_what_is_missing(persistent_broker, tmp_path):
    cap = 40
    total, seqs, counters, peak = run_outage(persistent_broker, tmp_path, outage_s=3.0, cap=cap)
    missing = set(range(1, total + 1)) - set(seqs)
    assert peak <= cap
    assert len(missing) > 0 and counters["dropped_boot"] == len(missing)
    assert first_occurrences(seqs) == sorted(set(seqs))  # what arrives still arrives in order


def test_unreachable_broker_keeps_running_and_spools(tmp_path, caplog):
    from conftest import free_port

    url = "mqtt://127.0.0.1:{}".format(free_port())  # nobody listens
    caplog.set_level(logging.WARNING, logger="edge_agent.mqtt")
    sink = start_sink(make_config(tmp_path, url), reconnect_min_s=0.2, reconnect_max_s=0.4)
    costs = []
    for seq in range(1, 3001):
        t0 = time.perf_counter()
        sink.emit(record(seq))
        costs.append(time.perf_counter() - t0)
    time.sleep(1.5)
    state = sink.state()
    spooled = sink.store_forward.spool.count
    sink.close(timeout=1.0)
    assert state.startswith("disconnected") and url in state and "refused" in state.lower(), state
    assert spooled == 3000
    assert np.median(costs) * 1000 < 0.2, "emit() median {:.3f} ms".format(np.median(costs) * 1000)
    warnings = [r for r in caplog.records if url in r.getMessage()]
    assert 1 <= len(warnings) <= 12  # one per reconnect attempt, not one per record


# mosquitto started as root drops to user "mosquitto", which cannot read pytest's private tmp dirs.
AS_ROOT = "user root\n" if os.geteuid() == 0 else ""


def password_broker(tmp_path, user, password):
    d = tmp_path / "auth-broker"
    d.mkdir()
    pw = str(d / "passwd")
    subprocess.check_call(["mosquitto_passwd", "-b", "-c", pw, user, password])
    return Broker(d, extra_conf=AS_ROOT + "allow_anonymous false\npassword_file {}\n".format(pw)).start()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_password_auth_and_wrong_credentials(tmp_path, caplog, protocol):
    b = password_broker(tmp_path, "agent", "s3cret")
    try:
        pw_file = tmp_path / "pw"
        pw_file.write_text("s3cret\n")
        sub_cfg = make_config(tmp_path / "good", b.url, username="agent", password_file=str(pw_file),
                              protocol=protocol)
        good = start_sink(sub_cfg)
        assert wait_state(good, "connected"), good.state()
        good.close()

        caplog.set_level(logging.INFO, logger="edge_agent.mqtt")
        bad_cfg = make_config(tmp_path / "bad", b.url, username="agent", protocol=protocol)
        os.environ["EDGE_AGENT_MQTT_PASSWORD"] = "wrong-password"
        try:
            bad = start_sink(bad_cfg)
        finally:
            del os.environ["EDGE_AGENT_MQTT_PASSWORD"]
        assert wait_state(bad, "disconnected (refused"), bad.state()
        bad.emit(record(1))
        time.sleep(0.5)
        assert bad.state().startswith("disconnected (refused") and bad.store_forward.spool.count == 1  # still alive
        bad.close(timeout=1.0)
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert errors and b.url in errors[0] and "refused" in errors[0]
        assert all("wrong-password" not in r.getMessage() for r in caplog.records)
    finally:
        b.stop()


def test_tls_and_untrusted_ca(tmp_path, tls_files, caplog):
    d = tmp_path / "tls-broker"
    d.mkdir()
    conf = AS_ROOT + "allow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n".format(**tls_files)
    b = Broker(d, extra_conf=conf).start()
    url = "mqtts://127.0.0.1:{}".format(b.port)
    try:
        good = start_sink(make_config(tmp_path / "good", url, tls={"ca": tls_files["ca"]}))
        assert wait_state(good, "connected"), good.state()
        good.close()

        caplog.set_level(logging.WARNING, logger="edge_agent.mqtt")
        bad = start_sink(make_config(tmp_path / "bad", url, tls={"ca": tls_files["other_ca"]}))
        assert wait_state(bad, "disconnected (mqtts"), bad.state()
        state = bad.state()
        bad.close(timeout=1.0)
        assert "certificate verify failed" in state, state
        assert any(url in r.getMessage() and "certificate" in r.getMessage() for r in caplog.records)
    finally:
        b.stop()


def test_tls_client_certificate(tmp_path, tls_files):
    d = tmp_path / "mtls-broker"
    d.mkdir()
    conf = AS_ROOT + ("allow_anonymous true\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
                      "require_certificate true\n").format(**tls_files)
    b = Broker(d, extra_conf=conf).start()
    url = "mqtts://127.0.0.1:{}".format(b.port)
    try:
        sub_tls = {"ca": tls_files["ca"], "cert": tls_files["client_cert"], "key": tls_files["client_key"]}
        good = start_sink(make_config(tmp_path / "good", url, tls=sub_tls))
        assert wait_state(good, "connected"), good.state()
        good.close()
        anonymous = start_sink(make_config(tmp_path / "anon", url, tls={"ca": tls_files["ca"]}))
        assert wait_state(anonymous, "disconnected (mqtts"), anonymous.state()
        time.sleep(0.5)
        assert anonymous.state().startswith("disconnected (mqtts"), anonymous.state()
        anonymous.close(timeout=1.0)
    finally:
        b.stop()


def test_watch_unreachable_broker_fails_clearly():
    from conftest import free_port

    url = "mqtt://127.0.0.1:{}".format(free_port())
    res = run_cli(["watch", "--broker", url, "--json", "--timeout", "1"], timeout=30)
    assert res.returncode == 1 and url in res.stderr and "cannot connect" in res.stderr, res.stderr


def test_watch_json_and_table(broker, tmp_path):
    sink = start_sink(make_config(tmp_path, broker.url))
    assert wait_state(sink, "connected")
    sink.timing("cam0", timing({"fps": 30.0, "frames": 9, "dropped": 0, "queue_depth": 0,
                                "stages": {"total": {"p50": 7.5, "p95": 9.0, "p99": 9.9, "mean": 7.6}}}))
    time.sleep(0.3)
    stop = threading.Event()

    def feed():
        seq = 0
        while not stop.is_set():
            seq += 1
            sink.emit(record(seq, labels=["person"]))
            if seq % 10 == 0:
                sink.timing("cam0", timing({"fps": 30.0, "frames": seq, "dropped": 0, "queue_depth": 0,
                                            "stages": {"total": {"p50": 7.5, "p95": 9.0, "p99": 9.9, "mean": 7.6}}}))
            time.sleep(0.03)

    t = threading.Thread(target=feed)
    t.start()
    try:
        res = run_cli(["watch", "--broker", broker.url, "--json", "--count", "5", "--timeout", "10"], timeout=30)
        assert res.returncode == 0, res.stderr
        lines = [json.loads(line) for line in res.stdout.splitlines()]
        assert len(lines) == 5 and all(set(m) == {"topic", "payload"} for m in lines)
        assert lines[0]["topic"] == "edge-agent/dev1/status" and lines[0]["payload"]["state"] == "online"
        table = run_cli(["watch", "--broker", broker.url, "--timeout", "2.5"], timeout=30)
        assert table.returncode == 0, table.stderr
        last = table.stdout.split("\x1b[H")[-1]
        assert "dev1" in last and "online" in last and "cam0" in last and "person" in last and "7.5" in last
    finally:
        stop.set()
        t.join()
        sink.close()


def test_make_sinks(tmp_path):
    config = load_config(None, {"device_id": "d", "state_dir": str(tmp_path), "output": {"jsonl": str(tmp_path / "o")},
                                "mqtt": {"enabled": True, "url": "mqtt://127.0.0.1:1"}},
                         environ={}, check_files=False)
    sinks = make_sinks(config)
    assert [type(s) for s in sinks] == [JsonLinesSink, MqttSink]
    assert sinks[1].base == "edge-agent/d" and sinks[1].state() == "disconnected (not started)"
    sinks[1].close()
    off = load_config(None, {"output": {"jsonl": None}}, environ={}, check_files=False)
    assert make_sinks(off) == []
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("not a certificate")
    for mqtt, key in (({"url": "mqtts://127.0.0.1:1", "tls": {"ca": str(bad_ca)}}, "mqtt.tls"),
                      ({"password_file": str(tmp_path)}, "mqtt.password_file")):
        mqtt["enabled"] = True
        cfg = load_config(None, {"state_dir": str(tmp_path), "mqtt": mqtt}, environ={}, check_files=False)
        with pytest.raises(ConfigError, match=key):
            make_sinks(cfg)


def test_queue_overflow_and_restart_keep_order(broker, tmp_path):
    """A full queue spills to the spool in order; a later run sends what an earlier one left, first."""
    sub = Subscriber(broker.url, ["edge-agent/dev1/cam0/detections"])
    config = make_config(tmp_path, broker.url, queue_size=5)
    first = MqttSink(config)  # never started: its queue overflows at once
    for seq in range(1, 21):
        first.emit(record(seq))
    for _ in range(5):
        first.timing("cam0", timing({}))  # QoS 0 with a full queue: dropped and counted
    assert first.dropped_qos0 >= 1
    first.close()
    second = start_sink(config)
    assert second.store_forward.spool.count == 20
    for seq in range(21, 26):
        second.emit(record(seq))
    assert sub.wait_for(lambda: len(sub.on("/detections")) >= 25)
    second.close()
    sub.close()
    assert first_occurrences([r["seq"] for r in sub.json("/detections")]) == list(range(1, 26))
    second.close()  # idempotent
    for seq in range(26, 2000):
        second.emit(record(seq))  # after close(): harmless, never raises


def test_snapshot_when_a_chosen_label_appears(broker, tmp_path):
    sub = Subscriber(broker.url, ["edge-agent/dev1/cam0/snapshot"])
    sink = start_sink(make_config(tmp_path, broker.url, snapshot={"enabled": True, "interval_s": 60,
                                                                  "classes": ["dog"]}))
    assert wait_state(sink, "connected")  # snapshots are QoS 0: not spooled
    image = np.full((120, 160, 3), 90, np.uint8)
    sink.emit(record(1), image=image)  # the first frame of a camera: a snapshot
    sink.emit(record(2, labels=["dog"]), image=image)  # within a second of the last one: deferred
    sink.emit(record(3, labels=["car"]), image=image)  # not a chosen label
    time.sleep(1.05)
    sink.emit(record(4, labels=["dog"]), image=image)  # the deferred appearance
    sink.emit(record(5, labels=["dog"]), image=image)  # still there: nothing new
    assert sub.wait_for(lambda: len(sub.on("/snapshot")) >= 2)
    sink.close()
    time.sleep(0.2)
    sub.close()
    assert [read_comment(p)["seq"] for _, p, _ in sub.on("/snapshot")] == [1, 4]


@pytest.mark.skipif(PAHO_MAJOR < 2, reason="paho-mqtt 1.6 does not report MQTT 5 PUBACK reason codes")
def test_acl_rejected_records_log_one_line_not_one_per_record(tmp_path, caplog):
    """MQTT 5 reports each publish an ACL denies (PUBACK 0x87): count them all, log once."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite edge-agent/dev1/status\ntopic readwrite edge-agent/dev1/spool\n")
    # mosquitto started as root drops to user mosquitto, which cannot read pytest's 0700 tmp dirs.
    user = "user root\n" if os.geteuid() == 0 else ""
    broker = Broker(tmp_path, extra_conf="{}allow_anonymous true\nacl_file {}\n".format(user, acl))
    broker.start()
    caplog.set_level(logging.WARNING, logger="edge_agent.mqtt")
    sink = start_sink(make_config(tmp_path, broker.url, protocol="5"))
    try:
        assert wait_state(sink, "connected")
        for seq in range(1, 51):
            sink.emit(record(seq))
        deadline = time.time() + 10
        while sink.rejected < 50 and time.time() < deadline:
            time.sleep(0.05)
        assert sink.rejected == 50
        rejected = [r.getMessage() for r in caplog.records if "rejected a publish" in r.getMessage()]
        assert len(rejected) == 1 and "ACL?" in rejected[0], rejected
    finally:
        sink.close()
        broker.stop()
