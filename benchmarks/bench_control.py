"""Closed-loop speed: lane-periods per second of the switching engine under the digital PID.

Run:  python benchmarks/bench_control.py [--repeat 3] [--periods 1000] [--json out.json]
      python benchmarks/bench_control.py --against REV [--rounds 5] [--repeat 3]

The default board (inductance spread +-20 % over the lanes, per-lane proportional gains)
starts up under ``DigitalController`` (ADC with noise, 1250-step PWM, PID every period with
soft start) for ``--periods`` switching periods, output sampled once per period, on the
compiled kernel (``engine="auto"``) and, for reference, on the numpy engine. Medians of
``--repeat`` runs (and the best run, nearest a quiet machine's figure). It also times:

* 1000 lanes from start-up on one thread and on all of numba's threads (alternated);
* 1000 lanes once the loop regulates (periods 1000-3000), compiled;
* 1 s of simulated closed loop on one lane (100 000 periods), compiled;
* the kernels' first calls (switching, then averaged) in a fresh process with an empty numba
  cache (compilation) and with the cache filled (what every later process pays);
* a closed-loop Monte-Carlo of a load step (``--mc`` samples, L, C, r_C toleranced);
* ``--seconds`` (default 1 s) of closed loop on one lane with the switching engine and with
  the averaged model (same controller), compiled and on its numpy route: the times, how far
  apart the mean outputs are, and how far the averaged model's two routes are apart.

``--against REV`` times only the 1000-lane start-up, on this tree's code and on git revision
REV's (extracted to a temporary directory), in worker processes run in turn: on a machine whose
speed drifts from day to day, whether a lower figure is the code's or the machine's.
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
from revision import ROOT, checkout, in_turn

from boostsim import Step, default_board, simulate, simulate_averaged
from boostsim.control import ADC, DigitalController
from boostsim.montecarlo import COLUMNS, load_step_yield
from boostsim.pid import PID
from boostsim.sweep import parse_limit, parse_tolerance


def _controller(lanes: int, ts: float) -> DigitalController:
    kp = np.linspace(0.0015, 0.0025, lanes) if lanes > 1 else 0.002
    pid = PID(kp=kp, ki=30.0, kd=0.0, ts=ts, out_min=0.0, out_max=0.8,
              setpoint_rate=12.0 / 4e-3)
    return DigitalController(pid, adc=ADC(noise_rms=0.001))


def start_up_times(lanes: int, periods: int, runs: int, engine: str = "auto") -> list[float]:
    """Wall times [s] of ``runs`` closed-loop start-ups of ``lanes`` lanes (inductance spread
    +-20 %, per-lane gains) for ``periods`` switching periods, output once per period."""
    board = default_board()
    Ts = 1 / board.fsw
    params = board.replace(L=board.L * np.linspace(0.8, 1.2, lanes)) if lanes > 1 else board
    times = []
    for _ in range(runs):
        controller = _controller(lanes, Ts)
        start = time.perf_counter()
        simulate(params, controller=controller, vref=12.0, t_end=periods * Ts, dt=Ts,
                 engine=engine)
        times.append(time.perf_counter() - start)
    return times


def closed_loop_throughput(repeat: int, periods: int) -> list[dict]:
    rows = []
    for lanes in (1, 100, 1000):
        row: dict = {"lanes": lanes, "periods": periods}
        for engine in ("auto", "numpy"):
            if engine == "numpy" and lanes == 1000:
                continue
            times = start_up_times(lanes, periods, repeat if engine == "auto" else 1, engine)
            seconds = statistics.median(times)
            row[f"{engine}_s"] = seconds
            row[f"{engine}_lane_periods_per_s"] = lanes * periods / seconds
            row[f"{engine}_best_lane_periods_per_s"] = lanes * periods / min(times)
        rows.append(row)
    return rows


def thread_scaling(repeat: int, lanes: int = 1000, periods: int = 1000) -> dict:
    """The 1000-lane start-up on one thread and on all of numba's threads, runs alternated so
    that both see the same load: medians and their ratio."""
    import numba

    board = default_board()
    Ts = 1 / board.fsw
    params = board.replace(L=board.L * np.linspace(0.8, 1.2, lanes))
    threads = numba.config.NUMBA_NUM_THREADS
    times: dict[int, list[float]] = {1: [], threads: []}
    try:
        for _ in range(repeat):
            for count in times:
                numba.set_num_threads(count)
                controller = _controller(lanes, Ts)
                start = time.perf_counter()
                simulate(params, controller=controller, vref=12.0, t_end=periods * Ts, dt=Ts)
                times[count].append(time.perf_counter() - start)
    finally:
        numba.set_num_threads(threads)
    one, many = statistics.median(times[1]), statistics.median(times[threads])
    return {"lanes": lanes, "threads": threads, "one_thread_s": one, "threads_s": many,
            "speedup": one / many}


def regulated_throughput(repeat: int, lanes: int = 1000) -> dict:
    """Lane-periods per second once the loop regulates: the extra time of periods 1000-3000
    over a 1000-period run (start-up from rest is DCM and a new duty nearly every period, so
    it cannot use the kernel's cached period maps; regulation dithers between a few duties)."""
    board = default_board()
    Ts = 1 / board.fsw
    params = board.replace(L=board.L * np.linspace(0.8, 1.2, lanes))
    seconds = {}
    for periods in (1000, 3000):
        times = []
        for _ in range(repeat):
            controller = _controller(lanes, Ts)
            start = time.perf_counter()
            simulate(params, controller=controller, vref=12.0, t_end=periods * Ts, dt=Ts)
            times.append(time.perf_counter() - start)
        seconds[periods] = statistics.median(times)
    return {"lanes": lanes, "seconds_1000": seconds[1000], "seconds_3000": seconds[3000],
            "lane_periods_per_s": lanes * 2000 / (seconds[3000] - seconds[1000])}


def one_second(repeat: int) -> dict:
    """1 s of 100 kHz closed loop on one lane (compiled)."""
    board = default_board()
    Ts = 1 / board.fsw
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        simulate(board, controller=_controller(1, Ts), vref=12.0, t_end=1.0, dt=Ts)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"periods": round(1.0 / Ts), "seconds": seconds, "periods_per_s": 1.0 / Ts / seconds}


