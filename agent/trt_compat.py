"""Every TensorRT version difference, in one module (the only place that checks versions).

7.1 (JetPack 4.5): bindings API, ``build_engine``, ``max_workspace_size``, no timing cache.
8.0-8.4: ``build_serialized_network``, timing cache; 8.4: ``set_memory_pool_limit``.
8.5+: tensor-name API (``num_io_tensors``, ``set_tensor_address``, ``execute_async_v3``).
10.x: bindings API, ``build_engine`` and ``max_workspace_size`` removed; EXPLICIT_BATCH
is the default (the flag is deprecated). Functions take the ``tensorrt`` module as an
argument so each generation's dispatch can be unit-tested with stand-ins.
"""

import collections
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple

from .errors import BackendUnavailable, EngineError

if TYPE_CHECKING:  # the stubs describe TensorRT 10; calls to older APIs carry narrow ignores
    import tensorrt

IOTensor = collections.namedtuple("IOTensor", "name shape dtype is_input index")


def dims(d):
    # type: (Any) -> Tuple[int, ...]
    """A TensorRT Dims (tuple-like, not typed as iterable in the stubs) as a tuple of ints."""
    return tuple(int(d[i]) for i in range(len(d)))


def _shape_arg(shape):
    # type: (Sequence[int]) -> Any
    return tuple(shape)  # TensorRT converts tuples to Dims implicitly (the stubs say Dims only)


def import_tensorrt():
    # type: () -> Any
    """The tensorrt module; raises BackendUnavailable when only stubs or nothing is installed."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailable("backend tensorrt: the tensorrt Python package is not installed here ({})".format(e))
    if not hasattr(trt, "Builder"):  # e.g. tensorrt-stubs alone: a namespace package without the runtime
        where = list(getattr(trt, "__path__", [])) or [str(trt)]
        raise BackendUnavailable("backend tensorrt: the TensorRT runtime is not installed here (only type stubs at {})"
                                 .format(where[0]))
    return trt


def version(trt):
    # type: (Any) -> Tuple[int, ...]
    """(major, minor, patch) of the tensorrt module."""
    parts = []
    for p in str(trt.__version__).split(".")[:3]:
        digits = ""
        for c in p:  # leading digits only: "0b6" (a pre-release) is 0
            if not c.isdigit():
                break
            digits += c
        parts.append(int(digits or 0))
    return tuple(parts)


def version_string(trt):
    # type: (Any) -> str
    return str(trt.__version__)


# --- building -------------------------------------------------------------------------------


def network_flags(trt):
    # type: (Any) -> int
    """Flags for ``create_network``: explicit batch (a flag before 10, the only mode in 10)."""
    if version(trt) >= (10,):
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def create_network(trt, builder):
    # type: (Any, tensorrt.Builder) -> tensorrt.INetworkDefinition
    return builder.create_network(network_flags(trt))


def set_workspace(trt, config, nbytes):
    # type: (Any, tensorrt.IBuilderConfig, int) -> None
    """The builder's scratch memory limit."""
    if version(trt) >= (8, 4):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, nbytes)
    else:
        config.max_workspace_size = nbytes  # type: ignore[attr-defined]  # TensorRT < 8.4; removed in 10


def parser_errors(parser):
    # type: (tensorrt.OnnxParser) -> List[str]
    """Every ONNX parser error, not only the first."""
    return [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]


def set_precision(trt, builder, config, precision, allow_slow=False):
    # type: (Any, tensorrt.Builder, tensorrt.IBuilderConfig, str, bool) -> Tuple[str, List[str]]
    """Set the precision flags; return (precision built, builder flags). Never lowers silently."""
    if precision == "fp32":
        return "fp32", []
    fast = builder.platform_has_fast_fp16 if precision == "fp16" else builder.platform_has_fast_int8
    if not fast and not allow_slow:
        raise EngineError("precision {} requested but this GPU has no fast {} (platform_has_fast_{} is False); "
                          "use --precision fp32, or --allow-slow-precision to build it anyway"
                          .format(precision, precision, precision))
    flags = ["FP16"] if precision == "fp16" else ["INT8"]
    if precision == "int8" and builder.platform_has_fast_fp16:
        flags.append("FP16")  # layers without an int8 kernel fall back to fp16 rather than fp32
    for name in flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    return precision, flags


