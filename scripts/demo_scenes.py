"""Procedural scenes of simple shapes, shared by the dataset and video generators."""
import math
from dataclasses import dataclass

import cv2
import numpy as np

CLASSES = ("circle", "square", "triangle", "star", "car")
# Annotate an object only if this much of it is visible (occlusion, frame edge).
MIN_VISIBLE = 0.4
_SHIFT = 4  # cv2 fixed-point bits, for sub-pixel shape edges
_ONE = 1 << _SHIFT


@dataclass
class Obj:
    """One shape: class index, centre, size (outer diameter in px), rotation, colour."""

    cls: int
    cx: float
    cy: float
    size: float
    angle: float = 0.0
    color: tuple = (255, 255, 255)
    flip: bool = False


def _ring(obj, radii, offset_deg):
    """Polygon vertices on alternating radii around the object's centre."""
    n = len(radii)
    pts = []
    for k, r in enumerate(radii):
        a = math.radians(obj.angle + offset_deg + k * 360.0 / n)
        pts.append((obj.cx + r * math.cos(a), obj.cy - r * math.sin(a)))
    return np.array(pts)


def _parts(obj):
    """Filled polygons and circles (cx, cy, r, dark) that make up a shape."""
    s = obj.size / 2
    if obj.cls == 0:
        return [], [(obj.cx, obj.cy, s, False)]
    if obj.cls == 1:
        return [_ring(obj, [s] * 4, 45)], []
    if obj.cls == 2:
        return [_ring(obj, [s] * 3, 90)], []
    if obj.cls == 3:
        return [_ring(obj, [s, 0.42 * s] * 5, 90)], []
    # Car: side view, body + cabin + two dark wheels; never rotated, only mirrored.
    d = -1.0 if obj.flip else 1.0
    x, y = obj.cx, obj.cy
    body = np.array([(-1, 0.0), (1, 0.0), (1, 0.35), (-1, 0.35)])
    cabin = np.array([(-0.55, 0.0), (-0.35, -0.35), (0.25, -0.35), (0.55, 0.0)])
    polys = [np.stack([x + d * p[:, 0] * s, y + p[:, 1] * s], 1) for p in (body, cabin)]
    wheels = [(x + d * wx * s, y + 0.38 * s, 0.2 * s, True) for wx in (-0.6, 0.6)]
    return polys, wheels


def box(obj):
    """Tight box (x0, y0, x1, y1) of the whole shape, ignoring image bounds."""
    polys, circles = _parts(obj)
    xs = [p[:, 0] for p in polys] + [np.array([c[0] - c[2], c[0] + c[2]]) for c in circles]
    ys = [p[:, 1] for p in polys] + [np.array([c[1] - c[2], c[1] + c[2]]) for c in circles]
    xs, ys = np.concatenate(xs), np.concatenate(ys)
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def draw(img, obj, color=None, aa=True, dx=0.0, dy=0.0):
    """Draw the shape into img (3-channel image or 1-channel mask), shifted by (dx, dy)."""
    color = obj.color if color is None else color
    line = cv2.LINE_AA if aa else cv2.LINE_8
    polys, circles = _parts(obj)
    for p in polys:
        q = np.round((p + (dx, dy)) * _ONE).astype(np.int32)
        cv2.fillPoly(img, [q], color, line, _SHIFT)
    for cx, cy, r, dark in circles:
        c = (40, 40, 40) if dark and img.ndim == 3 else color
        centre = (int(round((cx + dx) * _ONE)), int(round((cy + dy) * _ONE)))
        cv2.circle(img, centre, int(round(r * _ONE)), c, -1, line, _SHIFT)


def _full_area(obj):
    """Pixel area of the shape drawn alone, without frame clipping."""
    x0, y0, x1, y1 = box(obj)
    patch = np.zeros((int(y1 - y0) + 3, int(x1 - x0) + 3), np.uint8)
    draw(patch, obj, color=1, aa=False, dx=1 - x0, dy=1 - y0)
    return max(int(patch.sum()), 1)


def visibility(objs, w, h):
    """Fraction of each object left visible after later objects and frame edges cover it."""
    ids = np.zeros((h, w), np.uint8)
    for i, obj in enumerate(objs):
        draw(ids, obj, color=i + 1, aa=False)
    counts = np.bincount(ids.ravel(), minlength=len(objs) + 1)
    return [counts[i + 1] / _full_area(o) for i, o in enumerate(objs)]


