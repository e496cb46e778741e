"""What the build child runs: validate the ONNX as a detector, then build it for one backend.

Runs in a child process started by build.run_builder (through child.run_in_child): a
parser or builder that crashes takes only the child down. Returns the facts the parent
writes into the manifest.
"""

import importlib
import os

from ..errors import EngineError, ModelError
from .artifact import ORT_OPT_LEVEL, ORT_PROVIDERS


def run_job(envelope, send):
    """The child's entry: run ``envelope['target'](job, emit(phase, message))``, events as (phase, message)."""
    module, name = envelope["target"].split(":")

    def emit(phase, message):
        send((phase, message))

    return getattr(importlib.import_module(module), name)(envelope["job"], emit)


def validate_onnx(path):
    """Parse ``path`` as ONNX (onnx.load + checker if onnx is installed); raise ModelError naming it."""
    try:
        import onnx
    except ImportError:
        return None  # the runtime's own loader reports the error
    try:
        model = onnx.load(path)
        onnx.checker.check_model(model)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError("{}: not a valid ONNX model ({}: {})".format(path, type(e).__name__, first[:200]))
    if not model.graph.input or not model.graph.output:
        raise ModelError("{}: not a valid ONNX model (graph has no inputs or outputs)".format(path))
    return model


def _first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _free_bytes(path):
    st = os.statvfs(os.path.dirname(path) or ".")
    return st.f_bavail * st.f_frsize


def _ort_specs(values):
    return [{"name": v.name, "shape": list(v.shape), "dtype": v.type} for v in values]


def build_onnxruntime(job, emit):
    """ONNX Runtime's counterpart of an engine: the graph optimized at ORT_ENABLE_EXTENDED (fp32),
    or the QDQ model of ONNX Runtime's static quantization (int8)."""
    import onnxruntime as ort

    if job.get("batch"):
        emit("building", "--batch ignored: onnxruntime runs dynamic batch without a profile")
    if job["precision"] == "int8":
        facts = quantize_onnxruntime(job, emit)
    else:
        facts = optimize_onnxruntime(ort, job, emit)
    emit("verifying", "loading the {} model back".format("int8" if job["precision"] == "int8" else "optimized"))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        # A partial write (full disk) must not pass as a model.
        sess = ort.InferenceSession(job["scratch"], sess_options=so, providers=ORT_PROVIDERS)
    except Exception as e:
        raise EngineError("the {} model of {} does not load back ({} bytes free in {}): {}".format(
            job["precision"], job["onnx"], _free_bytes(job["scratch"]), os.path.dirname(job["scratch"]),
            _first_line(e)))
    with open(job["scratch"], "rb") as f:
        os.fsync(f.fileno())
    if job["precision"] == "int8":
        return dict(facts, inputs=_ort_specs(sess.get_inputs()), outputs=_ort_specs(sess.get_outputs()))
    return {"precision_built": "fp32", "inputs": _ort_specs(sess.get_inputs()), "outputs": _ort_specs(sess.get_outputs()),
            "profile": None, "builder_flags": ["graph_optimization_level=" + ORT_OPT_LEVEL]}


def quantize_onnxruntime(job, emit):
    """INT8: a QDQ model by ONNX Runtime's static quantization (agent.engines.quantize), float blocks
    chosen by measured sensitivity when ``keep_float`` is auto."""
    from . import quantize as q

    recipe = q.recipe_from(job["calib_method"], job["calib_images"], job["keep_float"])
    search = None
    if recipe.keep_float == ("auto",):
        keep, search = q.choose_float_blocks(job, recipe, emit)
        recipe = recipe._replace(keep_float=keep)
    facts = q.quantize(job["onnx"], job["scratch"], recipe, job["calib_dir"], emit)
    if search is not None:
        facts["search"] = search
    facts["requested_keep_float"] = list(job["keep_float"])
    return {"precision_built": "int8", "profile": None, "quantization": facts,
            "builder_flags": ["quantize_static", "QDQ", "per_channel", "calibrate_method=" + recipe.method]}


