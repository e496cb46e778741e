"""Post-processing speed: our NMS against every library NMS at hand, and decode against numpy.

Run by hand: ``python benchmarks/bench_postprocess.py``. All figures come from one run
(medians of 21). The libraries get their fastest form: cv2 its inputs as prebuilt
Python lists (not timed; a column also times it from numpy arrays, as a pipeline has
them), torchvision (when installed) tensors. Ours is ``agent.postprocess.nms`` as the
agent runs it (the C path of agent/native, where built), without the C path (OpenCV where
it wins, else numpy: the agent before it) and numpy only (no C path and JetPack's OpenCV).
Clustered sets are detector-like (jittered boxes around 40 objects, 5 classes);
sparse ones spread over the image (most boxes kept). Every keep set is checked equal.
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402

from agent import native  # noqa: E402
from agent.backends.base import TensorSpec  # noqa: E402
from agent.postprocess import make_decoder, nms  # noqa: E402

REPEATS = 21


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


def _torchvision():
    try:
        import torch
        import torchvision
    except ImportError:
        return None
    torch.set_num_threads(1)
    return torch, torchvision


def without(*hidden):
    """Run fn with some of the NMS's paths hidden: ``hidden`` are (module, attribute) pairs set to None."""
    def run(fn):
        saved = [getattr(m, k) for m, k in hidden]
        for m, k in hidden:
            setattr(m, k, None)
        try:
            return fn()
        finally:
            for (m, k), v in zip(hidden, saved):
                setattr(m, k, v)
    return run


def bench_nms(rng):
    module = sys.modules["agent.postprocess.nms"]
    no_native = without((native, "LIB"))  # OpenCV where it wins, else numpy: the agent before the C path
    numpy_only = without((native, "LIB"), (module, "_NMS_BOXES"))  # JetPack's OpenCV, no compiler at install
    if native.LIB is None:
        print("the native fast path is not built (agent/native): 'ours' is the numpy/OpenCV path")
    tv = _torchvision()
    print("NMS (iou 0.45), ms, median of {} runs; library = fastest library / ours, numpy = numpy only / ours "
          "(>= 1: ours as fast or faster)".format(REPEATS))
    print("| set | n | classes | ours | ours without C | numpy only | cv2 lists | cv2 from arrays | torchvision "
          "| library / ours | numpy / ours |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, gen in (("clustered", clustered), ("sparse", uniform)):
        for n in (100, 1000, 5000, 10000):
            boxes, k = gen(rng, n)
            cls = (k % 5).astype(np.int32)
            scores = rng.uniform(0.25, 1.0, n).astype(np.float32)
            rects = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
            rl, sl, cl = rects.tolist(), scores.tolist(), cls.tolist()
            for aware in (False, True):
                ids = cls if aware else None
                if aware:
                    lib = lambda: cv2.dnn.NMSBoxesBatched(rl, sl, cl, 0.0, 0.45)  # noqa: E731
                    lib_np = lambda: cv2.dnn.NMSBoxesBatched(rects.tolist(), scores, cls, 0.0, 0.45)  # noqa: E731
                else:
                    lib = lambda: cv2.dnn.NMSBoxes(rl, sl, 0.0, 0.45)  # noqa: E731
                    lib_np = lambda: cv2.dnn.NMSBoxes(rects.tolist(), scores, 0.0, 0.45)  # noqa: E731
                ours = lambda: nms(boxes, scores, 0.45, class_ids=ids)  # noqa: E731
                want = sorted(np.asarray(lib(), np.int64).reshape(-1).tolist())
                for run in (ours, lambda: no_native(ours), lambda: numpy_only(ours)):
                    assert sorted(run().tolist()) == want, (label, n, aware)
                t_us = median_ms(ours)
                t_old = no_native(lambda: median_ms(ours))
                t_np = numpy_only(lambda: median_ms(ours))
                t_lib, t_lib_np = median_ms(lib), median_ms(lib_np)
                t_tv = None
                if tv:
                    torch, torchvision = tv
                    tb, ts, tc = torch.from_numpy(boxes), torch.from_numpy(scores.astype(np.float64)), torch.from_numpy(cls)
                    op = ((lambda: torchvision.ops.batched_nms(tb, ts, tc, 0.45)) if aware
                          else (lambda: torchvision.ops.nms(tb, ts, 0.45)))
                    t_tv = median_ms(op)
                fastest = min(t for t in (t_lib, t_lib_np, t_tv) if t is not None)
                print("| {} | {} | {} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {} | **{:.2f}** | **{:.2f}** |".format(
                    label, n, "5, aware" if aware else "agnostic", t_us, t_old, t_np, t_lib, t_lib_np,
                    "{:.3f}".format(t_tv) if t_tv is not None else "-", fastest / t_us, t_np / t_us))


def bench_decode(rng):
    from agent.postprocess.decode import decode_v8_reference

    n, nc = 8400, 80
    out = np.empty((1, 4 + nc, n), np.float32)
    out[0, :4] = rng.uniform(0, 640, (4, n))
    logits = rng.normal(-7.0, 1.5, (nc, n))
    # A few objects: neighbouring anchors with high scores, as a detector produces.
    for a in rng.integers(0, n - 20, 12):
        logits[rng.integers(0, nc), a:a + 20] = rng.normal(1.0, 1.5, 20)
    out[0, 4:] = 1.0 / (1.0 + np.exp(-logits))
    hot = out.copy()
    hot[0, 4:] = rng.uniform(0.002, 1.0, (nc, n))  # every anchor above 0.001: the mAP setting
    dec = make_decoder([TensorSpec("output0", [1, 4 + nc, n], "float32")])
    print("decode [1, 84, 8400], ms, median of 101 runs (reference: agent.postprocess.decode.decode_v8_reference)")
    for label, arr, conf, top_k in (("detector-like", out, 0.25, 1000), ("detector-like", out, 0.001, 30000),
                                    ("all anchors hot", hot, 0.001, 30000)):
        outputs = {"output0": arr}
        kept = len(dec.decode(outputs, conf, top_k)[1])
        t = median_ms(lambda: dec.decode(outputs, conf, top_k), repeats=101)
        r = median_ms(lambda: decode_v8_reference(arr, conf, top_k), repeats=101)
        print("  {} conf {}: {} candidates, ours {:.3f}, reference {:.3f}, ratio {:.2f}".format(
            label, conf, kept, t, r, r / t))


def main():
    rng = np.random.default_rng(0)
    print("numpy {}, OpenCV {}".format(np.__version__, cv2.__version__))
    bench_nms(rng)
    bench_decode(rng)


if __name__ == "__main__":
    main()
