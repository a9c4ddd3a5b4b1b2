"""The board's hardware facts: the RP2040's PWM slice and ADC as the firmware drives them.

The one model of them: the simulation's :class:`boostsim.control.PWM` (and its compiled twin in
:mod:`boostsim.kernel`), the emulator's HAL and the bench's ``effective_pwm`` all quantise a
duty through :func:`pwm_output`; ``firmware_bridge/firmware/config.py`` (MicroPython, which
cannot import this) holds the ADC figures again, and ``tests/test_board_facts.py`` checks that
the copies, and the firmware's own ``hal.py``, agree code for code.

What a requested duty goes through on the board:

1. ``hal.py`` asks for ``int(freq + 0.5)`` Hz and ``duty_u16 = int(duty * 65535 + 0.5)``, in
   MicroPython's single-precision floats (the rp2 port's ``mp_float_t`` is ``float``).
2. MicroPython (``ports/rp2/machine_pwm.c`` since v1.20) sets the slice: divider ``div16/16``
   = 1 and ``top = round(clock / freq) - 1`` when that fits 65534, else the smallest divider
   that fits and ``top = round(16 * clock / (div16 * freq)) - 1``; the counter runs ``top + 1``
   steps per period.
3. The compare level is ``cc = round(duty_u16 * (top + 1) / 65535)`` (``(u * (top + 1) + 32767)
   // 65535``): the gate is high for ``cc`` of the ``top + 1`` steps.
"""

from __future__ import annotations

import functools
import math
import struct
from typing import Any

import numpy as np

from .units import format_si

__all__ = ["ADC_BITS", "ADC_CONVERSION_S", "ADC_FULL_SCALE", "ADC_MAX_CODE", "ADC_VREF",
           "DUTY_U16_MAX", "PWM_CLOCK", "capped_u16", "ceiling_u16", "compare_level",
           "counter_steps", "duty_u16", "freq_request", "pwm_output", "rp2040_pwm", "slice_setup"]

#: The PWM counter clock [Hz]: MicroPython's system clock on an RP2040 (``hal.py`` does not
#: divide it down; the slice's divider only comes in below ~1.9 kHz).
PWM_CLOCK = 125_000_000
#: Full scale of ``PWM.duty_u16``.
DUTY_U16_MAX = 65535
#: MicroPython's largest ``top`` (65535 would leave no level for 100 % duty).
_TOP_MAX = 65534
#: The slice divider is 8.4 fixed point: div16 = 16 * divider, from 1 up to 255 + 15/16.
_DIV16_MIN, _DIV16_END = 16, 256 * 16

#: ADC resolution [bits] (``read_u16() >> 4``), its codes per reference, highest code.
ADC_BITS = 12
ADC_FULL_SCALE = 1 << ADC_BITS
ADC_MAX_CODE = ADC_FULL_SCALE - 1
#: ADC reference [V]: the Pico's 3V3 rail through its filter.
ADC_VREF = 3.3
#: One ADC conversion [s]: 96 cycles of the 48 MHz ADC clock (500 kS/s); back-to-back reads
#: (``read_u16`` in a loop) sample this far apart.
ADC_CONVERSION_S = 2e-6


def _clock(clock_hz: Any) -> int:
    """The clock as the integer number of Hz the hardware has."""
    value = float(clock_hz)
    if not (math.isfinite(value) and value > 0 and value == int(value)):
        raise ValueError(f"PWM clock must be a whole number of Hz > 0, got {clock_hz!r}")
    return int(value)


def freq_request(freq_hz: Any) -> np.ndarray:
    """The integer frequency [Hz] ``hal.py`` asks MicroPython for: ``int(freq + 0.5)`` in single
    precision."""
    f = np.asarray(freq_hz, dtype=np.float32)
    if not np.all(np.isfinite(f) & (f >= 0.5)):
        bad = np.asarray(freq_hz, dtype=float).reshape(-1)[
            np.flatnonzero(~(np.isfinite(f) & (f >= 0.5)).reshape(-1))[0]]
        raise ValueError(f"PWM frequency must be a finite number >= 0.5 [Hz], got {bad!r}")
    return np.floor(f + np.float32(0.5)).astype(np.int64)


