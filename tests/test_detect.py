"""The detector stage (agent/detect/): the fused GPU path run by the real Pipeline, here on the CPU.

The fused path is production's ``Pipeline -> FusedDetector -> GpuDetector`` with the
kernels compiled for the CPU (agent.kernels.host.HostRuntime, the GpuRuntime protocol
over g++'s build of the same .cu files) and ONNX Runtime standing in for the TensorRT
engine: ``device_engine()`` gives the kernels the engine's input and output "device"
buffers, and ``execute`` reads the input the preprocess kernel wrote and writes the
output the decode kernel reads, as TensorRT's bindings do. Everything else
(open_detector, the threads, records) is what the agent runs. Its records must match
the CPU detector's on a real video: same detections, boxes within 0.5 px (the preprocess
kernel reproduces OpenCV's 8-bit letterbox, so both paths feed the engine one image).
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from agent import backends
from agent.backends import base as backends_base
from agent.backends.onnxruntime import OnnxRuntimeBackend
from agent.config import load_config
from agent.detect import open_detector
from agent.detect.cpu import CpuDetector
from agent.detect.fused import FusedDetector
from agent.kernels.host import HostRuntime
from agent.pipeline import Pipeline
from agent.publish.base import Sink
from conftest import ROOT

DEMO_VIDEO = os.path.join(ROOT, "data", "demo", "demo.mp4")


class HostKernelBackend(OnnxRuntimeBackend):
    """ONNX Runtime as the engine of the fused path, its tensors in the host runtime's "device" memory."""

    kernels = None  # (runtime, modules), set by the fixture

    def device_engine(self):
        rt, modules = self.kernels
        in_shape = self.inputs[0].shape
        out_shape = (1,) + tuple(self.session.run(None, {self._input_name: np.zeros(in_shape, np.float32)})[0].shape[1:])
        self._in = rt.alloc(4 * int(np.prod(in_shape)))
        self._out = rt.alloc(4 * int(np.prod(out_shape)))

        def execute():
            blob = self._in.view(np.float32).reshape(in_shape)
            out = self.session.run(self._output_names, {self._input_name: blob})[0]
            self._out.view(np.float32).reshape(out_shape)[...] = out

        return backends_base.DeviceEngine(rt, modules, rt.ptr(self._in), rt.ptr(self._out), in_shape, out_shape,
                                          execute)


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    return HostRuntime.build(str(tmp_path_factory.mktemp("detect_host")))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """The demo video when generated (scripts/make_video.py), else 40 frames rendered like it."""
    if os.path.isfile(DEMO_VIDEO):
        return DEMO_VIDEO
    path = str(tmp_path_factory.mktemp("video") / "demo.mp4")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_video.py"), "--out", path, "--frames", "40"],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return path


class ListSink(Sink):
    def __init__(self):
        self.records = []

    def emit(self, record, image=None):
        self.records.append(record)


def run_pipeline(config, factory):
    sink = ListSink()
    p = Pipeline(config, [sink], detector_factory=factory)
    p.start()
    assert p.wait(300), "pipeline did not finish"
    p.stop()
    return sink.records


def test_fused_pipeline_matches_cpu_pipeline(host_kernels, video, monkeypatch):
    config = load_config(overrides={"cameras": [{"id": "cam0", "source": video, "realtime": False}],
                                    "output": {"jsonl": None}, "max_frames": 40}, environ={})
    kinds = []

    def cpu(config, size):
        det = open_detector(config, size)
        kinds.append(type(det))
        return det

    HostKernelBackend.kernels = host_kernels
    cpu_records = run_pipeline(config, cpu)
    monkeypatch.setitem(backends.REGISTRY, "onnxruntime", lambda: HostKernelBackend)
    fused_records = run_pipeline(config, cpu)
    assert kinds == [CpuDetector, FusedDetector]

    assert len(cpu_records) == len(fused_records) > 0
    total = worst = 0
    for c, f in zip(cpu_records, fused_records):
        assert c["frame_index"] == f["frame_index"] and c["seq"] == f["seq"]
        assert set(f["timing_ms"]) == set(c["timing_ms"])
        # Same detections, boxes within 0.5 px: the preprocess kernel reproduces OpenCV's
        # letterbox pixel for pixel, so both paths feed the engine one image. Order may
        # differ only on exact score ties.
        assert len(f["detections"]) == len(c["detections"]), (c["frame_index"], c["detections"], f["detections"])
        left = list(f["detections"])
        for dc in c["detections"]:
            diffs = [np.abs(np.array(dc["box"]) - np.array(df["box"])).max() if df["class_id"] == dc["class_id"]
                     else np.inf for df in left]
            k = int(np.argmin(diffs))
            df = left.pop(k)
            assert diffs[k] <= 0.5 and abs(dc["confidence"] - df["confidence"]) <= 1e-3, (c["frame_index"], dc, df)
            worst = max(worst, diffs[k])
        total += len(c["detections"])
    assert total >= len(cpu_records), "the demo model should find the demo objects"
    print("fused vs CPU: {} frames, {} detections, max box difference {:.2f} px".format(
        len(cpu_records), total, worst))
