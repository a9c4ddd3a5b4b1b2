"""The digital loop: PWM and ADC models, the PID in the engine's controller hook, step metrics."""

import math

import numpy as np
import pytest

from boostsim import Step, default_board, simulate
from boostsim.analysis import step_response
from boostsim.control import ADC, PWM, DigitalController, Reference
from boostsim.pid import PID

BOARD = default_board()
TS = 1 / BOARD.fsw


def _pid(**kw):
    args = dict(kp=0.002, ki=30.0, kd=0.0, ts=TS, out_min=0.0, out_max=0.8,
                setpoint_rate=12 / 4e-3)
    args.update(kw)
    return PID(**args)


def test_pwm_resolution_and_quantisation():
    pwm = PWM(timer_clock=125e6)
    assert pwm.steps(100e3) == 1250
    assert pwm.quantize(0.60031, 100e3) == pytest.approx(750 / 1250)
    # Limited to duty_max, then rounded as on the board (boostsim.rp2040) but never above
    # floor(duty_max * steps): 1062 of 1250 (round-to-nearest would give 1063 = 0.8504).
    assert pwm.quantize(0.95, 100e3) == 1062 / 1250
    assert pwm.quantize(-0.1, 100e3) == 0.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(timer_clock=0), "timer_clock"), (dict(duty_min=0.5, duty_max=0.4), "duty limits"),
    (dict(duty_max=1.0), "duty limits"), (dict(update="later"), "update"),
])
def test_pwm_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PWM(**kwargs)


def test_adc_quantisation_and_conversion():
    adc = ADC(bits=12, vref=3.3, divider=115 / 15)
    rng = np.random.default_rng(0)
    code = adc.codes(np.array([12.0]), rng)[0]
    assert code == round(12.0 / (115 / 15) / 3.3 * 4096)
    assert adc.volts(code) == pytest.approx(12.0, abs=adc.volts_per_code / 2)
    assert adc.codes(np.array([100.0]), rng)[0] == 4095  # clipped at full scale
    assert adc.codes(np.array([-1.0]), rng)[0] == 0


def test_adc_noise_statistics_and_oversampling():
    lsb_pin = 3.3 / 4096
    adc = ADC(noise_rms=2 * lsb_pin)
    rng = np.random.default_rng(1)
    codes = adc.codes(np.full(200_000, 12.0), rng)
    ideal = 12.0 / adc.divider / 3.3 * 4096
    # Gaussian noise of 2 LSB plus uniform quantisation (1/12 LSB^2): std within 3 %.
    assert codes.mean() == pytest.approx(ideal, abs=0.02)
    assert codes.std() == pytest.approx(math.sqrt(4 + 1 / 12), rel=0.03)
    averaged = adc.codes(np.full((16, 20_000), 12.0), rng).mean(axis=0)
    assert averaged.std() == pytest.approx(math.sqrt(4 + 1 / 12) / 4, rel=0.05)


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=0), "bits"), (dict(vref=-1), "vref"), (dict(noise_rms=-1), "noise_rms"),
    (dict(oversample=0), "oversample"), (dict(sample_at=1.5), "sample_at"),
])
def test_adc_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ADC(**kwargs)


def test_reference_steps_and_constants():
    ref = Reference([(0, 12.0), (0.02, 10.0)])
    assert ref(0.0) == 12.0 and ref(0.019) == 12.0 and ref(0.02) == 10.0
    assert Reference(5.0)(1.0) == 5.0
    with pytest.raises(ValueError, match="start at t=0"):
        Reference([(0.01, 12.0)])


def test_closed_loop_regulates_and_duty_is_quantised():
    ctl = DigitalController(_pid(), adc=ADC(noise_rms=0.0005))
    res = simulate(BOARD, controller=ctl, vref=12.0, t_end=30e-3, dt=TS)
    means = res.period_means()
    log = ctl.log()
    # Regulated to within a few ADC codes (6 mV each) and the duty quantisation.
    assert np.mean(means["vout"][-200:]) == pytest.approx(12.0, abs=0.02)
    steps = log.duty * 1250
    np.testing.assert_allclose(steps, np.rint(steps), atol=1e-9)
    assert len(np.unique(log.duty[-500:])) >= 2  # dithering between counter steps
    # The duty applied in period k is the one computed from period k-1's sample.
    np.testing.assert_array_equal(res.periods.duty[0, 1:], log.duty[:, 0])


