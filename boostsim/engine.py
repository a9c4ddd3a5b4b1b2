"""Exact switching periods of the boost converter, vectorised over lanes: the stepper.

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
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from . import segments as sg
from .params import parse_field

__all__ = ["Period", "PeriodView", "Segment", "Step", "Stepper", "sample_segments"]

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
        self._views = list(self.tables)  # stable objects: lets callers cache per table
        self._lane_index = np.arange(n)

    def subset(self, idx: np.ndarray) -> Conditions:
        sub = object.__new__(Conditions)
        sub.lanes = {k: v[idx] for k, v in self.lanes.items()}
        sub.times = self.times
        sub.tables = self.tables[:, :, idx]
        sub._views = list(sub.tables)
        sub._lane_index = np.arange(idx.size)
        return sub

    def epoch_at(self, t: np.ndarray) -> np.ndarray:
        """Number of steps at or before time t (per lane)."""
        return np.searchsorted(self.times, t, side="right")

    def table(self, epoch: np.ndarray) -> np.ndarray:
        """Coefficient table (rows, n) for each lane's epoch."""
        if self.times.size == 0:
            return self._views[0]
        first = epoch[0]
        if (epoch == first).all():
            return self._views[first]
        return self.tables[epoch, :, self._lane_index].T


def _step_value(step: Step, name: str, value: Any, current: np.ndarray, n: int) -> np.ndarray:
    if value is None:
        return current
    try:
        checked = parse_field(name, value)
    except ValueError as exc:
        raise ValueError(f"Step at t={step.t:g} s: {exc}") from None
    array = np.asarray(checked, dtype=float)
    if array.ndim == 1 and array.size not in (1, n):
        raise ValueError(f"Step at t={step.t:g} s: {name} has {array.size} values for {n} lanes")
    return np.broadcast_to(array, (n,)).astype(float)


