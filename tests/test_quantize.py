"""INT8 on ONNX Runtime (agent.engines.quantize) behind the accuracy gate (agent.engines.gate).

Real ONNX Runtime quantization of the demo `fast` model, calibrated on the demo calib split,
measured on the demo val split; bad calibrations (a blank image, noise) are refused by the
gate and leave the previous artifact byte-identical.
"""

import json
import os
import re

import numpy as np
import pytest

from agent.config import data_path, load_config
from agent.engines import artifact as artifacts
from agent.engines import build as builder
from agent.engines import quantize as q
from agent.engines.files import image_set, sha256_file
from agent.errors import EngineError

from conftest import run_cli

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
# JetPack 4's Python 3.6 has onnxruntime 1.10: quantizing is unavailable there (a clear message,
# tested below for real under scripts/test_py36.sh); everything that quantizes is skipped.
TOO_OLD = tuple(int(p) for p in ort.__version__.split(".")[:2]) < q.MIN_ORT
needs_quantization = pytest.mark.skipif(TOO_OLD, reason="onnxruntime {} cannot quantize (>= 1.11 needed)".format(
    ort.__version__))

VAL_IMAGES = 100  # bounded for the tests; the default gate measures 200
CALIB = data_path("data", "demo", "calib")


def _config(tmp_path, model, **extra):
    data = {"sizes": {"fast": {"onnx": model}}, "size": "fast", "engines_dir": str(tmp_path / "engines"),
            "backend": "onnxruntime", "state_dir": str(tmp_path), "quantization": {"val_images": VAL_IMAGES}}
    data.update(extra)
    return load_config(None, overrides=data, environ={}, check_files=False)


def _write_config(tmp_path, model, keep_float):
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({  # JSON is YAML
        "sizes": {"fast": {"onnx": model}}, "size": "fast", "backend": "onnxruntime",
        "engines_dir": str(tmp_path / "engines"), "state_dir": str(tmp_path),
        "quantization": {"val_images": VAL_IMAGES, "keep_float": keep_float}}))
    return str(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory, demo_models):
    """(tmp dir, artifact path, manifest) of the fast model built INT8 with the decode tail in float."""
    tmp = tmp_path_factory.mktemp("int8")
    config = _config(tmp, demo_models["fast"], quantization={"val_images": VAL_IMAGES, "keep_float": ["tail"]})
    spec = artifacts.spec_from_config(config, "fast", "onnxruntime", precision="int8")
    path, manifest, did = builder.build(spec, progress=lambda line: None)
    assert did
    return tmp, path, manifest


@needs_quantization
def test_int8_build_passes_the_gate_and_records_it(built):
    tmp, path, manifest = built
    assert os.path.basename(path) == "fast.onnxruntime.int8.onnx"
    assert manifest["precision"] == {"requested": "int8", "built": "int8"}
    acc = manifest["accuracy"]
    assert acc["passed"] and not acc["accepted_loss"] and acc["images"] == VAL_IMAGES
    assert acc["map50_95"]["fp32"] > 0.3 and acc["drop"] <= acc["max_map_drop"] == 0.02
    assert abs(acc["drop"] - (acc["map50_95"]["fp32"] - acc["map50_95"]["int8"])) < 1e-3
    quant = manifest["quantization"]
    assert quant["method"] == "minmax" and quant["calib_images"] == 32 and quant["keep_float"] == ["tail"]
    assert quant["format"] == "QDQ" and quant["per_channel"] and quant["opset"] == {"before": 12, "after": 13}
    _, digest = image_set(CALIB, 32)
    assert manifest["quantization_requested"]["calibration_sha256"] == digest
    import onnx

    model = onnx.load(path)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 20 and "DequantizeLinear" in ops
    assert {p.key for p in model.metadata_props} >= {"names", "imgsz"}  # class names survive quantization


