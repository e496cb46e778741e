"""Fast vs accurate on this machine: runs ``edge-agent benchmark`` on the demo models and prints the table.

Run by hand: ``python benchmarks/tradeoff.py [--frames 100] [--runs 3] [--json out.json]``.
With ``--runs N`` the benchmark is repeated and the spread (min..max) of the headline
figures is printed under the last table, to tell a real difference from noise.
"""

import argparse
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent import benchmark as bench  # noqa: E402
from agent.benchmark_report import lookup  # noqa: E402
from agent.config import data_path, load_config  # noqa: E402

HEADLINE = [
    ("mAP50-95", ("accuracy", "map50_95"), "{:.3f}"),
    ("latency p50 ms", ("latency", "stages", "total", "p50"), "{:.1f}"),
    ("FPS 1 stream", ("throughput", 1, "fps"), "{:.1f}"),
    ("FPS / bare", ("overhead", "fps_ratio"), "{:.2f}"),
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100, help="timed frames per run and most mAP images")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--streams", default="1,2")
    ap.add_argument("--runs", type=int, default=1, help="repeat and print the spread")
    ap.add_argument("--dataset", default=data_path("data", "demo", "val"))
    ap.add_argument("--json", help="write the last report here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = load_config(None, {"size": "fast"})
    options = bench.Options(dataset=args.dataset, frames=args.frames, warmup=args.warmup,
                            streams=tuple(int(s) for s in args.streams.split(",")))
    reports = []
    for i in range(args.runs):
        print("run {}/{} ...".format(i + 1, args.runs), file=sys.stderr)
        reports.append(bench.run_benchmark(config, ["fast", "accurate"], options))
    print(bench.format_table(reports[-1]))
    if args.runs > 1:
        print("\nspread over {} runs (min..max):".format(args.runs))
        for label, path, fmt in HEADLINE:
            cells = []
            for size in ("fast", "accurate"):
                values = [lookup(r["sizes"][size], *path) for r in reports]
                values = [v for v in values if v is not None]
                cells.append("{} {}..{}".format(size, fmt.format(min(values)), fmt.format(max(values)))
                             if values else "{} -".format(size))
            print("  {:<16} {}".format(label, "   ".join(cells)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": reports}, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
