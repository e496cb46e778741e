"""The fused GPU path end to end against the bare engine (issue 7), on a CUDA GPU through CuPy.

    python benchmarks/bench_detector_gpu.py [--ckpt runs/demo-fast.pt] [--size fast] [--frames 200]

The engine is the demo detector (scripts/detector.py) in PyTorch on the same GPU,
replayed as a CUDA graph (closer to a TensorRT engine's launch cost than eager
PyTorch; TensorRT itself does not fit on the lent GPU machine). Its input and
output are plain device buffers, as TensorRT's bindings are, and GpuDetector is
given their addresses, exactly as agent/backends/tensorrt.py does. Measured on a
1920x1080 BGR frame with the default DetectionConfig, median and p95 over
``--frames`` runs after warm-up:

* bare engine: ``execute()`` on a ready input, synchronized;
* fused path: ``GpuDetector.detect(frame)``: upload, letterbox, engine, decode,
  NMS, kept detections back to the host (what the TensorRT backend runs);
* CPU pre/post: OpenCV letterbox, copy in, engine, copy out, numpy decode + NMS
  (the agent's path for engines the fused path does not take).

The ratio to the bare engine depends on the engine's speed; the overhead in ms is
the figure that carries over to another GPU (on a Jetson the engine takes ms, not
tens of microseconds). Before timing, the fused path's detections are checked
against the CPU decode + NMS of the same engine output (exact), and the script
exits 1 on a mismatch.

``--zero-copy`` puts the camera frame in mapped pinned memory the preprocess kernel reads
in place (``tensorrt.zero_copy: true``) instead of uploading it. Whether that wins depends
on the device (on Jetson the GPU reads mapped memory uncached); to decide the setting on a
Jetson, run the script twice, with and without ``--zero-copy``, and compare the "fused GPU
path" and "fused stages: preprocess" rows.

``--runtime host`` runs everything on the CPU (host-compiled kernels, PyTorch on
the CPU): a dry run of this script, which tests/test_detector_host.py runs.
Without ``--ckpt`` the weights are random (the head's prior keeps scores low);
the timings barely depend on them.
"""

import argparse
import importlib.util
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from agent.config import DetectionConfig  # noqa: E402
from agent.kernels import build, gpu  # noqa: E402
from agent.detect.fused import GpuDetector  # noqa: E402
from agent.postprocess.decode import AnchorDecoder  # noqa: E402
from agent.postprocess.nms import postprocess  # noqa: E402
from agent.preprocess import Letterbox, to_frame  # noqa: E402
from bench_kernels_gpu import sample_ms  # noqa: E402  (this folder is on sys.path: scripts run from it)


def _host_runtime(tmp):
    """The host runtime: kernels compiled for the CPU, 'device' memory is host memory."""
    from agent.kernels.host import HostRuntime

    return HostRuntime.build(tmp)


class TorchEngine(object):
    """The demo detector on one device, with fixed input and output buffers (TensorRT's bindings)."""

    def __init__(self, torch, size, ckpt, device, imgsz=None, graph=True):
        import detector

        names = ["circle", "square", "triangle", "star", "car"]
        state = None
        if ckpt:
            c = torch.load(ckpt, map_location="cpu", weights_only=False)
            size, names, state = c["size"], c["names"], c["state_dict"]
        self.torch, self.size, self.names = torch, size, names
        model = detector.build(size, len(names))
        if state is not None:
            model.load_state_dict(state)
        model.eval()
        model.export = True
        self.model = model.to(device)
        s = int(imgsz or model.imgsz)
        self.inp = torch.zeros(1, 3, s, s, device=device)
        with torch.no_grad():
            self.out = torch.empty_like(model(self.inp))
        # The anchor grid is cached on the CPU; keep it on the device (no copy in the graph).
        model._grid = {k: (p.to(device), st.to(device)) for k, (p, st) in model._grid.items()}
        self.graph = None
        if graph and device == "cuda":
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(3):
                    self.out.copy_(model(self.inp))
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), torch.no_grad():
                self.out.copy_(model(self.inp))

    def execute(self):
        if self.graph is not None:
            self.graph.replay()
        else:
            with self.torch.no_grad():
                self.out.copy_(self.model(self.inp))


def scene(rng, w, h, shapes=12):
    """A 1080p frame with the demo classes' kind of shapes on a gradient."""
    import cv2

    img = np.empty((h, w, 3), np.uint8)
    img[:] = np.linspace(40, 200, w, dtype=np.uint8)[None, :, None]
    for _ in range(shapes):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y, r = int(rng.integers(50, w - 50)), int(rng.integers(50, h - 50)), int(rng.integers(20, 150))
        if rng.random() < 0.5:
            cv2.circle(img, (x, y), r, c, -1)
        else:
            cv2.rectangle(img, (x - r, y - r), (x + r, y + r), c, -1)
    return img