def slice_setup(freq_hz: Any, clock_hz: Any = PWM_CLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(div16, top) MicroPython programs into a slice for ``freq_hz`` (arrays broadcast);
    ``ValueError`` for a frequency the slice cannot make with at least 2 counter steps."""
    clock = _clock(clock_hz)
    freq = freq_request(freq_hz)
    direct = (clock + freq // 2) // freq < _TOP_MAX
    # The divided branch (only below clock / 65534): smallest div16 with 16 clock / (div16 f)
    # < TOP_MAX, then top rounded (get_slice_hz_ceil / get_slice_hz_round in machine_pwm.c).
    div16 = np.where(direct, _DIV16_MIN, (16 * clock + _TOP_MAX * freq - 1) // (_TOP_MAX * freq))
    top = np.where(direct, (clock + freq // 2) // freq,
                   (16 * clock + div16 * freq // 2) // (div16 * freq)) - 1
    bad = (div16 >= _DIV16_END) | (top < 1)
    if np.any(bad):
        f = int(np.broadcast_to(freq, bad.shape)[bad].reshape(-1)[0])
        low, high = 16 * clock / (_DIV16_END * _TOP_MAX), clock / 2
        raise ValueError(f"PWM frequency {f} Hz is out of the RP2040 slice's reach at a "
                         f"{format_si(clock, 'Hz')} clock (about {format_si(low, 'Hz', 3)} to "
                         f"{format_si(high, 'Hz', 3)})")
    return div16, top


def duty_u16(duty: Any) -> np.ndarray:
    """``hal.py``'s ``int(duty * 65535 + 0.5)`` in single precision, held to 0..65535 (the
    firmware passes duties in [0, 1]; MicroPython caps the value at 65535)."""
    u = np.clip(_u16(np.asarray(duty, dtype=np.float32)), 0, DUTY_U16_MAX)
    if np.isnan(u).any():  # no duty: 0 (callers keep NaN apart, see control.PWM)
        u = np.nan_to_num(u, nan=0.0)
    return u.astype(np.int64)


def _u16(d32: Any) -> Any:
    """``int(duty * 65535 + 0.5)`` before the cap, for a float32 array or numpy scalar."""
    return np.floor(d32 * np.float32(DUTY_U16_MAX) + np.float32(0.5))


_F32 = struct.Struct("<f")


def _u16_of(d: float) -> int:
    """:func:`_u16` of one duty in [0, 1], in Python floats: each single-precision rounding
    through ``struct`` (a quarter of the cost of numpy's float32 scalars; the same numbers,
    ``tests/test_board_facts.py``)."""
    pack, unpack = _F32.pack, _F32.unpack
    d32 = unpack(pack(d))[0]
    scaled = unpack(pack(d32 * DUTY_U16_MAX))[0]  # the product is exact in double precision
    # scaled + 0.5 needs no rounding: below 2**16 single precision has 2**-8 steps or finer.
    return int((scaled + 0.5) // 1)


def compare_level(u16: Any, top: Any) -> np.ndarray:
    """MicroPython's compare level for ``duty_u16`` on a slice with this ``top``, rounded."""
    return _level(np.asarray(u16, dtype=np.int64), np.asarray(top, dtype=np.int64) + 1)


def _level(u16: Any, steps: Any) -> Any:
    """The compare level of ``duty_u16`` on a slice of ``steps`` counter steps (ints or int
    arrays)."""
    return (u16 * steps + DUTY_U16_MAX // 2) // DUTY_U16_MAX


def ceiling_u16(limit: Any, top: Any) -> np.ndarray:
    """The largest ``duty_u16`` whose compare level stays at or below ``floor(limit * (top +
    1))`` (single precision, as ``hal.py`` computes it): ``hal.py`` never writes more, so a duty
    limit is never exceeded by the half step rounding would add."""
    steps = np.asarray(top, dtype=np.int64) + 1
    level = np.floor(np.asarray(limit, dtype=np.float32) * steps.astype(np.float32))
    return np.minimum(((level.astype(np.int64) + 1) * DUTY_U16_MAX - DUTY_U16_MAX // 2 - 1)
                      // steps, DUTY_U16_MAX)


def capped_u16(duty: Any, limit: Any, top: Any) -> np.ndarray:
    """What ``hal.py`` writes for ``duty`` under the ceiling ``limit`` on a slice with this
    ``top``: the rounded ``duty_u16``, at most :func:`ceiling_u16`."""
    return np.minimum(duty_u16(duty), ceiling_u16(limit, top))


def pwm_output(freq_hz: Any, duty: Any, clock_hz: Any = PWM_CLOCK, limit: Any = 1.0
               ) -> tuple[np.ndarray, np.ndarray]:
    """(frequency [Hz], duty) the slice really produces when ``hal.py`` is asked for
    ``freq_hz`` and ``duty`` in [0, 1] under the duty ceiling ``limit`` (arrays broadcast)."""
    d = np.asarray(duty, dtype=float)
    if not np.all((d >= 0) & (d <= 1)):
        bad = d.reshape(-1)[np.flatnonzero(~((d >= 0) & (d <= 1)).reshape(-1))[0]]
        raise ValueError(f"PWM duty must be in [0, 1], got {float(bad)!r}")
    clock = _clock(clock_hz)
    div16, top = slice_setup(freq_hz, clock)
    steps = top + 1
    return 16 * clock / (div16 * steps), compare_level(capped_u16(d, limit, top), top) / steps


def rp2040_pwm(freq_hz: float, duty: float, clock_hz: float = PWM_CLOCK, limit: float = 1.0
               ) -> tuple[float, float]:
    """:func:`pwm_output` for one request, as floats; ``clock_hz`` 0: ideal PWM (no
    quantisation). The same functions on scalars, the slice set-up and the duty ceiling
    cached per frequency and limit (the emulated board calls this at every PWM update)."""
    if clock_hz == 0:
        return float(freq_hz), float(duty)
    d = float(duty)
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"PWM duty must be in [0, 1], got {d!r}")
    freq, steps, ceiling = _slice(float(freq_hz), clock_hz, float(limit))
    u16 = min(_u16_of(d), ceiling)  # d in [0, 1]: no cap below, none above
    return freq, _level(u16, steps) / steps


def counter_steps(freq_hz: float, clock_hz: float = PWM_CLOCK) -> int:
    """Counter steps per period (``top + 1``) of the slice set up for ``freq_hz``: every duty
    :func:`rp2040_pwm` gives at that frequency is a whole number of them (0: ideal PWM,
    ``clock_hz`` 0)."""
    if clock_hz == 0:
        return 0
    return _slice(float(freq_hz), clock_hz, 1.0)[1]


@functools.lru_cache(maxsize=256)
def _slice(freq_hz: float, clock_hz: Any, limit: float) -> tuple[float, int, int]:
    """(output frequency [Hz], counter steps per period, ceiling_u16) of one request: the
    clock checked, the slice set up, the duty ceiling; cached (the emulated board asks at
    every PWM update)."""
    clock = _clock(clock_hz)
    div16, top = slice_setup(freq_hz, clock)
    steps = int(top) + 1
    ceiling = min(int(ceiling_u16(limit, top)), DUTY_U16_MAX)
    return 16 * clock / (int(div16) * steps), steps, ceiling