@needs_quantization
def test_check_and_up_to_date_follow_the_recipe(built, demo_models):
    tmp, path, _ = built
    cfg = _write_config(tmp, demo_models["fast"], ["tail"])
    proc = run_cli(["build-engine", "--config", cfg, "--precision", "int8", "--check"])
    assert proc.returncode == 0 and "fast: valid" in proc.stdout and "int8" in proc.stdout, proc.stdout + proc.stderr
    assert "mAP50-95 fp32" in proc.stdout
    proc = run_cli(["build-engine", "--config", cfg, "--precision", "int8"])
    assert proc.returncode == 0 and "up to date" in proc.stdout, proc.stdout + proc.stderr
    proc = run_cli(["build-engine", "--config", cfg, "--precision", "int8", "--calib-method", "entropy", "--check"])
    assert proc.returncode == 1 and "quantization minmax" in proc.stdout and "entropy" in proc.stdout
    assert "--precision int8" in proc.stdout  # the fix command rebuilds the int8 model, not the fp32 one


def _bad_calib(folder, kind):
    import cv2

    os.makedirs(folder)
    image = np.zeros((720, 1280, 3), np.uint8) if kind == "blank" else \
        np.random.RandomState(0).randint(0, 256, (720, 1280, 3)).astype(np.uint8)
    cv2.imwrite(os.path.join(folder, "0000.png"), image)
    return folder


@needs_quantization
@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_bad_calibration_is_refused_and_the_old_artifact_stays(built, demo_models, kind):
    tmp, path, _ = built
    engines = os.path.dirname(path)
    before = {n: sha256_file(os.path.join(engines, n)) for n in os.listdir(engines)}
    cfg = _write_config(tmp, demo_models["fast"], ["tail"])
    calib = _bad_calib(str(tmp / ("calib-" + kind)), kind)
    proc = run_cli(["build-engine", "--config", cfg, "--precision", "int8", "--calib-dir", calib,
                    "--keep-float", "none"], timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("edge-agent: error:")]
    assert len(error) == 1, proc.stderr
    m = re.search(r"int8: mAP50-95 (\d\.\d{3}) -> (\d\.\d{3}) \(-(\d\.\d{3}) > 0\.020\); keeping the previous "
                  r"fast\.onnxruntime\.int8\.onnx artifact\. Use --accept-accuracy-loss to keep it anyway\.", error[0])
    assert m, error[0]
    assert float(m.group(3)) > 0.02 and abs(float(m.group(1)) - float(m.group(2)) - float(m.group(3))) < 0.0015
    after = {n: sha256_file(os.path.join(engines, n)) for n in os.listdir(engines)}
    assert after == before  # byte-identical, and no temp file left behind


@needs_quantization
def test_accepting_the_loss_keeps_it_and_says_so(tmp_path, demo_models):
    config = _config(tmp_path, demo_models["fast"])
    calib = _bad_calib(str(tmp_path / "calib"), "blank")
    spec = artifacts.spec_from_config(config, "fast", "onnxruntime", precision="int8", calib_dir=calib,
                                      keep_float=("none",), val_images=20)
    with pytest.raises(EngineError, match=r"keeping fp32\. Use --accept-accuracy-loss"):
        builder.build(spec, progress=lambda line: None)
    assert not os.path.exists(artifacts.artifact_paths(spec.engines_dir, "fast", "onnxruntime", "int8")[0])
    path, manifest, _ = builder.build(spec._replace(accept_accuracy_loss=True), progress=lambda line: None)
    assert manifest["accuracy"]["accepted_loss"] and not manifest["accuracy"]["passed"]
    assert manifest["accuracy"]["drop"] > 0.02


@needs_quantization
def test_runtime_loads_the_int8_model_or_refuses(built, demo_models, tmp_path):
    from agent.detect import open_detector

    tmp, path, manifest = built
    config = _config(tmp, demo_models["fast"], onnxruntime={"precision": "int8"},
                     quantization={"val_images": VAL_IMAGES, "keep_float": ["tail"]})
    det = open_detector(config, "fast")
    try:
        assert det.backend.model_path == path and det.engine_id == manifest["artifact_sha256"][:12]
        found = det.detect(np.full((360, 640, 3), 114, np.uint8))
        assert found.boxes.shape[1] == 4
    finally:
        det.close()
    # No INT8 model here: refused with the command that builds it, never a silent fp32.
    empty = _config(tmp_path, demo_models["fast"], onnxruntime={"precision": "int8"})
    with pytest.raises(EngineError, match=r"int8 model .* not usable .*build-engine --size fast --precision int8"):
        open_detector(empty, "fast")


