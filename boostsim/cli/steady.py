"""``boostsim steady``: one periodic operating point and its losses.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from .args import (
    _duty_value,
    _Formatter,
    _int_at_least,
    _vout_value,
)
from .context import CliError, Context, _UsageError
from .format import _DATA_KINDS, _PLOT_KINDS, _check_outputs, _table, _write_columns, _write_plot
from .simulate import _metrics_table

_STEADY_EPILOG = """\
The periodic steady state of the switching converter at one duty, or at the duty that gives a
target mean output voltage (a first guess from the lossy averaged CCM model, then solved on the
exact steady state; an error if the target is out of reach). Prints the operating point and
the loss breakdown in W and % of the input power; --out writes one row (.csv) or everything
(.json: figures, losses, one period of waveform), --plot draws one period and the losses.

examples:
  boostsim steady --duty 0.6
  boostsim steady --vout 12 --set L=47u --plot op.png
  boostsim steady --vout 12 --json > op.json     # duty, figures and losses for scripts
"""


# -- steady ---------------------------------------------------------------------------------

def cmd_steady(ctx: Context) -> int:
    from ..steady import steady_state
    from ..sweep import solve_duty
    from ..theory import ccm_vout

    a = ctx.args
    if a.duty is None and a.vout is None:
        raise _UsageError("give the operating point: --duty D or --vout V")
    _check_outputs(ctx, (a.out, _DATA_KINDS, "--out"), (a.plot, _PLOT_KINDS, "--plot"))
    params = ctx.board()
    duty = a.duty if a.duty is not None else solve_duty(params, a.vout)
    state = steady_state(params, duty, points=a.points)
    if not state.converged:
        raise CliError(f"the steady-state solver did not converge at duty {duty:g}")
    values = {k: v for k, v in state.as_dict().items()
              if np.ndim(v) == 0 and k not in ("il_start", "vc_start")}
    sync = bool(params.synchronous)
    theory = float(ccm_vout(params.vin, duty, params.R, params.r_L, params.r_on,
                            0.0 if sync else params.v_f, params.r_sync if sync else params.r_d,
                            params.i_load))
    summary: dict[str, Any] = {"command": "steady", "vout_target": a.vout, **values,
                               "losses": state.losses,
                               "vout_averaged_ccm_model": theory,
                               "vout_ideal": params.vin / (1 - duty),
                               "parameters": params.to_dict()}
    files: dict[str, str] = {}
    if a.out:
        if Path(a.out).suffix.lower() == ".json":
            from ..outputs import write_json

            document = {"metadata": ctx.metadata(), "operating_point": summary,
                        "waveform": {"t_s": state.t, "il_A": state.il, "vc_V": state.vc,
                                     "vout_V": state.vout}}
            try:
                write_json(ctx.output(a.out), document)
            except OSError as exc:
                raise CliError(f"cannot write {a.out!r}: {exc.strerror or exc}") from None
        else:
            from ..sweep import SUMMARY

            row = {"duty": np.array([duty])}
            if a.vout is not None:
                row = {"vout_target": np.array([a.vout]), **row}
            row.update({k: np.array([values[k]]) for k in SUMMARY if k in values})
            _write_columns(ctx, a.out, row, ctx.metadata())
        files["data"] = a.out
    if a.plot:
        from ..plots import steady_figure

        _write_plot(ctx, steady_figure(state, params), a.plot)
        files["plot"] = a.plot
    ctx.commit()  # in place before "wrote ..." is said
    summary["files"] = files
    if ctx.human:
        from ..plots import board_text

        how = (f"duty {duty:.5f} for vout = {a.vout:g} V" if a.vout is not None
               else f"duty {duty:g}")
        ctx.print(f"boostsim steady: {board_text(params)} · {how}")
        ctx.print(_metrics_table(values))
        ctx.print(f"(averaged CCM model with losses: {theory:.4f} V; ideal vin/(1-D): "
                  f"{params.vin / (1 - duty):.4f} V)")
        ctx.print("")
        ctx.print(_loss_table(state))
        if files:
            ctx.print("wrote " + ", ".join(files.values()))
    ctx.emit_json(summary)
    return 0


def _loss_table(state) -> str:
    pin = float(state.pin)
    total = float(state.p_loss) + float(state.p_switching)
    rows = []
    for name, watts in [*state.losses.items(), ("switching (estimate)", state.p_switching)]:
        rows.append([name.replace("_", " "), f"{watts * 1e3:.2f}", f"{watts / pin * 100:.3f}",
                     f"{watts / total * 100:.1f}" if total > 0 else "-"])
    rows.append(["total", f"{total * 1e3:.2f}", f"{total / pin * 100:.3f}", "100.0"])
    return _table(["loss", "mW", "% of Pin", "% of losses"], rows, [False, True, True, True])


def register(sub, base: argparse.ArgumentParser, board: argparse.ArgumentParser,
             files: argparse.ArgumentParser) -> None:
    """Add the ``steady`` command to the subparsers ``sub`` (``base``, ``board``, ``files``:
    the shared option groups)."""
    p = sub.add_parser("steady", parents=[base, board, files], formatter_class=_Formatter,
                       help="one operating point and its losses",
                       description="Periodic steady state at one duty or target output voltage.",
                       epilog=_STEADY_EPILOG)
    g = p.add_argument_group("operating point").add_mutually_exclusive_group()
    g.add_argument("--duty", type=_duty_value, metavar="D", help="duty in [0, 1)")
    g.add_argument("--vout", type=_vout_value, metavar="V",
                   help="target mean output voltage [V]: find the duty")
    p.add_argument("--points", type=_int_at_least(2, "--points"), default=400, metavar="N",
                   help="waveform samples over the period (default 400)")
    p.set_defaults(func=cmd_steady)
