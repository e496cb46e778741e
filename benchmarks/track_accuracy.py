"""Tracking accuracy on a rendered demo video: MOTA, IDF1 and ID switches, through motmetrics.

    python benchmarks/track_accuracy.py --size accurate --seed 0      # the demo video (data/demo/demo.mp4)
    python benchmarks/track_accuracy.py --size fast --seed 1          # another video, never tuned on
    python benchmarks/track_accuracy.py --size fast --seed 0 --set tracking.min_hits=3   # try a setting

The video and its ground truth (scripts/make_video.py: every annotation has the
``track_id`` of its mover) are rendered into runs/track/seed<N>/ when missing; seed 0
with the defaults is byte for byte the demo video. The detector is the agent's own
(agent.detect, the configured backend, ``tracking.low_threshold`` applied as the
pipeline applies it); its detections are cached per model and threshold in the same
folder, so that trying tracker settings takes seconds. The tracker is the agent's
(agent.track.tracker) at the configured thresholds (the shipped defaults unless
--config or --set say otherwise), given each decoded frame with its detections (as the
pipeline gives it the camera's frame) for its colour cue, or not (--no-images: motion
alone); what it reports per frame is what the agent's
counts and events come from: the confirmed tracks in view, coasting ones at their
predicted box.

Matching is class-agnostic at IoU >= 0.5. Also printed: the detector alone at
``detection.conf_threshold`` (every detection its own hypothesis), whose
1 - (FN + FP) / GT is the MOTA any tracker would reach with no ID switch and no
filtering. The last line is JSON (--json FILE writes it too).
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from agent.config import load_config  # noqa: E402
from agent.track.stage import detection_settings  # noqa: E402
from agent.track.tracker import Tracker  # noqa: E402

METRICS = ["mota", "idf1", "num_switches", "num_false_positives", "num_misses", "num_objects",
           "num_unique_objects", "motp", "mostly_tracked", "num_fragmentations"]


def motmetrics():
    """motmetrics, on numpy 2 too (motmetrics 1.4.0, its latest release, calls np.asfarray, gone in numpy 2.0)."""
    if not hasattr(np, "asfarray"):
        np.asfarray = lambda a, dtype=np.float64: np.asarray(a, dtype=dtype)
    import motmetrics as mm
    return mm


def render(seed, frames, root=None):
    """(video, ground-truth json) of ``seed``, rendered by scripts/make_video.py into ``root``
    (default runs/track) when missing."""
    folder = os.path.join(root or os.path.join(ROOT, "runs", "track"), "seed{}-{}f".format(seed, frames))
    video = os.path.join(folder, "demo.mp4")
    gt = os.path.join(folder, "demo.json")
    if not (os.path.isfile(video) and os.path.isfile(gt)):
        subprocess.check_call([sys.executable, os.path.join(ROOT, "scripts", "make_video.py"), "--out", video,
                               "--seed", str(seed), "--frames", str(frames)], cwd=os.path.join(ROOT, "scripts"))
    return video, gt


def ground_truth(path):
    """[(ids, N x 4 xywh boxes)] per frame, in frame order."""
    coco = json.load(open(path))
    order = sorted(coco["images"], key=lambda im: im["frame_index"])
    by_image = {im["id"]: [] for im in order}
    for a in coco["annotations"]:
        if "track_id" not in a:
            sys.exit("{}: annotations without track_id: render it again with scripts/make_video.py".format(path))
        by_image[a["image_id"]].append(a)
    out = []
    for im in order:
        anns = by_image[im["id"]]
        out.append((np.array([a["track_id"] for a in anns], np.int64),
                    np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)))
    return out


def detections(config, video, folder):
    """[(boxes xyxy, scores, class ids)] per frame from the agent's detector, cached in ``folder``."""
    import cv2

    from agent.detect import open_detector

    detection = detection_settings(config)
    onnx = config.sizes[config.size].onnx
    digest = hashlib.sha256(open(onnx, "rb").read()).hexdigest()[:12]
    cache = os.path.join(folder, "dets-{}-{}-conf{}-iou{}.npz".format(
        config.size, digest, detection.conf_threshold, detection.iou_threshold))
    if os.path.isfile(cache):
        data = np.load(cache)
        return [(data["b%d" % i], data["s%d" % i], data["c%d" % i]) for i in range(int(data["n"]))]
    detector = open_detector(config, config.size)
    detector.detection = detection
    cap = cv2.VideoCapture(video)
    out = []
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                break
            found = detector.detect(image)
            out.append((found.boxes.astype(np.float64), found.scores.astype(np.float64),
                        found.class_ids.astype(np.int64)))
    finally:
        cap.release()
        detector.close()
    arrays = {"n": len(out)}
    for i, (b, s, c) in enumerate(out):
        arrays["b%d" % i], arrays["s%d" % i], arrays["c%d" % i] = b, s, c
    np.savez_compressed(cache, **arrays)
    return out


def xywh(boxes):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)


