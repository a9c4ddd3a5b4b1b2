"""Digital voltage-loop analysis and PID design for the boost converter.

The loop (what :class:`boostsim.control.DigitalController` and the board's firmware do)
--------------------------------------------------------------------------------------
Every ``T`` seconds (the PID's sample period, a whole number of switching periods) the ADC
samples the output, the PID (:mod:`boostsim.pid`) computes a duty, and the PWM applies it from
the start of a later switching period; ``delay_periods`` [switching periods] is the time from
the sample to that start (one period for "sample at the period start, update at the next";
``1 - D/2`` for a mid-on-time sample with a shadow-register update). The trailing-edge PWM
then acts on the duty change at its edge, ``D Ts`` into the period (:mod:`boostsim.averaged`).

Loop gain: exact on the unit circle
-----------------------------------
:func:`loop_gain` builds the *pulse transfer function* of the sampled-data loop rather than
an s-domain approximation: the averaged small-signal plant (:func:`boostsim.averaged
.small_signal`) driven by a duty held for ``T`` (zero-order hold) that takes effect a
(possibly fractional) delay ``tau`` after the sampling instant, sampled again at the next
instants (the modified z-transform, computed from the state-space matrices with matrix
exponentials). With the discrete PID's own ``C(z) = kp + ki T/(z-1) + b (z-1)/(z-a)`` this
gives ``T(z) = sensor_gain C(z) P(z)`` exactly for the linearised averaged converter, aliasing
included; ``LoopGain.frequency_response(f)`` evaluates it at ``z = e^{j 2 pi f T}`` and
:meth:`LoopGain.margins` finds the crossover, phase and gain margins there. Closed-loop poles
and the predicted step response come from the same discrete state-space model.

The ADC samples the instantaneous output, which (ripple aside) leads the moving average the
averaged model works with by half a switching period; with ``sampling="instant"`` (default)
the effective delay is therefore ``tau = (delay_periods - 1/2 + D) Ts`` (clipped at zero), with
``sampling="average"`` (an ADC averaging over one switching period) ``(delay_periods + D) Ts``.
``zoh=False`` drops the hold and evaluates the textbook product ``C(e^{jwT}) e^{-jw tau}
Gvd(jw)`` instead, for comparison. With ``pade_order`` the loop also gets a continuous-time
rational approximation (``LoopGain.lti``, a ``scipy.signal.TransferFunction``): the Tustin
equivalent of the PID times Pade approximants of the delay (the hold taken as half a sample).

Design (:func:`tune_pid`)
-------------------------
Classic loop shaping at one frequency: put the crossover at ``f_c`` with the requested phase
margin, the integral zero a factor ``integral_ratio`` below it and the derivative filter pole
a factor ``filter_ratio`` above it; the two remaining unknowns (kp, kd) follow from one complex
equation ``T(e^{j w_c T}) = e^{j(PM - 180 deg)}``. If that needs a negative kd, a PI (kp, ki) is
solved instead. Targets are refused (``ValueError``) above ``f_rhp/3`` -- the right-half-plane
zero adds phase lag ``atan(f/f_rhp)`` *and* gain, so no compensator recovers margin close to
it ([EM] Ch. 9; the usual rule puts the crossover a factor 3-5 below it) -- above ``1/(10 T)``
(the sampled loop's phase lag ``w (tau + T/2)`` alone is 36 deg + at a tenth of the sample
rate) and when the result is not stable or has less than 3 dB of gain margin.

References: [EM] R. W. Erickson, D. Maksimovic, *Fundamentals of Power Electronics*, 3rd ed.,
Springer 2020, Ch. 9 (controller design, phase margin and overshoot); [CMMZ] L. Corradini,
D. Maksimovic, P. Mattavelli, R. Zane, *Digital Control of High-Frequency Switched-Mode
Power Converters*, Wiley-IEEE 2015 (sampled-data loop, modified z-transform, DPWM delay);
[FPW] G. F. Franklin, J. D. Powell, M. Workman, *Digital Control of Dynamic Systems*, 3rd ed.,
1998 (pulse transfer functions with fractional delay).
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
from scipy import linalg, optimize, signal

from .averaged import SmallSignal, duty_for_vout, small_signal
from .params import BoostParams

__all__ = ["LoopGain", "Margins", "PIDGains", "bode_band", "loop_gain", "tune_pid"]


@dataclasses.dataclass
class Margins:
    """Stability margins of a loop gain.

    ``crossover_hz``: the (highest) frequency where ``|T| = 1`` (NaN if none);
    ``phase_margin_deg``: ``180 + angle T`` there; ``gain_margin_db``: how much the gain may
    rise before instability, ``-20 log10 |T|`` at the lowest phase crossover (-180 deg) above
    the crossover (inf if none below the Nyquist frequency); ``phase_crossover_hz`` that
    frequency. ``stable``: all closed-loop poles inside the unit circle.
    """

    crossover_hz: float
    phase_margin_deg: float
    gain_margin_db: float
    phase_crossover_hz: float
    stable: bool


@dataclasses.dataclass
class LoopGain:
    """The sampled-data voltage loop at an operating point (see the module docstring)."""

    plant: SmallSignal
    duty: float
    kp: float
    ki: float
    kd: float
    tf: float
    sample_period: float
    delay: float  # effective delay tau [s] from the (moving-average) sample to the duty change
    sensor_gain: float
    zoh: bool
    lti: Any  # continuous approximation (scipy.signal.TransferFunction) or None
    _plant_ss: tuple[np.ndarray, np.ndarray, np.ndarray] = dataclasses.field(repr=False)

    # -- pieces -------------------------------------------------------------------------------
    def controller_response(self, f: Any) -> np.ndarray:
        """The discrete PID's ``C(e^{j 2 pi f T})`` (output per unit measurement)."""
        z = np.exp(2j * np.pi * np.asarray(f, dtype=float) * self.sample_period)
        T = self.sample_period
        a = self.tf / (self.tf + T)
        b = self.kd / (self.tf + T)
        return self.kp + self.ki * T / (z - 1.0) + b * (z - 1.0) / (z - a)

    def plant_response(self, f: Any) -> np.ndarray:
        """The sampled plant ``P(e^{j 2 pi f T})`` times the sensor gain (measurement per unit
        duty): exact with ``zoh=True``, else ``e^{-j w tau} Gvd(j w)``."""
        f = np.asarray(f, dtype=float)
        if not self.zoh:
            return (self.sensor_gain * self.plant.response(f)
                    * np.exp(-2j * np.pi * f * self.delay))
        A, B, C = self._plant_ss
        z = np.exp(2j * np.pi * np.atleast_1d(f) * self.sample_period)
        eye = np.eye(A.shape[0])
        x = np.linalg.solve(z[:, None, None] * eye[None] - A[None], np.broadcast_to(
            B[None, :, None], (z.size, B.size, 1)))[..., 0]
        h = x @ C
        return h if f.ndim else h[0]

    def frequency_response(self, f: Any) -> np.ndarray:
        """The loop gain ``T`` at ``f`` [Hz] (complex), ``f`` below the Nyquist frequency."""
        return self.controller_response(f) * self.plant_response(f)

    # -- discrete closed loop ---------------------------------------------------------------
    def _closed_loop(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Closed-loop state space (state, reference input, vout output) of plant + PID."""
        A, B, C = self._plant_ss
        n = A.shape[0]
        T = self.sample_period
        a = self.tf / (self.tf + T)
        b = self.kd / (self.tf + T)
        kp, kiT = self.kp, self.ki * T
        # Controller state q = (I_k, D_{k-1}, y_{k-1});
        # u_k = kp (r - y) + I + a D_{k-1} - b (y - y_{k-1}).
        Acl = np.zeros((n + 3, n + 3))
        Bcl = np.zeros(n + 3)
        # y_k = C x_k  ->  u_k = kp r - (kp + b) C x + I + a Dp + b yp
        u_x = -(kp + b) * C
        u_q = np.array([1.0, a, b])
        Acl[:n, :n] = A + np.outer(B, u_x)
        Acl[:n, n:] = np.outer(B, u_q)
        Bcl[:n] = B * kp
        Acl[n, :n] = -kiT * C  # I' = I + ki T (r - y)
        Acl[n, n] = 1.0
        Bcl[n] = kiT
        Acl[n + 1, :n] = -b * C  # D_k = a D_{k-1} - b (y - y_{k-1})
        Acl[n + 1, n + 1] = a
        Acl[n + 1, n + 2] = b
        Acl[n + 2, :n] = C  # y_{k-1}' = y_k
        vout_row = np.zeros(n + 3)
        vout_row[:n] = C / self.sensor_gain
        return Acl, Bcl, vout_row

    def closed_loop_poles(self) -> np.ndarray:
        """Poles of the closed sampled-data loop (z-plane; stable inside the unit circle)."""
        return np.linalg.eigvals(self._closed_loop()[0])

    def step_response(self, samples: int, step: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Predicted output change [V] at the sampling instants after a reference step of
        ``step`` [V] (linear model; the PID's derivative acts on the measurement, so the
        setpoint path is P + I only). Returns (t [s], vout deviation)."""
        Acl, Bcl, row = self._closed_loop()
        x = np.zeros(Acl.shape[0])
        out = np.empty(samples)
        r = step * self.sensor_gain
        for k in range(samples):
            out[k] = row @ x
            x = Acl @ x + Bcl * r
        return np.arange(samples) * self.sample_period, out

    # -- margins ------------------------------------------------------------------------------
    def margins(self, f_min: float | None = None) -> Margins:
        """Crossover, phase margin and gain margin on the unit circle (see :class:`Margins`)."""
        nyquist = 0.5 / self.sample_period
        f_lo = f_min if f_min is not None else nyquist * 1e-5
        f = np.geomspace(f_lo, nyquist * (1 - 1e-6), 4000)
        h = self.frequency_response(f)
        mag = np.log(np.abs(h))
        phase = np.unwrap(np.angle(h))
        # Phase offset: at low frequency an integrating loop sits near -90 deg.
        phase -= 2 * np.pi * np.round((phase[0] + np.pi / 2) / (2 * np.pi))

        def refine(func, lo, hi):
            try:
                return optimize.brentq(func, lo, hi, xtol=1e-9 * hi)
            except ValueError:
                return 0.5 * (lo + hi)

        def log_mag(x):
            return float(np.log(np.abs(self.frequency_response(x))))

        crossings = np.flatnonzero((mag[:-1] > 0) & (mag[1:] <= 0))
        if crossings.size:
            j = crossings[-1]
            fc = refine(log_mag, f[j], f[j + 1])
            pc = np.interp(fc, f, phase)
            pc = np.angle(self.frequency_response(fc)) + 2 * np.pi * np.round(
                (pc - np.angle(self.frequency_response(fc))) / (2 * np.pi))
            pm = math.degrees(pc) + 180.0
        else:
            fc, pm = math.nan, math.nan
        # Phase crossovers (-180 deg + k 360) above the crossover where |T| < 1.
        shifted = (phase + np.pi) / (2 * np.pi)
        k = np.floor(shifted)
        cross = np.flatnonzero(k[:-1] != k[1:])
        gm, fg = math.inf, math.nan
        for j in cross:
            if np.isfinite(fc) and f[j + 1] < fc:
                continue
            level = max(k[j], k[j + 1])

            def ph(x, level=level):
                return float(np.interp(x, f, shifted) - level)

            fx = refine(ph, f[j], f[j + 1])
            m = -20 * math.log10(abs(self.frequency_response(fx)))
            if m > 0 and m < gm:
                gm, fg = m, fx
                break
        poles = self.closed_loop_poles()
        return Margins(crossover_hz=float(fc), phase_margin_deg=float(pm),
                       gain_margin_db=float(gm), phase_crossover_hz=float(fg),
                       stable=bool(np.all(np.abs(poles) < 1.0)))


def _sampled_plant(plant: SmallSignal, T: float, tau: float, gain: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Discrete state space (A, B, C) from the held duty u_k to y_k = gain * vout(k T) when u_k
    acts on [k T + tau, (k+1) T + tau) (modified z-transform with delay states)."""
    A, b = plant.A, plant.B[:, 0]
    c, dd = plant.C[0], plant.D[0, 0]
    ell = math.floor(tau / T + 1e-12)
    theta = max(tau - ell * T, 0.0)
    aug = np.zeros((3, 3))
    aug[:2, :2], aug[:2, 2] = A, b

    def flow(t: float) -> tuple[np.ndarray, np.ndarray]:
        m = linalg.expm(aug * t)
        return m[:2, :2], m[:2, 2]

    Phi, _ = flow(T)
    E_rest, G_rest = flow(T - theta)
    _, G_theta = flow(theta)
    gamma0 = G_rest
    gamma1 = E_rest @ G_theta
    n = 2 + ell + 1  # x, then w_j = u_{k-j}, j = 1..ell+1
    Ad = np.zeros((n, n))
    Bd = np.zeros(n)
    Cd = np.zeros(n)
    Ad[:2, :2] = Phi
    Ad[:2, 2 + ell] += gamma1  # u_{k-ell-1}
    if ell == 0:
        Bd[:2] = gamma0
    else:
        Ad[:2, 2 + ell - 1] += gamma0  # u_{k-ell}
    Bd[2] = 1.0
    for j in range(1, ell + 1):
        Ad[2 + j, 2 + j - 1] = 1.0
    Cd[:2] = gain * c
    Cd[2 + ell] = gain * dd  # the duty in force just before the sample
    return Ad, Bd, Cd


def _effective_delay(duty: float, Ts: float, delay_periods: float, sampling: str,
                     pwm_delay: bool) -> float:
    if sampling not in ("instant", "average"):
        raise ValueError(f"sampling must be 'instant' or 'average', got {sampling!r}")
    tau = delay_periods * Ts + (duty * Ts if pwm_delay else 0.0)
    if sampling == "instant":
        tau -= 0.5 * Ts
    return max(tau, 0.0)


def _pade(tau: float, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Pade (order, order) approximant of e^{-s tau}: numerator and denominator, highest
    power first."""
    k = np.arange(order + 1)
    c = np.array([math.factorial(2 * order - i) * math.factorial(order)
                  / (math.factorial(2 * order) * math.factorial(i) * math.factorial(order - i))
                  for i in k])
    den = c * tau**k
    num = den * (-1.0) ** k
    return num[::-1], den[::-1]


def _continuous(loop: LoopGain, order: int) -> signal.TransferFunction:
    T = loop.sample_period
    a = loop.tf / (loop.tf + T)
    b = loop.kd / (loop.tf + T)
    # Tustin equivalent of the PID: kp + ki (1 - sT/2)/s + b T s / ((1-a) + (1+a) T s/2).
    den_d = np.array([(1 + a) * T / 2, 1 - a])
    num = np.polyadd(np.polymul(np.array([loop.kp, 0.0]), den_d),
                     np.polymul(loop.ki * np.array([-T / 2, 1.0]), den_d))
    num = np.polyadd(np.polymul(num, [1.0]), np.polymul(np.array([b * T, 0.0, 0.0]), [1.0]))
    den = np.polymul(np.array([1.0, 0.0]), den_d)
    gvd_num, gvd_den = signal.zpk2tf(loop.plant.gvd.zeros, loop.plant.gvd.poles,
                                     loop.plant.gvd.gain)
    delay = loop.delay + (0.5 * T if loop.zoh else 0.0)
    p_num, p_den = _pade(delay, order)
    num = loop.sensor_gain * np.polymul(np.polymul(num, gvd_num), p_num)
    den = np.polymul(np.polymul(den, gvd_den), p_den)
    return signal.TransferFunction(num, den)


def loop_gain(params: BoostParams, duty: float, pid: Any, *, sensor_gain: float = 1.0,
              delay_periods: float | None = None, sample_period: float | None = None,
              zoh: bool = True,
              pade_order: int | None = None, sampling: str = "instant",
              pwm_delay: bool = True) -> LoopGain:
    """The voltage loop gain at ``duty`` with the discrete PID ``pid``.

    ``pid``: a :class:`boostsim.pid.PID` or anything with ``kp, ki, kd, tf, ts`` (e.g. a
    :class:`PIDGains`). ``sensor_gain``: measurement units per volt of output (1 when the
    firmware converts the ADC reading back to volts). ``delay_periods``: switching periods from
    the ADC sample to the start of the period that uses the new duty (default ``1 - D/2``:
    :class:`~boostsim.control.DigitalController`'s mid-on-time sample with the duty applied
    from the next period). ``sample_period``: the
    PID's period (default ``pid.ts``), a whole number of switching periods. ``zoh``,
    ``pade_order``, ``sampling``, ``pwm_delay`` (the trailing-edge modulator delay ``D Ts``):
    see the module docstring.
    """
    plant = small_signal(params, duty)
    if plant.mode != "CCM":
        raise ValueError(f"the loop design assumes CCM; duty {duty:g} puts this converter in "
                         f"DCM")
    Ts = float(1.0 / np.asarray(params.fsw))
    T = float(pid.ts if sample_period is None else sample_period)
    ratio = T / Ts
    if T <= 0 or abs(ratio - round(ratio)) > 1e-6 * max(ratio, 1.0) or round(ratio) < 1:
        raise ValueError(f"sample_period must be a whole number of switching periods "
                         f"({Ts:g} s), got {T!r}")
    if delay_periods is None:
        delay_periods = 1.0 - 0.5 * duty
    if delay_periods < 0:
        raise ValueError(f"delay_periods must be >= 0, got {delay_periods!r}")
    tau = _effective_delay(duty, Ts, delay_periods, sampling, pwm_delay)
    loop = LoopGain(plant=plant, duty=float(duty), kp=float(pid.kp), ki=float(pid.ki),
                    kd=float(pid.kd), tf=float(pid.tf), sample_period=T, delay=tau,
                    sensor_gain=float(sensor_gain), zoh=bool(zoh), lti=None,
                    _plant_ss=_sampled_plant(plant, T, tau, float(sensor_gain)))
    if pade_order is not None:
        if not (isinstance(pade_order, int) and pade_order >= 1):
            raise ValueError(f"pade_order must be an integer >= 1, got {pade_order!r}")
        loop.lti = _continuous(loop, pade_order)
    return loop


def bode_band(plant: SmallSignal, *, loop: LoopGain | None = None,
              margins: Margins | None = None, fsw: float | None = None
              ) -> tuple[float, float, float]:
    """Default frequency band of a Bode plot: (low, high, limit) [Hz].

    With ``loop``: from well below the LC resonance and the crossover, ``min(f_res/20,
    f_c/50, f_nyq/1000)``, up to just under the loop's Nyquist frequency ``f_nyq = 1/(2T)``
    (``0.98 f_nyq``), which is also the limit (``margins``: the loop's, if already computed).
    The plant alone (``fsw`` [Hz] needed): from ``f_res/50`` up to ``fsw/2``, the averaged
    model's limit.
    """
    if loop is None:
        if fsw is None:
            raise ValueError("bode_band: give the loop, or fsw for the plant alone")
        return plant.resonance_hz / 50, fsw / 2, fsw / 2
    nyq = 0.5 / loop.sample_period
    fc = (margins if margins is not None else loop.margins()).crossover_hz
    lo = min(plant.resonance_hz / 20, fc / 50 if math.isfinite(fc) else nyq, nyq / 1000)
    return lo, nyq * 0.98, nyq


# -- design ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class PIDGains:
    """Gains from :func:`tune_pid` and what the loop analysis predicts for them.

    ``kp, ki, kd, tf, ts``: the :class:`boostsim.pid.PID` parameters (duty per volt of
    measurement, etc.); ``duty``: the operating point for ``vref``; ``crossover_hz``,
    ``phase_margin_deg``, ``gain_margin_db``: the margins of the designed loop;
    ``rhp_zero_hz``, ``crossover_limit_hz``: the right-half-plane zero and the highest
    crossover :func:`tune_pid` accepts; ``overshoot``: predicted fractional overshoot of a
    small reference step; ``loop``: the :class:`LoopGain`.
    """

    kp: float
    ki: float
    kd: float
    tf: float
    ts: float
    duty: float
    vref: float
    crossover_hz: float
    phase_margin_deg: float
    gain_margin_db: float
    rhp_zero_hz: float
    crossover_limit_hz: float
    overshoot: float
    loop: LoopGain = dataclasses.field(repr=False)

    def pid(self, out_min: float = 0.0, out_max: float = 0.85, **kwargs: Any):
        """A :class:`boostsim.pid.PID` with these gains (extra arguments passed on); the default
        output ceiling is :class:`boostsim.control.PWM`'s default duty_max."""
        from .pid import PID

        return PID(self.kp, self.ki, self.kd, self.ts, out_min=out_min, out_max=out_max,
                   tf=self.tf, **kwargs)


def _overshoot(loop: LoopGain) -> float:
    T = loop.sample_period
    f = loop.margins().crossover_hz
    horizon = int(max(200, 40.0 / (max(f, 1.0) * T)))
    _, y = loop.step_response(horizon)
    final = y[-1]
    return float(max(np.max(y) / final - 1.0, 0.0)) if final > 0 else math.nan


def tune_pid(params: BoostParams, vref: float, crossover: float, phase_margin: float = 50.0, *,
             sample_period: float | None = None, sensor_gain: float = 1.0,
             delay_periods: float | None = None, integral_ratio: float = 5.0,
             filter_ratio: float = 5.0,
             sampling: str = "instant", rhp_fraction: float = 1.0 / 3.0) -> PIDGains:
    """PID gains giving a loop crossover at ``crossover`` [Hz] with ``phase_margin`` [deg]
    at the operating point where the averaged output is ``vref`` [V].

    The integral zero sits ``integral_ratio`` below the crossover and the derivative filter
    pole ``filter_ratio`` above it (capped at a fifth of the sample rate); kp and kd solve the
    crossover condition exactly on the sampled loop (a PI if no derivative is needed). Raises
    ``ValueError`` (naming the limit in Hz) for a crossover above ``rhp_fraction`` of the
    right-half-plane zero or above a tenth of the sample rate, and when no stable design with
    at least 3 dB gain margin exists. The other arguments are those of :func:`loop_gain`.
    """
    Ts = float(1.0 / np.asarray(params.fsw))
    T = Ts if sample_period is None else float(sample_period)
    if not (np.isfinite(crossover) and crossover > 0):
        raise ValueError(f"crossover must be a frequency > 0 [Hz], got {crossover!r}")
    if not 0 < phase_margin < 90:
        raise ValueError(f"phase_margin must be between 0 and 90 deg, got {phase_margin!r}")
    duty = duty_for_vout(params, vref)
    plant = small_signal(params, duty)
    if plant.mode != "CCM":
        raise ValueError(f"vref {vref:g} V puts this converter in DCM at duty {duty:.3f}; "
                         f"the design needs CCM")
    limit_rhp = rhp_fraction * plant.rhp_zero_hz
    limit_sampling = 0.1 / T
    limit = min(limit_rhp, limit_sampling)
    if crossover > limit:
        which = (f"{rhp_fraction:.2g} x the right-half-plane zero at {plant.rhp_zero_hz:.0f} Hz"
                 if limit_rhp <= limit_sampling else
                 f"a tenth of the {1 / T:.0f} Hz sample rate")
        raise ValueError(f"crossover {crossover:.0f} Hz is above the {limit:.0f} Hz limit "
                         f"({which}); choose a crossover <= {limit:.0f} Hz")
    if crossover < plant.resonance_hz / 2:
        return _tune_integral(params, vref, duty, plant, crossover, phase_margin, T,
                              sensor_gain, delay_periods, sampling, limit)
    wc = 2 * math.pi * crossover
    tf = max(1.0 / (2 * math.pi * crossover * filter_ratio), T / (2 * math.pi * 0.2))
    probe = SimpleNamespace(kp=1.0, ki=0.0, kd=0.0, tf=tf, ts=T)
    base = loop_gain(params, duty, probe, sensor_gain=sensor_gain, delay_periods=delay_periods,
                     sample_period=T, sampling=sampling)
    p = complex(base.plant_response(crossover))
    target = np.exp(1j * math.radians(phase_margin - 180.0)) / p  # required C(e^{j wc T})
    z = np.exp(1j * wc * T)
    a = tf / (tf + T)
    g_i = T / (z - 1.0)
    g_d = (z - 1.0) / ((tf + T) * (z - a))
    wi = wc / integral_ratio
    # kp (1 + wi g_i) + kd g_d = target: two real equations.
    M = np.array([[(1 + wi * g_i).real, g_d.real], [(1 + wi * g_i).imag, g_d.imag]])
    kp, kd = np.linalg.solve(M, [target.real, target.imag])
    ki = kp * wi
    if kd < 0:
        M = np.array([[1.0, g_i.real], [0.0, g_i.imag]])
        kp, ki = np.linalg.solve(M, [target.real, target.imag])
        kd = 0.0
    if kp < 0 or ki < 0:
        hint = (f"below the LC resonance ({plant.resonance_hz:.0f} Hz) its peak leaves no "
                f"room; cross over above it" if crossover < plant.resonance_hz else
                "lower the crossover or the phase margin")
        raise ValueError(f"no PID reaches {phase_margin:g} deg of phase margin at "
                         f"{crossover:.0f} Hz on this converter (the sampled plant's phase "
                         f"there is {math.degrees(np.angle(p)):.0f} deg): {hint} (upper limit "
                         f"{limit:.0f} Hz)")
    gains = SimpleNamespace(kp=float(kp), ki=float(ki), kd=float(kd), tf=tf, ts=T)
    loop = loop_gain(params, duty, gains, sensor_gain=sensor_gain, delay_periods=delay_periods,
                     sample_period=T, sampling=sampling)
    m = loop.margins()
    if not m.stable or not m.gain_margin_db >= 3.0:
        problem = ("is unstable on the sampled loop" if not m.stable else
                   f"leaves only {m.gain_margin_db:.1f} dB of gain margin")
        raise ValueError(f"the PID for {crossover:.0f} Hz / {phase_margin:g} deg {problem}; "
                         f"try a lower phase margin or a crossover further from the LC "
                         f"resonance at {plant.resonance_hz:.0f} Hz (at most {limit:.0f} Hz)")
    return PIDGains(kp=gains.kp, ki=gains.ki, kd=gains.kd, tf=tf, ts=T, duty=duty,
                    vref=float(vref), crossover_hz=m.crossover_hz,
                    phase_margin_deg=m.phase_margin_deg, gain_margin_db=m.gain_margin_db,
                    rhp_zero_hz=plant.rhp_zero_hz, crossover_limit_hz=limit,
                    overshoot=_overshoot(loop), loop=loop)


def _tune_integral(params: BoostParams, vref: float, duty: float, plant: Any, crossover: float,
                   phase_margin: float, T: float, sensor_gain: float,
                   delay_periods: float | None, sampling: str, limit: float) -> PIDGains:
    """A low-bandwidth loop well below the LC resonance: integral action only.

    Below the resonance the plant is its DC gain, so ``C(z) = ki T/(z-1)`` crosses over where
    ``ki = 1/|T/(z-1) P|`` and the phase margin (about 90 deg less the plant's lag) follows;
    the resonance's peak must stay under 0 dB with 3 dB to spare. This is the design for the
    board's own slow loops (MicroPython PID at 0.1-2 kHz).
    """
    z = np.exp(2j * math.pi * crossover * T)
    probe = SimpleNamespace(kp=1.0, ki=0.0, kd=0.0, tf=0.0, ts=T)
    base = loop_gain(params, duty, probe, sensor_gain=sensor_gain, delay_periods=delay_periods,
                     sample_period=T, sampling=sampling)
    p = complex(base.plant_response(crossover))
    ki = 1.0 / abs(T / (z - 1.0) * p)
    gains = SimpleNamespace(kp=0.0, ki=float(ki), kd=0.0, tf=0.0, ts=T)
    loop = loop_gain(params, duty, gains, sensor_gain=sensor_gain, delay_periods=delay_periods,
                     sample_period=T, sampling=sampling)
    m = loop.margins()
    peak_limit = plant.resonance_hz / max(plant.q_factor, 1.0)
    if not m.stable or not m.gain_margin_db >= 3.0:
        raise ValueError(f"an integral loop at {crossover:.0f} Hz lets the LC resonance "
                         f"({plant.resonance_hz:.0f} Hz, Q {plant.q_factor:.1f}) through "
                         f"(gain margin {m.gain_margin_db:.1f} dB); below the resonance choose "
                         f"a crossover under about {peak_limit / 2:.0f} Hz, or cross over above "
                         f"it")
    if m.phase_margin_deg < phase_margin:
        raise ValueError(f"an integral loop at {crossover:.0f} Hz reaches only "
                         f"{m.phase_margin_deg:.0f} deg of phase margin; lower the crossover "
                         f"or the phase margin")
    return PIDGains(kp=0.0, ki=float(ki), kd=0.0, tf=0.0, ts=T, duty=duty, vref=float(vref),
                    crossover_hz=m.crossover_hz, phase_margin_deg=m.phase_margin_deg,
                    gain_margin_db=m.gain_margin_db, rhp_zero_hz=plant.rhp_zero_hz,
                    crossover_limit_hz=limit, overshoot=_overshoot(loop), loop=loop)
