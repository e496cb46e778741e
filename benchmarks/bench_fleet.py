"""Fleet load: how many records/s a broker (or a cluster) carries from N simulated devices to one consumer.

Steps the load (devices x fps) with ``edge-agent simulate`` in its own process (its CPU
time is the publishing side alone: what MQTT publishing costs a device) and a consumer
here (``agent.fleet.Consumer``, QoS 1, one connection) that checks every seq and measures
the end-to-end delay (record timestamp -> receive; same host clock). Per step it prints
offered and delivered records/s, gaps (seqs never received), duplicates, p50/p95 delay,
the simulator's CPU (us per record; share of one core per 1,000 records/s), the broker's
and the consumer's CPU (cores busy), and what else kept the box busy meanwhile ("others",
cores). The sustained rate is the largest step with no gap, p95 delay < 1 s and the
offered rate reached; the steps stop after the first that bends.

    python benchmarks/bench_fleet.py --mosquitto                      # starts its own mosquitto
    python benchmarks/bench_fleet.py --broker mqtt://h:1883 [--broker ...] --consumer mqtt://h:1883 \\
        [--broker-pid PID ...]                                        # an existing broker / cluster
    python benchmarks/bench_fleet.py --rabbitmq $(mktemp -d)          # tests/rabbitmq_cluster.py's 3 nodes

Options: --steps 10,50,100,200,400,800,1200,1600 (devices), --fps 10, --duration 20, --json FILE.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from agent.fleet import Consumer  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mosquitto(workdir):
    """A mosquitto on a free port; a fleet consumer needs more than the default 1,000 queued messages."""
    port = free_port()
    conf = os.path.join(workdir, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write("listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                "max_queued_messages 100000\n".format(port))
    log = open(os.path.join(workdir, "mosquitto.log"), "ab")
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", conf], stdout=log, stderr=log)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, "mqtt://127.0.0.1:{}".format(port)
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start (see {})".format(log.name))


def start_rabbitmq(directory):
    """tests/rabbitmq_cluster.py's 3-node cluster: (the cluster, its MQTT URLs, the pids of its beams)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from rabbitmq_cluster import RabbitCluster

    cluster = RabbitCluster(directory, nodes=3).start()
    pids = []
    for node in cluster.state["nodes"]:
        with open(os.path.join(node["home"], "rabbit.pid")) as f:
            pids.append(int(f.read().strip()))
    return cluster, cluster.urls, pids


def cpu_seconds(pids):
    """utime + stime of ``pids`` (from /proc/PID/stat), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/{}/stat".format(pid)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / float(TICK)


def busy_seconds():
    """CPU seconds the whole box spent not idle (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / float(TICK)  # minus idle and iowait


def step(devices, fps, duration, brokers, consumer_url, broker_pids):
    consumer = Consumer(consumer_url).start()
    cmd = [sys.executable, "-m", "agent.cli", "--log-level", "error", "simulate", "--json",
           "--devices", str(devices), "--fps", str(fps), "--duration", str(duration),
           "--device-prefix", "bench{}".format(devices)]
    for b in brokers:
        cmd += ["--broker", b]
    broker0, wall0, consumer0 = cpu_seconds(broker_pids), time.monotonic(), time.process_time()
    busy0, children0 = busy_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, universal_newlines=True)
    if proc.returncode != 0:
        consumer.close()
        raise SystemExit("edge-agent simulate failed ({}): {}".format(proc.returncode, " ".join(cmd)))
    sim = json.loads(proc.stdout)
    consumer.wait_for(sim["published"], 15)
    wall = time.monotonic() - wall0
    broker_cores = (cpu_seconds(broker_pids) - broker0) / wall if broker_pids else None
    consumer_cores = (time.process_time() - consumer0) / wall
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    sim_cores = (children.ru_utime + children.ru_stime - children0.ru_utime - children0.ru_stime) / wall
    # What else ran on the box meanwhile (other users' work), in cores.
    others = (busy_seconds() - busy0) / wall - sim_cores - consumer_cores - (broker_cores or 0.0)
    got = consumer.stats(sim.pop("last_seq"))
    consumer.close()
    offered = devices * fps
    row = {"devices": devices, "fps": fps, "offered_rps": offered, "published_rps": sim["rate"],
           "delivered_rps": round(got["unique"] / sim["duration_s"], 1), "published": sim["published"],
           "received": got["unique"], "gaps": got["missing"], "duplicates": got["duplicates"],
           "p50_s": got["delay_p50_s"], "p95_s": got["delay_p95_s"], "max_s": got["delay_max_s"],
           "sim_us_per_record": sim["cpu_us_per_record"], "sim_core_per_1000_rps": sim["core_per_1000_rps"],
           "sim_max_lag_s": sim["max_lag_s"], "broker_cores": round(broker_cores, 2) if broker_pids else None,
           "consumer_cores": round(consumer_cores, 2), "others_cores": round(max(0.0, others), 2)}
    # The broker's CPU per record carried (in, and out to the one consumer).
    row["broker_us_per_record"] = (round(broker_cores / row["delivered_rps"] * 1e6, 1)
                                   if broker_pids and row["delivered_rps"] else None)
    row["ok"] = (row["gaps"] == 0 and row["p95_s"] is not None and row["p95_s"] < 1.0
                 and sim["rate"] >= 0.95 * offered)
    return row


