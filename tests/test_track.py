"""agent.track: the Kalman filter, the tracker, zones, events and counts, and their config checks."""

import json
import os

import cv2
import jsonschema
import numpy as np
import pytest

from agent.config import TrackingConfig, load_config
from agent.errors import ConfigError
from agent.publish import schema as payloads
from agent.track import kalman
from agent.track.events import CameraEvents
from agent.track.iou import buffered_iou, iou_matrix
from agent.track.tracker import Tracker
from agent.track.zones import Zones, polygon_problem
from conftest import ROOT, run_cli

SCHEMAS = os.path.join(ROOT, "agent", "schemas")


def schema(name):
    with open(os.path.join(SCHEMAS, name + ".schema.json")) as f:
        return json.load(f)


def box(cx, cy, w=40.0, h=40.0):
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def frame(*dets):
    """(boxes, scores, class ids) from (box, score, class id) triples."""
    if not dets:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)
    b, s, c = zip(*dets)
    return np.array(b, np.float32), np.array(s, np.float32), np.array(c, np.int32)


# --- the Kalman filter ----------------------------------------------------------------------


def test_blockwise_kalman_equals_the_full_8x8_filter():
    """The per-quantity 2x2 blocks give exactly SORT/ByteTrack's 8x8 filter's numbers."""
    rng = np.random.default_rng(0)
    means, covs = kalman.initiate(rng.uniform(10, 100, (5, 4)))
    f = np.eye(8)
    f[:4, 4:] = np.eye(4)
    h = np.eye(8)[:4]
    full_m, full_p = means.copy(), kalman.full_covariance(covs)
    for _ in range(6):
        means, covs = kalman.predict(means, covs)
        for i in range(5):
            p, v = full_m[i, 3] / 20, full_m[i, 3] / 160
            q = np.diag(np.array([p, p, 1e-2, p, v, v, 1e-5, v]) ** 2)
            full_m[i], full_p[i] = f.dot(full_m[i]), f.dot(full_p[i]).dot(f.T) + q
        assert np.allclose(means, full_m) and np.allclose(kalman.full_covariance(covs), full_p)
        z = full_m[:, :4] + rng.normal(0, 3, (5, 4))
        means, covs = kalman.update(means, covs, z)
        for i in range(5):
            r = np.diag(np.array([full_m[i, 3] / 20, full_m[i, 3] / 20, 0.1, full_m[i, 3] / 20]) ** 2)
            s = h.dot(full_p[i]).dot(h.T) + r
            k = full_p[i].dot(h.T).dot(np.linalg.inv(s))
            full_m[i] = full_m[i] + k.dot(z[i] - h.dot(full_m[i]))
            full_p[i] = full_p[i] - k.dot(s).dot(k.T)
        assert np.allclose(means, full_m) and np.allclose(kalman.full_covariance(covs), full_p)


def test_the_tracker_filters_its_state_table_in_place():
    """Tracker keeps every track's numbers in one array and runs the filter on views of it: a copy
    would silently drop every prediction and correction (numpy's reshape copies when it must)."""
    from agent.track.tracker import _covariances

    tracker = Tracker(TrackingConfig())
    for i in range(3):
        tracker.update(*frame((box(100 + 5 * i, 100), 0.9, 0)), i / 30.0)
    assert np.shares_memory(_covariances(tracker._state), tracker._state)
    assert np.shares_memory(_covariances(tracker._state[[0]]), tracker._state) is False
    means, covs = kalman.initiate(kalman.xyxy_to_xyah(np.array([box(100 + 10, 100)])))
    for _ in range(2):
        kalman.update(*kalman.predict(means, covs), kalman.xyxy_to_xyah(np.array([box(100 + 15, 100)])))
    assert tracker._state[0, 4] > 0  # it learned the velocity (5 px per frame), as the plain filter does
    assert means[0, 4] > 0


def test_box_conversions_round_trip_and_iou():
    boxes = np.array([box(50, 60, 20, 40), box(10, 10, 8, 2)])
    assert np.allclose(kalman.xyah_to_xyxy(kalman.xyxy_to_xyah(boxes)), boxes)
    a = np.array([[0, 0, 10, 10.0]])
    b = np.array([[5, 0, 15, 10.0], [18, 18, 28, 28.0]])
    assert np.allclose(iou_matrix(a, b), [[50 / 150.0, 0.0]])
    # Grown by 0.5 of their size on each side, the far box overlaps; a zero buffer changes nothing.
    grown = buffered_iou(a, b, np.array([0.5]))
    assert grown[0, 1] > 0 and np.allclose(buffered_iou(a, b, np.array([0.0])), iou_matrix(a, b))


