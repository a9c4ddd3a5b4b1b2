"""Duty or load step on the bench, captured with the streaming acquisition (:func:`run_step`),
and the same step simulated from the same initial condition (:func:`simulate_step`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping

import numpy as np

from boostsim import steady_state
from boostsim.analysis import StepMetrics, step_response
from boostsim.params import BoostParams
from boostsim.units import quantity

from ..board import Board
from .common import (
    Reporter,
    _hold_and_fetch,
    _quiet,
    _smooth,
    _streamed,
    _streaming_at,
    effective_pwm,
)

# ---------------------------------------------------------------------------- step


@dataclasses.dataclass
class BenchStep:
    """A step response captured by the streaming acquisition, on the board's clock.

    ``t`` [s] relative to the step (negative before it), ``vout`` [V] single conversions,
    ``vout_smooth`` their centred moving average over ``smooth`` samples (the switching ripple
    aliases into single conversions); ``kind`` "duty" or "load"; ``before``/``after`` the duty
    (or load resistance) before and after; ``mark_uncertainty`` [s] of the step time; ``rate``
    the board's sample rate; ``gaps`` lost samples. After :func:`simulate_step`: ``t_sim``,
    ``vout_sim`` (per-period means, same time origin), ``metrics``/``metrics_sim``.
    """

    t: np.ndarray
    vout: np.ndarray
    vout_smooth: np.ndarray
    index: np.ndarray
    kind: str
    duty: float
    duty_after: float
    load_change: dict[str, float]
    rate: float
    frequency: float
    mark_uncertainty: float
    gaps: list[tuple[int, int]]
    smooth: int
    t_board_step: float
    metrics: StepMetrics | None = None
    t_sim: np.ndarray | None = None
    vout_sim: np.ndarray | None = None
    metrics_sim: StepMetrics | None = None

    def columns(self) -> dict[str, np.ndarray]:
        cols = {"t_s": self.t, "index": self.index.astype(int), "vout_meas_V": self.vout,
                "vout_meas_smooth_V": self.vout_smooth}
        if self.t_sim is not None:
            cols["vout_sim_V"] = np.interp(self.t, self.t_sim, self.vout_sim)
        return cols


def run_step(board: Board, duty: float, *, duty_after: float | None = None,
             load_change: Mapping[str, float] | None = None,
             apply_load: Callable[[], float | None] | None = None, rate: float = 20e3,
             pre: float = 5e-3, post: float = 30e-3, settle: float = 0.2, smooth: int | None = None,
             log=None, report: Reporter = _quiet) -> BenchStep:
    """Capture a step response with the board streaming at ``rate``.

    Duty step (default): the output runs at ``duty`` for ``settle`` s, streaming starts, and
    after ``pre`` s the duty changes to ``duty_after`` in the same write as a ``FETC:ADC?``,
    which marks the step on the board's sample clock (to one sample period). Load step:
    ``apply_load()`` changes the load (an emulator's API; on hardware, external gear) and
    returns the board time [s] of the change if it knows it, else None: the step is then
    marked between two fetches. ``load_change`` (e.g. ``{"R": 24}``) is what the simulation
    applies.
    ``post`` s are captured after the step. The output is off when this returns. ``log``: a
    SampleLog with columns (t_board_s, index, vout_V), written as the samples are fetched
    (board time since boot; the result's ``t_board_step`` is the step on that clock).
    """
    load = dict(load_change or {})
    if (duty_after is None) == (apply_load is None):
        raise ValueError("give duty_after (a duty step) or apply_load (a load step)")
    if apply_load is not None and not load:
        raise ValueError("a load step needs load_change (what the simulation applies)")
    chunks: list = []

    def take(chunk) -> None:
        chunks.append(chunk)
        if log is not None and chunk.count:
            log.rows_from([chunk.t, chunk.index, chunk.volts])

    mark_lo = mark_hi = None
    freq = board.frequency
    with _streaming_at(board, duty, settle=settle, rate=rate, take=take) as (effective, every):
        _hold_and_fetch(board, pre, take, every)
        take(board.fetch())
        if duty_after is not None:
            acq, mark = board.send_marked("SOUR:PWM:DUTY", round(float(duty_after), 6))
            take(acq)
            mark_lo = mark_hi = mark
            uncertainty = 1.0 / effective
        else:
            before = board.fetch()
            take(before)
            lo = before.index[-1] + 1 if before.count else _last_index(chunks) + 1
            when = apply_load()
            after = board.fetch()
            take(after)
            hi = after.index[-1] + 1 if after.count else lo
            if when is not None and after.count:
                # The caller knows the board time of the change (an emulator does).
                exact = after.index[-1] + (float(when) - after.t[-1]) * effective
                mark_lo = mark_hi = min(max(exact, lo), hi)
                uncertainty = 1.0 / effective
            else:
                mark_lo, mark_hi = lo, hi
                uncertainty = max(1, hi - lo) / effective / 2
        _hold_and_fetch(board, post, take, every)
    index, times, volts, gaps = _streamed(chunks, "the step capture")
    mark = 0.5 * (mark_lo + mark_hi)
    period = 1.0 / effective
    t0_board = times[0] - index[0] * period  # board time of index 0
    t_step = t0_board + mark * period
    t = times - t_step
    n = smooth if smooth is not None else max(1, round(effective / 8000))
    if gaps:
        report(f"warning: {quantity(sum(g[1] for g in gaps), 'sample')} lost in {len(gaps)} gap(s)")
    after = t >= 0  # smooth each side on its own: no averaging across the step
    vs = np.concatenate([_smooth(volts[~after], n), _smooth(volts[after], n)])
    result = BenchStep(t=t, vout=volts, vout_smooth=vs, index=index,
                       kind="duty" if duty_after is not None else "load", duty=float(duty),
                       duty_after=float(duty_after if duty_after is not None else duty),
                       load_change=load, rate=effective, frequency=freq,
                       mark_uncertainty=uncertainty, gaps=gaps, smooth=n, t_board_step=t_step)
    with contextlib.suppress(ValueError):
        result.metrics = step_response(t, vs, 0.0)
    return result


def _last_index(chunks: list) -> int:
    for c in reversed(chunks):
        if c.count:
            return int(c.index[-1])
    return -1


def simulate_step(params: BoostParams, step: BenchStep) -> BenchStep:
    """The same step in the switching simulator, from the steady state at the first duty
    (both duties through the RP2040's quantisation, at the board's PWM frequency); fills
    ``t_sim``, ``vout_sim`` (per-period means) and ``metrics_sim``. Returns ``step``."""
    from boostsim import Step, simulate

    freq, (d1, d2) = effective_pwm([step.duty, step.duty_after], step.frequency)
    p = params.replace(fsw=float(freq))
    Ts = 1.0 / float(freq)
    t_before = max(-float(step.t[0]), 2 * Ts)
    n_pre = math.ceil(t_before / Ts)
    t_after = max(float(step.t[-1]), 10 * Ts)
    n_post = math.ceil(t_after / Ts)
    start = steady_state(p, float(d1), points=2)
    x0 = (start.il_start, start.vc_start)
    total = n_pre + n_post
    if step.kind == "duty":
        schedule = np.full((total, 1), float(d1))
        schedule[n_pre:] = float(d2)
        sim = simulate(p, duty=schedule, t_end=total * Ts, dt=Ts, x0=x0)
    else:
        sim = simulate(p, duty=float(d1), t_end=total * Ts, dt=Ts, x0=x0,
                       steps=[Step(n_pre * Ts, **step.load_change)])
    means = sim.period_means()
    t_mid = np.asarray(means["t_start"]).ravel() + 0.5 * Ts - n_pre * Ts
    step.t_sim = t_mid
    step.vout_sim = np.asarray(means["vout"]).ravel()
    with contextlib.suppress(ValueError):
        step.metrics_sim = step_response(step.t_sim, step.vout_sim, 0.0)
    return step
