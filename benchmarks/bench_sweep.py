"""Command-line sweep speed: whole ``boostsim`` processes, wall time, medians of a few runs.

Run:  python benchmarks/bench_sweep.py [--repeat 3] [--json out.json]

Cases (each a fresh ``python -m boostsim`` process, so start-up and imports are included):

* start-up alone (``boostsim --version``) for reference;
* a 1001-point duty sweep (``--duty 0.05:0.85:0.0008``) of the default board: table only
  (``--no-files -q``), and with the CSV and the PNG written;
* a 100 000-sample Monte-Carlo (L +-20 %, C +-10 %, r_on +-30 %, duty 0.6) in one process
  (``--workers 1``), on every core (the default), and on every core writing the CSV.

The machines here are noisy: the median and the spread (min .. max) are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

MC = ["sweep", "--duty", "0.6", "--mc", "100000", "--tol", "L=20%", "C=10%", "r_on=30%",
      "--seed", "1"]
DUTY = ["sweep", "--duty", "0.05:0.85:0.0008"]

CASES = [
    ("start-up (boostsim --version)", ["--version"]),
    ("duty sweep, 1001 points, table only", [*DUTY, "--no-files", "-q"]),
    ("duty sweep, 1001 points, CSV + PNG", [*DUTY, "-q"]),
    ("Monte-Carlo 100k, --workers 1", [*MC, "--workers", "1", "--no-files", "-q"]),
    (f"Monte-Carlo 100k, all cores ({os.cpu_count()})", [*MC, "--no-files", "-q"]),
    ("Monte-Carlo 100k, all cores, CSV written", [*MC, "--out", "mc.csv", "--no-files", "-q"]),
]


def wall_time(args: list[str], cwd: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "boostsim", *args], cwd=cwd,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"boostsim {' '.join(args)} failed:\n{proc.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (default 3)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cwd:
        wall_time(["--version"], cwd)  # warm the file cache and bytecode
        for label, cli_args in CASES:
            times = [wall_time(cli_args, cwd) for _ in range(args.repeat)]
            row = {"case": label, "command": "boostsim " + " ".join(cli_args),
                   "median_s": statistics.median(times), "min_s": min(times),
                   "max_s": max(times), "runs": len(times)}
            rows.append(row)
            print(f"{label:<45} {row['median_s']:7.2f} s   ({row['min_s']:.2f} .. "
                  f"{row['max_s']:.2f}, {len(times)} runs)", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                       "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
