"""The ``boostsim`` command: parse the command line, call the library, print and write results.

Commands: ``sweep`` (duty/parameter grids, Monte-Carlo), ``simulate`` (switching waveforms),
``steady`` (one operating point and its losses), ``config init|show``. ``boostsim CMD --help``
lists each command's options with examples.

Exit status: 0 success; 2 the command line could not be used (unknown option, malformed or
out-of-range value, argparse's own usage errors); 1 the inputs were read but the run failed
(unreadable or invalid configuration file, unreachable target, file not writable, ...).
Errors are one line on stderr, ``boostsim: error: ...``; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import tomllib
import warnings
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .params import DEFAULT_BOARD_FILE, FIELDS, BoostParams
from .units import format_si, parse_si

__all__ = ["build_parser", "main"]

PROG = "boostsim"


class CliError(Exception):
    """A runtime error with a message meant for the user (exit status 1)."""


# -- argument types (errors here are usage errors: exit status 2) ---------------------------

def _type(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap a parser so that its ValueError becomes argparse's usage error (exit 2)."""
    def wrapped(text: str) -> Any:
        try:
            return fn(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    wrapped.__name__ = fn.__name__.lstrip("_")
    return wrapped


def _probe(name: str, value: Any) -> None:
    probe: dict[str, Any] = dict(vin=1.0, L=1.0, C=1.0, R=1.0, fsw=1.0)
    probe[name] = value
    BoostParams(**probe)


def _known() -> str:
    return ", ".join(BoostParams.field_names())


@_type
def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise ValueError(f"cannot read {text!r}: expected NAME=VALUE, e.g. L=47u")
    if name not in BoostParams.field_names():
        raise ValueError(f"unknown parameter {name!r}; known: {_known()}")
    _probe(name, value)
    return name, value


def _positive_time(what: str) -> Callable[[str], float]:
    @_type
    def parse(text: str) -> float:
        value = parse_si(text, name=what)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{what} must be a finite time > 0 [s], got {text!r}")
        return value
    return parse


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    @_type
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{what} must be an integer, got {text!r}") from None
        if value < minimum:
            raise ValueError(f"{what} must be >= {minimum}, got {value}")
        return value
    return parse


def _count(text: str) -> int:
    """Integers also as 1e6 / 100k."""
    try:
        return int(text)
    except ValueError:
        value = parse_si(text, name="count")
        if value != int(value):
            raise ValueError(f"expected a whole number, got {text!r}") from None
        return int(value)


@_type
def _mc_samples(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise ValueError(f"the number of samples must be >= 1, got {text!r}")
    return value


@_type
def _duty_value(text: str) -> float:
    value = parse_si(text, name="duty")
    if not (0 <= value < 1):
        raise ValueError(f"duty must be in [0, 1), got {text!r}")
    return value


@_type
def _vout_value(text: str) -> float:
    value = parse_si(text, name="vout")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"vout must be a finite voltage > 0 [V], got {text!r}")
    return value


def _duty_range(text: str) -> np.ndarray:
    from .sweep import parse_duty_range

    return parse_duty_range(text)


def _vout_range(text: str) -> np.ndarray:
    from .sweep import parse_value_range

    values = parse_value_range(text, "vout")
    if np.any(values <= 0):
        raise ValueError(f"vout targets must be > 0 [V], got {text!r}")
    return values


def _axis(text: str):
    from .sweep import parse_axis

    return parse_axis(text)


def _tolerance(text: str):
    from .sweep import parse_tolerance

    return parse_tolerance(text)


def _limit(text: str):
    from .sweep import parse_limit

    return parse_limit(text)


_STEP_NAMES = ("vin", "R", "i_load")


def _step_parser(allowed: tuple[str, ...], option: str) -> Callable[[str], Any]:
    @_type
    def parse(text: str):
        from .engine import Step

        when, sep, changes = text.partition(":")
        if not sep or not changes.strip():
            raise ValueError(f"cannot read {option} {text!r}: expected TIME:NAME=VALUE, e.g. "
                             f"10ms:R=24")
        t = parse_si(when, name=f"{option} time")
        if not (math.isfinite(t) and t >= 0):
            raise ValueError(f"{option} {text!r}: the time must be >= 0")
        values: dict[str, float] = {}
        for part in changes.split(","):
            name, eq, value = part.partition("=")
            name = name.strip()
            if not eq or name not in allowed:
                raise ValueError(f"cannot read {option} {text!r}: expected NAME=VALUE with "
                                 f"NAME one of {', '.join(allowed)}")
            number = parse_si(value, name=name)
            _probe(name, number)
            values[name] = number
        return Step(t, **values)
    return parse


# -- parser ---------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``boostsim: error: ...`` and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=100)


def _parents() -> dict[str, argparse.ArgumentParser]:
    base = argparse.ArgumentParser(add_help=False)
    g = base.add_argument_group("output control")
    g.add_argument("--json", action="store_true",
                   help="print a JSON summary on stdout (and nothing else there)")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="no tables, messages or progress bars (errors still go to stderr)")
    g.add_argument("--debug", action="store_true", help="show the traceback of errors")
    board = argparse.ArgumentParser(add_help=False)
    g = board.add_argument_group("board")
    g.add_argument("--config", metavar="FILE",
                   help="board TOML file ([converter] table; other tables are ignored); "
                        "default: the built-in default board (see 'boostsim config show')")
    g.add_argument("--set", dest="settings", metavar="NAME=VALUE", action="append",
                   type=_setting, default=[],
                   help="override a parameter, SI prefixes allowed (L=47u, fsw=200k, "
                        "R=inf, synchronous=true); repeatable")
    files = argparse.ArgumentParser(add_help=False)
    g = files.add_argument_group("files")
    g.add_argument("--out", metavar="FILE", help="write results to FILE (.csv, .json, .npz)")
    g.add_argument("--plot", metavar="FILE", help="write a figure to FILE (.png, .svg, .pdf)")
    return {"base": base, "board": board, "files": files}