def thread_per_client(devices, fps, duration, url):
    """The naive alternative to the simulator's one selector thread: paho's loop_start (a network
    thread) per client, the publishes from one scheduling thread. Returns CPU us per record."""
    from agent.fleet.simulation import load_replay
    from agent.publish import paho_compat
    from agent.publish.base import dumps
    from agent.publish.broker import parse_url

    _, host, port, _ = parse_url(url)
    replay = load_replay()
    clients = []
    for i in range(devices):
        c = paho_compat.make_client("naive-{}-{}".format(i, os.getpid()))
        c.connect(host, port, 30)
        c.loop_start()
        clients.append(c)
    time.sleep(2.0)
    frames = int(duration * fps)
    period = 1.0 / fps
    start = time.monotonic()
    cpu0 = time.process_time()
    infos = []
    for k in range(frames):
        for i, c in enumerate(clients):
            due = start + k * period + period * i / devices
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            rec = dict(replay[(k + i) % len(replay)], device_id="naive-{}".format(i), seq=k + 1, timestamp=time.time())
            infos.append(c.publish("edge-agent/naive-{}/cam0/detections".format(i), dumps(rec), qos=1))
    for info in infos:
        info.wait_for_publish(10)
    cpu = time.process_time() - cpu0
    for c in clients:
        c.disconnect()
        c.loop_stop()
    return round(cpu / len(infos) * 1e6, 1)


COLUMNS = [("devices", "{:>7}"), ("offered_rps", "{:>8}"), ("delivered_rps", "{:>9}"), ("gaps", "{:>6}"),
           ("duplicates", "{:>4}"), ("p50_s", "{:>7}"), ("p95_s", "{:>7}"), ("sim_us_per_record", "{:>9}"),
           ("sim_core_per_1000_rps", "{:>9}"), ("broker_cores", "{:>7}"), ("broker_us_per_record", "{:>9}"),
           ("consumer_cores", "{:>7}"),
           ("others_cores", "{:>7}"), ("ok", "{:>5}")]
HEADER = ["devices", "offered", "delivered", "gaps", "dup", "p50 s", "p95 s", "sim us/r", "core/1k", "broker", "brk us/r",
          "consumer", "others", "ok"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--broker", action="append", default=[], help="mqtt:// URL of a broker (repeat for a cluster).")
    ap.add_argument("--consumer", help="URL the consumer subscribes on (default: the last --broker).")
    ap.add_argument("--broker-pid", type=int, action="append", default=[], help="Broker process(es) to measure.")
    ap.add_argument("--mosquitto", action="store_true", help="Start a mosquitto for the run.")
    ap.add_argument("--rabbitmq", metavar="DIR",
                    help="Start tests/rabbitmq_cluster.py's 3 nodes in DIR (a new directory; stopped after).")
    ap.add_argument("--steps", default="10,50,100,200,400,800,1200,1600", help="Device counts, in order.")
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=20.0, help="Seconds of publishing per step.")
    ap.add_argument("--all-steps", action="store_true", help="Go on after a step bends.")
    ap.add_argument("--json", help="Write the rows here.")
    ap.add_argument("--thread-per-client", type=int, metavar="N",
                    help="Only measure the naive way (N clients, a paho network thread each) against the simulator's "
                         "one selector thread, at --fps for --duration s; on --broker or --mosquitto.")
    args = ap.parse_args(argv)
    # A SIGTERM (timeout, kill) unwinds through the finally blocks below: no broker left behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))

    proc = cluster = None
    brokers, pids = list(args.broker), list(args.broker_pid)
    if args.mosquitto:
        proc, url = start_mosquitto(tempfile.mkdtemp(prefix="bench-fleet-"))
        brokers, pids = [url], [proc.pid]
    elif args.rabbitmq:
        cluster, brokers, pids = start_rabbitmq(args.rabbitmq)
    if not brokers:
        ap.error("give --broker URL, --mosquitto or --rabbitmq DIR")
    if args.thread_per_client:
        try:
            naive = thread_per_client(args.thread_per_client, args.fps, args.duration, brokers[0])
            sim = json.loads(subprocess.run(
                [sys.executable, "-m", "agent.cli", "--log-level", "error", "simulate", "--json", "--devices",
                 str(args.thread_per_client), "--fps", str(args.fps), "--duration", str(args.duration),
                 "--broker", brokers[0]], cwd=ROOT, stdout=subprocess.PIPE, universal_newlines=True).stdout)
            print("{} clients x {:g} fps: a network thread per client {} us CPU per record; one selector thread "
                  "(edge-agent simulate) {} us".format(args.thread_per_client, args.fps, naive,
                                                       sim["cpu_us_per_record"]))
        finally:
            if proc is not None:
                proc.terminate()
            if cluster is not None:
                cluster.stop()
        return
    consumer = args.consumer or brokers[-1]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print("brokers: {} (consumer on {}); fps {:g} per device, {:g} s per step; load before: {}".format(
        " ".join(brokers), consumer, args.fps, args.duration, " ".join(load)))
    print(" ".join(h.rjust(9) for h in HEADER))
    rows = []
    try:
        for devices in [int(s) for s in args.steps.split(",")]:
            row = step(devices, args.fps, args.duration, brokers, consumer, pids)
            rows.append(row)
            print(" ".join(fmt.format(str(row[k])).rjust(9) for k, fmt in COLUMNS), flush=True)
            if not row["ok"] and not args.all_steps:
                break
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        if cluster is not None:
            cluster.stop()
    good = [r for r in rows if r["ok"]]
    if good:
        best = max(good, key=lambda r: r["offered_rps"])
        print("sustained: {} records/s ({} devices x {:g} fps), p95 delay {} s; device-side CPU {} us per record "
              "= {} of a core per 1,000 records/s".format(best["delivered_rps"], best["devices"], best["fps"],
                                                         best["p95_s"], best["sim_us_per_record"],
                                                         best["sim_core_per_1000_rps"]))
    else:
        print("sustained: no step met the criteria")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"brokers": brokers, "consumer": consumer, "load_before": load, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
