"""Firmware logic details that the scripted conformance cases cannot reach (CPython only):
fault handling, the ring buffer's producer/consumer race, the PID module hookup, config sanity.
"""

from __future__ import annotations

import sys
from array import array

import fake_hal
import numpy as np
import pytest

from firmware_bridge.firmware import acq, config, device, scpi


def test_boots_with_the_gate_off():
    cfg = fake_hal.load_config()
    hal = fake_hal.FakeHAL(cfg)
    hal.enabled = True  # whatever the pin did before
    dev = device.Device(hal, cfg)
    assert hal.pwm_calls == 1 and not hal.enabled and hal.duty == 0.0
    assert not dev.output and dev.trip is None and dev.mode == "OPEN"


def test_uses_the_shared_pid_module():
    from boostsim.pid import PID

    dev, _ = fake_hal.make_device()
    assert dev._get_pid_class() is PID


def test_pid_module_missing_is_an_execution_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "boostsim.pid", None)  # import raises ImportError
    dev, _ = fake_hal.make_device()
    assert dev.feed(b"CONT:MODE PID\nOUTP ON\nOUTP?\nSYST:ERR?\n") == (
        b'0\n-200,"Execution error;pid.py is not installed"\n')
    assert not dev.output


def test_hal_fault_in_a_handler_fails_safe():
    dev, hal = fake_hal.make_device()
    dev.feed(b"SOUR:PWM:DUTY 0.5\nOUTP ON\n")
    assert hal.enabled

    def broken(channel):
        raise OSError(5, "ADC gone")

    hal.adc_read = broken
    assert dev.feed(b"MEAS:VOLT?\n") == b"\n"  # a query still gets its one (empty) line
    assert not dev.output and not hal.enabled
    code, text = dev.errors.pop()
    assert code == -300 and "OSError" in text
    dev.protect()  # a faulting protection IRQ does not raise either: gate off, then reported
    assert not hal.enabled
    dev.poll()
    code, text = dev.errors.pop()
    assert code == -300 and "protection IRQ" in text
    assert dev.feed(b"OUTP?\n") == b"0\n"


def test_pid_returning_garbage_is_bounded():
    class Wild:
        def __init__(self, *args, **kwargs):
            self.outputs = [float("nan"), 5.0, -1.0, 0.3]

        def reset(self, **kwargs):
            pass

        def update(self, setpoint, measurement):
            return self.outputs.pop(0)

    cfg = fake_hal.load_config()
    hal = fake_hal.FakeHAL(cfg)
    dev = device.Device(hal, cfg, pid_class=Wild)
    dev.feed(b"CONT:MODE PID\nOUTP ON\n")
    seen = []
    for _ in range(4):
        hal.advance_us(2000)
        dev.poll()
        seen.append(hal.duty)
    assert seen == [0.0, cfg.DUTY_LIMIT_DEFAULT, 0.0, 0.3]


def test_ring_drops_samples_overwritten_during_the_copy():
    ring = acq.SampleRing(8)
    for code in range(8):
        ring.push(code)

    class Interrupting:
        """The array, but the sampling IRQ fires (3 pushes) in the middle of the copy."""

        def __init__(self, data):
            self.data = data
            self.fired = False

        def __setitem__(self, i, v):
            self.data[i] = v

        def __getitem__(self, i):
            if not self.fired:
                self.fired = True
                for code in (100, 101, 102):
                    ring.push(code)
            return self.data[i]

    ring.buf = Interrupting(ring.buf)
    first, codes, overflow = ring.read(8)
    assert (first, list(codes), overflow) == (3, [3, 4, 5, 6, 7], True)
    first, codes, overflow = ring.read(8)
    assert (first, list(codes), overflow) == (8, [100, 101, 102], False)


def test_ring_counter_wraps_without_big_ints():
    ring = acq.SampleRing(4)
    ring.count = ring._seen = 0x0FFFFFFE  # the producer's counter about to wrap
    ring.written = ring.read_index = 10**12
    for code in range(6):
        ring.push(code)
        assert ring.count <= 0x0FFFFFFF
    assert ring.available() == 4
    first, codes, overflow = ring.read(10)
    assert first == 10**12 + 2 and list(codes) == [2, 3, 4, 5] and overflow


def test_pack_payload_from_any_sequence():
    a = acq.pack_payload(1, 2, 3, 4, 5, array("H", [1, 2, 65535]))
    b = acq.pack_payload(1, 2, 3, 4, 5, (1, 2, 65535))
    assert a == b and a[-6:] == b"\x01\x00\x02\x00\xff\xff"


