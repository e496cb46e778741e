"""What would stop the installed service before systemd finds out: checks run as its user.

The unit runs ``edge-agent`` as user edge-agent with ProtectHome=yes (/home, /root and
/run/user are invisible) and ProtectSystem=strict (only its State/Cache/Configuration
directories are writable). Each check here looks at a path the way that user, inside that
sandbox, would; access is tested for real in a child process that takes the user's ids
(so it needs root; without root the checks say so instead of guessing).
"""

import os
import pwd
import shlex
import subprocess

from .config import DEFAULT_CONFIG_PATH, ENVIRONMENT, env_problems, load_config
from .doctor import FAIL, OK, WARN
from .doctor import _check as check

USER = "edge-agent"
UNIT_PATH = "/etc/systemd/system/edge-agent.service"
DROPIN_DIR = UNIT_PATH + ".d"
STATE_DIR, CACHE_DIR = "/var/lib/edge-agent", "/var/cache/edge-agent"
HIDDEN = ("/home", "/root", "/run/user")  # ProtectHome=yes
WRITABLE = (STATE_DIR, CACHE_DIR, "/tmp", "/var/tmp")  # ProtectSystem=strict leaves these (PrivateTmp)


def _under(path, tops):
    return any(path == t or path.startswith(t + "/") for t in tops)


def user_can(user, path, what):
    """Whether ``user`` may ``what`` ('r', 'w' or 'x') ``path``: ``test -what`` run with its ids; None if not root."""
    if os.geteuid() != 0:
        return None

    def become():
        os.setgroups(os.getgrouplist(user.pw_name, user.pw_gid))
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return subprocess.call(["test", "-" + what, path], preexec_fn=become) == 0


def unit_lines(prefix, paths=None):
    """The values of ``prefix=`` lines in ``paths`` (default: the installed unit and its drop-ins), in order."""
    if paths is None:
        paths = [UNIT_PATH]
        if os.path.isdir(DROPIN_DIR):
            paths += [os.path.join(DROPIN_DIR, n) for n in sorted(os.listdir(DROPIN_DIR)) if n.endswith(".conf")]
    values = []
    for path in paths:
        try:
            with open(path) as f:
                values += [l.strip()[len(prefix) + 1:] for l in f if l.startswith(prefix + "=")]
        except OSError:
            pass
    return values


def unit_environment(paths=None):
    """The variables systemd hands the agent: every ``Environment=`` assignment of ``paths``."""
    env = {}
    for line in unit_lines("Environment", paths):
        env.update(a.split("=", 1) for a in shlex.split(line) if "=" in a)
    return env


def _executables(exec_start):
    """ExecStart's program and, for a script, its interpreter: the paths systemd must execute."""
    program = shlex.split(exec_start)[0].lstrip("-@:+!")
    out = [program]
    try:
        with open(program, "rb") as f:
            first = f.readline(200)
        if first.startswith(b"#!"):
            out.append(first[2:].decode(errors="replace").split()[0])
    except OSError:
        pass
    return out


def check_exec(user, exec_start):
    """ExecStart's program and interpreter: visible under ProtectHome= and executable by the user."""
    for path in _executables(exec_start):
        real = os.path.realpath(path)
        if _under(path, HIDDEN) or _under(real, HIDDEN):
            return check("service exec", FAIL, "{} is {} under /home, /root or /run/user, which the service "
                         "cannot see (ProtectHome=yes): it would fail with 203/EXEC".format(path, real),
                         "reinstall with the distribution's python3: sudo PYTHON=/usr/bin/python3 scripts/install.sh",
                         blocking=True)
        if not os.path.exists(real):
            return check("service exec", FAIL, "{}: no such file (203/EXEC)".format(path),
                         "reinstall: sudo scripts/install.sh", blocking=True)
        if user_can(user, real, "x") is False:
            return check("service exec", FAIL, "user {} cannot execute {} (203/EXEC)".format(user.pw_name, real),
                         "make every directory on the path and the file executable by others (chmod o+x)",
                         blocking=True)
    return check("service exec", OK, " -> ".join(_executables(exec_start)))


