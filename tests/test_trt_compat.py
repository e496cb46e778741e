"""agent.trt_compat dispatch for each TensorRT generation (7.1, 8.2, 8.5, 10.x).

TensorRT cannot run here, so each generation is a stand-in with exactly the attributes
that version's Python API has (a removed API is absent, so calling it fails): this
tests the dispatch logic, and the GPU test (test_tensorrt_gpu.py) tests the real thing.
"""

import types

import numpy as np
import pytest

from agent import trt_compat
from agent.errors import BackendUnavailable, EngineError

VERSIONS = ["7.1.3.0", "8.2.1.8", "8.5.2.2", "10.3.0.26"]
IO = [("images", (1, 3, 64, 64), True), ("output0", (1, 6, 64), False)]


def _recorder(calls, name, result=None):
    def method(self, *args, **kwargs):
        calls.append((name,) + args + tuple(sorted(kwargs.items())))
        return result(self, *args) if callable(result) else result
    return method


def make_trt(version, fast_fp16=True, fast_int8=True, dla_cores=2):
    """A stand-in ``tensorrt`` module for ``version``: only that generation's API exists."""
    v = tuple(int(x) for x in version.split(".")[:2])
    calls = []
    rec = lambda name, result=None: _recorder(calls, name, result)  # noqa: E731

    enums = dict(
        NetworkDefinitionCreationFlag=types.SimpleNamespace(EXPLICIT_BATCH=0),
        BuilderFlag=types.SimpleNamespace(FP16="FP16", INT8="INT8", GPU_FALLBACK="GPU_FALLBACK"),
        DeviceType=types.SimpleNamespace(GPU="GPU", DLA="DLA"),
        TensorIOMode=types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
    )
    if v >= (8, 4):
        enums["MemoryPoolType"] = types.SimpleNamespace(WORKSPACE="WORKSPACE")

    config_attrs = {"set_flag": rec("set_flag")}
    if v < (10, 0):
        config_attrs["max_workspace_size"] = 0  # deprecated in 8.4, removed in 10
    if v >= (8, 4):
        config_attrs["set_memory_pool_limit"] = rec("set_memory_pool_limit")
    if v >= (8, 0):
        config_attrs["create_timing_cache"] = rec("create_timing_cache", lambda self, data: ("cache", data))
        config_attrs["set_timing_cache"] = rec("set_timing_cache", True)
        config_attrs["get_timing_cache"] = rec("get_timing_cache", types.SimpleNamespace(serialize=lambda: b"tc"))
    Config = type("IBuilderConfig", (), config_attrs)

    builder_attrs = {
        "platform_has_fast_fp16": fast_fp16, "platform_has_fast_int8": fast_int8, "num_DLA_cores": dla_cores,
        "create_network": rec("create_network", "network"),
    }
    if v < (10, 0):
        builder_attrs["build_engine"] = rec("build_engine", lambda self, n, c: types.SimpleNamespace(serialize=lambda: b"plan7"))
    if v >= (8, 0):
        builder_attrs["build_serialized_network"] = rec("build_serialized_network", b"plan8")
    Builder = type("Builder", (), builder_attrs)

    engine_attrs = {}
    if v < (10, 0):
        engine_attrs.update(
            num_bindings=len(IO),
            get_binding_name=lambda self, i: IO[i][0],
            get_binding_shape=lambda self, i: IO[i][1],
            get_binding_dtype=lambda self, i: "FLOAT",
            binding_is_input=lambda self, i: IO[i][2],
        )
    if v >= (8, 5):
        by_name = {n: (s, inp) for n, s, inp in IO}
        engine_attrs.update(
            num_io_tensors=len(IO),
            get_tensor_name=lambda self, i: IO[i][0],
            get_tensor_shape=lambda self, name: by_name[name][0],
            get_tensor_dtype=lambda self, name: "FLOAT",
            get_tensor_mode=lambda self, name: "INPUT" if by_name[name][1] else "OUTPUT",
        )
    Engine = type("ICudaEngine", (), engine_attrs)

    context_attrs = {}
    if v < (10, 0):
        context_attrs.update(execute_async_v2=rec("execute_async_v2", True), set_binding_shape=rec("set_binding_shape"),
                             get_binding_shape=lambda self, i: (2,) + tuple(IO[i][1][1:]))
    if v >= (8, 5):
        context_attrs.update(execute_async_v3=rec("execute_async_v3", True), set_tensor_address=rec("set_tensor_address"),
                             set_input_shape=rec("set_input_shape"),
                             get_tensor_shape=lambda self, name: (3,) + tuple(dict((n, s) for n, s, _ in IO)[name][1:]))
    Context = type("IExecutionContext", (), context_attrs)

    trt = types.SimpleNamespace(__version__=version, Builder=Builder, nptype=lambda dt: np.float32, **enums)
    return trt, Builder(), Config(), Engine(), Context(), calls


