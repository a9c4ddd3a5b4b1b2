"""Property-based fuzzing of the firmware's parser and state machine (hypothesis).

Properties, for random bytes, near-valid commands built from the command table, and overlong
lines: no exception escapes, no internal (-300) error, a rejected line changes no setting,
the error queue stays bounded, a line gets a response exactly when the shared query rule says
so, and the result does not depend on how the bytes are chunked.
"""

from __future__ import annotations

import fake_hal
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge import protocol
from firmware_bridge.firmware import config, scpi

pytestmark = pytest.mark.slow  # property-based fuzzing (hypothesis), not the numerical core

SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TOKENS = ["0", "1", "0.5", "0.75", "0.85", "-0.1", "1e3", "1E-3", "1e999", "-1e999", "nan",
          "INF", "NINF", "ON", "OFF", "on", "PID", "OPEN", "open", "abc", "0x1", "1.2.3", "5V",
          "12 V", "#", '"q"', "'q'", "MAX", "DEF", "100000", "12", "24", "4096", "1000", "2",
          "-0", ".5", "5.", "+", "-", "e", "1e", "\t0.2", " ", ""]
JUNK = [":", "?", ";", ",", "*", " ", "\t", "\r", "\x00", "\x7f", "\xff", "#", "[", "]", "A"]


class Recorder:
    """Counts the errors a device queues (the queue itself saturates at -350)."""

    def __init__(self, dev):
        self.codes: list[int] = []
        push = dev.errors.push

        def counting_push(code, detail=""):
            self.codes.append(code)
            push(code, detail)

        dev.errors.push = counting_push


def check_line(dev, rec: Recorder, line: bytes) -> bytes:
    """Feed one line (no LF inside) and check the per-line properties; return the response."""
    assert b"\n" not in line
    before = dev.snapshot()
    n_errors = len(rec.codes)
    out = dev.feed(line + b"\n")
    new_errors = rec.codes[n_errors:]
    assert scpi.DEVICE_SPECIFIC_ERROR not in new_errors, (line, new_errors)
    assert len(dev.errors) <= config.ERR_QUEUE_LEN
    if new_errors:
        assert dev.snapshot() == before, line
    stripped = line.rstrip(b"\r")
    if len(stripped) > config.LINE_MAX:
        assert new_errors == [scpi.INPUT_BUFFER_OVERRUN]
    elif protocol.is_query(line):
        assert out.endswith(b"\n")
        if out.startswith(b"#"):
            _payload, used = scpi.decode_block(out)
            assert used == len(out)
        else:
            assert out.count(b"\n") == 1
        if out == b"\n" and stripped.strip():
            assert new_errors, line  # an empty response always comes with a queued error
    else:
        assert out == b"", line
    return out


def _value_tokens(spec) -> list[str]:
    """Tokens around a parameter spec's limits (valid and just invalid)."""
    if isinstance(spec, scpi.Choice):
        return [*spec.options, *(f[0] for f in spec.forms), "OPENX", "1"]
    if isinstance(spec, scpi.Bool):
        return ["ON", "OFF", "1", "0", "on", "2", "YES"]
    lo = -1.0 if spec.lo is None else spec.lo
    hi = 1e3 if spec.hi is None else spec.hi
    values = [lo, hi, (lo + hi) / 2, lo - 1e-3, hi * 1.001 + 1e-3, hi / 3]
    return [repr(float(v)) if spec.kind == "real" else str(round(v)) for v in values]


@st.composite
def near_valid_line(draw) -> bytes:
    """A command from the table: mostly well-formed, sometimes slightly broken."""
    cmd = draw(st.sampled_from(protocol.COMMANDS))
    words = []
    for short, long, optional in cmd.nodes:
        if optional and draw(st.booleans()):
            continue
        kind = draw(st.integers(0, 19))
        word = short if kind < 9 else long if kind < 18 else long[: len(short) + 1]
        words.append("".join(c.lower() if draw(st.booleans()) else c for c in word))
    header = (":" if draw(st.booleans()) and not words[0].startswith("*") else "")
    header += ":".join(words)
    forms = [q for q, h in ((False, cmd.setter), (True, cmd.query)) if h is not None]
    query = draw(st.sampled_from(forms)) if draw(st.integers(0, 9)) else draw(st.booleans())
    if query:
        header += "?"
    specs = cmd.qargs if query else cmd.args
    if not draw(st.integers(0, 3)):
        args = draw(st.lists(st.sampled_from(TOKENS), max_size=4))
    elif specs:
        n = len(specs) if not specs[-1].optional else draw(st.integers(0, len(specs)))
        args = [draw(st.sampled_from(_value_tokens(spec))) for spec in specs[:n]]
    else:
        args = []
    sep = draw(st.sampled_from([" ", "\t", "  "]))
    line = header + (sep + ",".join(args) if args else "")
    if draw(st.integers(0, 4)) == 0:  # one random edit
        pos = draw(st.integers(0, len(line)))
        if draw(st.booleans()):
            line = line[:pos] + draw(st.sampled_from(JUNK)) + line[pos:]
        else:
            line = line[:pos] + line[pos + 1:]
    if draw(st.booleans()):
        line += "\r"
    return line.encode("latin-1")


