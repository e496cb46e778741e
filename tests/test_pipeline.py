"""The frame path end to end on the real CPU backend, demo models and real video files."""

import json
import os

import cv2
import jsonschema
import numpy as np
import pytest

from agent.config import load_config
from agent.errors import AgentError, ModelError
from agent.pipeline import Pipeline
from agent.publish.base import Sink
from conftest import ROOT, write_video

SCHEMA = json.load(open(os.path.join(ROOT, "agent", "schemas", "detections.schema.json")))


class ListSink(Sink):
    """Keeps what the pipeline emits (a real sink, in memory)."""

    def __init__(self):
        self.records = []

    def emit(self, record, image=None):
        assert image is not None and image.ndim == 3
        self.records.append(record)


def make_config(source, **extra):
    overrides = {"cameras": [{"id": "cam0", "source": source, "realtime": False}], "output": {"jsonl": None}}
    overrides.update(extra)
    return load_config(overrides=overrides, environ={})


def run_to_end(config, timeout=60):
    sink = ListSink()
    p = Pipeline(config, [sink])
    p.start()
    assert p.wait(timeout), "pipeline did not finish"
    p.stop()
    return p, sink.records


def test_video_file_records_are_complete_and_valid(small_video):
    p, records = run_to_end(make_config(small_video))
    assert len(records) == 30
    assert [r["seq"] for r in records] == list(range(1, 31))
    assert [r["frame_index"] for r in records] == list(range(30))
    for r in records:
        jsonschema.validate(r, SCHEMA)
        assert set(r["timing_ms"]) == {"capture", "preprocess", "infer", "postprocess", "publish", "total"}
        assert r["model_size"] == "fast" and r["image"] == {"width": 320, "height": 240}
    summary = p.timing_summaries()["cam0"]
    assert summary["frames"] == 30 and summary["stages"]["infer"]["p50"] > 0
    assert p.status()["state"] in ("finished", "stopped")


def test_the_readme_example_record_is_a_valid_record():
    """The record a user first reads (README.md) is one the schema accepts, at its version."""
    import re

    from agent.publish.schema import SCHEMA_VERSION

    text = open(os.path.join(ROOT, "README.md")).read()
    example = re.search(r"## The detection record.*?```json\n(.*?)```", text, re.S).group(1)
    record = json.loads(example)
    jsonschema.validate(record, SCHEMA)
    assert record["schema_version"] == SCHEMA_VERSION
    assert all("track_id" in d for d in record["detections"])  # tracking is on by default


def test_demo_model_finds_demo_objects(tmp_path):
    """On frames rendered like the training data, the fast model detects the objects there."""
    import sys
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    video = str(tmp_path / "v.mp4")
    import subprocess
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_video.py"), "--out", video,
                    "--frames", "10"], check=True, cwd=ROOT)
    truth = json.load(open(os.path.splitext(video)[0] + ".json"))
    _, records = run_to_end(make_config(video, max_frames=10))
    assert len(records) == 10
    found = sum(len(r["detections"]) for r in records)
    expected = len(truth["annotations"])
    assert expected > 0 and 0.6 * expected <= found <= 1.5 * expected


def test_two_cameras_share_one_model(small_video, tmp_path):
    other = write_video(tmp_path / "other.avi", frames=12, size=(640, 360))
    config = load_config(overrides={"cameras": [
        {"id": "a", "source": small_video, "realtime": False},
        {"id": "b", "source": other, "realtime": False}], "output": {"jsonl": None}}, environ={})
    _, records = run_to_end(config)
    by_cam = {}
    for r in records:
        by_cam.setdefault(r["camera_id"], []).append(r["seq"])
    assert by_cam == {"a": list(range(1, 31)), "b": list(range(1, 13))}


def test_image_folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        cv2.imwrite(str(folder / "{:03d}.jpg".format(i)), np.full((200, 300, 3), 30 * i, np.uint8))
    _, records = run_to_end(make_config(str(folder)))
    assert [r["frame_index"] for r in records] == list(range(5))


def test_max_frames_and_thresholds(small_video):
    _, records = run_to_end(make_config(small_video, max_frames=7, detection={"conf_threshold": 1.0}))
    assert len(records) == 7
    assert all(r["detections"] == [] for r in records)


def test_corrupt_model_fails_at_start_naming_the_file(tmp_path, small_video):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a model")
    config = make_config(small_video, sizes={"fast": {"onnx": str(bad)}})
    with pytest.raises(AgentError) as info:
        Pipeline(config, [ListSink()]).start()
    assert "bad.onnx" in str(info.value)


