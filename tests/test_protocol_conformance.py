"""Protocol conformance of the firmware logic against the simulated hardware (tests/fake_hal.py).

Every case is a script of steps (command bytes, clock advances, plant changes, state records)
with an expectation per step. Only the steps are data the driver needs, so the very same
scripts also run inside real MicroPython (tests/test_firmware_micropython.py) and must give
byte-identical results there.
"""

from __future__ import annotations

import math

import fake_hal
import pytest

from firmware_bridge import protocol
from firmware_bridge.firmware import acq, config, scpi

ANY = None  # expectation: record the step, check nothing


class Label:
    """Expectation: nothing, but remember this record under ``name`` (for ``SameAs``)."""

    def __init__(self, name: str):
        self.name = name


class SameAs:
    """Expectation: this record equals the one remembered under ``name`` in the same case."""

    def __init__(self, name: str):
        self.name = name


def ok(cmd: bytes):
    """A set command that must succeed: no output, no error queued."""
    return [(cmd, b""), (("errors",), [])]


def ask(cmd: bytes, response: bytes):
    return [(cmd, response + b"\n")]


def fails(cmd: bytes, code: int, text: bytes | None = None):
    """The command is refused with ``code`` (and only that); a query answers an empty line."""
    query = cmd.split()[0].endswith(b"?") if cmd.split() else False
    items = [(cmd, b"\n" if query else b"")]
    if text is None:
        items.append((("errors",), [code]))
    else:
        items.append((b"SYST:ERR?", text + b"\n"))
    return items


def num(cmd: bytes, value: float, tol: float):
    def check(record):
        assert record.endswith(b"\n") and record.count(b"\n") == 1, record
        assert math.isclose(float(record), value, rel_tol=0, abs_tol=tol), (record, value)
    return [(cmd, check)]


def block(cmd: bytes, check):
    def run(record):
        assert record.startswith(b"#") and record.endswith(b"\n")
        payload, used = scpi.decode_block(record)
        assert used == len(record)
        check(protocol.decode_adc_block(payload))
    return [(cmd, run)]


def state(label: str | None = None):
    """Record the device's settings; ``label``: remember them, ``SameAs(label)``: compare."""
    return [(("state",), ANY if label is None else Label(label))]


def same_state(label: str):
    return [(("state",), SameAs(label))]


def advance(us: int):
    return [(("advance", us), ANY)]


def flat(*groups):
    items = []
    for g in groups:
        items.extend(g)
    return items


class Case:
    def __init__(self, name, items, overrides=None):
        self.name = name
        self.items = items
        self.overrides = overrides

    @property
    def steps(self):
        return [step if isinstance(step, tuple) else (step,) for step, _ in self.items]


# ----------------------------------------------------------------------------------- cases

IDN = b"boostsim,PicoBoost,E66038B713345E2C," + config.FW_VERSION.encode()

CASES: list[Case] = []


def case(name, *groups, overrides=None):
    CASES.append(Case(name, flat(*groups), overrides))


case("common",
     ask(b"*IDN?", IDN), ask(b"*idn?", IDN), ask(b"*OPC?", b"1"), ask(b"*TST?", b"0"),
     ok(b"*OPC"), ok(b"*WAI"), ok(b"*CLS"), ask(b"SYST:VERS?", b"1999.0"),
     ask(b"SYST:ERR?", b'0,"No error"'), ask(b"SYST:ERR:COUN?", b"0"),
     ask(b"OUTP?", b"0"), ask(b"PROT:TRIP?", b"NONE"), ask(b"CONT:MODE?", b"OPEN"),
     [(("pwm",), (False, 100000.0, 0.0))])

