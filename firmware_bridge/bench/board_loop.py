"""The board's own PID loop (``CONT:MODE PID``): a setpoint step streamed on the board's clock
(:func:`run_board_step`) and the same loop in the switching simulator
(:func:`simulate_board_step`), for comparing a model's predicted closed-loop step with the
board's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import numpy as np

from boostsim import simulate, steady_state
from boostsim.control import ADC, PWM
from boostsim.params import BoostParams
from boostsim.pid import PID

from ..board import Board, BoardError
from ..firmware import config as fw
from ..rp2040 import PWM_CLOCK
from .board_model import BoardController, BoardTiming
from .common import _hold_and_fetch, _streamed, unlocked_rate

__all__ = ["BoardLoop", "run_board_step", "simulate_board_step"]

#: How often :func:`run_board_step` fetches the stream after the step [s] (at most a quarter of
#: the ring's time).
FETCH_EVERY = 0.02


@dataclasses.dataclass(frozen=True)
class BoardLoop:
    """The on-board PID and its setpoint step: gains ``kp`` [duty/V], ``ki`` [duty/(V s)],
    ``kd`` [duty s/V], update ``rate`` [Hz], the step ``v_from`` -> ``v_to`` [V]."""

    kp: float
    ki: float
    rate: float
    v_from: float
    v_to: float
    kd: float = 0.0


def _fetch_every(rate: float) -> float:
    """Fetch interval [s] while streaming at ``rate`` [S/s]."""
    return min(FETCH_EVERY, fw.RING_SIZE / rate / 4)


def run_board_step(board: Board, loop: BoardLoop, *, pre: float = 0.01, post: float = 0.15,
                   settle: float = 0.5, soft_start: float = 50.0, rate: float = 20e3
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Run the board's PID at ``loop.v_from`` (soft start at ``soft_start`` V/s, ``settle``
    s), stream the output, step the setpoint to ``loop.v_to`` (marked on the sample clock)
    and capture ``post`` s, fetching every :data:`FETCH_EVERY` s. Returns (t [s] from the
    step, vout [V] single conversions). The output is off and the board back in
    ``CONT:MODE OPEN`` when this returns."""
    chunks: list = []
    board.send("CONT:PID", loop.kp, loop.ki, loop.kd)
    board.send("CONT:RATE", loop.rate)
    board.send("CONT:SLEW", soft_start)
    board.send("CONT:VREF", loop.v_from)
    board.send("CONT:MODE", "PID")
    try:
        board.output(True)
        board.hold(settle, expect_on=True)
        board.send("CONT:SLEW", 0.0)  # the step itself is a step
        effective = board.configure_acquisition(unlocked_rate(rate, board.frequency))
        board.start_acquisition()
        try:
            _hold_and_fetch(board, pre, chunks.append, 0.005)
            chunks.append(board.fetch())
            acq, mark = board.send_marked("CONT:VREF", loop.v_to)
            chunks.append(acq)
            _hold_and_fetch(board, post, chunks.append, _fetch_every(effective))
            board.check(expect_on=True)
        finally:
            with contextlib.suppress(BoardError):
                board.stop_acquisition()
        chunks.append(board.fetch())
    finally:
        with contextlib.suppress(BoardError):
            board.output(False)
        with contextlib.suppress(BoardError):
            board.send("CONT:MODE", "OPEN")
    index, _, volts, _ = _streamed(chunks, "the closed-loop step")
    return (index - mark + 0.5) / effective, volts


def simulate_board_step(params: BoostParams, loop: BoardLoop, t: np.ndarray, *,
                        pre: float = 0.01, seed: int | None = 1, lanes: int = 1,
                        timing: BoardTiming | None = None, noise_lsb: float = 1.0,
                        adc: ADC | None = None) -> np.ndarray:
    """The same loop in the switching simulator, as the firmware runs it
    (:class:`~.board_model.BoardController` on the board's :class:`~.board_model.BoardTiming`:
    the ``CONT_AVG`` conversions, the compute time, the PWM's latch at its counter wrap,
    single precision), from the steady state at ``v_from`` with the integrator there, the
    setpoint stepped at t = 0 (at a random phase of the loop's schedule). ``lanes``
    independent realisations (``seed``); ``adc``: the board's ADC (default: the firmware's
    divider and reference, ``noise_lsb`` codes rms). Returns
    per-period means of vout [V] at ``t`` [s]: shape (t.size,) for one lane, else (lanes,
    t.size)."""
    duties = np.linspace(0.02, fw.DUTY_LIMIT_DEFAULT, 150)
    curve = steady_state(params, duties, points=2).vout_mean
    if not curve.min() <= loop.v_from <= curve.max():
        raise ValueError(f"v_from {loop.v_from:g} V is outside what the board reaches in open "
                         f"loop ({curve.min():.3g} .. {curve.max():.3g} V)")
    d_from = float(np.interp(loop.v_from, curve, duties))
    start = steady_state(params, d_from, points=2)
    if adc is None:
        adc = ADC(bits=round(math.log2(fw.ADC_FULL_SCALE)), vref=fw.ADC_VREF,
                  divider=fw.VOUT_DIVIDER,
                  noise_rms=noise_lsb * fw.ADC_VREF / fw.ADC_FULL_SCALE)
    pwm = PWM(timer_clock=PWM_CLOCK, duty_min=0.0, duty_max=fw.DUTY_LIMIT_DEFAULT)
    pid = PID(loop.kp, loop.ki, loop.kd, 1.0 / loop.rate, 0.0, fw.DUTY_LIMIT_DEFAULT)
    ts = 1.0 / float(params.fsw)
    t = np.asarray(t, dtype=float)
    ctrl = BoardController(pid, timing=timing, adc=adc, pwm=pwm, initial_duty=d_from,
                           lanes=lanes, seed=seed)
    sim = simulate(params, controller=ctrl, vref=[(0, loop.v_from), (pre, loop.v_to)],
                   t_end=pre + max(float(t[-1]), ts), dt=ts * ctrl.every,
                   x0=(float(start.il_start), float(start.vc_start)))
    means = sim.period_means()
    t_mid = np.ravel(np.atleast_2d(means["t_start"])[0]) + 0.5 * ts - pre
    out = np.stack([np.interp(t, t_mid, row) for row in np.atleast_2d(means["vout"])])
    return out[0] if lanes == 1 else out


def step_figures(t: np.ndarray, vout: np.ndarray, loop: BoardLoop, *, smooth: int = 40
                 ) -> np.ndarray:
    """Overshoot [%] and 2 % settling time [s] of setpoint steps ``vout`` [V] at ``t`` [s]
    from the step (one step, or one per row), each after a ``smooth``-sample moving mean (the
    ripple and the ADC noise out). Returns shape (2,) or (steps, 2)."""
    from boostsim.analysis import step_response

    from .common import _smooth

    rows = np.atleast_2d(np.asarray(vout, dtype=float))
    out = np.array([(m.overshoot, m.settling_time) for m in (
        step_response(t, _smooth(row, smooth), 0.0, reference=loop.v_to, kind="reference")
        for row in rows)])
    return out[0] if np.ndim(vout) == 1 else out
