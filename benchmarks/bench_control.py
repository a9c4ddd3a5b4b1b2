"""Closed-loop speed: lane-periods per second of the switching engine under the digital PID.

Run:  python benchmarks/bench_control.py [--repeat 3] [--periods 1000] [--json out.json]

The default board (inductance spread +-20 % over the lanes) starts up under
``DigitalController`` (ADC with noise, 1250-step PWM, PID every period with soft start) for
``--periods`` switching periods, output sampled once per period. Medians of ``--repeat`` runs.
It also times a closed-loop run of ``--seconds`` (default 1 s) of simulated time on one lane
with the switching engine and with the averaged model (same controller), and prints the
speed-up and how far apart the two runs' mean output voltages are.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from boostsim import default_board, simulate, simulate_averaged
from boostsim.control import ADC, DigitalController
from boostsim.pid import PID


def _controller(lanes: int, ts: float) -> DigitalController:
    kp = np.full(lanes, 0.002) if lanes > 1 else 0.002
    pid = PID(kp=kp, ki=30.0, kd=0.0, ts=ts, out_min=0.0, out_max=0.8,
              setpoint_rate=12.0 / 4e-3)
    return DigitalController(pid, adc=ADC(noise_rms=0.001))


def closed_loop_throughput(repeat: int, periods: int) -> list[dict]:
    board = default_board()
    Ts = 1 / board.fsw
    rows = []
    for lanes in (1, 100, 1000):
        params = board.replace(L=board.L * np.linspace(0.8, 1.2, lanes)) if lanes > 1 else board
        times = []
        for _ in range(repeat):
            controller = _controller(lanes, Ts)
            start = time.perf_counter()
            simulate(params, controller=controller, vref=12.0, t_end=periods * Ts, dt=Ts)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        rows.append({"lanes": lanes, "periods": periods, "seconds": seconds,
                     "lane_periods_per_s": lanes * periods / seconds})
    return rows


def averaged_speedup(seconds: float) -> dict:
    board = default_board()
    Ts = 1 / board.fsw
    timings = {}
    means = {}
    for label, run in (("engine", simulate), ("averaged", simulate_averaged)):
        controller = _controller(1, Ts)
        start = time.perf_counter()
        result = run(board, controller=controller, vref=12.0, t_end=seconds, dt=1e-3)
        timings[label] = time.perf_counter() - start
        means[label] = float(np.mean(result.period_means()["vout"][-1000:]))
    return {"seconds_simulated": seconds, "engine_s": timings["engine"],
            "averaged_s": timings["averaged"], "speedup": timings["engine"] / timings["averaged"],
            "vout_engine": means["engine"], "vout_averaged": means["averaged"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--periods", type=int, default=1000, help="switching periods per run")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="simulated time of the engine vs averaged comparison [s]")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    results = {"closed_loop": closed_loop_throughput(args.repeat, args.periods)}
    print(f"closed-loop simulate (PID every period), default board, median of {args.repeat}")
    print(f"{'lanes':>6} {'periods':>8} {'seconds':>9} {'M lane-periods/s':>17}")
    for row in results["closed_loop"]:
        print(f"{row['lanes']:>6} {row['periods']:>8} {row['seconds']:>9.3f} "
              f"{row['lane_periods_per_s'] / 1e6:>17.3f}")
    speed = results["averaged"] = averaged_speedup(args.seconds)
    print(f"\n{args.seconds:g} s closed loop, one lane: engine {speed['engine_s']:.2f} s, averaged "
          f"model {speed['averaged_s']:.2f} s, speed-up {speed['speedup']:.1f}x; mean vout "
          f"{speed['vout_engine']:.4f} V vs {speed['vout_averaged']:.4f} V")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
