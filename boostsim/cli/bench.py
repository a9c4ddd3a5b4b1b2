"""``boostsim bench ports|sweep|step|live|calibrate``: experiments on the bench board (or its
emulator), each beside the same simulation. With ``emulate`` the only CLI module that imports
``firmware_bridge``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..params import BoostParams
from ..units import parse_si, quantity
from .args import (
    _duty_range,
    _duty_value,
    _Formatter,
    _int_at_least,
    _nonnegative,
    _Parser,
    _positive,
    _positive_time,
    _probe,
    _type,
    _vout_value,
    pid_loop,
    pid_options,
)
from .context import PROG, CliError, Context, _UsageError
from .format import (
    _DATA_KINDS,
    _PLOT_KINDS,
    _check_writable,
    _default_file,
    _fmt,
    _open_log,
    _table,
    _unit,
    _write_columns,
    _write_plot,
)

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
  identify   fit L, C, losses, ESR and vin to a PRBS duty excitation; write the fitted board

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

_BENCH_IDENTIFY_EPILOG = """\
The output is ramped on to --duty and held 0.2 s; the input voltage is read (MEAS:VOLT:IN?,
where wired) and the board streams while the duty follows a PRBS between --duty ± --amplitude,
each change marked on the sample clock. The exact switching model, from the --config board,
is fitted to the samples (scipy least_squares; the Jacobian as extra lanes of one simulation):
L, C, r_series = r_L + r_on (split in the configured ratio), r_C and vin, with 95 % intervals;
values the record cannot separate are flagged NOT DETERMINED, with the combination that is
determined. With --max-vout the excitation is simulated first and refused if it could come
near the limit. --out gets the whole board file ([converter] fitted, other tables kept) with
the uncertainties in a comment block: 'boostsim tune --config FILE' designs for it.

examples:
  boostsim bench identify --port /dev/ttyACM0 --out fitted.toml --plot fit.png --max-vout 14
  boostsim bench identify --port emu: --config hidden.toml --out fitted.toml --json
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
A correction of more than 10 % in gain or 0.5 V in offset is refused as a likely typo
(--force applies it; the board itself refuses gains outside 0.8..1.25, offsets beyond 1 V and
any calibration by which the OVP level could no longer be read).

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


def register(sub, base: argparse.ArgumentParser, board: argparse.ArgumentParser,
             files: argparse.ArgumentParser) -> None:
    """Add the ``bench`` command and its actions to the subparsers ``sub``."""
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
    pid_options(g)
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

    q = bsub.add_parser("identify", parents=[base, board, common], formatter_class=_Formatter,
                        help="identify L, C, losses and vin from a PRBS excitation",
                        description="Fit the exact switching model (L, C, series losses, ESR, "
                                    "vin) to a short PRBS duty excitation streamed by the "
                                    "board, and write the fitted board file.",
                        epilog=_BENCH_IDENTIFY_EPILOG)
    g = q.add_argument_group("identification")
    g.add_argument("--out", required=True, metavar="FILE",
                   help="fitted board file to write (.toml)")
    g.add_argument("--plot", metavar="FILE", help="measured vs model figure (.png, .svg, .pdf)")
    g.add_argument("--duty", type=_duty_value, default=0.5, metavar="D",
                   help="operating point (default 0.5)")
    g.add_argument("--amplitude", type=_positive("--amplitude", ""), default=0.04,
                   metavar="A", help="PRBS amplitude in duty (default 0.04, at most 0.1)")
    g.add_argument("--bit", type=_positive_time("--bit"), default=2e-3, metavar="TIME",
                   help="PRBS bit length (default 2m; the link may stretch it)")
    g.add_argument("--order", type=_int_at_least(3, "--order"), default=3, metavar="N",
                   help="PRBS of 2^N - 1 bits (3..7, default 3)")
    g.add_argument("--rate", type=_positive("--rate", "Hz"), default=20e3, metavar="HZ",
                   help="streaming sample rate (default 20k, at most 20k)")
    g.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    q.set_defaults(func=cmd_bench_identify)

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
    g.add_argument("--force", action="store_true",
                   help="apply a correction beyond +-10 %% gain or 0.5 V offset (still within "
                        "the board's own limits)")
    g.add_argument("--out", metavar="FILE", help="also write the TOML snippet to FILE")
    q.set_defaults(func=cmd_bench_calibrate)


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


