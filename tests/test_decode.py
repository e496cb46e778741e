"""Output-layout detection and decoding, on synthetic arrays and a real ONNX model."""

import numpy as np
import pytest

from agent.backends.base import TensorSpec
from agent.errors import ModelError
from agent.postprocess import make_decoder

BOXES_XYWH = np.array([[100, 100, 20, 40], [300, 200, 50, 50], [10, 10, 4, 4]], np.float32)
BOXES_XYXY = np.array([[90, 80, 110, 120], [275, 175, 325, 225], [8, 8, 12, 12]], np.float32)


def spec(name, shape, dtype="float32"):
    return TensorSpec(name, list(shape), dtype)


def v8_output(nc=80, n=8400):
    out = np.zeros((1, 4 + nc, n), np.float32)
    out[0, 4:, :] = 0.01
    idx = [17, 4000, 8399]
    out[0, :4, idx] = BOXES_XYWH
    out[0, 4 + 3, 17] = 0.9
    out[0, 4 + 0, 4000] = 0.6
    out[0, 4 + nc - 1, 8399] = 0.3
    return out


def test_yolov8_layout():
    dec = make_decoder([spec("output0", (1, 84, 8400))])
    assert dec.layout == "yolov8" and not dec.has_nms and dec.num_classes == 80
    boxes, scores, cls = dec.decode({"output0": v8_output()}, 0.25, 100)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32 and cls.dtype == np.int32
    np.testing.assert_allclose(boxes, BOXES_XYXY)
    np.testing.assert_allclose(scores, [0.9, 0.6, 0.3])
    assert cls.tolist() == [3, 0, 79]
    # top_k, the threshold (strict) and the class filter
    assert dec.decode({"output0": v8_output()}, 0.25, 2)[2].tolist() == [3, 0]
    assert dec.decode({"output0": v8_output()}, 0.6, 10)[2].tolist() == [3]
    assert dec.decode({"output0": v8_output()}, 0.25, 10, classes=[79, 0])[2].tolist() == [0, 79]
    assert len(dec.decode({"output0": v8_output()}, 0.95, 10)[0]) == 0


def test_yolov8_with_few_classes_and_metadata_hint():
    out = np.zeros((1, 6, 2100), np.float32)
    out[0, :4, 7] = BOXES_XYWH[0]
    out[0, 5, 7] = 0.7
    dec = make_decoder([spec("output0", (1, 6, 2100))], num_classes_hint=2)
    assert dec.layout == "yolov8" and dec.num_classes == 2
    boxes, scores, cls = dec.decode({"output0": out}, 0.25, 10)
    np.testing.assert_allclose(boxes, BOXES_XYXY[:1])
    assert cls.tolist() == [1]
    with pytest.raises(ModelError, match=r"output0 \[1, 84, 8400\]"):
        make_decoder([spec("output0", (1, 84, 8400))], num_classes_hint=3)


def test_yolov5_layout():
    nc = 80
    out = np.zeros((1, 25200, 5 + nc), np.float32)
    out[0, [5, 900, 25199], :4] = BOXES_XYWH
    out[0, [5, 900, 25199], 4] = [0.9, 0.8, 0.2]  # objectness
    out[0, 5, 5 + 7] = 0.5
    out[0, 900, 5 + 1] = 1.0
    out[0, 25199, 5 + 2] = 1.0  # obj 0.2 x 1.0 < 0.25
    dec = make_decoder([spec("output", (1, 25200, 85))])
    assert dec.layout == "yolov5" and dec.num_classes == 80
    boxes, scores, cls = dec.decode({"output": out}, 0.25, 100)
    np.testing.assert_allclose(boxes, BOXES_XYXY[[1, 0]])
    np.testing.assert_allclose(scores, [0.8, 0.45])
    assert cls.tolist() == [1, 7]


def test_transposed_v8_needs_the_hint():
    assert make_decoder([spec("o", (1, 8400, 84))], num_classes_hint=80).layout == "yolov8t"
    assert make_decoder([spec("o", (1, 8400, 84))]).layout == "yolov5"
    out = np.transpose(v8_output(), (0, 2, 1)).copy()
    boxes, _, cls = make_decoder([spec("o", (1, 8400, 84))], 80).decode({"o": out}, 0.25, 10)
    assert cls.tolist() == [3, 0, 79]


def test_end2end_single_output():
    det = np.zeros((1, 300, 6), np.float32)
    det[0, :3, :4] = BOXES_XYXY
    det[0, :3, 4] = [0.9, 0.5, 0.1]
    det[0, :3, 5] = [2, 0, 5]
    dec = make_decoder([spec("output0", (1, 300, 6))])
    assert dec.layout == "end2end" and dec.has_nms
    boxes, scores, cls = dec.decode({"output0": det}, 0.25, 100)
    np.testing.assert_allclose(boxes, BOXES_XYXY[:2])
    assert cls.tolist() == [2, 0] and cls.dtype == np.int32


def test_six_channels_on_an_anchor_grid_is_single_class_yolov5():
    assert make_decoder([spec("output0", (1, 25200, 6))]).layout == "yolov5"
    assert make_decoder([spec("output0", (1, 25200, 6))], num_classes_hint=80).layout == "end2end"