case("forms",
     ok(b"SOURce:PWM:DUTY 0.25"), ask(b"PWM:DUTY?", b"0.25"),
     ask(b":source:pwm:duty:level?", b"0.25"), ok(b"SOUR:PWM:DUTY:LEV 0.3"),
     ask(b"sOuR:pWm:DuTy?", b"0.3"), ok(b"SOUR:PWM:DUTY\t0.2"), ask(b"PWM:DUTY?", b"0.2"),
     ask(b"OUTPut:STATe?", b"0"), ok(b"OUTP:STAT ON"), ask(b"OUTP?", b"1"),
     ok(b"output off"), ok(b"OUTP 1"), ask(b"OUTP?", b"1"), ok(b"OUTP 0"),
     ask(b"SYSTEM:ERROR:NEXT?", b'0,"No error"'), ok(b"SENSE:ADC:RATE 2000"),
     ask(b"ADC:RATE?", b"2000"), ok(b"SOUR:PWM:FREQuency 50000"),
     ask(b"SOURCE:PWM:FREQ?", b"50000"), ok(b"CAL:VOUT  1.01 , -0.02 "),
     ask(b"CALIBRATION:VOUT?", b"1.01,-0.02"), ok(b"CONT:MODE pid"),
     ask(b"CONTROL:MODE?", b"PID"), ok(b"CONTrol:MODE OPEN"), ok(b"INITIATE:IMMEDIATE"),
     ok(b"ABORT"), ok(b"PROTECTION:OVP:LEVEL 12.5"), ask(b"PROT:OVP:LEV?", b"12.5"),
     ok(b"SYSTEM:WDOG:TIMEOUT 2"), ask(b"SYST:WDOG:TIM?", b"2"),
     ok(b"SOUR:PWM:DUTY 1E-1"), ask(b"SOUR:PWM:DUTY?", b"0.1"),
     ok(b"SOUR:PWM:DUTY +.5"), ask(b"SOUR:PWM:DUTY?", b"0.5"),
     ok(b"SOUR:PWM:DUTY 5e-1"), ok(b"SOUR:PWM:DUTY -0"), ask(b"SOUR:PWM:DUTY?", b"0"),
     # Not a short or a long form: undefined.
     fails(b"SOURC:PWM:DUTY?", -113), fails(b"OUTPU ON", -113), fails(b"MEAS:VOLT:D?", -113))

case("framing",
     [(("raw", b"OUTP?\r\n"), b"0\n"), (("raw", b"OUTP"), b""), (("raw", b"?\n"), b"0\n"),
      (("raw", b"OUTP?\nSOUR:PWM:DUTY?\n"), b"0\n0\n"), (("raw", b"\n\r\n   \n\t\n"), b""),
      (("raw", b"SOUR:PWM:DUTY 0.4\r\nSOUR:PWM:DUTY?\r\n"), b"0.4\n")],
     # Exactly LINE_MAX bytes (plus CR) are fine; one more is an input buffer overrun.
     ok(b"SOUR:PWM:DUTY " + b"0" * 238 + b"0.25"), ask(b"SOUR:PWM:DUTY?", b"0.25"),
     [(("raw", b"SOUR:PWM:DUTY " + b"0" * 238 + b"0.35\r\n"), b"")],
     ask(b"SOUR:PWM:DUTY?", b"0.35"), state("before"),
     fails(b"SOUR:PWM:DUTY " + b"0" * 239 + b"0.25", -363), same_state("before"),
     fails(b"SOUR:PWM:DUTY? " + b"1" * 300, -363),
     fails(b"A" * 300 + b"?", -363), fails(b"A" * 300, -363),
     # Query or not is decided by the first word of the whole line, never by its last byte.
     fails(b"A" * 300 + b" B?", -363), fails(b"A" * 300 + b"?\r", -363),
     fails(b"A" * 300 + b"?\t X", -363),
     [(("raw", b"C" * 200), b""), (("raw", b"C" * 100 + b" D?\n"), b""),
      (("raw", b" " * 200), b""), (("raw", b"E" * 100 + b"? F\r\n"), b"\n"),
      (("errors",), [-363, -363])],
     [(("raw", b"B" * 200), b""), (("raw", b"C" * 200 + b"?\n"), b"\n"),
      (("errors",), [-363]),
      (("raw", b"SOUR:PWM:DUTY " + b"1" * 400), b""), (("raw", b"\n"), b""),
      (("errors",), [-363])],
     ask(b"SOUR:PWM:DUTY?", b"0.35"), same_state("before"))

case("messages_tell_numbers_apart",
     # Rounded to 6 digits these would read "duty 0.75 above limit 0.75".
     fails(b"SOUR:PWM:DUTY 0.7500001", -222,
           b'-222,"Data out of range;duty 0.7500001 above limit 0.75"'),
     fails(b"SOUR:PWM:DUTY:LIM 0.8500000001", -222,
           b'-222,"Data out of range;limit 0.8500000001 above 0.85"'),
     fails(b"PROT:OVP:LEV -1e-9", -222, b'-222,"Data out of range;level -1e-09 below 0"'),
     ok(b"SOUR:PWM:DUTY 0.75"),
     fails(b"SOUR:PWM:DUTY:LIM 0.7499999", -221,
           b'-221,"Settings conflict;duty 0.75 above new limit 0.7499999"'))

