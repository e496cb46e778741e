"""What tracking costs per frame: ``Tracker.update`` with N objects in view (default 50).

    python benchmarks/bench_tracker.py                 # 50 objects, 2000 frames
    python benchmarks/bench_tracker.py --objects 200
    python benchmarks/bench_tracker.py --no-images     # motion alone (no appearance cue)
    python benchmarks/bench_tracker.py --no-native     # the numpy paths (agent/native not built)
    python benchmarks/bench_tracker.py --against REV   # this tree's tracker against git revision REV's
                                                       # (both with this tree's tracking settings)

Synthetic scene: N boxes moving at constant velocity and bouncing off the frame edges,
each detected with probability 0.9 at a jittered box and a random score in [0.1, 1]
(so all three association passes run), plus a few false positives per frame. Each frame
is also drawn (1920 x 1080: every mover a filled box of its own colour over a grey
background) and handed to the tracker, whose appearance cue then reads it. After a
warm-up (every track confirmed), it times each update and prints p50, p95 and mean in
milliseconds of wall time, the mean in CPU time of the thread (what the update itself
costs when other processes compete for the cores), and the number of tracks in view. The agent's defaults are used
(``tracking`` in agent/config.py). The budget (issue 17): <= 0.3 ms per frame at 50 objects.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from agent import native  # noqa: E402

# The thread's CPU time (Python 3.7+); under 3.6 (JetPack 4) the process's, which is the same
# here: the benchmark runs one thread.
_cpu_time = getattr(time, "thread_time", time.process_time)
from agent.config import TrackingConfig  # noqa: E402
from agent.track.tracker import Tracker  # noqa: E402


def scene(rng, objects, frames, width=1920, height=1080):
    """Per frame (boxes, scores, class ids) of ``objects`` movers plus clutter."""
    pos = rng.uniform([0, 0], [width, height], (objects, 2))
    vel = rng.uniform(-6, 6, (objects, 2))
    size = rng.uniform(20, 60, (objects, 2))
    cls = rng.integers(0, 5, objects)
    colours = np.random.default_rng(1).integers(0, 256, (objects, 3))  # apart from ``rng``: the same scene as before
    out = []
    for _ in range(frames):
        pos += vel
        for axis, limit in ((0, width), (1, height)):
            bounce = (pos[:, axis] < 0) | (pos[:, axis] > limit)
            vel[bounce, axis] *= -1
        seen = rng.random(objects) < 0.9
        centre = pos[seen] + rng.normal(0, 1.5, (seen.sum(), 2))
        half = size[seen] / 2
        boxes = np.concatenate([centre - half, centre + half], 1)
        clutter = rng.uniform([0, 0], [width, height], (3, 2))
        boxes = np.concatenate([boxes, np.concatenate([clutter, clutter + 30], 1)])
        scores = rng.uniform(0.1, 1.0, len(boxes))
        out.append((boxes.astype(np.float32), scores.astype(np.float32),
                    np.concatenate([cls[seen], rng.integers(0, 5, 3)]).astype(np.int32),
                    (pos.copy(), size, colours)))
    return out


def draw(layout, width=1920, height=1080):
    """The frame of one ``layout`` (centres, sizes, colours): each mover a filled box of its colour."""
    import cv2

    image = np.full((height, width, 3), 110, np.uint8)
    for (cx, cy), (w, h), colour in zip(*(a.tolist() for a in layout)):
        cv2.rectangle(image, (int(cx - w / 2), int(cy - h / 2)), (int(cx + w / 2), int(cy + h / 2)), colour, -1)
    return image


def tracker_of(rev):
    """(Tracker, TrackingConfig) of git revision ``rev``'s agent package, imported beside this tree's."""
    tmp = tempfile.mkdtemp(prefix="bench-tracker-")
    subprocess.run("git archive {} agent | tar -x -C {}".format(rev, tmp), shell=True, check=True, cwd=ROOT)
    ours = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "agent" or k.startswith("agent.")}
    sys.path.insert(0, tmp)
    try:
        from agent.config import TrackingConfig as config
        from agent.track.tracker import Tracker as tracker
    finally:
        sys.path.remove(tmp)
        for k in [k for k in sys.modules if k == "agent" or k.startswith("agent.")]:
            del sys.modules[k]
        sys.modules.update(ours)
    return tracker, config


def against(rev, args, frames):
    """This tree's tracker and ``rev``'s on the same frames, alternated (which goes first flips every
    frame), in one process: the ratio of their CPU time per update, and whether every frame's
    track ids are the same."""
    theirs_tracker, theirs_config = tracker_of(rev)
    ours = TrackingConfig()
    # Both run with this tree's settings (those ``rev`` knows): a code change is compared on the
    # same behaviour; a change of defaults is an accuracy question (track_accuracy.py).
    known = {f.name for f in dataclasses.fields(theirs_config)}
    pair = [Tracker(ours), theirs_tracker(theirs_config(**{k: v for k, v in dataclasses.asdict(ours).items()
                                                            if k in known}))]
    cpu, same = ([], []), True
    for i, (b, s, c, layout) in enumerate(frames):
        image = None if args.no_images else draw(layout)
        ids = [None, None]
        for k in ((0, 1) if i % 2 else (1, 0)):
            c0 = _cpu_time()
            ids[k] = pair[k].update(b, s, c, i / 30.0, image).track_ids
            if i >= args.warmup:
                cpu[k].append((_cpu_time() - c0) * 1000.0)
        same = same and np.array_equal(ids[0], ids[1])
    ours, theirs = float(np.mean(cpu[0])), float(np.mean(cpu[1]))
    result = {"objects": args.objects, "frames": len(cpu[0]), "images": not args.no_images, "against": rev,
              "cpu_mean_ms": round(ours, 4), "against_cpu_mean_ms": round(theirs, 4), "ratio": round(ours / theirs, 3),
              "same_track_ids": same, "load_average_1m": round(os.getloadavg()[0], 2)}
    print("tracking {objects} objects, CPU per update: this tree {cpu_mean_ms:.3f} ms, {against} {against_cpu_mean_ms:.3f} ms: "
          "{ratio:.2f}x; same track ids on every frame: {same_track_ids} (load average {load_average_1m})".format(**result))
    print(json.dumps(result, sort_keys=True))
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=50)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-images", action="store_true", help="no frames: the tracker without its appearance cue")
    ap.add_argument("--against", metavar="REV", help="alternate with git revision REV's tracker: CPU ratio, same ids")
    ap.add_argument("--no-native", action="store_true", help="the numpy paths only (no agent/native: no C compiler)")
    args = ap.parse_args(argv)
    if args.no_native:
        native.LIB = None
    frames = scene(np.random.default_rng(args.seed), args.objects, args.frames + args.warmup)
    if args.against:
        return against(args.against, args, frames)
    tracker = Tracker(TrackingConfig())
    times, cpu, in_view = [], [], []
    for i, (b, s, c, layout) in enumerate(frames):
        image = None if args.no_images else draw(layout)
        t0, c0 = time.perf_counter(), _cpu_time()
        up = tracker.update(b, s, c, i / 30.0, image)
        dt, dc = time.perf_counter() - t0, _cpu_time() - c0
        if i >= args.warmup:
            times.append(dt * 1000.0)
            cpu.append(dc * 1000.0)
            in_view.append(len(up.tracks))
    t = np.array(times)
    result = {"objects": args.objects, "frames": len(t), "p50_ms": round(float(np.percentile(t, 50)), 4),
              "p95_ms": round(float(np.percentile(t, 95)), 4), "mean_ms": round(float(t.mean()), 4),
              "cpu_mean_ms": round(float(np.mean(cpu)), 4), "load_average_1m": round(os.getloadavg()[0], 2),
              "tracks_in_view_mean": round(float(np.mean(in_view)), 1), "images": not args.no_images,
              "table_size": len(tracker.tracks), "native": native.LIB is not None}
    print("tracking {objects} objects: p50 {p50_ms:.3f} ms  p95 {p95_ms:.3f} ms  mean {mean_ms:.3f} ms per frame, "
          "CPU {cpu_mean_ms:.3f} ms ({tracks_in_view_mean} tracks in view; C paths {native}; load average "
          "{load_average_1m})".format(**result))
    print(json.dumps(result, sort_keys=True))
    return result


if __name__ == "__main__":
    main()
