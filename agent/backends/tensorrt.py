"""The TensorRT backend: a verified engine run with pycuda on one stream.

The thread that creates the backend owns it: the CUDA context (the device's
primary context, retained and pushed around every call, never ``pycuda.autoinit``),
the engine, the execution context, one stream and page-locked host buffers. On an
integrated GPU (Jetson: CPU and GPU share DRAM) with ``tensorrt.zero_copy`` on, the input,
and the camera frame of the fused path, are mapped host memory the GPU reads in place,
saving a copy each; off (the default until measured on a Xavier) they are copied.
``close()`` frees in reverse order and releases the context, so no "context stack was
not empty" at exit.

Fused path (issue 7): for an engine with one float32 input and one YOLOv8 ``[1, 4+nc, N]``
float32 output, ``device_engine()`` describes the bindings (device pointers, this stream
as a PycudaRuntime, the kernels loaded in this context) so that agent.detect.fused runs
preprocess, decode and NMS on the device around the engine; for any other engine it
returns None and the CPU detector runs ``infer``. The kernels come from the cubins beside
the engines or agent.kernels.build.load_kernels (compiled on first use); when they cannot
be loaded the backend logs why and returns None.
"""

import contextlib
import logging
import os
from typing import Any, Dict, List, Tuple

import numpy as np

from .. import trt_compat
from ..engines.artifact import cached_kernels, verify_artifact
from ..errors import BackendUnavailable, EngineError
from .base import Backend, TensorSpec

log = logging.getLogger("edge_agent.backends.tensorrt")


def _import_pycuda():
    # type: () -> Any
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        raise BackendUnavailable("backend tensorrt: pycuda is not installed here ({})".format(e))
    return cuda


def _pop_driver_context(handle):
    # type: (int) -> None
    """Undo the push pycuda's detach() leaves behind for a primary context.

    pycuda detaches a context that is not current by pushing it and detaching, and
    "pop is implicit in detach" holds for cuCtxDetach only: a primary context is
    released with cuDevicePrimaryCtxRelease, which pops nothing. Without this, every
    model swap would leave one more entry on the thread's driver context stack.
    """
    import ctypes

    try:
        cu = ctypes.CDLL("libcuda.so.1")
        current = ctypes.c_void_p()
        if cu.cuCtxGetCurrent(ctypes.byref(current)) == 0 and (current.value or 0) == handle:
            cu.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
    except (OSError, AttributeError) as e:  # no libcuda here: nothing was pushed either
        log.debug("driver context pop skipped: %s", e)


