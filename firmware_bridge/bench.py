"""Bench experiments on the board (or its emulator), each laid beside the same simulation.

* :func:`run_sweep`: open-loop duty sweep (settle, average ``MEAS:VOLT?`` repeats or streamed
  samples, abort on a trip, resume after a board reset if asked) and :func:`simulate_sweep`
  (the exact periodic steady state of the same board at the duties the RP2040 really
  produces); :func:`fit_losses` fits unknown loss parameters so the model matches the bench.
* :func:`run_step`: duty step (or load step, where an emulator applies it) captured with the
  streaming acquisition on the board's clock, and :func:`simulate_step` from the same initial
  condition (the steady state at the first duty).
* :func:`run_live`: a host-side PID loop (:class:`boostsim.pid.PID`, the same class as in the
  simulator and the firmware) at a fixed rate, with ``MEAS:VOLT?`` as the sensor;
  :func:`simulate_live` runs the same loop in the switching simulator
  (:class:`boostsim.control.DigitalController` every N switching periods, an ADC averaging 16
  conversions like ``MEAS:VOLT?``).
* :func:`measure_reading`, :func:`solve_calibration`, :func:`calibration_toml`: ADC
  calibration from one or two reference voltages.

Every experiment can write an incremental per-sample log (:class:`boostsim.datalog.SampleLog`)
and leaves the output off when it ends, fails or is interrupted. Figures are built without
pyplot (headless); :class:`LivePlotter` shows a live window in a separate process when a
display is available.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from boostsim import steady_state
from boostsim.analysis import StepMetrics, step_response
from boostsim.params import BoostParams

from .board import Board, BoardError, BoardResetError, LinkError, TripError
from .emulated_hal import rp2040_pwm
from .firmware import config as fw

__all__ = ["FITTABLE", "LIVE_COLUMNS", "PWM_CLOCK", "BenchStep", "BenchSweep", "LivePlotter",
           "LiveResult", "LossFit", "calibration_toml", "display_available", "effective_pwm",
           "fit_losses", "host_loop_controller", "live_figure", "measure_reading", "ramp_duty",
           "run_live", "run_step", "run_sweep", "simulate_live", "simulate_step",
           "simulate_sweep", "solve_calibration", "step_figure", "sweep_figure", "switch_on_at",
           "unlocked_rate"]

#: The RP2040's PWM counter clock [Hz] (the system clock; ``hal.py`` does not divide it down).
PWM_CLOCK = 125e6
#: Output volts per ADC code with the firmware's nominal divider and reference.
VOLTS_PER_CODE = fw.ADC_VREF / fw.ADC_FULL_SCALE * fw.VOUT_DIVIDER

Reporter = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------------------- shared


def effective_pwm(duty: Any, freq: float, clock: float = PWM_CLOCK) -> tuple[float, np.ndarray]:
    """(frequency, duties) the RP2040 really produces for requested ``duty`` values at
    ``freq`` (the firmware's ``duty_u16`` and the slice counter quantise them)."""
    duties = np.atleast_1d(np.asarray(duty, dtype=float))
    out = np.array([rp2040_pwm(freq, float(d), clock)[1] for d in duties])
    return rp2040_pwm(freq, 0.5, clock)[0], out


def unlocked_rate(rate: float, frequency: float) -> float:
    """A streaming rate near ``rate`` [Hz] whose sample period (whole microseconds, as the
    board rounds it) is not locked to the switching period.

    The sampling timer and the PWM run from the same crystal: at 20 kHz and a 100 kHz PWM
    every sample lands on the same phase of the switching ripple, so single conversions are
    biased by the ripple (several mV). A period such as 51 us steps the phase by 1 us per
    sample instead, so consecutive samples sweep the whole period."""
    target = max(1, round(1e6 / rate))
    ts_us = 1e6 / frequency
    lowest = max(1, math.ceil(1e6 / fw.ADC_RATE_MAX))
    # Whole-us periods reach at most ts_us distinct phases: look that many samples ahead.
    horizon = max(1, min(8, math.ceil(ts_us - 1e-9) - 1))
    best, best_score = target, -1.0
    for delta in sorted(range(-(target // 10) - 2, target // 10 + 3), key=abs):
        period = target + delta
        if period < lowest:
            continue
        step = (period / ts_us) % 1.0
        score = min(abs((k * step + 0.5) % 1.0 - 0.5) for k in range(1, horizon + 1))
        if score > best_score + 1e-9:
            best, best_score = period, score
        if best_score >= 0.05 and abs(delta) > 0:
            break
    return 1e6 / best


def _robust(values: np.ndarray, floor: float) -> tuple[np.ndarray, int]:
    """Drop gross outliers (a corrupted digit on the link): beyond 6 robust sigmas of the
    median, never closer than ``floor``. Returns (kept values, number dropped)."""
    v = np.asarray(values, dtype=float)
    if v.size < 4:
        return v, 0
    med = np.median(v)
    mad = 1.4826 * np.median(np.abs(v - med))
    keep = np.abs(v - med) <= max(6 * mad, floor)
    return v[keep], int(v.size - keep.sum())


def ramp_duty(board: Board, duty: float, *, max_step: float = 0.02, dwell: float = 0.005
              ) -> None:
    """Move the duty to ``duty`` in steps of at most ``max_step``, ``dwell`` s apart (the
    output state polled meanwhile), so the converter's LC ringing cannot overshoot into the
    over-voltage trip the way one large step can (0.3 -> 0.6 overshoots by about 3 V on the
    default board). With the output off the duty is simply set."""
    if board.output_state is not True:
        board.set_duty(duty)
        return
    present = board.duty
    steps = max(1, math.ceil(abs(duty - present) / max_step - 1e-9))
    for value in np.linspace(present, duty, steps + 1)[1:]:
        board.set_duty(float(value))
        if value != duty:
            board.hold(dwell, expect_on=True)


def switch_on_at(board: Board, duty: float, **ramp: Any) -> None:
    """Output on at duty 0, then :func:`ramp_duty` to ``duty``: the soft way to start."""
    if board.output_state is not True:
        board.set_duty(0.0)
        board.output(True)
    ramp_duty(board, duty, **ramp)


def _hold_and_fetch(board: Board, seconds: float, take: Callable[[Any], None],
                    every: float = 0.02) -> None:
    """Wait ``seconds`` fetching streamed samples every ``every`` s into ``take`` (keeps the
    ring from overflowing and the watchdog fed)."""
    end = time.monotonic() + seconds
    while True:
        remaining = end - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(every, remaining))
        take(board.fetch())


# ---------------------------------------------------------------------------- sweep


@dataclasses.dataclass
class BenchSweep:
    """A duty sweep measured on the board, with the simulated sweep beside it.

    Per point (arrays): ``duty`` requested, ``duty_effective`` (RP2040 quantisation),
    ``vout_mean``/``vout_std``/``vout_sem`` [V] of the kept samples, ``samples`` kept,
    ``outliers`` dropped, ``t`` [s] host time when the point was taken. ``sim`` holds the
    steady-state columns at ``duty_effective`` (``vout_mean``, ``il_mean``, ``efficiency``,
    ``mode``) once :func:`simulate_sweep` ran. ``aborted``: why the sweep stopped early (the
    points up to then are kept), else None. ``resets``: board resets survived (resume).
    """

    duty: np.ndarray
    duty_effective: np.ndarray
    vout_mean: np.ndarray
    vout_std: np.ndarray
    vout_sem: np.ndarray
    samples: np.ndarray
    outliers: np.ndarray
    t: np.ndarray
    frequency: float
    method: str
    requested: np.ndarray
    aborted: str | None = None
    abort_kind: str | None = None
    resets: int = 0
    sim: dict[str, np.ndarray] | None = None
    fit: LossFit | None = None

    @property
    def n_points(self) -> int:
        return int(self.duty.size)

    @property
    def error(self) -> np.ndarray:
        """Measured minus simulated mean output voltage per point [V]."""
        if self.sim is None:
            raise ValueError("no simulation yet: call simulate_sweep")
        return self.vout_mean - self.sim["vout_mean"]

    def error_metrics(self) -> dict[str, float]:
        """RMS and max |error| [V], and the mean squared error in units of each point's
        standard error (about 1 when the model matches within the measurement noise)."""
        if self.n_points == 0 or self.sim is None:
            return {"rms": math.nan, "max": math.nan, "chi2_per_point": math.nan}
        err = self.error
        ok = np.isfinite(err)
        sem = np.maximum(self.vout_sem, 1e-12)
        return {"rms": float(np.sqrt(np.mean(err[ok] ** 2))) if ok.any() else math.nan,
                "max": float(np.max(np.abs(err[ok]))) if ok.any() else math.nan,
                "chi2_per_point": float(np.mean((err[ok] / sem[ok]) ** 2)) if ok.any()
                else math.nan}

    def columns(self) -> dict[str, np.ndarray]:
        """CSV columns (labels with units)."""
        cols = {"duty": self.duty, "duty_effective": self.duty_effective,
                "vout_meas_V": self.vout_mean, "vout_meas_std_V": self.vout_std,
                "vout_meas_sem_V": self.vout_sem, "samples": self.samples.astype(int),
                "outliers": self.outliers.astype(int), "t_s": self.t}
        if self.sim is not None:
            cols.update({"vout_sim_V": self.sim["vout_mean"], "vout_error_V": self.error,
                         "il_sim_A": self.sim["il_mean"],
                         "efficiency_sim": self.sim["efficiency"], "mode_sim": self.sim["mode"]})
        if self.fit is not None:
            cols["vout_fit_V"] = self.fit.vout
            cols["vout_fit_error_V"] = self.vout_mean - self.fit.vout
        return cols


def _empty_sweep() -> dict[str, list]:
    return {k: [] for k in ("duty", "duty_effective", "vout_mean", "vout_std", "vout_sem",
                            "samples", "outliers", "t")}


def _measure(board: Board, samples: int, method: str, stream_rate: float,
             log_row: Callable[[float, float], None], t0: float) -> np.ndarray:
    """``samples`` readings of the output voltage (MEAS:VOLT? repeats or streamed samples)."""
    if method == "query":
        values = np.empty(samples)
        for j in range(samples):
            v = board.measure_vout()
            values[j] = v
            log_row(time.monotonic() - t0, v)
        return values
    chunks: list = []
    with board.acquisition(unlocked_rate(stream_rate, board.frequency)) as rate:
        need = samples
        deadline = time.monotonic() + samples / rate * 3 + 1.0
        while sum(c.count for c in chunks) < need:
            if time.monotonic() > deadline:
                raise LinkError(f"streaming delivered {sum(c.count for c in chunks)} of "
                                f"{need} samples in time", command="FETC:ADC?")
            board.hold(min(0.05, need / rate / 2 + 0.002), expect_on=True)
            chunk = board.fetch()
            if chunk.count:
                board._check_vout(chunk.volts)
                for tb, v in zip(chunk.t.tolist(), chunk.volts.tolist(), strict=True):
                    log_row(tb, v)
            chunks.append(chunk)
    values = np.concatenate([c.volts for c in chunks])
    return values[:samples]


def run_sweep(board: Board, duties: Sequence[float], *, settle: float = 0.1,
              samples: int = 16, method: str = "query", stream_rate: float = 10e3,
              log=None, on_point: Callable[[int, BenchSweep], None] | None = None,
              resume: bool = False, max_resets: int = 3,
              report: Reporter = _quiet) -> BenchSweep:
    """Measure the mean output voltage at each duty, open loop, in the given order.

    At each point: move the duty there (read back; in steps of at most 0.02, see
    :func:`ramp_duty`; the output is switched on at duty 0), wait ``settle`` s (the output
    state is polled,
    so a trip or reset is seen at once and the watchdog stays fed), take ``samples``
    readings (``method`` "query": MEAS:VOLT? repeats, each the board's 16-conversion mean;
    "stream": single conversions at ``stream_rate``), check that the output is still on.
    Gross outliers (corrupted digits on the link) are dropped and counted.

    A trip (OVP, watchdog), a link failure or a board reset stops the sweep with the points
    measured so far kept (``aborted`` says why); with ``resume`` a reset (up to
    ``max_resets``) re-establishes the point instead (output on again, settle, measure).
    The output is off when this returns. ``log``: a :class:`~boostsim.datalog.SampleLog`
    with columns (t_s, point, duty, vout_V), one row per reading. ``on_point(i, sweep)`` is
    called after each point (progress display, fault injection in tests).
    """
    if method not in ("query", "stream"):
        raise ValueError(f"method must be 'query' or 'stream', got {method!r}")
    if not (isinstance(samples, int | np.integer) and samples >= 1):
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    requested = np.asarray(duties, dtype=float)
    freq = board.frequency
    _, eff = effective_pwm(requested, freq)
    data = _empty_sweep()
    t0 = time.monotonic()
    aborted = kind = None
    resets = 0
    gain = board.calibration[0]
    floor = 4 * VOLTS_PER_CODE * gain

    def result() -> BenchSweep:
        arrays = {k: np.asarray(v, dtype=float) for k, v in data.items()}
        return BenchSweep(**arrays, frequency=freq, method=method, requested=requested,
                          aborted=aborted, abort_kind=kind, resets=resets)

    try:
        trip = board.trip()
        if trip != "NONE":
            raise TripError(f"the board has a latched {trip} trip from before (clear it "
                            f"first, e.g. --clear-trip)", trip, "PROT:TRIP?")
        i = 0
        while i < requested.size:
            d = float(requested[i])
            try:
                switch_on_at(board, d)
                board.hold(settle, expect_on=True)

                def log_row(t: float, v: float, i=i, d=d) -> None:
                    if log is not None:
                        log.row(t, i, d, v)

                values = _measure(board, samples, method, stream_rate, log_row, t0)
                board.check(expect_on=True)
            except (BoardResetError, LinkError) as exc:
                was_reset = isinstance(exc, BoardResetError)
                if not (resume and resets < max_resets):
                    aborted, kind = f"{exc}", "reset" if was_reset else "link"
                    break
                if not was_reset:
                    try:  # a link failure: is the board back, and was it reset?
                        was_reset = board.resync()
                    except LinkError:
                        aborted, kind = f"{exc}", "link"
                        break
                resets += 1
                report(f"{'board reset' if was_reset else 'link failure'} at point {i} (duty "
                       f"{d:g}): resuming ({resets} of at most {max_resets})")
                board.output(False)
                continue
            kept, dropped = _robust(values, floor)
            data["duty"].append(d)
            data["duty_effective"].append(float(eff[i]))
            data["vout_mean"].append(float(kept.mean()))
            data["vout_std"].append(float(kept.std(ddof=1)) if kept.size > 1 else 0.0)
            data["vout_sem"].append(float(kept.std(ddof=1) / math.sqrt(kept.size))
                                    if kept.size > 1 else VOLTS_PER_CODE * gain)
            data["samples"].append(kept.size)
            data["outliers"].append(dropped)
            data["t"].append(time.monotonic() - t0)
            if on_point is not None:
                on_point(i, result())
            i += 1
    except TripError as exc:
        aborted, kind = f"{exc}", "trip"
    except BoardResetError as exc:
        aborted, kind = f"{exc}", "reset"
    except LinkError as exc:
        aborted, kind = f"{exc}", "link"
    except BoardError as exc:
        aborted, kind = f"{exc}", "board"
    except KeyboardInterrupt:
        aborted, kind = "interrupted (Ctrl-C)", "interrupt"
    except SystemExit:  # SIGTERM under Board's context manager
        aborted, kind = "terminated (SIGTERM)", "terminate"
    finally:
        with contextlib.suppress(BoardError):
            board.output(False)
    return result()


def simulate_sweep(params: BoostParams, duty_effective: Any, frequency: float | None = None
                   ) -> dict[str, np.ndarray]:
    """Steady state of ``params`` (at the board's PWM ``frequency`` if given) at each duty:
    ``vout_mean`` [V], ``il_mean`` [A], ``efficiency``, ``mode``."""
    p = params if frequency is None else params.replace(fsw=float(frequency))
    d = np.atleast_1d(np.asarray(duty_effective, dtype=float))
    if d.size == 0:
        return {k: np.zeros(0) for k in ("vout_mean", "il_mean", "efficiency", "mode")}
    state = steady_state(p, d, points=2)
    return {"vout_mean": np.atleast_1d(state.vout_mean).astype(float),
            "il_mean": np.atleast_1d(state.il_mean).astype(float),
            "efficiency": np.atleast_1d(state.efficiency).astype(float),
            "mode": np.atleast_1d(state.mode).astype(str)}


@dataclasses.dataclass
class LossFit:
    """Fitted loss parameters: ``values`` and 1-sigma ``std`` per name, ``correlation``
    matrix, ``params`` (the board with the fitted values), ``vout`` the fitted model at the
    measured points, ``chi2_per_dof`` and whether the optimiser converged."""

    names: tuple[str, ...]
    values: dict[str, float]
    std: dict[str, float]
    initial: dict[str, float]
    correlation: np.ndarray
    params: BoostParams
    vout: np.ndarray
    chi2_per_dof: float
    rms: float
    success: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "values": self.values, "std": self.std,
                "initial": self.initial, "correlation": self.correlation.tolist(),
                "chi2_per_dof": self.chi2_per_dof, "rms_V": self.rms,
                "success": self.success, "message": self.message}


FITTABLE = ("r_L", "r_on", "v_f", "r_d", "r_C", "r_sync", "vin", "L", "C", "R", "i_load")


def fit_losses(params: BoostParams, duty_effective: Any, vout: Any, sigma: Any,
               names: Sequence[str], *, frequency: float | None = None) -> LossFit:
    """Fit parameters (e.g. ``("r_L", "r_on", "v_f")``) so the steady state matches measured
    mean output voltages, by ``scipy.optimize.least_squares`` on the residuals weighted by
    the points' standard errors ``sigma`` (bounds: >= 0). Uncertainties from the Jacobian at
    the optimum, ``cov = inv(J^T J) * max(1, chi2/dof)`` (the scale factor covers a model
    that does not fit within the noise)."""
    from scipy.optimize import least_squares

    names = tuple(names)
    unknown = [n for n in names if n not in FITTABLE]
    if unknown or not names:
        raise ValueError(f"cannot fit {unknown or names!r}; fittable: {', '.join(FITTABLE)}")
    d = np.atleast_1d(np.asarray(duty_effective, dtype=float))
    y = np.atleast_1d(np.asarray(vout, dtype=float))
    s = np.maximum(np.atleast_1d(np.asarray(sigma, dtype=float)), 1e-6)
    if d.size <= len(names):
        raise ValueError(f"fitting {len(names)} parameter(s) needs more than {len(names)} "
                         f"measured points, got {d.size}")
    base = params if frequency is None else params.replace(fsw=float(frequency))
    x0 = np.array([float(getattr(base, n)) for n in names])
    # Scales: a loss parameter may start at 0; give each a typical size.
    typical = {"r_L": 0.05, "r_on": 0.05, "v_f": 0.3, "r_d": 0.05, "r_C": 0.02, "r_sync": 0.05,
               "i_load": 0.01}
    scale = np.array([max(abs(v), typical.get(n, abs(v) or 1.0)) for n, v in zip(names, x0,
                                                                                  strict=True)])
    lower = np.array([1e-3 * abs(v) if n in ("vin", "L", "C", "R") else 0.0
                      for n, v in zip(names, x0, strict=True)])

    def model(x: np.ndarray) -> np.ndarray:
        p = base.replace(**{n: float(v) for n, v in zip(names, x, strict=True)})
        with np.errstate(all="ignore"):
            return np.atleast_1d(steady_state(p, d, points=2).vout_mean)

    def residual(x: np.ndarray) -> np.ndarray:
        r = (model(x) - y) / s
        return np.where(np.isfinite(r), r, 1e6)

    start = np.clip(x0, lower, None)
    sol = least_squares(residual, start, bounds=(lower, np.inf), x_scale=scale,
                        diff_step=1e-4, method="trf")
    dof = max(1, d.size - len(names))
    chi2 = float(np.sum(sol.fun ** 2)) / dof
    J = sol.jac
    try:
        cov = np.linalg.pinv(J.T @ J) * max(1.0, chi2)
    except np.linalg.LinAlgError:
        cov = np.full((len(names), len(names)), np.nan)
    std = np.sqrt(np.clip(np.diag(cov), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(std, std)
    fitted = base.replace(**{n: float(v) for n, v in zip(names, sol.x, strict=True)})
    vfit = model(sol.x)
    return LossFit(names=names, values={n: float(v) for n, v in zip(names, sol.x, strict=True)},
                   std={n: float(v) for n, v in zip(names, std, strict=True)},
                   initial={n: float(v) for n, v in zip(names, x0, strict=True)},
                   correlation=corr, params=fitted, vout=vfit, chi2_per_dof=chi2,
                   rms=float(np.sqrt(np.mean((vfit - y) ** 2))), success=bool(sol.success),
                   message=str(sol.message))


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


def _smooth(y: np.ndarray, n: int) -> np.ndarray:
    if n <= 1 or y.size < n:
        return y.copy()
    kernel = np.ones(n) / n
    pad = n // 2
    ypad = np.concatenate([np.full(pad, y[0]), y, np.full(n - 1 - pad, y[-1])])
    return np.convolve(ypad, kernel, mode="valid")


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
    try:
        trip = board.trip()
        if trip != "NONE":
            raise TripError(f"the board has a latched {trip} trip from before (clear it first)",
                            trip, "PROT:TRIP?")
        switch_on_at(board, duty)
        board.hold(settle, expect_on=True)
        effective = board.configure_acquisition(unlocked_rate(rate, freq))
        ring_time = fw.RING_SIZE / effective
        every = min(0.02, ring_time / 4)
        board.start_acquisition()
        try:
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
            board.check(expect_on=True)
        finally:
            with contextlib.suppress(BoardError):
                board.stop_acquisition()
        take(board.fetch())
    finally:
        with contextlib.suppress(BoardError):
            board.output(False)
    index = np.concatenate([c.index for c in chunks if c.count])
    volts = np.concatenate([c.volts for c in chunks if c.count])
    times = np.concatenate([c.t for c in chunks if c.count])
    gaps = [g for c in chunks for g in c.gaps]
    if any(c.ovp_tripped or c.wdog_tripped for c in chunks):
        raise TripError("the board tripped during the step capture", "OVP")
    mark = 0.5 * (mark_lo + mark_hi)
    period = 1.0 / effective
    t0_board = times[0] - index[0] * period  # board time of index 0
    t_step = t0_board + mark * period
    t = times - t_step
    n = smooth if smooth is not None else max(1, round(effective / 8000))
    if gaps:
        report(f"warning: {sum(g[1] for g in gaps)} samples lost in {len(gaps)} gap(s)")
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


# ---------------------------------------------------------------------------- live loop


@dataclasses.dataclass
class LiveResult:
    """A host-side control run: one entry per loop tick. ``t`` [s] host time of each tick
    since the first, ``vref`` (after the PID's setpoint ramp), ``vout`` measured, ``duty``
    commanded, ``integral`` the PID's I term, ``exchange`` [s] the serial round trip of the
    tick, ``lateness`` [s] how late the tick started. ``stopped``: "duration", "interrupt"
    (Ctrl-C), "terminate" (SIGTERM), "stopped" (``should_stop``) or the error that ended it
    (the data up to then is kept)."""

    settings: dict[str, Any]
    t: np.ndarray
    vref: np.ndarray
    vout: np.ndarray
    duty: np.ndarray
    integral: np.ndarray
    exchange: np.ndarray
    lateness: np.ndarray
    overruns: int
    link_errors: int
    duty_mismatches: int
    stopped: str
    error: BaseException | None = None
    sim: dict[str, np.ndarray] | None = None

    @property
    def ticks(self) -> int:
        return int(self.t.size)

    def timing(self) -> dict[str, float]:
        """Achieved rate [Hz], tick-interval jitter (std, p99 and max of |interval - ts|)
        [s] and the round trip (median, p99) [s]."""
        ts = 1.0 / self.settings["rate"]
        if self.t.size < 3:
            return {"rate": math.nan, "jitter_std": math.nan, "jitter_p99": math.nan,
                    "jitter_max": math.nan, "exchange_median": math.nan,
                    "exchange_p99": math.nan}
        intervals = np.diff(self.t)
        dev = np.abs(intervals - ts)
        return {"rate": float((self.t.size - 1) / (self.t[-1] - self.t[0])),
                "jitter_std": float(intervals.std()), "jitter_p99": float(np.percentile(dev, 99)),
                "jitter_max": float(dev.max()),
                "exchange_median": float(np.median(self.exchange)),
                "exchange_p99": float(np.percentile(self.exchange, 99))}

    def columns(self) -> dict[str, np.ndarray]:
        return {"t_s": self.t, "vref_V": self.vref, "vout_V": self.vout, "duty": self.duty,
                "integral": self.integral, "exchange_s": self.exchange,
                "lateness_s": self.lateness}


LIVE_COLUMNS = ("t_s", "vref_V", "vout_V", "duty", "integral", "exchange_s", "lateness_s")


def reference_function(vref: float, steps: Sequence[tuple[float, float]] = ()
                       ) -> Callable[[float], float]:
    """Setpoint over time: ``vref`` from 0, then each ``(t, v)`` of ``steps`` from t on."""
    points = sorted((float(t), float(v)) for t, v in steps)

    def ref(t: float) -> float:
        value = vref
        for when, v in points:
            if t >= when:
                value = v
            else:
                break
        return value
    return ref


def run_live(board: Board, *, vref: float, kp: float, ki: float, kd: float = 0.0,
             rate: float = 200.0, duration: float | None = None, slew: float | None = None,
             tf: float = 0.0, vref_steps: Sequence[tuple[float, float]] = (),
             duty_max: float | None = None, log=None,
             status: Callable[[dict[str, float]], None] | None = None,
             status_every: float = 0.2, plotter: LivePlotter | None = None,
             should_stop: Callable[[], bool] | None = None,
             max_link_errors: int = 5) -> LiveResult:
    """Hold the output voltage at ``vref`` with :class:`boostsim.pid.PID` run on the host
    every ``1/rate`` s (absolute deadlines; a tick more than a period late is skipped and
    counted as an overrun).

    Each tick is one serial round trip: ``OUTP?`` (a trip or a reset shows up at once),
    ``SOUR:PWM:DUTY?`` (reads back the duty sent at the previous tick: a corrupted command is
    resent) and ``MEAS:VOLT?`` (the board's 16-conversion mean) in one write; the PID's new
    duty is then sent without waiting. The loop starts with the output on at duty 0 (bumpless
    from there; with ``slew`` [V/s] the setpoint ramps from the first measurement, a soft
    start). It runs for
    ``duration`` s or until Ctrl-C / ``should_stop()``; a trip, a reset or repeated link
    errors end it with the data kept (``stopped``, ``error``). The output is off afterwards.
    ``status(dict)`` is called every ``status_every`` s (live display), ``plotter.push`` too.
    """
    from boostsim.pid import PID

    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be > 0 [Hz], got {rate!r}")
    ts = 1.0 / rate
    limit = board.duty_limit
    if board.max_duty is not None:
        limit = min(limit, board.max_duty)
    if duty_max is not None:
        limit = min(limit, duty_max)
    pid = PID(kp, ki, kd, ts, out_min=0.0, out_max=limit, tf=tf,
              setpoint_rate=slew if slew else None)
    ref = reference_function(vref, vref_steps)
    settings = {"vref": vref, "vref_steps": [list(s) for s in vref_steps], "kp": kp, "ki": ki,
                "kd": kd, "tf": tf, "rate": rate, "slew": slew, "duty_max": limit,
                "duration": duration}
    cols: dict[str, list] = {k: [] for k in ("t", "vref", "vout", "duty", "integral",
                                             "exchange", "lateness")}
    overruns = link_errors = mismatches = consecutive = 0
    stopped, error = "duration", None
    perf = time.perf_counter
    # A tick's answer comes within a round trip: waiting the board's full timeout for a lost
    # one would stall the loop, so ticks wait at most a few periods (then resync).
    saved_timeout = board.timeout
    try:
        trip = board.trip()
        if trip != "NONE":
            raise TripError(f"the board has a latched {trip} trip from before (clear it first)",
                            trip, "PROT:TRIP?")
        board.set_duty(0.0)
        board.output(True)
        pid.reset(output=0.0)
        u_sent = 0.0
        board.timeout = min(saved_timeout, max(0.02, 4 * ts))
        t0 = perf()
        next_tick = t0
        next_status = t0
        y_prev = None
        jump = 0.05 * max(float(np.max(ref(0.0))), 1.0)  # [V] per tick worth a second reading
        while True:
            if should_stop is not None and should_stop():
                stopped = "stopped"
                break
            now = perf()
            if duration is not None and next_tick - t0 >= duration - 1e-9:
                break
            if next_tick > now:
                time.sleep(next_tick - now)
            t_tick = perf()
            try:
                on, duty_rb, y = board.pipeline(("OUTP?",), ("SOUR:PWM:DUTY?",),
                                                ("MEAS:VOLT?",))
            except (BoardResetError, TripError):
                raise
            except LinkError:
                link_errors += 1
                consecutive += 1
                if consecutive > max_link_errors:
                    raise
                if board.resync():
                    raise BoardResetError(f"{board.port_name}: the board was reset during the "
                                          f"live loop (output off)") from None
                board.write_nowait("SOUR:PWM:DUTY", u_sent)
                next_tick += ts
                continue
            consecutive = 0
            if y_prev is not None and abs(y - y_prev) > jump:
                # A corrupted digit can still parse as a number: confirm a large jump.
                y = board.query("MEAS:VOLT?")
            y_prev = y
            t_meas = perf()
            if not on:
                board.check(expect_on=True)  # raises TripError / BoardResetError
            if abs(duty_rb - u_sent) > 2e-6:
                mismatches += 1              # the duty command arrived corrupted: resend
                board.write_nowait("SOUR:PWM:DUTY", u_sent)
            board._check_vout(y)
            t_rel = t_tick - t0
            u = round(float(pid.update(ref(t_rel), y)), 6)
            board.write_nowait("SOUR:PWM:DUTY", u)
            u_sent = u
            sp = float(pid.ramped_setpoint)
            values = (t_rel, sp, y, u, float(pid.integral), t_meas - t_tick,
                      t_tick - next_tick)
            for key, v in zip(cols, values, strict=True):
                cols[key].append(v)
            if log is not None:
                log.row(*values)
            if plotter is not None:
                plotter.push(t_rel, y, sp, u)
            if status is not None and t_tick >= next_status:
                next_status = t_tick + status_every
                status(_live_status(cols, ts))
            next_tick += ts
            behind = perf() - next_tick
            if behind > ts:
                missed = int(behind / ts)
                overruns += missed
                next_tick += missed * ts
    except KeyboardInterrupt:
        stopped = "interrupt"
    except SystemExit:  # SIGTERM under Board's context manager
        stopped = "terminate"
    except BoardError as exc:
        stopped, error = str(exc), exc
    finally:
        board.timeout = saved_timeout
        with contextlib.suppress(BoardError):
            board.output(False)
    arrays = {k: np.asarray(v, dtype=float) for k, v in cols.items()}
    return LiveResult(settings=settings, **arrays, overruns=overruns, link_errors=link_errors,
                      duty_mismatches=mismatches, stopped=stopped, error=error)


def _live_status(cols: dict[str, list], ts: float) -> dict[str, float]:
    t = cols["t"]
    recent = [x for x in t[-400:] if x >= t[-1] - 1.0]
    rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 2 else math.nan
    intervals = np.diff(recent) if len(recent) > 2 else np.zeros(0)
    return {"t": t[-1], "vref": cols["vref"][-1], "vout": cols["vout"][-1],
            "duty": cols["duty"][-1], "error": cols["vref"][-1] - cols["vout"][-1],
            "rate": rate, "jitter": float(intervals.std()) if intervals.size else math.nan,
            "exchange": cols["exchange"][-1]}


def host_loop_controller(params: BoostParams, *, kp: float, ki: float, kd: float = 0.0,
                         rate: float = 200.0, duty_max: float = fw.DUTY_LIMIT_DEFAULT,
                         slew: float | None = None, tf: float = 0.0, noise_lsb: float = 1.0,
                         average: int = fw.MEAS_AVG, seed: int | None = 0,
                         initial_duty: float = 0.0):
    """The host (or board) loop as a simulator controller: the same PID every
    ``N = round(fsw / rate)`` switching periods, sensing through an ADC like ``MEAS:VOLT?``
    (the firmware's divider and reference, ``average`` conversions spread evenly over a
    switching period, ``noise_lsb`` codes rms each) and the RP2040 PWM (1/``PWM_CLOCK``
    resolution, ``duty_max``). Returns (controller, N, ts = N / fsw)."""
    from boostsim.control import ADC, PWM, DigitalController
    from boostsim.pid import PID

    fsw = float(params.fsw)
    every = max(1, round(fsw / rate))
    ts = every / fsw
    Ts = 1.0 / fsw
    adc = ADC(bits=round(math.log2(fw.ADC_FULL_SCALE)), vref=fw.ADC_VREF,
              divider=fw.VOUT_DIVIDER, noise_rms=noise_lsb * fw.ADC_VREF / fw.ADC_FULL_SCALE,
              sample_at=0.5, oversample=int(average), spacing=Ts / average, seed=seed)
    pwm = PWM(timer_clock=PWM_CLOCK, duty_min=0.0, duty_max=min(float(duty_max),
                                                                fw.DUTY_HARD_MAX))
    pid = PID(kp, ki, kd, ts, out_min=0.0, out_max=float(duty_max), tf=tf,
              setpoint_rate=slew if slew else None)
    return DigitalController(pid, adc=adc, pwm=pwm, every=every,
                             initial_duty=initial_duty), every, ts


def simulate_live(params: BoostParams, result: LiveResult, *, duration: float | None = None,
                  noise_lsb: float = 1.0, seed: int | None = 0, frequency: float | None = None
                  ) -> dict[str, np.ndarray]:
    """The live run's loop in the switching simulator (same PID settings, rate, setpoint
    steps and duty limit), from the output-off state (steady state at duty 0), for
    ``duration`` s (default: the run's length). The time axis is shifted so the first PID
    update is at t = 0 like the host loop's first tick. Stored in ``result.sim`` and returned:
    ``t`` [s], ``vout`` [V] cycle-averaged, ``t_ctrl``/``duty``/``measured`` per control
    step. Costs about 10 s of computation per simulated second."""
    from boostsim import simulate

    s = result.settings
    p = params if frequency is None else params.replace(fsw=float(frequency))
    span = duration if duration is not None else (float(result.t[-1]) if result.ticks else
                                                  (s["duration"] or 1.0))
    controller, every, ts = host_loop_controller(
        p, kp=s["kp"], ki=s["ki"], kd=s["kd"], rate=s["rate"], duty_max=s["duty_max"],
        slew=s["slew"], tf=s["tf"], noise_lsb=noise_lsb, seed=seed)
    steps = [(0.0, s["vref"])] + [(float(t) + ts, float(v)) for t, v in s["vref_steps"]]
    start = steady_state(p, 0.0, points=2)
    Ts = 1.0 / float(p.fsw)
    # Output samples 9/8 of a period apart step through the switching phase (1/8 period per
    # sample), so an 8-sample moving mean is close to the cycle average; the exact
    # period_means() would cost more than the closed-loop simulation itself.
    sim = simulate(p, controller=controller, vref=steps if len(steps) > 1 else s["vref"],
                   t_end=span + ts, dt=Ts * 9 / 8, x0=(start.il_start, start.vc_start))
    vout = _smooth(np.asarray(sim.vout, dtype=float).ravel(), 8)
    t = np.asarray(sim.t, dtype=float) - ts
    log = controller.log()
    keep = t >= -ts
    out = {"t": t[keep], "vout": vout[keep], "t_ctrl": log.t[:, 0] - ts,
           "duty": log.duty[:, 0], "measured": log.measured[:, 0],
           "setpoint": log.setpoint[:, 0], "every": np.array(every), "ts": np.array(ts)}
    result.sim = out
    return out


# ---------------------------------------------------------------------------- calibration


def measure_reading(board: Board, samples: int = 32) -> tuple[float, float, float]:
    """Mean of ``samples`` MEAS:VOLT? readings, converted back to the *uncalibrated* divider
    voltage with the board's present calibration. Returns (raw mean, raw std, calibrated
    mean) [V]."""
    gain, offset = board.calibration
    values = np.array([board.measure_vout() for _ in range(samples)])
    kept, _ = _robust(values, 4 * VOLTS_PER_CODE * gain)
    raw = (kept - offset) / gain
    return float(raw.mean()), float(raw.std(ddof=1)) if raw.size > 1 else 0.0, \
        float(kept.mean())


def solve_calibration(raw: Sequence[float], reference: Sequence[float]) -> tuple[float, float]:
    """``v_true = gain * v_raw + offset`` from one point (gain only, offset 0) or two
    (gain and offset). Raises ValueError outside the board's ranges (gain 0.5..2,
    |offset| <= 5 V) or for two points too close together."""
    raw = [float(v) for v in raw]
    ref = [float(v) for v in reference]
    if len(raw) != len(ref) or len(raw) not in (1, 2):
        raise ValueError("calibration needs one or two (reading, reference) pairs")
    if len(raw) == 1:
        if raw[0] <= 0.1:
            raise ValueError(f"the board reads {raw[0]:.4g} V: too low for a gain calibration "
                             f"(apply a reference voltage or turn the converter on)")
        gain, offset = ref[0] / raw[0], 0.0
    else:
        if abs(raw[1] - raw[0]) < 0.5:
            raise ValueError(f"the two readings ({raw[0]:.4g} V, {raw[1]:.4g} V) are too close "
                             f"for a two-point calibration (>= 0.5 V apart)")
        gain = (ref[1] - ref[0]) / (raw[1] - raw[0])
        offset = ref[0] - gain * raw[0]
    if not (fw.CAL_GAIN_MIN <= gain <= fw.CAL_GAIN_MAX):
        raise ValueError(f"calibration gain {gain:.5g} outside {fw.CAL_GAIN_MIN:g}.."
                         f"{fw.CAL_GAIN_MAX:g}: check the reference values and the wiring")
    if abs(offset) > fw.CAL_OFFSET_MAX:
        raise ValueError(f"calibration offset {offset:.4g} V beyond +-{fw.CAL_OFFSET_MAX:g} V: "
                         f"check the reference values and the wiring")
    return gain, offset


def calibration_toml(gain: float, offset: float, *, identity: str = "",
                     points: Sequence[tuple[float, float]] = ()) -> str:
    """The TOML snippet for the board configuration (``[board.calibration]``, applied by the
    bench commands on connect) and the firmware ``config.py`` lines for power-up defaults."""
    when = time.strftime("%Y-%m-%d")
    lines = [f"# boostsim bench calibrate, {when}" + (f", {identity}" if identity else "")]
    for raw, ref in points:
        lines.append(f"#   board read {raw:.5f} V (uncalibrated) at {ref:.5f} V")
    lines += ["[board.calibration]", f"vout_gain = {gain:.6g}", f"vout_offset = {offset:.6g}",
              "# firmware config.py (power-up default):",
              f"# CAL_VOUT_GAIN = {gain:.6g}", f"# CAL_VOUT_OFFSET = {offset:.6g}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- figures


def _figure(rows: int, height: float, ratios: Sequence[float] | None = None):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, height), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, gridspec_kw={"height_ratios": ratios}
                        if ratios else None)
    return fig, np.atleast_1d(axes)


_MEAS = "#1d3557"
_SIM = "#e76f51"
_FIT = "#2a9d8f"


def sweep_figure(result: BenchSweep, params: BoostParams, *, title: str = ""):
    """Measured (error bars: 2 standard errors) and simulated output voltage vs duty, and the
    error per point (with the fitted model, if any)."""
    from boostsim.plots import board_text

    fig, (ax, ax_e) = _figure(2, 7, (2.2, 1))
    if result.n_points:
        lo = float(min(result.duty_effective.min(), result.requested.min()))
        hi = float(max(result.duty_effective.max(), result.requested.max()))
    else:
        lo, hi = float(result.requested.min()), float(result.requested.max())
    grid = np.linspace(lo, hi, 200) if hi > lo else np.array([lo])
    with contextlib.suppress(Exception):
        curve = simulate_sweep(params, grid, result.frequency)
        ax.plot(grid, curve["vout_mean"], color=_SIM, lw=1.5, label="simulated (steady state)")
    if result.fit is not None:
        with contextlib.suppress(Exception):
            fitted = simulate_sweep(result.fit.params, grid)
            names = ", ".join(f"{n}={result.fit.values[n]:.3g}" for n in result.fit.names)
            ax.plot(grid, fitted["vout_mean"], color=_FIT, lw=1.2, ls="--",
                    label=f"fitted ({names})")
    if result.n_points:
        ax.errorbar(result.duty_effective, result.vout_mean, yerr=2 * result.vout_sem,
                    fmt="o", ms=4, color=_MEAS, label=f"measured ({result.method}, "
                    f"{int(np.median(result.samples))} samples/point)")
    ax.set_ylabel("mean output voltage [V]")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    if result.sim is not None and result.n_points:
        err = result.error * 1e3
        ax_e.errorbar(result.duty_effective, err, yerr=2 * result.vout_sem * 1e3, fmt="o", ms=4,
                      color=_MEAS, label="measured - simulated")
        if result.fit is not None:
            ax_e.plot(result.duty_effective, (result.vout_mean - result.fit.vout) * 1e3, "s",
                      ms=4, mfc="none", color=_FIT, label="measured - fitted")
        ax_e.axhline(0, color="k", lw=0.8)
        m = result.error_metrics()
        text = f"error: rms {m['rms'] * 1e3:.2f} mV, max {m['max'] * 1e3:.2f} mV"
        if result.fit is not None:
            text += f"; after the fit: rms {result.fit.rms * 1e3:.2f} mV"
        ax_e.set_title(text, fontsize=10)
        ax_e.legend(loc="best", fontsize=8)
    ax_e.set_ylabel("error [mV]")
    ax_e.set_xlabel("duty (as produced by the PWM)")
    ax_e.grid(True, alpha=0.3)
    head = title or "bench sweep: measured vs simulated"
    if result.aborted:
        head += f" (aborted after {result.n_points} points)"
    fig.suptitle(f"{head}\n{board_text(params)}", fontsize=11)
    return fig


def _metrics_text(m: StepMetrics | None) -> list[str]:
    if m is None:
        return ["-"] * 5
    def ms(v: float) -> str:
        return "-" if not np.isfinite(v) else f"{v * 1e3:.2f} ms"
    return [f"{m.final:.3f} V", ms(m.rise_time), f"{m.overshoot:.1f} %",
            f"{m.undershoot:.1f} %", ms(m.settling_time)]


def step_figure(step: BenchStep, params: BoostParams, *, title: str = ""):
    """Measured step (single conversions, light; moving average, dark) over the simulated
    per-period mean, with a metrics table."""
    from matplotlib.figure import Figure

    from boostsim.plots import board_text

    fig = Figure(figsize=(11, 5.5), layout="constrained")
    ax, ax_table = fig.subplots(1, 2, gridspec_kw={"width_ratios": (3.2, 1)})
    ax.plot(step.t * 1e3, step.vout, ".", ms=1.5, color=_MEAS, alpha=0.25,
            label=f"measured, {step.rate:.6g} S/s")
    if step.t_sim is not None:
        ax.plot(step.t_sim * 1e3, step.vout_sim, color=_SIM, lw=2.2, alpha=0.8,
                label="simulated (period means)")
    ax.plot(step.t * 1e3, step.vout_smooth, color=_MEAS, lw=1.0,
            label=f"measured, {step.smooth}-sample mean")
    ax.axvline(0, color="k", lw=0.8, ls=":")
    ax.set_xlabel("time from the step [ms] (board clock)")
    ax.set_ylabel("output voltage [V]")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    rows = ["final", "rise 10-90%", "overshoot", "undershoot", "settling 2%"]
    cells = [[r, a, b] for r, a, b in zip(rows, _metrics_text(step.metrics),
                                          _metrics_text(step.metrics_sim), strict=True)]
    ax_table.axis("off")
    table = ax_table.table(cellText=cells, colLabels=["", "measured", "simulated"],
                           loc="center", colLoc="left", cellLoc="left",
                           colWidths=[0.38, 0.31, 0.31], bbox=[0.0, 0.3, 1.0, 0.45])
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    ax_table.text(0.0, 0.22, f"step marked to ±{step.mark_uncertainty * 1e6:.0f} µs\n"
                  f"metrics on the {step.smooth}-sample mean", fontsize=8, va="top",
                  transform=ax_table.transAxes)
    what = (f"duty {step.duty:g} -> {step.duty_after:g}" if step.kind == "duty" else
            f"load step {', '.join(f'{k}={v:g}' for k, v in step.load_change.items())} at "
            f"duty {step.duty:g}")
    fig.suptitle(f"{title or 'bench step'}: {what}\n{board_text(params)}", fontsize=11)
    return fig


def live_figure(result: LiveResult, params: BoostParams | None = None, *, title: str = ""):
    """Output voltage and setpoint (with the simulated loop, if any), duty, and the loop's
    timing (tick intervals and round trips)."""
    from boostsim.plots import board_text

    fig, (ax, ax_d, ax_t) = _figure(3, 8, (2, 1, 1))
    s = result.settings
    ax.plot(result.t, result.vout, color=_MEAS, lw=1, label="measured (MEAS:VOLT?)")
    ax.plot(result.t, result.vref, color="k", lw=0.8, ls="--", label="setpoint")
    ax_d.plot(result.t, result.duty, color=_MEAS, lw=1, label="duty (host PID)")
    if result.sim is not None:
        ax.plot(result.sim["t"], result.sim["vout"], color=_SIM, lw=1, alpha=0.9,
                label="simulated loop (period means)")
        ax_d.step(result.sim["t_ctrl"], result.sim["duty"], where="post", color=_SIM, lw=1,
                  label="duty (simulated)")
    ax.set_ylabel("output voltage [V]")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, alpha=0.3)
    ax_d.set_ylabel("duty")
    ax_d.grid(True, alpha=0.3)
    ax_d.legend(loc="lower right", fontsize=8)
    timing = result.timing()
    if result.ticks > 2:
        ax_t.plot(result.t[1:], np.diff(result.t) * 1e3, lw=0.8, color="#6c757d",
                  label="tick interval")
        ax_t.plot(result.t, result.exchange * 1e3, lw=0.8, color="#e9c46a",
                  label="serial round trip")
        ax_t.axhline(1e3 / s["rate"], color="k", lw=0.8, ls=":")
        ax_t.legend(loc="upper right", fontsize=8)
    ax_t.set_ylabel("[ms]")
    ax_t.set_xlabel("time [s] (host clock)")
    ax_t.grid(True, alpha=0.3)
    head = (f"{title or 'bench live'}: PID kp={s['kp']:g} ki={s['ki']:g} kd={s['kd']:g} at "
            f"{s['rate']:g} Hz; achieved {timing['rate']:.1f} Hz, jitter "
            f"{timing['jitter_std'] * 1e3:.3f} ms rms")
    fig.suptitle(head + (f"\n{board_text(params)}" if params is not None else ""), fontsize=10)
    return fig


# ---------------------------------------------------------------------------- live window


def display_available() -> bool:
    """Whether a live matplotlib window can open (a desktop session)."""
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _plot_process(queue, title: str, window: float) -> None:  # pragma: no cover - needs a display
    import queue as queue_mod

    import matplotlib.pyplot as plt

    plt.ion()
    fig, (ax, ax_d) = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
    fig.suptitle(title)
    lv, = ax.plot([], [], lw=1, label="vout")
    lr, = ax.plot([], [], "k--", lw=0.8, label="setpoint")
    ld, = ax_d.plot([], [], lw=1, label="duty")
    ax.legend(loc="lower right")
    ax.set_ylabel("V")
    ax_d.set_ylabel("duty")
    ax_d.set_xlabel("s")
    data: list[tuple] = []
    while plt.fignum_exists(fig.number):
        done = False
        while True:
            try:
                item = queue.get_nowait()
            except queue_mod.Empty:
                break
            if item is None:
                done = True
                break
            data.extend(item)
        if data:
            arr = np.array(data[-20000:])
            keep = arr[:, 0] >= arr[-1, 0] - window
            arr = arr[keep]
            lv.set_data(arr[:, 0], arr[:, 1])
            lr.set_data(arr[:, 0], arr[:, 2])
            ld.set_data(arr[:, 0], arr[:, 3])
            for a in (ax, ax_d):
                a.relim()
                a.autoscale_view()
        if done:
            break
        plt.pause(0.1)
    plt.ioff()
    if plt.fignum_exists(fig.number):
        plt.show()


class LivePlotter:
    """A live matplotlib window in a separate process (so drawing never stalls the control
    loop), fed in batches. Only when :func:`display_available`; otherwise ``active`` is
    False and :meth:`push` does nothing."""

    def __init__(self, title: str = "boostsim bench live", window: float = 10.0):
        self.active = display_available()
        self._batch: list[tuple] = []
        self._last = 0.0
        self._proc = None
        if self.active:
            ctx = multiprocessing.get_context("spawn")
            self._queue = ctx.Queue()
            self._proc = ctx.Process(target=_plot_process, args=(self._queue, title, window),
                                     daemon=True)
            self._proc.start()

    def push(self, t: float, vout: float, vref: float, duty: float) -> None:
        if not self.active:
            return
        self._batch.append((t, vout, vref, duty))
        now = time.monotonic()
        if now - self._last > 0.1:
            self._last = now
            with contextlib.suppress(Exception):
                self._queue.put_nowait(self._batch)
            self._batch = []

    def close(self) -> None:
        if self.active and self._proc is not None:
            with contextlib.suppress(Exception):
                self._queue.put_nowait(self._batch)
                self._queue.put_nowait(None)
            self.active = False
