"""``boostsim bench calibrate``: the board's output-voltage reading calibrated from one or
two reference voltages.
"""

from __future__ import annotations

import sys

from ...units import parse_si
from ..args import _duty_value, _Formatter, _int_at_least, _nonnegative, _vout_value
from ..context import CliError, Context, _UsageError
from ..format import _check_outputs
from .session import BenchParents, _BenchSession

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


def register(bsub, p: BenchParents) -> None:
    """Add ``bench calibrate`` to the bench subparsers ``bsub``."""
    q = bsub.add_parser("calibrate", parents=[p.base, p.board, p.connection],
                        formatter_class=_Formatter,
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
    _check_outputs(ctx, (a.out, (".toml",), "--out"))
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
        ctx.commit()  # in place before "wrote ..." is said
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
