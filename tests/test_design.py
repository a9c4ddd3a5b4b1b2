"""Loop gain, margins and PID tuning (boostsim.design), verified on the switching engine.

The closed-loop tests use a minimal controller written here with boostsim.pid.PID: once per
switching period it samples vout at mid on-time of the period that just ended
(``view.sample``) and the new duty applies from the current period, i.e. a delay of
``1 - D/2`` periods from sample to update (what the board does), which is what the design is
told.

Stated tolerances:
* the PID's z-domain response: 1e-9 relative to its actual difference equation;
* the exact (modified-z) plant against the Poisson sum over 4001 aliases: 2e-5 relative; the
  textbook product with the hold (aliasing neglected) 0.1 dB / 1 deg below fsw/10; the Pade
  LTI 0.15 dB / 1 deg;
* margins: scaling the gains by 10^(GM/20) +- 3 % and adding PM/(360 fc) +- 3 % of delay
  cross the stability boundary;
* tune_pid meets its crossover to 1e-6 and phase margin to 1e-6 deg (it solves them exactly);
* engine, default board: soft start to 12 V overshooting by at most 1 %, a 50 % load step
  recovered to +-0.5 % within 5 ms, no limit cycle (last 4 ms: period means within 2 mV,
  duty within 2e-4); reference steps overshoot as the loop model predicts to 1.5 points,
  and less with more phase margin; the averaged model runs the same loop within 0.5 %.
"""

import math

import numpy as np
import pytest

from boostsim import Step, default_board, simulate, steady_state
from boostsim.averaged import simulate_averaged
from boostsim.control import DigitalController
from boostsim.design import PIDGains, TunedPID, loop_gain, tune_pid
from boostsim.linearised import averaged_duty_for_vout, operating_point
from boostsim.pid import PID

BOARD = default_board()
TS = 1e-5
DUTY = averaged_duty_for_vout(BOARD, 12.0)
DELAY = 1 - DUTY / 2  # mid-on-time sample, update at the next period


@pytest.fixture(scope="module")
def gains():
    return tune_pid(BOARD, 12.0, 2000.0, 50.0, delay_periods=DELAY)


def _controller(pid, setpoint):
    """Sample vout at mid on-time of the previous period, return the next duty."""

    def step(k, t_start, view):
        if view is None:
            return pid.last_output if pid.last_output is not None else 0.0
        vout = view.sample(0.5 * view.duty * TS)[2]
        return pid.update(setpoint(float(np.ravel(t_start)[0])), float(vout[0]))

    return step


# -- the loop gain ------------------------------------------------------------------------------

def test_gains_travel_as_pidgains(gains):
    # tune_pid's result is a PIDGains (plus its predictions); plain gains are the same type and
    # give the same loop as the PID built from them.
    assert isinstance(gains, PIDGains) and type(gains) is TunedPID
    plain = PIDGains(kp=gains.kp, ki=gains.ki, kd=gains.kd, tf=gains.tf, ts=gains.ts)
    f = 1500.0
    plain_loop = loop_gain(BOARD, DUTY, plain).frequency_response(f)
    assert plain_loop == loop_gain(BOARD, DUTY, gains).frequency_response(f)
    assert loop_gain(BOARD, DUTY, plain.pid()).frequency_response(f) == pytest.approx(
        plain_loop, rel=1e-12)
    with pytest.raises(ValueError, match="ts must be > 0"):
        PIDGains(kp=0.1, ki=1.0, kd=0.0, tf=0.0, ts=0.0)
    with pytest.raises(ValueError, match="kp must be a finite number"):
        PIDGains(kp=float("nan"), ki=1.0, kd=0.0, tf=0.0, ts=TS)


