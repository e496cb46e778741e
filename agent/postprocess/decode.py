"""Decode raw detector outputs into boxes, scores and class ids, whatever the export layout.

``make_decoder(backend.outputs)`` looks at output names and shapes once and picks:

* ``yolov8``: one ``[1, 4+nc, N]`` output (YOLOv8/YOLO11): cx,cy,w,h then class scores;
* ``yolov8t``: the same transposed, ``[1, N, 4+nc]`` (only when nc is known, see below);
* ``yolov5``: one ``[1, N, 5+nc]`` output (YOLOv5/YOLOv7): cx,cy,w,h, objectness, class
  probabilities; score = objectness x class probability;
* ``end2end``: one ``[1, N, 6]`` output (x1,y1,x2,y2,score,class) as YOLOv10 and
  ultralytics ``nms=True`` exports write; NMS already done;
* ``efficient_nms``: EfficientNMS_TRT's ``num_dets [1,1]``, ``det_boxes [1,K,4]``,
  ``det_scores [1,K]``, ``det_classes [1,K]`` (names may vary); NMS already done.

The number of classes ``nc``, when known from the model's metadata (its class names),
settles the v8/v5 question; without it the long axis is N and the short one the
channels (v8 puts channels first, v5 last). A ``[1, N, 6]`` output is YOLOv5 with one
class only when N is an anchor-grid count (a multiple of 63 or 255) and nc is 1 or
unknown; otherwise it is end-to-end.

All decoders return boxes as float32 x1,y1,x2,y2 in model-input pixels, float32
scores, int32 class ids, sorted by descending score (ties: lower anchor index
first), keeping ``score > conf_threshold`` and at most ``top_k``.
"""

import logging

import numpy as np

from .. import native
from ..errors import ModelError

log = logging.getLogger("edge_agent.postprocess")

EXPECTED = (
    "[1, 4+nc, N] (YOLOv8/YOLO11), [1, N, 5+nc] (YOLOv5/YOLOv7), [1, N, 6] (end-to-end "
    "x1,y1,x2,y2,score,class), or num_dets [1,1] + boxes [1,K,4] + scores [1,K] + classes [1,K] "
    "(EfficientNMS_TRT)"
)


def _describe(outputs):
    return ", ".join("{} [{}]".format(o.name, ", ".join(str(d) for d in o.shape)) for o in outputs)


def _uninterpretable(outputs, why=""):
    return ModelError(
        "cannot interpret model outputs: {}{}; expected one of: {}".format(
            _describe(outputs), " ({})".format(why) if why else "", EXPECTED
        )
    )


def _topk(scores, top_k):
    """Indices of the ``top_k`` best scores, best first, ties by lower index."""
    if top_k is not None and 0 < top_k < len(scores):
        part = np.argpartition(-scores, top_k - 1)[:top_k]
        # argpartition splits ties at the boundary arbitrarily: widen to every tied score.
        cut = scores[part].min()
        part = np.flatnonzero(scores >= cut)
        order = part[np.argsort(-scores[part], kind="stable")][:top_k]
        return order
    return np.argsort(-scores, kind="stable")


def _xywh_to_xyxy(b):
    out = np.empty((len(b), 4), np.float32)
    half_w = b[:, 2] * 0.5
    half_h = b[:, 3] * 0.5
    out[:, 0] = b[:, 0] - half_w
    out[:, 1] = b[:, 1] - half_h
    out[:, 2] = b[:, 0] + half_w
    out[:, 3] = b[:, 1] + half_h
    return out


def _empty():
    return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)


class Decoder(object):
    """Turns one inference's ``{name: ndarray}`` into (boxes, scores, class_ids)."""

    layout = ""
    has_nms = False

    def __init__(self, names, num_classes=None):
        self.names = list(names)
        self.num_classes = num_classes

    def decode(self, outputs, conf_threshold, top_k=None, classes=None):
        """Decode ``outputs``; ``classes`` (ids) keeps only those classes. Raises ModelError."""
        missing = [n for n in self.names if n not in outputs]
        if missing:
            raise ModelError("model outputs: missing {} (got {})".format(", ".join(missing), ", ".join(outputs)))
        return self._decode([np.asarray(outputs[n]) for n in self.names], conf_threshold, top_k, classes)

    def _decode(self, arrays, conf, top_k, classes):
        raise NotImplementedError

    def __repr__(self):
        return "<{} {} nc={}>".format(type(self).__name__, self.layout, self.num_classes)


def _first(a, name, rank):
    """The first batch item of ``a`` with the expected rank."""
    if a.ndim == rank + 1:
        a = a[0]
    if a.ndim != rank:
        raise ModelError("model output {}: expected rank {} or {}, got shape {}".format(name, rank, rank + 1, a.shape))
    return a