# --- the tracker ----------------------------------------------------------------------------


def run(tracker, frames):
    return [tracker.update(b, s, c, float(i)) for i, (b, s, c) in enumerate(frames)]


@pytest.mark.parametrize("with_image", [False, True])
def test_a_moving_object_keeps_its_id_through_missed_frames_and_low_scores(with_image):
    """Also with the frame given (the appearance cue), through frames with no detection at all."""
    tracker = Tracker(TrackingConfig())
    if with_image:
        image = np.full((480, 640, 3), 90, np.uint8)
        image[:, :, 2] = 200
        tracker_update = tracker.update
        tracker.update = lambda b, s, c, t: tracker_update(b, s, c, t, image)
    frames = []
    for i in range(60):
        cx = 100 + 5 * i
        if 20 <= i < 26:
            frames.append(frame())  # not detected for 6 frames (hidden)
        elif 30 <= i < 40:
            frames.append(frame((box(cx, 200), 0.2, 1)))  # partly hidden: only the second pass takes it
        else:
            frames.append(frame((box(cx, 200), 0.9, 1)))
    ups = run(tracker, frames)
    ids = {int(u.track_ids[0]) for u in ups if len(u.track_ids) and u.track_ids[0]}
    assert ids == {1}
    assert [int(u.track_ids[0]) for u in ups[:3]] == [0, 0, 1]  # confirmed at the third hit (min_hits 3)
    assert all(int(u.track_ids[0]) == 1 for u in ups[30:40])  # low-confidence second pass
    coasting = [len(u.tracks) for u in ups[20:26]]
    assert coasting == [1, 1, 0, 0, 0, 0]  # coast_frames 2: still in view two frames, then not counted
    assert all(len(u.ended) == 0 for u in ups)


def test_two_crossing_objects_keep_their_ids():
    tracker = Tracker(TrackingConfig())
    ups = run(tracker, [frame((box(100 + 6 * i, 200), 0.9, 0), (box(500 - 6 * i, 230), 0.8, 1)) for i in range(70)])
    first = {int(c): int(t) for c, t in zip(frame((box(0, 0), 1, 0), (box(0, 0), 1, 1))[2], ups[3].track_ids)}
    last = {int(c): int(t) for c, t in zip(frame((box(0, 0), 1, 0), (box(0, 0), 1, 1))[2], ups[-1].track_ids)}
    assert first == last and sorted(first.values()) == [1, 2]


def crossing(with_images):
    """A red disc moving right and a blue one moving left meet (the blue passes in front and
    hides the red for a few frames), then both turn back: per frame, the track ids of
    (red, blue) (None: not detected), the frames drawn by cv2 and given to the tracker or not."""
    tracker = Tracker(TrackingConfig())
    out = []
    for i in range(60):
        t = i if i < 25 else 50 - i  # both turn back at frame 25
        xs = (100 + 6 * t, 400 - 6 * t)
        image = np.full((300, 600, 3), 90, np.uint8)
        for x, colour in zip(xs, ((0, 0, 255), (255, 0, 0))):
            cv2.circle(image, (x, 150), 30, colour, -1)  # blue drawn last: in front
        hidden = abs(xs[0] - xs[1]) < 30  # the red is mostly behind the blue: not detected
        seen = [k for k in (0, 1) if not (k == 0 and hidden)]
        boxes, scores, classes = frame(*[(box(xs[k], 150, 60, 60), 0.9, 0) for k in seen])
        up = tracker.update(boxes, scores, classes, i / 30.0, image if with_images else None)
        ids = dict(zip(seen, up.track_ids.tolist()))
        out.append((ids.get(0), ids.get(1)))
    return out


