"""Matplotlib figures of sweeps, Monte-Carlo studies, waveforms and operating points.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no GUI
backend is touched, so it works headless and in worker threads); :func:`save` writes it (PNG
through Agg; the format follows the extension: .png, .svg, .pdf). In a notebook, a returned
figure displays itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .params import FIELDS, BoostParams
from .theory import ccm_vout, vout_ideal
from .units import format_si, quantity

__all__ = ["averaged_figure", "bode_figure", "bode_phase", "monte_carlo_figure", "plain_axes",
           "save", "steady_figure", "sweep_figure", "waveform_figure"]

_DCM_COLOR = "#f4a261"
_LIMIT_COLOR = "#d62828"
_ON_COLOR = "#90be6d"


def save(fig: Figure, path: str | Path, dpi: int = 120) -> None:
    """Write ``fig`` to ``path`` (format from the extension)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in fig.canvas.get_supported_filetypes():
        raise ValueError(f"cannot write plot {str(path)!r}: unknown image format "
                         f"{suffix or '(none)'!r} (use .png, .svg or .pdf)")
    plain_axes(fig)
    from .outputs import atomic_file

    with atomic_file(path, "wb") as f:  # an interrupted save leaves the earlier file
        fig.savefig(f, dpi=dpi, format=suffix)


def plain_axes(fig: Figure) -> Figure:
    """Turn off the offset ("+2e5", "1e-3+12.0") of every plain-number axis of ``fig``: each
    tick label reads as the value itself. Returns ``fig``."""
    from matplotlib.ticker import ScalarFormatter

    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            formatter = axis.get_major_formatter()
            if isinstance(formatter, ScalarFormatter):
                formatter.set_useOffset(False)
    return fig


def _label(name: str) -> str:
    unit = FIELDS[name].unit if name in FIELDS else ""
    unit = "Ω" if unit == "ohm" else unit
    return f"{name} [{unit}]" if unit else name


def _eng_axis(axis, name: str) -> None:
    """SI-prefixed tick labels (22µ, 100k) on a parameter axis; 1-2-5 ticks when logarithmic."""
    if name not in FIELDS:
        return
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    if axis.get_scale() == "log":
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_minor_formatter(NullFormatter())
    axis.set_major_formatter(EngFormatter(sep=""))


def _si(value: float, name: str) -> str:
    unit = FIELDS[name].unit if name in FIELDS else ""
    unit = "Ω" if unit == "ohm" else unit
    return format_si(float(value), unit, digits=3)


def board_text(params: BoostParams, skip: Sequence[str] = ()) -> str:
    """One line describing the board, e.g. 'vin 5V, L 100uH, C 100uF, R 48Ω, fsw 100kHz'."""
    names = [n for n in ("vin", "L", "C", "R", "fsw") if n not in skip]
    parts = [f"{n} {_si(getattr(params, n), n)}" for n in names]
    if bool(np.any(params.synchronous)):
        parts.append("synchronous")
    return ", ".join(parts)


def _spans(x: np.ndarray, mask: np.ndarray) -> list[tuple[float, float]]:
    """Contiguous runs of ``mask`` along sorted ``x`` as (start, stop), extended half a step."""
    spans = []
    if x.size == 0:
        return spans
    edges = np.r_[x[0] - (x[1] - x[0]) / 2 if x.size > 1 else x[0],
                  (x[1:] + x[:-1]) / 2,
                  x[-1] + (x[-1] - x[-2]) / 2 if x.size > 1 else x[-1]]
    i = 0
    while i < x.size:
        if mask[i]:
            j = i
            while j + 1 < x.size and mask[j + 1]:
                j += 1
            spans.append((edges[i], edges[j + 1]))
            i = j + 1
        else:
            i += 1
    return spans


def _shade_dcm(ax, x: np.ndarray, dcm: np.ndarray, label: bool) -> None:
    for k, (a, b) in enumerate(_spans(x, dcm)):
        ax.axvspan(a, b, color=_DCM_COLOR, alpha=0.18, lw=0,
                   label="DCM region" if (label and k == 0) else None)


def _limit_lines(ax, limits, column: str, scale: float = 1.0, vertical: bool = False) -> None:
    first = True
    for lim in limits:
        if lim.name != column:
            continue
        for bound in (lim.lo, lim.hi):
            if bound is None:
                continue
            kw = dict(color=_LIMIT_COLOR, ls="--", lw=1.2, gid="limit",
                      label="limit" if first else None)
            (ax.axvline if vertical else ax.axhline)(bound * scale, **kw)
            first = False


# -- sweeps ---------------------------------------------------------------------------------

_PANELS = (
    # column, y label, scale
    ("efficiency", "efficiency [%]", 100.0),
    ("vout_ripple", "output ripple, peak-to-peak [mV]", 1e3),
    ("il", "inductor current [A]", 1.0),
)


