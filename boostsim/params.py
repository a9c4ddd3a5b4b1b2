"""Boost converter parameters: validated, broadcast over a batch ("lanes") axis, TOML in and out.

Every field is a scalar or a 1-D array; arrays of length n (and scalars) broadcast to n lanes,
so one ``BoostParams`` describes one converter or a thousand variants of it.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import warnings
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from .units import parse_si

__all__ = ["FIELDS", "MIN_TIME_SCALE", "BoostParams", "ImplausibleValueWarning", "broadcast_lanes",
           "default_board", "parse_field", "parse_toml", "read_config_text"]


class ImplausibleValueWarning(UserWarning):
    """A parameter is valid but far outside what a switching converter board uses (likely a
    unit slip, e.g. ``L=100`` meaning 100 uH)."""


@dataclasses.dataclass(frozen=True)
class _Field:
    unit: str
    doc: str
    minimum: float = 0.0
    strict: bool = False  # True: value must be > minimum, else >= minimum
    allow_inf: bool = False
    # Values outside [low, high] are accepted with an ImplausibleValueWarning. The bounds are
    # decades beyond any board-level DC-DC converter (mW to kW, kHz to tens of MHz), so only
    # unit slips and typos reach them. Zero is always plausible for the parasitics.
    plausible: tuple[float, float] = (0.0, np.inf)


_OHMS = (0.0, 1e3)  # parasitic resistances: up to 1 kohm

#: What each numeric field means, its SI unit, its allowed and its plausible range.
FIELDS: dict[str, _Field] = {
    "vin": _Field("V", "input voltage", strict=True, plausible=(1e-3, 1e4)),
    "L": _Field("H", "inductance", strict=True, plausible=(1e-9, 1.0)),
    "C": _Field("F", "output capacitance", strict=True, plausible=(1e-12, 1.0)),
    "R": _Field("ohm", "load resistance (inf: no resistive load)", strict=True, allow_inf=True,
                plausible=(1e-3, 1e9)),
    "fsw": _Field("Hz", "switching frequency", strict=True, plausible=(10.0, 1e9)),
    "r_L": _Field("ohm", "inductor winding resistance (DCR)", plausible=_OHMS),
    "r_on": _Field("ohm", "switch on-resistance", plausible=_OHMS),
    "v_f": _Field("V", "diode forward voltage drop", plausible=(0.0, 10.0)),
    "r_d": _Field("ohm", "diode dynamic resistance", plausible=_OHMS),
    "r_C": _Field("ohm", "capacitor equivalent series resistance (ESR)", plausible=_OHMS),
    "i_load": _Field("A", "constant-current load, in parallel with R", plausible=(0.0, 1e4)),
    "r_sync": _Field("ohm", "synchronous rectifier on-resistance (synchronous=True)",
                     plausible=_OHMS),
    "t_rise": _Field("s", "switch-node voltage rise time, for the switching-loss estimate",
                     plausible=(0.0, 1e-3)),
    "t_fall": _Field("s", "switch-node voltage fall time, for the switching-loss estimate",
                     plausible=(0.0, 1e-3)),
}


def _as_lane_array(name: str, value: Any) -> float | np.ndarray:
    """Scalar -> float, sequence -> read-only 1-D float64 array; SI strings accepted (a unit
    word must be the field's unit)."""
    unit = FIELDS[name].unit
    if isinstance(value, str | int) and not isinstance(value, bool):
        return parse_si(value, name=name, unit=unit)
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a number, got a boolean ({value!r})")
    if np.ndim(value) == 0:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if isinstance(value, list | tuple) and any(isinstance(v, str | int) for v in value):
        value = [v if isinstance(v, float) else parse_si(v, name=name, unit=unit)
                 for v in value]
    try:
        array = np.array(value, dtype=float)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name}: expected numbers, got {value!r}") from None
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a scalar or a 1-D array of lanes, got shape "
                         f"{array.shape}")
    if array.size == 0:
        raise ValueError(f"{name}: empty array (at least one lane is needed)")
    array.setflags(write=False)
    return array


