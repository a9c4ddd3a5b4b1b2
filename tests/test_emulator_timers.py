"""The emulated board's timer IRQs without threads, on a virtual clock (no pty, no real time).

* The protection ticks run one per PROTECT_PERIOD_US of board time, each at its own instant
  (the ADC reads the plant then), however late the emulator gets to them; a tick that trips
  turns the gate off from its own instant, in the middle of a batch, and the streamed samples
  after it see the gate off.
* Skipping the serve loop's idle polls (the emulator waits for input or the firmware's next
  timed work instead) changes nothing the board does: the same PWM updates at the same board
  times, the same stream, the same replies as polling every POLL_MS.
* The plant evaluated at one instant (``Plant.at``) and after a checkpoint and restore gives
  the same numbers as ``Plant.sample``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from boostsim import default_board, steady_state
from boostsim.rp2040 import ADC_CONVERSION_S
from firmware_bridge import protocol
from firmware_bridge.emulated_hal import AdcModel, EmulatedHAL
from firmware_bridge.emulator import firmware_config
from firmware_bridge.firmware import acq
from firmware_bridge.firmware import device as fw_device
from firmware_bridge.plant import Plant
from firmware_bridge.rp2040 import rp2040_pwm
from firmware_bridge.virtual_board import VirtualBoard

FSW = 100e3


def _hal(now: list[float], **adc) -> tuple[EmulatedHAL, Plant]:
    cfg = firmware_config()
    plant = Plant(default_board(), t0=0.0, freq=FSW)
    hal = EmulatedHAL(cfg, plant, clock=lambda: now[0],
                      adc=AdcModel(3.3, 4096, 4095, seed=1, **adc))
    return hal, plant


def test_protection_ticks_run_each_millisecond_at_their_own_board_time():
    now = [0.0]
    hal, _ = _hal(now)
    hal.pwm_set(True, FSW, 0.5, 0.75)
    seen: list[tuple[float, int]] = []
    hal.protect_start(1000, lambda: seen.append((hal.ticks_us() * 1e-6,
                                                 hal.adc_read("vout"))))
    t0 = hal.next_tick(0.0)
    ring = acq.SampleRing(4096)
    hal.adc_stream_start(50, ring)
    for now[0] in (0.0004, 0.0123, 0.0131, 0.0571, 0.0802):  # late, in uneven jumps
        hal.serial_read(0)
        hal._catch_up()
    times = np.array([t for t, _ in seen])
    assert times.size == hal.stats.ticks == math.floor((0.0802 - t0) / 1e-3 + 1e-9) + 1
    np.testing.assert_allclose(times - times[0], np.arange(times.size) * 1e-3, atol=1.5e-6)
    # each code is the plant's output at the tick's instant, as a plant that only ever ran
    # to those instants gives it (noise-free ADC)
    reference = Plant(default_board(), t0=0.0, freq=FSW)
    reference.set_pwm(0.0, True, FSW, hal.pwm_actual[2])
    ticks = t0 + 1e-3 * np.arange(times.size)
    codes = [hal.adc.code(v / hal.vout_divider) for v in reference.sample(ticks)]
    assert [c for _, c in seen] == codes
    assert ring.sync() == hal.stats.samples == round(0.0802 / 50e-6)  # one each 50 us


@pytest.mark.parametrize("at", [0.01234, 0.0129993])  # clear of a tick; a tick among them
def test_back_to_back_conversions_are_the_single_reads_they_replace(at):
    """adc_sum evaluates the conversions at once: the same codes at the same board times
    (``ADC_CONVERSION_S`` apart, the board clock moved past them), the same streamed samples,
    as ``n`` single reads; with a protection tick among them, it makes the single reads."""
    runs = []
    for batch in (True, False):
        now = [0.0]
        hal, _ = _hal(now)
        hal.pwm_set(True, FSW, 0.5, 0.75)
        hal.protect_start(1000, lambda hal=hal: hal.adc_read("vout"))
        ring = acq.SampleRing(4096)
        hal.adc_stream_start(3, ring)
        now[0] = at
        hal.serial_read(0)
        total = (hal.adc_sum("vout", 4) if batch
                 else sum(hal.adc_read("vout") for _ in range(4)))
        runs.append((total, hal.now(), ring.sync(), hal.stats.ticks))
    assert runs[0] == runs[1]
    assert runs[0][1] == pytest.approx(at + 4 * ADC_CONVERSION_S, abs=1e-15)


def test_a_trip_in_the_middle_of_a_batch_turns_the_gate_off_at_its_tick():
    now = [0.0]
    hal, plant = _hal(now)
    dev = fw_device.Device(hal, firmware_config())
    hal.adc_stream_start(50, dev.ring)  # 4096 samples: the whole 0.2 s
    for at, line in ((0.0, b"SOUR:PWM:DUTY 0.45"), (0.0, b"OUTP ON"),
                     (0.02, b"SOUR:PWM:DUTY 0.6")):  # a start that does not overshoot
        now[0] = at
        assert dev.handle_line(line) is None
    now[0] = 0.06
    hal._catch_up()
    assert dev.trip is None
    hal.plant_access(now[0])
    plant.set_conditions(now[0], R=math.inf)  # the load is lost: vout rises to the OVP level
    offs: list[float] = []
    inner = hal.gate_off
    hal.gate_off = lambda: (offs.append(hal.ticks_us() * 1e-6), inner())
    now[0] = 0.2  # nothing ran for 140 ms: one batch of ticks and samples
    hal._catch_up()
    assert dev.trip == "OVP" and offs  # (then again at every tick while over the level)
    t_trip = offs[0]
    # A converter that ran to each instant as it came, its gate turned off at the trip.
    again = Plant(default_board(), t0=0.0, freq=FSW)
    again.set_pwm(0.0, True, FSW, rp2040_pwm(FSW, 0.45, limit=0.75)[1])  # 562 / 1250
    pieces = [again.sample(np.arange(50e-6, 0.02 + 1e-12, 50e-6))]
    again.set_pwm(0.02, True, FSW, 0.6)
    first_tick = hal.next_tick(0.2) - 1e-3 * math.ceil((hal.next_tick(0.2) - 0.06) / 1e-3)
    ticks = first_tick + 1e-3 * np.arange(round((0.2 - first_tick) / 1e-3) + 1)
    samples = np.arange(0.02 + 50e-6, 0.2 + 1e-12, 50e-6)
    pieces.append(again.sample(samples[samples <= 0.06]))
    again.set_conditions(0.06, R=math.inf)
    # the trip: the second tick in a row at or above the level (OVP_CONSECUTIVE)
    codes = [hal.adc.code(v / hal.vout_divider) for v in _peek(again, ticks)]
    over = np.array(codes) >= dev._ovp_code
    first = next(i for i in range(1, over.size) if over[i] and over[i - 1])
    assert t_trip == pytest.approx(ticks[first], abs=1e-9)
    later = samples[samples > 0.06]
    pieces.append(again.sample(later[later <= t_trip]))
    again.set_pwm(t_trip, False, FSW, 0.0)
    pieces.append(again.sample(later[later > t_trip]))
    want = [hal.adc.code(v / hal.vout_divider) for v in np.concatenate(pieces)]
    first_index, got, overflow = dev.ring.read(4096)
    assert first_index == 0 and not overflow and len(got) == len(want) == 4000
    diff = np.abs(np.array(got, dtype=int) - want)  # a code boundary may round apart
    # A sample exactly at a period boundary (every one here: 50 us = 5 periods) is the end
    # of one period or the start of the next by rounding: vout steps there (the ESR).
    assert diff.max() <= 15 and np.count_nonzero(diff > 1) < 0.01 * diff.size
    assert max(got) < dev._ovp_code + 1.5 / hal.vout_divider / 3.3 * 4096  # < level + 1.5 V


def _peek(plant: Plant, times: np.ndarray) -> np.ndarray:
    """The plant's output at ``times``, leaving it where it was."""
    keep = plant.checkpoint()
    try:
        return plant.sample(times)
    finally:
        plant.restore(keep)


