"""Host driver for the bench board (or its emulator): :class:`Board`.

>>> with Board("/dev/ttyACM0", max_duty=0.7, max_vout=14.0) as board:   # doctest: +SKIP
...     board.set_duty(0.55)
...     board.output(True)
...     board.measure_vout()

Every setting is checked: after a set command the error queue is read, and a refusal raises
:class:`BoardError` with the SCPI code and message. Every read has a deadline (a board that
trickles bytes cannot hang the host). The context manager turns the output off on normal exit,
on any exception, on Ctrl-C and on SIGTERM. If the link is lost the driver raises
:class:`LinkError` and records the output state as *unknown* (``output_state is None``), never
as off; the board's own watchdog (``watchdog=`` seconds) is what turns the output off then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import serial
from serial.tools import list_ports

from . import protocol
from .firmware import config

__all__ = ["PICO_VID_PID", "Acquisition", "Board", "BoardError", "Identity", "LinkError",
           "find_ports"]

#: USB vendor:product of MicroPython on a Raspberry Pi Pico.
PICO_VID_PID = (0x2E8A, 0x0005)


class BoardError(Exception):
    """The board refused a command (``code`` and ``message`` from its error queue), or a
    host-side limit refused it before sending (``code`` None)."""

    def __init__(self, message: str, code: int | None = None, command: str | None = None):
        super().__init__(message)
        self.code = code
        self.command = command


class LinkError(BoardError):
    """No valid answer from the board (timeout, garbled bytes, port gone). The output state is
    unknown afterwards."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """``*IDN?``: maker, model, serial number, firmware version."""

    maker: str
    model: str
    serial: str
    firmware: str

    def __str__(self) -> str:
        return f"{self.maker},{self.model},{self.serial},{self.firmware}"


@dataclasses.dataclass
class Acquisition:
    """Samples fetched from the board's stream. Times come from the board's sample index.

    ``index`` (int64), ``t`` [s] board time, ``volts`` [V] calibrated output, ``codes`` raw;
    ``gaps`` lists ``(first_missing_index, count)`` for samples the board lost (ring-buffer
    overflow); ``flags`` holds the OR of the blocks' overflow/ovp/wdog/running bits.
    """

    index: np.ndarray
    t: np.ndarray
    volts: np.ndarray
    codes: np.ndarray
    gaps: list[tuple[int, int]]
    overflow: bool
    ovp_tripped: bool
    wdog_tripped: bool
    running: bool
    period: float  # [s]


def find_ports(vid_pid: tuple[int, int] = PICO_VID_PID) -> list[Any]:
    """Serial ports whose USB vendor:product matches (``serial.tools.list_ports`` entries)."""
    vid, pid = vid_pid
    return [p for p in list_ports.comports() if p.vid == vid and p.pid == pid]


class _DeadlineReader:
    """``read(n)`` for the protocol parser: returns what arrives before the deadline."""

    def __init__(self, port: serial.SerialBase, timeout: float):
        self.port = port
        self.deadline = time.monotonic() + timeout
        self.buffer = bytearray()

    def __call__(self, n: int) -> bytes:
        while not self.buffer:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return b""
            self.port.timeout = min(remaining, 0.05)
            chunk = self.port.read(max(1, self.port.in_waiting))
            self.buffer += chunk
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out


class Board:
    """A bench board on a serial port: device path (``/dev/ttyACM0``), pyserial URL
    (``socket://...``, ``rfc2217://...``) or None to find the one Pico by USB VID:PID.

    Host-side limits: ``max_duty`` refuses larger duties before they are sent; ``max_vout``
    programs the board's over-voltage trip no higher than that and turns the output off when a
    measurement exceeds it. ``watchdog`` [s] arms the board's host watchdog (0: leave as is).
    ``timeout`` bounds every reply [s]; ``connect_timeout`` bounds the handshake, which retries
    ``*IDN?`` through a boot banner or a reset on open.
    """

    def __init__(self, port: str | None = None, *, timeout: float = 2.0,
                 connect_timeout: float = 5.0, max_duty: float | None = None,
                 max_vout: float | None = None, watchdog: float = 0.0,
                 vid_pid: tuple[int, int] = PICO_VID_PID):
        if max_duty is not None and not 0 < max_duty < 1:
            raise ValueError(f"max_duty must be in (0, 1), got {max_duty!r}")
        if max_vout is not None and not max_vout > 0:
            raise ValueError(f"max_vout must be > 0 [V], got {max_vout!r}")
        self.timeout = timeout
        self.max_duty = max_duty
        self.max_vout = max_vout
        self.output_state: bool | None = None
        self.port_name = port if port is not None else self._discover(vid_pid)
        self._lock = threading.RLock()
        try:
            self._port = serial.serial_for_url(self.port_name, baudrate=115200, timeout=0.05,
                                               write_timeout=timeout, exclusive=True)
        except serial.SerialException as exc:
            raise LinkError(f"cannot open {self.port_name}: {exc}") from None
        except (OSError, ValueError) as exc:
            raise LinkError(f"cannot open {self.port_name}: {exc}") from None
        try:
            self.identity = self._handshake(connect_timeout)
            self.output_state = bool(self.query("OUTP?"))
            if max_vout is not None:
                level = min(max_vout, self.query("PROT:OVP:LEV?"))
                self.send("PROT:OVP:LEV", level)
            if watchdog:
                self.send("SYST:WDOG:TIM", watchdog)
        except BaseException:
            self._port.close()
            raise

    # -- connection ------------------------------------------------------------------------
    @staticmethod
    def _discover(vid_pid: tuple[int, int]) -> str:
        ports = find_ports(vid_pid)
        if len(ports) == 1:
            return ports[0].device
        wanted = f"{vid_pid[0]:04X}:{vid_pid[1]:04X}"
        if not ports:
            raise LinkError(f"no board found (USB {wanted}); give the port, e.g. "
                            f"Board('/dev/ttyACM0') (see 'boostsim bench ports')")
        names = ", ".join(p.device for p in ports)
        raise LinkError(f"several boards found (USB {wanted}): {names}; give the port")

    def _handshake(self, timeout: float) -> Identity:
        """Ask ``*IDN?`` until a valid identity comes back, skipping a boot banner or noise."""
        deadline = time.monotonic() + timeout
        port = self._port
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkError(f"{self.port_name}: no valid *IDN? answer within {timeout:g} s "
                                f"(is it a boostsim board, and is the firmware running?)")
            port.reset_input_buffer()
            port.write(b"\n*IDN?\n")
            reader = _DeadlineReader(port, min(remaining, 0.5))
            with contextlib.suppress(protocol.ProtocolError):
                while True:
                    line = protocol.read_line(reader).decode("ascii", "replace")
                    fields = line.split(",")
                    if len(fields) == 4 and fields[0] == config.MAKER:
                        # Drain anything else queued (e.g. a second answer), then clear errors.
                        port.reset_input_buffer()
                        self._command_line(b"*CLS\n")
                        return Identity(*fields)

    def close(self) -> None:
        """Turn the output off (if the link allows) and close the port."""
        with self._lock:
            if not self._port.is_open:
                return
            try:
                self.output(False)
            except BoardError:
                pass
            finally:
                self._port.close()

    def __enter__(self) -> Board:
        self._previous_sigterm = None
        if threading.current_thread() is threading.main_thread():
            def on_sigterm(signum, frame):
                raise SystemExit(128 + signum)

            self._previous_sigterm = signal.signal(signal.SIGTERM, on_sigterm)
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.close()
        finally:
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)

    # -- raw exchange -------------------------------------------------------------------
    def _command_line(self, line: bytes) -> None:
        try:
            self._port.write(line)
            self._port.flush()
        except (serial.SerialException, OSError) as exc:
            self.output_state = None
            raise LinkError(f"{self.port_name}: write failed ({exc}); output state unknown",
                            command=line.decode("ascii", "replace").strip()) from None

    def _response(self, what: str) -> tuple[str, bytes]:
        reader = _DeadlineReader(self._port, self.timeout)
        try:
            return protocol.read_response(reader)
        except protocol.ProtocolError as exc:
            self.output_state = None
            raise LinkError(f"{self.port_name}: no valid answer to {what} within "
                            f"{self.timeout:g} s ({exc}); output state unknown",
                            command=what) from None
        except (serial.SerialException, OSError) as exc:
            self.output_state = None
            raise LinkError(f"{self.port_name}: link lost during {what} ({exc}); output "
                            f"state unknown", command=what) from None

    def query(self, header: str, *args: Any) -> Any:
        """Send a query and return its parsed answer; a refused query raises BoardError."""
        with self._lock:
            line = self._line(header, args)
            self._command_line(line)
            kind, data = self._response(header)
            if kind == "block":
                return data
            if not data.strip():
                self._raise_queued(header)
            try:
                return protocol.parse_response(header, data)
            except (ValueError, protocol.ProtocolError):
                self.output_state = None
                raise LinkError(f"{self.port_name}: garbled answer to {header}: {data!r}; "
                                f"output state unknown", command=header) from None

    def send(self, header: str, *args: Any) -> None:
        """Send a set command and check the error queue: a refusal raises BoardError."""
        with self._lock:
            self._command_line(self._line(header, args))
            _, data = self._exchange("SYST:ERR?")
            code, message = protocol.parse_error(data)
            if code != 0:
                self._drain()
                raise BoardError(f"{header} refused: {code},{message}", code, header)

    def _exchange(self, header: str) -> tuple[str, bytes]:
        self._command_line(protocol.command(header))
        return self._response(header)

    def _line(self, header: str, args: tuple) -> bytes:
        try:
            return protocol.command(header, *args)
        except protocol.ScpiError as exc:
            raise BoardError(f"{header}: {exc}", getattr(exc, "code", None), header) from None

    def _raise_queued(self, header: str) -> None:
        _, data = self._exchange("SYST:ERR?")
        code, message = protocol.parse_error(data)
        self._drain()
        raise BoardError(f"{header} failed: {code},{message}", code, header)

    def _drain(self) -> None:
        for _ in range(config.ERR_QUEUE_LEN + 1):
            _, data = self._exchange("SYST:ERR?")
            if protocol.parse_error(data)[0] == 0:
                return

    # -- settings ----------------------------------------------------------------------
    def reset(self) -> None:
        """``*RST``: output off, duty 0, acquisition stopped (protections kept)."""
        self.send("*RST")
        self.output_state = False

    def output(self, on: bool) -> None:
        """Switch the gate drive on or off (verified with ``OUTP?``)."""
        if not on:
            with contextlib.suppress(BoardError):
                self.send("OUTP", "OFF")
            state = self.query("OUTP?")
            self.output_state = bool(state)
            if state:
                raise BoardError("the board did not turn its output off", None, "OUTP OFF")
            return
        self.send("OUTP", "ON")
        self.output_state = bool(self.query("OUTP?"))

    def set_duty(self, duty: float) -> None:
        """Set the PWM duty (refused above the host's ``max_duty`` or the board's limit)."""
        if not np.isfinite(duty) or duty < 0:
            raise BoardError(f"duty must be a finite number >= 0, got {duty!r}", None,
                             "SOUR:PWM:DUTY")
        if self.max_duty is not None and duty > self.max_duty:
            raise BoardError(f"duty {duty:g} above the host limit max_duty={self.max_duty:g}",
                             None, "SOUR:PWM:DUTY")
        self.send("SOUR:PWM:DUTY", float(duty))

    @property
    def duty(self) -> float:
        return self.query("SOUR:PWM:DUTY?")

    @property
    def duty_limit(self) -> float:
        return self.query("SOUR:PWM:DUTY:LIM?")

    @duty_limit.setter
    def duty_limit(self, value: float) -> None:
        self.send("SOUR:PWM:DUTY:LIM", float(value))

    @property
    def frequency(self) -> float:
        """PWM switching frequency [Hz]."""
        return self.query("SOUR:PWM:FREQ?")

    @frequency.setter
    def frequency(self, hz: float) -> None:
        self.send("SOUR:PWM:FREQ", float(hz))

    # -- measurements ------------------------------------------------------------------
    def measure_vout(self) -> float:
        """Averaged, calibrated output voltage [V]; checked against ``max_vout``."""
        volts = self.query("MEAS:VOLT?")
        self._check_vout(volts)
        return volts

    def measure_vout_raw(self) -> int:
        """One raw ADC code of the output-voltage channel."""
        return self.query("MEAS:VOLT:RAW?")

    def measure_vin(self) -> float:
        """Input voltage [V] (BoardError -241 if the channel is not wired)."""
        return self.query("MEAS:VOLT:IN?")

    def measure_current(self) -> float:
        """Inductor current [A] (BoardError -241 if the channel is not wired)."""
        return self.query("MEAS:CURR?")

    def _check_vout(self, volts: float | np.ndarray) -> None:
        if self.max_vout is not None and np.max(volts) > self.max_vout:
            self.output(False)
            raise BoardError(f"output {np.max(volts):.3f} V above the host limit "
                             f"max_vout={self.max_vout:g} V: output turned off", None,
                             "MEAS:VOLT?")

    # -- protection and calibration ----------------------------------------------------
    def set_ovp(self, volts: float) -> None:
        """Over-voltage trip level [V] (never above the host's ``max_vout``)."""
        if self.max_vout is not None and volts > self.max_vout:
            raise BoardError(f"OVP {volts:g} V above the host limit max_vout="
                             f"{self.max_vout:g} V", None, "PROT:OVP:LEV")
        self.send("PROT:OVP:LEV", float(volts))

    def set_watchdog(self, seconds: float) -> None:
        """Host watchdog [s]: the board turns the output off if no valid command arrives for
        this long while the output is on (0 disables)."""
        self.send("SYST:WDOG:TIM", float(seconds))

    def trip(self) -> str:
        """Latched trip: "NONE", "OVP" or "WDOG"."""
        return self.query("PROT:TRIP?")

    def clear_trip(self) -> None:
        self.send("PROT:CLE")

    def calibrate_vout(self, gain: float, offset: float) -> None:
        """``v = gain * v_divider + offset`` for MEAS:VOLT?, OVP, the PID and fetched volts."""
        self.send("CAL:VOUT", float(gain), float(offset))

    @property
    def calibration(self) -> tuple[float, float]:
        gain, offset = self.query("CAL:VOUT?")
        return gain, offset

    # -- streaming acquisition ---------------------------------------------------------
    def configure_acquisition(self, rate: float) -> float:
        """Set the stream's sample rate [Hz]; returns the rate the board really uses."""
        self.send("SENS:ADC:RATE", float(rate))
        return self.query("SENS:ADC:RATE?")

    def start_acquisition(self) -> None:
        """``INIT``: clear the board's buffer and start streaming (sample index from 0)."""
        self.send("INIT")

    def stop_acquisition(self) -> None:
        self.send("ABOR")

    def fetch(self, count: int | None = None, *, max_blocks: int = 64) -> Acquisition:
        """Everything unread (up to ``max_blocks`` blocks of ``count`` samples), as volts with
        board-clock times; lost samples appear as gaps in ``index``."""
        gain, offset = self.calibration
        blocks = []
        for _ in range(max_blocks):
            payload = self.query("FETC:ADC?", *(() if count is None else (int(count),)))
            block = protocol.decode_adc_block(payload)
            blocks.append(block)
            if block.count == 0 or (count is not None and block.count < count) or (
                    count is None and block.count < config.FETCH_MAX):
                break
        return _merge_blocks(blocks, gain, offset)

    @contextlib.contextmanager
    def acquisition(self, rate: float) -> Iterator[float]:
        """Stream at ``rate`` inside the block; stopped on exit. Yields the effective rate."""
        effective = self.configure_acquisition(rate)
        self.start_acquisition()
        try:
            yield effective
        finally:
            with contextlib.suppress(BoardError):
                self.stop_acquisition()


def _merge_blocks(blocks: list[protocol.AdcBlock], gain: float, offset: float) -> Acquisition:
    index = np.concatenate([b.indices for b in blocks]) if blocks else np.zeros(0, np.int64)
    codes = np.concatenate([b.codes for b in blocks]) if blocks else np.zeros(0, np.uint16)
    volts = np.concatenate([b.volts(gain, offset) for b in blocks]) if blocks else np.zeros(0)
    times_us = np.concatenate([b.times_us for b in blocks]) if blocks else np.zeros(0)
    gaps = []
    if index.size > 1:
        jumps = np.flatnonzero(np.diff(index) != 1)
        gaps = [(int(index[j] + 1), int(index[j + 1] - index[j] - 1)) for j in jumps]
    period = blocks[-1].period_us * 1e-6 if blocks else 0.0
    flags = 0
    for b in blocks:
        flags |= b.flags
    last = blocks[-1] if blocks else None
    return Acquisition(index=index, t=times_us * 1e-6, volts=volts, codes=codes, gaps=gaps,
                       overflow=any(b.overflow for b in blocks),
                       ovp_tripped=any(b.ovp_tripped for b in blocks),
                       wdog_tripped=any(b.wdog_tripped for b in blocks),
                       running=bool(last and last.running), period=period)
