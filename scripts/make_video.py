"""Render a deterministic demo video of moving shapes plus per-frame COCO ground truth.

Every annotation carries ``track_id``: the mover it belongs to (1..objects), the same in
every frame, also after the mover was hidden for a while (a MOT ground truth).
"""
import argparse
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np

import demo_scenes


class Mover:
    """An object with velocity, spin and a breathing size (scale variation over time)."""

    def __init__(self, rng, w, h, scale):
        self.base = scale * math.exp(rng.uniform(math.log(20), math.log(110)))
        self.obj = demo_scenes.Obj(int(rng.integers(len(demo_scenes.CLASSES))),
                                   rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h, self.base,
                                   float(rng.uniform(0, 360)), demo_scenes.random_color(rng),
                                   bool(rng.random() < 0.5))
        speed, heading = scale * rng.uniform(0.5, 3.0), rng.uniform(0, 2 * math.pi)
        self.v = [speed * math.cos(heading), speed * math.sin(heading)]
        self.spin = rng.uniform(-3, 3)
        self.period, self.phase = rng.uniform(60, 240), rng.uniform(0, 2 * math.pi)
        self.w, self.h = w, h

    def step(self, t):
        """Advance one frame, bouncing off the frame edges."""
        o = self.obj
        o.size = self.base * (1 + 0.3 * math.sin(2 * math.pi * t / self.period + self.phase))
        o.angle += self.spin
        for axis, limit in ((0, self.w), (1, self.h)):
            pos = (o.cx, o.cy)[axis] + self.v[axis]
            if pos < 0 or pos > limit:
                self.v[axis] = -self.v[axis]
                pos = min(max(pos, 0), limit)
            if axis == 0:
                o.cx = pos
                o.flip = self.v[0] < 0  # cars face where they drive
            else:
                o.cy = pos


def make_video(out, seed=0, seconds=20.0, fps=30, width=1280, height=720, objects=8):
    """Write the video (mp4v) and <video>.json; returns (video path, json path, frames)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scale = width / 640  # the dataset is 640 wide: keep object sizes in the trained range
    bg = demo_scenes.background(rng, width, height)
    movers = [Mover(rng, width, height, scale) for _ in range(objects)]
    track_ids = list(range(1, objects + 1))
    # A few precomputed noise fields, cycled: per-frame sensor noise at a fraction of the cost.
    noise = [rng.normal(0, 5, bg.shape).astype(np.int16) for _ in range(4)]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cannot open a mp4v video writer for {out}")
    coco = demo_scenes.coco_skeleton()
    coco["info"].update(video=out.name, fps=fps, seed=seed)
    frames = int(round(seconds * fps))
    for i in range(frames):
        for m in movers:
            m.step(i)
        objs = [m.obj for m in movers]
        img = demo_scenes.render(bg, objs)
        img = np.clip(img.astype(np.int16) + noise[i % len(noise)], 0, 255).astype(np.uint8)
        writer.write(img)
        demo_scenes.add_image(coco, i + 1, f"{out.name}#{i}", width, height,
                              demo_scenes.annotate(objs, width, height, track_ids), frame_index=i)
    writer.release()
    gt = out.with_suffix(".json")
    gt.write_text(json.dumps(coco))
    return out, gt, frames


def main(argv=None):
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="data/demo/demo.mp4", help="video path (default data/demo/demo.mp4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--frames", type=int, help="number of frames (overrides --seconds)")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--objects", type=int, default=8)
    args = ap.parse_args(argv)
    if args.frames is not None:
        args.seconds = args.frames / args.fps
    t0 = time.time()
    video, gt, frames = make_video(args.out, args.seed, args.seconds, args.fps, args.width,
                                   args.height, args.objects)
    print(f"event=video path={video} gt={gt} frames={frames} fps={args.fps} "
          f"size={args.width}x{args.height} seconds={time.time() - t0:.1f}", flush=True)


if __name__ == "__main__":
    main()