_MAIN_EPILOG = """\
commands:
  sweep      duty-cycle / parameter sweeps and Monte-Carlo tolerance studies (steady state)
  simulate   exact switching simulation: waveforms, load and line steps
  steady     one operating point (given duty or target output voltage) and its losses
  config     write the default board file (init) or show the effective configuration (show)

examples:
  boostsim sweep                              # default board, duty 0.05..0.85 -> sweep.csv, .png
  boostsim steady --vout 12                   # duty and losses for 12 V out
  boostsim simulate --duty 0.6 --t-end 20m --load-step 10ms:R=24 --plot waves.png
  boostsim sweep --duty 0.6 --mc 10000 --tol L=20% C=10% r_on=30% --limit vout=11.5:12.5
  boostsim config init board.toml && boostsim sweep --config board.toml --set L=47u

exit status: 0 ok, 1 run-time error (bad config file, unreachable target, ...), 2 usage error
"""

_SWEEP_EPILOG = f"""\
With no options: the default board over duty {"0.05:0.85:0.01"}; prints a table and writes
sweep.csv and sweep.png in the current directory (--out/--plot choose other files,
--no-files writes only those given). The steady state of every point is solved exactly
(periodic steady state of the switching model); --transient simulates each point from rest
instead and measures the last periods (slower; 'converged' then means 'settled').

ranges:
  --duty 0.05:0.85:0.01       start:stop:step, stop included (within rounding); or 0.3,0.5; or 0.6
  --vout 6:20:0.5             target output voltages [V], same syntax; the duty of each point is
                              solved on the exact steady state (unreachable points are left empty)
  --sweep L=22u:220u:10       start:stop:COUNT points, linear; L=22u:220u:10:log (or --log) for
                              logarithmic; L=22u,47u,100u a list. Repeat --sweep for a grid
                              (product of all axes, duty first, the last axis varying fastest).
                              The duty axis is the default range unless --duty/--vout is given,
                              also with --sweep: add --duty 0.6 to sweep a parameter at one duty

Monte-Carlo (one operating point: a single --duty or --vout):
  --mc 10000 --tol L=20% C=10% r_on=30% --seed 1
                              uniform within nominal +- tolerance (--dist normal: the tolerance is
                              3 sigma, truncated at +- tolerance); absolute tolerances too
                              (vin=0.25 means +-0.25 V). With --vout the duty is solved once on
                              the nominal board and held for every sample (open loop). The same
                              --seed and --chunk-size give identical samples and results with any
                              --workers or --scheduler.
limits (--limit, repeatable; bounds inclusive; values take SI prefixes or %):
  vout=11.5:12.5   'ripple<0.1'   'efficiency>0.9'   il_peak=:1.5   efficiency=90%:
  names: vout (mean output voltage), ripple (output ripple, peak-to-peak, V), il (mean
  inductor current), il_peak (inductor current maximum), loss (conduction loss, W),
  eff/efficiency, or any numeric column (vout_min, il_rms, pout, efficiency_total, duty, ...).
  Quote limits containing < or > in the shell. A 'pass' column and the yield are reported.

files: the CSV has one row per point, units in the column names (vout_mean_V, L_H, R_ohm,
efficiency) and a '#' header (boostsim version, command, parameters, study). For millions of
points prefer --out FILE.npz (written in a fraction of the CSV time).

examples:
  boostsim sweep
  boostsim sweep --duty 0.3:0.7:0.05 --set L=47u --out l47.csv --plot l47.png
  boostsim sweep --sweep L=22u:220u:8:log              # vout etc. vs duty, one curve per L
  boostsim sweep --duty 0.6 --sweep L=10u:200u:40 --sweep R=10:200:40   # colour maps
  boostsim sweep --vout 12 --sweep R=12:240:20          # duty needed for 12 V vs load
  boostsim sweep --vout 12 --mc 10000 --tol L=20% C=10% r_on=30% --seed 1 \\
      --limit vout=11.5:12.5 --limit 'ripple<0.1' --limit 'efficiency>0.9'
  boostsim sweep --duty 0.2:0.8:0.1 --transient --t-end 30m
  boostsim sweep --duty 0.6 --mc 1000000 --tol L=20% --out mc.npz --scheduler tcp://host:8786
"""

_SIMULATE_EPILOG = """\
Simulates the switching converter exactly (closed-form segments, no time-step error) from rest
(--start zero, the default) or from its periodic steady state (--start steady), open loop at
a constant --duty. Prints the metrics of the last periods; --out writes the waveforms (t_s,
il_A, vc_V, vout_V; .csv, .npz or .json), --plot draws iL, vout and the switch state with a
zoom on the last periods.

steps (repeatable; several changes at one time separated by commas):
  --load-step 10ms:R=24        load resistance (or i_load, the constant-current load [A])
  --step 10ms:vin=4.5          any of vin, R, i_load

examples:
  boostsim simulate --duty 0.6
  boostsim simulate --duty 0.6 --t-end 20m --dt 100n --out waves.csv --plot waves.png
  boostsim simulate --duty 0.6 --start steady --t-end 10m --load-step 2ms:R=24 --plot step.png
  boostsim simulate --duty 0.6 --step 10ms:vin=4.5 --step 15ms:vin=5,R=96 --out waves.npz
"""

_STEADY_EPILOG = """\
The periodic steady state of the switching converter at one duty, or at the duty that gives a
target mean output voltage (a first guess from the lossy averaged CCM model, then solved on the
exact steady state; an error if the target is out of reach). Prints the operating point and
the loss breakdown in W and % of the input power; --out writes one row (.csv) or everything
(.json: figures, losses, one period of waveform), --plot draws one period and the losses.

examples:
  boostsim steady --duty 0.6
  boostsim steady --vout 12 --set L=47u --plot op.png
  boostsim steady --vout 12 --json > op.json     # duty, figures and losses for scripts
"""

