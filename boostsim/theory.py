"""Textbook closed forms for the boost converter: conversion ratios, CCM/DCM boundary, ripple,
small-signal corner frequencies.

These are the standard averaged / small-ripple results; they are used to size designs, to seed
the exact engine and to check it. Every function accepts floats or numpy arrays (broadcast
together) and returns a float or an array. Units are SI (V, A, H, F, ohm, Hz, s, rad/s).

Notation: ``D`` is the switch duty cycle, ``D' = 1 - D``, ``Ts = 1/fsw``. ``R`` may be
``inf`` (no resistive load).

References
----------
[EM] R. W. Erickson, D. Maksimović, *Fundamentals of Power Electronics*, 3rd ed., Springer,
     2020: Ch. 2 (steady-state analysis, volt-second and charge balance, small-ripple ripple
     estimates), Ch. 3 (averaged equivalent circuits with conduction losses), Ch. 5
     (discontinuous conduction mode, the boost example and the K / K_crit summary table),
     Ch. 7-8 (averaged small-signal model; boost control-to-output transfer function).
[MUR] N. Mohan, T. M. Undeland, W. P. Robbins, *Power Electronics: Converters, Applications,
     and Design*, 3rd ed., Wiley, 2003: Ch. 7, Sec. 7-4 (step-up converter, output ripple).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

__all__ = [
    "ccm_duty",
    "ccm_il_mean",
    "ccm_ratio_ideal",
    "ccm_vout",
    "critical_inductance",
    "dcm_ratio",
    "dcm_vout",
    "esr_ripple",
    "inductor_ripple",
    "is_ccm",
    "k_crit",
    "k_param",
    "output_ripple",
    "resonance",
    "resonance_hz",
    "rhp_zero",
    "rhp_zero_hz",
    "vout_ideal",
]


def _ret(x):
    """0-d arrays -> Python float (bools stay bools); arrays unchanged."""
    x = np.asarray(x)
    if x.ndim == 0:
        return x.item()
    return x


def _conductance(R):
    """1/R with 1/inf = 0 (R > 0 assumed)."""
    R = np.asarray(R, dtype=float)
    with np.errstate(divide="ignore"):
        return np.where(np.isinf(R), 0.0, 1.0 / R)


# -- ideal CCM ---------------------------------------------------------------------------------


def ccm_ratio_ideal(D):
    """Ideal CCM conversion ratio ``M = Vout/Vin = 1/(1-D)`` (dimensionless).

    From inductor volt-second balance of the lossless converter, [EM] Ch. 2 (boost example,
    M(D) = 1/D'). ``D = 1`` gives ``inf``.
    """
    D = np.asarray(D, dtype=float)
    with np.errstate(divide="ignore"):
        return _ret(1.0 / (1.0 - D))


# -- CCM with conduction losses -------------------------------------------------------------


def _loss_terms(D, r_L, r_on, r_d):
    """``Req = r_L + D r_on + D' r_d``: the resistance the averaged inductor current sees."""
    D = np.asarray(D, dtype=float)
    return r_L + D * np.asarray(r_on, dtype=float) + (1.0 - D) * np.asarray(r_d, dtype=float)


def ccm_vout(vin, D, R, r_L=0.0, r_on=0.0, v_f=0.0, r_d=0.0, i_load=0.0):
    """DC output voltage [V] of the averaged CCM boost model with conduction losses.

    Solves the two DC balance equations of the averaged model ([EM] Ch. 3, boost with inductor
    resistance, switch on-resistance and diode drop/resistance)::

        inductor volt-second:  vin - I r_L - D I r_on - D' (v_f + I r_d + V) = 0
        capacitor charge:      D' I = V/R + i_load

    for the output voltage ``V`` (``I`` is the mean inductor current). Closed form::

        V = (D' vin - D'^2 v_f - Req i_load) / (D'^2 + Req/R),   Req = r_L + D r_on + D' r_d

    which, for ``i_load = 0``, is [EM]'s ``V/Vg = (1/D') (1 - D' V_D/Vg) / (1 + Req/(D'^2 R))``.
    ``R = inf`` is allowed (then ``Req/R = 0``). For a synchronous converter pass
    ``r_d = r_sync, v_f = 0``. The ESR ``r_C`` does not enter the DC solution.

    Valid only while the converter really is in CCM (mean current above half the ripple, or
    synchronous); no clipping is applied (the result can be negative for absurd losses).
    Inputs: vin [V], D [-] (0 <= D < 1), R, r_L, r_on, r_d [ohm], v_f [V], i_load [A].
    """
    D = np.asarray(D, dtype=float)
    Dp = 1.0 - D
    G = _conductance(R)
    Req = _loss_terms(D, r_L, r_on, r_d)
    num = Dp * np.asarray(vin, dtype=float) - Dp**2 * v_f - Req * np.asarray(i_load, dtype=float)
    den = Dp**2 + G * Req
    with np.errstate(divide="ignore", invalid="ignore"):
        return _ret(num / den)


def ccm_il_mean(vin, D, R, r_L=0.0, r_on=0.0, v_f=0.0, r_d=0.0, i_load=0.0):
    """Mean inductor current [A] of the averaged CCM boost model with conduction losses.

    Same model and arguments as :func:`ccm_vout`; eliminating ``V`` instead of ``I``::

        I = ((vin - D' v_f)/R + D' i_load) / (D'^2 + Req/R)

    so that ``D' I = V/R + i_load`` holds ([EM] Ch. 3). With ``R = inf``: ``I = i_load/D'``.
    """
    D = np.asarray(D, dtype=float)
    Dp = 1.0 - D
    G = _conductance(R)
    Req = _loss_terms(D, r_L, r_on, r_d)
    num = G * (np.asarray(vin, dtype=float) - Dp * v_f) + Dp * np.asarray(i_load, dtype=float)
    den = Dp**2 + G * Req
    with np.errstate(divide="ignore", invalid="ignore"):
        return _ret(num / den)


def _vout_of_dprime(dp, vin, G, r_L, r_on, v_f, r_d, i_load):
    """ccm_vout written in terms of D' (scalar helper for the error message)."""
    Req = r_L + (1.0 - dp) * r_on + dp * r_d
    return (dp * vin - dp**2 * v_f - Req * i_load) / (dp**2 + G * Req)


def _max_vout(vin, G, r_L, r_on, v_f, r_d, i_load):
    """Largest vout of the lossy CCM model over 0 < D' <= 1, and the duty giving it."""
    args = (vin, G, r_L, r_on, v_f, r_d, i_load)
    res = minimize_scalar(lambda dp: -_vout_of_dprime(dp, *args), bounds=(1e-9, 1.0),
                          method="bounded", options={"xatol": 1e-12})
    return float(-res.fun), float(1.0 - res.x)


def ccm_duty(vin, vout, R, r_L=0.0, r_on=0.0, v_f=0.0, r_d=0.0, i_load=0.0):
    """Duty cycle [-] that gives the DC output ``vout`` [V] in the lossy CCM model.

    Exact inverse of :func:`ccm_vout` on its normal operating branch (where vout rises with D).
    With ``Iout = vout/R + i_load``, ``a = r_L + r_on``, ``b = r_d - r_on``, the two balance
    equations of :func:`ccm_vout` reduce to a quadratic in ``D' = 1 - D``::

        (vout + v_f) D'^2 - (vin - b Iout) D' + a Iout = 0

    whose larger root is the normal branch (the smaller one is the high-duty branch beyond
    the maximum of vout(D), where the losses win). See [EM] Ch. 3.

    Raises ``ValueError`` when ``vout`` is not reachable: above the maximum of the lossy
    model (negative discriminant), below the ``D = 0`` output (it would need ``D < 0``), or
    ``vout <= -v_f``. Arrays broadcast; the error names the first offending element.
    Does not check that the operating point is in CCM.
    """
    vin_b, vout_b, R_b, rL_b, ron_b, vf_b, rd_b, il_b = np.broadcast_arrays(
        *(np.asarray(x, dtype=float) for x in (vin, vout, R, r_L, r_on, v_f, r_d, i_load)))
    G = _conductance(R_b)
    iout = vout_b * G + il_b
    A = vout_b + vf_b
    a = rL_b + ron_b
    b = rd_b - ron_b
    p = vin_b - b * iout
    c = a * iout
    with np.errstate(invalid="ignore", divide="ignore"):
        disc = p * p - 4.0 * A * c
        dp = (p + np.sqrt(np.maximum(disc, 0.0))) / (2.0 * A)
    tol = 1e-12
    bad_sign = ~(A > 0.0)
    bad_disc = ~bad_sign & ~(disc >= 0.0)
    bad_high = ~bad_sign & ~bad_disc & ~(dp > 0.0)
    bad_low = ~bad_sign & ~bad_disc & ~bad_high & (dp > 1.0 + tol)
    bad = bad_sign | bad_disc | bad_high | bad_low
    if np.any(bad):
        i = np.unravel_index(int(np.flatnonzero(bad.ravel())[0]), bad.shape)
        where = f" (element {tuple(int(j) for j in i)})" if bad.ndim else ""
        args = tuple(float(x[i]) for x in (vin_b, G, rL_b, ron_b, vf_b, rd_b, il_b))
        v = float(vout_b[i])
        if bad_sign[i]:
            raise ValueError(f"vout = {v:g} V is not reachable: it must exceed -v_f "
                             f"= {-float(vf_b[i]):g} V{where}")
        if bad_low[i]:
            v0 = _vout_of_dprime(1.0, *args)
            raise ValueError(f"vout = {v:g} V is not reachable: below the D = 0 output "
                             f"{v0:.6g} V of the lossy CCM model{where}")
        vmax, dmax = _max_vout(*args)
        raise ValueError(f"vout = {v:g} V is not reachable: above the maximum {vmax:.6g} V "
                         f"(at D = {dmax:.4f}) of the lossy CCM model with these losses "
                         f"and load{where}")
    return _ret(1.0 - np.minimum(dp, 1.0))


# -- CCM/DCM boundary and DCM ------------------------------------------------------------------


def k_param(L, R, fsw):
    """Dimensionless DCM parameter ``K = 2 L / (R Ts) = 2 L fsw / R`` [-] ([EM] Ch. 5).

    ``R = inf`` gives ``K = 0`` (no load: always DCM for a non-synchronous converter).
    """
    return _ret(2.0 * np.asarray(L, dtype=float) * np.asarray(fsw, dtype=float)
                * _conductance(R))


def k_crit(D):
    """Critical value ``K_crit(D) = D (1-D)^2`` [-] of the boost converter ([EM] Ch. 5).

    The (ideal) converter is in CCM when ``K > K_crit(D)`` and in DCM when ``K < K_crit(D)``.
    Its maximum is 4/27 at D = 1/3.
    """
    D = np.asarray(D, dtype=float)
    return _ret(D * (1.0 - D) ** 2)


def critical_inductance(D, R, fsw):
    """Boundary inductance ``L_crit = R Ts D (1-D)^2 / 2`` [H] (K = K_crit), [EM] Ch. 5.

    L > L_crit: CCM; L < L_crit: DCM (ideal converter, resistive load R [ohm]).
    """
    D = np.asarray(D, dtype=float)
    return _ret(np.asarray(R, dtype=float) * D * (1.0 - D) ** 2
                / (2.0 * np.asarray(fsw, dtype=float)))


def is_ccm(D, L, R, fsw):
    """True where the ideal converter runs in CCM, i.e. ``K >= K_crit(D)`` ([EM] Ch. 5).

    The boundary itself (K == K_crit, where both mode formulas agree) counts as CCM.
    """
    return _ret(np.asarray(k_param(L, R, fsw)) >= np.asarray(k_crit(D)))


def dcm_ratio(D, K):
    """Ideal DCM conversion ratio ``M = (1 + sqrt(1 + 4 D^2 / K)) / 2`` [-] ([EM] Ch. 5).

    Valid for ``K < K_crit(D)``; equals ``1/(1-D)`` at ``K = K_crit(D)``. Limits: ``D = 0``
    gives 1 (for any K, including K = 0); ``K = 0`` with ``D > 0`` gives ``inf``.
    """
    D = np.asarray(D, dtype=float)
    K = np.asarray(K, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * D * D / K))
    return _ret(np.where(D == 0.0, 1.0, m))


