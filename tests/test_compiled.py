"""The compiled kernel against the numpy engine and boostsim/pid.py: the same law, the same
numbers (to rounding), through start-up, DCM, load, line and reference steps."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from boostsim import Step, default_board, simulate
from boostsim.control import ADC, PWM, DigitalController
from boostsim.pid import PID

kernel = pytest.importorskip("boostsim.kernel")
from boostsim.fastloop import pid_arrays  # noqa: E402

# The compiled twin against its numpy reference: numba compiles the closed loop (10-20 s after an
# edit of its sources) and the reference runs each case period by period in Python.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BOARD = default_board()
TS = 1 / BOARD.fsw


def _rel(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize("anti_windup", ["clamp", "backcalc"])
@pytest.mark.parametrize("ramp", [False, True])
def test_kernel_pid_is_the_pid_of_pid_py(anti_windup, ramp):
    rng = np.random.default_rng(7)
    for trial in range(40):
        ts = 10 ** rng.uniform(-6, -3)
        lo = rng.uniform(-1, 0.5)
        kw = dict(kp=rng.uniform(0, 2) * (trial % 5 != 0), ki=rng.uniform(0, 5e3),
                  kd=rng.uniform(0, 1e-4) * (trial % 3 != 0), ts=ts, out_min=lo,
                  out_max=lo + rng.uniform(0.01, 1.5), tf=rng.uniform(0, 5 * ts) * (trial % 2),
                  anti_windup=anti_windup,
                  setpoint_rate=rng.uniform(0.1, 10) / ts if ramp else None)
        if anti_windup == "backcalc" and trial % 4 == 1:
            kw["kt"] = rng.uniform(0, 1) / ts
        reference = PID(**kw)
        steps = 200
        setpoints = np.repeat(rng.uniform(-2, 2, 4), steps // 4)[:, None]
        measurements = (setpoints[:, 0] + rng.normal(0, 1, steps) * rng.uniform(0.01, 3))[:, None]
        if trial % 2:
            reference.reset(output=float(rng.uniform(lo, lo + 0.01)))
        par, st = pid_arrays(reference, 1)
        expected = np.array([reference.update(float(s), float(y))
                             for s, y in zip(setpoints[:, 0], measurements[:, 0], strict=True)])
        got = kernel.pid_sequence(par, st, ramp, anti_windup == "backcalc", setpoints,
                                  measurements)[:, 0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
        assert st[0, kernel.S_INTEGRAL] == pytest.approx(reference.integral, abs=1e-12)
        assert st[0, kernel.S_DERIV] == pytest.approx(reference.derivative, abs=1e-12)


def _controller(kp=0.002, noise=0.0, **kw):
    pid = PID(kp=kp, ki=30.0, kd=1e-6, tf=2 * TS * kw.pop("every", 1), ts=TS * kw.get("every", 1),
              out_min=0.0, out_max=0.8, setpoint_rate=12 / 4e-3)
    return DigitalController(pid, adc=ADC(noise_rms=noise, oversample=kw.pop("oversample", 1)),
                             **kw)


def _both(params, make_controller, **kw):
    runs = {}
    for engine in ("numpy", "compiled"):
        controller = make_controller()
        result = simulate(params, controller=controller, engine=engine, **kw)
        runs[engine] = (result, controller)
    return runs["numpy"], runs["compiled"]


@pytest.mark.parametrize("synchronous", [False, True])
def test_closed_loop_same_duties_and_period_means(synchronous):
    # Start-up (soft start), a load step to a light load (DCM with a diode), a reference step.
    params = BOARD.replace(synchronous=synchronous, L=BOARD.L * np.array([0.8, 1.0, 1.2]))
    (ref, c_ref), (fast, c_fast) = _both(
        params, lambda: _controller(kp=np.array([0.001, 0.002, 0.004]), noise=0.002),
        vref=[(0, 12.0), (5e-3, 10.0)], t_end=700 * TS, dt=TS / 4,
        steps=[Step(3e-3, R=300.0), Step(6.01e-3, vin=11.0)])
    if not synchronous:
        assert np.any(ref.periods.t_idle[:, 320:480] > 0)  # DCM after the load step
    np.testing.assert_array_equal(fast.periods.duty, ref.periods.duty)
    for name in ("t_start", "t_on"):  # written by the kernel, computed by the numpy recorder
        np.testing.assert_array_equal(getattr(fast.periods, name), getattr(ref.periods, name))
    means_ref, means_fast = ref.period_means(), fast.period_means()
    for name in ("il", "vc", "vout"):
        assert _rel(means_fast[name], means_ref[name]) < 1e-9, name
    assert _rel(fast.vout, ref.vout) < 1e-9
    log_ref, log_fast = c_ref.log(), c_fast.log()
    for name in ("period", "t", "setpoint", "adc_code", "measured", "integral", "duty"):
        np.testing.assert_allclose(getattr(log_fast, name), getattr(log_ref, name), rtol=1e-12,
                                   atol=1e-15, err_msg=name)
    assert c_fast.pid.integral == pytest.approx(c_ref.pid.integral, rel=1e-12)


@pytest.mark.parametrize("options", [dict(every=3, oversample=4),
                                     dict(pwm=PWM(update="immediate"))])
def test_closed_loop_variants_match(options):
    (ref, _), (fast, _) = _both(BOARD, lambda: _controller(noise=0.003, **dict(options)),
                                    vref=lambda t: 12.0 - 2.0 * (t >= 2e-3), t_end=400 * TS,
                                    dt=TS)
    np.testing.assert_array_equal(fast.periods.duty, ref.periods.duty)
    assert _rel(fast.vout, ref.vout) < 1e-9


@pytest.mark.parametrize("case", ["constant", "schedule"])
def test_open_loop_waveforms_match(case):
    lanes = BOARD.replace(R=np.array([48.0, 2000.0]), synchronous=np.array([False, True]))
    duty = 0.6 if case == "constant" else np.linspace(0.1, 0.7, 300)[:, None]
    kw = dict(duty=duty, t_end=300 * TS, dt=TS / 37, steps=[Step(1e-3, R=500.0)])
    ref = simulate(lanes, engine="numpy", run_ahead=False, **kw)
    fast = simulate(lanes, engine="compiled", **kw)
    for name in ("il", "vc", "vout"):
        assert _rel(getattr(fast, name), getattr(ref, name)) < 1e-9, name
    for name in ("il_start", "vc_start", "t_diode", "t_idle"):
        np.testing.assert_allclose(getattr(fast.periods, name), getattr(ref.periods, name),
                                   rtol=1e-9, atol=1e-12 * TS if name.startswith("t_") else 1e-9)


def test_engine_choice_is_checked():
    class Custom:
        def __call__(self, k, t, view):
            return 0.5

    with pytest.raises(ValueError, match="engine must be one of"):
        simulate(BOARD, duty=0.5, t_end=TS, engine="fast")
    with pytest.raises(ValueError, match="engine='compiled' runs open loop"):
        simulate(BOARD, controller=Custom(), t_end=TS, engine="compiled")
    # Any controller object still runs (numpy route) by default.
    assert simulate(BOARD, controller=Custom(), t_end=3 * TS).periods.duty.shape == (1, 3)


def test_without_numba_the_numpy_engine_runs_with_one_warning():
    script = """
