"""``boostsim tune`` and ``boostsim bode``: PID gains for a crossover and the loop-gain Bode plot.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..params import BoostParams
from ..units import format_apart, format_si, parse_si, quantity
from .args import (
    TUNE_RATE_HELP,
    _duty_value,
    _Formatter,
    _int_at_least,
    _nonnegative,
    _positive,
    _type,
    _vout_value,
    pid_given,
    pid_loop,
    pid_options,
    rate_option,
)
from .context import CliError, Context, _UsageError
from .format import (
    _DATA_KINDS,
    _PLOT_KINDS,
    _check_outputs,
    _default_file,
    _fmt,
    _table,
    _write_columns,
    _write_plot,
)

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
given (--kp/--ki [--kd --tf] --rate, or --pid-config FILE) or tuned first (--vref V
--crossover F [--phase-margin]). Without gains: the averaged plant Gvd alone (continuous), with
the RHP zero and the LC resonance marked. --out writes the curves (f_Hz, T_mag_dB,
T_phase_deg, plant_mag_dB, plant_phase_deg, controller_mag_dB, controller_phase_deg; .csv,
.json or .npz).

examples:
  boostsim bode --vref 12                                  # the plant alone -> bode.png
  boostsim bode --vref 12 --crossover 2k --out bode.csv --plot bode.png
  boostsim bode --vref 12 --kp 0.01 --ki 5 --rate 200      # the bench live loop: PM 43 deg
  boostsim bode --duty 0.6 --kp 0.07 --ki 170 --kd 2.3e-5 --tf 1.6e-5 --rate 100k   # PM 50 deg
  boostsim tune --vref 12 --crossover 2k --out gains.toml && \\
      boostsim bode --vref 12 --pid-config gains.toml
"""


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
        rate_text, fsw_text = format_apart(rate, fsw)
        raise _UsageError(f"--rate {rate_text} Hz is above the switching frequency {fsw_text} "
                          f"Hz (the PID runs at most once per period)")
    every = max(1, round(fsw / rate))
    if abs(fsw / every - rate) > 1e-3 * rate:
        ctx.warn(f"--rate {rate:g} Hz is not a whole number of switching periods: the loop "
                 f"runs every {quantity(every, 'period')} ({fsw / every:g} Hz)")
    return every / fsw, every


