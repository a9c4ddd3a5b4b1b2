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

Example::

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
import re
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .analysis import LOSS_NAMES
from .params import FIELDS, BoostParams
from .steady import steady_state
from .theory import ccm_duty
from .units import parse_si, quantity

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

#: The duty range of ``boostsim sweep`` when none is given (start:stop:step, stop included).
DEFAULT_DUTY_RANGE = "0.05:0.85:0.01"

#: Monte-Carlo samples are drawn in blocks of this many, one generator per (seed, field, block).
SAMPLE_BLOCK = 4096

#: Summary figures kept for every point (names of :class:`boostsim.analysis.Metrics` fields,
#: losses as ``loss_<name>``), in output order.
SUMMARY = ("vout_mean", "vout_ripple", "vout_min", "vout_max", "il_mean", "il_ripple",
           "il_min", "il_max", "il_rms", "pin", "pout", "efficiency", "p_loss", "p_switching",
           "efficiency_total", *(f"loss_{k}" for k in LOSS_NAMES), "t_on", "t_diode",
           "t_idle", "mode", "converged")

#: Short names accepted by :func:`parse_limit` (any numeric summary column works too).
LIMIT_ALIASES = {"vout": "vout_mean", "ripple": "vout_ripple", "il": "il_mean",
                 "il_peak": "il_max", "loss": "p_loss", "eff": "efficiency"}

# Fields that may be swept or toleranced (numeric converter parameters).
_PARAMS = tuple(FIELDS)
# Canonical order of Monte-Carlo fields: a field's stream does not depend on the others.
_TOL_FIELDS = ("duty", *_PARAMS)
# The search grid of duty_for_vout (refined by regula falsi inside the bracketing interval).
_DUTY_GRID = np.r_[np.arange(0.0, 0.9, 0.05), 0.9, 0.92, 0.94, 0.96, 0.97, 0.98, 0.99]
#: How long to try to reach a Dask scheduler before giving up.
DASK_CONNECT_TIMEOUT = "10s"
# Lanes per steady_state call inside a chunk (bounds memory of the duty search).
_BATCH = 20_000
# Per-lane period records of a transient chunk are kept under this many bytes.
_TRANSIENT_BYTES = 256 * 2**20


# -- ranges, axes, tolerances, limits -------------------------------------------------------

def _number(text: str, what: str) -> float:
    try:
        return parse_si(text.strip(), name=what)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def parse_value_range(text: str, what: str = "duty") -> np.ndarray:
    """Values from ``start:stop:step`` (stop included within rounding), ``a,b,c`` or ``a``.

    Numbers may carry SI prefixes. Raises ``ValueError`` with a message naming ``what``.
    """
    text = text.strip()
    if not text:
        raise ValueError(f"{what}: empty range (expected start:stop:step, a list a,b,c or a "
                         f"single value)")
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"{what}: cannot read range {text!r}: expected start:stop:step, "
                             f"e.g. 0.05:0.85:0.01")
        start, stop, step = (_number(p, what) for p in parts)
        if not all(math.isfinite(v) for v in (start, stop, step)):
            raise ValueError(f"{what}: range {text!r} must be finite")
        if step <= 0:
            raise ValueError(f"{what}: range {text!r}: the step must be > 0")
        if stop < start:
            raise ValueError(f"{what}: range {text!r}: stop must be >= start")
        count = math.floor((stop - start) / step * (1 + 1e-12) + 1e-9) + 1
        if count > 100_000_000:
            raise ValueError(f"{what}: range {text!r} has {count} points (at most 1e8)")
        values = start + step * np.arange(count)
        # Remove the rounding noise of start + k*step (0.05 + 3*0.01 -> 0.08, not 0.0800...01).
        scale = max(abs(start), abs(stop), step)
        digits = max(0, 12 - math.floor(math.log10(scale))) if scale > 0 else 12
        return np.round(values, digits)
    values = np.array([_number(p, what) for p in text.split(",")])
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what}: values must be finite, got {text!r}")
    return values


def parse_duty_range(text: str) -> np.ndarray:
    """Duty values from ``start:stop:step`` / ``a,b`` / ``a``, each checked to be in [0, 1)."""
    values = parse_value_range(text, "duty")
    bad = (values < 0) | (values >= 1)
    if np.any(bad):
        raise ValueError(f"duty must be in [0, 1), got {values[bad][0]:g} (from {text!r})")
    return values