def random_color(rng):
    """A saturated colour (BGR) so shapes stand out from the muted backgrounds."""
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(150, 256), rng.integers(150, 256)]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def background(rng, w, h):
    """Muted gradient, blotchy low-frequency noise and line clutter (distractors)."""
    c0, c1 = rng.uniform(30, 200, 3), rng.uniform(30, 200, 3)
    a = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * math.cos(a) + yy * math.sin(a)) / (w + h) + 0.5
    img = c0 + (c1 - c0) * t[..., None]
    blotch = cv2.resize(rng.normal(0, 25, (6, 10, 3)).astype(np.float32), (w, h))
    img = np.clip(img + blotch, 0, 255).astype(np.uint8)
    # Thin lines and arcs: edges that are not objects, so the model learns shape, not contrast.
    for _ in range(rng.integers(3, 25)):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.6:
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p0, p1, col, int(rng.integers(1, 4)), cv2.LINE_AA)
        else:
            axes = (int(rng.integers(10, w // 4)), int(rng.integers(10, h // 4)))
            start = float(rng.uniform(0, 360))
            cv2.ellipse(img, p0, axes, 0, start, start + rng.uniform(40, 200), col, 2, cv2.LINE_AA)
    return img


def add_noise(img, rng, sigma):
    """Gaussian sensor noise."""
    noise = rng.normal(0, sigma, img.shape).astype(np.float32)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def random_objects(rng, w, h, scale=1.0):
    """A random set of shapes; sizes log-uniform so small and large objects both occur."""
    objs = []
    for _ in range(rng.integers(1, 11)):
        size = scale * math.exp(rng.uniform(math.log(16), math.log(120)))
        # Centres may sit slightly outside the frame: partially visible objects occur.
        cx = rng.uniform(-0.2 * size, w + 0.2 * size)
        cy = rng.uniform(-0.2 * size, h + 0.2 * size)
        objs.append(Obj(int(rng.integers(len(CLASSES))), cx, cy, size, float(rng.uniform(0, 360)),
                        random_color(rng), bool(rng.random() < 0.5)))
    return objs


def annotate(objs, w, h, track_ids=None):
    """Visible objects as (cls, [x, y, w, h]) with boxes clipped to the frame; with ``track_ids``
    (one per object), (cls, [x, y, w, h], track id)."""
    anns = []
    for k, (obj, vis) in enumerate(zip(objs, visibility(objs, w, h))):
        if vis < MIN_VISIBLE:
            continue
        x0, y0, x1, y1 = box(obj)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        ann = (obj.cls, [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)])
        anns.append(ann if track_ids is None else ann + (track_ids[k],))
    return anns


def render(bg, objs, rng=None, noise=0.0):
    """Draw objects over a copy of the background in order (later ones occlude earlier)."""
    img = bg.copy()
    for obj in objs:
        draw(img, obj)
    if rng is not None and noise > 0:
        img = add_noise(img, rng, noise)
    return img


def random_scene(rng, w, h):
    """One training image and its annotations; heavily hidden objects are dropped, not drawn."""
    objs = random_objects(rng, w, h)
    vis = visibility(objs, w, h)
    objs = [o for o, v in zip(objs, vis) if v >= MIN_VISIBLE]
    img = render(background(rng, w, h), objs, rng, noise=float(rng.uniform(0, 12)))
    if rng.random() < 0.2:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    return img, annotate(objs, w, h)


def coco_skeleton():
    """COCO dict with categories filled in; category id is class index + 1."""
    cats = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    return {"info": {"description": "edge-agent demo shapes"}, "images": [], "annotations": [],
            "categories": cats}


def add_image(coco, image_id, file_name, w, h, anns, **extra):
    """Append one image and its annotations ((cls, bbox) or (cls, bbox, track id)) to a COCO dict."""
    coco["images"].append(dict(id=image_id, file_name=file_name, width=w, height=h, **extra))
    for ann in anns:
        cls, bbox = ann[:2]
        entry = {"id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": cls + 1,
                 "bbox": bbox, "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0}
        if len(ann) > 2:
            entry["track_id"] = ann[2]  # the object's identity across frames (make_video's movers)
        coco["annotations"].append(entry)
