"""``boostsim simulate``: exact switching (or averaged) waveforms, open or closed loop.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

from ..params import BoostParams
from ..units import quantity
from .args import (
    _STEP_NAMES,
    _duty_value,
    _Formatter,
    _int_at_least,
    _nonnegative,
    _positive,
    _positive_time,
    _step_parser,
    _type,
    _vout_value,
    pid_given,
    pid_loop,
    pid_options,
)
from .bench import board_loop_controller
from .context import CliError, Context, _UsageError
from .control import _design_options, _predicted, _tune
from .format import (
    _DATA_KINDS,
    _PLOT_KINDS,
    _check_outputs,
    _fmt,
    _si,
    _table,
    _write_columns,
    _write_plot,
)
from .sweep import monte_carlo_options

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

closed-loop Monte-Carlo of a load step (--mc N; exact switching engine, compiled):
  --mc 10000 --tol L=20% C=20% r_C=50% --load-step 8ms:R=24 --limit 'undershoot<1%'
                               N boards drawn as 'boostsim sweep --mc' draws them (--seed,
                               --dist), each from --start through the load step under the loop;
                               the step is measured on the exact period means: overshoot and
                               undershoot (fractions of the final value), deviation [V],
                               settling_time [s] into --band (default 1 %) of the final value,
                               vout_initial, vout_final [V]; --limit on them gives the yield;
                               --out writes one row per board

averaged model:
  --averaged                   simulate the large-signal averaged model (boostsim.averaged;
                               CCM and DCM, no switching ripple) instead of the exact engine,
                               same options, open or closed loop; much faster for long runs

examples:
  boostsim simulate --duty 0.6
  boostsim simulate --vref 12 --tune --crossover 2k --start steady --t-end 10m \\
      --load-step 5ms:R=24 --plot tuned.png
  boostsim simulate --vref 12 --tune --crossover 2k --averaged --t-end 50m
  boostsim simulate --vref 12 --kp 0.01 --ki 5 --rate 200 --start steady --t-end 0.2 \\
      --plot loop.png
  boostsim simulate --duty 0.6 --t-end 20m --dt 100n --out waves.csv --plot waves.png
  boostsim simulate --duty 0.6 --start steady --t-end 10m --load-step 2ms:R=24 --plot step.png
  boostsim simulate --duty 0.6 --step 10ms:vin=4.5 --step 15ms:vin=5,R=96 --out waves.npz
  boostsim simulate --vref 12 --tune --crossover 2k --slew 4k --t-end 12m --load-step 8ms:R=32 \\
      --mc 10000 --tol L=20% C=20% r_C=50% --limit 'undershoot<0.9%' --limit 'overshoot<0.2%'
"""


# -- simulate -------------------------------------------------------------------------------