@pytest.mark.parametrize(("token", "value", "code"), [
    ("1", 1.0, None), ("-2.5E+3", -2500.0, None), (".5", 0.5, None), ("5.", 5.0, None),
    ("+0", 0.0, None), ("1e-3", 0.001, None), ("nan", None, None), ("-INF", -1, None),
    ("", None, -104), ("abc", None, -104), ("-", None, -104), ("e5", None, -104),
    ("1.2.3", None, -120), ("1e", None, -120), ("1e+", None, -120), ("0x10", None, -120),
    ("1_0", None, -120), ("5V", None, -138), ("5 kHz", None, -138), ("1e3mV", None, -138),
])
def test_parse_number(token, value, code):
    if code is not None:
        with pytest.raises(scpi.ScpiError) as info:
            scpi.parse_number(token)
        assert info.value.code == code
        return
    got = scpi.parse_number(token)
    if token == "nan":
        assert got != got
    elif value == -1:
        assert got == float("-inf")
    else:
        assert got == value


def test_error_queue_and_formatting():
    q = scpi.ErrorQueue(3)
    for code in (-100, -101, -102, -104):
        q.push(code, "x")
    assert q.items == [(-100, "x"), (-101, "x"), (-350, "")]
    q.push(-109)
    assert len(q) == 3 and q.items[-1] == (-350, "")
    assert scpi.format_error(-222, 'say "hi"') == '-222,"Data out of range;say \'hi\'"'
    assert scpi.format_error(0) == '0,"No error"'
    with pytest.raises(ValueError):
        scpi.ErrorQueue(1)


def test_error_queue_never_loses_a_protection_report():
    q = scpi.ErrorQueue(3)
    q.push(-100)
    q.push(102, "wdog")
    q.push(-101)
    q.push(-102)                      # full: the newest ordinary error becomes -350
    assert q.items == [(-100, ""), (102, "wdog"), (-350, "")]
    q.push(101, "ovp")                # the oldest ordinary entry makes room
    assert q.items == [(102, "wdog"), (-350, ""), (101, "ovp")]
    q.push(-300, "fault")             # only the -350 left to give
    assert q.items == [(102, "wdog"), (101, "ovp"), (-300, "fault")]
    q.push(-113)                      # an ordinary error cannot get in
    assert q.items == [(102, "wdog"), (101, "ovp"), (-300, "fault")]
    q.push(101, "again")              # nothing but reports: the oldest report goes
    assert q.items == [(101, "ovp"), (-300, "fault"), (101, "again")]
    q = scpi.ErrorQueue(2)
    q.push(-100)
    q.push(-101)
    q.push(102)                       # no loss marked yet: the trip and a -350
    assert q.items == [(-350, ""), (102, "")]


def test_config_is_consistent():
    assert 0 < config.DUTY_LIMIT_DEFAULT <= config.DUTY_HARD_MAX < 1
    full_scale = config.ADC_VREF * config.VOUT_DIVIDER
    assert config.OVP_DEFAULT <= config.OVP_MAX < full_scale
    assert config.PWM_FREQ_MIN <= config.PWM_FREQ_DEFAULT <= config.PWM_FREQ_MAX
    assert config.ADC_RATE_MIN <= config.ADC_RATE_DEFAULT <= config.ADC_RATE_MAX <= 1e6
    assert config.CONT_RATE_MIN <= config.CONT_RATE_DEFAULT <= config.CONT_RATE_MAX
    assert 1 <= config.FETCH_MAX <= config.RING_SIZE
    assert 0 <= config.HW_WDT_MS <= 8388  # the RP2040 limit
    assert config.ERR_QUEUE_LEN >= 2 and config.LINE_MAX >= 64
    assert config.CONT_VREF_DEFAULT <= config.OVP_MAX


def test_the_serve_loop_waits_for_input_only_until_the_next_control_step():
    # A loop that waited whole POLL_MS for input ran a 2 kHz PID at most every millisecond
    # (and a 1 kHz one every ~1.1 ms: the wait started after the step's work): each step must
    # run at its due time, 1 / CONT:RATE apart.
    cfg = fake_hal.load_config()
    hal = fake_hal.FakeHAL(cfg)
    dev = device.Device(hal, cfg)
    poll_us = cfg.POLL_MS * 1000
    assert dev.wait_us(poll_us) == poll_us            # output off: nothing timed
    dev.feed(b"CONT:RATE 2000\nCONT:MODE PID\nOUTP ON\n")
    dev.poll()                                        # the first step, at once
    assert dev.wait_us(poll_us) == 500
    hal.advance_us(480)
    assert dev.wait_us(poll_us) == 20
    hal.advance_us(25)
    assert dev.wait_us(poll_us) == 0                  # due (late): no wait
    dev.feed(b"CONT:RATE 500\n")
    dev.poll()
    assert dev.wait_us(poll_us) == poll_us            # the next step 2 ms away

    stepped = []
    update = dev.pid.update

    def timed_update(setpoint, measurement):
        stepped.append(hal.ticks_us())
        return update(setpoint, measurement)

    dev.pid.update = timed_update
    waits = iter(range(40))
    device.serve(dev, hal, should_stop=lambda: next(waits, None) is None)
    gaps = set(np.diff(stepped).tolist())
    assert len(stepped) >= 4 and gaps == {2000}, (stepped, gaps)
