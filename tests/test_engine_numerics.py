"""The exact engine against an independent solver, and its numerical invariants."""

import numpy as np
import pytest
from reference_ivp import simulate_ivp

from boostsim import BoostParams, Step, simulate, steady_state
from boostsim.drive import lane_arrays
from boostsim.engine import Stepper

LOSSY = BoostParams(vin=12, L=100e-6, C=100e-6, R=10, fsw=100e3, r_L=0.05, r_on=0.02,
                    v_f=0.4, r_d=0.01, r_C=0.03)
# Small L and C: fast dynamics, DCM at light load, strong startup inrush.
FAST = BoostParams(vin=5, L=10e-6, C=10e-6, R=20, fsw=100e3, r_L=0.03, r_on=0.02, v_f=0.3,
                   r_d=0.02, r_C=0.01)


def _compare(p, duty, t_end, steps=(), x0=(0.0, 0.0)):
    # End inside a period: at a period boundary the reference reports the next period's
    # right-hand limit, the engine the state reached at t_end (same state, vout differs by ESR).
    t_end += 3.7e-6
    t_eval = np.linspace(0, t_end, 777)  # not aligned with the switching period
    ref = simulate_ivp(p, duty, t_end, t_eval, x0=x0,
                       steps=[(s.t, {k: getattr(s, k) for k in ("vin", "R", "i_load")
                                     if getattr(s, k) is not None}) for s in steps])
    res = simulate(p, duty=duty, t_end=t_end, dt=t_end / 776, x0=x0, steps=steps)
    i_scale = np.max(np.abs(ref["il"]))
    v_scale = np.max(np.abs(ref["vout"]))
    # Tolerance: the reference integrates at rtol 1e-12; agreement to 1e-9 of full scale.
    np.testing.assert_allclose(res.il, ref["il"], rtol=0, atol=1e-9 * i_scale)
    np.testing.assert_allclose(res.vc, ref["vc"], rtol=0, atol=1e-9 * v_scale)
    np.testing.assert_allclose(res.vout, ref["vout"], rtol=0, atol=1e-9 * v_scale)
    return res, ref


def test_matches_solve_ivp_in_ccm():
    _compare(LOSSY, 0.5, 0.6e-3, x0=(4.0, 22.0))


def test_matches_solve_ivp_through_startup_inrush_and_dcm():
    res, _ = _compare(FAST, 0.4, 1.0e-3)
    modes = res.periods.mode
    assert "DCM" in modes and "CCM" in modes


def test_matches_solve_ivp_with_synchronous_rectifier():
    _compare(FAST.replace(synchronous=True, r_sync=0.02, R=200), 0.3, 0.5e-3)


def test_matches_solve_ivp_across_line_and_load_steps():
    steps = [Step(0.2e-3 + 3.3e-6, R=60), Step(0.5e-3 + 7.1e-6, vin=3.0, i_load=0.05)]
    _compare(FAST, 0.4, 0.8e-3, steps=steps)


def test_matches_solve_ivp_with_constant_current_load_and_no_resistor():
    _compare(FAST.replace(R=float("inf"), i_load=0.1), 0.35, 0.6e-3)


@pytest.mark.parametrize("seed", range(6))
def test_matches_solve_ivp_on_random_designs(seed):
    rng = np.random.default_rng(seed)
    p = BoostParams(vin=rng.uniform(3, 24), L=10 ** rng.uniform(-6, -4),
                    C=10 ** rng.uniform(-6, -4), R=10 ** rng.uniform(0.5, 2.5),
                    fsw=10 ** rng.uniform(4.5, 5.5), r_L=rng.uniform(0, 0.3),
                    r_on=rng.uniform(0, 0.1), v_f=rng.uniform(0, 0.6), r_d=rng.uniform(0, 0.1),
                    r_C=rng.uniform(0, 0.3), i_load=rng.uniform(0, 0.2) * (rng.random() < 0.3))
    _compare(p, rng.uniform(0.05, 0.8), 100 / p.fsw)


def test_diode_turn_off_instants_match_reference_to_1e_9_ts():
    p = FAST.replace(R=100)
    t_end = 0.3e-3
    ref = simulate_ivp(p, 0.3, t_end, np.array([t_end]))
    res = simulate(p, duty=0.3, t_end=t_end, dt=t_end)
    rec = res.periods
    # Turn-off instant = start + on time + diode conduction time, for periods that went idle.
    ours = (rec.t_start + rec.t_on + rec.t_diode)[0][rec.t_idle[0] > 0]
    theirs = np.array(ref["diode_off_times"])
    theirs = theirs[theirs < t_end - 1e-5]
    ours = ours[: theirs.size]
    assert theirs.size > 5
    # Events found by the reference to its own tolerance (~1e-12 relative); engine to rounding.
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9 * 1e-5)


