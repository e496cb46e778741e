"""Letterbox: same pixels as a straightforward OpenCV/numpy version, exact mapping back."""

import cv2
import numpy as np
import pytest

from agent.preprocess import PAD_VALUE, Letterbox, letterbox_mapping, to_frame


def reference(image, w, h):
    ih, iw = image.shape[:2]
    r = min(w / iw, h / ih)
    nw, nh = int(round(iw * r)), int(round(ih * r))
    canvas = np.full((h, w, 3), PAD_VALUE, np.uint8)
    px, py = (w - nw) // 2, (h - nh) // 2
    canvas[py:py + nh, px:px + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return canvas[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0


@pytest.mark.parametrize("shape", [(1080, 1920), (720, 1280), (480, 640), (640, 640), (333, 517), (1000, 200)])
def test_matches_reference(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    lb = Letterbox(640, 384)
    blob, m = lb.run(image)
    assert blob.shape == (1, 3, 384, 640) and blob.dtype == np.float32
    np.testing.assert_allclose(blob, reference(image, 640, 384), atol=1e-6)


def test_buffer_is_reused_and_size_changes_reset_padding():
    lb = Letterbox(320, 320)
    a = np.full((100, 300, 3), 255, np.uint8)
    b = np.zeros((300, 100, 3), np.uint8)
    blob1, _ = lb.run(a)
    blob2, _ = lb.run(b)
    assert blob1 is blob2  # no per-frame allocation
    np.testing.assert_allclose(blob2, reference(b, 320, 320), atol=1e-6)


def test_mapping_round_trip():
    m = letterbox_mapping(1920, 1080, 640, 640)
    frame_boxes = np.array([[100, 200, 500, 900], [0, 0, 1920, 1080]], np.float32)
    in_input = frame_boxes.copy()
    in_input[:, 0::2] = frame_boxes[:, 0::2] * m.scale + m.pad_x
    in_input[:, 1::2] = frame_boxes[:, 1::2] * m.scale + m.pad_y
    np.testing.assert_allclose(to_frame(in_input, m), frame_boxes, atol=1e-3)
    outside = np.array([[-50, -50, 700, 700]], np.float32)
    np.testing.assert_allclose(to_frame(outside, m), [[0, 0, 1920, 1080]])
