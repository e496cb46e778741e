"""Evaluate an exported ONNX detector on a COCO split with onnxruntime: mAP and CPU latency."""
import argparse
import ast
import contextlib
import io
import json
import time
from pathlib import Path

import cv2
import numpy as np


def letterbox(img, size, pad=114):
    """Resize keeping aspect and pad to size x size (Ultralytics rounding); returns img, r, (dx, dy)."""
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    nw, nh = round(w * r), round(h * r)
    dx, dy = (size - nw) / 2, (size - nh) / 2
    top, left = round(dy - 0.1), round(dx - 0.1)
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    img = cv2.copyMakeBorder(img, top, size - nh - top, left, size - nw - left,
                             cv2.BORDER_CONSTANT, value=(pad, pad, pad))
    return img, r, (left, top)


def to_input(img_bgr, size):
    """BGR image -> float32 RGB 0..1 tensor (1, 3, size, size); returns tensor, r, offset."""
    img, r, off = letterbox(img_bgr, size)
    x = img[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    return np.ascontiguousarray(x), r, off


def nms(boxes, scores, iou_thres):
    """Greedy NMS on xyxy boxes (numpy reference); returns kept indices, best first."""
    order = scores.argsort()[::-1]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.clip(rb - lt, 0, None).prod(1)
        iou = inter / (area[i] + area[rest] - inter + 1e-9)
        order = rest[iou <= iou_thres]
    return np.array(keep, dtype=np.int64)


def postprocess(out, conf=0.001, iou=0.6, max_det=300, max_nms=3000):
    """Decode one [4 + nc, N] output: xyxy boxes, scores, class ids after class-aware NMS."""
    scores_all = out[4:]
    cls = scores_all.argmax(0)
    scores = scores_all[cls, np.arange(out.shape[1])]
    keep = scores > conf
    cxcywh, cls, scores = out[:4, keep].T, cls[keep], scores[keep]
    top = scores.argsort()[::-1][:max_nms]
    cxcywh, cls, scores = cxcywh[top], cls[top], scores[top]
    boxes = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)
    # Offsetting boxes by class keeps NMS from suppressing across classes, in one pass.
    kept = nms(boxes + cls[:, None] * 4096.0, scores, iou)[:max_det]
    return boxes[kept], scores[kept], cls[kept]


def to_coco(image_id, boxes, scores, cls, r, off):
    """Detections in letterboxed pixels -> COCO result dicts in original image pixels."""
    boxes = (boxes - [off[0], off[1], off[0], off[1]]) / r
    return [{"image_id": image_id, "category_id": int(c) + 1, "score": round(float(s), 5),
             "bbox": [round(float(b[0]), 2), round(float(b[1]), 2),
                      round(float(b[2] - b[0]), 2), round(float(b[3] - b[1]), 2)]}
            for b, s, c in zip(boxes, scores, cls)]


def coco_map(gt_json, results):
    """COCO mAP50-95 and mAP50 of result dicts against a ground-truth file."""
    from faster_coco_eval import COCO, COCOeval_faster
    if not results:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_json))
        ev = COCOeval_faster(gt, gt.loadRes(results), iouType="bbox", print_function=lambda *a: None)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def session(model, threads):
    """onnxruntime CPU session with a fixed thread count; returns session, input size, names."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    size = ast.literal_eval(meta["imgsz"])[0]
    return sess, size, ast.literal_eval(meta["names"])


def evaluate(model, split, threads=2):
    """mAP50-95 and mAP50 of an ONNX model on a split folder (images/ + instances.json)."""
    sess, size, _ = session(model, threads)
    split = Path(split)
    gt = json.load(open(split / "instances.json"))
    results = []
    for im in gt["images"]:
        x, r, off = to_input(cv2.imread(str(split / "images" / im["file_name"])), size)
        out = sess.run(None, {"images": x})[0][0]
        results += to_coco(im["id"], *postprocess(out), r, off)
    return coco_map(split / "instances.json", results)


def latency(model, threads=2, runs=50, warmup=5):
    """Median and p90 onnxruntime inference time in ms (model only, no pre/post)."""
    sess, size, _ = session(model, threads)
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    times = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        sess.run(None, {"images": x})
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times)), float(np.percentile(times, 90))


def main(argv=None):
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("models", nargs="+", help="ONNX files")
    ap.add_argument("--data", default="data/demo/val", help="split folder (default data/demo/val)")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    ap.add_argument("--runs", type=int, default=50, help="timed runs for latency")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    report = {}
    for model in args.models:
        m5095, m50 = evaluate(model, args.data, args.threads)
        med, p90 = latency(model, args.threads, args.runs)
        report[Path(model).name] = dict(map50=round(m50, 4), map50_95=round(m5095, 4),
                                        latency_ms_median=round(med, 2), latency_ms_p90=round(p90, 2))
        print(f"model={model} mAP50={m50:.4f} mAP50-95={m5095:.4f} "
              f"latency_ms_median={med:.2f} latency_ms_p90={p90:.2f} threads={args.threads}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
