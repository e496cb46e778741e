"""``edge-agent install-service`` / ``uninstall-service``: the systemd unit, user and directories.

``--root DIR`` installs into a temporary root (tests, image builds): every path
lives under DIR, the user is written into DIR/etc/passwd and DIR/etc/group,
the unit is enabled with a WantedBy symlink, and systemctl is never called.
"""

import logging
import os
import re
import shutil
import subprocess
import sys

import click

from ..config import data_path
from ..errors import AgentError

log = logging.getLogger("edge_agent.install")

USER = "edge-agent"
GECOS = "edge-agent service"  # marks the user as ours: uninstall --purge removes only that one
UNIT = "edge-agent.service"
UNIT_DIR = "/etc/systemd/system"
WANTS_DIR = UNIT_DIR + "/multi-user.target.wants"
DROPIN = UNIT_DIR + "/edge-agent.service.d/jetson.conf"
CONFIG_DIR = "/etc/edge-agent"
STATE_DIR = "/var/lib/edge-agent"
CACHE_DIR = "/var/cache/edge-agent"
NOLOGIN = "/usr/sbin/nologin"
VENV_MARKER = ".edge-agent-venv"  # scripts/install.sh made this venv: --purge removes it


def _p(root, path):
    return os.path.join(root, path.lstrip("/")) if root != "/" else path


def _run(cmd):
    log.info("running: %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise AgentError("{} failed ({}): {}".format(" ".join(cmd), proc.returncode, out.strip()))
    return out


# --- users -----------------------------------------------------------------------------------


def _read_db(path):
    try:
        with open(path) as f:
            return [l.rstrip("\n").split(":") for l in f if l.strip()]
    except FileNotFoundError:
        return []


def _write_db(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.writelines(":".join(r) + "\n" for r in rows)
    os.replace(path + ".tmp", path)


def _free_system_id(rows, column):
    used = {int(r[column]) for r in rows if len(r) > column and r[column].isdigit()}
    for candidate in range(999, 99, -1):  # useradd --system counts down from SYS_UID_MAX
        if candidate not in used:
            return candidate
    raise AgentError("no free system id below 1000")


def _ensure_user_files(root):
    """Create the user, its group and its video membership in DIR/etc/{passwd,group}."""
    passwd, group = _p(root, "/etc/passwd"), _p(root, "/etc/group")
    users, groups = _read_db(passwd), _read_db(group)
    if not any(g[0] == "video" for g in groups):
        groups.append(["video", "x", str(_free_system_id(groups, 2)), ""])
    gid = next((g[2] for g in groups if g[0] == USER), None)
    if gid is None:
        gid = str(_free_system_id(groups, 2))
        groups.append([USER, "x", gid, ""])
    if not any(u[0] == USER for u in users):
        uid = str(_free_system_id(users, 2))
        users.append([USER, "x", uid, gid, GECOS, STATE_DIR, NOLOGIN])
    for g in groups:
        if g[0] == "video":
            members = [m for m in g[3].split(",") if m] if len(g) > 3 else []
            if USER not in members:
                g[3:] = [",".join(members + [USER])]
    _write_db(passwd, users)
    _write_db(group, groups)


def _ensure_user_system():
    import grp
    import pwd

    try:
        grp.getgrnam("video")
    except KeyError:
        _run(["groupadd", "--system", "video"])
    try:
        pwd.getpwnam(USER)
    except KeyError:
        _run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", STATE_DIR,
              "--shell", NOLOGIN, "--comment", GECOS, "--groups", "video", USER])
        return
    _run(["usermod", "--append", "--groups", "video", USER])


def _remove_user(root):
    if root == "/":
        import pwd

        try:
            entry = pwd.getpwnam(USER)
        except KeyError:
            return
        if entry.pw_gecos == GECOS:
            _run(["userdel", USER])
        return
    passwd, group = _p(root, "/etc/passwd"), _p(root, "/etc/group")
    users = _read_db(passwd)
    if not any(u[0] == USER and len(u) > 4 and u[4] == GECOS for u in users):
        return
    _write_db(passwd, [u for u in users if u[0] != USER])
    groups = []
    for g in _read_db(group):
        if g[0] == USER:
            continue
        if len(g) > 3:
            g[3] = ",".join(m for m in g[3].split(",") if m and m != USER)
        groups.append(g)
    _write_db(group, groups)


def _ids(root):
    """(uid, gid) of the service user in this root, or None."""
    for u in _read_db(_p(root, "/etc/passwd")):
        if u[0] == USER:
            return int(u[2]), int(u[3])
    return None


# --- files -----------------------------------------------------------------------------------


def unit_text(exec_path):
    """The shipped unit with ExecStart= pointing at ``exec_path``."""
    with open(data_path("systemd", UNIT)) as f:
        text = f.read()
    return re.sub(r"(?m)^ExecStart=\S+", lambda m: "ExecStart=" + exec_path, text, count=1)


def _write(path, text, mode):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.chmod(path + ".tmp", mode)
    os.replace(path + ".tmp", path)


def _exec_path():
    found = shutil.which("edge-agent")
    if found:
        return os.path.abspath(found)
    candidate = os.path.join(os.path.dirname(sys.executable), "edge-agent")
    if os.path.isfile(candidate):
        return candidate
    raise AgentError("cannot find the edge-agent console script; pass --exec-path")


