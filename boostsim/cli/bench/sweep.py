"""``boostsim bench sweep``: an open-loop duty sweep on the board beside the simulated sweep
of the same board.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ...units import format_apart, quantity
from ..args import _duty_range, _Formatter, _int_at_least, _nonnegative, _positive, _type
from ..context import PROG, CliError, Context, _UsageError
from ..format import (
    _DATA_KINDS,
    _PLOT_KINDS,
    _check_outputs,
    _default_file,
    _fmt,
    _open_log,
    _table,
    _unit,
    _write_columns,
    _write_plot,
)
from .session import BenchParents, _BenchSession, bench_board

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
Every output path is checked before the board is touched. The points go to FILE.partial.csv
beside --out FILE as they are measured, one whole line each, under a header whose "status"
says the sweep is running; at the end the complete --out (simulation, errors, fit; status
complete or aborted) replaces any previous one in one rename and the partial file is removed.
A sweep killed even by SIGKILL so loses no measured point and clobbers no earlier result. To
resume, see which duties FILE.partial.csv holds (boostsim.outputs.read_csv, or any CSV reader
ignoring '#' lines) and run the remaining ones, e.g. --duty 0.45:0.6:0.05 --out rest.csv.

--fit r_L,r_on,v_f: least-squares fit of these parameters (steady state over the measured
points, weighted by their standard errors); prints values with 1-sigma uncertainties and the
correlation, and draws the fitted curve. Fittable: r_L r_on v_f r_d r_C r_sync vin L C R i_load.

examples:
  boostsim bench sweep --port emu:
  boostsim bench sweep --duty 0.1:0.6:0.05 --settle 0.2 --samples 32 --fit r_L,v_f
  boostsim bench sweep --duty 0.2,0.4,0.6 --method stream --samples 4000 --log raw.csv
"""


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


