"""``simulate``: the exact switching simulation from t = 0 to t_end, and its result.

Runs the :class:`~boostsim.engine.Stepper` period by period for every lane -- with the duty held
constant (open loop), from a per-period schedule, or from a controller hook -- advancing
stretches of continuous conduction in closed form (:mod:`boostsim.runahead`) where the duty is
held, and records per-period states and the waveforms on the output grid.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import fastloop
from .drive import check_duty, prepare_drive
from .engine import Period, PeriodView, Segment, Step, Stepper, sample_segments
from .memory import SAMPLE_WORK_BYTES, check_memory
from .params import BoostParams
from .runahead import RunAhead, ccm_run_ahead

__all__ = ["PeriodRecords", "SimulationResult", "simulate"]


Controller = Callable[[int, np.ndarray, "PeriodView | None"], Any]


# -- simulate ----------------------------------------------------------------------------------

@dataclasses.dataclass
class PeriodRecords:
    """Per-period records, arrays of shape (n_lanes, n_periods)."""

    t_start: np.ndarray  # [s]
    duty: np.ndarray
    il_start: np.ndarray  # [A] state at the period start
    vc_start: np.ndarray  # [V]
    t_on: np.ndarray  # switch conduction time [s]
    t_diode: np.ndarray  # diode (or synchronous switch) conduction time [s]
    t_idle: np.ndarray  # both off (DCM) [s]

    @property
    def mode(self) -> np.ndarray:
        """"DCM" where the inductor current rested at zero during the period, else "CCM"."""
        return np.where(self.t_idle > 0, "DCM", "CCM")


@dataclasses.dataclass
class SimulationResult:
    """Waveforms and per-period records of :func:`simulate`.

    ``t`` has shape (n_t,); waveforms have shape (n_lanes, n_t), or (n_t,) when the inputs were
    all scalars. ``periods`` holds per-period records (see :class:`PeriodRecords`).
    """

    params: BoostParams
    t: np.ndarray
    il: np.ndarray
    vc: np.ndarray
    vout: np.ndarray
    periods: PeriodRecords
    il_end: np.ndarray
    vc_end: np.ndarray
    scalar: bool
    steps: tuple[Step, ...] = ()
    _lanes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def n_lanes(self) -> int:
        return self.periods.duty.shape[0]

    @property
    def duty(self) -> np.ndarray:
        """The duty of each period, shape (lanes, periods), or (periods,) for scalar inputs
        (as :attr:`boostsim.averaged.AveragedResult.duty`)."""
        return self.periods.duty[0] if self.scalar else self.periods.duty

    def period_means(self) -> dict[str, np.ndarray]:
        """Exact averages over each switching period: ``t_start`` [s] and ``il`` [A], ``vc``,
        ``vout`` [V], shape (lanes, periods) (or (periods,) for scalar inputs).

        This is the cycle-averaged waveform that averaged models predict."""
        from .analysis import period_means

        means = period_means(Stepper(self._lanes, self.steps), self.periods)
        means["t_start"] = self.periods.t_start
        return {k: v[0] if self.scalar else v for k, v in means.items()}

    def metrics(self, last_periods: int = 20):
        """Averages, ripple, powers and losses over the last ``last_periods`` whole periods.

        Returns :class:`boostsim.analysis.Metrics` (same fields as :func:`steady_state`).
        """
        from .analysis import window_metrics

        n_periods = self.periods.duty.shape[1]
        if not 1 <= last_periods <= n_periods:
            raise ValueError(f"last_periods must be between 1 and {n_periods}, got "
                             f"{last_periods}")
        return window_metrics(Stepper(self._lanes, self.steps), self.periods,
                              range(n_periods - last_periods, n_periods), scalar=self.scalar)


def simulate(params: BoostParams, duty: Any = None, t_end: float | None = None,
             dt: float | None = None, *, x0: Any = None, controller: Controller | None = None,
             vref: Any = None, steps: Sequence[Step] = (), run_ahead: bool = True,
             progress: bool = False, engine: str = "auto") -> SimulationResult:
    """Simulate the switching converter exactly from t = 0 to ``t_end`` [s].

    Parameters
    ----------
    params : BoostParams
        One converter or a batch (lanes).
    duty : float, array (lanes,), or 2-D array (periods, lanes or 1)
        Constant duty per lane, or a per-period schedule. Must be in [0, 1).
        Omit when a ``controller`` sets it.
    t_end : float
        End time [s].
    dt : float, optional
        Output sampling step [s] (default: 1/50 of the shortest period). Waveforms come from
        the exact segment solutions, so they do not depend on ``dt``.
    x0 : (il, vc) or array (lanes, 2), optional
        Initial inductor current [A] and capacitor voltage [V]; default zero.
    controller : callable, optional
        ``controller(k, t_start, view) -> duty`` called at the start of every period ``k``
        (``view`` is a :class:`PeriodView` of the previous period, None for k = 0), e.g. a
        :class:`boostsim.control.DigitalController`. If it has a ``start(lanes, vref)``
        method, that is called first.
    vref : optional
        Output voltage reference [V] handed to the controller's ``start``: a constant (scalar
        or per lane), steps ``[(0, 12.0), (0.02, 10.0)]`` or a function of time.
    steps : sequence of Step
        Line and load steps at given times.
    run_ahead : bool
        With a constant duty, advance stretches of continuous conduction in closed form
        (same results to rounding, much faster); False steps every period.
    progress : bool
        Show a progress bar.
    engine : "auto", "numpy" or "compiled"
        "auto" runs open loop, duty schedules and ``DigitalController`` with
        ``boostsim.pid.PID`` on the compiled kernel (:mod:`boostsim.kernel`, same results to
        rounding) and any other controller on the numpy engine; "numpy" forces the numpy
        engine (the reference), "compiled" insists on the kernel.
    """
    compiled = fastloop.use_compiled(engine, controller)
    drive = prepare_drive(params, duty, t_end, dt, x0=x0, controller=controller, vref=vref,
                          steps=steps, default_dt_periods=1 / 50)
    lanes, n, scalar, Ts, dt = drive.lanes, drive.n, drive.scalar, drive.Ts, drive.dt
    check_memory(simulation_bytes(n, drive.n_periods, drive.n_t), "simulate",
                 f"it records {drive.n_periods} periods and {drive.n_t} samples for each of "
                 f"{n} lane(s); shorten t_end, use a coarser dt or simulate fewer lanes per call")
    n_periods, n_t, t = drive.n_periods, drive.n_t, drive.t
    constant, schedule = drive.constant, drive.schedule
    stepper = Stepper(lanes, steps)
    il, vc = drive.il0, drive.vc0
    out = _Recorder(n, n_periods, n_t, dt, Ts)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_periods, desc="simulate", unit="period", leave=False)
    constant_runner = _ConstantDuty(stepper, out, Ts, dt, bar, run_ahead)
    everyone = np.arange(n)
    every = int(getattr(controller, "every", 1)) if controller is not None else 1
    if compiled:
        table = out.lane_major()
        il, vc = fastloop.run(drive, stepper, controller, out.wave, table)
        if bar is not None:
            bar.update(n_periods)
    elif controller is None and schedule is None:
        il, vc = constant_runner.advance(0, n_periods, il, vc, constant)
    elif controller is not None and every > 1:
        # The controller acts every `every` periods and holds its duty in between: run the
        # held stretch at constant duty and step its last period for the controller's view.
        view = None
        k = 0
        while k < n_periods:
            t0 = k * Ts
            d = check_duty(np.broadcast_to(np.asarray(controller(k, t0, view), dtype=float),
                                           (n,)).astype(float), f"controller duty (period {k})")
            last = min(k + every, n_periods) - 1
            il, vc = constant_runner.advance(k, last, il, vc, d)
            period = stepper.period(last, il, vc, d)
            out.period(everyone, last, d, il, vc, period)
            il, vc = period.il_end, period.vc_end
            view = PeriodView(last, last * Ts, d, period)
            k = last + 1
            if bar is not None:
                bar.update(1)
    else:
        view = None
        for k in range(n_periods):
            t0 = k * Ts
            if controller is not None:
                d = check_duty(np.broadcast_to(np.asarray(controller(k, t0, view), dtype=float),
                                               (n,)).astype(float),
                               f"controller duty (period {k})")
            else:
                d = schedule[k]
            period = stepper.period(k, il, vc, d)
            out.period(everyone, k, d, il, vc, period)
            il, vc = period.il_end, period.vc_end
            if controller is not None:
                view = PeriodView(k, t0, d, period)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    squeeze = (lambda a: a[0]) if scalar else (lambda a: a)
    return SimulationResult(params=params, t=t, il=squeeze(out.il), vc=squeeze(out.vc),
                            vout=squeeze(out.vout), periods=out.records(),
                            il_end=squeeze(il), vc_end=squeeze(vc), scalar=scalar,
                            steps=tuple(steps), _lanes=lanes)


def simulation_bytes(n_lanes: int, n_periods: int, n_t: int) -> float:
    """Memory [bytes] :func:`simulate` needs: the per-period records (7 float64 arrays of
    lanes x periods in the result), the waveforms (iL, vC, vout: lanes x samples, and the time
    axis) and the working space of one run-ahead stretch."""
    records = 7 * 8 * n_lanes * n_periods
    waveforms = 3 * 8 * n_lanes * n_t + 8 * n_t
    return records + waveforms + _MAX_CHUNK_SAMPLES * SAMPLE_WORK_BYTES


# Run-ahead chunks (periods): start small, double while every lane stays in CCM.
_FIRST_CHUNK = 8
_MAX_CHUNK = 4096
_MAX_BACKOFF = 32
_MAX_CHUNK_SAMPLES = 1 << 19  # lane-periods x samples per period in one stretch


class _ConstantDuty:
    """Advances all lanes through stretches of periods at a constant duty: closed-form CCM
    run-ahead where it applies (adaptive chunks, backing off while lanes are in DCM), period
    by period elsewhere."""

    def __init__(self, stepper: Stepper, out: _Recorder, Ts: np.ndarray, dt: float, bar: Any,
                 run_ahead: bool):
        self.stepper, self.out, self.Ts, self.bar = stepper, out, Ts, bar
        self.run_ahead = run_ahead
        n = stepper.n
        self.everyone = np.arange(n)
        self.max_chunk = max(1, _MAX_CHUNK_SAMPLES // (n * (int(np.ceil(np.max(Ts) / dt)) + 1)))
        self.chunk = _FIRST_CHUNK
        self.backoff = 0  # periods to step one by one before trying to run ahead again
        self.failures = 0

    def advance(self, k: int, k_end: int, il: np.ndarray, vc: np.ndarray, duty: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """Periods [k, k_end) at ``duty``; returns the state at the start of ``k_end``."""
        stepper, out, Ts, everyone = self.stepper, self.out, self.Ts, self.everyone
        n = stepper.n
        while k < k_end:
            K = min(self.chunk, k_end - k, self.max_chunk)
            if (self.run_ahead and self.backoff == 0 and K > 1
                    and not stepper.has_steps_between(k * Ts, (k + K) * Ts)):
                ahead = ccm_run_ahead(stepper, k, K, il, vc, duty)
                common = int(ahead.valid_periods.min())
                good = ahead.valid_periods >= K
                if common >= 1:
                    ahead = ahead.first(common)
                    out.run_ahead(everyone, k, common, ahead, np.ones(n, dtype=bool), duty,
                                  stepper)
                    il, vc = ahead.il[common], ahead.vc[common]
                    self.chunk = (min(2 * self.chunk, _MAX_CHUNK) if common == K
                                  else max(_FIRST_CHUNK, common))
                    self.failures = 0
                    k += common
                    self._progress(common)
                    continue
                if good.any() and np.count_nonzero(good) >= n // 2:
                    # Most lanes stay in CCM: run them ahead, step the others one by one.
                    il, vc = il.copy(), vc.copy()
                    rows = everyone[good]
                    out.run_ahead(rows, k, K, ahead, good, duty[good], stepper.subset(rows))
                    il[good], vc[good] = ahead.il[K, good], ahead.vc[K, good]
                    rows = everyone[~good]
                    sub = stepper.subset(rows)
                    il_b, vc_b = il[rows], vc[rows]
                    for j in range(k, k + K):
                        period = sub.period(j, il_b, vc_b, duty[rows])
                        out.period(rows, j, duty[rows], il_b, vc_b, period)
                        il_b, vc_b = period.il_end, period.vc_end
                    il[rows], vc[rows] = il_b, vc_b
                    k += K
                    self._progress(K)
                    continue
                # Mostly discontinuous conduction: step for a while before trying again.
                self.failures += 1
                self.backoff = min(2 ** self.failures, _MAX_BACKOFF)
                self.chunk = _FIRST_CHUNK
            period = stepper.period(k, il, vc, duty)
            out.period(everyone, k, duty, il, vc, period)
            il, vc = period.il_end, period.vc_end
            k += 1
            self.backoff = max(self.backoff - 1, 0)
            self._progress(1)
        return il, vc

    def _progress(self, periods: int) -> None:
        if self.bar is not None:
            self.bar.update(periods)


class _Recorder:
    """Collects waveform samples and per-period records as periods are simulated."""

    def __init__(self, n: int, n_periods: int, n_t: int, dt: float, Ts: np.ndarray):
        self.n_periods, self.n_t, self.dt, self.Ts = n_periods, n_t, dt, Ts
        self.common_Ts = float(Ts[0]) if (Ts == Ts[0]).all() else None
        # Period-major storage: each period writes contiguous rows.
        self.rec = {name: np.empty((n_periods, n)) for name in
                    ("duty", "il_start", "vc_start", "t_diode", "t_idle")}
        self.wave = np.empty((3, n, n_t))
        self.il, self.vc, self.vout = self.wave
        self.times: tuple[np.ndarray, np.ndarray] | None = None  # (t_start, t_on), lane-major

    def lane_major(self) -> np.ndarray:
        """The per-period records as one (7, lanes, periods) array to be filled lane by lane
        (the five records, then t_start and t_on)."""
        table = np.empty((7, self.il.shape[0], self.n_periods))
        self.rec = {name: part.T for name, part in zip(self.rec, table[:5], strict=True)}
        self.times = (table[5], table[6])
        return table

    def period(self, rows: np.ndarray, k: int, duty: np.ndarray, il0: np.ndarray,
               vc0: np.ndarray, period: Period) -> None:
        every = rows.size == self.il.shape[0]
        for name, value in (("duty", duty), ("il_start", il0), ("vc_start", vc0),
                            ("t_diode", period.t_diode), ("t_idle", period.t_idle)):
            if every:
                self.rec[name][k] = value
            else:
                self.rec[name][k, rows] = value
        Ts = self.Ts if every else self.Ts[rows]
        self._sample(period.segments, rows, k * Ts, Ts, final=k == self.n_periods - 1,
                     all_lanes=every)

    def run_ahead(self, rows: np.ndarray, k: int, K: int, ahead: RunAhead, lanes: np.ndarray,
                  duty: np.ndarray, stepper: Stepper) -> None:
        rec = self.rec
        block = slice(k, k + K)
        Ts = self.Ts[rows]
        rec["duty"][block, rows] = duty
        rec["il_start"][block, rows] = ahead.il[:K][:, lanes]
        rec["vc_start"][block, rows] = ahead.vc[:K][:, lanes]
        rec["t_diode"][block, rows] = Ts - duty * Ts
        rec["t_idle"][block, rows] = 0.0
        # Sample the stretch as K x lanes independent periods of two segments each.
        segments = ahead.segments(lanes, stepper)
        flat_rows = np.tile(rows, K)
        t0 = (np.arange(k, k + K)[:, None] * Ts[None, :]).ravel()
        flat_Ts = np.tile(Ts, K)
        if k + K == self.n_periods:
            m = (K - 1) * rows.size
            self._sample([_part(s, slice(None, m)) for s in segments], flat_rows[:m], t0[:m],
                         flat_Ts[:m], final=False)
            self._sample([_part(s, slice(m, None)) for s in segments], flat_rows[m:], t0[m:],
                         flat_Ts[m:], final=True)
        else:
            self._sample(segments, flat_rows, t0, flat_Ts, final=False)

    def _sample(self, segments: list[Segment], rows: np.ndarray, t0: np.ndarray,
                Ts: np.ndarray, final: bool, all_lanes: bool = False) -> None:
        """Evaluate the output grid samples that fall inside these periods (the final period
        also takes a sample on its end: the state reached at t_end). ``all_lanes``: one period
        of every lane, in lane order."""
        if rows.size == 0:
            return
        dt, n_t = self.dt, self.n_t
        if all_lanes and self.common_Ts is not None:
            # Every lane shares the period: one set of grid points, in plain Python numbers.
            start = float(t0[0])
            first = math.ceil(start / dt - 1e-9)
            end = (math.floor((start + self.common_Ts) / dt + 1e-9) + 1 if final
                   else math.ceil((start + self.common_Ts) / dt - 1e-9))
            last = min(end, n_t)
            if last <= first:
                return
            tau = (np.arange(first, last) * dt - start)[None, :]
            snap = 8 * np.finfo(float).eps * (start + self.common_Ts)
            columns = slice(first, last)
            self.il[:, columns], self.vc[:, columns], self.vout[:, columns] = sample_segments(
                segments, tau, snap=snap)
            return
        first = np.ceil(t0 / dt - 1e-9).astype(np.int64)
        end = np.floor((t0 + Ts) / dt + 1e-9) + 1 if final else np.ceil((t0 + Ts) / dt - 1e-9)
        last = np.minimum(end.astype(np.int64), n_t)  # exclusive
        m = int((last - first).max(initial=0))
        if m <= 0:
            return
        j = first[:, None] + np.arange(m)[None, :]
        valid = j < last[:, None]
        tau = np.where(valid, j, first[:, None]) * dt - t0[:, None]
        il, vc, vout = sample_segments(segments, tau, snap=8 * np.finfo(float).eps * (t0 + Ts))
        r = np.broadcast_to(rows[:, None], j.shape)[valid]
        jj = j[valid]
        self.il[r, jj] = il[valid]
        self.vc[r, jj] = vc[valid]
        self.vout[r, jj] = vout[valid]

    def records(self) -> PeriodRecords:
        rec = {k: v.T for k, v in self.rec.items()}
        if self.times is not None:
            return PeriodRecords(t_start=self.times[0], t_on=self.times[1], **rec)
        k = np.arange(self.n_periods)
        return PeriodRecords(t_start=self.Ts[:, None] * k[None, :],
                             t_on=rec["duty"] * self.Ts[:, None], **rec)


def _part(seg: Segment, part: slice) -> Segment:
    return Segment(seg.topology[part], seg.start[part], seg.duration[part], seg.il0[part],
                   seg.vc0[part], seg.coef[:, part])
