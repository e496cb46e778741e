"""Track events and counts against a real mosquitto: the agent's pipeline on a rendered video, a broker outage."""

import os
import subprocess
import sys
import time

import jsonschema
import numpy as np

from agent.config import TrackingConfig, load_config
from agent.pipeline import Pipeline
from agent.publish import schema as payloads
from agent.publish.mqtt import MqttSink
from agent.track.events import CameraEvents
from agent.track.tracker import Tracker
from conftest import ROOT
from test_mqtt import Subscriber, make_config, schema, start_sink, wait_state


def render(tmp_path, frames=90, objects=3, seed=5):
    video = str(tmp_path / "shapes.mp4")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_video.py"), "--out", video, "--frames",
                    str(frames), "--objects", str(objects), "--seed", str(seed)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return video


def test_events_and_counts_from_the_pipeline_reach_a_subscriber(broker, tmp_path):
    """``publish: events``: start/update/end events in order and retained counts; no per-frame detections."""
    video = render(tmp_path)
    left = [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]
    config = load_config(None, {"device_id": "trk", "state_dir": str(tmp_path / "state"), "output": {"jsonl": None},
                                "cameras": [{"id": "cam0", "source": video, "realtime": False,
                                             "zones": {"left": left}}],
                                "mqtt": {"enabled": True, "url": broker.url, "publish": "events"}}, environ={})
    sub = Subscriber(broker.url, ["edge-agent/trk/#"])
    sink = MqttSink(config, reconnect_min_s=0.1, reconnect_max_s=0.5)
    sink.start(payloads.status(config, {}, time.time()))
    assert wait_state(sink, "connected")
    pipeline = Pipeline(config, [sink])
    pipeline.start()
    assert pipeline.wait(60)
    pipeline.stop()
    sink.close()
    assert sub.wait_for(lambda: any(s["state"] == "offline" for s in sub.json("trk/status")))
    time.sleep(0.2)
    events, counts = sub.json("trk/cam0/events"), sub.json("trk/cam0/counts")
    sub.close()

    assert sub.on("/detections") == []  # publish: events
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    for e in events:
        jsonschema.validate(e, schema("events"))
    started = [e["track_id"] for e in events if e["type"] == "start"]
    ended = [e["track_id"] for e in events if e["type"] == "end"]
    assert len(started) >= 2 and sorted(started) == sorted(ended) == list(range(1, len(started) + 1))
    for tid in started:  # each track: one start first, one end last
        mine = [e for e in events if e["track_id"] == tid]
        assert mine[0]["type"] == "start" and mine[-1]["type"] == "end"
        assert mine[-1]["reason"] in ("lost", "stopped") and mine[-1]["duration_s"] >= 0
        assert mine[-1]["first_seen"] == mine[0]["first_seen"] and mine[-1]["left"] == mine[-1]["zones"]
    assert any("left" in e["entered"] for e in events)  # the zone is on the left half: some shape is in it
    for c in counts:
        jsonschema.validate(c, schema("counts"))
        assert set(c["zones"]) == {"left"} and c["zones"]["left"]["total"] <= c["total"]
    assert max(c["total"] for c in counts) >= 2 and counts[-1]["total"] == 0  # stopped: nobody in view

    late = Subscriber(broker.url, ["edge-agent/trk/cam0/counts"])
    assert late.wait_for(lambda: late.on("/counts"))
    topic, payload, retained = late.on("/counts")[0]
    assert retained and late.json("/counts")[0]["total"] == 0
    late.close()


def track_events(n_tracks=3):
    """Real start and end events (tracker, events, schema) of ``n_tracks`` boxes seen for 5 frames."""
    tracker, events = Tracker(TrackingConfig()), CameraEvents({})
    changes = []
    for i in range(5):
        boxes = np.array([[100 + 200 * k + i, 100, 150 + 200 * k + i, 150] for k in range(n_tracks)], np.float32)
        up = tracker.update(boxes, np.full(n_tracks, 0.9, np.float32), np.arange(n_tracks), float(i))
        changes += events.update(up.tracks, up.ended, 1280, 720)[0]
    changes += events.close(tracker.close())
    return [payloads.event("dev1", "cam0", seq, c, {0: "circle", 1: "square", 2: "car"}, 1280, 720, 4.0)
            for seq, c in enumerate(changes, 1)]


def test_events_spooled_through_a_broker_outage_arrive_once_it_is_back(persistent_broker, tmp_path):
    sub = Subscriber(persistent_broker.url, ["edge-agent/dev1/cam0/events"], client_id="events-watcher",
                     persistent=True)
    sink = start_sink(make_config(tmp_path, persistent_broker.url), reconnect_max_s=0.5)
    assert wait_state(sink, "connected")
    before = track_events(1)
    sink.events("cam0", before)
    assert sub.wait_for(lambda: len(sub.json("/events")) == len(before))
    persistent_broker.stop()
    assert wait_state(sink, "disconnected"), sink.state()
    during = [dict(e, seq=e["seq"] + len(before)) for e in track_events(3)]
    sink.events("cam0", during)
    assert sub.wait_for(lambda: sink.store_forward.spool.count >= len(during), timeout=5)  # on disk, not lost
    persistent_broker.start()
    assert wait_state(sink, "connected", timeout=10), sink.state()
    total = len(before) + len(during)
    assert sub.wait_for(lambda: {e["seq"] for e in sub.json("/events")} >= set(range(1, total + 1)), timeout=15)
    assert sub.wait_for(lambda: sink.store_forward.spool.count == 0, timeout=5)
    sink.close()
    got = sub.json("/events")
    sub.close()
    first = {}
    for e in got:  # duplicates are allowed (dedupe by boot_id, camera_id, seq), gaps are not
        first.setdefault(e["seq"], e)
    assert sorted(first) == list(range(1, total + 1))
    assert [first[s]["type"] for s in range(len(before) + 1, total + 1)] == ["start"] * 3 + ["end"] * 3
    for e in first.values():
        jsonschema.validate(e, schema("events"))