random_line = st.binary(max_size=80).map(lambda b: b.replace(b"\n", b""))
overlong_line = st.binary(min_size=config.LINE_MAX + 2, max_size=700).map(
    lambda b: b.replace(b"\n", b"x").replace(b"\r", b"x"))
any_line = st.one_of(near_valid_line(), near_valid_line(), random_line, overlong_line)


@SETTINGS
@given(st.lists(st.tuples(any_line, st.integers(0, 300_000)), min_size=1, max_size=25))
def test_line_sequences(items):
    dev, hal = fake_hal.make_device()
    rec = Recorder(dev)
    for line, dt in items:
        check_line(dev, rec, line)
        hal.advance_us(dt)
        dev.poll()
        assert scpi.DEVICE_SPECIFIC_ERROR not in rec.codes


SETUPS = [b"OUTP ON", b"SOUR:PWM:DUTY 0.6", b"SOUR:PWM:DUTY 0.3", b"CONT:MODE PID",
          b"INIT", b"SYST:WDOG:TIM 0.2", b"PROT:OVP:LEV 8", b"SOUR:PWM:DUTY:LIM 0.5",
          b"CONT:PID 0.02,5,0.0001", b"FETC:ADC? 3", b"ABOR", b"CAL:VOUT 1.1,0.2"]


@pytest.mark.parametrize("cmd", protocol.COMMANDS, ids=lambda c: c.pattern)
@settings(max_examples=40, deadline=None, database=None)
@given(data=st.data())
def test_each_command_rejects_without_side_effects(cmd, data):
    """Every handler, in random device states, with values around its parameters' limits."""
    dev, hal = fake_hal.make_device()
    for line in data.draw(st.lists(st.sampled_from(SETUPS), max_size=6), label="setup"):
        dev.feed(line + b"\n")
        hal.advance_us(data.draw(st.integers(0, 50_000), label="dt"))
        dev.poll()
    rec = Recorder(dev)
    for query in (False, True):
        if (cmd.query if query else cmd.setter) is None:
            continue
        specs = cmd.qargs if query else cmd.args
        pools = [_value_tokens(spec) + TOKENS[:12] for spec in specs]
        n = data.draw(st.integers(max(0, len(specs) - 1), len(specs) + 1), label="n")
        args = [data.draw(st.sampled_from(pools[min(i, len(pools) - 1)]))
                for i in range(n)] if pools else ["1"] * (n - len(specs))
        header = cmd.short_header() + ("?" if query else "")
        check_line(dev, rec, (header + (" " + ",".join(args) if args else "")).encode())


@SETTINGS
@given(st.binary(max_size=2000))
def test_random_bytes(data):
    dev, _ = fake_hal.make_device()
    rec = Recorder(dev)
    *lines, tail = data.split(b"\n")
    for line in lines:
        check_line(dev, rec, line)
    assert dev.feed(tail) == b""
    assert len(dev.errors) <= config.ERR_QUEUE_LEN


@SETTINGS
@given(overlong_line, st.sampled_from([b"", b"?", b" ?", b"? 1"]))
def test_overlong_lines(body, suffix):
    dev, _ = fake_hal.make_device()
    rec = Recorder(dev)
    check_line(dev, rec, body + suffix)
    assert rec.codes == [scpi.INPUT_BUFFER_OVERRUN]
    assert dev.feed(b"OUTP?\n") == b"0\n"  # framing recovered


@SETTINGS
@given(st.lists(near_valid_line(), max_size=15), st.data())
def test_chunking_does_not_matter(lines, data):
    stream = b"".join(line + b"\n" for line in lines)
    whole, _ = fake_hal.make_device()
    expected = whole.feed(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunked, _ = fake_hal.make_device()
    out = bytearray()
    start = 0
    for cut in [*cuts, len(stream)]:
        out += chunked.feed(stream[start:cut])
        start = cut
    assert bytes(out) == expected
    assert chunked.snapshot() == whole.snapshot()
    assert chunked.errors.items == whole.errors.items


@SETTINGS
@given(st.lists(st.sampled_from([b"FOO", b"SOUR:PWM:DUTY 2", b"OUTP?", b"*CLS", b"SYST:ERR?",
                                 b"X" * 300]), max_size=60))
def test_error_queue_bounded(lines):
    dev, _ = fake_hal.make_device()
    for line in lines:
        dev.feed(line + b"\n")
        items = dev.errors.items
        assert len(items) <= config.ERR_QUEUE_LEN
        assert scpi.QUEUE_OVERFLOW not in [c for c, _ in items[:-1]]