@dataclasses.dataclass(frozen=True)
class Axis:
    """One grid axis: a converter parameter and its values."""

    name: str
    values: np.ndarray
    log: bool = False

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=float).reshape(-1)
        object.__setattr__(self, "values", values)


def _check_field_values(name: str, values: Any) -> None:
    """Validate values of a converter field with BoostParams' own rules (raises ValueError)."""
    probe: dict[str, Any] = dict(vin=1.0, L=1.0, C=1.0, R=1.0, fsw=1.0)
    probe[name] = values
    BoostParams(**probe)


def _known_fields() -> str:
    return ", ".join(_PARAMS)


def parse_axis(text: str, *, log: bool = False) -> Axis:
    """``NAME=start:stop:count[:log]`` (count points, linear or logarithmic, both ends
    included), ``NAME=a,b,c`` or ``NAME=a``. ``log=True`` makes a range logarithmic."""
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"cannot read sweep {text!r}: expected NAME=start:stop:count, e.g. "
                         f"L=22u:220u:10")
    if name == "duty":
        raise ValueError("duty is swept with --duty (start:stop:step), not --sweep")
    if name not in _PARAMS:
        raise ValueError(f"cannot sweep {name!r}: not a numeric converter parameter; known: "
                         f"{_known_fields()}")
    spec = spec.strip()
    if ":" in spec:
        parts = spec.split(":")
        if len(parts) == 4 and parts[3].strip().lower() in ("log", "lin"):
            log = log or parts[3].strip().lower() == "log"
            parts = parts[:3]
        if len(parts) != 3:
            raise ValueError(f"cannot read sweep {text!r}: expected {name}=start:stop:count "
                             f"or {name}=start:stop:count:log")
        start, stop = _number(parts[0], name), _number(parts[1], name)
        count_text = parts[2].strip()
        if not re.fullmatch(r"\d+", count_text) or int(count_text) < 1:
            raise ValueError(f"cannot read sweep {text!r}: the third field is a number of "
                             f"points (an integer >= 1), got {count_text!r}")
        count = int(count_text)
        if count == 1 and start != stop:
            raise ValueError(f"sweep {text!r}: a range needs at least 2 points")
        if log:
            if not (start > 0 and stop > 0):
                raise ValueError(f"sweep {text!r}: a logarithmic range needs start and stop > 0")
            values = np.geomspace(start, stop, count)
        else:
            values = np.linspace(start, stop, count)
    else:
        if not spec:
            raise ValueError(f"cannot read sweep {text!r}: no values after '='")
        values = np.array([_number(p, name) for p in spec.split(",")])
    for value in values:
        try:
            _check_field_values(name, float(value))
        except ValueError as exc:
            raise ValueError(f"sweep {text!r}: {exc}") from None
    return Axis(name, values, log)


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """A Monte-Carlo tolerance: ``value`` is relative (0.2 for 20 %) when ``relative`` is True,
    else absolute in the field's unit. Samples stay within nominal +- tolerance."""

    name: str
    value: float
    relative: bool = True

    def span(self, nominal: float) -> float:
        return abs(nominal) * self.value if self.relative else self.value

    def describe(self) -> str:
        if self.relative:
            return f"{self.name}=±{self.value * 100:g}%"
        unit = "" if self.name == "duty" else FIELDS[self.name].unit
        return f"{self.name}=±{self.value:g}{unit}"


def parse_tolerance(text: str) -> Tolerance:
    """``NAME=20%`` (relative) or ``NAME=0.25`` / ``NAME=5m`` (absolute, SI prefixes)."""
    name, sep, spec = text.partition("=")
    name, spec = name.strip(), spec.strip()
    if not sep or not name or not spec:
        raise ValueError(f"cannot read tolerance {text!r}: expected NAME=PERCENT% or "
                         f"NAME=VALUE, e.g. L=20%")
    if name not in _TOL_FIELDS:
        raise ValueError(f"cannot apply a tolerance to {name!r}; known: duty, {_known_fields()}")
    relative = spec.endswith("%")
    value = _number(spec[:-1] if relative else spec, name)
    if relative:
        value /= 100.0
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"tolerance {text!r} must be a finite number >= 0")
    return Tolerance(name, value, relative)


