"""agent/native (the C fast paths) against the numpy references they stand for: the same bits.

The NMS is held to nms_reference in tests/test_nms.py (every test there runs it); here the
tracker's arithmetic, function by function, and the whole tracker with and without it.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from agent import native
from agent.config import TrackingConfig
from agent.track import appearance, kalman
from agent.track.iou import pairs
from agent.track import tracker as T
from agent.track.tracker import Tracker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def numpy_only(monkeypatch):
    """Run the block with the C paths hidden: ``with numpy_only(): ...``."""
    class Hidden(object):
        def __enter__(self):
            monkeypatch.setattr(native, "LIB", None)

        def __exit__(self, *exc):
            monkeypatch.undo()
    assert native.LIB is not None, "agent/native is not built: pip install -e . (needs a C compiler)"
    return Hidden


def boxes_of(rng, n, spread=1000.0):
    xy = rng.uniform(-50, spread, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(1, 120, (n, 2))], 1)


def same(a, b):
    """Equal to the bit (NaN where NaN), shape and dtype."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def test_the_fast_paths_are_built_and_load():
    """setup.py builds agent/native (optional: without a compiler the install goes on); the suite
    runs where it is built, so that every test below holds the C paths to their references."""
    assert native.LIB is not None, "agent/native is not built: pip install -e . (needs a C compiler)"
    assert os.path.basename(native._find()).startswith("_fastpath")


def test_array_addresses_are_read_right():
    """The data pointer is read from the array object (numpy's ABI); the same as numpy says, views too."""
    assert native._DATA is not None
    a = np.arange(40.0).reshape(5, 8)
    for view in (a, a[2:], a[:, 3:], a[1:, 2:4], a[::-1], np.zeros(0)):
        assert native._ptr(view) == view.ctypes.data


def test_pairs_equal_numpy_with_and_without_buffers(numpy_only):
    rng = np.random.default_rng(0)
    for case in range(200):
        n, m = int(rng.integers(0, 60)), int(rng.integers(0, 60))
        tracks, dets = boxes_of(rng, n, 300), boxes_of(rng, m, 300)
        buffer = None
        if case % 2 and n:
            buffer = np.where(rng.random(n) < 0.3, rng.uniform(0, 0.5, n), 0.0)
        fast = pairs(tracks, dets, buffer)
        with numpy_only():
            ref = pairs(tracks, dets, buffer)
        assert same(fast[0], ref[0]) and same(fast[1], ref[1]), case


def test_colours_equal_numpy_on_colour_grey_and_strided_images(numpy_only):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
    for img in (image, image[:, :, 0].copy(), image[::2, 1::3], np.dstack([image, image[:, :, :1]])):
        boxes = boxes_of(rng, 40, 700)  # some partly or wholly outside the image
        fast = appearance.describe(img, boxes)
        with numpy_only():
            ref = appearance.describe(img, boxes)
        assert same(fast, ref), img.shape
    assert appearance.describe(image, np.zeros((0, 4))).shape == (0, 3)


def test_the_fused_score_equals_numpy(numpy_only):
    rng = np.random.default_rng(2)
    for _ in range(50):
        n, m = int(rng.integers(0, 40)), int(rng.integers(0, 40))
        b = rng.uniform(0, 255, (m, 3))
        tracker = Tracker(TrackingConfig())
        tracker._state = rng.uniform(0, 255, (n, 24))
        tracker._state[:, 23] = rng.random(n) < 0.7  # some tracks without a colour yet
        iou, clean = rng.uniform(0, 1, (n, m)), rng.random(m) < 0.6
        fast = tracker._similarity(iou, b, clean)
        with numpy_only():
            ref = tracker._similarity(iou, b, clean)
        assert same(fast, ref)


def test_kalman_steps_equal_numpy_on_separate_arrays_and_on_table_views(numpy_only):
    rng = np.random.default_rng(3)
    z = rng.uniform(10, 400, (30, 4))
    for layout in ("arrays", "table"):
        runs = []
        for hidden in (False, True):
            if layout == "arrays":
                means, covs = kalman.initiate(z)
            else:  # the tracker's layout: rows of one table, means and covariances side by side
                table = np.zeros((30, 24))
                means, covs = table[:, :8], table[:, 8:20].reshape(30, 3, 4)
                kalman.initiate(z, means, covs)
            if hidden:
                with numpy_only():
                    steps = _filter(means, covs, rng_seed=4)
            else:
                steps = _filter(means, covs, rng_seed=4)
            runs.append(steps)
        assert all(same(x, y) for x, y in zip(*runs)), layout


def _filter(means, covs, rng_seed):
    rng = np.random.default_rng(rng_seed)
    out = []
    for _ in range(5):
        kalman.predict(means, covs)
        out += [means.copy(), covs.copy()]
        kalman.update(means, covs, means[:, :4] + rng.normal(0, 3, (len(means), 4)))
        out += [means.copy(), covs.copy()]
    return out