def register(bsub, p: BenchParents) -> None:
    """Add ``bench sweep`` to the bench subparsers ``bsub``."""
    q = bsub.add_parser("sweep", parents=[p.base, p.board, p.files, p.connection],
                        formatter_class=_Formatter,
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


#: Columns of the sweep's incremental --out file (a subset of BenchSweep.columns()).
_SWEEP_ROW = ("duty", "duty_effective", "vout_meas_V", "vout_meas_std_V", "vout_meas_sem_V",
              "samples", "outliers", "t_s", "vout_sim_V", "vout_error_V")


def _partial_path(out: str | None) -> str | None:
    """Where the points go as they are measured: FILE.partial.csv beside --out FILE.ext (a
    previous --out stays untouched until the complete result replaces it)."""
    if not out:
        return None
    p = Path(out)
    return str(p.with_name(p.stem + ".partial.csv"))


def _mv(value: float) -> str:
    return _fmt(value * 1e3, ".2f")


def cmd_bench_sweep(ctx: Context) -> int:
    from firmware_bridge import bench

    a = ctx.args
    out = _default_file(ctx, a.out, "bench_sweep.csv")
    plot = _default_file(ctx, a.plot, "bench_sweep.png")
    incremental = "--out's incremental file"
    _check_outputs(ctx, (out, _DATA_KINDS, "--out"), (plot, _PLOT_KINDS, "--plot"),
                   (a.log, (".csv",), "--log"), (_partial_path(out), (".csv",), incremental),
                   incremental=("--log", incremental))
    if out and Path(_partial_path(out)).exists():
        raise CliError(f"{_partial_path(out)!r} exists: the points of an interrupted sweep? "
                       f"Move or delete it first")
    params = bench_board(ctx)
    duties = a.duty if a.duty is not None else _duty_range("0.1:0.6:0.05")
    if a.max_duty is not None and np.max(duties) > a.max_duty:
        high, ceiling = format_apart(np.max(duties), a.max_duty)
        raise _UsageError(f"the sweep reaches duty {high}, above --max-duty {ceiling}")
    if a.fit and duties.size <= len(a.fit):
        raise _UsageError(f"--fit {','.join(a.fit)} needs more than "
                          f"{quantity(len(a.fit), 'point')}")
    partial = _partial_path(out)
    with _BenchSession(ctx) as session:
        board = session.board
        limit = board.duty_limit
        if np.max(duties) > limit:
            high, ceiling = format_apart(np.max(duties), limit)
            raise CliError(f"the sweep reaches duty {high}, above the board's limit {ceiling} "
                           f"(SOUR:PWM:DUTY:LIM)")
        meta = session.metadata(study={"duty": duties.tolist(), "settle_s": a.settle,
                                       "samples": a.samples, "method": a.method})
        log = _open_log(ctx, a.log, ("t_s", "point", "duty", "vout_V"), meta)
        points = _open_log(ctx, partial, _SWEEP_ROW, meta)  # "incomplete" until closed
        if ctx.human:
            ctx.print(f"boostsim bench sweep: {board.identity} on {board.port_name} · "
                      f"{quantity(duties.size, 'point')} · settle {a.settle:g} s · {a.samples} "
                      f"{'MEAS:VOLT? readings' if a.method == 'query' else 'streamed samples'}"
                      f" per point")
            ctx.print(f"{'point':>5}  {'duty':>6}  {'vout [V]':>9}  {'sem [mV]':>8}  "
                      f"{'sim [V]':>9}  {'error [mV]':>10}")

        freq = board.frequency
        sim_all = bench.simulate_sweep(params, bench.effective_pwm(duties, freq)[1], freq)

        def on_point(i: int, sweep) -> None:
            if points is not None:
                sim = sim_all["vout_mean"][i]
                points.row(sweep.duty[-1], sweep.duty_effective[-1], sweep.vout_mean[-1],
                           sweep.vout_std[-1], sweep.vout_sem[-1], int(sweep.samples[-1]),
                           int(sweep.outliers[-1]), sweep.t[-1], sim, sweep.vout_mean[-1] - sim)
            if ctx.human:
                sim = sim_all["vout_mean"][i]
                print(f"{i + 1:>5}  {sweep.duty[-1]:>6.3f}  {sweep.vout_mean[-1]:>9.4f}  "
                      f"{sweep.vout_sem[-1] * 1e3:>8.2f}  {sim:>9.4f}  "
                      f"{(sweep.vout_mean[-1] - sim) * 1e3:>10.2f}", file=ctx.stdout,
                      flush=True)

        try:
            result = bench.measure_sweep(board, duties, settle=a.settle, samples=a.samples,
                                     method=a.method, stream_rate=a.stream_rate, log=log,
                                     on_point=on_point, resume=a.resume,
                                     max_resets=a.max_resets, report=ctx.note)
        finally:
            for f in (log, points):
                if f is not None:
                    f.close()
        stats = dict(board.stats)
    result.sim = bench.simulate_sweep(params, result.duty_effective, result.frequency)
    if a.fit and result.n_points > len(a.fit):
        result.fit = bench.fit_losses(params, result.duty_effective, result.vout_mean,
                                      result.vout_sem, a.fit, frequency=result.frequency)
    elif a.fit:
        ctx.warn(f"--fit skipped: only {quantity(result.n_points, 'point')} were measured")
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
        # The complete file replaces any earlier --out in one rename (staged, committed now);
        # only then is the incremental file removed: a kill meanwhile leaves one of the two.
        _write_columns(ctx, out, result.columns(),
                       dict(meta, errors={"rms_V": metrics["rms"], "max_V": metrics["max"]},
                            fit=summary["fit"], aborted=result.aborted,
                            status="aborted" if result.aborted else "complete"))
        ctx.commit()
        with contextlib.suppress(OSError):
            os.unlink(partial)
        files["data"] = out
    if plot:
        _write_plot(ctx, bench.bench_sweep_figure(result, params), plot)
        files["plot"] = plot
    ctx.commit()  # in place before "wrote ..." is said
    if a.log:
        files["log"] = a.log
    summary["files"] = files
    if ctx.human:
        ctx.print(f"{quantity(result.n_points, 'point')}: error (measured - simulated) rms "
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
        ctx.outputs.commit()  # complete files of the points measured, marked aborted
        message = (f"sweep stopped after {result.n_points} of "
                   f"{quantity(duties.size, 'point')} (kept in "
                   f"{out or 'memory'}): {result.aborted}")
        if result.abort_kind in ("interrupt", "terminate"):
            print(f"{PROG}: {message}; output off", file=sys.stderr)
            return 130 if result.abort_kind == "interrupt" else 143
        raise CliError(message)
    return 0