def sweep_figure(result, *, title: str | None = None) -> Figure:
    """Figure of a grid sweep (:class:`boostsim.sweep.SweepResult`).

    One varying axis: output voltage (with the ideal ``vin/(1-D)`` and the lossy averaged CCM
    model when the axis is the duty) or the solved duty, efficiency, output ripple and the
    inductor current (mean with its min..max band), DCM regions shaded. Two varying axes: one
    curve per value of the second (up to 10), else colour maps. Further axes are held at
    their first value. Limits given to the sweep are drawn as dashed red lines.
    """
    sweep = result.sweep
    cols = result.columns
    axes = sweep.grid_axes
    shape = sweep.shape
    varying = [i for i, a in enumerate(axes) if a.values.size > 1] or [0]
    index: list[Any] = [0] * len(axes)
    for i in varying[:2]:
        index[i] = slice(None)
    held = [axes[i] for i in varying[2:]]

    def grid(name: str) -> np.ndarray:
        values = np.asarray(cols[name]).reshape(shape)[tuple(index)]
        if len(varying) >= 2 and varying[1] < varying[0]:
            values = values.T
        return values

    xa = axes[varying[0]]
    fa = axes[varying[1]] if len(varying) > 1 else None
    fixed = [a for i, a in enumerate(axes) if i not in varying and a.name in FIELDS]
    params = sweep.base.replace(**{a.name: float(a.values[0]) for a in fixed})
    skip = [a.name for a in axes if a.name in FIELDS and a.values.size > 1]
    sub = board_text(params, skip=skip)
    single = [a for i, a in enumerate(axes) if i not in varying and a.name not in FIELDS]
    for a in single:
        sub += (f", vout target {a.values[0]:g} V" if a.name == "vout_target"
                else f", {a.name} {a.values[0]:g}")
    if held:
        sub += " · held at " + ", ".join(f"{a.name} = {_si(a.values[0], a.name)}" for a in held)
    if sweep.transient is not None:
        sub += f" · transient, last {sweep.transient.last_periods} periods"
    fig = Figure(figsize=(11, 8), layout="constrained")
    kind = "Duty sweep" if xa.name == "duty" else f"{xa.name} sweep"
    if fa is not None:
        kind += f" × {fa.name}"
    fig.suptitle(f"{title or kind}\n{sub}", fontsize=12)
    if fa is not None and fa.values.size > 10:
        _sweep_maps(fig, result, xa, fa, grid)
        return fig
    (ax_v, ax_e), (ax_r, ax_i) = fig.subplots(2, 2, sharex=True)
    x = xa.values
    main = "duty" if sweep.target == "vout" else "vout_mean"
    families = [None] if fa is None else list(range(fa.values.size))
    colors = (["C0"] if fa is None else
              [_viridis(k / max(1, len(families) - 1)) for k in range(len(families))])
    mode = grid("mode")
    dcm_labelled = False
    for k, fam in enumerate(families):
        pick = (lambda v: v) if fam is None else (lambda v, fam=fam: v[:, fam])
        label = ("simulated" if main == "vout_mean" else "solved duty") if fam is None \
            else f"{fa.name} = {_si(fa.values[fam], fa.name)}"
        color = colors[k]
        dcm = pick(mode) == "DCM"
        series = ((ax_v, pick(grid(main))), (ax_e, pick(grid("efficiency")) * 100),
                  (ax_r, pick(grid("vout_ripple")) * 1e3), (ax_i, pick(grid("il_mean"))))
        if fam is None:
            for ax, y in series:
                ax.plot(x, y, color=color, lw=2, label=label if ax is ax_v else None)
            ax_e.lines[-1].set_label("conduction losses")
            ax_e.plot(x, pick(grid("efficiency_total")) * 100, color="C1", lw=1.5, ls="--",
                      label="incl. switching estimate")
            ax_i.lines[-1].set_label("mean")
            ax_i.fill_between(x, pick(grid("il_min")), pick(grid("il_max")), color=color,
                              alpha=0.35, lw=0, label="min .. max")
            for ax in (ax_v, ax_e, ax_r, ax_i):
                _shade_dcm(ax, x, dcm, label=ax is ax_v)
        else:
            # Solid in CCM, dotted in DCM (the DCM stretch includes its neighbours so that
            # the two styles join).
            near = dcm | np.r_[dcm[1:], False] | np.r_[False, dcm[:-1]]
            for ax, y in series:
                ax.plot(x, np.where(dcm, np.nan, y), color=color, lw=2,
                        label=label if ax is ax_v else None)
                if dcm.any():
                    ax.plot(x, np.where(near, y, np.nan), color=color, lw=2, ls=":",
                            label="DCM (dotted)" if (ax is ax_v and not dcm_labelled)
                            else None)
            dcm_labelled = dcm_labelled or bool(dcm.any())
    if xa.name == "duty" and fa is None and main == "vout_mean":
        p = params
        sync = bool(np.any(p.synchronous))
        ccm = mode != "DCM"
        with np.errstate(all="ignore"):
            lossy = ccm_vout(p.vin, x, p.R, p.r_L, p.r_on, 0.0 if sync else p.v_f,
                             p.r_sync if sync else p.r_d, p.i_load)
            ideal = (vout_ideal(p.vin, x, p.L, p.R, p.fsw) if not sync and p.i_load == 0
                     and np.isfinite(p.R) else p.vin / (1 - x))
        ax_v.plot(x, ideal, color="0.45", ls=":", lw=1.5,
                  label="ideal, lossless (CCM: vin/(1-D))")
        if ccm.any():
            ax_v.plot(x, np.where(ccm, lossy, np.nan), color="C3", ls="--", lw=1.5,
                      label="averaged CCM model with losses")
    finite = np.asarray(grid(main), dtype=float)
    top = np.nanmax(finite) if np.isfinite(finite).any() else 1.0
    if main == "vout_mean":
        if xa.name == "duty":
            ax_v.set_ylim(0, top * 1.15)
        ax_v.set_ylabel("output voltage, mean [V]")
        _limit_lines(ax_v, result.limits, "vout_mean")
    else:
        ax_v.set_ylabel("duty for the target")
        _limit_lines(ax_v, result.limits, "duty")
    _limit_lines(ax_e, result.limits, "efficiency", 100.0)
    _limit_lines(ax_r, result.limits, "vout_ripple", 1e3)
    _limit_lines(ax_i, result.limits, "il_max")
    eff = np.asarray(grid("efficiency"), dtype=float) * 100
    if np.isfinite(eff).any():
        lo = np.nanmin(eff)
        ax_e.set_ylim(max(0.0, min(lo - 2, 90.0)), 100.5)
    for ax, (_, ylabel, _) in zip((ax_e, ax_r, ax_i), _PANELS, strict=True):
        ax.set_ylabel(ylabel)
    ax_r.set_ylim(bottom=0)
    ax_i.set_ylim(bottom=min(0.0, float(np.nanmin(grid("il_min")))) if np.isfinite(
        np.asarray(grid("il_min"), dtype=float)).any() else 0)
    xlabel = "duty D" if xa.name == "duty" else (
        "output voltage target [V]" if xa.name == "vout_target" else _label(xa.name))
    for ax in (ax_r, ax_i):
        ax.set_xlabel(xlabel)
    for ax in (ax_v, ax_e, ax_r, ax_i):
        ax.grid(True, alpha=0.3)
        if xa.log:
            ax.set_xscale("log")
        _eng_axis(ax.xaxis, xa.name)
    ax_v.set_title("output voltage" if main == "vout_mean" else "duty")
    ax_e.set_title("efficiency")
    ax_r.set_title("output voltage ripple")
    ax_i.set_title("inductor current")
    ax_v.legend(fontsize=8, loc="upper left")
    if fa is None:
        ax_e.legend(fontsize=8, loc="best")
        ax_i.legend(fontsize=8, loc="upper left")
    return fig


