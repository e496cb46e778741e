"""Model cost from the ONNX graph: parameter count and GFLOPs (Conv/Gemm/MatMul MACs).

``onnx`` is optional: without it every figure is None. FLOPs count 2 per
multiply-accumulate of the compute-heavy ops only (Conv, ConvTranspose, Gemm,
MatMul); activations, adds and resizes are left out, as most papers do.
"""

import logging

log = logging.getLogger("edge_agent.benchmark")


def _dims(value_info):
    """The shape as ints, or None when shape inference left a dimension (or the rank) unknown."""
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):  # unknown rank: older onnx (1.10) leaves Resize outputs so
        return None
    shape = tensor_type.shape
    out = []
    for d in shape.dim:
        if not (d.HasField("dim_value") and d.dim_value > 0):
            return None
        out.append(d.dim_value)
    return out


def _run_for_shapes(model, names):
    """{name: shape} of intermediate tensors by running the model once on zeros (onnxruntime).

    Shape inference cannot follow shapes computed at run time (a Resize whose sizes come
    from a Shape op, as torch exports upsampling); running the graph can.
    """
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
    except ImportError:
        return {}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = set(o.name for o in m.graph.output)
    for name in names:
        if name not in existing:
            m.graph.output.add().name = name
    try:
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {}
        for i in sess.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
            feeds[i.name] = np.zeros(shape, np.float32)
        outs = sess.run(list(names), feeds)
    except Exception as e:  # an exotic graph: fall back to what inference gave
        log.debug("model stats: cannot run the graph for shapes: %s", e)
        return {}
    return {n: list(v.shape) for n, v in zip(names, outs)}


def _prod(values):
    n = 1
    for v in values:
        n *= int(v)
    return n


def model_stats(path):
    """{'params': int, 'gflops': float, 'metadata': {key: value}} of an ONNX file; Nones without onnx."""
    try:
        import onnx
        from onnx import numpy_helper, shape_inference  # noqa: F401
    except ImportError:
        return {"params": None, "gflops": None, "metadata": {}}
    try:
        model = onnx.load(path)
    except Exception as e:  # a corrupt file is the loader's problem; report no figures
        log.warning("%s: cannot read ONNX graph for model stats: %s", path, e)
        return {"params": None, "gflops": None, "metadata": {}}
    metadata = {p.key: p.value for p in model.metadata_props}
    graph = model.graph
    params = sum(_prod(init.dims) for init in graph.initializer)
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception as e:
        log.warning("%s: shape inference failed, no GFLOPs: %s", path, e)
        return {"params": int(params), "gflops": None, "metadata": metadata}
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = _dims(vi)
        if dims is not None:
            shapes[vi.name] = dims
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    unknown = []
    for node in inferred.graph.node:
        if node.op_type in _COUNTED:
            unknown.extend(t for t in list(node.input[:1]) + list(node.output[:1]) if t and t not in shapes)
    if unknown:
        shapes.update(_run_for_shapes(model, sorted(set(unknown))))
    macs = 0
    for node in inferred.graph.node:
        macs += _node_macs(node, shapes)
    return {"params": int(params), "gflops": round(2.0 * macs / 1e9, 6), "metadata": metadata}


_COUNTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            if a.ints:
                return list(a.ints)
            return a.i
    return default


def _node_macs(node, shapes):
    """Multiply-accumulates of one node from its inferred shapes (0 for other ops or unknown shapes)."""
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        w = shapes.get(node.input[1])
        out = shapes.get(node.output[0])
        if not w or not out:
            return 0
        if op == "Conv":
            # each output element: (C_in / group) * kernel MACs; w = [C_out, C_in/g, kh, kw]
            return _prod(out) * _prod(w[1:])
        inp = shapes.get(node.input[0])
        if not inp:
            return 0
        # ConvTranspose: each input element scatters into C_out/group * kernel outputs; w = [C_in, C_out/g, k..]
        return _prod(inp) * _prod(w[1:])
    if op == "Gemm":
        a = shapes.get(node.input[0])
        b = shapes.get(node.input[1])
        if not a or not b:
            return 0
        k = a[0] if _attr(node, "transA", 0) else a[-1]
        n = b[0] if _attr(node, "transB", 0) else b[-1]
        m = a[-1] if _attr(node, "transA", 0) else a[0]
        return m * n * k
    if op == "MatMul":
        a = shapes.get(node.input[0])
        out = shapes.get(node.output[0])
        if not a or not out:
            return 0
        return _prod(out) * a[-1]
    return 0
