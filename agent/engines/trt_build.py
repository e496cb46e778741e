"""The TensorRT builder, run in the build child (agent.engines.worker): ONNX -> serialized plan.

Version differences go through agent.trt_compat. INT8 calibration feeds images through
the agent's own preprocessing (agent.preprocess.Letterbox), so the calibrated ranges
match what the pipeline feeds at run time; the calibration cache is saved and reused.
"""

import glob
import os
from typing import Any, Dict, List, Optional

import numpy as np

from .. import trt_compat
from ..errors import EngineError, ModelError
from .artifact import BuildSpec, default_calib_cache
from .files import atomic_write, sha256_file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
MAX_CALIB_IMAGES = 500


def timing_cache_path(engines_dir, trt):
    # type: (str, Any) -> str
    """The timing cache is only valid for one TensorRT version: one file per version."""
    return os.path.join(engines_dir, "timing-cache.trt-{}.bin".format(trt_compat.version_string(trt)))


def calibration_images(calib_dir):
    # type: (Optional[str]) -> List[str]
    if not calib_dir:
        return []
    files = sorted(p for p in glob.glob(os.path.join(calib_dir, "**", "*"), recursive=True)
                   if p.lower().endswith(IMAGE_EXTENSIONS))
    return files[:MAX_CALIB_IMAGES]


def make_calibrator(trt, cuda, images, input_shape, cache_path, emit):
    # type: (Any, Any, List[str], Any, str, Any) -> Any
    """An IInt8EntropyCalibrator2 fed one letterboxed image at a time; reuses ``cache_path``."""
    import cv2

    from ..preprocess import Letterbox

    base = trt.IInt8EntropyCalibrator2
    height, width = int(input_shape[2]), int(input_shape[3])

    class Calibrator(base):  # type: ignore[misc,valid-type]  # base is only known at run time
        def __init__(self):
            # type: () -> None
            base.__init__(self)
            self.letterbox = Letterbox(width, height)
            self.device = cuda.mem_alloc(3 * height * width * 4)
            self.index = 0

        def get_batch_size(self):
            # type: () -> int
            return 1

        def get_batch(self, names, *args):
            # type: (List[str], Any) -> Optional[List[int]]
            while self.index < len(images):
                path = images[self.index]
                self.index += 1
                image = cv2.imread(path)
                if image is None:
                    emit("calibrating", "skipping unreadable calibration image {}".format(path))
                    continue
                if self.index % 50 == 1:
                    emit("calibrating", "calibration image {}/{}".format(self.index, len(images)))
                blob, _ = self.letterbox.run(image)
                cuda.memcpy_htod(self.device, np.ascontiguousarray(blob))
                return [int(self.device)]
            return None

        def read_calibration_cache(self):
            # type: () -> Optional[bytes]
            if os.path.isfile(cache_path):
                emit("calibrating", "reusing calibration cache {}".format(cache_path))
                with open(cache_path, "rb") as f:
                    return f.read()
            return None

        def write_calibration_cache(self, cache):
            # type: (Any) -> None
            atomic_write(cache_path, bytes(memoryview(cache)))

        def free(self):
            # type: () -> None
            self.device.free()

    return Calibrator()


def _tensor_specs(trt, tensors):
    # type: (Any, List[Any]) -> List[Dict[str, Any]]
    return [{"name": t.name, "shape": list(trt_compat.dims(t.shape)), "dtype": np.dtype(trt.nptype(t.dtype)).name}
            for t in tensors]


def build(job, emit):
    # type: (Dict[str, Any], Any) -> Dict[str, Any]
    """Parse ``job['onnx']``, build the plan into ``job['scratch']``; return the manifest facts."""
    trt = trt_compat.import_tensorrt()
    import pycuda.driver as cuda

    cuda.init()
    context = cuda.Device(0).retain_primary_context()  # the primary context: the one TensorRT uses
    context.push()
    try:
        return _build(trt, cuda, job, emit)
    finally:
        context.pop()
        context.detach()


def _build(trt, cuda, job, emit):
    # type: (Any, Any, Dict[str, Any], Any) -> Dict[str, Any]
    onnx_path = job["onnx"]
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    network = trt_compat.create_network(trt, builder)
    parser = trt.OnnxParser(network, logger)
    emit("parsing", "parsing {} with TensorRT {}".format(onnx_path, trt_compat.version_string(trt)))
    with open(onnx_path, "rb") as f:
        ok = parser.parse(f.read())
    if not ok:
        errors = trt_compat.parser_errors(parser)
        raise ModelError("{}: TensorRT's ONNX parser failed with {} error(s): {}".format(
            onnx_path, len(errors), " | ".join(errors) or "no detail"))
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]

    config = builder.create_builder_config()
    trt_compat.set_workspace(trt, config, int(job["workspace_mb"]) << 20)
    built, flags = trt_compat.set_precision(trt, builder, config, job["precision"], bool(job["allow_slow_precision"]))
    flags = flags + trt_compat.set_dla(trt, builder, config, int(job["dla_core"]), job["precision"])
    profile = trt_compat.add_batch_profile(trt, builder, network, config, job.get("batch"))
    if profile is None and job.get("batch"):
        emit("building", "--batch ignored: {} has a static batch dimension".format(onnx_path))
    flags.append("WORKSPACE_MB={}".format(job["workspace_mb"]))

    calibrator = None
    calib_cache = None
    if job["precision"] == "int8":
        calib_cache = default_calib_cache(BuildSpec(**{k: job[k] for k in BuildSpec._fields}))
        images = calibration_images(job.get("calib_dir"))
        if not images and not os.path.isfile(calib_cache):
            raise EngineError("int8: no calibration images in {} and no calibration cache {}".format(
                job.get("calib_dir"), calib_cache))
        shape = [1] + list(trt_compat.dims(inputs[0].shape))[1:]
        calibrator = make_calibrator(trt, cuda, images, shape, calib_cache, emit)
        trt_compat.set_calibrator(trt, config, calibrator)
        trt_compat.set_calibration_profile(trt, builder, config, profile)  # one image per batch

    tc_path = timing_cache_path(os.path.dirname(job["scratch"]), trt)
    tc_data = b""
    if os.path.isfile(tc_path):
        with open(tc_path, "rb") as f:
            tc_data = f.read()
    trt_compat.load_timing_cache(trt, config, tc_data)

    emit("building", "building the {} engine ({}); this can take minutes".format(built, ", ".join(flags)))
    try:
        plan = trt_compat.build_serialized(trt, builder, network, config)
    finally:
        if calibrator is not None:
            calibrator.free()
    emit("writing", "writing {} bytes".format(len(plan)))
    with open(job["scratch"], "wb") as f:
        f.write(plan)
        f.flush()
        os.fsync(f.fileno())
    cache = trt_compat.serialize_timing_cache(trt, config)
    if cache:
        atomic_write(tc_path, cache)
    return {
        "precision_built": built, "builder_flags": flags, "profile": profile,
        "inputs": _tensor_specs(trt, inputs), "outputs": _tensor_specs(trt, outputs),
        "calib_cache_sha256": sha256_file(calib_cache) if calib_cache and os.path.isfile(calib_cache) else None,
        "runtime": {"onnx_parser": str(getattr(trt, "get_nv_onnx_parser_version", lambda: "")())},
    }