case("errors",
     fails(b"OUTP ON;OUTP?", -100), fails(b"OUTP?;*IDN?", -100),
     [(("raw", b"OUTP\x01?\n"), b"\n"), (("errors",), [-101])],
     [(("raw", b"OUTP \xff\n"), b""), (("errors",), [-101])],
     [(("raw", b"OUTP\x00 ON\n"), b""), (("errors",), [-101])],
     fails(b"SOUR::PWM:DUTY 0.1", -102), fails(b"CAL:VOUT 1,,0", -102),
     fails(b"CAL:VOUT 1,0,", -102), fails(b"SOUR:PWM:DUTY?0.5", -102), fails(b"*", -102),
     fails(b"1OUTP ON", -102), fails(b"OUTP:", -102), fails(b"*IDN:X?", -102),
     fails(b"SOUR:PWM:DUTY abc", -104), fails(b"SOUR:PWM:DUTY ON", -104),
     fails(b"SOUR:PWM:DUTY .", -104), fails(b"FETC:ADC? 1.5", -104),
     fails(b"OUTP? 1", -108), fails(b"*RST 1", -108), fails(b"SOUR:PWM:DUTY 0.1,0.2", -108),
     fails(b"*IDN? X", -108),
     fails(b"SOUR:PWM:DUTY", -109), fails(b"CAL:VOUT 1", -109), fails(b"OUTP", -109),
     fails(b"FOO:BAR 1", -113), fails(b"FOO?", -113), fails(b"INIT?", -113),
     fails(b"MEAS:VOLT", -113), fails(b"*XYZ", -113), fails(b"PROT:TRIP NONE", -113),
     fails(b"SOUR:PWM:DUTY 1.2.3", -120), fails(b"SOUR:PWM:DUTY 1e", -120),
     fails(b"SOUR:PWM:DUTY 1e+", -120), fails(b"SOUR:PWM:DUTY 0x1", -120),
     fails(b"SOUR:PWM:FREQ 100kHz", -138), fails(b"PROT:OVP:LEV 12 V", -138),
     fails(b"SOUR:PWM:DUTY 0.5e-1V", -138),
     ok(b"INIT"), fails(b"INIT", -213), ok(b"ABOR"), ok(b"ABOR"),
     fails(b"SOUR:PWM:DUTY 0.9", -222), fails(b"OUTP MAYBE", -224), fails(b"OUTP 2", -224),
     fails(b"CONT:MODE CLOSED", -224),
     fails(b"MEAS:CURR?", -241,
           b'-241,"Hardware missing;current sense not wired (IIN_ADC_PIN)"'),
     fails(b"SOUR:PWM:DUTY 0.8", -222,
           b'-222,"Data out of range;duty 0.8 above limit 0.75"'),
     fails(b"SOUR:PWM:DUTY nan", -222, b'-222,"Data out of range;duty must be finite"'),
     fails(b"FOO", -113, b'-113,"Undefined header;FOO"'))

case("duty_rejection",
     state(), ok(b"SOUR:PWM:DUTY 0.5"), ok(b"OUTP ON"), state("on"),
     [(("pwm",), (True, 100000.0, 0.5))],
     fails(b"SOUR:PWM:DUTY 0.76", -222), fails(b"SOUR:PWM:DUTY -0.1", -222),
     fails(b"SOUR:PWM:DUTY -1e-9", -222), fails(b"SOUR:PWM:DUTY nan", -222),
     fails(b"SOUR:PWM:DUTY NAN", -222), fails(b"SOUR:PWM:DUTY inf", -222),
     fails(b"SOUR:PWM:DUTY -INF", -222), fails(b"SOUR:PWM:DUTY NINF", -222),
     fails(b"SOUR:PWM:DUTY 1e999", -222), fails(b"SOUR:PWM:DUTY 0.86", -222),
     fails(b"SOUR:PWM:DUTY 2", -222), fails(b"SOUR:PWM:DUTY 0.5x", -138),
     fails(b"SOUR:PWM:DUTY abc", -104), fails(b"SOUR:PWM:DUTY 0..5", -120),
     fails(b"SOUR:PWM:DUTY", -109), fails(b"SOUR:PWM:DUTY 0.1,0.1", -108),
     fails(b"SOUR:PWM:DUTY '0.1'", -104), fails(b"SOUR:PWM:DUTY:LIM 0.4", -221),
     fails(b"SOUR:PWM:DUTY:LIM 0.9", -222),
     same_state("on"), [(("pwm",), (True, 100000.0, 0.5))],
     ask(b"SOUR:PWM:DUTY?", b"0.5"), ask(b"SOUR:PWM:DUTY:LIM?", b"0.75"),
     # The limit itself is allowed; raising the limit up to the hard maximum too.
     ok(b"SOUR:PWM:DUTY 0.75"), ok(b"SOUR:PWM:DUTY:LIM 0.85"), ok(b"SOUR:PWM:DUTY 0.85"),
     fails(b"SOUR:PWM:DUTY 0.851", -222), ask(b"SOUR:PWM:DUTY?", b"0.85"),
     ok(b"SOUR:PWM:DUTY 0"), ok(b"SOUR:PWM:DUTY:LIM 0"), fails(b"SOUR:PWM:DUTY 0.01", -222),
     [(("pwm",), (True, 100000.0, 0.0))])

