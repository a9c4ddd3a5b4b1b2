"""The on-board PID loop as the firmware runs it (firmware_bridge.bench.board_model): its
schedule (steps at their due times, compute time, PWM latch) against the emulated board's,
its single precision, and its reduction to DigitalController when the board's timing is
ideal."""

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
from firmware_bridge.plant import Plant

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
    (dict(spacing=-1e-6), "spacing"), (dict(compute=float("nan")), "compute"),
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


def test_the_steps_run_at_their_due_times_and_the_duty_follows_after_the_work():
    timing = BoardTiming(compute=250e-6, resolution=5)
    ctrl, _ = _run(timing, lanes=3, t_end=0.05)
    log = ctrl.log()
    step = timing.resolution * TS
    busy = timing.average * timing.spacing + timing.compute
    for lane in range(3):
        t = log.t[:, lane][~np.isnan(log.t[:, lane])]
        # Due times 2 ms apart: the serve loop waits for each (to the model's resolution).
        np.testing.assert_allclose(np.diff(t), 1 / RATE, atol=step)
        applied = log.period[:len(t), lane] * TS
        # The PWM latches at the first counter wrap after the write, at the model's resolution.
        assert np.all(applied >= t + busy - 1e-12)
        assert np.all(applied < t + busy + step + TS)
    # Lanes are independent realisations (the due grid's phase).
    assert not np.allclose(log.t[:5, 0], log.t[:5, 1])


def test_by_default_the_model_runs_the_boards_schedule_exactly():
    """Default timing: every sample at its due time, every duty from the first counter wrap
    after its write, not resolved to a coarser step (at 10 periods the hidden board's step,
    whose LC rings ~3 times per control step, overshot 6-9 % more than the emulated board's)."""
    timing = BoardTiming()
    ctrl, sim = _run(timing, lanes=3, t_end=0.03)
    log = ctrl.log()
    busy = timing.average * timing.spacing + timing.compute
    for lane in range(3):
        rows = ~np.isnan(log.t[:, lane])
        t = log.t[rows, lane]
        # The due grid (1 / RATE apart) and the last sample on it.
        np.testing.assert_allclose(np.diff(t), 1 / RATE, rtol=0, atol=1e-12)
        assert t[-1] + 1 / RATE == pytest.approx(ctrl._due[lane], abs=1e-12)
        # Each duty from the first wrap after its write, in the simulation itself.
        period = log.period[rows, lane]
        np.testing.assert_array_equal(period, np.ceil((t + busy) / TS - 1e-9).astype(int))
        duty = sim.duty[lane]
        changes = np.flatnonzero(np.diff(duty)) + 1
        assert changes.size > 5 and set(changes) <= set(period.tolist())
        np.testing.assert_array_equal(duty[period[period < duty.size]],
                                      log.duty[rows, lane][period < duty.size])


def test_each_step_reads_the_output_at_its_conversion_instants():
    """The CONT_AVG conversions read the output where the board's do: at the step's sample
    instant and ``spacing`` apart, those past the switching period's end in the next period
    (the serve loop is not locked to the PWM, so 3 of 5 sample phases spill over). Reference:
    the emulator's exact plant driven by the model's own duties, read at those instants. The
    model used to clip them to the period's end, where the diode conducts and the output reads
    r_C * iL (~60 mV) higher than in the next period's on-time: its PID regulated another
    signal than the board's during a step and overshot more."""
    timing = BoardTiming(resolution=1)
    fine = ADC(bits=24, noise_rms=0.0)  # codes of 0.2 uV at the pin: the volts themselves
    vref = [(0, 9.0), (4e-3, 10.0)]
    ctrl, _ = _run(timing, lanes=6, t_end=0.02, seed=2, vref=vref, adc=fine)
    log = ctrl.log()
    d0, x0 = _start()
    offsets = np.arange(timing.average) * timing.spacing
    phases = np.mod(log.t[0], TS) / TS
    assert (phases + offsets[-1] / TS >= 1).sum() >= 2 and (phases + offsets[-1] / TS < 1).any()
    for lane in range(log.t.shape[1]):
        plant = Plant(BOARD, x0=x0)
        plant.set_pwm(0.0, True, float(BOARD.fsw), float(ctrl.pwm.quantizer(BOARD.fsw)(
            np.array([d0]))[0]))
        rows = ~np.isnan(log.t[:, lane])
        for t, period, duty, measured in zip(log.t[rows, lane], log.period[rows, lane],
                                             log.duty[rows, lane], log.measured[rows, lane],
                                             strict=True):
            vout = plant.sample(t + offsets)
            expected = fine.volts(fine.codes(vout, None).mean())
            assert measured == pytest.approx(expected, abs=1e-5), (lane, t)
            plant.set_pwm(period * TS, True, float(BOARD.fsw), duty)


def test_next_control_step_is_due_or_when_the_loop_is_free():
    assert next_control_step(0.0, 2.3e-3) == 2.3e-3
    assert next_control_step(2.5e-3, 2.3e-3) == 2.5e-3   # the previous step's work ran past it
    assert next_control_step(-np.inf, 1e-3) == 1e-3


@pytest.mark.slow
def test_the_models_schedule_is_the_emulated_boards():
    """The emulated board runs the firmware's serve loop on the board's clock, whatever the
    host's load: each control step's sample instant is next_control_step's from the step
    before (its end, the step's due time), to a microsecond, at the highest rate
    (CONT_RATE_MAX: a serve loop that only woke up every POLL_MS ran a 2 kHz loop at under
    1 kHz), while host commands come in at random times (they wake the loop, not the steps)."""
    timing = BoardTiming()
    busy = timing.average * timing.spacing + timing.compute
    rate = 2000.0
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

        def timed_read(timeout_us):
            data = read(timeout_us)
            if data:
                received.append(hal.now())
            return data

        emu.call(lambda: (setattr(dev, "_pid_class", Timed),
                          setattr(hal, "serial_read", timed_read)))
        with serial.Serial(emu.port, timeout=1.0) as port:
            port.write(b"SOUR:PWM:DUTY 0.46\nOUTP ON\nCONT:RATE %d\nCONT:VREF 9.5\n"
                       b"CONT:MODE PID\n" % rate)
            for pause in np.random.default_rng(3).uniform(0.003, 0.012, 40):
                time.sleep(pause)
                port.write(b"*IDN?\n")
                assert port.readline()
            port.write(b"OUTP OFF\n")
            port.readline()  # nothing comes; waits the timeout out
    sample, due = np.array(steps).T
    assert sample.size > 200 and len(received) >= 40
    predicted = [next_control_step(s + busy, d)
                 for s, d in zip(sample[:-1], due[1:], strict=True)]
    np.testing.assert_allclose(predicted, sample[1:], rtol=0, atol=1e-6)
    # Every step at its due time, 1 / rate apart: the rate is kept.
    np.testing.assert_allclose(sample, due, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.median(np.diff(sample)), 1 / rate, rtol=0, atol=1e-6)


@pytest.mark.parametrize("float32", [True, False])
def test_the_board_pid_computes_in_single_precision(float32):
    ctrl, _ = _run(BoardTiming(float32=float32), t_end=0.01)
    pid = ctrl._pids[0]
    assert isinstance(pid.integral, np.float32) == float32
    assert isinstance(pid.ki, np.float32) == float32


def test_with_ideal_timing_it_is_the_digital_controller():
    # No compute time, double precision, one conversion, control steps on the
    # simulator's grid: the board's loop is DigitalController sampling at the same phase.
    every = round(float(BOARD.fsw) / RATE)
    timing = BoardTiming(compute=0.0, float32=False, average=1, resolution=every)
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
