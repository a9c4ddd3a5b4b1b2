"""Sweeps: duty and parameter grids, Monte-Carlo tolerance studies, yield against limits.

A :class:`Sweep` describes every point of a study without holding them: a grid (the product of
a duty or target-voltage axis and any parameter axes) or a Monte-Carlo draw around the nominal
board. Points are evaluated in chunks of lanes (``chunk_size``, default 10 000), each chunk
rebuilt from the description and its index range, so memory stays bounded (only the summary
columns of each point are kept) and chunks can run anywhere:

* in this process (``workers=1``, or when there is a single chunk),
* on all local cores (``concurrent.futures.ProcessPoolExecutor``, ``workers=N``),
* on an existing Dask distributed cluster (``scheduler="tcp://host:8786"``).

Results do not depend on where or in which order chunks run: Monte-Carlo samples are drawn in
fixed blocks of :data:`SAMPLE_BLOCK` from generators seeded by ``(seed, field, block)``, and
the chunk boundaries depend only on ``chunk_size``. The same ``seed`` and ``chunk_size`` give
bit-identical columns with any number of workers or a Dask cluster (the samples themselves do
not depend on ``chunk_size`` either).

Each point is solved by :func:`boostsim.steady.steady_state` (periodic steady state, fast), or
with ``transient=Transient(t_end)`` by :func:`boostsim.simulation.simulate` from rest, measured over
the last periods (slow, for checking that the converter really gets there).

The text specifications (ranges, axes, tolerances, limits) are parsed by :mod:`boostsim.specs`
(re-exported here). Example::

    from boostsim import default_board
    from boostsim.sweep import Sweep, parse_axis, parse_duty_range, run_sweep
    result = run_sweep(Sweep(default_board(), duty=parse_duty_range("0.1:0.8:0.01"),
                             axes=(parse_axis("L=22u:220u:5:log"),)))
    result.columns["vout_mean"]    # one value per grid point
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .memory import check_memory, memory_budget
from .params import FIELDS, BoostParams
from .specs import (
    _TOL_FIELDS,
    DEFAULT_DUTY_RANGE,
    LIMIT_ALIASES,
    SUMMARY,
    Axis,
    Limit,
    Tolerance,
    _check_field_values,
    parse_axis,
    parse_duty_range,
    parse_limit,
    parse_tolerance,
    parse_value_range,
)
from .steady import duty_for_vout, solve_duty, steady_state
from .units import quantity

__all__ = [
    "DEFAULT_DUTY_RANGE",
    "LIMIT_ALIASES",
    "SAMPLE_BLOCK",
    "SUMMARY",
    "Axis",
    "Limit",
    "MonteCarlo",
    "Sweep",
    "SweepResult",
    "Tolerance",
    "Transient",
    "duty_for_vout",
    "parse_axis",
    "parse_duty_range",
    "parse_limit",
    "parse_tolerance",
    "parse_value_range",
    "run_sweep",
    "solve_duty",
]

#: Monte-Carlo samples are drawn in blocks of this many, one generator per (seed, field, block).
SAMPLE_BLOCK = 4096

#: How long to try to reach a Dask scheduler before giving up.
DASK_CONNECT_TIMEOUT = "10s"
# Per-lane period records of a transient chunk are kept under this many bytes.
_TRANSIENT_BYTES = 256 * 2**20


# -- the study ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MonteCarlo:
    """``samples`` draws of the toleranced fields around the nominal board.

    ``dist="uniform"``: uniform in nominal +- tolerance. ``dist="normal"``: normal with the
    tolerance as 3 sigma, truncated at +- tolerance (out-of-band draws are redrawn).
    """

    samples: int
    tolerances: tuple[Tolerance, ...]
    seed: int = 0
    dist: str = "uniform"

    def __post_init__(self) -> None:
        if not isinstance(self.samples, int | np.integer) or self.samples < 1:
            raise ValueError(f"Monte-Carlo samples must be an integer >= 1, got "
                             f"{self.samples!r}")
        if self.dist not in ("uniform", "normal"):
            raise ValueError(f"distribution must be 'uniform' or 'normal', got {self.dist!r}")
        if not isinstance(self.seed, int | np.integer) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        names = [t.name for t in self.tolerances]
        if len(set(names)) != len(names):
            raise ValueError(f"a field has two tolerances: {names}")


@dataclasses.dataclass(frozen=True)
class Transient:
    """Evaluate points by time-domain simulation from rest (iL = vC = 0) up to ``t_end`` [s],
    measured over the ``last_periods`` last whole periods."""

    t_end: float
    last_periods: int = 20

    def __post_init__(self) -> None:
        if not (math.isfinite(self.t_end) and self.t_end > 0):
            raise ValueError(f"t_end must be a finite time > 0 [s], got {self.t_end!r}")
        if self.last_periods < 1:
            raise ValueError(f"last_periods must be >= 1, got {self.last_periods}")


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A study: every point is the nominal board ``base`` changed by one grid point or one
    Monte-Carlo sample.

    Grid: the product of the operating-point axis (``duty`` values, or ``vout`` targets [V]
    whose duty is solved per point on the exact steady state) and the parameter ``axes``, in
    that order, the last axis varying fastest.

    Monte-Carlo (``mc``): one operating point, ``duty`` (a single value) or ``vout`` (a single
    target, whose duty is solved once on the nominal board and then held for every sample:
    open-loop tolerance analysis). ``axes`` must be empty.
    """

    base: BoostParams
    duty: Any = None
    vout: Any = None
    axes: tuple[Axis, ...] = ()
    mc: MonteCarlo | None = None
    transient: Transient | None = None

    def __post_init__(self) -> None:
        if self.base.n_lanes != 1 or any(np.ndim(getattr(self.base, k)) for k in
                                          self.base.field_names()):
            raise ValueError("the base board must have scalar parameters")
        if (self.duty is None) == (self.vout is None):
            raise ValueError("give duty values or vout targets (one of them)")
        key = "duty" if self.vout is None else "vout"
        values = np.atleast_1d(np.asarray(self.duty if self.vout is None else self.vout,
                                          dtype=float)).reshape(-1)
        if values.size == 0 or not np.all(np.isfinite(values)):
            raise ValueError(f"{key} values must be finite (at least one)")
        if key == "duty" and np.any((values < 0) | (values >= 1)):
            bad = values[(values < 0) | (values >= 1)][0]
            raise ValueError(f"duty must be in [0, 1), got {bad:g}")
        object.__setattr__(self, key, values)
        object.__setattr__(self, "axes", tuple(self.axes))
        names = [a.name for a in self.axes]
        if len(set(names)) != len(names):
            raise ValueError(f"a parameter is swept twice: {names}")
        for axis in self.axes:
            try:
                self.base.replace(**{axis.name: axis.values})
            except ValueError as exc:
                raise ValueError(f"sweep {axis.name}: {exc}") from None
        if self.mc is not None:
            if self.axes:
                raise ValueError("a Monte-Carlo study runs at one operating point: it cannot "
                                 "be combined with parameter sweeps")
            if values.size != 1:
                raise ValueError(f"a Monte-Carlo study runs at one operating point: give a "
                                 f"single {key} value, not {values.size}")
            for tol in self.mc.tolerances:
                self._check_tolerance(tol)

    def _check_tolerance(self, tol: Tolerance) -> None:
        if tol.name == "duty":
            if self.duty is None:
                return  # checked once the duty is solved (run_sweep)
            nominal = float(self.duty[0])
            lo, hi = nominal - tol.span(nominal), nominal + tol.span(nominal)
            if lo < 0 or hi >= 1:
                raise ValueError(f"tolerance {tol.describe()}: duty {nominal:g} would leave "
                                 f"[0, 1) ({lo:g} .. {hi:g})")
            return
        nominal = float(getattr(self.base, tol.name))
        span = tol.span(nominal)
        for value in (nominal - span, nominal + span):
            try:
                _check_field_values(tol.name, value)
            except ValueError as exc:
                raise ValueError(f"tolerance {tol.describe()} around {nominal:g} reaches an "
                                 f"invalid value: {exc}") from None

    # -- shape --------------------------------------------------------------------------
    @property
    def target(self) -> str:
        """"duty" (duty given) or "vout" (duty solved for a target output voltage)."""
        return "duty" if self.vout is None else "vout"

    @property
    def grid_axes(self) -> tuple[Axis, ...]:
        """All grid axes, the operating point first (``duty`` or ``vout_target``)."""
        first = Axis("duty", self.duty) if self.vout is None else Axis("vout_target", self.vout)
        return (first, *self.axes)

    @property
    def shape(self) -> tuple[int, ...]:
        if self.mc is not None:
            return (self.mc.samples,)
        return tuple(a.values.size for a in self.grid_axes)

    @property
    def n_points(self) -> int:
        return int(np.prod(self.shape))

    def input_names(self) -> list[str]:
        """Input columns of every point, in output order."""
        if self.mc is None:
            return [a.name for a in self.grid_axes]
        names = ["sample"]
        if self.vout is not None:
            names.append("vout_target")
        names.append("duty")
        names += [t.name for t in self._mc_tolerances() if t.name != "duty"]
        return names

    def _mc_tolerances(self) -> list[Tolerance]:
        order = {name: i for i, name in enumerate(_TOL_FIELDS)}
        return sorted(self.mc.tolerances, key=lambda t: order[t.name])

    def inputs(self, start: int, stop: int, nominal_duty: float | None = None
               ) -> dict[str, np.ndarray]:
        """Input columns of points ``start:stop``."""
        index = np.arange(start, stop)
        if self.mc is None:
            axes = self.grid_axes
            multi = np.unravel_index(index, self.shape)
            return {a.name: a.values[i] for a, i in zip(axes, multi, strict=True)}
        out: dict[str, np.ndarray] = {"sample": index}
        duty = float(self.duty[0]) if nominal_duty is None else nominal_duty
        if self.vout is not None:
            out["vout_target"] = np.full(index.size, float(self.vout[0]))
        out["duty"] = np.full(index.size, duty)
        for tol in self._mc_tolerances():
            nominal = duty if tol.name == "duty" else float(getattr(self.base, tol.name))
            unit = self._unit_samples(tol.name, start, stop)
            out[tol.name] = nominal + tol.span(nominal) * unit
        if "duty" in out:
            out["duty"] = np.clip(out["duty"], 0.0, np.nextafter(1.0, 0.0))
        return out

    def _unit_samples(self, name: str, start: int, stop: int) -> np.ndarray:
        """Samples in [-1, 1] of field ``name`` for points start:stop (block-seeded)."""
        field = _TOL_FIELDS.index(name)
        first, last = start // SAMPLE_BLOCK, (stop - 1) // SAMPLE_BLOCK
        pieces = [self._block(field, b) for b in range(first, last + 1)]
        joined = np.concatenate(pieces)
        offset = first * SAMPLE_BLOCK
        return joined[start - offset:stop - offset]

    def _block(self, field: int, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.mc.seed, field, block])
        if self.mc.dist == "uniform":
            return rng.uniform(-1.0, 1.0, SAMPLE_BLOCK)
        values = rng.standard_normal(SAMPLE_BLOCK) / 3.0
        out = np.abs(values) > 1.0
        while out.any():
            values[out] = rng.standard_normal(int(out.sum())) / 3.0
            out = np.abs(values) > 1.0
        return values

    def chunks(self, chunk_size: int) -> list[tuple[int, int]]:
        """Index ranges of the chunks (depend only on ``chunk_size``)."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        n = self.n_points
        return [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description of the study (for metadata)."""
        out: dict[str, Any] = {"points": self.n_points, "target": self.target}
        if self.mc is None:
            out["axes"] = {a.name: _axis_text(a) for a in self.grid_axes}
        else:
            out["monte_carlo"] = {
                "samples": self.mc.samples, "seed": self.mc.seed, "dist": self.mc.dist,
                "tolerances": [t.describe() for t in self.mc.tolerances]}
            out["operating_point"] = ({"duty": float(self.duty[0])} if self.vout is None
                                      else {"vout_target": float(self.vout[0])})
        if self.transient is not None:
            out["transient"] = {"t_end": self.transient.t_end,
                                "last_periods": self.transient.last_periods}
        return out