case("limits",
     ok(b"SOUR:PWM:FREQ 1000"), ok(b"SOUR:PWM:FREQ 500000"),
     fails(b"SOUR:PWM:FREQ 999.9", -222), fails(b"SOUR:PWM:FREQ 500001", -222),
     fails(b"SOUR:PWM:FREQ 0", -222), ask(b"SOUR:PWM:FREQ?", b"500000"),
     ok(b"PROT:OVP:LEV 24"), fails(b"PROT:OVP:LEV 24.01", -222),
     fails(b"PROT:OVP:LEV -1", -222), ask(b"PROT:OVP:LEV?", b"24"),
     ok(b"SYST:WDOG:TIM 0"), ok(b"SYST:WDOG:TIM 3600"), fails(b"SYST:WDOG:TIM -0.1", -222),
     fails(b"SYST:WDOG:TIM 3601", -222), ask(b"SYST:WDOG:TIM?", b"3600"),
     # With the level at 24 V: a reading that saturates at 19.2 V would hide the level, and
     # a calibration by which the trip point reads 31 V is not plausible.
     fails(b"CAL:VOUT 0.8,-1", -222,
           b'-222,"Data out of range;CAL:VOUT 0.8,-1 reads at most 19.2351 V (ADC full '
           b'scale): the OVP level 24 V would be unreadable"'),
     fails(b"CAL:VOUT 1.25,1", -222,
           b'-222,"Data out of range;with CAL:VOUT 1.25,1 the OVP trip at 24 V (uncalibrated '
           b'divider) reads 31 V, above OVP_MAX 24 V"'),
     ok(b"PROT:OVP:LEV 10"), ok(b"CAL:VOUT 0.8,-1"), ok(b"CAL:VOUT 1.25,1"),
     fails(b"CAL:VOUT 0.79,0", -222), fails(b"CAL:VOUT 1,1.01", -222),
     fails(b"CAL:VOUT inf,0", -222), ask(b"CAL:VOUT?", b"1.25,1"),
     # ... and the same pair is refused from the other side: a level whose trip reads 26 V.
     fails(b"PROT:OVP:LEV 20", -222), ask(b"PROT:OVP:LEV?", b"10"),
     ok(b"SENS:ADC:RATE 1"), ok(b"SENS:ADC:RATE 20000"), fails(b"SENS:ADC:RATE 0.5", -222),
     fails(b"SENS:ADC:RATE 20001", -222), ask(b"SENS:ADC:RATE?", b"20000"),
     ok(b"SENS:ADC:RATE 3000"), ask(b"SENS:ADC:RATE?", b"3003"),  # period 333 us
     ok(b"CONT:RATE 2000"), fails(b"CONT:RATE 2001", -222), fails(b"CONT:RATE 0", -222),
     ok(b"CONT:VREF 0"), ok(b"CONT:VREF 24"), fails(b"CONT:VREF 24.5", -222),
     ok(b"CONT:PID 0,0,0"), ok(b"CONT:PID 1000,1000,1000"), fails(b"CONT:PID -1,0,0", -222),
     fails(b"CONT:PID 0,0", -109), fails(b"CONT:PID 0,0,0,0", -108),
     ask(b"CONT:PID?", b"1000,1000,1000"), ok(b"CONT:SLEW 0"), ok(b"CONT:SLEW 1e6"),
     fails(b"CONT:SLEW -1", -222), ask(b"CONT:SLEW?", b"1e+06"),
     fails(b"FETC:ADC? 0", -222), fails(b"FETC:ADC? 4097", -222),
     [(b"FETC:ADC? 4096", ANY)], ok(b"SOUR:PWM:DUTY:LIM 0.85"),
     fails(b"SOUR:PWM:DUTY:LIM 0.8501", -222), ask(b"SOUR:PWM:DUTY:LIM?", b"0.85"))

