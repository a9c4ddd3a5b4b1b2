"""Tests of the textbook closed forms in boostsim.theory.

Tolerances: identities that are exact in floating point up to a few roundings are checked to
rel 1e-12 (or abs 1e-12 for duties); hand-worked numbers to rel 1e-9 (the hand values are
given to 10+ significant digits or as exact expressions).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from boostsim import theory as th

EXACT = 1e-12


# -- ideal CCM ---------------------------------------------------------------------------------


def test_ccm_ratio_ideal_values_and_limits():
    assert th.ccm_ratio_ideal(0.0) == 1.0
    assert th.ccm_ratio_ideal(0.5) == 2.0
    assert th.ccm_ratio_ideal(0.75) == 4.0
    assert th.ccm_ratio_ideal(1e-12) == pytest.approx(1.0, rel=1e-11)
    assert math.isinf(th.ccm_ratio_ideal(1.0))
    assert isinstance(th.ccm_ratio_ideal(0.5), float)


# -- lossy CCM ---------------------------------------------------------------------------------

LOSSES = dict(r_L=0.05, r_on=0.03, v_f=0.35, r_d=0.04)


def test_ccm_vout_lossless_equals_ideal():
    D = np.linspace(0.0, 0.95, 20)
    np.testing.assert_allclose(th.ccm_vout(5.0, D, 48.0), 5.0 / (1 - D), rtol=EXACT)
    np.testing.assert_allclose(th.ccm_vout(5.0, D, math.inf), 5.0 / (1 - D), rtol=EXACT)


def test_ccm_vout_worked_numbers():
    # r_L only (Erickson Ch. 3): V/Vg = (1/D') / (1 + r_L/(D'^2 R))
    # 5 V, D = 0.5, R = 48, r_L = 0.1: 2 / (1 + 0.1/12) = 2 * 120/121 -> V = 1200/121
    assert th.ccm_vout(5.0, 0.5, 48.0, r_L=0.1) == pytest.approx(1200 / 121, rel=1e-12)
    # diode drop only: V = vin/D' - v_f
    assert th.ccm_vout(5.0, 0.5, 48.0, v_f=0.4) == pytest.approx(9.6, rel=1e-12)
    # i_load only, lossless: V = vin/D' (no losses, the load does not matter)
    assert th.ccm_vout(5.0, 0.5, math.inf, i_load=0.3) == pytest.approx(10.0, rel=1e-12)
    # Default-board-like point, computed by hand:
    # Req = 0.05 + 0.6*0.03 + 0.4*0.04 = 0.084; num = 0.4*5 - 0.16*0.35 = 1.944
    # den = 0.16 + 0.084/48 = 0.16175 -> V = 1.944/0.16175 = 12.01854714064915
    assert th.ccm_vout(5.0, 0.6, 48.0, **LOSSES) == pytest.approx(12.01854714064915, rel=1e-9)


def test_ccm_vout_matches_erickson_form():
    """[EM] Ch. 3 form: V/Vg = (1/D') (1 - D' V_D/Vg) / (1 + (r_L + D r_on + D' r_d)/(D'^2 R))."""
    vin, R = 5.0, 48.0
    D = np.linspace(0.0, 0.9, 31)
    Dp = 1 - D
    req = LOSSES["r_L"] + D * LOSSES["r_on"] + Dp * LOSSES["r_d"]
    expected = vin / Dp * (1 - Dp * LOSSES["v_f"] / vin) / (1 + req / (Dp**2 * R))
    np.testing.assert_allclose(th.ccm_vout(vin, D, R, **LOSSES), expected, rtol=EXACT)


@pytest.mark.parametrize("R", [48.0, 5.0, math.inf])
@pytest.mark.parametrize("i_load", [0.0, 0.2])
def test_ccm_vout_and_il_mean_satisfy_both_balances(R, i_load):
    vin = 5.0
    D = np.linspace(0.0, 0.9, 19)
    V = np.asarray(th.ccm_vout(vin, D, R, **LOSSES, i_load=i_load))
    I = np.asarray(th.ccm_il_mean(vin, D, R, **LOSSES, i_load=i_load))
    Dp = 1 - D
    volt_second = (vin - I * LOSSES["r_L"] - D * I * LOSSES["r_on"]
                   - Dp * (LOSSES["v_f"] + I * LOSSES["r_d"] + V))
    charge = Dp * I - (V / R + i_load)
    np.testing.assert_allclose(volt_second, 0.0, atol=EXACT * vin)
    np.testing.assert_allclose(charge, 0.0, atol=EXACT * max(1.0, float(np.abs(I).max())))


def test_ccm_il_mean_no_resistive_load():
    assert th.ccm_il_mean(5.0, 0.5, math.inf, **LOSSES, i_load=0.3) == pytest.approx(0.6)
    assert th.ccm_il_mean(5.0, 0.5, math.inf) == 0.0


# -- ccm_duty ----------------------------------------------------------------------------------


@pytest.mark.parametrize("R", [48.0, 10.0, math.inf])
@pytest.mark.parametrize("i_load", [0.0, 0.1])
def test_ccm_duty_inverts_ccm_vout(R, i_load):
    D = np.linspace(0.0, 0.85, 35)
    V = th.ccm_vout(5.0, D, R, **LOSSES, i_load=i_load)
    np.testing.assert_allclose(th.ccm_duty(5.0, V, R, **LOSSES, i_load=i_load), D,
                               rtol=0, atol=EXACT)


def test_ccm_duty_lossless_and_scalar():
    d = th.ccm_duty(5.0, 12.0, 48.0)
    assert isinstance(d, float)
    assert d == pytest.approx(1 - 5 / 12, abs=EXACT)
    assert th.ccm_duty(5.0, 5.0, 48.0) == pytest.approx(0.0, abs=EXACT)


@settings(max_examples=200, deadline=None)
@given(
    D=st.floats(0.0, 0.8),
    vin=st.floats(1.0, 50.0),
    R=st.floats(5.0, 1e4),
    r_L=st.floats(0.0, 0.2),
    r_on=st.floats(0.0, 0.2),
    v_f=st.floats(0.0, 0.8),
    r_d=st.floats(0.0, 0.2),
)
def test_ccm_duty_round_trip_property(D, vin, R, r_L, r_on, v_f, r_d):
    """On the normal branch (below the duty of maximum vout) duty -> vout -> duty is exact."""
    losses = dict(r_L=r_L, r_on=r_on, v_f=v_f, r_d=r_d)
    V = th.ccm_vout(vin, D, R, **losses)
    # only test the rising branch: dV/dD > 0 at D
    assume(V > 0 and th.ccm_vout(vin, D + 1e-6, R, **losses) > V)
    assert th.ccm_duty(vin, V, R, **losses) == pytest.approx(D, abs=1e-9)


def test_ccm_duty_unreachable_above_maximum():
    vin, R = 5.0, 48.0
    D = np.linspace(0.0, 0.999, 200001)
    V = np.asarray(th.ccm_vout(vin, D, R, **LOSSES))
    v_max = float(V.max())
    d_at_max = float(D[V.argmax()])
    # just below the maximum: reachable, and on the normal branch (D below the peak duty)
    d = th.ccm_duty(vin, v_max * (1 - 1e-9), R, **LOSSES)
    assert d <= d_at_max + 1e-3
    with pytest.raises(ValueError, match=r"not reachable.*above the maximum"):
        th.ccm_duty(vin, v_max * (1 + 1e-6), R, **LOSSES)
    with pytest.raises(ValueError, match="not reachable"):
        th.ccm_duty(vin, 10 * vin * 10, R, **LOSSES)


def test_ccm_duty_unreachable_below_d0_and_negative():
    # D = 0 output is vin - v_f - losses < vin - v_f
    with pytest.raises(ValueError, match="below the D = 0 output"):
        th.ccm_duty(5.0, 4.0, 48.0, **LOSSES)
    with pytest.raises(ValueError, match="must exceed -v_f"):
        th.ccm_duty(5.0, -1.0, 48.0, **LOSSES)


def test_ccm_duty_array_error_names_element():
    with pytest.raises(ValueError, match=r"element \(2,\)"):
        th.ccm_duty(5.0, np.array([10.0, 12.0, 1e4]), 48.0, **LOSSES)


# -- boundary and DCM --------------------------------------------------------------------------


def test_k_values_and_critical_inductance():
    assert th.k_param(100e-6, 48.0, 100e3) == pytest.approx(2 * 100e-6 * 100e3 / 48.0,
                                                           rel=EXACT)
    assert th.k_param(100e-6, math.inf, 100e3) == 0.0
    assert th.k_crit(1 / 3) == pytest.approx(4 / 27, rel=EXACT)  # the maximum
    assert th.k_crit(0.0) == 0.0 and th.k_crit(1.0) == 0.0
    D, R, fsw = 0.3, 50.0, 100e3
    Lc = th.critical_inductance(D, R, fsw)
    assert Lc == pytest.approx(R * D * 0.49 / (2 * fsw), rel=EXACT)
    assert th.k_param(Lc, R, fsw) == pytest.approx(th.k_crit(D), rel=EXACT)
    assert th.is_ccm(D, 1.01 * Lc, R, fsw) is True
    assert th.is_ccm(D, 0.99 * Lc, R, fsw) is False
    assert th.is_ccm(D, 1e-3, math.inf, fsw) is False  # no load: DCM


def test_boundary_continuity():
    """At K = K_crit(D) the DCM ratio equals 1/(1-D)."""
    D = np.linspace(0.01, 0.95, 95)
    np.testing.assert_allclose(th.dcm_ratio(D, th.k_crit(D)), 1 / (1 - D), rtol=EXACT)


def test_dcm_ratio_worked_numbers_and_limits():
    # D = 0.3, K = 0.04: (1 + sqrt(1 + 0.36/0.04))/2 = (1 + sqrt(10))/2
    assert th.dcm_ratio(0.3, 0.04) == pytest.approx((1 + math.sqrt(10)) / 2, rel=EXACT)
    assert th.dcm_ratio(0.0, 0.04) == 1.0
    assert th.dcm_ratio(0.0, 0.0) == 1.0
    assert math.isinf(th.dcm_ratio(0.3, 0.0))
    assert th.dcm_ratio(1e-9, 0.1) == pytest.approx(1.0, abs=1e-15)
    # light load: M ~ D/sqrt(K) for K << D^2
    assert th.dcm_ratio(0.5, 1e-8) == pytest.approx(0.5 / 1e-4, rel=1e-3)
    # dcm_vout
    assert th.dcm_vout(10.0, 0.3, 10e-6, 50.0, 100e3) == pytest.approx(
        10 * (1 + math.sqrt(10)) / 2, rel=EXACT)


def test_vout_ideal_selects_mode_and_is_continuous():
    vin, D, R, fsw = 10.0, 0.3, 50.0, 100e3
    Lc = th.critical_inductance(D, R, fsw)
    assert th.vout_ideal(vin, D, 2 * Lc, R, fsw) == pytest.approx(vin / 0.7, rel=EXACT)
    assert th.vout_ideal(vin, D, 0.5 * Lc, R, fsw) == pytest.approx(
        th.dcm_vout(vin, D, 0.5 * Lc, R, fsw), rel=EXACT)
    L = Lc * np.linspace(0.5, 1.5, 1001)
    v = np.asarray(th.vout_ideal(vin, D, L, R, fsw))
    assert np.all(np.diff(v) <= 1e-12)  # non-increasing in L, no jump at the boundary
    assert np.max(np.abs(np.diff(v))) < 2e-3 * vin  # 0.1 % steps in L
    below = th.vout_ideal(vin, D, Lc * (1 - 1e-9), R, fsw)
    above = th.vout_ideal(vin, D, Lc * (1 + 1e-9), R, fsw)
    assert below == pytest.approx(above, rel=1e-8)


# -- ripple and small signal -----------------------------------------------------------------


def test_ripple_worked_numbers():
    # 12 V in, D = 0.5, 100 uH, 100 kHz: 12 * 0.5 * 10 us / 100 uH = 0.6 A
    assert th.inductor_ripple(12.0, 0.5, 100e-6, 100e3) == pytest.approx(0.6, rel=1e-12)
    # 12 V out, D = 0.5, 48 ohm, 100 uF, 100 kHz: 0.5 * 12 * 10 us / 4.8 ms = 12.5 mV
    assert th.output_ripple(12.0, 0.5, 48.0, 100e-6, 100e3) == pytest.approx(0.0125,
                                                                              rel=1e-12)
    # ESR: 6 V in, D = 0.5 -> 12 V, I_L = 0.5 A; ripple 6*0.5*10us/100uH = 0.3 A
    # peak 0.65 A; 20 mOhm -> 13 mV
    assert th.esr_ripple(6.0, 0.5, 100e-6, 48.0, 100e3, 0.02) == pytest.approx(0.013,
                                                                               rel=1e-12)


def test_small_signal_worked_numbers():
    # (1-D)^2 R / L = 0.25 * 48 / 100 uH = 120000 rad/s
    assert th.rhp_zero(0.5, 48.0, 100e-6) == pytest.approx(1.2e5, rel=1e-12)
    assert th.rhp_zero_hz(0.5, 48.0, 100e-6) == pytest.approx(1.2e5 / (2 * math.pi),
                                                             rel=1e-12)
    assert math.isinf(th.rhp_zero(0.5, math.inf, 100e-6))
    # (1-D)/sqrt(LC) = 0.5 / sqrt(1e-8) = 5000 rad/s
    assert th.resonance(0.5, 100e-6, 100e-6) == pytest.approx(5000.0, rel=1e-12)
    assert th.resonance_hz(0.5, 100e-6, 100e-6) == pytest.approx(5000 / (2 * math.pi),
                                                                rel=1e-12)
    assert th.resonance(0.0, 1.0, 1.0) == 1.0


# -- broadcasting ------------------------------------------------------------------------------


def test_broadcasting():
    D = np.linspace(0.1, 0.7, 5)
    vin = np.array([[5.0], [10.0], [12.0]])
    out = th.ccm_vout(vin, D, 48.0, **LOSSES)
    assert out.shape == (3, 5)
    np.testing.assert_allclose(out[1], th.ccm_vout(10.0, D, 48.0, **LOSSES), rtol=EXACT)
    duty = th.ccm_duty(vin, out, 48.0, **LOSSES)
    np.testing.assert_allclose(duty, np.broadcast_to(D, (3, 5)), atol=EXACT)
    assert th.ccm_il_mean(vin, D, np.array([48.0, 48.0, math.inf, 10.0, 20.0])).shape == (3, 5)
    assert th.dcm_ratio(D, np.array([[0.01], [0.1]])).shape == (2, 5)
    assert th.vout_ideal(vin, D, 10e-6, 50.0, 100e3).shape == (3, 5)
    assert np.asarray(th.is_ccm(D, np.array([[1e-6], [1e-3]]), 50.0, 100e3)).shape == (2, 5)
    for f, args in [(th.inductor_ripple, (vin, D, 1e-4, 1e5)),
                    (th.output_ripple, (vin, D, 48.0, 1e-4, 1e5)),
                    (th.esr_ripple, (vin, D, 1e-4, 48.0, 1e5, 0.02)),
                    (th.rhp_zero, (D, vin, 1e-4)),
                    (th.resonance, (D, vin * 1e-5, 1e-4)),
                    (th.critical_inductance, (D, vin, 1e5)),
                    (th.k_param, (vin * 1e-6, D * 100, 1e5))]:
        assert np.shape(f(*args)) == (3, 5), f.__name__
