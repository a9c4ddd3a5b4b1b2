"""Metrics of simulated waveforms: averages, ripple, powers and a loss breakdown.

Everything is computed from the exact segment solutions, not from sampled waveforms:

* averages and energies are integrals over each linear segment by Gauss-Legendre quadrature on
  the closed-form solution (the integrands are sums of exponentials; with the segment split so
  that |eigenvalue| * length <= 1, 8 nodes leave an error below 1e-16 relative);
* extrema (for peak-to-peak ripple) are the segment end values and the interior critical points,
  which are known in closed form (:func:`boostsim.segments.critical_times`).

Conduction losses are the resistive and forward-drop losses of the circuit model; the switching
loss is an estimate from the switch-node transition times (``t_rise``, ``t_fall``) with the
linear-overlap approximation ``E = V I t / 2`` per transition (Erickson & Maksimovic,
*Fundamentals of Power Electronics*, 3rd ed., sec. 4.3.1), reported separately because the
waveform model has instantaneous transitions.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import segments as sg
from .engine import Period, Segment, Stepper
from .memory import SAMPLE_WORK_BYTES, check_memory

__all__ = ["LOSS_NAMES", "SETTLED_TOLERANCE", "Metrics", "StepMetrics", "period_means",
           "period_metrics", "step_response", "window_metrics"]

#: Keys of ``Metrics.losses`` [W].
LOSS_NAMES = ("inductor_dcr", "switch_conduction", "diode_forward", "diode_resistance",
              "capacitor_esr")

#: A window is "settled" when its stored energy (1/2 L iL^2 + 1/2 C vC^2) changes by at most
#: this fraction of the power flowing through the converter (pout + conduction losses): then
#: ``pout / pin`` and the loss-based efficiency agree to this fraction.
SETTLED_TOLERANCE = 0.01

_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)


@dataclasses.dataclass
class Metrics:
    """Operating-point figures over whole periods (per lane; floats for a scalar batch).

    Means are time averages, ripples peak-to-peak. Powers in watts: ``pin = vin * mean(iL)``
    (the converter's input power), ``pout`` delivered to R and i_load, ``losses`` the
    conduction loss breakdown. ``stored_power`` is the mean rate of change of the stored energy
    ``E = L iL^2/2 + C vC^2/2`` over the window [W], so ``pin = pout + p_loss + stored_power``
    at any time (``energy_balance``, the relative residual, closes to rounding).

    ``efficiency = pout / (pout + p_loss)`` (= ``pout / (pin - stored_power)``): the share of
    the energy leaving the circuit that reaches the load. It equals ``pout / pin`` in the
    steady state and never exceeds 1, also in a window that has not settled, where ``pout /
    pin`` would count energy drawn from (or put into) L and C. ``settled`` is False when
    ``|stored_power|`` exceeds :data:`SETTLED_TOLERANCE` of ``pout + p_loss``: the figures then
    describe a transient, not an operating point. ``p_switching`` is the switching loss
    estimate and ``efficiency_total = pout / (pout + p_loss + p_switching)``.
    """

    vout_mean: np.ndarray
    vout_ripple: np.ndarray
    vout_min: np.ndarray
    vout_max: np.ndarray
    vc_mean: np.ndarray
    il_mean: np.ndarray
    il_ripple: np.ndarray
    il_min: np.ndarray
    il_max: np.ndarray
    il_rms: np.ndarray
    pin: np.ndarray
    pout: np.ndarray
    efficiency: np.ndarray
    losses: dict[str, np.ndarray]
    p_loss: np.ndarray
    p_switching: np.ndarray
    efficiency_total: np.ndarray
    energy_balance: np.ndarray
    stored_power: np.ndarray
    settled: np.ndarray
    duty: np.ndarray
    t_on: np.ndarray
    t_diode: np.ndarray
    t_idle: np.ndarray
    mode: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        """Flat mapping of every figure (losses as ``loss_<name>``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "losses"}
        out.update({f"loss_{k}": v for k, v in self.losses.items()})
        return out


class _Accumulator:
    """Sums integrals and tracks extrema over the segments of one or more periods."""

    def __init__(self, lanes: dict[str, np.ndarray]):
        n = lanes["L"].size
        self.lanes = lanes
        self.time = np.zeros(n)
        self.sums = {k: np.zeros(n) for k in _INTEGRALS}
        self.il_min = np.full(n, np.inf)
        self.il_max = np.full(n, -np.inf)
        self.vout_min = np.full(n, np.inf)
        self.vout_max = np.full(n, -np.inf)
        self.switching_energy = np.zeros(n)
        self.t_on = np.zeros(n)
        self.t_diode = np.zeros(n)
        self.t_idle = np.zeros(n)
        self.periods = 0

    def add(self, period: Period, duty: np.ndarray) -> None:
        for seg in period.segments:
            self._integrate(seg)
            self._extrema(seg)
        self._switching(period.segments, duty)
        self.t_on += sum(seg.duration for seg in period.segments if np.all(seg.topology == sg.ON))
        self.t_diode += period.t_diode
        self.t_idle += period.t_idle
        self.periods += 1

    def _integrate(self, seg: Segment) -> None:
        c, topo = seg.coef, seg.topology
        il, vc, vout, weights = _quadrature(seg)
        cc, topo2 = c[:, :, None], topo[:, None]
        ic = sg.capacitor_current(cc, topo2, il, vc)
        il_int = np.sum(il * weights, axis=1)
        il2_int = np.sum(il * il * weights, axis=1)
        on, diode = topo == sg.ON, topo == sg.DIODE
        add = self.sums
        add["il"] += il_int
        add["il2"] += il2_int
        add["vout"] += np.sum(vout * weights, axis=1)
        add["vc"] += np.sum(vc * weights, axis=1)
        add["pin"] += c[sg.VIN] * il_int
        add["pout"] += np.sum(vout * (cc[sg.G] * vout + cc[sg.I_LOAD]) * weights, axis=1)
        add["inductor_dcr"] += c[sg.R_L] * il2_int
        add["switch_conduction"] += np.where(on, c[sg.R_ON] * il2_int, 0.0)
        add["diode_forward"] += np.where(diode, c[sg.V_FX] * il_int, 0.0)
        add["diode_resistance"] += np.where(diode, c[sg.R_X] * il2_int, 0.0)
        add["capacitor_esr"] += c[sg.R_C] * np.sum(ic * ic * weights, axis=1)
        self.time += seg.duration

    def _extrema(self, seg: Segment) -> None:
        c, topo, dur = seg.coef, seg.topology, seg.duration
        il1, vc1 = sg.state_at(c, topo, seg.il0, seg.vc0, dur)
        il_values = [seg.il0, il1]
        vout_values = [sg.vout_of(c, topo, seg.il0, seg.vc0), sg.vout_of(c, topo, il1, vc1)]
        interior = np.flatnonzero((topo == sg.DIODE) & (dur > 0))
        if interior.size:
            # ON and IDLE pieces are first-order (monotonic); DIODE pieces may peak inside.
            il_crit, vout_crit = _diode_extrema(c[:, interior], seg.il0[interior],
                                                seg.vc0[interior], dur[interior])
            for values, crit in ((il_values, il_crit), (vout_values, vout_crit)):
                padded = np.full((dur.size, crit.shape[1]), np.nan)
                padded[interior] = crit
                values.extend(padded.T)
        live = dur > 0
        for values, lo, hi in ((il_values, "il_min", "il_max"),
                               (vout_values, "vout_min", "vout_max")):
            stack = np.array(values)
            stack_lo = np.where(live & ~np.isnan(stack), stack, np.inf).min(axis=0)
            stack_hi = np.where(live & ~np.isnan(stack), stack, -np.inf).max(axis=0)
            setattr(self, lo, np.minimum(getattr(self, lo), stack_lo))
            setattr(self, hi, np.maximum(getattr(self, hi), stack_hi))

    def _switching(self, segments: list[Segment], duty: np.ndarray) -> None:
        """Linear-overlap switching energy of the period's turn-on and turn-off [J]."""
        turn_on = segments[0]
        turn_off = next(seg for seg in segments if not np.all(seg.topology == sg.ON))
        diode = np.full(duty.size, sg.DIODE)

        def blocking(seg: Segment) -> np.ndarray:
            return sg.vout_of(seg.coef, diode, seg.il0, seg.vc0) + seg.coef[sg.V_FX]

        energy = 0.5 * (blocking(turn_on) * np.maximum(turn_on.il0, 0.0) * self.lanes["t_fall"]
                        + blocking(turn_off) * np.maximum(turn_off.il0, 0.0)
                        * self.lanes["t_rise"])
        self.switching_energy += np.where(duty > 0, energy, 0.0)

    def metrics(self, duty: np.ndarray, energy_change: np.ndarray, scalar: bool) -> Metrics:
        T = self.time
        s = self.sums
        losses = {k: s[k] / T for k in LOSS_NAMES}
        p_loss = sum(losses.values())
        pin, pout = s["pin"] / T, s["pout"] / T
        p_sw = self.switching_energy / T
        stored = energy_change / T
        throughput = pout + p_loss
        with np.errstate(invalid="ignore", divide="ignore"):
            efficiency = pout / throughput
            efficiency_total = pout / (throughput + p_sw)
            balance = (pin - pout - p_loss - stored) / np.abs(pin)
        settled = np.abs(stored) <= SETTLED_TOLERANCE * np.abs(throughput)
        n = self.periods
        values = dict(
            vout_mean=s["vout"] / T, vout_ripple=self.vout_max - self.vout_min,
            vout_min=self.vout_min, vout_max=self.vout_max, vc_mean=s["vc"] / T,
            il_mean=s["il"] / T, il_ripple=self.il_max - self.il_min, il_min=self.il_min,
            il_max=self.il_max, il_rms=np.sqrt(s["il2"] / T), pin=pin, pout=pout,
            efficiency=efficiency, p_loss=p_loss, p_switching=p_sw,
            efficiency_total=efficiency_total, energy_balance=balance, stored_power=stored,
            settled=settled, duty=duty,
            t_on=self.t_on / n, t_diode=self.t_diode / n, t_idle=self.t_idle / n,
            mode=np.where(self.t_idle > 0, "DCM", "CCM"))
        if scalar:
            values = {k: v[0].item() for k, v in values.items()}
            losses = {k: v[0].item() for k, v in losses.items()}
        return Metrics(losses=losses, **values)


_INTEGRALS = ("il", "il2", "vout", "vc", "pin", "pout", *LOSS_NAMES)


def _quadrature(seg: Segment) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """iL, vC, vout at Gauss-Legendre nodes of each lane's segment, and the node weights [s].

    The segment is split so that |eigenvalue| * piece <= 1, where 8 nodes integrate the
    segment's sums of exponentials (and their squares) to rounding.
    """
    c, topo, dur = seg.coef, seg.topology, seg.duration
    rate = np.where(topo == sg.DIODE, np.abs(c[sg.S]) + c[sg.ROOT],
                    np.maximum(c[sg.K_ON], c[sg.M]))
    pieces = max(1, int(np.ceil(np.max(rate * dur, initial=0.0))))
    if pieces > 1:  # one piece costs what the segment itself does: checked by the caller
        check_memory(dur.size * pieces * _GL_X.size * SAMPLE_WORK_BYTES, "the exact averages",
                     f"the fastest time constant needs {pieces} quadrature pieces per "
                     f"segment; pass fewer lanes per call",
                     per_lane=pieces * _GL_X.size * SAMPLE_WORK_BYTES)
    nodes = ((np.arange(pieces)[:, None] + 0.5 * (_GL_X[None, :] + 1.0)) / pieces).ravel()
    weights = dur[:, None] * (np.tile(_GL_W, pieces) * 0.5 / pieces)[None, :]
    cc, topo2 = c[:, :, None], topo[:, None]
    il, vc = sg.state_at(cc, topo2, seg.il0[:, None], seg.vc0[:, None],
                         dur[:, None] * nodes[None, :])
    return il, vc, sg.vout_of(cc, topo2, il, vc), weights


def period_means(stepper: Stepper, records, *, batch: int = 50_000) -> dict[str, np.ndarray]:
    """Exact time averages of iL, vC and vout over every recorded period, shape (lanes,
    periods), re-stepped from the records.

    Every period starts from its recorded state, so the periods are independent: they are
    re-stepped together, ``batch`` lane-periods at a time, as lanes of one larger stepper.
    """
    n, n_periods = records.duty.shape
    out = {name: np.empty((n, n_periods)) for name in ("il", "vc", "vout")}
    per_lane_steps = any(np.ndim(getattr(step, name)) > 0 for step in stepper.steps
                         for name in ("vin", "R", "i_load"))
    if per_lane_steps:
        # Step values differ per lane: they cannot be repeated along a period axis.
        for k in range(n_periods):
            sums = _period_sums(stepper, k, records.il_start[:, k], records.vc_start[:, k],
                                records.duty[:, k])
            for name, value in zip(("il", "vc", "vout"), sums, strict=True):
                out[name][:, k] = value
        return out
    chunk = max(1, batch // n)
    for first in range(0, n_periods, chunk):
        ks = np.arange(first, min(n_periods, first + chunk))
        lanes = {name: np.repeat(value, ks.size) for name, value in stepper.lanes.items()}
        wide = Stepper(lanes, stepper.steps)
        sums = _period_sums(wide, np.tile(ks, n), records.il_start[:, ks].ravel(),
                            records.vc_start[:, ks].ravel(), records.duty[:, ks].ravel())
        for name, value in zip(("il", "vc", "vout"), sums, strict=True):
            out[name][:, ks] = value.reshape(n, ks.size)
    return out


def _period_sums(stepper: Stepper, k, il0, vc0, duty) -> np.ndarray:
    """Means of iL, vC, vout over one period per lane (rows of a (3, n) array)."""
    period = stepper.period(k, il0, vc0, duty)
    sums = np.zeros((3, il0.size))
    for seg in period.segments:
        il, vc, vout, weights = _quadrature(seg)
        sums += [np.sum(il * weights, axis=1), np.sum(vc * weights, axis=1),
                 np.sum(vout * weights, axis=1)]
    return sums / stepper.Ts


def _diode_extrema(c: np.ndarray, il0: np.ndarray, vc0: np.ndarray, dur: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Values of iL and vout at their interior critical points in DIODE segments (NaN pads)."""
    d1 = il0 - c[sg.IL_EQ]
    d2 = vc0 - c[sg.VC_EQ]
    # y = A d and (A - sI) y: the derivative of any output row w is e^{st}[C w.y + S w.(N y)].
    y1 = c[sg.A11] * d1 + c[sg.A12] * d2
    y2 = c[sg.A21] * d1 + (c[sg.S] - c[sg.N11]) * d2
    ny1 = c[sg.N11] * y1 + c[sg.A12] * y2
    ny2 = c[sg.A21] * y1 - c[sg.N11] * y2
    a, r_C = c[sg.A_OUT], c[sg.R_C]
    results = []
    for p, r, want_vout in ((y1, ny1, False), (a * (r_C * y1 + y2), a * (r_C * ny1 + ny2), True)):
        times = sg.critical_times(c, p, r, dur)
        k = times.shape[1]
        ck = np.repeat(c, k, axis=1)
        il, vc = sg.diode_state(ck, np.repeat(il0, k), np.repeat(vc0, k),
                                np.nan_to_num(times.ravel()))
        value = sg.vout_of(ck, np.full(il.size, sg.DIODE), il, vc) if want_vout else il
        results.append(np.where(np.isnan(times), np.nan, value.reshape(times.shape)))
    return results[0], results[1]


def window_metrics(stepper: Stepper, records, periods: range, *, scalar: bool) -> Metrics:
    """Metrics over the given whole periods of a simulation, re-stepped from its records."""
    acc = _Accumulator(stepper.lanes)
    for k in periods:
        duty = records.duty[:, k]
        period = stepper.period(k, records.il_start[:, k], records.vc_start[:, k], duty)
        acc.add(period, duty)
    first, last = periods[0], periods[-1]
    il_a, vc_a = records.il_start[:, first], records.vc_start[:, first]
    il_b, vc_b = period.il_end, period.vc_end
    lanes = stepper.lanes
    energy_change = 0.5 * lanes["L"] * (il_b**2 - il_a**2) + 0.5 * lanes["C"] * (vc_b**2 - vc_a**2)
    duty_mean = records.duty[:, first:last + 1].mean(axis=1)
    return acc.metrics(duty_mean, energy_change, scalar)


def period_metrics(stepper: Stepper, period: Period, duty: np.ndarray, *, scalar: bool,
                   il0: np.ndarray, vc0: np.ndarray) -> Metrics:
    """Metrics of a single simulated period that started from (il0, vc0)."""
    acc = _Accumulator(stepper.lanes)
    acc.add(period, duty)
    lanes = stepper.lanes
    energy_change = (0.5 * lanes["L"] * (period.il_end**2 - il0**2)
                     + 0.5 * lanes["C"] * (period.vc_end**2 - vc0**2))
    return acc.metrics(duty, energy_change, scalar)


@dataclasses.dataclass
class StepMetrics:
    """Step-response figures (per lane; floats for one lane). Times in seconds after the step,
    overshoot/undershoot in percent of the step size (of the final value for a disturbance
    response, where the output should not move)."""

    initial: np.ndarray  # [V] level before the step
    final: np.ndarray  # [V] settled level (mean of the last tenth)
    rise_time: np.ndarray  # 10 % -> 90 % of the transition (NaN for a disturbance response)
    overshoot: np.ndarray  # [%] beyond the final value in the step direction
    undershoot: np.ndarray  # [%] against the step direction (e.g. the RHP-zero dip)
    deviation: np.ndarray  # [V] largest |y - final| after the step
    settling_time: np.ndarray  # last exit from the band around the final value
    steady_state_error: np.ndarray  # [V] reference - final (NaN without a reference)
    saturated_time: np.ndarray  # [s] duty at a limit (NaN without a duty record)


def step_response(t: np.ndarray, y: np.ndarray, t_step: float, *, reference: float | None = None,
                  band: float = 0.02, duty: np.ndarray | None = None,
                  duty_limits: tuple[float, float] | None = None,
                  kind: str = "auto") -> StepMetrics:
    """Rise time, overshoot/undershoot, ``band`` settling time, steady-state error and time in
    duty saturation of a response ``y`` (shape (n_t,) or (lanes, n_t)) to a step at ``t_step``.

    Pass a smooth signal (e.g. per-period means from ``SimulationResult.period_means``): the
    switching ripple is not part of a step response. The band is ``band`` times the step size,
    or times the final value when the step hardly moves the output (load or line steps under
    closed-loop regulation). ``kind`` says which: "reference" (a setpoint step: figures relative
    to the step size however small), "disturbance" (relative to the final value), or "auto"
    (disturbance when the output moves less than ``band`` of its final value). ``duty`` (same
    time axis) with ``duty_limits`` gives the time spent in saturation after the step.
    """
    if kind not in ("auto", "reference", "disturbance"):
        raise ValueError(f"kind must be 'auto', 'reference' or 'disturbance', got {kind!r}")
    t = np.asarray(t, dtype=float)
    y2 = np.atleast_2d(np.asarray(y, dtype=float))
    if t.ndim != 1 or y2.shape[-1] != t.size:
        raise ValueError(f"t has {t.size} samples but y has shape {np.shape(y)}")
    before = t < t_step
    after = t >= t_step
    if not before.any() or after.sum() < 10:
        raise ValueError("t_step must leave samples before it and at least 10 after it")
    initial = y2[:, before][:, -max(1, before.sum() // 10):].mean(axis=1)
    ya = y2[:, after]
    ta = t[after] - t_step
    tail = max(1, ya.shape[1] // 10)
    final = ya[:, -tail:].mean(axis=1)
    delta = final - initial
    size = np.abs(delta)
    if kind == "auto":
        disturbance = size < band * np.abs(final)
    else:
        disturbance = np.full(final.shape, kind == "disturbance")
    if np.any(~disturbance & (size == 0)):
        raise ValueError("a reference step needs the output to move (final == initial)")
    scale = np.where(disturbance, np.abs(final), size)
    direction = np.where(delta >= 0, 1.0, -1.0)
    excess = (ya - final[:, None]) * direction[:, None]
    overshoot = np.maximum(excess.max(axis=1), 0.0) / scale * 100
    undershoot = np.maximum((-(ya - initial[:, None]) * direction[:, None]).max(axis=1),
                            0.0) / scale * 100
    deviation = np.abs(ya - final[:, None]).max(axis=1)
    outside = np.abs(ya - final[:, None]) > band * scale[:, None]
    last_out = np.where(outside.any(axis=1),
                        ya.shape[1] - 1 - np.argmax(outside[:, ::-1], axis=1), -1)
    settling = np.where(last_out < 0, 0.0, ta[np.minimum(last_out + 1, ta.size - 1)])
    progress = (ya - initial[:, None]) / np.where(size > 0, delta, 1.0)[:, None]
    t10 = ta[np.argmax(progress >= 0.1, axis=1)]
    t90 = ta[np.argmax(progress >= 0.9, axis=1)]
    reached = (progress >= 0.9).any(axis=1)
    rise = np.where(disturbance | ~reached, np.nan, t90 - t10)
    error = (np.full(final.shape, np.nan) if reference is None
             else np.asarray(reference, dtype=float) - final)
    if duty is not None and duty_limits is not None:
        d = np.atleast_2d(np.asarray(duty, dtype=float))[:, after]
        lo, hi = duty_limits
        at_limit = (d <= lo + 1e-12) | (d >= hi - 1e-12)
        dt = np.diff(t[after], append=t[after][-1])
        saturated = (at_limit * dt).sum(axis=1)
    else:
        saturated = np.full(final.shape, np.nan)
    values = dict(initial=initial, final=final, rise_time=rise, overshoot=overshoot,
                  undershoot=undershoot, deviation=deviation, settling_time=settling,
                  steady_state_error=error, saturated_time=saturated)
    if np.ndim(y) == 1:
        values = {k: float(v[0]) for k, v in values.items()}
    return StepMetrics(**values)
