"""Shared argument types (a ValueError becomes a usage error, exit status 2), the parser
class with one-line errors, and the option groups every command reuses.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from ..params import BoostParams, parse_field
from ..units import parse_si
from .context import PROG

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
    parse_field(name, value)


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
    """A duration > 0 [s] with SI prefixes (20m)."""
    return _finite(what, "time", "s", positive=True)


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


def _fraction(text: str, what: str) -> float:
    """A number with SI prefixes, or a percentage: ``0.6``, ``60%``."""
    text = text.strip()
    if text.endswith("%"):
        return parse_si(text[:-1], name=what) / 100.0
    return parse_si(text, name=what)


def _fractions(text: str, what: str) -> str:
    """A range or list (``a:b:c``, ``a,b``) with its percentages written as fractions."""
    return re.sub(r"[^:,]+", lambda m: (repr(_fraction(m.group(0), what))
                                       if m.group(0).strip().endswith("%") else m.group(0)),
                  text)


@_type
def _duty_value(text: str) -> float:
    value = _fraction(text, "duty")
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
    from ..sweep import parse_duty_range

    return parse_duty_range(_fractions(text, "duty"))


def _vout_range(text: str) -> np.ndarray:
    from ..sweep import parse_value_range

    values = parse_value_range(text, "vout")
    if np.any(values <= 0):
        raise ValueError(f"vout targets must be > 0 [V], got {text!r}")
    return values


def _axis(text: str):
    from ..sweep import parse_axis

    return parse_axis(text)


def _tolerance(text: str):
    from ..sweep import parse_tolerance

    return parse_tolerance(text)


def _limit(text: str):
    from ..sweep import parse_limit

    return parse_limit(text)


_STEP_NAMES = ("vin", "R", "i_load")


def _step_parser(allowed: tuple[str, ...], option: str) -> Callable[[str], Any]:
    @_type
    def parse(text: str):
        from ..engine import Step

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


def _finite(what: str, noun: str = "number", unit: str = "", *,
            positive: bool) -> Callable[[str], float]:
    """A finite number with SI prefixes, > 0 (``positive``) or >= 0."""
    bound = "> 0" if positive else ">= 0"
    unit = f" [{unit}]" if unit else ""

    @_type
    def parse(text: str) -> float:
        value = parse_si(text, name=what)
        if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
            raise ValueError(f"{what} must be a finite {noun} {bound}{unit}, got {text!r}")
        return value
    return parse


def _positive(what: str, unit: str) -> Callable[[str], float]:
    """A finite number > 0 [unit] with SI prefixes."""
    return _finite(what, unit=unit, positive=True)


def _nonnegative(what: str) -> Callable[[str], float]:
    """A finite number >= 0 with SI prefixes."""
    return _finite(what, positive=False)


# -- the PID loop (simulate, bode, bench live; --rate also tune) ----------------------------

HOST_LOOP_RATE = 200.0
"""The default PID rate [Hz] of given gains: the host loop of ``bench live``."""

# --rate means the same in every command (the PID's sample rate, same type and default None);
# its help says what each command does with it and what the default is there.
_GIVEN_RATE = f"the rate in --pid-config, else {HOST_LOOP_RATE:g} Hz"
_IN_PERIODS = "PID sample rate [Hz]; the PID runs every round(fsw/rate) switching periods"

RATE_HELP = (f"{_IN_PERIODS} (default: {_GIVEN_RATE}, the host loop of 'bench live'; gains "
             "tuned here for --crossover default to fsw)")
"""--rate in the simulation commands that take given or tuned gains (simulate, bode)."""

TUNE_RATE_HELP = ("PID sample rate [Hz] the gains are designed for; the PID runs every "
                  "round(fsw/rate) switching periods (default: fsw, every period; --rate 200 "
                  "for the host loop of 'bench live')")
"""--rate in ``tune``: there are no given gains, so no --pid-config."""

HOST_RATE_HELP = (f"PID rate of the host loop [Hz]: one tick every 1/rate s (default: "
                  f"{_GIVEN_RATE})")
"""--rate in ``bench live``: a wall-clock loop, not a number of switching periods."""


def rate_option(g, help: str = RATE_HELP) -> None:
    """``--rate HZ``: the one definition of the PID rate (default None: see :func:`pid_loop`);
    ``help`` says what it means in the command at hand."""
    g.add_argument("--rate", type=_positive("--rate", "Hz"), default=None, metavar="HZ",
                   help=help)


def pid_options(g, rate_help: str = RATE_HELP) -> None:
    """The PID gains, rate and ``--pid-config`` (resolved by :func:`pid_loop`)."""
    g.add_argument("--kp", type=_nonnegative("--kp"), default=None, metavar="K",
                   help="proportional gain [duty/V]")
    g.add_argument("--ki", type=_nonnegative("--ki"), default=None, metavar="K",
                   help="integral gain [duty/(V s)]")
    g.add_argument("--kd", type=_nonnegative("--kd"), default=None, metavar="K",
                   help="derivative gain [duty s/V] (default 0)")
    g.add_argument("--tf", type=_nonnegative("--tf"), default=None, metavar="S",
                   help="derivative filter time constant [s] (default 0; 'boostsim tune' "
                        "prints it)")
    rate_option(g, rate_help)
    g.add_argument("--pid-config", metavar="FILE",
                   help="take kp, ki, kd, tf and rate from the [pid] table of FILE (as written "
                        "by 'boostsim tune --out gains.toml'); --kp etc. override it")


@dataclasses.dataclass(frozen=True)
class PIDLoop:
    """Gains and rate of a PID loop from the command line (kp duty/V, ki duty/(V s), kd duty
    s/V, tf s, rate Hz)."""

    kp: float
    ki: float
    kd: float
    tf: float
    rate: float


def pid_given(args: argparse.Namespace) -> list[str]:
    """The PID options given on the command line (``--kp``, ..., ``--pid-config``)."""
    return [f"--{name.replace('_', '-')}" for name in ("kp", "ki", "kd", "tf", "pid_config")
            if getattr(args, name, None) is not None]


def pid_loop(args: argparse.Namespace, *, need: tuple[str, ...] = ()) -> PIDLoop | None:
    """The loop of :func:`pid_options`: --pid-config's [pid] table overridden by the options
    given; None without --kp, --ki or a table that has them. A loop that runs on the converter
    (simulate, bench live) needs both (``need=("kp", "ki")``); a Bode plot takes either. Usage
    error (exit 2) for a loop without its gains; CliError for an unreadable table."""
    from .context import _UsageError

    table = _pid_table(args.pid_config) if args.pid_config else {}

    def pick(name: str, default: float | None) -> float | None:
        given = getattr(args, name)
        return given if given is not None else table.get(name, default)

    kp, ki = pick("kp", None), pick("ki", None)
    if kp is None and ki is None and not pid_given(args):
        return None
    missing = [f"--{name}" for name in need if pick(name, None) is None]
    if missing or (kp is None and ki is None):
        gains = " ".join(f"--{name} K" for name in need) if need else "--kp K and/or --ki K"
        raise _UsageError(f"give the PID gains: {gains} (or --pid-config FILE with them)" +
                          (f"; missing {', '.join(missing)}" if missing else ""))
    return PIDLoop(kp=kp or 0.0, ki=ki or 0.0, kd=pick("kd", 0.0), tf=pick("tf", 0.0),
                   rate=pick("rate", HOST_LOOP_RATE))


def _pid_table(path: str) -> dict[str, float]:
    """The [pid] table of a TOML file (kp, ki, kd, tf [s], rate [Hz]), checked."""
    from ..params import parse_toml, read_config_text
    from .context import CliError

    try:
        document = parse_toml(read_config_text(path), source=path)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    table = document.get("pid")
    if not isinstance(table, dict):
        raise CliError(f"{path}: no [pid] table (write one with 'boostsim tune --out FILE')")
    unknown = set(table) - {"kp", "ki", "kd", "tf", "rate"}
    if unknown:
        raise CliError(f"{path}: unknown [pid] key(s) {sorted(unknown)}; known: kp, ki, kd, tf, "
                       f"rate")
    out = {}
    for key, value in table.items():
        try:
            number = parse_si(value, name=f"[pid] {key}")
        except ValueError as exc:
            raise CliError(f"{path}: {exc}") from None
        if not math.isfinite(number) or number < 0 or (key == "rate" and number == 0):
            raise CliError(f"{path}: [pid] {key} must be a finite number >= 0, got {value!r}")
        out[key] = number
    return out