def test_box_conversions_flags_and_pass_costs_equal_numpy(numpy_only):
    rng = np.random.default_rng(5)
    tracker, refound = Tracker(TrackingConfig()), 0
    for case in range(60):
        n, m = int(rng.integers(0, 30)), int(rng.integers(0, 30))
        dets = boxes_of(rng, m, 200)
        dets[:m // 4, 3] = dets[:m // 4, 1]  # no height: the 1e-3 floor
        table = rng.uniform(0, 255, (n, 24))
        table[:, 2:4] = rng.uniform(0.2, 3, (n, 2))  # aspect and height of a state row
        # IoUs and scores on a grid that holds the thresholds themselves (0.3: the pass's; 0.05
        # and 0.7: ISOLATED_IOU and DUPLICATE_IOU), so that > and >= are told apart.
        levels = np.array([0.0, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
        iou, sim, dd = rng.choice(levels, (n, m)), rng.uniform(0, 1, (n, m)), rng.choice(levels, (m, m))
        scores = rng.choice(levels, m)
        rows, cols = np.flatnonzero(rng.random(n) < 0.6), np.flatnonzero(rng.random(m) < 0.6)
        colours = rng.uniform(0, 255, (m, 3))
        pred = boxes_of(rng, n, 200)
        if m:  # tracks near a detection of about their colour: some are re-found
            near = rng.integers(0, m, n)
            pred = dets[near] + rng.normal(0, 5, (n, 4))
            table[:, 20:23] = colours[near] + rng.normal(0, 5, (n, 3))

        def run():
            out = [kalman.xyxy_to_xyah(dets), kalman.xyah_to_xyxy(table[:, :4])]
            out += list(T._flags(dd, scores))
            tracker.settings = TrackingConfig()
            out += [_pass(tracker, iou, s, rows, cols) for s in (None, sim)]
            tracker._state = table.copy()
            det_of, used = np.full(n, -1, np.int64), np.zeros(m, bool)
            tracker._refind(pred, dets, colours, rng_rows, rng_cols, det_of, used)
            return out + [det_of, used]
        rng_rows, rng_cols = rng.random(n) < 0.5, rng.random(m) < 0.5
        fast = run()
        with numpy_only():
            ref = run()
        assert all(same(x, y) for x, y in zip(fast, ref)), case
        refound += int((fast[-2] >= 0).sum())
    assert refound > 20  # the re-find pass took detections, not only refused them


def _pass(tracker, iou, sim, rows, cols):
    """The assignment one _match pass makes (det_of, used) for the masks rows, cols."""
    n, m = iou.shape
    det_of, used = np.full(n, -1, np.int64), np.zeros(m, bool)
    tracker._match(iou, sim, np.isin(np.arange(n), rows), np.isin(np.arange(m), cols), 0.3, det_of, used)
    return np.concatenate([det_of, used.astype(np.int64)])


def test_kalman_refuses_a_layout_it_cannot_read():
    means, covs = kalman.initiate(np.ones((3, 4)))
    with pytest.raises(ValueError, match="contiguous rows"):
        native.kalman_predict(means, np.asfortranarray(covs), np.zeros((2, 8)))


def test_the_tracker_gives_the_same_ids_and_boxes_with_and_without_the_c_paths(numpy_only):
    """The benchmark's crowded scene (50 movers, clutter, drawn frames for the colour cue)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_tracker
    finally:
        sys.path.pop(0)
    frames = bench_tracker.scene(np.random.default_rng(0), 50, 150)
    fast, ref = Tracker(TrackingConfig()), Tracker(TrackingConfig())
    for i, (b, s, c, layout) in enumerate(frames):
        image = bench_tracker.draw(layout)
        a = fast.update(b, s, c, i / 30.0, image)
        with numpy_only():
            r = ref.update(b, s, c, i / 30.0, image)
        assert np.array_equal(a.track_ids, r.track_ids), i
        assert [(t.id, t.box) for t in a.tracks] == [(t.id, t.box) for t in r.tracks], i
    assert same(fast._state, ref._state)
    assert len(a.tracks) > 40


def test_a_checkout_without_the_build_runs_the_numpy_paths(tmp_path):
    """No compiler at install time: agent/native has no library, LIB is None, NMS and tracking run."""
    shutil.copytree(os.path.join(ROOT, "agent"), str(tmp_path / "agent"),
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    code = ("import numpy as np; from agent import native; assert native.LIB is None; "
            "from agent.postprocess import nms; "
            "print(nms(np.array([[0, 0, 10, 10], [1, 1, 10, 10.]]), np.array([0.9, 0.8], np.float32), 0.5).tolist())")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), stdout=subprocess.PIPE,
                         universal_newlines=True, check=True).stdout
    assert out.strip() == "[0]"


def _harness(compiler, out, flags=("-ffp-contract=off",), static=False):
    """Build tests/native_harness.c with agent/native/fastpath.c; returns the binary's path."""
    cmd = [compiler, "-std=c99", "-O3"] + list(flags) + (["-static"] if static else []) + [
        os.path.join(ROOT, "tests", "native_harness.c"), os.path.join(ROOT, "agent", "native", "fastpath.c"),
        "-lm", "-o", str(out)]
    subprocess.run(cmd, check=True)
    return str(out)


def test_the_c_gives_the_same_bits_on_aarch64(tmp_path):
    """The Jetson's CPU is aarch64, where compilers fuse a * b + c into one rounding unless told
    not to (setup.py's -ffp-contract=off): the C fast paths built for aarch64 and run under
    qemu give the same bits as here, function by function; built with contraction allowed,
    they would not (the harness can tell)."""
    cross, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    assert cross and qemu, "scripts/setup.sh test installs gcc-aarch64-linux-gnu and qemu-user"
    here = subprocess.run([_harness("cc", tmp_path / "here")], stdout=subprocess.PIPE, universal_newlines=True,
                          check=True).stdout
    arm = subprocess.run([qemu, _harness(cross, tmp_path / "arm", static=True)], stdout=subprocess.PIPE,
                         universal_newlines=True, check=True).stdout
    assert len(here.splitlines()) == 12 and here == arm, (here, arm)
    fused = subprocess.run([qemu, _harness(cross, tmp_path / "fused", ("-ffp-contract=fast",), static=True)],
                           stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
    assert fused != here