def test_batch_of_lanes_equals_each_lane_alone():
    L = np.array([5e-6, 10e-6, 47e-6, 100e-6])
    duty = np.array([0.2, 0.4, 0.6, 0.3])
    p = FAST.replace(L=L, R=np.array([20.0, 50.0, 10.0, float("inf")]),
                     i_load=np.array([0.0, 0.0, 0.1, 0.2]))
    batch = simulate(p, duty=duty, t_end=0.4e-3, dt=1e-6)
    for i in range(4):
        alone = simulate(p.lane(i), duty=duty[i], t_end=0.4e-3, dt=1e-6)
        np.testing.assert_allclose(batch.il[i], alone.il, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(batch.vout[i], alone.vout, rtol=1e-12, atol=1e-12)
    ss_batch = steady_state(p, duty)
    for i in range(4):
        ss = steady_state(p.lane(i), duty[i])
        assert ss_batch.vout_mean[i] == pytest.approx(ss.vout_mean, rel=1e-12)


def test_lanes_with_different_switching_frequencies():
    p = FAST.replace(fsw=np.array([50e3, 100e3, 130e3]))
    batch = simulate(p, duty=0.4, t_end=0.2e-3, dt=0.5e-6)
    for i in range(3):
        alone = simulate(p.lane(i), duty=0.4, t_end=0.2e-3, dt=0.5e-6)
        np.testing.assert_allclose(batch.vout[i], alone.vout, rtol=1e-12, atol=1e-12)


def test_output_does_not_depend_on_sampling_step():
    coarse = simulate(FAST, duty=0.4, t_end=0.5e-3, dt=2.5e-6)
    fine = simulate(FAST, duty=0.4, t_end=0.5e-3, dt=0.5e-6)
    np.testing.assert_allclose(fine.il[::5], coarse.il, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fine.vout[::5], coarse.vout, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(fine.periods.t_diode, coarse.periods.t_diode)


@pytest.mark.parametrize("params,duty", [(LOSSY, 0.5), (FAST.replace(R=100), 0.3),
                                         (FAST.replace(synchronous=True, R=200), 0.3)])
def test_steady_state_equals_end_of_long_simulation(params, duty):
    ss = steady_state(params, duty)
    res = simulate(params, duty=duty, t_end=60e-3, dt=1e-5)
    m = res.metrics(last_periods=1)
    assert m.vout_mean == pytest.approx(ss.vout_mean, rel=1e-5)
    assert m.il_mean == pytest.approx(ss.il_mean, rel=1e-5)
    assert res.vc_end == pytest.approx(ss.vc_start, rel=1e-5)
    assert m.vout_ripple == pytest.approx(ss.vout_ripple, rel=1e-4)


def test_steady_state_orbit_is_periodic():
    ss = steady_state(FAST.replace(R=100), np.array([0.1, 0.3, 0.5, 0.7]))
    assert np.all(ss.converged)
    res = simulate(FAST.replace(R=100), duty=np.array([0.1, 0.3, 0.5, 0.7]), t_end=1e-5,
                   dt=1e-5, x0=np.stack([ss.il_start, ss.vc_start], axis=1))
    np.testing.assert_allclose(res.vc_end, ss.vc_start, rtol=1e-11)
    np.testing.assert_allclose(res.il_end, ss.il_start, rtol=1e-9, atol=1e-12)


def test_period_map_jacobian_matches_finite_differences():
    for p, x, duty in ((LOSSY, (4.0, 23.0), 0.5), (FAST.replace(R=100), (0.0, 8.0), 0.3)):
        lanes, _, _ = lane_arrays(p, duty=0.0)
        stepper = Stepper(lanes)
        il, vc = np.array([x[0]]), np.array([x[1]])
        d = np.array([duty])
        jac = stepper.period(0, il, vc, d, jacobian=True).jacobian[0]
        h = 1e-6
        numeric = np.empty((2, 2))
        for j, (di, dv) in enumerate(((h, 0.0), (0.0, h))):
            plus = stepper.period(0, il + di, vc + dv, d)
            minus = stepper.period(0, np.maximum(il - di, 0.0), vc - dv, d)
            width = (il + di - np.maximum(il - di, 0.0))[0] if j == 0 else 2 * h
            numeric[:, j] = [(plus.il_end - minus.il_end)[0] / width,
                             (plus.vc_end - minus.vc_end)[0] / width]
        np.testing.assert_allclose(jac, numeric, rtol=1e-5, atol=1e-8)


def test_duty_schedule_and_controller_hook():
    n_periods = 30
    schedule = np.linspace(0.1, 0.5, n_periods)[:, None]
    # The numpy engine on both sides (a schedule would otherwise run compiled: same to rounding).
    res = simulate(FAST, duty=schedule, t_end=n_periods * 1e-5, dt=1e-6, engine="numpy")
    np.testing.assert_array_equal(res.periods.duty[0], schedule[:, 0])
    seen = []

    def controller(k, t_start, view):
        seen.append(view)
        return schedule[k, 0]

    closed = simulate(FAST, controller=controller, t_end=n_periods * 1e-5, dt=1e-6)
    np.testing.assert_array_equal(closed.vout, res.vout)
    assert seen[0] is None and seen[1].k == 0
    # The view samples the previous period exactly where the waveform says.
    il, vc, vout = seen[5].sample(0.0)
    assert il[0] == pytest.approx(res.il[40], rel=1e-12)
    assert vc[0] == pytest.approx(res.vc[40], rel=1e-12)
    assert vout[0] == pytest.approx(res.vout[40], rel=1e-12)


def test_closed_form_run_ahead_equals_period_by_period_stepping():
    # Mixed batch: lanes that ring through DCM at startup, settle in CCM, stay in DCM, or are
    # synchronous; sampled off the period grid.
    p = FAST.replace(L=np.array([10e-6, 3e-6, 22e-6, 10e-6]), R=np.array([20.0, 80.0, 10.0, 80.0]),
                     synchronous=np.array([False, False, False, True]))
    duty = np.array([0.4, 0.3, 0.6, 0.3])
    fast = simulate(p, duty=duty, t_end=3e-3, dt=0.37e-6)
    slow = simulate(p, duty=duty, t_end=3e-3, dt=0.37e-6, run_ahead=False)
    scale = np.max(np.abs(slow.vout))
    np.testing.assert_allclose(fast.vout, slow.vout, rtol=0, atol=1e-11 * scale)
    np.testing.assert_allclose(fast.il, slow.il, rtol=0, atol=1e-11 * np.max(np.abs(slow.il)))
    np.testing.assert_array_equal(fast.periods.mode, slow.periods.mode)
    np.testing.assert_allclose(fast.periods.t_diode, slow.periods.t_diode, rtol=1e-9)
    m_fast, m_slow = fast.metrics(50), slow.metrics(50)
    np.testing.assert_allclose(m_fast.vout_mean, m_slow.vout_mean, rtol=1e-12)


def test_steady_state_converges_for_a_wide_random_batch_of_designs():
    # 2000 random converters across three decades of L, C, R, fsw, all loss terms, constant
    # current loads and synchronous rectifiers, duty 0..0.95: every lane converges to a
    # periodic orbit whose energy balance closes.
    rng = np.random.default_rng(5)
    n = 2000
    p = BoostParams(vin=rng.uniform(1, 48, n), L=10 ** rng.uniform(-6, -3, n),
                    C=10 ** rng.uniform(-6, -3, n), R=10 ** rng.uniform(0, 3, n),
                    fsw=10 ** rng.uniform(4, 6, n), r_L=rng.uniform(0, 0.5, n),
                    r_on=rng.uniform(0, 0.2, n), v_f=rng.uniform(0, 0.8, n),
                    r_d=rng.uniform(0, 0.2, n), r_C=rng.uniform(0, 0.5, n),
                    i_load=rng.uniform(0, 0.5, n) * (rng.random(n) < 0.3),
                    synchronous=rng.random(n) < 0.2, r_sync=rng.uniform(0, 0.1, n))
    duty = rng.uniform(0, 0.95, n)
    ss = steady_state(p, duty)
    assert np.all(ss.converged)
    assert np.max(np.abs(ss.energy_balance)) < 1e-8
    assert {"CCM", "DCM"} <= set(ss.mode)
    # One period from the orbit's start comes back to it.
    lanes, _, _ = lane_arrays(p, duty=duty)
    back = Stepper(lanes).period(0, ss.il_start, ss.vc_start, duty)
    np.testing.assert_allclose(back.vc_end, ss.vc_start, rtol=1e-9)
    il_scale = np.abs(ss.il_start) + ss.il_ripple
    assert np.all(np.abs(back.il_end - ss.il_start) <= 1e-9 * il_scale)


def test_period_means_batched_equal_period_by_period():
    from boostsim.analysis import _period_sums

    res = simulate(FAST.replace(L=np.array([10e-6, 3e-6])), duty=np.array([0.4, 0.3]),
                   t_end=0.4e-3, dt=1e-6, steps=[Step(0.2e-3 + 1.3e-6, R=60)])
    means = res.period_means()
    stepper = Stepper(res._lanes, res.steps)
    rec = res.periods
    for k in range(rec.duty.shape[1]):
        sums = _period_sums(stepper, k, rec.il_start[:, k], rec.vc_start[:, k], rec.duty[:, k])
        np.testing.assert_allclose(means["il"][:, k], sums[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(means["vout"][:, k], sums[2], rtol=1e-12)
    # Exact means against the trapezoid rule on a fine grid (1000 samples per period; the ESR
    # steps at the switching edges limit it to about 1e-4).
    fine = simulate(FAST, duty=0.4, t_end=0.1e-3, dt=1e-8)
    v = np.array([np.trapezoid(fine.vout[1000 * p:1000 * p + 1001], dx=1e-8) / 1e-5
                  for p in range(10)])
    np.testing.assert_allclose(fine.period_means()["vout"], v, rtol=3e-4)
