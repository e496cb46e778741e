"""``edge-agent watch`` against hostile payloads (issue 14): it never dies, it says what it skipped.

Hypothesis feeds the board every payload kind watch subscribes to (status, spool, health,
timing, detections, events, counts: docs/mqtt.md, agent/schemas/) as arbitrary JSON and as valid payloads
with fields removed or replaced by arbitrary JSON, under arbitrary device and camera
names; then one real mosquitto run publishes garbage to a running ``watch``.

Example counts: 300 arbitrary payloads, 300 mutated valid payloads, 100 topic-name cases;
about 10 s with the broker test.
"""

import json
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("hypothesis")

from hypothesis import given, settings, strategies as st  # noqa: E402

from agent.commands.watch import STAGE_COLUMNS, Board  # noqa: E402
from conftest import ROOT  # noqa: E402

FUZZ = dict(deadline=None, database=None)  # no example database written into the shared checkout

STAGES = {s: {"p50": 7.5, "p95": 9.0, "p99": 9.9, "mean": 7.6} for s in ("capture",) + STAGE_COLUMNS}
VALID = {  # one valid payload per kind, as the agent publishes them (agent/schemas/)
    "status": {"schema_version": 1, "state": "online", "device_id": "dev1", "boot_id": "b", "agent_version": "1.0",
               "timestamp": 1.0, "backend": "onnxruntime", "model_size": "fast", "cameras": ["cam0"]},
    "spool": {"schema_version": 1, "device_id": "dev1", "boot_id": "b", "timestamp": 1.0, "queued": 3,
              "max_records": 100, "dropped_total": 0, "dropped_boot": 1, "dropped_qos0": 0, "rejected": 0},
    "health": {"schema_version": 1, "device_id": "dev1", "timestamp": 1.0, "cameras": {"cam0": {"age_s": 0.1}}},
    "timing": {"schema_version": 1, "device_id": "dev1", "boot_id": "b", "camera_id": "cam0", "timestamp": 1.0,
               "interval_s": 5.0, "fps": 12.5, "frames": 9, "dropped": 0, "queue_depth": 0, "stages": STAGES},
    "detections": {"schema_version": 1, "device_id": "dev1", "camera_id": "cam0", "boot_id": "b", "seq": 42,
                   "frame_index": 41, "timestamp": 1.0, "model_size": "fast", "image": {"width": 640, "height": 480},
                   "detections": [{"label": "person", "class_id": 0, "score": 0.9, "box": [1, 2, 3, 4]}],
                   "timing_ms": {"total": 7.5}},
    "events": {"schema_version": 2, "device_id": "dev1", "camera_id": "cam0", "boot_id": "b", "seq": 7,
               "type": "start", "timestamp": 100.0, "track_id": 3, "class_id": 4, "label": "car", "first_seen": 99.5,
               "last_seen": 100.0, "duration_s": 0.5, "best_confidence": 0.9, "best_box": [1, 2, 3, 4],
               "best_box_norm": [0, 0, 0.1, 0.1], "box": [1, 2, 3, 4], "box_norm": [0, 0, 0.1, 0.1],
               "image": {"width": 640, "height": 480}, "zones": ["door"], "entered": ["door"], "left": []},
    "counts": {"schema_version": 2, "device_id": "dev1", "camera_id": "cam0", "boot_id": "b", "timestamp": 1.0,
               "total": 3, "classes": {"car": 2, "star": 1, "circle": 0},
               "zones": {"door": {"total": 1, "classes": {"car": 1, "star": 0}}}},
}
TOPICS = {"status": ["dev1", "status"], "spool": ["dev1", "spool"], "health": ["dev1", "health"],
          "timing": ["dev1", "cam0", "timing"], "detections": ["dev1", "cam0", "detections"],
          "events": ["dev1", "cam0", "events"], "counts": ["dev1", "cam0", "counts"]}
SHOWN = {"status": "online", "spool": "3/1", "health": "dev1", "timing": "12.5", "detections": "person",
         "events": "#3 car", "counts": "car 2, star 1; door 1"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10 ** 308, max_value=10 ** 400) | st.floats()
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