import sys, warnings
sys.modules["numba"] = None  # import numba -> ImportError
warnings.simplefilter("always")
from boostsim import default_board, simulate
board = default_board()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    a = simulate(board, duty=0.5, t_end=20 / board.fsw)
    b = simulate(board, duty=0.5, t_end=20 / board.fsw)
assert a.vout.shape == b.vout.shape
print(len(caught), [str(w.message) for w in caught])
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert out.startswith("1 ") and "numba is not available" in out


def test_many_lanes_run_in_parallel_with_the_same_numbers():
    from boostsim.fastloop import PARALLEL_LANES

    n = PARALLEL_LANES + 3
    kp = np.linspace(0.0005, 0.005, n)
    (ref, _), (fast, _) = _both(BOARD.replace(L=BOARD.L * np.linspace(0.7, 1.3, n)),
                                lambda: _controller(kp=kp, noise=0.002), vref=12.0,
                                t_end=150 * TS, dt=TS)
    np.testing.assert_array_equal(fast.periods.duty, ref.periods.duty)
    assert _rel(fast.vout, ref.vout) < 1e-9


def test_exact_period_means_of_the_kernel_equal_the_engine_quadrature():
    from boostsim.fastloop import closed_loop_means

    params = BOARD.replace(R=np.array([48.0, 400.0]), synchronous=np.array([False, True]))
    kw = dict(vref=12.0, t_end=300 * TS, steps=[Step(1.5e-3, R=30.0)])
    means, duty = closed_loop_means(params, _controller(noise=0.001), **kw)
    ref = simulate(params, controller=_controller(noise=0.001), engine="numpy", dt=TS, **kw)
    np.testing.assert_array_equal(duty, ref.periods.duty)
    assert _rel(means, ref.period_means()["vout"]) < 1e-9


