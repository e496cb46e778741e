"""What the MQTT sink costs the camera loop: emit() per call, and a pipeline-like loop's FPS.

Runs a real mosquitto on a free port. Cases: broker connected, broker stopped
(records go to the spool), broker hung (SIGSTOP: TCP accepted, no PUBACKs, so
the in-flight window fills and records go to the spool). The loop does a fixed
~5 ms of CPU work per iteration (a stand-in for inference), so the FPS ratio
shows the publisher's overhead, including its thread competing for the CPU.

    python benchmarks/bench_publish.py [--frames 600] [--work-ms 5]
"""

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from agent.config import load_config  # noqa: E402
from agent.publish.mqtt import MqttSink  # noqa: E402
from agent.publish import schema  # noqa: E402
from agent.publish.schema import BOOT_ID  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(workdir, port):
    conf = os.path.join(workdir, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write("listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n".format(port))
    proc = subprocess.Popen([shutil.which("mosquitto"), "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def record(seq):
    dets = [{"class_id": i % 3, "label": ("person", "car", "dog")[i % 3], "confidence": 0.8,
             "box": [10.0 * i, 20.0, 10.0 * i + 50, 90.0], "box_norm": [0.01 * i, 0.05, 0.01 * i + 0.08, 0.2]}
            for i in range(5)]
    return {"schema_version": 1, "device_id": "bench", "camera_id": "cam0", "boot_id": BOOT_ID, "seq": seq,
            "frame_index": seq, "timestamp": time.time(), "model_size": "fast",
            "image": {"width": 640, "height": 480}, "detections": dets,
            "timing_ms": {"preprocess": 1.2, "infer": 5.0, "postprocess": 0.8, "publish": 0.1, "total": 7.5}}


def make_work(kind, ms):
    """A fixed ~``ms`` stand-in for inference.

    gpu: the host thread waits (like TensorRT's stream sync on a Jetson), GIL released;
    cpu: OpenCV filtering on one thread (like ONNX Runtime on the CPU), GIL released;
    python: a pure-Python spin that holds the GIL (the worst case for any helper thread).
    """
    if kind == "gpu":
        return lambda: time.sleep(ms / 1000.0)
    if kind == "cpu":
        import cv2
        import numpy as np

        cv2.setNumThreads(1)
        img = np.random.RandomState(0).randint(0, 255, (480, 640, 3)).astype(np.uint8)
        t = time.perf_counter()
        cv2.GaussianBlur(img, (21, 21), 0)
        reps = max(1, int(round(ms / 1000.0 / (time.perf_counter() - t))))
        return lambda: [cv2.GaussianBlur(img, (21, 21), 0) for _ in range(reps)]

    def spin():
        end = time.perf_counter() + ms / 1000.0
        while time.perf_counter() < end:
            pass
    return spin


def run_loop(sink, frames, work, seq0):
    """(fps, emit costs in seconds) of ``frames`` iterations of work + emit."""
    costs = []
    t0 = time.perf_counter()
    for i in range(frames):
        work()
        rec = record(seq0 + i)  # the pipeline builds the record with or without a sink
        if sink is not None:
            t = time.perf_counter()
            sink.emit(rec)
            costs.append(time.perf_counter() - t)
    return frames / (time.perf_counter() - t0), costs


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100.0 * len(values)))] * 1000.0


def bench(kind, frames, work_ms):
    """[(case, fps, emit costs)] for one workload kind, each MQTT case with a fresh broker state."""
    work = make_work(kind, work_ms)
    workdir = tempfile.mkdtemp(prefix="bench-publish-")
    port = free_port()
    broker = start_broker(workdir, port)
    config = load_config(None, {"device_id": "bench", "state_dir": workdir,
                                "mqtt": {"enabled": True, "url": "mqtt://127.0.0.1:{}".format(port)}},
                         environ={}, check_files=False)
    results = []
    try:
        run_loop(None, 50, work, 0)  # warm-up
        base_fps, _ = run_loop(None, frames, work, 0)
        sink = MqttSink(config, reconnect_min_s=0.5, reconnect_max_s=2)
        sink.start(schema.status(config, {"backend": "onnxruntime", "size": "fast", "engine_id": "bench",
                                          "cameras": {"cam0": {}}}, time.time()))
        while sink.state() != "connected":
            time.sleep(0.01)
        seq = 1
        fps, costs = run_loop(sink, frames, work, seq)
        results.append(("broker connected", fps, costs))
        seq += frames
        broker.send_signal(signal.SIGSTOP)  # hung broker: socket open, no PUBACKs
        fps, costs = run_loop(sink, frames, work, seq)
        results.append(("broker hung (SIGSTOP)", fps, costs))
        seq += frames
        broker.send_signal(signal.SIGCONT)
        broker.terminate()
        broker.wait()
        while sink.state() == "connected":
            time.sleep(0.01)
        fps, costs = run_loop(sink, frames, work, seq)
        results.append(("broker stopped", fps, costs))
        sink.close(timeout=1.0)
        base2, _ = run_loop(None, frames, work, 0)  # the box is shared: baseline before and after
        base_fps = (base_fps + base2) / 2.0
    finally:
        if broker.poll() is None:
            broker.send_signal(signal.SIGCONT)
            broker.terminate()
        shutil.rmtree(workdir, ignore_errors=True)
    return [("no sink", base_fps, None)] + results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--work-ms", type=float, default=5.0)
    ap.add_argument("--work", default="gpu,cpu,python", help="Workloads to run: gpu, cpu, python (comma-separated).")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print("publisher overhead: {} frames a case, ~{:.1f} ms fake work per frame, {} CPUs".format(
        args.frames, args.work_ms, os.cpu_count()))
    print("{:<8} {:<24} {:>7} {:>6} {:>10} {:>10} {:>10}".format(
        "work", "case", "FPS", "ratio", "emit p50", "emit p99", "emit mean"))
    for kind in args.work.split(","):
        results = bench(kind, args.frames, args.work_ms)
        base = results[0][1]
        for name, fps, costs in results:
            cost = ""
            if costs:
                cost = "{:>8.3f}ms {:>8.3f}ms {:>8.3f}ms".format(
                    pct(costs, 50), pct(costs, 99), 1000.0 * sum(costs) / len(costs))
            print("{:<8} {:<24} {:>7.1f} {:>6.3f} {}".format(kind, name, fps, fps / base, cost))


if __name__ == "__main__":
    main()