def _viridis(t: float):
    from matplotlib import colormaps

    return colormaps["viridis"](0.05 + 0.85 * t)


def _sweep_maps(fig: Figure, result, xa, fa, grid) -> None:
    """Colour maps of a two-axis grid with many values on both axes."""
    panels = (("vout_mean", "output voltage, mean [V]", 1.0),
              ("efficiency", "efficiency [%]", 100.0),
              ("vout_ripple", "output ripple [mV]", 1e3),
              ("il_max", "inductor current peak [A]", 1.0))
    if result.sweep.target == "vout":
        panels = (("duty", "duty for the target", 1.0), *panels[1:])
    axs = fig.subplots(2, 2, sharex=True, sharey=True)
    x, y = xa.values, fa.values
    dcm = (grid("mode") == "DCM").astype(float).T
    for ax, (name, label, scale) in zip(axs.ravel(), panels, strict=True):
        z = np.asarray(grid(name), dtype=float).T * scale
        norm = None
        finite = z[np.isfinite(z)]
        if name in ("vout_ripple", "il_max") and finite.size and finite.min() > 0 \
                and finite.max() / finite.min() > 20:
            from matplotlib.colors import LogNorm

            norm = LogNorm(finite.min(), finite.max())
        mesh = ax.pcolormesh(x, y, z, shading="nearest", cmap="viridis", norm=norm)
        fig.colorbar(mesh, ax=ax, label=label)
        if dcm.any():
            ax.contourf(x, y, dcm, levels=[0.5, 1.5], colors="none", hatches=["///"])
            if not dcm.all():
                ax.contour(x, y, dcm, levels=[0.5], colors="w", linewidths=1.2)
            if ax is axs[0, 0]:
                from matplotlib.patches import Patch

                ax.legend(handles=[Patch(facecolor="none", edgecolor="k", hatch="///",
                                         label="DCM")], loc="upper left", fontsize=8)
        ax.set_title(label.split(" [")[0])
        if xa.log:
            ax.set_xscale("log")
        if fa.log:
            ax.set_yscale("log")
        _eng_axis(ax.xaxis, xa.name)
        _eng_axis(ax.yaxis, fa.name)
    for ax in axs[1]:
        ax.set_xlabel("duty D" if xa.name == "duty" else _label(xa.name))
    for ax in axs[:, 0]:
        ax.set_ylabel(_label(fa.name))


# -- Monte-Carlo ----------------------------------------------------------------------------