def test_crossing_objects_of_different_colours_keep_their_ids_with_the_appearance_cue():
    """Motion alone hands each track to the other disc when they turn back behind one another (the
    Kalman filter expects them to go on); their colours tell them apart."""
    before = crossing(True)[10]
    assert before == (1, 2)
    motion = crossing(False)
    assert motion[10] == before and motion[-1] == (2, 1)  # without the frames: swapped for good
    cued = crossing(True)
    assert cued[-1] == before
    apart = [ids for i, ids in enumerate(cued) if i >= 3 and not (21 <= i <= 29)]  # boxes overlapping no other
    assert apart and all(ids == before for ids in apart), cued


@pytest.mark.parametrize("key, value, why", [("appearance_gate", 1.5, "in [0, 1]"), ("appearance_weight", -1, ">= 0")])
def test_bad_appearance_settings_are_named(key, value, why):
    with pytest.raises(ConfigError) as e:
        load_config(None, {"tracking": {key: value}}, environ={})
    assert "tracking." + key in str(e.value) and why in str(e.value)


def test_appearance_weight_zero_is_motion_alone():
    tracker = Tracker(TrackingConfig(appearance_weight=0.0))
    assert tracker.update(*frame((box(100, 100), 0.9, 0)), 0.0, np.zeros((300, 600, 3), np.uint8)).track_ids.tolist() == [0]
    assert not tracker._state[:, 23].any()  # no colour read at all (the _COLOURED column)


def test_false_positives_and_duplicates_never_become_tracks():
    tracker = Tracker(TrackingConfig())
    frames = []
    for i in range(30):
        dets = [(box(100 + 3 * i, 100), 0.9, 0), (box(100 + 3 * i + 1, 101), 0.6, 2)]  # the same object, two classes
        if i % 2 == 0:
            dets.append((box(600 + 50 * i, 400), 0.95, 3))  # flicker: never two frames in a row
        frames.append(frame(*dets))
    ups = run(tracker, frames)
    assert {int(t.id) for u in ups for t in u.tracks} == {1}
    assert ups[-1].track_ids.tolist()[:2] == [1, 0]