def _lane_table(params, steps=()):
    from boostsim.drive import prepare_drive
    from boostsim.engine import Stepper

    drive = prepare_drive(params, 0.5, TS, None, x0=None, controller=None, vref=None,
                          steps=steps, default_dt_periods=1.0)
    stepper = Stepper(drive.lanes, steps)
    return np.ascontiguousarray(stepper.conditions.tables.transpose(2, 0, 1))[0]


@pytest.mark.parametrize("synchronous", [False, True])
def test_cached_period_is_the_uncached_period(synchronous):
    # A step-free period on the cached maps (kernel.ccm_period) against the segment closed
    # forms (on_state, off_segment), from continuous-conduction states; a state whose diode
    # current reaches zero within the period is left to the full period (False).
    tab = _lane_table(BOARD.replace(synchronous=synchronous))
    cache, seg, work = kernel.new_cache(), np.zeros((2, kernel.MAX_SEGMENTS + 2, 6)), np.empty(64)
    c = tab[0]
    for duty in (0.0, 0.1, 0.55, 0.55, 0.9, 1249 / 1250):
        for il, vc in ((0.5, 9.0), (2.0, 12.0), (0.01, 5.0)):
            il_on, vc_on = kernel.on_state(c, il, vc, duty * TS)
            il_ref, vc_ref, t_off = kernel.off_segment(c, kernel.DIODE, synchronous, il_on,
                                                       vc_on, TS - duty * TS, work)
            il_c, vc_c, plain = kernel.ccm_period(tab, 0, cache, TS, synchronous, il, vc, duty,
                                                  seg, 1)
            if not plain:
                assert not synchronous and (np.isfinite(t_off) or il_on <= 0)
                continue
            assert t_off == np.inf
            assert il_c == pytest.approx(il_ref, rel=1e-12, abs=1e-12)
            assert vc_c == pytest.approx(vc_ref, rel=1e-12)
            np.testing.assert_array_equal(seg[1, :2, kernel.SEG_TOPO], [kernel.ON, kernel.DIODE])
            np.testing.assert_allclose(seg[1, 1, [kernel.SEG_IL, kernel.SEG_VC]],
                                       [il_on, vc_on], rtol=1e-12, atol=1e-12)
    if not synchronous:  # light current at a low duty: the diode turns off (DCM)
        assert not kernel.ccm_period(tab, 0, cache, TS, False, 0.01, 5.2, 0.05, seg, 0)[2]


def test_cache_entries_are_keyed_by_duty_and_epoch():
    # Two duties that share a cache row, alternating irregularly, before and after a load and
    # a line step (new epochs, same duties): every period must use its own duty's and epoch's
    # maps, as the numpy engine does.
    d1 = 0.5
    d2 = d1 + kernel.CACHE_SLOTS / 16384
    assert kernel.cache_slot(d1) == kernel.cache_slot(d2)
    pattern = np.random.default_rng(3).integers(0, 2, 400)
    duty = np.where(pattern == 1, d2, d1)[:, None]
    lanes = BOARD.replace(synchronous=np.array([False, True]))
    kw = dict(duty=duty, t_end=400 * TS, dt=TS / 3,
              steps=[Step(1.2e-3, R=24.0), Step(2.5e-3, vin=6.0)])
    ref = simulate(lanes, engine="numpy", run_ahead=False, **kw)
    fast = simulate(lanes, engine="compiled", **kw)
    for name in ("il", "vc", "vout"):
        assert _rel(getattr(fast, name), getattr(ref, name)) < 1e-9, name
    np.testing.assert_allclose(fast.periods.vc_start, ref.periods.vc_start, rtol=1e-9)


def test_mid_on_adc_sample_on_the_cached_map_is_the_segment_sample():
    # The controller's mid-on ADC sample taken on the cached half-on map against the segment
    # closed form (kernel.sample), with a picovolt-resolution converter so that a wrong
    # sample instant or map shows.
    tab = _lane_table(BOARD)
    cache, seg, work = kernel.new_cache(), np.zeros((2, kernel.MAX_SEGMENTS + 2, 6)), np.empty(64)
    adc = np.zeros(kernel.N_ADC)
    adc[kernel.A_MID_ON], adc[kernel.A_DIVIDER], adc[kernel.A_FACTOR] = 1.0, 1.0, 1e12
    adc[kernel.A_TOP] = np.inf
    for duty in (0.05, 0.4, 0.4, 0.85):
        for il, vc in ((1.5, 11.0), (0.0, 4.0)):
            nseg = kernel.period(tab, np.zeros(0), 0.0, TS, False, il, vc, duty, cache, seg[0],
                                 work)[4]
            fast = kernel.adc_reading(tab, seg, 0, nseg, adc, np.zeros(1), np.zeros(1), 0,
                                      duty, TS, cache)
            vout = kernel.sample(tab, seg[0], nseg, 0.5 * duty * TS, 0.0)[2]
            assert abs(fast - np.rint(vout * 1e12)) <= 1, (duty, il, vc)


