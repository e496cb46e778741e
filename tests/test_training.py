"""Smoke tests for the demo-model tooling in scripts/: dataset, video, training and export."""
import ast
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import make_dataset  # noqa: E402
import make_video  # noqa: E402

TINY = ["--train", "8", "--val", "4", "--calib", "2", "--width", "320", "--height", "180"]


def test_dataset_is_deterministic(tmp_path):
    make_dataset.main(["--out", str(tmp_path / "a"), "--seed", "3"] + TINY)
    make_dataset.main(["--out", str(tmp_path / "b"), "--seed", "3"] + TINY)
    make_dataset.main(["--out", str(tmp_path / "c"), "--seed", "4"] + TINY)

    def anns(root):
        return json.loads((root / "train" / "instances.json").read_text())["annotations"]

    assert anns(tmp_path / "a") == anns(tmp_path / "b")
    assert anns(tmp_path / "a") != anns(tmp_path / "c")
    coco = json.loads((tmp_path / "a" / "val" / "instances.json").read_text())
    assert len(coco["images"]) == 4 and len(coco["categories"]) == 5
    assert all((tmp_path / "a" / "calib" / "images" / im).exists() for im in ("000000.jpg", "000001.jpg"))


def test_video_decodes_with_matching_ground_truth(tmp_path):
    cv2 = pytest.importorskip("cv2")
    video, gt, frames = make_video.make_video(tmp_path / "v.mp4", seconds=10 / 30, fps=30,
                                              width=320, height=180, objects=4)
    cap = cv2.VideoCapture(str(video))
    decoded = 0
    while cap.read()[0]:
        decoded += 1
    cap.release()
    coco = json.loads(gt.read_text())
    assert decoded == frames == len(coco["images"]) == 10
    assert coco["annotations"], "moving objects should be annotated"


def test_train_and_export_tiny(tmp_path):
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import train

    make_dataset.main(["--out", str(tmp_path / "data")] + TINY)
    out = tmp_path / "tiny.onnx"
    ckpt = train.main(["--size", "fast", "--data", str(tmp_path / "data"), "--epochs", "1",
                       "--batch", "4", "--runs", str(tmp_path / "runs"), "--export", str(out)])
    assert ckpt["size"] == "fast" and (tmp_path / "runs" / "demo-fast.pt").exists()

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version <= 13
    meta = {p.key: p.value for p in proto.metadata_props}
    assert {"names", "imgsz", "stride", "task", "batch", "model_size", "author", "description"} <= set(meta)
    names = ast.literal_eval(meta["names"])
    size = ast.literal_eval(meta["imgsz"])
    assert names[0] == "circle" and size == [320, 320] and meta["task"] == "detect"
    assert float(meta["train_time_s"]) > 0 and float(meta["train_cpu_s"]) > 0  # what benchmark reports

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"]
    assert [o.name for o in sess.get_outputs()] == ["output0"]
    y = sess.run(None, {"images": torch.rand(1, 3, 320, 320).numpy()})[0]
    n = sum((320 // s) ** 2 for s in (8, 16, 32))
    assert y.shape == (1, 4 + len(names), n)
    assert ((y[0, 4:] >= 0) & (y[0, 4:] <= 1)).all(), "scores must already be sigmoided"
