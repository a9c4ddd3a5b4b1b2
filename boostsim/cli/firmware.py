"""``boostsim firmware install|files``: put the MicroPython firmware on a Pico.
"""

from __future__ import annotations

import argparse
import shlex

from .args import (
    _Formatter,
    _Parser,
)
from .context import CliError, Context

# -- firmware -------------------------------------------------------------------------------

_FIRMWARE_EPILOG = """\
examples:
  boostsim firmware install --port /dev/ttyACM0
  boostsim firmware install --port COM3 --firmware-config my_config.py --dry-run
  boostsim firmware files --out pico_files/

A Pico already running the firmware must be started in safe mode to be re-flashed (jumper
GP22 to GND, then reset): see docs/FIRMWARE.md. mpremote: pip install mpremote.
"""


def cmd_firmware_install(ctx: Context) -> int:
    from firmware_bridge import flash

    try:
        command = flash.install(ctx.args.port, config=ctx.args.firmware_config,
                                dry_run=ctx.args.dry_run)
    except flash.FlashError as exc:
        raise CliError(str(exc)) from None
    if ctx.args.dry_run:
        print(shlex.join(command), file=ctx.stdout)
    else:
        ctx.print(f"firmware copied to {ctx.args.port} and the board reset")
    ctx.emit_json({"command": "firmware install", "port": ctx.args.port,
                   "mpremote": command, "dry_run": ctx.args.dry_run})
    return 0


def cmd_firmware_files(ctx: Context) -> int:
    from firmware_bridge import flash

    try:
        written = flash.stage(ctx.args.out, config=ctx.args.firmware_config)
    except flash.FlashError as exc:
        raise CliError(str(exc)) from None
    ctx.print(f"wrote {len(written)} files to {ctx.args.out}: "
              f"{', '.join(p.name for p in written)} (copy them to the Pico, main.py last)")
    ctx.emit_json({"command": "firmware files", "files": [str(p) for p in written]})
    return 0


def register(sub, base: argparse.ArgumentParser, board: argparse.ArgumentParser,
             files: argparse.ArgumentParser) -> None:
    """Add the ``firmware`` command to the subparsers ``sub`` (``base``, ``board``, ``files``:
    the shared option groups)."""
    p = sub.add_parser("firmware", formatter_class=_Formatter,
                       help="put the board firmware on a Raspberry Pi Pico",
                       description="Copy the MicroPython firmware (firmware_bridge/firmware/ "
                                   "plus boostsim/pid.py) to a Pico with mpremote, or write the "
                                   "files to a folder.", epilog=_FIRMWARE_EPILOG)
    fsub = p.add_subparsers(dest="firmware_command", metavar="ACTION", parser_class=_Parser)
    q = fsub.add_parser("install", parents=[base], formatter_class=_Formatter,
                        help="copy the firmware to the board with mpremote and reset it",
                        description="Copy the firmware to the board and reset it (mpremote).",
                        epilog=_FIRMWARE_EPILOG)
    q.add_argument("--port", required=True, metavar="PATH",
                   help="the Pico's serial port, e.g. /dev/ttyACM0 or COM3")
    q.add_argument("--firmware-config", metavar="FILE",
                   help="your board's config.py instead of the default (pins, divider, limits)")
    q.add_argument("--dry-run", action="store_true", help="print the mpremote command only")
    q.set_defaults(func=cmd_firmware_install)
    q = fsub.add_parser("files", parents=[base], formatter_class=_Formatter,
                        help="write the board's files to a folder (for Thonny or a drive)",
                        description="Write the files the board needs to a folder.",
                        epilog=_FIRMWARE_EPILOG)
    q.add_argument("--out", required=True, metavar="DIR", help="folder to write the files to")
    q.add_argument("--firmware-config", metavar="FILE",
                   help="your board's config.py instead of the default")
    q.set_defaults(func=cmd_firmware_files)
    p.set_defaults(func=None, config_parser=p)
