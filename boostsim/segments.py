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

import numpy as np

ON, DIODE, IDLE = 0, 1, 2
TOPOLOGY_NAMES = ("on", "diode", "idle")

# Rows of the coefficient table (one column per lane). Kept as one 2-D array so that a batch
# whose lanes sit in different condition epochs (load/line steps) is gathered in one indexing op.
(K_ON, U_ON, M, W, A_OUT, A11, A12, A21, B1, S, Q2, N11, IL_EQ, VC_EQ, V_TH, SYNC, VIN, G,
 R_C, I_LOAD, R_L, R_ON, R_X, V_FX) = range(24)
N_ROWS = 24


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
    return rows


# -- scalar special functions -------------------------------------------------------------------

def phi1(z: np.ndarray) -> np.ndarray:
    """(e^z - 1)/z, equal to 1 at z = 0, accurate for small |z|."""
    z = np.asarray(z, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(z == 0.0, 1.0, np.expm1(z) / z)


def decay(rate: np.ndarray, drive: np.ndarray, v0: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """Solution of ``v' = -rate v + drive`` from ``v0`` after ``tau`` (rate may be 0)."""
    return v0 + (drive - rate * v0) * tau * phi1(-rate * tau)


def exp_coeffs(s: np.ndarray, q2: np.ndarray, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(e^{s t} C(t), e^{s t} S(t))`` so that ``e^{A t} = ec I + es (A - s I)``."""
    z = q2 * tau * tau
    est = np.exp(s * tau)
    small = np.abs(z) < 1e-2
    if np.all(small):
        ec = est * (1.0 + z * (0.5 + z * (1.0 / 24 + z * (1.0 / 720 + z / 40320))))
        es = est * tau * (1.0 + z * (1.0 / 6 + z * (1.0 / 120 + z * (1.0 / 5040 + z / 362880))))
        return ec, es
    with np.errstate(invalid="ignore", over="ignore"):
        root = np.sqrt(np.abs(q2))
        theta = root * tau
        # q^2 < 0: damped oscillation.
        ec_trig = est * np.cos(theta)
        es_trig = est * np.sin(theta) / np.where(root == 0, 1.0, root)
        # q^2 > 0: two real eigenvalues s +- q (both negative); exponentials never overflow.
        e1 = np.exp((s + root) * tau)
        e2 = np.exp((s - root) * tau)
        ec_hyp = 0.5 * (e1 + e2)
        es_hyp = (e1 - e2) / np.where(root == 0, 1.0, 2.0 * root)
        ec_ser = est * (1.0 + z * (0.5 + z * (1.0 / 24 + z * (1.0 / 720 + z / 40320))))
        es_ser = est * tau * (1.0 + z * (1.0 / 6 + z * (1.0 / 120 + z * (1.0 / 5040
                                                                          + z / 362880))))
    ec = np.where(small, ec_ser, np.where(q2 < 0, ec_trig, ec_hyp))
    es = np.where(small, es_ser, np.where(q2 < 0, es_trig, es_hyp))
    return ec, es


# -- states within one segment ---------------------------------------------------------------

def diode_state(c: np.ndarray, il0: np.ndarray, vc0: np.ndarray, tau: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """State after ``tau`` seconds in the DIODE topology, from (il0, vc0)."""
    d1 = il0 - c[IL_EQ]
    d2 = vc0 - c[VC_EQ]
    ec, es = exp_coeffs(c[S], c[Q2], tau)
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
    il_d, vc_d = diode_state(c, il0, vc0, tau)
    il_on, vc_on = on_state(c, il0, vc0, tau)
    diode = topology == DIODE
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
    ec, es = exp_coeffs(c[S], c[Q2], tau)
    e_il = np.exp(-c[K_ON] * tau)
    e_vc = np.exp(-c[M] * tau)
    diode = topology == DIODE
    out = np.zeros((np.size(tau), 2, 2))
    out[:, 0, 0] = np.where(diode, ec + es * c[N11], np.where(topology == ON, e_il, 0.0))
    out[:, 0, 1] = np.where(diode, es * c[A12], 0.0)
    out[:, 1, 0] = np.where(diode, es * c[A21], 0.0)
    out[:, 1, 1] = np.where(diode, ec - es * c[N11], e_vc)
    return out


# -- event times ------------------------------------------------------------------------------

def critical_times(s: np.ndarray, q2: np.ndarray, p: np.ndarray, r: np.ndarray,
                   dur: np.ndarray) -> np.ndarray:
    """Zeros in (0, dur) of ``e^{s t}[C(t) p + S(t) r]``, as an (n, K) array padded with NaN.

    This is the time derivative of any linear output of a DIODE segment (``p`` and ``r`` are the
    output row times ``A d`` and ``(A - sI) A d``), so its zeros are the segment's extrema.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        root = np.sqrt(np.abs(q2))
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
                    rtol: float = 4e-16) -> np.ndarray:
    """First time in (0, dur] at which the diode current falls to zero; inf where it does not.

    The current is monotonic between its closed-form critical points, so the first interval
    whose end is <= 0 brackets the zero; safeguarded Newton steps then converge to rounding.
    """
    n = np.size(il0)
    d1 = il0 - c[IL_EQ]
    d2 = vc0 - c[VC_EQ]
    y1 = c[A11] * d1 + c[A12] * d2
    y2 = c[A21] * d1 + (c[S] - c[N11]) * d2
    p = y1
    r = c[N11] * y1 + c[A12] * y2
    crit = critical_times(c[S], c[Q2], p, r, dur)
    points = np.concatenate([np.zeros((n, 1)), np.sort(np.where(np.isnan(crit), np.inf, crit),
                                                       axis=1), dur[:, None]], axis=1)
    points = np.minimum(points, dur[:, None])
    values = diode_state(_columns(c, points.shape[1]), np.repeat(il0, points.shape[1]),
                         np.repeat(vc0, points.shape[1]), points.reshape(-1))[0]
    values = values.reshape(points.shape)
    values[:, 0] = il0
    below = values[:, 1:] <= 0.0
    found = below.any(axis=1)
    j = np.argmax(below, axis=1) + 1
    rows = np.arange(n)
    lo = points[rows, j - 1]
    hi = points[rows, j]
    result = np.full(n, np.inf)
    if not np.any(found):
        return result
    sel = np.flatnonzero(found)
    cs = c[:, sel]
    lo, hi = lo[sel], hi[sel]
    i0, v0 = il0[sel], vc0[sel]
    t = hi.copy()
    scale = np.maximum(dur[sel], np.finfo(float).tiny)
    for _ in range(100):
        il, vc = diode_state(cs, i0, v0, t)
        positive = il > 0.0
        lo = np.where(positive, t, lo)
        hi = np.where(positive, hi, t)
        slope = diode_derivative(cs, il, vc)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = t - il / slope
        inside = (newton > lo) & (newton < hi) & np.isfinite(newton)
        t_new = np.where(inside, newton, 0.5 * (lo + hi))
        done = (np.abs(t_new - t) <= rtol * scale) | (hi - lo <= rtol * scale) | (il == 0.0)
        t = np.where(il == 0.0, t, t_new)
        if np.all(done):
            break
    result[sel] = t
    return result


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


def _columns(c: np.ndarray, repeat: int) -> np.ndarray:
    """Coefficient table with each lane's column repeated ``repeat`` times (lane-major)."""
    return np.repeat(c, repeat, axis=1)