def monte_carlo_figure(result, *, title: str | None = None) -> Figure:
    """Histograms of the output voltage, ripple, efficiency and peak inductor current of a
    Monte-Carlo study, limits marked, yield in the title."""
    cols = result.columns
    mc = result.sweep.mc
    ok = np.asarray(cols["converged"], dtype=bool)
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    tol = ", ".join(t.describe() for t in mc.tolerances) or "no tolerances"
    op = (f"duty {result.columns['duty'][0]:.4g}" if result.sweep.vout is None else
          f"duty {result.nominal_duty:.4g} (for vout = {result.sweep.vout[0]:g} V nominal)")
    head = title or f"Monte-Carlo: {quantity(mc.samples, 'sample')}, {mc.dist}, seed {mc.seed}"
    line2 = f"{tol} · {op} · {board_text(result.sweep.base)}"
    line3 = ""
    if result.limits:
        y = result.yield_summary()
        lo, hi = y["yield_ci95"]
        line3 = (f"\nyield {y['yield'] * 100:.2f} % ({y['pass']} of {y['points']} pass; 95 % "
                 f"CI {lo * 100:.2f} .. {hi * 100:.2f} %)")
    fig.suptitle(f"{head}\n{line2}{line3}", fontsize=11)
    panels = (("vout_mean", "output voltage, mean [V]", 1.0),
              ("vout_ripple", "output ripple, peak-to-peak [mV]", 1e3),
              ("efficiency", "efficiency [%]", 100.0),
              ("il_max", "inductor current peak [A]", 1.0))
    from matplotlib.ticker import MaxNLocator

    bins = int(np.clip(np.sqrt(max(ok.sum(), 1)), 10, 80))
    for ax, (name, label, scale) in zip(fig.subplots(2, 2).ravel(), panels, strict=True):
        raw = np.asarray(cols[name], dtype=float)[ok]
        keep = np.isfinite(raw)
        raw = raw[keep]
        values = raw * scale
        limits = [lim for lim in result.limits if lim.name == name]
        short = label.split(" [")[0]
        if values.size:
            lo, hi = float(values.min()), float(values.max())
            span = hi - lo or max(abs(hi) * 1e-3, 1e-12)
            view = [lo - 0.1 * span, hi + 0.1 * span]
            off = []
            for lim in limits:
                for bound in (lim.lo, lim.hi):
                    if bound is None:
                        continue
                    b = bound * scale
                    if view[0] - 1.5 * span <= b <= view[1] + 1.5 * span:
                        view = [min(view[0], b - 0.05 * span), max(view[1], b + 0.05 * span)]
                    else:
                        off.append(f"{b:.4g}")
            edges = np.linspace(lo - 0.02 * span, hi + 0.02 * span, bins + 1)
            passed = np.ones(values.size, dtype=bool)
            for lim in limits:
                passed &= lim.passes(raw)
            ax.hist([values[passed], values[~passed]], bins=edges, stacked=True,
                    color=["C0", _LIMIT_COLOR], alpha=0.85,
                    label=["pass", "fail"] if limits else ["samples", "_fail"])
            ax.set_xlim(*view)
            mean, std = values.mean(), values.std()
            ax.axvline(mean, color="k", lw=1, label="mean")
            note = (f"mean {mean:.6g}\nstd {std:.3g}\nmin {values.min():.5g}\n"
                    f"max {values.max():.5g}")
            if off:
                note += f"\nlimit {', '.join(off)} off scale"
            ax.text(0.02, 0.96, note, transform=ax.transAxes, va="top", fontsize=8,
                    bbox=dict(boxstyle="round", fc="w", ec="0.8", alpha=0.9))
            outside = "outside the limits"
            for lim in limits:
                x0, x1 = ax.get_xlim()
                if lim.lo is not None and lim.lo * scale > x0:
                    ax.axvspan(x0, lim.lo * scale, color=_LIMIT_COLOR, alpha=0.1, lw=0,
                               label=outside)
                    outside = "_outside"
                if lim.hi is not None and lim.hi * scale < x1:
                    ax.axvspan(lim.hi * scale, x1, color=_LIMIT_COLOR, alpha=0.1, lw=0,
                               label=outside)
                    outside = "_outside"
                ax.set_xlim(x0, x1)
            _limit_lines(ax, limits, name, scale, vertical=True)
        if limits:
            frac = (np.all([lim.passes(raw) for lim in limits], axis=0).mean() * 100
                    if raw.size else 0.0)
            ax.set_title(f"{short}: {', '.join(lim.text for lim in limits)} "
                         f"({frac:.2f} % pass)", fontsize=10)
        else:
            ax.set_title(short, fontsize=10)
        if values.size:
            ax.legend(fontsize=8, loc="upper right")
        # At most 6 ticks, each the value itself (no offset): readable for narrow spreads.
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, min_n_ticks=3))
        ax.xaxis.set_major_formatter(_plain())
        ax.set_xlabel(label)
        ax.set_ylabel("samples")
        ax.grid(True, alpha=0.3)
    bad = int((~ok).sum())
    if bad:
        fig.text(0.99, 0.005, f"{quantity(bad, 'sample')} did not converge (excluded, counted "
                 f"as fails)",
                 ha="right", fontsize=8, color=_LIMIT_COLOR)
    return plain_axes(fig)


