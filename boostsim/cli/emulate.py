"""``boostsim emulate``: the board emulator (:class:`firmware_bridge.emulator.Emulator`) on a
pseudo-terminal, with the conventions of every command: ``-q``, ``--json``, ``--debug``,
one-line errors, exit status 0 ok / 1 run-time error / 2 usage error.

The device path is the first line of stdout (with ``--json``: the ``port`` of the JSON summary
printed when the emulator stops; use ``--link PATH`` for a fixed name).
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from typing import Any

from .args import _Formatter, _int_at_least, _nonnegative, _positive_time, _type
from .context import CliError, Context

_EMULATE_EPILOG = """\
The board's firmware runs on a simulated converter advanced in real time; bench commands use
the device like a Pico (or start their own emulator with --port emu:).

examples:
  boostsim emulate --link /tmp/board        # then: boostsim bench sweep --port /tmp/board
  boostsim emulate --config board.toml --noise 0 --seed 1 --duration 60
  boostsim emulate --fault 5:stall:1 --fault 8:reset --console
  boostsim emulate --duration 10 --json     # a JSON summary with real-time figures at the end

"""


@_type
def _probability(text: str) -> float:
    from ..units import parse_si

    value = parse_si(text, name="probability")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be a probability in [0, 1], got {text!r}")
    return value


@_type
def _fault(text: str) -> tuple[float, str, Any]:
    from firmware_bridge.emulator import parse_fault

    try:
        return parse_fault(text)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None


def _emulator(ctx: Context):
    """The Emulator of the command line (not started); a bad board file is a CliError."""
    from firmware_bridge.emulator import Emulator

    a = ctx.args
    settings = {name: value for name, value in (
        ("noise_lsb", a.noise), ("seed", a.seed), ("serial", a.serial),
        ("firmware_path", a.firmware_config)) if value is not None}
    try:
        return Emulator(config=a.config, link=a.link, **settings)
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from None


def cmd_emulate(ctx: Context) -> int:
    from firmware_bridge.emulator import run_console

    a = ctx.args
    emu = _emulator(ctx)
    for at, kind, arg in a.fault:
        emu.schedule(at, kind, arg)
    stop = threading.Event()
    old = {s: signal.signal(s, lambda signum, frame: stop.set())
           for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        emu.start()
        # --duration and the CPU figures count from here: the board serves (the first start
        # in an environment also compiles the plant's loops, about a second).
        t0, cpu0 = time.monotonic(), time.process_time()
        if a.drop or a.corrupt:
            emu.faults(drop=a.drop, corrupt=a.corrupt)
        if not a.json:
            print(emu.port, file=ctx.stdout, flush=True)
        fw, p = emu.fw_config, emu.config.params
        if not a.quiet:
            link = f" (link {a.link})" if a.link else ""
            ctx.stderr.write(
                f"boostsim emulate: {fw.MAKER},{fw.MODEL},{emu.config.serial},{fw.FW_VERSION} "
                f"on {emu.port}{link}\n  converter vin={float(p.vin):g} V L={float(p.L):g} H "
                f"C={float(p.C):g} F R={float(p.R):g} ohm; PWM {fw.PWM_FREQ_DEFAULT:g} Hz; ADC "
                f"noise {emu.config.noise_lsb:g} LSB rms; Ctrl-C to stop\n")
            ctx.stderr.flush()
        if float(p.fsw) != float(fw.PWM_FREQ_DEFAULT):
            ctx.warn(f"the TOML fsw ({float(p.fsw):g} Hz) differs from the firmware's "
                     f"PWM_FREQ_DEFAULT: the board switches at what the firmware programs")
        if a.console:
            threading.Thread(target=run_console, args=(emu, stop), daemon=True).start()
        deadline = None if a.duration is None else t0 + a.duration
        while not stop.is_set() and emu.running:
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                break
            stop.wait(left)
        stats = emu.stats() if emu.running else None
        if stats is not None:  # the whole process: serving, protection timer, plant
            stats["process_cpu_s"] = time.process_time() - cpu0
    finally:
        emu.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
    ctx.emit_json({"command": "emulate", "port": emu.port, "link": a.link,
                   "seconds": time.monotonic() - t0, "resets": emu.resets,
                   "errors": emu.errors, "stats": stats})
    if emu.errors:
        raise CliError(f"the emulated board failed: {emu.errors[-1]}")
    return 0


def register(sub, base: argparse.ArgumentParser, board: argparse.ArgumentParser,
             files: argparse.ArgumentParser) -> None:
    """Add the ``emulate`` command to the subparsers ``sub`` (``base``: the shared output
    options; the board file here also takes an [emulator] table)."""
    from firmware_bridge.emulator import CONSOLE_HELP

    p = sub.add_parser("emulate", parents=[base], formatter_class=_Formatter,
                       help="emulate the bench board on a pseudo-terminal",
                       description="Emulate the bench board (its firmware on a simulated "
                                   "converter) on a pseudo-terminal. Prints the device path "
                                   "on the first line of stdout.",
                       epilog=_EMULATE_EPILOG + CONSOLE_HELP)
    g = p.add_argument_group("board")
    g.add_argument("--config", metavar="FILE",
                   help="board TOML: [converter] and optional [emulator] (default: the "
                        "built-in default board)")
    g.add_argument("--firmware-config", metavar="FILE",
                   help="the board's firmware config.py (default: the firmware's own)")
    g.add_argument("--serial", help="serial number reported by *IDN?")
    g.add_argument("--noise", type=_nonnegative("--noise"), metavar="LSB",
                   help="ADC noise per conversion, codes rms (default 1)")
    g.add_argument("--seed", type=_int_at_least(0, "--seed"), metavar="N",
                   help="random seed (noise, random faults)")
    g = p.add_argument_group("link and faults")
    g.add_argument("--link", metavar="PATH", help="also make a symbolic link PATH -> device")
    g.add_argument("--drop", type=_probability, metavar="P", help="per-byte drop probability")
    g.add_argument("--corrupt", type=_probability, metavar="P",
                   help="per-byte corruption probability")
    g.add_argument("--fault", type=_fault, action="append", default=[], metavar="AT:KIND[:ARG]",
                   help="scripted fault AT seconds after start, e.g. 5:stall:1, 8:reset, "
                        "3:load:inf, 4:vin:6, 2:blackout:1.5, 1:drop:0.01 (repeatable)")
    g.add_argument("--console", action="store_true",
                   help="read fault commands from stdin (see below)")
    g.add_argument("--duration", type=_positive_time("--duration"), metavar="TIME",
                   help="stop TIME after the board starts serving (default: run until "
                        "interrupted)")
    p.set_defaults(func=cmd_emulate)