def _check_range(name: str, value: float | np.ndarray, spec: _Field) -> None:
    values = np.atleast_1d(value)
    bad_nan = np.isnan(values)
    bad_inf = np.isinf(values) & ~(spec.allow_inf & (values > 0))
    bad_low = (values <= spec.minimum) if spec.strict else (values < spec.minimum)
    bad = bad_nan | bad_inf | bad_low
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        where = f" (lane {i})" if values.size > 1 else ""
        relation = ">" if spec.strict else ">="
        allowed = f"a finite number {relation} {spec.minimum:g}"
        if spec.allow_inf:
            allowed += " or inf"
        raise ValueError(f"{name} ({spec.doc}) must be {allowed} [{spec.unit}], got "
                         f"{float(values[i])!r}{where}")


def parse_field(name: str, value: Any) -> float | np.ndarray:
    """Read and range-check one parameter value (SI strings, the field's unit) without building
    a :class:`BoostParams`: a float, or a read-only 1-D array of lanes. ``synchronous`` gives
    a bool (or array of bools)."""
    if name == "synchronous":
        return _as_bool_lanes(value)
    if name not in FIELDS:
        raise ValueError(f"unknown parameter {name!r}; known: "
                         f"{', '.join(BoostParams.field_names())}")
    parsed = _as_lane_array(name, value)
    _check_range(name, parsed, FIELDS[name])
    return parsed


#: The circuit's fastest natural time constant must be at least this fraction of the switching
#: period. Below it every switching segment settles instantly (a pF capacitor or a pH inductor
#: in a kHz converter: a unit slip), the exact solutions lose their precision, and resolving a
#: period would take millions of quadrature pieces.
MIN_TIME_SCALE = 1e-6


def _check_time_scales(lanes: Mapping[str, np.ndarray]) -> None:
    """Refuse lanes whose fastest time constant is below :data:`MIN_TIME_SCALE` periods."""
    L, C, R, r_C = lanes["L"], lanes["C"], lanes["R"], lanes["r_C"]
    series = lanes["r_L"] + np.maximum.reduce([lanes["r_on"], lanes["r_d"], lanes["r_sync"]]) \
        + r_C
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        taus = {"L/(series resistance)": np.where(series > 0, L / series, np.inf),
                "(R + r_C)*C": (R + r_C) * C, "sqrt(L*C)": np.sqrt(L * C)}
        Ts = 1.0 / lanes["fsw"]
        ratio = {name: tau / Ts for name, tau in taus.items()}
    bad = np.logical_or.reduce([r < MIN_TIME_SCALE for r in ratio.values()])
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        name = min(ratio, key=lambda k: ratio[k][i])
        where = f" (lane {i})" if bad.size > 1 else ""
        raise ValueError(f"the circuit's time constant {name} = {taus[name][i]:.3g} s is "
                         f"{ratio[name][i]:.3g} of the switching period {Ts[i]:.3g} s{where}, "
                         f"below {MIN_TIME_SCALE:g}: no switching converter works like that; "
                         f"check the units of L, C, R and fsw")


def _warn_implausible(name: str, value: float | np.ndarray, spec: _Field) -> None:
    """Warn (once per field) about values outside the field's plausible range."""
    low, high = spec.plausible
    values = np.atleast_1d(value)
    odd = ((values != 0) | (low == 0)) & ((values < low) | (values > high) & np.isfinite(values))
    if np.any(odd):
        i = int(np.flatnonzero(odd)[0])
        where = f" (lane {i})" if values.size > 1 else ""
        warnings.warn(f"{name} = {float(values[i]):g} {spec.unit}{where} is far outside the "
                      f"usual {low:g} .. {high:g} {spec.unit} for the {spec.doc}: is the unit "
                      f"right?", ImplausibleValueWarning, stacklevel=4)


