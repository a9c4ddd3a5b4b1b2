"""Identification against a hidden emulated board: bench and fit time, recovered vs hidden
values, and the closed-loop setpoint step predicted by the fitted model vs measured.

The emulator runs a board the host does not know (L -30 %, C +50 %, 3x ESR, 3x DCR, vin 5.1 V);
``boostsim.identify`` starts from the default board and sees only the serial link. Then the
on-board PID (``CONT:MODE PID``, the same PID class as everywhere) makes a setpoint step on
the emulated board, streamed at 20 kS/s, and the same loop runs in the switching simulator
(:mod:`firmware_bridge.bench.board_loop`) with the fitted, the default and -- as a control
of what the emulator's real-time loop timing alone costs -- the hidden board.

    PYTHONPATH=$PWD python benchmarks/bench_identify.py [--seed N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from boostsim.analysis import step_response
from boostsim.params import default_board
from firmware_bridge.bench import run_identify
from firmware_bridge.bench.board_loop import BoardLoop, run_board_step, simulate_board_step
from firmware_bridge.bench.common import _smooth
from firmware_bridge.emulator import Emulator
from firmware_bridge.session import connect

HIDDEN = dict(L=70e-6, C=150e-6, r_C=0.06, r_L=0.15, vin=5.1)
#: The on-board PID (CONT:*) and its setpoint step: the gains 'boostsim tune --config
#: fitted.toml --vref 10 --crossover 30 --rate 500' designs for the identified board.
LOOP = BoardLoop(kp=0.0, ki=9.07, rate=500.0, v_from=9.0, v_to=10.0)
SMOOTH = 40  # samples (2 ms) of moving average for the step metrics, measured and predicted


def _metrics(t: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    m = step_response(t, _smooth(v, SMOOTH), 0.0, reference=LOOP.v_to, kind="reference")
    return float(m.overshoot), float(m.settling_time)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=21)
    seed = ap.parse_args().seed
    start = default_board()
    hidden = start.replace(**HIDDEN)
    with Emulator(hidden, seed=seed) as emu, connect(emu.port, max_vout=14.0) as board:
        t0 = time.perf_counter()
        record, res = run_identify(board, start, 0.5, 0.04)
        wall = time.perf_counter() - t0
        t_step, v_step = run_board_step(board, LOOP)
    print(f"bench {record.bench_s:.2f} s ({record.t.size} samples at {record.rate:.6g} S/s), "
          f"fit {res.fit_s:.1f} s ({res.evaluations} evaluations), total {wall:.1f} s")
    truth = {"L": HIDDEN["L"], "C": HIDDEN["C"], "r_series": HIDDEN["r_L"] + float(start.r_on),
             "r_C": HIDDEN["r_C"], "vin": HIDDEN["vin"]}
    print(f"{'param':>9} {'start':>10} {'fitted':>10} {'hidden':>10} {'error':>8}  95 % interval")
    for n in res.names:
        lo, hi = res.ci95[n]
        err = 100 * (res.value[n] / truth[n] - 1)
        flag = "" if res.determined[n] else "  NOT DETERMINED"
        print(f"{n:>9} {res.start[n]:>10.4g} {res.value[n]:>10.4g} {truth[n]:>10.4g} "
              f"{err:>+7.1f}%  {lo:.4g} .. {hi:.4g}{flag}")
    for c in res.combinations:
        print(f"  determined instead: {c.text} = {c.value:.4g} ± {100 * c.rel_std:.2g} %")
    meas = _metrics(t_step, v_step)
    print(f"on-board PID (kp {LOOP.kp:g}, ki {LOOP.ki:g}, {LOOP.rate:g} Hz) setpoint "
          f"step {LOOP.v_from:g} -> {LOOP.v_to:g} V, {SMOOTH}-sample mean:")
    print(f"{'':>24} {'overshoot %':>12} {'settling ms':>12}")
    print(f"{'measured (emulator)':>24} {meas[0]:>12.2f} {1e3 * meas[1]:>12.2f}")
    # The hidden board's own model: what the emulator's real-time loop timing costs alone.
    for label, p in (("fitted model", res.params), ("default model", start),
                     ("hidden model (control)", hidden)):
        pred = _metrics(t_step, simulate_board_step(p, LOOP, t_step))
        print(f"{label:>24} {pred[0]:>12.2f} {1e3 * pred[1]:>12.2f}   (overshoot "
              f"{100 * (pred[0] / meas[0] - 1):+.1f} %, settling "
              f"{100 * (pred[1] / meas[1] - 1):+.1f} %)")


if __name__ == "__main__":
    main()
