"""Unit compatibility check: every directive and syscall group the shipped unit uses, against
the systemd versions we target.

Targets: 237 (JetPack 4.x, Ubuntu 18.04), 245 (JetPack 5.x, Ubuntu 20.04), 252 (Debian 12).

How systemd treats what it does not know (systemd.unit(5), and the journal lines quoted):
- an unknown directive: "Unknown key name ... ignoring" / "Unknown lvalue" -> the unit still
  loads, the setting is simply absent;
- an unknown value of a known directive: "Failed to parse ..., ignoring" -> same;
- an unknown syscall group in SystemCallFilter=: "Unknown system call group, ignoring"
  (237 and later; 232: "Don't know system call group, ignoring"). In a deny list (a line
  starting with "~") that group is just not denied. But the first SystemCallFilter= line
  without "~" switches the filter to allow-list mode (seeded with @default), so an unknown
  group there leaves the service with almost nothing allowed: with
  SystemCallErrorNumber=EPERM openat/mmap fail, without it the process gets SIGSYS
  (status=31/SYS, nefelim4ag/systemd-swap#118 on Ubuntu 18.04; USBGuard/usbguard#442:
  "There is no @system-service present in systemd 237").

So on each target, an entry newer than the target must be harmless there:
- effect SECURITY: its absence only loosens the sandbox; the service starts and works (OK);
- effect BEHAVIOUR: its absence changes an operational default (restart, timeouts,
  ordering) but the service starts and works (OK);
- effect STARTUP: its absence breaks the start or the core function of the service:
  it must be known on every target;
- a syscall group newer than the target in an allow-list line: fatal, always.

Sources: "NEWS N" is the "CHANGES WITH N" section of systemd's NEWS file (Debian ships it as
/usr/share/doc/systemd/NEWS.gz; test_news_citations checks every quoted snippet against it
when present). Directives older than NEWS itself (its first section is version 38) cite the
man page that documents them. Where NEWS names a setting only after it existed, `since`
is that version and the note says "at the latest": still an upper bound, which is what the
check needs.
"""

import gzip
import os
import re
import shutil
import subprocess
from collections import namedtuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(ROOT, "systemd", "edge-agent.service")
DROPIN = os.path.join(ROOT, "systemd", "jetson.conf")
UNIT_FILES = (UNIT, DROPIN)
NEWS_GZ = "/usr/share/doc/systemd/NEWS.gz"

TARGETS = {
    237: "JetPack 4.x / Ubuntu 18.04",
    245: "JetPack 5.x / Ubuntu 20.04",
    252: "Debian 12",
}

STARTUP, SECURITY, BEHAVIOUR = "startup", "security", "behaviour"

# since: the systemd version that introduced it (or, per `note`, the latest it could have).
# news: (version, snippet) quoted from that version's section of NEWS; None for pre-NEWS.
Entry = namedtuple("Entry", "since effect news note")


def E(since, effect, news=None, note=""):
    return Entry(since, effect, news, note)


PRE_NEWS = 1  # older than NEWS (which starts at version 38): present in every target