def _virtual_board(skip_idle: bool, seconds: float, batch_steps: bool = False) -> dict:
    """The firmware's serve loop on the emulated HAL with a scripted host and a virtual clock;
    what the board did. ``skip_idle``: the emulator's idle hint; ``batch_steps``: its hint of
    the on-board PID's next step too (the host wakes up for several steps at once)."""
    script = [(0.01, b"SENS:ADC:RATE 5000\nINIT\nSOUR:PWM:DUTY 0.4\nOUTP ON\nSYST:WDOG:TIM 0.3\n"),
              (0.05, b"CONT:RATE 2000\nCONT:VREF 12\nCONT:MODE PID\n"),
              (0.12, b"CONT:VREF 10\n"), (0.16, b"FETC:ADC? 4096\n"), (0.2, b"MEAS:VOLT?\n"),
              (0.25, b"CONT:MODE OPEN\n")]  # then silence: the watchdog trips at 0.55 s
    board = VirtualBoard(script, skip_idle=skip_idle, batch_steps=batch_steps)
    hal, dev = board.hal, board.device
    pwm: list[tuple[float, bool, float]] = []
    inner = hal.pwm_set

    def pwm_set(enabled, freq, duty, limit=None):
        pwm.append((round(hal.ticks_us() * 1e-6, 9), bool(enabled), float(duty)))
        inner(enabled, freq, duty, limit)

    hal.pwm_set = pwm_set
    board.serve_until(seconds)
    # every tick up to the end ran (one per ms of board time from the device's start)
    first = hal.next_tick(0.0) - 1e-3 * (hal.stats.ticks)
    assert hal.stats.ticks == math.floor((board.clock[0] - first) / 1e-3 + 1e-9) + 1
    return {"pwm": pwm, "out": bytes(board.link.out), "trip": dev.trip,
            "polls": hal.stats.polls, "polls_run": hal.stats.polls_run,
            "waits": hal.stats.waits}


