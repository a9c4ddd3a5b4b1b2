"""Figures of the bench experiments (measured beside simulated), built without pyplot, and the
live window of ``bench live`` (:class:`LivePlotter`, a separate process when a display exists).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from boostsim.analysis import StepMetrics
from boostsim.identify import FIT_NAMES, Identification
from boostsim.params import BoostParams
from boostsim.units import format_si, quantity

from .live import LiveResult
from .step import BenchStep
from .sweep import BenchSweep, simulate_sweep

# ---------------------------------------------------------------------------- figures


def _figure(rows: int, height: float, ratios: Sequence[float] | None = None):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, height), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, gridspec_kw={"height_ratios": ratios}
                        if ratios else None)
    return fig, np.atleast_1d(axes)


_MEAS = "#1d3557"
_SIM = "#e76f51"
_FIT = "#2a9d8f"


def bench_sweep_figure(result: BenchSweep, params: BoostParams, *, title: str = ""):
    """Measured (error bars: ±2 standard errors of each point's mean, the legend says so) and
    simulated output voltage vs duty, and the error per point (with the fitted model, if
    any)."""
    from boostsim.plots import board_text, plain_axes

    fig, (ax, ax_e) = _figure(2, 7, (2.2, 1))
    if result.n_points:
        lo = float(min(result.duty_effective.min(), result.requested.min()))
        hi = float(max(result.duty_effective.max(), result.requested.max()))
    else:
        lo, hi = float(result.requested.min()), float(result.requested.max())
    grid = np.linspace(lo, hi, 200) if hi > lo else np.array([lo])
    with contextlib.suppress(Exception):
        curve = simulate_sweep(params, grid, result.frequency)
        ax.plot(grid, curve["vout_mean"], color=_SIM, lw=1.5, label="simulated (steady state)")
    if result.fit is not None:
        with contextlib.suppress(Exception):
            fitted = simulate_sweep(result.fit.params, grid)
            names = ", ".join(f"{n}={result.fit.values[n]:.3g}" for n in result.fit.names)
            ax.plot(grid, fitted["vout_mean"], color=_FIT, lw=1.2, ls="--",
                    label=f"fitted ({names})")
    readings = quantity(int(np.median(result.samples)) if result.n_points else 0, "reading")
    bars = f"error bars ±2 standard errors of the mean of {readings}"
    if result.n_points:
        ax.errorbar(result.duty_effective, result.vout_mean, yerr=2 * result.vout_sem,
                    fmt="o", ms=4, color=_MEAS, capsize=2,
                    label=f"measured mean ({result.method}); {bars}")
    ax.set_ylabel("mean output voltage [V]")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    if result.sim is not None and result.n_points:
        err = result.error * 1e3
        ax_e.errorbar(result.duty_effective, err, yerr=2 * result.vout_sem * 1e3, fmt="o", ms=4,
                      color=_MEAS, capsize=2, label="measured - simulated (±2 standard errors)")
        if result.fit is not None:
            ax_e.plot(result.duty_effective, (result.vout_mean - result.fit.vout) * 1e3, "s",
                      ms=4, mfc="none", color=_FIT, label="measured - fitted")
        ax_e.axhline(0, color="k", lw=0.8)
        m = result.error_metrics()
        text = f"error: rms {m['rms'] * 1e3:.2f} mV, max {m['max'] * 1e3:.2f} mV"
        if result.fit is not None:
            text += f"; after the fit: rms {result.fit.rms * 1e3:.2f} mV"
        ax_e.set_title(text, fontsize=10)
        ax_e.legend(loc="best", fontsize=8)
    ax_e.set_ylabel("error [mV]")
    ax_e.set_xlabel("duty (as produced by the PWM)")
    ax_e.grid(True, alpha=0.3)
    head = title or "bench sweep: measured vs simulated"
    if result.aborted:
        head += f" (aborted after {quantity(result.n_points, 'point')})"
    fig.suptitle(f"{head}\n{board_text(params)}", fontsize=11)
    return plain_axes(fig)


def _metrics_text(m: StepMetrics | None) -> list[str]:
    if m is None:
        return ["-"] * 5
    def ms(v: float) -> str:
        return "-" if not np.isfinite(v) else f"{v * 1e3:.2f} ms"
    return [f"{m.final:.3f} V", ms(m.rise_time), f"{m.overshoot:.1f} %",
            f"{m.undershoot:.1f} %", ms(m.settling_time)]


def step_figure(step: BenchStep, params: BoostParams, *, title: str = ""):
    """Measured step (single conversions, light; moving average, dark) over the simulated
    per-period mean, with a metrics table."""
    from matplotlib.figure import Figure

    from boostsim.plots import board_text, plain_axes

    fig = Figure(figsize=(11, 5.5), layout="constrained")
    ax, ax_table = fig.subplots(1, 2, gridspec_kw={"width_ratios": (3.2, 1)})
    ax.plot(step.t * 1e3, step.vout, ".", ms=1.5, color=_MEAS, alpha=0.25,
            label=f"measured, {step.rate:.6g} S/s")
    if step.t_sim is not None:
        ax.plot(step.t_sim * 1e3, step.vout_sim, color=_SIM, lw=2.2, alpha=0.8,
                label="simulated (period means)")
    ax.plot(step.t * 1e3, step.vout_smooth, color=_MEAS, lw=1.0,
            label=f"measured, {step.smooth}-sample mean")
    ax.axvline(0, color="k", lw=0.8, ls=":")
    ax.set_xlabel("time from the step [ms] (board clock)")
    ax.set_ylabel("output voltage [V]")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    rows = ["final", "rise 10-90%", "overshoot", "undershoot", "settling 2%"]
    cells = [[r, a, b] for r, a, b in zip(rows, _metrics_text(step.metrics),
                                          _metrics_text(step.metrics_sim), strict=True)]
    ax_table.axis("off")
    table = ax_table.table(cellText=cells, colLabels=["", "measured", "simulated"],
                           loc="center", colLoc="left", cellLoc="left",
                           colWidths=[0.38, 0.31, 0.31], bbox=[0.0, 0.3, 1.0, 0.45])
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    ax_table.text(0.0, 0.22, f"step marked to ±{step.mark_uncertainty * 1e6:.0f} µs\n"
                  f"metrics on the {step.smooth}-sample mean", fontsize=8, va="top",
                  transform=ax_table.transAxes)
    what = (f"duty {step.duty:g} -> {step.duty_after:g}" if step.kind == "duty" else
            f"load step {', '.join(f'{k}={v:g}' for k, v in step.load_change.items())} at "
            f"duty {step.duty:g}")
    fig.suptitle(f"{title or 'bench step'}: {what}\n{board_text(params)}", fontsize=11)
    return plain_axes(fig)


def live_figure(result: LiveResult, params: BoostParams | None = None, *, title: str = ""):
    """Output voltage and setpoint (with the simulated loop, if any), duty, and the loop's
    timing (tick intervals and round trips)."""
    from boostsim.plots import board_text, plain_axes

    fig, (ax, ax_d, ax_t) = _figure(3, 8, (2, 1, 1))
    s = result.settings
    ax.plot(result.t, result.vout, color=_MEAS, lw=1, label="measured (MEAS:VOLT?)")
    ax.plot(result.t, result.vref, color="k", lw=0.8, ls="--", label="setpoint")
    ax_d.plot(result.t, result.duty, color=_MEAS, lw=1, label="duty (host PID)")
    if result.sim is not None:
        ax.plot(result.sim["t"], result.sim["vout"], color=_SIM, lw=1, alpha=0.9,
                label="simulated loop (period means)")
        ax_d.step(result.sim["t_ctrl"], result.sim["duty"], where="post", color=_SIM, lw=1,
                  label="duty (simulated)")
    ax.set_ylabel("output voltage [V]")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, alpha=0.3)
    _startup_zoom(ax, result)
    ax_d.set_ylabel("duty")
    ax_d.grid(True, alpha=0.3)
    ax_d.legend(loc="lower right", fontsize=8)
    timing = result.timing()
    if result.ticks > 2:
        ax_t.plot(result.t[1:], np.diff(result.t) * 1e3, lw=0.8, color="#6c757d",
                  label="tick interval")
        ax_t.plot(result.t, result.exchange * 1e3, lw=0.8, color="#e9c46a",
                  label="serial round trip")
        ax_t.axhline(1e3 / s["rate"], color="k", lw=0.8, ls=":",
                     label=f"set period (1/{s['rate']:g} Hz)")
        ax_t.legend(loc="upper right", fontsize=8)
    ax_t.set_ylabel("[ms]")
    ax_t.set_xlabel("time [s] (host clock)")
    ax_t.grid(True, alpha=0.3)
    head = (f"{title or 'bench live'}: PID kp={s['kp']:g} ki={s['ki']:g} kd={s['kd']:g} at "
            f"{s['rate']:g} Hz; achieved {timing['rate']:.1f} Hz, jitter "
            f"{timing['jitter_std'] * 1e3:.3f} ms rms")
    fig.suptitle(head + (f"\n{board_text(params)}" if params is not None else ""), fontsize=10)
    return plain_axes(fig)


def startup_window(t: np.ndarray, vout: np.ndarray, vref: np.ndarray,
                   band: float = 0.02) -> float | None:
    """End [s] of the start-up to show in a zoom: three times the time the output takes to
    first come within ``band`` (relative) of the setpoint, at most a quarter of the run; None
    if it never gets there or the run is too short to zoom into."""
    t, vout, vref = (np.asarray(x, dtype=float) for x in (t, vout, vref))
    if t.size < 8:
        return None
    near = np.flatnonzero(np.abs(vout - vref) <= band * np.abs(vref))
    if near.size == 0 or t[near[0]] <= t[0]:
        return None
    end = min(t[0] + 3 * (t[near[0]] - t[0]), t[0] + 0.25 * (t[-1] - t[0]))
    return float(end) if np.count_nonzero(t <= end) >= 4 else None


def _startup_zoom(ax, result: LiveResult) -> None:
    """An inset of ``ax`` with the start-up (measured, setpoint, simulated)."""
    end = startup_window(result.t, result.vout, result.vref)
    if end is None:
        return
    inset = ax.inset_axes([0.33, 0.1, 0.4, 0.5])
    keep = result.t <= end
    inset.plot(result.t[keep] * 1e3, result.vout[keep], color=_MEAS, lw=1, marker=".", ms=3)
    inset.plot(result.t[keep] * 1e3, result.vref[keep], color="k", lw=0.8, ls="--")
    if result.sim is not None:
        ks = np.asarray(result.sim["t"]) <= end
        inset.plot(np.asarray(result.sim["t"])[ks] * 1e3, np.asarray(result.sim["vout"])[ks],
                   color=_SIM, lw=1)
    inset.set_title(f"start-up, first {end * 1e3:.0f} ms", fontsize=8)
    inset.set_xlabel("time [ms]", fontsize=7)
    inset.tick_params(labelsize=7)
    inset.grid(True, alpha=0.3)
    inset.set_xlim(result.t[0] * 1e3, end * 1e3)
    ax.axvspan(result.t[0], end, color="0.85", alpha=0.5, lw=0, zorder=0,
               label="start-up (zoom)")
    ax.legend(loc="lower right", fontsize=8)


# ---------------------------------------------------------------------------- live window


def display_available() -> bool:
    """Whether a live matplotlib window can open (a desktop session)."""
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _plot_process(queue, title: str, window: float) -> None:  # pragma: no cover - needs a display
    import queue as queue_mod

    import matplotlib.pyplot as plt

    plt.ion()
    fig, (ax, ax_d) = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
    fig.suptitle(title)
    lv, = ax.plot([], [], lw=1, label="vout")
    lr, = ax.plot([], [], "k--", lw=0.8, label="setpoint")
    ld, = ax_d.plot([], [], lw=1, label="duty")
    ax.legend(loc="lower right")
    ax.set_ylabel("V")
    ax_d.set_ylabel("duty")
    ax_d.set_xlabel("s")
    data: list[tuple] = []
    while plt.fignum_exists(fig.number):
        done = False
        while True:
            try:
                item = queue.get_nowait()
            except queue_mod.Empty:
                break
            if item is None:
                done = True
                break
            data.extend(item)
        if data:
            arr = np.array(data[-20000:])
            keep = arr[:, 0] >= arr[-1, 0] - window
            arr = arr[keep]
            lv.set_data(arr[:, 0], arr[:, 1])
            lr.set_data(arr[:, 0], arr[:, 2])
            ld.set_data(arr[:, 0], arr[:, 3])
            for a in (ax, ax_d):
                a.relim()
                a.autoscale_view()
        if done:
            break
        plt.pause(0.1)
    plt.ioff()
    if plt.fignum_exists(fig.number):
        plt.show()


class LivePlotter:
    """A live matplotlib window in a separate process (so drawing never stalls the control
    loop), fed in batches. Only when :func:`display_available`; otherwise ``active`` is
    False and :meth:`push` does nothing."""

    def __init__(self, title: str = "boostsim bench live", window: float = 10.0):
        self.active = display_available()
        self._batch: list[tuple] = []
        self._last = 0.0
        self._proc = None
        if self.active:
            ctx = multiprocessing.get_context("spawn")
            self._queue = ctx.Queue()
            self._proc = ctx.Process(target=_plot_process, args=(self._queue, title, window),
                                     daemon=True)
            self._proc.start()

    def push(self, t: float, vout: float, vref: float, duty: float) -> None:
        if not self.active:
            return
        self._batch.append((t, vout, vref, duty))
        now = time.monotonic()
        if now - self._last > 0.1:
            self._last = now
            with contextlib.suppress(Exception):
                self._queue.put_nowait(self._batch)
            self._batch = []

    def close(self) -> None:
        if self.active and self._proc is not None:
            with contextlib.suppress(Exception):
                self._queue.put_nowait(self._batch)
                self._queue.put_nowait(None)
            self.active = False


def identify_figure(result: Identification, *, title: str = ""):
    """Measured output (single conversions) over the model before (starting board) and after
    the fit, with the residuals below and the fitted-vs-start table beside."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 6.5), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=(3.2, 1.3), height_ratios=(3, 1.2))
    ax = fig.add_subplot(grid[0, 0])
    ax_res = fig.add_subplot(grid[1, 0], sharex=ax)
    ax_table = fig.add_subplot(grid[:, 1])
    t_ms = result.t * 1e3
    ax.plot(t_ms, result.vout, ".", ms=2, color=_MEAS, alpha=0.35, label="measured")
    ax.plot(t_ms, result.model_start, color="0.55", lw=1.2, ls="--",
            label=f"starting board (rms {result.rms_start_V * 1e3:.1f} mV)")
    ax.plot(t_ms, result.model_fit, color=_SIM, lw=1.8,
            label=f"fitted (rms {result.rms_V * 1e3:.1f} mV)")
    for t_change in result.excitation.times:
        ax.axvline(t_change * 1e3, color="k", lw=0.5, ls=":", alpha=0.4)
    ax.set_ylabel("output voltage [V]")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    ax_res.plot(t_ms, (result.vout - result.model_start) * 1e3, color="0.55", lw=0.6)
    ax_res.plot(t_ms, (result.vout - result.model_fit) * 1e3, color=_SIM, lw=0.8)
    ax_res.set_ylabel("measured - model [mV]")
    ax_res.set_xlabel("time [ms] (board clock)")
    ax_res.grid(True, alpha=0.3)
    ax_table.axis("off")
    cells = []
    for n in result.names:
        unit = FIT_NAMES[n][0].replace("ohm", "Ω")
        lo, hi = result.ci95[n]
        mark = "" if result.determined[n] else " (?)"
        cells.append([n, format_si(result.start[n], unit, digits=3),
                      format_si(result.value[n], unit, digits=4) + mark,
                      f"{format_si(lo, '', digits=3)} .. {format_si(hi, unit, digits=3)}"])
    table = ax_table.table(cellText=cells, colLabels=["", "start", "fitted", "95 %"],
                           loc="center", colLoc="left", cellLoc="left",
                           colWidths=[0.17, 0.2, 0.25, 0.38], bbox=[0.0, 0.45, 1.0, 0.4])
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    notes = ["(?): not determined by this record"] + [
        f"determined: {c.text} = {c.value:.3g} ± {100 * c.rel_std:.2g} %"
        for c in result.combinations]
    ax_table.text(0.0, 0.4, "\n".join(notes), fontsize=8, va="top",
                  transform=ax_table.transAxes)
    fig.suptitle(f"{title or 'bench identify'}: duty {result.excitation.duty0:.3g} ± PRBS, "
                 f"{result.t.size} samples", fontsize=11)
    return fig
