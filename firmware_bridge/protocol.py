"""Host side of the bench board's SCPI protocol (see docs/PROTOCOL.md).

Everything protocol-defining is imported from the firmware package, which is the single
definition shared with the board (and the emulator): the command table (``commands``), the
error codes and parameter types (``scpi``) and the acquisition block codec (``acq``). This
module adds host conveniences on top:

* ``command(header, *args) -> bytes``: a validated, terminated command line.
* ``lookup(header) -> (Cmd, is_query)`` and ``COMMANDS``.
* ``parse_response(header, text)``: a query's response line converted per the table.
* ``parse_error(text) -> (code, message)`` for ``SYST:ERR?``.
* ``read_response(read) -> bytes`` / ``read_line`` / ``read_block``: read exactly one response
  (a line, or a definite-length block plus its LF) from a byte stream (a serial port's
  ``read``).
* ``decode_adc_block(data) -> AdcBlock``: the ``FETC:ADC?`` payload (or the whole block) as
  numpy arrays with sample indices and board times.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from firmware_bridge.firmware import acq, commands, config, scpi

__all__ = [
    "COMMANDS",
    "ERRORS",
    "AdcBlock",
    "DeviceError",
    "ProtocolError",
    "ScpiError",
    "command",
    "decode_adc_block",
    "is_query",
    "lookup",
    "parse_error",
    "parse_response",
    "read_block",
    "read_line",
    "read_response",
]

#: The command table of the board built with the default firmware config.
COMMANDS: tuple[scpi.Cmd, ...] = commands.build_table(config)
#: SCPI error code -> standard message.
ERRORS: dict[int, str] = dict(scpi.ERRORS)
#: Raised by ``command`` when a command would be refused by the board (same code it would queue).
ScpiError = scpi.ScpiError

TERMINATOR = b"\n"


class ProtocolError(Exception):
    """The byte stream does not follow the protocol (timeout, bad block, bad response)."""


class DeviceError(Exception):
    """An error the board reported through ``SYST:ERR?``."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{code},{message}")
        self.code = code
        self.message = message


def lookup(header: str, table: tuple[scpi.Cmd, ...] = COMMANDS) -> tuple[scpi.Cmd, bool]:
    """Header (any case, short or long form, optional ``?``) -> (table entry, is_query).

    Raises ``ScpiError`` (-102 / -113) exactly as the board would.
    """
    return scpi.lookup(table, header.strip())


def command(header: str, *args: object, table: tuple[scpi.Cmd, ...] = COMMANDS) -> bytes:
    """Build one command line, checked against the command table, LF-terminated.

    ``command("SOUR:PWM:DUTY", 0.25) == b"SOUR:PWM:DUTY 0.25\\n"``. Argument count, types and
    static ranges are checked with the same parameter specs the board uses (``ScpiError`` with
    the code the board would have queued); dynamic limits (duty <= DUTY:LIM, trips) are the
    board's to check.
    """
    cmd, query = lookup(header, table)
    specs = cmd.qargs if query else cmd.args
    required = sum(1 for s in specs if not s.optional)
    if len(args) > len(specs):
        raise ScpiError(scpi.PARAMETER_NOT_ALLOWED, f"{header} takes at most {len(specs)}")
    if len(args) < required:
        raise ScpiError(scpi.MISSING_PARAMETER, f"{header} needs {required} parameter(s)")
    tokens = [spec.format(value) for spec, value in zip(specs, args, strict=False)]
    line = header.strip()
    if tokens:
        line += " " + ",".join(tokens)
    if len(line) > config.LINE_MAX:
        raise ScpiError(scpi.INPUT_BUFFER_OVERRUN, f"command longer than {config.LINE_MAX} bytes")
    return line.encode("ascii") + TERMINATOR


def is_query(line: str | bytes) -> bool:
    """True if the board answers this line (its first word ends with ``?``): the board's rule."""
    if isinstance(line, str):
        line = line.encode("ascii", "replace")
    return scpi.line_is_query(line.rstrip(b"\r\n"))