def _loop_options(g) -> None:
    g.add_argument("--vref", type=_vout_value, metavar="V",
                   help="regulate the output to V with the PID (closed loop)")
    pid_options(g)
    g.add_argument("--slew", type=_positive("--slew", "V/s"), default=None, metavar="V/S",
                   help="setpoint slew limit for a soft start (default: steps)")
    g.add_argument("--duty-max", type=_duty_value, default=None, metavar="D",
                   help="PID output limit (default: the board's duty limit, 0.75)")
    g.add_argument("--initial-duty", type=_duty_value, default=0.0, metavar="D",
                   help="duty before the first PID update (default 0)")
    g.add_argument("--adc-noise", type=_nonnegative("--adc-noise"), default=1.0, metavar="LSB",
                   help="ADC noise per conversion, codes rms (default 1, like the emulator)")


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
        for name in pid_given(a):
            raise _UsageError(f"{name} needs --vref (the closed loop's setpoint)")
        if a.duty is None:
            raise _UsageError("give the open-loop duty, e.g. --duty 0.6, or a closed loop, "
                              "e.g. --vref 12 --kp 0.01 --ki 5")
        return {"duty": a.duty}, None
    if a.duty is not None:
        raise _UsageError("--duty (open loop) and --vref (closed loop) exclude each other")
    if not np.isscalar(params.fsw) and np.size(params.fsw) != 1:
        raise CliError("the closed loop needs a single converter (no per-lane parameters)")
    tuned = None
    if a.tune:
        for name in pid_given(a):
            raise _UsageError(f"--tune computes the gains: do not give {name}")
        if a.crossover is None:
            raise _UsageError("--tune needs the loop's crossover frequency, e.g. --crossover 2k")
        tuned, _ = _tune(ctx, params, a.vref, a.crossover, a.phase_margin, a.rate, a.delay)
        kp, ki, kd, tf = tuned.kp, tuned.ki, tuned.kd, tuned.tf
        rate = 1.0 / tuned.ts
    else:
        given = pid_loop(a, need=("kp", "ki"))
        if given is None:
            raise _UsageError("the closed loop needs its gains: --kp K and/or --ki K (and "
                              "optionally --kd), --pid-config gains.toml, or --tune --crossover F")
        kp, ki, kd, tf, rate = given.kp, given.ki, given.kd, given.tf, given.rate
    controller, every, ts, duty_max = board_loop_controller(
        params, kp=kp, ki=ki, kd=kd, tf=tf, rate=rate, duty_max=a.duty_max, slew=a.slew,
        noise_lsb=a.adc_noise, initial_duty=a.initial_duty)
    if tuned is None and abs(1.0 / ts - rate) > 1e-3 * rate:
        ctx.warn(f"--rate {rate:g} Hz is not a whole number of switching periods: the loop "
                 f"runs every {quantity(every, 'period')} ({1 / ts:g} Hz)")
    loop = {"vref": a.vref, "kp": kp, "ki": ki, "kd": kd, "tf": tf, "rate": 1.0 / ts,
            "every_periods": every, "slew": a.slew, "duty_max": duty_max,
            "initial_duty": a.initial_duty, "adc_noise_lsb": a.adc_noise}
    if tuned is not None:
        loop["tuned"] = _predicted(tuned, a.crossover)
    return {"controller": controller, "vref": a.vref}, loop


@_type
def _mc_limit(text: str):
    from ..montecarlo import COLUMNS
    from ..specs import parse_limit

    return parse_limit(text, COLUMNS)


