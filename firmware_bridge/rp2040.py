"""The RP2040's PWM facts for host code (bench, emulator): the one model lives in
:mod:`boostsim.rp2040` (shared with the simulation); this module names what the bench side
uses, so host code reaches it without importing the emulator.
"""

from __future__ import annotations

from boostsim.rp2040 import PWM_CLOCK, counter_steps, pwm_output, rp2040_pwm

__all__ = ["PWM_CLOCK", "counter_steps", "pwm_output", "rp2040_pwm"]