case("rst",
     ok(b"SOUR:PWM:DUTY:LIM 0.8"), ok(b"SOUR:PWM:DUTY 0.4"), ok(b"SOUR:PWM:FREQ 50000"),
     ok(b"OUTP ON"), ok(b"PROT:OVP:LEV 20"), ok(b"SYST:WDOG:TIM 5"), ok(b"CAL:VOUT 1.1,0.1"),
     ok(b"SENS:ADC:RATE 500"), ok(b"INIT"), ok(b"CONT:VREF 10"), ok(b"CONT:PID 0.01,1,0"),
     ok(b"CONT:RATE 100"), ok(b"CONT:SLEW 50"), advance(5000),
     [(b"FOO", b""),  # an error queued before *RST stays queued
      (b"*rst", b"")],
     ask(b"OUTP?", b"0"), ask(b"SOUR:PWM:DUTY?", b"0"), ask(b"SOUR:PWM:FREQ?", b"100000"),
     ask(b"SENS:ADC:RATE?", b"1000"), ask(b"CONT:MODE?", b"OPEN"), ask(b"CONT:VREF?", b"12"),
     ask(b"CONT:PID?", b"0.005,2,0"), ask(b"CONT:RATE?", b"500"), ask(b"CONT:SLEW?", b"0"),
     # Kept: protections, calibration, the error queue.
     ask(b"SOUR:PWM:DUTY:LIM?", b"0.8"), ask(b"PROT:OVP:LEV?", b"20"),
     ask(b"SYST:WDOG:TIM?", b"5"), ask(b"CAL:VOUT?", b"1.1,0.1"), ask(b"PROT:TRIP?", b"NONE"),
     [(("pwm",), (False, 100000.0, 0.0)), (("errors",), [-113])],
     block(b"FETC:ADC?", lambda b: (b.count == 0 and not b.running and b.first_index == 0)
           or pytest.fail(str(b))))

case("watchdog",
     ok(b"SYST:WDOG:TIM 0.5"), ok(b"SOUR:PWM:DUTY 0.3"), ok(b"OUTP ON"),
     advance(400_000), ask(b"OUTP?", b"1"), advance(400_000), ask(b"OUTP?", b"1"),
     # Invalid commands do not feed it.
     [(b"FOO", b"")], advance(200_000), [(b"BAR?", b"\n")], advance(200_000),
     ask(b"OUTP?", b"1"), advance(499_000), ask(b"PROT:TRIP?", b"NONE"), advance(501_000),
     ask(b"OUTP?", b"0"), ask(b"PROT:TRIP?", b"WDOG"), ask(b"SOUR:PWM:DUTY?", b"0"),
     [(("pwm",), (False, 100000.0, 0.0))],
     # The trip is in the error queue, after the errors that came before it.
     ask(b"SYST:ERR?", b'-113,"Undefined header;FOO"'),
     ask(b"SYST:ERR?", b'-113,"Undefined header;BAR?"'),
     ask(b"SYST:ERR?", b'102,"Host watchdog tripped;no valid command for 0.5 s while the '
                       b'output was on; output off, PROT:CLE to re-arm"'),
     fails(b"OUTP ON", -221, b'-221,"Settings conflict;tripped: WDOG"'),
     ask(b"OUTP?", b"0"), advance(2_000_000), ask(b"PROT:TRIP?", b"WDOG"),
     block(b"FETC:ADC?", lambda b: (b.wdog_tripped and not b.ovp_tripped) or pytest.fail()),
     ok(b"PROT:CLE"), ask(b"PROT:TRIP?", b"NONE"), ok(b"OUTP ON"), ask(b"OUTP?", b"1"),
     # Output off: the watchdog does not run.
     ok(b"OUTP OFF"), advance(5_000_000), ask(b"PROT:TRIP?", b"NONE"),
     # 0 disables it.
     ok(b"SYST:WDOG:TIM 0"), ok(b"OUTP ON"), advance(10_000_000), ask(b"OUTP?", b"1"),
     ask(b"PROT:TRIP?", b"NONE"),
     # A coarse protection tick (the trip comes within one period of the timeout) keeps the
     # ~19 s of simulated time within the MicroPython VM's heap.
     overrides={"PROTECT_PERIOD_US": 100_000})