def timed(fn, sync, frames, warmup):
    """(p50, p95) wall ms of synchronized calls."""
    t = sample_ms(fn, sync, frames, warmup)
    return float(np.percentile(t, 50)), float(np.percentile(t, 95))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", help="training checkpoint (scripts/train.py), e.g. runs/demo-fast.pt")
    ap.add_argument("--size", default="fast", choices=("fast", "accurate"), help="architecture without --ckpt")
    ap.add_argument("--imgsz", type=int, help="engine input size (default: the size's own)")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--runtime", default="cupy", choices=("cupy", "host"))
    ap.add_argument("--no-graph", action="store_true", help="eager PyTorch instead of a CUDA graph")
    ap.add_argument("--zero-copy", action="store_true", help="camera frame in mapped host memory (tensorrt.zero_copy)")
    args = ap.parse_args(argv)

    import torch

    tmp = tempfile.mkdtemp(prefix="bench-detector-")
    if args.runtime == "host":
        rt, mods = _host_runtime(tmp)
        device, sync = "cpu", (lambda: None)
        where = "CPU dry run (host-compiled kernels)"
    else:
        import cupy

        if not torch.cuda.is_available():
            sys.exit("bench_detector_gpu: PyTorch sees no CUDA device (use --runtime host for a dry run)")
        rt, device = gpu.CupyRuntime(), "cuda"
        mods = gpu.load_modules(rt)  # NVRTC from the .cu sources
        sync = torch.cuda.synchronize
        where = "{} (cc {}), CuPy {}".format(torch.cuda.get_device_name(0), cupy.cuda.Device(0).compute_capability,
                                            cupy.__version__)
    eng = TorchEngine(torch, args.size, args.ckpt, device, args.imgsz, graph=not args.no_graph)
    s = eng.inp.shape[-1]
    nc, n = eng.out.shape[1] - 4, eng.out.shape[2]
    det = GpuDetector(rt, mods, s, s, nc, n, eng.execute, eng.inp.data_ptr(), eng.out.data_ptr(),
                      max_frame=(1920, 1080), sync_timing=False, mapped_frame=args.zero_copy)
    cfg = DetectionConfig()
    decoder = AnchorDecoder("output0", "yolov8", nc)
    letterbox = Letterbox(s, s)
    frame = scene(np.random.default_rng(0), 1920, 1080)
    try:
        # Exactness first: the fused decode + NMS against the numpy path on the same engine output,
        # at a threshold that lets ~100 candidates through whatever the weights.
        got = det.detect(frame, cfg)
        best = np.sort(eng.out.cpu().numpy()[0, 4:].max(0))
        check = DetectionConfig(conf_threshold=float(min(cfg.conf_threshold, best[-min(100, len(best))] * 0.999)))
        cb, cs, cc, _ = det.detect(frame, check)
        _, mapping = letterbox.run(frame)
        rb, rs, rc = postprocess(decoder, {"output0": eng.out.cpu().numpy()}, check)
        if not (len(cs) and np.array_equal(cs, rs) and np.array_equal(cc, rc)
                and np.allclose(cb, to_frame(rb, mapping), atol=1e-3)):
            print("MISMATCH: fused path {} detections, numpy path {}".format(len(cs), len(rs)))
            return 1
        print("check: fused decode + NMS == numpy decode + NMS on the same engine output "
              "({} detections at conf {:.4g})".format(len(cs), check.conf_threshold))

        def cpu_path():
            blob, m = letterbox.run(frame)
            eng.inp.copy_(torch.from_numpy(blob))
            eng.execute()
            b, sc, c = postprocess(decoder, {"output0": eng.out.cpu().numpy()}, cfg)
            return to_frame(b, m), sc, c

        bare = timed(eng.execute, sync, args.frames, args.warmup)
        fused = timed(lambda: det.detect(frame, cfg), sync, args.frames, args.warmup)
        cpu = timed(cpu_path, sync, args.frames, args.warmup)
        det.sync_timing = True
        stages = [det.detect(frame, cfg)[3] for _ in range(args.frames)]
    finally:
        det.close()

    engine = "demo-{} {}x{} ({}, {})".format(eng.size, s, s, "trained" if args.ckpt else "random weights",
                                             "CUDA graph" if eng.graph is not None else "eager")
    print("device: {}; engine: {}, PyTorch {}; frame {}".format(where, engine, torch.__version__,
                                                                "mapped (zero-copy)" if args.zero_copy else "uploaded"))
    print("frame 1920x1080, DetectionConfig defaults, {} detections; median / p95 of {} after {} warm-up\n".format(
        len(got[1]), args.frames, args.warmup))
    print("{:<16} {:>9} {:>9} {:>9} {:>12}".format("", "p50 ms", "p95 ms", "vs bare", "overhead ms"))
    for label, (p50, p95) in (("bare engine", bare), ("fused GPU path", fused), ("CPU pre/post", cpu)):
        print("{:<16} {:>9.3f} {:>9.3f} {:>9.2f} {:>12.3f}".format(label, p50, p95, p50 / bare[0], p50 - bare[0]))
    med = {k: float(np.median([st[k] for st in stages])) for k in ("preprocess", "infer", "postprocess")}
    print("\nfused stages (synchronized after each): preprocess {preprocess:.3f} ms, infer {infer:.3f} ms, "
          "postprocess {postprocess:.3f} ms".format(**med))
    return 0


if __name__ == "__main__":
    sys.exit(main())