# -- waveforms ------------------------------------------------------------------------------

def _envelope(t: np.ndarray, y: np.ndarray, bins: int = 2000):
    """(t, lo, hi) min/max envelope of a long record, or None when it is short enough."""
    n = y.size
    if n <= 2 * bins:
        return None
    starts = np.linspace(0, n, bins + 1).astype(int)[:-1]
    lo = np.minimum.reduceat(y, starts)
    hi = np.maximum.reduceat(y, starts)
    stops = np.r_[starts[1:], n] - 1
    # Each bin spans [t[start], t[stop]]: draw it at both ends so the band reaches the edges.
    tt = np.column_stack([t[starts], t[stops]]).ravel()
    return tt, np.repeat(lo, 2), np.repeat(hi, 2)


def _trace(ax, t: np.ndarray, y: np.ndarray, color: str, label: str | None = None) -> None:
    env = _envelope(t, y)
    if env is None:
        ax.plot(t, y, color=color, lw=1, label=label)
    else:
        tc, lo, hi = env
        ax.fill_between(tc, lo, hi, color=color, lw=0.6, alpha=0.9, label=label)


def _time_scale(span: float) -> tuple[float, str]:
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if span >= 2 * scale:
            return scale, unit
    return 1e-9, "ns"


def waveform_figure(sim, *, zoom_periods: int = 4, title: str | None = None,
                    vref: float | None = None, loop: str | None = None) -> Figure:
    """Inductor current, output voltage and switch state of one simulated converter
    (:class:`boostsim.simulation.SimulationResult` with scalar inputs), over the whole run (left;
    long records drawn as their min/max envelope) and zoomed on the last ``zoom_periods``
    periods (right). Line and load steps are marked. Closed loop: ``vref`` [V] (the setpoint,
    drawn on the output) and ``loop`` (a description of the controller, in the title)."""
    t, il, vout = sim.t, np.atleast_2d(sim.il)[0], np.atleast_2d(sim.vout)[0]
    rec = sim.periods
    t_start, t_on = np.atleast_2d(rec.t_start)[0], np.atleast_2d(rec.t_on)[0]
    t_diode, duty = np.atleast_2d(rec.t_diode)[0], np.atleast_2d(rec.duty)[0]
    fig = Figure(figsize=(12, 8), layout="constrained")
    gs = fig.add_gridspec(3, 2, width_ratios=(2.2, 1))
    left = [fig.add_subplot(gs[0, 0])]
    left += [fig.add_subplot(gs[i, 0], sharex=left[0]) for i in (1, 2)]
    right = [fig.add_subplot(gs[0, 1])]
    right += [fig.add_subplot(gs[i, 1], sharex=right[0]) for i in (1, 2)]
    scale, unit = _time_scale(float(t[-1]))
    _trace(left[0], t / scale, il, "C0")
    _trace(left[1], t / scale, vout, "C3")
    left[2].stairs(duty, np.r_[t_start, t_start[-1] + (t_start[-1] - t_start[-2] if
                                                          t_start.size > 1 else t[-1])] / scale,
                   color="C2", lw=1.5, baseline=None)
    left[2].set_ylim(-0.05, 1.05)
    left[0].set_ylabel("inductor current iL [A]")
    left[1].set_ylabel("output voltage [V]")
    left[2].set_ylabel("duty")
    left[2].set_xlabel(f"time [{unit}]")
    for step in sim.steps:
        changes = ", ".join(f"{k}→{_si(v, k)}" for k, v in
                            (("vin", step.vin), ("R", step.R), ("i_load", step.i_load))
                            if v is not None and np.ndim(v) == 0)
        for k, ax in enumerate(left):
            ax.axvline(step.t / scale, color="k", ls="--", lw=1, alpha=0.7)
            if k == 0:
                ax.annotate(changes, (step.t / scale, 1), xycoords=("data", "axes fraction"),
                            xytext=(3, -12), textcoords="offset points", fontsize=8)
    # Zoom: the last few whole periods.
    k0 = max(0, t_start.size - zoom_periods)
    Ts = (t_start[1] - t_start[0]) if t_start.size > 1 else float(t[-1])
    z0 = t_start[k0]
    z1 = min(float(t[-1]), t_start[-1] + Ts)
    zmask = (t >= z0) & (t <= z1)
    zscale, zunit = _time_scale(z1 - z0)
    tz = t[zmask]
    right[0].plot(tz / zscale, il[zmask], color="C0", lw=1.2)
    right[1].plot(tz / zscale, vout[zmask], color="C3", lw=1.2)
    # Switch state from the period records: switch on, diode conducting, both off.
    ks = range(k0, t_start.size)
    edges, states = [], []
    for k in ks:
        a = t_start[k]
        tiny = 1e-9 * Ts
        for begin, length, state in ((a, t_on[k], 1.0), (a + t_on[k], t_diode[k], 0.5),
                                     (a + t_on[k] + t_diode[k],
                                      Ts - t_on[k] - t_diode[k], 0.0)):
            if length > tiny:
                if states and states[-1] == state:
                    continue  # merge with the previous piece
                edges.append(begin)
                states.append(state)
    edges.append(min(t_start[-1] + Ts, float(t[-1])))
    edges_arr = np.clip(np.array(edges), z0, z1)
    right[2].stairs(states, edges_arr / zscale, color="C2", lw=1.5, baseline=None)
    right[2].set_yticks([0, 0.5, 1], ["both off", "diode", "switch on"])
    right[2].set_ylim(-0.15, 1.15)
    for k in ks:
        for ax in right[:2]:
            ax.axvspan(t_start[k] / zscale, (t_start[k] + t_on[k]) / zscale, color=_ON_COLOR,
                       alpha=0.18, lw=0, label="switch on" if (k == k0 and ax is right[0])
                       else None)
    right[0].legend(fontsize=8, loc="upper right")
    right[2].set_xlabel(f"time [{zunit}]")
    right[0].set_title(f"zoom: last {quantity(len(ks), 'period')}", fontsize=10)
    left[0].set_title("whole run" + (" (min/max envelope)" if _envelope(t, il) is not None
                                     else ""), fontsize=10)
    right[2].set_ylabel("switch state")
    for ax in (*left, *right):
        ax.grid(True, alpha=0.3)
    for ax in (left[0], left[1], right[0], right[1]):
        ax.tick_params(labelbottom=False)
    _closed_loop(fig, (left[1], right[1]), left[2], vref, loop, "Switching simulation",
                 sim.params, title)
    return plain_axes(fig)


