"""Host driver for the bench board (or its emulator): :class:`Board`.

>>> with Board("/dev/ttyACM0", max_duty=0.7, max_vout=14.0) as board:   # doctest: +SKIP
...     board.set_duty(0.55)
...     board.output(True)
...     board.measure_vout()

Every setting is checked: after a set command the error queue is read, and a refusal raises
:class:`BoardError` with the SCPI code and message. Every read has a deadline (a board that
trickles bytes cannot hang the host). The context manager turns the output off on normal exit,
on any exception, on Ctrl-C, on SIGTERM and on SIGHUP (a closed terminal or ssh session). If
the link is lost the driver raises :class:`LinkError` and records the output state as *unknown*
(``output_state is None``), never as off; the board's own watchdog is what turns the output off
then.

Host watchdog: the output is never switched on through a :class:`Board` without the board's
host watchdog armed (``watchdog=`` seconds, default :data:`DEFAULT_WATCHDOG` = 3 s): a script
killed by SIGKILL, frozen (SIGSTOP, a debugger) or hung leaves the output on for at most that
long. Every command feeds it; there is no background thread (it would keep feeding a hung
script), so wait with :meth:`Board.hold` rather than ``time.sleep`` while the output is on.
The guard works on the encoded line, parsed as the board parses it, so every route
(:meth:`~Board.output`, :meth:`~Board.send`, :meth:`~Board.pipeline`,
:meth:`~Board.write_nowait`) and every encoding (``1.0``, ``"on"``, ``OUTP:STAT``) is covered:
``SYST:WDOG:TIM`` goes out in the same write before each output-on (never trusted from a cache:
a reset without banner zeroes it), and disarming it is refused unless the output is known off.

Exclusive port: on POSIX the port is claimed with ``TIOCEXCL`` after opening (``exclusive``),
so another program's ``open()`` fails with EBUSY while this one holds it -- except root's, and
a program that had opened it before keeps its descriptor.

Link faults and resets
----------------------
* ``retries=N``: a garbled or missing answer (or a command the board received corrupted: a
  -1xx SCPI command error, which the host's validated commands never cause) is retried up to
  N times after :meth:`Board.resync` (skip stale bytes, re-identify the board). The duty is
  also read back after each :meth:`Board.set_duty`, so a corrupted digit cannot silently set
  a wrong duty.
* A board **reset** (soft reboot, hardware watchdog, power glitch) loses its settings and turns
  the output off. The driver notices it by the reboot banner, by the settings it made itself
  (OVP level, watchdog, calibration, PWM frequency, duty limit) reading back at their power-up
  values, or by the output found off without a latched trip; it then re-applies those
  settings and raises :class:`BoardResetError` (never silently carries on: the experiment
  decides whether to resume). :meth:`Board.reconnect` reopens the port (a real Pico
  re-enumerates on USB after a hardware reset).
* :meth:`Board.check` / :meth:`Board.hold` (a wait that keeps the link and the host watchdog
  alive) raise :class:`TripError` when the board tripped (OVP or host watchdog).
* Streaming: the sample index is tracked from ``INIT`` on, so samples lost between two
  :meth:`Board.fetch` calls (ring-buffer overflow, a garbled block) appear in ``gaps`` too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import serial
from serial.tools import list_ports

from boostsim.adc_model import AdcTransfer, dnl_table

from . import protocol
from .firmware import acq as _acq
from .firmware import config, scpi

try:  # POSIX: the exclusive-open flag of a terminal (TIOCEXCL)
    import fcntl
    import termios
except ImportError:  # Windows opens a COM port exclusively anyway
    fcntl = termios = None

__all__ = ["DEFAULT_WATCHDOG", "PICO_VID_PID", "Acquisition", "Board", "BoardError",
           "BoardNotFound", "BoardResetError", "Identity", "LinkError", "TripError",
           "find_ports"]

#: Host watchdog [s] armed before the output goes on, unless ``Board(watchdog=...)`` says.
DEFAULT_WATCHDOG = 3.0

#: Signals that end a ``with Board(...)`` block like an exception (output off on the way out).
_EXIT_SIGNALS = ("SIGTERM", "SIGHUP")

#: USB vendor:product of MicroPython on a Raspberry Pi Pico.
PICO_VID_PID = (0x2E8A, 0x0005)

#: Lines a (re)booting MicroPython board prints; seeing one means the board was reset.
_BOOT_MARKERS = (b"soft reboot", b"MicroPython", b"MPY:", b"raw REPL", b"Traceback")

#: Prefix of every checked exchange: the error queue then holds only that exchange's errors.
_CLS = b"*CLS\n"

#: Word answers that must be one of a few values (by the command's query handler).
_WORDS = {"q_trip": ("NONE", "OVP", "WDOG"), "q_cont_mode": ("OPEN", "PID")}

#: Settings the host re-applies after a board reset: header -> query header.
_RESTORABLE = ("PROT:OVP:LEV", "SYST:WDOG:TIM", "CAL:VOUT", "SOUR:PWM:FREQ",
               "SOUR:PWM:DUTY:LIM")


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


class BoardNotFound(LinkError):
    """``Board()`` without a port found no board, or several (``found``: their ports)."""

    def __init__(self, message: str, found: list[str]):
        super().__init__(message)
        self.found = found


class BoardResetError(LinkError):
    """The board was reset: its settings were lost and its output is off. The driver has
    re-applied the settings it made (protections, calibration); the experiment's own state
    (duty, output, acquisition) is gone."""


class TripError(BoardError):
    """The board's protection tripped (``cause``: "OVP" or "WDOG"); the output is off and stays
    off until :meth:`Board.clear_trip`."""

    def __init__(self, message: str, cause: str, command: str | None = None):
        super().__init__(message, None, command)
        self.cause = cause


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
    overflow), also across consecutive :meth:`Board.fetch` calls (the index is tracked from
    ``INIT``); ``overflow``, ``ovp_tripped``, ``wdog_tripped``: any block had the flag;
    ``running``: the last block's flag (False once the acquisition stopped, e.g. by a reset).
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

    @property
    def count(self) -> int:
        return int(self.index.size)

    @property
    def lost(self) -> int:
        """Samples lost in the gaps."""
        return int(sum(n for _, n in self.gaps))


def find_ports(vid_pid: tuple[int, int] = PICO_VID_PID) -> list[Any]:
    """Serial ports whose USB vendor:product matches (``serial.tools.list_ports`` entries)."""
    vid, pid = vid_pid
    return [p for p in list_ports.comports() if p.vid == vid and p.pid == pid]


class _DeadlineReader:
    """``read(n)`` for the protocol parser: returns what arrives before the deadline.
    ``buffer`` (the board's receive buffer) keeps bytes read ahead for the next response."""

    def __init__(self, port: serial.SerialBase, timeout: float,
                 buffer: bytearray | None = None):
        self.port = port
        self.deadline = time.monotonic() + timeout
        self.buffer = bytearray() if buffer is None else buffer

    def __call__(self, n: int) -> bytes:
        while not self.buffer:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return b""
            wait = 0.05 if remaining > 0.05 else remaining
            if self.port.timeout != wait:  # reconfiguring a port costs system calls
                self.port.timeout = wait
            chunk = self.port.read(max(1, self.port.in_waiting))
            self.buffer += chunk
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out


def _same(a: Any, b: Any) -> bool:
    """Settings equal to the board's %.6g response precision."""
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return len(a) == len(b) and all(
        math.isclose(float(x), float(y), rel_tol=2e-6, abs_tol=1e-9) for x, y in zip(a, b,
                                                                                    strict=True))


def _armed(seconds: float) -> bool:
    """True if the board's host watchdog runs with this SYST:WDOG:TIM setting: the firmware
    rounds it to whole milliseconds, and 0 ms is off."""
    return int(seconds * 1000 + 0.5) > 0


def _wire_effect(line: bytes) -> str | None:
    """What one encoded command line does to the protections, decided the way the board
    decides it (the firmware's own parser on the bytes that go on the wire): "on" (switches
    the output on), "disarm" (turns the host watchdog off) or None."""
    try:
        header, tokens = scpi.split_line(line.decode("ascii"))
        nodes, is_query = scpi.parse_header(header)
        cmd = scpi.find_command(protocol.COMMANDS, nodes, is_query)
        values = cmd.parse_args(is_query, tokens)
    except (scpi.ScpiError, UnicodeDecodeError):
        return None  # the board refuses it too
    if is_query:
        return None
    if cmd.setter == "s_output" and values[0]:
        return "on"
    if cmd.setter == "s_wdog" and not _armed(values[0]):
        return "disarm"
    return None


def _set_exclusive(port: serial.SerialBase, on: bool) -> bool:
    """TIOCEXCL (``on``) / TIOCNXCL on the port's terminal: while set, the kernel refuses
    any other open() of it (EBUSY; root excepted). False if the port is no POSIX terminal."""
    fd = getattr(port, "fd", None)
    if fcntl is None or not isinstance(fd, int) or fd < 0:
        return False
    try:
        fcntl.ioctl(fd, termios.TIOCEXCL if on else termios.TIOCNXCL)
    except OSError:
        return False
    return True


class Board:
    """A bench board on a serial port: device path (``/dev/ttyACM0``), pyserial URL
    (``socket://...``, ``rfc2217://...``) or None to find the one Pico by USB VID:PID.

    Host-side limits: ``max_duty`` refuses larger duties before they are sent; ``max_vout``
    programs the board's over-voltage trip no higher than that and turns the output off when a
    measurement exceeds it. ``watchdog`` [s] arms the board's host watchdog at connection
    (default 3 s; 0: leave the board's setting -- but the output is only ever switched on with
    a watchdog armed: the board's own, or DEFAULT_WATCHDOG).
    ``timeout`` bounds every reply [s]; ``connect_timeout`` bounds the handshake, which retries
    ``*IDN?`` through a boot banner or a reset on open. ``retries``: how often a garbled or
    missing answer is retried after a resync (see the module docstring); 0 raises at once.
    ``stats`` counts retries, resyncs and detected resets.
    ``adc_dnl``: the ADC's non-linearity the host corrects its readings for ("rp2040", the
    default: the RP2040's errata table, :data:`boostsim.adc_model.RP2040_DNL`, averaged over
    five boards; None or "ideal": none, for an ideal ADC):
    every streamed code, and the board's averaged ``MEAS:VOLT?``/``:IN?``/``MEAS:CURR?``
    readings, become the input they stand for (:meth:`boostsim.adc_model.AdcTransfer.correct`)
    before the conversion to volts; ``codes`` stay raw. The board itself (its PID, its OVP)
    still sees raw codes.
    """

    def __init__(self, port: str | None = None, *, timeout: float = 2.0,
                 connect_timeout: float = 5.0, max_duty: float | None = None,
                 max_vout: float | None = None, watchdog: float = DEFAULT_WATCHDOG,
                 vid_pid: tuple[int, int] = PICO_VID_PID, retries: int = 0,
                 adc_dnl: str | None = "rp2040"):
        if max_duty is not None and not 0 < max_duty < 1:
            raise ValueError(f"max_duty must be in (0, 1), got {max_duty!r}")
        if max_vout is not None and not max_vout > 0:
            raise ValueError(f"max_vout must be > 0 [V], got {max_vout!r}")
        if not (isinstance(retries, int) and retries >= 0):
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        if not (timeout > 0 and connect_timeout > 0):
            raise ValueError("timeout and connect_timeout must be > 0 [s]")
        if not 0 <= watchdog <= config.WDOG_MAX:
            raise ValueError(f"watchdog must be in [0, {config.WDOG_MAX:g}] s, got {watchdog!r}")
        table = dnl_table(adc_dnl)  # refuses unknown names before the port is opened
        self.adc_dnl = adc_dnl if table is not None else None
        self._adc = None if table is None else AdcTransfer(
            bits=config.ADC_FULL_SCALE.bit_length() - 1, vref=config.ADC_VREF, dnl=table)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_duty = max_duty
        self.max_vout = max_vout
        self.retries = retries
        self.output_state: bool | None = None
        self.stats = {"retries": 0, "resyncs": 0, "resets": 0, "reconnects": 0}
        self._vid_pid = vid_pid
        self._discovered = port is None
        self.port_name = port if port is not None else self._discover(vid_pid)
        self._lock = threading.RLock()
        self._settings: dict[str, tuple] = {}   # host-made settings re-applied after a reset
        self._cal: tuple[float, float] | None = None
        self._next_index: int | None = None     # expected next sample index since INIT
        self._banner = False
        self._previous_handlers: dict[int, Any] = {}
        self._rx = bytearray()                  # bytes read ahead (pipelined answers)
        self._port = self._open_port()
        try:
            self.identity = self._handshake(connect_timeout)
            self.output_state = bool(self.query("OUTP?"))
            if max_vout is not None:
                level = min(max_vout, self.query("PROT:OVP:LEV?"))
                self.send("PROT:OVP:LEV", level)
                self._settings["PROT:OVP:LEV"] = (level,)
            if watchdog:
                self.set_watchdog(watchdog)
        except BaseException:
            self._close_port()
            raise

    # -- connection ------------------------------------------------------------------------
    @staticmethod
    def _discover(vid_pid: tuple[int, int], serial_number: str | None = None) -> str:
        ports = find_ports(vid_pid)
        if serial_number is not None:
            same = [p for p in ports if (p.serial_number or "").upper() == serial_number.upper()]
            ports = same or ports
        if len(ports) == 1:
            return ports[0].device
        wanted = f"{vid_pid[0]:04X}:{vid_pid[1]:04X}"
        if not ports:
            raise BoardNotFound(f"no board found (USB {wanted}); give the port, e.g. "
                                f"Board('/dev/ttyACM0') (see 'boostsim bench ports')", [])
        names = ", ".join(p.device for p in ports)
        raise BoardNotFound(f"several boards found (USB {wanted}): {names}; give the port",
                            [p.device for p in ports])

    def _open_port(self) -> serial.SerialBase:
        """Open the port; on POSIX also claim it with TIOCEXCL (``exclusive`` True): pyserial's
        ``exclusive=True`` is an advisory flock only other flock users respect, TIOCEXCL makes
        the kernel refuse every later open() of the terminal (EBUSY) by a process without
        CAP_SYS_ADMIN (root still can), so a second program cannot feed the board's watchdog
        or send commands while this one holds the port. A process that opened the port before
        keeps its descriptor."""
        try:
            port = serial.serial_for_url(self.port_name, baudrate=115200, timeout=0.05,
                                         write_timeout=self.timeout, exclusive=True)
        except serial.SerialException as exc:
            text = str(exc)
            if ("exclusively lock" in text or "Resource temporarily unavailable" in text
                    or exc.errno == errno.EBUSY):  # flock, or another holder's TIOCEXCL
                raise LinkError(f"cannot open {self.port_name}: the port is in use by another "
                                f"program (another boostsim, a terminal, mpremote?); close it "
                                f"first") from None
            if isinstance(exc.errno, int):  # pyserial nests the OSError text twice
                text = os.strerror(exc.errno)
            raise LinkError(f"cannot open {self.port_name}: {text}") from None
        except (OSError, ValueError) as exc:
            raise LinkError(f"cannot open {self.port_name}: {exc}") from None
        self.exclusive = _set_exclusive(port, True)
        return port

    def _close_port(self) -> None:
        """Give up the TIOCEXCL claim (an emulator keeps its pty open, so the flag would
        outlive this descriptor), then close the port."""
        with contextlib.suppress(Exception):
            if self.exclusive:
                _set_exclusive(self._port, False)
        with contextlib.suppress(Exception):
            self._port.close()

    def _handshake(self, timeout: float, expect: Identity | None = None) -> Identity:
        """Ask ``*IDN?`` until a valid identity comes back (``expect``: that one, so a
        corrupted answer is not taken for another board), skipping a boot banner or noise
        (a boot banner sets ``_banner``)."""
        deadline = time.monotonic() + timeout
        port = self._port
        attempts = 0
        others: dict[Identity, int] = {}
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                other = max(others, key=others.get) if others else None
                if other is not None and others[other] >= 2:  # not just a corrupted answer
                    self.output_state = None
                    raise LinkError(f"{self.port_name}: a different board answered ({other}, "
                                    f"expected {expect})")
                raise LinkError(f"{self.port_name}: no valid *IDN? answer within {timeout:g} s "
                                f"(is it a boostsim board, and is the firmware running?)")
            try:
                if any(m in self._rx + port.read(port.in_waiting) for m in _BOOT_MARKERS):
                    self._banner = True
                self._rx.clear()
                port.write(b"\n*IDN?\n")
            except (serial.SerialException, OSError) as exc:
                raise LinkError(f"{self.port_name}: link lost ({exc})") from None
            attempts += 1
            reader = _DeadlineReader(port, min(remaining, 0.5))
            with contextlib.suppress(protocol.ProtocolError):
                while True:
                    raw = protocol.read_line(reader)
                    if any(m in raw for m in _BOOT_MARKERS):
                        self._banner = True
                    fields = raw.decode("ascii", "replace").split(",")
                    if len(fields) == 4 and fields[0] == config.MAKER:
                        if expect is not None and Identity(*fields) != expect:
                            other = Identity(*fields)
                            others[other] = others.get(other, 0) + 1
                            break
                        # Drain anything else queued (e.g. answers to earlier attempts: wait
                        # for a quiet line), then clear errors.
                        self._drain_input(0.03 if attempts > 1 else 0.0)
                        self._command_line(b"*CLS\n")
                        return Identity(*fields)

    def _drain_input(self, quiet: float) -> None:
        port = self._port
        self._rx.clear()
        port.reset_input_buffer()
        if quiet <= 0:
            return
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            time.sleep(quiet)
            if not port.in_waiting:
                return
            port.reset_input_buffer()

    def resync(self, timeout: float | None = None) -> bool:
        """Re-establish the exchange after a link error: skip stale or garbled bytes and
        re-identify the board (``*IDN?``, same serial number); if the board was reset,
        re-apply the host's settings. Returns True if a reset was detected. Falls back to
        :meth:`reconnect` if the port itself is gone."""
        with self._lock:
            self.stats["resyncs"] += 1
            deadline = time.monotonic() + (timeout or max(self.timeout, 1.0))
            while True:
                try:
                    identity = self._handshake(max(0.05, deadline - time.monotonic()),
                                               self.identity)
                    return self._after_handshake(identity)
                except BoardResetError:
                    raise
                except LinkError:
                    if not self._port_alive():
                        return self.reconnect()
                    if time.monotonic() >= deadline:
                        raise

    def reconnect(self, timeout: float | None = None) -> bool:
        """Close and reopen the port (a board that re-enumerated on USB after a hardware
        reset comes back, possibly under another name when it was auto-discovered), then
        re-identify it like :meth:`resync`. Returns True if a reset was detected."""
        with self._lock:
            self.stats["reconnects"] += 1
            self._close_port()
            deadline = time.monotonic() + (timeout or self.connect_timeout)
            last: Exception | None = None
            while time.monotonic() < deadline:
                try:
                    if self._discovered:
                        self.port_name = self._discover(self._vid_pid, self.identity.serial)
                    self._port = self._open_port()
                    self._rx.clear()
                    identity = self._handshake(max(0.2, deadline - time.monotonic()),
                                               self.identity)
                    return self._after_handshake(identity)
                except LinkError as exc:
                    last = exc
                    self._close_port()
                    time.sleep(0.1)
            self.output_state = None
            raise LinkError(f"{self.port_name}: could not reconnect ({last}); output state "
                            f"unknown") from None

    def _port_alive(self) -> bool:
        try:
            return bool(self._port.is_open) and self._port.in_waiting >= 0
        except (serial.SerialException, OSError):
            return False

    def _after_handshake(self, identity: Identity) -> bool:
        if identity.serial != self.identity.serial:
            self.output_state = None
            raise LinkError(f"{self.port_name}: a different board answered ({identity}, "
                            f"expected serial {self.identity.serial})")
        reset = self._banner or self._settings_lost()
        self._banner = False
        if reset:
            self.stats["resets"] += 1
            self._restore_settings()
            self._next_index = None
        self._cal = None
        self.output_state = bool(self._query_once("OUTP?", ()))
        return reset

    def _settings_lost(self) -> bool:
        for header, args in self._settings.items():
            value = self._query_once(header + "?", ())
            if not _same(value, args):
                return True
        return False

    def _restore_settings(self) -> None:
        for header, args in self._settings.items():
            if header == "SYST:WDOG:TIM" and not _armed(args[0]):
                continue  # off at power-up already; the guard refuses it with the output unknown
            self._send_once(header, args)

    def close(self, timeout: float = 3.0) -> None:
        """Turn the output off (if the link allows: after a link error it keeps trying to
        resync for ``timeout`` s, e.g. while a board reboots) and close the port. Afterwards
        ``output_state`` is False if the board confirmed the output off, None if unknown."""
        with self._lock:
            if not self._port.is_open:
                return
            try:
                try:
                    self.output(False)
                except BoardResetError:
                    self.output(False)
                except LinkError:
                    deadline = time.monotonic() + timeout
                    while time.monotonic() < deadline:
                        try:
                            self.resync(timeout=max(0.2, deadline - time.monotonic()))
                            self.output(False)
                            break
                        except BoardError:
                            continue
            except BoardError:
                pass
            finally:
                self._close_port()

    @property
    def is_open(self) -> bool:
        return bool(self._port.is_open)

    def __enter__(self) -> Board:
        self._previous_handlers = {}
        if threading.current_thread() is threading.main_thread():
            def on_signal(signum, frame):
                raise SystemExit(128 + signum)

            for name in _EXIT_SIGNALS:
                signum = getattr(signal, name, None)
                if signum is not None:  # no SIGHUP on Windows
                    self._previous_handlers[signum] = signal.signal(signum, on_signal)
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.close()
        finally:
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, handler)
            self._previous_handlers = {}

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
        reader = _DeadlineReader(self._port, self.timeout, self._rx)
        try:
            return protocol.read_response(reader)
        except protocol.ProtocolError as exc:
            self.output_state = None
            self._rx.clear()
            raise LinkError(f"{self.port_name}: no valid answer to {what} within "
                            f"{self.timeout:g} s ({exc}); output state unknown",
                            command=what) from None
        except (serial.SerialException, OSError) as exc:
            self.output_state = None
            raise LinkError(f"{self.port_name}: link lost during {what} ({exc}); output "
                            f"state unknown", command=what) from None

    def _retrying(self, what: str, action, ok_on_retry: tuple[int, ...] = ()) -> Any:
        attempt = 0
        while True:
            try:
                return action()
            except BoardResetError:
                raise
            except LinkError as exc:
                if attempt >= self.retries:
                    if attempt:
                        raise LinkError(f"{exc} (after {attempt} retr"
                                        f"{'y' if attempt == 1 else 'ies'})",
                                        exc.code, exc.command) from None
                    raise
                attempt += 1
                self.stats["retries"] += 1
                try:
                    reset = self.resync()
                except LinkError as again:
                    raise LinkError(f"{exc}; no recovery: {again}", exc.code,
                                    exc.command) from None
                if reset:
                    raise BoardResetError(
                        f"{self.port_name}: the board was reset during {what} (settings lost, "
                        f"output off; the host's protection settings were re-applied)",
                        command=what) from None
            except BoardError as exc:
                if attempt and exc.code in ok_on_retry:
                    return None
                raise

    def query(self, header: str, *args: Any) -> Any:
        """Send a query and return its parsed answer; a refused query raises BoardError."""
        with self._lock:
            return self._retrying(header, lambda: self._query_once(header, args))

    def _query_once(self, header: str, args: tuple) -> Any:
        cmd, _ = self._lookup(header)
        line = self._line(header, args)
        self._command_line(_CLS + line)  # an empty queue: a failure's error is its own
        kind, data = self._response(header)
        if kind == "block":
            if cmd.resp != "block":
                self.output_state = None
                raise LinkError(f"{self.port_name}: garbled answer to {header} (a block); "
                                f"output state unknown", command=header)
            return data
        if not data.strip():
            self._raise_queued(header)
        if cmd.resp == "block":
            self.output_state = None
            raise LinkError(f"{self.port_name}: garbled answer to {header}: {data[:40]!r}; "
                            f"output state unknown", command=header)
        return self._parse(header, cmd, data)

    def _parse(self, header: str, cmd, data: bytes) -> Any:
        """A response line, checked strictly: a boot banner or a value of the wrong form is
        not taken for an answer (it would put every later answer one off)."""
        if any(m in data for m in _BOOT_MARKERS):
            self._banner = True
            self.output_state = None
            raise LinkError(f"{self.port_name}: the board printed {data[:40]!r} instead of "
                            f"answering {header} (it rebooted?); output state unknown",
                            command=header)
        try:
            if cmd.resp == "bool" and data.strip() not in (b"0", b"1"):
                raise ValueError(data)
            value = protocol.parse_response(header, data)
            expected = _WORDS.get(cmd.query)
            if expected is not None and value not in expected:
                raise ValueError(data)
            return value
        except (ValueError, protocol.ProtocolError, UnicodeDecodeError):
            self.output_state = None
            raise LinkError(f"{self.port_name}: garbled answer to {header}: {data[:40]!r}; "
                            f"output state unknown", command=header) from None

    def send(self, header: str, *args: Any) -> None:
        """Send a set command and check the error queue: a refusal raises BoardError."""
        if header.lstrip(":").upper().startswith("CAL"):
            self._cal = None  # fetch() converts codes with the calibration it caches
        with self._lock:
            self._retrying(header, lambda: self._send_once(header, args),
                           ok_on_retry=(-213,) if header.upper().startswith("INIT") else ())

    def _send_once(self, header: str, args: tuple) -> None:
        # One write, one round trip: clear the queue, the command, read its error.
        self._command_line(_CLS + self._line(header, args) + protocol.command("SYST:ERR?"))
        _, data = self._response("SYST:ERR?")
        code, message = self._parse_error(data)
        if code != 0:
            self._raise(header, [(code, message), *self._drain_errors()], "refused")

    def pipeline(self, *commands: tuple) -> list[Any]:
        """Several commands in one write, the queries' answers read back in order: one round
        trip. ``board.pipeline(("SOUR:PWM:DUTY?",), ("MEAS:VOLT?",))`` -> ``[0.5, 9.58]``.
        Set commands are *not* checked against the error queue (read the setting back in the
        same pipeline instead); an empty answer raises BoardError; no retries (call
        :meth:`resync` after a LinkError)."""
        with self._lock:
            headers = [c[0] for c in commands]
            self._command_line(_CLS + b"".join(self._line(c[0], tuple(c[1:]))
                                               for c in commands))
            answers = []
            for i, header in enumerate(headers):
                if not protocol.is_query(header):
                    continue
                kind, data = self._response(header)
                cmd, _ = self._lookup(header)
                if kind == "block" and cmd.resp == "block":
                    answers.append(data)
                    continue
                if kind == "line" and not data.strip():
                    # Read the remaining answers first, so the stream stays in step.
                    for rest in headers[i + 1:]:
                        if protocol.is_query(rest):
                            self._response(rest)
                    self._raise_queued(header)
                answers.append(self._parse(header, cmd, data))
            return answers

    def write_nowait(self, header: str, *args: Any) -> None:
        """Send a set command without waiting or checking the error queue (for fast loops;
        verify the effect with a later read-back: the next checked command clears the
        queue)."""
        with self._lock:
            self._command_line(self._line(header, args))

    def _exchange(self, header: str) -> tuple[str, bytes]:
        self._command_line(protocol.command(header))
        return self._response(header)

    def _parse_error(self, data: bytes) -> tuple[int, str]:
        try:
            return protocol.parse_error(data)
        except (protocol.ProtocolError, UnicodeDecodeError):
            self.output_state = None
            raise LinkError(f"{self.port_name}: garbled answer to SYST:ERR?: {data[:40]!r}; "
                            f"output state unknown", command="SYST:ERR?") from None

    @staticmethod
    def _lookup(header: str):
        try:
            return protocol.lookup(header)
        except protocol.ScpiError as exc:
            raise BoardError(f"{header}: {exc}", getattr(exc, "code", None), header) from None

    def _line(self, header: str, args: tuple) -> bytes:
        """The encoded command line, as it goes on the wire, through the safety guard: every
        route (send, pipeline, write_nowait, output, send_marked) comes here."""
        try:
            line = protocol.command(header, *args)
        except protocol.ScpiError as exc:
            raise BoardError(f"{header}: {exc}", getattr(exc, "code", None), header) from None
        return self._guarded(line)

    def _guarded(self, line: bytes) -> bytes:
        """Decide on the encoded line what the board will do with it (its own parser): a line
        that switches the output on goes out right behind a line that arms the host watchdog
        (in the same write, whatever the host believes the board's setting is: a reset without
        banner zeroes it); one that disarms the watchdog is refused unless the output is known
        to be off."""
        effect = _wire_effect(line)
        if effect == "on":
            return self._arm_line() + line
        if effect == "disarm" and self.output_state is not False:
            raise BoardError("the host watchdog stays armed while the output is (or may be) on: "
                             "turn the output off first", None, "SYST:WDOG:TIM")
        return line

    def _raise_queued(self, header: str) -> None:
        errors = self._drain_errors()
        if not errors:
            self.output_state = None
            raise LinkError(f"{self.port_name}: empty answer to {header} and no error queued "
                            f"(garbled link?); output state unknown", command=header)
        self._raise(header, errors, "failed")

    def _raise(self, header: str, errors: list[tuple[int, str]], how: str) -> None:
        """Raise for the errors queued by one exchange (the queue was cleared before it)."""
        corrupted = [(c, m) for c, m in errors if -199 <= c <= -100]
        if corrupted:
            # The host sends only validated commands: a command error means a line arrived
            # corrupted.
            code, message = corrupted[-1]
            self.output_state = None
            raise LinkError(f"{self.port_name}: {header} arrived corrupted ({code},{message}); "
                            f"output state unknown", code, header)
        code, message = errors[-1]
        raise BoardError(f"{header} {how}: {code},{message}", code, header)

    def _drain_errors(self) -> list[tuple[int, str]]:
        """Read the error queue empty; the errors, oldest first."""
        errors = []
        for _ in range(config.ERR_QUEUE_LEN + 1):
            _, data = self._exchange("SYST:ERR?")
            code, message = self._parse_error(data)
            if code == 0:
                break
            errors.append((code, message))
        return errors

    # -- settings ----------------------------------------------------------------------
    def reset(self) -> None:
        """``*RST``: output off, duty 0, acquisition stopped (protections kept)."""
        self.send("*RST")
        self.output_state = False
        self._next_index = None
        self._settings.pop("SOUR:PWM:FREQ", None)  # *RST restores the default frequency

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
        with self._lock:
            self.send("OUTP", "ON")  # right behind a SYST:WDOG:TIM line (see _guarded)
            self.output_state = bool(self.query("OUTP?"))
            if not self.output_state:
                raise BoardError("the board did not turn its output on", None, "OUTP ON")
            seconds = self.query("SYST:WDOG:TIM?")
            if not _armed(seconds):  # a reset between the two lines: never on unwatched
                self.output(False)
                raise BoardError(f"the board's host watchdog reads {seconds:g} s with the "
                                 f"output on (board reset?): output turned off", None,
                                 "OUTP ON")

    def set_duty(self, duty: float, *, verify: bool = True) -> None:
        """Set the PWM duty (refused above the host's ``max_duty`` or the board's limit);
        ``verify`` reads it back (a corrupted digit on the link cannot go unnoticed)."""
        if not np.isfinite(duty) or duty < 0:
            raise BoardError(f"duty must be a finite number >= 0, got {duty!r}", None,
                             "SOUR:PWM:DUTY")
        if self.max_duty is not None and duty > self.max_duty:
            raise BoardError(f"duty {float(duty)!r} above the host limit max_duty="
                             f"{float(self.max_duty)!r}",
                             None, "SOUR:PWM:DUTY")
        duty = round(float(duty), 6)
        with self._lock:
            was_on = self.output_state is True
            for _ in range(self.retries + 1):
                self.send("SOUR:PWM:DUTY", duty)
                if not verify or _same(self.query("SOUR:PWM:DUTY?"), duty):
                    return
                self.check(expect_on=was_on)  # a trip zeroes the duty: report that instead
                self.stats["retries"] += 1
            raise LinkError(f"{self.port_name}: the duty reads back differently from {duty:g} "
                            f"(corrupted link?)", None, "SOUR:PWM:DUTY")

    @property
    def duty(self) -> float:
        return self.query("SOUR:PWM:DUTY?")

    @property
    def duty_limit(self) -> float:
        return self.query("SOUR:PWM:DUTY:LIM?")

    @duty_limit.setter
    def duty_limit(self, value: float) -> None:
        self.send("SOUR:PWM:DUTY:LIM", float(value))
        self._settings["SOUR:PWM:DUTY:LIM"] = (float(value),)

    @property
    def frequency(self) -> float:
        """PWM switching frequency [Hz]."""
        return self.query("SOUR:PWM:FREQ?")

    @frequency.setter
    def frequency(self, hz: float) -> None:
        self.send("SOUR:PWM:FREQ", float(hz))
        self._settings["SOUR:PWM:FREQ"] = (float(hz),)

    # -- measurements ------------------------------------------------------------------
    def measure_vout(self) -> float:
        """Averaged, calibrated output voltage [V] (DNL-corrected, see ``adc_dnl``); checked
        against ``max_vout``."""
        volts = self.correct_vout(self.query("MEAS:VOLT?"))
        self._check_vout(volts)
        return volts

    def correct_vout(self, volts: float) -> float:
        """A ``MEAS:VOLT?`` reading (e.g. from :meth:`pipeline`) DNL-corrected like
        :meth:`measure_vout`'s (unchanged without ``adc_dnl``)."""
        if self._adc is None:
            return volts
        gain, offset = self._cal if self._cal is not None else self.calibration
        return self._corrected(volts, config.VOUT_DIVIDER, gain, offset)

    def measure_vout_raw(self) -> int:
        """One raw ADC code of the output-voltage channel."""
        return self.query("MEAS:VOLT:RAW?")

    def measure_vin(self) -> float:
        """Input voltage [V] (BoardError -241 if the channel is not wired)."""
        return self._corrected(self.query("MEAS:VOLT:IN?"), config.VIN_DIVIDER)

    def measure_current(self) -> float:
        """Inductor current [A] (BoardError -241 if the channel is not wired)."""
        return self._corrected(self.query("MEAS:CURR?"), 1.0 / config.IIN_V_PER_A,
                               offset=-config.IIN_OFFSET_V / config.IIN_V_PER_A)

    def _corrected(self, value: float, per_pin_volt: float, gain: float = 1.0,
                   offset: float = 0.0) -> float:
        """A reading the board converted from a mean code, ``value = gain * code * vref /
        full_scale * per_pin_volt + offset``, DNL-corrected (the mean code recovered, corrected,
        converted back); unchanged without ``adc_dnl``."""
        if self._adc is None:
            return value
        scale = gain * config.ADC_VREF / config.ADC_FULL_SCALE * per_pin_volt
        code = (value - offset) / scale
        return float(self._adc.correct(code) * scale + offset)

    def _check_vout(self, volts: float | np.ndarray) -> None:
        if self.max_vout is not None and np.size(volts) and np.max(volts) > self.max_vout:
            self.output(False)
            raise BoardError(f"output {float(np.max(volts))!r} V above the host limit "
                             f"max_vout={float(self.max_vout)!r} V: output turned off", None,
                             "MEAS:VOLT?")

    # -- protection and calibration ----------------------------------------------------
    def set_ovp(self, volts: float) -> None:
        """Over-voltage trip level [V] (never above the host's ``max_vout``)."""
        if self.max_vout is not None and volts > self.max_vout:
            raise BoardError(f"OVP {float(volts)!r} V above the host limit max_vout="
                             f"{float(self.max_vout)!r} V", None, "PROT:OVP:LEV")
        self.send("PROT:OVP:LEV", float(volts))
        self._settings["PROT:OVP:LEV"] = (float(volts),)

    def set_watchdog(self, seconds: float) -> None:
        """Host watchdog [s]: the board turns the output off if no valid command arrives for
        this long while the output is on (0 disables it, refused while the output is on)."""
        self.send("SYST:WDOG:TIM", float(seconds))  # the guard refuses 0 with the output on
        self._settings["SYST:WDOG:TIM"] = (float(seconds),)

    def _arm_line(self) -> bytes:
        """The ``SYST:WDOG:TIM`` line sent before every output-on: the host's setting, else
        the board's own (read now), else DEFAULT_WATCHDOG; recorded as the host's setting
        (re-applied after a reset, reported by :attr:`armed_watchdog`)."""
        seconds = self._settings.get("SYST:WDOG:TIM", (0.0,))[0]
        if not _armed(seconds):
            seconds = self.query("SYST:WDOG:TIM?")
            if not _armed(seconds):
                seconds = DEFAULT_WATCHDOG
            self._settings["SYST:WDOG:TIM"] = (float(seconds),)
        return protocol.command("SYST:WDOG:TIM", float(seconds))

    @property
    def armed_watchdog(self) -> float:
        """The host watchdog [s] this driver set or armed on the board (0: none yet; the
        board then keeps its own setting)."""
        seconds = self._settings.get("SYST:WDOG:TIM", (0.0,))[0]
        return seconds if _armed(seconds) else 0.0

    @property
    def watchdog(self) -> float:
        """The board's host watchdog [s] (0: off)."""
        return self.query("SYST:WDOG:TIM?")

    def trip(self) -> str:
        """Latched trip: "NONE", "OVP" or "WDOG"."""
        return self.query("PROT:TRIP?")

    def clear_trip(self) -> None:
        self.send("PROT:CLE")

    def calibrate_vout(self, gain: float, offset: float) -> None:
        """``v = gain * v_divider + offset`` for MEAS:VOLT?, OVP, the PID and fetched volts."""
        self.send("CAL:VOUT", float(gain), float(offset))
        self._settings["CAL:VOUT"] = (float(gain), float(offset))
        self._cal = None

    @property
    def calibration(self) -> tuple[float, float]:
        gain, offset = self.query("CAL:VOUT?")
        self._cal = (gain, offset)
        return gain, offset

    # -- state checks --------------------------------------------------------------------
    def check(self, expect_on: bool | None = None) -> bool:
        """Query the output state; with ``expect_on`` True, an output found off raises
        :class:`TripError` (a latched OVP/WDOG trip) or :class:`BoardResetError` (no trip: the
        board was reset). Returns the output state."""
        with self._lock:
            on = bool(self.query("OUTP?"))
            self.output_state = on
            if on or not expect_on:
                return on
            cause = self.trip()
            if cause != "NONE":
                what = ("over-voltage protection" if cause == "OVP" else
                        "host watchdog (no command from the host for "
                        f"{self._settings.get('SYST:WDOG:TIM', ('?',))[0]} s)")
                raise TripError(f"the board tripped: {cause} ({what}); its output is off",
                                cause, "OUTP?")
            if self._settings_lost():
                self.stats["resets"] += 1
                self._restore_settings()
                self._next_index = None
                raise BoardResetError(f"{self.port_name}: the board was reset (settings lost, "
                                      f"output off; the host's protection settings were "
                                      f"re-applied)", command="OUTP?")
            raise BoardResetError(f"{self.port_name}: the output went off without a trip "
                                  f"(board reset?)", command="OUTP?")

    def hold(self, seconds: float, *, expect_on: bool | None = None,
             interval: float | None = None) -> None:
        """Wait ``seconds`` while keeping the link and the board's host watchdog alive: the
        output state is polled every ``interval`` (default 0.1 s, or a quarter of the
        watchdog if shorter), and :meth:`check` raises if it went off while ``expect_on``
        (default: the output was on when the wait began)."""
        if expect_on is None:
            expect_on = self.output_state is True
        if interval is None:
            wdog = self._settings.get("SYST:WDOG:TIM", (0.0,))[0]
            interval = min(0.1, wdog / 4) if wdog > 0 else 0.1
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(remaining, interval))
            self.check(expect_on)

    # -- streaming acquisition ---------------------------------------------------------
    def configure_acquisition(self, rate: float) -> float:
        """Set the stream's sample rate [Hz]; returns the rate the board really uses."""
        self.send("SENS:ADC:RATE", float(rate))
        return self.query("SENS:ADC:RATE?")

    def start_acquisition(self) -> None:
        """``INIT``: clear the board's buffer and start streaming (sample index from 0)."""
        self.send("INIT")
        self._next_index = 0

    def stop_acquisition(self) -> None:
        self.send("ABOR")

    def fetch(self, count: int | None = None, *, max_blocks: int = 64) -> Acquisition:
        """Everything unread (up to ``max_blocks`` blocks of ``count`` samples), as volts with
        board-clock times; lost samples (also between two fetches) appear in ``gaps``."""
        with self._lock:
            gain, offset = self._cal if self._cal is not None else self.calibration
            blocks = []
            limit = count if count is not None else config.FETCH_MAX
            for _ in range(max_blocks):
                payload = self.query("FETC:ADC?", *(() if count is None else (int(count),)))
                try:
                    block = protocol.decode_adc_block(payload)
                except protocol.ProtocolError as exc:
                    self.output_state = None
                    raise LinkError(f"{self.port_name}: garbled FETC:ADC? block ({exc})",
                                    command="FETC:ADC?") from None
                blocks.append(block)
                if block.count < limit:
                    break
            acq = _merge_blocks(blocks, gain, offset, self._next_index, self._adc)
            if acq.count:
                expected, first = self._next_index, int(acq.index[0])
                if expected is not None and first < expected:
                    self._next_index = None
                    raise BoardResetError(
                        f"{self.port_name}: the sample index went back to {first} (expected "
                        f"{expected}): the acquisition was restarted (board reset?)",
                        command="FETC:ADC?")
                self._next_index = int(acq.index[-1]) + 1
            return acq

    def send_marked(self, header: str, *args: Any) -> tuple[Acquisition, int]:
        """While streaming: send a set command and ``FETC:ADC?`` in one write, so the fetched
        samples end where the command took effect on the board. Returns (the samples fetched,
        the index of the first sample taken after the command). The error queue is checked
        afterwards (BoardError if the command was refused). Fetch first so that fewer than
        ``FETCH_MAX`` samples are pending, or the mark is late."""
        with self._lock:
            gain, offset = self._cal if self._cal is not None else self.calibration
            payload = self.pipeline((header, *args), ("FETC:ADC?",))[0]
            try:
                block = protocol.decode_adc_block(payload)
            except protocol.ProtocolError as exc:
                self.output_state = None
                raise LinkError(f"{self.port_name}: garbled FETC:ADC? block ({exc})",
                                command="FETC:ADC?") from None
            acq = _merge_blocks([block], gain, offset, self._next_index, self._adc)
            mark = block.first_index + block.count
            if self._next_index is not None:
                self._next_index = int(mark)
            _, data = self._exchange("SYST:ERR?")
            code, message = self._parse_error(data)
            if code != 0:
                self._raise(header, [(code, message), *self._drain_errors()], "refused")
            return acq, int(mark)

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


