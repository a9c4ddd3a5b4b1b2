"""Host-side helpers (firmware_bridge.protocol) against the firmware logic on simulated hardware."""

from __future__ import annotations

import io
import re
from pathlib import Path

import fake_hal
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import protocol
from firmware_bridge.firmware import acq, commands, config, device, scpi

ROOT = Path(__file__).resolve().parents[1]


class Loopback:
    """A host-side 'serial port' wired to a Device: write() feeds it, read() returns output."""

    def __init__(self, overrides=None):
        self.dev, self.hal = fake_hal.make_device(overrides)
        self.buf = io.BytesIO()
        self.pending = b""

    def write(self, data: bytes) -> None:
        self.pending += self.dev.feed(data)

    def read(self, n: int) -> bytes:
        out, self.pending = self.pending[:n], self.pending[n:]
        return out  # b"" when nothing is left: a timeout for the reader

    def query(self, header: str, *args):
        self.write(protocol.command(header, *args))
        kind, data = protocol.read_response(self.read)
        assert self.pending == b""
        if kind == "block":
            return protocol.decode_adc_block(data)
        return protocol.parse_response(header, data)

    def send(self, header: str, *args) -> None:
        self.write(protocol.command(header, *args))
        assert self.pending == b""


# ------------------------------------------------------------------------------ command()


def test_command_formats_lines_the_board_accepts():
    assert protocol.command("SOUR:PWM:DUTY", 0.25) == b"SOUR:PWM:DUTY 0.25\n"
    assert protocol.command("outp", True) == b"outp ON\n"
    assert protocol.command("OUTP", "off") == b"OUTP OFF\n"
    assert protocol.command("CAL:VOUT", 1.01, -0.02) == b"CAL:VOUT 1.01,-0.02\n"
    assert protocol.command("CONT:MODE", "pid") == b"CONT:MODE PID\n"
    assert protocol.command("FETC:ADC?", 100) == b"FETC:ADC? 100\n"
    assert protocol.command("FETC:ADC?") == b"FETC:ADC?\n"
    assert protocol.command("*IDN?") == b"*IDN?\n"
    assert protocol.command("SOUR:PWM:FREQ", 1e5) == b"SOUR:PWM:FREQ 100000.0\n"
    assert protocol.command("SYST:WDOG:TIM", 1e-5) == b"SYST:WDOG:TIM 1e-05\n"


@pytest.mark.parametrize(("header", "args", "code"), [
    ("SOUR:PWM:DUTY", (0.9,), -222), ("SOUR:PWM:DUTY", (float("nan"),), -222),
    ("SOUR:PWM:DUTY", (-0.1,), -222), ("SOUR:PWM:DUTY", (), -109),
    ("SOUR:PWM:DUTY", (0.1, 0.2), -108), ("FOO", (), -113), ("SOUR::PWM", (), -102),
    ("OUTP", ("maybe",), -224), ("CONT:MODE", ("closed",), -224), ("FETC:ADC?", (1.5,), -104),
    ("FETC:ADC?", (0,), -222), ("*IDN?", (1,), -108), ("INIT?", (), -113),
])
def test_command_refuses_like_the_board(header, args, code):
    with pytest.raises(protocol.ScpiError) as info:
        protocol.command(header, *args)
    assert info.value.code == code


def test_command_strips_and_bounds_lines():
    assert protocol.command("  SOUR:PWM:DUTY:LEV" + " " * 300, 0.1) == b"SOUR:PWM:DUTY:LEV 0.1\n"
    long_table = (scpi.Cmd("VERYlongnodename:" * 14 + "X", setter="s_x",
                           args=(scpi.Real("v"),)),)
    header = "VERYLONGNODENAME:" * 14 + "X"
    assert protocol.command(header, 1.0, table=long_table).endswith(b" 1.0\n")
    with pytest.raises(protocol.ScpiError) as info:
        protocol.command(header, 1.0 / 3.0, table=long_table)
    assert info.value.code == -363


def test_lookup_and_is_query():
    cmd, query = protocol.lookup("source:pwm:duty:level?")
    assert query and cmd.pattern == "[SOURce]:PWM:DUTY:[LEVel]"
    assert cmd.short_header() == "PWM:DUTY" and cmd.long_header() == "PWM:DUTY"
    assert protocol.lookup("SYST:ERR?")[0].resp == "error"
    assert protocol.is_query("OUTP?") and protocol.is_query(b"  OUTP? 1\r\n")
    assert not protocol.is_query("OUTP ON?") and not protocol.is_query("")
    # The board's rule exactly: only spaces and tabs separate words.
    dev, _ = fake_hal.make_device()
    for line in (b"OUTP\x0c?", b"OUTP\x0c ?", b"\tOUTP?\t1", b"OUTP?\x0c"):
        assert (dev.feed(line + b"\n") == b"\n") == protocol.is_query(line), line


