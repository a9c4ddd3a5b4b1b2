"""The on-board PID loop as the firmware runs it (firmware_bridge.bench.board_model): its
schedule (the serve loop's poll grid, host commands, compute time, PWM latch) against the
emulated board's, its single precision, and its reduction to DigitalController when the
board's timing is ideal."""

import time

import numpy as np
import pytest
import serial

from boostsim import default_board, simulate, steady_state
from boostsim.control import ADC, PWM, DigitalController
from boostsim.pid import PID
from firmware_bridge.bench.board_loop import BoardLoop, simulate_board_step
from firmware_bridge.bench.board_model import BoardController, BoardTiming, next_control_step
from firmware_bridge.emulator import Emulator

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
    (dict(float32=1), "float32"),
])
def test_board_timing_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BoardTiming(**kwargs)


def test_board_controller_refuses_per_lane_gains():
    pid = PID(np.array([0.0, 0.001]), 9.0, 0.0, 1 / RATE)
    with pytest.raises(ValueError, match="scalar gains"):
        BoardController(pid)


def test_the_steps_follow_the_poll_grid_and_the_duty_follows_after_the_work():
    timing = BoardTiming(poll=1e-3, compute=250e-6, resolution=5)
    ctrl, _ = _run(timing, lanes=3, t_end=0.05)
    log = ctrl.log()
    step = timing.resolution * TS
    busy = timing.average * timing.spacing + timing.compute
    for lane in range(3):
        t = log.t[:, lane][~np.isnan(log.t[:, lane])]
        gaps = np.diff(t)
        # Due times 2 ms apart (two polls), each step at the first poll after its due time:
        # a poll grid that restarts when the step's work is done, so the delay after the due
        # time grows by that work from step to step until a poll is skipped (to the model's
        # resolution).
        assert np.all((np.abs(gaps - (1 / RATE + busy)) < step)
                      | (np.abs(gaps - (1 / RATE + busy - timing.poll)) < step))
        assert np.any(np.abs(gaps - (1 / RATE + busy - timing.poll)) < step)
        assert abs(gaps.mean() - 1 / RATE) < (timing.poll + step) / gaps.size * 2
        applied = log.period[:len(t), lane] * TS
        # The PWM latches at the first counter wrap after the write, at the model's resolution.
        assert np.all(applied >= t + busy - 1e-12)
        assert np.all(applied < t + busy + step + TS)
    # Lanes are independent realisations.
    assert not np.allclose(log.t[:5, 0], log.t[:5, 1])


def test_next_control_step_on_the_poll_grid_and_at_host_commands():
    none = np.array([])
    assert next_control_step(0.0, 2.3e-3, 1e-3, none) == pytest.approx(3e-3)
    assert next_control_step(0.0, -1.0, 1e-3, none) == pytest.approx(1e-3)  # a whole poll
    assert next_control_step(0.0, 2.3e-3, 0.0, none) == 2.3e-3
    # A command before the poll wakes the loop: the step runs there if due, else the grid
    # restarts at the command (at 2.5 ms: due 2.3 ms, runs at once; at 1.7 ms: polls on).
    assert next_control_step(0.0, 2.3e-3, 1e-3, np.array([-1.0, 2.5e-3])) == 2.5e-3
    assert next_control_step(0.0, 2.3e-3, 1e-3, np.array([1.7e-3])) == pytest.approx(2.7e-3)
    assert next_control_step(0.0, 2.3e-3, 1e-3, np.array([3.0e-3])) == pytest.approx(3e-3)


@pytest.mark.slow
def test_the_models_schedule_is_the_emulated_boards():
    """The emulated board runs the firmware's serve loop on the board's clock, whatever the
    host's load: each control step's sample instant is next_control_step's from the step
    before (its end, the step's due time, the host's commands as the board received them),
    to a microsecond; and the steps do drift along the poll grid and meet commands."""
    timing = BoardTiming()
    busy = timing.average * timing.spacing + timing.compute
    with Emulator(BOARD, seed=1, noise_lsb=0.0, pid_compute_time=timing.compute) as emu:
        hal, dev = emu.hal, emu.device
        steps: list[tuple[float, float]] = []  # (sample instant, due time) [s]
        received: list[float] = []
        read = hal.serial_read

        class Timed(dev._get_pid_class()):
            def update(self, setpoint, measurement):
                conversions = timing.average * timing.spacing
                steps.append((hal.now() - conversions,
                              hal.boot_time + dev._next_ctrl_us * 1e-6))
                return super().update(setpoint, measurement)

        def timed_read(timeout_ms):
            data = read(timeout_ms)
            if data:
                received.append(hal.now())
            return data

        emu.call(lambda: (setattr(dev, "_pid_class", Timed),
                          setattr(hal, "serial_read", timed_read)))
        with serial.Serial(emu.port, timeout=1.0) as port:
            port.write(b"SOUR:PWM:DUTY 0.46\nOUTP ON\nCONT:RATE 500\nCONT:VREF 9.5\n"
                       b"CONT:MODE PID\n")
            for pause in np.random.default_rng(3).uniform(0.003, 0.012, 40):
                time.sleep(pause)
                port.write(b"*IDN?\n")
                assert port.readline()
            port.write(b"OUTP OFF\n")
            port.readline()  # nothing comes; waits the timeout out
    sample, due = np.array(steps).T
    inputs = np.array(received)
    assert sample.size > 60
    predicted = [next_control_step(s + busy, d, timing.poll, inputs)
                 for s, d in zip(sample[:-1], due[1:], strict=True)]
    np.testing.assert_allclose(predicted, sample[1:], rtol=0, atol=1e-6)
    late = sample - due
    assert np.all((late >= -1e-6) & (late <= timing.poll + 1e-6)) and np.ptp(late) > 5e-4
    # Some of the 40 commands found a step due (run at once), not all: a command lands
    # between a step's due time and its poll about a quarter of the time.
    at_input = np.abs(sample[1:, None] - inputs[None, :]).min(axis=1) < 1e-9
    assert 0 < at_input.sum() < 40


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


def test_simulate_board_step_shapes():
    loop = BoardLoop(kp=0.0, ki=9.07, rate=RATE, v_from=9.0, v_to=10.0)
    t = np.arange(-20, 200) / 20e3
    one = simulate_board_step(BOARD, loop, t)
    assert one.shape == t.shape
    assert one[0] == pytest.approx(9.0, abs=0.05)
    assert simulate_board_step(BOARD, loop, t, lanes=3).shape == (3, t.size)
    with pytest.raises(ValueError, match="outside"):
        simulate_board_step(BOARD, BoardLoop(0.0, 9.0, RATE, v_from=30.0, v_to=31.0), t)
