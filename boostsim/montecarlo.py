"""Closed-loop Monte-Carlo: the yield of a load step over component tolerances.

Every sample is the nominal board with its toleranced fields drawn as in ``boostsim sweep
--mc`` (:class:`boostsim.sweep.MonteCarlo`, block-seeded: sample i is the same whatever the
study size), started from rest under the board's control loop (a
:class:`~boostsim.control.DigitalController`: ADC, :mod:`boostsim.pid`, PWM), with a load
step at ``step.t``. The compiled kernel simulates all samples as lanes and returns each
period's exact mean output voltage; the response to the step is measured on it (the switching
ripple is not part of a step response) and checked against limits::

    from boostsim import Step, default_board
    from boostsim.montecarlo import load_step_yield
    from boostsim.sweep import parse_limit, parse_tolerance

    result = load_step_yield(default_board(), controller, vref=12.0,
                             step=Step(6e-3, R=24.0), t_end=10e-3, samples=10_000,
                             tolerances=[parse_tolerance("L=20%"), parse_tolerance("C=20%")],
                             limits=[parse_limit("overshoot<5%", COLUMNS)])
    result.yield_summary()

Figures per sample (``COLUMNS``): ``overshoot`` / ``undershoot`` (largest excursion of the
period-mean output above / below its final value after the step, as a fraction of the final
value), ``deviation`` [V] (largest |excursion|), ``settling_time`` [s] after the step (last
exit from ``band`` times the final value), ``vout_initial`` / ``vout_final`` [V] (mean of the
last tenth before the step / after it).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .control import DigitalController
from .engine import Step
from .fastloop import closed_loop_means
from .memory import check_memory
from .params import BoostParams
from .sweep import Limit, MonteCarlo, Sweep, SweepResult, Tolerance

__all__ = ["COLUMNS", "disturbance_response", "load_step_yield", "load_step_yield_bytes"]

COLUMNS = ("overshoot", "undershoot", "deviation", "settling_time", "vout_initial",
           "vout_final")

_CHUNK_VALUES = 4_000_000  # per-lane, per-period (or per-draw) values in one kernel call


def disturbance_response(t: np.ndarray, y: np.ndarray, t_step: float, band: float
                         ) -> dict[str, np.ndarray]:
    """Figures of a regulated output ``y`` (lanes, n_t) at times ``t`` [s] disturbed at
    ``t_step`` (see the module docstring for the columns)."""
    before, after = t < t_step, t >= t_step
    if before.sum() < 1 or after.sum() < 10:
        raise ValueError("the load step must leave periods before it and at least 10 after it")
    initial = y[:, before][:, -max(1, int(before.sum()) // 10):].mean(axis=1)
    ya = y[:, after]
    ta = t[after] - t_step
    final = ya[:, -max(1, ya.shape[1] // 10):].mean(axis=1)
    excursion = ya - final[:, None]
    scale = np.abs(final)
    outside = np.abs(excursion) > band * scale[:, None]
    last_out = np.where(outside.any(axis=1),
                        ya.shape[1] - 1 - np.argmax(outside[:, ::-1], axis=1), -1)
    settling = np.where(last_out < 0, 0.0, ta[np.minimum(last_out + 1, ta.size - 1)])
    return {"overshoot": np.maximum(excursion.max(axis=1), 0.0) / scale,
            "undershoot": np.maximum(-excursion.min(axis=1), 0.0) / scale,
            "deviation": np.abs(excursion).max(axis=1), "settling_time": settling,
            "vout_initial": initial, "vout_final": final}


def _chunk_controller(controller: DigitalController, start: int) -> DigitalController:
    """The controller for the chunk of lanes from ``start``: the same loop, with ADC noise
    seeded by (seed, start) so that chunks draw different noise (none if unseeded)."""
    adc = controller.adc
    if adc.seed is not None:
        adc = dataclasses.replace(adc, seed=[adc.seed, start])
    return DigitalController(controller.pid, adc=adc, pwm=controller.pwm,
                             every=controller.every, initial_duty=controller.initial_duty)


def load_step_yield_bytes(samples: int, n_fields: int, n_limits: int = 0) -> float:
    """Memory [bytes] :func:`load_step_yield` keeps for ``samples`` samples of ``n_fields``
    toleranced fields: the drawn inputs (twice while they are drawn), the sample number, the
    figures and the flags; the simulation runs in chunks of bounded size beside them."""
    return samples * (8 * (1 + 2 * n_fields + len(COLUMNS)) + 2 + n_limits)


def load_step_yield(base: BoostParams, controller: DigitalController, *, vref: Any,
                    step: Step, t_end: float, samples: int,
                    tolerances: Sequence[Tolerance], limits: Sequence[Limit] = (),
                    seed: int = 0, dist: str = "uniform", band: float = 0.01,
                    x0: Any = None) -> SweepResult:
    """Simulate ``samples`` toleranced boards through start-up and the load ``step`` up to
    ``t_end`` [s] (from ``x0``, default rest) under ``controller`` (reset for each chunk of
    lanes) and measure the
    response; returns a :class:`~boostsim.sweep.SweepResult` whose columns are the sample
    number, the drawn fields and ``COLUMNS`` (plus ``pass`` with limits; see
    ``yield_summary``), and whose ``nominal`` holds ``COLUMNS`` for the nominal board."""
    started = time.perf_counter()
    if step.vin is not None or (step.R is None and step.i_load is None):
        raise ValueError("a load step changes R and/or i_load (not vin)")
    if not 0 < step.t < t_end:
        raise ValueError(f"the load step time must be inside (0, t_end={t_end:g} s), got "
                         f"{step.t:g}")
    if not (np.isfinite(band) and 0 < band < 1):
        raise ValueError(f"band must be a fraction in (0, 1), got {band!r}")
    tolerances = tuple(tolerances)
    if any(tol.name == "duty" for tol in tolerances):
        raise ValueError("the closed loop sets the duty: give tolerances of board fields")
    if any(tol.name == "fsw" for tol in tolerances):
        raise ValueError("the PID runs at the switching frequency: no tolerance on fsw")
    for lim in limits:
        if lim.name not in COLUMNS:
            raise ValueError(f"limit {lim.text or lim.describe()}: unknown figure {lim.name!r}"
                             f"; known: {', '.join(COLUMNS)}")
    sweep = Sweep(base, duty=0.0, mc=MonteCarlo(samples, tolerances, seed=seed, dist=dist))
    check_memory(load_step_yield_bytes(samples, len(tolerances), len(tuple(limits))),
                 f"a closed-loop Monte-Carlo of {samples} samples",
                 f"it keeps the drawn fields and {len(COLUMNS)} figures of every sample for "
                 f"the statistics, the limits and the files (the simulation itself runs in "
                 f"chunks of lanes); draw fewer samples (--mc N)")
    inputs = sweep.inputs(0, samples)
    del inputs["duty"]  # the controller sets it
    fields = {k: v for k, v in inputs.items() if k != "sample"}
    columns: dict[str, np.ndarray] = {"sample": inputs["sample"], **fields}
    figures = {name: np.empty(samples) for name in COLUMNS}
    # Lanes per kernel call: bounds the memory of the per-period arrays and the ADC noise.
    per_lane = math.ceil(t_end * float(base.fsw)) * max(5, controller.adc.oversample)
    chunk = int(np.clip(_CHUNK_VALUES // per_lane, 64, 2500))
    for start in range(0, samples, chunk):
        stop = min(start + chunk, samples)
        params = base.replace(**{k: v[start:stop] for k, v in fields.items()}) if fields \
            else base.replace(L=np.full(stop - start, base.L))
        means, _ = closed_loop_means(params, _chunk_controller(controller, start), t_end=t_end,
                                     vref=vref, steps=[step], x0=x0)
        t = np.arange(means.shape[1]) / float(base.fsw)
        for name, values in disturbance_response(t, means, step.t, band).items():
            figures[name][start:stop] = values
    columns.update(figures)
    # The nominal board under the same loop (its own noise draw), for comparison.
    means, _ = closed_loop_means(base, _chunk_controller(controller, samples), t_end=t_end,
                                 vref=vref, steps=[step], x0=x0)
    t = np.arange(means.shape[1]) / float(base.fsw)
    nominal = {name: float(values[0]) for name, values in
               disturbance_response(t, np.atleast_2d(means), step.t, band).items()}
    columns["converged"] = np.all([np.isfinite(v) for v in figures.values()], axis=0)
    if limits:
        ok = columns["converged"].copy()
        for lim in limits:
            ok &= lim.passes(columns[lim.name])
        columns["pass"] = ok
    return SweepResult(sweep, columns, tuple(limits), seconds=time.perf_counter() - started,
                       nominal=nominal)
