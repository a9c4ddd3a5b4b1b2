"""Reading numbers written with SI prefixes and unit letters ("47u", "100kHz", "4k7", "12 V").

Used wherever a number comes from text: TOML files, command-line overrides, protocol replies.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_apart", "format_si", "parse_si", "quantity"]

# Prefix -> power of ten (applied in decimal, so "100u" is exactly the float 1e-4).
_PREFIXES = {"f": -15, "p": -12, "n": -9, "u": -6, "µ": -6, "μ": -6, "m": -3, "k": 3, "K": 3,
             "meg": 6, "Meg": 6, "MEG": 6, "M": 6, "G": 9, "T": 12}
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_PREFIX = r"meg|Meg|MEG|[fpnuµμmkKMGT]"
# Unit words accepted after the prefix (case-insensitive); they carry no scale.
_UNIT = r"hz|ohms?|Ω|[vahfswj]"
_FULL = re.compile(rf"^(?P<num>{_NUMBER})\s*(?P<prefix>{_PREFIX})?\s*(?P<unit>{_UNIT})?$", re.I)
# "4k7" style (RKM code): the prefix stands for the decimal point.
_RKM = re.compile(rf"^(?P<int>\d+)(?P<prefix>{_PREFIX})(?P<frac>\d+)\s*(?P<unit>{_UNIT})?$", re.I)
_SPECIAL = {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf, "infinity": math.inf,
            "nan": math.nan}


def _exponent(prefix: str | None) -> int:
    if not prefix:
        return 0
    if prefix in _PREFIXES:
        return _PREFIXES[prefix]
    if prefix.lower() == "meg":
        return 6
    # The regex is case-insensitive so that unit letters match in any case, but prefixes are not:
    # "M" is mega and "m" milli. A prefix letter only reaches here in the wrong case.
    raise ValueError(f"unknown SI prefix {prefix!r}")


#: Unit symbol -> (canonical symbol, name) for the ``unit=`` check of :func:`parse_si`.
_UNIT_NAMES = {"v": ("V", "volts"), "a": ("A", "amps"), "h": ("H", "henries"),
               "f": ("F", "farads"), "s": ("s", "seconds"), "w": ("W", "watts"),
               "j": ("J", "joules"), "hz": ("Hz", "hertz"), "ohm": ("ohm", "ohms"),
               "ohms": ("ohm", "ohms"), "ω": ("ohm", "ohms")}


def _canonical_unit(unit: str) -> str:
    return _UNIT_NAMES[unit.lower()][0]


def parse_si(text: str | float | int, *, name: str | None = None,
             unit: str | None = None) -> float:
    """Return the number written in ``text`` as a float in SI base units.

    Accepts plain numbers (``"0.047"``, ``"4.7e-5"``), SI prefixes (``"47u"``, ``"100k"``,
    ``"4.7m"``, ``"1meg"``), an optional unit word (``"47uH"``, ``"100 kHz"``, ``"10ohm"``,
    ``"12 V"``), RKM codes (``"4k7"`` = 4700) and ``"inf"``. Prefixes are case-sensitive
    (``m`` = milli, ``M`` = mega). Numbers (int/float) are returned unchanged.

    With ``unit`` (e.g. ``"H"``, ``"Hz"``, ``"ohm"``) a unit word in the text must be that
    unit: ``parse_si("100uF", unit="H")`` is an error, ``"100u"`` and ``"100uH"`` are read.
    A lone ``f`` is then femto unless the unit is farads.

    Raises ``ValueError`` naming ``name`` (when given) and the text if it cannot be read.
    """
    if isinstance(text, bool):
        raise ValueError(_message(name, text, "expected a number, not a boolean"))
    if isinstance(text, int):
        try:
            return float(text)
        except OverflowError:
            raise ValueError(_message(name, _short(text), "too large for a floating-point "
                                      "number")) from None
    if isinstance(text, float):
        return text
    if not isinstance(text, str):
        raise ValueError(_message(name, text, "expected a number or a string like '47u'"))
    s = text.strip().replace("_", "")
    if s.lower() in _SPECIAL:
        return _SPECIAL[s.lower()]
    match = _FULL.match(s)
    if match:
        prefix, written = match["prefix"], match["unit"]
        # "1m" alone is milli; "1F"/"1f" alone is ambiguous between femto and farad: read a lone
        # f/F as the farad unit, which is what people writing converter values mean (unless
        # the quantity is known not to be a capacitance).
        if (prefix and not written and prefix.lower() == "f"
                and (unit is None or _canonical_unit(unit) == "F")):
            prefix, written = None, prefix
        _check_unit(name, text, written, unit)
        try:
            return _decimal(match["num"], _exponent(prefix))
        except ValueError as exc:
            raise ValueError(_message(name, text, str(exc))) from None
    match = _RKM.match(s)
    if match:
        _check_unit(name, text, match["unit"], unit)
        try:
            exponent = _exponent(match["prefix"])
        except ValueError as exc:
            raise ValueError(_message(name, text, str(exc))) from None
        return _decimal(f"{match['int']}.{match['frac']}", exponent)
    raise ValueError(_message(name, text, "not a number (examples: 47u, 100k, 4.7m, 4k7, 12V)"))


def _check_unit(name: str | None, text: str, written: str | None, expected: str | None) -> None:
    """Raise if the unit word ``written`` in ``text`` is not the ``expected`` unit."""
    if not written or expected is None:
        return
    got, want = _UNIT_NAMES[written.lower()], _UNIT_NAMES[expected.lower()]
    if got[0] != want[0]:
        raise ValueError(_message(name, text, f"{got[0]} ({got[1]}) is not the unit of this "
                                  f"value, which is in {want[0]} ({want[1]})"))


def _short(number: int) -> str:
    digits = str(number)
    return digits if len(digits) <= 20 else f"{digits[:8]}...({len(digits)} digits)"


def _decimal(number: str, exponent: int) -> float:
    """``number`` times 10**exponent, rounded once (so "4.7" with -6 gives exactly 4.7e-6)."""
    if exponent == 0:
        value = float(number)
    else:
        mantissa, _, power = number.lower().partition("e")
        value = float(f"{mantissa}e{int(power or 0) + exponent}")
    if math.isinf(value):
        raise ValueError("too large for a floating-point number")
    return value


def _message(name: str | None, text: object, why: str) -> str:
    where = f"{name}: " if name else ""
    return f"{where}cannot read {text!r}: {why}"


_FORMAT_PREFIXES = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"),
                    (1e-6, "u"), (1e-9, "n"), (1e-12, "p"), (1e-15, "f")]


def format_si(value: float, unit: str = "", digits: int = 4) -> str:
    """Format ``value`` with an SI prefix, e.g. ``format_si(4.7e-5, "H") == "47uH"``."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}{unit}"
    magnitude = abs(value)
    for scale, prefix in _FORMAT_PREFIXES:
        if magnitude >= scale * (1 - 1e-12):
            return f"{value / scale:.{digits}g}{prefix}{unit}"
    scale, prefix = _FORMAT_PREFIXES[-1]
    return f"{value / scale:.{digits}g}{prefix}{unit}"


def format_apart(*values: float, digits: int = 6) -> tuple[str, ...]:
    """``values`` as ``:g`` text with as many significant digits as it takes (from ``digits``
    up to a float's 17) for values that differ to read differently: for messages comparing a
    value with a limit, ``"duty 0.6000001 above --max-duty 0.6"``, never ``"0.6 above 0.6"``.
    """
    numbers = [float(v) for v in values]
    for d in range(digits, 18):
        texts = tuple(format(v, f".{d}g") for v in numbers)
        if all((texts[i] == texts[j]) == (numbers[i] == numbers[j])
               for i in range(len(numbers)) for j in range(i)):
            return texts
    return tuple(repr(v) for v in numbers)


def quantity(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun in agreement: ``quantity(1, "period")`` -> "1 period", else "periods"."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"