def test_same_pid_fed_same_measurements_gives_identical_duties():
    ctl = DigitalController(_pid(), adc=ADC(noise_rms=0.001, seed=3))
    simulate(BOARD, controller=ctl, vref=12.0, t_end=5e-3, dt=TS)
    log = ctl.log()
    plain = _pid()
    plain.reset(output=0.0)
    commands = [plain.update(12.0, float(m)) for m in log.measured[:, 0]]
    np.testing.assert_array_equal(np.array(commands), log.duty_command[:, 0])


def test_reference_step_load_step_and_soft_start():
    ctl = DigitalController(_pid(kp=0.004, ki=40.0))
    res = simulate(BOARD, controller=ctl, vref=[(0, 12.0), (40e-3, 10.0)], t_end=80e-3,
                   dt=TS, steps=[Step(20e-3, R=BOARD.R / 1.5)])
    means = res.period_means()
    t, v = means["t_start"], means["vout"]
    # Soft start: no overshoot worth the name while the setpoint ramps.
    start = step_response(t[t < 19e-3], v[t < 19e-3], t_step=1e-6, reference=12.0)
    assert start.overshoot < 5
    load = step_response(t[(t > 15e-3) & (t < 39e-3)], v[(t > 15e-3) & (t < 39e-3)],
                         t_step=20e-3, reference=12.0)
    assert load.deviation < 0.6 and abs(load.steady_state_error) < 0.02
    assert load.settling_time < 20e-3
    ref = step_response(t[t > 35e-3], v[t > 35e-3], t_step=40e-3, reference=10.0)
    assert abs(ref.steady_state_error) < 0.02
    assert ref.settling_time < 20e-3


def test_anti_windup_leaves_saturation_promptly():
    # Ask for 20 V (out of reach at duty 0.6) for 10 ms, then 10 V.
    def saturated_time_after_drop(anti_windup, kt=None):
        pid = _pid(ki=30.0, setpoint_rate=None, out_max=0.6, anti_windup=anti_windup, kt=kt)
        ctl = DigitalController(pid, pwm=PWM(duty_max=0.6))
        res = simulate(BOARD, controller=ctl, vref=[(0, 20.0), (10e-3, 10.0)], t_end=20e-3,
                       dt=TS)
        log = ctl.log()
        after = log.t[:, 0] >= 10e-3 - 1e-12
        overshoot = res.period_means()["vout"][res.periods.t_start[0] > 10.5e-3].max() - 10.0
        return np.count_nonzero(log.duty_command[after, 0] >= 0.6) * TS, overshoot

    clamp_time, clamp_over = saturated_time_after_drop("clamp")
    back_time, back_over = saturated_time_after_drop("backcalc")
    wound_time, wound_over = saturated_time_after_drop("backcalc", kt=0.0)  # no anti-windup
    assert clamp_time < 0.1e-3 and back_time < 0.1e-3
    assert wound_time > 5e-3
    assert wound_over > max(clamp_over, back_over) + 0.4


def test_lanes_with_different_gains_match_single_runs():
    kp = np.array([0.001, 0.003])
    ki = np.array([20.0, 50.0])
    batch_ctl = DigitalController(_pid(kp=kp, ki=ki), adc=ADC())
    batch = simulate(BOARD, controller=batch_ctl, vref=12.0, t_end=5e-3, dt=TS)
    for i in range(2):
        ctl = DigitalController(_pid(kp=float(kp[i]), ki=float(ki[i])), adc=ADC())
        alone = simulate(BOARD, controller=ctl, vref=12.0, t_end=5e-3, dt=TS)
        np.testing.assert_allclose(batch.vout[i], alone.vout, rtol=1e-12, atol=1e-12)


def test_controller_errors_are_clear():
    with pytest.raises(ValueError, match="PID ts"):
        simulate(BOARD, controller=DigitalController(_pid(ts=2 * TS)), vref=12.0, t_end=1e-4)
    with pytest.raises(ValueError, match="needs a reference"):
        simulate(BOARD, controller=DigitalController(_pid()), t_end=1e-4)
    with pytest.raises(ValueError, match="vref needs a controller"):
        simulate(BOARD, duty=0.5, vref=12.0, t_end=1e-4)
    with pytest.raises(ValueError, match="every"):
        DigitalController(_pid(), every=0)


