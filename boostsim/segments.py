"""Exact solutions of the boost converter's linear pieces ("segments"), vectorised over lanes.

Between switching events the circuit is linear, with state x = (iL, vC) and one of three
topologies:

* ``ON``: switch on. ``L diL/dt = vin - (r_L + r_on) iL``; the capacitor feeds the load.
* ``DIODE``: switch off, diode (or synchronous switch) conducting.
  ``L diL/dt = vin - v_f - (r_L + r_d) iL - vout``, ``C dvC/dt = iL - iout``.
* ``IDLE``: both off (discontinuous conduction), ``iL = 0``; the capacitor feeds the load.

The output node is solved algebraically: ``vout = vC + r_C iC`` with load current
``iout = vout/R + i_load``. With ``g = 1/R`` (0 for an open load) and ``a = 1/(1 + r_C g)``:
``vout = a (vC - r_C i_load)`` (ON, IDLE) and ``vout = a (vC + r_C (iL - i_load))`` (DIODE).

ON and IDLE are two decoupled first-order equations, solved with ``phi1(z) = (e^z - 1)/z`` so
that lossless lanes (zero rates) need no special case. DIODE is a coupled 2x2 affine system
``x' = A x + b`` whose matrix is always invertible (det A = (r g a + a^2)/(L C) > 0); it is solved
as ``x(t) = x_eq + e^{A t} (x0 - x_eq)`` with ``e^{A t} = e^{s t}[C(t) I + S(t) (A - s I)]``,
``s = tr(A)/2``, ``q^2 = s^2 - det A``, and ``C = cosh(q t)``, ``S = sinh(q t)/q`` (their
trigonometric forms when ``q^2 < 0``, power series when ``|q^2 t^2|`` is small). Everything is
real arithmetic and exact to rounding.

Event times -- the diode current reaching zero, the diode starting to conduct again from IDLE,
and the extrema needed for ripple -- are found from these closed forms: critical points in
closed form, zero crossings bracketed between them and refined by safeguarded Newton steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

ON, DIODE, IDLE = 0, 1, 2
TOPOLOGY_NAMES = ("on", "diode", "idle")

# Rows of the coefficient table (one column per lane). Kept as one 2-D array so that a batch
# whose lanes sit in different condition epochs (load/line steps) is gathered in one indexing op.
(K_ON, U_ON, M, W, A_OUT, A11, A12, A21, B1, S, Q2, N11, IL_EQ, VC_EQ, V_TH, SYNC, VIN, G,
 R_C, I_LOAD, R_L, R_ON, R_X, V_FX, HALF_RING, ROOT) = range(26)
N_ROWS = 26


def coefficients(p: dict[str, np.ndarray], vin: np.ndarray, R: np.ndarray,
                 i_load: np.ndarray) -> np.ndarray:
    """Table of per-lane segment coefficients (shape (N_ROWS, n)) for given vin, R, i_load.

    ``p`` holds the lane arrays of a :class:`~boostsim.params.BoostParams` (``arrays()``);
    vin, R and i_load are passed separately because line and load steps change them.
    """
    L, C = p["L"], p["C"]
    sync = p["synchronous"].astype(float)
    g = np.where(np.isinf(R), 0.0, 1.0 / R)
    r_C = p["r_C"]
    a = 1.0 / (1.0 + r_C * g)
    r_x = np.where(sync > 0, p["r_sync"], p["r_d"])
    v_fx = np.where(sync > 0, 0.0, p["v_f"])
    m = g * a / C
    w = a * i_load / C
    a11 = -(p["r_L"] + r_x + a * r_C) / L
    a12 = -a / L
    a21 = a / C
    a22 = -m
    b1 = (vin - v_fx + a * r_C * i_load) / L
    b2 = -w
    det = a11 * a22 - a12 * a21
    s = 0.5 * (a11 + a22)
    n11 = 0.5 * (a11 - a22)
    q2 = n11 * n11 + a12 * a21
    il_eq = -(a22 * b1 - a12 * b2) / det
    vc_eq = -(a11 * b2 - a21 * b1) / det
    v_th = (vin - v_fx) / a + r_C * i_load
    rows = np.empty((N_ROWS, np.size(L)))
    rows[K_ON] = (p["r_L"] + p["r_on"]) / L
    rows[U_ON] = vin / L
    rows[M], rows[W], rows[A_OUT] = m, w, a
    rows[A11], rows[A12], rows[A21], rows[B1] = a11, a12, a21, b1
    rows[S], rows[Q2], rows[N11] = s, q2, n11
    rows[IL_EQ], rows[VC_EQ], rows[V_TH], rows[SYNC] = il_eq, vc_eq, v_th, sync
    rows[VIN], rows[G], rows[R_C], rows[I_LOAD] = vin, g, r_C, i_load
    rows[R_L], rows[R_ON], rows[R_X], rows[V_FX] = p["r_L"], p["r_on"], r_x, v_fx
    # Half period of the DIODE ringing (inf when not oscillatory): a segment shorter than this
    # has at most one extremum of any output.
    rows[ROOT] = np.sqrt(np.abs(q2))
    with np.errstate(divide="ignore"):
        rows[HALF_RING] = np.where(q2 < 0, np.pi / rows[ROOT], np.inf)
    return rows


# -- scalar special functions -------------------------------------------------------------------

def phi1(z: np.ndarray) -> np.ndarray:
    """(e^z - 1)/z, equal to 1 at z = 0, accurate for small |z|."""
    z = np.asarray(z, dtype=float)
    return np.divide(np.expm1(z), z, out=np.ones(z.shape), where=z != 0.0)


def decay(rate: np.ndarray, drive: np.ndarray, v0: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """Solution of ``v' = -rate v + drive`` from ``v0`` after ``tau`` (rate may be 0)."""
    return v0 + (drive - rate * v0) * tau * phi1(-rate * tau)