def test_skipping_idle_polls_changes_nothing_the_board_does():
    polled = _virtual_board(False, 0.7)
    skipped = _virtual_board(True, 0.7)
    assert polled["trip"] == skipped["trip"] == "WDOG"
    assert skipped["out"] == polled["out"]  # the same replies, stream block included
    # The same PWM updates at the same board times, the watchdog trip's included: a poll that
    # times out runs at its instant on the board's grid (1 ms after the last one, plus the
    # firmware's own ADC conversions), however long the host took to get there (20 us a read
    # here), whether the polls between were run or skipped.
    assert skipped["pwm"] == polled["pwm"]
    assert skipped["pwm"][-1][1:] == (False, 0.0) and skipped["pwm"][-1][0] >= 0.55
    assert skipped["polls_run"] < polled["polls_run"] / 2  # ... with far fewer polls run
    assert abs(skipped["polls"] - polled["polls"]) < 0.05 * polled["polls"]


def test_waking_up_once_for_several_control_steps_keeps_every_step_at_its_instant():
    """With the on-board PID at 2 kHz the host process sleeps STEP_BATCH_S past a step's due
    time (unless input comes) and then runs the steps due, each at its own board time: the
    steps keep the rate's grid, and the board does what the serve loop woken up
    for every step does -- in a fifth of the waits. (Not to the last bit: a conversion at a
    switching edge reads either side by the rounding of its instant, and a command that
    arrives just before a step may be served before it or after it.)"""
    polled = _virtual_board(False, 0.7)
    batched = _virtual_board(True, 0.7, batch_steps=True)
    steps = np.array([p[:3:2] for p in batched["pwm"] if 0.051 < p[0] < 0.25])
    assert steps.shape[0] > 380  # CONT:MODE PID at 0.05 s, OPEN at 0.25 s
    # On the rate's grid; a step due while a command is served (0.12, 0.16, 0.2 s) follows it.
    late = steps[:, 0] - steps[0, 0] - np.arange(steps.shape[0]) / 2000
    assert np.all(late > -1e-9) and np.all(late < 50e-6)
    assert np.count_nonzero(late > 1e-9) <= 3
    times = [p[0] for p in polled["pwm"]]
    assert [round(p[0], 4) for p in batched["pwm"]] == [round(t, 4) for t in times]
    duty = np.array([p[2] for p in polled["pwm"]]) - [p[2] for p in batched["pwm"]]
    assert np.abs(duty).max() < 1e-3
    assert batched["trip"] == polled["trip"] == "WDOG"
    head, block, tail = _reply_parts(polled["out"])
    b_head, b_block, b_tail = _reply_parts(batched["out"])
    assert (b_head, b_block.first_index, b_block.codes.size) == (head, block.first_index,
                                                                 block.codes.size)
    assert np.median(np.abs(b_block.codes.astype(int) - block.codes)) == 0
    assert abs(float(b_tail) - float(tail)) < 0.01  # MEAS:VOLT? [V]
    assert batched["waits"] < polled["waits"] / 5


def _reply_parts(out: bytes) -> tuple[bytes, Any, bytes]:
    """The replies before the FETC:ADC? block, the block decoded, the replies after it."""
    i = out.index(b"#")
    digits = int(out[i + 1:i + 2])
    size = int(out[i + 2:i + 2 + digits])
    end = i + 2 + digits + size
    return out[:i], protocol.decode_adc_block(out[i + 2 + digits:end]), out[end:]


@pytest.mark.parametrize("start", ["ccm", "rest"])
def test_one_instant_and_a_checkpoint_give_the_samples_numbers(start):
    """Exact in continuous conduction; from rest the start-up goes through DCM and transition
    periods, whose local maps and shared waveform tables depend on which neighbours were
    computed first (a look-ahead computes more of them): then within the plant's stated
    accuracy (vout 1e-4; iL a few mA of its ~0.5 A ripple)."""
    x0 = None
    if start == "ccm":
        ss = steady_state(default_board(), 0.55)
        x0 = (float(ss.il_start), float(ss.vc_start))
    plant, twin = (Plant(default_board(), t0=0.0, freq=FSW, x0=x0) for _ in range(2))
    for p in (plant, twin):
        p.set_pwm(0.0, True, FSW, 0.55)
    tol, tol_i = (1e-12, 1e-12) if start == "ccm" else (1e-4, 0.01)
    rng = np.random.default_rng(5)
    for i, t in enumerate(np.sort(rng.uniform(0.0, 0.01, 300))):
        want_v, want_i = twin.sample([t], current=True)
        if i % 7 == 3:  # a look ahead that is taken back
            keep = plant.checkpoint()
            plant.sample([t + 3e-4, t + 9e-4])
            plant.set_pwm(t + 9e-4, True, FSW, 0.5)
            plant.restore(keep)
        v, il = plant.at(float(t), current=True)
        assert v == pytest.approx(float(want_v[0]), rel=tol, abs=1e-12)
        assert il == pytest.approx(float(want_i[0]), rel=tol, abs=tol_i)
    assert plant.stats.periods == twin.stats.periods
