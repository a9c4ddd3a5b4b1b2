"""The ``boostsim`` command: parse the command line, call the library, print and write results.

Commands: ``sweep`` (duty/parameter grids, Monte-Carlo), ``simulate`` (switching waveforms,
open loop or under a host/board PID loop), ``steady`` (one operating point and its losses),
``tune`` (PID gains for a crossover and phase margin), ``bode`` (loop-gain Bode plot),
``config init|show``, ``bench ports|sweep|step|live|calibrate|identify`` (the bench board or its
emulator, each experiment beside the same simulation) and ``emulate`` (the board emulator on a
pseudo-terminal). ``boostsim CMD --help`` lists each command's options with examples.

Exit status: 0 success; 2 the command line could not be used (unknown option, malformed or
out-of-range value, argparse's own usage errors); 1 the inputs were read but the run failed
(unreadable or invalid configuration file, unreachable target, file not writable, ...).
Errors are one line on stderr, ``boostsim: error: ...``; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from .. import __version__, _interrupt
from . import bench, config, control, emulate, firmware, simulate, steady, sweep
from .args import _Formatter, _parents, _Parser
from .context import PROG, CliError, Context, _one_line, _UsageError

__all__ = ["build_parser", "main"]


_MAIN_EPILOG = """\
commands:
  sweep      duty-cycle / parameter sweeps and Monte-Carlo tolerance studies (steady state)
  simulate   exact switching simulation: waveforms, load and line steps, a PID loop
  steady     one operating point (given duty or target output voltage) and its losses
  tune       PID gains for a loop crossover and phase margin (predicted margins, overshoot)
  bode       loop-gain (or plant) Bode plot with crossover, phase and gain margins
  config     write the default board file (init) or show the effective configuration (show)
  bench      the bench board: ports, sweep, step, live (host PID loop), calibrate,
             identify
  emulate    emulate the bench board on a pseudo-terminal (for bench commands without hardware)
  firmware   copy the board firmware to a Pico (mpremote) or write its files to a folder

examples:
  boostsim sweep                              # default board, duty 0.05..0.85 -> sweep.csv, .png
  boostsim steady --vout 12                   # duty and losses for 12 V out
  boostsim tune --vref 12 --crossover 2k --out gains.toml --plot loop.png
  boostsim bode --vref 12 --crossover 2k --out bode.csv --plot bode.png
  boostsim simulate --vref 12 --tune --crossover 2k --start steady --load-step 10ms:R=24
  boostsim simulate --duty 0.6 --t-end 20m --load-step 10ms:R=24 --plot waves.png
  boostsim sweep --duty 0.6 --mc 10000 --tol L=20% C=10% r_on=30% --limit vout=11.5:12.5
  boostsim config init board.toml && boostsim sweep --config board.toml --set L=47u
  boostsim bench sweep --port /dev/ttyACM0 --duty 0.1:0.6:0.05 --fit r_L,v_f
  boostsim bench live --port emu: --vref 12 --kp 0.01 --ki 5 --slew 100 --duration 2 --compare

exit status: 0 ok, 1 run-time error (bad config file, unreachable target, ...), 2 usage error
"""


def build_parser() -> argparse.ArgumentParser:
    parents = _parents()
    base, board, files = parents["base"], parents["board"], parents["files"]
    parser = _Parser(prog=PROG, formatter_class=_Formatter, epilog=_MAIN_EPILOG,
                     description="boostsim: DC-DC boost converter simulator.")
    parser.add_argument("--version", action="version", version=f"boostsim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    for command in (sweep, simulate, control, steady, config, bench, firmware, emulate):
        command.register(sub, base, board, files)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    if _interrupt.release():  # Ctrl-C while the command was starting
        return 130
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if extra:
        print(f"{PROG}: error: unrecognized arguments: {' '.join(extra)} (see "
              f"'{_where(args)} --help')", file=sys.stderr)
        return 2
    if args.command is None:
        print(f"{PROG}: error: choose a command: sweep, simulate, steady, tune, bode, "
              f"config, bench, emulate, firmware (see '{PROG} --help')", file=sys.stderr)
        return 2
    if args.func is None:
        actions = {"config": "init or show", "firmware": "install or files",
                   "bench": "ports, sweep, step, live, calibrate or identify"}[args.command]
        print(f"{PROG}: error: choose an action: {actions} (see '{PROG} {args.command} "
              f"--help')", file=sys.stderr)
        return 2
    ctx = Context(args, argv)
    debug = getattr(args, "debug", False)
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        # Each warning at once, one line on stderr (not after the run: a hint such as "L =
        # 100 H is implausible" must survive the failure or Ctrl-C it explains).
        text = str(message)
        if text not in seen:
            seen.add(text)
            ctx.warn(text)

    try:
        with warnings.catch_warnings():
            # Surface the library's own warnings (e.g. a solver that did not converge) as
            # one line each; deprecation notices from dependencies are not for users.
            warnings.simplefilter("always")
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.filterwarnings("ignore", category=category)
            warnings.showwarning = show
            with ctx.outputs:
                status = args.func(ctx)
        return int(status or 0)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc} (see '{_where(args)} --help')", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = ctx.outputs.discarded
        print(f"{PROG}: interrupted" + (f"; not written: {', '.join(map(str, kept))}" if kept
                                        else ""), file=sys.stderr)
        return 130
    except (CliError, ValueError, OSError, RuntimeError) as exc:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        if debug:
            raise
        print(f"{PROG}: error: internal error: {type(exc).__name__}: {_one_line(exc)} (run "
              f"with --debug for the traceback)", file=sys.stderr)
        return 1


def _where(args: argparse.Namespace) -> str:
    """The (sub)command line whose --help to point at: ``boostsim bench live``."""
    words = [PROG, args.command or ""]
    for name in ("bench_command", "firmware_command", "config_command"):
        if getattr(args, name, None):
            words.append(getattr(args, name))
    return " ".join(w for w in words if w)