class Stepper:
    """Advances all lanes through one switching period at a time."""

    def __init__(self, lanes: dict[str, np.ndarray], steps: Sequence[Step] = ()):
        self.lanes = lanes
        self.n = lanes["L"].size
        self.Ts = 1.0 / lanes["fsw"]
        self.steps = tuple(steps)
        self.conditions = Conditions(lanes, steps)
        self.sync = lanes["synchronous"].astype(bool)
        self.any_sync = bool(self.sync.any())
        self._on_cache: tuple | None = None

    def _on_map(self, c: np.ndarray, duty: np.ndarray, t_on: np.ndarray, il: np.ndarray,
                vc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The whole on-time as an affine map, cached while the duty and conditions repeat."""
        cached = self._on_cache
        if (cached is None or cached[0] is not c or cached[1].shape != duty.shape
                or not (cached[1] == duty).all()):
            zero = np.zeros(self.n)
            b_i, b_v = sg.on_state(c, zero, zero, t_on)
            a_i, a_v = np.exp(-c[sg.K_ON] * t_on), np.exp(-c[sg.M] * t_on)
            cached = self._on_cache = (c, duty.copy(), a_i, b_i, a_v, b_v)
        _, _, a_i, b_i, a_v, b_v = cached
        return a_i * il + b_i, a_v * vc + b_v

    def has_steps_between(self, t_from: np.ndarray, t_to: np.ndarray) -> bool:
        """True if a line/load step falls in (t_from, t_to] for any lane."""
        times = self.conditions.times
        if times.size == 0:
            return False
        return bool(np.any((times[:, None] > t_from) & (times[:, None] <= t_to)))

    def subset(self, idx: np.ndarray) -> Stepper:
        """A stepper for the lanes ``idx`` only (same conditions)."""
        if idx.size == self.n:
            return self
        sub = object.__new__(Stepper)
        sub.lanes = {k: v[idx] for k, v in self.lanes.items()}
        sub.n = idx.size
        sub.Ts = self.Ts[idx]
        sub.sync = self.sync[idx]
        sub.any_sync = bool(sub.sync.any())
        sub._on_cache = None
        sub.steps = self.steps
        sub.conditions = self.conditions.subset(idx)
        return sub

    def period(self, k: int | np.ndarray, il: np.ndarray, vc: np.ndarray, duty: np.ndarray,
               jacobian: bool = False) -> Period:
        """Simulate period ``k`` (starting at ``k * Ts``; ``k`` may differ per lane) from state
        (il, vc) with ``duty``."""
        n, Ts = self.n, self.Ts
        t0 = k * Ts
        cond = self.conditions
        stepped = cond.times.size > 0
        epoch = cond.epoch_at(t0) if stepped else None
        breaks = self._breaks(t0) if stepped else None
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
            if breaks is None:
                il, vc = self._on_map(c, duty, dur, il, vc)
            else:
                il, vc = sg.on_state(c, il, vc, dur)
            tau = end
            epoch = advance_epoch()
            if breaks is None or (tau >= t_edge).all():
                break

        # Switch off: the diode conducts while its current is positive.
        c = cond.table(epoch)
        conducting = self.sync | (il > 0) | ((il == 0) & (vc < c[sg.V_TH]))
        topology = np.where(conducting, sg.DIODE, sg.IDLE).astype(np.int8)
        t_diode = np.zeros(n)
        t_idle = np.zeros(n)
        while (tau < Ts).any():
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
            il, vc = il_new, vc_new
            if is_diode.all() and not hit.any():
                t_diode += seg_dur
                tau = end
            else:
                t_diode += np.where(is_diode, seg_dur, 0.0)
                t_idle += np.where(is_diode, 0.0, seg_dur)
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
        all_diode = bool(diode.all())
        if not diode.any():
            # Every lane idle (DCM rest): only the re-conduction time matters.
            t_event = sg.idle_reconduction_time(c, vc)
            step = np.minimum(t_event, dur)
            return np.zeros(self.n), sg.decay(c[sg.M], -c[sg.W], vc, step), t_event
        t_event = np.full(self.n, np.inf)
        il_d, vc_d = sg.diode_state(c, il, vc, dur)
        if not all_diode:
            t_event = np.where(diode, t_event, sg.idle_reconduction_time(c, vc))
        # Diode turn-off: the current ends negative, or dips below zero inside the segment
        # (possible only if it falls at the start and rises at the end, or rings).
        # A slope within rounding of zero (re-conduction starts exactly at the threshold, where
        # the current rises quadratically) is not falling.
        slope0 = sg.diode_derivative(c, il, vc)
        falling0 = slope0 < -1e-12 * (np.abs(c[sg.A12] * vc) + np.abs(c[sg.B1]))
        rising1 = sg.diode_derivative(c, il_d, vc_d) > 0
        short = dur < c[sg.HALF_RING]
        candidate = (il_d < 0) | (falling0 & rising1) | ~short
        if not all_diode:
            candidate &= diode
        if self.any_sync:
            candidate &= ~self.sync
        if candidate.any():
            idx = np.flatnonzero(candidate)
            monotonic = falling0[idx] & ~rising1[idx] & short[idx]
            t_zero, vc_zero = sg.diode_zero_time(c[:, idx], il[idx], vc[idx], dur[idx],
                                                 il_d[idx], monotonic)
            t_event[idx] = t_zero
            hit = t_event < dur
        else:
            hit = np.zeros(self.n, dtype=bool) if all_diode else t_event < dur
        if all_diode:
            il_out, vc_out = il_d, vc_d
        else:
            step = np.where(hit, t_event, dur)
            il_out = np.where(diode, il_d, 0.0)
            vc_out = np.where(diode, vc_d, sg.decay(c[sg.M], -c[sg.W], vc, step))
        if candidate.any():
            turned_off = np.isfinite(t_zero)
            if turned_off.any():
                vc_out = vc_out.copy()
                il_out = il_out.copy()
                vc_out[idx[turned_off]] = vc_zero[turned_off]
                il_out[idx[turned_off]] = 0.0
        return il_out, vc_out, t_event


# -- sampling segments ---------------------------------------------------------------------------

def sample_segments(segments: Sequence[Segment], tau: np.ndarray, snap: Any = 0.0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """State and output at offsets ``tau`` (n, m) or (1, m) inside one period: (il, vc, vout)
    of shape (n, m).

    A sample on a switching instant (to within ``snap`` seconds, per lane: the rounding of the
    sample time) takes the value just after it.
    """
    first_seg = segments[0]
    n = first_seg.il0.size
    shape = (n, tau.shape[1])
    snap = np.asarray(snap, dtype=float)
    snap = snap[:, None] if snap.ndim else snap
    if shape[1] == 1 and (np.abs(tau) <= snap).all() and (first_seg.duration > 0).all():
        # Samples on the period start: the state there, output of the first segment.
        il, vc = first_seg.il0[:, None], first_seg.vc0[:, None]
        return il, vc, sg.vout_of(first_seg.coef[:, :, None], first_seg.topology[:, None],
                                  il, vc)
    index = np.zeros(shape, dtype=np.int64)
    for i, seg in enumerate(segments[1:], start=1):
        after = (tau >= seg.start[:, None] - snap) & (seg.duration[:, None] > 0)
        if after.any():
            index[after] = i
    tau = np.broadcast_to(tau, shape)
    il = np.empty(shape)
    vc = np.empty(shape)
    vout = np.empty(shape)
    for i, seg in enumerate(segments):
        mask = index == i
        if mask.all():
            c = seg.coef[:, :, None]
            topo = seg.topology[:, None]
            il, vc = sg.state_at(c, topo, seg.il0[:, None], seg.vc0[:, None],
                                 tau - seg.start[:, None])
            return il, vc, sg.vout_of(c, topo, il, vc)
        if not mask.any():
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