class AnchorDecoder(Decoder):
    """YOLOv8 (channels first or last) and YOLOv5 raw anchor outputs."""

    def __init__(self, name, layout, num_classes=None):
        Decoder.__init__(self, [name], num_classes)
        self.layout = layout

    def _decode(self, arrays, conf, top_k, classes):
        out = _first(arrays[0], self.names[0], 2)
        if self.layout == "yolov8":
            return self._decode_v8(out, conf, top_k, classes)
        first = 5 if self.layout == "yolov5" else 4
        scores = out[:, first:]
        if classes is not None:
            classes = _known(classes, scores.shape[1])
            scores = scores[:, classes]
        if scores.shape[1] == 0:
            return _empty()
        if self.layout == "yolov5":
            obj = out[:, 4]
            # obj * cls <= obj, so anchors with obj <= conf cannot pass.
            cand = np.flatnonzero(obj.astype(np.float32) > conf)
            cls_scores = scores[cand] * obj[cand, None]
        else:
            best = scores.max(axis=1)
            cand = np.flatnonzero(best.astype(np.float32) > conf)
            cls_scores = scores[cand]
        if len(cand) == 0:
            return _empty()
        cls = cls_scores.argmax(axis=1)
        sc = cls_scores[np.arange(len(cand)), cls].astype(np.float32)
        return self._select(out, cand, sc, cls, conf, top_k, classes)

    def _decode_v8(self, out, conf, top_k, classes):
        """[4+nc, N], channels first: every pass runs along contiguous rows of one class.

        The reference is one line, ``cls = out[4:].T.argmax(1); score = out[4:].T.max(1)``;
        numpy runs an argmax across rows by transposing a copy of the whole array, so the
        class is found from the max instead: for a few candidates over their columns only,
        for many (conf 0.001, the mAP setting) by agent/native's pass along the rows where
        built, else as the first row equal to the max, on bytes (tests/test_decode.py
        compares them with the reference).
        """
        scores = out[4:]
        if classes is not None:
            classes = _known(classes, scores.shape[0])
            scores = scores[classes]
        if scores.shape[0] == 0:
            return _empty()
        best = scores.max(axis=0)
        # Compared in float32 as the reference does (a float16 output would round conf itself).
        cand = np.flatnonzero(best.astype(np.float32, copy=False) > conf)
        if len(cand) == 0:
            return _empty()
        if len(cand) * 8 < scores.shape[1]:
            cls = scores[:, cand].argmax(axis=0)
        else:
            found = native.best_class(scores) if native.LIB is not None else None  # one C pass along the rows
            cls = (found[1] if found is not None else (scores == best).argmax(axis=0))[cand]
        return self._select(out.T, cand, best[cand].astype(np.float32), cls, conf, top_k, classes)

    @staticmethod
    def _select(rows, cand, sc, cls, conf, top_k, classes):
        """The candidates passing ``conf``, best first, at most ``top_k``; ``rows``: [N, 4+] anchors."""
        passed = np.flatnonzero(sc > conf)
        keep = passed[_topk(sc[passed], top_k)]
        idx = cand[keep]
        boxes = _xywh_to_xyxy(rows[idx, :4].astype(np.float32))
        cls = cls[keep]
        if classes is not None:
            cls = classes[cls]
        return boxes, sc[keep], cls.astype(np.int32)


def decode_v8_reference(output, conf_threshold, top_k=None):
    """The plain numpy decode of one ``[1, 4+nc, N]`` output, to check AnchorDecoder by eye."""
    x = output[0].T  # [N, 4+nc]: one row per anchor
    cls = x[:, 4:].argmax(1)
    score = x[np.arange(len(x)), 4 + cls].astype(np.float32)
    idx = np.flatnonzero(score > conf_threshold)
    idx = idx[np.argsort(-score[idx], kind="stable")][:top_k]
    return _xywh_to_xyxy(x[idx, :4].astype(np.float32)), score[idx], cls[idx].astype(np.int32)


def _known(classes, nc):
    """The requested class ids that the model has."""
    classes = np.asarray(classes, np.intp)
    return classes[(classes >= 0) & (classes < nc)]


class End2EndDecoder(Decoder):
    """One ``[1, N, 6]`` output: x1,y1,x2,y2,score,class, NMS done in the model."""

    layout = "end2end"
    has_nms = True

    def _decode(self, arrays, conf, top_k, classes):
        out = _first(arrays[0], self.names[0], 2)
        return _finish(out[:, :4], out[:, 4], out[:, 5], conf, top_k, classes)


class EfficientNMSDecoder(Decoder):
    """EfficientNMS_TRT-style outputs: num_dets (optional), boxes, scores, classes."""

    layout = "efficient_nms"
    has_nms = True

    def __init__(self, num, boxes, scores, classes, num_classes=None):
        names = [boxes, scores, classes] + ([num] if num else [])
        Decoder.__init__(self, names, num_classes)
        self.has_num = bool(num)

    def _decode(self, arrays, conf, top_k, classes):
        boxes = _first(arrays[0], self.names[0], 2)
        scores = _first(arrays[1], self.names[1], 1)
        labels = _first(arrays[2], self.names[2], 1)
        if self.has_num:
            n = int(np.asarray(arrays[3]).reshape(-1)[0])
            boxes, scores, labels = boxes[:n], scores[:n], labels[:n]
        return _finish(boxes, scores, labels, conf, top_k, classes)


