"""A RabbitMQ MQTT cluster of N nodes on one machine, from the distribution's rabbitmq-server.

Each node gets its own node name, AMQP, distribution and MQTT ports, its own config,
enabled-plugins file, mnesia, log and pid files under ``workdir``; all nodes share one
Erlang cookie and one private epmd (its own port: clusters started by parallel test runs
never meet). Run as root, the nodes run as the ``rabbitmq`` user and ``workdir`` is given
to it; run as anyone else, they run as that user.

    cluster = RabbitCluster(workdir, nodes=3).start()
    cluster.urls            # ['mqtt://127.0.0.1:PORT', ...], node 0 first
    cluster.kill_node(0)    # kill -9 of node 0's beam
    cluster.start_node(0)   # it comes back and rejoins
    cluster.stop()          # every node and the epmd; the workdir stays

As a script (the fleet benchmark uses it): ``python tests/rabbitmq_cluster.py start DIR``
prints the MQTT URLs, one a line; ``python tests/rabbitmq_cluster.py stop DIR`` stops it.
State lives in DIR/cluster.json. Only the standard library: runs on Python 3.6.
"""

import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time

SERVER = "rabbitmq-server"
CTL = "rabbitmqctl"
LIBEXEC = "/usr/lib/rabbitmq/bin"  # Debian's scripts; /usr/sbin's wrappers insist on /var/lib/rabbitmq
# Less busy-waiting on a small shared machine; the defaults spin schedulers between jobs.
ERL_ARGS = "+sbwt none +sbwtdcpu none +sbwtdio none"


def available():
    """None if rabbitmq-server (and its MQTT plugin) can run here, else the reason it cannot."""
    if _tool(SERVER) is None:
        return "rabbitmq-server is not installed (apt-get install rabbitmq-server; scripts/setup.sh test does)"
    if shutil.which("epmd") is None:
        return "epmd (Erlang) is not installed"
    return None


def _tool(name):
    path = os.path.join(LIBEXEC, name)
    if os.access(path, os.X_OK):
        return path
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/lib/rabbitmq/bin")


def _free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ClusterError(RuntimeError):
    """A node did not start, join or stop; the message names the node and its log."""