def broadcast_lanes(**arrays: Any) -> tuple[int, dict[str, np.ndarray]]:
    """Broadcast scalars and 1-D arrays to a common number of lanes.

    Returns ``(n_lanes, {name: 1-D array of length n_lanes})``; raises ``ValueError`` naming the
    fields whose lengths disagree.
    """
    lengths = {k: np.size(v) for k, v in arrays.items() if np.ndim(v) == 1}
    sizes = {n for n in lengths.values() if n != 1}
    if len(sizes) > 1:
        detail = ", ".join(f"{k}: {n}" for k, n in lengths.items() if n != 1)
        raise ValueError(f"lane arrays have different lengths ({detail}); each must have the "
                         f"same length or length 1")
    n = sizes.pop() if sizes else 1
    out = {}
    for k, v in arrays.items():
        a = np.asarray(v)
        out[k] = np.broadcast_to(a.reshape(-1) if a.ndim else a, (n,))
    return n, out


@dataclasses.dataclass(frozen=True)
class BoostParams:
    """A boost converter (or a batch of them): every numeric field is a scalar or a 1-D array.

    Circuit: ``vin`` -- inductor ``L`` (DCR ``r_L``) -- switch node; low-side switch (``r_on``) to
    ground; diode (``v_f`` + ``r_d``), or with ``synchronous=True`` a second switch (``r_sync``,
    conducts both ways, no DCM), to the output; capacitor ``C`` with ESR ``r_C``; load ``R``
    in parallel with a constant current ``i_load``.

    Units are SI: volts, henries, farads, ohms, hertz, amps, seconds. Strings with SI prefixes
    ("47u", "100k") are accepted. Invalid values raise ``ValueError`` naming the field.
    """

    vin: float | np.ndarray
    L: float | np.ndarray
    C: float | np.ndarray
    R: float | np.ndarray
    fsw: float | np.ndarray
    r_L: float | np.ndarray = 0.0
    r_on: float | np.ndarray = 0.0
    v_f: float | np.ndarray = 0.0
    r_d: float | np.ndarray = 0.0
    r_C: float | np.ndarray = 0.0
    i_load: float | np.ndarray = 0.0
    synchronous: bool | np.ndarray = False
    r_sync: float | np.ndarray = 0.0
    t_rise: float | np.ndarray = 0.0
    t_fall: float | np.ndarray = 0.0

    def __post_init__(self) -> None:
        for name in FIELDS:
            object.__setattr__(self, name, parse_field(name, getattr(self, name)))
        object.__setattr__(self, "synchronous", _as_bool_lanes(self.synchronous))
        # Raises if lane lengths disagree.
        _check_time_scales(self._lanes()[1])
        for name, spec in FIELDS.items():
            _warn_implausible(name, getattr(self, name), spec)

    # -- lanes ---------------------------------------------------------------------------
    def _lanes(self) -> tuple[int, dict[str, np.ndarray]]:
        return broadcast_lanes(**{name: getattr(self, name) for name in self.field_names()})

    @staticmethod
    def field_names() -> tuple[str, ...]:
        return (*FIELDS, "synchronous")

    @property
    def n_lanes(self) -> int:
        """Number of converters described (1 when every field is a scalar)."""
        return self._lanes()[0]

    def arrays(self, n_lanes: int | None = None) -> dict[str, np.ndarray]:
        """Every field as a 1-D array of length ``n_lanes`` (default: ``self.n_lanes``)."""
        n, arrays = self._lanes()
        if n_lanes is None or n_lanes == n:
            return arrays
        if n != 1:
            raise ValueError(f"parameters have {n} lanes, cannot broadcast to {n_lanes}")
        return {k: np.broadcast_to(v, (n_lanes,)) for k, v in arrays.items()}

    def lane(self, i: int) -> BoostParams:
        """The single converter of lane ``i`` (scalars only)."""
        arrays = self.arrays()
        values: dict[str, Any] = {k: v[i].item() for k, v in arrays.items()}
        return BoostParams(**values)

    @property
    def Ts(self) -> float | np.ndarray:
        """Switching period 1/fsw [s]."""
        return 1.0 / self.fsw

    def replace(self, **changes: Any) -> BoostParams:
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - set(self.field_names())
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)}; known: "
                             f"{', '.join(self.field_names())}")
        return dataclasses.replace(self, **changes)

    # -- text formats ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (floats, bools, lists) keyed by field name."""
        out: dict[str, Any] = {}
        for name in self.field_names():
            value = getattr(self, name)
            out[name] = value.tolist() if isinstance(value, np.ndarray) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BoostParams:
        """Build from a mapping (e.g. a TOML table); values may be SI strings like "47u"."""
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            hints = [f"{close[0]!r} for {k!r}" for k in unknown
                     for close in [difflib.get_close_matches(k, cls.field_names(), 1)] if close]
            hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
            raise ValueError(f"unknown parameter(s) {unknown}{hint}; known: "
                             f"{', '.join(cls.field_names())}")
        missing = [k for k in ("vin", "L", "C", "R", "fsw") if k not in data]
        if missing:
            raise ValueError(f"missing required parameter(s): {', '.join(missing)}")
        return cls(**dict(data))

    def to_toml(self) -> str:
        """The parameters as a TOML ``[converter]`` table (inf written as the TOML ``inf``)."""
        return tomli_w.dumps({"converter": self.to_dict()})

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_toml` to ``path``."""
        Path(path).write_text(self.to_toml(), encoding="utf-8")

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<string>") -> BoostParams:
        """Parse TOML text: a ``[converter]`` table (or the same keys at top level)."""
        document = parse_toml(text, source=source)
        table = document.get("converter", None)
        if table is None:
            table = {k: v for k, v in document.items() if not isinstance(v, dict)}
            if not table:
                raise ValueError(f"{source}: {_no_converter_table(document)}")
        if not isinstance(table, dict):
            raise ValueError(f"{source}: [converter] must be a table")
        try:
            return cls.from_dict(table)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> BoostParams:
        """Read parameters from a TOML file (see :meth:`from_toml`)."""
        return cls.from_toml(read_config_text(path), source=str(path))


def read_config_text(path: str | Path) -> str:
    """The text of a configuration file (UTF-8, a leading byte-order mark dropped); raises
    ``ValueError`` with one line saying why it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ValueError(f"cannot read configuration {str(path)!r}: "
                         f"{exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"cannot read configuration {str(path)!r}: not a text file "
                         "(UTF-8 expected)") from None


def parse_toml(text: str, *, source: str = "<string>") -> dict[str, Any]:
    """The TOML document in ``text`` (a leading byte-order mark, as some Windows editors
    write, is dropped); ``ValueError`` naming ``source`` if it is not valid TOML."""
    try:
        return tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: not valid TOML: {exc}") from None


def _no_converter_table(document: Mapping[str, Any]) -> str:
    """Why a document gives no parameters: no [converter] table, naming the tables found."""
    tables = [k for k, v in document.items() if isinstance(v, dict)]
    if not tables:
        return "no [converter] table and no parameters (write one with 'boostsim config init')"
    close = difflib.get_close_matches("converter", tables, 1, cutoff=0.6)
    hint = f"; did you mean [converter] instead of [{close[0]}]?" if close else ""
    found = ", ".join(f"[{t}]" for t in tables)
    return f"no [converter] table (found {found}){hint}"


def _as_bool_lanes(value: Any) -> bool | np.ndarray:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"synchronous: expected true or false, got {value!r}")
    array = np.asarray(value)
    if array.ndim == 0:
        if array.item() in (0, 1):
            return bool(array.item())
        raise ValueError(f"synchronous: expected true or false, got {value!r}")
    if array.ndim != 1 or not np.all(np.isin(array, (0, 1))):
        raise ValueError(f"synchronous: expected a bool or a 1-D array of bools, got {value!r}")
    result = array.astype(bool)
    result.setflags(write=False)
    return result


DEFAULT_BOARD_FILE = "default_board.toml"


def default_board() -> BoostParams:
    """The built-in default board: 5 V in, about 12 V out at 250 mA, 100 kHz.

    A Raspberry Pi Pico driving a logic-level MOSFET through a gate driver, a 100 uH inductor,
    a Schottky diode and a 100 uF low-ESR capacitor into a 48 ohm load; see
    ``boostsim/data/default_board.toml`` for every value and where it comes from.
    """
    text = resources.files("boostsim").joinpath("data", DEFAULT_BOARD_FILE).read_text("utf-8")
    return BoostParams.from_toml(text, source="default board")