DIRECTIVES = {
    # [Unit] / [Install]: systemd.unit(5)
    "Description": E(PRE_NEWS, BEHAVIOUR, note="pre-NEWS; systemd.unit(5)"),
    "Wants": E(PRE_NEWS, BEHAVIOUR, note="pre-NEWS; systemd.unit(5)"),
    "After": E(PRE_NEWS, BEHAVIOUR, note="pre-NEWS; systemd.unit(5)"),
    "WantedBy": E(PRE_NEWS, BEHAVIOUR, note="pre-NEWS; systemd.unit(5) [Install]"),
    "StartLimitBurst": E(229, BEHAVIOUR, (229, "The settings StartLimitBurst=, StartLimitInterval=, "
                                               "StartLimitAction= and RebootArgument= have been moved "
                                               "from the [Service] section of unit files to [Unit]")),
    "StartLimitIntervalSec": E(229, BEHAVIOUR, (229, "have been moved from the [Service] section of unit "
                                                     "files to [Unit]"),
                               note="[Unit] spelling of StartLimitInterval= from the same 229 move "
                                    "(NEWS names only the old spelling); absent -> default rate limit"),
    # [Service] life cycle: systemd.service(5)
    "Type": E(PRE_NEWS, STARTUP, note="pre-NEWS; Type=notify in systemd.service(5)"),
    "NotifyAccess": E(PRE_NEWS, BEHAVIOUR,
                      note="pre-NEWS (NEWS 233 adds only the value 'exec'); Type=notify defaults "
                           "NotifyAccess to main anyway"),
    "ExecStart": E(PRE_NEWS, STARTUP, note="pre-NEWS; systemd.service(5)"),
    "ExecReload": E(PRE_NEWS, BEHAVIOUR, note="pre-NEWS; systemd.service(5)"),
    "TimeoutStartSec": E(188, BEHAVIOUR, (188, "The TimeoutSec= setting for services is now split into "
                                               "TimeoutStartSec= and TimeoutStopSec=")),
    "TimeoutStopSec": E(188, BEHAVIOUR, (188, "TimeoutStartSec= and TimeoutStopSec= to allow configuration")),
    "KillMode": E(PRE_NEWS, BEHAVIOUR, note="pre-NEWS; the value 'mixed' is NEWS 209 (see VALUES)"),
    "WatchdogSec": E(42, BEHAVIOUR, (42, "Watchdog support for supervising services is now usable")),
    "Restart": E(PRE_NEWS, BEHAVIOUR, note="pre-NEWS; systemd.service(5)"),
    "RestartSec": E(PRE_NEWS, BEHAVIOUR, note="pre-NEWS; systemd.service(5)"),
    "RestartPreventExitStatus": E(189, BEHAVIOUR, (189, "There are two new service settings "
                                                        "RestartPreventExitStatus= and SuccessExitStatus=")),
    # Identity and files: systemd.exec(5)
    "User": E(PRE_NEWS, SECURITY, note="pre-NEWS; systemd.exec(5)"),
    "Group": E(PRE_NEWS, SECURITY, note="pre-NEWS; systemd.exec(5)"),
    "SupplementaryGroups": E(PRE_NEWS, STARTUP,
                             note="pre-NEWS; systemd.exec(5). Group video opens the GPU and camera nodes"),
    "ConfigurationDirectory": E(235, STARTUP, (235, "Units gained new options StateDirectory=, CacheDirectory=, "
                                                    "LogsDirectory= and ConfigurationDirectory=")),
    "ConfigurationDirectoryMode": E(235, SECURITY, (235, "ConfigurationDirectoryMode= for configuring the "
                                                         "access mode of these directories")),
    "StateDirectory": E(235, STARTUP, (235, "Units gained new options StateDirectory="),
                        note="under ProtectSystem=strict the only writable place for engines and spool"),
    "StateDirectoryMode": E(235, SECURITY, (235, "Matching these new settings there's also StateDirectoryMode=")),
    "CacheDirectory": E(235, STARTUP, (235, "Units gained new options StateDirectory=, CacheDirectory=")),
    "CacheDirectoryMode": E(235, SECURITY, (235, "StateDirectoryMode=, CacheDirectoryMode=")),
    "UMask": E(PRE_NEWS, SECURITY, note="pre-NEWS; systemd.exec(5)"),
    "Environment": E(PRE_NEWS, STARTUP,
                     note="pre-NEWS; systemd.exec(5). CUDA cache, PATH for nvcc, OPENBLAS_CORETYPE"),
    # Devices: systemd.resource-control(5)
    "DevicePolicy": E(212, SECURITY, (212, "imply DevicePolicy=closed"),
                      note="at the latest: the cgroup settings came with 205's rework, NEWS first names it in 212"),
    "DeviceAllow": E(210, STARTUP, (210, "it is now possible to allow-list all current and future pseudo-TTYs"),
                     note="the 'char-<group>' syntax we use is NEWS 210 (the directive itself is older); "
                          "without it DevicePolicy=closed hides the GPU"),
    # Privileges
    "CapabilityBoundingSet": E(PRE_NEWS, SECURITY, note="pre-NEWS; systemd.exec(5)"),
    "AmbientCapabilities": E(229, SECURITY, (229, "A new service setting AmbientCapabilities= has been added")),
    "NoNewPrivileges": E(227, SECURITY, (227, "NoNewPrivileges=, TTYPath=, WorkingDirectory= and"),
                         note="at the latest: NEWS first names it in 227 (transient units); it is older"),
    "RestrictSUIDSGID": E(242, SECURITY, (242, "A new boolean sandboxing option RestrictSUIDSGID= has been added")),
    # File system
    "ProtectSystem": E(214, SECURITY, (214, "Two new service settings, ProtectHome= and ProtectSystem=")),
    "ProtectHome": E(214, SECURITY, (214, "Two new service settings, ProtectHome= and ProtectSystem=")),
    "PrivateTmp": E(PRE_NEWS, SECURITY, note="pre-NEWS? NEWS 183 already extends it to /var/tmp; "
                                             "absent -> shared /tmp (the Jetson drop-in wants that anyway)"),
    "ProtectProc": E(247, SECURITY, (247, "Two new unit file settings ProtectProc= and ProcSubset= have been added")),
    "PrivateMounts": E(239, SECURITY, (239, "A new unit file setting PrivateMounts= has been added")),
    "RemoveIPC": E(232, SECURITY, (232, "The new RemoveIPC= option can be used to remove IPC objects")),
    # Kernel
    "ProtectKernelTunables": E(232, SECURITY, (232, "The new ProtectKernelTunables= option can be used")),
    "ProtectKernelModules": E(232, SECURITY, (232, "The new ProtectKernelModules= option can be used")),
    "ProtectKernelLogs": E(244, SECURITY, (244, "Service units gained a new sandboxing option ProtectKernelLogs=")),
    "ProtectControlGroups": E(232, SECURITY, (232, "The new ProtectControlGroups= option can be used")),
    "ProtectClock": E(245, SECURITY, (245, "A new per-service sandboxing option ProtectClock= has been added")),
    "ProtectHostname": E(242, SECURITY, (242, "A new unit setting ProtectHostname= may be used")),
    "RestrictNamespaces": E(233, SECURITY, (233, "A new unit file option RestrictNamespaces= has been added")),
    "RestrictRealtime": E(231, SECURITY, (231, "A new RestrictRealtime= service setting has been added")),
    "LockPersonality": E(235, SECURITY, (235, "A new unit file setting LockPersonality= has been added")),
    # Network
    "RestrictAddressFamilies": E(211, SECURITY, (211, "A new unit file setting RestrictAddressFamilies= has been")),
    # System calls
    "SystemCallArchitectures": E(209, SECURITY, (209, "Also, SystemCallArchitectures= has been added")),
    "SystemCallFilter": E(187, SECURITY, (187, "A new setting SystemCallFilters= has been added to services"),
                          note="groups (@name) are NEWS 231, see GROUPS; an allow list with an unknown "
                               "group is fatal, checked separately"),
    "SystemCallErrorNumber": E(209, STARTUP, (209, "a new SystemCallErrorNumber= setting has been introduced"),
                               note="absent -> a filtered call kills the process instead of returning EPERM"),
}