_CONFIG_EPILOG = """\
examples:
  boostsim config init                         # writes board.toml (the default board, commented)
  boostsim config init my_board.toml --force   # overwrite an existing file
  boostsim config show --config my_board.toml --set L=47u
  boostsim config show --json
"""


def build_parser() -> argparse.ArgumentParser:
    parents = _parents()
    base, board, files = parents["base"], parents["board"], parents["files"]
    parser = _Parser(prog=PROG, formatter_class=_Formatter, epilog=_MAIN_EPILOG,
                     description="boostsim: DC-DC boost converter simulator.")
    parser.add_argument("--version", action="version", version=f"boostsim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    # sweep
    p = sub.add_parser("sweep", parents=[base, board, files], formatter_class=_Formatter,
                       help="duty / parameter sweeps and Monte-Carlo studies",
                       description="Sweep the duty cycle, parameters or a Monte-Carlo draw "
                                   "of tolerances; steady state of every point.",
                       epilog=_SWEEP_EPILOG)
    g = p.add_argument_group("points")
    op = g.add_mutually_exclusive_group()
    op.add_argument("--duty", type=_type(_duty_range), metavar="RANGE",
                    help="duty values: start:stop:step, a,b,c or one value "
                         "(default 0.05:0.85:0.01)")
    op.add_argument("--vout", type=_type(_vout_range), metavar="RANGE",
                    help="target output voltages [V] instead of duties (duty solved per point)")
    g.add_argument("--sweep", dest="axes", action="append", type=_type(_axis), default=[],
                   metavar="NAME=START:STOP:COUNT[:log]",
                   help="sweep a parameter (also NAME=a,b,c); repeat for a grid")
    g.add_argument("--log", action="store_true", help="make every --sweep range logarithmic")
    g = p.add_argument_group("Monte-Carlo")
    g.add_argument("--mc", type=_mc_samples, metavar="N", help="number of Monte-Carlo samples")
    g.add_argument("--tol", action="extend", nargs="+", type=_type(_tolerance), default=None,
                   metavar="NAME=TOL", help="tolerances: L=20%% (relative) or vin=0.25 "
                   "(absolute, in the parameter's unit); also duty=1%%")
    g.add_argument("--dist", choices=("uniform", "normal"), default=None,
                   help="sample distribution (default uniform; normal: tol = 3 sigma)")
    g.add_argument("--seed", type=_int_at_least(0, "--seed"), default=None,
                   help="random seed (default 0: runs are reproducible)")
    g.add_argument("--limit", dest="limits", action="append", type=_type(_limit), default=[],
                   metavar="SPEC", help="pass/fail limit, e.g. vout=11.5:12.5, 'ripple<0.1' "
                   "(repeatable; see below)")
    g = p.add_argument_group("solver")
    g.add_argument("--transient", action="store_true",
                   help="simulate every point from rest instead of solving the steady state")
    g.add_argument("--t-end", type=_positive_time("--t-end"), default=None, metavar="TIME",
                   help="--transient: simulated time per point (default 20m)")
    g.add_argument("--last-periods", type=_int_at_least(1, "--last-periods"), default=20,
                   metavar="N", help="--transient: periods measured at the end (default 20)")
    g = p.add_argument_group("execution")
    g.add_argument("--workers", type=_int_at_least(1, "--workers"), default=None, metavar="N",
                   help=f"local worker processes (default: all cores, {os.cpu_count()} here)")
    g.add_argument("--chunk-size", type=_int_at_least(1, "--chunk-size"), default=10_000,
                   metavar="N", help="points per chunk (bounds memory; default 10000)")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the chunks on a Dask distributed cluster, e.g. tcp://host:8786 "
                        "(needs dask[distributed]; same results as local)")
    g.add_argument("--no-files", action="store_true",
                   help="do not write the default sweep.csv / sweep.png (--out/--plot still "
                        "written)")
    p.set_defaults(func=cmd_sweep)

    # simulate
    p = sub.add_parser("simulate", parents=[base, board, files], formatter_class=_Formatter,
                       help="switching waveforms, load and line steps",
                       description="Exact switching simulation of the converter.",
                       epilog=_SIMULATE_EPILOG)
    g = p.add_argument_group("simulation")
    g.add_argument("--duty", type=_duty_value, metavar="D", help="open-loop duty in [0, 1)")
    g.add_argument("--t-end", type=_positive_time("--t-end"), default=20e-3, metavar="TIME",
                   help="simulated time (default 20m = 20 ms)")
    g.add_argument("--dt", type=_positive_time("--dt"), default=None, metavar="TIME",
                   help="output sample step (default: period/50); results do not depend on it")
    g.add_argument("--start", choices=("zero", "steady"), default="zero",
                   help="initial state: zero (power-up, default) or the periodic steady state")
    g.add_argument("--step", dest="steps", action="append", default=[],
                   type=_step_parser(_STEP_NAMES, "--step"), metavar="TIME:NAME=VALUE",
                   help="line/load step, e.g. 10ms:vin=4.5 (repeatable)")
    g.add_argument("--load-step", dest="load_steps", action="append", default=[],
                   type=_step_parser(("R", "i_load"), "--load-step"), metavar="TIME:R=VALUE",
                   help="load step, e.g. 10ms:R=24 or 10ms:i_load=0.1 (repeatable)")
    g.add_argument("--last-periods", type=_int_at_least(1, "--last-periods"), default=20,
                   metavar="N", help="periods measured at the end (default 20)")
    g.add_argument("--zoom-periods", type=_int_at_least(1, "--zoom-periods"), default=4,
                   metavar="N", help="periods in the plot's zoom panel (default 4)")
    p.set_defaults(func=cmd_simulate)

    # steady
    p = sub.add_parser("steady", parents=[base, board, files], formatter_class=_Formatter,
                       help="one operating point and its losses",
                       description="Periodic steady state at one duty or target output voltage.",
                       epilog=_STEADY_EPILOG)
    g = p.add_argument_group("operating point").add_mutually_exclusive_group()
    g.add_argument("--duty", type=_duty_value, metavar="D", help="duty in [0, 1)")
    g.add_argument("--vout", type=_vout_value, metavar="V",
                   help="target mean output voltage [V]: find the duty")
    p.add_argument("--points", type=_int_at_least(2, "--points"), default=400, metavar="N",
                   help="waveform samples over the period (default 400)")
    p.set_defaults(func=cmd_steady)

    # config
    p = sub.add_parser("config", formatter_class=_Formatter, help="board configuration files",
                       description="Board configuration files (TOML).", epilog=_CONFIG_EPILOG)
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", parser_class=_Parser)
    q = csub.add_parser("init", parents=[base], formatter_class=_Formatter,
                        help="write the default board file (with its comments)",
                        description="Write the built-in default board file, comments kept.",
                        epilog=_CONFIG_EPILOG)
    q.add_argument("path", nargs="?", default="board.toml", metavar="PATH",
                   help="file to write (default board.toml)")
    q.add_argument("--force", action="store_true", help="overwrite an existing file")
    q.set_defaults(func=cmd_config_init)
    q = csub.add_parser("show", parents=[base, board], formatter_class=_Formatter,
                        help="print the effective configuration (after --config and --set)",
                        description="Print the effective configuration as TOML.",
                        epilog=_CONFIG_EPILOG)
    q.add_argument("--out", metavar="FILE",
                   help="also write it to FILE (.toml, or .json for JSON)")
    q.set_defaults(func=cmd_config_show)
    p.set_defaults(func=None, config_parser=p)
    return parser


