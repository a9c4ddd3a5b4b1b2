"""What the bench actions share: their parent option groups (among them the connection and
safety options), the CLI's wrapper of :class:`firmware_bridge.session.BenchSession` (driver
errors as one-line errors), and the board's PID loop as a simulator controller (for
``simulate --vref``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from ...params import BoostParams
from ..args import _fraction, _int_at_least, _nonnegative, _positive, _type, _vout_value
from ..context import CliError, Context


@_type
def _port_text(text: str) -> str:
    if not text.strip():
        raise ValueError("--port: empty")
    return text.strip()


def _duty_limit_value(text: str) -> float:
    value = _fraction(text, "--max-duty")
    if not 0 < value < 1:
        raise ValueError(f"--max-duty must be in (0, 1), got {text!r}")
    return value


def connection_options() -> argparse.ArgumentParser:
    """The options of every bench action that talks to the board (port, limits, watchdog,
    timeouts), as a parent parser."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection and safety")
    g.add_argument("--port", type=_port_text, default=None, metavar="PATH|URL",
                   help="serial port, pyserial URL, or emu: (an emulator started here); "
                        "default: find the board by USB VID:PID")
    g.add_argument("--max-duty", type=_type(_duty_limit_value), default=None, metavar="D",
                   help="host-side duty ceiling")
    g.add_argument("--max-vout", type=_vout_value, default=None, metavar="V",
                   help="cap the board's over-voltage trip at V and stop above it")
    g.add_argument("--watchdog", type=_nonnegative("--watchdog"), default=1.0, metavar="S",
                   help="board's host watchdog [s] (default 1; 0: leave the board's setting)")
    g.add_argument("--timeout", type=_positive("--timeout", "s"), default=2.0, metavar="S",
                   help="answer timeout [s] (default 2)")
    g.add_argument("--retries", type=_int_at_least(0, "--retries"), default=2, metavar="N",
                   help="retries of a garbled or missing answer (default 2)")
    g.add_argument("--clear-trip", action="store_true",
                   help="clear a latched OVP/watchdog trip before starting")
    g.add_argument("--adc-dnl", choices=("rp2040", "ideal"), default="rp2040",
                   help="ADC non-linearity the readings are corrected for (default rp2040: "
                        "the Pico's errata table; ideal: none)")
    return common


@dataclass(frozen=True)
class BenchParents:
    """The option groups shared by the bench actions, as argparse parent parsers: the
    command-wide options, the board file, the output files, and the board connection and
    safety options (:func:`connection_options`). Each action takes the groups it needs."""

    base: argparse.ArgumentParser
    board: argparse.ArgumentParser
    files: argparse.ArgumentParser
    connection: argparse.ArgumentParser


def board_loop_controller(params: BoostParams, *, duty_max: float | None, **loop: Any
                          ) -> tuple[Any, int, float, float]:
    """The board's PID loop (its ADC, PWM and duty limit) as a simulator controller, for
    ``simulate --vref``: :func:`firmware_bridge.bench.host_loop_controller` with ``duty_max``
    defaulting to the firmware's limit. Returns (controller, every [periods], ts [s],
    duty_max)."""
    from firmware_bridge.bench import host_loop_controller
    from firmware_bridge.firmware import config as fw

    duty_max = fw.DUTY_LIMIT_DEFAULT if duty_max is None else duty_max
    controller, every, ts = host_loop_controller(params, duty_max=duty_max, **loop)
    return controller, every, ts, duty_max


class _BenchSession:
    """A bench command's :class:`firmware_bridge.session.BenchSession` (from its options and
    the board file's calibration), with driver errors as one-line CLI errors (exit status 1)."""

    def __init__(self, ctx: Context):
        from firmware_bridge.session import BenchSession, calibration_from_config

        a = ctx.args
        self.ctx = ctx
        document, self.source = ctx.document()
        try:
            calibration = calibration_from_config(document, self.source)
        except ValueError as exc:
            raise CliError(str(exc)) from None

        def start_emulator():
            from firmware_bridge.emulator import Emulator

            return Emulator(config=a.config) if a.config else Emulator()

        self.session = BenchSession(
            a.port, timeout=a.timeout, max_duty=a.max_duty, max_vout=a.max_vout,
            watchdog=a.watchdog, retries=a.retries, adc_dnl=a.adc_dnl,
            clear_trip=a.clear_trip,
            calibration=calibration, start_emulator=start_emulator, note=ctx.note,
            warn=ctx.warn)

    @property
    def board(self):
        return self.session.board

    @property
    def emulator(self):
        return self.session.emulator

    def __enter__(self) -> _BenchSession:
        from firmware_bridge.board import PICO_VID_PID, BoardError, BoardNotFound

        try:
            self.session.__enter__()
        except BoardNotFound as exc:
            wanted = f"{PICO_VID_PID[0]:04X}:{PICO_VID_PID[1]:04X}"
            if exc.found:
                raise CliError(f"several boards found (USB {wanted}): {', '.join(exc.found)}; "
                               f"choose one with --port") from None
            raise CliError(f"no board found (USB {wanted}): give --port /dev/ttyACM0 (see "
                           f"'boostsim bench ports'), or --port emu: for an emulated "
                           f"board") from None
        except BoardError as exc:
            raise CliError(str(exc)) from None
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        from firmware_bridge.board import BoardError

        self.session.__exit__(exc_type, exc, tb)
        if isinstance(exc, BoardError):
            raise CliError(str(exc)) from None
        return False

    def metadata(self, **extra: Any) -> dict[str, Any]:
        b = self.board
        return self.ctx.metadata(firmware=str(b.identity), port=b.port_name,
                                 emulated=self.session.emulated or None, config=self.source,
                                 **extra)


def bench_board(ctx: Context) -> BoostParams:
    """The --config board of a bench experiment: one converter (the bench has one), so
    per-lane parameter arrays are refused."""
    params = ctx.board()
    if params.n_lanes != 1:
        raise CliError("the bench compares one converter: no per-lane parameters")
    return params