case("ovp",
     ok(b"PROT:OVP:LEV 10"), ok(b"SOUR:PWM:DUTY 0.6"), ok(b"OUTP ON"), advance(1000),
     ask(b"OUTP?", b"1"), advance(1000), advance(1000), advance(1000), advance(1000),
     advance(1000), advance(1000), advance(1000), advance(1000), advance(1000),
     ask(b"OUTP?", b"0"), ask(b"PROT:TRIP?", b"OVP"), ask(b"SOUR:PWM:DUTY?", b"0"),
     [(("pwm",), (False, 100000.0, 0.0))],
     [(b"SYST:ERR?", lambda r: (r.startswith(
         b'101,"Over-voltage protection tripped;V_out 10.') and r.endswith(
         b' V (uncalibrated divider) above the level 10 V; output off, PROT:CLE to '
         b're-arm"\n')) or pytest.fail(r))],
     fails(b"OUTP ON", -221, b'-221,"Settings conflict;tripped: OVP"'),
     # Still latched once the voltage has gone back down.
     advance(100_000), ask(b"PROT:TRIP?", b"OVP"),
     num(b"MEAS:VOLT?", 4.65, 0.02),
     block(b"FETC:ADC?", lambda b: (b.ovp_tripped and not b.wdog_tripped) or pytest.fail()),
     ok(b"PROT:CLE"), ask(b"PROT:TRIP?", b"NONE"), ok(b"OUTP ON"), ask(b"OUTP?", b"1"),
     ok(b"OUTP OFF"),
     # Clearing while the over-voltage persists is refused; the trip also latches with the
     # output off (e.g. a too-high input voltage).
     [(("set", "vout", 20.0), ANY), (("set", "vin", 15.0), ANY)], advance(1000),
     advance(1000), ask(b"PROT:TRIP?", b"OVP"),
     [(b"PROT:CLE", b""), (("errors",), [101, -221])], ask(b"PROT:TRIP?", b"OVP"),
     [(("set", "vin", 5.0), ANY)], advance(100_000), ok(b"PROT:CLE"),
     ask(b"PROT:TRIP?", b"NONE"),
     # One sample above the level is not enough (OVP_CONSECUTIVE = 2).
     [(("set", "vout", 11.0), ANY), (("protect",), ANY), (("set", "vout", 9.0), ANY),
      (("protect",), ANY)], ask(b"PROT:TRIP?", b"NONE"),
     # The trip compares raw codes (uncalibrated divider): a calibration that reads 12.9 V
     # at 9.5 V does not trip it, one that reads 7.6 V at 10.1 V does not blind it.
     ok(b"CAL:VOUT 1.25,1"), [(("set", "vout", 9.5), ANY), (("protect",), ANY),
                              (("protect",), ANY)], ask(b"PROT:TRIP?", b"NONE"),
     ok(b"CAL:VOUT 0.8,-0.5"), [(("set", "vout", 10.1), ANY), (("protect",), ANY),
                                (("protect",), ANY)], ask(b"PROT:TRIP?", b"OVP"),
     # A reading at the ADC's full scale is an over-voltage whatever the level.
     [(("set", "vout", 40.0), ANY), (("protect",), ANY), (("protect",), ANY)],
     ask(b"PROT:TRIP?", b"OVP"))

case("measure",
     num(b"MEAS:VOLT?", 4.65, 0.01), ask(b"MEAS:VOLT:RAW?", b"753"),
     num(b"MEAS:VOLT:IN?", 5.0, 0.01), num(b"MEAS:VOLT:INPUT?", 5.0, 0.01),
     ok(b"CAL:VOUT 1.2,0.5"), num(b"MEAS:VOLT?", 1.2 * 4.65 + 0.5, 0.02),
     ask(b"MEAS:VOLT:RAW?", b"753"), ok(b"CAL:VOUT 1,0"),
     ok(b"SOUR:PWM:DUTY 0.5"), ok(b"OUTP ON"), advance(50_000),
     num(b"MEAS:VOLT?", 9.65, 0.02), num(b"MEASURE:VOLTAGE:DC?", 9.65, 0.02),
     fails(b"MEAS:CURR?", -241))

case("measure_wired", num(b"MEAS:CURR?", 4.65 / 48, 0.002), ok(b"SOUR:PWM:DUTY 0.5"),
     ok(b"OUTP ON"), advance(50_000), num(b"MEAS:CURRENT:DC?", 9.65 / 48 / 0.5, 0.002),
     overrides={"IIN_ADC_PIN": 28})

case("measure_unwired", fails(b"MEAS:VOLT:IN?", -241,
                              b'-241,"Hardware missing;input voltage not wired (VIN_ADC_PIN)"'),
     fails(b"MEAS:CURR?", -241), num(b"MEAS:VOLT?", 4.65, 0.01),
     overrides={"VIN_ADC_PIN": None})