# -- running a command ----------------------------------------------------------------------

class Context:
    """What a command needs besides its arguments: the board, printing, progress."""

    def __init__(self, args: argparse.Namespace, argv: Sequence[str]):
        self.args = args
        self.command_line = shlex.join([PROG, *argv])
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        self._board: tuple[BoostParams, dict[str, Any], str] | None = None

    # printing
    @property
    def human(self) -> bool:
        """Tables and messages go to stdout (not with --json or --quiet)."""
        return not (self.args.json or self.args.quiet)

    def print(self, text: str = "") -> None:
        if self.human:
            print(text, file=self.stdout)

    @property
    def progress(self) -> bool:
        return not self.args.quiet and self.stderr.isatty()

    def warn(self, message: str) -> None:
        if not self.args.quiet:
            print(f"{PROG}: warning: {message}", file=self.stderr)

    def emit_json(self, document: Any) -> None:
        if self.args.json:
            from .outputs import write_json

            write_json(self.stdout, document)

    # the board
    def board(self) -> BoostParams:
        return self._load()[0]

    def document(self) -> tuple[dict[str, Any], str]:
        _, doc, source = self._load()
        return doc, source

    def _load(self) -> tuple[BoostParams, dict[str, Any], str]:
        if self._board is None:
            path = getattr(self.args, "config", None)
            if path:
                try:
                    text = Path(path).read_text(encoding="utf-8")
                except OSError as exc:
                    raise CliError(f"cannot read configuration {path!r}: "
                                   f"{exc.strerror or exc}") from None
                except UnicodeDecodeError:
                    raise CliError(f"cannot read configuration {path!r}: not a text "
                                   f"file") from None
                source = path
            else:
                text = _default_board_text()
                source = "built-in default board"
            try:
                document = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise CliError(f"{source}: not valid TOML: {exc}") from None
            params = BoostParams.from_toml(text, source=source)
            settings = dict(getattr(self.args, "settings", []) or [])
            if settings:
                try:
                    params = params.replace(**settings)
                except ValueError as exc:
                    raise CliError(f"--set: {exc}") from None
            self._board = (params, document, source)
        return self._board

    def metadata(self, **extra: Any) -> dict[str, Any]:
        from .outputs import metadata

        params = self.board() if hasattr(self.args, "settings") else None
        return metadata(self.command_line, params, **extra)


def _default_board_text() -> str:
    return resources.files("boostsim").joinpath("data", DEFAULT_BOARD_FILE).read_text("utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.command is None:
        print(f"{PROG}: error: choose a command: sweep, simulate, steady, config (see "
              f"'{PROG} --help')", file=sys.stderr)
        return 2
    if args.func is None:
        print(f"{PROG}: error: choose an action: init or show (see '{PROG} config --help')",
              file=sys.stderr)
        return 2
    ctx = Context(args, argv)
    debug = getattr(args, "debug", False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            # Surface the library's own warnings (e.g. a solver that did not converge) as
            # one line each; deprecation notices from dependencies are not for users.
            warnings.simplefilter("always")
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.filterwarnings("ignore", category=category)
            status = args.func(ctx)
        seen = set()
        for w in caught:
            text = str(w.message)
            if text not in seen:
                seen.add(text)
                ctx.warn(text)
        return int(status or 0)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc} (see '{PROG} {args.command} --help')", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
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


class _UsageError(Exception):
    """A combination of options that cannot be used together (exit status 2)."""


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# -- shared output helpers ------------------------------------------------------------------

def _table(headers: Sequence[str], rows: Sequence[Sequence[str]],
           right: Sequence[bool] | None = None) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    right = right or [True] * len(headers)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out)


def _fmt(value: Any, spec: str) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return "-"
    text = format(v, spec)
    if text.startswith("-") and not any(c in "123456789" for c in text):
        text = text[1:]  # no "-0.0000"
    return text


def _unit(name: str) -> str:
    unit = FIELDS[name].unit if name in FIELDS else ""
    return "Ω" if unit == "ohm" else unit


def _si(value: float, name: str) -> str:
    return format_si(float(value), _unit(name), digits=4)


def _write_plot(ctx: Context, fig, path: str) -> None:
    from .plots import save

    try:
        save(fig, path)
    except OSError as exc:
        raise CliError(f"cannot write plot {path!r}: {exc.strerror or exc}") from None