@pytest.mark.parametrize("version, expected", [("7.1.3.0", (7, 1, 3)), ("8.2.1.8", (8, 2, 1)), ("10.0.0b6", (10, 0, 0))])
def test_version(version, expected):
    assert trt_compat.version(types.SimpleNamespace(__version__=version)) == expected


@pytest.mark.parametrize("version, flags", [("7.1.3.0", 1), ("8.2.1.8", 1), ("8.5.2.2", 1), ("10.3.0.26", 0)])
def test_network_flags_explicit_batch_before_10(version, flags):
    trt, builder, *_rest, calls = make_trt(version)
    assert trt_compat.create_network(trt, builder) == "network"
    assert calls == [("create_network", flags)]


@pytest.mark.parametrize("version", VERSIONS)
def test_workspace(version):
    trt, _, config, _, _, calls = make_trt(version)
    trt_compat.set_workspace(trt, config, 256 << 20)
    if trt_compat.version(trt) >= (8, 4):
        assert calls == [("set_memory_pool_limit", "WORKSPACE", 256 << 20)]
    else:
        assert config.max_workspace_size == 256 << 20 and calls == []


@pytest.mark.parametrize("version", VERSIONS)
def test_build_serialized(version):
    trt, builder, config, _, _, calls = make_trt(version)
    plan = trt_compat.build_serialized(trt, builder, "network", config)
    if version.startswith("7."):
        assert plan == b"plan7" and calls[0][0] == "build_engine"
    else:
        assert plan == b"plan8" and [c[0] for c in calls] == ["build_serialized_network"]


def test_build_failure_is_an_engine_error():
    trt, builder, config, *_ = make_trt("8.5.2.2")
    type(builder).build_serialized_network = lambda self, n, c: None
    with pytest.raises(EngineError, match="build_serialized_network failed"):
        trt_compat.build_serialized(trt, builder, "network", config)


@pytest.mark.parametrize("version", VERSIONS)
def test_io_tensors_same_answer_from_either_api(version):
    trt, _, _, engine, _, _ = make_trt(version)
    tensors = trt_compat.io_tensors(trt, engine)
    assert [(t.name, t.index, t.shape, t.is_input) for t in tensors] == [
        ("images", 0, (1, 3, 64, 64), True), ("output0", 1, (1, 6, 64), False)]
    assert all(t.dtype is np.float32 for t in tensors)


@pytest.mark.parametrize("version", VERSIONS)
def test_executor_binds_once_and_runs(version):
    trt, _, _, engine, context, calls = make_trt(version)
    tensors = trt_compat.io_tensors(trt, engine)
    run = trt_compat.make_executor(trt, context, list(reversed(tensors)), [2000, 1000])  # order must not matter
    assert run(77) is True
    if trt_compat.version(trt) >= (8, 5):
        assert calls == [("set_tensor_address", "output0", 2000), ("set_tensor_address", "images", 1000),
                         ("execute_async_v3", 77)]
    else:
        assert calls == [("execute_async_v2", ("bindings", [1000, 2000]), ("stream_handle", 77))]