def dcm_vout(vin, D, L, R, fsw):
    """Ideal DCM output voltage ``vin * dcm_ratio(D, K)`` [V] with a resistive load R [ohm].

    Lossless, small output ripple ([EM] Ch. 5). Only meaningful when the converter is in DCM.
    """
    return _ret(np.asarray(vin, dtype=float) * np.asarray(dcm_ratio(D, k_param(L, R, fsw))))


def vout_ideal(vin, D, L, R, fsw):
    """Ideal (lossless) output voltage [V] in whichever mode applies ([EM] Ch. 2 and 5).

    ``vin/(1-D)`` where :func:`is_ccm`, else :func:`dcm_vout`. Continuous at the boundary.
    """
    ccm = np.asarray(is_ccm(D, L, R, fsw))
    m_ccm = np.asarray(ccm_ratio_ideal(D))
    m_dcm = np.asarray(dcm_ratio(D, k_param(L, R, fsw)))
    return _ret(np.asarray(vin, dtype=float) * np.where(ccm, m_ccm, m_dcm))


# -- ripple ------------------------------------------------------------------------------------


def inductor_ripple(vin, D, L, fsw):
    """Peak-to-peak inductor current ripple ``vin D Ts / L`` [A] (lossless CCM).

    The inductor sees ``vin`` for ``D Ts``; [EM] Ch. 2 (2 Δi_L with Δi_L = Vg D Ts / 2L).
    """
    return _ret(np.asarray(vin, dtype=float) * np.asarray(D, dtype=float)
                / (np.asarray(L, dtype=float) * np.asarray(fsw, dtype=float)))