def _axis_text(axis: Axis) -> str:
    v = axis.values
    if v.size <= 4:
        return ",".join(f"{x:g}" for x in v)
    return f"{v[0]:g}..{v[-1]:g} ({quantity(v.size, 'point')}{', log' if axis.log else ''})"


# -- evaluation -----------------------------------------------------------------------------

def _steady_columns(params: BoostParams, duty: np.ndarray) -> dict[str, np.ndarray]:
    """Summary columns of the exact periodic steady state (non-converged lanes are NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        state = steady_state(params, duty, points=1)
    values = state.as_dict()
    return {k: np.asarray(values[k]) for k in SUMMARY}


def _transient_columns(params: BoostParams, duty: np.ndarray, spec: Transient,
                       progress: bool = False) -> dict[str, np.ndarray]:
    from .simulation import simulate

    periods = int(np.ceil(spec.t_end * np.max(np.atleast_1d(params.fsw)) - 1e-9))
    if periods < 2 * spec.last_periods:
        raise ValueError(f"t_end = {spec.t_end:g} s gives {quantity(periods, 'period')}: at "
                         f"least {2 * spec.last_periods} are needed to measure the last "
                         f"{spec.last_periods} and check that they settled")
    n = duty.size
    batch = max(1, _TRANSIENT_BYTES // (8 * 8 * periods))
    parts = []
    for s in range(0, n, batch):
        sub = slice(s, min(s + batch, n))
        lanes = {k: np.atleast_1d(v)[sub] if np.ndim(v) else v
                 for k, v in params.to_dict().items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            result = simulate(BoostParams(**lanes), duty[sub], spec.t_end, spec.t_end,
                              progress=progress and n <= batch)
            metrics = result.metrics(spec.last_periods)
        values = metrics.as_dict()
        cols = {k: np.atleast_1d(values[k]) for k in SUMMARY if k != "converged"}
        vc = np.atleast_2d(result.periods.vc_start)
        last = vc[:, -spec.last_periods:].mean(axis=1)
        before = vc[:, -2 * spec.last_periods:-spec.last_periods].mean(axis=1)
        scale = np.maximum(np.abs(last), np.atleast_1d(params.vin)[sub] if np.ndim(params.vin)
                           else params.vin)
        cols["converged"] = np.abs(last - before) <= 1e-3 * scale
        parts.append(cols)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _lane_params(base: BoostParams, inputs: dict[str, np.ndarray]) -> BoostParams:
    changes = {k: v for k, v in inputs.items() if k in FIELDS}
    return base.replace(**changes) if changes else base


def evaluate_chunk(sweep: Sweep, start: int, stop: int, nominal_duty: float | None = None,
                   progress: bool = False) -> dict[str, np.ndarray]:
    """Input and summary columns of points ``start:stop`` (module-level: picklable)."""
    inputs = sweep.inputs(start, stop, nominal_duty)
    n = stop - start
    params = _lane_params(sweep.base, inputs)
    if sweep.target == "vout" and sweep.mc is None:
        solution = duty_for_vout(params, inputs["vout_target"])
        duty = solution.duty
        inputs["duty"] = duty
    else:
        duty = np.asarray(inputs["duty"], dtype=float)
    duty = np.broadcast_to(duty, (n,)).astype(float)
    ok = np.isfinite(duty)
    columns: dict[str, np.ndarray] = {}
    for k in SUMMARY:
        if k == "mode":
            columns[k] = np.full(n, "", dtype="<U3")
        elif k == "converged":
            columns[k] = np.zeros(n, dtype=bool)
        else:
            columns[k] = np.full(n, np.nan)
    if ok.any():
        idx = np.flatnonzero(ok)
        sub = _subset_params(params, idx, n) if not ok.all() else params
        if sweep.transient is not None:
            got = _transient_columns(sub, duty[idx], sweep.transient, progress)
        else:
            got = _steady_columns(sub, duty[idx])
        for k in SUMMARY:
            columns[k][idx] = got[k]
    out = {k: np.broadcast_to(np.asarray(v), (n,)).copy() for k, v in inputs.items()}
    out.update(columns)
    return out


def _subset_params(params: BoostParams, idx: np.ndarray, n: int) -> BoostParams:
    values = {k: (np.broadcast_to(v, (n,))[idx] if np.ndim(v) else v)
              for k, v in ((name, getattr(params, name)) for name in params.field_names())}
    return BoostParams(**values)


# -- running --------------------------------------------------------------------------------

@dataclasses.dataclass
class SweepResult:
    """Columns (one value per point, inputs first, then :data:`SUMMARY`, then ``pass`` when
    limits were given) and what produced them."""

    sweep: Sweep
    columns: dict[str, np.ndarray]
    limits: tuple[Limit, ...] = ()
    nominal_duty: float | None = None
    seconds: float = 0.0
    #: The study's figures for the nominal board (no tolerance drawn), where it has them
    #: (:func:`boostsim.montecarlo.load_step_yield`); None otherwise.
    nominal: dict[str, float] | None = None

    @property
    def n_points(self) -> int:
        return self.sweep.n_points

    def limit_passes(self) -> dict[str, np.ndarray]:
        """Per-limit pass flags (non-converged points fail every limit)."""
        converged = self.columns["converged"].astype(bool)
        return {lim.text or lim.describe(): lim.passes(self.columns[lim.name]) & converged
                for lim in self.limits}

    def yield_summary(self) -> dict[str, Any]:
        """Pass counts per limit and overall, with a 95 % Wilson interval on the yield."""
        n = self.n_points
        per = self.limit_passes()
        out: dict[str, Any] = {"points": n, "limits": {}}
        for (text, ok), lim in zip(per.items(), self.limits, strict=True):
            out["limits"][text] = {"column": lim.name, "lo": lim.lo, "hi": lim.hi,
                                   "pass": int(ok.sum()), "fraction": float(ok.mean())}
        passed = int(self.columns["pass"].sum()) if "pass" in self.columns else n
        lo, hi = wilson_interval(passed, n)
        out.update({"pass": passed, "yield": passed / n, "yield_ci95": [lo, hi]})
        return out


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def default_workers() -> int:
    return os.cpu_count() or 1


def run_sweep(sweep: Sweep, *, limits: Sequence[Limit] = (), workers: int | None = None,
              chunk_size: int = 10_000, scheduler: str | None = None,
              progress: bool | Callable[[int], None] = False) -> SweepResult:
    """Evaluate every point of ``sweep`` in chunks; see the module docstring.

    ``workers``: local processes (default ``os.cpu_count()``; 1 runs in this process).
    ``scheduler``: address of a Dask distributed scheduler (needs ``dask[distributed]``);
    overrides ``workers``. ``progress``: True for a tqdm bar on stderr, or a callback called
    with the number of points finished per chunk.
    """
    started = time.perf_counter()
    limits = tuple(limits)
    check_sweep_memory(sweep, limits)
    nominal_duty = None
    if sweep.mc is not None and sweep.vout is not None:
        nominal_duty = solve_duty(sweep.base, float(sweep.vout[0]))
    if sweep.mc is not None and sweep.duty is None and nominal_duty is not None:
        for tol in sweep.mc.tolerances:
            if tol.name == "duty":
                span = tol.span(nominal_duty)
                if nominal_duty - span < 0 or nominal_duty + span >= 1:
                    raise ValueError(f"tolerance {tol.describe()}: the solved duty "
                                     f"{nominal_duty:.4f} would leave [0, 1)")
    bounds = sweep.chunks(chunk_size)
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    bar, tick = _progress(progress, sweep)
    if scheduler:
        parts = _run_dask(scheduler, sweep, bounds, nominal_duty)
    elif workers == 1 or len(bounds) == 1:
        inner = bool(progress is True and len(bounds) == 1 and sweep.transient)
        parts = ((i, evaluate_chunk(sweep, start, stop, nominal_duty, inner))
                 for i, (start, stop) in enumerate(bounds))
    else:
        parts = _run_local(workers, sweep, bounds, nominal_duty)
    # Fill preallocated columns as chunks arrive (in any order): no concatenation copy.
    columns: dict[str, np.ndarray] = {}
    try:
        for i, part in parts:
            start, stop = bounds[i]
            if not columns:
                columns = {k: np.empty(sweep.n_points, dtype=np.asarray(v).dtype)
                           for k, v in part.items()}
            for k, v in part.items():
                columns[k][start:stop] = v
            tick(stop - start)
    finally:
        if bar is not None:
            bar.close()
    result = SweepResult(sweep, columns, limits, nominal_duty)
    if limits:
        ok = np.ones(sweep.n_points, dtype=bool)
        for flags in result.limit_passes().values():
            ok &= flags
        columns["pass"] = ok
    result.seconds = time.perf_counter() - started
    return result


def sweep_bytes(sweep: Sweep, n_limits: int = 0) -> float:
    """Memory [bytes] the columns of ``sweep`` take once gathered (one value per point: the
    inputs and :data:`SUMMARY` as float64, ``mode`` as 3 characters, the flags), with room for
    three float64 temporaries per point (limits, statistics, the plot). The points are
    evaluated in chunks of bounded size; these columns are what is kept."""
    floats = len(sweep.input_names()) + len(SUMMARY) - 2 + 3
    return sweep.n_points * (8 * floats + 12 + 2 + n_limits)


def check_sweep_memory(sweep: Sweep, limits: Sequence[Limit] = ()) -> None:
    """Refuse (:class:`boostsim.memory.MemoryBudgetError`) a sweep whose columns would not fit,
    before any point is evaluated."""
    n = sweep.n_points
    nbytes = sweep_bytes(sweep, len(tuple(limits)))
    budget, _ = memory_budget()
    if nbytes <= budget:
        return
    fit = int(budget // (nbytes / max(n, 1)))
    if sweep.mc is not None:
        what = f"a Monte-Carlo study of {quantity(n, 'sample')}"
        change = (f"draw fewer samples (at most about {fit} fit; --mc N: the yield's interval "
                  f"narrows as 1/sqrt(N), a few 100 000 samples usually suffice)")
    else:
        what = f"a sweep of {quantity(n, 'point')}"
        change = f"use fewer grid points (at most about {fit} fit; coarser axes)"
    check_memory(nbytes, what, f"it keeps every figure of every point ({len(SUMMARY)} columns "
                               f"beside the inputs) for the statistics, the limits and the "
                               f"files; {change}")


def _progress(progress: bool | Callable[[int], None], sweep: Sweep):
    if callable(progress):
        return None, progress
    if not progress:
        return None, lambda n: None
    import sys

    from tqdm.auto import tqdm

    bar = tqdm(total=sweep.n_points, unit="pt", desc="sweep", file=sys.stderr, delay=1.0,
               leave=False, dynamic_ncols=True)
    return bar, bar.update


def _run_local(workers: int, sweep: Sweep, bounds: list[tuple[int, int]],
               nominal_duty: float | None) -> Iterator[tuple[int, dict]]:
    """(chunk index, columns) from a local process pool, in completion order."""
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(bounds))) as pool:
        futures = {pool.submit(evaluate_chunk, sweep, start, stop, nominal_duty): i
                   for i, (start, stop) in enumerate(bounds)}
        try:
            for future in concurrent.futures.as_completed(list(futures)):
                i = futures.pop(future)  # drop the reference: its result is copied out
                yield i, future.result()
        finally:
            for future in futures:
                future.cancel()


def _run_dask(address: str, sweep: Sweep, bounds: list[tuple[int, int]],
              nominal_duty: float | None) -> Iterator[tuple[int, dict]]:
    """(chunk index, columns) from a Dask distributed cluster, in completion order. The
    workers must be able to import boostsim (the same version)."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise RuntimeError("--scheduler needs Dask distributed: pip install "
                           "'boostsim[dask]'") from None
    try:
        client = Client(address, timeout=DASK_CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise RuntimeError(f"cannot connect to the Dask scheduler at {address}: {exc}") from None
    run = uuid.uuid4().hex
    try:
        futures = [client.submit(evaluate_chunk, sweep, start, stop, nominal_duty,
                                 key=f"boostsim-chunk-{run}-{i}", pure=False)
                   for i, (start, stop) in enumerate(bounds)]
        index = {f.key: i for i, f in enumerate(futures)}
        futures_left = as_completed(futures, loop=client.loop)
        del futures
        for future in futures_left:
            i = index[future.key]
            part = future.result()
            future.release()
            yield i, part
    finally:
        client.close()