def _finish(boxes, scores, labels, conf, top_k, classes):
    scores = scores.astype(np.float32)
    mask = scores > conf
    labels = labels.astype(np.int32)
    if classes is not None:
        mask &= np.isin(labels, np.asarray(classes))
    idx = np.flatnonzero(mask)
    idx = idx[_topk(scores[idx], top_k)]
    return boxes[idx].astype(np.float32).reshape(-1, 4), scores[idx], labels[idx]


# Output-name keywords of NMS-inside models, per role.
_ROLES = (
    ("num", ("num_dets", "num_detections", "num")),
    ("boxes", ("det_boxes", "detection_boxes", "boxes", "box", "bboxes")),
    ("scores", ("det_scores", "detection_scores", "scores", "score")),
    ("classes", ("det_classes", "detection_classes", "classes", "class", "labels", "label")),
)


def _dims(shape):
    """Shape as ints, None where dynamic."""
    return [d if isinstance(d, int) and not isinstance(d, bool) and d >= 0 else None for d in shape]


def _efficient_nms(outputs, num_classes):
    found = {}
    for role, words in _ROLES:
        for o in outputs:
            low = o.name.lower()
            if o.name not in found.values() and any(w in low for w in words):
                found[role] = o.name
                break
    if set(found) >= {"boxes", "scores", "classes"} and len(found) == len(outputs):
        return EfficientNMSDecoder(found.get("num"), found["boxes"], found["scores"], found["classes"], num_classes)
    # Names unknown: fall back on shapes ([1,1], [1,K,4], two [1,K] told apart by dtype).
    by_shape = {}
    for o in outputs:
        d = _dims(o.shape)
        if len(d) == 2 and d[1] == 1:
            by_shape.setdefault("num", o.name)
        elif len(d) == 3 and d[2] == 4:
            by_shape.setdefault("boxes", o.name)
        elif len(d) == 2:
            kind = "classes" if "int" in str(o.dtype) else "scores"
            by_shape.setdefault(kind, o.name)
    if set(by_shape) == {"num", "boxes", "scores", "classes"} and len(outputs) == 4:
        return EfficientNMSDecoder(by_shape["num"], by_shape["boxes"], by_shape["scores"], by_shape["classes"], num_classes)
    raise _uninterpretable(outputs, "{} outputs, but not num_dets/boxes/scores/classes".format(len(outputs)))


def _anchor_grid(n):
    """True when ``n`` anchors fit a YOLOv5 3-anchor grid (strides 8-32 or 8-64)."""
    return n % 63 == 0 or n % 255 == 0


def make_decoder(outputs, num_classes_hint=None):
    """Pick the decoder for a model's outputs ([TensorSpec]); raises ModelError if none fits."""
    outputs = list(outputs)
    nc = num_classes_hint if num_classes_hint and num_classes_hint > 0 else None
    if len(outputs) in (3, 4):
        dec = _efficient_nms(outputs, nc)
    elif len(outputs) == 1:
        dec = _single(outputs, nc)
    else:
        raise _uninterpretable(outputs, "{} outputs".format(len(outputs)))
    log.info("model outputs %s: decoding as %s", _describe(outputs), dec.layout)
    return dec


def _single(outputs, nc):
    o = outputs[0]
    d = _dims(o.shape)
    if len(d) == 2:
        d = [1] + d
    if len(d) != 3 or d[0] not in (1, None):
        raise _uninterpretable(outputs, "expected one [1, A, B] output")
    a, b = d[1], d[2]
    if a is None or b is None:
        raise _uninterpretable(outputs, "dynamic dimensions; export with a fixed output shape")
    if a >= 2 * b:  # [1, N, C]: channels last
        if b == 6 and nc in (None, 1) and _anchor_grid(a):
            return AnchorDecoder(o.name, "yolov5", 1)
        if b == 6:  # an end-to-end export even when nc fits 4+nc: those are far more common
            return End2EndDecoder([o.name], nc)
        if nc is not None:
            if b == 5 + nc:
                return AnchorDecoder(o.name, "yolov5", nc)
            if b == 4 + nc:
                return AnchorDecoder(o.name, "yolov8t", nc)
            raise _uninterpretable(outputs, "{} channels fit neither 4+nc nor 5+nc with nc={}".format(b, nc))
        if b >= 6:
            return AnchorDecoder(o.name, "yolov5", b - 5)
    elif b >= 2 * a:  # [1, C, N]: channels first
        if nc is not None and a != 4 + nc:
            raise _uninterpretable(outputs, "{} channels, expected 4+nc = {}".format(a, 4 + nc))
        if a >= 5:
            return AnchorDecoder(o.name, "yolov8", a - 4)
    raise _uninterpretable(outputs)