def check_dirs(user, config):
    """state_dir, engines_dir and the cache: inside the sandbox's writable paths, writable by the user."""
    for key, path in (("state_dir", config.state_dir), ("engines_dir", config.engines_dir), ("cache", CACHE_DIR)):
        path = os.path.realpath(path)
        if not _under(path, WRITABLE):
            return check("service dirs", FAIL, "{} {} is read-only for the service (ProtectSystem=strict: only "
                         "{} are writable)".format(key, path, ", ".join(WRITABLE)),
                         "leave {} unset (the service then uses {})".format(key, STATE_DIR), blocking=True)
        if os.path.isdir(path) and user_can(user, path, "w") is False:
            return check("service dirs", FAIL, "{} {} is not writable by user {}".format(key, path, user.pw_name),
                         "sudo chown -R {0}:{0} {1}".format(user.pw_name, path), blocking=True)
    return check("service dirs", OK, "{}, {}, {}".format(config.state_dir, config.engines_dir, CACHE_DIR))


def check_sources(user, config):
    """File and folder sources: visible and readable by the user (other kinds: see the camera checks)."""
    for cam in config.cameras:
        path = cam.source
        if not os.path.isabs(path) or not os.path.exists(path):
            continue
        if _under(os.path.realpath(path), HIDDEN):
            return check("service files", FAIL, "cameras[id={}].source {} is under /home, /root or /run/user "
                         "(ProtectHome=yes)".format(cam.id, path), "move it, e.g. to " + STATE_DIR, blocking=True)
        if user_can(user, path, "r") is False:
            return check("service files", FAIL, "cameras[id={}].source {} is not readable by user {}".format(
                cam.id, path, user.pw_name), "chmod o+r (and o+x on its directories)", blocking=True)
    return check("service files", OK, "sources readable by {}".format(user.pw_name))


def check_environment(environ, where):
    """EDGE_AGENT_* variables that are neither configuration keys nor in the documented table."""
    problems = env_problems(environ)
    if problems:
        return check("environment", FAIL, "{}: {}".format(where, "; ".join(problems)),
                     "fix or remove it (documented variables: {})".format(
                         ", ".join(n for n, _, _ in ENVIRONMENT if n.startswith("EDGE_AGENT_"))), blocking=True)
    return check("environment", OK, "{}: no unknown EDGE_AGENT_* variable".format(where))


def run(config_path=None):
    """The checks for the installed service (its config: ``config_path`` or the default); [] without a unit."""
    if not os.path.isfile(UNIT_PATH):
        return []
    if config_path is None and os.path.isfile(DEFAULT_CONFIG_PATH):
        config_path = DEFAULT_CONFIG_PATH
    try:
        user = pwd.getpwnam(USER)
    except KeyError:
        return [check("service user", FAIL, "the unit is installed but user {} does not exist".format(USER),
                      "sudo scripts/install.sh", blocking=True)]
    env = unit_environment()
    out = [check_environment(env, "the unit's Environment=")]
    starts = [l for l in unit_lines("ExecStart") if l]
    if starts:
        out.append(check_exec(user, starts[-1]))
    if os.geteuid() != 0:
        out.append(check("service user", WARN, "not root: cannot test access as user " + USER,
                         "sudo edge-agent doctor"))
    # The configuration as the service resolves it: its environment, its StateDirectory.
    clean = {k: v for k, v in env.items() if not env_problems({k: v})}
    service_env = dict(clean, STATE_DIRECTORY=STATE_DIR)
    try:
        config = load_config(config_path, environ=service_env, check_files=False)
    except Exception as e:  # reported by the configuration check already
        return out + [check("service dirs", WARN, "configuration not loadable: {}".format(e))]
    out.append(check_dirs(user, config))
    out.append(check_sources(user, config))
    return out