def cmd_simulate(ctx: Context) -> int:
    from ..averaged import simulate_averaged
    from ..simulation import simulate

    a = ctx.args
    drive, loop = _drive(ctx, ctx.board())
    if a.mc is None:
        for name, value in (("--tol", a.tol), ("--limit", a.limits), ("--seed", a.seed),
                            ("--dist", a.dist), ("--band", a.band)):
            if value:
                raise _UsageError(f"{name} needs --mc N (a closed-loop Monte-Carlo)")
    else:
        return _cmd_monte_carlo(ctx, drive, loop)
    _check_outputs(ctx, (a.out, _DATA_KINDS, "--out"), (a.plot, _PLOT_KINDS, "--plot"))
    params = ctx.board()
    steps = sorted([*a.steps, *a.load_steps], key=lambda s: s.t)
    for step in steps:
        if step.t >= a.t_end:
            ctx.warn(f"a step at {step.t:g} s is not before --t-end {a.t_end:g} s: no effect")
    x0 = None
    if a.start == "steady":
        from ..steady import steady_state

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
        raise CliError(f"--t-end {a.t_end:g} s is only {quantity(periods, 'period')}; "
                       f"--last-periods is "
                       f"{a.last_periods}")
    engine = simulate_averaged if a.averaged else simulate
    result = engine(params, t_end=a.t_end, dt=dt, x0=x0, steps=steps,
                    progress=ctx.progress, **drive)
    metrics = result.metrics(a.last_periods)  # boostsim.analysis.Metrics from either model
    m = metrics.as_dict()
    losses = None if a.averaged else metrics.losses  # the averaged model has no breakdown
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
        from ..plots import averaged_figure, waveform_figure

        closed = {} if loop is None else {
            "vref": loop["vref"],
            "loop": f"PID kp {loop['kp']:.4g}, ki {loop['ki']:.4g}, kd {loop['kd']:.3g} at "
                    f"{loop['rate']:g} Hz"}
        fig = (averaged_figure(result, **closed) if a.averaged else
               waveform_figure(result, zoom_periods=a.zoom_periods, **closed))
        _write_plot(ctx, fig, a.plot)
        files["plot"] = a.plot
    ctx.commit()  # in place before "wrote ..." is said
    summary["files"] = files
    if ctx.human:
        from ..plots import board_text

        how = (f"duty {drive['duty']:g}" if loop is None else
               f"PID to {loop['vref']:g} V (kp {loop['kp']:.6g}, ki {loop['ki']:.6g}, kd "
               f"{loop['kd']:.6g}" + (f", tf {loop['tf']:.4g}" if loop["tf"] else "") +
               f") at {loop['rate']:g} Hz = every {quantity(loop['every_periods'], 'period')}")
        if loop is not None and "tuned" in loop:
            t = loop["tuned"]
            how += (f" · tuned for {_fmt(t['crossover_hz'], '.0f')} Hz, "
                    f"{_fmt(t['phase_margin_deg'], '.1f')} deg")
        model = "averaged model" if a.averaged else "exact switching"
        first = (f"boostsim simulate ({model}): {board_text(params)} · {how} · "
                 f"{_si(a.t_end, 't_rise')} ({quantity(periods, 'period')}) from "
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
        ctx.print(f"last {quantity(a.last_periods, 'period')}" +
                  (" (averaged model: no ripple, no losses breakdown):" if a.averaged else ":"))
        ctx.print(_averaged_table(m) if a.averaged else _metrics_table(m))
        note = _not_settled_note(m)
        if note:
            ctx.print(note)
        if files:
            ctx.print("wrote " + ", ".join(files.values()))
    ctx.emit_json(summary)
    return 0


_MC_STATS = ("min", "p1", "p50", "p99", "max")
_MC_ROWS = (("overshoot", "overshoot [%]", 100, ".3f"),
            ("undershoot", "undershoot [%]", 100, ".3f"),
            ("deviation", "deviation [mV]", 1e3, ".1f"),
            ("settling_time", "settling [ms]", 1e3, ".3f"),
            ("vout_final", "vout final [V]", 1, ".4f"))


def _cmd_monte_carlo(ctx: Context, drive: dict[str, Any], loop: dict[str, Any] | None) -> int:
    """``simulate --mc N``: the load-step yield over tolerances (boostsim.montecarlo)."""
    from ..montecarlo import COLUMNS, load_step_yield
    from ..plots import board_text
    from .sweep import _stats, yield_lines

    a = ctx.args
    if loop is None:
        raise _UsageError("--mc needs the closed loop (--vref V and the gains or --tune)")
    if a.averaged or a.plot:
        raise _UsageError("--mc runs the exact switching engine and writes no plot: drop "
                          f"{'--averaged' if a.averaged else '--plot'}")
    if not a.tol:
        raise _UsageError("--mc needs tolerances, e.g. --tol L=20% C=20%")
    steps = [*a.steps, *a.load_steps]
    if len(steps) != 1 or steps[0].vin is not None:
        raise _UsageError("--mc measures one load step: give exactly one --load-step, e.g. "
                          "--load-step 8ms:R=24")
    _check_outputs(ctx, (a.out, _DATA_KINDS, "--out"))
    params = ctx.board()
    x0 = None
    if a.start == "steady":
        from ..steady import steady_state

        state = steady_state(params, loop["initial_duty"], points=1)
        x0 = (state.il_start, state.vc_start)
    band = 0.01 if a.band is None else a.band
    try:
        result = load_step_yield(params, drive["controller"], vref=a.vref, step=steps[0],
                                 t_end=a.t_end, samples=a.mc, tolerances=a.tol,
                                 limits=a.limits, seed=a.seed or 0, dist=a.dist or "uniform",
                                 band=band, x0=x0)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    cols = result.columns
    stats = {name: _stats(cols[name]) for name in COLUMNS}
    step = steps[0]
    summary = {"command": "simulate", "model": "switching", "monte_carlo": {
        "samples": a.mc, "seed": a.seed or 0, "dist": a.dist or "uniform",
        "tolerances": [t.describe() for t in a.tol], "band": band},
        "t_end": a.t_end, "start": a.start, "parameters": params.to_dict(),
        "closed_loop": loop, "load_step": {"t": step.t, **{k: getattr(step, k) for k in
                                                           ("R", "i_load")
                                                           if getattr(step, k) is not None}},
        "figures": stats, "nominal": result.nominal, "seconds": result.seconds}
    if a.limits:
        summary["yield"] = result.yield_summary()
    files: dict[str, str] = {}
    if a.out:
        columns = {k: v for k, v in cols.items() if k != "converged"}
        _write_columns(ctx, a.out, columns, ctx.metadata(closed_loop=loop,
                                                          monte_carlo=summary["monte_carlo"]),
                       summary)
        files["data"] = a.out
    ctx.commit()  # in place before "wrote ..." is said
    summary["files"] = files
    if ctx.human:
        ctx.print(f"boostsim simulate --mc: {a.mc} boards ({', '.join(t.describe() for t in a.tol)}"
                  f"; {a.dist or 'uniform'}, seed {a.seed or 0}) · {board_text(params)} · PID to "
                  f"{a.vref:g} V every {loop['every_periods']} periods · load step at "
                  f"{_si(step.t, 't_rise')} · {_si(a.t_end, 't_rise')}")
        rows = [[label, _fmt(result.nominal[name] * scale, spec),
                 *(_fmt(stats[name][k] * scale, spec) for k in _MC_STATS)]
                for name, label, scale, spec in _MC_ROWS]
        ctx.print(_table(["figure", "nominal", "min", "1 %", "median", "99 %", "max"], rows,
                         [False] + [True] * (1 + len(_MC_STATS))))
        ctx.print(f"{a.mc} boards in {result.seconds:.2f} s")
        if a.limits:
            ctx.print("\n".join(yield_lines(summary["yield"])))
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
        ("stored energy change", _fmt(m["stored_power"], ".4f"), "W"),
        ("efficiency (conduction)", _fmt(m["efficiency"] * 100, ".2f"), "%"),
        ("efficiency incl. switching", _fmt(m["efficiency_total"] * 100, ".2f"), "%"),
        ("duty", _fmt(m["duty"], ".4f"), ""),
        ("mode", str(m["mode"]), ""),
        _settled_row(m),
    ]
    return _table(["figure", "value", "unit"], [list(r) for r in rows], [False, True, False])


