"""Exact switching simulation of the boost converter, period by period, vectorised over lanes.

Each switching period is split into linear segments (see :mod:`boostsim.segments`): the switch
is on from the start of the period for ``duty * Ts`` (trailing-edge modulation: the PWM edge that
moves with the duty is the falling one), then the diode conducts, possibly until its current
reaches zero (discontinuous conduction), after which both devices are off until the next period
or until the output falls below ``vin - v_f`` and the diode conducts again. Every segment is
solved in closed form; the only numerical step is locating the diode's zero crossing, refined to
rounding error. Waveforms are reconstructed afterwards on any output grid from the exact segment
solutions, so they do not depend on the sampling step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import segments as sg
from .params import BoostParams, broadcast_lanes

__all__ = ["PeriodView", "SimulationResult", "Step", "simulate"]

_MAX_SEGMENTS_PER_PERIOD = 64


@dataclasses.dataclass(frozen=True)
class Step:
    """A change of operating conditions at time ``t`` [s]: a line step (``vin`` [V]) and/or a
    load step (``R`` [ohm], ``i_load`` [A]). Values may be per-lane arrays; None keeps the value.
    """

    t: float
    vin: Any = None
    R: Any = None
    i_load: Any = None

    def __post_init__(self) -> None:
        if not np.isfinite(self.t) or self.t < 0:
            raise ValueError(f"Step time must be a finite number >= 0 [s], got {self.t!r}")
        if self.vin is None and self.R is None and self.i_load is None:
            raise ValueError(f"Step at t={self.t:g} s changes nothing: give vin, R or i_load")


class Segment(NamedTuple):
    """One linear piece of a period for every lane (arrays of shape (n,))."""

    topology: np.ndarray  # segments.ON / DIODE / IDLE
    start: np.ndarray  # offset from the period start [s]
    duration: np.ndarray  # [s]; 0 for lanes that have no such piece in this period
    il0: np.ndarray  # state at the segment start
    vc0: np.ndarray
    coef: np.ndarray  # coefficient table in force (segments.N_ROWS, n)


class Period(NamedTuple):
    """The outcome of one switching period for every lane."""

    segments: list[Segment]
    il_end: np.ndarray
    vc_end: np.ndarray
    t_diode: np.ndarray
    t_idle: np.ndarray
    jacobian: np.ndarray | None  # d x_end / d x_start, (n, 2, 2), when requested


class Conditions:
    """Per-lane operating conditions over time: the parameters plus line/load steps."""

    def __init__(self, lanes: dict[str, np.ndarray], steps: Sequence[Step]):
        n = lanes["L"].size
        self.lanes = lanes
        ordered = sorted(steps, key=lambda s: s.t)
        self.times = np.array([s.t for s in ordered], dtype=float)
        vin, R, i_load = lanes["vin"], lanes["R"], lanes["i_load"]
        tables = [sg.coefficients(lanes, vin, R, i_load)]
        for step in ordered:
            vin = _step_value(step, "vin", step.vin, vin, n)
            R = _step_value(step, "R", step.R, R, n)
            i_load = _step_value(step, "i_load", step.i_load, i_load, n)
            tables.append(sg.coefficients(lanes, vin, R, i_load))
        self.tables = np.stack(tables)  # (epochs, rows, n)
        self._lane_index = np.arange(n)

    def subset(self, idx: np.ndarray) -> Conditions:
        sub = object.__new__(Conditions)
        sub.lanes = {k: v[idx] for k, v in self.lanes.items()}
        sub.times = self.times
        sub.tables = self.tables[:, :, idx]
        sub._lane_index = np.arange(idx.size)
        return sub

    def epoch_at(self, t: np.ndarray) -> np.ndarray:
        """Number of steps at or before time t (per lane)."""
        return np.searchsorted(self.times, t, side="right")

    def table(self, epoch: np.ndarray) -> np.ndarray:
        """Coefficient table (rows, n) for each lane's epoch."""
        first = epoch[0]
        if np.all(epoch == first):
            return self.tables[first]
        return self.tables[epoch, :, self._lane_index].T