def _write_columns(ctx: Context, path: str, columns: dict[str, np.ndarray],
                   meta: dict[str, Any], summary: Any = None) -> None:
    from .outputs import write_columns

    try:
        write_columns(path, columns, meta, summary, progress=ctx.progress)
    except OSError as exc:
        raise CliError(f"cannot write {path!r}: {exc.strerror or exc}") from None


def _check_writable(path: str | None, kinds: Sequence[str], what: str) -> None:
    """Fail early (before a long run) on an unknown extension or a missing directory."""
    if not path:
        return
    suffix = Path(path).suffix.lower()
    if suffix not in kinds:
        raise _UsageError(f"{what} {path!r}: unknown extension {suffix or '(none)'!r} (use "
                          f"{', '.join(kinds)})")
    parent = Path(path).parent
    if not parent.is_dir():
        raise CliError(f"cannot write {path!r}: directory {str(parent)!r} does not exist")


_DATA_KINDS = (".csv", ".json", ".npz")
_PLOT_KINDS = (".png", ".svg", ".pdf")


# -- sweep ----------------------------------------------------------------------------------

def cmd_sweep(ctx: Context) -> int:
    from .sweep import DEFAULT_DUTY_RANGE, MonteCarlo, Sweep, Transient, parse_duty_range, run_sweep

    a = ctx.args
    mc = None
    if a.mc is None:
        for name, value in (("--tol", a.tol), ("--dist", a.dist), ("--seed", a.seed)):
            if value is not None:
                raise _UsageError(f"{name} needs --mc N (the number of Monte-Carlo samples)")
    else:
        if not a.tol:
            raise _UsageError("--mc needs tolerances, e.g. --tol L=20% C=10%")
        if a.axes:
            raise _UsageError("--mc runs at one operating point: it cannot be combined with "
                              "--sweep")
        if a.duty is None and a.vout is None:
            raise _UsageError("--mc needs one operating point: give --duty D or --vout V")
        op = a.duty if a.duty is not None else a.vout
        if op.size != 1:
            raise _UsageError(f"--mc needs one operating point, got {op.size} "
                              f"{'duties' if a.duty is not None else 'vout targets'}")
        mc = MonteCarlo(a.mc, tuple(a.tol), seed=a.seed or 0, dist=a.dist or "uniform")
    if (a.t_end is not None) and not a.transient:
        raise _UsageError("--t-end needs --transient")
    if a.log:
        from .sweep import Axis

        for axis in a.axes:
            if np.any(axis.values <= 0):
                raise _UsageError(f"--log: {axis.name} values must be > 0")
        a.axes = [_relog(axis, Axis) for axis in a.axes]
    default_files = not a.no_files
    out = a.out or ("sweep.csv" if default_files else None)
    plot = a.plot or ("sweep.png" if default_files else None)
    _check_writable(out, _DATA_KINDS, "--out")
    _check_writable(plot, _PLOT_KINDS, "--plot")
    params = ctx.board()
    duty = a.duty if (a.duty is not None or a.vout is not None) else \
        parse_duty_range(DEFAULT_DUTY_RANGE)
    transient = Transient(a.t_end or 20e-3, a.last_periods) if a.transient else None
    sweep = Sweep(params, duty=None if a.vout is not None else duty, vout=a.vout,
                  axes=tuple(a.axes), mc=mc, transient=transient)
    result = run_sweep(sweep, limits=a.limits, workers=a.workers, chunk_size=a.chunk_size,
                       scheduler=a.scheduler, progress=ctx.progress)
    summary = _sweep_summary(result)
    meta = ctx.metadata(study=sweep.describe(),
                        limits=[lim.text for lim in a.limits] or None)
    files: dict[str, str] = {}
    if out:
        _write_columns(ctx, out, result.columns, meta, summary)
        files["data"] = out
    if plot:
        from .plots import monte_carlo_figure, sweep_figure

        fig = monte_carlo_figure(result) if mc is not None else sweep_figure(result)
        _write_plot(ctx, fig, plot)
        files["plot"] = plot
    summary["files"] = files
    if ctx.human:
        ctx.print(_monte_carlo_text(result) if mc is not None else _sweep_text(result))
        if files:
            ctx.print("wrote " + ", ".join(files.values()))
    ctx.emit_json(summary)
    bad = int((~result.columns["converged"].astype(bool)).sum())
    if bad:
        what = "did not settle" if transient else "did not converge"
        ctx.warn(f"{bad} of {result.n_points} points {what} (their figures are empty)")
    return 0


def _relog(axis, Axis):
    if axis.log or axis.values.size < 3:
        return Axis(axis.name, axis.values, True)
    v = axis.values
    if np.allclose(np.diff(v), v[1] - v[0], rtol=1e-9, atol=0):
        return Axis(axis.name, np.geomspace(v[0], v[-1], v.size), True)
    return Axis(axis.name, v, True)


def _stats(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {k: math.nan for k in ("mean", "std", "min", "p1", "p50", "p99", "max")}
    p1, p50, p99 = np.percentile(v, [1, 50, 99])
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "p1": float(p1), "p50": float(p50), "p99": float(p99), "max": float(v.max())}


def _sweep_summary(result) -> dict[str, Any]:
    sweep = result.sweep
    cols = result.columns
    converged = cols["converged"].astype(bool)
    out: dict[str, Any] = {"command": "sweep", "points": result.n_points,
                           "seconds": round(result.seconds, 4), "study": sweep.describe(),
                           "parameters": sweep.base.to_dict(),
                           "not_converged": int((~converged).sum())}
    if sweep.mc is not None:
        if result.nominal_duty is not None:
            out["nominal_duty"] = result.nominal_duty
        out["statistics"] = {k: _stats(cols[k][converged]) for k in (
            "vout_mean", "vout_ripple", "efficiency", "efficiency_total", "il_max", "il_rms",
            "p_loss")}
        out["modes"] = {m: int((cols["mode"] == m).sum()) for m in ("CCM", "DCM")}
    else:
        vout = cols["vout_mean"]
        eff = cols["efficiency"]
        out["vout_mean"] = _stats(vout)
        out["efficiency"] = _stats(eff)
        if np.isfinite(eff).any():
            i = int(np.nanargmax(eff))
            out["best_efficiency"] = {name: _plain(cols[name][i]) for name in
                                      [*sweep.input_names(), "duty", "vout_mean",
                                                       "efficiency"]}
        out["modes"] = {m: int((cols["mode"] == m).sum()) for m in ("CCM", "DCM")}
    if result.limits:
        out["yield"] = result.yield_summary()
    return out


