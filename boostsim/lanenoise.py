"""Seeded Gaussian noise addressed by (lane, draw): the ADC noise of the closed loop.

Draw ``i`` of lane ``j`` under key ``k`` is a function of (k, j, i) alone, so the numpy engine
can draw a control step's noise for all lanes at once and the compiled kernel
(:func:`boostsim.kernel.unit_normal`, its twin, tested equal) can draw it inside its loop, lane
by lane, without a table: both give the same numbers. A lane's noise does not depend on how
many lanes run beside it.

* Uniform: SplitMix64 (Steele, Lea & Flood 2014) -- lane ``j`` starts from
  ``mix64(k + (j + 1) G)`` and draw ``i`` is ``mix64(start + (i + 1) G)`` with the golden-ratio
  increment ``G``; the top 53 bits, offset by half a step, give a double in (0, 1).
* Gaussian: its inverse distribution function, Wichura's AS241 (PPND16, relative error
  ~1e-16), so that each draw costs one uniform and no rejection loop.

The key comes from the ADC's ``seed`` through :class:`numpy.random.SeedSequence` (any seed it
accepts: an int, a sequence of ints; None draws a fresh key from the OS).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["noise_key", "ppnd16", "unit_normals"]

GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB

# AS241 PPND16 coefficients: central region (|p - 0.5| <= 0.425), then -log(min(p, 1 - p))
# below 5^2 and beyond.
PPND_A = (3.3871328727963666080e0, 1.3314166789178437745e2, 1.9715909503065514427e3,
          1.3731693765509461125e4, 4.5921953931549871457e4, 6.7265770927008700853e4,
          3.3430575583588128105e4, 2.5090809287301226727e3)
PPND_B = (1.0, 4.2313330701600911252e1, 6.8718700749205790830e2, 5.3941960214247511077e3,
          2.1213794301586595867e4, 3.9307895800092710610e4, 2.8729085735721942674e4,
          5.2264952788528545610e3)
PPND_C = (1.42343711074968357734e0, 4.63033784615654529590e0, 5.76949722146069140550e0,
          3.64784832476320460504e0, 1.27045825245236838258e0, 2.41780725177450611770e-1,
          2.27238449892691845833e-2, 7.74545014278341407640e-4)
PPND_D = (1.0, 2.05319162663775882187e0, 1.67638483018380384940e0, 6.89767334985100004550e-1,
          1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4,
          1.05075007164441684324e-9)
PPND_E = (6.65790464350110377720e0, 5.46378491116411436990e0, 1.78482653991729133580e0,
          2.96560571828504891230e-1, 2.65321895265761230930e-2, 1.24266094738807843860e-3,
          2.71155556874348757815e-5, 2.01033439929228813265e-7)
PPND_F = (1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
          7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7,
          2.04426310338993978564e-15)


def noise_key(seed: Any) -> int:
    """The 64-bit noise key of an ADC ``seed`` (None: a fresh one from the OS)."""
    return int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0])


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    return z ^ (z >> np.uint64(31))


def _poly(coef: tuple[float, ...], r: np.ndarray) -> np.ndarray:
    """coef[0] + coef[1] r + ... by Horner's rule, highest power first (AS241's order)."""
    value = coef[-1] * r
    for c in coef[-2:0:-1]:
        value = (value + c) * r
    return value + coef[0]


def ppnd16(p: np.ndarray) -> np.ndarray:
    """The standard normal quantile of p in (0, 1) (Wichura's AS241, PPND16)."""
    p = np.asarray(p, dtype=float)
    q = p - 0.5
    central = np.abs(q) <= 0.425
    r = 0.180625 - q * q
    out = q * _poly(PPND_A, r) / _poly(PPND_B, r)
    if not central.all():
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.sqrt(-np.log(np.where(q < 0, p, 1.0 - p)))
            near = s <= 5.0
            s = np.where(near, s - 1.6, s - 5.0)
            tail = np.where(near, _poly(PPND_C, s) / _poly(PPND_D, s),
                            _poly(PPND_E, s) / _poly(PPND_F, s))
        out = np.where(central, out, np.where(q < 0, -tail, tail))
    return out


def unit_normals(key: int, lanes: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Standard normal draws ``draws`` (ints >= 0) of lanes ``lanes`` (ints >= 0) under ``key``,
    broadcast together."""
    with np.errstate(over="ignore"):
        lanes = np.asarray(lanes, dtype=np.uint64)
        draws = np.asarray(draws, dtype=np.uint64)
        g = np.uint64(GOLDEN)
        start = _mix64(np.uint64(key) + (lanes + np.uint64(1)) * g)
        bits = _mix64(start + (draws + np.uint64(1)) * g)
    p = ((bits >> np.uint64(11)).astype(float) + 0.5) * 2.0 ** -53
    return ppnd16(p)