def _step_value(step: Step, name: str, value: Any, current: np.ndarray, n: int) -> np.ndarray:
    if value is None:
        return current
    probe = {"vin": 1.0, "L": 1.0, "C": 1.0, "R": 1.0, "fsw": 1.0, name: value}
    try:
        checked = BoostParams(**probe)
    except ValueError as exc:
        raise ValueError(f"Step at t={step.t:g} s: {exc}") from None
    array = np.asarray(getattr(checked, name), dtype=float)
    if array.ndim == 1 and array.size not in (1, n):
        raise ValueError(f"Step at t={step.t:g} s: {name} has {array.size} values for {n} lanes")
    return np.broadcast_to(array, (n,)).astype(float)


class Stepper:
    """Advances all lanes through one switching period at a time."""

    def __init__(self, lanes: dict[str, np.ndarray], steps: Sequence[Step] = ()):
        self.lanes = lanes
        self.n = lanes["L"].size
        self.Ts = 1.0 / lanes["fsw"]
        self.conditions = Conditions(lanes, steps)
        self.sync = lanes["synchronous"].astype(bool)

    def subset(self, idx: np.ndarray) -> Stepper:
        """A stepper for the lanes ``idx`` only (same conditions)."""
        if idx.size == self.n:
            return self
        sub = object.__new__(Stepper)
        sub.lanes = {k: v[idx] for k, v in self.lanes.items()}
        sub.n = idx.size
        sub.Ts = self.Ts[idx]
        sub.sync = self.sync[idx]
        sub.conditions = self.conditions.subset(idx)
        return sub

    def period(self, k: int, il: np.ndarray, vc: np.ndarray, duty: np.ndarray,
               jacobian: bool = False) -> Period:
        """Simulate period ``k`` (starting at ``k * Ts``) from state (il, vc) with ``duty``."""
        n, Ts = self.n, self.Ts
        t0 = k * Ts
        cond = self.conditions
        epoch = cond.epoch_at(t0)
        breaks = self._breaks(t0)
        tau = np.zeros(n)
        segments: list[Segment] = []
        jac = np.broadcast_to(np.eye(2), (n, 2, 2)).copy() if jacobian else None

        def next_end(phase_end: np.ndarray) -> np.ndarray:
            if breaks is None:
                return phase_end
            upcoming = np.where(breaks > tau, breaks, np.inf).min(axis=0)
            return np.minimum(phase_end, upcoming)

        def advance_epoch() -> np.ndarray:
            if breaks is None:
                return epoch
            return cond.epoch_at(t0) + (breaks <= tau).sum(axis=0)

        # Switch on for duty * Ts (split only by line/load steps).
        t_edge = duty * Ts
        on = np.full(n, sg.ON, dtype=np.int8)
        while True:
            c = cond.table(epoch)
            end = next_end(t_edge)
            dur = end - tau
            segments.append(Segment(on, tau, dur, il, vc, c))
            if jac is not None:
                jac = sg.transition_matrix(c, on, dur) @ jac
            il, vc = sg.on_state(c, il, vc, dur)
            tau = end
            epoch = advance_epoch()
            if np.all(tau >= t_edge):
                break

        # Switch off: the diode conducts while its current is positive.
        c = cond.table(epoch)
        conducting = self.sync | (il > 0) | ((il == 0) & (vc < c[sg.V_TH]))
        topology = np.where(conducting, sg.DIODE, sg.IDLE).astype(np.int8)
        t_diode = np.zeros(n)
        t_idle = np.zeros(n)
        while np.any(tau < Ts):
            if len(segments) > _MAX_SEGMENTS_PER_PERIOD:
                lanes = np.flatnonzero(tau < Ts)[:5]
                raise RuntimeError(f"period {k}: more than {_MAX_SEGMENTS_PER_PERIOD} segments "
                                   f"in lanes {lanes.tolist()} (diode chattering at the "
                                   f"conduction boundary); check the parameters")
            c = cond.table(epoch)
            end = next_end(Ts)
            dur = end - tau
            il_new, vc_new, t_event = self._off_segment(c, topology, il, vc, dur)
            hit = t_event < dur
            seg_dur = np.where(hit, t_event, dur)
            segments.append(Segment(topology, tau, seg_dur, il, vc, c))
            if jac is not None:
                jac = sg.transition_matrix(c, topology, seg_dur) @ jac
                # Saltation at the diode turn-off (iL -> 0): perturbations of iL vanish.
                jac[hit & (topology == sg.DIODE), 0, :] = 0.0
            is_diode = topology == sg.DIODE
            t_diode += np.where(is_diode, seg_dur, 0.0)
            t_idle += np.where(is_diode, 0.0, seg_dur)
            il, vc = il_new, vc_new
            tau = np.where(hit, tau + t_event, end)
            topology = np.where(hit, np.where(is_diode, sg.IDLE, sg.DIODE),
                                topology).astype(np.int8)
            epoch = advance_epoch()
            if breaks is not None:
                # A line step may start or stop conduction of an idle diode.
                c = cond.table(epoch)
                idle = topology == sg.IDLE
                topology = np.where(idle & (vc < c[sg.V_TH]), sg.DIODE, topology).astype(np.int8)
        return Period(segments, il, vc, t_diode, t_idle, jac)

    def _breaks(self, t0: np.ndarray) -> np.ndarray | None:
        """Offsets of the line/load steps inside this period, shape (steps, n), or None."""
        times = self.conditions.times
        if times.size == 0:
            return None
        offsets = times[:, None] - t0[None, :]
        inside = (offsets > 0) & (offsets < self.Ts[None, :])
        if not np.any(inside):
            return None
        return np.where(inside, offsets, np.inf)

    def _off_segment(self, c: np.ndarray, topology: np.ndarray, il: np.ndarray,
                     vc: np.ndarray, dur: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance DIODE and IDLE lanes by up to ``dur``; returns the new state and the time of
        the state event that ends the segment early (inf where none)."""
        diode = topology == sg.DIODE
        idle = ~diode
        t_event = np.full(self.n, np.inf)
        il_d, vc_d = sg.diode_state(c, il, vc, dur)
        if np.any(idle):
            t_event = np.where(idle, sg.idle_reconduction_time(c, vc), t_event)
        # Diode turn-off: the current ends negative, or dips below zero inside the segment.
        slope0 = sg.diode_derivative(c, il, vc)
        slope1 = sg.diode_derivative(c, il_d, vc_d)
        long_ring = (c[sg.Q2] < 0) & (np.sqrt(np.abs(c[sg.Q2])) * dur >= np.pi)
        candidate = diode & ~self.sync & ((il_d < 0) | ((slope0 < 0) & (slope1 > 0)) | long_ring)
        if np.any(candidate):
            idx = np.flatnonzero(candidate)
            t_event[idx] = sg.diode_zero_time(c[:, idx], il[idx], vc[idx], dur[idx])
        hit = t_event < dur
        step = np.where(hit, t_event, dur)
        il_out = np.where(diode, il_d, 0.0)
        vc_out = np.where(diode, vc_d, sg.decay(c[sg.M], -c[sg.W], vc, step))
        hit_diode = hit & diode
        if np.any(hit_diode):
            idx = np.flatnonzero(hit_diode)
            vc_out[idx] = sg.diode_state(c[:, idx], il[idx], vc[idx], step[idx])[1]
            il_out[idx] = 0.0
        return il_out, vc_out, t_event


# -- sampling segments ---------------------------------------------------------------------------

def sample_segments(segments: Sequence[Segment], tau: np.ndarray, snap: Any = 0.0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """State and output at offsets ``tau`` (n, m) inside one period: (il, vc, vout).

    A sample on a switching instant (to within ``snap`` seconds, per lane: the rounding of the
    sample time) takes the value just after it.
    """
    n = tau.shape[0]
    snap = np.broadcast_to(np.asarray(snap, dtype=float), (n,))[:, None]
    index = np.zeros(tau.shape, dtype=np.int64)
    for i, seg in enumerate(segments[1:], start=1):
        after = tau >= seg.start[:, None] - snap
        index = np.where(after & (seg.duration[:, None] > 0), i, index)
    il = np.empty(tau.shape)
    vc = np.empty(tau.shape)
    vout = np.empty(tau.shape)
    for i, seg in enumerate(segments):
        mask = index == i
        if not np.any(mask):
            continue
        lane = np.broadcast_to(np.arange(n)[:, None], tau.shape)[mask]
        c = seg.coef[:, lane]
        topo = seg.topology[lane]
        il_i, vc_i = sg.state_at(c, topo, seg.il0[lane], seg.vc0[lane],
                                 tau[mask] - seg.start[lane])
        il[mask], vc[mask] = il_i, vc_i
        vout[mask] = sg.vout_of(c, topo, il_i, vc_i)
    return il, vc, vout


class PeriodView:
    """What a controller may look at: the period that just ended, for every lane."""

    def __init__(self, k: int, t_start: np.ndarray, duty: np.ndarray, period: Period):
        self.k = k
        self.t_start = t_start
        self.duty = duty
        self._period = period
        self.il_end = period.il_end
        self.vc_end = period.vc_end

    def sample(self, tau: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(il, vc, vout) at offset ``tau`` [s] (scalar or per lane) into the period."""
        n = self.il_end.size
        tau = np.broadcast_to(np.asarray(tau, dtype=float), (n,))[:, None]
        il, vc, vout = sample_segments(self._period.segments, tau)
        return il[:, 0], vc[:, 0], vout[:, 0]


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
             steps: Sequence[Step] = (), progress: bool = False) -> SimulationResult:
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
        (``view`` is a :class:`PeriodView` of the previous period, None for k = 0).
    steps : sequence of Step
        Line and load steps at given times.
    progress : bool
        Show a progress bar.
    """
    if t_end is None or not np.isfinite(t_end) or t_end <= 0:
        raise ValueError(f"t_end must be a finite time > 0 [s], got {t_end!r}")
    if (duty is None) == (controller is None):
        raise ValueError("give either duty (open loop) or controller (closed loop), not both"
                         if duty is not None else "give a duty or a controller")
    schedule = None
    duty_lanes: Any = 0.0
    if duty is not None:
        duty_array = np.asarray(duty, dtype=float)
        if duty_array.ndim == 2:
            schedule = duty_array
            duty_lanes = duty_array[0] if duty_array.shape[1] > 1 else duty_array[0, 0]
        elif duty_array.ndim > 2:
            raise ValueError(f"duty must be a scalar, a 1-D array of lanes or a 2-D "
                             f"(periods, lanes) schedule, got shape {duty_array.shape}")
        else:
            duty_lanes = duty_array
    x0_array = _initial_state(x0)
    lanes, n, scalar = _lanes(params, duty_lanes, x0_array[..., 0], *[
        v for s in steps for v in (s.vin, s.R, s.i_load) if v is not None])
    Ts = 1.0 / lanes["fsw"]
    if dt is None:
        dt = float(np.min(Ts)) / 50
    if not np.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a finite time > 0 [s], got {dt!r}")
    n_t = int(np.floor(t_end / dt * (1 + 1e-12))) + 1
    if n_t * n > 2e9:
        raise ValueError(f"output grid too large: {n} lanes x {n_t} samples; raise dt")
    t = np.arange(n_t) * dt
    n_periods = int(np.max(np.ceil(t_end / Ts - 1e-9)))
    if schedule is not None:
        schedule = _check_schedule(schedule, n, n_periods)
    elif duty is not None:
        constant = _check_duty(np.broadcast_to(duty_lanes, (n,)).astype(float), "duty")

    stepper = Stepper(lanes, steps)
    il = np.broadcast_to(x0_array[..., 0], (n,)).astype(float)
    vc = np.broadcast_to(x0_array[..., 1], (n,)).astype(float)
    rec = {name: np.empty((n, n_periods)) for name in
           ("t_start", "duty", "il_start", "vc_start", "t_on", "t_diode", "t_idle")}
    out_il = np.empty((n, n_t))
    out_vc = np.empty((n, n_t))
    out_vout = np.empty((n, n_t))
    view = None
    iterator = range(n_periods)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="simulate", unit="period", leave=False)
    for k in iterator:
        t0 = k * Ts
        if controller is not None:
            d = _check_duty(np.broadcast_to(np.asarray(controller(k, t0, view), dtype=float),
                                            (n,)).astype(float), f"controller duty (period {k})")
        elif schedule is not None:
            d = schedule[k]
        else:
            d = constant
        rec["t_start"][:, k] = t0
        rec["duty"][:, k] = d
        rec["il_start"][:, k] = il
        rec["vc_start"][:, k] = vc
        rec["t_on"][:, k] = d * Ts
        period = stepper.period(k, il, vc, d)
        rec["t_diode"][:, k] = period.t_diode
        rec["t_idle"][:, k] = period.t_idle
        _sample_into(period.segments, t0, Ts, dt, n_t, out_il, out_vc, out_vout,
                     final=k == n_periods - 1)
        il, vc = period.il_end, period.vc_end
        if controller is not None:
            view = PeriodView(k, t0, d, period)
    records = PeriodRecords(**rec)
    squeeze = (lambda a: a[0]) if scalar else (lambda a: a)
    return SimulationResult(params=params, t=t, il=squeeze(out_il), vc=squeeze(out_vc),
                            vout=squeeze(out_vout), periods=records, il_end=squeeze(il),
                            vc_end=squeeze(vc), scalar=scalar, steps=tuple(steps), _lanes=lanes)


def _sample_into(segments: list[Segment], t0: np.ndarray, Ts: np.ndarray, dt: float, n_t: int,
                 out_il: np.ndarray, out_vc: np.ndarray, out_vout: np.ndarray,
                 final: bool) -> None:
    """Evaluate the output grid samples that fall inside this period (the final period also
    takes a sample on its end: the state reached at t_end)."""
    first = np.ceil(t0 / dt - 1e-9).astype(np.int64)
    end = np.floor((t0 + Ts) / dt + 1e-9) + 1 if final else np.ceil((t0 + Ts) / dt - 1e-9)
    last = np.minimum(end.astype(np.int64), n_t)  # exclusive
    count = last - first
    m = int(count.max(initial=0))
    if m <= 0:
        return
    j = first[:, None] + np.arange(m)[None, :]
    valid = j < last[:, None]
    j_safe = np.where(valid, j, first[:, None])
    tau = j_safe * dt - t0[:, None]
    il, vc, vout = sample_segments(segments, tau, snap=8 * np.finfo(float).eps * (t0 + Ts))
    rows = np.broadcast_to(np.arange(j.shape[0])[:, None], j.shape)
    out_il[rows[valid], j[valid]] = il[valid]
    out_vc[rows[valid], j[valid]] = vc[valid]
    out_vout[rows[valid], j[valid]] = vout[valid]


def _initial_state(x0: Any) -> np.ndarray:
    if x0 is None:
        return np.zeros(2)
    array = np.asarray(x0, dtype=float)
    if array.shape[-1:] != (2,) or array.ndim > 2:
        raise ValueError(f"x0 must be (il, vc) or an array of shape (lanes, 2), got shape "
                         f"{array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("x0 must be finite")
    return array


def _lanes(params: BoostParams, *extra: Any) -> tuple[dict[str, np.ndarray], int, bool]:
    """Broadcast parameters and other per-lane inputs; returns (lane arrays, n, all scalar)."""
    if not isinstance(params, BoostParams):
        raise TypeError(f"params must be a BoostParams, got {type(params).__name__}")
    own = {k: getattr(params, k) for k in params.field_names()}
    named = {**own, **{f"_extra{i}": np.asarray(v) for i, v in enumerate(extra)}}
    for key, value in named.items():
        if np.ndim(value) > 1:
            raise ValueError(f"{key.lstrip('_')}: per-lane values must be 1-D, got shape "
                             f"{np.shape(value)}")
    n, arrays = broadcast_lanes(**named)
    scalar = all(np.ndim(v) == 0 for v in named.values())
    lanes = {k: np.ascontiguousarray(arrays[k]) for k in own}
    return lanes, n, scalar


def _check_duty(duty: np.ndarray, what: str) -> np.ndarray:
    bad = ~np.isfinite(duty) | (duty < 0) | (duty >= 1)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        where = f" (lane {i})" if duty.size > 1 else ""
        raise ValueError(f"{what} must be in [0, 1), got {float(duty[i])!r}{where}")
    return duty


def _check_schedule(schedule: np.ndarray, n: int, n_periods: int) -> np.ndarray:
    if schedule.shape[1] not in (1, n):
        raise ValueError(f"duty schedule has {schedule.shape[1]} columns for {n} lanes")
    if schedule.shape[0] < n_periods:
        raise ValueError(f"duty schedule has {schedule.shape[0]} periods but the simulation "
                         f"needs {n_periods}")
    full = np.broadcast_to(schedule[:n_periods], (n_periods, n)).astype(float)
    bad = ~np.isfinite(full) | (full < 0) | (full >= 1)
    if np.any(bad):
        k, i = np.argwhere(bad)[0]
        raise ValueError(f"duty schedule must be in [0, 1), got {full[k, i]!r} at period {k}, "
                         f"lane {i}")
    return full