def _seconds(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _pick_rows(n: int, limit: int = 100, shown: int = 21) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, shown).round().astype(int))


def _sweep_text(result) -> str:
    sweep = result.sweep
    cols = result.columns
    n = result.n_points
    rows_idx = _pick_rows(n)
    inputs = [a.name for a in sweep.grid_axes if a.values.size > 1 or a.name == "duty"]
    if sweep.target == "vout" and "duty" not in inputs:
        inputs.insert(1, "duty")
    if sweep.target == "vout" and "vout_target" not in inputs:
        inputs.insert(0, "vout_target")
    headers, right = [], []
    for name in inputs:
        headers.append({"duty": "duty", "vout_target": "target [V]"}.get(
            name, f"{name} [{_unit(name)}]" if _unit(name) else name))
    headers += ["vout [V]", "ripple [mV]", "iL [A]", "iL peak [A]", "eff [%]", "mode"]
    has_pass = "pass" in cols
    if has_pass:
        headers.append("pass")
    rows = []
    for i in rows_idx:
        row = []
        for name in inputs:
            v = cols[name][i]
            if name == "duty":
                row.append(_fmt(v, ".4f" if sweep.target == "vout" else ".3f"))
            elif name == "vout_target":
                row.append(_fmt(v, ".3g"))
            else:
                row.append(_si(v, name))
        row += [_fmt(cols["vout_mean"][i], ".3f"), _fmt(cols["vout_ripple"][i] * 1e3, ".2f"),
                _fmt(cols["il_mean"][i], ".3f"), _fmt(cols["il_max"][i], ".3f"),
                _fmt(cols["efficiency"][i] * 100, ".2f"), str(cols["mode"][i] or "-")]
        if has_pass:
            row.append("yes" if cols["pass"][i] else "NO")
        rows.append(row)
    right = [True] * len(headers)
    right[headers.index("mode")] = False
    text = [_title_line(sweep), _table(headers, rows, right)]
    if rows_idx.size < n:
        text.append(f"(showing {rows_idx.size} of {n} points; all are in the --out file)")
    text.append(_sweep_footer(result))
    return "\n".join(text)


def _title_line(sweep) -> str:
    from .plots import board_text

    axes = ", ".join(f"{a.name} {a.values.size}" for a in sweep.grid_axes if a.values.size > 1)
    how = "transient" if sweep.transient else "steady state"
    return f"boostsim sweep: {board_text(sweep.base)} · {sweep.n_points} points" + \
        (f" ({axes})" if axes else "") + f" · {how}"


def _sweep_footer(result) -> str:
    cols = result.columns
    parts = [f"{result.n_points} points in {_seconds(result.seconds)}"]
    eff = cols["efficiency"]
    if np.isfinite(eff).any():
        i = int(np.nanargmax(eff))
        where = [a.name for a in result.sweep.grid_axes if a.values.size > 1] or ["duty"]
        if "duty" not in where:
            where.append("duty")
        at = ", ".join(f"duty {cols['duty'][i]:.3f}" if n == "duty" else
                       f"{n} {_fmt(cols[n][i], '.4g')} V" if n == "vout_target" else
                       f"{n} {_si(cols[n][i], n)}" for n in where)
        parts.append(f"best efficiency {eff[i] * 100:.2f} % at {at}")
    dcm = int((cols["mode"] == "DCM").sum())
    if dcm:
        parts.append(f"{dcm} in DCM")
    lines = [" · ".join(parts)]
    if result.limits:
        y = result.yield_summary()
        lines.append(f"limits ({', '.join(lim.text for lim in result.limits)}): {y['pass']} of "
                     f"{y['points']} points pass")
    unreachable = int(np.isnan(cols["duty"]).sum()) if result.sweep.target == "vout" else 0
    if unreachable:
        lines.append(f"{unreachable} targets are out of reach (empty rows)")
    return "\n".join(lines)


def _monte_carlo_text(result) -> str:
    from .plots import board_text

    sweep, cols = result.sweep, result.columns
    mc = sweep.mc
    converged = cols["converged"].astype(bool)
    lines = [f"boostsim Monte-Carlo: {mc.samples} samples, {mc.dist}, seed {mc.seed}, "
             f"{', '.join(t.describe() for t in mc.tolerances)}",
             f"board: {board_text(sweep.base)}"]
    if sweep.vout is not None:
        lines.append(f"operating point: duty {result.nominal_duty:.4f} (gives "
                     f"{sweep.vout[0]:g} V on the nominal board; held for every sample)")
    else:
        lines.append(f"operating point: duty {sweep.duty[0]:g}")
    headers = ["figure", "mean", "std", "min", "1 %", "median", "99 %", "max"]
    rows = []
    for name, label, scale, spec in (("vout_mean", "vout [V]", 1, ".4f"),
                                     ("vout_ripple", "ripple [mV]", 1e3, ".3f"),
                                     ("il_mean", "iL mean [A]", 1, ".4f"),
                                     ("il_max", "iL peak [A]", 1, ".4f"),
                                     ("efficiency", "efficiency [%]", 100, ".3f")):
        s = _stats(cols[name][converged] * scale)
        rows.append([label, *(_fmt(s[k], spec) for k in ("mean", "std", "min", "p1", "p50",
                                                          "p99", "max"))])
    lines.append(_table(headers, rows, [False] + [True] * 7))
    dcm = int((cols["mode"] == "DCM").sum())
    lines.append(f"{mc.samples} samples in {_seconds(result.seconds)} · {dcm} in DCM · "
                 f"{int((~converged).sum())} not converged")
    if result.limits:
        y = result.yield_summary()
        for text, info in y["limits"].items():
            lines.append(f"  {text:<24} {info['pass']:>9} pass  ({info['fraction'] * 100:.2f} %)")
        lo, hi = y["yield_ci95"]
        lines.append(f"yield: {y['yield'] * 100:.2f} % ({y['pass']} of {y['points']}; 95 % "
                     f"confidence {lo * 100:.2f} .. {hi * 100:.2f} %)")
    return "\n".join(lines)


