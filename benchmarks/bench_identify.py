"""Identification against a hidden emulated board: bench and fit time, recovered vs hidden
values, and the closed-loop setpoint step predicted by the fitted model vs measured.

The emulator runs a board the host does not know (L -30 %, C +50 %, 3x ESR, 3x DCR, vin 5.1 V);
``boostsim.identify`` starts from the default board and sees only the serial link. Then the
on-board PID (``CONT:MODE PID``, the same PID class as everywhere) makes a setpoint step on
the emulated board, streamed at 20 kS/s, and the same loop runs in the switching simulator
(:func:`firmware_bridge.bench.host_loop_controller` with the firmware's averaging and rate)
with the fitted and with the default board.

    PYTHONPATH=$PWD python benchmarks/bench_identify.py [--seed N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from boostsim import simulate, steady_state
from boostsim.analysis import step_response
from boostsim.params import default_board
from firmware_bridge.bench import host_loop_controller, run_identify, unlocked_rate
from firmware_bridge.bench.common import _hold_and_fetch, _smooth
from firmware_bridge.emulator import Emulator
from firmware_bridge.firmware import config as fw
from firmware_bridge.session import connect

HIDDEN = dict(L=70e-6, C=150e-6, r_C=0.06, r_L=0.15, vin=5.1)
#: The on-board PID (CONT:*) and its setpoint step: the gains 'boostsim tune --config
#: fitted.toml --vref 10 --crossover 30 --rate 500' designs for the identified board.
LOOP = dict(kp=0.0, ki=9.07, rate=500.0, v_from=9.0, v_to=10.0)
PRE, POST = 0.01, 0.15  # [s] captured before / after the setpoint step
SMOOTH = 10  # samples (0.5 ms) of moving average for the step metrics, measured and predicted


def board_step(board) -> tuple[np.ndarray, np.ndarray]:
    """The on-board PID's setpoint step, streamed: (t [s] from the step, vout [V])."""
    fs = board.frequency
    board.send("CONT:PID", LOOP["kp"], LOOP["ki"], 0.0)
    board.send("CONT:RATE", LOOP["rate"])
    board.send("CONT:SLEW", 50.0)  # soft start
    board.send("CONT:VREF", LOOP["v_from"])
    board.send("CONT:MODE", "PID")
    chunks = []
    try:
        board.output(True)
        board.hold(0.5, expect_on=True)
        board.send("CONT:SLEW", 0.0)  # then a true step
        board.hold(0.1, expect_on=True)
        rate = board.configure_acquisition(unlocked_rate(20e3, fs))
        board.start_acquisition()
        _hold_and_fetch(board, PRE, chunks.append, 0.005)
        chunks.append(board.fetch())
        acq, mark = board.send_marked("CONT:VREF", LOOP["v_to"])
        chunks.append(acq)
        _hold_and_fetch(board, POST, chunks.append, 0.01)
        board.stop_acquisition()
        chunks.append(board.fetch())
    finally:
        board.output(False)
        board.send("CONT:MODE", "OPEN")
    index = np.concatenate([c.index for c in chunks if c.count])
    volts = np.concatenate([c.volts for c in chunks if c.count])
    return (index - mark + 0.5) / rate, volts


def predicted_step(params, t: np.ndarray) -> np.ndarray:
    """The same loop in the switching simulator, from the steady state at v_from; per-period
    means at ``t``."""
    d = np.linspace(0.2, 0.7, 101)
    d_from = float(np.interp(LOOP["v_from"], steady_state(params, d, points=2).vout_mean, d))
    ss = steady_state(params, d_from, points=2)
    ctrl, every, _ = host_loop_controller(params, kp=LOOP["kp"], ki=LOOP["ki"],
                                          rate=LOOP["rate"], average=fw.CONT_AVG, seed=1,
                                          initial_duty=d_from)
    ts = 1.0 / float(params.fsw)
    sim = simulate(params, controller=ctrl, vref=[(0, LOOP["v_from"]), (PRE, LOOP["v_to"])],
                   t_end=PRE + POST, dt=ts * every,
                   x0=(float(ss.il_start), float(ss.vc_start)))
    m = sim.period_means()
    return np.interp(t, np.ravel(m["t_start"]) + 0.5 * ts - PRE, np.ravel(m["vout"]))


def _metrics(t: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    m = step_response(t, _smooth(v, SMOOTH), 0.0, reference=LOOP["v_to"], kind="reference")
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
        t_step, v_step = board_step(board)
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
    print(f"on-board PID (kp {LOOP['kp']:g}, ki {LOOP['ki']:g}, {LOOP['rate']:g} Hz) setpoint "
          f"step {LOOP['v_from']:g} -> {LOOP['v_to']:g} V, {SMOOTH}-sample mean:")
    print(f"{'':>24} {'overshoot %':>12} {'settling ms':>12}")
    print(f"{'measured (emulator)':>24} {meas[0]:>12.2f} {1e3 * meas[1]:>12.2f}")
    # The hidden board's own model: what the emulator's real-time loop timing costs alone.
    for label, p in (("fitted model", res.params), ("default model", start),
                     ("hidden model (control)", hidden)):
        pred = _metrics(t_step, predicted_step(p, t_step))
        print(f"{label:>24} {pred[0]:>12.2f} {1e3 * pred[1]:>12.2f}   (overshoot "
              f"{100 * (pred[0] / meas[0] - 1):+.1f} %, settling "
              f"{100 * (pred[1] / meas[1] - 1):+.1f} %)")


if __name__ == "__main__":
    main()
