"""INT8 for ONNX Runtime: a QDQ model made by ONNX Runtime's own static quantization (build side only).

``quantize_static`` (QDQ, per-channel weights, uint8 activations as ONNX Runtime
recommends for x86 with VNNI) calibrated on letterboxed images of the calib split. The
model goes to opset 13 first when it is older: per-channel ``DequantizeLinear`` needs
``axis``. Which nodes stay in float is a list of *blocks* (node-name prefixes such as
``/heads.0/box``, or ``tail``: the un-named decode ops after the last convolution);
``blocks(model)`` lists them, so a sensitivity scan (benchmarks/int8_frontier.py) can
keep each one in float in turn and measure what it buys.

Imported by the build child only; running the QDQ model needs plain ONNX Runtime, as
any ONNX model does, so loading stays wherever ONNX Runtime runs (Python 3.6 included).
"""

import collections
import importlib
import logging
import os
import tempfile

from ..errors import EngineError

METHODS = ("minmax", "entropy", "percentile")
MIN_ORT = (1, 11)  # QDQ with per-channel weights and Entropy/Percentile calibration as used here
MIN_OPSET = 13  # per-channel DequantizeLinear needs 'axis'
TAIL = "tail"  # the ops of the decode tail, which export without a module path

# The recipe `build-engine --precision int8` uses unless told otherwise, chosen by measurement on
# the demo models (benchmarks/README.md, "INT8 on ONNX Runtime"): MinMax on 32 images, and the
# float blocks measured per model at build time (choose_float_blocks; on the demo models: the
# decode tail alone holds the whole loss).
DEFAULT_METHOD = "minmax"
DEFAULT_CALIB_IMAGES = 32
DEFAULT_KEEP_FLOAT = ("auto",)

Recipe = collections.namedtuple("Recipe", "method calib_images keep_float")
Recipe.__doc__ = """How to quantize: calibration ``method`` (one of METHODS), at most ``calib_images``
images, ``keep_float``: block prefixes whose nodes stay float (see ``blocks``)."""


def default_recipe():
    return Recipe(DEFAULT_METHOD, DEFAULT_CALIB_IMAGES, DEFAULT_KEEP_FLOAT)


def recipe_from(method=None, calib_images=None, keep_float=None):
    """A Recipe with the defaults filled in; raises EngineError for an unknown method."""
    recipe = default_recipe()
    method = (method or recipe.method).lower()
    if method not in METHODS:
        raise EngineError("--calib-method: expected one of {}, got {!r}".format(", ".join(METHODS), method))
    keep = recipe.keep_float if keep_float is None else tuple(k.strip() for k in keep_float if k.strip())
    if keep == ("none",):
        keep = ()
    return Recipe(method, int(calib_images or recipe.calib_images), tuple(keep))


def ort_quantization():
    """The ``onnxruntime.quantization`` module; raises EngineError saying why INT8 is unavailable here."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise EngineError("int8 for onnxruntime: onnxruntime is not installed ({})".format(e))
    version = tuple(int(p) for p in ort.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_ORT:
        raise EngineError("int8 for onnxruntime needs onnxruntime >= {} for its quantization tools, found {} "
                          "(on JetPack 4 / Python 3.6 build fp32, or quantize on a newer machine: the QDQ "
                          "model it writes loads with this onnxruntime)".format(
                              ".".join(map(str, MIN_ORT)), ort.__version__))
    try:
        importlib.import_module("onnx")  # quantize_static needs it
        from onnxruntime import quantization
    except ImportError as e:
        raise EngineError("int8 for onnxruntime: onnxruntime's quantization tools do not import ({}); "
                          "pip install onnx".format(e))
    return quantization


def calibration_images(calib_dir, limit):
    """The first ``limit`` images (sorted) under ``calib_dir``; raises EngineError when there are none."""
    from .files import image_set

    if not calib_dir or not os.path.isdir(calib_dir):
        raise EngineError("int8: calibration folder {} not found (--calib-dir)".format(calib_dir))
    paths, _ = image_set(calib_dir, limit)
    if not paths:
        raise EngineError("int8: no calibration images in {} (--calib-dir)".format(calib_dir))
    return paths


def block_of(node_name):
    """The block a node belongs to: '/heads.0/box/box.1/Conv' -> '/heads.0/box', '/p3/cv1/Conv' -> '/p3';
    a node without a module path -> 'tail'."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) < 2:
        return TAIL
    depth = 2 if parts[0].startswith("heads") and len(parts) > 2 else 1
    return "/" + "/".join(parts[:depth])


