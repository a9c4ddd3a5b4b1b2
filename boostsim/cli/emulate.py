"""``boostsim emulate``: the board emulator on a pseudo-terminal.

The emulator keeps its own command line (also ``python -m firmware_bridge.emulator``), so
:func:`boostsim.cli.main` hands it every argument after ``emulate`` unparsed (:func:`run`); the
subparser registered here only lists the command in ``boostsim --help``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .args import _Formatter
from .context import Context


def run(argv: Sequence[str]) -> int:
    """Run the emulator's own command line ``argv``; returns its exit status."""
    from firmware_bridge.emulator import main as emulate_main

    try:
        return int(emulate_main(list(argv)) or 0)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2


def _cmd_emulate(ctx: Context) -> int:
    """For users of :func:`boostsim.cli.build_parser` that parse ``emulate ...`` themselves."""
    return run(ctx.args.emulator_args)


def register(sub, base: argparse.ArgumentParser, board: argparse.ArgumentParser,
             files: argparse.ArgumentParser) -> None:
    """List ``emulate`` among the subcommands (its arguments are the emulator's own)."""
    p = sub.add_parser("emulate", add_help=False, formatter_class=_Formatter,
                       help="emulate the bench board on a pseudo-terminal",
                       description="Emulate the bench board (see 'boostsim emulate --help').")
    p.add_argument("emulator_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_emulate)
