"""The ONNX Runtime backend's two sessions: a frame alone goes to the one that has been faster alone."""

import os
import subprocess

import numpy as np

from agent.backends.onnxruntime import OnnxRuntimeBackend, _Pick, physical_cores
from agent.config import OnnxRuntimeConfig
from conftest import ROOT


def test_pick_measures_both_then_takes_the_faster_and_follows_a_change_of_load():
    wide, narrow = "wide", "narrow"  # the picker only compares and returns them
    pick = _Pick(wide, narrow)
    tried = []
    for k in range(2 * _Pick.SAMPLES):  # each tried SAMPLES times in a row; a slow (cold) first run is outvoted
        s = pick.session()
        tried.append(s)
        pick.took(s, 0.050 if k in (0, _Pick.SAMPLES) else (0.005 if s == wide else 0.009))
    assert tried == [wide] * _Pick.SAMPLES + [narrow] * _Pick.SAMPLES
    chosen = [pick.session() for _ in range(3 * _Pick.EXPLORE)]
    # It explores now and then, SAMPLES frames in a row each time (one now and then would be cold).
    blocks = "".join("n" if s == narrow else "w" for s in chosen).split("w")
    assert [len(b) for b in blocks if b][:2] == [_Pick.SAMPLES] * 2 and chosen[-1] == wide
    # Load arrives: the wide session's lone runs slow down to 16 ms; the narrow one wins within a few frames.
    for _ in range(10):
        s = pick.session()
        pick.took(s, 0.016 if s == wide else 0.009)
    assert pick.session() == narrow


def test_one_session_when_one_frame_in_flight():
    pick = _Pick("only", "only")
    assert [pick.session() for _ in range(3)] == ["only"] * 3


def test_real_backend_runs_alone_and_side_by_side_with_the_same_outputs():
    model = ROOT + "/models/demo-fast.onnx"
    backend = OnnxRuntimeBackend(model, OnnxRuntimeConfig(frames_in_flight=2))
    try:
        assert backend.concurrency == 2 and len(backend._pick.sessions) == 2
        blob = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
        alone = [backend.infer(blob)["output0"] for _ in range(2 * _Pick.SAMPLES)]
        side = backend.infer(blob, parallel=True)["output0"]
        assert [len(r) for r in backend._pick.recent] == [_Pick.SAMPLES] * 2  # both sessions measured alone
        for out in alone:
            np.testing.assert_allclose(out, side, rtol=1e-4, atol=1e-3)
    finally:
        backend.close()
    single = OnnxRuntimeBackend(model, OnnxRuntimeConfig(frames_in_flight=1))
    assert single.concurrency == 1 and single._narrow is single.session
    single.close()


def _cpu_list(text):
    cpus = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def _thread_affinities():
    """{thread id: the CPUs it may run on} of this process (Linux)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with open("/proc/self/task/{}/status".format(tid)) as f:
            line = next(l for l in f if l.startswith("Cpus_allowed_list:"))
        out[tid] = _cpu_list(line.split(":", 1)[1].strip())
    return out


def test_physical_cores_counts_cores_not_hyperthreads():
    rows = subprocess.check_output(["lscpu", "-p=CPU,CORE,SOCKET"], universal_newlines=True).splitlines()
    allowed = os.sched_getaffinity(0)
    cores = {tuple(r.split(",")[1:]) for r in rows if not r.startswith("#") and int(r.split(",")[0]) in allowed}
    assert physical_cores() == len(cores)


def test_default_threads_are_onnx_runtimes_count_with_no_worker_pinned():
    """threads 0: as many intra-op threads as ONNX Runtime's default, set explicitly: its
    default pins each worker to one core, where it cannot get out of the other threads' way."""
    before = _thread_affinities()
    backend = OnnxRuntimeBackend(ROOT + "/models/demo-fast.onnx", OnnxRuntimeConfig(frames_in_flight=1))
    try:
        assert backend.threads == physical_cores()
        assert backend.session.get_session_options().intra_op_num_threads == physical_cores()
        new = {tid: cpus for tid, cpus in _thread_affinities().items() if tid not in before}
        if physical_cores() > 1:
            assert new  # the workers were made (else the check below says nothing)
        assert all(cpus == set(os.sched_getaffinity(0)) for cpus in new.values()), new
    finally:
        backend.close()
