"""The on-board PID loop as the firmware runs it (firmware_bridge.bench.board_model): its
schedule (poll jitter, compute time, PWM latch), its single precision, its reduction to
DigitalController when the board's timing is ideal, and the effect of the jitter on a step."""

import numpy as np
import pytest

from boostsim import default_board, simulate, steady_state
from boostsim.control import ADC, PWM, DigitalController
from boostsim.pid import PID
from firmware_bridge.bench.board_loop import BoardLoop, simulate_board_step, step_figures
from firmware_bridge.bench.board_model import BoardController, BoardTiming

BOARD = default_board().replace(L=70e-6, C=150e-6, r_C=0.06, r_L=0.15, vin=5.1)
TS = 1 / float(BOARD.fsw)
RATE = 500.0
ADC_QUIET = ADC(noise_rms=0.0)


def _start():
    d0 = 0.46
    ss = steady_state(BOARD, d0, points=2)
    return d0, (float(ss.il_start), float(ss.vc_start))


def _run(timing, *, lanes=1, t_end=0.03, seed=0, vref=9.5, adc=ADC_QUIET):
    d0, x0 = _start()
    pid = PID(0.0, 9.07, 0.0, 1 / RATE, 0.0, 0.75)
    ctrl = BoardController(pid, timing=timing, adc=adc, pwm=PWM(duty_max=0.75),
                           initial_duty=d0, lanes=lanes, seed=seed)
    sim = simulate(BOARD, controller=ctrl, vref=vref, t_end=t_end, dt=TS * ctrl.every, x0=x0)
    return ctrl, sim


@pytest.mark.parametrize("kwargs,match", [
    (dict(poll=-1e-3), "poll"), (dict(compute=float("nan")), "compute"),
    (dict(average=0), "average"), (dict(resolution=2.5), "resolution"),
    (dict(float32=1), "float32"), (dict(delays=(1e-4, -1e-4)), "delays"),
    (dict(latencies=(float("inf"),)), "latencies"),
])
def test_board_timing_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BoardTiming(**kwargs)


def test_board_controller_refuses_per_lane_gains():
    pid = PID(np.array([0.0, 0.001]), 9.0, 0.0, 1 / RATE)
    with pytest.raises(ValueError, match="scalar gains"):
        BoardController(pid)


def test_the_schedule_jitters_by_the_poll_and_the_duty_follows_after_compute():
    timing = BoardTiming(poll=1e-3, compute=250e-6, resolution=5)
    ctrl, _ = _run(timing, lanes=3, t_end=0.05)
    log = ctrl.log()
    step = timing.resolution * TS
    for lane in range(3):
        t = log.t[:, lane][~np.isnan(log.t[:, lane])]
        gaps = np.diff(t)
        # Due times 2 ms apart, each step up to one poll (and one resolution step) late.
        assert np.all(gaps > 1 / RATE - timing.poll - step)
        assert np.all(gaps < 1 / RATE + timing.poll + step)
        assert gaps.std() > 1e-4  # it does jitter
        assert abs(gaps.mean() - 1 / RATE) < (timing.poll + step) / gaps.size * 2
        applied = log.period[:len(t), lane] * TS
        # The PWM latches at the first counter wrap after the write, at the model's resolution.
        assert np.all(applied >= t + timing.compute - 1e-12)
        assert np.all(applied < t + timing.compute + step + TS)
    # Lanes are independent realisations.
    assert not np.allclose(log.t[:5, 0], log.t[:5, 1])


