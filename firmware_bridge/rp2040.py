"""Facts of the RP2040's PWM that host code (bench, emulator) shares: its counter clock and how
a slice quantises the frequency and duty ``hal.py`` asks for.

Host-side on purpose: the bench uses it to know the duty the board really produces without
importing the emulator; the emulated HAL uses the same function to produce it.
"""

from __future__ import annotations

import math

__all__ = ["PWM_CLOCK", "rp2040_pwm"]

#: The RP2040's PWM counter clock [Hz] (the system clock; ``hal.py`` does not divide it down).
PWM_CLOCK = 125e6


def rp2040_pwm(freq_hz: float, duty: float, clock_hz: float) -> tuple[float, float]:
    """(frequency [Hz], duty) an RP2040 slice really produces for ``hal.py``'s request.

    MicroPython picks the smallest 8.4 fixed-point divider that fits the period in the 16-bit
    counter, ``top = clock / (div * freq) - 1``; hal.py writes ``duty_u16 = duty * 65535``,
    the compare level is ``duty_u16 * (top + 1) // 65535``. ``clock_hz`` <= 0: ideal PWM.
    """
    if clock_hz <= 0:
        return float(freq_hz), float(duty)
    div16 = max(16, math.ceil(clock_hz * 16 / (freq_hz * 65536)))
    top = max(1, round(clock_hz * 16 / (div16 * freq_hz)) - 1)
    steps = top + 1
    freq_eff = clock_hz * 16 / (div16 * steps)
    duty_u16 = min(65535, int(duty * 65535 + 0.5))
    cc = duty_u16 * steps // 65535
    return freq_eff, cc / steps