_FIRST_CALL = """
import time
start = time.perf_counter()
from boostsim import default_board, simulate, simulate_averaged
from boostsim.control import DigitalController
from boostsim.pid import PID
imported = time.perf_counter()
board = default_board()
pid = PID(kp=0.002, ki=30.0, kd=0.0, ts=1 / board.fsw, out_min=0.0, out_max=0.8)
simulate(board, controller=DigitalController(pid), vref=12.0, t_end=1e-4)
switching = time.perf_counter()
simulate_averaged(board, controller=DigitalController(pid), vref=12.0, t_end=1e-4)
print(imported - start, switching - imported, time.perf_counter() - switching)
"""


def first_call() -> dict:
    """Import and first closed-loop call in fresh processes: empty numba cache, then filled."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache,
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        for label in ("cold", "cached"):
            text = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, check=True,
                                  capture_output=True, text=True).stdout.split()
            (out[f"{label}_import_s"], out[f"{label}_first_call_s"],
             out[f"{label}_first_averaged_call_s"]) = map(float, text)
    return out


def monte_carlo(samples: int) -> dict:
    """Load-step yield of ``samples`` toleranced boards (start-up, then R 48 -> 24 ohm)."""
    board = default_board()
    Ts = 1 / board.fsw
    tolerances = [parse_tolerance(t) for t in ("L=20%", "C=20%", "r_C=50%")]
    limits = [parse_limit(t, COLUMNS) for t in ("undershoot<7%", "overshoot<5%")]
    t_step, t_end = 8e-3, 12e-3
    start = time.perf_counter()
    result = load_step_yield(board, _controller(1, Ts), vref=12.0, step=Step(t_step, R=24.0),
                             t_end=t_end, samples=samples, tolerances=tolerances,
                             limits=limits)
    seconds = time.perf_counter() - start
    summary = result.yield_summary()
    return {"samples": samples, "periods": round(t_end / Ts), "seconds": seconds,
            "yield": summary["yield"], "lane_periods_per_s": samples * t_end / Ts / seconds}


def averaged_speedup(seconds: float, repeat: int) -> dict:
    """``seconds`` of closed loop on one lane: the switching engine (compiled), the averaged
    model compiled and on its numpy route (medians of ``repeat``), the mean outputs over the
    last 1000 periods and how far the averaged model's two routes are apart."""
    board = default_board()
    Ts = 1 / board.fsw
    runs = (("engine", simulate, "auto"), ("averaged", simulate_averaged, "auto"),
            ("averaged_numpy", simulate_averaged, "numpy"))
    out: dict = {"seconds_simulated": seconds}
    means = {}
    for label, run, engine in runs:
        times = []
        for _ in range(repeat):
            controller = _controller(1, Ts)
            start = time.perf_counter()
            result = run(board, controller=controller, vref=12.0, t_end=seconds, dt=1e-3,
                         engine=engine)
            times.append(time.perf_counter() - start)
        out[f"{label}_s"] = statistics.median(times)
        out[f"{label}_range_s"] = (min(times), max(times))
        means[label] = result.period_means()["vout"]
        out[f"vout_{label}"] = float(np.mean(means[label][-1000:]))
    out["speedup_compiled_over_numpy"] = out["averaged_numpy_s"] / out["averaged_s"]
    out["averaged_over_engine"] = out["averaged_s"] / out["engine_s"]
    out["routes_max_abs_diff_v"] = float(np.max(np.abs(means["averaged"]
                                                       - means["averaged_numpy"])))
    return out