@pytest.mark.parametrize("version", VERSIONS)
def test_dynamic_shapes(version):
    trt, _, _, engine, context, calls = make_trt(version)
    images, output = trt_compat.io_tensors(trt, engine)
    trt_compat.set_input_shape(trt, context, images, (1, 3, 64, 64))
    new_api = trt_compat.version(trt) >= (8, 5)
    assert calls == [("set_input_shape", "images", (1, 3, 64, 64))] if new_api else \
        calls == [("set_binding_shape", 0, (1, 3, 64, 64))]
    assert trt_compat.context_shape(trt, context, output) == ((3, 6, 64) if new_api else (2, 6, 64))


@pytest.mark.parametrize("version", VERSIONS)
def test_timing_cache(version):
    trt, _, config, _, _, calls = make_trt(version)
    cache = trt_compat.load_timing_cache(trt, config, b"old")
    if version.startswith("7."):
        assert cache is None and calls == [] and trt_compat.serialize_timing_cache(trt, config) is None
    else:
        assert cache == ("cache", b"old")
        assert calls == [("create_timing_cache", b"old"), ("set_timing_cache", ("cache", b"old"), False)]
        assert trt_compat.serialize_timing_cache(trt, config) == b"tc"


def test_precision_is_never_lowered_silently():
    trt, builder, config, _, _, calls = make_trt("8.2.1.8", fast_fp16=False, fast_int8=False)
    with pytest.raises(EngineError, match="no fast fp16"):
        trt_compat.set_precision(trt, builder, config, "fp16")
    assert calls == []
    assert trt_compat.set_precision(trt, builder, config, "fp16", allow_slow=True) == ("fp16", ["FP16"])
    assert calls == [("set_flag", "FP16")]


def test_int8_falls_back_to_fp16_layers_where_fast():
    trt, builder, config, _, _, calls = make_trt("8.5.2.2")
    assert trt_compat.set_precision(trt, builder, config, "int8") == ("int8", ["INT8", "FP16"])
    assert calls == [("set_flag", "INT8"), ("set_flag", "FP16")]
    assert trt_compat.set_precision(trt, builder, config, "fp32") == ("fp32", [])


def test_dla_with_gpu_fallback():
    trt, builder, config, _, _, calls = make_trt("8.2.1.8", dla_cores=2)
    assert trt_compat.set_dla(trt, builder, config, -1, "fp16") == [] and calls == []
    assert trt_compat.set_dla(trt, builder, config, 1, "fp16") == ["DLA_CORE=1", "GPU_FALLBACK"]
    assert config.default_device_type == "DLA" and config.DLA_core == 1 and calls == [("set_flag", "GPU_FALLBACK")]
    with pytest.raises(EngineError, match="2 DLA core"):
        trt_compat.set_dla(trt, builder, config, 2, "fp16")
    with pytest.raises(EngineError, match="fp16 or int8"):
        trt_compat.set_dla(trt, builder, config, 0, "fp32")


def test_every_parser_error_is_reported():
    errors = ["In node 3 (Conv): bad weights", "In node 9 (Resize): unsupported mode"]
    parser = types.SimpleNamespace(num_errors=2, get_error=lambda i: errors[i])
    assert trt_compat.parser_errors(parser) == errors