def set_dla(trt, builder, config, core, precision):
    # type: (Any, tensorrt.Builder, tensorrt.IBuilderConfig, int, str) -> List[str]
    """Run on DLA ``core`` with GPU fallback for unsupported layers; ``core < 0``: GPU only."""
    if core < 0:
        return []
    if core >= builder.num_DLA_cores:
        raise EngineError("--dla-core {}: this device has {} DLA core(s)".format(core, builder.num_DLA_cores))
    if precision == "fp32":
        raise EngineError("--dla-core {}: DLA runs fp16 or int8 only; use --precision fp16".format(core))
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    return ["DLA_CORE={}".format(core), "GPU_FALLBACK"]


def has_timing_cache(trt):
    # type: (Any) -> bool
    return version(trt) >= (8, 0)


def load_timing_cache(trt, config, data):
    # type: (Any, tensorrt.IBuilderConfig, bytes) -> Optional[tensorrt.ITimingCache]
    """Attach a timing cache (``b''``: a new one) to the config; None before TensorRT 8."""
    if not has_timing_cache(trt):
        return None
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, False)
    return cache


def serialize_timing_cache(trt, config):
    # type: (Any, tensorrt.IBuilderConfig) -> Optional[bytes]
    if not has_timing_cache(trt):
        return None
    cache = config.get_timing_cache()
    return None if cache is None else bytes(cache.serialize())


def set_calibrator(trt, config, calibrator):
    # type: (Any, tensorrt.IBuilderConfig, Any) -> None
    config.int8_calibrator = calibrator  # deprecated in 10.1 (explicit quantization), still honoured


