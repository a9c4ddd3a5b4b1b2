"""Sanity checks of the solve_ivp reference simulator (tests/reference_ivp.py).

The reference is what the exact engine is checked against, so it is itself checked here:
against closed-form circuit solutions where they exist (tight tolerances, ~1e-9), against
exact per-period balance identities and energy conservation (~1e-7..1e-6, limited by the
quadrature of the samples), and against textbook steady-state formulas (loose tolerances, since
those formulas are small-ripple approximations).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_ivp import simulate_ivp

from boostsim.params import BoostParams

FSW = 100e3
TS = 1.0 / FSW


def midpoints(k0: int, k1: int, per_period: int) -> np.ndarray:
    """Midpoints of ``per_period`` equal cells per period over periods k0..k1-1."""
    n = (k1 - k0) * per_period
    return (k0 + (np.arange(n) + 0.5) / per_period) * TS


# -- closed-form circuit solutions -------------------------------------------------------------


def test_lc_startup_and_diode_turn_off_exact():
    """D = 0, no load, lossless: a series LC charged from vin. iL = vin sqrt(C/L) sin(wt),
    vC = vin (1 - cos wt) until iL returns to zero at t = pi/w; then the diode blocks and
    vC stays at 2 vin forever."""
    vin, L, C = 10.0, 100e-6, 10e-6
    p = BoostParams(vin=vin, L=L, C=C, R=math.inf, fsw=FSW)
    w = 1.0 / math.sqrt(L * C)
    t_off = math.pi / w
    t = np.linspace(0.0, 3e-4, 301)
    r = simulate_ivp(p, 0.0, 3e-4, t)
    assert len(r["diode_off_times"]) == 1
    assert r["diode_off_times"][0] == pytest.approx(t_off, rel=1e-10)
    assert r["diode_on_times"] == []
    before = t < t_off
    np.testing.assert_allclose(r["il"][before], vin * math.sqrt(C / L) * np.sin(w * t[before]),
                               rtol=0, atol=1e-9 * vin * math.sqrt(C / L))
    np.testing.assert_allclose(r["vc"][before], vin * (1 - np.cos(w * t[before])),
                               rtol=0, atol=1e-9 * vin)
    np.testing.assert_array_equal(r["il"][~before], 0.0)
    np.testing.assert_allclose(r["vc"][~before], 2 * vin, rtol=1e-10)
    np.testing.assert_allclose(r["vout"], r["vc"], rtol=0, atol=0)  # r_C = 0


def test_load_step_then_reconduction_exact():
    """Start with C charged to 2 vin and no load (diode off). A load step to R at t_s discharges C
    through R + r_C with tau = (R + r_C) C; vout = vC R/(R + r_C) jumps at t_s (right-hand
    limit) and the diode conducts again when vout falls to vin - v_f = vin."""
    vin, L, C, R, r_C = 10.0, 100e-6, 10e-6, 20.0, 0.5
    p = BoostParams(vin=vin, L=L, C=C, R=math.inf, fsw=FSW, r_C=r_C)
    t_s = 2e-4  # = 20 Ts, on a PWM edge
    tau = (R + r_C) * C
    t_on = t_s + tau * math.log(2 * R / (R + r_C))
    t = np.array([t_s - 1e-7, t_s, t_s + 1e-7, 0.5 * (t_s + t_on), t_on])
    r = simulate_ivp(p, 0.0, 5e-4, t, x0=(0.0, 2 * vin), steps=[(t_s, {"R": R})])
    assert r["diode_off_times"] == []
    assert len(r["diode_on_times"]) == 1
    assert r["diode_on_times"][0] == pytest.approx(t_on, rel=1e-10)
    assert r["vout"][0] == pytest.approx(2 * vin, rel=1e-10)  # before the step: no load
    assert r["vout"][1] == pytest.approx(2 * vin * R / (R + r_C), rel=1e-10)  # right-hand
    vc_mid = 2 * vin * math.exp(-(t[3] - t_s) / tau)
    assert r["vc"][3] == pytest.approx(vc_mid, rel=1e-10)
    assert r["il"][3] == 0.0
    assert r["vout"][4] == pytest.approx(vin, rel=1e-9)


def test_on_interval_exact_and_inductor_ripple():
    """Lossless CCM: during the on-time diL/dt = vin/L exactly, so the rise of iL over the
    on-time equals the textbook ripple vin D Ts / L; vC decays as exp(-t/RC)."""
    vin, L, C, R, D = 10.0, 100e-6, 10e-6, 20.0, 0.5
    p = BoostParams(vin=vin, L=L, C=C, R=R, fsw=FSW)
    k = 150
    t = np.array([k * TS, (k + D) * TS, (k + 1) * TS])
    v_th = vin / (1 - D)
    r = simulate_ivp(p, D, t[-1], t, x0=(v_th / (R * (1 - D)), v_th))
    ripple = vin * D * TS / L
    assert r["il"][1] - r["il"][0] == pytest.approx(ripple, rel=1e-9)
    assert r["vc"][1] / r["vc"][0] == pytest.approx(math.exp(-D * TS / (R * C)), rel=1e-11)
    # CCM: the inductor current never reaches zero
    assert r["diode_off_times"] == []
    assert r["il"].min() > ripple


def test_line_step_inside_on_time():
    """A vin step in the middle of an on-time changes the slope of iL there (lossless)."""
    vin1, vin2, L, C, R, D = 10.0, 12.0, 100e-6, 10e-6, 20.0, 0.5
    p = BoostParams(vin=vin1, L=L, C=C, R=R, fsw=FSW)
    k = 40
    t_s = (k + 0.2) * TS
    t = np.array([k * TS, t_s, (k + D) * TS])
    r = simulate_ivp(p, D, t[-1], t, steps=[(t_s, {"vin": vin2})])
    assert r["il"][1] - r["il"][0] == pytest.approx(vin1 * 0.2 * TS / L, rel=1e-9)
    assert r["il"][2] - r["il"][1] == pytest.approx(vin2 * 0.3 * TS / L, rel=1e-9)


def test_right_hand_limit_at_switching_instants():
    """With ESR, vout jumps at each PWM edge; a sample exactly on an edge is the right-hand
    limit: at turn-off vout = (vC + r_C (iL - i_load)) / (1 + r_C/R), at turn-on
    vout = (vC - r_C i_load) / (1 + r_C/R)."""
    vin, L, C, R, r_C, i_load, D = 10.0, 47e-6, 10e-6, 20.0, 0.2, 0.1, 0.4
    p = BoostParams(vin=vin, L=L, C=C, R=R, fsw=FSW, r_C=r_C, i_load=i_load, r_L=0.05)
    k = 30
    eps = 1e-6 * TS
    t = np.array([(k + D) * TS - eps, (k + D) * TS, (k + D) * TS + eps,
                  (k + 1) * TS - eps, (k + 1) * TS])
    r = simulate_ivp(p, D, (k + 1) * TS, t)
    den = 1 + r_C / R
    assert r["vout"][1] == pytest.approx((r["vc"][1] + r_C * (r["il"][1] - i_load)) / den,
                                         rel=1e-12)
    assert r["vout"][1] == pytest.approx(r["vout"][2], rel=1e-6)
    assert abs(r["vout"][0] - r["vout"][1]) > 0.5 * r_C * r["il"][1] / den
    # t_end on an edge: the last sample is the on-state value of the next period
    assert r["vout"][4] == pytest.approx((r["vc"][4] - r_C * i_load) / den, rel=1e-12)
    assert abs(r["vout"][3] - r["vout"][4]) > 0.5 * r_C * r["il"][4] / den


# -- exact balance identities and energy -----------------------------------------------------


def _period_integrals(r, D, k0, k1, m):
    """Per-period midpoint integrals over the off-time of vout and iL, and over the period."""
    vout = r["vout"].reshape(k1 - k0, m)
    il = r["il"].reshape(k1 - k0, m)
    off = (np.arange(m) + 0.5) / m >= D
    h = TS / m
    return (h * vout[:, off].sum(axis=1), h * il[:, off].sum(axis=1), h * vout.sum(axis=1))


@pytest.mark.parametrize("sync", [False, True])
def test_volt_second_and_charge_balance_every_period(sync):
    """Lossless CCM: L (iL(k+1) - iL(k)) = vin Ts - int_off vout dt and
    C (vC(k+1) - vC(k)) = int_off iL dt - int vout/R dt hold in every period (not only in
    steady state); checked during a transient from 80 % of the steady-state voltage.
    Synchronous at light load also exercises negative inductor current."""
    vin, L, C, R, D = 10.0, 47e-6, 10e-6, 20.0 if not sync else 200.0, 0.5
    p = BoostParams(vin=vin, L=L, C=C, R=R, fsw=FSW, synchronous=sync)
    k0, k1, m = 0, 40, 400
    t = np.concatenate([midpoints(k0, k1, m), np.arange(k0, k1 + 1) * TS])
    order = np.argsort(t)
    v_th = vin / (1 - D)
    r = simulate_ivp(p, D, k1 * TS, t[order], x0=(v_th / (R * (1 - D)), 0.8 * v_th))
    assert r["diode_off_times"] == []  # CCM throughout, so the identities hold
    back = np.empty_like(order)
    back[order] = np.arange(order.size)
    samples = {key: r[key][back[: (k1 - k0) * m]] for key in ("il", "vc", "vout")}
    edges = {key: r[key][back[(k1 - k0) * m:]] for key in ("il", "vc")}
    v_off, i_off, v_all = _period_integrals(samples, D, k0, k1, m)
    scale_v = vin * TS
    np.testing.assert_allclose(L * np.diff(edges["il"]), vin * TS - v_off, rtol=0,
                               atol=1e-6 * scale_v)
    # midpoint-rule error ~ (w h)^2/24 ~ 3e-8 relative with m = 400
    np.testing.assert_allclose(C * np.diff(edges["vc"]), i_off - v_all / R, rtol=0,
                               atol=1e-6 * np.abs(i_off).max())
    if sync:
        assert samples["il"].min() < 0.0  # light load: current reverses


@pytest.mark.parametrize(("L", "D", "x0"), [(22e-6, 0.4, (0.0, 0.0)), (4.7e-6, 0.25, (0.0, 8.0))])
def test_energy_balance_with_losses(L, D, x0):
    """Energy in = stored + dissipated + delivered, with every loss element present, over a
    startup transient (CCM case) and in DCM with diode turn-off events (second case)."""
    vin, C, R = 5.0, 10e-6, 30.0
    p = BoostParams(vin=vin, L=L, C=C, R=R, fsw=FSW, r_L=0.05, r_on=0.03, v_f=0.35, r_d=0.04,
                    r_C=0.1, i_load=0.05)
    k1, m = 60, 400
    t = midpoints(0, k1, m)
    r = simulate_ivp(p, D, k1 * TS, t, x0=x0)
    if L < 1e-5:
        assert len(r["diode_off_times"]) >= k1 // 2  # DCM
    il, vc, vout = r["il"], r["vc"], r["vout"]
    on = (t / TS) % 1.0 < D
    iout = vout / R + 0.05
    i_n = np.where(on, 0.0, il)  # current the rectifier delivers to the output node
    ic = i_n - iout
    p_loss = (il**2 * (0.05 + np.where(on, 0.03, 0.04)) + np.where(on, 0.0, 0.35 * il)
              + 0.1 * ic**2)
    h = TS / m
    e_in = h * np.sum(vin * il)
    e_out = h * np.sum(vout * iout)
    e_loss = h * np.sum(p_loss)
    il_end, vc_end = r["x_end"]
    e_store = 0.5 * L * (il_end**2 - x0[0] ** 2) + 0.5 * C * (vc_end**2 - x0[1] ** 2)
    assert e_in > 0
    assert e_store + e_loss + e_out == pytest.approx(e_in, rel=2e-6)
    # and the ESR node equation: vout - vC = r_C iC
    np.testing.assert_allclose(vout - vc, 0.1 * ic, rtol=0, atol=1e-12)


# -- textbook steady state -------------------------------------------------------------------


def test_ccm_steady_state_against_theory():
    """Lossless CCM after settling: the off-time mean of vout is vin/(1-D) (exact in periodic
    steady state, 1e-6); the period mean is within half an output ripple of it; the iL ripple
    is vin D Ts/L and the mean iL is vout/(R (1-D))."""
    vin, L, C, R, D = 10.0, 100e-6, 10e-6, 20.0, 0.5
    p = BoostParams(vin=vin, L=L, C=C, R=R, fsw=FSW)
    v_th = vin / (1 - D)
    i_th = v_th / (R * (1 - D))
    k0, k1, m = 600, 601, 400
    t = midpoints(k0, k1, m)
    r = simulate_ivp(p, D, k1 * TS, t, x0=(i_th, v_th))
    off = (t / TS) % 1.0 >= D
    v_off_mean = r["vout"][off].mean()
    assert v_off_mean == pytest.approx(v_th, rel=1e-6)
    ripple_v = D * v_th * TS / (R * C)
    assert abs(r["vout"].mean() - v_th) < 0.5 * ripple_v
    assert np.ptp(r["vout"]) == pytest.approx(ripple_v, rel=0.05)
    assert np.ptp(r["il"]) == pytest.approx(vin * D * TS / L, rel=0.01)  # sampling grid
    assert r["il"].mean() == pytest.approx(r["vout"].mean() / (R * (1 - D)), rel=1e-3)


def test_dcm_steady_state_against_theory():
    """Lossless DCM: mean vout near vin (1 + sqrt(1 + 4D^2/K))/2 (1%: the formula neglects
    the output ripple), one diode turn-off per period, the diode conduction time near
    D2 Ts = K M Ts / D (2%), and iL at the end of the on-time exactly vin D Ts / L since it
    starts each period from zero."""
    vin, L, C, R, D = 10.0, 10e-6, 47e-6, 50.0, 0.3
    p = BoostParams(vin=vin, L=L, C=C, R=R, fsw=FSW)
    K = 2 * L * FSW / R
    assert K < D * (1 - D) ** 2
    M = (1 + math.sqrt(1 + 4 * D**2 / K)) / 2
    k0, k1, m = 400, 402, 200
    t = np.concatenate([midpoints(k0, k1, m)])
    t_edges = np.array([k0 * TS, (k0 + D) * TS, (k0 + 1) * TS])
    t_all = np.sort(np.concatenate([t, t_edges]))
    r = simulate_ivp(p, D, k1 * TS, t_all, x0=(0.0, M * vin))
    mid = np.isin(t_all, t)
    assert r["vout"][mid].mean() == pytest.approx(M * vin, rel=0.01)
    offs = np.array(r["diode_off_times"])
    assert len(offs) == k1  # one per period, from the first
    d2 = (offs[k0:k1] / TS) % 1.0 - D
    np.testing.assert_allclose(d2, K * M / D, rtol=0.02)
    edge = r["il"][~mid]
    assert edge[0] == 0.0 and edge[2] == 0.0
    assert edge[1] == pytest.approx(vin * D * TS / L, rel=1e-10)


# -- argument checking ----------------------------------------------------------------------


def test_rejects_bad_arguments():
    p = BoostParams(vin=5.0, L=1e-5, C=1e-5, R=10.0, fsw=FSW)
    with pytest.raises(ValueError, match="lanes"):
        simulate_ivp(BoostParams(vin=[5.0, 6.0], L=1e-5, C=1e-5, R=10.0, fsw=FSW), 0.5, TS,
                     [0.0])
    with pytest.raises(ValueError, match="sorted"):
        simulate_ivp(p, 0.5, TS, [TS, 0.0])
    with pytest.raises(ValueError, match="steps may change"):
        simulate_ivp(p, 0.5, TS, [0.0], steps=[(0.5 * TS, {"L": 1e-6})])
    with pytest.raises(ValueError, match="duty"):
        simulate_ivp(p, 1.5, TS, [0.0])
    with pytest.raises(ValueError, match="iL < 0"):
        simulate_ivp(p, 0.5, TS, [0.0], x0=(-1.0, 0.0))