class RabbitCluster(object):
    """``nodes`` clustered RabbitMQ nodes with MQTT on 127.0.0.1; node indexes start at 0."""

    def __init__(self, workdir, nodes=3):
        self.workdir = os.path.abspath(str(workdir))
        self.nodes = nodes
        self.state = None
        path = os.path.join(self.workdir, "cluster.json")
        if os.path.exists(path):
            with open(path) as f:
                self.state = json.load(f)
            self.nodes = len(self.state["nodes"])

    # --- public -----------------------------------------------------------------------------

    @property
    def urls(self):
        return ["mqtt://127.0.0.1:{}".format(n["mqtt"]) for n in self.state["nodes"]]

    def node_name(self, i):
        return self.state["nodes"][i]["name"]

    def start(self, timeout=180):
        """Start every node, join them to node 0, return self once all accept MQTT clients."""
        reason = available()
        if reason:
            raise ClusterError(reason)
        os.makedirs(self.workdir, exist_ok=True)
        if self.state is None:
            self._prepare()
        self._epmd()
        for i in range(self.nodes):
            if not self._running(i):  # start twice: the nodes already up stay as they are
                self._launch(i)
        deadline = time.monotonic() + timeout
        for i in range(self.nodes):
            self._await(i, deadline)
        first = self.node_name(0)
        for i in range(1, self.nodes):
            if first not in self._running_nodes(i):
                for args in (["stop_app"], ["join_cluster", first], ["start_app"]):
                    self._ctl(i, *args, deadline=deadline)
        for i in range(self.nodes):
            self._await_mqtt(i, deadline)
        return self

    def kill_node(self, i):
        """kill -9 of node ``i``'s beam (no goodbye to its clients or its peers)."""
        pid = self._pid(i)
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        _wait_gone(pid, 10)

    def start_node(self, i, timeout=120):
        """Start node ``i`` again (after kill_node); it rejoins the cluster from its mnesia."""
        if self._running(i):
            return
        deadline = time.monotonic() + timeout
        self._launch(i)
        self._await(i, deadline)
        self._await_mqtt(i, deadline)

    def stop(self):
        """Stop every node (TERM, then KILL after 15 s) and the cluster's epmd."""
        if self.state is None:
            return
        pids = [p for p in (self._pid(i) for i in range(self.nodes)) if p is not None]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        for pid in pids:
            if not _wait_gone(pid, max(0.1, deadline - time.monotonic())):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _wait_gone(pid, 5)
        subprocess.call([shutil.which("epmd"), "-kill"], env=self._env(None), stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, preexec_fn=self._as_user())

    # --- set-up -------------------------------------------------------------------------------

    def _prepare(self):
        tag = hashlib.sha1(self.workdir.encode("utf-8")).hexdigest()[:6]
        ports = _free_ports(3 * self.nodes + 1)
        self.state = {"epmd_port": ports[-1], "nodes": []}
        for i in range(self.nodes):
            amqp, dist, mqtt = ports[3 * i:3 * i + 3]
            name = "ea{}n{}@localhost".format(tag, i + 1)
            home = os.path.join(self.workdir, "node{}".format(i + 1))
            os.makedirs(home, exist_ok=True)
            with open(os.path.join(home, "rabbitmq.conf"), "w") as f:
                f.write("listeners.tcp.1 = 127.0.0.1:{}\n"
                        "mqtt.listeners.tcp.1 = 127.0.0.1:{}\n"
                        "mqtt.allow_anonymous = true\n"
                        "mqtt.default_user = guest\n"
                        "mqtt.default_pass = guest\n"
                        "loopback_users.guest = true\n"
                        "disk_free_limit.absolute = 10MB\n"
                        "log.console = false\n"
                        "log.file.level = info\n".format(amqp, mqtt))
            with open(os.path.join(home, "enabled_plugins"), "w") as f:
                f.write("[rabbitmq_mqtt].\n")
            self.state["nodes"].append({"name": name, "amqp": amqp, "dist": dist, "mqtt": mqtt, "home": home})
        with open(os.path.join(self.workdir, "rabbitmq-env.conf"), "w"):
            pass  # the nodes must not read /etc/rabbitmq/rabbitmq-env.conf
        cookie = os.path.join(self.workdir, ".erlang.cookie")
        with open(cookie, "w") as f:
            f.write(hashlib.sha1(os.urandom(16)).hexdigest().upper()[:20])
        os.chmod(cookie, 0o400)
        with open(os.path.join(self.workdir, "cluster.json"), "w") as f:
            json.dump(self.state, f, indent=1)
        if os.geteuid() == 0:
            user = pwd.getpwnam("rabbitmq")
            for root, dirs, files in os.walk(self.workdir):
                for name in [root] + [os.path.join(root, n) for n in dirs + files]:
                    os.chown(name, user.pw_uid, user.pw_gid)
            _check_reachable(self.workdir, user)

    def _as_user(self):
        if os.geteuid() != 0:
            return None
        user = pwd.getpwnam("rabbitmq")

        def drop():
            os.setgid(user.pw_gid)
            os.setgroups([user.pw_gid])
            os.setuid(user.pw_uid)
        return drop

    def _env(self, i):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({"HOME": self.workdir, "ERL_EPMD_PORT": str(self.state["epmd_port"]),
                    "RABBITMQ_CONF_ENV_FILE": os.path.join(self.workdir, "rabbitmq-env.conf"),
                    "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})
        env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        if i is not None:
            n = self.state["nodes"][i]
            home = n["home"]
            env.update({
                "RABBITMQ_NODENAME": n["name"],
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(n["amqp"]),
                "RABBITMQ_DIST_PORT": str(n["dist"]),
                "RABBITMQ_CONFIG_FILE": os.path.join(home, "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(home, "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(home, "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": os.path.join(home, "mnesia"),
                "RABBITMQ_LOG_BASE": os.path.join(home, "log"),
                "RABBITMQ_FEATURE_FLAGS_FILE": os.path.join(home, "feature_flags"),
                "RABBITMQ_PID_FILE": os.path.join(home, "rabbit.pid"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": ERL_ARGS,
            })
        return env

    def _epmd(self):
        subprocess.check_call([shutil.which("epmd"), "-daemon"], env=self._env(None), cwd=self.workdir,
                              preexec_fn=self._as_user())

    def _launch(self, i):
        home = self.state["nodes"][i]["home"]
        try:
            os.unlink(os.path.join(home, "rabbit.pid"))
        except OSError:
            pass
        with open(os.path.join(home, "startup.log"), "ab") as log:
            subprocess.check_call([_tool(SERVER), "-detached"], env=self._env(i), cwd=home, stdout=log,
                                  stderr=log, preexec_fn=self._as_user())

    def _ctl(self, i, *args, **kw):
        deadline = kw.get("deadline") or time.monotonic() + 60
        cmd = [_tool(CTL), "-q", "-n", self.node_name(i)] + list(args)
        try:
            out = subprocess.run(cmd, env=self._env(i), cwd=self.workdir, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, preexec_fn=self._as_user(), universal_newlines=True,
                                 timeout=max(5, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise ClusterError("node {}: rabbitmqctl {} timed out; see {}".format(
                self.node_name(i), " ".join(args), self._log(i)))
        if out.returncode != 0 and not kw.get("check") is False:
            raise ClusterError("node {}: rabbitmqctl {} failed ({}): {}; see {}".format(
                self.node_name(i), " ".join(args), out.returncode, out.stdout.strip()[-500:], self._log(i)))
        return out

    def _await(self, i, deadline):
        # "wait PIDFILE" (unlike await_startup) also waits for the node to register with epmd.
        pidfile = os.path.join(self.state["nodes"][i]["home"], "rabbit.pid")
        self._ctl(i, "wait", pidfile, "--timeout", str(int(max(5, deadline - time.monotonic()))),
                  deadline=deadline)

    def _running_nodes(self, i):
        out = self._ctl(i, "cluster_status", "--formatter", "json", check=False)
        try:
            return json.loads(out.stdout).get("running_nodes", [])
        except ValueError:
            return []

    def _await_mqtt(self, i, deadline):
        port = self.state["nodes"][i]["mqtt"]
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise ClusterError("node {}: no MQTT listener on port {}; see {}".format(
                        self.node_name(i), port, self._log(i)))
                time.sleep(0.2)

    def _pid(self, i):
        try:
            with open(os.path.join(self.state["nodes"][i]["home"], "rabbit.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _running(self, i):
        pid = self._pid(i)
        return pid is not None and _alive(pid)

    def _log(self, i):
        return os.path.join(self.state["nodes"][i]["home"], "log")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own child) counts as gone
        with open("/proc/{}/stat".format(pid)) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _check_reachable(path, user):
    """The nodes run as ``user``: every directory above ``path`` must let it through."""
    parent = os.path.dirname(path)
    while parent and parent != "/":
        mode = os.stat(parent).st_mode
        if not mode & 0o001 and os.stat(parent).st_uid != user.pw_uid:
            raise ClusterError("{} is not reachable by the {} user (mode {:o}): use a directory such as "
                               "tempfile.mkdtemp()".format(parent, user.pw_name, mode & 0o777))
        parent = os.path.dirname(parent)


def main(argv):
    if len(argv) != 3 or argv[1] not in ("start", "stop", "urls"):
        sys.stderr.write("usage: {} start|stop|urls DIR [NODES env RABBIT_NODES]\n".format(argv[0]))
        return 2
    cluster = RabbitCluster(argv[2], nodes=int(os.environ.get("RABBIT_NODES", "3")))
    if argv[1] == "stop":
        cluster.stop()
        return 0
    if argv[1] == "start":
        cluster.start()
    print("\n".join(cluster.urls))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
