"""INT8 on ONNX Runtime: accuracy drop against speed-up for each quantization recipe (benchmarks/README.md).

Each recipe is quantized with the build's own code (agent.engines.quantize: ONNX Runtime's
``quantize_static``, QDQ, per-channel) from the calib split, then measured like the build's
accuracy gate (agent.accuracy.measure_map through the agent's CPU detector) and like the
benchmark's baseline (a bare ``session.run`` loop at each thread count, the best kept),
FP32 and INT8 sessions timed round-robin, one frame each, so that load from other processes
hits both alike.

    nice -n 19 python benchmarks/int8_frontier.py --size accurate            # the frontier, on val
    nice -n 19 python benchmarks/int8_frontier.py --size accurate --scan     # per-block sensitivity, on calib

``--scan``: everything quantized but one block kept in float, for each block in turn,
mAP50-95 on the calib split: the blocks whose float copy buys the most are the sensitive ones.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from agent import accuracy, coco  # noqa: E402
from agent.config import data_path, load_config  # noqa: E402
from agent.detect import detector_on  # noqa: E402
from agent.engines import quantize as q  # noqa: E402
from agent.measure import bare_session  # noqa: E402

RECIPES = [  # (label, method, calib images, blocks kept in float)
    ("naive: all nodes, minmax, 32 img", "minmax", 32, ()),
    ("all nodes, entropy, 32 img", "entropy", 32, ()),
    ("all nodes, percentile, 32 img", "percentile", 32, ()),
    ("tail float, minmax, 1 img", "minmax", 1, ("tail",)),
    ("tail float, minmax, 8 img", "minmax", 8, ("tail",)),
    ("tail float, minmax, 32 img", "minmax", 32, ("tail",)),
    ("tail float, minmax, 64 img", "minmax", 64, ("tail",)),
    ("tail float, entropy, 32 img", "entropy", 32, ("tail",)),
    ("tail float, percentile, 32 img", "percentile", 32, ("tail",)),
    ("heads+tail float, minmax, 32 img", "minmax", 32, ("heads", "tail")),
    ("box branches+tail float, minmax, 32 img", "minmax", 32,
     ("heads.0/box", "heads.1/box", "heads.2/box", "tail")),
]


def speed(fp32_path, int8_path, blob, frames):
    """(fp32 ms, int8 ms, fp32 threads, int8 threads): p50 of a bare ``session.run`` loop of each model
    at its best thread count (1..cores, spinning as ONNX Runtime defaults).

    Every (model, threads) session runs in turn, one frame each, round-robin: load from other
    processes on a shared box hits all of them alike, so the ratio holds even when the times move.
    """
    sessions = []
    for path in (fp32_path, int8_path):
        for threads in range(1, (os.cpu_count() or 1) + 1):
            s = bare_session(path, threads)
            feed = {s.get_inputs()[0].name: blob}
            for _ in range(3):
                s.run(None, feed)
            sessions.append((path, threads, s, feed, []))
    for _ in range(frames):
        for _, _, s, feed, times in sessions:
            t0 = time.perf_counter()
            s.run(None, feed)
            times.append((time.perf_counter() - t0) * 1000.0)
    best = {}
    for path, threads, _, _, times in sessions:
        ms = float(np.median(times))
        if path not in best or ms < best[path][0]:
            best[path] = (ms, threads)
    return best[fp32_path][0], best[int8_path][0], best[fp32_path][1], best[int8_path][1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="accurate")
    ap.add_argument("--images", type=int, default=200, help="val images for mAP (the gate's default bound)")
    ap.add_argument("--frames", type=int, default=100, help="timed frames per (model, threads) session")
    ap.add_argument("--scan", action="store_true", help="per-block sensitivity on the calib split")
    ap.add_argument("--only", default=None, help="comma-separated recipe numbers (1-based)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    config = load_config(None, check_files=False)
    onnx_path = config.sizes[args.size].onnx
    calib = data_path("data", "demo", "calib")
    val = data_path("data", "demo", "val")
    tmp = tempfile.mkdtemp(prefix="int8-frontier-")
    rows = []

    def measure_map(path, split, images):
        det = detector_on(config, args.size, "onnxruntime", path)
        try:
            return accuracy.measure_map(det, coco.open_dataset(split), images)["map50_95"]
        finally:
            det.close()

    if args.scan:
        import onnx

        model = q.to_opset(onnx.load(onnx_path))
        names = [b for b, _ in q.blocks(model)]
        ref = measure_map(onnx_path, calib, 0)
        print("fp32 on calib: mAP50-95 {:.4f}".format(ref), flush=True)
        base_path = os.path.join(tmp, "all.onnx")
        q.quantize(onnx_path, base_path, q.Recipe("minmax", 32, ()), os.path.join(calib, "images"))
        base = measure_map(base_path, calib, 0)
        print("all int8: {:.4f} (drop {:.4f})".format(base, ref - base), flush=True)
        for b in names:
            path = os.path.join(tmp, "scan.onnx")
            q.quantize(onnx_path, path, q.Recipe("minmax", 32, (b,)), os.path.join(calib, "images"))
            m = measure_map(path, calib, 0)
            rows.append({"block": b, "map50_95": m, "drop": round(ref - m, 4), "recovered": round(m - base, 4)})
            print("{:16s} float: mAP50-95 {:.4f}  drop {:+.4f}  recovered {:+.4f}".format(
                b, m, ref - m, m - base), flush=True)
    else:
        import cv2

        from agent.preprocess import Letterbox

        det = detector_on(config, args.size, "onnxruntime", onnx_path)
        w, h = det.input_size
        det.close()
        ds = coco.open_dataset(val)
        blob, _ = Letterbox(w, h).run(cv2.imread(ds.image_path(ds.images[0])))
        blob = blob.copy()
        ref = measure_map(onnx_path, val, args.images)
        print("fp32: mAP50-95 {:.4f} on {} val images".format(ref, args.images), flush=True)
        chosen = [RECIPES[int(i) - 1] for i in args.only.split(",")] if args.only else RECIPES
        for label, method, n, keep in chosen:
            path = os.path.join(tmp, "r.onnx")
            t0 = time.time()
            q.quantize(onnx_path, path, q.Recipe(method, n, keep), os.path.join(calib, "images"))
            qt = time.time() - t0
            m = measure_map(path, val, args.images)
            f_ms, i_ms, f_t, i_t = speed(onnx_path, path, blob, args.frames)
            row = {"recipe": label, "method": method, "calib_images": n, "keep_float": list(keep),
                   "map50_95": m, "fp32_map50_95": ref, "drop": round(ref - m, 4), "fp32_ms": round(f_ms, 2),
                   "int8_ms": round(i_ms, 2), "fp32_threads": f_t, "int8_threads": i_t,
                   "speedup": round(f_ms / i_ms, 2), "quantize_s": round(qt, 1)}
            rows.append(row)
            print("| {} | {:.3f} | {:+.3f} | {:.1f} ({}t) | {:.1f} ({}t) | {:.2f}x | {:.0f} s |".format(
                label, m, m - ref, f_ms, f_t, i_ms, i_t, f_ms / i_ms, qt), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
