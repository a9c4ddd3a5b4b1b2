"""The switching engine, the board's ADC, the PID and the PWM as one compiled per-period kernel.

The numba twin of :mod:`boostsim.engine` (the numpy reference), :mod:`boostsim.pid` and
:class:`boostsim.control.DigitalController`, one lane at a time: each small function mirrors
its numpy counterpart formula by formula (same operations in the same order, so the two paths
agree to rounding), and :func:`run_lanes` loops over lanes and periods. It is imported lazily by
:mod:`boostsim.fastloop`, which prepares the arrays; everything here works in SI units.
Compiled with ``cache=True`` (no fastmath): later processes load the machine code from disk.

Speed: a period without a step in it runs on affine maps cached per lane and duty
(:func:`period_maps`; plainly continuous conduction is :func:`ccm_period`, a few multiply-adds),
and the functions that allocate nothing are compiled without reference counting (``_PURE``).
Periods with a step, in DCM or at a new duty take the full :func:`period`.
"""

from __future__ import annotations

import numpy as np
from numba import prange
from numba.core import cgutils, types
from numba.extending import intrinsic

from . import lanenoise as ln
from . import segments as sg
from .jitcache import njit
from .rp2040 import DUTY_U16_MAX as U16

_JIT = dict(cache=True, error_model="numpy")
# Functions that allocate nothing are compiled without numba's reference counting (its
# ``_nrt`` flag): otherwise every call increments and decrements each array argument's count
# atomically -- most of a period's time, and the cores contend for the shared arrays' counts.
_PURE = dict(_JIT, _nrt=False)

ON, DIODE, IDLE = sg.ON, sg.DIODE, sg.IDLE
(K_ON, U_ON, M, W, A_OUT, A11, A12, A21, B1, S, Q2, N11, IL_EQ, VC_EQ, V_TH, SYNC, VIN, G, R_C,
 I_LOAD, HALF_RING, ROOT) = (sg.K_ON, sg.U_ON, sg.M, sg.W, sg.A_OUT, sg.A11, sg.A12, sg.A21, sg.B1,
                             sg.S, sg.Q2, sg.N11, sg.IL_EQ, sg.VC_EQ, sg.V_TH, sg.SYNC, sg.VIN,
                             sg.G, sg.R_C, sg.I_LOAD, sg.HALF_RING, sg.ROOT)

MAX_SEGMENTS = 64  # as engine._MAX_SEGMENTS_PER_PERIOD
SEG_TOPO, SEG_START, SEG_DUR, SEG_IL, SEG_VC, SEG_EPOCH = range(6)

# PID parameter rows (per lane) and state rows; see boostsim.pid for the law.
P_KP, P_KI_TS, P_KT_TS, P_D_A, P_D_B, P_MIN, P_MAX, P_RAMP = range(8)
N_PID_PAR = 8
(S_INTEGRAL, S_DERIV, S_Y_PREV, S_HAS_Y, S_SP, S_HAS_SP, S_UNCLAMPED, S_OUTPUT,
 S_INTEGRAL_ERROR) = range(9)
N_PID_STATE = 9

# ADC settings (one float array): how the sample instant is chosen, divider, conversion.
(A_IMMEDIATE, A_MID_ON, A_FRACTION, A_DIVIDER, A_FACTOR, A_OFFSET, A_TOP, A_VOLTS_PER_CODE,
 A_NOISE) = range(9)
N_ADC = 9

# Per-period record rows, as the numpy recorder's ("duty", "il_start", "vc_start", ...).
R_DUTY, R_IL, R_VC, R_DIODE, R_IDLE, R_T_START, R_T_ON = range(7)
N_REC = 7
# Control log rows (boostsim.control.ControlLog after period and t; the reading in volts is
# the code times the volts per code, computed when the log is read).
L_SETPOINT, L_CODE, L_INTEGRAL, L_COMMAND, L_DUTY = range(5)
N_LOG = 5


# -- segments (boostsim.segments) --------------------------------------------------------------

@njit(**_PURE)
def phi1(z):
    """(e^z - 1)/z, 1 at z = 0."""
    if z == 0.0:
        return 1.0
    return np.expm1(z) / z


@njit(**_PURE)
def decay(rate, drive, v0, tau):
    """Solution of v' = -rate v + drive from v0 after tau [s]."""
    return v0 + (drive - rate * v0) * tau * phi1(-rate * tau)


@njit(**_PURE)
def exp_coeffs(c, tau):
    """(e^{st} C(t), e^{st} S(t)) of the DIODE topology (segments.exp_coeffs)."""
    s, q2, root = c[S], c[Q2], c[ROOT]
    est = np.exp(s * tau)
    theta = root * tau
    if q2 < 0:
        return est * np.cos(theta), est * np.sin(theta) / root
    if q2 == 0:
        ec, es = 1.0, tau
    else:
        ec, es = np.cosh(theta), np.sinh(theta) / root
    ec = est * ec
    es = est * es
    if not np.isfinite(ec):
        e1 = np.exp((s + root) * tau)
        e2 = np.exp((s - root) * tau)
        ec = 0.5 * (e1 + e2)
        es = (e1 - e2) / (2 * root)
    return ec, es


# segments.diode_propagate itself, compiled: one implementation of the DIODE solution.
diode_propagate = njit(inline="always", **_PURE)(sg.diode_propagate)


@njit(**_PURE)
def diode_state(c, il0, vc0, tau):
    """State after tau in the DIODE topology (segments.diode_state, one lane)."""
    ec, es = exp_coeffs(c, tau)
    return diode_propagate(c, il0, vc0, ec, es)


@njit(**_PURE)
def on_state(c, il0, vc0, tau):
    """State after tau with the switch on."""
    return decay(c[K_ON], c[U_ON], il0, tau), decay(c[M], -c[W], vc0, tau)


@njit(**_PURE)
def state_at(c, topology, il0, vc0, tau):
    """State after tau in the given topology (IDLE: iL = 0, the ON capacitor equation)."""
    if topology == DIODE:
        return diode_state(c, il0, vc0, tau)
    il, vc = on_state(c, il0, vc0, tau)
    if topology == ON:
        return il, vc
    return 0.0, vc


