"""Greedy NMS in a few lines, to be checked by eye: the oracle of the fast paths.

agent.postprocess.nms (numpy) and nms.cu (CUDA) must keep exactly these boxes:
visit boxes by descending score (ties: lower index first) and keep a box unless a
kept box of the same class (any class when ``class_ids`` is None) overlaps it with
IoU > ``iou_threshold``, decided as OpenCV's NMSBoxes does (the distance 1 - IoU in
double, compared in float). Boxes with no area never suppress or get suppressed.
"""

import numpy as np


def nms_reference(boxes, scores, iou_threshold, class_ids=None):
    """Kept indices, best first. ``boxes``: Nx4 x1, y1, x2, y2."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    kept = []
    for i in np.argsort(-np.asarray(scores, np.float32), kind="stable"):
        if not any(_suppresses(boxes[j], boxes[i], iou_threshold)
                   for j in kept if class_ids is None or class_ids[j] == class_ids[i]):
            kept.append(int(i))
    return np.array(kept, np.int64)


def _suppresses(a, b, iou_threshold):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return False
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return np.float32(1.0) - np.float32(1.0 - inter / union) > np.float32(iou_threshold)