def test_controller_response_is_the_pid_difference_equation():
    pid = PID(0.05, 120.0, 2e-5, TS, out_min=-1e9, out_max=1e9, tf=1.5e-5)
    n, m = 4000, 38  # 38 cycles in 4000 samples, 19 in the analysis window
    k = np.arange(n)
    y = np.sin(2 * np.pi * m * k / n)
    u = np.array([pid.update(0.0, yk) for yk in y])
    window = slice(n // 2, n)  # whole cycles after the transient
    phase = np.exp(-2j * np.pi * m * k[window] / n)
    measured = np.sum(u[window] * phase) / np.sum(y[window] * phase)
    f = m / n / TS
    loop = loop_gain(BOARD, DUTY, pid)
    assert measured == pytest.approx(-loop.controller_response(f), rel=1e-9)


def test_exact_loop_gain_against_continuous_approximations(gains):
    exact = loop_gain(BOARD, DUTY, gains, delay_periods=DELAY, pade_order=4)
    rough = loop_gain(BOARD, DUTY, gains, delay_periods=DELAY, zoh=False)
    f = np.geomspace(50, 10e3, 40)
    # The pulse transfer function is the Poisson sum of the held, delayed continuous plant
    # over all aliases f + m fsw: check it against 4001 terms of that sum.
    m = np.arange(-2000, 2001)
    fm = f[:, None] + m[None, :] / TS
    hold = np.sinc(fm * TS) * np.exp(-1j * np.pi * fm * TS)
    aliases = exact.plant.response(fm.ravel()).reshape(fm.shape) * hold \
        * np.exp(-2j * np.pi * fm * exact.delay)
    np.testing.assert_allclose(exact.plant_response(f), aliases.sum(axis=1), rtol=2e-5)
    # The textbook product with the hold (no aliasing) is close below fsw/10.
    t_exact = exact.frequency_response(f)
    ratio = t_exact / (rough.frequency_response(f) * hold[:, 2000])
    assert np.max(np.abs(20 * np.log10(np.abs(ratio)))) < 0.1
    assert np.max(np.abs(np.degrees(np.angle(ratio)))) < 1.0
    from scipy import signal

    _, h = signal.freqresp(exact.lti, 2 * np.pi * f)
    ratio = h / t_exact
    assert np.max(np.abs(20 * np.log10(np.abs(ratio)))) < 0.15
    assert np.max(np.abs(np.degrees(np.angle(ratio)))) < 1.0


def test_margins_are_the_stability_boundaries(gains):
    loop = loop_gain(BOARD, DUTY, gains, delay_periods=DELAY)
    m = loop.margins()
    assert m.stable
    assert m.crossover_hz == pytest.approx(2000.0, rel=1e-6)
    assert m.phase_crossover_hz > m.crossover_hz
    scale = 10 ** (m.gain_margin_db / 20)

    def stable(factor=1.0, extra_delay=0.0):
        scaled = PID(gains.kp * factor, gains.ki * factor, gains.kd * factor, gains.ts,
                     tf=gains.tf)
        return loop_gain(BOARD, DUTY, scaled, delay_periods=DELAY + extra_delay).margins().stable

    assert stable(scale * 0.97) and not stable(scale * 1.03)
    delay = m.phase_margin_deg / 360 / m.crossover_hz / TS  # periods of delay that eat the PM
    assert stable(extra_delay=0.97 * delay) and not stable(extra_delay=1.03 * delay)


def test_loop_gain_input_errors(gains):
    with pytest.raises(ValueError, match="whole number"):
        loop_gain(BOARD, DUTY, gains, sample_period=1.5 * TS)
    with pytest.raises(ValueError, match="DCM"):
        loop_gain(BOARD.replace(L=5e-6), 0.3, gains)
    with pytest.raises(ValueError, match="pade_order"):
        loop_gain(BOARD, DUTY, gains, pade_order=0)


# -- tuning -------------------------------------------------------------------------------------

@pytest.mark.parametrize("crossover, margin", [(1000.0, 45.0), (2000.0, 50.0), (3000.0, 40.0)])
def test_tune_pid_meets_its_targets(crossover, margin):
    g = tune_pid(BOARD, 12.0, crossover, margin, delay_periods=DELAY)
    assert g.crossover_hz == pytest.approx(crossover, rel=1e-6)
    assert g.phase_margin_deg == pytest.approx(margin, abs=1e-6)
    assert g.gain_margin_db >= 3.0
    assert g.duty == pytest.approx(DUTY) and g.ts == TS
    assert min(g.kp, g.ki, g.kd, g.tf) >= 0



def test_tune_pid_for_a_slower_controller():
    # The PID every 4 periods (25 kHz): the hold and the delay cost more phase.
    slow = tune_pid(BOARD, 12.0, 1000.0, 45.0, sample_period=4 * TS, delay_periods=DELAY)
    assert slow.crossover_hz == pytest.approx(1000.0, rel=1e-6)
    assert slow.phase_margin_deg == pytest.approx(45.0, abs=1e-6)
    assert slow.ts == 4 * TS and slow.crossover_limit_hz == pytest.approx(2500.0)


def test_tune_pid_refuses_targets_beyond_the_limits():
    rhp = 12470.0  # the default board's RHP zero at 12 V (the model's exact value ~12.47 kHz)
    with pytest.raises(ValueError, match=r"right-half-plane zero at 124\d\d Hz") as info:
        tune_pid(BOARD, 12.0, 5000.0, 45.0)
    assert f"{rhp / 3:.0f}"[:3] in str(info.value)  # names the limit in Hz (4157 Hz)
    # A PID running every 10 periods samples at 10 kHz: crossover limited to 1 kHz.
    with pytest.raises(ValueError, match=r"1000 Hz limit .*sample rate"):
        tune_pid(BOARD, 12.0, 1500.0, 45.0, sample_period=10 * TS)
    # Below the (high-Q) LC resonance a PID cannot give 50 deg.
    with pytest.raises(ValueError, match="resonance"):
        tune_pid(BOARD, 12.0, 400.0, 50.0)
    with pytest.raises(ValueError, match="DCM"):
        tune_pid(BOARD.replace(L=5e-6), 8.0, 500.0, 45.0)
    with pytest.raises(ValueError, match="phase_margin"):
        tune_pid(BOARD, 12.0, 1000.0, 95.0)


# -- closed loop on the switching engine ---------------------------------------------------------

@pytest.mark.slow  # long physics
def test_soft_start_load_step_and_no_limit_cycle(gains):
    """Startup from the idle state with a 1 V/ms setpoint ramp, then R 48 -> 32 ohm (+50 %
    load current) at 15 ms; the engine is the reference, the averaged model must agree.

    A type-1 loop follows a ramp with a lag proportional to the rate, which it makes up at the
    ramp's end: the output overshoots 12 V by 0.56 % at 1 V/ms (0.3 % at 0.5 V/ms)."""
    t_end, t_step = 30e-3, 15e-3
    idle = steady_state(BOARD, 0.0)

    def run(simulator, **start):
        pid = gains.pid(out_max=0.85, setpoint_rate=1000.0)
        return simulator(BOARD, controller=_controller(pid, lambda t: 12.0), t_end=t_end,
                         steps=(Step(t_step, R=32.0),), **start)

    eng = run(simulate, x0=(idle.il_start, idle.vc_start))
    means = eng.period_means()
    vout, duty = means["vout"], eng.periods.duty[0]
    t = means["t_start"] + TS
    before = (t > 12e-3) & (t < t_step)
    assert np.max(vout[t < t_step]) < 12.0 * 1.01  # the soft start hardly overshoots
    assert np.all(np.abs(vout[before] - 12.0) < 0.06)
    after = t > t_step
    dip = 12.0 - np.min(vout[after])
    assert 0.02 < dip < 0.6  # the load step is felt, but by less than 5 %
    assert np.all(np.abs(vout[t > t_step + 5e-3] - 12.0) < 0.06)  # recovered within 5 ms
    tail = t > t_end - 4e-3
    assert np.ptp(vout[tail]) < 2e-3  # no limit cycle
    assert np.ptp(duty[tail]) < 2e-4
    assert np.mean(duty[tail]) > np.mean(duty[before])  # more load, more duty

    avg = run(simulate_averaged, x0=(idle.il_mean, idle.vc_mean), duty0=0.0)
    assert np.max(np.abs(avg.periods.vout_mean - vout)) < 0.005 * 12.0


def test_reference_step_overshoot_follows_the_phase_margin():
    """0.2 V reference steps from the steady state with designs for 40 and 60 deg: each
    overshoots as the loop model predicts for it (the PID's derivative acts on the
    measurement, so the setpoint sees P + I only), and the smaller margin more."""
    measured = {}
    for margin in (40.0, 60.0):
        g = tune_pid(BOARD, 12.0, 2000.0, margin, delay_periods=DELAY)
        ss = steady_state(BOARD, g.duty)
        pid = g.pid(out_max=0.85)
        pid.reset(output=g.duty, measurement=12.0, setpoint=12.0)
        t_step, step = 1e-3, 0.2
        eng = simulate(BOARD, controller=_controller(pid, lambda t, s=step, t0=t_step:
                                                     12.0 + s * (t >= t0)),
                       t_end=6e-3, x0=(ss.il_start, ss.vc_start))
        vout = eng.period_means()["vout"]
        k = round(t_step / TS)
        rise = vout[k:] - np.mean(vout[k - 20:k])
        measured[margin] = np.max(rise) / np.mean(rise[-50:]) - 1
        assert measured[margin] == pytest.approx(g.overshoot, abs=0.015)
        # The predicted response itself (linear model, sampled) settles to the step.
        _, y = g.loop.step_response(3000, step=step)
        assert y[-1] == pytest.approx(step, rel=1e-3)
    assert measured[40.0] > measured[60.0] + 0.03


def test_averaged_model_predicts_the_same_closed_loop(gains):
    op = operating_point(BOARD, gains.duty)
    pid = gains.pid(out_max=0.85)
    pid.reset(output=gains.duty, measurement=12.0, setpoint=12.0)
    avg = simulate_averaged(BOARD, controller=_controller(pid, lambda t: 12.0 + 0.2 * (t >= 1e-3)),
                            t_end=6e-3, x0=(op.il, op.vc))
    rise = avg.periods.vout_mean[0, 100:] - op.vout
    assert np.max(rise) / np.mean(rise[-50:]) - 1 == pytest.approx(gains.overshoot, abs=0.015)
    assert math.isfinite(gains.gain_margin_db)


def test_slow_loops_below_the_resonance_get_an_integral_design():
    # The board's own MicroPython loop runs at 0.5-2 kHz: far below the LC resonance.
    board = default_board()
    gains = tune_pid(board, 12.0, 20.0, 50.0, sample_period=1 / 500)
    assert gains.kp == 0.0 and gains.kd == 0.0 and gains.ki > 0
    assert gains.crossover_hz == pytest.approx(20.0, rel=1e-3)
    assert gains.phase_margin_deg >= 50.0 and gains.gain_margin_db >= 3.0
    with pytest.raises(ValueError, match="LC resonance"):
        tune_pid(board, 12.0, 150.0, 50.0)
    # It regulates on the averaged model with the loop running every 200 periods.
    pid = gains.pid(setpoint_rate=None)
    pid.reset(output=0.6)
    controller = DigitalController(pid, every=200, initial_duty=0.6)
    res = simulate_averaged(board, controller=controller, vref=12.0, t_end=0.25,
                            x0=(0.63, 12.0))
    vout = res.period_means()["vout"]
    assert np.mean(vout[-2000:]) == pytest.approx(12.0, abs=0.03)