def blocks(model):
    """The model's blocks in graph order: [(block, [node names])] (Constant nodes left out)."""
    out = collections.OrderedDict()  # type: collections.OrderedDict
    for node in model.graph.node:
        if node.op_type != "Constant":
            out.setdefault(block_of(node.name), []).append(node.name)
    return list(out.items())


def matches(block, prefixes):
    """Whether ``block`` is named by one of ``prefixes``: 'heads' names '/heads.0/box' and every other
    head, '/heads.0' both branches of head 0, 'tail' the decode tail."""
    for p in prefixes:
        if p == TAIL or block == TAIL:
            if p == block:
                return True
            continue
        p = "/" + p.strip("/")
        if block == p or block.startswith(p + "/") or block.startswith(p + "."):
            return True
    return False


def float_nodes(model, keep_float):
    """Names of the nodes in the blocks ``keep_float`` names."""
    return [name for block, names in blocks(model) if matches(block, keep_float) for name in names]


def to_opset(model, opset=MIN_OPSET):
    """``model`` converted to at least ``opset`` of the default domain (onnx.version_converter)."""
    from onnx import version_converter

    current = max([o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] or [0])
    if current >= opset:
        return model
    try:
        return version_converter.convert_version(model, opset)
    except Exception as e:
        raise EngineError("int8: cannot convert the model from opset {} to {} (needed for per-channel "
                          "quantization): {}".format(current, opset, str(e).splitlines()[0][:200]))


def make_reader(quantization, images, input_name, input_hw):
    """A CalibrationDataReader feeding ``images`` letterboxed as the agent does, one per batch."""
    import cv2

    from ..preprocess import Letterbox

    class Reader(quantization.CalibrationDataReader):  # type: ignore[name-defined]
        def __init__(self):
            self.paths = list(images)
            self.letterbox = Letterbox(input_hw[1], input_hw[0])

        def get_next(self):
            while self.paths:
                path = self.paths.pop(0)
                image = cv2.imread(path)
                if image is None:
                    raise EngineError("int8: cannot read calibration image {}".format(path))
                blob, _ = self.letterbox.run(image)
                return {input_name: blob.copy()}
            return None

    return Reader()


def quantize(onnx_path, out_path, recipe, calib_dir, emit=lambda phase, message: None):
    """Write the QDQ model of ``onnx_path`` to ``out_path`` following ``recipe``; return the facts for the manifest.

    Raises EngineError (no quantization tools, no images, a failed quantization).
    """
    quantization = ort_quantization()
    import onnx

    images = calibration_images(calib_dir, recipe.calib_images)
    model = onnx.load(onnx_path)
    opset_before = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    model = to_opset(model)
    graph_input = [i for i in model.graph.input if i.name not in {w.name for w in model.graph.initializer}][0]
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    if len(dims) != 4 or not dims[2] or not dims[3]:
        raise EngineError("int8: {} has a dynamic input size {}; quantization needs a fixed one".format(onnx_path, dims))
    excluded = float_nodes(model, recipe.keep_float)
    unknown = [k for k in recipe.keep_float if not any(matches(b, [k]) for b, _ in blocks(model))]
    if unknown:
        raise EngineError("--keep-float: no block {} in {} (blocks: {})".format(
            ", ".join(map(repr, unknown)), onnx_path, ", ".join(b for b, _ in blocks(model))))
    method = {"minmax": quantization.CalibrationMethod.MinMax, "entropy": quantization.CalibrationMethod.Entropy,
              "percentile": quantization.CalibrationMethod.Percentile}[recipe.method]
    emit("calibrating", "int8: {} calibration on {} image(s) of {}; float blocks: {} ({} nodes)".format(
        recipe.method, len(images), calib_dir, ", ".join(recipe.keep_float) or "none", len(excluded)))
    # Keep the metadata (class names, imgsz): the quantizer copies the graph, not always the props.
    metadata = {p.key: p.value for p in model.metadata_props}
    source = out_path + ".opset{}.onnx".format(MIN_OPSET)
    onnx.save(model, source)  # a path, not the ModelProto: older onnxruntime takes paths only
    # The quantizer logs advice on the root logger at each call ("consider pre-processing"): noise
    # in a build's one line per step. Its errors still raise.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantization.quantize_static(
            source, out_path, make_reader(quantization, images, graph_input.name, dims[2:]),
            quant_format=quantization.QuantFormat.QDQ, per_channel=True, reduce_range=False,
            activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
            nodes_to_exclude=excluded, calibrate_method=method,
            extra_options={"CalibPercentile": 99.999} if recipe.method == "percentile" else {})
    except EngineError:
        raise
    except Exception as e:
        raise EngineError("int8: onnxruntime's quantize_static failed on {}: {}: {}".format(
            onnx_path, type(e).__name__, (str(e).strip().splitlines() or [""])[0][:300]))
    finally:
        root.setLevel(level)
        if os.path.exists(source):
            os.remove(source)
    quantized = onnx.load(out_path)
    if {p.key for p in quantized.metadata_props} != set(metadata):
        del quantized.metadata_props[:]
        for key, value in metadata.items():
            quantized.metadata_props.add(key=key, value=value)
        onnx.save(quantized, out_path)
    qdq = sum(1 for n in quantized.graph.node if n.op_type == "QuantizeLinear")
    return {"method": recipe.method, "calib_images": len(images), "calib_dir": os.path.abspath(calib_dir),
            "keep_float": list(recipe.keep_float), "float_nodes": len(excluded), "quantize_nodes": qdq,
            "per_channel": True, "activation_type": "uint8", "weight_type": "int8", "format": "QDQ",
            "opset": {"before": opset_before, "after": max(opset_before, MIN_OPSET)}}