def board_loop_controller(params: BoostParams, *, duty_max: float | None, **loop: Any
                          ) -> tuple[Any, int, float, float]:
    """The board's PID loop (its ADC, PWM and duty limit) as a simulator controller, for
    ``simulate --vref``: :func:`firmware_bridge.bench.host_loop_controller` with ``duty_max``
    defaulting to the firmware's limit. Returns (controller, every [periods], ts [s],
    duty_max)."""
    from firmware_bridge.bench import host_loop_controller
    from firmware_bridge.firmware import config as fw

    duty_max = fw.DUTY_LIMIT_DEFAULT if duty_max is None else duty_max
    controller, every, ts = host_loop_controller(params, duty_max=duty_max, **loop)
    return controller, every, ts, duty_max


class _BenchSession:
    """A bench command's :class:`firmware_bridge.session.BenchSession` (from its options and
    the board file's calibration), with driver errors as one-line CLI errors (exit status 1)."""

    def __init__(self, ctx: Context):
        from firmware_bridge.session import BenchSession, calibration_from_config

        a = ctx.args
        self.ctx = ctx
        document, self.source = ctx.document()
        try:
            calibration = calibration_from_config(document, self.source)
        except ValueError as exc:
            raise CliError(str(exc)) from None

        def start_emulator():
            from firmware_bridge.emulator import Emulator

            return Emulator(config=a.config) if a.config else Emulator()

        self.session = BenchSession(
            a.port, timeout=a.timeout, max_duty=a.max_duty, max_vout=a.max_vout,
            watchdog=a.watchdog, retries=a.retries, clear_trip=a.clear_trip,
            calibration=calibration, start_emulator=start_emulator, note=ctx.note,
            warn=ctx.warn)

    @property
    def board(self):
        return self.session.board

    @property
    def emulator(self):
        return self.session.emulator

    def __enter__(self) -> _BenchSession:
        from firmware_bridge.board import PICO_VID_PID, BoardError, BoardNotFound

        try:
            self.session.__enter__()
        except BoardNotFound as exc:
            wanted = f"{PICO_VID_PID[0]:04X}:{PICO_VID_PID[1]:04X}"
            if exc.found:
                raise CliError(f"several boards found (USB {wanted}): {', '.join(exc.found)}; "
                               f"choose one with --port") from None
            raise CliError(f"no board found (USB {wanted}): give --port /dev/ttyACM0 (see "
                           f"'boostsim bench ports'), or --port emu: for an emulated "
                           f"board") from None
        except BoardError as exc:
            raise CliError(str(exc)) from None
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        from firmware_bridge.board import BoardError

        self.session.__exit__(exc_type, exc, tb)
        if isinstance(exc, BoardError):
            raise CliError(str(exc)) from None
        return False

    def metadata(self, **extra: Any) -> dict[str, Any]:
        b = self.board
        return self.ctx.metadata(firmware=str(b.identity), port=b.port_name,
                                 emulated=self.session.emulated or None, config=self.source,
                                 **extra)


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


def _check_outputs(*outputs: tuple[str | None, tuple[str, ...], str]) -> None:
    """Every (path, kinds, option) checked before the board is touched: the extension, the
    directory, no two options naming one file, and that the file can really be written (a
    directory in the way, no permission, a read-only file system): opened for appending, a
    new file removed again."""
    seen: dict[Path, str] = {}
    for path, kinds, what in outputs:
        if not path:
            continue
        _check_writable(path, kinds, what)
        p = Path(path)
        key = p.resolve()
        if key in seen:
            raise _UsageError(f"{seen[key]} and {what} name the same file {path!r}")
        seen[key] = what
        if p.is_dir():
            raise CliError(f"cannot write {path!r} ({what}): it is a directory")
        existed = p.exists()
        try:
            with open(p, "ab"):
                pass
        except OSError as exc:
            raise CliError(f"cannot write {path!r} ({what}): {exc.strerror or exc}") from None
        if not existed:
            with contextlib.suppress(OSError):
                p.unlink()


def _mv(value: float) -> str:
    return _fmt(value * 1e3, ".2f")


