"""Board-side safety logic (tests/fake_hal.py, and the IRQ rules inside real MicroPython).

* The protections run from the timer IRQ: in MicroPython they do not allocate (a hard IRQ on
  the Pico must not), checked with ``micropython.heap_lock``.
* The serve loop never waits for a host that does not read: replies are dropped and reported
  (-410), the protections and the input keep going -- on the fake HAL in CPython, and in real
  MicroPython over the rp2 HAL with a USB CDC stub that reports no room to write.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fake_hal
import pytest
from micropython_runner import run_micropython

from firmware_bridge.firmware import device, scpi

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "firmware_bridge" / "firmware"
LOGIC = [FIRMWARE / n for n in ("acq.py", "commands.py", "config.py", "device.py", "scpi.py")]

_NO_ALLOC = r"""
import fake_hal, device, micropython

class IrqHAL(fake_hal.FakeHAL):
    # What the rp2 HAL gives the IRQ: an int code and int milliseconds.
    code = 100
    ms = 0
    def adc_read(self, channel):
        return self.code
    def ticks_ms(self):
        return self.ms

def board(lines):
    cfg = fake_hal.load_config()
    hal = IrqHAL(cfg)
    dev = device.Device(hal, cfg)
    dev.feed(lines)
    return dev, hal

out = {}
# Host watchdog: ticks, then the trip, with the heap locked.
dev, hal = board(b"SYST:WDOG:TIM 0.05\nSOUR:PWM:DUTY 0.3\nOUTP ON\n")
micropython.heap_lock()
try:
    for ms in (10, 20, 49, 50):
        hal.ms = ms
        dev.protect()
finally:
    micropython.heap_unlock()
out["wdog"] = (dev.trip, dev.output, hal.enabled)
# Over-voltage: below, then two ticks at full scale.
dev, hal = board(b"SOUR:PWM:DUTY 0.3\nOUTP ON\n")
micropython.heap_lock()
try:
    dev.protect()
    hal.code = 4095
    dev.protect()
    dev.protect()
finally:
    micropython.heap_unlock()
out["ovp"] = (dev.trip, dev.output, hal.enabled, dev._trip_code)
dev.poll()
out["queued"] = dev.feed(b"SYST:ERR?\n")
print("@@" + repr(out))
"""


@pytest.mark.slow  # a MicroPython VM
def test_protections_do_not_allocate_in_micropython():
    """``Device.protect`` is what the hard timer IRQ runs on the Pico: no heap allocation."""
    out = run_micropython(_NO_ALLOC, [*LOGIC, ROOT / "tests" / "fake_hal.py"])
    result = ast.literal_eval(out.split("@@", 1)[1].strip())
    assert result["wdog"] == ("WDOG", False, False)
    assert result["ovp"] == ("OVP", False, False, 4095)
    assert result["queued"].startswith(b'101,"Over-voltage protection tripped;V_out 25.')


def _trip_time(flood: bool) -> tuple[int, device.Device]:
    """Board time [us] of the OVP trip of a converter driven past the level, with or without a
    host that floods queries and reads nothing."""
    dev, hal = fake_hal.make_device()
    dev.feed(b"PROT:OVP:LEV 10\nSOUR:PWM:DUTY 0.6\nOUTP ON\n")
    hal.tx_room = 0 if flood else None
    hal.serial_in = [b"*IDN?\n" * 50] * 100 if flood else []
    seen = []
    gate_off = hal.gate_off
    hal.gate_off = lambda: seen.append(hal.now) or gate_off()
    calls = [0]

    def stop():
        calls[0] += 1
        return calls[0] > 400

    device.serve(dev, hal, stop)
    assert dev.trip == "OVP" and not hal.enabled and seen
    return seen[0], dev


def test_a_host_that_does_not_read_loses_replies_not_protection():
    quiet, _ = _trip_time(False)
    flooded, dev = _trip_time(True)
    assert flooded == quiet
    codes = []
    while len(dev.errors):
        codes.append(dev.errors.pop())
    assert [c for c, _ in codes] == [scpi.OVP_TRIPPED, scpi.QUERY_INTERRUPTED], codes
    assert "host not reading" in codes[1][1] and "replies" in codes[1][1]
    # Once the host reads again, answers are in step.
    hal = dev.hal
    hal.tx_room = None
    hal.serial_out.clear()
    hal.serial_in = [b"*IDN?\n", b"OUTP?\n"]
    calls = [0]
    device.serve(dev, hal, lambda: calls.__setitem__(0, calls[0] + 1) or calls[0] > 50)
    assert bytes(hal.serial_out) == b"boostsim,PicoBoost,E66038B713345E2C,0.1.0\n0\n"


def test_a_host_that_does_not_read_loses_replies_not_protection_in_micropython():
    """The same serve loop on the board's interpreter, over the real rp2 HAL (hal.PicoHAL)
    and a stub USB CDC that never sets POLLOUT while the host does not read: the replies to
    a query flood are dropped (-410), the protection IRQ still trips the OVP, and once the
    host reads again the answers are in step."""
    from test_firmware_micropython import _run_with_stubs

    result = _run_with_stubs(r'''
import rp2stub
flood = [b"*IDN?\n" * 5] * 40          # a wait for input: 10 ms of board time
tail = [b"SYST:ERR?\n", b"SYST:ERR?\n", b"SYST:ERR?\n", b"OUTP?\n"]
quiet = [b""] * 15                      # 150 ms: what still waits is dropped too
serial = rp2stub.Serial([b"SOUR:PWM:DUTY 0.3\nOUTP ON\n"] + flood + quiet + tail, room=0,
                        fire={20: 3}, wait_ms=10)
def host_reads():
    serial.room = None
serial.events[len(tail) - 1] = host_reads
rp2stub.install(serial)
import config, device, hal
board = hal.PicoHAL(config)
board._stdin = serial
board._stdout = serial
board.ticks_ms = lambda: rp2stub.MS[0]
dev = device.Device(board, config)
rp2stub.ADC.codes[26] = 4095 << 4        # the output runs away once on
try:
    device.serve(dev, board)
except rp2stub.StopServing:
    pass
log = rp2stub.LOG
result = {"out": bytes(serial.out), "trip": dev.trip, "output": dev.output,
          "gate_low_at_end": log[-1] == ("pin", 16, 0), "pwm_on": ("pwm", 16) in log}
''')
    assert result["trip"] == "OVP" and result["output"] is False
    assert result["pwm_on"] and result["gate_low_at_end"]
    lines = result["out"].split(b"\n")
    assert lines[-1] == b"" and lines[-2] == b"0", lines      # OUTP?: off, answers in step
    errors = lines[:-2]
    assert len(errors) == 3 and errors[-1] == b'0,"No error"', errors
    codes = sorted(int(e.split(b",")[0]) for e in errors[:2])
    assert codes == [scpi.QUERY_INTERRUPTED, scpi.OVP_TRIPPED], errors
    assert b"host not reading" in result["out"] and b"IDN" not in result["out"]