def _tune(ctx: Context, params: BoostParams, vref: float, crossover: float,
          phase_margin: float | None, rate: float | None, delay: float | None):
    """tune_pid for the command line: (PIDGains, periods per PID step); the tuner's
    ValueError (an impossible target) becomes a one-line run-time error."""
    from ..design import tune_pid

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

    from ..plots import board_text

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
    _check_outputs(ctx, (a.out, out_kinds, "--out"), (a.plot, _PLOT_KINDS, "--plot"))
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
                from ..outputs import write_json

                write_json(ctx.output(a.out), {"metadata": ctx.metadata(), **summary})
            else:
                ctx.output(a.out).write_text(_gains_toml(gains, ctx.command_line, params, rate),
                                             encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write {a.out!r}: {exc.strerror or exc}") from None
        files["gains"] = a.out
    if a.plot:
        _write_plot(ctx, _loop_bode(gains.loop, None, None, params,
                                    f"tuned for {a.crossover:g} Hz"), a.plot)
        files["plot"] = a.plot
    ctx.commit()  # in place before "wrote ..." is said
    summary["files"] = files
    if ctx.human:
        from ..plots import board_text

        ctx.print(f"boostsim tune: {board_text(params)} · vref {a.vref:g} V (duty "
                  f"{gains.duty:.4f}) · PID at {rate:g} Hz (every "
                  f"{quantity(every, 'period')})")
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
        fmax_text, limit_text = format_apart(f1, limit)
        raise _UsageError(f"--fmax {fmax_text} Hz is above {what} ({limit_text} Hz)")
    f0 = fmin if fmin is not None else min(lo, f1 / 1000)
    if f0 >= f1:
        raise _UsageError("--fmin {} Hz must be below --fmax {} Hz".format(
            *format_apart(f0, f1)))
    return np.geomspace(f0, f1, points)


def _loop_bode(loop, margins, f, params, note: str):
    """The Bode figure of a LoopGain (default frequencies: below the crossover and the
    resonance up to just under the Nyquist frequency)."""
    from ..design import bode_band
    from ..plots import board_text, bode_figure

    if margins is None:
        margins = loop.margins()
    if f is None:
        lo, hi, _ = bode_band(loop.plant, loop=loop, margins=margins)
        f = np.geomspace(lo, hi, 600)
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
    from ..design import PIDGains, bode_band, loop_gain
    from ..linearised import averaged_duty_for_vout, small_signal
    from ..plots import board_text, bode_figure, bode_phase

    a = ctx.args
    given = pid_given(a)
    tuned = a.crossover is not None
    if a.vref is None and a.duty is None:
        raise _UsageError("give the operating point: --vref V or --duty D")
    if tuned and given:
        raise _UsageError(f"--crossover tunes the gains: do not give {given[0]}")
    if tuned and a.vref is None:
        raise _UsageError("--crossover needs --vref V (the tuner's setpoint), not --duty")
    if not tuned and a.phase_margin is not None:
        raise _UsageError("--phase-margin needs --crossover F (tune the PID first)")
    pid = None if tuned else pid_loop(a)
    plot = _default_file(ctx, a.plot, "bode.png")
    _check_outputs(ctx, (a.out, _DATA_KINDS, "--out"), (plot, _PLOT_KINDS, "--plot"))
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
    elif pid is not None:
        T, every = _sample_period(ctx, params, pid.rate)
        duty = (a.duty if a.duty is not None
                else float(averaged_duty_for_vout(params, a.vref)))
        try:
            gains = PIDGains(kp=pid.kp, ki=pid.ki, kd=pid.kd, tf=pid.tf, ts=T)
            loop = loop_gain(params, duty, gains, delay_periods=a.delay, sample_period=T)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        how = "given gains"
        summary["gains"] = {"kp": pid.kp, "ki": pid.ki, "kd": pid.kd, "tf": pid.tf, "ts": T}
    else:
        loop = None
        if a.rate is not None or a.delay is not None:
            raise _UsageError("--rate/--delay describe the PID loop: give --kp/--ki or "
                              "--crossover")
        duty = (a.duty if a.duty is not None
                else float(averaged_duty_for_vout(params, a.vref)))
    plant = small_signal(params, duty)
    summary["duty"] = duty
    if loop is not None:
        margins = loop.margins()
        lo, hi, limit = bode_band(plant, loop=loop, margins=margins)
        f = _freqs(a.fmin, a.fmax, lo, hi, a.points, limit, "the loop's Nyquist frequency")
        t_resp, p_resp, c_resp = (loop.frequency_response(f), loop.plant_response(f),
                                  loop.controller_response(f))
        columns = {"f_Hz": f, "T_mag_dB": 20 * np.log10(np.abs(t_resp)),
                   "T_phase_deg": bode_phase(t_resp, -90.0),
                   "plant_mag_dB": 20 * np.log10(np.abs(p_resp)),
                   "plant_phase_deg": bode_phase(p_resp, 0.0),
                   "controller_mag_dB": 20 * np.log10(np.abs(c_resp)),
                   "controller_phase_deg": bode_phase(c_resp, -90.0)}
        summary.update({"rate_Hz": 1.0 / loop.sample_period, "every_periods": every,
                        "margins": dataclasses.asdict(margins)})
    else:
        margins = None
        lo, hi, limit = bode_band(plant, fsw=fsw)
        f = _freqs(a.fmin, a.fmax, lo, hi, a.points, limit, "half the switching frequency "
                   "(the averaged model's limit)")
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
    ctx.commit()  # in place before "wrote ..." is said
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


def register(sub, base: argparse.ArgumentParser, board: argparse.ArgumentParser,
             files: argparse.ArgumentParser) -> None:
    """Add the ``control`` command to the subparsers ``sub`` (``base``, ``board``, ``files``:
    the shared option groups)."""
    p = sub.add_parser("tune", parents=[base, board], formatter_class=_Formatter,
                       help="PID gains for a crossover frequency and phase margin",
                       description="Tune the digital PID for a loop crossover and phase margin "
                                   "at the operating point of --vref.",
                       epilog=_TUNE_EPILOG)
    g = p.add_argument_group("design")
    g.add_argument("--vref", type=_vout_value, metavar="V", required=True,
                   help="regulated output voltage [V] (sets the operating point)")
    _design_options(g, required=True)
    rate_option(g, TUNE_RATE_HELP)
    g = p.add_argument_group("files")
    g.add_argument("--out", metavar="FILE",
                   help="write the gains: .toml (a [pid] table) or .json")
    g.add_argument("--plot", metavar="FILE",
                   help="write the loop-gain Bode plot to FILE (.png, .svg, .pdf)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("bode", parents=[base, board, files], formatter_class=_Formatter,
                       help="loop-gain Bode plot with stability margins",
                       description="Loop gain T = C Gvd of the digital PID loop (or the plant "
                                   "Gvd alone) with its crossover, phase and gain margins.",
                       epilog=_BODE_EPILOG)
    g = p.add_argument_group("operating point").add_mutually_exclusive_group()
    g.add_argument("--vref", type=_vout_value, metavar="V",
                   help="output voltage [V]: the duty of the averaged model")
    g.add_argument("--duty", type=_duty_value, metavar="D", help="duty in [0, 1)")
    pid_options(p.add_argument_group("controller (given gains)"))
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