def _merge_blocks(blocks: list[protocol.AdcBlock], gain: float, offset: float,
                  expected: int | None = None, adc: AdcTransfer | None = None) -> Acquisition:
    """The blocks as one Acquisition; ``adc``: the transfer whose DNL the volts are corrected
    for (None: converted as the board converts)."""
    index = np.concatenate([b.indices for b in blocks]) if blocks else np.zeros(0, np.int64)
    codes = np.concatenate([b.codes for b in blocks]) if blocks else np.zeros(0, np.uint16)
    if adc is None:
        volts = (np.concatenate([b.volts(gain, offset) for b in blocks]) if blocks
                 else np.zeros(0))
    else:
        volts = _acq.code_to_volts(adc.correct(codes), config.ADC_VREF, config.ADC_FULL_SCALE,
                                   config.VOUT_DIVIDER, gain, offset)
    times_us = np.concatenate([b.times_us for b in blocks]) if blocks else np.zeros(0)
    gaps = []
    if expected is not None and index.size and index[0] > expected:
        gaps.append((int(expected), int(index[0] - expected)))
    if index.size > 1:
        jumps = np.flatnonzero(np.diff(index) != 1)
        gaps += [(int(index[j] + 1), int(index[j + 1] - index[j] - 1)) for j in jumps]
    period = blocks[-1].period_us * 1e-6 if blocks else 0.0
    last = blocks[-1] if blocks else None
    return Acquisition(index=index, t=times_us * 1e-6, volts=volts, codes=codes, gaps=gaps,
                       overflow=any(b.overflow for b in blocks),
                       ovp_tripped=any(b.ovp_tripped for b in blocks),
                       wdog_tripped=any(b.wdog_tripped for b in blocks),
                       running=bool(last and last.running), period=period)
