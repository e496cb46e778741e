"""Letterbox + normalize a BGR frame into a preallocated NCHW float32 buffer.

Matches Ultralytics' letterbox: keep the aspect ratio, resize bilinearly, center,
pad with 114; RGB; scale to [0, 1]. No per-frame allocation: the resized image
goes straight into a view of the padded canvas, and only the part of the input
buffer under the image is rewritten (the padding is constant). The GPU kernel
``agent/kernels/preprocess.cu`` computes the same thing.
"""

import collections

import cv2
import numpy as np

PAD_VALUE = 114
_SCALE = np.float32(1.0 / 255.0)

Mapping = collections.namedtuple("Mapping", "scale pad_x pad_y new_w new_h frame_w frame_h")
Mapping.__doc__ = "How a frame was placed in the model input; see ``to_frame``."


def letterbox_mapping(frame_w, frame_h, input_w, input_h):
    """Where a frame of this size lands in the model input."""
    scale = min(input_w / float(frame_w), input_h / float(frame_h))
    new_w = max(1, int(round(frame_w * scale)))
    new_h = max(1, int(round(frame_h * scale)))
    pad_x = (input_w - new_w) // 2
    pad_y = (input_h - new_h) // 2
    return Mapping(scale, pad_x, pad_y, new_w, new_h, frame_w, frame_h)


def to_frame(boxes, mapping):
    """Map x1,y1,x2,y2 boxes from model-input pixels back to frame pixels (clipped); returns a new array."""
    out = np.empty_like(boxes, dtype=np.float32)
    out[:, 0::2] = (boxes[:, 0::2] - mapping.pad_x) / mapping.scale
    out[:, 1::2] = (boxes[:, 1::2] - mapping.pad_y) / mapping.scale
    np.clip(out[:, 0::2], 0, mapping.frame_w, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, mapping.frame_h, out=out[:, 1::2])
    return out


class Letterbox(object):
    """Preprocessor for one model input size, owning its canvas and input buffer.

    ``run(image)`` returns (blob, mapping); ``blob`` is this object's buffer and is
    overwritten by the next call, so use one Letterbox per in-flight frame.
    """

    def __init__(self, input_w, input_h):
        self.input_w = int(input_w)
        self.input_h = int(input_h)
        self.canvas = np.full((self.input_h, self.input_w, 3), PAD_VALUE, np.uint8)
        self.blob = np.empty((1, 3, self.input_h, self.input_w), np.float32)
        self._mapping = None
        self._planes = None

    def _prepare(self, frame_w, frame_h):
        m = letterbox_mapping(frame_w, frame_h, self.input_w, self.input_h)
        self.canvas[:] = PAD_VALUE
        self.blob[:] = PAD_VALUE * _SCALE
        self._planes = [np.empty((m.new_h, m.new_w), np.uint8) for _ in range(3)]
        self._mapping = m

    def run(self, image):
        """Letterbox BGR uint8 ``image`` into the input buffer; returns (blob, Mapping)."""
        h, w = image.shape[:2]
        m = self._mapping
        if m is None or m.frame_w != w or m.frame_h != h:
            self._prepare(w, h)
            m = self._mapping
        region = self.canvas[m.pad_y:m.pad_y + m.new_h, m.pad_x:m.pad_x + m.new_w]
        if (m.new_w, m.new_h) == (w, h):
            region[:] = image
        else:
            # dst= a view of the canvas: OpenCV writes in place, no temporary image.
            resized = cv2.resize(image, (m.new_w, m.new_h), dst=region, interpolation=cv2.INTER_LINEAR)
            if resized is not region:  # an OpenCV that could not write into the view
                region[:] = resized
        # Split to planes once, then scale each plane straight into its CHW slot (BGR -> RGB).
        cv2.split(region, self._planes)
        out = self.blob[0, :, m.pad_y:m.pad_y + m.new_h, m.pad_x:m.pad_x + m.new_w]
        for c in range(3):
            np.multiply(self._planes[2 - c], _SCALE, out=out[c])
        return self.blob, m
