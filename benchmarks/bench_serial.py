"""Serial link speed through the board emulator: command round trips, sustained streaming, and
the host PID loop's achieved rate and jitter.

Run:  python benchmarks/bench_serial.py [--port PATH] [--repeat 500] [--seconds 3] [--json F]

Without --port the emulator runs as its own process (``boostsim emulate``), so the host side
measured here does not share an interpreter with it; give --port to measure a real board
(its output is switched on for the live-loop figures: the default board at about 10-12 V).

* round trip: median (and 90th percentile) of ``*OPC?``, ``MEAS:VOLT?`` (16 conversions on the
  board), ``MEAS:VOLT:RAW?``, a verified set (``SOUR:PWM:DUTY`` + error queue + read-back)
  and the live loop's pipelined tick (``OUTP?``, ``SOUR:PWM:DUTY?``, ``MEAS:VOLT?`` in one
  write);
* streaming: samples per second delivered at the board's highest rate (20 kHz nominal, 19.6
  kHz unlocked from the PWM) over --seconds, and samples lost (ring overflow), for fetch
  sizes of 1024 and 4096 samples;
* live loop: ``firmware_bridge.bench.run_live`` at 200, 500 and 1000 Hz for --seconds each:
  achieved rate, tick-interval jitter (rms and p99 of |interval - 1/rate|), overruns.
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from firmware_bridge import bench  # noqa: E402
from firmware_bridge.board import Board  # noqa: E402


def _timed(fn, repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_ms": statistics.median(times) * 1e3,
            "p90_ms": float(np.percentile(times, 90)) * 1e3}


def round_trips(board: Board, repeat: int) -> dict[str, dict[str, float]]:
    board.set_duty(0.3)
    return {
        "*OPC?": _timed(lambda: board.query("*OPC?"), repeat),
        "MEAS:VOLT?": _timed(lambda: board.query("MEAS:VOLT?"), repeat),
        "MEAS:VOLT:RAW?": _timed(lambda: board.query("MEAS:VOLT:RAW?"), repeat),
        "set_duty (verified)": _timed(lambda: board.set_duty(0.3), repeat // 2),
        "live tick (pipelined)": _timed(
            lambda: board.pipeline(("OUTP?",), ("SOUR:PWM:DUTY?",), ("MEAS:VOLT?",)), repeat),
    }


def streaming(board: Board, seconds: float, count: int) -> dict[str, float]:
    rate = bench.unlocked_rate(20e3, board.frequency)
    got = lost = 0
    with board.acquisition(rate) as effective:
        start = time.perf_counter()
        first_t = last_t = None
        while time.perf_counter() - start < seconds:
            acq = board.fetch(count)
            if acq.count:
                first_t = acq.t[0] if first_t is None else first_t
                last_t = acq.t[-1]
            got += acq.count
            lost += acq.lost
            if acq.count < count:
                time.sleep(0.005)
        wall = time.perf_counter() - start
    span = (last_t - first_t) if first_t is not None and last_t is not None else 0.0
    return {"rate_set_Hz": effective, "fetch_count": count, "samples": got, "lost": lost,
            "samples_per_s_wall": got / wall,
            "samples_per_s_board": (got - 1) / span if span > 0 else float("nan")}


def live(board: Board, rate: float, seconds: float) -> dict[str, float]:
    result = bench.run_live(board, vref=10.0, kp=0.01, ki=5.0,
                            rate=rate, duration=seconds)
    t = result.timing()
    return {"rate_set_Hz": rate, "rate_Hz": t["rate"], "jitter_std_ms": t["jitter_std"] * 1e3,
            "jitter_p99_ms": t["jitter_p99"] * 1e3, "round_trip_median_ms":
            t["exchange_median"] * 1e3, "overruns": result.overruns,
            "ticks": result.ticks, "stopped": result.stopped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", help="a real board (default: an emulator process)")
    parser.add_argument("--repeat", type=int, default=500, help="round trips per figure")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="streaming and live-loop run time per figure")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    emulator = None
    tmp = tempfile.TemporaryDirectory()
    port = args.port
    if port is None:
        link = Path(tmp.name) / "board"
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get(
            "PYTHONPATH", ""))
        emulator = subprocess.Popen([sys.executable, "-m", "boostsim", "emulate", "--link",
                                     str(link), "--seed", "1", "--quiet"], env=env,
                                    stdout=subprocess.PIPE, text=True)
        emulator.stdout.readline()
        port = str(link)
    try:
        with Board(port, watchdog=1.0) as board:
            results = {"port": "emulator process" if emulator else port,
                       "identity": str(board.identity),
                       "round_trip": round_trips(board, args.repeat),
                       "streaming": [streaming(board, args.seconds, n) for n in (1024, 4096)],
                       "live": [live(board, r, args.seconds) for r in (200, 500, 1000)]}
    finally:
        if emulator is not None:
            emulator.terminate()
            emulator.wait(10)
        tmp.cleanup()
    print(f"bench_serial: {results['identity']} via {results['port']}")
    print(f"\n{'command round trip':<24} {'median ms':>10} {'p90 ms':>8}")
    for name, r in results["round_trip"].items():
        print(f"{name:<24} {r['median_ms']:>10.3f} {r['p90_ms']:>8.3f}")
    print(f"\n{'streaming':<10} {'set Hz':>9} {'fetch':>6} {'samples':>8} {'lost':>6} "
          f"{'S/s (wall)':>11} {'S/s (board)':>12}")
    for r in results["streaming"]:
        print(f"{'':<10} {r['rate_set_Hz']:>9.1f} {r['fetch_count']:>6} {r['samples']:>8} "
              f"{r['lost']:>6} {r['samples_per_s_wall']:>11.1f} {r['samples_per_s_board']:>12.1f}")
    print(f"\n{'live loop':<10} {'set Hz':>7} {'achieved':>9} {'jitter rms ms':>14} "
          f"{'p99 ms':>7} {'round trip ms':>14} {'overruns':>9}")
    for r in results["live"]:
        print(f"{'':<10} {r['rate_set_Hz']:>7.0f} {r['rate_Hz']:>9.1f} "
              f"{r['jitter_std_ms']:>14.3f} {r['jitter_p99_ms']:>7.3f} "
              f"{r['round_trip_median_ms']:>14.3f} {r['overruns']:>9}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
