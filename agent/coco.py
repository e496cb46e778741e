"""A labelled dataset in COCO format, and mAP through faster_coco_eval or pycocotools.

Both evaluators are optional (the ``eval`` extra); ``evaluate`` raises AgentError
naming the extra when neither is installed.
"""

import contextlib
import io
import json
import os

from .errors import AgentError, ConfigError

INSTALL_HINT = "pip install 'edge-agent[eval]' (faster-coco-eval or pycocotools)"


class Dataset(object):
    """A COCO split: ``instances.json`` and the folder its ``file_name``s are relative to."""

    def __init__(self, annotations, image_dir):
        self.annotations = annotations
        self.image_dir = image_dir
        try:
            with open(annotations) as f:
                self.data = json.load(f)
        except (OSError, IOError) as e:
            raise ConfigError("--dataset: cannot read {}: {}".format(annotations, e))
        except ValueError as e:
            raise ConfigError("--dataset: {} is not valid JSON: {}".format(annotations, e))
        for key in ("images", "annotations", "categories"):
            if key not in self.data:
                raise ConfigError("--dataset: {} has no '{}' list (not COCO instances)".format(annotations, key))
        self.images = sorted(self.data["images"], key=lambda im: im["id"])
        self.categories = sorted(self.data["categories"], key=lambda c: c["id"])

    def image_path(self, image):
        return os.path.join(self.image_dir, image["file_name"])

    def category_map(self, labels):
        """{model class id: COCO category id}: by name when the model's labels name every
        category, else the i-th category (sorted by id) for class i, as Ultralytics exports."""
        by_name = {c["name"]: c["id"] for c in self.categories}
        if labels and all(name in by_name for name in labels.values()):
            return {int(k): by_name[v] for k, v in labels.items()}
        return {i: c["id"] for i, c in enumerate(self.categories)}


def open_dataset(path):
    """A Dataset from a split folder (``instances.json`` + ``images/``) or an instances file.

    Raises ConfigError naming the path, with the command that generates the demo set.
    """
    if os.path.isdir(path):
        annotations = os.path.join(path, "instances.json")
        image_dir = os.path.join(path, "images") if os.path.isdir(os.path.join(path, "images")) else path
    else:
        annotations = path
        image_dir = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(os.path.join(image_dir, "images")):
            image_dir = os.path.join(image_dir, "images")
    if not os.path.isfile(annotations):
        raise ConfigError("--dataset: no COCO annotations at {}; generate the demo set with: "
                          "python scripts/make_dataset.py".format(annotations))
    return Dataset(annotations, image_dir)


def evaluator_name():
    """'faster_coco_eval' or 'pycocotools' (whichever imports first); raises AgentError if neither."""
    try:
        import faster_coco_eval  # noqa: F401

        return "faster_coco_eval"
    except ImportError:
        pass
    try:
        import pycocotools  # noqa: F401

        return "pycocotools"
    except ImportError:
        raise AgentError("accuracy needs a COCO evaluator: " + INSTALL_HINT)


def evaluate(dataset, results, image_ids):
    """(mAP50-95, mAP50) of COCO result dicts over ``image_ids``; the evaluator's prints are swallowed."""
    name = evaluator_name()
    if not results:
        return 0.0, 0.0
    gt_data = dict(dataset.data)
    gt_data.setdefault("info", {})
    gt_data.setdefault("licenses", [])
    with contextlib.redirect_stdout(io.StringIO()):
        if name == "faster_coco_eval":
            from faster_coco_eval import COCO, COCOeval_faster

            gt = COCO(gt_data)
            ev = COCOeval_faster(gt, gt.loadRes(results), iouType="bbox", print_function=lambda *a, **k: None)
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            gt = COCO()
            gt.dataset = gt_data
            gt.createIndex()
            ev = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return max(0.0, float(ev.stats[0])), max(0.0, float(ev.stats[1]))


def to_results(image_id, boxes, scores, class_ids, category_map):
    """COCO result dicts (xywh) from x1,y1,x2,y2 frame-pixel boxes."""
    out = []
    for b, s, c in zip(boxes.tolist(), scores.tolist(), class_ids.tolist()):
        cat = category_map.get(int(c))
        if cat is None:
            continue
        out.append({"image_id": image_id, "category_id": cat, "score": round(float(s), 5),
                    "bbox": [round(b[0], 2), round(b[1], 2), round(b[2] - b[0], 2), round(b[3] - b[1], 2)]})
    return out
