"""GPU kernels (agent/kernels/*.cu) timed on the GPU at hand; needs CuPy (or pycuda) and a CUDA device.

* NMS at 1k/5k/10k boxes, boxes already on the device, class-agnostic, against
  ``torchvision.ops.nms`` on the same GPU (ratio = ours / torchvision) and the
  numpy reference on the CPU; kept sets are checked to agree. Then the GPU time of
  each of our three kernels (CUDA events), to show where the time goes.
* preprocess: one 1080p BGR frame -> 640x640 letterbox, frame already on the
  device and with the upload.
* decode: a YOLOv8 [1, 84, 8400] output, and decode + NMS on the device.

Median of --iters runs after --warmup runs, wall clock around a stream
synchronize (what the agent pays per frame, launch overhead included).
Usage: python benchmarks/bench_kernels_gpu.py [--iters 200] [--warmup 20]
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.kernels import gpu  # noqa: E402
from agent.postprocess.nms import nms as nms_ref  # noqa: E402


def sample_ms(fn, sync, iters, warmup):
    """Wall ms of ``iters`` synchronized calls after ``warmup`` untimed ones (bench_detector_gpu uses it too)."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def timeit(fn, sync, iters, warmup):
    return float(np.median(sample_ms(fn, sync, iters, warmup)))


class EventRuntime(gpu.CupyRuntime):
    """CupyRuntime that, while ``events`` is a list, records a CUDA event after every launch:
    the GPU time of each kernel (sort, mask, keep) without touching the wrappers."""

    events = None

    def launch(self, fn, grid, block, args):
        gpu.CupyRuntime.launch(self, fn, grid, block, args)
        if self.events is not None:
            e = self.cupy.cuda.Event()
            e.record()
            self.events.append(e)


def kernel_times(rt, run, iters):
    """Median GPU ms of each launch that ``run()`` makes, in launch order."""
    rows = []
    for _ in range(iters):
        start = rt.cupy.cuda.Event()
        start.record()
        rt.events = [start]
        run()
        rt.sync()
        ev, rt.events = rt.events, None
        rows.append([rt.cupy.cuda.get_elapsed_time(a, b) for a, b in zip(ev, ev[1:])])
    return [float(np.median(col)) for col in zip(*rows)]


def boxes(rng, n):
    # A 1/16 px grid keeps products exact in float32, so no pair near the threshold is decided
    # differently by torchvision's FMA-contracted IoU, ours and the float64 reference.
    xy = np.round(rng.uniform(0, 600, (n, 2)) * 16) / 16
    b = np.concatenate([xy, xy + np.round(rng.uniform(10, 120, (n, 2)) * 16) / 16], 1).astype(np.float32)
    return b, rng.permutation(n).astype(np.float32) / n  # distinct scores: comparable with torchvision


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()
    import cupy

    rt = EventRuntime()
    mods = gpu.load_modules(rt)  # NVRTC from the .cu sources
    dev = cupy.cuda.Device(0)
    props = cupy.cuda.runtime.getDeviceProperties(0)
    print("device: {} (cc {}), CuPy {}, median of {} after {} warm-up".format(
        props["name"].decode(), dev.compute_capability, cupy.__version__, args.iters, args.warmup))
    sync = rt.sync
    try:
        import torch
        import torchvision
    except ImportError:
        torch = None
        print("torchvision not installed: no torchvision ratio")
    rng = np.random.default_rng(0)

    print("\nNMS (iou 0.5, class-agnostic, boxes on device)")
    print("{:>7} {:>10} {:>14} {:>7} {:>12} {:>6}".format("boxes", "ours ms", "torchvision ms", "ratio", "numpy ms", "kept"))
    for n in (1000, 5000, 10000):
        b, s = boxes(rng, n)
        nms = gpu.GpuNms(rt, mods["nms"], max_boxes=n)
        try:
            rt.htod(rt.ptr(nms.boxes), b)
            rt.htod(rt.ptr(nms.scores), s)
            run = lambda: nms.run_device(rt.ptr(nms.boxes), rt.ptr(nms.scores), n, 0.5)  # noqa: E731
            ours = timeit(run, sync, args.iters, args.warmup)
            keep = run()
            ref = nms_ref(b, s, 0.5)
            assert keep.tolist() == ref.tolist(), "GPU NMS disagrees with the numpy reference"
            t0 = time.perf_counter()
            nms_ref(b, s, 0.5)
            cpu = 1e3 * (time.perf_counter() - t0)
            tv = float("nan")
            if torch is not None:
                tb, ts = torch.from_numpy(b).cuda(), torch.from_numpy(s).cuda()
                tv = timeit(lambda: torchvision.ops.nms(tb, ts, 0.5).cpu(), torch.cuda.synchronize,
                            args.iters, args.warmup)
                tk = torchvision.ops.nms(tb, ts, 0.5).cpu().numpy()
                assert tk.tolist() == keep.tolist(), "GPU NMS disagrees with torchvision"
            print("{:>7} {:>10.3f} {:>14.3f} {:>7.2f} {:>12.2f} {:>6}".format(n, ours, tv, ours / tv, cpu, len(keep)))
            sort_ms, mask_ms, keep_ms = kernel_times(rt, run, args.iters)
            print("{:>7} GPU time per kernel: sort {:.3f} ms, mask {:.3f} ms, keep {:.3f} ms".format(
                "", sort_ms, mask_ms, keep_ms))
        finally:
            nms.close()

    print("\npreprocess 1920x1080 BGR -> 640x640 letterbox")
    pre = gpu.GpuPreprocess(rt, mods["preprocess"], 640, 640)
    try:
        frame = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
        pre(frame)
        dev_only = timeit(lambda: pre.run_device(rt.ptr(pre.frame), 1920, 1080, 1920 * 3), sync, args.iters,
                          args.warmup)
        with_upload = timeit(lambda: pre(frame), sync, args.iters, args.warmup)
        print("  kernel only {:.3f} ms, with pageable upload {:.3f} ms".format(dev_only, with_upload))
    finally:
        pre.close()

    print("\ndecode YOLOv8 [1, 84, 8400], conf 0.25")
    dec = gpu.GpuDecode(rt, mods["decode"], 80, 8400)
    nms = gpu.GpuNms(rt, mods["nms"], max_boxes=8400)
    try:
        pred = np.empty((1, 84, 8400), np.float32)
        pred[0, :2] = rng.uniform(0, 640, (2, 8400))
        pred[0, 2:4] = rng.uniform(5, 200, (2, 8400))
        pred[0, 4:] = rng.random((80, 8400)) ** 8
        rt.htod(rt.ptr(dec.pred), pred)
        t = timeit(lambda: dec.run_device(rt.ptr(dec.pred), 0.25), sync, args.iters, args.warmup)
        n = dec.run_device(rt.ptr(dec.pred), 0.25)
        t2 = timeit(lambda: dec.detect(nms, rt.ptr(dec.pred), 0.25, 0.45), sync, args.iters, args.warmup)
        print("  decode {:.3f} ms ({} candidates); decode + NMS + download {:.3f} ms ({} kept)".format(
            t, n, t2, len(dec.detect(nms, rt.ptr(dec.pred), 0.25, 0.45)[1])))
    finally:
        nms.close()
        dec.close()


if __name__ == "__main__":
    main()