def _settled_row(m: dict[str, Any]) -> tuple[str, str, str]:
    return ("settled", "yes" if m["settled"] else "NOT SETTLED", "")


def _not_settled_note(m: dict[str, Any]) -> str | None:
    """One line saying why the window's figures are not an operating point (None if settled)."""
    if m["settled"]:
        return None
    return (f"not settled: the stored energy changes at {m['stored_power']:+.4g} W over the "
            f"window; the figures describe a transient (run longer with --t-end, or --start "
            f"steady)")


def _averaged_table(m: dict[str, Any]) -> str:
    rows = [
        ("output voltage, mean", _fmt(m["vout_mean"], ".4f"), "V"),
        ("inductor current, mean", _fmt(m["il_mean"], ".4f"), "A"),
        ("input power", _fmt(m["pin"], ".4f"), "W"),
        ("output power", _fmt(m["pout"], ".4f"), "W"),
        ("stored energy change", _fmt(m["stored_power"], ".4f"), "W"),
        ("efficiency (model)", _fmt(m["efficiency"] * 100, ".2f"), "%"),
        ("duty", _fmt(m["duty"], ".4f"), ""),
        ("mode", str(m["mode"]), ""),
        _settled_row(m),
    ]
    return _table(["figure", "value", "unit"], [list(r) for r in rows], [False, True, False])


def register(sub, base: argparse.ArgumentParser, board: argparse.ArgumentParser,
             files: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` command to the subparsers ``sub`` (``base``, ``board``, ``files``:
    the shared option groups)."""
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
    g = p.add_argument_group("closed-loop Monte-Carlo of the load step (with --vref)")
    monte_carlo_options(g, "number of boards drawn", "", _mc_limit,
                        "pass/fail limit on a figure, e.g. 'undershoot<1%%', settling_time=:2m "
                        "(repeatable)")
    g.add_argument("--band", type=_positive("--band", ""), default=None, metavar="FRACTION",
                   help="settling band around the final value (default 0.01)")
    g = p.add_argument_group("tuning (closed loop: --vref V --tune instead of --kp/--ki)")
    g.add_argument("--tune", action="store_true",
                   help="tune the PID for --crossover/--phase-margin, then run it")
    _design_options(g)
    p.set_defaults(func=cmd_simulate)