def test_reload_switches_size_without_stopping(small_video):
    config = make_config(small_video, cameras=[{"id": "cam0", "source": small_video, "loop": True, "realtime": False}])
    sink = ListSink()
    p = Pipeline(config, [sink])
    p.start()
    try:
        deadline = __import__("time").time() + 30
        while len(sink.records) < 5 and __import__("time").time() < deadline:
            p.wait(0.05)
        p.reload(make_config(small_video, size="accurate",
                             cameras=[{"id": "cam0", "source": small_video, "loop": True, "realtime": False}]))
        while (not sink.records or sink.records[-1]["model_size"] != "accurate") and __import__("time").time() < deadline:
            p.wait(0.05)
    finally:
        p.stop()
    sizes = [r["model_size"] for r in sink.records]
    assert sizes[0] == "fast" and sizes[-1] == "accurate"
    seqs = [r["seq"] for r in sink.records]
    assert seqs == list(range(1, len(seqs) + 1))  # the camera never restarted


def _watching(calls, delay=None):
    """A detector factory recording (thread, parallel, frame index) of every infer call;
    ``delay(frame index)`` seconds are slept first, to make inferences finish out of order."""
    import threading
    import time

    from agent.detect import open_detector

    def factory(config, size):
        detector = open_detector(config, size)
        infer = detector.infer

        def watched(image, prepared, parallel=False):
            index = int(round(image[0, 0, 0] / 5.0))  # frames carry their index in the corner (below)
            calls.append((threading.current_thread().name, parallel, index))
            if delay:
                time.sleep(delay(index))
            return infer(image, prepared, parallel)

        detector.infer = watched
        return detector

    return factory


def _indexed_video(tmp_path, frames=40):
    path = str(tmp_path / "indexed.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30, (160, 120))
    for i in range(frames):
        img = np.zeros((120, 160, 3), np.uint8)
        img[:8, :8] = i * 5  # survives MJPG within a few levels: index = round(pixel / 5)
        writer.write(img)
    writer.release()
    return path


def test_two_frames_in_flight_side_by_side_and_records_in_frame_order(tmp_path):
    """Unpaced: two inference threads each take the next frame and run it single-threaded
    beside the other; one that finishes first still waits for its predecessor's record."""
    calls = []
    video = _indexed_video(tmp_path)
    config = make_config(video, onnxruntime={"frames_in_flight": 2})
    sink = ListSink()
    # Even frames take longer: without the reorder buffer, odd ones would overtake them.
    p = Pipeline(config, [sink], detector_factory=_watching(calls, lambda i: 0.03 if i % 2 == 0 else 0.0))
    p.start()
    assert p.wait(60)
    p.stop()
    assert [r["frame_index"] for r in sink.records] == list(range(40))
    assert [r["seq"] for r in sink.records] == list(range(1, 41))
    threads = {name for name, _, _ in calls}
    assert threads == {"infer", "infer-2"}
    assert sum(parallel for _, parallel, _ in calls) >= 30  # a queue always waiting: side by side


def test_a_paced_frame_runs_alone(tmp_path):
    """At a pace the model keeps up with, each frame is inferred alone (every core on it)."""
    calls = []
    video = _indexed_video(tmp_path, frames=12)
    config = make_config(video, onnxruntime={"frames_in_flight": 2},
                         cameras=[{"id": "cam0", "source": video, "realtime": True, "fps": 10}])
    p = Pipeline(config, [ListSink()], detector_factory=_watching(calls))
    p.start()
    assert p.wait(60)
    p.stop()
    assert len(calls) == 12 and not any(parallel for _, parallel, _ in calls[1:])
    # All on the first inference thread: two threads taking turns made the wide session slower.
    assert {name for name, _, _ in calls} == {"infer"}


def test_one_frame_in_flight_is_one_inference_thread(tmp_path):
    calls = []
    video = _indexed_video(tmp_path, frames=10)
    config = make_config(video, onnxruntime={"frames_in_flight": 1})
    sink = ListSink()
    p = Pipeline(config, [sink], detector_factory=_watching(calls))
    p.start()
    assert p.wait(60)
    p.stop()
    assert {name for name, _, _ in calls} == {"infer"} and not any(parallel for _, parallel, _ in calls)
    assert [r["frame_index"] for r in sink.records] == list(range(10))