def add_batch_profile(trt, builder, network, config, batch):
    # type: (Any, tensorrt.Builder, tensorrt.INetworkDefinition, tensorrt.IBuilderConfig, Optional[Sequence[int]]) -> Optional[dict]
    """An optimization profile over the batch dimension of dynamic inputs; None for static models."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [t for t in inputs if any(d < 0 for d in dims(t.shape))]
    if not dynamic:
        return None
    lo, opt, hi = batch or (1, 1, 1)
    profile = builder.create_optimization_profile()
    out = {}
    for t in dynamic:
        rest = list(dims(t.shape)[1:])
        if any(d < 0 for d in rest):
            raise EngineError("input {}: only the batch dimension may be dynamic, got {}".format(t.name, dims(t.shape)))
        shapes = [tuple([b] + rest) for b in (lo, opt, hi)]
        profile.set_shape(t.name, _shape_arg(shapes[0]), _shape_arg(shapes[1]), _shape_arg(shapes[2]))
        out[t.name] = {"min": list(shapes[0]), "opt": list(shapes[1]), "max": list(shapes[2])}
    config.add_optimization_profile(profile)
    return out


def set_calibration_profile(trt, builder, config, profile):
    # type: (Any, tensorrt.Builder, tensorrt.IBuilderConfig, Optional[dict]) -> Any
    """Calibrate INT8 at batch 1 (min = opt = max) when the engine has a dynamic batch profile.

    The calibrator feeds one image per batch; without a calibration profile TensorRT
    calibrates at the first profile's opt shape and reads opt-batch images from that
    one-image buffer. ``profile``: add_batch_profile's result (None: static model, nothing
    to do). set_calibration_profile exists from TensorRT 7.1, our oldest, to 10.x.
    """
    if not profile:
        return None
    calib = builder.create_optimization_profile()
    for name in sorted(profile):
        one = _shape_arg([1] + list(profile[name]["opt"][1:]))
        calib.set_shape(name, one, one, one)
    config.set_calibration_profile(calib)
    return calib


def build_serialized(trt, builder, network, config):
    # type: (Any, tensorrt.Builder, tensorrt.INetworkDefinition, tensorrt.IBuilderConfig) -> bytes
    """Build and serialize the engine; raises EngineError when the builder returns nothing."""
    if version(trt) >= (8, 0):
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError("TensorRT build_serialized_network failed (see the TensorRT log above)")
        return bytes(memoryview(plan))
    engine = builder.build_engine(network, config)  # type: ignore[attr-defined]  # TensorRT 7.x; removed in 10
    if engine is None:
        raise EngineError("TensorRT build_engine failed (see the TensorRT log above)")
    return bytes(memoryview(engine.serialize()))


# --- running --------------------------------------------------------------------------------


def deserialize_engine(trt, runtime, plan, dla_core):
    # type: (Any, tensorrt.Runtime, bytes, Optional[int]) -> Optional[tensorrt.ICudaEngine]
    """Deserialize ``plan`` on the DLA core it was built for (None or -1: GPU only).

    IRuntime.DLA_core must be set before deserializing: an engine built for core 1
    otherwise runs on the runtime's default core (0, or -1 on some versions).
    """
    if dla_core is not None and int(dla_core) >= 0:
        runtime.DLA_core = int(dla_core)
    return runtime.deserialize_cuda_engine(plan)


def uses_tensor_names(trt):
    # type: (Any) -> bool
    return version(trt) >= (8, 5)


def io_tensors(trt, engine):
    # type: (Any, tensorrt.ICudaEngine) -> List[IOTensor]
    """The engine's inputs and outputs, in binding order."""
    out = []
    if uses_tensor_names(trt):
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            out.append(IOTensor(name, dims(engine.get_tensor_shape(name)), trt.nptype(engine.get_tensor_dtype(name)),
                                is_input, i))
        return out
    for i in range(engine.num_bindings):  # type: ignore[attr-defined]  # bindings API: TensorRT < 8.5, removed in 10
        out.append(IOTensor(
            engine.get_binding_name(i),  # type: ignore[attr-defined]  # TensorRT < 8.5
            dims(engine.get_binding_shape(i)),  # type: ignore[attr-defined]  # TensorRT < 8.5
            trt.nptype(engine.get_binding_dtype(i)),  # type: ignore[attr-defined]  # TensorRT < 8.5
            bool(engine.binding_is_input(i)),  # type: ignore[attr-defined]  # TensorRT < 8.5
            i))
    return out


def set_input_shape(trt, context, tensor, shape):
    # type: (Any, tensorrt.IExecutionContext, IOTensor, Sequence[int]) -> None
    """Fix a dynamic input's shape before running."""
    if uses_tensor_names(trt):
        context.set_input_shape(tensor.name, _shape_arg(shape))
    else:
        context.set_binding_shape(tensor.index, tuple(shape))  # type: ignore[attr-defined]  # TensorRT < 8.5


def context_shape(trt, context, tensor):
    # type: (Any, tensorrt.IExecutionContext, IOTensor) -> Tuple[int, ...]
    """A tensor's concrete shape once the input shapes are set."""
    if uses_tensor_names(trt):
        return dims(context.get_tensor_shape(tensor.name))
    return dims(context.get_binding_shape(tensor.index))  # type: ignore[attr-defined]  # TensorRT < 8.5


def make_executor(trt, context, tensors, addresses):
    # type: (Any, tensorrt.IExecutionContext, Sequence[IOTensor], Sequence[int]) -> Callable[[int], bool]
    """Bind device addresses once; return ``run(stream_handle) -> ok``."""
    if uses_tensor_names(trt):
        for t, addr in zip(tensors, addresses):
            context.set_tensor_address(t.name, int(addr))

        def run_v3(stream_handle):
            # type: (int) -> bool
            return bool(context.execute_async_v3(stream_handle))

        return run_v3
    bindings = [0] * len(tensors)
    for t, addr in zip(tensors, addresses):
        bindings[t.index] = int(addr)

    def run_v2(stream_handle):
        # type: (int) -> bool
        return bool(context.execute_async_v2(bindings=bindings,  # type: ignore[attr-defined]  # TensorRT < 10
                                             stream_handle=stream_handle))

    return run_v2
