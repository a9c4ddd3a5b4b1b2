"""Discrete PID controller: the one implementation shared by the simulator, the bench and the Pico.

This single source file runs unchanged

1. in the vectorised simulation: gains, limits, setpoints, measurements and states may be numpy
   arrays of shape ``(n_lanes,)`` (one PID per converter variant), with results bit-identical to
   separate scalar PIDs (same operations in the same order, selections instead of blends);
2. in the host's live bench loop (CPython floats);
3. on a Raspberry Pi Pico under MicroPython (single-precision floats on the RP2040).

It therefore imports nothing (no numpy, no typing, no dataclasses), uses only ``+ - * /`` and
comparisons on the signal path, and does its conditional logic with 0/1 masks (``x * (a > b)``)
or duck typing (``x.clip(lo, hi)`` on arrays, ``min``/``max`` on floats).

Difference equations (position form, sample index ``k``, period ``ts``)
-----------------------------------------------------------------------
Setpoint ramp (soft start; ``setpoint_rate`` = ``rate`` in V/s; ``None``, or ``inf`` in a lane,
= step)::

    s_k = clamp(sp_k, s_{k-1} - rate*ts, s_{k-1} + rate*ts)     (s_k = sp_k when rate is None)

    The ramp starts from the setpoint given to ``reset``; without one it starts from the first
    measurement (so a soft start begins at the present output voltage).

Error and proportional term::

    e_k = s_k - y_k
    P_k = kp * e_k

Derivative on the measurement (no derivative kick on setpoint steps), first-order filter
``D(s) = -kd * s / (tf*s + 1) * Y(s)`` discretised by the backward difference
``s -> (1 - z^-1) / ts``::

    D_k = a * D_{k-1} - b * (y_k - y_{k-1}),   a = tf / (tf + ts),   b = kd / (tf + ts)

    (tf = 0: D_k = -(kd/ts) * (y_k - y_{k-1}), the plain backward difference.)
    z-domain: D(z) = -b * (1 - z^-1) / (1 - a z^-1) * Y(z); the pole a lies in [0, 1), so the
    filter never rings, unlike Tustin for tf < ts/2. On the first update after a reset
    y_{k-1} = y_k (no kick) unless ``reset(measurement=...)`` supplied it.

Output (``unclamped`` is v_k, ``last_output`` is u_k, ``saturated`` is u_k != v_k)::

    v_k = P_k + I_k + D_k
    u_k = clamp(v_k, out_min, out_max)

Integral term, forward Euler (``integral`` holds I, already in output units)::

    anti_windup="clamp"     (conditional integration: freeze while pushing further into a limit)
        I_{k+1} = I_k + ki*ts*e_k * (1 - w_k),
        w_k = 1 if (v_k > out_max and e_k > 0) or (v_k < out_min and e_k < 0), else 0

    anti_windup="backcalc"  (back-calculation / tracking, tracking gain kt in 1/s)
        I_{k+1} = I_k + ki*ts*e_k + kt*ts*(u_k - v_k)

    The sum is compensated (Kahan summation): ``integral`` holds the rounded I and a hidden
    term what the rounding left out, carried into the next increment, so increments far below
    the integral's resolution still add up. That matters in single precision (MicroPython on the
    RP2040): a slow loop's ki*ts*e can fall below half an ulp of I (3e-8 at I = 0.5), and a
    plain sum then never integrates a small error away. In double precision it changes I by
    rounding only.

    Unsaturated, both give I(z) = ki*ts / (z - 1) * E(z), so the linear controller is

        U(z) = [kp + ki*ts/(z - 1)] * (S(z) - Y(z)) - b*(z - 1)/(z - a) * Y(z)

    and the loop gain seen from the measurement is
    C(z) = kp + ki*ts/(z - 1) + b*(z - 1)/(z - a).  Forward Euler puts one sample of delay in
    the integral path; that is what lets the anti-windup use u_k and v_k of the same sample
    without an algebraic loop.

Default tracking gain (``kt=None``): ``kt = ki / (kp + ki*ts)``, i.e. tracking time constant
``Tt = Ti + ts`` with ``Ti = kp/ki`` (the classic ``Tt = Ti`` rule, regularised by one sample).
Then ``0 <= kt*ts < 1`` always (the discrete tracking loop is stable and does not oscillate),
``kt = 0`` when ``ki = 0`` (no integral, nothing to track) and ``kt = 1/ts`` for a pure I
controller. With this choice a long saturation drives ``I`` to the limit itself
(steady state ``I = u + ki*ts*e``), so the output leaves saturation as soon as the error changes
sign. A larger ``kt`` leaves saturation earlier (before the error crosses zero); ``kt = 0``
disables anti-windup (useful only for comparisons). User values must satisfy
``0 <= kt <= 1/ts``. ``kt`` is ignored with ``anti_windup="clamp"``.

Bumpless start: ``reset(output=u0, measurement=y0, setpoint=s0)`` sets
``I = u0 - kp*(s0 - y0)`` (``I = u0`` unless both are given), ``D = 0`` and ``y_{k-1} = y0``, so
the first update continues from ``u0`` (exactly when the error is unchanged).

Parameters are validated at construction (``ValueError``); they are not meant to be changed
afterwards (the filter coefficients are precomputed): build a new PID to retune.
"""

