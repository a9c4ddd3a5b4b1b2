"""Opening the bench board for an experiment, the same way from the CLI and from a notebook.

What a port name means (a serial port, a pyserial URL, ``None`` to find the board by USB
VID:PID, or ``emu:`` for an emulated board started for the session), the host-side limits,
clearing a latched trip, the ``[board.calibration]`` of a board file, and closing with the
output off (with a warning when that cannot be confirmed).

Host code: the emulator is not imported here. For ``emu:`` the session calls the
``start_emulator`` factory its caller passes (``boostsim bench`` passes
:class:`firmware_bridge.emulator.Emulator`); anything with ``start()``, ``port`` and ``stop()``
will do.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .board import Board

__all__ = ["EMULATOR_PORTS", "BenchSession", "calibration_from_config", "connect",
           "is_emulator_port"]

#: Port names that mean "an emulated board started for this session".
EMULATOR_PORTS = ("emu:", "emu", "emulator")

Reporter = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def is_emulator_port(port: str | None) -> bool:
    """True when ``port`` asks for an emulated board (``emu:``, ``emu``, ``emulator``)."""
    return port is not None and port.lower() in EMULATOR_PORTS


def calibration_from_config(document: Mapping[str, Any], source: str
                            ) -> tuple[float, float] | None:
    """(gain, offset [V]) of the ``[board.calibration]`` table of a parsed board TOML document
    (``vout_gain`` default 1, ``vout_offset`` default 0), or None without one.

    Raises ValueError (naming ``source``) when they are not numbers or the table has other
    keys (a misspelt key would otherwise leave the board uncalibrated without a word)."""
    board = document.get("board")
    table = board.get("calibration") if isinstance(board, dict) else None
    if not table:
        return None
    unknown = sorted(set(table) - {"vout_gain", "vout_offset"})
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)} in [board.calibration]"
                         f" (known: vout_gain, vout_offset)")
    try:
        gain = float(table.get("vout_gain", 1.0))
        offset = float(table.get("vout_offset", 0.0))
    except (TypeError, ValueError):
        raise ValueError(f"{source}: [board.calibration] vout_gain and vout_offset must be "
                         f"numbers") from None
    return gain, offset


class BenchSession:
    """The board opened for one experiment (``with BenchSession(port, ...) as session:``,
    then ``session.board``); the output is off again when the block ends, however it ends.

    ``port``: serial port or pyserial URL, None to find the board by USB VID:PID, or one of
    :data:`EMULATOR_PORTS` to start an emulator with ``start_emulator()`` (stopped on exit).
    ``timeout`` [s], ``max_duty``, ``max_vout`` [V], ``watchdog`` [s], ``retries``,
    ``adc_dnl``: the :class:`~firmware_bridge.board.Board` options. ``clear_trip``: clear a
    latched OVP or watchdog trip first. ``calibration``: (gain, offset [V]) written with
    ``CAL:VOUT``. ``note``: progress messages; ``warn``: the warning when the output could not
    be confirmed off (default: a RuntimeWarning). Board errors propagate (after the output is
    turned off).
    """

    def __init__(self, port: str | None = None, *, timeout: float = 2.0,
                 max_duty: float | None = None, max_vout: float | None = None,
                 watchdog: float = 0.0, retries: int = 0, adc_dnl: str | None = "rp2040",
                 clear_trip: bool = False,
                 calibration: tuple[float, float] | None = None,
                 start_emulator: Callable[[], Any] | None = None,
                 note: Reporter = _quiet, warn: Reporter = _warn):
        self.port = port
        self.options = dict(timeout=timeout, max_duty=max_duty, max_vout=max_vout,
                            watchdog=watchdog, retries=retries, adc_dnl=adc_dnl)
        self.clear_trip = clear_trip
        self.calibration = calibration
        self.start_emulator = start_emulator
        self.note = note
        self.warn = warn
        self.board: Board | None = None
        self.emulator: Any = None

    @property
    def emulated(self) -> bool:
        """True when this session started an emulated board."""
        return self.emulator is not None

    def __enter__(self) -> BenchSession:
        port = self.port
        try:
            if is_emulator_port(port):
                if self.start_emulator is None:
                    raise ValueError(f"port {port!r} asks for an emulated board, but no "
                                     f"emulator was given (start_emulator)")
                self.emulator = self.start_emulator()
                self.emulator.start()
                port = self.emulator.port
                self.note(f"started an emulated board on {port}")
            self.board = Board(port, **self.options)
            self.board.__enter__()
            if self.clear_trip:
                trip = self.board.trip()
                if trip != "NONE":
                    self.board.clear_trip()
                    self.note(f"cleared a latched {trip} trip")
            if self.calibration is not None:
                gain, offset = self.calibration
                self.board.calibrate_vout(gain, offset)
                self.note(f"calibration from the configuration: gain {gain:g}, offset "
                          f"{offset:g} V")
        except BaseException:
            self._shutdown()
            raise
        return self

    def _shutdown(self) -> None:
        board, self.board = self.board, None
        if board is not None:
            board.__exit__(None, None, None)
            if board.output_state is not False:
                # What this driver armed on the board (the session's watchdog, or the
                # default it arms before any output-on), not the option it was given.
                wdog = board.armed_watchdog
                self.warn("could not confirm that the board's output is off" +
                          (f"; the host watchdog armed on it turns it off after {wdog:g} s "
                           f"without commands" if wdog else
                           "; CHECK THE BOARD (this session armed no host watchdog on it: "
                           "the board's own setting applies)"))
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._shutdown()
        return False


@contextlib.contextmanager
def connect(port: str | None = None, **options: Any) -> Iterator[Board]:
    """``with connect(port, max_duty=..., ...) as board:``: the :class:`BenchSession` of
    ``port`` and ``options``, yielding its open :class:`~firmware_bridge.board.Board`."""
    with BenchSession(port, **options) as session:
        yield session.board