def _check_first_block(b):
    assert b.count == 10 and b.first_index == 0 and b.period_us == 1000
    assert b.running and not b.overflow and b.flags == acq.FLAG_RUNNING
    assert b.seq == 1  # the FETC:ADC? before INIT was block 0
    assert np_all(b.codes == 753)


def np_all(x):
    return bool(x.all())


case("acquisition",
     block(b"FETC:ADC?", lambda b: (b.count == 0 and b.flags == 0 and b.t_first_us == 0
                                    and b.seq == 0) or pytest.fail(str(b))),
     ok(b"SENS:ADC:RATE 1000"), ok(b"INIT"), advance(10_000),
     block(b"FETC:ADC?", _check_first_block),
     fails(b"SENS:ADC:RATE 500", -221), ok(b"SOUR:PWM:DUTY 0.5"), ok(b"OUTP ON"),
     advance(20_000), block(b"FETC:ADC? 5", lambda b: (b.first_index == 10 and b.count == 5
                                                       and b.seq == 2) or pytest.fail()),
     block(b"FETCH:ADC?", lambda b: (b.first_index == 15 and b.count == 15
                                     and b.codes[-1] > b.codes[0]) or pytest.fail()),
     ok(b"ABOR"), advance(10_000), block(b"FETC:ADC?", lambda b: (b.count == 0 and not b.running
                                                                  and b.first_index == 30)
                                         or pytest.fail()),
     ok(b"SENS:ADC:RATE 20000"), ok(b"INIT"), advance(1000),
     block(b"FETC:ADC?", lambda b: (b.count == 20 and b.first_index == 0 and b.period_us == 50)
           or pytest.fail()),
     [(("state",), ANY)])

case("overflow",
     ok(b"INIT"), advance(20_000),
     block(b"FETC:ADC?", lambda b: (b.first_index == 0 and b.count == 20 and not b.overflow)
           or pytest.fail()),
     advance(100_000),  # 100 new samples, ring holds 64: 36 lost
     block(b"FETC:ADC?", lambda b: (b.first_index == 56 and b.count == 64 and b.overflow)
           or pytest.fail(str(b))),
     advance(10_000),
     block(b"FETC:ADC?", lambda b: (b.first_index == 120 and b.count == 10 and not b.overflow)
           or pytest.fail(str(b))),
     advance(64_000),
     block(b"FETC:ADC?", lambda b: (b.first_index == 130 and b.count == 64 and not b.overflow)
           or pytest.fail(str(b))),
     overrides={"RING_SIZE": 64})

case("error_queue",
     [(b"FOO", b"")] * 20, ask(b"SYST:ERR:COUN?", b"16"),
     [(("errors",), [-113] * 15 + [-350])], ask(b"SYST:ERR:COUN?", b"0"),
     [(b"FOO", b""), (b"BAR", b"")], ask(b"SYST:ERR:COUN?", b"2"), ok(b"*CLS"),
     ask(b"SYST:ERR:COUN?", b"0"), ask(b"SYST:ERR?", b'0,"No error"'),
     [(b"FOO", b"")] * 5, ask(b"SYST:ERR?", b'-113,"Undefined header;FOO"'),
     ask(b"SYST:ERR:COUN?", b"4"))

case("error_queue_trips",
     # A host that reads no errors fills the queue; a trip still gets in (the oldest
     # ordinary error makes room), and later errors cannot push it out.
     ok(b"SYST:WDOG:TIM 0.5"), ok(b"SOUR:PWM:DUTY 0.3"), ok(b"OUTP ON"),
     [(b"FOO", b"")] * 20, ask(b"SYST:ERR:COUN?", b"16"), advance(600_000),
     ask(b"PROT:TRIP?", b"WDOG"), [(b"BAR", b"")] * 3, ask(b"SYST:ERR:COUN?", b"16"),
     ask(b"SYST:ERR?", b'-113,"Undefined header;FOO"'),
     [(("errors",), [-113] * 13 + [-350, 102])],
     # Full without a loss yet (16 errors): the trip takes the oldest's place, and the
     # newest ordinary error becomes the -350 that says errors were lost.
     ok(b"PROT:CLE"), [(b"FOO", b"")] * 16,
     [(("set", "vout", 30.0), ANY), (("protect",), ANY), (("protect",), ANY), (("poll",), ANY)],
     ask(b"PROT:TRIP?", b"OVP"), [(("errors",), [-113] * 14 + [-350, 101])],
     overrides={"PROTECT_PERIOD_US": 100_000})