def deserialize(trt, engine_path, manifest):
    # type: (Any, str, Dict[str, Any]) -> Tuple[Any, Any]
    """(runtime, engine) for a verified plan, on the DLA core the manifest says it was built for.

    Raises EngineError when TensorRT cannot deserialize it. Needs a current CUDA context.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    runtime = trt.Runtime(logger)
    with open(engine_path, "rb") as f:
        engine = trt_compat.deserialize_engine(trt, runtime, f.read(), manifest.get("dla_core"))
    if engine is None:
        raise EngineError("{}: TensorRT could not deserialize the engine; run: edge-agent build-engine --size {}"
                          .format(engine_path, manifest.get("size", "fast")))
    return runtime, engine


class TensorRTBackend(Backend):
    """One TensorRT engine; created, used and closed on one thread."""

    name = "tensorrt"

    def __init__(self, engine_path, config):
        # type: (str, Any) -> None
        super(TensorRTBackend, self).__init__()
        self.engine_path = engine_path
        self.config = config
        self._cuda = None  # type: Any
        self._ctx = None  # type: Any
        self._pushed = 0
        self._stream = None  # type: Any
        self._host = []  # type: List[Any]
        self._device = []  # type: List[Any]
        self._mapped_input = False
        self._engine = None  # type: Any
        self._context = None  # type: Any
        self._runtime = None  # type: Any
        self._tensors = []  # type: List[Any]
        self._run = None  # type: Any
        self._addresses = []  # type: List[int]
        self._device_obj = None  # type: Any
        # Check before deserializing: a plan is native code, load only one we built (sha256).
        self.manifest = verify_artifact(engine_path)
        self.metadata = dict(self.manifest.get("onnx_metadata") or {})  # class names etc., as ONNX has them
        self._trt = trt_compat.import_tensorrt()
        cuda = self._cuda = _import_pycuda()
        cuda.init()
        device = cuda.Device(0)
        self._ctx = device.retain_primary_context()
        try:
            with self._current():
                self._load(device)
        except BaseException:
            self.close()
            raise

    @contextlib.contextmanager
    def _current(self):
        """Make this backend's context current for the block (pycuda keeps a per-thread stack)."""
        self._ctx.push()
        self._pushed += 1
        try:
            yield
        finally:
            self._pushed -= 1
            self._cuda.Context.pop()

    def _load(self, device):
        # type: (Any) -> None
        trt, cuda = self._trt, self._cuda
        self._runtime, self._engine = deserialize(trt, self.engine_path, self.manifest)
        self._context = self._engine.create_execution_context()
        tensors = trt_compat.io_tensors(trt, self._engine)
        for t in tensors:
            if t.is_input and any(d < 0 for d in t.shape):
                trt_compat.set_input_shape(trt, self._context, t, (1,) + tuple(t.shape[1:]))
        integrated = bool(device.get_attribute(cuda.device_attribute.INTEGRATED))
        # Mapped memory is read uncached by the GPU: a win or a loss per device, so a setting.
        zero_copy = integrated and bool(getattr(self.config, "zero_copy", False))  # config: TensorRTConfig
        self._stream = cuda.Stream()
        addresses = []
        for t in tensors:
            shape = trt_compat.context_shape(trt, self._context, t)
            size = int(np.prod(shape))
            if t.is_input and zero_copy:
                # Jetson: CPU and GPU share DRAM; mapped memory avoids the host->device copy.
                host = cuda.pagelocked_empty(size, t.dtype, mem_flags=cuda.host_alloc_flags.DEVICEMAP)
                addr = host.base.get_device_pointer()
                self._device.append(None)
                self._mapped_input = True
            else:
                host = cuda.pagelocked_empty(size, t.dtype)
                dev = cuda.mem_alloc(host.nbytes)
                self._device.append(dev)
                addr = int(dev)
            self._host.append(host.reshape(shape))
            addresses.append(addr)
            spec = TensorSpec(t.name, tuple(shape), t.dtype)  # a numpy scalar type, as the ORT backend gives
            (self.inputs if t.is_input else self.outputs).append(spec)
        self._tensors = tensors
        self._addresses = addresses
        self._run = trt_compat.make_executor(trt, self._context, tensors, addresses)
        self._device_obj = device
        log.info("loaded %s (TensorRT %s, %s, %s%s)", self.engine_path, trt_compat.version_string(trt),
                 self.manifest.get("precision", {}).get("built"), device.name(),
                 ", mapped input" if self._mapped_input else "")

    def device_engine(self):
        # type: () -> Any
        """The DeviceEngine for agent.detect.fused when the engine suits it, else None (logs why)."""
        from ..labels import class_names
        from ..postprocess.decode import make_decoder

        ins = [t for t in self._tensors if t.is_input]
        outs = [t for t in self._tensors if not t.is_input]
        why = ""
        layout = ""
        try:
            names = class_names(self.metadata)
            layout = make_decoder(self.outputs, num_classes_hint=len(names) or None).layout
        except Exception as e:  # the pipeline reports an uninterpretable output itself
            why = str(e)
        if not why and (len(ins) != 1 or len(outs) != 1 or layout != "yolov8"):
            why = "output layout {} (the GPU decode handles yolov8 [1, 4+nc, N] only)".format(layout or "unknown")
        if not why and (np.dtype(ins[0].dtype) != np.float32 or np.dtype(outs[0].dtype) != np.float32):
            why = "input/output dtype {}/{} (needs float32)".format(np.dtype(ins[0].dtype), np.dtype(outs[0].dtype))
        if why:
            log.info("%s: fused GPU detect off, using infer + CPU postprocess: %s", self.engine_path, why)
            return None
        from ..kernels import build
        from ..kernels.gpu import load_modules
        from ..kernels.runtime import PycudaRuntime
        from .base import DeviceEngine

        device = self._device_obj
        i_in = self._tensors.index(ins[0])
        i_out = self._tensors.index(outs[0])
        out_shape = self.outputs[0].shape
        in_shape = self.inputs[0].shape
        rt = PycudaRuntime(self._stream)
        try:
            with self._current():
                # Cubins beside the engines (compiled by build-engine), else the user kernel cache.
                engines_dir = os.path.dirname(os.path.abspath(self.engine_path))
                paths = cached_kernels(engines_dir, device.compute_capability())
                if paths is None:
                    paths = build.load_kernels(device.compute_capability())  # compiles once when nothing is cached
                modules = load_modules(rt, paths)
        except Exception as e:  # no nvcc and no cached cubin, a module that does not load: stay on the CPU path
            log.warning("%s: fused GPU detect off, using infer + CPU postprocess: %s", self.engine_path,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            return None
        log.info("%s: fused GPU detect on (preprocess, decode and NMS on the GPU)", self.engine_path)
        return DeviceEngine(rt, modules, self._addresses[i_in], int(self._device[i_out]), in_shape, out_shape,
                            self._execute, mapped_input=self._mapped_input, current=self._current)

    def _execute(self):
        # type: () -> None
        if not self._run(self._stream.handle):
            raise EngineError("{}: TensorRT execution failed".format(self.engine_path))

    def infer(self, blob, parallel=False):
        # type: (np.ndarray, bool) -> Dict[str, np.ndarray]
        """Run the engine on ``blob`` (1x3xHxW float32); return {output name: ndarray} (copies)."""
        cuda = self._cuda
        with self._current():
            for t, host, dev in zip(self._tensors, self._host, self._device):
                if t.is_input:
                    np.copyto(host, blob.reshape(host.shape), casting="same_kind")
                    if dev is not None:
                        cuda.memcpy_htod_async(dev, host, self._stream)
            if not self._run(self._stream.handle):
                raise EngineError("{}: TensorRT execution failed".format(self.engine_path))
            for t, host, dev in zip(self._tensors, self._host, self._device):
                if not t.is_input:
                    cuda.memcpy_dtoh_async(host, dev, self._stream)
            self._stream.synchronize()
            return {t.name: host.copy() for t, host in zip(self._tensors, self._host) if not t.is_input}

    def close(self):
        # type: () -> None
        """Free in reverse order of creation, then release the context; idempotent."""
        if self._ctx is None:
            return
        try:
            with self._current():
                self._run = None
                for dev in reversed(self._device):
                    if dev is not None:
                        dev.free()
                self._device = []
                for host in reversed(self._host):
                    base = getattr(host, "base", None)
                    while base is not None and not hasattr(base, "free"):
                        base = getattr(base, "base", None)
                    if base is not None:
                        base.free()
                self._host = []
                self._stream = None
                self._context = None
                self._engine = None
                self._runtime = None
                self._device_obj = None
        finally:
            ctx, self._ctx = self._ctx, None
            handle = ctx.handle
            ctx.detach()
            _pop_driver_context(handle)