def test_controller_running_every_n_periods_holds_the_duty_between_steps():
    ctl = DigitalController(_pid(ts=4 * TS), every=4)
    res = simulate(BOARD, controller=ctl, vref=12.0, t_end=2e-3, dt=TS)
    duty = res.periods.duty
    assert np.all(duty[1:4] == duty[0])
    blocks = duty[4:196].reshape(-1, 4)
    assert np.all(blocks == blocks[:, :1])


def test_step_response_metrics_on_known_responses():
    t = np.linspace(-1e-3, 20e-3, 21001)
    tau = 1e-3
    first = np.where(t < 0, 0.0, 1 - np.exp(-np.maximum(t, 0) / tau))
    m = step_response(t, first, 0.0, reference=1.0)
    assert m.rise_time == pytest.approx(tau * math.log(9), rel=2e-3)
    assert m.overshoot == pytest.approx(0.0, abs=1e-4)
    assert m.settling_time == pytest.approx(tau * math.log(50), rel=2e-3)
    zeta, wn = 0.3, 2e3
    wd = wn * math.sqrt(1 - zeta**2)
    tt = np.maximum(t, 0)
    second = np.where(t < 0, 0.0, 1 - np.exp(-zeta * wn * tt) * (
        np.cos(wd * tt) + zeta / math.sqrt(1 - zeta**2) * np.sin(wd * tt)))
    m2 = step_response(t, second, 0.0)
    expected = 100 * math.exp(-math.pi * zeta / math.sqrt(1 - zeta**2))
    assert m2.overshoot == pytest.approx(expected, rel=1e-3)


def test_per_lane_references_make_lanes():
    ctl = DigitalController(_pid())
    res = simulate(BOARD, controller=ctl, vref=np.array([10.0, 12.0]), t_end=20e-3, dt=TS)
    means = res.period_means()["vout"]
    np.testing.assert_allclose(means[:, -100:].mean(axis=1), [10.0, 12.0], atol=0.03)


def test_small_reference_steps_can_be_measured_as_reference_steps():
    t = np.linspace(-1e-3, 20e-3, 21001)
    zeta, wn = 0.5, 2e3
    wd = wn * math.sqrt(1 - zeta**2)
    tt = np.maximum(t, 0)
    unit = np.where(t < 0, 0.0, 1 - np.exp(-zeta * wn * tt) * (
        np.cos(wd * tt) + zeta / math.sqrt(1 - zeta**2) * np.sin(wd * tt)))
    y = 12.0 + 0.1 * unit  # a 0.1 V step at 12 V: smaller than 2 % of the output
    expected = 100 * math.exp(-math.pi * zeta / math.sqrt(1 - zeta**2))
    assert step_response(t, y, 0.0, kind="reference").overshoot == pytest.approx(expected,
                                                                                 rel=1e-3)
    assert step_response(t, y, 0.0).overshoot < 1  # auto: read as a disturbance of 12 V
    with pytest.raises(ValueError, match="kind"):
        step_response(t, y, 0.0, kind="ramp")


def test_slow_loop_runs_ahead_between_control_steps_with_the_same_result():
    def run(run_ahead):
        pid = PID(kp=0.0, ki=10.0, kd=0.0, ts=50 * TS, out_min=0.0, out_max=0.8)
        ctl = DigitalController(pid, every=50, initial_duty=0.5, adc=ADC(noise_rms=0.001))
        res = simulate(BOARD, controller=ctl, vref=12.0, t_end=20e-3, dt=TS,
                       x0=(0.5, 10.0), run_ahead=run_ahead)
        return res, ctl.log()

    fast, fast_log = run(True)
    slow, slow_log = run(False)
    np.testing.assert_allclose(fast.vout, slow.vout, rtol=0, atol=1e-10 * np.max(slow.vout))
    np.testing.assert_array_equal(fast_log.duty, slow_log.duty)
    assert fast_log.period[:2].tolist() == [50, 100]  # the PID ran every 50 periods