def optimize_onnxruntime(ort, job, emit):
    """FP32: the graph optimized at ORT_ENABLE_EXTENDED, written to the job's scratch file."""
    emit("optimizing", "optimizing {} with onnxruntime {} ({})".format(job["onnx"], ort.__version__, ORT_OPT_LEVEL))
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_OPT_LEVEL)
    so.optimized_model_filepath = job["scratch"]
    so.add_session_config_entry("session.save_model_format", "ONNX")
    try:
        ort.InferenceSession(job["onnx"], sess_options=so, providers=ORT_PROVIDERS)
    except Exception as e:
        reason = _first_line(e)
        try:  # ORT reports a failed write of the optimized model (full disk) as a protobuf error
            ort.InferenceSession(job["onnx"], providers=ORT_PROVIDERS)
        except Exception:
            raise ModelError("{}: onnxruntime cannot load it ({})".format(job["onnx"], reason))
        raise EngineError("cannot write the optimized model into {} ({} bytes free): {}".format(
            os.path.dirname(job["scratch"]), _free_bytes(job["scratch"]), reason))
    if not os.path.isfile(job["scratch"]):
        raise EngineError("onnxruntime wrote no optimized model for {}".format(job["onnx"]))
    return {}


def check_detector(path, inputs, outputs, metadata):
    """Refuse a model ``run`` could not use as a detector; raise ModelError naming ``path``.

    ``inputs``/``outputs``: [{name, shape, dtype}] (dims None or negative when dynamic).
    The outputs go through decode.make_decoder, the layout detection ``run`` uses, so
    build-engine refuses exactly what ``run`` would refuse after the artifact was replaced.
    """
    from ..backends.base import TensorSpec
    from ..labels import class_names
    from ..postprocess.decode import make_decoder

    def specs(values):
        return [TensorSpec(v["name"], list(v["shape"] or ()), v["dtype"]) for v in values]

    def refuse(why):
        return ModelError("{}: not a detector the agent can run: {}".format(path, why))

    shapes = [list(i["shape"] or ()) for i in inputs]
    if len(shapes) != 1 or len(shapes[0]) != 4 or shapes[0][1] != 3:
        raise refuse("expected one NCHW image input with 3 channels, found {}".format(
            ", ".join("{} {}".format(i["name"], s) for i, s in zip(inputs, shapes)) or "none"))
    try:
        nc = len(class_names(metadata)) or None
    except (ValueError, TypeError):  # unreadable 'names' metadata: judge the outputs by shape alone
        nc = None
    try:
        make_decoder(specs(outputs), num_classes_hint=nc)
    except ModelError as e:
        raise refuse(e)


def _onnx_specs(model, values):
    """[{name, shape, dtype}] of graph inputs or outputs, weights (old exports list them as inputs) left out."""
    import onnx

    weights = {w.name for w in model.graph.initializer}
    return [{"name": v.name, "dtype": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower(),
             "shape": [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]}
            for v in values if v.name not in weights]


def build_job(job, emit):
    """Validate the ONNX as a detector, then build for the job's backend; return the facts for the manifest."""
    emit("validating", "validating {}".format(job["onnx"]))
    model = validate_onnx(job["onnx"])
    metadata = {p.key: p.value for p in model.metadata_props} if model is not None else {}
    if model is not None:  # before a TensorRT build spends minutes on it
        check_detector(job["onnx"], _onnx_specs(model, model.graph.input), _onnx_specs(model, model.graph.output),
                       metadata)
    if job["backend"] == "onnxruntime":
        result = build_onnxruntime(job, emit)
    else:
        from . import trt_build

        result = trt_build.build(job, emit)
    # Again on what the runtime reports (the check above needs the onnx package, often absent on
    # a Jetson); the parent commits the artifact only after this returns.
    check_detector(job["onnx"], result["inputs"], result["outputs"], metadata)
    # The ONNX metadata (class names, imgsz) travels in the manifest: a TensorRT plan drops it.
    result["onnx_metadata"] = metadata
    return result