def cmd_bench_sweep(ctx: Context) -> int:
    from firmware_bridge import bench

    a = ctx.args
    out = _default_file(ctx, a.out, "bench_sweep.csv")
    plot = _default_file(ctx, a.plot, "bench_sweep.png")
    _check_outputs((out, _DATA_KINDS, "--out"), (plot, _PLOT_KINDS, "--plot"),
                   (a.log, (".csv",), "--log"), (_partial_path(out), (".csv",), "--out's "
                                                 "incremental file"))
    if out and Path(_partial_path(out)).exists():
        raise CliError(f"{_partial_path(out)!r} exists: the points of an interrupted sweep? "
                       f"Move or delete it first")
    params = ctx.board()
    if params.n_lanes != 1:
        raise CliError("the bench compares one converter: no per-lane parameters")
    duties = a.duty if a.duty is not None else _duty_range("0.1:0.6:0.05")
    if a.max_duty is not None and np.max(duties) > a.max_duty:
        raise _UsageError(f"the sweep reaches duty {np.max(duties):g}, above --max-duty "
                          f"{a.max_duty:g}")
    if a.fit and duties.size <= len(a.fit):
        raise _UsageError(f"--fit {','.join(a.fit)} needs more than "
                          f"{quantity(len(a.fit), 'point')}")
    partial = _partial_path(out)
    with _BenchSession(ctx) as session:
        board = session.board
        limit = board.duty_limit
        if np.max(duties) > limit:
            raise CliError(f"the sweep reaches duty {np.max(duties):g}, above the board's "
                           f"limit {limit:g} (SOUR:PWM:DUTY:LIM)")
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
        ctx.outputs.commit()
        with contextlib.suppress(OSError):
            os.unlink(partial)
        files["data"] = out
    if plot:
        _write_plot(ctx, bench.bench_sweep_figure(result, params), plot)
        files["plot"] = plot
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
    from firmware_bridge.session import is_emulator_port

    if a.load_step is not None and not is_emulator_port(a.port):
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
                gain, offset = bench.solve_calibration([p["raw_V"] for p in points], refs,
                                                       force=a.force)
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
            ctx.output(a.out).write_text(snippet, encoding="utf-8")
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


# -- bench identify ---------------------------------------------------------------------------

def cmd_bench_identify(ctx: Context) -> int:
    import tomli_w

    from firmware_bridge import bench
    from firmware_bridge.bench.identify import MAX_AMPLITUDE

    from .config import effective_toml

    a = ctx.args
    out = Path(a.out)
    _check_writable(a.out, (".toml",), "--out")
    _check_writable(a.plot, _PLOT_KINDS, "--plot")
    if out.exists() and not a.force:
        raise CliError(f"{str(out)!r} exists; use --force to overwrite it")
    if a.amplitude > MAX_AMPLITUDE:
        raise _UsageError(f"--amplitude {a.amplitude:g}: at most {MAX_AMPLITUDE:g}")
    if a.order > 7:
        raise _UsageError(f"--order {a.order}: at most 7")
    if a.rate > 20e3:
        raise _UsageError(f"--rate {a.rate:g}: the board streams at most 20 kHz")
    if a.duty - a.amplitude < 0:
        raise _UsageError(f"--duty {a.duty:g} - --amplitude {a.amplitude:g} is below 0")
    if a.max_duty is not None and a.duty + a.amplitude > a.max_duty:
        raise _UsageError(f"the excitation reaches duty {a.duty + a.amplitude:g}, above "
                          f"--max-duty {a.max_duty:g}")
    params = ctx.board()
    if params.n_lanes != 1:
        raise CliError("identify one converter: no per-lane parameters")
    document, _ = ctx.document()
    with _BenchSession(ctx) as session:
        board = session.board
        meta = session.metadata()
        try:
            record, result = bench.run_identify(board, params, a.duty, a.amplitude, bit=a.bit,
                                                order=a.order, rate=a.rate, report=ctx.warn)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    vin = f"{record.vin:.4g} V measured" if record.vin is not None else "not measured"
    measured = (f"{meta['firmware']} on {meta['port']}, duty {a.duty:g} ± {a.amplitude:g} "
                f"PRBS{a.order}, {record.rate:.6g} S/s, vin {vin}")
    text = result.comment_block(measured) + tomli_w.dumps(effective_toml(result.params,
                                                                         document))
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
    files = {"board": str(out)}
    if a.plot:
        _write_plot(ctx, bench.identify_figure(result), a.plot)
        files["plot"] = a.plot
    summary = {"command": "bench identify", "firmware": meta["firmware"],
               "port": meta["port"], "samples": int(record.t.size), "rate_Hz": record.rate,
               "bench_s": record.bench_s, "lost_samples": sum(n for _, n in record.gaps),
               **result.as_dict(), "files": files}
    if ctx.human:
        ctx.print(f"boostsim bench identify: {board.identity} · duty {a.duty:g} ± "
                  f"{a.amplitude:g} · {record.t.size} samples at {record.rate:.6g} S/s in "
                  f"{record.bench_s:.2f} s · fit {result.fit_s:.1f} s")
        ctx.print(result.table())
        ctx.print("wrote " + ", ".join(files.values()))
    ctx.emit_json(summary)
    return 0
