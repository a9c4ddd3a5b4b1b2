"""Engine speed: lane-periods per second, steady-state sweep time, and ngspice on the same circuit.

Run:  python benchmarks/bench_engine.py [--repeat 3] [--periods 2000] [--json out.json]

Prints medians over ``--repeat`` runs (the machines here are noisy):

1. open-loop ``simulate`` of the default board with the inductance spread +-20 % over the lanes,
   from iL = vC = 0, output sampled once per period (``dt = Ts``), for 1, 100, 1000 and 10000
   lanes -- on the compiled kernel (the default) and on the numpy engine (with its
   closed-form CCM run-ahead);
2. a 1000-point ``steady_state`` duty sweep;
3. ngspice (batch mode, switch + ``sidiode`` ideal diode, max step Ts/100, process start
   included) against one-lane ``simulate`` for the same number of periods, sampled at Ts/100
   like ngspice's output, on the compiled kernel (the default) and on the numpy engine, with
   the ratios and the difference in mean output voltage over the last 20 periods.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import numpy as np
from ngspice_ref import ngspice_available, period_mean, run_ngspice

from boostsim import default_board, simulate, steady_state

DUTY = 0.6


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def lane_throughput(repeat: int, periods: int) -> list[dict]:
    board = default_board()
    rows = []
    for lanes in (1, 100, 1000, 10000):
        L = board.L * np.linspace(0.8, 1.2, lanes) if lanes > 1 else board.L
        params = board.replace(L=L)
        n_periods = periods if lanes < 10000 else max(periods // 4, 1)
        t_end = n_periods / board.fsw
        row = {"lanes": lanes, "periods": n_periods}
        for label, engine in (("compiled", "auto"), ("numpy", "numpy")):
            run = functools.partial(simulate, params, duty=DUTY, t_end=t_end,
                                    dt=1 / board.fsw, engine=engine)
            seconds = _median_time(run, repeat)
            row[f"{label}_s"] = seconds
            row[f"{label}_lane_periods_per_s"] = lanes * n_periods / seconds
        rows.append(row)
    return rows


def steady_sweep(repeat: int) -> dict:
    board = default_board()
    duty = np.linspace(0.02, 0.9, 1000)
    steady_state(board, duty[:10])  # warm-up
    seconds = _median_time(lambda: steady_state(board, duty), repeat)
    return {"points": duty.size, "seconds": seconds}


def versus_ngspice(repeat: int, periods_list: tuple[int, ...]) -> list[dict]:
    board = default_board()
    Ts = 1 / board.fsw
    dt = Ts / 100
    rows = []
    for periods in periods_list:
        spice_runs = [run_ngspice(board, DUTY, periods) for _ in range(repeat)]
        spice_s = statistics.median(r.wall_s for r in spice_runs)
        ours_s = _median_time(lambda p=periods: simulate(board, duty=DUTY, t_end=p * Ts, dt=dt),
                              repeat)
        numpy_s = _median_time(lambda p=periods: simulate(board, duty=DUTY, t_end=p * Ts, dt=dt,
                                                          engine="numpy"), repeat)
        ours = simulate(board, duty=DUTY, t_end=periods * Ts, dt=Ts)
        ours_mean = float(ours.metrics(last_periods=20).vout_mean)
        spice_mean = period_mean(spice_runs[0], Ts, 20)
        rows.append({"periods": periods, "ngspice_s": spice_s, "boostsim_s": ours_s,
                     "ratio": spice_s / ours_s, "boostsim_numpy_s": numpy_s,
                     "ratio_numpy": spice_s / numpy_s,
                     "vout_mean_boostsim": ours_mean, "vout_mean_ngspice": spice_mean,
                     "vout_mean_rel_diff": (spice_mean - ours_mean) / ours_mean})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--periods", type=int, default=2000,
                        help="periods per open-loop run (10000 lanes: a quarter)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    results: dict = {}
    print(f"open-loop simulate, default board, duty {DUTY}, dt = Ts (median of {args.repeat})")
    print(f"{'lanes':>6} {'periods':>8} {'compiled [Mlp/s]':>17} {'numpy [Mlp/s]':>14}")
    results["throughput"] = lane_throughput(args.repeat, args.periods)
    for row in results["throughput"]:
        print(f"{row['lanes']:>6} {row['periods']:>8} "
              f"{row['compiled_lane_periods_per_s'] / 1e6:>17.3f} "
              f"{row['numpy_lane_periods_per_s'] / 1e6:>14.3f}")

    results["steady_sweep"] = steady_sweep(args.repeat)
    print(f"\nsteady_state duty sweep, {results['steady_sweep']['points']} points: "
          f"{results['steady_sweep']['seconds']:.3f} s")

    if ngspice_available():
        results["ngspice"] = versus_ngspice(args.repeat, (args.periods, 5 * args.periods))
        print("\none lane vs ngspice (max step Ts/100, process start included; boostsim "
              "sampled at Ts/100)")
        print(f"{'periods':>8} {'ngspice [s]':>12} {'boostsim [s]':>13} {'ratio':>7} "
              f"{'numpy-engine ratio':>19} {'mean vout diff':>15}")
        for row in results["ngspice"]:
            print(f"{row['periods']:>8} {row['ngspice_s']:>12.3f} {row['boostsim_s']:>13.4f} "
                  f"{row['ratio']:>7.1f} {row['ratio_numpy']:>19.1f} "
                  f"{100 * row['vout_mean_rel_diff']:>14.3f}%")
    else:
        print("\nngspice not found (apt-get install ngspice): comparison skipped")

    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