def test_a_lost_track_ends_after_max_lost_frames_and_the_table_is_bounded():
    settings = TrackingConfig(max_lost_frames=5, max_tracks=8, min_hits=1)
    tracker = Tracker(settings)
    ups = run(tracker, [frame((box(300, 300), 0.9, 4))] * 3 + [frame()] * 7)
    ended = [t for u in ups for t in u.ended]
    assert [(t.id, t.end_reason) for t in ended] == [(1, "lost")] and ups[3 + 5].ended == ended
    assert tracker.tracks == []
    # 50 objects at once into a table of 8: bounded, and the rest counted.
    crowd = frame(*[(box(30 + 60 * k, 30 + 60 * (k // 20), 20, 20), 0.9, 0) for k in range(50)])
    up = tracker.update(*crowd, timestamp=20.0)
    assert len(tracker.tracks) == 8 and tracker.dropped == 42 and len(up.tracks) == 8
    # New objects push out the longest-lost ones, which end as 'evicted'.
    tracker.update(*frame(), timestamp=21.0)
    others = frame(*[(box(1500 + 30 * k, 900, 20, 20), 0.9, 1) for k in range(3)])
    up = tracker.update(*others, timestamp=22.0)
    assert len(tracker.tracks) == 8 and sorted(t.end_reason for t in up.ended) == ["evicted"] * 3
    closed = tracker.close()
    assert len(closed) == 8 and {t.end_reason for t in closed} == {"stopped"} and tracker.tracks == []


def test_class_is_the_best_summed_vote():
    classes = [2, 2, 2, 3, 2, 3, 3, 3, 3, 3]
    tracker = Tracker(TrackingConfig())
    got = []
    for i, c in enumerate(classes):  # read as each frame leaves it: Track objects live on
        up = tracker.update(*frame((box(200 + 2 * i, 200), 0.8, c)), timestamp=float(i))
        got.append(up.tracks[0].class_id if up.tracks else None)
    assert got == [None, None, 2, 2, 2, 2, 2, 2, 3, 3]  # 3 overtakes 2 at its fifth vote against four


# --- zones, events, counts ------------------------------------------------------------------


@pytest.mark.parametrize("points,where,why", [
    ([[0, 0], [1, 1]], "", "at least 3 points"),
    ([[0, 0], [1.2, 0], [1, 1]], "[1]", "outside the frame"),
    ([[0, 0], [-0.1, 0.5], [1, 1]], "[1]", "outside the frame"),
    ([[0, 0], [1, 1], [1, 0], [0, 1]], "", "self-intersecting polygon: edge 0"),
    ([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.9]], "", "self-intersecting"),
    ([[0, 0], [0.5, 0.5], [1, 1]], "", "no area"),
    ([[0, 0], [1, 0, 2], [1, 1]], "[1]", "expected a point [x, y]"),
])
def test_bad_zones_are_named(points, where, why):
    got = polygon_problem(points)
    assert got is not None and got[0] == where and why in got[1]
    with pytest.raises(ConfigError) as info:
        load_config(None, {"cameras": [{"id": "gate", "source": "x.mp4", "zones": {"drive way": points}}]},
                    environ={}, check_files=False)
    assert str(info.value).startswith("cameras[0].zones.drive way{}: ".format(where)) and why in str(info.value)


def test_zone_errors_exit_78_before_any_camera_opens(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("cameras:\n  - id: cam0\n    source: /dev/video99\n    zones:\n"
                      "      door: [[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]]\n")
    result = run_cli(["check-config", "--config", str(config)])
    assert result.returncode == 78, result.stderr
    assert "cameras[0].zones.door: self-intersecting polygon" in result.stderr
    config.write_text("tracking:\n  low_threshold: 0.7\n")
    result = run_cli(["check-config", "--config", str(config)])
    assert result.returncode == 78 and "tracking.low_threshold: expected a value <= tracking.high_threshold" \
        in result.stderr, result.stderr


def test_a_convex_and_a_concave_zone():
    zones = Zones({"u": [[0, 0], [0.3, 0], [0.3, 0.7], [0.7, 0.7], [0.7, 0], [1, 0], [1, 1], [0, 1]],
                   "square": [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]})
    inside = zones.inside(np.array([[0.5, 0.5], [0.5, 0.9], [0.1, 0.1], [0.5, 0.1]]))
    assert inside == [["square"], ["u"], ["u"], []]


class FakeTrack(object):
    def __init__(self, tid, class_id, box_, score=0.8):
        self.id, self.class_id, self.box, self.best_box, self.best_score = tid, class_id, box_, box_, score
        self.first_seen, self.last_seen, self.end_reason = 10.0, 12.5, None


def test_events_and_counts_follow_the_tracks():
    ev = CameraEvents({"left": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]})
    labels = {0: "circle", 1: "car"}
    car = FakeTrack(1, 1, [100, 100, 200, 200])  # bottom centre (150, 200) of 1000 x 1000: in 'left'
    star = FakeTrack(2, 0, [700, 100, 800, 200])
    changes, changed = ev.update([car, star], [], 1000, 1000)
    assert [(c.kind, c.track.id, c.zones, c.entered) for c in changes] == [
        ("start", 1, ("left",), ["left"]), ("start", 2, (), [])]
    assert changed and ev.counts["total"] == 2 and ev.counts["zones"]["left"]["total"] == 1
    assert ev.update([car, star], [], 1000, 1000) == ([], False)  # nothing new: no event, same counts
    car.box = [600, 100, 700, 200]  # drives out of the zone
    star.class_id = 1  # and the other one is recognised as a car
    changes, changed = ev.update([car, star], [], 1000, 1000)
    assert [(c.kind, c.changed, c.left, c.previous_class_id) for c in changes] == [
        ("update", ["zones"], ["left"], 1), ("update", ["class"], [], 0)]
    counts = payloads.counts("dev", "cam0", ev.counts, labels, timestamp=5.0)
    assert counts["classes"] == {"car": 2, "circle": 0} and counts["zones"]["left"] == {
        "total": 0, "classes": {"car": 0, "circle": 0}}
    jsonschema.validate(counts, schema("counts"))
    car.end_reason = "lost"
    changes, _ = ev.update([star], [car], 1000, 1000)
    assert [(c.kind, c.track.id) for c in changes] == [("end", 1)]
    for seq, c in enumerate(changes + ev.close([star]), 1):
        payload = payloads.event("dev", "cam0", seq, c, labels, 1000, 1000, 20.0)
        jsonschema.validate(payload, schema("events"))
        assert payload["type"] == "end" and payload["duration_s"] == 2.5
    assert ev.counts["total"] == 0
