"""The ADC's transfer, one description for the simulation and the board emulator.

:class:`AdcTransfer` says how a voltage at the ADC pin becomes a code: the gain and offset
error, the differential non-linearity (a per-code width table, hence the transition levels),
the input-referred noise in LSB rms and the rms jitter of the sampling instant in seconds.
:class:`boostsim.control.ADC` (simulation) and ``firmware_bridge.emulated_hal.AdcModel``
(emulated board) both convert through it, so a table built here is the one both see.

Conversion of a pin voltage ``v`` [V] (``x`` is the input in ideal-LSB units)::

    x = v / vref * 2^bits * (1 + gain_error) + offset_lsb + noise_lsb * N(0, 1)
    code = number of transition levels T_1 .. T_top at or below x     (0 .. 2^bits - 1)

and back (the DNL correction, :meth:`AdcTransfer.correct`): a code stands for the middle of its
transition interval, its :meth:`AdcTransfer.centres` value -- readings of a board with a known
DNL table are corrected that way before they are converted to volts (the bench driver's
``Board(adc_dnl=...)``); inside a wide code the input is known only to within its width.

Ideal (no DNL table): ``T_k = k - 0.5``, i.e. ``code = clip(rint(x), 0, top)``. With a DNL
table ``dnl[k]`` (LSB; ``-1`` = missing code), code ``k`` is ``1 + dnl[k]`` wide; the widths
of codes 1 .. top-1 are scaled to span ``T_1 = 0.5 .. T_top = top - 0.5`` (the end-point
definition of DNL: gain and offset stay the separate ``gain_error``/``offset_lsb``).

:func:`rp2040` is the Raspberry Pi Pico's ADC: the RP2040-E11 errata spikes (the code just
below 512, 1536, 2560 and 3584 about ten codes wide, from averaged measurements of five
boards in the public rp2040adc_correction project) with the missing codes those measurements
show, and about 1 LSB rms of input-referred noise; together about 9 effective bits
(:func:`enob`), as published characterisations of the Pico find.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["DNL_TABLES", "RP2040_ADC_JITTER", "RP2040_DNL", "AdcTransfer", "dnl_table", "enob",
           "rp2040"]

#: RP2040 differential non-linearity [LSB] by code (12 bits): the E11 spikes (wide codes
#: just below 512, 1536, 2560, 3584) and the missing codes (-1) of the averaged measurements.
RP2040_DNL = {511: 10.0, 1535: 9.0, 2559: 9.0, 3583: 10.0,
              895: -1.0, 1407: -1.0, 1664: -1.0, 2048: -1.0, 2431: -1.0, 2943: -1.0,
              3455: -1.0, 3711: -1.0}


#: rms delay [s] of a timer-triggered RP2040 conversion after its tick (the hard IRQ's latency
#: spread under MicroPython): the emulated board's default, and what ``bench identify`` assumes
#: unless told (``--adc-jitter``). A modelling figure, not a datasheet one.
RP2040_ADC_JITTER = 2e-6

#: DNL tables by name (board files, ``Board(adc_dnl=...)``): None is an ideal ADC.
DNL_TABLES: dict[str, dict[int, float] | None] = {"rp2040": RP2040_DNL, "ideal": None}


def dnl_table(name: str | None) -> dict[int, float] | None:
    """The DNL table called ``name`` (:data:`DNL_TABLES`; None: ideal); ValueError if unknown."""
    if name is None:
        return None
    if name not in DNL_TABLES:
        raise ValueError(f"ADC DNL must be one of {', '.join(DNL_TABLES)} (or None), got "
                         f"{name!r}")
    return DNL_TABLES[name]


@dataclasses.dataclass(frozen=True, eq=False)
class AdcTransfer:
    """An ADC's transfer from pin volts to codes (see the module docstring).

    bits: resolution (1..24); vref [V]: full-scale reference; gain_error: relative (0.01 reads
    1 % high); offset_lsb: offset in codes; noise_lsb: input-referred noise, codes rms;
    jitter_s: rms jitter of the sampling instant [s] (applied by whoever chooses the instant);
    dnl: None (ideal) or the per-code DNL in LSB, a ``{code: dnl}`` mapping or a sequence of
    2^bits values (each >= -1).
    """

    bits: int = 12
    vref: float = 3.3
    gain_error: float = 0.0
    offset_lsb: float = 0.0
    noise_lsb: float = 0.0
    jitter_s: float = 0.0
    dnl: object = None

    def __post_init__(self) -> None:
        if not (isinstance(self.bits, int) and 1 <= self.bits <= 24):
            raise ValueError(f"ADC bits must be an integer from 1 to 24, got {self.bits!r}")
        if not (math.isfinite(self.vref) and self.vref > 0):
            raise ValueError(f"ADC vref must be > 0 [V], got {self.vref!r}")
        if not (math.isfinite(self.gain_error) and self.gain_error > -1):
            raise ValueError(f"ADC gain_error must be > -1 (relative), got {self.gain_error!r}")
        if not math.isfinite(self.offset_lsb):
            raise ValueError(f"ADC offset_lsb must be finite [codes], got {self.offset_lsb!r}")
        for name in ("noise_lsb", "jitter_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"ADC {name} must be >= 0, got {value!r}")
        object.__setattr__(self, "_levels", None if self.dnl is None else self._transitions())

    def _transitions(self) -> np.ndarray:
        """Transition levels T_1 .. T_top [ideal LSB] from the DNL table."""
        n = 1 << self.bits
        table = np.zeros(n)
        if isinstance(self.dnl, dict):
            for code, value in self.dnl.items():
                if not (isinstance(code, int | np.integer) and 0 <= code < n):
                    raise ValueError(f"ADC dnl: code {code!r} is not in 0..{n - 1}")
                table[code] = value
        else:
            try:
                table[:] = np.asarray(self.dnl, dtype=float)
            except (TypeError, ValueError):
                raise ValueError(f"ADC dnl must be a {{code: LSB}} mapping or {n} numbers, "
                                 f"got {type(self.dnl).__name__}") from None
        if not (np.all(np.isfinite(table)) and np.all(table >= -1)):
            raise ValueError("ADC dnl values must be finite and >= -1 LSB (-1: missing code)")
        widths = 1.0 + table[1:n - 1]
        if n > 2 and not widths.sum() > 0:
            raise ValueError("ADC dnl leaves no code between the first and the last")
        scaled = widths * ((n - 2) / widths.sum()) if n > 2 else widths
        return 0.5 + np.concatenate(([0.0], np.cumsum(scaled)))

    @property
    def ideal(self) -> bool:
        """True without a DNL table (the codes are rounded positions)."""
        return self._levels is None

    @property
    def full_scale(self) -> int:
        """Codes per ``vref`` (2^bits)."""
        return 1 << self.bits

    @property
    def levels(self) -> np.ndarray:
        """Transition levels T_1 .. T_top in ideal-LSB units (the ideal ones without DNL)."""
        if self._levels is None:
            return np.arange(1, self.full_scale) - 0.5
        return self._levels.copy()

    def position(self, v_pin: np.ndarray, normals: np.ndarray | None = None) -> np.ndarray:
        """The input in ideal-LSB units (gain, offset, and noise from standard ``normals``)."""
        x = np.asarray(v_pin, dtype=float) * (
            (1.0 + self.gain_error) / self.vref * self.full_scale) + self.offset_lsb
        if self.noise_lsb > 0 and normals is not None:
            x = x + self.noise_lsb * normals
        return x

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Codes (floats, 0..top) for inputs ``x`` in ideal-LSB units (NaN stays NaN)."""
        x = np.asarray(x, dtype=float)
        if self._levels is None:
            return np.clip(np.rint(x), 0, self.full_scale - 1)
        codes = np.searchsorted(self._levels, x, side="right").astype(float)
        return np.where(np.isnan(x), np.nan, codes)

    def codes(self, v_pin: np.ndarray, normals: np.ndarray | None = None) -> np.ndarray:
        """Codes for pin voltages ``v_pin`` [V] (noise from standard ``normals``)."""
        return self.quantize(self.position(v_pin, normals))

    def centres(self) -> np.ndarray:
        """The input each code stands for [ideal LSB], codes 0 .. 2^bits - 1: the middle of
        its transition interval (of a wide code the middle of its width; a missing code, never
        read, its transition level; the end codes one half LSB beyond their inner levels, as
        on an ideal ADC). Ideal transfer: the codes themselves."""
        levels = self.levels
        inner = 0.5 * (levels[:-1] + levels[1:])
        return np.concatenate(([levels[0] - 0.5], inner, [levels[-1] + 0.5]))

    def correct(self, codes: np.ndarray) -> np.ndarray:
        """Codes read through this transfer as the input they stand for, in ideal-LSB units
        (what an ideal ADC would have read; the DNL correction): each code its
        :meth:`centres` value; a mean of codes (a board's averaged reading) interpolated
        between its two neighbours' (exact when the conversions it averages took two adjacent
        codes). Gain and offset errors stay (calibration's job). NaN stays NaN."""
        c = np.asarray(codes, dtype=float)
        if self._levels is None:
            return c.copy()
        return np.interp(c, np.arange(self.full_scale, dtype=float), self.centres())

    def replace(self, **changes: object) -> AdcTransfer:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def rp2040(*, gain_error: float = 0.0, offset_lsb: float = 0.0, noise_lsb: float = 1.0,
           jitter_s: float = 0.0) -> AdcTransfer:
    """The RP2040's 12-bit ADC at 3.3 V: the E11 DNL table and ~1 LSB rms noise."""
    return AdcTransfer(bits=12, vref=3.3, gain_error=gain_error, offset_lsb=offset_lsb,
                       noise_lsb=noise_lsb, jitter_s=jitter_s, dnl=RP2040_DNL)


def enob(transfer: AdcTransfer, *, samples: int = 1 << 16, seed: int = 0) -> float:
    """Effective number of bits from a sine-fit test: a full-scale sine (95 % of the range)
    converted with noise, the known sine subtracted from the codes, ``bits - log2(rms error /
    ideal quantisation rms)``. Gain and offset error are fitted out (least squares), as the
    sine-fit test does."""
    rng = np.random.default_rng(seed)
    n = transfer.full_scale
    phase = 2 * np.pi * 0.1234567 * np.arange(samples)
    v = transfer.vref * (0.5 + 0.475 * np.sin(phase))
    codes = transfer.codes(v, rng.standard_normal(samples))
    basis = np.stack([np.sin(phase), np.cos(phase), np.ones(samples)], axis=1)
    fit, *_ = np.linalg.lstsq(basis, codes, rcond=None)
    error = codes - basis @ fit
    rms = float(np.sqrt(np.mean(error ** 2)))
    return math.log2(n) - math.log2(rms / (1 / math.sqrt(12)))