def install(root="/", exec_path=None, enable=True, start=True, jetson=None):
    """Install user, directories, config (if absent) and unit; returns the paths written."""
    root = os.path.abspath(root)
    exec_path = exec_path or _exec_path()
    if root == "/":
        _ensure_user_system()
    else:
        _ensure_user_files(root)
    ids = _ids(root) if root != "/" else None
    if root == "/":
        import pwd

        entry = pwd.getpwnam(USER)
        ids = (entry.pw_uid, entry.pw_gid)
    written = []
    for path, mode, owner in ((CONFIG_DIR, 0o750, (0, ids[1])), (STATE_DIR, 0o750, ids),
                              (STATE_DIR + "/engines", 0o750, ids), (CACHE_DIR, 0o750, ids)):
        full = _p(root, path)
        os.makedirs(full, exist_ok=True)
        os.chmod(full, mode)
        if os.geteuid() == 0:
            os.chown(full, *owner)
    config = _p(root, CONFIG_DIR + "/config.yaml")
    if not os.path.exists(config):
        with open(data_path("systemd", "config.example.yaml")) as f:
            _write(config, f.read(), 0o640)
        if os.geteuid() == 0:
            os.chown(config, 0, ids[1])
        written.append(config)
    unit = _p(root, UNIT_DIR + "/" + UNIT)
    _write(unit, unit_text(exec_path), 0o644)
    written.append(unit)
    if jetson is None:
        jetson = os.path.exists(_p(root, "/etc/nv_tegra_release"))
    if jetson:
        with open(data_path("systemd", "jetson.conf")) as f:
            _write(_p(root, DROPIN), f.read(), 0o644)
        written.append(_p(root, DROPIN))
    if root != "/":
        if enable:
            link = _p(root, WANTS_DIR + "/" + UNIT)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            if not os.path.lexists(link):
                os.symlink(UNIT_DIR + "/" + UNIT, link)
        return written
    from ..service_checks import run as service_checks

    blocking = [c for c in service_checks(None) if c.blocking]
    if blocking:  # what systemd would fail on (203/EXEC, a read-only engines_dir...), said first
        raise AgentError("the service would not start: " + "; ".join("{} ({})".format(c.detail, c.fix)
                                                                      for c in blocking))
    _run(["systemctl", "daemon-reload"])
    if enable:
        _run(["systemctl", "enable"] + (["--now"] if start else []) + [UNIT])
    elif start:
        _run(["systemctl", "start", UNIT])
    return written


def uninstall(root="/", purge=False):
    """Stop, disable and remove the unit; with ``purge`` also config, state, cache and user."""
    root = os.path.abspath(root)
    if root == "/":
        subprocess.call(["systemctl", "disable", "--now", UNIT])
    paths = [UNIT_DIR + "/" + UNIT, WANTS_DIR + "/" + UNIT, DROPIN]
    for path in paths:
        full = _p(root, path)
        if os.path.lexists(full):
            os.remove(full)
    dropin_dir = _p(root, os.path.dirname(DROPIN))
    if os.path.isdir(dropin_dir) and not os.listdir(dropin_dir):
        os.rmdir(dropin_dir)
    if purge:
        for path in (CONFIG_DIR, STATE_DIR, CACHE_DIR):
            shutil.rmtree(_p(root, path), ignore_errors=True)
        _remove_user(root)
        if root == "/" and os.path.isfile(os.path.join(sys.prefix, VENV_MARKER)):
            shutil.rmtree(sys.prefix, ignore_errors=True)  # the venv scripts/install.sh made for us
    if root == "/":
        _run(["systemctl", "daemon-reload"])


root_option = click.option("--root", default="/", type=click.Path(file_okay=False),
                           help="Install into this root directory instead of / (no systemctl calls).")


@click.command("install-service")
@root_option
@click.option("--exec-path", help="The edge-agent executable for ExecStart= (default: found on PATH).")
@click.option("--no-enable", is_flag=True, help="Do not enable the unit at boot.")
@click.option("--no-start", is_flag=True, help="Do not start the service now.")
@click.option("--jetson/--no-jetson", default=None,
              help="Install the Jetson CSI drop-in (default: if /etc/nv_tegra_release exists).")
def install_service(root, exec_path, no_enable, no_start, jetson):
    """Create the edge-agent user and directories, a config if none, the unit; enable and start it."""
    if os.path.abspath(root) == "/" and os.geteuid() != 0:
        raise AgentError("install-service needs root: sudo $(which edge-agent) install-service")
    for path in install(root, exec_path, enable=not no_enable, start=not no_start, jetson=jetson):
        click.echo("installed {}".format(path))
    click.echo("done: journalctl -u edge-agent -f to follow it; edge-agent doctor to check this machine")


@click.command("uninstall-service")
@root_option
@click.option("--purge", is_flag=True, help="Also remove config, engines, caches, the edge-agent user and "
                                            "the venv scripts/install.sh made.")
def uninstall_service(root, purge):
    """Stop and remove the systemd service (config and engines stay unless --purge)."""
    if os.path.abspath(root) == "/" and os.geteuid() != 0:
        raise AgentError("uninstall-service needs root")
    uninstall(root, purge)
    click.echo("removed {}{}".format(UNIT, " and purged config, state and user" if purge else ""))
