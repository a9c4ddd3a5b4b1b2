"""``boostsim bench step``: a duty or load step captured by the board's streaming ADC,
beside the simulated step.
"""

from __future__ import annotations

from ...units import format_apart, parse_si, quantity
from ..args import (
    _Formatter,
    _fraction,
    _int_at_least,
    _nonnegative,
    _positive,
    _positive_time,
    _probe,
    _type,
)
from ..context import CliError, Context, _UsageError
from ..format import (
    _DATA_KINDS,
    _PLOT_KINDS,
    _check_outputs,
    _default_file,
    _fmt,
    _open_log,
    _table,
    _write_columns,
    _write_plot,
)
from .session import BenchParents, _BenchSession, bench_board

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


def _step_duties(text: str) -> tuple[float, float | None]:
    parts = text.split(":")
    if len(parts) not in (1, 2):
        raise ValueError(f"--duty {text!r}: expected FROM:TO (a duty step) or D (with "
                         f"--load-step); each a fraction or a percentage (0.4:0.6, 40%:60%)")
    values = [_fraction(p, "duty") for p in parts]
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


def register(bsub, p: BenchParents) -> None:
    """Add ``bench step`` to the bench subparsers ``bsub``."""
    q = bsub.add_parser("step", parents=[p.base, p.board, p.files, p.connection],
                        formatter_class=_Formatter,
                        help="duty or load step, measured vs simulated",
                        description="A step response captured by the board's streaming ADC, "
                                    "beside the simulated step.", epilog=_BENCH_STEP_EPILOG)
    g = q.add_argument_group("step")
    g.add_argument("--duty", type=_type(_step_duties), required=True, metavar="FROM[:TO]",
                   help="duty step FROM:TO (0.4:0.6 or 40%%:60%%), or the duty of a --load-step")
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


def cmd_bench_step(ctx: Context) -> int:
    from firmware_bridge import bench

    a = ctx.args
    out = _default_file(ctx, a.out, "bench_step.csv")
    plot = _default_file(ctx, a.plot, "bench_step.png")
    _check_outputs(ctx, (out, _DATA_KINDS, "--out"), (plot, _PLOT_KINDS, "--plot"),
                   (a.log, (".csv",), "--log"), incremental=("--log",))
    d1, d2 = a.duty
    if a.load_step is None and d2 is None:
        raise _UsageError("give a duty step FROM:TO (e.g. --duty 0.4:0.6) or --load-step")
    if a.load_step is not None and d2 is not None:
        raise _UsageError("--load-step runs at one duty: give --duty D, not FROM:TO")
    from firmware_bridge.session import is_emulator_port

    if a.load_step is not None and not is_emulator_port(a.port):
        raise _UsageError("a load step needs external gear on real hardware; only the "
                          "in-process emulator (--port emu:) can apply it")
    if a.rate > 20e3:
        raise _UsageError(f"--rate {format_apart(a.rate, 20e3)[0]}: the board streams at "
                          f"most 20 kHz")
    params = bench_board(ctx)
    with _BenchSession(ctx) as session:
        board = session.board
        for d in (d1, d2):
            if d is not None and d > board.duty_limit:
                raise CliError("duty {} is above the board's limit {}".format(
                    *format_apart(d, board.duty_limit)))
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
    ctx.commit()  # in place before "wrote ..." is said
    summary["files"] = files
    if ctx.human:
        what = (f"duty {step.duty:g} -> {step.duty_after:g}" if step.kind == "duty" else
                f"load {', '.join(f'{k}={v:g}' for k, v in step.load_change.items())} at duty "
                f"{step.duty:g}")
        ctx.print(f"boostsim bench step: {board.identity} · {what} · "
                  f"{quantity(step.t.size, 'sample')} at "
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