def _closed_loop(fig: Figure, vout_axes, duty_ax, vref: float | None, loop: str | None,
                 what: str, params: BoostParams, title: str | None) -> None:
    """The setpoint on the output axes, the duty labelled as the PID's output, and a title
    that says open or closed loop."""
    if vref is not None:
        for k, ax in enumerate(vout_axes):
            ax.axhline(vref, color="k", ls=":", lw=1.2, label=f"vref {vref:g} V")
            ax.legend(fontsize=8, loc="lower right" if k == 0 else "upper right")
        duty_ax.set_ylabel("duty (PID output)")
    how = (f"closed loop, {loop}" if loop else "closed loop") if vref is not None \
        else "open loop"
    fig.suptitle(title or f"{what} ({how})\n{board_text(params)}", fontsize=12)


# -- one operating point --------------------------------------------------------------------

def steady_figure(state, params: BoostParams, *, title: str | None = None) -> Figure:
    """One period of the periodic steady state (iL, vout, switch-on interval shaded) and the
    loss breakdown (:class:`boostsim.steady.SteadyState` of a single converter)."""
    fig = Figure(figsize=(11, 6.5), layout="constrained")
    gs = fig.add_gridspec(2, 2, width_ratios=(1.5, 1))
    ax_i = fig.add_subplot(gs[0, 0])
    ax_v = fig.add_subplot(gs[1, 0], sharex=ax_i)
    ax_l = fig.add_subplot(gs[:, 1])
    scale, unit = _time_scale(float(state.t[-1]))
    t = np.asarray(state.t) / scale
    ax_i.plot(t, state.il, color="C0", lw=2)
    ax_v.plot(t, state.vout, color="C3", lw=2)
    for ax in (ax_i, ax_v):
        ax.axvspan(0, state.t_on / scale, color=_ON_COLOR, alpha=0.2, lw=0, label="switch on")
        if state.t_idle > 0:
            a = (state.t_on + state.t_diode) / scale
            ax.axvspan(a, a + state.t_idle / scale, color=_DCM_COLOR, alpha=0.2, lw=0,
                       label="both off (DCM)")
        ax.grid(True, alpha=0.3)
    ax_i.axhline(state.il_mean, color="C0", ls=":", lw=1, label=f"mean {state.il_mean:.3f} A")
    ax_v.axhline(state.vout_mean, color="C3", ls=":", lw=1,
                 label=f"mean {state.vout_mean:.3f} V")
    ax_i.set_ylabel("inductor current iL [A]")
    ax_v.set_ylabel("output voltage [V]")
    ax_v.set_xlabel(f"time in the period [{unit}]")
    ax_i.legend(fontsize=8, loc="best")
    ax_v.legend(fontsize=8, loc="best")
    ax_i.tick_params(labelbottom=False)
    names = [*state.losses, "switching (estimate)"]
    watts = np.array([*state.losses.values(), state.p_switching], dtype=float)
    pin = float(state.pin)
    y = np.arange(len(names))[::-1]
    ax_l.barh(y, watts * 1e3, color=["C1"] * len(state.losses) + ["0.6"])
    ax_l.set_yticks(y, [n.replace("_", " ") for n in names])
    for yi, w in zip(y, watts, strict=True):
        ax_l.text(w * 1e3, yi, f" {w * 1e3:.1f} mW ({w / pin * 100:.2f} %)", va="center",
                  fontsize=8)
    ax_l.set_xlabel("loss [mW]  (% of input power)")
    ax_l.set_xlim(0, max(watts.max() * 1e3 * 1.6, 1e-3))
    ax_l.set_title(f"losses {(state.p_loss + state.p_switching) * 1e3:.1f} mW "
                   f"({(state.p_loss + state.p_switching) / pin * 100:.2f} % of input)",
                   fontsize=10)
    ax_l.grid(True, axis="x", alpha=0.3)
    head = title or (f"Steady state at duty {state.duty:.4f} ({state.mode}): "
                     f"{state.vout_mean:.3f} V, efficiency {state.efficiency * 100:.2f} %")
    fig.suptitle(f"{head}\n{board_text(params)}", fontsize=12)
    ax_i.yaxis.set_major_formatter(_plain())
    return fig