@njit(inline="always", **_PURE)
def vout_of(c, topology, il, vc):
    conducting = il if topology == DIODE else 0.0
    return c[A_OUT] * (vc + c[R_C] * (conducting - c[I_LOAD]))


@njit(**_PURE)
def diode_derivative(c, il, vc):
    return c[A11] * il + c[A12] * vc + c[B1]


@njit(**_PURE)
def idle_reconduction_time(c, vc0, within):
    """Time until the diode conducts again from IDLE (0 at once, inf never), computed only if
    it may come within ``within`` [s]: else inf. The time is y times a stretch >= 1
    (segments.idle_reconduction_time), so y beyond ``within`` (with a margin for the stretch's
    rounding) puts it beyond too, without the logarithm."""
    m, w, v_th = c[M], c[W], c[V_TH]
    if vc0 <= v_th:
        return 0.0
    slope = m * vc0 + w
    y = (vc0 - v_th) / slope
    u = m * y
    if not (slope > 0 and u < 1.0) or y >= within * (1.0 + 1e-12):
        return np.inf
    stretch = 1.0 if u == 0.0 else -np.log1p(-u) / u
    return y * stretch


@njit(**_PURE)
def critical_times(c, p, r, dur, out):
    """Zeros in (0, dur) of e^{st}[C(t) p + S(t) r] written to ``out``; returns how many."""
    q2, root = c[Q2], c[ROOT]
    count = 0
    if q2 < 0:
        theta0 = np.arctan2(-p * root, r) % np.pi
        k_max = int((root * dur) // np.pi) + 2
        for k in range(k_max):
            t = (theta0 + np.pi * k) / root
            if 0 < t < dur and count < out.size:
                out[count] = t
                count += 1
        return count
    t = np.arctanh(-p * root / r) / root if q2 > 0 else -p / r
    if 0 < t < dur:
        out[0] = t
        count = 1
    return count


@njit(**_PURE)
def diode_zero_time(c, il0, vc0, dur, il_end, monotonic, work):
    """First time in (0, dur] at which the diode current falls to zero (inf if none) and the
    capacitor voltage then (segments.diode_zero_time, one lane)."""
    lo, hi, f_lo, f_hi = 0.0, dur, il0, il_end
    if monotonic:
        found = il_end <= 0.0
    else:
        d1 = il0 - c[IL_EQ]
        d2 = vc0 - c[VC_EQ]
        y1 = c[A11] * d1 + c[A12] * d2
        y2 = c[A21] * d1 + (c[S] - c[N11]) * d2
        count = critical_times(c, y1, c[N11] * y1 + c[A12] * y2, dur, work)
        crit = work  # ascending: critical_times finds them in order
        found = False
        was_positive = il0 > 0.0
        prev_t, prev_v = 0.0, il0
        for m in range(count + 1):
            t = crit[m] if m < count else dur
            v = diode_state(c, il0, vc0, t)[0]
            if v <= 0.0 and was_positive:
                lo, hi, f_lo, f_hi = prev_t, t, prev_v, v
                found = True
                break
            was_positive = was_positive or v > 0.0
            prev_t, prev_v = t, v
    if not found:
        return np.inf, np.nan
    a11, a12, a21, a22, b1 = c[A11], c[A12], c[A21], c[S] - c[N11], c[B1]
    t = lo + (hi - lo) * min(max(f_lo / (f_lo - f_hi), 0.0), 1.0)
    scale = max(hi, 2.2250738585072014e-308)
    il, vc, d_vc, moved = 0.0, 0.0, 0.0, 0.0
    for _ in range(40):
        il, vc = diode_state(c, il0, vc0, t)
        if il > 0.0:
            lo = t
        else:
            hi = t
        d_il = a11 * il + a12 * vc + b1
        d_vc = a21 * il + a22 * vc - c[W]
        dd_il = a11 * d_il + a12 * d_vc
        step = -2.0 * il * d_il / (2.0 * d_il * d_il - il * dd_il)
        t_new = t + step
        inside = lo <= t_new <= hi and np.isfinite(t_new)
        if not inside:
            t_new = 0.5 * (lo + hi)
        moved = t_new - t
        t = t_new
        if (inside and abs(moved) <= 1e-6 * scale) or hi - lo <= 1e-15 * scale:
            break
    return t, vc + d_vc * moved


@njit(**_PURE)
def off_segment(c, topology, sync, il, vc, dur, work):
    """Advance a DIODE or IDLE segment by up to dur: (il, vc, time of the ending event)."""
    if topology == IDLE:
        t_event = idle_reconduction_time(c, vc, dur)  # inf: not within dur
        return 0.0, decay(c[M], -c[W], vc, min(t_event, dur)), t_event
    il_d, vc_d = diode_state(c, il, vc, dur)
    return diode_segment_end(c, sync, il, vc, dur, il_d, vc_d, work)


@njit(**_PURE)
def diode_segment_end(c, sync, il, vc, dur, il_d, vc_d, work):
    """A DIODE segment from (il, vc) whose state after dur is (il_d, vc_d): where it ends, as
    :func:`off_segment` returns it (the diode turn-off found if the current reaches zero)."""
    slope0 = diode_derivative(c, il, vc)
    falling0 = slope0 < -1e-12 * (abs(c[A12] * vc) + abs(c[B1]))
    rising1 = diode_derivative(c, il_d, vc_d) > 0
    short = dur < c[HALF_RING]
    candidate = (il_d < 0) or (falling0 and rising1) or not short
    if candidate and not sync:
        monotonic = falling0 and not rising1 and short
        t_zero, vc_zero = diode_zero_time(c, il, vc, dur, il_d, monotonic, work)
        if np.isfinite(t_zero):
            return 0.0, vc_zero, t_zero
    return il_d, vc_d, np.inf


# -- cached propagators of a whole period -------------------------------------------------------
# A period without a line/load step in it is three affine maps fixed by the lane's parameters
# (its epoch's table row) and the duty: switch on over D Ts, the diode over Ts - D Ts, and the
# switch on over D Ts / 2 (the mid-on ADC sample). Under a PID the quantised duty takes a few
# values over and over, so each lane keeps them in a small direct-mapped table keyed by
# (duty, epoch): a continuous-conduction period is then a handful of multiply-adds.

CACHE_SLOTS = 32
# key, on map (4), half-on vc (2), off (6), compositions since computed from closed forms
C_DUTY, C_EPOCH, C_ON, C_HALF, C_OFF, C_DEPTH = 0, 1, 2, 6, 8, 14
N_CACHE = 15
# After the duty rows: one row of bookkeeping (the row filled last, the next step row to
# replace), then rows of maps over a small change of the on-time (key, epoch, on (2),
# half-on vc (2), off (6)): a new duty next to the last one is that duty's maps composed with
# these, a few multiply-adds instead of four transcendental functions. At most MAX_DEPTH
# compositions in a row (each adds a rounding), then the closed forms again.
META = CACHE_SLOTS
STEP_ROWS = 4
STEP0 = CACHE_SLOTS + 1
S_KEY, S_EPOCH, S_ON, S_HALF, S_OFF = 0, 1, 2, 4, 6
MAX_DEPTH = 8
MAX_STEP = 1.0 / 64  # largest on-time change composed, as a fraction of the period


@njit(**_JIT)
def new_cache():
    """An empty propagator table for one lane (every key NaN: no entry)."""
    cache = np.full((CACHE_SLOTS + 1 + STEP_ROWS, N_CACHE), np.nan)
    cache[META, 0], cache[META, 1] = -1.0, 0.0
    return cache


@njit(inline="always", **_PURE)
def cache_slot(duty):
    """The table row a duty lands in (adjacent PWM counts land in different rows)."""
    return int(duty * 16384.0) % CACHE_SLOTS


@njit(**_PURE)
def decay_map(rate, drive, h):
    """The map ``v' = a v + b`` of ``v' = -rate v + drive`` over h [s], as (a, b), from one
    expm1: ``a = e^{-rate h}``, ``b = decay(rate, drive, 0, h)`` (the same operations)."""
    z = -rate * h
    em = np.expm1(z)
    return 1.0 + em, drive * h * (em / z if z != 0.0 else 1.0)


@njit(**_PURE)
def fill_maps(row, c, epoch, duty, Ts):
    """Compute a cache row for this duty and epoch (table row ``c``) with the durations
    :func:`period` uses. The capacitor's map over the whole on-time is its map over the first
    half (the mid-on ADC sample) composed with itself: two exponentials fewer."""
    t_edge = duty * Ts
    row[C_ON], row[C_ON + 1] = decay_map(c[K_ON], c[U_ON], t_edge)
    a, b = decay_map(c[M], -c[W], 0.5 * t_edge)
    row[C_HALF], row[C_HALF + 1] = a, b
    row[C_ON + 2], row[C_ON + 3] = a * a, a * b + b
    step_map(c, DIODE, Ts - t_edge, row[C_OFF:C_OFF + 6])
    row[C_DUTY], row[C_EPOCH] = duty, epoch


@njit(**_PURE)
def step_row(cache, c, epoch, delta, Ts):
    """The row of ``cache`` with the maps over an on-time change of ``delta`` [s] (the
    switch-on maps over delta, the half-on capacitor map over delta / 2, the diode over
    -delta), computed on a miss. A key within a few roundings of an on-time (4 eps Ts) is a
    hit: the on-times of neighbouring PWM counts, each rounded, differ by such amounts."""
    tol = 4 * 2.220446049250313e-16 * Ts
    for q in range(STEP0, STEP0 + STEP_ROWS):
        if cache[q, S_EPOCH] == epoch and abs(cache[q, S_KEY] - delta) <= tol:
            return q
    q = STEP0 + int(cache[META, 1])
    cache[META, 1] = (cache[META, 1] + 1) % STEP_ROWS
    row = cache[q]
    row[S_ON], row[S_ON + 1] = decay_map(c[K_ON], c[U_ON], delta)
    row[S_HALF], row[S_HALF + 1] = decay_map(c[M], -c[W], 0.5 * delta)
    step_map(c, DIODE, -delta, row[S_OFF:S_OFF + 6])
    row[S_KEY], row[S_EPOCH] = delta, epoch
    return q


@njit(**_PURE)
def compose_maps(row, prev, step):
    """A duty row from its neighbour's (``prev``, on-time h) and a step row (delta): the maps
    over h + delta, (h + delta) / 2 and Ts - h - delta."""
    a, b = prev[C_ON] * step[S_ON], step[S_ON] * prev[C_ON + 1] + step[S_ON + 1]
    row[C_ON], row[C_ON + 1] = a, b
    a = prev[C_HALF] * step[S_HALF]
    b = step[S_HALF] * prev[C_HALF + 1] + step[S_HALF + 1]
    row[C_HALF], row[C_HALF + 1] = a, b
    row[C_ON + 2], row[C_ON + 3] = a * a, a * b + b
    p0, p1, p2 = prev[C_OFF], prev[C_OFF + 1], prev[C_OFF + 2]
    p3, p4, p5 = prev[C_OFF + 3], prev[C_OFF + 4], prev[C_OFF + 5]
    m0, m1, m2 = step[S_OFF], step[S_OFF + 1], step[S_OFF + 2]
    m3, m4, m5 = step[S_OFF + 3], step[S_OFF + 4], step[S_OFF + 5]
    o = C_OFF
    row[o], row[o + 1], row[o + 2] = p0 * m0 + p1 * m3, p0 * m1 + p1 * m4, p0 * m2 + p1 * m5 + p2
    row[o + 3], row[o + 4] = p3 * m0 + p4 * m3, p3 * m1 + p4 * m4
    row[o + 5] = p3 * m2 + p4 * m5 + p5


@njit(**_PURE)
def refill(cache, s, tab, epoch, duty, Ts):
    """Fill row ``s`` for (duty, epoch): composed from the row filled last if that is the same
    epoch at an on-time less than MAX_STEP periods away (and not MAX_DEPTH compositions deep),
    else from the closed forms (:func:`fill_maps`)."""
    p = int(cache[META, 0])
    c = tab[epoch]
    if p >= 0 and p != s and cache[p, C_EPOCH] == epoch and cache[p, C_DEPTH] < MAX_DEPTH:
        delta = duty * Ts - cache[p, C_DUTY] * Ts
        if delta != 0.0 and abs(delta) <= MAX_STEP * Ts:
            q = step_row(cache, c, epoch, delta, Ts)
            compose_maps(cache[s], cache[p], cache[q])
            cache[s, C_DUTY], cache[s, C_EPOCH] = duty, epoch
            cache[s, C_DEPTH] = cache[p, C_DEPTH] + 1
            cache[META, 0] = s
            return
    fill_maps(cache[s], c, epoch, duty, Ts)
    cache[s, C_DEPTH] = 0.0
    cache[META, 0] = s


@njit(inline="always", **_PURE)
def period_maps(cache, tab, epoch, duty, Ts):
    """The row index of ``cache`` with the maps of a step-free period at this duty in this
    epoch, filled on a miss. (Indices, not views, on the hot path: every view costs an atomic
    reference count.)"""
    s = cache_slot(duty)
    if cache[s, C_DUTY] != duty or cache[s, C_EPOCH] != epoch:
        refill(cache, s, tab, epoch, duty, Ts)
    return s


@njit(inline="always", **_PURE)
def step_free_epoch(times, t0, Ts):
    """The epoch of a period starting at t0 [s] if no step falls inside it, else -1."""
    first = np.searchsorted(times, t0, side="right")
    if first < times.size and times[first] - t0 < Ts:
        return -1
    return first


@njit(inline="always", **_PURE)
def ccm_period(tab, epoch, cache, Ts, sync, il, vc, duty, seg, cur):
    """One step-free period from (il, vc) on the cached maps if it is plainly continuous
    conduction (the diode conducts from the switch-off edge, its current cannot reach zero
    before the period ends: :func:`diode_segment_end` needs no search); its two segments go to
    ``seg[cur]``. Returns (il, vc, True), or (nan, nan, False) for :func:`period` to do it."""
    s = period_maps(cache, tab, epoch, duty, Ts)
    t_edge = duty * Ts
    il_on = cache[s, C_ON] * il + cache[s, C_ON + 1]
    vc_on = cache[s, C_ON + 2] * vc + cache[s, C_ON + 3]
    if not (sync or il_on > 0):
        return np.nan, np.nan, False
    o = C_OFF
    il_d = cache[s, o] * il_on + cache[s, o + 1] * vc_on + cache[s, o + 2]
    vc_d = cache[s, o + 3] * il_on + cache[s, o + 4] * vc_on + cache[s, o + 5]
    dur = Ts - t_edge
    if not sync:
        a11, a12, b1 = tab[epoch, A11], tab[epoch, A12], tab[epoch, B1]
        falling0 = a11 * il_on + a12 * vc_on + b1 < -1e-12 * (abs(a12 * vc_on) + abs(b1))
        rising1 = a11 * il_d + a12 * vc_d + b1 > 0
        if il_d < 0 or (falling0 and rising1) or not dur < tab[epoch, HALF_RING]:
            return np.nan, np.nan, False
    for i, (topology, start, length, il_i, vc_i) in enumerate(
            ((ON, 0.0, t_edge, il, vc), (DIODE, t_edge, dur, il_on, vc_on))):
        seg[cur, i, SEG_TOPO], seg[cur, i, SEG_START], seg[cur, i, SEG_DUR] = (topology, start,
                                                                               length)
        seg[cur, i, SEG_IL], seg[cur, i, SEG_VC], seg[cur, i, SEG_EPOCH] = il_i, vc_i, epoch
    return il_d, vc_d, True


# -- one switching period (engine.Stepper.period) ------------------------------------------------

@njit(**_PURE)
def _put(seg, i, topology, start, dur, il, vc, epoch):
    seg[i, SEG_TOPO], seg[i, SEG_START], seg[i, SEG_DUR] = topology, start, dur
    seg[i, SEG_IL], seg[i, SEG_VC], seg[i, SEG_EPOCH] = il, vc, epoch


@njit(**_PURE)
def _next_break(times, first, last, t0, tau, phase_end):
    for b in range(first, last):
        offset = times[b] - t0
        if offset > tau:
            return min(phase_end, offset)
    return phase_end


@njit(**_PURE)
def _epoch(times, first, last, t0, tau):
    epoch = first
    for b in range(first, last):
        if times[b] - t0 <= tau:
            epoch += 1
    return epoch


@njit(**_PURE)
def period(tab, times, t0, Ts, sync, il, vc, duty, cache, seg, work):
    """One period of one lane from (il, vc): segments into ``seg``; returns (il, vc, t_diode,
    t_idle, number of segments), -1 segments if the diode chatters. Without a step in the
    period, the switch-on segment and the first diode segment use the lane's cached maps
    (:func:`period_maps`)."""
    first = np.searchsorted(times, t0, side="right")
    last = first
    while last < times.size and times[last] - t0 < Ts:
        last += 1
    breaks = last > first
    epoch = first
    tau = 0.0
    nseg = 0
    t_edge = duty * Ts
    s = 0
    while True:
        c = tab[epoch]
        end = _next_break(times, first, last, t0, tau, t_edge)
        dur = end - tau
        _put(seg, nseg, ON, tau, dur, il, vc, epoch)
        nseg += 1
        if breaks:
            il, vc = on_state(c, il, vc, dur)
        else:
            s = period_maps(cache, tab, epoch, duty, Ts)
            il, vc = cache[s, C_ON] * il + cache[s, C_ON + 1], cache[s, C_ON + 2] * vc + cache[
                s, C_ON + 3]
        tau = end
        epoch = _epoch(times, first, last, t0, tau)
        if not breaks or tau >= t_edge:
            break
    c = tab[epoch]
    conducting = sync or il > 0 or (il == 0 and vc < c[V_TH])
    topology = DIODE if conducting else IDLE
    t_diode = 0.0
    t_idle = 0.0
    while tau < Ts:
        if nseg > MAX_SEGMENTS:
            return il, vc, t_diode, t_idle, -1
        c = tab[epoch]
        end = _next_break(times, first, last, t0, tau, Ts)
        dur = end - tau
        if not breaks and topology == DIODE and nseg == 1:
            m = cache[s, C_OFF:C_OFF + 6]  # the diode over Ts - D Ts, from the cache
            il_new, vc_new, t_event = diode_segment_end(
                c, sync, il, vc, dur, m[0] * il + m[1] * vc + m[2], m[3] * il + m[4] * vc + m[5],
                work)
        else:
            il_new, vc_new, t_event = off_segment(c, topology, sync, il, vc, dur, work)
        hit = t_event < dur
        seg_dur = t_event if hit else dur
        _put(seg, nseg, topology, tau, seg_dur, il, vc, epoch)
        nseg += 1
        il, vc = il_new, vc_new
        if topology == DIODE:
            t_diode += seg_dur
        else:
            t_idle += seg_dur
        if hit:
            tau = tau + t_event
            topology = IDLE if topology == DIODE else DIODE
        else:
            tau = end
        epoch = _epoch(times, first, last, t0, tau)
        if breaks and topology == IDLE and vc < tab[epoch][V_TH]:
            topology = DIODE  # a line step may start conduction of an idle diode
    return il, vc, t_diode, t_idle, nseg


@njit(inline="always", **_PURE)
def segment_at(seg, nseg, tau, snap):
    """Index of the segment holding offset tau (engine.sample_segments's choice), or -1 for a
    sample on the period start (the state there, with the first segment's output)."""
    if abs(tau) <= snap and seg[0, SEG_DUR] > 0:
        return -1
    i = 0
    for m in range(1, nseg):
        if tau >= seg[m, SEG_START] - snap and seg[m, SEG_DUR] > 0:
            i = m
    return i


@njit(**_PURE)
def sample(tab, seg, nseg, tau, snap):
    """(il, vc, vout) at offset tau into the period held in ``seg`` (engine.sample_segments);
    a sample within ``snap`` of a switching instant takes the value just after it."""
    i = segment_at(seg, nseg, tau, snap)
    if i < 0:
        c = tab[int(seg[0, SEG_EPOCH])]
        il, vc = seg[0, SEG_IL], seg[0, SEG_VC]
        return il, vc, vout_of(c, int(seg[0, SEG_TOPO]), il, vc)
    c = tab[int(seg[i, SEG_EPOCH])]
    topology = int(seg[i, SEG_TOPO])
    il, vc = state_at(c, topology, seg[i, SEG_IL], seg[i, SEG_VC], tau - seg[i, SEG_START])
    return il, vc, vout_of(c, topology, il, vc)


@njit(**_PURE)
def step_map(c, topology, h, out):
    """The affine map of the state over ``h`` seconds in a topology, into ``out``:
    ``il' = out[0] il + out[1] vc + out[2]``, ``vc' = out[3] il + out[4] vc + out[5]``."""
    if topology == DIODE:
        ec, es = exp_coeffs(c, h)
        n11 = c[N11]
        e11, e12, e21, e22 = ec + es * n11, es * c[A12], es * c[A21], ec - es * n11
        il_eq, vc_eq = c[IL_EQ], c[VC_EQ]
        out[0], out[1], out[2] = e11, e12, il_eq - e11 * il_eq - e12 * vc_eq
        out[3], out[4], out[5] = e21, e22, vc_eq - e21 * il_eq - e22 * vc_eq
    else:
        on = 1.0 if topology == ON else 0.0
        out[0], out[1], out[2] = on * np.exp(-c[K_ON] * h), 0.0, on * decay(c[K_ON], c[U_ON],
                                                                             0.0, h)
        out[3], out[4], out[5] = 0.0, np.exp(-c[M] * h), decay(c[M], -c[W], 0.0, h)


@njit(inline="always", **_PURE)
def record_grid(tab, seg, nseg, t0, Ts, dt, n_t, final, wave, lane, maps):
    """Write lane's output-grid samples that fall in this period into ``wave`` (3, lanes, n_t)
    (the final period also takes the sample at t_end). The first sample in a segment is its
    closed form; the next ones step it by ``dt`` with the segment's exact affine map over
    ``dt``, cached in ``maps`` (3 topologies x [epoch, 6 coefficients], epoch -1: none)."""
    first = np.ceil(t0 / dt - 1e-9)
    if final:
        end = np.floor((t0 + Ts) / dt + 1e-9) + 1
    else:
        end = np.ceil((t0 + Ts) / dt - 1e-9)
    if end <= first:
        return
    snap = 8 * 2.220446049250313e-16 * (t0 + Ts)
    current = -2
    il, vc = 0.0, 0.0
    for i in range(int(first), min(int(end), n_t)):
        tau = i * dt - t0
        m = segment_at(seg, nseg, tau, snap)
        if m < 0:
            c = tab[int(seg[0, SEG_EPOCH])]
            topology = int(seg[0, SEG_TOPO])
            il, vc = seg[0, SEG_IL], seg[0, SEG_VC]
        else:
            epoch = int(seg[m, SEG_EPOCH])
            c = tab[epoch]
            topology = int(seg[m, SEG_TOPO])
            if m == current:
                row = maps[topology]
                if row[0] != epoch:
                    row[0] = epoch
                    step_map(c, topology, dt, row[1:])
                il, vc = (row[1] * il + row[2] * vc + row[3],
                          row[4] * il + row[5] * vc + row[6])
            else:
                il, vc = state_at(c, topology, seg[m, SEG_IL], seg[m, SEG_VC],
                                  tau - seg[m, SEG_START])
        current = m
        wave[0, lane, i], wave[1, lane, i], wave[2, lane, i] = il, vc, vout_of(c, topology,
                                                                              il, vc)


@njit(**_PURE)
def phi2(z):
    """(e^z - 1 - z)/z^2, 1/2 at z = 0, accurate for small |z|."""
    if abs(z) < 1e-2:
        return 0.5 + z * (1 / 6 + z * (1 / 24 + z * (1 / 120 + z / 720)))
    return (np.expm1(z) - z) / (z * z)


@njit(**_PURE)
def vout_integral(c, topology, il0, vc0, dur):
    """Integral of vout over a segment [V s], in closed form: the decaying pieces through
    phi2, the DIODE system through A^-1 (x(dur) - x0) + x_eq dur."""
    if topology == DIODE:
        il1, vc1 = diode_state(c, il0, vc0, dur)
        a11, a12, a21, a22 = c[A11], c[A12], c[A21], c[S] - c[N11]
        det = a11 * a22 - a12 * a21
        d_il, d_vc = il1 - il0, vc1 - vc0
        int_il = c[IL_EQ] * dur + (a22 * d_il - a12 * d_vc) / det
        int_vc = c[VC_EQ] * dur + (a11 * d_vc - a21 * d_il) / det
    else:
        int_il = 0.0
        int_vc = vc0 * dur + (-c[W] - c[M] * vc0) * dur * dur * phi2(-c[M] * dur)
    return c[A_OUT] * (int_vc + c[R_C] * (int_il - c[I_LOAD] * dur))


@njit(**_PURE)
def period_mean_vout(tab, seg, nseg, Ts):
    """Mean output voltage over the period held in ``seg`` [V]."""
    total = 0.0
    for m in range(nseg):
        if seg[m, SEG_DUR] > 0:
            total += vout_integral(tab[int(seg[m, SEG_EPOCH])], int(seg[m, SEG_TOPO]),
                                   seg[m, SEG_IL], seg[m, SEG_VC], seg[m, SEG_DUR])
    return total / Ts


# -- the board's control loop (boostsim.pid, boostsim.control) ----------------------------------

@njit(inline="always", **_PURE)
def pid_update(par, st, use_ramp, backcalc, setpoint, y):
    """One PID sample for one lane (boostsim.pid.PID.update, same operations and order)."""
    if use_ramp:
        s = st[S_SP] if st[S_HAS_SP] else y
        s = min(max(setpoint, s - par[P_RAMP]), s + par[P_RAMP])
    else:
        s = setpoint
    e = s - y
    y_prev = st[S_Y_PREV] if st[S_HAS_Y] else y
    d = par[P_D_A] * st[S_DERIV] - par[P_D_B] * (y - y_prev)
    lo, hi = par[P_MIN], par[P_MAX]
    i = st[S_INTEGRAL]
    v = par[P_KP] * e + i + d
    u = min(max(v, lo), hi)
    di = par[P_KI_TS] * e
    if backcalc:
        di = di + par[P_KT_TS] * (u - v)
    else:
        frozen = 1.0 if (v > hi and e > 0) or (v < lo and e < 0) else 0.0
        di = di - di * frozen
    di = di + st[S_INTEGRAL_ERROR]  # compensated (Kahan) sum, as boostsim.pid
    total = i + di
    st[S_INTEGRAL_ERROR] = di - (total - i)
    i = total
    st[S_INTEGRAL], st[S_DERIV], st[S_Y_PREV], st[S_HAS_Y] = i, d, y, 1.0
    st[S_SP], st[S_HAS_SP], st[S_UNCLAMPED], st[S_OUTPUT] = s, 1.0, v, u
    return u


@njit(**_JIT)
def pid_sequence(par, st, use_ramp, backcalc, setpoints, measurements):
    """Run ``pid_update`` over (samples, lanes) inputs (``par``/``st`` rows per lane); returns
    the outputs (for tests)."""
    out = np.empty(setpoints.shape)
    for j in range(setpoints.shape[1]):
        for k in range(setpoints.shape[0]):
            out[k, j] = pid_update(par[j], st[j], use_ramp, backcalc, setpoints[k, j],
                                   measurements[k, j])
    return out


# -- the ADC's noise (boostsim.lanenoise) --------------------------------------------------------

GOLDEN, MIX1, MIX2 = np.uint64(ln.GOLDEN), np.uint64(ln.MIX1), np.uint64(ln.MIX2)
PPND_A, PPND_B, PPND_C, PPND_D, PPND_E, PPND_F = (ln.PPND_A, ln.PPND_B, ln.PPND_C, ln.PPND_D,
                                                  ln.PPND_E, ln.PPND_F)


@njit(inline="always", **_PURE)
def mix64(z):
    """SplitMix64's output function (lanenoise._mix64)."""
    z = (z ^ (z >> np.uint64(30))) * MIX1
    z = (z ^ (z >> np.uint64(27))) * MIX2
    return z ^ (z >> np.uint64(31))


@njit(inline="always", **_PURE)
def poly(coef, r):
    """coef[0] + coef[1] r + ... by Horner's rule (lanenoise._poly, same order)."""
    value = coef[7] * r
    for i in range(6, 0, -1):
        value = (value + coef[i]) * r
    return value + coef[0]


@njit(**_PURE)
def ppnd16(p):
    """The standard normal quantile of p in (0, 1) (lanenoise.ppnd16)."""
    q = p - 0.5
    if abs(q) <= 0.425:
        r = 0.180625 - q * q
        return q * poly(PPND_A, r) / poly(PPND_B, r)
    s = np.sqrt(-np.log(p if q < 0 else 1.0 - p))
    if s <= 5.0:
        s = s - 1.6
        tail = poly(PPND_C, s) / poly(PPND_D, s)
    else:
        s = s - 5.0
        tail = poly(PPND_E, s) / poly(PPND_F, s)
    return -tail if q < 0 else tail


@njit(**_PURE)
def lane_noise_start(key, lane):
    """The start of lane ``lane``'s noise sequence under ``key`` (lanenoise.unit_normals)."""
    return mix64(np.uint64(key) + (np.uint64(lane) + np.uint64(1)) * GOLDEN)


@njit(inline="always", **_PURE)
def unit_normal(start, draw):
    """Standard normal draw ``draw`` of the lane whose sequence starts at ``start``."""
    bits = mix64(start + (np.uint64(draw) + np.uint64(1)) * GOLDEN)
    return ppnd16((float(bits >> np.uint64(11)) + 0.5) * 2.0 ** -53)


NOISE_BLOCK = 64  # control steps whose noise a lane draws at once


@njit(**_PURE)
def fill_noise(buf, start, first):
    """Draws first, first + 1, ... of a lane's noise into ``buf``: ahead of the loop that
    needs them, off its chain of dependent operations."""
    for i in range(buf.size):
        buf[i] = unit_normal(start, first + i)


@njit(**_JIT)
def unit_normal_table(key, lanes, draws):
    """unit_normal for every (draw, lane) pair, shape (draws, lanes) (for tests)."""
    out = np.empty((draws, lanes))
    for j in range(lanes):
        start = lane_noise_start(key, j)
        for i in range(draws):
            out[i, j] = unit_normal(start, i)
    return out


@njit(inline="always", **_PURE)
def adc_code(adc, vout, noise):
    """The ADC code of one conversion of the output voltage vout [V] (noise: a unit draw)."""
    v_pin = vout / adc[A_DIVIDER]
    if adc[A_NOISE] > 0:
        v_pin = v_pin + adc[A_NOISE] * noise
    return min(max(np.rint(v_pin * adc[A_FACTOR] + adc[A_OFFSET]), 0.0), adc[A_TOP])


@njit(inline="always", **_PURE)
def adc_reading(tab, seg, prev, nseg, adc, offsets, noise, first, duty, Ts, cache):
    """The averaged ADC code of one control step from the previous period's segments
    ``seg[prev]`` (conversion o adds the unit noise draw ``noise[first + o]``). A single
    mid-on sample inside the first switch-on segment uses the lane's cached half-on map."""
    n_os = offsets.size
    if n_os == 1 and adc[A_MID_ON] and not adc[A_IMMEDIATE] and duty > 0:
        tau = 0.5 * duty * Ts
        if seg[prev, 1, SEG_START] > tau:  # segment 0 (switch on, from the start) holds it
            epoch = int(seg[prev, 0, SEG_EPOCH])
            h = period_maps(cache, tab, epoch, duty, Ts)
            # With the switch on, vout depends on vc alone (vout_of's ON case).
            vc = cache[h, C_HALF] * seg[prev, 0, SEG_VC] + cache[h, C_HALF + 1]
            return adc_code(adc, tab[epoch, A_OUT] * (vc - tab[epoch, R_C] * tab[epoch, I_LOAD]),
                            noise[first])
    seg = seg[prev]
    total = 0.0
    for o in range(n_os):
        tau = conversion_instant(adc, offsets, o, duty, Ts)
        total += adc_code(adc, sample(tab, seg, nseg, tau, 0.0)[2], noise[first + o])
    return total if n_os == 1 else total / n_os


@njit(inline="always", **_PURE)
def conversion_instant(adc, offsets, o, duty, Ts):
    """When in the period [s] conversion o of a control step's reading is taken (the
    DigitalController's instants: mid-on or a fraction of the period, oversampled
    conversions spread by ``offsets`` and kept inside the period; an 'immediate' update
    samples at the period's end)."""
    if adc[A_IMMEDIATE]:
        return Ts * (1 - 1e-12)
    centre = 0.5 * duty * Ts if adc[A_MID_ON] else adc[A_FRACTION] * Ts
    if offsets.size == 1:
        return centre
    return min(max(centre + offsets[o], 0.0), Ts * (1 - 1e-12))


@njit(inline="always", **_PURE)
def quantize(duty, steps, lowest, highest):
    """The duty the PWM counter produces (control.PWM.quantizer): boostsim.rp2040's duty_u16
    (single precision) and compare level, held between the limits' levels (the same as
    limiting the duty first: the rule is monotonic)."""
    if np.isnan(duty):
        return duty
    u16 = min(max(np.floor(np.float32(duty) * np.float32(U16) + np.float32(0.5)), 0.0), U16)
    level = (int(u16) * int(steps) + U16 // 2) // U16
    return min(max(float(level), lowest), highest) / steps


@njit(inline="always", **_PURE)
def reference(ref_times, ref_values, per_step, j, t, step):
    """The setpoint at time t: steps in time, or a table per control step."""
    if per_step:
        return ref_values[step, j]
    return ref_values[np.searchsorted(ref_times, t, side="right") - 1, j]


@njit(inline="always", **_PURE)
def control_step(code, adc, par, st, use_ramp, backcalc, ref_times, ref_values, ref_per_step,
                 j, t, step, pwm_j, log):
    """One controller step of lane j at time t from its ADC code: the PID on the reading
    against the setpoint, the PWM's duty (returned), the step's row of the control log."""
    setpoint = reference(ref_times, ref_values, ref_per_step, j, t, step)
    command = pid_update(par, st, use_ramp, backcalc, setpoint, code * adc[A_VOLTS_PER_CODE])
    d = quantize(command, pwm_j[0], pwm_j[1], pwm_j[2])
    if log.shape[2] > 0:
        log[L_SETPOINT, j, step] = st[S_SP]
        log[L_CODE, j, step] = code
        log[L_INTEGRAL, j, step] = st[S_INTEGRAL]
        log[L_COMMAND, j, step] = command
        log[L_DUTY, j, step] = d
    return d


# -- the loop over lanes and periods -----------------------------------------------------------

@njit(**_JIT)
def run_lane(j, tab, times, Ts, sync, il0, vc0, n_periods, dt, n_t, duty_mode, duties,
             every, pid_par, pid_st, use_ramp, backcalc, adc, offsets, noise_key, pwm, ref_times,
             ref_values, ref_per_step, wave, rec, means, log, il_end, vc_end):
    """Simulate lane ``j`` for ``n_periods`` periods (see :func:`run_lanes`); returns the
    first period in which the diode chattered, or -1. Allocates the lane's working arrays
    and runs :func:`lane_periods` on them."""
    seg = np.empty((2, MAX_SEGMENTS + 2, 6))
    work = np.empty(MAX_SEGMENTS)
    cache = new_cache()
    maps = np.full((3, 7), -1.0)
    # Lane-local copies: the lane's own memory, away from the other core's lanes.
    tab_j = tab[j].copy()
    par, st = pid_par[j].copy(), pid_st[j].copy()
    noise_start = lane_noise_start(noise_key, j)
    noise = np.zeros(NOISE_BLOCK * offsets.size)
    chatter = lane_periods(j, tab_j, times, Ts[j], sync[j], il0[j], vc0[j], n_periods, dt, n_t,
                           duty_mode, duties, every, par, st, use_ramp, backcalc, adc, offsets,
                           noise_start, pwm[j], ref_times, ref_values, ref_per_step, wave, rec,
                           means, log, il_end, vc_end, seg, work, cache, maps, noise)
    pid_st[j] = st
    return chatter


@njit(**_PURE)
def lane_periods(j, tab_j, times, Ts, sync, il, vc, n_periods, dt, n_t, duty_mode, duties,
                 every, par, st, use_ramp, backcalc, adc, offsets, noise_start, pwm_j, ref_times,
                 ref_values, ref_per_step, wave, rec, means, log, il_end, vc_end, seg, work,
                 cache, maps, noise):
    """The period loop of lane ``j`` on its own working arrays (``tab_j``, ``par``, ``st``,
    ``seg``, ..., ``noise`` the ADC noise of the current block of control steps). Compiled
    without reference counting: no atomic operation on
    the hot path, so the two cores never wait for each other."""
    d = duties[0, j]
    prev_nseg = 0
    step = 0
    held = 0  # periods since the last control step (k % every, without a division)
    for k in range(n_periods):
        t0 = k * Ts
        cur = k % 2
        due = held == every
        held = 1 if due else held + 1
        if duty_mode == 1:
            d = duties[k, j]
        elif duty_mode == 2 and due:
            b = step % NOISE_BLOCK
            if b == 0 and adc[A_NOISE] > 0:
                fill_noise(noise, noise_start, step * offsets.size)
            code = adc_reading(tab_j, seg, 1 - cur, prev_nseg, adc, offsets, noise,
                               b * offsets.size, d, Ts, cache)
            d = control_step(code, adc, par, st, use_ramp, backcalc, ref_times, ref_values,
                             ref_per_step, j, t0, step, pwm_j, log)
            step += 1
        rec[R_DUTY, j, k], rec[R_IL, j, k], rec[R_VC, j, k] = d, il, vc
        rec[R_T_START, j, k], rec[R_T_ON, j, k] = t0, d * Ts
        epoch = step_free_epoch(times, t0, Ts)
        plain = False
        if epoch >= 0:
            il_d, vc_d, plain = ccm_period(tab_j, epoch, cache, Ts, sync, il, vc, d, seg, cur)
        if plain:
            il, vc, t_diode, t_idle, nseg = il_d, vc_d, Ts - d * Ts, 0.0, 2
        else:
            il, vc, t_diode, t_idle, nseg = period(tab_j, times, t0, Ts, sync, il, vc, d,
                                                   cache, seg[cur], work)
        if nseg < 0:
            return k
        rec[R_DIODE, j, k], rec[R_IDLE, j, k] = t_diode, t_idle
        if means.shape[1] > 0:
            means[j, k] = period_mean_vout(tab_j, seg[cur], nseg, Ts)
        if n_t > 0:
            record_grid(tab_j, seg[cur], nseg, t0, Ts, dt, n_t, k == n_periods - 1,
                        wave, j, maps)
        prev_nseg = nseg
    il_end[j], vc_end[j] = il, vc
    if duty_mode == 2:
        duties[0, j] = d
    return -1


@njit(**_JIT)
def run_lanes(tab, times, Ts, sync, il0, vc0, n_periods, dt, n_t, duty_mode, duties,
              every, pid_par, pid_st, use_ramp, backcalc, adc, offsets, noise_key, pwm, ref_times,
              ref_values, ref_per_step, wave, rec, means, log, il_end, vc_end, chatter):
    """Simulate every lane for ``n_periods`` periods, one after the other.

    duty_mode 0: constant ``duties[0, j]``; 1: schedule ``duties[k, j]``; 2: the controller
    (``duties[0, j]`` is its initial quantised duty, and receives the last one; its ADC noise
    comes from ``noise_key``, a uint64: :mod:`boostsim.lanenoise`). Outputs, lane-major so
    that each lane writes its own memory, each only if it has rows or columns: ``wave``
    (3, lanes, n_t) the waveforms, ``rec`` (N_REC, lanes, periods) the period records,
    ``means`` (lanes, periods) each period's mean vout, ``log`` (N_LOG, lanes, steps) the
    control steps; ``chatter`` (lanes,) the first period in which a lane's diode chattered
    (-1: none).
    """
    for j in range(Ts.size):
        chatter[j] = run_lane(j, tab, times, Ts, sync, il0, vc0, n_periods, dt, n_t, duty_mode,
                              duties, every, pid_par, pid_st, use_ramp, backcalc, adc, offsets,
                              noise_key, pwm, ref_times, ref_values, ref_per_step, wave, rec, means,
                              log, il_end, vc_end)


@intrinsic
def fetch_add(typingctx, counter, value):
    """Atomically add ``value`` to ``counter[0]`` (an int64 array) and return the old value."""
    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, array,
                                           [context.get_constant(types.intp, 0)])
        return builder.atomic_rmw("add", pointer, args[1], "monotonic")

    return types.int64(counter, types.int64), codegen


LANE_CHUNK = 4  # lanes a core takes from the queue at a time
# Queue readers the parallel loop starts (at least as many as threads; the loop gives each
# thread a contiguous share of them, and a thread's first reader drains what is left).
READERS = 64


@njit(parallel=True, **_JIT)
def run_lanes_parallel(tab, times, Ts, sync, il0, vc0, n_periods, dt, n_t, duty_mode, duties,
                       every, pid_par, pid_st, use_ramp, backcalc, adc, offsets, noise_key, pwm,
                       ref_times, ref_values, ref_per_step, wave, rec, means, log, il_end,
                       vc_end, chatter):
    """:func:`run_lanes` with the lanes shared out over the cores: each core takes the next
    ``LANE_CHUNK`` lanes from a shared counter when it is done with its last ones, so a core
    slowed by other work (or lanes slower than others) leaves more lanes to the other."""
    n = Ts.size
    queue = np.zeros(1, dtype=np.int64)
    for _ in prange(min(READERS, n)):
        while True:
            first = fetch_add(queue, LANE_CHUNK)
            if first >= n:
                break
            for j in range(first, min(first + LANE_CHUNK, n)):
                chatter[j] = run_lane(j, tab, times, Ts, sync, il0, vc0, n_periods, dt, n_t,
                                      duty_mode, duties, every, pid_par, pid_st, use_ramp,
                                      backcalc, adc, offsets, noise_key, pwm, ref_times,
                                      ref_values, ref_per_step, wave, rec, means, log, il_end,
                                      vc_end)