@needs_quantization
def test_auto_keeps_the_most_sensitive_blocks_in_float(tmp_path, demo_models):
    """keep_float auto: per-block sensitivity measured on the calib split picks what stays float."""
    config = _config(tmp_path, demo_models["fast"])
    spec = artifacts.spec_from_config(config, "fast", "onnxruntime", precision="int8", calib_images=8, val_images=40)
    events = []
    path, manifest, _ = builder.build(spec, progress=events.append)
    quant = manifest["quantization"]
    search = quant["search"]
    blocks = [s["block"] for s in search["sensitivity"]]
    assert "tail" in blocks and len(blocks) > 10
    best = max(search["sensitivity"], key=lambda s: s["recovered"])
    assert quant["keep_float"][0] == best["block"]  # the most sensitive block goes float first
    assert search["calib_map50_95_fp32"] - search["steps"][-1]["map50_95"] <= search["target_drop"] + 1e-9
    assert quant["requested_keep_float"] == ["auto"] and manifest["accuracy"]["passed"]
    assert any("per-block sensitivity" in e for e in events)


def test_blocks_and_recipes():
    assert q.block_of("/heads.0/box/box.1/Conv") == "/heads.0/box"
    assert q.block_of("/p3/cv1/conv/Conv") == "/p3" and q.block_of("/Concat_17") == "tail"
    assert q.matches("/heads.2/cls", ["heads"]) and q.matches("/heads.2/cls", ["/heads.2"])
    assert not q.matches("/headsup", ["heads.2"]) and q.matches("tail", ["tail"]) and not q.matches("/p3", ["tail"])
    assert q.recipe_from("entropy", 8, ["none"]) == q.Recipe("entropy", 8, ())
    with pytest.raises(EngineError, match="--calib-method"):
        q.recipe_from("kl", None, None)


@needs_quantization
def test_unknown_block_and_missing_images_are_named(tmp_path, demo_models):
    with pytest.raises(EngineError, match=r"--keep-float: no block 'nohead'"):
        q.quantize(demo_models["fast"], str(tmp_path / "x.onnx"), q.Recipe("minmax", 2, ("nohead",)), CALIB)
    os.makedirs(str(tmp_path / "empty"))
    with pytest.raises(EngineError, match=r"no calibration images in .*empty"):
        q.quantize(demo_models["fast"], str(tmp_path / "x.onnx"), q.Recipe("minmax", 2, ()), str(tmp_path / "empty"))


def test_too_old_onnxruntime_is_a_clear_message(monkeypatch):
    if not TOO_OLD:  # under Python 3.6 (scripts/test_py36.sh) the real onnxruntime 1.10 answers
        monkeypatch.setattr(ort, "__version__", "1.10.0")  # the last wheel for Python 3.6 (JetPack 4)
    with pytest.raises(EngineError, match=r"needs onnxruntime >= 1\.11 .* found 1\.10\.0 .*JetPack 4"):
        q.ort_quantization()


@needs_quantization
def test_int8_model_is_portable_across_onnxruntime_versions(built, tmp_path, demo_models):
    """A QDQ model is plain ONNX: quantized on a newer machine, it runs where ONNX Runtime is older
    (JetPack 4's 1.10), so its manifest's onnxruntime version is not compared, unlike fp32's."""
    import shutil

    tmp, path, manifest = built
    engines = tmp_path / "engines"
    engines.mkdir()
    shutil.copy(path, str(engines))
    manifest = dict(manifest, runtime=dict(manifest["runtime"], onnxruntime="1.99.0"))
    (engines / "fast.onnxruntime.int8.manifest.json").write_text(json.dumps(manifest))
    config = _config(tmp_path, demo_models["fast"], quantization={"val_images": VAL_IMAGES, "keep_float": ["tail"]})
    spec = artifacts.spec_from_config(config, "fast", "onnxruntime", precision="int8")
    _, valid, reasons = artifacts.status(spec)
    assert valid is not None and reasons == []
    (engines / "fast.onnxruntime.int8.manifest.json").write_text(json.dumps(dict(
        manifest, precision={"requested": "fp32", "built": "fp32"})))  # the same edit on an fp32 model...
    _, valid, reasons = artifacts.status(spec)
    assert valid is None and any("onnxruntime 1.99.0" in r for r in reasons)  # ... is refused