case("pid",
     ask(b"CONT:PID?", b"0.005,2,0"), ask(b"CONT:VREF?", b"12"), ok(b"CONT:MODE PID"),
     ok(b"OUTP ON"), [(("advance", 1000), ANY)] * 300, num(b"MEAS:VOLT?", 12.0, 0.1),
     fails(b"SOUR:PWM:DUTY 0.3", -221,
           b'-221,"Settings conflict;CONT:MODE PID sets the duty"'),
     num(b"SOUR:PWM:DUTY?", 1 - 5 / 12.35, 0.01), ask(b"CONT:MODE?", b"PID"),
     # With the loop running a zero duty limit is a conflict; OUTP ON needs a limit > 0.
     fails(b"SOUR:PWM:DUTY:LIM 0", -221), ok(b"OUTP OFF"), ok(b"SOUR:PWM:DUTY:LIM 0"),
     fails(b"OUTP ON", -221), ask(b"OUTP?", b"0"))

case("pid_retune",
     ok(b"CONT:MODE PID"), ok(b"OUTP ON"), [(("advance", 2000), ANY)] * 150,
     # Setpoint change, then retuning on the fly (bumpless).
     ok(b"CONT:VREF 9"), ok(b"CONT:PID 0.01,3,0"), ok(b"CONT:RATE 1000"),
     [(("advance", 2000), ANY)] * 150, num(b"MEAS:VOLT?", 9.0, 0.1),
     # A lower duty limit also bounds the loop (allowed in PID mode).
     ok(b"CONT:VREF 14"), ok(b"SOUR:PWM:DUTY:LIM 0.5"), [(("advance", 2000), ANY)] * 100,
     num(b"MEAS:VOLT?", 9.65, 0.05), ask(b"SOUR:PWM:DUTY?", b"0.5"),
     # Back to open loop: the duty stays where the loop left it.
     ok(b"CONT:MODE OPEN"), ask(b"SOUR:PWM:DUTY?", b"0.5"), ok(b"SOUR:PWM:DUTY 0.2"),
     ask(b"SOUR:PWM:DUTY?", b"0.2"))

case("pid_soft_start",
     # Setpoint slew limit: the loop ramps V_out up instead of stepping it.
     ok(b"CONT:SLEW 100"), ok(b"CONT:RATE 1000"), ok(b"CONT:MODE PID"), ok(b"OUTP ON"),
     [(("advance", 1000), ANY)] * 20, num(b"MEAS:VOLT?", 5.5, 1.0),
     [(("advance", 2000), ANY)] * 150, num(b"MEAS:VOLT?", 12.0, 0.1))


# ----------------------------------------------------------------------------- the checker


def check_records(case: Case, records: list) -> None:
    assert len(records) == len(case.items)
    labels = {}
    for i, ((step, expect), record) in enumerate(zip(case.items, records, strict=True)):
        where = f"{case.name} step {i} {step!r}"[:200]
        if expect is ANY:
            continue
        if isinstance(expect, Label):
            labels[expect.name] = record
        elif isinstance(expect, SameAs):
            assert record == labels[expect.name], where
        elif callable(expect):
            try:
                expect(record)
            except AssertionError as exc:
                raise AssertionError(f"{where}: {exc}") from exc
        else:
            assert record == expect, f"{where}: got {record!r}, expected {expect!r}"


@pytest.fixture(scope="module")
def cpython_records():
    return dict(fake_hal.run_scripts([(c.name, c.steps, c.overrides) for c in CASES]))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conformance(case, cpython_records):
    check_records(case, cpython_records[case.name])


def test_every_error_code_is_exercised():
    seen = set()
    for c in CASES:
        for step, expect in c.items:
            if step == ("errors",) and isinstance(expect, list):
                seen.update(expect)
            if isinstance(expect, bytes) and expect[:1] == b"-":
                seen.add(int(expect.split(b",")[0]))
    wanted = {-100, -101, -102, -104, -108, -109, -113, -120, -138, -213, -221, -222, -224,
              -241, -350, -363}
    assert wanted <= seen, wanted - seen


def test_every_command_is_exercised():
    sent = []
    for c in CASES:
        for step, _ in c.items:
            if isinstance(step, bytes):
                sent.append(step)
    for cmd in protocol.COMMANDS:
        used = False
        for line in sent:
            header = line.split()[0].decode("ascii", "replace") if line.split() else ""
            try:
                found, _ = protocol.lookup(header)
            except protocol.ScpiError:
                continue
            used = used or found is cmd
        assert used, cmd.pattern