def test_parse_response_and_errors():
    assert protocol.parse_response("SOUR:PWM:DUTY?", b"0.25\n") == 0.25
    assert protocol.parse_response("OUTP?", "1") is True
    assert protocol.parse_response("MEAS:VOLT:RAW?", "753") == 753
    assert protocol.parse_response("CAL:VOUT?", "1.01,-0.02") == (1.01, -0.02)
    assert protocol.parse_response("*IDN?", "a,b,c,d") == "a,b,c,d"
    assert protocol.parse_response("SYST:ERR?", '-222,"Data out of range;x"') == (
        -222, "Data out of range;x")
    assert protocol.parse_error('0,"No error"') == (0, "No error")
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_response("OUTP?", b"\n")
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_error("garbage")
    assert protocol.ERRORS[-350] == "Queue overflow"


# ------------------------------------------------------------------------------ stream reading


def test_read_response_lines_and_blocks_with_lf_inside():
    payload = acq.pack_payload(3, 10, 1234, 50, acq.FLAG_RUNNING,
                               [10, 0x0A0A, 0x0D0A, 4095, 0x230A])
    data = b"12.5\r\n" + scpi.encode_block(payload) + b"\n" + b'0,"No error"\n'
    stream = io.BytesIO(data)
    assert protocol.read_response(stream.read) == ("line", b"12.5")
    kind, got = protocol.read_response(stream.read)
    assert kind == "block" and got == payload
    assert protocol.read_response(stream.read) == ("line", b'0,"No error"')
    block = protocol.decode_adc_block(got)
    assert block.codes.tolist() == [10, 0x0A0A, 0x0D0A, 4095, 0x230A]
    assert block.indices.tolist() == [10, 11, 12, 13, 14]
    assert block.times_us.tolist() == [1234, 1284, 1334, 1384, 1434]
    assert block.running and not block.overflow and block.seq == 3


@pytest.mark.parametrize("data", [b"", b"12", b"#", b"#3", b"#210abc", b"#x12", b"#0\n",
                                  b"#15abcde", b"#15abcdeX"])
def test_read_response_truncated_or_malformed(data):
    with pytest.raises(protocol.ProtocolError):
        protocol.read_response(io.BytesIO(data).read)


def test_decode_block_framing():
    block = scpi.encode_block(b"hello\nworld")
    assert block == b"#211hello\nworld"
    assert scpi.decode_block(block + b"\nrest") == (b"hello\nworld", len(block) + 1)
    assert scpi.decode_block(scpi.encode_block(b"")) == (b"", 3)
    for bad in (b"", b"#", b"#0", b"#a1", b"#25abc", b"x11a"):
        with pytest.raises(ValueError):
            scpi.decode_block(bad)
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_adc_block(b"#15abcde")
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_adc_block(b"XXXX" + bytes(40))
    good = acq.pack_payload(0, 0, 0, 1, 0, [1, 2])
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_adc_block(good[:-1])  # count does not match the length


@settings(max_examples=100, deadline=None, database=None)
@given(seq=st.integers(0, 2**32 - 1), first=st.integers(0, 2**64 - 1),
       t=st.integers(0, 2**64 - 1), period=st.integers(1, 2**32 - 1), flags=st.integers(0, 15),
       codes=st.lists(st.integers(0, 65535), max_size=300), as_array=st.booleans())
def test_block_round_trip(seq, first, t, period, flags, codes, as_array):
    """Board-side encode (acq.pack_payload + scpi.encode_block), host-side decode."""
    from array import array

    payload = acq.pack_payload(seq, first, t, period, flags,
                               array("H", codes) if as_array else codes)
    assert len(payload) == acq.HEADER_SIZE + 2 * len(codes)
    wire = scpi.encode_block(payload) + b"\n"
    kind, got = protocol.read_response(io.BytesIO(wire).read)
    assert kind == "block"
    b = protocol.decode_adc_block(got)
    assert (b.seq, b.first_index, b.t_first_us, b.period_us, b.flags) == (seq, first, t,
                                                                          period, flags)
    assert b.codes.dtype == np.uint16 and b.codes.tolist() == codes
    whole = protocol.decode_adc_block(wire)  # the whole block (with LF) is accepted too
    assert whole.first_index == first and whole.codes.tolist() == codes
    assert acq.unpack_payload(payload) == ((seq, first, t, period, flags, len(codes)),
                                           tuple(codes))


# ------------------------------------------------------------------------------ end to end


