"""The averaged model's compiled loop (boostsim.avgkernel) against its numpy route.

The compiled loop runs the single-lane integrator of boostsim.averaged compiled from its own
text (the same pieces, the same exponential steps, the same sub-steps), with the switching
kernel's PID, ADC and PWM: so one lane agrees with the numpy route to rounding, duty for duty,
and several lanes (vectorised numpy integrator, same formulas on arrays) to rounding too. The
tolerance 1e-9 relative is far above rounding (measured ~1e-16) and far below any modelling
difference; the duties, quantised to 1/1250, must be equal.

Open loop the compiled loop is compared with the numpy route (which steps every period, as
the compiled loop does) at 1e-9 too.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from boostsim import Step, default_board, simulate_averaged
from boostsim.averaged import AveragedView, _Circuit, _ScalarCircuit
from boostsim.control import ADC, PWM, DigitalController
from boostsim.drive import lane_arrays
from boostsim.pid import PID

avgkernel = pytest.importorskip("boostsim.avgkernel")

# The compiled twin against its numpy reference: numba compiles the averaged loop (10-20 s after
# an edit of its sources) and the reference runs each case period by period in Python.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BOARD = default_board()
TS = 1 / BOARD.fsw
RECORDS = ("il_start", "vc_start", "il_mean", "vc_mean", "vout_mean", "d2")


def _rel(a, b):
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def _controller(kp=0.002, noise=0.002, every=1, oversample=1, sample_at="mid_on", **kw):
    pid = PID(kp=kp, ki=30.0, kd=1e-6, tf=2 * TS * every, ts=TS * every, out_min=0.0,
              out_max=0.8, setpoint_rate=12 / 4e-3)
    adc = ADC(noise_rms=noise, oversample=oversample, sample_at=sample_at)
    return DigitalController(pid, adc=adc, every=every, **kw)


def _both(params, make_controller, **kw):
    runs = {}
    for engine in ("numpy", "compiled"):
        controller = make_controller()
        runs[engine] = (simulate_averaged(params, controller=controller, engine=engine, **kw),
                        controller)
    return runs["numpy"], runs["compiled"]


def _assert_same(fast, ref, tol=1e-9):
    np.testing.assert_array_equal(fast.periods.duty, ref.periods.duty)
    np.testing.assert_array_equal(fast.periods.mode_code, ref.periods.mode_code)
    for name in RECORDS:
        assert _rel(getattr(fast.periods, name), getattr(ref.periods, name)) < tol, name
    for name in ("il", "vc", "vout"):
        assert _rel(getattr(fast, name), getattr(ref, name)) < tol, name


@pytest.mark.parametrize("synchronous", [False, True])
def test_closed_loop_same_duties_and_period_means(synchronous):
    # From rest: soft start (an inrush, then the current resting at zero and DCM for the
    # diode), regulation, a load step to a light load (DCM with a diode, a reversing current
    # with a synchronous switch), a line step mid-period and a reference step.
    params = BOARD.replace(synchronous=synchronous)

    def controller():
        pid = PID(0.05, 100.0, 1.5e-5, TS, out_max=0.85, tf=2e-5, setpoint_rate=3000.0)
        return DigitalController(pid, adc=ADC(noise_rms=0.002))

    (ref, c_ref), (fast, c_fast) = _both(
        params, controller, vref=[(0, 12.0), (11e-3, 10.0)], t_end=1400 * TS,
        steps=[Step(7e-3, R=400.0), Step(9.50037e-3, vin=6.0)])
    modes = ref.periods.mode_code[0]
    assert abs(ref.periods.vout_mean[0, 690] - 12.0) < 0.05  # regulating before the steps
    if synchronous:
        assert np.all(modes == 0) and np.min(ref.periods.il_mean[0, 700:]) < 0
    else:
        assert set(np.unique(modes)) == {0, 1, 2} and np.all(modes[750:1100] == 1)
    _assert_same(fast, ref)
    log_ref, log_fast = c_ref.log(), c_fast.log()
    for name in ("period", "t", "setpoint", "adc_code", "measured", "error", "integral",
                 "duty_command", "duty"):
        np.testing.assert_allclose(getattr(log_fast, name), getattr(log_ref, name),
                                   rtol=1e-12, atol=1e-15, err_msg=name)
    assert c_fast.pid.integral == pytest.approx(c_ref.pid.integral, rel=1e-12)
    assert c_fast.pid.last_output == c_ref.pid.last_output
    np.testing.assert_array_equal(c_fast._duty, c_ref._duty)


@pytest.mark.parametrize("options", [
    dict(every=3, oversample=4),
    dict(pwm=PWM(update="immediate")),
    dict(sample_at=0.3, every=2),
])
def test_lanes_and_controller_variants_match(options):
    # Three lanes (per-lane gains, a DCM-prone inductor, one synchronous) on the vectorised
    # numpy integrator against the compiled loop, a reference given as a function of time, and
    # an output grid finer than the period (sampled inside each period).
    params = BOARD.replace(L=BOARD.L * np.array([1.0, 0.1, 0.6]),
                           synchronous=np.array([False, False, True]))
    kp = np.array([0.001, 0.002, 0.003])
    (ref, _), (fast, _) = _both(params, lambda: _controller(kp=kp, noise=0.003, **options),
                                vref=lambda t: 12.0 - 2.0 * (t >= 2e-3), t_end=500 * TS,
                                dt=TS / 3, steps=[Step(3.3e-3, R=300.0)])
    assert np.any(ref.periods.mode_code[1] != 0)
    _assert_same(fast, ref)


def test_one_lane_on_a_fine_grid_matches():
    (ref, _), (fast, _) = _both(BOARD, _controller, vref=12.0, t_end=300 * TS, dt=TS / 7)
    _assert_same(fast, ref)


@pytest.mark.parametrize("lanes", [1, 3])
def test_open_loop_matches_the_numpy_route(lanes):
    periods = 1500
    k = np.arange(periods)[:, None]
    duty = np.where(k < 700, 0.6, 0.55 + 0.02 * np.sin(k / 30.0))
    params = BOARD.replace(L=BOARD.L * np.array([1.0, 0.1, 0.5])[:lanes]) if lanes > 1 \
        else BOARD.replace(L=20e-6)
    steps = (Step(4.00037e-3, R=300.0), Step(9e-3, vin=6.0))
    kw = dict(t_end=periods * TS, steps=steps, duty0=0.0)
    fast = simulate_averaged(params, duty=duty, engine="compiled", **kw)
    ref = simulate_averaged(params, duty=duty, engine="numpy", **kw)
    stepped = simulate_averaged(params, controller=lambda k, t, view: duty[k], **kw)
    assert np.any(ref.periods.mode == "DCM") and np.any(ref.periods.mode == "CCM")
    for other in (ref, stepped):
        np.testing.assert_array_equal(fast.periods.mode_code, other.periods.mode_code)
        for name in RECORDS:
            np.testing.assert_allclose(getattr(fast.periods, name),
                                       getattr(other.periods, name), rtol=1e-9, atol=1e-12,
                                       err_msg=name)
    assert _rel(fast.vout, stepped.vout) < 1e-13
    constant = simulate_averaged(params, duty=0.3, t_end=400 * TS, dt=TS / 4)
    np.testing.assert_allclose(
        constant.vout, simulate_averaged(params, duty=0.3, t_end=400 * TS, dt=TS / 4,
                                         engine="numpy").vout, rtol=1e-9)


def test_python_controllers_run_on_the_numpy_route():
    class Plain:
        """Any controller object: a PID on the centred mid-on sample of the view."""

        def __init__(self):
            self.pid = PID(0.002, 30.0, 0.0, TS, out_max=0.8, setpoint_rate=3e3)
            self.views = set()

        def __call__(self, k, t_start, view):
            if view is None:
                return 0.0
            self.views.add(type(view))
            return self.pid.update(12.0, float(view.sample(0.5 * view.duty * TS)[2][0]))

    class Tweaked(DigitalController):
        """A subclass may change the law: it is not the built-in controller."""

    for make, lanes, view_type in ((Plain, BOARD, AveragedView),
                                   (Plain, BOARD.replace(R=np.array([48.0, 96.0])),
                                    AveragedView)):
        auto, numpy_route = make(), make()
        a = simulate_averaged(lanes, controller=auto, t_end=300 * TS)
        b = simulate_averaged(lanes, controller=numpy_route, t_end=300 * TS, engine="numpy")
        np.testing.assert_array_equal(a.periods.vout_mean, b.periods.vout_mean)
        assert auto.views == {view_type}
        with pytest.raises(ValueError, match="engine='compiled' runs open loop"):
            simulate_averaged(lanes, controller=make(), t_end=TS, engine="compiled")
    tweaked = Tweaked(PID(0.002, 30.0, 0.0, TS, out_max=0.8))
    with pytest.raises(ValueError, match="engine='compiled' runs open loop"):
        simulate_averaged(BOARD, controller=tweaked, vref=12.0, t_end=TS, engine="compiled")
    ran = simulate_averaged(BOARD, controller=tweaked, vref=12.0, t_end=50 * TS)
    assert len(tweaked._rows) == 49  # its own __call__ ran every period (the numpy route)
    assert ran.periods.duty.shape == (1, 50)
    with pytest.raises(ValueError, match="engine must be one of"):
        simulate_averaged(BOARD, duty=0.5, t_end=TS, engine="fast")


def test_a_bad_controller_duty_is_refused_on_both_routes():
    for engine in ("numpy", "compiled"):
        with pytest.raises(ValueError, match=r"controller duty \(period 1\) must be in"):
            simulate_averaged(BOARD, controller=_controller(), vref=lambda t: np.nan,
                              t_end=20 * TS, engine=engine)


def test_circuit_table_holds_the_scalar_circuits():
    from boostsim.avgloop import circuit_table

    params = BOARD.replace(R=np.array([48.0, np.inf]), i_load=np.array([0.0, 0.2]),
                           synchronous=np.array([False, True]))
    lanes, _, _ = lane_arrays(params)
    tab, times = circuit_table(lanes, [Step(1e-3, vin=6.0)])
    assert tab.shape == (2, 2) and times.shape == (2, 1)
    c = _Circuit(lanes, lanes["vin"], lanes["R"], lanes["i_load"])
    for lane in range(2):
        assert tab[lane, 0].tolist() == tuple(_ScalarCircuit.of(c, lane))
    assert tab["vin"][:, 1].tolist() == [6.0, 6.0]


def test_compiled_field_and_step_are_the_interpreted_ones():
    # The model functions compiled by boostsim.avgkernel (on a structured circuit row, with the
    # table of phi1 coefficients) against the same functions interpreted on a _ScalarCircuit,
    # over states in CCM, DCM and with the current resting at zero.
    from numba import njit

    from boostsim import averaged as av
    from boostsim.avgloop import circuit_table

    @njit(error_model="numpy")
    def compiled(circuits, i, v, d, h):
        table = np.full((av._STEP_SLOTS, 6), np.nan)
        out = np.empty((i.size, 9))
        for m in range(i.size):
            c = circuits[m % circuits.size]
            f = av._field_scalar(c, i[m], v[m], d[m])
            out[m, 0], out[m, 1], out[m, 2], out[m, 3] = f.f1, f.f2, f.j11, f.j12
            out[m, 4], out[m, 5], out[m, 6] = f.vout, f.mode, f.d2
            for _ in range(2):  # the second time from the table (in CCM)
                out[m, 7], out[m, 8] = av._step_scalar(f, i[m], v[m], h, c.sync, 0, d[m],
                                                       table)
        return out

    rng = np.random.default_rng(5)
    params = BOARD.replace(L=np.array([10e-6, 100e-6, 10e-6]), R=np.array([48.0, 10.0, 200.0]),
                           synchronous=np.array([False, False, True]))
    lanes, _, _ = lane_arrays(params)
    tab, _ = circuit_table(lanes, ())
    c = _Circuit(lanes, lanes["vin"], lanes["R"], lanes["i_load"])
    scalar = [_ScalarCircuit.of(c, lane) for lane in range(3)]
    n = 600
    i, v, d = rng.uniform(0.0, 2.0, n), rng.uniform(4.0, 20.0, n), rng.uniform(0.0, 0.9, n)
    i[::7] = 0.0
    got = compiled(np.ascontiguousarray(tab[:, 0]), i, v, d, 0.7 * TS)
    expected = np.empty_like(got)
    for m in range(n):
        f = av._field_scalar(scalar[m % 3], i[m], v[m], d[m])
        expected[m, :7] = f.f1, f.f2, f.j11, f.j12, f.vout, f.mode, f.d2
        expected[m, 7:] = av._step_scalar(f, i[m], v[m], 0.7 * TS, scalar[m % 3].sync)
    assert set(expected[:, 5]) == {0, 1, 2}
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-300)


@pytest.mark.slow  # compiles the parallel loop
def test_many_lanes_run_in_parallel_with_the_same_numbers():
    from boostsim.avgloop import PARALLEL_LANES

    n = PARALLEL_LANES + 3
    kp = np.linspace(0.0005, 0.005, n)
    (ref, _), (fast, _) = _both(BOARD.replace(L=BOARD.L * np.linspace(0.2, 1.3, n)),
                                lambda: _controller(kp=kp), vref=12.0, t_end=200 * TS)
    _assert_same(fast, ref)


def test_without_numba_the_numpy_route_runs_with_one_warning():
    script = """
import sys, warnings
sys.modules["numba"] = None  # import numba -> ImportError
from boostsim import default_board, simulate_averaged
from boostsim.control import DigitalController
from boostsim.pid import PID
board = default_board()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(2):
        pid = PID(0.002, 30.0, 0.0, 1 / board.fsw, out_max=0.8)
        simulate_averaged(board, controller=DigitalController(pid), vref=12.0,
                          t_end=20 / board.fsw)
print(len(caught), [str(w.message) for w in caught])
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert out.startswith("1 ") and "numba is not available" in out
