"""Pipeline benchmarks of issue 3, measured side by side in one run (by hand, not in tests).

    python benchmarks/bench_pipeline.py [--size fast] [--frames 300] [--threads 0]

Prints:
- letterbox + normalize of a 1080p frame into the input buffer (ms; target <= 2 ms here),
  beside a naive version that allocates per frame (cv2.resize + np.pad-like copy + astype);
- pipelined throughput of the agent (a real Pipeline over a video file, as fast as
  possible) against a bare ``session.run`` loop on the same model and threads
  (ratio; target >= 0.9), both after warm-up.
"""

import argparse
import os
import statistics
import sys
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from agent.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from agent.config import load_config  # noqa: E402
from agent.pipeline import Pipeline  # noqa: E402
from agent.preprocess import Letterbox  # noqa: E402
from agent.publish.base import Sink  # noqa: E402


def median_ms(fn, repeat=200, warmup=20):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def bench_letterbox(input_size):
    frame = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    lb = Letterbox(input_size, input_size)

    def naive():
        r = min(input_size / 1920.0, input_size / 1080.0)
        nw, nh = int(round(1920 * r)), int(round(1080 * r))
        img = cv2.resize(frame, (nw, nh))
        canvas = np.full((input_size, input_size, 3), 114, np.uint8)
        py, px = (input_size - nh) // 2, (input_size - nw) // 2
        canvas[py:py + nh, px:px + nw] = img
        return (canvas[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0).copy()

    ours = median_ms(lambda: lb.run(frame))
    base = median_ms(naive)
    print("letterbox+normalize 1080p -> {0}x{0}: ours {1:.2f} ms, naive {2:.2f} ms, ratio {3:.2f}x "
          "(target <= 2 ms: {4})".format(input_size, ours, base, base / ours, "met" if ours <= 2.0 else "NOT met"))


class NullSink(Sink):
    def __init__(self):
        self.count = 0

    def emit(self, record, image=None):
        self.count += 1


def bench_throughput(size, frames, threads):
    config = load_config(overrides={"size": size, "onnxruntime": {"threads": threads}}, environ={})
    model = config.sizes[size].onnx
    backend = OnnxRuntimeBackend(model, config.onnxruntime)
    w, h = backend.input_size
    blob = np.random.default_rng(1).random((1, 3, h, w), dtype=np.float32)
    for _ in range(10):
        backend.infer(blob)
    t0 = time.perf_counter()
    for _ in range(frames):
        backend.infer(blob)
    bare_fps = frames / (time.perf_counter() - t0)
    backend.close()

    # Camera-like content: the demo video (noise frames would make decoding, not the agent, the bottleneck).
    video = os.path.join(ROOT, "data", "demo", "demo.mp4")
    if not os.path.isfile(video):
        sys.exit("{} is missing: run scripts/setup.sh".format(video))
    config = load_config(overrides={
        "size": size, "onnxruntime": {"threads": threads}, "output": {"jsonl": None}, "max_frames": frames + 10,
        "cameras": [{"id": "bench", "source": video, "realtime": False, "loop": True}]}, environ={})
    sink = NullSink()
    pipeline = Pipeline(config, [sink])
    pipeline.start()
    while sink.count < 10:  # warm-up, excluded
        time.sleep(0.001)
    start_count, t0 = sink.count, time.perf_counter()
    pipeline.wait(600)
    agent_fps = (sink.count - start_count) / (time.perf_counter() - t0)
    summary = pipeline.timing_summaries()["bench"]
    pipeline.stop()
    ratio = agent_fps / bare_fps
    stages = summary["stages"]
    print("throughput {} ({} threads, {} frames of the 1280x720 demo video): agent {:.1f} FPS, bare session.run {:.1f} FPS, "
          "ratio {:.2f} (target >= 0.9: {})".format(size, threads or "auto", frames, agent_fps, bare_fps, ratio,
                                                    "met" if ratio >= 0.9 else "NOT met"))
    print("  agent p50 ms: " + ", ".join("{} {:.2f}".format(s, stages[s]["p50"]) for s in
                                        ("preprocess", "infer", "postprocess", "publish")))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", action="append", help="model size(s) (default: fast and accurate)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: auto)")
    args = parser.parse_args()
    bench_letterbox(640)
    bench_letterbox(320)
    for size in args.size or ["fast", "accurate"]:
        bench_throughput(size, args.frames, args.threads)


if __name__ == "__main__":
    main()