# Values whose support is newer than their directive (checked when the unit uses them).
VALUES = {
    "KillMode=mixed": E(209, BEHAVIOUR, (209, "The KillMode= switch in service units gained a new possible "
                                              "value \"mixed\"")),
    "ProtectSystem=strict": E(232, SECURITY, (232, "ProtectSystem= option gained a new value \"strict\"")),
    "DeviceAllow=char-": E(210, STARTUP, (210, "with the string \"char-pts\"")),
}

# Syscall groups. NEWS 231 introduced named groups (naming @clock; the initial set, from
# systemd/systemd#3157, also holds @cpu-emulation, @debug, @default, @io-event, @ipc,
# @keyring, @module, @mount, @network-io, @obsolete, @privileged, @process, @raw-io).
_NEWS_231 = (231, "The SystemCallFilter= unit file setting gained support for pre-defined, named "
                  "system call filter sets")
GROUPS = {
    "@clock": E(231, SECURITY, (231, "SystemCallFilter=@clock is now an effective way")),
    "@cpu-emulation": E(231, SECURITY, _NEWS_231, note="initial set (systemd/systemd#3157)"),
    "@debug": E(231, SECURITY, _NEWS_231, note="initial set (systemd/systemd#3157)"),
    "@module": E(231, SECURITY, _NEWS_231, note="initial set (systemd/systemd#3157)"),
    "@mount": E(231, SECURITY, _NEWS_231, note="initial set (systemd/systemd#3157)"),
    "@obsolete": E(231, SECURITY, _NEWS_231, note="initial set (systemd/systemd#3157)"),
    "@privileged": E(231, SECURITY, _NEWS_231, note="initial set (systemd/systemd#3157)"),
    "@raw-io": E(231, SECURITY, _NEWS_231, note="initial set (systemd/systemd#3157)"),
    "@reboot": E(233, SECURITY, (233, "Group \"@reboot\" has been added")),
    "@swap": E(233, SECURITY, (233, "group \"@swap\" has been added")),
    # Not used any more (it broke JetPack 4); kept so the history stays with the table.
    "@system-service": E(239, SECURITY, (239, "will now default to a system call allow list"),
                         note="the allow list those services use is @system-service, new in 239 "
                              "(NEWS names it first in 241: 'dropped from the @system-service'); "
                              "unknown to 237: systemd-swap#118, USBGuard#442"),
}