def evaluate(mm, truth, hypotheses, name):
    """motmetrics' summary row (a dict) of per-frame (ids, xyxy boxes) hypotheses against ``truth``."""
    acc = mm.MOTAccumulator(auto_id=True)
    for (gt_ids, gt_boxes), (ids, boxes) in zip(truth, hypotheses):
        dist = mm.distances.iou_matrix(gt_boxes, xywh(boxes), max_iou=0.5)
        acc.update(gt_ids.tolist(), list(ids), dist)
    row = mm.metrics.create().compute(acc, metrics=METRICS, name=name)
    return {k: float(row[k].iloc[0]) for k in METRICS}


def measure(config, seed=0, frames=600, root=None, images=True):
    """The result dict of ``config``'s size on the video of ``seed`` (see the module docstring);
    ``images`` False: the tracker without the frames (motion alone)."""
    video, gt_path = render(seed, frames, root)
    truth = ground_truth(gt_path)
    dets = detections(config, video, os.path.dirname(video))
    if len(dets) != len(truth):
        raise RuntimeError("{} frames decoded, {} in the ground truth".format(len(dets), len(truth)))
    mm = motmetrics()
    conf = config.detection.conf_threshold
    raw = [(list(range(1000 * i, 1000 * i + int((s >= conf).sum()))), b[s >= conf]) for i, (b, s, c) in enumerate(dets)]
    base = evaluate(mm, truth, raw, "detector")
    bound = 1.0 - (base["num_misses"] + base["num_false_positives"]) / base["num_objects"]
    hyps, ms = run(config, dets, video if images else None)
    res = evaluate(mm, truth, hyps, "tracker")
    gt_tracks = int(res["num_unique_objects"])
    return {"size": config.size, "seed": seed, "frames": len(truth), "gt_tracks": gt_tracks,
            "gt_boxes": int(res["num_objects"]), "mota": round(res["mota"], 4), "idf1": round(res["idf1"], 4),
            "id_switches": int(res["num_switches"]),
            "id_switches_per_100_gt_tracks": round(100.0 * res["num_switches"] / max(1, gt_tracks), 1),
            "fp": int(res["num_false_positives"]), "fn": int(res["num_misses"]),
            "fragmentations": int(res["num_fragmentations"]), "mostly_tracked": int(res["mostly_tracked"]),
            "motp_1_minus_iou": round(res["motp"], 4), "tracker_ms_per_frame": round(ms, 3),
            "detector_only": {"conf_threshold": conf, "fp": int(base["num_false_positives"]),
                              "fn": int(base["num_misses"]), "mota_bound": round(bound, 4)},
            "images": bool(images), "tracking": dict(config.tracking.__dict__)}


def images(video):
    """The video's frames (BGR), decoded one at a time."""
    import cv2

    cap = cv2.VideoCapture(video)
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                return
            yield image
    finally:
        cap.release()


def run(config, dets, video=None):
    """Hypotheses per frame from the tracker (fed ``video``'s frames alongside the detections, for
    its appearance cue; none without ``video``), and its mean cost per frame in ms (the updates only)."""
    tracker = Tracker(config.tracking)
    hyps = []
    frames = images(video) if video else iter(())
    spent = 0.0
    for i, (b, s, c) in enumerate(dets):
        image = next(frames, None)
        if video and image is None:
            raise RuntimeError("{}: {} frames decoded, {} with detections".format(video, i, len(dets)))
        t0 = time.perf_counter()
        up = tracker.update(b, s, c, i / 30.0, image)
        spent += time.perf_counter() - t0
        hyps.append(([t.id for t in up.tracks], [t.box for t in up.tracks]))
    return hyps, spent * 1000.0 / max(1, len(dets))


def parse_set(items):
    """--set a.b=value (YAML value) -> nested overrides."""
    import yaml

    out = {}
    for item in items:
        key, _, value = item.partition("=")
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="accurate", help="model size (fast, accurate; default accurate)")
    ap.add_argument("--seed", type=int, default=0, help="make_video.py seed (0: the demo video)")
    ap.add_argument("--frames", type=int, default=600, help="frames to render (default 600, the demo's)")
    ap.add_argument("--config", help="agent config file (default: the embedded defaults)")
    ap.add_argument("--set", action="append", default=[], help="override a config key: tracking.min_hits=3")
    ap.add_argument("--no-images", action="store_true",
                    help="track without the frames (no appearance cue: motion alone)")
    ap.add_argument("--json", help="also write the result to this file")
    args = ap.parse_args(argv)
    overrides = parse_set(args.set)
    overrides["size"] = args.size
    config = load_config(args.config, overrides, environ={})
    result = measure(config, args.seed, args.frames, images=not args.no_images)
    print("{size} seed {seed}: MOTA {mota:.3f}  IDF1 {idf1:.3f}  ID switches {id_switches} "
          "({id_switches_per_100_gt_tracks} per 100 GT tracks, {gt_tracks} GT tracks)  FP {fp}  FN {fn}  "
          "of {gt_boxes}".format(**result))
    print("detector alone at conf {conf_threshold}: FP {fp}  FN {fn}  MOTA bound {mota_bound:.3f}".format(
        **result["detector_only"]))
    print(json.dumps(result, sort_keys=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, sort_keys=True)
    return result


if __name__ == "__main__":
    main()