@dataclasses.dataclass(frozen=True)
class Limit:
    """Pass when ``lo <= column <= hi`` (either bound may be None)."""

    name: str  # summary column
    lo: float | None
    hi: float | None
    text: str = ""

    def passes(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        ok = np.isfinite(values)
        if self.lo is not None:
            ok &= values >= self.lo
        if self.hi is not None:
            ok &= values <= self.hi
        return ok

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"{self.lo:g} <= {self.name} <= {self.hi:g}"
        if self.lo is not None:
            return f"{self.name} >= {self.lo:g}"
        return f"{self.name} <= {self.hi:g}"


_LIMIT = re.compile(r"^\s*(?P<name>[A-Za-z_]\w*)\s*(?P<op><=|>=|<|>|=)\s*(?P<value>.*?)\s*$")


def _limit_number(text: str, name: str, whole: str) -> float:
    text = text.strip()
    percent = text.endswith("%")
    try:
        value = parse_si(text[:-1] if percent else text, name=name)
    except ValueError:
        raise ValueError(f"cannot read limit {whole!r}: {text!r} is not a number") from None
    return value / 100.0 if percent else value


def _limit_columns() -> list[str]:
    return ["duty", *(k for k in SUMMARY if k not in ("mode", "converged"))]


def parse_limit(text: str) -> Limit:
    """``NAME=LO:HI`` (either side may be empty), ``NAME<HI``, ``NAME>LO`` (``<=``/``>=`` mean
    the same: bounds are inclusive). Values take SI prefixes or ``%`` (``efficiency>90%``).

    Names: the aliases ``vout`` (mean output voltage), ``ripple`` (output ripple,
    peak-to-peak), ``il`` (mean inductor current), ``il_peak`` (inductor current maximum),
    ``loss`` (conduction loss), ``eff`` / ``efficiency``, or any numeric summary column.
    """
    match = _LIMIT.match(text)
    if not match or not match["value"]:
        raise ValueError(f"cannot read limit {text!r}: expected NAME=LO:HI, NAME<HI or "
                         f"NAME>LO, e.g. vout=11.5:12.5, ripple<0.1, efficiency>0.9")
    raw = match["name"]
    name = LIMIT_ALIASES.get(raw, raw)
    if name not in _limit_columns():
        raise ValueError(f"cannot read limit {text!r}: unknown figure {raw!r}; known: "
                         f"{', '.join(LIMIT_ALIASES)}, or a column: "
                         f"{', '.join(_limit_columns())}")
    op, value = match["op"], match["value"]
    lo = hi = None
    if op == "=":
        if ":" not in value:
            raise ValueError(f"cannot read limit {text!r}: after '=' give LO:HI (either side "
                             f"may be empty), e.g. {raw}=11.5:12.5")
        lo_text, _, hi_text = value.partition(":")
        lo = _limit_number(lo_text, name, text) if lo_text.strip() else None
        hi = _limit_number(hi_text, name, text) if hi_text.strip() else None
        if lo is None and hi is None:
            raise ValueError(f"cannot read limit {text!r}: give at least one bound")
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"cannot read limit {text!r}: the lower bound exceeds the upper")
    elif op in ("<", "<="):
        hi = _limit_number(value, name, text)
    else:
        lo = _limit_number(value, name, text)
    return Limit(name, lo, hi, text.strip())


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
        raise ValueError(f"t_end = {spec.t_end:g} s gives {quantity(periods, 'period')}: at least "
                         f"{2 * spec.last_periods} are needed to measure the last "
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


# -- duty for a target output voltage -------------------------------------------------------

@dataclasses.dataclass
class DutySolution:
    """Result of :func:`duty_for_vout`, per lane: ``duty`` (NaN where unreachable), the output
    at zero duty ``vout_at_zero`` and the highest output ``vout_max`` found at ``duty_at_max``
    (both only for unreachable lanes; NaN elsewhere)."""

    duty: np.ndarray
    reachable: np.ndarray
    vout_at_zero: np.ndarray
    vout_max: np.ndarray
    duty_at_max: np.ndarray
    iterations: int


def _vout_of(arrays: dict[str, np.ndarray], idx: np.ndarray, duty: np.ndarray) -> np.ndarray:
    """Exact steady-state mean output voltage of lanes ``idx`` at ``duty`` (batched)."""
    out = np.empty(idx.size)
    for s in range(0, idx.size, _BATCH):
        part = slice(s, s + _BATCH)
        params = BoostParams(**{k: v[idx[part]] for k, v in arrays.items()})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[part] = steady_state(params, duty[part], points=1).vout_mean
    return out


def duty_for_vout(params: BoostParams, vout: Any, *, d_max: float = 0.99, rtol: float = 1e-9,
                  max_iter: int = 60) -> DutySolution:
    """Duty giving the mean output ``vout`` [V] in the exact periodic steady state, per lane.

    The lossy averaged CCM model (:func:`boostsim.theory.ccm_duty`) gives a first guess; the
    exact output is then evaluated on a grid of duties in [0, ``d_max``] plus that guess, the
    first interval where it crosses the target on its rising branch brackets the root, and
    regula falsi (Illinois) refines it on the exact steady state to ``rtol`` relative in
    voltage. Lanes whose target is below the zero-duty output or above the highest output
    reachable with duty <= ``d_max`` get NaN (``reachable`` False).
    """
    target_in = np.asarray(vout, dtype=float)
    n = max(params.n_lanes, target_in.size)
    arrays = {k: np.ascontiguousarray(v) for k, v in params.arrays(n).items()}
    target = np.broadcast_to(target_in, (n,)).astype(float)
    lanes = np.arange(n)
    guess = np.full(n, np.nan)
    try:
        with np.errstate(all="ignore"):
            sync = arrays["synchronous"]
            guess = np.asarray(ccm_duty(arrays["vin"], target, arrays["R"], arrays["r_L"],
                                        arrays["r_on"], np.where(sync, 0.0, arrays["v_f"]),
                                        np.where(sync, arrays["r_sync"], arrays["r_d"]),
                                        arrays["i_load"]), dtype=float)
            guess = np.broadcast_to(guess, (n,)).copy()
    except ValueError:
        pass  # some lane is out of the model's reach: the grid alone brackets the root
    guess = np.where(np.isfinite(guess) & (guess > 0) & (guess < d_max), guess, np.nan)
    grid = _DUTY_GRID[_DUTY_GRID <= d_max]
    if grid[-1] < d_max:
        grid = np.r_[grid, d_max]
    G = grid.size
    duties = np.concatenate([np.tile(grid, (n, 1)), guess[:, None]], axis=1)
    has_guess = np.isfinite(guess)
    flat_lanes = np.repeat(lanes, G + 1)
    flat_duty = duties.ravel()
    values = np.full(flat_duty.size, np.nan)
    finite = np.isfinite(flat_duty)
    values[finite] = _vout_of(arrays, flat_lanes[finite], flat_duty[finite])
    values = values.reshape(n, G + 1)
    # Sort each lane's points by duty (the guess slots in between grid points).
    order = np.argsort(np.where(np.isfinite(duties), duties, np.inf), axis=1, kind="stable")
    d_sorted = np.take_along_axis(duties, order, axis=1)
    v_sorted = np.take_along_axis(values, order, axis=1)
    count = G + has_guess.astype(int)
    f = v_sorted - target[:, None]
    valid = np.arange(G + 1)[None, :] < count[:, None]
    above = (f >= 0) & valid & np.isfinite(f)
    first = np.where(above.any(axis=1), np.argmax(above, axis=1), -1)
    vout_at_zero = v_sorted[:, 0]
    reachable = first > 0
    below_zero = first == 0
    # Exactly on a grid point at zero duty.
    exact_zero = below_zero & (np.abs(f[:, 0]) <= rtol * np.abs(target))
    duty = np.full(n, np.nan)
    duty[exact_zero] = 0.0
    lo = np.full(n, np.nan)
    hi = np.full(n, np.nan)
    f_lo = np.full(n, np.nan)
    f_hi = np.full(n, np.nan)
    r = np.flatnonzero(reachable)
    lo[r], hi[r] = d_sorted[r, first[r] - 1], d_sorted[r, first[r]]
    f_lo[r], f_hi[r] = f[r, first[r] - 1], f[r, first[r]]
    # Lanes with no crossing on the grid: refine the maximum, which may lie between points.
    vmax = np.full(n, np.nan)
    dmax = np.full(n, np.nan)
    missing = np.flatnonzero(first < 0)
    if missing.size:
        fm = np.where(valid[missing], v_sorted[missing], -np.inf)
        k = np.argmax(fm, axis=1)
        a = d_sorted[missing, np.maximum(k - 1, 0)]
        b = d_sorted[missing, np.minimum(k + 1, count[missing] - 1)]
        dm, vm = _golden_max(arrays, missing, a, b)
        grid_best = fm[np.arange(missing.size), k]
        better = grid_best > vm
        dm = np.where(better, d_sorted[missing, k], dm)
        vm = np.where(better, grid_best, vm)
        vmax[missing], dmax[missing] = vm, dm
        fine = vm >= target[missing]
        got = missing[fine]
        reachable[got] = True
        lo[got], hi[got] = a[fine], dm[fine]
        f_lo[got] = (_vout_of(arrays, got, a[fine]) - target[got])
        f_hi[got] = vm[fine] - target[got]
    # Regula falsi inside [lo, hi], f(lo) < 0 <= f(hi), with the Anderson-Bjorck weighting:
    # when the same end is replaced twice in a row, the other end's value is scaled down so
    # that it cannot stick (superlinear convergence instead of linear).
    active = np.flatnonzero(reachable)
    last_side = np.zeros(n, dtype=np.int8)  # -1: lo replaced last time, +1: hi, 0: neither
    iterations = 0
    tol_v = rtol * np.maximum(np.abs(target), 1.0)
    while active.size and iterations < max_iter:
        iterations += 1
        a, b, fa, fb = lo[active], hi[active], f_lo[active], f_hi[active]
        with np.errstate(divide="ignore", invalid="ignore"):
            c = b - fb * (b - a) / (fb - fa)
        c = np.where(np.isfinite(c) & (c > a) & (c < b), c, 0.5 * (a + b))
        fc = _vout_of(arrays, active, c) - target[active]
        done = (np.abs(fc) <= tol_v[active]) | (b - a <= 1e-14)
        duty[active[done]] = c[done]
        left = fc < 0
        side = np.where(left, -1, 1).astype(np.int8)
        repeat = side == last_side[active]
        with np.errstate(divide="ignore", invalid="ignore"):
            m = 1.0 - fc / np.where(left, fa, fb)
        m = np.where(np.isfinite(m) & (m > 0), m, 0.5)
        scale = np.where(repeat, m, 1.0)
        lo[active] = np.where(left, c, a)
        hi[active] = np.where(left, b, c)
        f_lo[active] = np.where(left, fc, fa * scale)
        f_hi[active] = np.where(left, fb * scale, fc)
        last_side[active] = side
        active = active[~done]
    if active.size:
        duty[active] = 0.5 * (lo[active] + hi[active])
    reachable = np.isfinite(duty)
    return DutySolution(duty=duty, reachable=reachable,
                        vout_at_zero=np.where(reachable, np.nan, vout_at_zero),
                        vout_max=np.where(reachable, np.nan, vmax),
                        duty_at_max=np.where(reachable, np.nan, dmax), iterations=iterations)


def _golden_max(arrays: dict[str, np.ndarray], idx: np.ndarray, a: np.ndarray, b: np.ndarray,
                iterations: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Maximum of the exact vout(duty) on [a, b] per lane by golden-section search."""
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = a.copy(), b.copy()
    c = b - g * (b - a)
    d = a + g * (b - a)
    fc, fd = _vout_of(arrays, idx, c), _vout_of(arrays, idx, d)
    for _ in range(iterations):
        left = fc > fd
        b = np.where(left, d, b)
        a = np.where(left, a, c)
        c_new = b - g * (b - a)
        d_new = a + g * (b - a)
        # Reuse the kept interior point; evaluate the new one.
        x = np.where(left, c_new, d_new)
        fx = _vout_of(arrays, idx, x)
        fd, fc = np.where(left, fc, fx), np.where(left, fx, fd)
        d, c = np.where(left, c, d_new), np.where(left, c_new, d)
    best = np.where(fc > fd, c, d)
    return best, np.maximum(fc, fd)


def solve_duty(params: BoostParams, vout: float, **kwargs: Any) -> float:
    """Duty for one converter and one target ``vout`` [V]; ``ValueError`` saying why when the
    target cannot be reached (see :func:`duty_for_vout`)."""
    if params.n_lanes != 1 or np.ndim(vout) != 0:
        raise ValueError("solve_duty takes one converter and one target")
    target = float(vout)
    if not math.isfinite(target):
        raise ValueError(f"vout target must be finite, got {vout!r}")
    solution = duty_for_vout(params, target, **kwargs)
    if solution.reachable[0]:
        return float(solution.duty[0])
    v0 = float(solution.vout_at_zero[0])
    if target < v0:
        raise ValueError(f"vout = {target:g} V is not reachable: below the zero-duty output "
                         f"{v0:.4g} V (a boost converter only steps up)")
    d_max = kwargs.get("d_max", 0.99)
    raise ValueError(f"vout = {target:g} V is not reachable: the highest steady-state output "
                     f"with duty <= {d_max:g} is {float(solution.vout_max[0]):.4g} V (at duty "
                     f"{float(solution.duty_at_max[0]):.3f}) with these losses and load")


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
