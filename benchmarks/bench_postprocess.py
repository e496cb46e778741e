"""Post-processing speed: our NMS vs cv2.dnn.NMSBoxes, and decode of a YOLOv8 output.

Run by hand: ``python benchmarks/bench_postprocess.py``. All figures come from one run;
cv2 gets its inputs as prebuilt lists (its fastest form), so its conversion is not timed.
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402

from agent.backends.base import TensorSpec  # noqa: E402
from agent.postprocess import make_decoder, nms  # noqa: E402

REPEATS = 15


def median_ms(fn, repeats=REPEATS):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def clustered(rng, n, objects=40):
    """Detector-like candidates: jittered boxes around a few dozen objects."""
    centers = rng.uniform(0, 640, (objects, 2))
    sizes = rng.uniform(20, 150, (objects, 2))
    k = rng.integers(0, objects, n)
    wh = sizes[k] * rng.uniform(0.8, 1.2, (n, 2))
    xy = centers[k] + rng.normal(0, 0.15, (n, 2)) * sizes[k] - wh / 2
    return np.concatenate([xy, xy + wh], 1), k


def uniform(rng, n):
    """Boxes spread over the image, few overlaps: many survivors (worst case for cv2)."""
    xy = rng.uniform(0, 640, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(5, 80, (n, 2))], 1), rng.integers(0, 80, n)


def bench_nms(rng):
    print("NMS (iou 0.45), median of {} runs:".format(REPEATS))
    for label, gen in (("clustered", clustered), ("uniform", uniform)):
        for n in (1000, 5000):
            boxes, cls = gen(rng, n)
            scores = rng.uniform(0.25, 1.0, n).astype(np.float32)
            rects = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
            slist = scores.tolist()
            cv_keep = np.asarray(cv2.dnn.NMSBoxes(rects, slist, 0.0, 0.45), np.int64).reshape(-1)
            ours = nms(boxes, scores, 0.45)
            t_cv = median_ms(lambda: cv2.dnn.NMSBoxes(rects, slist, 0.0, 0.45))
            t_us = median_ms(lambda: nms(boxes, scores, 0.45))
            print(
                "  class-agnostic {:9s} n={:5d}: cv2 {:8.3f} ms, ours {:8.3f} ms, speed-up x{:5.2f}, "
                "kept {}, same keep set: {}".format(
                    label, n, t_cv, t_us, t_cv / t_us, len(ours), "yes" if np.array_equal(ours, cv_keep) else "no"
                )
            )
            if hasattr(cv2.dnn, "NMSBoxesBatched"):
                cls = (cls % 80).astype(np.int32)
                clist = cls.tolist()
                cv_b = np.asarray(cv2.dnn.NMSBoxesBatched(rects, slist, clist, 0.0, 0.45), np.int64).reshape(-1)
                ours_b = nms(boxes, scores, 0.45, class_ids=cls)
                t_cv = median_ms(lambda: cv2.dnn.NMSBoxesBatched(rects, slist, clist, 0.0, 0.45))
                t_us = median_ms(lambda: nms(boxes, scores, 0.45, class_ids=cls))
                print(
                    "  class-aware    {:9s} n={:5d}: cv2 {:8.3f} ms, ours {:8.3f} ms, speed-up x{:5.2f}, "
                    "kept {}, same keep set: {} (vs NMSBoxesBatched)".format(
                        label, n, t_cv, t_us, t_cv / t_us, len(ours_b),
                        "yes" if set(ours_b.tolist()) == set(cv_b.tolist()) else "no",
                    )
                )


def bench_decode(rng):
    n, nc = 8400, 80
    out = np.empty((1, 4 + nc, n), np.float32)
    out[0, :4] = rng.uniform(0, 640, (4, n))
    logits = rng.normal(-7.0, 1.5, (nc, n))
    # A few objects: neighbouring anchors with high scores, as a detector produces.
    for a in rng.integers(0, n - 20, 12):
        logits[rng.integers(0, nc), a:a + 20] = rng.normal(1.0, 1.5, 20)
    out[0, 4:] = 1.0 / (1.0 + np.exp(-logits))
    dec = make_decoder([TensorSpec("output0", [1, 4 + nc, n], "float32")])
    outputs = {"output0": out}
    kept = len(dec.decode(outputs, 0.25, 1000)[1])
    t = median_ms(lambda: dec.decode(outputs, 0.25, 1000), repeats=200)
    print("decode [1, 84, 8400] (conf 0.25, {} candidates): {:.3f} ms (target 1 ms: x{:.1f} under)".format(kept, t, 1.0 / t))


def main():
    rng = np.random.default_rng(0)
    print("numpy {}, OpenCV {}".format(np.__version__, cv2.__version__))
    bench_nms(rng)
    bench_decode(rng)


if __name__ == "__main__":
    main()
