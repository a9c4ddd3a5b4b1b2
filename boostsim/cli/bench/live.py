"""``boostsim bench live``: the host-side PID loop holding a reference voltage, optionally
beside the same loop simulated.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from ...units import parse_si
from ..args import (
    HOST_RATE_HELP,
    _Formatter,
    _nonnegative,
    _positive,
    _positive_time,
    _type,
    _vout_value,
    pid_loop,
    pid_options,
)
from ..context import CliError, Context, _UsageError
from ..format import _PLOT_KINDS, _check_outputs, _default_file, _fmt, _open_log, _write_plot
from .session import BenchParents, _BenchSession, bench_board

_BENCH_LIVE_EPILOG = """\
The host runs boostsim.pid.PID every 1/--rate s: one serial round trip per tick reads the output
state, the duty sent at the previous tick and MEAS:VOLT? (16 conversions averaged); the new
duty is sent without waiting. The loop starts with the output on at duty 0 (--slew ramps the
setpoint from there; a step from 0 V winds the integrator up and can overshoot into the
board's OVP). It runs for --duration, or until Ctrl-C, which stops it safely (output
off, files written). A trip, a board reset or repeated link failures end it with exit status
1; the data up to then is kept. Rates of 100-500 Hz are realistic (a round trip costs about
1 ms); the achieved rate and the jitter of the tick intervals are reported.

display: a status line (updated in place on a terminal, once a second otherwise); --live-plot
opens a live window when a display is available. Files: --out (default bench_live.csv) is the
per-tick log written row by row (t_s, vref_V, vout_V, duty, integral, exchange_s, lateness_s)
with a '#' header whose status reads "complete" only once the loop has run its --duration
(or, without one, until stopped) with no trip or link error: a loop stopped early, tripped
or killed leaves "incomplete" (every row kept is whole). --plot (default bench_live.png) is
written at the end.

--compare simulates the same loop (same PID, rate, setpoint, duty limit; ADC like MEAS:VOLT?)
from the output-off state for the first --compare-time seconds and overlays it (the compiled
switching simulation: a 1 s session on the emulated board comparing 0.5 s ran in 3.2 s in all).

examples:
  boostsim bench live --vref 12 --kp 0.01 --ki 5 --rate 200 --slew 100
  boostsim bench live --port emu: --vref 12 --kp 0.01 --ki 5 --slew 100 --duration 1.5 \\
      --vref-step 0.8:10 --compare
"""


def _vref_step(text: str) -> tuple[float, float]:
    when, sep, value = text.partition(":")
    if not sep:
        raise ValueError(f"--vref-step {text!r}: expected TIME:VOLTS, e.g. 1.5:10")
    t = parse_si(when, name="--vref-step time")
    v = parse_si(value, name="--vref-step volts")
    if not (math.isfinite(t) and t >= 0 and math.isfinite(v) and v > 0):
        raise ValueError(f"--vref-step {text!r}: the time must be >= 0 and the voltage > 0")
    return t, v


def register(bsub, p: BenchParents) -> None:
    """Add ``bench live`` to the bench subparsers ``bsub``."""
    q = bsub.add_parser("live", parents=[p.base, p.board, p.files, p.connection],
                        formatter_class=_Formatter,
                        help="host PID loop holding a reference voltage",
                        description="Closed loop on the host: boostsim.pid.PID at a fixed rate, "
                                    "measuring with MEAS:VOLT?.", epilog=_BENCH_LIVE_EPILOG)
    g = q.add_argument_group("loop")
    g.add_argument("--vref", type=_vout_value, required=True, metavar="V", help="setpoint [V]")
    pid_options(g, rate_help=HOST_RATE_HELP)
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


def cmd_bench_live(ctx: Context) -> int:
    from firmware_bridge import bench
    from firmware_bridge.board import BoardResetError, TripError

    a = ctx.args
    if a.log and a.out and a.log != a.out:
        raise _UsageError("--log is the same as --out for bench live: give one")
    pid = pid_loop(a, need=("kp", "ki"))
    if pid is None:
        raise _UsageError("the loop needs its gains: --kp K --ki K, or --pid-config FILE")
    a.kp, a.ki, a.kd, a.tf, a.rate = pid.kp, pid.ki, pid.kd, pid.tf, pid.rate
    out = _default_file(ctx, a.out or a.log, "bench_live.csv")
    plot = _default_file(ctx, a.plot, "bench_live.png")
    _check_outputs(ctx, (out, (".csv",), "--out"), (plot, _PLOT_KINDS, "--plot"),
                   incremental=("--out",))  # --out: the per-tick log
    if a.duration is None and not (sys.stdin.isatty() or ctx.stdout.isatty()):
        ctx.warn("no --duration: the loop runs until interrupted (Ctrl-C / SIGINT)")
    params = bench_board(ctx)
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
        result = None
        try:
            result = bench.run_live(board, vref=a.vref, kp=a.kp, ki=a.ki, kd=a.kd, tf=a.tf,
                                    rate=a.rate, duration=a.duration, slew=a.slew,
                                    vref_steps=a.vref_steps, log=log, status=status,
                                    status_every=0.2 if tty else 1.0, plotter=plotter)
        finally:
            if log is not None:
                # Complete only if the loop ran as asked: its duration, or until stopped when
                # it had none. A trip, a link error or a stop before the duration leaves the
                # log marked incomplete (its rows are all whole; readers are warned).
                log.close(complete=result is not None and result.error is None and (
                    result.stopped == "duration" or a.duration is None))
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
    ctx.commit()  # in place before "wrote ..." is said
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
        ctx.outputs.commit()  # the plot of the ticks logged before the error
        err = result.error
        hint = ""
        if isinstance(err, TripError) and err.cause == "WDOG":
            hint = " (was the host stalled or suspended?)"
        elif isinstance(err, BoardResetError):
            hint = " (power glitch or hardware watchdog?)"
        raise CliError(f"live loop stopped after {result.ticks} ticks: {err}{hint}; data kept "
                       f"in {out or 'memory'}")
    return 143 if result.stopped == "terminate" else 0