def output_ripple(vout, D, R, C, fsw):
    """Peak-to-peak capacitor-charge output ripple ``D vout Ts / (R C)`` [V].

    During the on-time the capacitor alone supplies ``vout/R``; lossless CCM, small-ripple
    approximation, ESR neglected. [EM] Ch. 2 (2 Δv = V D Ts / RC); [MUR] Sec. 7-4
    (ΔVo/Vo = D Ts/τ, τ = RC).
    """
    return _ret(np.asarray(D, dtype=float) * np.asarray(vout, dtype=float)
                / (np.asarray(R, dtype=float) * np.asarray(C, dtype=float)
                   * np.asarray(fsw, dtype=float)))


def esr_ripple(vin, D, L, R, fsw, r_C):
    """Peak-to-peak ESR contribution to the output ripple [V] (lossless CCM approximation).

    The capacitor current jumps from ``-Iout`` (switch on) to ``iL - Iout`` at turn-off, so
    the ESR voltage ``r_C iC`` swings by ``r_C * i_L,peak`` with
    ``i_L,peak = vin/((1-D)^2 R) + vin D Ts/(2 L)`` (ideal CCM mean plus half the ripple).
    Approximations: lossless CCM, resistive load, the ESR's own effect on the load current
    neglected (r_C << R); the true total ripple is at most this plus :func:`output_ripple`
    since the two peaks do not coincide. See [EM] Ch. 2 and [MUR] Sec. 7-4.
    """
    D = np.asarray(D, dtype=float)
    vin = np.asarray(vin, dtype=float)
    G = _conductance(R)
    il_peak = vin * G / (1.0 - D) ** 2 + 0.5 * np.asarray(inductor_ripple(vin, D, L, fsw))
    return _ret(np.asarray(r_C, dtype=float) * il_peak)