def _plain():
    from matplotlib.ticker import ScalarFormatter

    fmt = ScalarFormatter(useOffset=False)
    return fmt



# -- loop gain ------------------------------------------------------------------------------

_T_COLOR = "C0"
_PLANT_COLOR = "C2"
_CTRL_COLOR = "C1"
_MARK_COLOR = "#d62828"


def bode_phase(h: np.ndarray, start: float = 0.0) -> np.ndarray:
    """Unwrapped phase of ``h`` [deg], shifted by whole turns so that the first point lies
    within 180 deg of ``start`` (e.g. -90 for a loop with an integrator, 0 for Gvd)."""
    phase = np.degrees(np.unwrap(np.angle(np.asarray(h, dtype=complex))))
    if phase.size:
        phase -= 360.0 * np.round((phase[0] - start) / 360.0)
    return phase


def _db(h: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(np.abs(np.asarray(h, dtype=complex)))


def _freq_text(f: float) -> str:
    return format_si(float(f), "Hz", digits=3)


def bode_figure(f: Any, *, loop: Any = None, plant: Any = None, controller: Any = None,
                margins: Any = None, rhp_zero_hz: float | None = None,
                resonance_hz: float | None = None, title: str | None = None,
                subtitle: str | None = None) -> Figure:
    """Bode plot (magnitude [dB] and phase [deg] against frequency [Hz], logarithmic).

    ``loop``: the loop gain ``T`` (complex, solid); ``plant`` (``Gvd``) and ``controller``
    (``C``): drawn dashed beside it, or the plant alone (solid) when there is no loop.
    ``margins`` (:class:`boostsim.design.Margins`): the crossover, phase margin and gain
    margin are marked and annotated; ``rhp_zero_hz`` and ``resonance_hz`` are marked with
    vertical lines when inside the frequency range.
    """
    f = np.asarray(f, dtype=float)
    fig = Figure(figsize=(10, 8), layout="constrained")
    ax_m, ax_p = fig.subplots(2, 1, sharex=True, height_ratios=(1.15, 1))
    curves = []
    if loop is not None:
        curves.append((loop, "loop gain T = C·Gvd", _T_COLOR, "-", 2.2, -90.0))
        if plant is not None:
            curves.append((plant, "plant Gvd (sampled, with delay)", _PLANT_COLOR, "--", 1.4,
                           0.0))
        if controller is not None:
            curves.append((controller, "controller C (PID)", _CTRL_COLOR, "--", 1.4, -90.0))
    elif plant is not None:
        curves.append((plant, "plant Gvd (duty to output voltage)", _T_COLOR, "-", 2.2, 0.0))
    phases = []
    loop_phase = None
    for h, label, color, ls, lw, start in curves:
        phase = bode_phase(h, start)
        phases.append(phase)
        if h is loop:
            loop_phase = phase
        ax_m.semilogx(f, _db(h), color=color, ls=ls, lw=lw, label=label)
        ax_p.semilogx(f, phase, color=color, ls=ls, lw=lw, label=label)
    ax_m.axhline(0.0, color="k", lw=0.8, alpha=0.6)
    if loop is not None:
        ax_p.axhline(-180.0, color="k", lw=0.8, alpha=0.6)
    lo, hi = (float(f[0]), float(f[-1])) if f.size else (1.0, 1.0)

    def vline(x: float | None, label: str, ls: str) -> None:
        if x is None or not np.isfinite(x) or not lo <= x <= hi:
            return
        for ax in (ax_m, ax_p):
            ax.axvline(x, color="0.35", ls=ls, lw=1.1, label=label if ax is ax_m else None)
        ax_m.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                      textcoords="offset points", fontsize=8, color="0.25")

    vline(rhp_zero_hz, f"RHP zero {_freq_text(rhp_zero_hz)}" if rhp_zero_hz else "", ":")
    vline(resonance_hz, f"LC resonance {_freq_text(resonance_hz)}" if resonance_hz else "",
          "-.")
    if loop is not None and margins is not None:
        t_phase = loop_phase
        fc = float(margins.crossover_hz)
        if np.isfinite(fc) and lo <= fc <= hi:
            pc = float(np.interp(np.log(fc), np.log(f), t_phase))
            # Show the margin from the -180 deg line nearest below the curve.
            floor = pc - float(margins.phase_margin_deg)
            ax_m.plot([fc], [0.0], "o", color=_MARK_COLOR, ms=7, zorder=5)
            ax_m.annotate(f"crossover {_freq_text(fc)}", (fc, 0.0), xytext=(-8, -16),
                          textcoords="offset points", fontsize=9, color=_MARK_COLOR,
                          fontweight="bold", ha="right",
                          bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none",
                                    alpha=0.8))
            ax_p.axvline(fc, color=_MARK_COLOR, ls=":", lw=1)
            ax_p.annotate("", (fc, pc), xytext=(fc, floor),
                          arrowprops=dict(arrowstyle="<->", color=_MARK_COLOR, lw=1.6))
            ax_p.annotate(f"phase margin {margins.phase_margin_deg:.1f}°",
                          (fc, 0.5 * (pc + floor)), xytext=(8, 0), textcoords="offset points",
                          fontsize=9, color=_MARK_COLOR, fontweight="bold", va="center",
                          bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none",
                                    alpha=0.8))
            ax_m.axvline(fc, color=_MARK_COLOR, ls=":", lw=1)
        fg, gm = float(margins.phase_crossover_hz), float(margins.gain_margin_db)
        if np.isfinite(fg) and np.isfinite(gm) and lo <= fg <= hi:
            ax_m.annotate("", (fg, 0.0), xytext=(fg, -gm),
                          arrowprops=dict(arrowstyle="<->", color="#7b2cbf", lw=1.6))
            ax_m.annotate(f"gain margin {gm:.1f} dB", (fg, -0.5 * gm), xytext=(8, 0),
                          textcoords="offset points", fontsize=9, color="#7b2cbf",
                          fontweight="bold", va="center", ha="left",
                          bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none",
                                    alpha=0.8))
            ax_p.plot([fg], [float(np.interp(np.log(fg), np.log(f), t_phase))], "o",
                      color="#7b2cbf", ms=6)
        if not margins.stable:
            ax_m.text(0.5, 0.5, "closed loop UNSTABLE", transform=ax_m.transAxes,
                      ha="center", va="center", fontsize=16, color=_MARK_COLOR, alpha=0.6)
    # Keep the magnitude axis readable: the controller's integrator can reach +100 dB.
    mags = [_db(h) for h, *_ in curves]
    if mags:
        finite = np.concatenate([m[np.isfinite(m)] for m in mags]) if mags else np.array([])
        if finite.size:
            top = min(float(finite.max()), 100.0)
            bottom = max(float(finite.min()), -100.0)
            pad = 0.06 * (top - bottom or 1.0)
            ax_m.set_ylim(bottom - pad, top + pad)
    ax_m.set_ylabel("magnitude [dB]")
    ax_p.set_ylabel("phase [deg]")
    ax_p.set_xlabel("frequency [Hz]")
    from matplotlib.ticker import EngFormatter, MultipleLocator

    ax_p.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax_p.yaxis.set_major_locator(MultipleLocator(90 if np.ptp(np.concatenate(
        phases or [np.zeros(1)])) > 270 else 45))
    if f.size:
        ax_p.set_xlim(lo, hi)
    for ax in (ax_m, ax_p):
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
    ax_m.legend(fontsize=8, loc="lower left")
    head = title or ("Loop gain" if loop is not None else "Plant Gvd (open loop)")
    fig.suptitle(head + (f"\n{subtitle}" if subtitle else ""), fontsize=12)
    return fig