def parse_error(text: str | bytes) -> tuple[int, str]:
    """``-222,"Data out of range;duty ..."`` -> (-222, 'Data out of range;duty ...')."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    code, sep, message = text.strip().partition(",")
    if not sep:
        raise ProtocolError(f"not an error-queue entry: {text!r}")
    message = message.strip()
    if len(message) >= 2 and message[0] == message[-1] == '"':
        message = message[1:-1].replace('""', '"')
    try:
        return int(code), message
    except ValueError:
        raise ProtocolError(f"not an error-queue entry: {text!r}") from None


def parse_response(header: str, text: str | bytes) -> object:
    """Convert a query's response line according to the command table's ``resp`` kind.

    real -> float, int -> int, bool -> bool, reals -> tuple of floats, error -> (code, msg),
    str -> str. An empty line means the query failed (the reason is in the error queue):
    ``ProtocolError``.
    """
    cmd, _ = lookup(header)
    if isinstance(text, bytes):
        text = text.decode("ascii")
    text = text.strip()
    if not text:
        raise ProtocolError(f"{header}: empty response (the query failed; see SYST:ERR?)")
    kind = cmd.resp
    if kind == "real":
        return float(text)
    if kind == "int":
        return int(text)
    if kind == "bool":
        return text == "1"
    if kind == "reals":
        return tuple(float(t) for t in text.split(","))
    if kind == "error":
        return parse_error(text)
    return text


# ---------------------------------------------------------------------------- stream reading

Reader = Callable[[int], bytes]


def _read_exact(read: Reader, n: int) -> bytes:
    chunks = []
    got = 0
    while got < n:
        chunk = read(n - got)
        if not chunk:
            raise ProtocolError(f"timeout: {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_line(read: Reader, first: bytes = b"", max_len: int = 65536) -> bytes:
    """Read up to and including LF; return the line without CR/LF."""
    buf = bytearray(first)
    while not buf.endswith(b"\n"):
        if len(buf) > max_len:
            raise ProtocolError("response line too long")
        buf += _read_exact(read, 1)
    return bytes(buf).rstrip(b"\r\n")


def read_block(read: Reader, first: bytes = b"") -> bytes:
    """Read a definite-length block ``#<n><len><payload>`` and its LF; return the payload."""
    head = bytearray(first)
    if len(head) < 2:
        head += _read_exact(read, 2 - len(head))
    try:
        n = int(chr(head[1]))
    except ValueError:
        raise ProtocolError(f"bad block header {bytes(head)!r}") from None
    if len(head) < 2 + n:
        head += _read_exact(read, 2 + n - len(head))
    try:
        header_len, length = scpi.parse_block_prefix(bytes(head))
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
    payload = bytes(head[header_len:]) + _read_exact(read, length - (len(head) - header_len))
    if _read_exact(read, 1) != b"\n":
        raise ProtocolError("block not followed by LF")
    return payload


def read_response(read: Reader) -> tuple[str, bytes]:
    """Read exactly one response: ("block", payload) or ("line", text bytes without LF)."""
    first = _read_exact(read, 1)
    if first == b"#":
        return "block", read_block(read, first)
    return "line", read_line(read, first)


# ---------------------------------------------------------------------------- acquisition


@dataclasses.dataclass(frozen=True)
class AdcBlock:
    """One ``FETC:ADC?`` block. Times are the board's (index-based), never arrival times."""

    seq: int
    first_index: int
    t_first_us: int
    period_us: int
    flags: int
    codes: np.ndarray  # uint16

    @property
    def count(self) -> int:
        return len(self.codes)

    @property
    def indices(self) -> np.ndarray:
        return self.first_index + np.arange(self.count, dtype=np.int64)

    @property
    def times_us(self) -> np.ndarray:
        return self.t_first_us + np.arange(self.count, dtype=np.int64) * self.period_us

    @property
    def overflow(self) -> bool:
        return bool(self.flags & acq.FLAG_OVERFLOW)

    @property
    def ovp_tripped(self) -> bool:
        return bool(self.flags & acq.FLAG_OVP)

    @property
    def wdog_tripped(self) -> bool:
        return bool(self.flags & acq.FLAG_WDOG)

    @property
    def running(self) -> bool:
        return bool(self.flags & acq.FLAG_RUNNING)

    def volts(self, gain: float = 1.0, offset: float = 0.0, cfg=config) -> np.ndarray:
        """Codes -> output volts with the same conversion the board uses for MEAS:VOLT?."""
        return acq.code_to_volts(self.codes.astype(np.float64), cfg.ADC_VREF,
                                 cfg.ADC_FULL_SCALE, cfg.VOUT_DIVIDER, gain, offset)


def decode_adc_block(data: bytes) -> AdcBlock:
    """Decode a ``FETC:ADC?`` payload, or a whole ``#...`` block (with or without its LF)."""
    if data[:1] == b"#":
        try:
            data, _ = scpi.decode_block(data)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
    try:
        seq, first, t_first, period, flags, count = acq.unpack_header(data)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
    codes = np.frombuffer(data, dtype="<u2", count=count, offset=len(data) - 2 * count)
    return AdcBlock(seq, first, t_first, period, flags, codes.astype(np.uint16))