def _calib_map(config, size, model_path, dataset):
    from .. import accuracy
    from ..detect import detector_on

    detector = detector_on(config, size, "onnxruntime", model_path)
    try:
        return accuracy.measure_map(detector, dataset)["map50_95"]
    finally:
        detector.close()


def choose_float_blocks(job, recipe, emit):
    """Which blocks stay float, by measurement on the calib split (its COCO annotations); returns
    (blocks, facts for the manifest).

    mAP50-95 on the calib split: of the fp32 model, of everything quantized, then of everything
    quantized but one block, for each block (its sensitivity: what keeping it in float recovers).
    Blocks go float in order of sensitivity until the calib drop is within half of
    ``max_map_drop`` (the other half is margin for the val split the gate measures on).
    Raises EngineError when the calib folder has no annotations.
    """
    import onnx

    from .. import coco

    calib_dir = job["calib_dir"]
    if not os.path.isfile(os.path.join(calib_dir, "instances.json")):
        raise EngineError("int8: --keep-float auto measures sensitivity on the calib split's COCO annotations, and "
                          "{} has no instances.json; pass --keep-float BLOCKS (e.g. heads,tail) or 'none'".format(
                              calib_dir))
    config, size = job["config"], job["size"]
    dataset = coco.open_dataset(calib_dir)
    # Sensitivity on the calibration images themselves: the split's first ``calib_images``.
    dataset.images = dataset.images[:recipe.calib_images]
    target = job["max_map_drop"] / 2.0
    names = [b for b, _ in blocks(to_opset(onnx.load(job["onnx"])))]
    tmp = tempfile.mkdtemp(prefix=".int8-search-", dir=os.path.dirname(job["scratch"]))
    trial = os.path.join(tmp, "trial.onnx")
    quiet = lambda phase, message: None  # noqa: E731

    def calib_map(keep):
        quantize(job["onnx"], trial, recipe._replace(keep_float=tuple(keep)), calib_dir, quiet)
        return _calib_map(config, size, trial, dataset)

    try:
        emit("measuring", "int8: per-block sensitivity on {} ({} blocks, {} images)".format(
            calib_dir, len(names), len(dataset.images)))
        ref = _calib_map(config, size, job["onnx"], dataset)
        steps = [{"keep_float": [], "map50_95": calib_map([])}]
        facts = {"calib_map50_95_fp32": ref, "target_drop": target, "sensitivity": [], "steps": steps}
        if ref - steps[0]["map50_95"] <= target:
            return (), facts
        for name in names:
            m = calib_map([name])
            facts["sensitivity"].append({"block": name, "recovered": round(m - steps[0]["map50_95"], 4)})
            emit("measuring", "int8: {} in float recovers {:+.4f} mAP50-95".format(name, m - steps[0]["map50_95"]))
        order = [s["block"] for s in sorted(facts["sensitivity"], key=lambda s: -s["recovered"])]
        keep = []
        for name in order:
            keep.append(name)
            m = calib_map(keep)
            steps.append({"keep_float": list(keep), "map50_95": m})
            emit("measuring", "int8: float {}: calib mAP50-95 {:.4f} (fp32 {:.4f})".format(", ".join(keep), m, ref))
            if ref - m <= target:
                break
        return tuple(keep), facts
    finally:
        for name in os.listdir(tmp):
            os.remove(os.path.join(tmp, name))
        os.rmdir(tmp)