# ---------------------------------------------------------------------------------------
# Parsing and the per-target check


def parse_unit(path):
    """[(section, key, value, lineno)] of a unit file (comments, blank lines, continuations)."""
    out, section, pending = [], None, ""
    with open(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not pending and (not line.strip() or line.lstrip()[:1] in "#;"):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line, pending = (pending + line).strip(), ""
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            key, sep, value = line.partition("=")
            assert sep, "{}:{}: not a key=value line: {!r}".format(path, lineno, line)
            out.append((section, key.strip(), value.strip(), lineno))
    return out


def unit_lines():
    """All assignments of the unit and then the Jetson drop-in, in the order systemd reads them:
    [(file name, section, key, value, line number)]."""
    return [(os.path.basename(p),) + a for p in UNIT_FILES for a in parse_unit(p)]


def _value_entry(key, value):
    for name, entry in VALUES.items():
        vkey, _, vval = name.partition("=")
        if vkey == key and (value == vval or (vval.endswith("-") and value.startswith(vval))):
            return name, entry
    return None, None


def check(lines, target):
    """(fatal, harmless) lists of messages for one target systemd version."""
    fatal, harmless = [], []
    allow_mode = None  # None until the first non-empty SystemCallFilter= assignment
    filter_fatal = []  # findings about the current filter; an empty assignment resets both
    for fname, section, key, value, lineno in lines:
        where = "{}:{} {}={}".format(fname, lineno, key, value)
        entry = DIRECTIVES.get(key)
        if entry is None:
            fatal.append("{}: no table entry for {}=".format(where, key))
            continue
        for name, e in [(key + "=", entry), _value_entry(key, value)]:
            if e is None or e.since <= target:
                continue
            msg = "{}: {} is systemd {} (> {}), ignored there; effect: {}".format(
                where, name, e.since, target, e.effect)
            (fatal if e.effect == STARTUP else harmless).append(msg)
        if key != "SystemCallFilter" or entry.since > target:
            continue
        if not value:
            allow_mode, filter_fatal = None, []
            continue
        deny = value.startswith("~")
        if allow_mode is None:
            allow_mode = not deny
        items = value.lstrip("~").split()
        unknown = []
        for item in items:
            name = item.partition(":")[0]
            g = GROUPS.get(name)
            if g is None:
                fatal.append("{}: no table entry for {}".format(where, name))
            elif g.since > target:
                unknown.append(name)
        if not unknown:
            continue
        if not deny:
            # A line without "~": in allow mode it is the list of allowed calls, and the first
            # such line is what chose allow mode (seeded with @default); in deny mode it takes
            # calls back out of the deny list. Either way calls the service needs stay blocked.
            what = "every group" if len(unknown) == len(items) else "group(s) " + " ".join(unknown)
            effect = ("allow list is left with about @default only: EPERM/SIGSYS at start"
                      if allow_mode else "these calls stay denied")
            filter_fatal.append("{}: allow-list line, {} unknown to systemd {} -> {}".format(
                where, what, target, effect))
        else:
            harmless.append("{}: deny-list group(s) {} unknown to systemd {}: not denied there".format(
                where, " ".join(unknown), target))
    return fatal + filter_fatal, harmless


# ---------------------------------------------------------------------------------------
# The checks


def test_every_directive_and_group_has_an_entry():
    missing = []
    for fname, section, key, value, lineno in unit_lines():
        if key not in DIRECTIVES:
            missing.append("{}:{} {}=".format(fname, lineno, key))
        if key == "SystemCallFilter":
            missing += ["{}:{} {}".format(fname, lineno, i.partition(":")[0])
                        for i in value.lstrip("~").split() if i.partition(":")[0] not in GROUPS]
    assert not missing, "add these to tests/test_unit_compat.py (with the systemd NEWS version): {}".format(missing)


@pytest.mark.parametrize("target", sorted(TARGETS), ids=lambda t: "systemd{}".format(t))
def test_unit_is_safe_on_target(target):
    fatal, harmless = check(unit_lines(), target)
    assert not fatal, "systemd {} ({}):\n".format(target, TARGETS[target]) + "\n".join(fatal)


def test_unknown_directives_on_237_are_security_only():
    """What JetPack 4 silently drops: all of it sandboxing, none of it needed to run."""
    fatal, harmless = check(unit_lines(), 237)
    dropped = sorted({m.split(": ")[1].split(" is systemd")[0] for m in harmless})
    assert dropped == ["PrivateMounts=", "ProtectClock=", "ProtectHostname=", "ProtectKernelLogs=",
                       "ProtectProc=", "RestrictSUIDSGID="], dropped
    assert all(m.endswith("effect: security") for m in harmless), harmless


def test_system_call_filter_is_deny_only():
    lines = [v for (_, _, k, v, _) in unit_lines() if k == "SystemCallFilter"]
    assert lines and all(v.startswith("~") for v in lines), lines
    denied = {g for v in lines for g in v.lstrip("~").split()}
    # @resources must stay allowed (sched_setaffinity for ONNX Runtime/OpenMP, mbind/set_mempolicy for CUDA).
    assert "@resources" not in denied
    assert {"@privileged", "@mount", "@debug", "@raw-io", "@reboot", "@swap", "@clock", "@module"} <= denied


def _synthetic(*assignments):
    """The shipped unit without its SystemCallFilter= lines, plus `assignments` ((key, value)...)
    at the end: the checker's own tests do not depend on what the unit filters today."""
    lines = [l for l in unit_lines() if l[2] != "SystemCallFilter"]
    return lines + [("synthetic", "Service", k, v, n) for n, (k, v) in enumerate(assignments, 1)]


def test_checker_flags_system_service_allow_list():
    """The unit as it was: SystemCallFilter=@system-service first. Fatal on 237, fine on 245/252."""
    lines = _synthetic(("SystemCallFilter", "@system-service"),
                       ("SystemCallFilter", "~@privileged @mount @debug @cpu-emulation @obsolete @raw-io"))
    assert any("allow-list line, every group unknown to systemd 237" in m for m in check(lines, 237)[0])
    assert not check(lines, 245)[0] and not check(lines, 252)[0]
    # The same group in a deny list is harmless (not denied, nothing else changes).
    fatal, harmless = check(_synthetic(("SystemCallFilter", "~@mount @system-service")), 237)
    assert not fatal and any("@system-service" in m for m in harmless)
    # An allow list of known groups with one unknown group is flagged too.
    fatal, _ = check(_synthetic(("SystemCallFilter", "@mount @system-service")), 237)
    assert any("group(s) @system-service unknown" in m for m in fatal)
    # A reset (empty value) ends allow mode.
    fatal, _ = check(_synthetic(("SystemCallFilter", "@system-service"), ("SystemCallFilter", ""),
                                ("SystemCallFilter", "~@mount")), 237)
    assert not fatal, fatal


def test_checker_flags_new_directive_and_new_group():
    fatal, _ = check(_synthetic(("MemoryHigh", "1G")), 252)
    assert any("no table entry for MemoryHigh=" in m for m in fatal)
    fatal, _ = check(_synthetic(("SystemCallFilter", "~@pkey")), 252)
    assert any("no table entry for @pkey" in m for m in fatal)


def test_checker_flags_startup_directive_newer_than_target():
    old = DIRECTIVES["StateDirectory"]
    DIRECTIVES["StateDirectory"] = old._replace(since=240)
    try:
        assert any("StateDirectory= is systemd 240" in m and "startup" in m
                   for m in check(unit_lines(), 237)[0])
    finally:
        DIRECTIVES["StateDirectory"] = old


# ---------------------------------------------------------------------------------------
# Cross-checks against the systemd installed here (Debian 12: 252)


def _systemd_analyze(args):
    return subprocess.run(["systemd-analyze"] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)


needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed (Debian package: systemd)")


def _local_version():
    res = _systemd_analyze(["--version"])
    return int(re.match(r"systemd (\d+)", res.stdout).group(1))


@needs_analyze
def test_groups_match_local_systemd():
    local = _local_version()
    res = _systemd_analyze(["syscall-filter", "--no-pager"])
    known = set(re.findall(r"(?m)^(@[a-z-]+)$", res.stdout))
    assert "@default" in known, res.stdout[:500] + res.stderr
    for name, e in GROUPS.items():
        assert (name in known) == (e.since <= local), "{} since {} vs systemd {} here".format(name, e.since, local)


@needs_analyze
def test_local_systemd_knows_every_directive(tmp_path):
    """`systemd-analyze verify` warns about unknown keys/groups; none may be about our unit."""
    local = _local_version()
    assert all(e.since <= local for e in DIRECTIVES.values())
    with open(UNIT) as f:
        text = re.sub(r"(?m)^ExecStart=\S+", "ExecStart=" + shutil.which("true"), f.read())
    unit = tmp_path / "edge-agent.service"
    unit.write_text(text)
    (tmp_path / "edge-agent.service.d").mkdir()
    shutil.copy(DROPIN, str(tmp_path / "edge-agent.service.d" / "jetson.conf"))
    res = _systemd_analyze(["verify", str(unit)])
    bad = [l for l in res.stderr.splitlines()
           if re.search(r"Unknown (key|lvalue|system call group)|Failed to parse|ignoring", l)
           and "edge-agent" in l]
    assert not bad, bad


def _news_sections():
    with gzip.open(NEWS_GZ, "rt", encoding="utf-8") as f:
        text = f.read()
    sections, ver = {}, None
    for line in text.splitlines():
        m = re.match(r"CHANGES WITH (\d+)", line)
        if m:
            ver = int(m.group(1))
        elif ver is not None:
            sections.setdefault(ver, []).append(line)
    return {v: " ".join(" ".join(ls).split()) for v, ls in sections.items()}


@pytest.mark.skipif(not os.path.exists(NEWS_GZ), reason=NEWS_GZ + " not installed")
def test_news_citations():
    """Every quoted snippet is in the NEWS section of the version it is cited for."""
    sections = _news_sections()
    wrong = []
    for name, e in list(DIRECTIVES.items()) + list(VALUES.items()) + list(GROUPS.items()):
        if e.news is None:
            assert e.since == PRE_NEWS, name
            continue
        ver, snippet = e.news
        if " ".join(snippet.split()) not in sections.get(ver, ""):
            wrong.append("{}: not in NEWS {}: {!r}".format(name, ver, snippet))
        if ver != e.since:
            wrong.append("{}: since {} but cited NEWS {}".format(name, e.since, ver))
    assert not wrong, "\n".join(wrong)


# ---------------------------------------------------------------------------------------
# Platform facts carried by the Jetson drop-in


def test_jetson_dropin_sets_openblas_coretype():
    """numpy 1.19.5 (the last for Python 3.6, pip's choice on JetPack 4) dies with "Illegal
    instruction" on `import numpy` on Jetson boards: OpenBLAS's CPU detection
    (numpy/numpy#18131, #18175 on Xavier NX, #18468 on Nano). OPENBLAS_CORETYPE=ARMV8 avoids it."""
    env = [v for (f, s, k, v, _) in unit_lines() if f == "jetson.conf" and s == "Service" and k == "Environment"]
    assert "OPENBLAS_CORETYPE=ARMV8" in env, env
    with open(DROPIN) as f:
        text = f.read()
    assert "18131" in text and "Illegal instruction" in text  # the why-comment stays with it
