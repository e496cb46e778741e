"""The accuracy gate: one check for every backend's reduced-precision build (build side).

After an INT8 (or FP16) build, and before it replaces anything, the new artifact and the
FP32 reference (the size's ONNX on ONNX Runtime: the model as trained, the same on every
device) are measured on the same bounded number of images of the val split, with the
benchmark's evaluator (agent.accuracy.measure_map). A drop of mAP50-95 above
``max_map_drop`` refuses the build in one line naming the drop; the previous artifact
stays untouched. TensorRT engines go through the same function, loaded by the TensorRT
backend from their staged manifest (only run with ONNX Runtime so far: no GPU here).
"""

from ..errors import EngineError


class AccuracyGateError(EngineError):
    """A reduced-precision build lost more accuracy than ``max_map_drop`` allows; ``accuracy`` holds the figures."""

    def __init__(self, message, accuracy):
        super(AccuracyGateError, self).__init__(message)
        self.accuracy = accuracy


def measure_job(job, emit):
    """The child's side: mAP of the FP32 reference and of the candidate; returns the manifest's ``accuracy``.

    ``job``: config (AgentConfig), size, backend, reference (ONNX path), candidate (artifact
    path, its manifest staged beside it for TensorRT), val_dir, val_images.
    """
    from .. import accuracy, coco
    from ..detect import detector_on

    config, size = job["config"], job["size"]
    dataset = coco.open_dataset(job["val_dir"])
    figures = {}
    for role, backend, path in (("reference", "onnxruntime", job["reference"]),
                                ("candidate", job["backend"], job["candidate"])):
        emit("measuring", "accuracy gate: mAP50-95 of the {} ({}) on {} val images".format(
            "fp32 reference" if role == "reference" else job["precision"], backend,
            min(job["val_images"], len(dataset.images)) if job["val_images"] else len(dataset.images)))
        detector = detector_on(config, size, backend, path)
        try:
            figures[role] = accuracy.measure_map(detector, dataset, job["val_images"])
        finally:
            detector.close()
    ref, new = figures["reference"], figures["candidate"]
    return {"reference": "fp32", "precision": job["precision"], "val_dir": dataset.annotations,
            "images": new["images"], "evaluator": new["evaluator"],
            "map50_95": {"fp32": ref["map50_95"], job["precision"]: new["map50_95"]},
            "map50": {"fp32": ref["map50"], job["precision"]: new["map50"]},
            "drop": round(ref["map50_95"] - new["map50_95"], 4)}


def verdict(accuracy, max_map_drop, accept_loss, keeping):
    """None when ``accuracy`` passes (or the loss is accepted), else the one-line refusal.

    ``keeping``: what stays in place ('fp32', or 'the previous int8 artifact').
    """
    precision = accuracy["precision"]
    before, after = accuracy["map50_95"]["fp32"], accuracy["map50_95"][precision]
    drop = accuracy["drop"]
    accuracy["max_map_drop"] = max_map_drop
    accuracy["passed"] = drop <= max_map_drop + 1e-9
    accuracy["accepted_loss"] = bool(accept_loss and not accuracy["passed"])
    if accuracy["passed"] or accept_loss:
        return None
    return ("{}: mAP50-95 {:.3f} -> {:.3f} ({:+.3f} > {:.3f}); keeping {}. Use --accept-accuracy-loss to keep "
            "it anyway.".format(precision, before, after, -drop, max_map_drop, keeping))
