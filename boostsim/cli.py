"""The ``boostsim`` command: parse the command line, call the library, print and write results.

Commands: ``sweep`` (duty/parameter grids, Monte-Carlo), ``simulate`` (switching waveforms,
open loop or under a host/board PID loop), ``steady`` (one operating point and its losses),
``tune`` (PID gains for a crossover and phase margin), ``bode`` (loop-gain Bode plot),
``config init|show``, ``bench ports|sweep|step|live|calibrate`` (the bench board or its
emulator, each experiment beside the same simulation) and ``emulate`` (the board emulator on a
pseudo-terminal). ``boostsim CMD --help`` lists each command's options with examples.

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
  simulate   exact switching simulation: waveforms, load and line steps, a PID loop
  steady     one operating point (given duty or target output voltage) and its losses
  tune       PID gains for a loop crossover and phase margin (predicted margins, overshoot)
  bode       loop-gain (or plant) Bode plot with crossover, phase and gain margins
  config     write the default board file (init) or show the effective configuration (show)
  bench      the bench board: ports, sweep, step, live (host PID loop), calibrate
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
  boostsim bench live --port emu: --vref 12 --kp 0.01 --ki 5 --rate 200 --duration 2 --compare

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

closed loop (the host loop of 'boostsim bench live', or the board's own CONT:MODE PID):
  --vref 12 --kp 0.01 --ki 5 --rate 200   the PID (boostsim.pid.PID, the same class the bench
                               and the firmware run) every N = fsw/rate switching periods,
                               sensing like MEAS:VOLT? (16 conversions spread over a period,
                               --adc-noise LSB rms each), the RP2040 PWM (1250 steps at 100 kHz),
                               starting at --initial-duty (default 0); --start steady starts
                               from the steady state at that duty (duty 0: the output-off state)
  --vref 12 --tune --crossover 2k [--phase-margin 50] [--rate HZ]
                               tune the PID first ('boostsim tune'), then run it; with --tune
                               the loop rate defaults to fsw (the tuner's sample rate)

averaged model:
  --averaged                   simulate the large-signal averaged model (boostsim.averaged;
                               CCM and DCM, no switching ripple) instead of the exact engine,
                               same options, open or closed loop; much faster for long runs

examples:
  boostsim simulate --duty 0.6
  boostsim simulate --vref 12 --tune --crossover 2k --start steady --t-end 10m \
      --load-step 5ms:R=24 --plot tuned.png
  boostsim simulate --vref 12 --tune --crossover 2k --averaged --t-end 50m
  boostsim simulate --vref 12 --kp 0.01 --ki 5 --rate 200 --start steady --t-end 0.2 \
      --plot loop.png
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

_TUNE_EPILOG = """\
Designs the digital PID (boostsim.design.tune_pid) on the sampled-data loop at the operating
point where the averaged output is --vref: the crossover lands at --crossover with
--phase-margin; prints the gains (kp, ki, kd, tf, ts), the achieved crossover, phase and gain
margins, the predicted overshoot of a small reference step, the right-half-plane zero and the
highest crossover the tuner accepts (a third of the RHP zero, a tenth of the sample rate).
Crossovers below half the LC resonance give an integral-only loop (the board's slow loops).
Impossible targets fail with the tuner's reason (exit status 1).

--out gains.toml writes a [pid] table (kp, ki, kd, tf in s, rate in Hz; the prediction in
comments), the values 'boostsim simulate --vref V --kp .. --ki .. --kd .. --tf .. --rate ..'
takes; --out gains.json the whole summary. --plot draws the loop-gain Bode plot.

examples:
  boostsim tune --vref 12 --crossover 2k
  boostsim tune --vref 12 --crossover 1.5k --phase-margin 60 --out gains.toml --plot loop.png
  boostsim tune --vref 12 --crossover 5 --rate 200 --phase-margin 30   # slow host loop
"""

_BODE_EPILOG = """\
The loop gain T = C Gvd of the sampled-data PID loop (boostsim.design.loop_gain: the exact
pulse transfer function of the averaged plant with the hold and the sampling/PWM delay) at the
operating point of --vref or --duty, with the plant Gvd and the controller C dashed; the
crossover, phase margin and gain margin are marked and printed, the RHP zero marked. Gains:
given (--kp/--ki [--kd --tf] --rate) or tuned first (--vref V --crossover F [--phase-margin]).
Without gains: the averaged plant Gvd alone (continuous), with the RHP zero and the LC
resonance marked. --out writes the curves (f_Hz, T_mag_dB, T_phase_deg, plant_mag_dB,
plant_phase_deg, controller_mag_dB, controller_phase_deg; .csv, .json or .npz).

examples:
  boostsim bode --vref 12                                  # the plant alone -> bode.png
  boostsim bode --vref 12 --crossover 2k --out bode.csv --plot bode.png
  boostsim bode --duty 0.6 --kp 0.05 --ki 100 --rate 100k
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
                       help="switching waveforms, load and line steps, closed loop",
                       description="Exact switching simulation of the converter.",
                       epilog=_SIMULATE_EPILOG)
    g = p.add_argument_group("simulation")
    g.add_argument("--duty", type=_duty_value, metavar="D", help="open-loop duty in [0, 1)")
    g.add_argument("--t-end", type=_positive_time("--t-end"), default=20e-3, metavar="TIME",
                   help="simulated time (default 20m = 20 ms)")
    _loop_options(p.add_argument_group("closed loop (instead of --duty)"))
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
    g.add_argument("--averaged", action="store_true",
                   help="simulate the averaged model instead of the exact switching engine")
    g = p.add_argument_group("tuning (closed loop: --vref V --tune instead of --kp/--ki)")
    g.add_argument("--tune", action="store_true",
                   help="tune the PID for --crossover/--phase-margin, then run it")
    _design_options(g)
    p.set_defaults(func=cmd_simulate)

    # tune
    p = sub.add_parser("tune", parents=[base, board], formatter_class=_Formatter,
                       help="PID gains for a crossover frequency and phase margin",
                       description="Tune the digital PID for a loop crossover and phase margin "
                                   "at the operating point of --vref.",
                       epilog=_TUNE_EPILOG)
    g = p.add_argument_group("design")
    g.add_argument("--vref", type=_vout_value, metavar="V", required=True,
                   help="regulated output voltage [V] (sets the operating point)")
    _design_options(g, required=True)
    g.add_argument("--rate", type=_positive("--rate", "Hz"), default=None, metavar="HZ",
                   help="PID sample rate (default: fsw, every switching period)")
    g = p.add_argument_group("files")
    g.add_argument("--out", metavar="FILE",
                   help="write the gains: .toml (a [pid] table) or .json")
    g.add_argument("--plot", metavar="FILE",
                   help="write the loop-gain Bode plot to FILE (.png, .svg, .pdf)")
    p.set_defaults(func=cmd_tune)

    # bode
    p = sub.add_parser("bode", parents=[base, board, files], formatter_class=_Formatter,
                       help="loop-gain Bode plot with stability margins",
                       description="Loop gain T = C Gvd of the digital PID loop (or the plant "
                                   "Gvd alone) with its crossover, phase and gain margins.",
                       epilog=_BODE_EPILOG)
    g = p.add_argument_group("operating point").add_mutually_exclusive_group()
    g.add_argument("--vref", type=_vout_value, metavar="V",
                   help="output voltage [V]: the duty of the averaged model")
    g.add_argument("--duty", type=_duty_value, metavar="D", help="duty in [0, 1)")
    g = p.add_argument_group("controller (given gains)")
    g.add_argument("--kp", type=_gain("--kp"), default=None, metavar="K",
                   help="proportional gain [duty/V]")
    g.add_argument("--ki", type=_gain("--ki"), default=None, metavar="K",
                   help="integral gain [duty/(V s)]")
    g.add_argument("--kd", type=_gain("--kd"), default=None, metavar="K",
                   help="derivative gain [duty s/V] (default 0)")
    g.add_argument("--tf", type=_nonnegative("--tf"), default=None, metavar="S",
                   help="derivative filter time constant [s] (default 0)")
    g.add_argument("--rate", type=_positive("--rate", "Hz"), default=None, metavar="HZ",
                   help="PID sample rate (default: fsw)")
    g = p.add_argument_group("controller (tuned: --vref V --crossover F)")
    _design_options(g)
    g = p.add_argument_group("frequency range")
    g.add_argument("--fmin", type=_positive("--fmin", "Hz"), default=None, metavar="HZ",
                   help="lowest frequency (default: well below the resonance and crossover)")
    g.add_argument("--fmax", type=_positive("--fmax", "Hz"), default=None, metavar="HZ",
                   help="highest frequency (default and limit: the loop's Nyquist frequency, "
                        "fsw/2 for the plant alone)")
    g.add_argument("--points", type=_int_at_least(10, "--points"), default=600, metavar="N",
                   help="frequencies, log-spaced (default 600)")
    g.add_argument("--no-files", action="store_true",
                   help="do not write the default bode.png (--out/--plot still written)")
    p.set_defaults(func=cmd_bode)

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

    _bench_parsers(sub, base, board, files)
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
    q.add_argument("--board-config", metavar="FILE",
                   help="your board's config.py instead of the default (pins, divider, limits)")
    q.add_argument("--dry-run", action="store_true", help="print the mpremote command only")
    q.set_defaults(func=cmd_firmware_install)
    q = fsub.add_parser("files", parents=[base], formatter_class=_Formatter,
                        help="write the board's files to a folder (for Thonny or a drive)",
                        description="Write the files the board needs to a folder.",
                        epilog=_FIRMWARE_EPILOG)
    q.add_argument("--out", required=True, metavar="DIR", help="folder to write the files to")
    q.add_argument("--board-config", metavar="FILE",
                   help="your board's config.py instead of the default")
    q.set_defaults(func=cmd_firmware_files)
    p.set_defaults(func=None, config_parser=p)
    p = sub.add_parser("emulate", add_help=False, formatter_class=_Formatter,
                       help="emulate the bench board on a pseudo-terminal",
                       description="Emulate the bench board (see 'boostsim emulate --help').")
    p.add_argument("emulator_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_emulate)
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

    def note(self, message: str) -> None:
        """A progress message on stdout, shown at once (not with --json or --quiet)."""
        if self.human:
            print(message, file=self.stdout, flush=True)

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
    if argv[:1] == ["emulate"]:
        # The emulator has its own command line (also 'python -m firmware_bridge.emulator').
        from firmware_bridge.emulator import main as emulate_main

        try:
            return int(emulate_main(argv[1:]) or 0)
        except SystemExit as exc:
            return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.command is None:
        print(f"{PROG}: error: choose a command: sweep, simulate, steady, tune, bode, "
              f"config, bench, emulate, firmware (see '{PROG} --help')", file=sys.stderr)
        return 2
    if args.func is None:
        actions = {"config": "init or show", "firmware": "install or files",
                   "bench": "ports, sweep, step, live or calibrate"}[args.command]
        print(f"{PROG}: error: choose an action: {actions} (see '{PROG} {args.command} "
              f"--help')", file=sys.stderr)
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
        where = args.command + (f" {args.bench_command}" if getattr(args, "bench_command", None)
                                else "")
        print(f"{PROG}: error: {exc} (see '{PROG} {where} --help')", file=sys.stderr)
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

def _loop_options(g) -> None:
    g.add_argument("--vref", type=_vout_value, metavar="V",
                   help="regulate the output to V with the PID (closed loop)")
    g.add_argument("--kp", type=_gain("--kp"), default=None, metavar="K",
                   help="proportional gain [duty/V]")
    g.add_argument("--ki", type=_gain("--ki"), default=None, metavar="K",
                   help="integral gain [duty/(V s)]")
    g.add_argument("--kd", type=_gain("--kd"), default=None, metavar="K",
                   help="derivative gain [duty s/V] (default 0)")
    g.add_argument("--rate", type=_positive("--rate", "Hz"), default=None, metavar="HZ",
                   help="loop rate (default 200 Hz, with --tune fsw; the PID runs every "
                        "fsw/rate periods)")
    g.add_argument("--tf", type=_nonnegative("--tf"), default=None, metavar="S",
                   help="derivative filter time constant [s] (default 0; 'boostsim tune' "
                        "prints it)")
    g.add_argument("--pid-config", metavar="FILE",
                   help="take kp, ki, kd, tf and rate from the [pid] table of FILE (as written "
                        "by 'boostsim tune --out gains.toml'); --kp etc. override it")
    g.add_argument("--slew", type=_positive("--slew", "V/s"), default=None, metavar="V/S",
                   help="setpoint slew limit for a soft start (default: steps)")
    g.add_argument("--duty-max", type=_duty_value, default=None, metavar="D",
                   help="PID output limit (default: the board's duty limit, 0.75)")
    g.add_argument("--initial-duty", type=_duty_value, default=0.0, metavar="D",
                   help="duty before the first PID update (default 0)")
    g.add_argument("--adc-noise", type=_nonnegative("--adc-noise"), default=1.0, metavar="LSB",
                   help="ADC noise per conversion, codes rms (default 1, like the emulator)")


def _gain(what: str) -> Callable[[str], float]:
    @_type
    def parse(text: str) -> float:
        value = parse_si(text, name=what)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{what} must be a finite number >= 0, got {text!r}")
        return value
    return parse


def _positive(what: str, unit: str) -> Callable[[str], float]:
    @_type
    def parse(text: str) -> float:
        value = parse_si(text, name=what)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{what} must be a finite number > 0 [{unit}], got {text!r}")
        return value
    return parse


def _nonnegative(what: str) -> Callable[[str], float]:
    @_type
    def parse(text: str) -> float:
        value = parse_si(text, name=what)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{what} must be a finite number >= 0, got {text!r}")
        return value
    return parse


def _drive(ctx: Context, params: BoostParams) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """How the switch is driven: open loop at --duty, or the PID loop of --vref. Returns
    (keyword arguments for simulate(), the loop description or None)."""
    a = ctx.args
    if not a.tune:
        for name, value in (("--crossover", a.crossover), ("--phase-margin", a.phase_margin),
                            ("--delay", a.delay)):
            if value is not None:
                raise _UsageError(f"{name} needs --tune (tune the PID, then simulate it)")
    if a.vref is None:
        if a.tune:
            raise _UsageError("--tune needs --vref V (the closed loop's setpoint)")
        for name in ("kp", "ki", "pid_config"):
            if getattr(a, name) is not None:
                raise _UsageError(f"--{name.replace('_', '-')} needs --vref (the closed loop's "
                                  f"setpoint)")
        if a.duty is None:
            raise _UsageError("give the open-loop duty, e.g. --duty 0.6, or a closed loop, "
                              "e.g. --vref 12 --kp 0.01 --ki 5")
        return {"duty": a.duty}, None
    if a.duty is not None:
        raise _UsageError("--duty (open loop) and --vref (closed loop) exclude each other")
    from firmware_bridge.bench import host_loop_controller
    from firmware_bridge.firmware import config as fw

    if not np.isscalar(params.fsw) and np.size(params.fsw) != 1:
        raise CliError("the closed loop needs a single converter (no per-lane parameters)")
    tuned = None
    if a.tune:
        for name in ("kp", "ki", "pid_config"):
            if getattr(a, name) is not None:
                raise _UsageError(f"--tune computes the gains: do not give "
                                  f"--{name.replace('_', '-')}")
        if a.crossover is None:
            raise _UsageError("--tune needs the loop's crossover frequency, e.g. --crossover 2k")
        tuned, _ = _tune(ctx, params, a.vref, a.crossover, a.phase_margin, a.rate, a.delay)
        kp, ki, kd, tf = tuned.kp, tuned.ki, tuned.kd, tuned.tf
        rate = 1.0 / tuned.ts
    else:
        table = _pid_table(a.pid_config) if a.pid_config else {}

        def pick(name: str, default: float | None) -> float | None:
            given = getattr(a, name)
            return given if given is not None else table.get(name, default)

        kp, ki, kd, tf = pick("kp", None), pick("ki", None), pick("kd", 0.0), pick("tf", 0.0)
        if kp is None or ki is None:
            raise _UsageError("the closed loop needs its gains: --kp K --ki K (and optionally "
                              "--kd), --pid-config gains.toml, or --tune --crossover F")
        rate = pick("rate", 200.0)
    duty_max = a.duty_max if a.duty_max is not None else fw.DUTY_LIMIT_DEFAULT
    controller, every, ts = host_loop_controller(
        params, kp=kp, ki=ki, kd=kd, tf=tf, rate=rate, duty_max=duty_max, slew=a.slew,
        noise_lsb=a.adc_noise, initial_duty=a.initial_duty)
    if tuned is None and abs(1.0 / ts - rate) > 1e-3 * rate:
        ctx.warn(f"--rate {rate:g} Hz is not a whole number of switching periods: the loop "
                 f"runs every {every} periods ({1 / ts:g} Hz)")
    loop = {"vref": a.vref, "kp": kp, "ki": ki, "kd": kd, "tf": tf, "rate": 1.0 / ts,
            "every_periods": every, "slew": a.slew, "duty_max": duty_max,
            "initial_duty": a.initial_duty, "adc_noise_lsb": a.adc_noise}
    if tuned is not None:
        loop["tuned"] = _predicted(tuned, a.crossover)
    return {"controller": controller, "vref": a.vref}, loop


def _pid_table(path: str) -> dict[str, float]:
    """The [pid] table of a TOML file (kp, ki, kd, tf [s], rate [Hz]), checked."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"cannot read {path!r}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"{path}: not valid TOML: {exc}") from None
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


def cmd_simulate(ctx: Context) -> int:
    from .averaged import simulate_averaged
    from .simulation import simulate

    a = ctx.args
    drive, loop = _drive(ctx, ctx.board())
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

        state = steady_state(params, drive["duty"] if loop is None else loop["initial_duty"],
                             points=1)
        # The averaged model starts from the period means, the exact engine from the state at
        # the start of a period.
        x0 = ((state.il_mean, state.vc_mean) if a.averaged else
              (state.il_start, state.vc_start))
    dt = a.dt
    n_t = int(a.t_end / (dt or (1 / params.fsw / 50))) + 1
    if n_t > 50_000_000:
        raise CliError(f"{n_t} output samples: too many; raise --dt or shorten --t-end")
    periods = math.ceil(a.t_end * params.fsw - 1e-9)
    if periods < a.last_periods:
        raise CliError(f"--t-end {a.t_end:g} s is only {periods} periods; --last-periods is "
                       f"{a.last_periods}")
    engine = simulate_averaged if a.averaged else simulate
    result = engine(params, t_end=a.t_end, dt=dt, x0=x0, steps=steps,
                    progress=ctx.progress, **drive)
    metrics = result.metrics(a.last_periods)
    if a.averaged:
        import dataclasses

        m = {k: _plain(v) for k, v in dataclasses.asdict(metrics).items()}
        losses = None
    else:
        m = metrics.as_dict()
        losses = metrics.losses
    summary = {"command": "simulate", "model": "averaged" if a.averaged else "switching",
               "t_end": a.t_end, "dt": float(result.t[1] - result.t[0])
               if result.t.size > 1 else a.t_end, "samples": int(result.t.size),
               "periods": periods, "start": a.start, "parameters": params.to_dict(),
               **({"duty": drive["duty"]} if loop is None else {"closed_loop": loop}),
               "steps": [{"t": s.t, **{k: getattr(s, k) for k in _STEP_NAMES
                                       if getattr(s, k) is not None}} for s in steps],
               "last_periods": a.last_periods,
               "metrics": {k: v for k, v in m.items()}, "losses": losses}
    files: dict[str, str] = {}
    if a.out:
        columns = {"t": result.t, "il": result.il, "vc": result.vc, "vout": result.vout}
        _write_columns(ctx, a.out, columns, ctx.metadata(duty=drive.get("duty"),
                                                          closed_loop=loop,
                                                          steps=summary["steps"] or None),
                       summary)
        files["data"] = a.out
    if a.plot:
        from .plots import averaged_figure, waveform_figure

        fig = (averaged_figure(result) if a.averaged else
               waveform_figure(result, zoom_periods=a.zoom_periods))
        _write_plot(ctx, fig, a.plot)
        files["plot"] = a.plot
    summary["files"] = files
    if ctx.human:
        from .plots import board_text

        how = (f"duty {drive['duty']:g}" if loop is None else
               f"PID to {loop['vref']:g} V (kp {loop['kp']:.6g}, ki {loop['ki']:.6g}, kd "
               f"{loop['kd']:.6g}" + (f", tf {loop['tf']:.4g}" if loop["tf"] else "") +
               f") at {loop['rate']:g} Hz = every {loop['every_periods']} periods")
        if loop is not None and "tuned" in loop:
            t = loop["tuned"]
            how += (f" · tuned for {_fmt(t['crossover_hz'], '.0f')} Hz, "
                    f"{_fmt(t['phase_margin_deg'], '.1f')} deg")
        model = "averaged model" if a.averaged else "exact switching"
        first = (f"boostsim simulate ({model}): {board_text(params)} · {how} · "
                 f"{_si(a.t_end, 't_rise')} ({periods} periods) from "
                 f"{'rest' if a.start == 'zero' else 'the steady state'}")
        if steps:
            first += " · steps: " + "; ".join(
                f"{_si(s.t, 't_rise')} " + ", ".join(f"{k}={_si(getattr(s, k), k)}" for k in
                                                    _STEP_NAMES if getattr(s, k) is not None)
                for s in steps)
        ctx.print(first)
        if loop is not None:
            log = drive["controller"].log()
            ctx.print(f"{log.period.size} control steps; last: measured "
                      f"{float(log.measured[-1, 0]):.4f} V, duty {float(log.duty[-1, 0]):.4f}")
        ctx.print(f"last {a.last_periods} periods" +
                  (" (averaged model: no ripple, no losses breakdown):" if a.averaged else ":"))
        ctx.print(_averaged_table(m) if a.averaged else _metrics_table(m))
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


def _averaged_table(m: dict[str, Any]) -> str:
    rows = [
        ("output voltage, mean", _fmt(m["vout_mean"], ".4f"), "V"),
        ("inductor current, mean", _fmt(m["il_mean"], ".4f"), "A"),
        ("input power", _fmt(m["pin"], ".4f"), "W"),
        ("output power", _fmt(m["pout"], ".4f"), "W"),
        ("efficiency (model)", _fmt(m["efficiency"] * 100, ".2f"), "%"),
        ("duty", _fmt(m["duty"], ".4f"), ""),
        ("mode", str(m["mode"]), ""),
    ]
    return _table(["figure", "value", "unit"], [list(r) for r in rows], [False, True, False])


# -- tune and bode --------------------------------------------------------------------------

@_type
def _phase_margin(text: str) -> float:
    value = parse_si(text, name="--phase-margin")
    if not (0 < value < 90):
        raise ValueError(f"--phase-margin must be between 0 and 90 [deg], got {text!r}")
    return value


def _design_options(g, required: bool = False) -> None:
    g.add_argument("--crossover", type=_positive("--crossover", "Hz"), default=None,
                   metavar="HZ", required=required,
                   help="loop crossover frequency [Hz], SI prefixes allowed (2k)")
    g.add_argument("--phase-margin", type=_phase_margin, default=None, metavar="DEG",
                   help="phase margin at the crossover [deg] (default 50)")
    g.add_argument("--delay", type=_nonnegative("--delay"), default=None, metavar="PERIODS",
                   help="switching periods from the ADC sample to the new duty's period "
                        "(default 1 - D/2)")


def _sample_period(ctx: Context, params: BoostParams, rate: float | None) -> tuple[float, int]:
    """The PID period for --rate (default fsw): a whole number of switching periods."""
    if not np.isscalar(params.fsw) and np.size(params.fsw) != 1:
        raise CliError("the loop design needs a single converter (no per-lane parameters)")
    fsw = float(params.fsw)
    if rate is None:
        return 1.0 / fsw, 1
    if rate > fsw * (1 + 1e-9):
        raise _UsageError(f"--rate {rate:g} Hz is above the switching frequency {fsw:g} Hz "
                          f"(the PID runs at most once per period)")
    every = max(1, round(fsw / rate))
    if abs(fsw / every - rate) > 1e-3 * rate:
        ctx.warn(f"--rate {rate:g} Hz is not a whole number of switching periods: the loop "
                 f"runs every {every} periods ({fsw / every:g} Hz)")
    return every / fsw, every


def _tune(ctx: Context, params: BoostParams, vref: float, crossover: float,
          phase_margin: float | None, rate: float | None, delay: float | None):
    """tune_pid for the command line: (PIDGains, periods per PID step); the tuner's
    ValueError (an impossible target) becomes a one-line run-time error."""
    from .design import tune_pid

    T, every = _sample_period(ctx, params, rate)
    try:
        gains = tune_pid(params, vref, crossover,
                         50.0 if phase_margin is None else phase_margin,
                         sample_period=T, delay_periods=delay)
    except ValueError as exc:
        raise CliError(f"cannot tune: {exc}") from None
    return gains, every


def _predicted(gains, target: float | None = None) -> dict[str, Any]:
    plant = gains.loop.plant
    out = {"crossover_hz": gains.crossover_hz, "phase_margin_deg": gains.phase_margin_deg,
           "gain_margin_db": gains.gain_margin_db, "overshoot": gains.overshoot,
           "rhp_zero_hz": gains.rhp_zero_hz, "crossover_limit_hz": gains.crossover_limit_hz,
           "resonance_hz": float(plant.resonance_hz),
           "integral_only": gains.kp == 0.0 and gains.kd == 0.0}
    if target is not None:
        out["crossover_target_hz"] = target
    return out


def _gains_toml(gains, command: str, params: BoostParams, rate: float) -> str:
    import tomli_w

    from .plots import board_text

    p = _predicted(gains)
    head = (f"# PID gains from: {command}\n"
            f"# board: {board_text(params)}; vref {gains.vref:g} V (duty {gains.duty:.4f})\n"
            f"# predicted: crossover {p['crossover_hz']:.1f} Hz, phase margin "
            f"{p['phase_margin_deg']:.1f} deg, gain margin {p['gain_margin_db']:.1f} dB, "
            f"overshoot {p['overshoot'] * 100:.1f} %\n"
            f"# units: kp duty/V, ki duty/(V s), kd duty s/V, tf s, rate Hz\n")
    table = {"pid": {"kp": float(gains.kp), "ki": float(gains.ki), "kd": float(gains.kd),
                     "tf": float(gains.tf), "rate": float(rate)}}
    return head + tomli_w.dumps(table)


def cmd_tune(ctx: Context) -> int:
    a = ctx.args
    out_kinds = (".toml", ".json")
    _check_writable(a.out, out_kinds, "--out")
    _check_writable(a.plot, _PLOT_KINDS, "--plot")
    params = ctx.board()
    gains, every = _tune(ctx, params, a.vref, a.crossover, a.phase_margin, a.rate, a.delay)
    predicted = _predicted(gains, a.crossover)
    rate = float(params.fsw) / every
    summary: dict[str, Any] = {
        "command": "tune", "vref": a.vref, "duty": gains.duty,
        "phase_margin_target_deg": 50.0 if a.phase_margin is None else a.phase_margin,
        "rate_Hz": rate, "every_periods": every, "delay_periods": a.delay,
        "gains": {"kp": gains.kp, "ki": gains.ki, "kd": gains.kd, "tf": gains.tf,
                  "ts": gains.ts},
        "predicted": predicted, "parameters": params.to_dict()}
    files: dict[str, str] = {}
    if a.out:
        try:
            if Path(a.out).suffix.lower() == ".json":
                from .outputs import write_json

                write_json(a.out, {"metadata": ctx.metadata(), **summary})
            else:
                Path(a.out).write_text(_gains_toml(gains, ctx.command_line, params, rate),
                                       encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write {a.out!r}: {exc.strerror or exc}") from None
        files["gains"] = a.out
    if a.plot:
        _write_plot(ctx, _loop_bode(gains.loop, None, None, params,
                                    f"tuned for {a.crossover:g} Hz"), a.plot)
        files["plot"] = a.plot
    summary["files"] = files
    if ctx.human:
        from .plots import board_text

        ctx.print(f"boostsim tune: {board_text(params)} · vref {a.vref:g} V (duty "
                  f"{gains.duty:.4f}) · PID at {rate:g} Hz (every {every} "
                  f"period{'s' if every > 1 else ''})")
        kind = " (integral only: crossover below the LC resonance)" \
            if predicted["integral_only"] else ""
        ctx.print(f"gains{kind}:")
        ctx.print(_table(["gain", "value", "unit"], [
            ["kp", f"{gains.kp:.6g}", "duty/V"], ["ki", f"{gains.ki:.6g}", "duty/(V s)"],
            ["kd", f"{gains.kd:.6g}", "duty s/V"], ["tf", f"{gains.tf:.6g}", "s"],
            ["ts", f"{gains.ts:.6g}", "s"]], [False, True, False]))
        ctx.print("predicted loop:")
        ctx.print(_margins_table(predicted, target=a.crossover))
        ctx.print(f"simulate it: boostsim simulate --vref {a.vref:g} --kp {gains.kp:.6g} --ki "
                  f"{gains.ki:.6g} --kd {gains.kd:.6g} --tf {gains.tf:.6g} --rate "
                  f"{rate:g} --start steady")
        if files:
            ctx.print("wrote " + ", ".join(files.values()))
    ctx.emit_json(summary)
    return 0


def _margins_table(p: dict[str, Any], target: float | None = None) -> str:
    rows = [["crossover", _fmt(p["crossover_hz"], ".1f") +
             (f" (target {target:g})" if target is not None else ""), "Hz"],
            ["phase margin", _fmt(p["phase_margin_deg"], ".1f"), "deg"],
            ["gain margin", _fmt(p["gain_margin_db"], ".1f") if math.isfinite(
                p["gain_margin_db"]) else "inf", "dB"]]
    if "overshoot" in p:
        rows.append(["overshoot (small reference step)", _fmt(p["overshoot"] * 100, ".1f"),
                     "%"])
    if "stable" in p:
        rows.append(["closed loop", "stable" if p["stable"] else "UNSTABLE", ""])
    rows.append(["RHP zero", _fmt(p["rhp_zero_hz"], ".0f"), "Hz"])
    rows.append(["LC resonance", _fmt(p["resonance_hz"], ".0f"), "Hz"])
    if "crossover_limit_hz" in p:
        rows.append(["crossover limit", _fmt(p["crossover_limit_hz"], ".0f"), "Hz"])
    return _table(["figure", "value", "unit"], rows, [False, True, False])


def _freqs(fmin: float | None, fmax: float | None, lo: float, hi: float, points: int,
           limit: float, what: str) -> np.ndarray:
    f1 = fmax if fmax is not None else hi
    if f1 > limit:
        raise _UsageError(f"--fmax {f1:g} Hz is above {what} ({limit:g} Hz)")
    f0 = fmin if fmin is not None else min(lo, f1 / 1000)
    if f0 >= f1:
        raise _UsageError(f"--fmin {f0:g} Hz must be below --fmax {f1:g} Hz")
    return np.geomspace(f0, f1, points)


def _loop_bode(loop, margins, f, params, note: str):
    """The Bode figure of a LoopGain (default frequencies: below the crossover and the
    resonance up to just under the Nyquist frequency)."""
    from .plots import board_text, bode_figure

    if margins is None:
        margins = loop.margins()
    if f is None:
        nyq = 0.5 / loop.sample_period
        lo = min(loop.plant.resonance_hz / 20, (margins.crossover_hz / 50
                                                if math.isfinite(margins.crossover_hz)
                                                else nyq), nyq / 1000)
        f = np.geomspace(lo, nyq * 0.98, 600)
    gm = "inf" if not math.isfinite(margins.gain_margin_db) else f"{margins.gain_margin_db:.1f} dB"
    sub = (f"{board_text(params)} · duty {loop.duty:.4f}\nPID kp {loop.kp:.4g}, ki "
           f"{loop.ki:.4g}, kd {loop.kd:.3g}, tf {loop.tf:.3g} s at "
           f"{format_si(1 / loop.sample_period, 'Hz', digits=4)} ({note})\n"
           f"crossover {_fmt(margins.crossover_hz, '.0f')} Hz, phase margin "
           f"{_fmt(margins.phase_margin_deg, '.1f')}°, gain margin {gm}"
           + ("" if margins.stable else " · UNSTABLE"))
    return bode_figure(f, loop=loop.frequency_response(f), plant=loop.plant_response(f),
                       controller=loop.controller_response(f), margins=margins,
                       rhp_zero_hz=loop.plant.rhp_zero_hz, resonance_hz=None,
                       title="Loop gain of the digital voltage loop", subtitle=sub)


def cmd_bode(ctx: Context) -> int:
    from types import SimpleNamespace

    from .design import loop_gain
    from .linearised import averaged_duty_for_vout, small_signal
    from .plots import board_text, bode_figure, bode_phase

    a = ctx.args
    given = [name for name in ("kp", "ki", "kd", "tf") if getattr(a, name) is not None]
    tuned = a.crossover is not None
    if a.vref is None and a.duty is None:
        raise _UsageError("give the operating point: --vref V or --duty D")
    if tuned and given:
        raise _UsageError(f"--crossover tunes the gains: do not give --{given[0]}")
    if tuned and a.vref is None:
        raise _UsageError("--crossover needs --vref V (the tuner's setpoint), not --duty")
    if not tuned and a.phase_margin is not None:
        raise _UsageError("--phase-margin needs --crossover F (tune the PID first)")
    if given and a.kp is None and a.ki is None:
        raise _UsageError("give the PID gains: --kp K and/or --ki K")
    plot = _default_file(ctx, a.plot, "bode.png")
    _check_writable(a.out, _DATA_KINDS, "--out")
    _check_writable(plot, _PLOT_KINDS, "--plot")
    params = ctx.board()
    if not np.isscalar(params.fsw) and np.size(params.fsw) != 1:
        raise CliError("the Bode plot needs a single converter (no per-lane parameters)")
    fsw = float(params.fsw)
    summary: dict[str, Any] = {"command": "bode", "vref": a.vref}
    columns: dict[str, np.ndarray]
    if tuned:
        gains, every = _tune(ctx, params, a.vref, a.crossover, a.phase_margin, a.rate,
                             a.delay)
        loop, duty, how = gains.loop, gains.duty, f"tuned for {a.crossover:g} Hz"
        summary["gains"] = {"kp": gains.kp, "ki": gains.ki, "kd": gains.kd, "tf": gains.tf,
                            "ts": gains.ts}
    elif given:
        T, every = _sample_period(ctx, params, a.rate)
        duty = a.duty if a.duty is not None else float(averaged_duty_for_vout(params, a.vref))
        pid = SimpleNamespace(kp=a.kp or 0.0, ki=a.ki or 0.0, kd=a.kd or 0.0, tf=a.tf or 0.0,
                              ts=T)
        try:
            loop = loop_gain(params, duty, pid, delay_periods=a.delay, sample_period=T)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        how = "given gains"
        summary["gains"] = {"kp": pid.kp, "ki": pid.ki, "kd": pid.kd, "tf": pid.tf, "ts": T}
    else:
        loop = None
        if a.rate is not None or a.delay is not None:
            raise _UsageError("--rate/--delay describe the PID loop: give --kp/--ki or "
                              "--crossover")
        duty = a.duty if a.duty is not None else float(averaged_duty_for_vout(params, a.vref))
    plant = small_signal(params, duty)
    summary["duty"] = duty
    if loop is not None:
        nyq = 0.5 / loop.sample_period
        margins = loop.margins()
        fc = margins.crossover_hz
        lo = min(plant.resonance_hz / 20, fc / 50 if math.isfinite(fc) else nyq, nyq / 1000)
        f = _freqs(a.fmin, a.fmax, lo, nyq * 0.98, a.points, nyq,
                   "the loop's Nyquist frequency")
        t_resp, p_resp, c_resp = (loop.frequency_response(f), loop.plant_response(f),
                                  loop.controller_response(f))
        columns = {"f_Hz": f, "T_mag_dB": 20 * np.log10(np.abs(t_resp)),
                   "T_phase_deg": bode_phase(t_resp, -90.0),
                   "plant_mag_dB": 20 * np.log10(np.abs(p_resp)),
                   "plant_phase_deg": bode_phase(p_resp, 0.0),
                   "controller_mag_dB": 20 * np.log10(np.abs(c_resp)),
                   "controller_phase_deg": bode_phase(c_resp, -90.0)}
        summary.update({"rate_Hz": 1.0 / loop.sample_period, "every_periods": every,
                        "margins": {"crossover_hz": margins.crossover_hz,
                                    "phase_margin_deg": margins.phase_margin_deg,
                                    "gain_margin_db": margins.gain_margin_db,
                                    "phase_crossover_hz": margins.phase_crossover_hz,
                                    "stable": margins.stable}})
    else:
        margins = None
        lo = plant.resonance_hz / 50
        f = _freqs(a.fmin, a.fmax, lo, fsw / 2, a.points, fsw / 2, "half the switching "
                   "frequency (the averaged model's limit)")
        g = plant.response(f, "gvd")
        columns = {"f_Hz": f, "plant_mag_dB": 20 * np.log10(np.abs(g)),
                   "plant_phase_deg": bode_phase(g, 0.0)}
    summary.update({"rhp_zero_hz": plant.rhp_zero_hz, "resonance_hz": plant.resonance_hz,
                    "gvd_dc_db": float(20 * np.log10(abs(plant.response(1e-3, "gvd")))),
                    "mode": plant.mode, "f_range_Hz": [float(f[0]), float(f[-1])]})
    files: dict[str, str] = {}
    if a.out:
        _write_columns(ctx, a.out, columns, ctx.metadata(duty=duty, gains=summary.get("gains")),
                       summary)
        files["data"] = a.out
    if plot:
        if loop is not None:
            fig = _loop_bode(loop, margins, f, params, how)
        else:
            fig = bode_figure(f, plant=plant.response(f, "gvd"), rhp_zero_hz=plant.rhp_zero_hz,
                              resonance_hz=plant.resonance_hz,
                              title="Control-to-output transfer function Gvd (averaged model)",
                              subtitle=f"{board_text(params)} · duty {duty:.4f} ({plant.mode})")
        _write_plot(ctx, fig, plot)
        files["plot"] = plot
    summary["files"] = files
    if ctx.human:
        op = f"vref {a.vref:g} V (duty {duty:.4f})" if a.vref is not None else f"duty {duty:g}"
        ctx.print(f"boostsim bode: {board_text(params)} · {op} · " +
                  (f"PID kp {loop.kp:.6g}, ki {loop.ki:.6g}, kd {loop.kd:.6g} at "
                   f"{1 / loop.sample_period:g} Hz ({how})" if loop is not None
                   else "plant Gvd alone (no gains)"))
        info: dict[str, Any] = {"rhp_zero_hz": plant.rhp_zero_hz,
                                "resonance_hz": plant.resonance_hz}
        if margins is not None:
            info.update(crossover_hz=margins.crossover_hz,
                        phase_margin_deg=margins.phase_margin_deg,
                        gain_margin_db=margins.gain_margin_db, stable=margins.stable)
            ctx.print(_margins_table(info))
        else:
            ctx.print(_table(["figure", "value", "unit"], [
                ["Gvd at DC", f"{summary['gvd_dc_db']:.1f}", "dB"],
                ["RHP zero", _fmt(plant.rhp_zero_hz, ".0f"), "Hz"],
                ["LC resonance", _fmt(plant.resonance_hz, ".0f"), "Hz"]],
                [False, True, False]))
        if files:
            ctx.print("wrote " + ", ".join(files.values()))
    ctx.emit_json(summary)
    if margins is not None and not margins.stable:
        ctx.warn("the closed loop with these gains is unstable")
    return 0


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


# -- firmware -------------------------------------------------------------------------------

_FIRMWARE_EPILOG = """\
examples:
  boostsim firmware install --port /dev/ttyACM0
  boostsim firmware install --port COM3 --board-config my_config.py --dry-run
  boostsim firmware files --out pico_files/

A Pico already running the firmware must be started in safe mode to be re-flashed (jumper
GP22 to GND, then reset): see docs/FIRMWARE.md. mpremote: pip install mpremote.
"""


def cmd_firmware_install(ctx: Context) -> int:
    from firmware_bridge import flash

    try:
        command = flash.install(ctx.args.port, config=ctx.args.board_config,
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
        written = flash.stage(ctx.args.out, config=ctx.args.board_config)
    except flash.FlashError as exc:
        raise CliError(str(exc)) from None
    ctx.print(f"wrote {len(written)} files to {ctx.args.out}: "
              f"{', '.join(p.name for p in written)} (copy them to the Pico, main.py last)")
    ctx.emit_json({"command": "firmware files", "files": [str(p) for p in written]})
    return 0


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




# -- bench ----------------------------------------------------------------------------------

_BENCH_EPILOG = """\
actions:
  ports      serial ports that look like the board (USB 2E8A:0005, MicroPython on a Pico)
  sweep      open-loop duty sweep: measured vs simulated, error per point, optional loss fit
  step       duty (or, on the emulator, load) step captured by the board's streaming ADC,
             overlaid on the simulated step from the same initial condition
  live       host-side PID loop (boostsim.pid.PID) holding --vref; live display, CSV log;
             --compare overlays the same loop simulated
  calibrate  ADC gain (one reference) or gain and offset (two) from your meter's readings

the board: every action but 'ports' takes
  --port PATH|URL    /dev/ttyACM0, COM3, a pyserial URL (socket://host:port, rfc2217://...),
                     the link of 'boostsim emulate --link PATH', or emu: for an emulator of the
                     --config board started inside this command; default: the one Pico found
  --max-duty D       host-side duty ceiling (refused before it is sent)
  --max-vout V       programs the board's over-voltage trip no higher than V, and turns the
                     output off when a measurement exceeds it
  --watchdog S       the board's host watchdog: output off if the host is silent for S seconds
                     (default 1; 0 leaves the board's setting)
The output is off when a command ends, fails, or is interrupted (Ctrl-C, SIGTERM); if the host
itself dies, the watchdog turns it off. A [board.calibration] table in --config (vout_gain,
vout_offset; see 'bench calibrate') is written to the board when it connects.

examples:
  boostsim bench ports
  boostsim emulate --link /tmp/board &            # an emulated board for trying things out
  boostsim bench sweep --port /tmp/board --duty 0.1:0.6:0.05 --fit r_L,v_f
  boostsim bench step --port /dev/ttyACM0 --duty 0.4:0.6 --max-vout 16
  boostsim bench step --port emu: --duty 0.5 --load-step R=24
  boostsim bench live --port emu: --vref 12 --kp 0.01 --ki 5 --rate 200 --duration 2 --compare
  boostsim bench calibrate --duty 0.3 --duty 0.6 --ref 6.771 --ref 12.02
"""

_BENCH_SWEEP_EPILOG = """\
At each duty (in the given order): set it (read back), wait --settle (the output state is polled:
a trip or a board reset is seen at once), take --samples readings, check the output is still on.
--method query: MEAS:VOLT? repeats (each the board's 16-conversion mean); stream: single
conversions streamed at about --stream-rate (a rate not locked to the PWM, so the samples cover
the switching ripple evenly). The same sweep is simulated (exact steady state of the --config
board at the duties the RP2040 PWM really produces, at the board's PWM frequency).

A trip (OVP, watchdog), a link failure or a board reset stops the sweep; the points measured so
far are written and the exit status is 1. With --resume a board reset (or a link failure the
board recovers from) repeats the interrupted point instead, up to --max-resets times.

files: --out CSV (default bench_sweep.csv): duty, duty_effective, vout_meas_V, vout_meas_std_V,
vout_meas_sem_V, samples, vout_sim_V, vout_error_V, ... with a '#' header (firmware identity,
board, error metrics, fit). --plot (default bench_sweep.png): overlay and error per point.
--log FILE: every reading as it is taken (t_s, point, duty, vout_V), flushed per row.

--fit r_L,r_on,v_f: least-squares fit of these parameters (steady state over the measured
points, weighted by their standard errors); prints values with 1-sigma uncertainties and the
correlation, and draws the fitted curve. Fittable: r_L r_on v_f r_d r_C r_sync vin L C R i_load.

examples:
  boostsim bench sweep --port emu:
  boostsim bench sweep --duty 0.1:0.6:0.05 --settle 0.2 --samples 32 --fit r_L,v_f
  boostsim bench sweep --duty 0.2,0.4,0.6 --method stream --samples 4000 --log raw.csv
"""

_BENCH_STEP_EPILOG = """\
The output runs at the first duty for --settle, the board streams at about --rate, and after
--pre the duty changes; the change and a FETC:ADC? go out in one write, which marks the step
on the board's sample clock to one sample. --post is captured after it. Load steps
(--load-step R=24, or i_load=0.1) need external gear on real hardware; with --port emu: the
emulator applies them. The simulation starts from the steady state at the first duty.
Metrics (final value, 10-90 % rise, overshoot, undershoot, 2 % settling) of the measured
(--smooth samples moving average: the switching ripple aliases into single conversions) and
simulated (per-period means) responses.

examples:
  boostsim bench step --duty 0.4:0.6
  boostsim bench step --port emu: --duty 0.5 --load-step R=24 --post 10m
"""

_BENCH_LIVE_EPILOG = """\
The host runs boostsim.pid.PID every 1/--rate s: one serial round trip per tick reads the output
state, the duty sent at the previous tick and MEAS:VOLT? (16 conversions averaged); the new
duty is sent without waiting. The loop starts with the output on at duty 0 (--slew ramps the
setpoint from there). It runs for --duration, or until Ctrl-C, which stops it safely (output
off, files written). A trip, a board reset or repeated link failures end it with exit status
1; the data up to then is kept. Rates of 100-500 Hz are realistic (a round trip costs about
1 ms); the achieved rate and the jitter of the tick intervals are reported.

display: a status line (updated in place on a terminal, once a second otherwise); --live-plot
opens a live window when a display is available. Files: --out (default bench_live.csv) is the
per-tick log written row by row (t_s, vref_V, vout_V, duty, integral, exchange_s, lateness_s)
with a '#' header; --plot (default bench_live.png) is written at the end.

--compare simulates the same loop (same PID, rate, setpoint, duty limit; ADC like MEAS:VOLT?)
from the output-off state for the first --compare-time seconds and overlays it (the switching
simulation of a closed loop costs about 10 s per simulated second).

examples:
  boostsim bench live --vref 12 --kp 0.01 --ki 5 --rate 200
  boostsim bench live --port emu: --vref 12 --kp 0.01 --ki 5 --duration 1.5 \\
      --vref-step 0.8:10 --compare
"""

_BENCH_CALIBRATE_EPILOG = """\
Calibration of the output-voltage reading: v = gain * v_board + offset (CAL:VOUT). One point
gives the gain (offset 0); two points give gain and offset. For each point the board measures
(--samples MEAS:VOLT? readings) while your meter reads the same node:
  --duty D      run the converter at D for the point (repeat --duty per point); without --duty
                the output stays off and you apply the reference voltage yourself
  --ref V       your meter's reading for the point (repeat per point, same order), or
  --interactive ask for each reading on the terminal
The result is written to the board (RAM: until a power cycle; --dry-run does not) and printed
as a TOML snippet for --config ([board.calibration], applied by bench commands on connect) and
as config.py lines for the firmware's power-up defaults; --out FILE.toml also writes it.

examples:
  boostsim bench calibrate --duty 0.6 --ref 12.031
  boostsim bench calibrate --duty 0.3 --duty 0.6 --ref 6.772 --ref 12.031
  boostsim bench calibrate --duty 0.3 --duty 0.6 --interactive
"""


@_type
def _port_text(text: str) -> str:
    if not text.strip():
        raise ValueError("--port: empty")
    return text.strip()


def _duty_limit_value(text: str) -> float:
    value = parse_si(text, name="--max-duty")
    if not 0 < value < 1:
        raise ValueError(f"--max-duty must be in (0, 1), got {text!r}")
    return value


def _fit_names(text: str) -> tuple[str, ...]:
    from firmware_bridge.bench import FITTABLE

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ValueError("--fit: give parameter names, e.g. r_L,r_on,v_f")
    bad = [n for n in names if n not in FITTABLE]
    if bad:
        raise ValueError(f"--fit: cannot fit {', '.join(bad)}; fittable: {', '.join(FITTABLE)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--fit: a parameter is repeated in {text!r}")
    return names


def _step_duties(text: str) -> tuple[float, float | None]:
    parts = text.split(":")
    if len(parts) not in (1, 2):
        raise ValueError(f"--duty {text!r}: expected FROM:TO (a duty step) or D (with "
                         f"--load-step)")
    values = [parse_si(p, name="duty") for p in parts]
    for v in values:
        if not 0 <= v < 1:
            raise ValueError(f"duty must be in [0, 1), got {v:g} (from {text!r})")
    return values[0], (values[1] if len(values) == 2 else None)


def _load_change(text: str) -> dict[str, float]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or name not in ("R", "i_load"):
        raise ValueError(f"--load-step {text!r}: expected R=OHMS or i_load=AMPS")
    number = parse_si(value, name=name)
    _probe(name, number)
    return {name: number}


def _vref_step(text: str) -> tuple[float, float]:
    when, sep, value = text.partition(":")
    if not sep:
        raise ValueError(f"--vref-step {text!r}: expected TIME:VOLTS, e.g. 1.5:10")
    t = parse_si(when, name="--vref-step time")
    v = parse_si(value, name="--vref-step volts")
    if not (math.isfinite(t) and t >= 0 and math.isfinite(v) and v > 0):
        raise ValueError(f"--vref-step {text!r}: the time must be >= 0 and the voltage > 0")
    return t, v


def _bench_parsers(sub, base, board, files) -> None:
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

    p = sub.add_parser("bench", formatter_class=_Formatter, help="the bench board",
                       description="Experiments on the bench board (or its emulator), each "
                                   "beside the same simulation.", epilog=_BENCH_EPILOG)
    bsub = p.add_subparsers(dest="bench_command", metavar="ACTION", parser_class=_Parser)
    p.set_defaults(func=None)

    q = bsub.add_parser("ports", parents=[base], formatter_class=_Formatter,
                        help="list serial ports that look like the board",
                        description="Serial ports of the board (USB VID:PID 2E8A:0005).",
                        epilog=_BENCH_EPILOG)
    q.add_argument("--all", action="store_true", help="also list the other serial ports")
    q.set_defaults(func=cmd_bench_ports)

    q = bsub.add_parser("sweep", parents=[base, board, files, common], formatter_class=_Formatter,
                        help="open-loop duty sweep, measured vs simulated",
                        description="Open-loop duty sweep on the board beside the simulated "
                                    "sweep of the same board.", epilog=_BENCH_SWEEP_EPILOG)
    g = q.add_argument_group("sweep")
    g.add_argument("--duty", type=_type(_duty_range), default=None, metavar="RANGE",
                   help="duties: start:stop:step, a,b,c or one value (default 0.1:0.6:0.05)")
    g.add_argument("--settle", type=_nonnegative("--settle"), default=0.1, metavar="S",
                   help="wait after each duty change [s] (default 0.1)")
    g.add_argument("--samples", type=_int_at_least(1, "--samples"), default=16, metavar="N",
                   help="readings per point (default 16)")
    g.add_argument("--method", choices=("query", "stream"), default="query",
                   help="MEAS:VOLT? repeats (default) or streamed single conversions")
    g.add_argument("--stream-rate", type=_positive("--stream-rate", "Hz"), default=10e3,
                   metavar="HZ", help="--method stream: sample rate (default 10k)")
    g.add_argument("--fit", type=_type(_fit_names), default=None, metavar="NAMES",
                   help="fit these parameters to the measurement, e.g. r_L,r_on,v_f")
    g.add_argument("--resume", action="store_true",
                   help="after a board reset, repeat the point instead of stopping")
    g.add_argument("--max-resets", type=_int_at_least(0, "--max-resets"), default=3,
                   metavar="N", help="--resume: at most N times (default 3)")
    g.add_argument("--log", metavar="FILE", help="per-reading log, written row by row (.csv)")
    g.add_argument("--no-files", action="store_true",
                   help="do not write the default bench_sweep.csv / .png")
    q.set_defaults(func=cmd_bench_sweep)

    q = bsub.add_parser("step", parents=[base, board, files, common], formatter_class=_Formatter,
                        help="duty or load step, measured vs simulated",
                        description="A step response captured by the board's streaming ADC, "
                                    "beside the simulated step.", epilog=_BENCH_STEP_EPILOG)
    g = q.add_argument_group("step")
    g.add_argument("--duty", type=_type(_step_duties), required=True, metavar="FROM[:TO]",
                   help="duty step FROM:TO, or the duty of a --load-step")
    g.add_argument("--load-step", type=_type(_load_change), default=None, metavar="R=OHMS",
                   help="load step instead (R=24 or i_load=0.1): emulator only (--port emu:)")
    g.add_argument("--rate", type=_positive("--rate", "Hz"), default=20e3, metavar="HZ",
                   help="streaming sample rate (default 20k, at most 20k)")
    g.add_argument("--pre", type=_positive_time("--pre"), default=5e-3, metavar="TIME",
                   help="captured before the step (default 5m)")
    g.add_argument("--post", type=_positive_time("--post"), default=20e-3, metavar="TIME",
                   help="captured after the step (default 20m)")
    g.add_argument("--settle", type=_nonnegative("--settle"), default=0.2, metavar="S",
                   help="at the first duty before capturing [s] (default 0.2)")
    g.add_argument("--smooth", type=_int_at_least(1, "--smooth"), default=None, metavar="N",
                   help="moving average for the metrics (default: 0.125 ms of samples)")
    g.add_argument("--log", metavar="FILE", help="raw samples as fetched, row by row (.csv)")
    g.add_argument("--no-files", action="store_true",
                   help="do not write the default bench_step.csv / .png")
    q.set_defaults(func=cmd_bench_step)

    q = bsub.add_parser("live", parents=[base, board, files, common], formatter_class=_Formatter,
                        help="host PID loop holding a reference voltage",
                        description="Closed loop on the host: boostsim.pid.PID at a fixed rate, "
                                    "measuring with MEAS:VOLT?.", epilog=_BENCH_LIVE_EPILOG)
    g = q.add_argument_group("loop")
    g.add_argument("--vref", type=_vout_value, required=True, metavar="V", help="setpoint [V]")
    g.add_argument("--kp", type=_gain("--kp"), required=True, metavar="K",
                   help="proportional gain [duty/V]")
    g.add_argument("--ki", type=_gain("--ki"), required=True, metavar="K",
                   help="integral gain [duty/(V s)]")
    g.add_argument("--kd", type=_gain("--kd"), default=0.0, metavar="K",
                   help="derivative gain [duty s/V] (default 0)")
    g.add_argument("--tf", type=_nonnegative("--tf"), default=0.0, metavar="S",
                   help="derivative filter time constant [s] (default 0)")
    g.add_argument("--rate", type=_positive("--rate", "Hz"), default=200.0, metavar="HZ",
                   help="loop rate (default 200 Hz)")
    g.add_argument("--duration", type=_positive_time("--duration"), default=None,
                   metavar="TIME", help="run time (default: until Ctrl-C)")
    g.add_argument("--slew", type=_positive("--slew", "V/s"), default=None, metavar="V/S",
                   help="setpoint slew limit (soft start; default: steps)")
    g.add_argument("--vref-step", dest="vref_steps", action="append", default=[],
                   type=_type(_vref_step), metavar="TIME:V",
                   help="change the setpoint at TIME s (repeatable)")
    g.add_argument("--live-plot", action="store_true",
                   help="live window (needs a display; the PNG is written either way)")
    g.add_argument("--compare", action="store_true",
                   help="simulate the same loop and overlay it on the plot")
    g.add_argument("--compare-time", type=_positive_time("--compare-time"), default=0.5,
                   metavar="TIME", help="--compare: simulated time (default 0.5 s)")
    g.add_argument("--adc-noise", type=_nonnegative("--adc-noise"), default=1.0, metavar="LSB",
                   help="--compare: ADC noise per conversion, codes rms (default 1)")
    g.add_argument("--log", dest="log", metavar="FILE", help="same as --out")
    g.add_argument("--no-files", action="store_true",
                   help="do not write the default bench_live.csv / .png")
    q.set_defaults(func=cmd_bench_live)

    q = bsub.add_parser("calibrate", parents=[base, board, common], formatter_class=_Formatter,
                        help="ADC calibration from reference voltages",
                        description="Calibrate the board's output-voltage reading from one or "
                                    "two reference voltages.", epilog=_BENCH_CALIBRATE_EPILOG)
    g = q.add_argument_group("calibration")
    g.add_argument("--ref", dest="refs", action="append", default=[], type=_vout_value,
                   metavar="V", help="meter reading for a point [V] (repeat for two points)")
    g.add_argument("--duty", dest="duties", action="append", default=[], type=_duty_value,
                   metavar="D", help="run the converter at D for a point (repeat per point)")
    g.add_argument("--interactive", action="store_true",
                   help="ask for the meter readings on the terminal")
    g.add_argument("--samples", type=_int_at_least(2, "--samples"), default=32, metavar="N",
                   help="readings averaged per point (default 32)")
    g.add_argument("--settle", type=_nonnegative("--settle"), default=0.3, metavar="S",
                   help="wait after setting a duty [s] (default 0.3)")
    g.add_argument("--dry-run", action="store_true", help="do not write CAL:VOUT to the board")
    g.add_argument("--out", metavar="FILE", help="also write the TOML snippet to FILE")
    q.set_defaults(func=cmd_bench_calibrate)


def cmd_emulate(ctx: Context) -> int:  # reached only through build_parser users
    from firmware_bridge.emulator import main as emulate_main

    return int(emulate_main(ctx.args.emulator_args) or 0)


def cmd_bench_ports(ctx: Context) -> int:
    from serial.tools import list_ports

    from firmware_bridge.board import PICO_VID_PID, find_ports

    vid, pid = PICO_VID_PID
    wanted = f"{vid:04X}:{pid:04X}"
    boards = find_ports()
    everything = list(list_ports.comports())

    def describe(port) -> dict[str, Any]:
        return {"device": port.device, "description": port.description,
                "usb": f"{port.vid:04X}:{port.pid:04X}" if port.vid is not None else None,
                "serial_number": port.serial_number, "location": port.location}

    others = [describe(p) for p in everything if p not in boards]
    summary: dict[str, Any] = {"command": "bench ports", "vid_pid": wanted,
                               "boards": [describe(p) for p in boards]}
    if ctx.args.all:
        summary["other_ports"] = others
    if ctx.human:
        if boards:
            ctx.print(f"boards (USB {wanted}):")
            for b in summary["boards"]:
                ctx.print(f"  {b['device']}  serial {b['serial_number'] or '?'}  "
                          f"{b['description'] or ''}".rstrip())
            if len(boards) > 1:
                ctx.print("several boards: choose one with --port")
        else:
            ctx.print(f"no board found (no serial port with USB {wanted}).")
            ctx.print("hints: plug the Pico in with a data cable and check that MicroPython runs "
                      "(it appears as /dev/ttyACM* on Linux, /dev/cu.usbmodem* on macOS, COMx "
                      "on Windows); on Linux your user needs access to the port (the 'dialout' "
                      "group); without hardware, start an emulated board with 'boostsim "
                      "emulate --link /tmp/board' and use --port /tmp/board (or --port emu:).")
        if ctx.args.all or not boards:
            if others:
                ctx.print("other serial ports:" if boards else "serial ports present:")
                for o in others:
                    ctx.print(f"  {o['device']}  {o['usb'] or ''}  {o['description'] or ''}"
                              .rstrip())
    ctx.emit_json(summary)
    return 0


class _BenchSession:
    """Opens the board (or starts an emulator for --port emu:) for a bench command; closes it
    with the output off; converts driver errors to one-line CLI errors."""

    EMULATOR_PORTS = ("emu:", "emu", "emulator")

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.board = None
        self.emulator = None

    def __enter__(self):
        from firmware_bridge.board import Board, BoardError

        a = self.ctx.args
        port = a.port
        try:
            if port is not None and port.lower() in self.EMULATOR_PORTS:
                from firmware_bridge.emulator import Emulator

                self.emulator = Emulator(config=a.config) if a.config else Emulator()
                self.emulator.start()
                port = self.emulator.port
                self.ctx.note(f"started an emulated board on {port}")
            self.board = Board(port, timeout=a.timeout, max_duty=a.max_duty,
                               max_vout=a.max_vout, watchdog=a.watchdog, retries=a.retries)
            self.board.__enter__()
            if a.clear_trip:
                trip = self.board.trip()
                if trip != "NONE":
                    self.board.clear_trip()
                    self.ctx.note(f"cleared a latched {trip} trip")
            cal = self._config_calibration()
            if cal is not None:
                self.board.calibrate_vout(*cal)
                self.ctx.note(f"calibration from the configuration: gain {cal[0]:g}, offset "
                              f"{cal[1]:g} V")
        except BoardError as exc:
            self._shutdown()
            raise CliError(str(exc)) from None
        except BaseException:
            self._shutdown()
            raise
        return self

    def _config_calibration(self) -> tuple[float, float] | None:
        document, source = self.ctx.document()
        table = document.get("board", {}).get("calibration") if isinstance(
            document.get("board"), dict) else None
        if not table:
            return None
        try:
            gain = float(table.get("vout_gain", 1.0))
            offset = float(table.get("vout_offset", 0.0))
        except (TypeError, ValueError):
            raise CliError(f"{source}: [board.calibration] vout_gain and vout_offset must be "
                           f"numbers") from None
        return gain, offset

    def _shutdown(self) -> None:
        board, self.board = self.board, None
        if board is not None:
            board.__exit__(None, None, None)
            if board.output_state is not False:
                wdog = self.ctx.args.watchdog
                self.ctx.warn("could not confirm that the board's output is off" +
                              (f"; its watchdog turns it off after {wdog:g} s without commands"
                               if wdog else "; CHECK THE BOARD (no watchdog armed)"))
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None

    def __exit__(self, exc_type, exc, tb) -> bool:
        from firmware_bridge.board import BoardError

        self._shutdown()
        if isinstance(exc, BoardError):
            raise CliError(str(exc)) from None
        return False

    def metadata(self, **extra: Any) -> dict[str, Any]:
        b = self.board
        _, source = self.ctx.document()
        return self.ctx.metadata(firmware=str(b.identity), port=b.port_name,
                                 emulated=self.emulator is not None or None,
                                 config=source, **extra)


def _default_file(ctx: Context, given: str | None, default: str) -> str | None:
    if given:
        return given
    return None if ctx.args.no_files else default


def _open_log(ctx: Context, path: str | None, columns: Sequence[str], meta: dict[str, Any]):
    if not path:
        return None
    from .datalog import SampleLog

    try:
        return SampleLog(path, columns, meta)
    except OSError as exc:
        raise CliError(f"cannot write {path!r}: {exc.strerror or exc}") from None


def _mv(value: float) -> str:
    return _fmt(value * 1e3, ".2f")


def cmd_bench_sweep(ctx: Context) -> int:
    from firmware_bridge import bench

    a = ctx.args
    out = _default_file(ctx, a.out, "bench_sweep.csv")
    plot = _default_file(ctx, a.plot, "bench_sweep.png")
    _check_writable(out, _DATA_KINDS, "--out")
    _check_writable(plot, _PLOT_KINDS, "--plot")
    _check_writable(a.log, (".csv",), "--log")
    params = ctx.board()
    if params.n_lanes != 1:
        raise CliError("the bench compares one converter: no per-lane parameters")
    duties = a.duty if a.duty is not None else _duty_range("0.1:0.6:0.05")
    if a.max_duty is not None and np.max(duties) > a.max_duty:
        raise _UsageError(f"the sweep reaches duty {np.max(duties):g}, above --max-duty "
                          f"{a.max_duty:g}")
    if a.fit and duties.size <= len(a.fit):
        raise _UsageError(f"--fit {','.join(a.fit)} needs more than {len(a.fit)} points")
    with _BenchSession(ctx) as session:
        board = session.board
        limit = board.duty_limit
        if np.max(duties) > limit:
            raise CliError(f"the sweep reaches duty {np.max(duties):g}, above the board's "
                           f"limit {limit:g} (SOUR:PWM:DUTY:LIM)")
        meta = session.metadata(study={"duty": duties.tolist(), "settle_s": a.settle,
                                       "samples": a.samples, "method": a.method})
        log = _open_log(ctx, a.log, ("t_s", "point", "duty", "vout_V"), meta)
        if ctx.human:
            ctx.print(f"boostsim bench sweep: {board.identity} on {board.port_name} · "
                      f"{duties.size} points · settle {a.settle:g} s · {a.samples} "
                      f"{'MEAS:VOLT? readings' if a.method == 'query' else 'streamed samples'}"
                      f" per point")
            ctx.print(f"{'point':>5}  {'duty':>6}  {'vout [V]':>9}  {'sem [mV]':>8}  "
                      f"{'sim [V]':>9}  {'error [mV]':>10}")

        freq = board.frequency
        sim_all = bench.simulate_sweep(params, bench.effective_pwm(duties, freq)[1], freq)

        def on_point(i: int, sweep) -> None:
            if ctx.human:
                sim = sim_all["vout_mean"][i]
                print(f"{i + 1:>5}  {sweep.duty[-1]:>6.3f}  {sweep.vout_mean[-1]:>9.4f}  "
                      f"{sweep.vout_sem[-1] * 1e3:>8.2f}  {sim:>9.4f}  "
                      f"{(sweep.vout_mean[-1] - sim) * 1e3:>10.2f}", file=ctx.stdout,
                      flush=True)

        try:
            result = bench.run_sweep(board, duties, settle=a.settle, samples=a.samples,
                                     method=a.method, stream_rate=a.stream_rate, log=log,
                                     on_point=on_point, resume=a.resume,
                                     max_resets=a.max_resets, report=ctx.note)
        finally:
            if log is not None:
                log.close()
        stats = dict(board.stats)
    result.sim = bench.simulate_sweep(params, result.duty_effective, result.frequency)
    if a.fit and result.n_points > len(a.fit):
        result.fit = bench.fit_losses(params, result.duty_effective, result.vout_mean,
                                      result.vout_sem, a.fit, frequency=result.frequency)
    elif a.fit:
        ctx.warn(f"--fit skipped: only {result.n_points} points were measured")
    metrics = result.error_metrics()
    summary: dict[str, Any] = {
        "command": "bench sweep", "firmware": meta["firmware"], "port": meta["port"],
        "points": result.n_points, "requested_points": int(duties.size),
        "frequency_Hz": result.frequency, "method": a.method, "samples": a.samples,
        "error_rms_V": metrics["rms"], "error_max_V": metrics["max"],
        "chi2_per_point": metrics["chi2_per_point"], "resets": result.resets,
        "link": stats, "aborted": result.aborted,
        "fit": result.fit.as_dict() if result.fit is not None else None}
    files: dict[str, str] = {}
    if out:
        _write_columns(ctx, out, result.columns(),
                       dict(meta, errors={"rms_V": metrics["rms"], "max_V": metrics["max"]},
                            fit=summary["fit"], aborted=result.aborted))
        files["data"] = out
    if plot:
        _write_plot(ctx, bench.sweep_figure(result, params), plot)
        files["plot"] = plot
    if a.log:
        files["log"] = a.log
    summary["files"] = files
    if ctx.human:
        ctx.print(f"{result.n_points} points: error (measured - simulated) rms "
                  f"{_mv(metrics['rms'])} mV, max {_mv(metrics['max'])} mV; mean "
                  f"(error/sem)^2 = {_fmt(metrics['chi2_per_point'], '.2f')}")
        if stats["retries"] or stats["resets"] or result.resets:
            ctx.print(f"link: {stats['retries']} retries, {stats['resets']} board reset(s) "
                      f"detected, {result.resets} point(s) repeated")
        if int(result.outliers.sum()):
            ctx.print(f"{int(result.outliers.sum())} outlying readings dropped (corrupted on "
                      f"the link?)")
        if result.fit is not None:
            f = result.fit
            ctx.print(f"fit ({'converged' if f.success else 'NOT converged: ' + f.message}; "
                      f"chi2/dof {f.chi2_per_dof:.2f}, rms {f.rms * 1e3:.2f} mV):")
            rows = [[n, _fmt(f.initial[n], ".4g"), _fmt(f.values[n], ".4g"),
                     _fmt(f.std[n], ".2g"), _unit(n)] for n in f.names]
            ctx.print(_table(["parameter", "config", "fitted", "± 1σ", "unit"], rows,
                             [False, True, True, True, False]))
            if len(f.names) > 1:
                ctx.print("correlation: " + "; ".join(
                    f"{f.names[i]}/{f.names[j]} {f.correlation[i, j]:+.2f}"
                    for i in range(len(f.names)) for j in range(i + 1, len(f.names))))
        if files:
            ctx.print("wrote " + ", ".join(files.values()))
    ctx.emit_json(summary)
    if result.aborted:
        message = (f"sweep stopped after {result.n_points} of {duties.size} points (kept in "
                   f"{out or 'memory'}): {result.aborted}")
        if result.abort_kind in ("interrupt", "terminate"):
            print(f"{PROG}: {message}; output off", file=sys.stderr)
            return 130 if result.abort_kind == "interrupt" else 143
        raise CliError(message)
    return 0


def cmd_bench_step(ctx: Context) -> int:
    from firmware_bridge import bench

    a = ctx.args
    out = _default_file(ctx, a.out, "bench_step.csv")
    plot = _default_file(ctx, a.plot, "bench_step.png")
    _check_writable(out, _DATA_KINDS, "--out")
    _check_writable(plot, _PLOT_KINDS, "--plot")
    _check_writable(a.log, (".csv",), "--log")
    d1, d2 = a.duty
    if a.load_step is None and d2 is None:
        raise _UsageError("give a duty step FROM:TO (e.g. --duty 0.4:0.6) or --load-step")
    if a.load_step is not None and d2 is not None:
        raise _UsageError("--load-step runs at one duty: give --duty D, not FROM:TO")
    if a.load_step is not None and (a.port or "").lower() not in _BenchSession.EMULATOR_PORTS:
        raise _UsageError("a load step needs external gear on real hardware; only the "
                          "in-process emulator (--port emu:) can apply it")
    if a.rate > 20e3:
        raise _UsageError(f"--rate {a.rate:g}: the board streams at most 20 kHz")
    params = ctx.board()
    if params.n_lanes != 1:
        raise CliError("the bench compares one converter: no per-lane parameters")
    with _BenchSession(ctx) as session:
        board = session.board
        for d in (d1, d2):
            if d is not None and d > board.duty_limit:
                raise CliError(f"duty {d:g} is above the board's limit {board.duty_limit:g}")
        meta = session.metadata(step={"duty": d1, "duty_after": d2, "load": a.load_step,
                                      "rate_Hz": a.rate, "pre_s": a.pre, "post_s": a.post})
        log = _open_log(ctx, a.log, ("t_board_s", "index", "vout_V"), meta)
        apply = None
        if a.load_step is not None:
            emu = session.emulator
            change = a.load_step

            def apply() -> float:
                return emu.set_load(**change)  # the board time of the change
        try:
            step = bench.run_step(board, d1, duty_after=d2, load_change=a.load_step,
                                  apply_load=apply, rate=a.rate, pre=a.pre, post=a.post,
                                  settle=a.settle, smooth=a.smooth, log=log,
                                  report=ctx.warn)
        finally:
            if log is not None:
                log.close()
    bench.simulate_step(params, step)

    def figures(m) -> dict[str, float] | None:
        if m is None:
            return None
        return {k: float(getattr(m, k)) for k in ("initial", "final", "rise_time", "overshoot",
                                                  "undershoot", "settling_time", "deviation")}

    summary = {"command": "bench step", "firmware": meta["firmware"], "kind": step.kind,
               "duty": step.duty, "duty_after": step.duty_after, "load": step.load_change,
               "rate_Hz": step.rate, "samples": int(step.t.size),
               "lost_samples": sum(n for _, n in step.gaps),
               "mark_uncertainty_s": step.mark_uncertainty, "smooth_samples": step.smooth,
               "measured": figures(step.metrics), "simulated": figures(step.metrics_sim)}
    files: dict[str, str] = {}
    if out:
        _write_columns(ctx, out, step.columns(), dict(meta, measured=summary["measured"],
                                                      simulated=summary["simulated"]))
        files["data"] = out
    if plot:
        fig = bench.step_figure(step, params)
        fig.axes[0].set_xlim(-a.pre * 1e3, a.post * 1e3)
        _write_plot(ctx, fig, plot)
        files["plot"] = plot
    if a.log:
        files["log"] = a.log
    summary["files"] = files
    if ctx.human:
        what = (f"duty {step.duty:g} -> {step.duty_after:g}" if step.kind == "duty" else
                f"load {', '.join(f'{k}={v:g}' for k, v in step.load_change.items())} at duty "
                f"{step.duty:g}")
        ctx.print(f"boostsim bench step: {board.identity} · {what} · {step.t.size} samples at "
                  f"{step.rate:.6g} S/s (step marked to ±{step.mark_uncertainty * 1e6:.0f} µs)")
        rows = []
        for label, key, scale, spec, unit in (
                ("initial", "initial", 1, ".4f", "V"), ("final", "final", 1, ".4f", "V"),
                ("rise time 10-90 %", "rise_time", 1e3, ".3f", "ms"),
                ("overshoot", "overshoot", 1, ".1f", "%"),
                ("undershoot", "undershoot", 1, ".1f", "%"),
                ("settling time (2 %)", "settling_time", 1e3, ".3f", "ms")):
            m, s = summary["measured"], summary["simulated"]
            rows.append([label, _fmt(m[key] * scale, spec) if m else "-",
                         _fmt(s[key] * scale, spec) if s else "-", unit])
        ctx.print(_table(["figure", "measured", "simulated", "unit"], rows,
                         [False, True, True, False]))
        if files:
            ctx.print("wrote " + ", ".join(files.values()))
    ctx.emit_json(summary)
    return 0


def cmd_bench_live(ctx: Context) -> int:
    from firmware_bridge import bench
    from firmware_bridge.board import BoardResetError, TripError

    a = ctx.args
    if a.log and a.out and a.log != a.out:
        raise _UsageError("--log is the same as --out for bench live: give one")
    out = _default_file(ctx, a.out or a.log, "bench_live.csv")
    plot = _default_file(ctx, a.plot, "bench_live.png")
    _check_writable(out, (".csv",), "--out")
    _check_writable(plot, _PLOT_KINDS, "--plot")
    if a.duration is None and not (sys.stdin.isatty() or ctx.stdout.isatty()):
        ctx.warn("no --duration: the loop runs until interrupted (Ctrl-C / SIGINT)")
    params = ctx.board()
    if params.n_lanes != 1:
        raise CliError("the bench compares one converter: no per-lane parameters")
    plotter = None
    if a.live_plot:
        if bench.display_available():
            plotter = bench.LivePlotter(f"boostsim bench live: vref {a.vref:g} V")
        else:
            ctx.warn("--live-plot: no display available; the plot is written at the end only")
    tty = ctx.stdout.isatty()
    width = [0]

    def status(d: dict[str, float]) -> None:
        if not ctx.human:
            return
        line = (f"t {d['t']:7.2f} s  vref {d['vref']:7.3f} V  vout {d['vout']:7.3f} V  "
                f"duty {d['duty']:.4f}  rate {_fmt(d['rate'], '.1f')} Hz  jitter "
                f"{_fmt(d['jitter'] * 1e3, '.3f')} ms")
        if tty:
            print("\r" + line.ljust(width[0]), end="", file=ctx.stdout, flush=True)
            width[0] = len(line)
        else:
            print(line, file=ctx.stdout, flush=True)

    with _BenchSession(ctx) as session:
        board = session.board
        meta = session.metadata(loop={"vref": a.vref, "kp": a.kp, "ki": a.ki, "kd": a.kd,
                                      "tf": a.tf, "rate_Hz": a.rate, "slew": a.slew,
                                      "vref_steps": a.vref_steps, "duration_s": a.duration})
        log = _open_log(ctx, out, bench.LIVE_COLUMNS, meta)
        if ctx.human:
            ctx.print(f"boostsim bench live: {board.identity} on {board.port_name} · PID kp "
                      f"{a.kp:g} ki {a.ki:g} kd {a.kd:g} at {a.rate:g} Hz · vref {a.vref:g} V" +
                      (f" for {a.duration:g} s" if a.duration else " until Ctrl-C"))
        try:
            result = bench.run_live(board, vref=a.vref, kp=a.kp, ki=a.ki, kd=a.kd, tf=a.tf,
                                    rate=a.rate, duration=a.duration, slew=a.slew,
                                    vref_steps=a.vref_steps, log=log, status=status,
                                    status_every=0.2 if tty else 1.0, plotter=plotter)
        finally:
            if log is not None:
                log.close()
            if plotter is not None:
                plotter.close()
            if tty and ctx.human:
                print(file=ctx.stdout)
        stats = dict(board.stats)
    if a.compare and result.ticks > 2:
        span = min(float(result.t[-1]), a.compare_time)
        ctx.note(f"simulating the loop for {span:g} s ...")
        bench.simulate_live(params, result, duration=span, noise_lsb=a.adc_noise)
    timing = result.timing()
    summary: dict[str, Any] = {
        "command": "bench live", "firmware": meta["firmware"], "ticks": result.ticks,
        "duration_s": float(result.t[-1]) if result.ticks else 0.0, "rate_set_Hz": a.rate,
        "rate_achieved_Hz": timing["rate"], "jitter_std_s": timing["jitter_std"],
        "jitter_p99_s": timing["jitter_p99"], "jitter_max_s": timing["jitter_max"],
        "round_trip_median_s": timing["exchange_median"],
        "round_trip_p99_s": timing["exchange_p99"], "overruns": result.overruns,
        "link_errors": result.link_errors, "duty_mismatches": result.duty_mismatches,
        "link": stats, "stopped": result.stopped}
    if result.ticks:
        tail = result.t >= result.t[-1] - 0.1 * max(result.t[-1], 1e-9)
        summary["final"] = {"vref_V": float(result.vref[-1]),
                            "vout_mean_V": float(result.vout[tail].mean()),
                            "vout_std_V": float(result.vout[tail].std()),
                            "duty_mean": float(result.duty[tail].mean())}
    if result.sim is not None:
        # Tick by tick: what the host loop measured vs what the simulated loop's ADC read.
        sim_t, sim_m = result.sim["t_ctrl"], result.sim["measured"]
        inside = result.t <= sim_t[-1]
        if inside.sum() > 2:
            diff = result.vout[inside] - np.interp(result.t[inside], sim_t, sim_m)
            last = result.t[inside] >= 0.8 * float(sim_t[-1])
            summary["compare"] = {"simulated_s": float(sim_t[-1]),
                                  "rms_difference_V": float(np.sqrt(np.mean(diff ** 2))),
                                  "final_difference_V": float(diff[last].mean())
                                  if last.any() else math.nan}
    files: dict[str, str] = {}
    if out:
        files["log"] = out
    if plot:
        _write_plot(ctx, bench.live_figure(result, params), plot)
        files["plot"] = plot
    summary["files"] = files
    if ctx.human:
        how = {"duration": "after --duration", "interrupt": "by Ctrl-C",
               "terminate": "by SIGTERM", "stopped": "on request"}.get(result.stopped,
                                                                      "by an error")
        ctx.print(f"stopped {how}; output off. {result.ticks} ticks, achieved "
                  f"{_fmt(timing['rate'], '.1f')} Hz (set {a.rate:g}), jitter "
                  f"{_fmt(timing['jitter_std'] * 1e3, '.3f')} ms rms / "
                  f"{_fmt(timing['jitter_p99'] * 1e3, '.3f')} ms p99, round trip "
                  f"{_fmt(timing['exchange_median'] * 1e3, '.3f')} ms median, "
                  f"{result.overruns} overruns")
        if "final" in summary:
            f = summary["final"]
            ctx.print(f"last 10 %: vout {f['vout_mean_V']:.4f} V ± {f['vout_std_V'] * 1e3:.2f} mV "
                      f"(vref {f['vref_V']:g} V), duty {f['duty_mean']:.4f}")
        if "compare" in summary:
            c = summary["compare"]
            ctx.print(f"measured vs simulated loop over {c['simulated_s']:.3g} s: rms difference "
                      f"{c['rms_difference_V'] * 1e3:.1f} mV, over the last 20 % "
                      f"{_fmt(c['final_difference_V'] * 1e3, '.2f')} mV")
        if files:
            ctx.print("wrote " + ", ".join(files.values()))
    ctx.emit_json(summary)
    if result.error is not None:
        err = result.error
        hint = ""
        if isinstance(err, TripError) and err.cause == "WDOG":
            hint = " (was the host stalled or suspended?)"
        elif isinstance(err, BoardResetError):
            hint = " (power glitch or hardware watchdog?)"
        raise CliError(f"live loop stopped after {result.ticks} ticks: {err}{hint}; data kept "
                       f"in {out or 'memory'}")
    return 143 if result.stopped == "terminate" else 0


def cmd_bench_calibrate(ctx: Context) -> int:
    from firmware_bridge import bench

    a = ctx.args
    n = len(a.duties) if a.duties else len(a.refs)
    if a.interactive:
        if a.refs:
            raise _UsageError("--interactive asks for the readings: do not give --ref")
        n = len(a.duties) or 1
    else:
        if not a.refs:
            raise _UsageError("give the meter reading(s): --ref V (one or two), or "
                              "--interactive")
        if a.duties and len(a.duties) != len(a.refs):
            raise _UsageError(f"{len(a.duties)} --duty but {len(a.refs)} --ref: give one duty "
                              f"per reference (or no --duty)")
    if n not in (1, 2):
        raise _UsageError(f"calibration takes one or two points, got {n}")
    if a.out:
        _check_writable(a.out, (".toml",), "--out")
    with _BenchSession(ctx) as session:
        board = session.board
        points = []
        refs = list(a.refs)
        try:
            for i in range(n):
                duty = a.duties[i] if a.duties else None
                if duty is not None:
                    bench.switch_on_at(board, duty)  # ramped: no overshoot into the OVP
                    board.hold(a.settle, expect_on=True)
                    where = f"duty {duty:g}"
                else:
                    board.output(False)
                    where = "output off (external reference)"
                raw, std, cal = bench.measure_reading(board, a.samples)
                if a.interactive:
                    refs.append(_ask_reading(i, where, board))
                points.append({"duty": duty, "reference_V": refs[i], "raw_V": raw,
                               "raw_std_V": std, "reading_V": cal})
                ctx.note(f"point {i + 1}: {where}: board reads {cal:.5f} V (uncalibrated "
                         f"{raw:.5f} V ± {std * 1e3:.2f} mV), reference {refs[i]:.5f} V")
            try:
                gain, offset = bench.solve_calibration([p["raw_V"] for p in points], refs)
            except ValueError as exc:
                raise CliError(str(exc)) from None
            check = None
            if not a.dry_run:
                board.calibrate_vout(gain, offset)
                if a.duties:  # the last point is still running: read it again
                    check = bench.measure_reading(board, a.samples)[2]
        finally:
            board.output(False)
        identity = str(board.identity)
    snippet = bench.calibration_toml(gain, offset, identity=identity,
                                     points=[(p["raw_V"], p["reference_V"]) for p in points])
    if a.out:
        try:
            Path(a.out).write_text(snippet, encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write {a.out!r}: {exc.strerror or exc}") from None
    summary = {"command": "bench calibrate", "firmware": identity, "gain": gain,
               "offset_V": offset, "points": points, "written_to_board": not a.dry_run,
               "check_reading_V": check, "toml": snippet,
               "files": {"toml": a.out} if a.out else {}}
    if ctx.human:
        ctx.print(f"calibration: gain {gain:.6g}, offset {offset:.6g} V" +
                  (" (dry run: not written to the board)" if a.dry_run else
                   " written to the board (CAL:VOUT; RAM only, until a power cycle)"))
        if check is not None:
            ctx.print(f"check: at duty {a.duties[-1]:g} the board now reads {check:.5f} V "
                      f"(reference {refs[-1]:.5f} V)")
        ctx.print("add to the board configuration (--config):")
        ctx.print(snippet.rstrip())
        if a.out:
            ctx.print(f"wrote {a.out}")
    ctx.emit_json(summary)
    return 0


def _ask_reading(i: int, where: str, board) -> float:
    """Prompt for a meter reading; meanwhile a thread keeps polling the board (the host
    watchdog stays fed while the converter runs, and a trip is noticed)."""
    import threading

    stop = threading.Event()
    failure: list[BaseException] = []

    def keepalive() -> None:
        from firmware_bridge.board import BoardError

        while not stop.wait(0.2):
            try:
                board.check(expect_on=board.output_state is True)
            except BoardError as exc:
                failure.append(exc)
                return

    thread = threading.Thread(target=keepalive, daemon=True)
    thread.start()
    try:
        prompt = f"point {i + 1} ({where}): your meter's reading [V]: "
        while True:
            print(prompt, end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if failure:
                raise failure[0]
            if not line:
                raise CliError("no meter reading given (end of input)")
            try:
                return parse_si(line.strip(), name="reading")
            except ValueError as exc:
                print(f"  {exc}", file=sys.stderr)
    finally:
        stop.set()
        thread.join(2.0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
