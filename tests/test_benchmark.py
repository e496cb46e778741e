"""edge-agent benchmark: the fast-vs-accurate report on the demo models, its schema, plot, interrupt."""

import json
import os
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_cli

SCHEMA = os.path.join(ROOT, "agent", "schemas", "benchmark.schema.json")
VAL = os.path.join(ROOT, "data", "demo", "val")


def _config(tmp_path, demo_models):
    path = tmp_path / "config.yaml"
    path.write_text("sizes:\n  fast: {{onnx: {}}}\n  accurate: {{onnx: {}}}\nstate_dir: {}\nengines_dir: {}\n".format(
        demo_models["fast"], demo_models["accurate"], tmp_path / "state", tmp_path / "engines"))
    return str(path)


@pytest.fixture(scope="module")
def tradeoff(tmp_path_factory, demo_models):
    """One quick benchmark run of both demo sizes: (completed process, report, plot path, state dir)."""
    if not os.path.isfile(os.path.join(VAL, "instances.json")):
        pytest.fail("demo val set missing: run python scripts/make_dataset.py")
    tmp = tmp_path_factory.mktemp("bench")
    out, png = tmp / "report.json", tmp / "tradeoff.png"
    proc = run_cli(["benchmark", "--config", _config(tmp, demo_models), "--frames", "40", "--warmup", "3",
                    "--streams", "1,2", "--json", str(out), "--plot", str(png)], timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(out.read_text()), png, tmp / "state"


def test_report_validates_against_schema(tradeoff):
    jsonschema = pytest.importorskip("jsonschema")
    _, report, _, state = tradeoff
    with open(SCHEMA) as f:
        schema = json.load(f)
    jsonschema.validate(report, schema)
    assert report["schema_version"] == 2
    # Saved for size: auto too, identical to --json.
    with open(str(state / "benchmark.json")) as f:
        assert json.load(f) == report
    # A report missing a required section must not validate (the schema checks something).
    broken = json.loads(json.dumps(report))
    del broken["sizes"]["fast"]["latency"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_accurate_is_more_accurate_and_fast_is_faster(tradeoff):
    _, report, _, _ = tradeoff
    fast, acc = report["sizes"]["fast"], report["sizes"]["accurate"]
    assert fast["complete"] and acc["complete"]
    assert acc["accuracy"]["map50_95"] > fast["accuracy"]["map50_95"]
    assert fast["accuracy"]["conf_threshold"] == 0.001 and fast["accuracy"]["max_detections"] == 300
    assert fast["latency"]["stages"]["total"]["p50"] < acc["latency"]["stages"]["total"]["p50"]
    assert fast["baseline"]["infer_ms"]["p50"] < acc["baseline"]["infer_ms"]["p50"]
    fps = {s: {r["streams"]: r["fps"] for r in report["sizes"][s]["throughput"]} for s in ("fast", "accurate")}
    assert fps["fast"][1] > fps["accurate"][1]
    assert set(fps["fast"]) == {1, 2}
    # Cost: the accurate model is the bigger one, and every figure is there.
    assert fast["model"]["params"] < acc["model"]["params"]
    assert fast["model"]["gflops"] < acc["model"]["gflops"]
    for entry in (fast, acc):
        assert entry["build"]["build_time_s"] > 0
        assert entry["peak_rss_mb"] > 50
        assert entry["latency"]["warmup"]["frames"] == 3 and len(entry["latency"]["warmup"]["total_ms"]) == 3
        assert entry["latency"]["frames"] == 40
        # The baseline is the fastest bare session.run over ONNX Runtime's thread settings, its
        # default included, and says which one it was.
        settings = entry["baseline"]["settings"]
        assert [s["setting"] for s in settings][0] == "default" and len(settings) == 1 + 2 * (os.cpu_count() or 1)
        assert entry["baseline"]["fps"] == max(s["fps"] for s in settings)
        assert entry["baseline"]["setting"] in {s["setting"] for s in settings}
        # The pipeline cannot beat the bare runtime by much (noise on a shared 2-core box aside).
        assert 0 < entry["overhead"]["fps_ratio"] < 2.0
        assert entry["overhead"]["latency_ratio"] > 0.8


def test_table_shows_both_sizes(tradeoff):
    proc, report, _, _ = tradeoff
    lines = proc.stdout.splitlines()
    header = lines[0].split()
    assert header == ["fast", "accurate"]
    rows = {line[:26].strip(): line[26:].split() for line in lines[1:] if line.strip() and "  " in line}
    assert rows["mAP50-95"] == ["{:.3f}".format(report["sizes"][s]["accuracy"]["map50_95"]) for s in header]
    for label in ("mAP50", "latency p50 ms (1 frame)", "FPS, 1 stream", "FPS / bare FPS", "params (M)", "GFLOPs",
                  "build s", "train s"):
        assert label in rows and len(rows[label]) == 2, label
    assert "conf 0.001" in proc.stdout
    # Progress: one log line per step on stderr.
    assert "fast: accuracy on 40 images" in proc.stderr
    assert "accurate: throughput: pipeline, 2 stream(s)" in proc.stderr


def test_plot_is_a_png(tradeoff):
    pytest.importorskip("matplotlib")
    import cv2

    _, _, png, _ = tradeoff
    with open(str(png), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(png))
    assert image is not None and image.shape == (400, 600, 3)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10  # not a blank canvas


def test_sigint_stops_cleanly(tmp_path, demo_models):
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "benchmark", "--config", _config(tmp_path, demo_models),
                             "--frames", "200", "--no-build"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)
    seen, deadline = "", time.time() + 60
    while "baseline" not in seen and time.time() < deadline:  # progress started: a step is running
        ready, _, _ = select.select([proc.stderr], [], [], 1.0)
        if ready:
            seen += proc.stderr.readline()
    assert "baseline" in seen, seen
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Traceback" not in err and "Traceback" not in out
    assert err.strip().splitlines()[-1] == "edge-agent: benchmark interrupted; partial results above"
    assert "interrupted: partial results" in out
    assert not os.path.exists(str(tmp_path / "state" / "benchmark.json"))  # a partial report is not saved for auto


def test_missing_dataset_is_a_clear_error(tmp_path, demo_models):
    proc = run_cli(["benchmark", "--config", _config(tmp_path, demo_models), "--dataset", str(tmp_path / "nope")])
    assert proc.returncode == 78
    assert "make_dataset.py" in proc.stderr and str(tmp_path / "nope") in proc.stderr
    assert "Traceback" not in proc.stderr


def test_end_to_end_over_mqtt(tmp_path, demo_models, broker):
    out = tmp_path / "e2e.json"
    proc = run_cli(["benchmark", "--config", _config(tmp_path, demo_models), "--size", "fast", "--no-accuracy",
                    "--no-build", "--streams", "1", "--frames", "10", "--warmup", "2", "--mqtt", broker.url,
                    "--json", str(out), "--no-save"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    e2e = report["sizes"]["fast"]["e2e"]
    assert e2e["frames"] == 10 and e2e["url"] == broker.url
    assert 0 < e2e["latency_ms"]["p50"] < 2000
    assert "e2e MQTT p50 ms" in proc.stdout


def test_model_stats_counts_conv_macs(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from agent.onnx_stats import model_stats

    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    b = numpy_helper.from_array(np.zeros((8,), np.float32), "b")
    fc = numpy_helper.from_array(np.zeros((8 * 32 * 32, 10), np.float32), "fc")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
         helper.make_node("Flatten", ["y"], ["f"]),
         helper.make_node("MatMul", ["f", "fc"], ["z"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 10])], initializer=[w, b, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.metadata_props.add(key="train_time_s", value="12.5")
    path = str(tmp_path / "tiny.onnx")
    onnx.save(model, path)
    stats = model_stats(path)
    assert stats["params"] == 8 * 27 + 8 + 8 * 32 * 32 * 10
    macs = 8 * 32 * 32 * 27 + 8 * 32 * 32 * 10
    assert stats["gflops"] == pytest.approx(2 * macs / 1e9, abs=1e-6)
    assert stats["metadata"]["train_time_s"] == "12.5"


@pytest.mark.parametrize("evaluator", ["faster_coco_eval", "pycocotools"])
def test_coco_map_of_ground_truth_is_one(evaluator, monkeypatch):
    pytest.importorskip(evaluator)
    from agent import coco

    monkeypatch.setattr(coco, "evaluator_name", lambda: evaluator)
    dataset = coco.open_dataset(VAL)
    ids = [im["id"] for im in dataset.images[:20]]
    gt = [a for a in dataset.data["annotations"] if a["image_id"] in ids]
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in gt]
    m5095, m50 = coco.evaluate(dataset, results, ids)
    assert m50 == pytest.approx(1.0) and m5095 == pytest.approx(1.0)
    # Shifted boxes lose accuracy: the evaluator really compares.
    shifted = [dict(r, bbox=[r["bbox"][0] + r["bbox"][2] * 0.4] + r["bbox"][1:]) for r in results]
    assert coco.evaluate(dataset, shifted, ids)[0] < 0.9


def test_model_stats_follow_runtime_shapes(demo_models):
    """The demo models upsample with run-time sizes (Shape -> Resize), which shape inference cannot follow;
    the counts must still match the torch forward-hook figures of models/README.md (0.60 and 1.88 GFLOPs)."""
    pytest.importorskip("onnx")
    from agent.onnx_stats import model_stats

    fast, accurate = model_stats(demo_models["fast"]), model_stats(demo_models["accurate"])
    assert fast["gflops"] == pytest.approx(0.604, rel=0.01)
    assert accurate["gflops"] == pytest.approx(1.880, rel=0.01)
    assert 700000 < fast["params"] < accurate["params"] < 1500000
