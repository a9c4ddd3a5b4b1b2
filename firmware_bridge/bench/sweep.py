"""Open-loop duty sweep on the bench (:func:`measure_sweep`), the same sweep simulated
(:func:`simulate_sweep`) and a least-squares fit of loss parameters (:func:`fit_losses`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from boostsim import steady_state
from boostsim.params import BoostParams

from ..board import Board, BoardError, BoardResetError, LinkError, TripError
from .common import (
    VOLTS_PER_CODE,
    Reporter,
    _quiet,
    _robust,
    effective_pwm,
    switch_on_at,
    unlocked_rate,
)

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


def measure_sweep(board: Board, duties: Sequence[float], *, settle: float = 0.1,
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
