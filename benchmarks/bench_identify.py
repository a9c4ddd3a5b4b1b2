"""Identification against a hidden emulated board: bench and fit time, recovered vs hidden
values, and the closed-loop setpoint step predicted by the fitted model vs measured.

The emulator runs a board the host does not know (L -30 %, C +50 %, 3x ESR, 3x DCR, vin 5.1 V);
``boostsim.identify`` starts from the default board and sees only the serial link. Then the
host-side PID loop (``bench live``, the same PID class as everywhere) runs a setpoint step on
the emulated board and in the switching simulator with the fitted and with the default board.

    PYTHONPATH=$PWD python benchmarks/bench_identify.py [--seed N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from boostsim.analysis import step_response
from boostsim.params import default_board
from firmware_bridge.bench import run_identify, run_live, simulate_live
from firmware_bridge.emulator import Emulator
from firmware_bridge.session import connect

HIDDEN = dict(L=70e-6, C=150e-6, r_C=0.06, r_L=0.15, vin=5.1)
LOOP = dict(vref=9.0, kp=0.005, ki=2.0, rate=200.0, duration=1.2, vref_steps=[(0.6, 10.0)])


def _metrics(t: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    m = step_response(t, v, LOOP["vref_steps"][0][0], reference=LOOP["vref_steps"][0][1],
                      kind="reference")
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
        live = run_live(board, **LOOP)
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
    meas = _metrics(live.t, live.vout)
    print(f"closed-loop setpoint step {LOOP['vref']:g} -> {LOOP['vref_steps'][0][1]:g} V, "
          f"host PID kp {LOOP['kp']:g} ki {LOOP['ki']:g} at {LOOP['rate']:g} Hz:")
    print(f"{'':>22} {'overshoot %':>12} {'settling ms':>12}")
    print(f"{'measured (emulator)':>22} {meas[0]:>12.2f} {1e3 * meas[1]:>12.1f}")
    for label, p in (("fitted model", res.params), ("default model", start)):
        t_sim = time.perf_counter()
        sim = simulate_live(p, live, seed=seed)
        pred = _metrics(sim["t"], sim["vout"])
        print(f"{label:>22} {pred[0]:>12.2f} {1e3 * pred[1]:>12.1f}   (overshoot "
              f"{pred[0] - meas[0]:+.2f} points, settling "
              f"{100 * (pred[1] / meas[1] - 1):+.1f} %; {time.perf_counter() - t_sim:.0f} s)")


if __name__ == "__main__":
    main()
