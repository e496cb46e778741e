"""The CPU pipeline against the best bare ONNX Runtime loop, side by side in one run (by hand).

    python benchmarks/bench_pipeline.py                       # demo models, 720p demo video
    python benchmarks/bench_pipeline.py --model /path/yolov8n.onnx --model /path/yolo11n.onnx
    python benchmarks/bench_pipeline.py --scaling             # + the cameras/resolution/objects table

For each model, all in one process, one after the other:
- **bare**: ``session.run`` on one preprocessed frame in a loop, for every ONNX Runtime
  thread setting (its default, then 1..cores intra-op threads with spinning on and off);
  the best is the baseline (its setting is printed);
- **bound**: what two cores can do at most for the agent, which must also decode the
  video, letterbox and post-process each frame: ``cores / (1-thread infer + decode +
  preprocess + postprocess)``, each the CPU time of one frame on one thread (decode as the
  agent's file source does it, into reused buffers);
- **agent**: the real Pipeline with the default config on the demo video (1280x720,
  unpaced), FPS after warm-up, as a ratio to the best bare FPS and as a share of the bound;
- **latency**: the Pipeline on the same video paced at 30 fps: p50 capture-to-sink
  against the best bare ``session.run`` p50, back to back and called at 30 fps (the
  runtime idle between frames, as under a camera); with tracking on (the default) and off;
  in ``--latency-rounds`` rounds of all four, the differences taken within each round;
- ``--scaling``: pipeline FPS and CPU time per frame with 1, 2 and 4 cameras, at 720p
  and 1080p, with 10 and 300 objects in the scene (videos rendered by
  scripts/make_video.py into a temp dir), each as a ratio to the bare model.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from agent.config import load_config  # noqa: E402
from agent.detect import open_detector  # noqa: E402
from agent.measure import bare_session, bare_settings  # noqa: E402
from agent.pipeline import Pipeline  # noqa: E402
from agent.publish.base import Sink  # noqa: E402
from agent.sources import open_source  # noqa: E402

CORES = os.cpu_count() or 1


class CountSink(Sink):
    def __init__(self):
        self.totals = []

    def emit(self, record, image=None):
        self.totals.append(record["timing_ms"]["total"])


def config_for(model, cameras, frames=0, tracking=True):
    return load_config(overrides={"size": "fast", "sizes": {"fast": {"onnx": model}}, "output": {"jsonl": None},
                                  "max_frames": frames, "cameras": cameras,
                                  "tracking": {"enabled": tracking}}, environ={})


def first_frame(video):
    cap = cv2.VideoCapture(video)
    ok, frame = cap.read()
    cap.release()
    return frame


def bare(model, blob, seconds):
    """The plain session.run loop under every thread setting; [(label, fps, p50 ms, cpu ms/frame)]."""
    out = []
    for label, threads, spinning in bare_settings():
        session = bare_session(model, threads, spinning)
        name = session.get_inputs()[0].name
        for _ in range(5):
            session.run(None, {name: blob})
        times, c0, t0 = [], time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            t = time.perf_counter()
            session.run(None, {name: blob})
            times.append(time.perf_counter() - t)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out.append((label, len(times) / wall, 1e3 * statistics.median(times), 1e3 * cpu / len(times)))
    return out


def bare_paced(model, blob, setting, fps=30.0, frames=90):
    """p50 ms of session.run under ``setting`` (a bare_settings() label) called at ``fps``, as a
    bare loop on a camera runs it: the runtime idles between frames (``fps`` None: back to back)."""
    threads, spinning = next((t, s) for label, t, s in bare_settings() if label == setting)
    session = bare_session(model, threads, spinning)
    name = session.get_inputs()[0].name
    times, due = [], time.perf_counter()
    for _ in range(frames + 5):
        if fps:
            due += 1.0 / fps
            time.sleep(max(0.0, due - time.perf_counter()))
        t = time.perf_counter()
        session.run(None, {name: blob})
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times[5:])


def cpu_ms(fn, n):
    """CPU time of one call of ``fn`` in this process (all its threads: FFmpeg decodes on its
    own), mean of ``n`` calls (ms); nothing else runs meanwhile."""
    c = time.process_time()
    for _ in range(n):
        fn()
    return 1e3 * (time.process_time() - c) / n


def bound(model, video, frames, bare_1thread_cpu):
    """Per-frame CPU costs of the agent's stages on one thread, and the bound they set."""
    config = config_for(model, [{"id": "b", "source": video, "loop": True, "realtime": False}])
    detector = open_detector(config, "fast")
    source = open_source(config.cameras[0])  # decoded as the agent does (into reused buffers)
    decode = cpu_ms(source.read, frames)
    source.close()
    image = first_frame(video)
    prep = detector.prepare(image)
    pending = detector.infer(image, prep)
    pre = cpu_ms(lambda: detector.release(detector.prepare(image)), frames)
    post = cpu_ms(lambda: detector.finish(pending), frames)
    detector.release(prep)
    detector.close()
    per_frame = bare_1thread_cpu + decode + pre + post
    return {"decode": decode, "preprocess": pre, "postprocess": post, "infer": bare_1thread_cpu,
            "fps": 1e3 * CORES / per_frame}