def _paths(value, prefix=()):
    """Paths (tuples of keys and indexes) to every field of a nested payload."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        out.extend(_paths(v, prefix + (k,)))
    return out


@st.composite
def mutated(draw, kind):
    """VALID[kind] with 1-3 fields removed or replaced by arbitrary JSON."""
    payload = json.loads(json.dumps(VALID[kind]))
    for path in draw(st.permutations(_paths(payload)))[:draw(st.integers(1, 3))]:
        parent = payload
        try:
            for k in path[:-1]:
                parent = parent[k]
            parent[path[-1]]
        except (KeyError, IndexError, TypeError):  # an earlier mutation replaced the parent
            continue
        if not isinstance(parent, (dict, list)):  # ... with a string, which indexes but can't be assigned
            continue
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return payload


def _shows_one_table(board):
    text = board.render()
    assert isinstance(text, str) and text.endswith("\n")
    assert all(c == "\n" or c.isprintable() for c in text), repr(text)  # no escape sequences from payloads
    lines = text.splitlines()
    skipped = [l for l in lines if l.startswith("skipped ")]
    assert lines[0].startswith("DEVICE") and len(skipped) == (1 if board.skipped else 0)
    return text


def _still_shows_a_valid_message(board, kind):
    board.update(TOPICS[kind], VALID[kind])
    assert SHOWN[kind] in _shows_one_table(board).split("skipped ")[0]


@settings(max_examples=300, **FUZZ)
@given(kind=st.sampled_from(sorted(VALID)), payload=json_values)
def test_any_json_payload_is_shown_or_skipped(kind, payload):
    board = Board()
    board.update(TOPICS[kind], payload)
    _shows_one_table(board)
    _still_shows_a_valid_message(board, kind)


@settings(max_examples=300, **FUZZ)
@given(data=st.data(), kind=st.sampled_from(sorted(VALID)))
def test_mutated_valid_payload_is_shown_or_skipped_with_one_line(data, kind):
    board = Board()
    for k in sorted(VALID):  # a full board first: a bad message must not spoil what is shown
        board.update(TOPICS[k], VALID[k])
    board.update(TOPICS[kind], data.draw(mutated(kind)))
    text = _shows_one_table(board)
    if board.skipped:
        line = text.splitlines()[-1]
        assert line.startswith("skipped 1 malformed message(s); last: " + "/".join(TOPICS[kind]) + ": ")
        assert len(line) < 200
    _still_shows_a_valid_message(board, kind)


@pytest.mark.parametrize("zones", [{"door": None}, {"door": {"total": None}}, {"door": 3}, {"door": {"total": "x"}}])
def test_counts_with_odd_zones_are_shown_or_skipped(zones):
    """Found by the fuzz test above in CI: a null zone crashed the board."""
    board = Board()
    for k in sorted(VALID):
        board.update(TOPICS[k], VALID[k])
    board.update(TOPICS["counts"], dict(VALID["counts"], zones=zones))
    _shows_one_table(board)
    assert board.skipped == (0 if zones["door"] is None or zones["door"] == {"total": None} else 1)
    _still_shows_a_valid_message(board, "counts")


@settings(max_examples=100, **FUZZ)
@given(device=st.text(max_size=10), camera=st.text(max_size=10), label=st.text(max_size=10))
def test_names_from_topics_and_labels_never_break_the_table(device, camera, label):
    board = Board()
    detections = dict(VALID["detections"], detections=[{"label": label}])
    for parts, payload in (([device, "status"], VALID["status"]), ([device, camera, "timing"], VALID["timing"]),
                           ([device, camera, "detections"], detections)):
        board.update(parts, payload)
    assert board.skipped == 0
    assert "12.5" in _shows_one_table(board)


def test_tracks_follow_events_and_counts_replace():
    board = Board()
    start = VALID["events"]
    board.update(TOPICS["events"], start)
    board.update(TOPICS["events"], dict(start, track_id=5, label="star", first_seen=90.0, seq=8))
    board.update(TOPICS["events"], dict(start, type="update", label="truck", changed=["class"], seq=9))
    row = board.render(now=100.0).splitlines()[1]
    assert "2: #3 truck 0s, #5 star 10s" in row
    board.update(TOPICS["events"], dict(start, type="end", reason="lost", seq=10))
    board.update(TOPICS["counts"], VALID["counts"])
    row = board.render(now=100.0).splitlines()[1]
    assert "1: #5 star 10s" in row and "#3" not in row and row.endswith("car 2, star 1; door 1")
    board.update(TOPICS["counts"], dict(VALID["counts"], total=0, classes={"car": 0}, zones={}))
    assert board.render().splitlines()[1].endswith("none")


def test_examples_from_the_issue():
    board = Board()
    board.update(TOPICS["timing"], {"fps": "abc"})
    assert board.render().splitlines()[-1] == (
        "skipped 1 malformed message(s); last: dev1/cam0/timing: fps: expected a number, got 'abc'")
    board.update(TOPICS["timing"], {"fps": 10 ** 400})
    assert board.render().splitlines()[-1].endswith("dev1/cam0/timing: fps: number out of range")
    board.update(TOPICS["detections"], dict(VALID["detections"], detections=[{"label": ["person"]}]))
    assert board.render().splitlines()[-1].endswith(
        "dev1/cam0/detections: detections[0].label: expected a string, got ['person']")
    board.update(TOPICS["detections"], dict(VALID["detections"], detections=[None]))  # found by the fuzzer
    assert board.render().splitlines()[-1].endswith(
        "dev1/cam0/detections: detections[0]: expected a mapping, got None")


GARBAGE = [
    ("dev1/cam0/timing", b'{"fps":"abc"}'),
    ("dev1/cam0/timing", b'{"fps":1e999,"stages":{"total":"fast"}}'),
    ("dev1/cam0/timing", b'{"stages":{"infer":{"p50":"x","p95":null}}}'),
    ("dev1/cam0/timing", b"\xff\xfe not utf-8"),
    ("dev1/cam0/detections", b'{"seq":"one","detections":"person"}'),
    ("dev1/cam0/detections", b'{"detections":[{"label":{"a":1}}, 3]}'),
    ("dev1/status", b'{"state":{"a":1},"cameras":[["cam0"]]}'),
    ("dev1/status", b"[1,2,3]"),
    ("dev1/spool", b'{"queued":"many","dropped_boot":[]}'),
    ("dev1/health", b"null"),
    ("dev1/status", b"[" * 100000 + b"]" * 100000),  # deeper than the JSON parser's recursion limit
    ("dev1/cam0/timing", b"not json at all"),
]


def test_watch_survives_garbage_on_a_real_broker(broker):
    from agent.publish import paho_compat

    pub = paho_compat.make_client("garbage-publisher")
    pub.connect("127.0.0.1", broker.port, 30)
    pub.loop_start()
    pub.publish("edge-agent/dev1/status", json.dumps(VALID["status"]), qos=1, retain=True).wait_for_publish()
    watch = subprocess.Popen([sys.executable, "-m", "agent.cli", "watch", "--broker", broker.url, "--timeout", "6"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        deadline = time.time() + 5
        while time.time() < deadline:  # the retained status shows: watch has subscribed
            line = watch.stdout.readline().decode("utf-8", "replace")
            if "online" in line:
                break
        else:
            pytest.fail("watch never showed the retained status")
        time.sleep(0.2)  # the four later SUBSCRIBEs go out in the same on_connect
        for topic, payload in GARBAGE:
            pub.publish("edge-agent/" + topic, payload, qos=1).wait_for_publish()
        for kind in ("timing", "detections", "events", "counts"):
            pub.publish("edge-agent/" + "/".join(TOPICS[kind]), json.dumps(VALID[kind]), qos=1).wait_for_publish()
        out, err = watch.communicate(timeout=20)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
        pub.disconnect()
        pub.loop_stop()
    err = err.decode("utf-8", "replace")
    assert watch.returncode == 0, err
    assert "Traceback" not in err and "error" not in err.lower(), err
    last = out.decode("utf-8", "replace").split("\x1b[H")[-1]
    assert "online" in last and "12.5" in last and "person" in last and "7.5/9.0" in last, last
    assert "#3 car" in last and "car 2, star 1; door 1" in last, last
    assert "skipped {} malformed message(s); last: dev1/cam0/timing: not JSON (15 bytes)".format(len(GARBAGE)) in last


def test_the_broker_in_use_is_shown_and_kept():
    board = Board()
    board.update(["dev1", "status"], dict(VALID["status"], broker="mqtt://node2:1884"))
    lines = board.render().splitlines()
    assert lines[0].split()[:3] == ["DEVICE", "STATE", "BROKER"] and lines[1].split()[:3] == [
        "dev1", "online", "mqtt://node2:1884"]
    board.update(["dev1", "status"], VALID["status"])  # an agent without the field: the last one known stays
    assert board.render().splitlines()[1].split()[2] == "mqtt://node2:1884"
    board.update(["dev1", "status"], dict(VALID["status"], broker=["x"]))
    assert board.render().splitlines()[-1].endswith("dev1/status: broker: expected a string, got ['x']")