# -- simulate -------------------------------------------------------------------------------

def _open_loop(ctx: Context) -> dict[str, Any]:
    """How the switch is driven: open loop at --duty. (Closed-loop control adds its options
    and another branch here.)"""
    if ctx.args.duty is None:
        raise _UsageError("give the open-loop duty, e.g. --duty 0.6")
    return {"duty": ctx.args.duty}


def cmd_simulate(ctx: Context) -> int:
    from .engine import simulate

    a = ctx.args
    drive = _open_loop(ctx)
    _check_writable(a.out, _DATA_KINDS, "--out")
    _check_writable(a.plot, _PLOT_KINDS, "--plot")
    params = ctx.board()
    steps = sorted([*a.steps, *a.load_steps], key=lambda s: s.t)
    for step in steps:
        if step.t >= a.t_end:
            ctx.warn(f"a step at {step.t:g} s is not before --t-end {a.t_end:g} s: no effect")
    x0 = None
    if a.start == "steady":
        from .steady import steady_state

        state = steady_state(params, drive["duty"], points=1)
        x0 = (state.il_start, state.vc_start)
    dt = a.dt
    n_t = int(a.t_end / (dt or (1 / params.fsw / 50))) + 1
    if n_t > 50_000_000:
        raise CliError(f"{n_t} output samples: too many; raise --dt or shorten --t-end")
    periods = math.ceil(a.t_end * params.fsw - 1e-9)
    if periods < a.last_periods:
        raise CliError(f"--t-end {a.t_end:g} s is only {periods} periods; --last-periods is "
                       f"{a.last_periods}")
    result = simulate(params, t_end=a.t_end, dt=dt, x0=x0, steps=steps,
                      progress=ctx.progress, **drive)
    metrics = result.metrics(a.last_periods)
    m = metrics.as_dict()
    summary = {"command": "simulate", "t_end": a.t_end, "dt": float(result.t[1] - result.t[0])
               if result.t.size > 1 else a.t_end, "samples": int(result.t.size),
               "periods": periods, "start": a.start, "parameters": params.to_dict(),
               **{k: v for k, v in drive.items()},
               "steps": [{"t": s.t, **{k: getattr(s, k) for k in _STEP_NAMES
                                       if getattr(s, k) is not None}} for s in steps],
               "last_periods": a.last_periods,
               "metrics": {k: v for k, v in m.items()}, "losses": metrics.losses}
    files: dict[str, str] = {}
    if a.out:
        columns = {"t": result.t, "il": result.il, "vc": result.vc, "vout": result.vout}
        _write_columns(ctx, a.out, columns, ctx.metadata(duty=drive.get("duty"),
                                                          steps=summary["steps"] or None),
                       summary)
        files["data"] = a.out
    if a.plot:
        from .plots import waveform_figure

        _write_plot(ctx, waveform_figure(result, zoom_periods=a.zoom_periods), a.plot)
        files["plot"] = a.plot
    summary["files"] = files
    if ctx.human:
        from .plots import board_text

        first = (f"boostsim simulate: {board_text(params)} · duty {drive['duty']:g} · "
                 f"{_si(a.t_end, 't_rise')} ({periods} periods) from "
                 f"{'rest' if a.start == 'zero' else 'the steady state'}")
        if steps:
            first += " · steps: " + "; ".join(
                f"{_si(s.t, 't_rise')} " + ", ".join(f"{k}={_si(getattr(s, k), k)}" for k in
                                                    _STEP_NAMES if getattr(s, k) is not None)
                for s in steps)
        ctx.print(first)
        ctx.print(f"last {a.last_periods} periods:")
        ctx.print(_metrics_table(m))
        if files:
            ctx.print("wrote " + ", ".join(files.values()))
    ctx.emit_json(summary)
    return 0


def _metrics_table(m: dict[str, Any]) -> str:
    rows = [
        ("output voltage, mean", _fmt(m["vout_mean"], ".4f"), "V"),
        ("output ripple (p-p)", _fmt(m["vout_ripple"] * 1e3, ".3f"), "mV"),
        ("output min .. max", f"{_fmt(m['vout_min'], '.4f')} .. {_fmt(m['vout_max'], '.4f')}",
         "V"),
        ("inductor current, mean", _fmt(m["il_mean"], ".4f"), "A"),
        ("inductor ripple (p-p)", _fmt(m["il_ripple"], ".4f"), "A"),
        ("inductor min .. max", f"{_fmt(m['il_min'], '.4f')} .. {_fmt(m['il_max'], '.4f')}",
         "A"),
        ("inductor current, rms", _fmt(m["il_rms"], ".4f"), "A"),
        ("input power", _fmt(m["pin"], ".4f"), "W"),
        ("output power", _fmt(m["pout"], ".4f"), "W"),
        ("efficiency (conduction)", _fmt(m["efficiency"] * 100, ".2f"), "%"),
        ("efficiency incl. switching", _fmt(m["efficiency_total"] * 100, ".2f"), "%"),
        ("duty", _fmt(m["duty"], ".4f"), ""),
        ("mode", str(m["mode"]), ""),
    ]
    return _table(["figure", "value", "unit"], [list(r) for r in rows], [False, True, False])