# -- small-signal (averaged CCM model) ---------------------------------------------------------


def rhp_zero(D, R, L):
    """Right-half-plane zero of the CCM control-to-output transfer function [rad/s].

    ``wz = (1-D)^2 R / L`` (lossless averaged model, resistive load), [EM] Ch. 8
    (boost G_vd(s) = G_d0 (1 - s/wz) / (1 + s/(Q w0) + (s/w0)^2)). For Hz see
    :func:`rhp_zero_hz`. ``R = inf`` gives ``inf`` (no zero).
    """
    D = np.asarray(D, dtype=float)
    return _ret((1.0 - D) ** 2 * np.asarray(R, dtype=float) / np.asarray(L, dtype=float))


def rhp_zero_hz(D, R, L):
    """Right-half-plane zero frequency in hertz: ``rhp_zero(D, R, L) / (2 pi)`` [Hz]."""
    return _ret(np.asarray(rhp_zero(D, R, L)) / (2.0 * np.pi))


def resonance(D, L, C):
    """Double-pole (LC) angular frequency of the CCM averaged model ``(1-D)/sqrt(LC)`` [rad/s].

    The boost's averaged model reflects L to the output as ``L/D'^2``; [EM] Ch. 8 (w0 = D'/√LC).
    """
    D = np.asarray(D, dtype=float)
    return _ret((1.0 - D) / np.sqrt(np.asarray(L, dtype=float) * np.asarray(C, dtype=float)))


def resonance_hz(D, L, C):
    """Double-pole frequency in hertz: ``resonance(D, L, C) / (2 pi)`` [Hz]."""
    return _ret(np.asarray(resonance(D, L, C)) / (2.0 * np.pi))