@pytest.mark.parametrize("names", [("num_dets", "det_boxes", "det_scores", "det_classes"), ("num", "boxes", "scores", "classes")])
def test_efficient_nms_outputs(names):
    outs = [spec(names[0], (1, 1), "int32"), spec(names[1], (1, 100, 4)), spec(names[2], (1, 100)), spec(names[3], (1, 100), "int32")]
    dec = make_decoder(outs[::-1])
    assert dec.layout == "efficient_nms" and dec.has_nms
    data = {
        names[0]: np.array([[2]], np.int32),
        names[1]: np.zeros((1, 100, 4), np.float32),
        names[2]: np.zeros((1, 100), np.float32),
        names[3]: np.zeros((1, 100), np.int32),
    }
    data[names[1]][0, :3] = BOXES_XYXY
    data[names[2]][0, :3] = [0.9, 0.8, 0.7]  # the third is past num_dets
    data[names[3]][0, :3] = [4, 5, 6]
    boxes, scores, cls = dec.decode(data, 0.25, 100)
    np.testing.assert_allclose(boxes, BOXES_XYXY[:2])
    assert cls.tolist() == [4, 5]


def test_efficient_nms_by_shape_when_names_are_unknown():
    outs = [spec("a", (1, 1), "int32"), spec("b", (1, 50, 4)), spec("c", (1, 50)), spec("d", (1, 50), "int32")]
    dec = make_decoder(outs)
    assert dec.layout == "efficient_nms" and dec.names == ["b", "c", "d", "a"]


@pytest.mark.parametrize(
    "outs",
    [
        [spec("output0", (1, 7, 3))],
        [spec("output0", (1, 100, 100))],
        [spec("x", (1, 84, 8400)), spec("y", (1, 3))],
        [spec("feat", (1, 256, 20, 20))],
        [spec("a", (1, 5)), spec("b", (1, 5)), spec("c", (1, 5))],
    ],
)
def test_unknown_layouts_raise_naming_the_outputs(outs):
    with pytest.raises(ModelError) as e:
        make_decoder(outs)
    msg = str(e.value)
    assert msg.startswith("cannot interpret model outputs: ")
    for o in outs:
        assert "{} [{}]".format(o.name, ", ".join(str(d) for d in o.shape)) in msg
    assert "expected one of" in msg


def test_missing_output_at_decode_time():
    dec = make_decoder([spec("output0", (1, 84, 8400))])
    with pytest.raises(ModelError, match="output0"):
        dec.decode({"other": np.zeros((1, 84, 8400), np.float32)}, 0.25, 10)


def test_real_onnx_model_through_onnxruntime(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    n, nc = 2100, 3
    table = np.zeros((1, 4 + nc, n), np.float32)
    table[0, :4, [10, 20]] = BOXES_XYWH[:2]
    table[0, 4 + 2, 10] = 0.8
    table[0, 4 + 1, 20] = 0.7
    # output = table + 0 * reduce_sum(images): the image input is used, the output is known.
    nodes = [
        helper.make_node("Constant", [], ["table"], value=numpy_helper.from_array(table, "table")),
        helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
        helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.zeros((), np.float32), "zero")),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["table", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_yolov8",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + nc, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    path = str(tmp_path / "tiny.onnx")
    onnx.save(model, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outputs = [TensorSpec(o.name, o.shape, o.type) for o in sess.get_outputs()]
    dec = make_decoder(outputs)
    assert dec.layout == "yolov8" and dec.num_classes == nc
    result = dict(zip([o.name for o in outputs], sess.run(None, {"images": np.ones((1, 3, 64, 64), np.float32)})))
    boxes, scores, cls = dec.decode(result, 0.25, 100)
    np.testing.assert_allclose(boxes, BOXES_XYXY[:2])
    assert cls.tolist() == [2, 1]


@pytest.mark.parametrize("conf", [0.001, 0.25, 0.999])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("c_path", [True, False])
def test_yolov8_fast_path_equals_the_reference(conf, dtype, c_path, monkeypatch):
    """Every class search (few candidates: their columns; many: agent/native's pass along the
    rows, or without it the first row equal to the max) keeps exactly what the plain numpy
    decode keeps, ties between classes and NaN scores included."""
    from agent import native
    from agent.postprocess.decode import decode_v8_reference

    if c_path:
        assert native.LIB is not None, "agent/native is not built"
    else:
        monkeypatch.setattr(native, "LIB", None)
    rng = np.random.default_rng(int(conf * 1000))
    n, nc = 8400, 80
    out = np.empty((1, 4 + nc, n), dtype)
    out[0, :4] = rng.uniform(0, 640, (4, n))
    scores = rng.uniform(0, 1, (nc, n)) ** 8  # mostly small, a few hot
    scores[:, ::97] = scores[0, ::97]  # every class tied on some anchors: the lowest id wins
    scores[rng.integers(0, nc, 50), rng.integers(0, n, 50)] = np.nan  # a NaN anchor is never kept
    out[0, 4:] = scores
    dec = make_decoder([TensorSpec("output0", [1, 4 + nc, n], "float32")])
    for top_k in (None, 300):
        got = dec.decode({"output0": out}, conf, top_k)
        want = decode_v8_reference(out, conf, top_k)
        assert len(want[1]) > 0
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
