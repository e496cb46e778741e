"""The shipped unit passes `systemd-analyze verify` and rates <= 2.0 in `security` (252: 1.6, with
the Jetson drop-in 1.8; "OK" is anything up to 4.9). Its compatibility with older systemd
(JetPack 4: 237, JetPack 5: 245) is tests/test_unit_compat.py."""

import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "systemd", "edge-agent.service")
DROPIN = os.path.join(ROOT, "systemd", "jetson.conf")
MAX_EXPOSURE = 2.0

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze not installed (Debian package: systemd)")


def _unit_copy(tmp_path, with_dropin=False):
    """The unit with ExecStart pointing at a binary that exists here, so verify checks the rest."""
    with open(UNIT) as f:
        text = f.read()
    text, n = re.subn(r"(?m)^ExecStart=\S+", "ExecStart=" + shutil.which("true"), text)
    assert n == 1
    path = tmp_path / "edge-agent.service"
    path.write_text(text)
    if with_dropin:
        d = tmp_path / "edge-agent.service.d"
        d.mkdir()
        shutil.copy(DROPIN, str(d / "jetson.conf"))
    return str(path)


def _run(args):
    return subprocess.run(["systemd-analyze"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)


@pytest.mark.parametrize("with_dropin", [False, True], ids=["base", "jetson"])
def test_unit_verifies(tmp_path, with_dropin):
    unit = _unit_copy(tmp_path, with_dropin)
    res = _run(["verify", unit])
    assert res.returncode == 0, res.stderr
    # verify prints warnings (unknown keys, bad values) without failing: none allowed.
    assert "edge-agent.service" not in res.stderr, res.stderr


def test_unit_directives_we_rely_on():
    with open(UNIT) as f:
        lines = {l.strip() for l in f if l.strip() and not l.startswith("#")}
    for needed in ("Type=notify", "NotifyAccess=main", "RestartPreventExitStatus=78", "User=edge-agent",
                   "ExecReload=/bin/kill -HUP $MAINPID", "ProtectSystem=strict", "DevicePolicy=closed"):
        assert needed in lines
    assert not any(l.startswith("MemoryDenyWriteExecute=") for l in lines)  # breaks CUDA JIT


def _exposure(unit):
    res = _run(["security", "--offline=true", "--no-pager", unit])
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", res.stdout)
    assert match, res.stdout[-500:] + res.stderr
    return float(match.group(1))


@pytest.mark.parametrize("with_dropin", [False, True], ids=["base", "jetson"])
def test_security_exposure_ok(tmp_path, with_dropin):
    exposure = _exposure(_unit_copy(tmp_path, with_dropin))
    assert exposure <= MAX_EXPOSURE, "exposure {} > {}".format(exposure, MAX_EXPOSURE)
