"""mAP of a Detector over a COCO split: the one evaluation the benchmark and the build's accuracy gate share.

The production pre/post-processing with mAP thresholds (conf 0.001, 300 detections per
image, every class, as Ultralytics' val), scored by agent.coco (faster_coco_eval or
pycocotools).
"""

import dataclasses

from .errors import AgentError

MAP_CONF_THRESHOLD = 0.001  # mAP needs the whole precision-recall curve (Ultralytics val uses 0.001)
MAP_MAX_DETECTIONS = 300


def map_detection(detection):
    """The DetectionConfig mAP is measured with: ``detection``'s NMS IoU, conf 0.001, 300 per image, all classes."""
    return dataclasses.replace(detection, conf_threshold=MAP_CONF_THRESHOLD, max_detections=MAP_MAX_DETECTIONS,
                               top_k=max(detection.top_k, 30000), classes=[])


def measure_map(detector, dataset, max_images=0, tick=None):
    """{map50, map50_95, images, evaluator, thresholds} of ``detector`` over the first ``max_images``
    (0: all) images of ``dataset`` (an agent.coco.Dataset). ``tick(done, total)`` after each image.

    The detector's ``detection`` settings are swapped for the mAP ones while measuring.
    Raises AgentError for an unreadable image or a missing evaluator.
    """
    import cv2

    from . import coco

    evaluator = coco.evaluator_name()
    images = dataset.images[:max_images] if max_images else dataset.images
    detection = map_detection(detector.detection)
    cats = dataset.category_map(detector.labels)
    results = []
    production, detector.detection = detector.detection, detection
    try:
        for i, im in enumerate(images):
            image = cv2.imread(dataset.image_path(im))
            if image is None:
                raise AgentError("--dataset: cannot read image {}".format(dataset.image_path(im)))
            found = detector.detect(image)
            results.extend(coco.to_results(im["id"], found.boxes, found.scores, found.class_ids, cats))
            if tick is not None:
                tick(i + 1, len(images))
    finally:
        detector.detection = production
    m5095, m50 = coco.evaluate(dataset, results, [im["id"] for im in images])
    return {"map50": round(m50, 4), "map50_95": round(m5095, 4), "images": len(images), "evaluator": evaluator,
            "conf_threshold": MAP_CONF_THRESHOLD, "iou_threshold": detection.iou_threshold,
            "max_detections": MAP_MAX_DETECTIONS}
