"""Reference transient simulation of one boost converter with ngspice in batch mode.

The benchmark uses this to compare the boostsim engine's speed (and, loosely, its waveforms)
against a general-purpose SPICE simulator solving the same circuit. Only ``BoostParams`` is
imported from boostsim; nothing here depends on the simulation engine.

Circuit (one lane), as close to boostsim's model as SPICE allows::

    vin --[r_L]--[L, IC=0]-- sw --[sidiode: v_f, r_d]-- out --[C, IC=0]--[r_C]-- 0
                             |                          |
                  S1 (r_on, PWM) to 0           R and i_load to 0

* The low-side switch is a hysteretic voltage-controlled switch (``S`` element) driven by a
  trailing-edge PWM ``PULSE``: ON from the start of each period for ``duty * Ts``. The pulse
  width is shortened by one rise time so that the switch (which flips at 70 % / 30 % of the
  0-1 V ramp) is ON for exactly ``duty * Ts``.
* The diode is the XSPICE ``sidiode`` code model (ngspice >= 30, ``xtradev.cm``): a
  piecewise-linear ``I = (V - v_f) / r_d`` above ``v_f`` and ``V / roff`` below it, i.e. the
  same ideal-diode-plus-drop boostsim uses (with a ``roff`` leak of 1 GOhm).
* ``synchronous=True`` replaces the diode with a second switch (``r_sync``) driven by the
  complementary pulse; it conducts both ways, as in boostsim.
* Zero series resistances (r_L, r_C) are omitted; switch and diode on-resistances are
  floored at 1 uOhm (``sidiode`` rejects smaller ``ron``). ``R = inf`` omits the resistor.
* ``.tran`` runs with ``uic`` from i_L = 0, v_C = 0, max step ``max_step_fraction * Ts``;
  ``i(L1)`` and ``v(out)`` are written with ``wrdata`` (15 significant digits, so that
  time points a few picoseconds apart at the switching edges stay distinct) from a
  ``.control`` block.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from boostsim.params import BoostParams

__all__ = ["NgspiceRun", "netlist", "ngspice_available", "run_ngspice"]

#: The ngspice executable (override with the environment variable ``NGSPICE``).
NGSPICE = os.environ.get("NGSPICE", "ngspice")

#: Smallest on-resistance passed to ngspice (the ``sidiode`` model's lower limit).
R_FLOOR = 1e-6
#: Off-resistance of the switches and of the diode.
R_OFF = 1e9
#: Gate-pulse rise/fall time, as a fraction of the switching period.
EDGE_FRACTION = 1e-6

DEFAULT_OUT_FILE = "boost_out.txt"


@dataclass
class NgspiceRun:
    """The result of one ngspice batch run."""

    wall_s: float  # wall time of the whole ngspice process (start-up included), seconds
    t: np.ndarray  # s
    il: np.ndarray  # inductor current, A
    vout: np.ndarray  # output voltage (after ESR, i.e. the diode cathode node), V
    netlist: str


def _num(x: float) -> str:
    """A float as ngspice reads it: plain digits and exponent, no SI suffix ambiguity."""
    return format(float(x), ".12g")


def _one_lane(p: BoostParams) -> BoostParams:
    if p.n_lanes != 1:
        raise ValueError(f"ngspice reference simulates one converter; got {p.n_lanes} lanes "
                         f"(pass p.lane(i))")
    return p.lane(0)


def _gate(name: str, node: str, duty: float, ts: float, inverted: bool) -> str:
    """A 0/1 V trailing-edge PWM source (or its complement) for a hysteretic switch."""
    if duty <= 0.0 or duty >= 1.0:
        on = (duty >= 1.0) != inverted
        return f"{name} {node} 0 DC {1 if on else 0}"
    edge = ts * EDGE_FRACTION
    width = max(duty * ts - edge, 0.0)
    v1, v2 = (1, 0) if inverted else (0, 1)
    return (f"{name} {node} 0 PULSE({v1} {v2} 0 {_num(edge)} {_num(edge)} {_num(width)} "
            f"{_num(ts)})")


def netlist(p: BoostParams, duty: float, n_periods: int, max_step_fraction: float = 0.01,
            out_file: str = DEFAULT_OUT_FILE) -> str:
    """The ngspice netlist (with a batch ``.control`` block) for one converter lane.

    ``out_file`` is where ``wrdata`` writes the columns ``time i(L1) v(out)``; a relative
    name is relative to ngspice's working directory. It must not contain whitespace.
    """
    p = _one_lane(p)
    duty = float(duty)
    if not 0.0 <= duty <= 1.0:
        raise ValueError(f"duty must be in [0, 1], got {duty!r}")
    if int(n_periods) != n_periods or n_periods < 1:
        raise ValueError(f"n_periods must be a positive integer, got {n_periods!r}")
    if not 0.0 < max_step_fraction <= 1.0:
        raise ValueError(f"max_step_fraction must be in (0, 1], got {max_step_fraction!r}")
    if any(c.isspace() for c in out_file):
        raise ValueError(f"out_file must not contain whitespace: {out_file!r}")

    ts = 1.0 / float(p.fsw)
    t_stop = int(n_periods) * ts
    t_max = max_step_fraction * ts
    lines = [
        "* boostsim reference: boost converter, one lane",
        f"VIN vin 0 DC {_num(p.vin)}",
    ]
    if p.r_L > 0.0:
        lines += [f"RL vin nl {_num(p.r_L)}", f"L1 nl sw {_num(p.L)} IC=0"]
    else:
        lines += [f"L1 vin sw {_num(p.L)} IC=0"]
    lines += [
        _gate("VG", "gate", duty, ts, inverted=False),
        "S1 sw 0 gate 0 SWLOW",
        f".model SWLOW SW(RON={_num(max(p.r_on, R_FLOOR))} ROFF={_num(R_OFF)} VT=0.5 VH=0.2)",
    ]
    if p.synchronous:
        lines += [
            _gate("VGS", "gates", duty, ts, inverted=True),
            "S2 sw out gates 0 SWSYNC",
            f".model SWSYNC SW(RON={_num(max(p.r_sync, R_FLOOR))} ROFF={_num(R_OFF)} "
            f"VT=0.5 VH=0.2)",
        ]
    else:
        lines += [
            "AD1 sw out DIDEAL",
            f".model DIDEAL sidiode(ron={_num(max(p.r_d, R_FLOOR))} roff={_num(R_OFF)} "
            f"vfwd={_num(p.v_f)})",
        ]
    if p.r_C > 0.0:
        lines += [f"C1 out cesr {_num(p.C)} IC=0", f"RC cesr 0 {_num(p.r_C)}"]
    else:
        lines += [f"C1 out 0 {_num(p.C)} IC=0"]
    if math.isfinite(p.R):
        lines += [f"RLOAD out 0 {_num(p.R)}"]
    lines += [
        f"ILOAD out 0 DC {_num(p.i_load)}",
        f".tran {_num(t_max)} {_num(t_stop)} 0 {_num(t_max)} uic",
        ".control",
        "set wr_singlescale",
        "set wr_vecnames",
        "set numdgt=15",
        "run",
        f"wrdata {out_file} i(L1) v(out)",
        "quit",
        ".endc",
        ".end",
    ]
    return "\n".join(lines) + "\n"


def ngspice_available() -> bool:
    """True when the ngspice executable is on PATH and runs."""
    exe = shutil.which(NGSPICE)
    if exe is None:
        return False
    try:
        result = subprocess.run([exe, "--version"], stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0 and b"ngspice" in result.stdout.lower()


def run_ngspice(p: BoostParams, duty: float, n_periods: int,
                max_step_fraction: float = 0.01) -> NgspiceRun:
    """Simulate ``n_periods`` switching periods of one converter with ``ngspice -b``.

    ``wall_s`` times the whole ngspice process (start-up, code-model loading, parsing,
    the transient, writing the data); reading the data back with numpy is not included.
    Raises ``RuntimeError`` (with ngspice's output) if ngspice fails or writes no data.
    """
    exe = shutil.which(NGSPICE)
    if exe is None:
        raise RuntimeError(f"ngspice executable {NGSPICE!r} not found on PATH")
    text = netlist(p, duty, n_periods, max_step_fraction, out_file=DEFAULT_OUT_FILE)
    with tempfile.TemporaryDirectory(prefix="boostsim_ngspice_") as tmp:
        work = Path(tmp)
        (work / "boost.cir").write_text(text, encoding="ascii")
        start = time.perf_counter()
        result = subprocess.run([exe, "-b", "boost.cir"], cwd=work, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        out = work / DEFAULT_OUT_FILE
        if result.returncode != 0 or not out.exists():
            log = (result.stdout + result.stderr)[-4000:]
            raise RuntimeError(f"ngspice failed (exit {result.returncode}):\n{log}")
        data = np.loadtxt(out, skiprows=1, ndmin=2)
    if data.shape[1] != 3 or data.shape[0] < 2:
        raise RuntimeError(f"unexpected ngspice output shape {data.shape}")
    return NgspiceRun(wall_s=wall, t=data[:, 0].copy(), il=data[:, 1].copy(),
                      vout=data[:, 2].copy(), netlist=text)


def period_mean(run: NgspiceRun, ts: float, last_periods: int) -> float:
    """Time-weighted (trapezoidal) mean of ``vout`` over the last ``last_periods`` periods."""
    t0 = run.t[-1] - last_periods * ts
    grid = np.linspace(t0, run.t[-1], 200 * last_periods + 1)
    v = np.interp(grid, run.t, run.vout)
    return float(np.trapezoid(v, grid) / (grid[-1] - grid[0]))


def _main() -> int:
    from boostsim.params import default_board

    if not ngspice_available():
        print("ngspice not available", file=sys.stderr)
        return 1
    p = default_board()
    duty, n_periods, last = 0.6, 200, 20
    run = run_ngspice(p, duty, n_periods)
    ts = float(p.Ts)
    print(f"ngspice batch run: default board, duty {duty}, {n_periods} periods, "
          f"{run.t.size} time points")
    print(f"  wall time            {run.wall_s * 1e3:.1f} ms")
    print(f"  per period           {run.wall_s / n_periods * 1e6:.1f} us")
    print(f"  mean vout, last {last}  {period_mean(run, ts, last):.4f} V")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