# -- steady ---------------------------------------------------------------------------------

def cmd_steady(ctx: Context) -> int:
    from .steady import steady_state
    from .sweep import solve_duty
    from .theory import ccm_vout

    a = ctx.args
    if a.duty is None and a.vout is None:
        raise _UsageError("give the operating point: --duty D or --vout V")
    _check_writable(a.out, _DATA_KINDS, "--out")
    _check_writable(a.plot, _PLOT_KINDS, "--plot")
    params = ctx.board()
    duty = a.duty if a.duty is not None else solve_duty(params, a.vout)
    state = steady_state(params, duty, points=a.points)
    if not state.converged:
        raise CliError(f"the steady-state solver did not converge at duty {duty:g}")
    values = {k: v for k, v in state.as_dict().items()
              if np.ndim(v) == 0 and k not in ("il_start", "vc_start")}
    sync = bool(params.synchronous)
    theory = float(ccm_vout(params.vin, duty, params.R, params.r_L, params.r_on,
                            0.0 if sync else params.v_f, params.r_sync if sync else params.r_d,
                            params.i_load))
    summary: dict[str, Any] = {"command": "steady", "vout_target": a.vout, **values,
                               "losses": state.losses,
                               "vout_averaged_ccm_model": theory,
                               "vout_ideal": params.vin / (1 - duty),
                               "parameters": params.to_dict()}
    files: dict[str, str] = {}
    if a.out:
        if Path(a.out).suffix.lower() == ".json":
            from .outputs import write_json

            document = {"metadata": ctx.metadata(), "operating_point": summary,
                        "waveform": {"t_s": state.t, "il_A": state.il, "vc_V": state.vc,
                                     "vout_V": state.vout}}
            try:
                write_json(a.out, document)
            except OSError as exc:
                raise CliError(f"cannot write {a.out!r}: {exc.strerror or exc}") from None
        else:
            from .sweep import SUMMARY

            row = {"duty": np.array([duty])}
            if a.vout is not None:
                row = {"vout_target": np.array([a.vout]), **row}
            row.update({k: np.array([values[k]]) for k in SUMMARY if k in values})
            _write_columns(ctx, a.out, row, ctx.metadata())
        files["data"] = a.out
    if a.plot:
        from .plots import steady_figure

        _write_plot(ctx, steady_figure(state, params), a.plot)
        files["plot"] = a.plot
    summary["files"] = files
    if ctx.human:
        from .plots import board_text

        how = (f"duty {duty:.5f} for vout = {a.vout:g} V" if a.vout is not None
               else f"duty {duty:g}")
        ctx.print(f"boostsim steady: {board_text(params)} · {how}")
        ctx.print(_metrics_table(values))
        ctx.print(f"(averaged CCM model with losses: {theory:.4f} V; ideal vin/(1-D): "
                  f"{params.vin / (1 - duty):.4f} V)")
        ctx.print("")
        ctx.print(_loss_table(state))
        if files:
            ctx.print("wrote " + ", ".join(files.values()))
    ctx.emit_json(summary)
    return 0


def _loss_table(state) -> str:
    pin = float(state.pin)
    total = float(state.p_loss) + float(state.p_switching)
    rows = []
    for name, watts in [*state.losses.items(), ("switching (estimate)", state.p_switching)]:
        rows.append([name.replace("_", " "), f"{watts * 1e3:.2f}", f"{watts / pin * 100:.3f}",
                     f"{watts / total * 100:.1f}" if total > 0 else "-"])
    rows.append(["total", f"{total * 1e3:.2f}", f"{total / pin * 100:.3f}", "100.0"])
    return _table(["loss", "mW", "% of Pin", "% of losses"], rows, [False, True, True, True])


# -- config ---------------------------------------------------------------------------------

def cmd_config_init(ctx: Context) -> int:
    path = Path(ctx.args.path)
    if path.exists() and not ctx.args.force:
        raise CliError(f"{str(path)!r} exists; use --force to overwrite it")
    if path.is_dir():
        raise CliError(f"{str(path)!r} is a directory")
    try:
        path.write_text(_default_board_text(), encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    ctx.print(f"wrote {path} (the default board; edit it and pass --config {path})")
    ctx.emit_json({"command": "config init", "path": str(path)})
    return 0


def _si_text(value: float, unit: str) -> str | float:
    """An SI string that reads back to exactly ``value`` ("100uH"), or the float (inf)."""
    if not math.isfinite(value):
        return value
    unit = {"ohm": "ohm"}.get(unit, unit)
    for digits in range(6, 18):
        text = format_si(value, unit, digits=digits)
        try:
            if parse_si(text) == value:
                return text
        except ValueError:
            break
    return value


def effective_toml(params: BoostParams, document: dict[str, Any]) -> dict[str, Any]:
    """The configuration document with its [converter] table replaced by ``params``."""
    converter: dict[str, Any] = {}
    for name, value in params.to_dict().items():
        if name in FIELDS and isinstance(value, float):
            converter[name] = _si_text(value, FIELDS[name].unit)
        else:
            converter[name] = value
    out = {"converter": converter}
    out.update({k: v for k, v in document.items() if isinstance(v, dict) and k != "converter"})
    return out


def cmd_config_show(ctx: Context) -> int:
    import tomli_w

    params = ctx.board()
    document, source = ctx.document()
    effective = effective_toml(params, document)
    settings = ctx.args.settings
    header = f"# effective configuration: {source}"
    if settings:
        header += " with " + " ".join(f"--set {k}={v}" for k, v in settings)
    text = header + "\n" + tomli_w.dumps(effective)
    if ctx.args.out:
        out = Path(ctx.args.out)
        try:
            if out.suffix.lower() == ".json":
                from .outputs import write_json

                write_json(out, effective)
            else:
                out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
    if ctx.args.json:
        ctx.emit_json(effective)
    elif not ctx.args.quiet:
        print(text, end="", file=ctx.stdout)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