def averaged_figure(result, *, title: str | None = None, vref: float | None = None,
                    loop: str | None = None) -> Figure:
    """Inductor current, output voltage (switching-period averages) and duty of one
    :func:`boostsim.averaged.simulate_averaged` run, steps marked; ``vref``, ``loop``: the
    closed loop's setpoint [V] and description, as in :func:`waveform_figure`."""
    t = np.asarray(result.t, dtype=float)
    il, vout = np.atleast_2d(result.il)[0], np.atleast_2d(result.vout)[0]
    rec = result.periods
    t_start, duty = np.atleast_2d(rec.t_start)[0], np.atleast_2d(rec.duty)[0]
    scale, unit = _time_scale(float(t[-1]) if t.size else 1.0)
    fig = Figure(figsize=(10, 7.5), layout="constrained")
    ax_i, ax_v, ax_d = fig.subplots(3, 1, sharex=True)
    ax_i.plot(t / scale, il, color="C0", lw=1.4)
    ax_v.plot(t / scale, vout, color="C3", lw=1.4)
    if t_start.size:
        end = t_start[-1] + (t_start[-1] - t_start[-2] if t_start.size > 1 else t[-1])
        ax_d.stairs(duty, np.r_[t_start, end] / scale, color="C2", lw=1.5, baseline=None)
    ax_d.set_ylim(-0.05, 1.05)
    for step in result.steps:
        for ax in (ax_i, ax_v, ax_d):
            ax.axvline(step.t / scale, color="k", ls="--", lw=1, alpha=0.7)
    ax_i.set_ylabel("inductor current iL [A]\n(period average)")
    ax_v.set_ylabel("output voltage [V]\n(period average)")
    ax_d.set_ylabel("duty")
    ax_d.set_xlabel(f"time [{unit}]")
    for ax in (ax_i, ax_v, ax_d):
        ax.grid(True, alpha=0.3)
    _closed_loop(fig, (ax_v,), ax_d, vref, loop, "Averaged-model simulation", result.params,
                 title)
    return plain_axes(fig)
