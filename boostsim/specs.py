"""Text specifications of a study, as the command line and notebooks write them: value ranges
(``0.05:0.85:0.01``, ``a,b,c``), grid axes (``L=22u:220u:10:log``), Monte-Carlo tolerances
(``L=20%``) and pass/fail limits (``vout=11.5:12.5``, ``efficiency>90%``).

Each parser returns a small frozen value (:class:`Axis`, :class:`Tolerance`, :class:`Limit`) or
an array, and raises ``ValueError`` with a one-line message naming the bad text.
:mod:`boostsim.sweep` runs the studies they describe.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from .analysis import LOSS_NAMES
from .params import FIELDS, parse_field
from .units import parse_si

__all__ = [
    "DEFAULT_DUTY_RANGE",
    "LIMIT_ALIASES",
    "SUMMARY",
    "Axis",
    "Limit",
    "Tolerance",
    "parse_axis",
    "parse_duty_range",
    "parse_limit",
    "parse_tolerance",
    "parse_value_range",
]

#: The duty range of ``boostsim sweep`` when none is given (start:stop:step, stop included).
DEFAULT_DUTY_RANGE = "0.05:0.85:0.01"

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


# -- ranges, axes, tolerances, limits -------------------------------------------------------

def _number(text: str, what: str) -> float:
    """The number in ``text``; a unit word must be the unit of the converter field ``what``
    (``L=22uF`` is refused) when ``what`` names one."""
    field = FIELDS.get(what)
    try:
        return parse_si(text.strip(), name=what, unit=field.unit if field else None)
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
    parse_field(name, values)


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


def parse_limit(text: str, columns: Sequence[str] | None = None) -> Limit:
    """``NAME=LO:HI`` (either side may be empty), ``NAME<HI``, ``NAME>LO`` (``<=``/``>=`` mean
    the same: bounds are inclusive). Values take SI prefixes or ``%`` (``efficiency>90%``).

    Names: the aliases ``vout`` (mean output voltage), ``ripple`` (output ripple,
    peak-to-peak), ``il`` (mean inductor current), ``il_peak`` (inductor current maximum),
    ``loss`` (conduction loss), ``eff`` / ``efficiency``, or any numeric summary column.
    ``columns``: the figures of another study instead (no aliases).
    """
    match = _LIMIT.match(text)
    if not match or not match["value"]:
        raise ValueError(f"cannot read limit {text!r}: expected NAME=LO:HI, NAME<HI or "
                         f"NAME>LO, e.g. vout=11.5:12.5, ripple<0.1, efficiency>0.9")
    raw = match["name"]
    if columns is not None:
        name = raw
        if name not in columns:
            raise ValueError(f"cannot read limit {text!r}: unknown figure {raw!r}; known: "
                             f"{', '.join(columns)}")
    else:
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
