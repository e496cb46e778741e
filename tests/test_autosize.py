"""size: auto: picks from a measured report, re-measures a stale one, drives the real Pipeline."""

import json
import logging
import os

import pytest

from agent import autosize
from agent.config import load_config

from conftest import write_video


def _cfg(tmp_path, demo_models, **auto):
    overrides = {"sizes": {"fast": {"onnx": demo_models["fast"]}, "accurate": {"onnx": demo_models["accurate"]}},
                 "size": "auto", "auto_size": auto or {"latency_budget_ms": 1000.0}, "state_dir": str(tmp_path),
                 "engines_dir": str(tmp_path / "engines")}
    return load_config(None, overrides, environ={})


@pytest.fixture(scope="module")
def measured(tmp_path_factory, demo_models):
    """(state dir, report) after resolve() measured both demo sizes on this machine."""
    tmp = tmp_path_factory.mktemp("auto")
    config = _cfg(tmp, demo_models)
    autosize.resolve(config)  # no report yet: measures and saves
    with open(str(tmp / "benchmark.json")) as f:
        return tmp, json.load(f)


def _latency(report, size):
    return report["sizes"][size]["latency"]["stages"]["total"]["p50"]


def _fps(report, size):
    return [r["fps"] for r in report["sizes"][size]["throughput"] if r["streams"] == 1][0]


def test_measures_when_no_report(measured):
    _, report = measured
    assert report["environment"]["backend"] == "onnxruntime"
    assert set(report["sizes"]) == {"fast", "accurate"}
    assert _latency(report, "fast") < _latency(report, "accurate")
    assert report["sizes"]["fast"]["accuracy"] is None  # speed only: no dataset needed


def test_tight_budget_picks_fast_loose_picks_accurate(measured, demo_models, caplog):
    tmp, report = measured
    mid = (_latency(report, "fast") + _latency(report, "accurate")) / 2.0
    caplog.set_level(logging.INFO, logger="edge_agent.autosize")
    size, reason = autosize.choose_size_with_reason(_cfg(tmp, demo_models, latency_budget_ms=mid))
    assert size == "fast"
    assert reason.startswith("size auto: picked fast")
    assert "accurate p50 {:.1f} ms > budget".format(_latency(report, "accurate")) in reason
    loose = _latency(report, "accurate") * 3
    resolved, reason = autosize.resolve(_cfg(tmp, demo_models, latency_budget_ms=loose))
    assert resolved.size == "accurate" and reason.startswith("size auto: picked accurate")
    # The stored report was reused: no re-measure message.
    assert "measuring sizes" not in caplog.text


def test_fps_target(measured, demo_models):
    tmp, report = measured
    mid = (_fps(report, "fast") + _fps(report, "accurate")) / 2.0
    assert autosize.resolve(_cfg(tmp, demo_models, target_fps=mid))[0].size == "fast"
    assert autosize.resolve(_cfg(tmp, demo_models, target_fps=_fps(report, "accurate") / 3))[0].size == "accurate"


def test_nothing_fits_picks_fastest_with_warning(measured, demo_models, caplog):
    tmp, report = measured
    caplog.set_level(logging.INFO, logger="edge_agent.autosize")
    budget = _latency(report, "fast") / 10.0
    assert autosize.resolve(_cfg(tmp, demo_models, latency_budget_ms=budget))[0].size == "fast"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no size meets" in warnings[0].getMessage()


def test_accuracy_ranks_when_present(measured):
    _, report = measured
    loose = _latency(report, "accurate") * 3
    both = json.loads(json.dumps(report))
    # Without mAP, GFLOPs rank (accurate is the bigger model) ...
    assert autosize.pick(both, ["accurate", "fast"], loose)[0] == "accurate"
    # ... with mAP in the report, mAP decides, even against GFLOPs.
    both["sizes"]["fast"]["accuracy"] = {"map50_95": 0.9}
    both["sizes"]["accurate"]["accuracy"] = {"map50_95": 0.5}
    size, reason, met = autosize.pick(both, ["accurate", "fast"], loose)
    assert (size, met) == ("fast", True) and "mAP50-95" in reason


def test_stale_report_is_measured_again(measured, demo_models, tmp_path):
    _, report = measured
    stale = json.loads(json.dumps(report))
    stale["environment"]["hostname"] = "another-device"
    stale["sizes"]["accurate"]["latency"]["stages"]["total"]["p50"] = 0.001
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps(stale))
    config = _cfg(tmp_path, demo_models, latency_budget_ms=(_latency(report, "fast") + _latency(report, "accurate")) / 2)
    assert autosize.stale_reasons(stale, config) == ["hostname another-device -> {}".format(os.uname()[1])]
    assert autosize.resolve(config)[0].size == "fast"  # the fake 0.001 ms was not trusted
    fresh = json.loads(path.read_text())
    assert fresh["environment"]["hostname"] == os.uname()[1]


def test_pipeline_runs_the_chosen_size(measured, demo_models, tmp_path):
    from agent.errors import AgentError
    from agent.pipeline import Pipeline

    state, report = measured
    video = write_video(tmp_path / "v.avi", frames=5)
    config = load_config(None, {
        "sizes": {"fast": {"onnx": demo_models["fast"]}, "accurate": {"onnx": demo_models["accurate"]}},
        "size": "auto", "auto_size": {"latency_budget_ms": _latency(report, "accurate") * 3},
        "state_dir": str(state), "engines_dir": str(tmp_path / "engines"), "output": {"jsonl": None},
        "cameras": [{"id": "cam0", "source": video, "realtime": False}]}, environ={})
    with pytest.raises(AgentError, match="size: 'auto' must be resolved before the pipeline starts"):
        Pipeline(config, [])  # nothing that belongs before the pipeline runs inside it
    resolved, reason = autosize.resolve(config)
    pipeline = Pipeline(resolved, [], size_reason=reason)
    pipeline.start()
    try:
        assert pipeline.wait(30)
        status = pipeline.status()
        assert status["size"] == "accurate"
        assert status["size_reason"].startswith("size auto: picked accurate")
        assert pipeline.processed == 5
    finally:
        pipeline.stop()


def test_without_the_onnx_package_file_size_ranks(measured):
    """On a Jetson without `onnx` the report has no GFLOPs or parameters: the ONNX file size ranks."""
    _, report = measured
    loose = _latency(report, "accurate") * 3
    bare = json.loads(json.dumps(report))
    for entry in bare["sizes"].values():
        entry["model"]["gflops"] = entry["model"]["params"] = None
    assert bare["sizes"]["accurate"]["model"]["onnx_bytes"] > bare["sizes"]["fast"]["model"]["onnx_bytes"] > 0
    size, reason, met = autosize.pick(bare, ["fast", "accurate"], loose)
    assert (size, met) == ("accurate", True) and "ONNX file size" in reason
    for entry in bare["sizes"].values():
        del entry["model"]["onnx_bytes"]  # a report from before onnx_bytes: no figure to rank by
    assert "no accuracy figure" in autosize.pick(bare, ["fast", "accurate"], loose)[1]