def test_end_to_end_session():
    link = Loopback()
    assert link.query("*IDN?").startswith("boostsim,PicoBoost,")
    link.send("SOUR:PWM:DUTY", 0.5)
    assert link.query("SOUR:PWM:DUTY?") == 0.5
    link.send("OUTP", True)
    link.send("SENS:ADC:RATE", 2000)
    link.send("INIT")
    blocks = []
    for _ in range(6):
        link.hal.advance_us(7_000)
        link.dev.poll()
        blocks.append(link.query("FETC:ADC?"))
    idx = np.concatenate([b.indices for b in blocks])
    times = np.concatenate([b.times_us for b in blocks])
    assert np.array_equal(idx, np.arange(len(idx)))  # contiguous, no gaps
    assert np.all(np.diff(times) == 500)
    assert blocks[0].t_first_us == link.dev.t0_us
    volts = np.concatenate([b.volts() for b in blocks])
    assert volts[0] < 6 and abs(volts[-1] - 9.65) < 0.05
    assert abs(volts[-1] - link.query("MEAS:VOLT?")) < 0.02
    assert [b.seq for b in blocks] == list(range(6))
    # Errors surface through SYST:ERR?.
    link.write(b"SOUR:PWM:DUTY 0.8\n")
    assert link.query("SYST:ERR?") == (-222, "Data out of range;duty 0.8 above limit 0.75")
    link.write(b"MEAS:CURR?\n")
    assert protocol.read_response(link.read) == ("line", b"")
    assert link.query("SYST:ERR?")[0] == -241


def test_end_to_end_overflow_gap():
    link = Loopback({"RING_SIZE": 100})
    link.send("INIT")
    link.hal.advance_us(50_000)
    a = link.query("FETC:ADC?")
    link.hal.advance_us(300_000)
    b = link.query("FETC:ADC?")
    assert not a.overflow and b.overflow
    assert a.first_index == 0 and a.count == 50
    gap = b.first_index - (a.first_index + a.count)
    assert gap == 200 and b.count == 100
    assert b.t_first_us - a.t_first_us == b.first_index * a.period_us


def _stop_after(n: int):
    calls = [0]

    def should_stop():
        calls[0] += 1
        return calls[0] > n

    return should_stop


def test_serve_loop_over_the_hal():
    dev, hal = fake_hal.make_device()
    hal.serial_in = [b"*IDN?\r\n", b"OUTP ", b"ON\nOUTP?\n", b"INIT\n"]
    device.serve(dev, hal, _stop_after(10))
    assert bytes(hal.serial_out) == (b"boostsim,PicoBoost,E66038B713345E2C,0.1.0\n1\n")
    assert hal.service_calls >= 10 and dev.running
    # Long responses go out in WRITE_CHUNK pieces, at most WRITE_BURST of them per poll.
    hal.advance_us(3_000_000)
    hal.serial_in = [b"FETC:ADC? 4096\n"]
    writes = []
    hal.serial_write = lambda data: writes.append(bytes(data)) or len(data)
    before = hal.service_calls
    device.serve(dev, hal, _stop_after(300))
    wire = b"".join(writes)
    block = protocol.decode_adc_block(wire)
    assert 3000 <= block.count <= 3010 and wire.endswith(b"\n")
    assert len(writes) == -(-len(wire) // config.WRITE_CHUNK) > 10
    assert hal.service_calls - before >= -(-len(writes) // config.WRITE_BURST)


def test_serve_loop_hands_replies_over_while_the_cdc_takes_them():
    # A reply of 12 lines (504 bytes) to a CDC with room for 100 bytes: 64 + 36 in the first
    # poll, nothing while it stays full (the loop waits for input instead of spinning), then,
    # with room, WRITE_BURST pieces per poll until it has all gone.
    dev, hal = fake_hal.make_device()
    hal.serial_in = [b"*IDN?\n" * 12]
    hal.tx_room = 100
    polls = [[]]
    write, service = hal.serial_write, hal.service

    def serial_write(data):
        n = write(data)
        polls[-1].append(n)
        return n

    def poll_done():
        service()
        polls.append([])
        if len(polls) == 4:
            hal.tx_room = 10_000

    hal.serial_write, hal.service = serial_write, poll_done
    device.serve(dev, hal, _stop_after(6))
    assert config.WRITE_BURST == 4
    assert polls[:6] == [[64, 36, 0], [0], [0], [64] * 4, [64, 64, 20], []]
    assert bytes(hal.serial_out) == b"boostsim,PicoBoost,E66038B713345E2C,0.1.0\n" * 12


# ------------------------------------------------------------------------------ docs


def test_protocol_doc_lists_every_command_and_error():
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text()
    for cmd in commands.build_table(config):
        assert f"`{cmd.pattern}" in doc, cmd.pattern
    for code in scpi.ERRORS:
        if code:
            assert re.search(rf"(?<![\d-]){code}(?!\d)", doc), code
    assert "BSAQ" in doc and acq.HEADER_FMT in doc