def agent(model, videos, frames, warmup=20, fps=0.0, tracking=True):
    """Run the Pipeline (default config) on ``videos`` (one camera each); FPS, CPU ms/frame, totals."""
    cams = [{"id": "cam{}".format(i), "source": v, "loop": True, "realtime": fps > 0, "fps": fps}
            for i, v in enumerate(videos)]
    sink = CountSink()
    pipeline = Pipeline(config_for(model, cams, frames + warmup, tracking), [sink])
    pipeline.start()
    try:
        while len(sink.totals) < warmup * len(videos):
            time.sleep(0.001)
        n0, c0, t0 = len(sink.totals), time.process_time(), time.perf_counter()
        pipeline.wait(900)
        n, wall, cpu = len(sink.totals) - n0, time.perf_counter() - t0, time.process_time() - c0
    finally:
        pipeline.stop()
    return n / wall, 1e3 * cpu / max(1, n), sink.totals[n0:]


def one_model(model, video, args):
    name = os.path.basename(model)
    image = first_frame(video)
    detector = open_detector(config_for(model, [{"id": "b", "source": video}]), "fast")
    blob = detector.prepare(image).blob.copy()
    detector.close()
    runs = bare(model, blob, args.bare_seconds)
    best = max(runs, key=lambda r: r[1])
    one = [r for r in runs if r[0].startswith("1 thread,")]
    b = bound(model, video, 60, min(r[3] for r in one))
    fps, cpu, _ = agent(model, [video], args.frames)
    # Latency in rounds, each the agent (tracking on, then off) and the bare loop (at 30 fps, then
    # back to back) one after the other: this box's speed drifts within a minute, so each round's
    # differences are taken within it, and the medians over the rounds reported.
    rounds = []
    for _ in range(args.latency_rounds):
        _, _, totals = agent(model, [video], max(90, args.frames // 3), fps=30.0)
        _, _, untracked = agent(model, [video], max(90, args.frames // 3), fps=30.0, tracking=False)
        rounds.append((statistics.median(totals), float(np.percentile(totals, 95)), statistics.median(untracked),
                       bare_paced(model, blob, best[0]), bare_paced(model, blob, best[0], fps=None)))
    print("\n## {} (input {}x{}), {} cores, 1280x720 demo video".format(name, blob.shape[3], blob.shape[2], CORES))
    print("| bare session.run | FPS | p50 ms | CPU ms/frame |\n|---|---|---|---|")
    for label, f, p50, c in runs:
        print("| {}{} | {:.1f} | {:.2f} | {:.2f} |".format(label, " (best)" if label == best[0] else "", f, p50, c))
    print("bound: {} x 1000 / ({:.2f} infer 1-thread + {:.2f} decode + {:.2f} preprocess + {:.2f} postprocess ms)"
          " = {:.1f} FPS = {:.2f}x best bare".format(CORES, b["infer"], b["decode"], b["preprocess"],
                                                    b["postprocess"], b["fps"], b["fps"] / best[1]))
    print("agent (defaults, unpaced): {:.1f} FPS = **{:.2f}x** best bare ({}), {:.0f}% of the bound; "
          "{:.2f} CPU ms/frame".format(fps, fps / best[1], best[0], 100 * fps / b["fps"], cpu))
    med = [statistics.median(r[k] for r in rounds) for k in range(5)]
    d = [statistics.median(r[a] - r[b] for r in rounds) for a, b in ((0, 4), (0, 3), (2, 4), (2, 3))]
    print("latency at 30 fps, medians of {} rounds: p50 capture->sink {:.2f} ms (p95 {:.2f}); best bare "
          "session.run p50 {:.2f} ms back to back (**{:+.2f} ms**), {:.2f} ms called at 30 fps (**{:+.2f} ms**)".format(
              len(rounds), med[0], med[1], med[4], d[0], med[3], d[1]))
    print("  the same with tracking off: p50 {:.2f} ms ({:+.2f} ms back to back, {:+.2f} ms at 30 fps)".format(
        med[2], d[2], d[3]))
    print("  rounds (agent on / off, bare at 30 fps / back to back, p50 ms): " + "; ".join(
        "{:.2f} / {:.2f}, {:.2f} / {:.2f}".format(r[0], r[2], r[3], r[4]) for r in rounds))
    return best


def scaling(model, args):
    from make_video import make_video

    tmp = tempfile.mkdtemp(prefix="edge-agent-scaling-")
    try:
        best = None
        print("\n## scaling: {} (default config, unpaced, loops)".format(os.path.basename(model)))
        print("| video | objects | cameras | FPS (all cameras) | FPS / bare | CPU ms/frame | CPU / bare |")
        print("|---|---|---|---|---|---|---|")
        for w, h in ((1280, 720), (1920, 1080)):
            for objects in (10, 300):
                video, _, _ = make_video(os.path.join(tmp, "v{}x{}-{}.mp4".format(w, h, objects)), seed=1,
                                         seconds=4.0, width=w, height=h, objects=objects)
                video = str(video)
                if best is None:
                    detector = open_detector(config_for(model, [{"id": "b", "source": video}]), "fast")
                    blob = detector.prepare(first_frame(video)).blob.copy()
                    detector.close()
                    best = max(bare(model, blob, args.bare_seconds), key=lambda r: r[1])
                for cams in (1, 2, 4):
                    fps, cpu, _ = agent(model, [video] * cams, args.frames // cams)
                    print("| {}p | {} | {} | {:.1f} | {:.2f} | {:.2f} | {:.2f} |".format(
                        h, objects, cams, fps, fps / best[1], cpu, cpu / best[3]))
        print("bare: {} at {:.1f} FPS, {:.2f} CPU ms/frame".format(best[0], best[1], best[3]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="ONNX model(s) (default: the demo fast and accurate)")
    parser.add_argument("--video", default=os.path.join(ROOT, "data", "demo", "demo.mp4"))
    parser.add_argument("--frames", type=int, default=400, help="timed frames per agent run")
    parser.add_argument("--bare-seconds", type=float, default=4.0, help="seconds per bare setting")
    parser.add_argument("--scaling", action="store_true", help="also the cameras/resolution/objects table")
    parser.add_argument("--latency-rounds", type=int, default=5, help="rounds of the latency comparison")
    args = parser.parse_args()
    if not os.path.isfile(args.video):
        sys.exit("{} is missing: run scripts/setup.sh".format(args.video))
    import onnxruntime as ort

    print("onnxruntime {}, OpenCV {}, numpy {}, {} cores".format(ort.__version__, cv2.__version__, np.__version__,
                                                                 CORES))
    models = args.model or [os.path.join(ROOT, "models", "demo-{}.onnx".format(s)) for s in ("fast", "accurate")]
    for model in models:
        one_model(model, args.video, args)
    if args.scaling:
        scaling(models[0], args)


if __name__ == "__main__":
    main()