__all__ = ["PID"]

_ANTI_WINDUP = ("clamp", "backcalc")


def _all(cond):
    """True if ``cond`` (a bool or a numpy bool array) holds everywhere."""
    if hasattr(cond, "all"):
        return bool(cond.all())
    return bool(cond)


def _clamp(x, lo, hi):
    """``x`` limited to ``[lo, hi]``; an exact selection for floats and numpy arrays alike."""
    if hasattr(x, "clip"):
        if type(lo) is type(x) and type(hi) is type(x) and x.shape == ():
            # Numpy scalars of one type (the board's float32 PID): the selection clip makes,
            # without its ufunc call (NaN passes, as clip lets it).
            return lo if x < lo else (hi if x > hi else x)
        return x.clip(lo, hi)
    # A float signal with array limits: broadcast x exactly (clip(x, x) is x in every lane, even
    # for infinite limits, where x + 0*lo would give NaN), then clip as an array.
    if hasattr(lo, "clip"):
        return lo.clip(x, x).clip(lo, hi)
    if hasattr(hi, "clip"):
        return hi.clip(x, x).clip(lo, hi)
    return min(max(x, lo), hi)


class PID:
    """Discrete PID in position form; see the module docstring for the difference equations.

    PID(kp, ki, kd, ts, out_min=0.0, out_max=1.0, tf=0.0, anti_windup="clamp", kt=None,
        setpoint_rate=None)

    kp [out/unit], ki [out/(unit*s)], kd [out*s/unit]: gains, >= 0 (floats or arrays).
    ts: sample period in s, > 0.  out_min < out_max: output limits (the duty range).
    tf: derivative filter time constant in s, >= 0 (0 = unfiltered).
    anti_windup: "clamp" (conditional integration) or "backcalc" (tracking with gain kt, 1/s).
    kt: back-calculation tracking gain, 0 <= kt <= 1/ts; None = ki / (kp + ki*ts).
    setpoint_rate: setpoint slew limit in units/s (> 0) for a soft start; None = steps.

    State for logging (all updated by ``update``): ``integral`` (I term, output units),
    ``derivative`` (D term), ``unclamped`` (v, pre-saturation output), ``last_output`` (u),
    ``saturated`` (u != v; bool or bool array), ``ramped_setpoint`` (s).
    """

    def __init__(self, kp, ki, kd, ts, out_min=0.0, out_max=1.0, tf=0.0,
                 anti_windup="clamp", kt=None, setpoint_rate=None):
        # Written as "not (x >= 0)" so that NaN is rejected too.
        if not _all(kp >= 0):
            raise ValueError(f"kp must be >= 0, got {kp!r}")
        if not _all(ki >= 0):
            raise ValueError(f"ki must be >= 0, got {ki!r}")
        if not _all(kd >= 0):
            raise ValueError(f"kd must be >= 0, got {kd!r}")
        if not _all(ts > 0):
            raise ValueError(f"ts (sample period) must be > 0, got {ts!r}")
        if not _all(tf >= 0):
            raise ValueError(f"tf (derivative filter time constant) must be >= 0, got {tf!r}")
        if not _all(out_min < out_max):
            raise ValueError(f"out_min must be < out_max, got out_min={out_min!r}, "
                             f"out_max={out_max!r}")
        if anti_windup not in _ANTI_WINDUP:
            raise ValueError(f"anti_windup must be 'clamp' or 'backcalc', got {anti_windup!r}")
        if setpoint_rate is not None and not _all(setpoint_rate > 0):
            raise ValueError(f"setpoint_rate must be > 0 (or None for steps), "
                             f"got {setpoint_rate!r}")
        if kt is None:
            den = kp + ki * ts
            kt = ki / (den + (den == 0))  # kp = ki = 0: kt = 0 instead of 0/0
        elif not (_all(kt >= 0) and _all(kt * ts <= 1.000001)):  # slack: kt = 1/ts rounds
            raise ValueError(f"kt must satisfy 0 <= kt <= 1/ts (stable, non-oscillating "
                             f"tracking), got kt={kt!r} with ts={ts!r}")

        self.kp = kp
        self.ki = ki
        self.kd = kd
        self.ts = ts
        self.tf = tf
        self.out_min = out_min
        self.out_max = out_max
        self.anti_windup = anti_windup
        self.kt = kt
        self.setpoint_rate = setpoint_rate

        self._backcalc = anti_windup == "backcalc"
        self._ki_ts = ki * ts
        self._kt_ts = kt * ts
        self._d_a = tf / (tf + ts)
        self._d_b = kd / (tf + ts)
        self._ramp_step = None if setpoint_rate is None else setpoint_rate * ts
        self.reset()

    def reset(self, output=None, measurement=None, setpoint=None):
        """Clear the state; optionally start bumplessly from ``output``.

        output: the output (duty) to continue from: ``integral = output - kp*(s0 - y0)``
            (``integral = output`` unless both ``measurement`` and ``setpoint`` are given).
        measurement: y0, the present measurement (also the derivative's previous sample).
        setpoint: s0, where the setpoint ramp starts (default: the first measurement).
        """
        self.derivative = 0.0
        self._integral_error = 0.0  # rounding error of the integral's sum, carried forward
        self._y_prev = measurement
        self.ramped_setpoint = setpoint
        self.saturated = False
        if output is None:
            self.integral = 0.0
            self.unclamped = None
            self.last_output = None
        else:
            integral = output
            if measurement is not None and setpoint is not None:
                integral = output - self.kp * (setpoint - measurement)
            self.integral = integral
            self.unclamped = output
            self.last_output = output

    def update(self, setpoint, measurement):
        """Advance one sample period: return the clamped output u_k (the next duty)."""
        y = measurement
        # Setpoint ramp.
        step = self._ramp_step
        s = self.ramped_setpoint
        if step is None:
            s = setpoint
        else:
            if s is None:
                s = y
            s = _clamp(setpoint, s - step, s + step)
        e = s - y
        # Filtered derivative on the measurement (backward difference).
        y_prev = self._y_prev
        if y_prev is None:
            y_prev = y
        d = self._d_a * self.derivative - self._d_b * (y - y_prev)
        # Output and saturation.
        lo = self.out_min
        hi = self.out_max
        i = self.integral
        v = self.kp * e + i + d
        u = _clamp(v, lo, hi)
        # Integral for the next sample (forward Euler) with anti-windup.
        di = self._ki_ts * e
        if self._backcalc:
            di = di + self._kt_ts * (u - v)
        else:
            # True/False (or a bool array); & and | rather than * and +, which cost numpy's
            # bool scalars (the board's float32 PID) ten times as much.
            frozen = (v > hi) & (e > 0) | (v < lo) & (e < 0)
            di = di - di * frozen
        # i + di + carried error, compensated (Kahan: what the rounded sum left out).
        di = di + self._integral_error
        total = i + di
        self._integral_error = di - (total - i)
        i = total
        self.integral = i
        self.derivative = d
        self._y_prev = y
        self.ramped_setpoint = s
        self.unclamped = v
        self.last_output = u
        self.saturated = u != v
        return u
