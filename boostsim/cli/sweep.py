"""``boostsim sweep``: duty/parameter grids and Monte-Carlo tolerance studies.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

import numpy as np

from ..units import quantity
from .args import (
    _axis,
    _duty_range,
    _Formatter,
    _int_at_least,
    _limit,
    _mc_samples,
    _positive_time,
    _tolerance,
    _type,
    _vout_range,
)
from .context import Context, _UsageError
from .format import (
    _DATA_KINDS,
    _PLOT_KINDS,
    _check_outputs,
    _fmt,
    _plain,
    _seconds,
    _si,
    _table,
    _unit,
    _write_columns,
    _write_plot,
)

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


# -- sweep ----------------------------------------------------------------------------------

def cmd_sweep(ctx: Context) -> int:
    from ..sweep import (
        DEFAULT_DUTY_RANGE,
        MonteCarlo,
        Sweep,
        Transient,
        parse_duty_range,
        run_sweep,
    )

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
        from ..sweep import Axis

        for axis in a.axes:
            if np.any(axis.values <= 0):
                raise _UsageError(f"--log: {axis.name} values must be > 0")
        a.axes = [_relog(axis, Axis) for axis in a.axes]
    default_files = not a.no_files
    out = a.out or ("sweep.csv" if default_files else None)
    plot = a.plot or ("sweep.png" if default_files else None)
    _check_outputs(ctx, (out, _DATA_KINDS, "--out"), (plot, _PLOT_KINDS, "--plot"))
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
        from ..plots import monte_carlo_figure, sweep_figure

        fig = monte_carlo_figure(result) if mc is not None else sweep_figure(result)
        _write_plot(ctx, fig, plot)
        files["plot"] = plot
    ctx.commit()  # in place before "wrote ..." is said
    summary["files"] = files
    if ctx.human:
        ctx.print(_monte_carlo_text(result) if mc is not None else _sweep_text(result, out))
        if files:
            ctx.print("wrote " + ", ".join(files.values()))
    ctx.emit_json(summary)
    bad = int((~result.columns["converged"].astype(bool)).sum())
    if bad:
        what = "did not settle" if transient else "did not converge"
        ctx.warn(f"{bad} of {quantity(result.n_points, 'point')} {what} (their figures are empty)")
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


def _pick_rows(n: int, limit: int = 100, shown: int = 21) -> np.ndarray:
    """All rows up to ``limit``, else every k-th row (about ``shown`` of them) and the last."""
    if n <= limit:
        return np.arange(n)
    rows = np.arange(0, n, math.ceil(n / (shown - 1)))
    return rows if rows[-1] == n - 1 else np.append(rows, n - 1)


def _excerpt_note(rows: np.ndarray, n: int, out: str | None) -> str:
    """Which rows of ``n`` an excerpt shows (1-based), and where the others are."""
    numbers = [str(int(i) + 1) for i in rows]
    listed = ", ".join([*numbers[:3], "...", *numbers[-2:]] if len(numbers) > 6 else numbers)
    where = f"all {n} are in {out}" if out else "write all of them with --out FILE"
    return (f"(showing {rows.size} of {quantity(n, 'point')}: one row in "
            f"{int(rows[1] - rows[0])} and the last, rows {listed}; {where})")


def _sweep_text(result, out: str | None = None) -> str:
    """The sweep as a table (an excerpt of large sweeps); ``out``: the file with every row."""
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
        text.append(_excerpt_note(rows_idx, n, out))
    text.append(_sweep_footer(result))
    return "\n".join(text)


def _title_line(sweep) -> str:
    from ..plots import board_text

    axes = ", ".join(f"{a.name} {a.values.size}" for a in sweep.grid_axes if a.values.size > 1)
    how = "transient" if sweep.transient else "steady state"
    return f"boostsim sweep: {board_text(sweep.base)} · {quantity(sweep.n_points, 'point')}" + \
        (f" ({axes})" if axes else "") + f" · {how}"


def _sweep_footer(result) -> str:
    cols = result.columns
    parts = [f"{quantity(result.n_points, 'point')} in {_seconds(result.seconds)}"]
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
                     f"{quantity(y['points'], 'point')} pass")
    unreachable = int(np.isnan(cols["duty"]).sum()) if result.sweep.target == "vout" else 0
    if unreachable:
        lines.append(f"{unreachable} targets are out of reach (empty rows)")
    return "\n".join(lines)


def _monte_carlo_text(result) -> str:
    from ..plots import board_text

    sweep, cols = result.sweep, result.columns
    mc = sweep.mc
    converged = cols["converged"].astype(bool)
    lines = [f"boostsim Monte-Carlo: {quantity(mc.samples, 'sample')}, {mc.dist}, seed {mc.seed}, "
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
    lines.append(f"{quantity(mc.samples, 'sample')} in {_seconds(result.seconds)} · {dcm} in DCM · "
                 f"{int((~converged).sum())} not converged")
    if result.limits:
        lines += yield_lines(result.yield_summary())
    return "\n".join(lines)


def yield_lines(y: dict[str, Any]) -> list[str]:
    """Per-limit passes and the yield with its 95 % interval (``SweepResult.yield_summary``)."""
    lines = [f"  {text:<24} {info['pass']:>9} pass  ({info['fraction'] * 100:.2f} %)"
             for text, info in y["limits"].items()]
    lo, hi = y["yield_ci95"]
    lines.append(f"yield: {y['yield'] * 100:.2f} % ({y['pass']} of {y['points']}; 95 % "
                 f"confidence {lo * 100:.2f} .. {hi * 100:.2f} %)")
    return lines


def monte_carlo_options(g, samples_help: str, tol_extra: str, limit_type: Any,
                        limit_help: str) -> None:
    """--mc, --tol, --dist, --seed and --limit (parsed by ``limit_type``) in group ``g``."""
    g.add_argument("--mc", type=_mc_samples, metavar="N", help=samples_help)
    g.add_argument("--tol", action="extend", nargs="+", type=_type(_tolerance), default=None,
                   metavar="NAME=TOL", help="tolerances: L=20%% (relative) or vin=0.25 "
                   "(absolute, in the parameter's unit)" + tol_extra)
    g.add_argument("--dist", choices=("uniform", "normal"), default=None,
                   help="sample distribution (default uniform; normal: tol = 3 sigma)")
    g.add_argument("--seed", type=_int_at_least(0, "--seed"), default=None,
                   help="random seed (default 0: runs are reproducible)")
    g.add_argument("--limit", dest="limits", action="append", type=limit_type, default=[],
                   metavar="SPEC", help=limit_help)


def register(sub, base: argparse.ArgumentParser, board: argparse.ArgumentParser,
             files: argparse.ArgumentParser) -> None:
    """Add the ``sweep`` command to the subparsers ``sub`` (``base``, ``board``, ``files``:
    the shared option groups)."""
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
    monte_carlo_options(p.add_argument_group("Monte-Carlo"), "number of Monte-Carlo samples",
                        "; also duty=1%%", _type(_limit),
                        "pass/fail limit, e.g. vout=11.5:12.5, 'ripple<0.1' (repeatable; see "
                        "below)")
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
