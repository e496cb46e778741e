"""The trade-off in two dimensions: benchmark rows per (size, precision), the Pareto plot, and
``size: auto`` choosing among (size, precision) pairs that passed the accuracy gate."""

import copy
import json
import logging
import os

import pytest

from agent import autosize
from agent.benchmark_report import pareto_front, summary_rows, versus_fp32
from agent.config import load_config
from agent.engines import artifact as artifacts
from agent.engines import build as builder

from conftest import ROOT, run_cli

ort = pytest.importorskip("onnxruntime")
if tuple(int(p) for p in ort.__version__.split(".")[:2]) < (1, 11):
    pytest.skip("onnxruntime {} cannot quantize (>= 1.11 needed; JetPack 4's Python 3.6 has 1.10)".format(
        ort.__version__), allow_module_level=True)
SCHEMA = os.path.join(ROOT, "agent", "schemas", "benchmark.schema.json")


def _data(tmp, model, **extra):
    data = {"sizes": {"fast": {"onnx": model}}, "size": "fast", "backend": "onnxruntime",
            "engines_dir": str(tmp / "engines"), "state_dir": str(tmp / "state"),
            "quantization": {"val_images": 50, "keep_float": ["tail"]}}
    data.update(extra)
    return data


@pytest.fixture(scope="module")
def measured(tmp_path_factory, demo_models):
    """(tmp, completed benchmark, report, plot) of `fast` in fp32 and int8 (built through the gate first)."""
    tmp = tmp_path_factory.mktemp("tradeoff-int8")
    config = load_config(None, overrides=_data(tmp, demo_models["fast"]), environ={}, check_files=False)
    builder.build(artifacts.spec_from_config(config, "fast", "onnxruntime", precision="int8"), progress=lambda m: None)
    cfg = tmp / "config.yaml"
    cfg.write_text(json.dumps(_data(tmp, demo_models["fast"])))
    out, png = tmp / "report.json", tmp / "tradeoff.png"
    proc = run_cli(["benchmark", "--config", str(cfg), "--frames", "20", "--warmup", "2", "--streams", "1",
                    "--no-build", "--json", str(out), "--plot", str(png)], timeout=600)
    assert proc.returncode == 0, proc.stderr
    return tmp, proc, json.loads(out.read_text()), png


def test_one_entry_per_size_and_precision(measured):
    _, proc, report, png = measured
    assert list(report["sizes"]) == ["fast", "fast@int8"]
    fp32, int8 = report["sizes"]["fast"], report["sizes"]["fast@int8"]
    assert (fp32["size"], fp32["precision"]) == ("fast", "fp32") and (int8["size"], int8["precision"]) == ("fast", "int8")
    assert int8["complete"] and int8["model"]["precision"] == "int8" and int8["model"]["gate"]["passed"]
    assert int8["model"]["engine_id"] != fp32["model"]["engine_id"]
    assert int8["baseline"]["settings"] and int8["accuracy"]["images"] == 20
    jsonschema = pytest.importorskip("jsonschema")
    with open(SCHEMA) as f:
        jsonschema.validate(report, json.load(f))
    assert png.stat().st_size > 0


def test_table_has_the_drop_and_speedup_beside_each_other(measured):
    _, proc, report, _ = measured
    drop, speedup = versus_fp32(report, report["sizes"]["fast@int8"])
    acc = report["sizes"]
    assert drop == pytest.approx(acc["fast"]["accuracy"]["map50_95"] - acc["fast@int8"]["accuracy"]["map50_95"], abs=1e-4)
    assert speedup == pytest.approx(acc["fast@int8"]["baseline"]["fps"] / acc["fast"]["baseline"]["fps"], rel=1e-2)
    rows = summary_rows(report)
    assert rows[0][:4] == ["size", "precision", "mAP50-95", "drop vs fp32"] and len(rows) == 3
    lines = proc.stdout.splitlines()
    int8_line = next(line for line in lines if line.startswith("fast ") and " int8 " in line)
    assert "{:.2f}x".format(speedup) in int8_line and "{:+.3f}".format(-drop) in int8_line


def test_pareto_front():
    points = [(10.0, 0.60, "a"), (5.0, 0.55, "b"), (12.0, 0.58, "c"), (5.0, 0.50, "d"), (20.0, 0.61, "e")]
    assert [p[2] for p in pareto_front(points)] == ["b", "a", "e"]  # c and d are beaten on both axes


def _only_int8_fits(report):
    """The measured report on a device where only INT8 meets the budget: fp32 made twice as slow as int8."""
    report = copy.deepcopy(report)
    lat = report["sizes"]["fast@int8"]["latency"]["stages"]["total"]["p50"]
    report["sizes"]["fast"]["latency"]["stages"]["total"]["p50"] = 2 * lat
    return report, 1.5 * lat


def test_pick_takes_int8_when_only_it_fits_and_says_why(measured):
    _, _, report, _ = measured
    report, budget = _only_int8_fits(report)
    key, reason, met = autosize.pick(report, ["fast"], latency_budget_ms=budget)
    assert met and key == "fast@int8"
    assert "fast@int8 p50" in reason and "<= budget" in reason and "passed the accuracy gate" in reason
    assert "fast p50" in reason and "> budget" in reason
    # A looser budget: both fit, and fp32 wins ties of the proxy rank (the INT8 model is never more accurate by design).
    report["sizes"]["fast@int8"]["accuracy"] = report["sizes"]["fast"]["accuracy"] = None
    key, _, _ = autosize.pick(report, ["fast"], latency_budget_ms=budget * 10)
    assert key == "fast"
    # An INT8 entry whose gate failed is never a candidate.
    report["sizes"]["fast@int8"]["model"]["gate"]["passed"] = False
    key, _, _ = autosize.pick(report, ["fast"], latency_budget_ms=budget)
    assert key == "fast"


def test_size_auto_runs_the_int8_model(measured, demo_models, caplog):
    from agent.detect import open_detector

    tmp, _, report, _ = measured
    report, budget = _only_int8_fits(report)
    path = tmp / "auto-report.json"
    path.write_text(json.dumps(report))
    cfg = tmp / "auto.yaml"
    cfg.write_text(json.dumps(_data(tmp, demo_models["fast"], size="auto", auto_size={
        "latency_budget_ms": budget, "report": str(path)})))
    config = load_config(str(cfg), environ={}, check_files=False)
    with caplog.at_level(logging.INFO, logger="edge_agent.autosize"):
        resolved, reason = autosize.resolve(config)
    assert resolved.size == "fast" and resolved.onnxruntime.precision == "int8"
    assert reason.startswith("size auto: picked fast@int8") and "passed the accuracy gate" in reason
    assert "measuring" not in caplog.text  # the stored report was used, not re-measured
    det = open_detector(resolved, resolved.size)
    try:
        assert det.backend.model_path.endswith("fast.onnxruntime.int8.onnx")
    finally:
        det.close()