@pytest.mark.parametrize("board", [BOARD, BOARD.replace(r_L=3.0, r_C=1.0, R=2.0)],
                         ids=["ringing", "overdamped"])
def test_compiled_diode_solution_is_the_segments_one(board):
    # kernel.diode_state compiles segments.diode_propagate itself; with the kernel's scalar
    # exp_coeffs it gives the numpy engine's DIODE states to rounding.
    from boostsim import segments as sg

    tab = _lane_table(board)[0]
    assert (tab[sg.Q2] < 0) == (board.r_L < 1)
    rng = np.random.default_rng(4)
    il0, vc0 = rng.uniform(-1, 3, 200), rng.uniform(0, 15, 200)
    tau = rng.uniform(0, 3 * TS, 200)
    il_ref, vc_ref = sg.diode_state(tab[:, None], il0, vc0, tau)
    got = np.array([kernel.diode_state(tab, a, b, t)
                    for a, b, t in zip(il0, vc0, tau, strict=True)]).T
    np.testing.assert_allclose(got[0], il_ref, rtol=1e-13, atol=1e-13 * np.abs(il_ref).max())
    np.testing.assert_allclose(got[1], vc_ref, rtol=1e-13, atol=0)


def test_idle_reconduction_is_computed_only_when_it_may_end_the_segment():
    # kernel.idle_reconduction_time skips the logarithm when re-conduction certainly comes
    # after the segment's end: the segment then ends as with the numpy engine's time.
    from boostsim import segments as sg

    c = _lane_table(BOARD)[0]
    rng = np.random.default_rng(8)
    skipped = 0
    v_th = c[sg.V_TH]
    for vc in np.concatenate([v_th + rng.uniform(-0.5, 3.0, 300), [v_th, v_th + 1e-9]]):
        t_ref = float(sg.idle_reconduction_time(c[:, None], np.array([vc]))[0])
        for within in (TS / 10, TS, 3 * TS, t_ref, t_ref * (1 + 1e-13), t_ref * (1 - 1e-13)):
            got = kernel.idle_reconduction_time(c, vc, within)
            if np.isinf(got):
                assert not t_ref < within, (vc, within, t_ref)
                skipped += np.isfinite(t_ref)
            else:
                assert got == pytest.approx(t_ref, rel=1e-14, abs=0.0)
    assert skipped > 100
    assert np.isfinite(kernel.idle_reconduction_time(c, v_th + 0.05, np.inf))


@pytest.mark.parametrize("synchronous", [False, True])
def test_maps_composed_for_neighbouring_duties_are_the_closed_forms(synchronous):
    # A ramp of PWM counts (as at start-up): a new duty's maps are its neighbour's composed
    # with a small step's (kernel.refill), MAX_DEPTH times in a row at most; every period on
    # them must still be the segment closed forms' to rounding.
    tab = _lane_table(BOARD.replace(synchronous=synchronous))
    cache, seg = kernel.new_cache(), np.zeros((2, kernel.MAX_SEGMENTS + 2, 6))
    work = np.empty(64)
    c = tab[0]
    depths = []
    for count in list(range(600, 700)) + list(range(700, 640, -3)):
        duty = count / 1250
        for il, vc in ((2.0, 12.0), (1.2, 9.5)):
            il_c, vc_c, plain = kernel.ccm_period(tab, 0, cache, TS, synchronous, il, vc, duty,
                                                  seg, 0)
            assert plain
            il_on, vc_on = kernel.on_state(c, il, vc, duty * TS)
            il_ref, vc_ref, _ = kernel.off_segment(c, kernel.DIODE, synchronous, il_on, vc_on,
                                                   TS - duty * TS, work)
            assert il_c == pytest.approx(il_ref, rel=1e-12)
            assert vc_c == pytest.approx(vc_ref, rel=1e-13)
            row = cache[kernel.cache_slot(duty)]
            half = row[kernel.C_HALF] * vc + row[kernel.C_HALF + 1]
            assert half == pytest.approx(kernel.on_state(c, il, vc, 0.5 * duty * TS)[1],
                                         rel=1e-13)
        depths.append(cache[kernel.cache_slot(duty), kernel.C_DEPTH])
    assert max(depths) == kernel.MAX_DEPTH and depths.count(0) < len(depths) / 4