def test_batch_profile_only_for_dynamic_inputs():
    calls = []
    profile = types.SimpleNamespace(set_shape=lambda *a: calls.append(("set_shape",) + a))
    builder = types.SimpleNamespace(create_optimization_profile=lambda: profile)
    config = types.SimpleNamespace(add_optimization_profile=lambda p: calls.append(("add", p)))
    dynamic = types.SimpleNamespace(num_inputs=1, get_input=lambda i: types.SimpleNamespace(name="images", shape=(-1, 3, 64, 64)))
    static = types.SimpleNamespace(num_inputs=1, get_input=lambda i: types.SimpleNamespace(name="images", shape=(1, 3, 64, 64)))
    assert trt_compat.add_batch_profile(None, builder, static, config, (1, 2, 4)) is None and calls == []
    got = trt_compat.add_batch_profile(None, builder, dynamic, config, (1, 2, 4))
    assert got == {"images": {"min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [4, 3, 64, 64]}}
    assert calls == [("set_shape", "images", (1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 64, 64)), ("add", profile)]


def test_stub_only_tensorrt_is_unavailable():
    try:
        import tensorrt
    except ImportError:
        tensorrt = None
    if tensorrt is not None and hasattr(tensorrt, "Builder"):
        pytest.skip("the real TensorRT is installed here")
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        trt_compat.import_tensorrt()


class RecordingRuntime(object):
    """A stand-in IRuntime that records attribute sets and calls in order (TensorRT cannot run here)."""

    def __init__(self, logger=None):
        object.__setattr__(self, "calls", [])

    def __setattr__(self, name, value):
        self.calls.append(("set", name, value))
        object.__setattr__(self, name, value)

    def deserialize_cuda_engine(self, plan):
        self.calls.append(("deserialize_cuda_engine", plan))
        return "engine"


def _fake_trt_module():
    """What TensorRTBackend's loader touches of the tensorrt module: Logger, plugins, Runtime."""
    logger = type("Logger", (), {"WARNING": "W", "__init__": lambda self, level: None})
    return types.SimpleNamespace(__version__="8.5.2.2", Logger=logger, Runtime=RecordingRuntime,
                                 init_libnvinfer_plugins=lambda logger, namespace: None)


@pytest.mark.parametrize("dla_core, expected", [(1, [("set", "DLA_core", 1), ("deserialize_cuda_engine", b"plan")]),
                                                (0, [("set", "DLA_core", 0), ("deserialize_cuda_engine", b"plan")]),
                                                (-1, [("deserialize_cuda_engine", b"plan")]),
                                                (None, [("deserialize_cuda_engine", b"plan")])])
def test_engine_loads_on_the_dla_core_it_was_built_for(tmp_path, dla_core, expected):
    """The backend's loader sets IRuntime.DLA_core from the manifest *before* deserializing."""
    from agent.backends.tensorrt import deserialize

    plan = tmp_path / "fast.engine"
    plan.write_bytes(b"plan")
    runtime, engine = deserialize(_fake_trt_module(), str(plan), {"size": "fast", "dla_core": dla_core})
    assert engine == "engine" and runtime.calls == expected


def test_undeserializable_engine_is_an_engine_error(tmp_path):
    from agent.backends.tensorrt import deserialize

    plan = tmp_path / "fast.engine"
    plan.write_bytes(b"plan")
    trt = _fake_trt_module()
    trt.Runtime = type("R", (RecordingRuntime,), {"deserialize_cuda_engine": lambda self, plan: None})
    with pytest.raises(EngineError, match="could not deserialize"):
        deserialize(trt, str(plan), {"size": "fast", "dla_core": -1})


def test_int8_calibrates_at_batch_one_under_a_dynamic_profile():
    """A build profile with opt batch 4 must not make TensorRT calibrate 4 images from the one-image buffer."""
    calls = []
    profiles = []

    def new_profile():
        p = types.SimpleNamespace(set_shape=lambda *a: calls.append(("set_shape", len(profiles)) + a))
        profiles.append(p)
        return p

    builder = types.SimpleNamespace(create_optimization_profile=new_profile)
    config = types.SimpleNamespace(add_optimization_profile=lambda p: calls.append(("add", profiles.index(p))),
                                   set_calibration_profile=lambda p: calls.append(("calib", profiles.index(p))))
    network = types.SimpleNamespace(num_inputs=1, get_input=lambda i: types.SimpleNamespace(
        name="images", shape=(-1, 3, 64, 64)))
    shapes = trt_compat.add_batch_profile(None, builder, network, config, (1, 4, 8))
    assert trt_compat.set_calibration_profile(None, builder, config, shapes) is profiles[1]
    assert calls == [("set_shape", 1, "images", (1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64)), ("add", 0),
                     ("set_shape", 2, "images", (1, 3, 64, 64), (1, 3, 64, 64), (1, 3, 64, 64)), ("calib", 1)]
    del calls[:]
    assert trt_compat.set_calibration_profile(None, builder, config, None) is None and calls == []