def exp_coeffs(c: np.ndarray, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(e^{s t} C(t), e^{s t} S(t))`` of the DIODE topology, so that
    ``e^{A t} = ec I + es (A - s I)``.

    C = cos(w t), S = sin(w t)/w when q^2 = -w^2 < 0 (ringing); C = cosh(q t), S = sinh(q t)/q
    when q^2 > 0; C = 1, S = t when q^2 = 0. All are accurate for small arguments.
    """
    s, q2, root = c[S], c[Q2], c[ROOT]
    est = np.exp(s * tau)
    theta = root * tau
    if (q2 < 0).all():
        return est * np.cos(theta), est * np.sin(theta) / root
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        oscillating = q2 < 0
        ec = np.where(oscillating, np.cos(theta), np.cosh(theta))
        es = np.where(oscillating, np.sin(theta), np.sinh(theta)) / root
        es = np.where(q2 == 0, tau, es)
        ec = est * ec
        es = est * es
        if not np.all(np.isfinite(ec)):
            # Extremely stiff lanes (|eigenvalue| t > 700): use the eigenvalue exponentials,
            # which never overflow (both eigenvalues are negative).
            e1 = np.exp((s + root) * tau)
            e2 = np.exp((s - root) * tau)
            bad = ~np.isfinite(ec)
            ec = np.where(bad, 0.5 * (e1 + e2), ec)
            es = np.where(bad, (e1 - e2) / (2 * root), es)
    return ec, es


# -- states within one segment ---------------------------------------------------------------

def diode_state(c: np.ndarray, il0: np.ndarray, vc0: np.ndarray, tau: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """State after ``tau`` seconds in the DIODE topology, from (il0, vc0)."""
    ec, es = exp_coeffs(c, tau)
    return diode_propagate(c, il0, vc0, ec, es)


def diode_propagate(c: np.ndarray, il0: Any, vc0: Any, ec: Any, es: Any) -> tuple[Any, Any]:
    """The DIODE state from (il0, vc0) after the time whose :func:`exp_coeffs` are (ec, es):
    ``x_eq + e^{At} (x0 - x_eq)``. Plain arithmetic on arrays or numbers: the compiled kernel
    (:mod:`boostsim.kernel`) compiles this very function."""
    d1 = il0 - c[IL_EQ]
    d2 = vc0 - c[VC_EQ]
    n11 = c[N11]
    il = c[IL_EQ] + ec * d1 + es * (n11 * d1 + c[A12] * d2)
    vc = c[VC_EQ] + ec * d2 + es * (c[A21] * d1 - n11 * d2)
    return il, vc


def on_state(c: np.ndarray, il0: np.ndarray, vc0: np.ndarray, tau: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """State after ``tau`` seconds with the switch on."""
    return decay(c[K_ON], c[U_ON], il0, tau), decay(c[M], -c[W], vc0, tau)


def state_at(c: np.ndarray, topology: np.ndarray, il0: np.ndarray, vc0: np.ndarray,
             tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """State after ``tau`` in each lane's own topology (arrays broadcast together)."""
    if (topology == ON).all():
        return on_state(c, il0, vc0, tau)
    diode = topology == DIODE
    if diode.all():
        return diode_state(c, il0, vc0, tau)
    il_d, vc_d = diode_state(c, il0, vc0, tau)
    il_on, vc_on = on_state(c, il0, vc0, tau)
    il = np.where(diode, il_d, np.where(topology == ON, il_on, 0.0))
    vc = np.where(diode, vc_d, vc_on)  # IDLE shares the ON capacitor equation
    return il, vc


def vout_of(c: np.ndarray, topology: np.ndarray, il: np.ndarray, vc: np.ndarray) -> np.ndarray:
    """Output voltage (after the ESR) for the given topology and state."""
    conducting = np.where(topology == DIODE, il, 0.0)
    return c[A_OUT] * (vc + c[R_C] * (conducting - c[I_LOAD]))


def capacitor_current(c: np.ndarray, topology: np.ndarray, il: np.ndarray, vc: np.ndarray
                      ) -> np.ndarray:
    """Capacitor current iC = (vout - vC)/r_C, computed without dividing by r_C."""
    conducting = np.where(topology == DIODE, il, 0.0)
    return c[A_OUT] * (conducting - c[I_LOAD]) - c[G] * c[A_OUT] * vc


def transition_matrix(c: np.ndarray, topology: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """d x(tau) / d x0 for each lane's topology, shape (n, 2, 2)."""
    ec, es = exp_coeffs(c, tau)
    e_il = np.exp(-c[K_ON] * tau)
    e_vc = np.exp(-c[M] * tau)
    diode = topology == DIODE
    out = np.zeros((np.size(tau), 2, 2))
    out[:, 0, 0] = np.where(diode, ec + es * c[N11], np.where(topology == ON, e_il, 0.0))
    out[:, 0, 1] = np.where(diode, es * c[A12], 0.0)
    out[:, 1, 0] = np.where(diode, es * c[A21], 0.0)
    out[:, 1, 1] = np.where(diode, ec - es * c[N11], e_vc)
    return out


class PeriodMap(NamedTuple):
    """A period in continuous conduction (switch on for t_on, then the diode for t_off) as
    affine maps of the state, per lane: at the PWM edge ``il = a_i il0 + b_i``,
    ``vc = a_v vc0 + b_v``; through the diode ``x_end = x_eq + E (x_edge - x_eq)`` with
    ``E = [[e11, e12], [e21, e22]]``; over the whole period ``x_end = Phi x0 + gamma`` with
    ``Phi = [[p11, p12], [p21, p22]]``, ``gamma = (g1, g2)``."""

    a_i: np.ndarray
    b_i: np.ndarray
    a_v: np.ndarray
    b_v: np.ndarray
    e11: np.ndarray
    e12: np.ndarray
    e21: np.ndarray
    e22: np.ndarray
    il_eq: np.ndarray
    vc_eq: np.ndarray
    p11: np.ndarray
    p12: np.ndarray
    p21: np.ndarray
    p22: np.ndarray
    g1: np.ndarray
    g2: np.ndarray


def on_transition(c: np.ndarray, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d iL / d iL0, d vC / d vC0) after ``tau`` with the switch on (the maps are diagonal)."""
    return np.exp(-c[K_ON] * tau), np.exp(-c[M] * tau)


def diode_transition(c: np.ndarray, tau: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``e^{A tau}`` of the DIODE topology as (e11, e12, e21, e22)."""
    ec, es = exp_coeffs(c, tau)
    return ec + es * c[N11], es * c[A12], es * c[A21], ec - es * c[N11]


def ccm_period_map(c: np.ndarray, t_on: np.ndarray, t_off: np.ndarray) -> PeriodMap:
    """The affine map of a continuous-conduction period (see :class:`PeriodMap`)."""
    a_i, a_v = on_transition(c, t_on)
    b_i = decay(c[K_ON], c[U_ON], 0.0, t_on)
    b_v = decay(c[M], -c[W], 0.0, t_on)
    e11, e12, e21, e22 = diode_transition(c, t_off)
    il_eq, vc_eq = c[IL_EQ], c[VC_EQ]
    g1 = il_eq + e11 * (b_i - il_eq) + e12 * (b_v - vc_eq)
    g2 = vc_eq + e21 * (b_i - il_eq) + e22 * (b_v - vc_eq)
    return PeriodMap(a_i, b_i, a_v, b_v, e11, e12, e21, e22, il_eq, vc_eq,
                     e11 * a_i, e12 * a_v, e21 * a_i, e22 * a_v, g1, g2)


def diode_slope(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a11, a12, b1) with ``diL/dt = a11 iL + a12 vC + b1`` [A/s] in the DIODE topology."""
    return c[A11], c[A12], c[B1]


def vout_gains(c: np.ndarray, topology: int) -> tuple[np.ndarray, np.ndarray]:
    """(d vout / d iL, d vout / d vC) in a topology (vout is affine in the state)."""
    return (c[A_OUT] * c[R_C] if topology == DIODE else 0.0 * c[A_OUT]), c[A_OUT]


def reconduction_threshold(c: np.ndarray) -> np.ndarray:
    """Capacitor voltage [V] below which an idle diode conducts (vout = vin - v_f)."""
    return c[V_TH]


def ringing_half_period(c: np.ndarray) -> np.ndarray:
    """Half period [s] of the DIODE ringing (inf when it does not ring): a diode interval
    shorter than this has at most one extremum of the current."""
    return c[HALF_RING]


# -- event times ------------------------------------------------------------------------------

def critical_times(c: np.ndarray, p: np.ndarray, r: np.ndarray, dur: np.ndarray
                   ) -> np.ndarray:
    """Zeros in (0, dur) of ``e^{s t}[C(t) p + S(t) r]``, as an (n, K) array padded with NaN.

    This is the time derivative of any linear output of a DIODE segment (``p`` and ``r`` are the
    output row times ``A d`` and ``(A - sI) A d``), so its zeros are the segment's extrema.
    """
    q2, root = c[Q2], c[ROOT]
    with np.errstate(invalid="ignore", divide="ignore"):
        # Oscillatory lanes: p cos(wt) + (r/w) sin(wt) = 0  ->  wt = atan2(-p w, r) mod pi + k pi.
        theta0 = np.mod(np.arctan2(-p * root, r), np.pi)
        osc = q2 < 0
        k_max = 1
        if np.any(osc):
            k_max = int(np.max(np.where(osc, root * dur, 0.0)) // np.pi) + 2
        ks = np.arange(k_max)
        t_trig = (theta0[:, None] + np.pi * ks[None, :]) / root[:, None]
        # Real eigenvalues: tanh(qt) = -p q / r; repeated eigenvalue: p + r t = 0.
        t_hyp = np.arctanh(-p * root / r) / root
        t_lin = -p / r
        t_real = np.where(q2 > 0, t_hyp, t_lin)
        times = np.where(osc[:, None], t_trig,
                         np.where(ks[None, :] == 0, t_real[:, None], np.nan))
        valid = (times > 0) & (times < dur[:, None])
    return np.where(valid, times, np.nan)


def diode_derivative(c: np.ndarray, il: np.ndarray, vc: np.ndarray) -> np.ndarray:
    """diL/dt in the DIODE topology [A/s]."""
    return c[A11] * il + c[A12] * vc + c[B1]


def diode_zero_time(c: np.ndarray, il0: np.ndarray, vc0: np.ndarray, dur: np.ndarray,
                    il_end: np.ndarray, monotonic: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """First time in (0, dur] at which the diode current falls to zero (inf where it does not),
    and the capacitor voltage then.

    ``il_end`` is the current at ``dur`` and ``monotonic`` marks lanes known to fall all
    through the segment (then [0, dur] brackets the zero). Elsewhere the current is monotonic
    between its closed-form critical points, so the first interval whose end is <= 0 brackets
    the zero. Safeguarded Halley steps from a linear interpolation converge to rounding.
    """
    n = np.size(il0)
    lo = np.zeros(n)
    hi = dur
    f_lo = il0
    f_hi = il_end
    found = monotonic & (il_end <= 0.0)
    general = np.flatnonzero(~monotonic)
    if general.size:
        hi, f_lo, f_hi, found = hi.copy(), f_lo.copy(), f_hi.copy(), found.copy()
        cg = c[:, general]
        i0, v0 = il0[general], vc0[general]
        d1 = i0 - cg[IL_EQ]
        d2 = v0 - cg[VC_EQ]
        y1 = cg[A11] * d1 + cg[A12] * d2
        y2 = cg[A21] * d1 + (cg[S] - cg[N11]) * d2
        crit = critical_times(cg, y1, cg[N11] * y1 + cg[A12] * y2, dur[general])
        points = np.concatenate([np.zeros((general.size, 1)),
                                 np.sort(np.where(np.isnan(crit), np.inf, crit), axis=1),
                                 dur[general, None]], axis=1)
        points = np.minimum(points, dur[general, None])
        values = diode_state(cg[:, :, None], i0[:, None], v0[:, None], points)[0]
        values[:, 0] = i0
        # A turn-off is a fall to zero from positive current: at re-conduction (i0 = 0) the
        # current starts at a critical point and must first rise.
        was_positive = np.maximum.accumulate(values > 0.0, axis=1)
        below = (values[:, 1:] <= 0.0) & was_positive[:, :-1]
        j = np.argmax(below, axis=1) + 1
        rows = np.arange(general.size)
        lo[general], hi[general] = points[rows, j - 1], points[rows, j]
        f_lo[general], f_hi[general] = values[rows, j - 1], values[rows, j]
        found[general] = below.any(axis=1)
    t_zero = np.full(n, np.inf)
    vc_zero = np.full(n, np.nan)
    sel = np.flatnonzero(found)
    if sel.size == 0:
        return t_zero, vc_zero
    cs = c[:, sel] if sel.size < n else c
    if sel.size < n:
        lo, hi, f_lo, f_hi = lo[sel], hi[sel], f_lo[sel], f_hi[sel]
        il0, vc0 = il0[sel], vc0[sel]
    a11, a12, a21, a22, b1 = cs[A11], cs[A12], cs[A21], cs[S] - cs[N11], cs[B1]
    # Start from the chord (the current is nearly linear over a switching period), then take
    # Halley steps (cubic convergence) kept inside the bracket.
    t = lo + (hi - lo) * np.clip(f_lo / (f_lo - f_hi), 0.0, 1.0)
    scale = np.maximum(hi, np.finfo(float).tiny)
    for _ in range(40):
        il, vc = diode_state(cs, il0, vc0, t)
        positive = il > 0.0
        lo = np.where(positive, t, lo)
        hi = np.where(positive, hi, t)
        d_il = a11 * il + a12 * vc + b1
        d_vc = a21 * il + a22 * vc - cs[W]
        dd_il = a11 * d_il + a12 * d_vc
        with np.errstate(divide="ignore", invalid="ignore"):
            step = -2.0 * il * d_il / (2.0 * d_il * d_il - il * dd_il)
        t_new = t + step
        inside = (t_new >= lo) & (t_new <= hi) & np.isfinite(t_new)
        t_new = np.where(inside, t_new, 0.5 * (lo + hi))
        moved = t_new - t
        t = t_new
        # A Halley step of relative size 1e-6 leaves an error of order 1e-18.
        converged = (inside & (np.abs(moved) <= 1e-6 * scale)) | (hi - lo <= 1e-15 * scale)
        if converged.all():
            break
    t_zero[sel] = t
    vc_zero[sel] = vc + d_vc * moved  # the last step is tiny: first order is exact here
    return t_zero, vc_zero


def idle_reconduction_time(c: np.ndarray, vc0: np.ndarray) -> np.ndarray:
    """Time after which the diode starts conducting again from IDLE (vout falls to vin - v_f).

    Closed form: in IDLE, vC relaxes exponentially towards -w/m. Returns 0 if the diode
    should conduct at once and inf if it never does.
    """
    m, w, v_th = c[M], c[W], c[V_TH]
    slope = m * vc0 + w  # -dvC/dt
    with np.errstate(divide="ignore", invalid="ignore"):
        y = (vc0 - v_th) / slope  # time to reach v_th at the initial slope
        u = m * y
        stretch = np.where(u == 0.0, 1.0, -np.log1p(-u) / u)
        t = y * stretch
    t = np.where((slope > 0) & (u < 1.0), t, np.inf)
    return np.where(vc0 <= v_th, 0.0, t)
