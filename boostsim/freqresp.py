"""Control-to-output frequency response measured on the exact switching model.

:func:`measure_gvd` does what a network analyser does on the bench, on the switching engine:
it injects a small sinusoidal perturbation into the duty, one engine lane per frequency (a
2-D (periods, lanes) duty schedule), starts every lane from the periodic steady state
(:func:`boostsim.steady_state`), runs until the response is periodic and extracts the
fundamental by a Fourier sum over whole modulation periods.

What is measured, and how it relates to ``Gvd(s)``
--------------------------------------------------
The injected signal is a sequence, one duty value per switching period:
``d_k = D + a sin(2 pi f k Ts)``, and the response is the sequence of exact per-period means
of vout, ``y_k`` (mean over period k, :meth:`boostsim.simulation.SimulationResult.period_means`).
Their ratio at ``f`` is the discrete-time response ``H(f) = Y/D``. The averaged model relates
it to the continuous ``Gvd(s)`` of :func:`boostsim.linearised.small_signal` through three known
factors (see :mod:`boostsim.averaged`):

* the duty is held for a period (zero-order hold): ``(1 - e^{-sTs})/(sTs)``;
* trailing-edge modulation: the held duty acts from the PWM edge, ``D Ts`` into the period:
  ``e^{-s D Ts}``;
* ``y_k``, the mean over period k, is the moving average sampled at the *end* of the period:
  ``e^{+s Ts}`` relative to the period start.

Together ``H(f) = Gvd(j 2 pi f) * sinc(f Ts) * e^{-j 2 pi f Ts (D - 1/2)}``, with
``sinc(x) = sin(pi x)/(pi x)``. :func:`measure_gvd` divides this factor out (``gvd``) and also
returns ``H`` itself (``raw``). Aliasing of the switching sidebands into ``y_k`` and the
ripple's effect on the averaged model are what remain; they are small below ``fsw/10``
(checked in the tests against a linearisation of the exact period map).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from fractions import Fraction
from typing import Any

import numpy as np

from .linearised import small_signal
from .params import BoostParams
from .simulation import simulate
from .steady import steady_state
from .units import quantity

__all__ = ["MeasuredResponse", "measure_gvd", "modulation_factor"]


@dataclasses.dataclass
class MeasuredResponse:
    """Result of :func:`measure_gvd`.

    ``freqs`` [Hz]: the frequencies actually used (each a rational multiple ``m/N`` of the
    switching frequency, so that N periods hold m whole cycles); ``gvd``: the measured
    control-to-output response [V per unit duty], complex, with the modulator and averaging
    factor divided out (compare with ``small_signal(...).response(freqs)``); ``raw``: the
    ratio of the per-period-mean output to the duty sequence, before that correction;
    ``amplitude``: the duty amplitude used per frequency; ``periods``: switching periods
    simulated; ``converged``: the change between the last two analysis windows was below the
    tolerance; ``duty``: the operating point.
    """

    freqs: np.ndarray
    gvd: np.ndarray
    raw: np.ndarray
    amplitude: np.ndarray
    periods: int
    converged: np.ndarray
    duty: float

    @property
    def magnitude_db(self) -> np.ndarray:
        return 20.0 * np.log10(np.abs(self.gvd))

    @property
    def phase_deg(self) -> np.ndarray:
        return np.degrees(np.angle(self.gvd))


def modulation_factor(freqs: Any, fsw: float, duty: float) -> np.ndarray:
    """``sinc(f/fsw) e^{-j 2 pi f (D - 1/2)/fsw}``: the ratio of the per-period-mean response
    (duty sequence in, period means out) to the continuous ``Gvd(j 2 pi f)`` for trailing-edge
    PWM (see the module docstring)."""
    x = np.asarray(freqs, dtype=float) / fsw
    return np.sinc(x) * np.exp(-2j * np.pi * x * (duty - 0.5))


def measure_gvd(params: BoostParams, duty: float, freqs: Any, amplitude: float = 0.01, *,
                max_swing: float | None = None, tol: float = 1e-3, max_periods: int = 200_000,
                max_denominator: int | None = None) -> MeasuredResponse:
    """Measure the control-to-output response of the switching converter at ``freqs`` [Hz].

    Parameters
    ----------
    params : BoostParams
        One converter (scalar fields).
    duty : float
        Operating point (the converter should be in CCM for ``Gvd`` to compare with the CCM
        small-signal model; DCM works the same way).
    freqs : array of float
        Frequencies [Hz], below ``fsw/2``. Each is replaced by the nearest ``fsw m/N`` with
        ``N <= max_denominator`` (default: the periods in one cycle of the lowest
        frequency, at least 500); the analysis window is the largest N.
    amplitude : float
        Duty perturbation amplitude (default 0.01).
    max_swing : float, optional
        If given [V], the amplitude at each frequency is reduced so that the small-signal
        model's predicted output swing stays below it (keeps the resonance peak linear and
        the converter out of DCM).
    tol : float
        Stop when the complex response changes by less than ``tol`` (relative) between two
        consecutive analysis windows.
    max_periods : int
        Give up (with a warning) after this many switching periods.
    """
    if params.n_lanes != 1:
        raise ValueError(f"measure_gvd needs one converter, got {params.n_lanes} lanes; use "
                         f"params.lane(i)")
    fsw = float(np.asarray(params.fsw))
    Ts = 1.0 / fsw
    freqs = np.atleast_1d(np.asarray(freqs, dtype=float))
    if freqs.ndim != 1 or freqs.size == 0 or np.any(~np.isfinite(freqs)) \
            or np.any(freqs <= 0) or np.any(freqs >= fsw / 2):
        raise ValueError(f"freqs must be a 1-D array of frequencies in (0, fsw/2) = (0, "
                         f"{fsw / 2:g}) Hz, got {freqs!r}")
    if not 0 < amplitude < min(duty, 1 - duty):
        raise ValueError(f"amplitude must be > 0 and keep the duty inside (0, 1): got "
                         f"{amplitude!r} around duty {duty!r}")
    if max_denominator is None:
        max_denominator = max(math.ceil(fsw / freqs.min()), 500)
    ratios = [Fraction(float(f) / fsw).limit_denominator(max_denominator) for f in freqs]
    ratios = [r if r > 0 else Fraction(1, max_denominator) for r in ratios]
    m = np.array([r.numerator for r in ratios], dtype=np.int64)
    N = np.array([r.denominator for r in ratios], dtype=np.int64)
    used = fsw * m / N
    n = used.size

    model = small_signal(params, duty)
    amp = np.full(n, float(amplitude))
    if max_swing is not None:
        gain = np.abs(model.response(used))
        amp = np.minimum(amp, max_swing / np.maximum(gain, 1e-300))
    # Settle for ~9 time constants of the slowest pole (the transient started by switching the
    # perturbation on decays to ~1e-4), then compare consecutive windows.
    sigma = float(np.min(np.abs(model.poles_hz.real))) * 2 * np.pi
    settle = math.ceil(9.2 / max(sigma, 1e-9) / Ts)
    window = int(N.max())
    reps = np.maximum(window // N, 1)
    lane_window = reps * N  # each lane: whole modulation periods inside the window

    ss = steady_state(params, duty)
    lanes = params.replace(vin=np.full(n, float(np.asarray(params.vin))))
    x0 = np.tile([ss.il_start, ss.vc_start], (n, 1))
    k0 = 0

    def schedule(start: int, count: int) -> np.ndarray:
        k = np.arange(start, start + count)[:, None]
        return duty + amp[None, :] * np.sin(2 * np.pi * (k * m[None, :] % N[None, :])
                                            / N[None, :])

    def run(count: int):
        nonlocal x0, k0
        sched = schedule(k0, count)
        res = simulate(lanes, duty=sched, t_end=count * Ts, dt=count * Ts, x0=x0)
        x0 = np.stack([res.il_end, res.vc_end], axis=1)
        k0 += count
        return res, sched

    if settle > max_periods:
        settle = max_periods // 2
    run(settle)
    previous = None
    converged = np.zeros(n, dtype=bool)
    while True:
        start = k0
        res, sched = run(window)
        means = res.period_means()["vout"]  # (lanes, window)
        raw = np.empty(n, dtype=complex)
        for i in range(n):
            W = int(lane_window[i])
            k = np.arange(start + window - W, start + window)
            phase = np.exp(-2j * np.pi * ((k * m[i]) % N[i]) / N[i])
            y = means[i, window - W:]
            d = sched[window - W:, i]
            raw[i] = np.sum(y * phase) / np.sum(d * phase)
        if previous is not None:
            converged = np.abs(raw - previous) <= tol * np.abs(raw)
            if converged.all() or k0 + window > max_periods:
                break
        previous = raw
    if not converged.all():
        warnings.warn(f"measure_gvd: the response at {used[~converged]} Hz did not settle to "
                      f"{tol:g} within {quantity(k0, 'period')}", RuntimeWarning, stacklevel=2)
    if np.any(res.periods.mode == "DCM") and model.mode == "CCM":
        warnings.warn("measure_gvd: the perturbation pushed the converter into DCM; reduce "
                      "the amplitude (or pass max_swing)", RuntimeWarning, stacklevel=2)
    gvd = raw / modulation_factor(used, fsw, duty)
    return MeasuredResponse(freqs=used, gvd=gvd, raw=raw, amplitude=amp, periods=k0,
                            converged=converged, duty=float(duty))
