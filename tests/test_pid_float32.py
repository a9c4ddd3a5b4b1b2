"""boostsim/pid.py in single precision, as MicroPython computes on the RP2040.

The PID is given numpy.float32 gains, limits and signals, so every ``+ - * /`` of its law rounds
to float32 exactly as the RP2040 port's floats do (NumPy 2 keeps float32 with Python floats).
"""

import numpy as np
import pytest

from boostsim.pid import PID

F32 = np.float32


def f32_pid(**kwargs) -> PID:
    """A PID whose every number is a float32."""
    return PID(**{k: (F32(v) if isinstance(v, float) else v) for k, v in kwargs.items()})


def run(pid: PID, setpoint: float, measurements) -> list:
    return [pid.update(setpoint, y) for y in measurements]


@pytest.mark.parametrize("anti_windup", ["clamp", "backcalc"])
def test_small_integral_increments_accumulate_in_float32(anti_windup):
    # A slow loop (CONT:RATE 2 kHz, ki 0.2 /(V s)) holding a 2e-4 V error: each increment
    # ki*ts*e = 2e-8 is below half a float32 ulp of the integral (0.5: 3e-8). Plainly summed,
    # the integral never moves; the loop must still integrate the error away.
    kw = dict(kp=0.005, ki=0.2, kd=0.0, ts=5e-4, anti_windup=anti_windup)
    n = 20000
    ys = [F32(12.0) - F32(2e-4)] * n
    pid32 = f32_pid(**kw)
    pid32.reset(output=F32(0.5))
    pid64 = PID(**kw)
    pid64.reset(output=0.5)
    run(pid32, F32(12.0), ys)
    run(pid64, 12.0, [float(y) for y in ys])
    assert isinstance(pid32.integral, np.float32)
    growth64 = pid64.integral - 0.5
    assert growth64 == pytest.approx(n * 0.2 * 5e-4 * float(F32(12.0) - ys[0]), rel=1e-6)
    assert float(pid32.integral) - 0.5 == pytest.approx(growth64, rel=2e-3)


def test_float32_pid_follows_the_double_one_on_a_transient():
    # A soft start, a setpoint step and ripple: the float32 PID stays within float32 rounding
    # of the double one (no drift of the state over 3000 samples).
    kw = dict(kp=0.1, ki=150.0, kd=2e-5, ts=1e-5, tf=3e-5, out_min=0.05, out_max=0.9,
              setpoint_rate=2e4)
    pid32, pid64 = f32_pid(**kw), PID(**kw)
    k = np.arange(3000)
    ys = 12.0 - 7.0 * np.exp(-k / 400.0) + 0.02 * np.sin(0.7 * k)
    sps = np.where(k < 1500, 12.0, 10.0)
    out32 = [float(pid32.update(F32(s), F32(y))) for s, y in zip(sps, ys, strict=True)]
    out64 = [pid64.update(float(s), float(F32(y))) for s, y in zip(sps, ys, strict=True)]
    assert np.max(np.abs(np.subtract(out32, out64))) < 2e-5
    assert float(pid32.integral) == pytest.approx(pid64.integral, abs=2e-5)


def test_reset_clears_the_carried_rounding():
    pid = f32_pid(kp=0.0, ki=0.2, kd=0.0, ts=5e-4)
    pid.reset(output=F32(0.5))
    run(pid, F32(1.0), [F32(1.0) - F32(2e-4)] * 100)
    pid.reset(output=F32(0.25))
    assert pid.update(F32(1.0), F32(1.0)) == F32(0.25)
    assert pid.integral == F32(0.25)
