"""``boostsim bench identify``: L, C, losses and vin fitted to a PRBS duty excitation, written
as the fitted board file.
"""

from __future__ import annotations

import math
from pathlib import Path

from ...adc_model import RP2040_ADC_JITTER
from ...units import format_apart
from ..args import (
    _duty_value,
    _finite,
    _Formatter,
    _fraction,
    _int_at_least,
    _positive,
    _positive_time,
    _type,
)
from ..context import CliError, Context, _UsageError
from ..format import _PLOT_KINDS, _check_outputs, _write_plot
from .session import BenchParents, _BenchSession, bench_board

_BENCH_IDENTIFY_EPILOG = """\
The output is ramped on to --duty and held 0.2 s; the input voltage is read (MEAS:VOLT:IN?,
where wired) and the board streams while the duty follows a PRBS between --duty ± --amplitude,
each change marked on the sample clock. The exact switching model, from the --config board,
is fitted to the samples (scipy least_squares; the Jacobian as extra lanes of one simulation):
L, C, r_series = r_L + r_on (split in the configured ratio), r_C and vin, with 95 % intervals;
values the record cannot separate are flagged NOT DETERMINED, with the combination that is
determined. With --max-vout the excitation is simulated first and refused if it could come
near the limit. --out gets the whole board file ([converter] fitted, other tables kept) with
the uncertainties in a comment block: 'boostsim tune --config FILE' designs for it. The fit
models the sampling instant's jitter (--adc-jitter, a Pico's 2 us rms by default), which smears
the ESR's step at each switching edge: left out, r_C comes out low with a confident interval.

examples:
  boostsim bench identify --port /dev/ttyACM0 --out fitted.toml --plot fit.png --max-vout 14
  boostsim bench identify --port emu: --out emulated.toml --json   # the emulated default board
"""


@_type
def _amplitude(text: str) -> float:
    """The PRBS amplitude, a duty: a fraction or a percentage (0.04, 4%)."""
    value = _fraction(text, "--amplitude")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--amplitude must be a duty > 0, got {text!r}")
    return value


def register(bsub, p: BenchParents) -> None:
    """Add ``bench identify`` to the bench subparsers ``bsub``."""
    q = bsub.add_parser("identify", parents=[p.base, p.board, p.connection],
                        formatter_class=_Formatter,
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
    g.add_argument("--amplitude", type=_amplitude, default=0.04, metavar="A",
                   help="PRBS amplitude in duty (default 0.04 or 4%%, at most 0.1)")
    g.add_argument("--bit", type=_positive_time("--bit"), default=2e-3, metavar="TIME",
                   help="PRBS bit length (default 2m; the link may stretch it)")
    g.add_argument("--order", type=_int_at_least(3, "--order"), default=3, metavar="N",
                   help="PRBS of 2^N - 1 bits (3..7, default 3)")
    g.add_argument("--rate", type=_positive("--rate", "Hz"), default=20e3, metavar="HZ",
                   help="streaming sample rate (default 20k, at most 20k)")
    g.add_argument("--adc-jitter", type=_finite("--adc-jitter", "time", "s", positive=False),
                   default=RP2040_ADC_JITTER, metavar="TIME",
                   help="rms delay of each conversion after its timer tick, modelled in the "
                        "fit (default 2u, a Pico's; 0: exact instants). Left out, it biases "
                        "r_C low")
    g.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    q.set_defaults(func=cmd_bench_identify)


def cmd_bench_identify(ctx: Context) -> int:
    import tomli_w

    from firmware_bridge import bench
    from firmware_bridge.bench.identify import MAX_AMPLITUDE

    from ..config import effective_toml

    a = ctx.args
    out = Path(a.out)
    _check_outputs(ctx, (a.out, (".toml",), "--out"), (a.plot, _PLOT_KINDS, "--plot"))
    if out.exists() and not a.force:
        raise CliError(f"{str(out)!r} exists; use --force to overwrite it")
    if a.amplitude > MAX_AMPLITUDE:
        raise _UsageError("--amplitude {}: at most {}".format(
            *format_apart(a.amplitude, MAX_AMPLITUDE)))
    if a.order > 7:
        raise _UsageError(f"--order {a.order}: at most 7")
    if a.rate > 20e3:
        raise _UsageError(f"--rate {format_apart(a.rate, 20e3)[0]}: the board streams at "
                          f"most 20 kHz")
    if a.duty - a.amplitude < 0:
        raise _UsageError("--duty {} - --amplitude {} is below 0".format(
            *format_apart(a.duty, a.amplitude)))
    if a.max_duty is not None and a.duty + a.amplitude > a.max_duty:
        raise _UsageError("the excitation reaches duty {}, above --max-duty {}".format(
            *format_apart(a.duty + a.amplitude, a.max_duty)))
    params = bench_board(ctx)
    document, _ = ctx.document()
    with _BenchSession(ctx) as session:
        board = session.board
        meta = session.metadata()
        try:
            record, result = bench.run_identify(board, params, a.duty, a.amplitude, bit=a.bit,
                                                order=a.order, rate=a.rate,
                                                adc_jitter=a.adc_jitter, report=ctx.warn)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    vin = f"{record.vin:.4g} V measured" if record.vin is not None else "not measured"
    measured = (f"{meta['firmware']} on {meta['port']}, duty {a.duty:g} ± {a.amplitude:g} "
                f"PRBS{a.order}, {record.rate:.6g} S/s, vin {vin}")
    text = result.comment_block(measured) + tomli_w.dumps(effective_toml(result.params,
                                                                         document))
    try:  # staged: replaces the file only when the command completes
        ctx.output(out).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
    files = {"board": str(out)}
    if a.plot:
        _write_plot(ctx, bench.identify_figure(result), a.plot)
        files["plot"] = a.plot
    ctx.commit()  # in place before "wrote ..." is said
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
