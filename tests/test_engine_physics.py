"""The exact engine against closed-form results (textbook formulas) and conservation of energy."""

import numpy as np
import pytest

from boostsim import BoostParams, Step, simulate, steady_state, theory

IDEAL = BoostParams(vin=12, L=100e-6, C=100e-6, R=10, fsw=100e3)
LOSSY = BoostParams(vin=12, L=100e-6, C=100e-6, R=10, fsw=100e3, r_L=0.05, r_on=0.02,
                    v_f=0.4, r_d=0.01, r_C=0.03)


@pytest.mark.parametrize("duty", [0.1, 0.3, 0.5, 0.7])
def test_ideal_ccm_mean_output_matches_averaged_model(duty):
    ss = steady_state(IDEAL, duty)
    assert ss.mode == "CCM"
    expected = theory.ccm_vout(12, duty, 10)
    # Tolerance 0.05% (the averaged model neglects the ripple).
    assert ss.vout_mean == pytest.approx(expected, rel=5e-4)


@pytest.mark.parametrize("duty", [0.1, 0.3, 0.5, 0.7])
def test_inductor_ripple_matches_vin_d_ts_over_l(duty):
    ss = steady_state(IDEAL, duty)
    assert ss.il_ripple == pytest.approx(theory.inductor_ripple(12, duty, 100e-6, 100e3),
                                         rel=5e-3)


@pytest.mark.parametrize("duty", [0.1, 0.3, 0.5])
def test_output_ripple_matches_capacitor_charge_formula(duty):
    ss = steady_state(IDEAL.replace(C=470e-6), duty)
    expected = theory.output_ripple(ss.vout_mean, duty, 10, 470e-6, 100e3)
    assert ss.vout_ripple == pytest.approx(expected, rel=2e-2)


@pytest.mark.parametrize("duty", [0.05, 0.1, 0.2, 0.4])
def test_dcm_mean_output_matches_dcm_formula(duty):
    p = IDEAL.replace(L=5e-6, R=50, C=470e-6)
    K = theory.k_param(5e-6, 50, 100e3)
    assert K < theory.k_crit(duty)  # really DCM
    ss = steady_state(p, duty)
    assert ss.mode == "DCM"
    assert ss.vout_mean == pytest.approx(theory.dcm_vout(12, duty, 5e-6, 50, 100e3), rel=2e-3)


def test_lossy_ccm_close_to_lossy_averaged_model():
    # The averaged model ignores the ripple's extra I^2 R loss (and ESR, set to 0 here).
    for duty in (0.2, 0.5, 0.7):
        ss = steady_state(LOSSY.replace(r_C=0.0), duty)
        expected = theory.ccm_vout(12, duty, 10, 0.05, 0.02, 0.4, 0.01)
        assert ss.vout_mean == pytest.approx(expected, rel=2e-3)


@pytest.mark.parametrize("params", [
    LOSSY,
    LOSSY.replace(L=5e-6, R=50),  # DCM
    LOSSY.replace(synchronous=True, r_sync=0.015, L=5e-6, R=50),  # negative inductor current
    LOSSY.replace(R=float("inf"), i_load=1.0),  # constant-current load
    LOSSY.replace(i_load=0.5, r_C=0.2),
])
def test_energy_balance_closes_in_steady_state(params):
    ss = steady_state(params, np.array([0.1, 0.4, 0.6]))
    assert np.all(np.abs(ss.energy_balance) < 1e-9)
    total = ss.pout + sum(ss.losses.values())
    np.testing.assert_allclose(ss.pin, total, rtol=1e-9)
    assert np.all(ss.efficiency < 1)


def test_energy_balance_closes_during_a_transient():
    res = simulate(LOSSY, duty=0.5, t_end=3e-3, dt=1e-5, steps=[Step(1.5e-3, R=5)])
    m = res.metrics(last_periods=200)  # includes the load step and stored-energy changes
    assert abs(m.energy_balance) < 1e-9


def test_synchronous_converter_never_enters_dcm_and_current_goes_negative():
    p = LOSSY.replace(synchronous=True, r_sync=0.015, L=5e-6, R=50)
    ss = steady_state(p, 0.3)
    assert ss.mode == "CCM"
    assert ss.il_min < 0 < ss.il_max
    # Lossless synchronous converter: exactly the CCM ratio at any load.
    ideal = IDEAL.replace(synchronous=True, L=5e-6, R=50, C=1e-3)
    assert steady_state(ideal, 0.3).vout_mean == pytest.approx(12 / 0.7, rel=5e-4)


def test_dcm_boundary_is_where_theory_puts_it():
    duty = 0.3
    L_crit = theory.critical_inductance(duty, 10, 100e3)
    below = steady_state(IDEAL.replace(L=0.95 * L_crit), duty)
    above = steady_state(IDEAL.replace(L=1.05 * L_crit), duty)
    assert below.mode == "DCM"
    assert above.mode == "CCM"


def test_efficiency_and_losses_are_physical():
    ss = steady_state(LOSSY, 0.5)
    assert 0.8 < ss.efficiency < 1.0
    assert set(ss.losses) == {"inductor_dcr", "switch_conduction", "diode_forward",
                              "diode_resistance", "capacitor_esr"}
    assert all(v > 0 for v in ss.losses.values())
    # DCR loss is r_L * I_rms^2.
    assert ss.losses["inductor_dcr"] == pytest.approx(0.05 * ss.il_rms**2, rel=1e-12)
    # The diode forward-drop loss is v_f times the mean current in the off time = v_f * Iout.
    assert ss.losses["diode_forward"] == pytest.approx(0.4 * ss.vout_mean / 10, rel=1e-3)


def test_switching_loss_estimate_uses_transition_times():
    p = LOSSY.replace(t_rise=20e-9, t_fall=10e-9)
    ss = steady_state(p, 0.5)
    expected = 0.5 * (ss.vout_mean + 0.4) * (ss.il_min * 10e-9 + ss.il_max * 20e-9) * 100e3
    assert ss.p_switching == pytest.approx(expected, rel=2e-2)
    assert ss.efficiency_total == pytest.approx(ss.pout / (ss.pin + ss.p_switching))
    assert steady_state(LOSSY, 0.5).p_switching == 0.0