def compare(rev: str, rounds: int, repeat: int, periods: int, lanes: int = 1000) -> dict:
    """The ``lanes``-lane start-up (the figure of #10) on this tree's code and on git revision
    ``rev``'s, in worker processes run in turn (who goes first alternates; a first call in each
    compiles or loads its kernels), ``repeat`` runs per turn: M lane-periods/s per turn, their
    medians and the median of the turn-by-turn ratios."""
    with tempfile.TemporaryDirectory() as tmp:
        trees = [("this tree", ROOT), (rev, checkout(rev, Path(tmp)))]

        def turn(tree: Path, runs: int) -> float:
            done = subprocess.run(
                [sys.executable, __file__, "--start-up-worker", str(lanes), str(periods),
                 str(runs)], cwd=tree, capture_output=True, text=True, check=False,
                env={**os.environ, "PYTHONPATH": str(tree)})
            if done.returncode:
                raise SystemExit(f"the worker on {tree} failed:\n{done.stderr.strip()}")
            return lanes * periods / statistics.median(json.loads(done.stdout)) / 1e6

        print(f"{lanes} lanes x {periods} periods, closed-loop start-up: this tree against "
              f"{rev}, {rounds} turns of {repeat} runs each (medians), in turn")
        for _, tree in trees:
            turn(tree, 1)  # compile, or load the disk cache
        rates: dict[str, list[float]] = {name: [] for name, _ in trees}
        for k, name, tree in in_turn(rounds, trees):
            rates[name].append(turn(tree, repeat))
            print(f"  turn {k + 1}, {name[:12]:12s} {rates[name][-1]:6.2f} M lane-periods/s")
    mine, theirs = (rates[name] for name, _ in trees)
    ratio = statistics.median(a / b for a, b in zip(mine, theirs, strict=True))
    print(f"  medians: this tree {statistics.median(mine):.2f} M, {rev[:12]} "
          f"{statistics.median(theirs):.2f} M; median ratio {ratio:.3f}")
    return {"against": rev, "lanes": lanes, "periods": periods,
            "this_tree_m_lane_periods_per_s": mine, "revision_m_lane_periods_per_s": theirs,
            "median_ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--periods", type=int, default=1000, help="switching periods per run")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="simulated time of the engine vs averaged comparison [s]")
    parser.add_argument("--mc", type=int, default=10_000, help="Monte-Carlo samples")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--against", metavar="REV",
                        help="only the 1000-lane start-up, this tree and git revision REV in "
                             "turn (the same machine for both: a ratio that a drifting machine "
                             "leaves alone)")
    parser.add_argument("--rounds", type=int, default=5, help="--against: turns of each tree")
    parser.add_argument("--start-up-worker", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.start_up_worker:
        lanes, periods, runs = args.start_up_worker
        start_up_times(lanes, 10, 1)  # compile, or load the disk cache
        print(json.dumps(start_up_times(lanes, periods, runs)))
        return
    if args.against:
        if args.rounds < 1 or args.repeat < 1:
            parser.error("--rounds and --repeat must be at least 1")
        results = compare(args.against, args.rounds, args.repeat, args.periods)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(results, fh, indent=2)
        return
    results = {"closed_loop": closed_loop_throughput(args.repeat, args.periods)}
    print(f"closed-loop simulate (PID every period, start-up), default board, median of "
          f"{args.repeat}")
    print(f"{'lanes':>6} {'periods':>8} {'compiled [s]':>13} {'M lane-periods/s':>17} "
          f"{'(best run)':>10} {'numpy [s]':>10} {'ratio':>7}")
    for row in results["closed_loop"]:
        numpy_s = row.get("numpy_s")
        ratio = None if numpy_s is None else numpy_s / row["auto_s"]
        print(f"{row['lanes']:>6} {row['periods']:>8} {row['auto_s']:>13.4f} "
              f"{row['auto_lane_periods_per_s'] / 1e6:>17.3f} "
              f"{row['auto_best_lane_periods_per_s'] / 1e6:>10.3f} "
              f"{'-' if numpy_s is None else f'{numpy_s:.3f}':>10} "
              f"{'-' if ratio is None else f'{ratio:.0f}x':>7}")
    scaling = results["threads"] = thread_scaling(args.repeat)
    print(f"{scaling['lanes']} lanes, start-up: 1 thread {scaling['one_thread_s']:.4f} s, "
          f"{scaling['threads']} threads {scaling['threads_s']:.4f} s "
          f"({scaling['speedup']:.2f}x)")
    reg = results["regulated"] = regulated_throughput(args.repeat)
    print(f"{reg['lanes']} lanes, periods 1000-3000 (regulating): "
          f"{reg['lane_periods_per_s'] / 1e6:.2f} M lane-periods/s "
          f"(3000 periods in {reg['seconds_3000']:.3f} s)")
    one = results["one_second"] = one_second(args.repeat)
    print(f"\n1 s of closed loop, one lane ({one['periods']} periods): {one['seconds']:.3f} s, "
          f"{one['periods_per_s'] / 1e6:.2f} M periods/s")
    first = results["first_call"] = first_call()
    print(f"fresh process: import boostsim {first['cold_import_s']:.2f} s; first closed-loop "
          f"call {first['cold_first_call_s']:.1f} s with an empty numba cache (compilation), "
          f"{first['cached_first_call_s']:.2f} s with the cache filled; first averaged-model "
          f"call {first['cold_first_averaged_call_s']:.1f} s / "
          f"{first['cached_first_averaged_call_s']:.2f} s")
    mc = results["monte_carlo"] = monte_carlo(args.mc)
    print(f"closed-loop Monte-Carlo, load step, {mc['samples']} samples x {mc['periods']} "
          f"periods: {mc['seconds']:.2f} s ({mc['lane_periods_per_s'] / 1e6:.1f} M "
          f"lane-periods/s), yield {100 * mc['yield']:.1f} %")
    speed = results["averaged"] = averaged_speedup(args.seconds, args.repeat)
    print(f"\n{args.seconds:g} s closed loop, one lane, median of {args.repeat}: switching engine "
          f"{speed['engine_s']:.3g} s; averaged model compiled {speed['averaged_s']:.3g} s "
          f"(range {speed['averaged_range_s'][0]:.3g}-{speed['averaged_range_s'][1]:.3g}), "
          f"numpy route {speed['averaged_numpy_s']:.3g} s: compiled "
          f"{speed['speedup_compiled_over_numpy']:.0f}x faster, "
          f"{speed['averaged_over_engine']:.2f}x the switching engine's time")
    print(f"mean vout over the last 1000 periods: switching {speed['vout_engine']:.4f} V, "
          f"averaged {speed['vout_averaged']:.4f} V "
          f"({100 * (speed['vout_averaged'] / speed['vout_engine'] - 1):+.3f} %); the "
          f"averaged model's two routes differ by at most "
          f"{speed['routes_max_abs_diff_v']:.1e} V over all periods")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