def test_measured_delays_and_latencies_replace_the_uniform_poll_and_the_compute_time():
    timing = BoardTiming(delays=(0.7e-3,), latencies=[0.3e-3, 0.5e-3], resolution=5)
    assert timing.latencies == (0.3e-3, 0.5e-3)
    ctrl, _ = _run(timing, lanes=2, t_end=0.03)
    log = ctrl.log()
    step = timing.resolution * TS
    for lane in range(2):
        t = log.t[:, lane][~np.isnan(log.t[:, lane])]
        # A constant delay after the due grid: the steps are one period apart (to the
        # model's resolution), not jittered.
        np.testing.assert_allclose(np.diff(t), 1 / RATE, atol=step + TS)
        late = log.period[:len(t), lane] * TS - t
        assert np.all(late >= 0.3e-3 - 1e-12) and np.all(late < 0.5e-3 + step + TS)
        assert late.min() < 0.3e-3 + step + TS <= 0.5e-3 <= late.max()  # both drawn


@pytest.mark.parametrize("float32", [True, False])
def test_the_board_pid_computes_in_single_precision(float32):
    ctrl, _ = _run(BoardTiming(float32=float32), t_end=0.01)
    pid = ctrl._pids[0]
    assert isinstance(pid.integral, np.float32) == float32
    assert isinstance(pid.ki, np.float32) == float32


def test_with_ideal_timing_it_is_the_digital_controller():
    # No poll jitter, no compute time, double precision, one conversion, control steps on the
    # simulator's grid: the board's loop is DigitalController sampling at the same phase.
    every = round(float(BOARD.fsw) / RATE)
    timing = BoardTiming(poll=0.0, compute=0.0, float32=False, average=1, resolution=every)
    vref = [(0, 9.2), (9e-3, 9.6)]  # not between a sample and its duty (board: vref at
    #                                  the sample; DigitalController: at the period start)
    board, sim_b = _run(timing, t_end=0.03, seed=5, vref=vref)
    phase = float(board.log().t[0, 0] % TS) / TS
    d0, x0 = _start()
    pid = PID(0.0, 9.07, 0.0, 1 / RATE, 0.0, 0.75)
    digital = DigitalController(pid, adc=ADC(noise_rms=0.0, sample_at=phase),
                                pwm=PWM(duty_max=0.75), every=every, initial_duty=d0)
    sim_d = simulate(BOARD, controller=digital, vref=vref, t_end=0.03, dt=TS * every, x0=x0,
                     engine="numpy")
    duty_b = board.log().duty[:, 0]
    duty_d = digital.log().duty[:, 0]
    n = min(duty_b.size, duty_d.size)
    assert n > 10
    np.testing.assert_allclose(duty_b[:n], duty_d[:n], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(sim_b.vout), np.asarray(sim_d.vout), rtol=1e-12)


def test_poll_jitter_raises_the_overshoot_of_a_slow_loop():
    # The plant rings within a control period, so when the sample is taken matters: the
    # serve loop's poll jitter raises the overshoot of this 30 Hz / 500 Hz loop by about a
    # quarter (what the old fixed-schedule model missed against the emulated board).
    loop = BoardLoop(kp=0.0, ki=9.07, rate=RATE, v_from=9.0, v_to=10.0)
    t = np.arange(-100, 800) / 20e3
    ideal = BoardTiming(poll=0.0, compute=0.0)
    runs = {name: step_figures(t, simulate_board_step(BOARD, loop, t, lanes=12, seed=2,
                                                      timing=timing), loop)
            for name, timing in (("ideal", ideal), ("board", BoardTiming()))}
    over_ideal, over_board = (np.median(runs[n][:, 0]) for n in ("ideal", "board"))
    assert over_board > 1.1 * over_ideal


def test_simulate_board_step_shapes():
    loop = BoardLoop(kp=0.0, ki=9.07, rate=RATE, v_from=9.0, v_to=10.0)
    t = np.arange(-20, 200) / 20e3
    one = simulate_board_step(BOARD, loop, t)
    assert one.shape == t.shape
    assert one[0] == pytest.approx(9.0, abs=0.05)
    assert simulate_board_step(BOARD, loop, t, lanes=3).shape == (3, t.size)
    with pytest.raises(ValueError, match="outside"):
        simulate_board_step(BOARD, BoardLoop(0.0, 9.0, RATE, v_from=30.0, v_to=31.0), t)
