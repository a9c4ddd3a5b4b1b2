"""Independent reference simulator of the boost converter, built on ``scipy.integrate.solve_ivp``.

Used by the tests to cross-check the exact (matrix-exponential) engine, so it is written
directly from the circuit and shares nothing with boostsim except ``BoostParams``.

Circuit (one lane), state ``x = (iL, vC)``::

    vin --[L, r_L]--+--|>|-- (v_f, r_d) --+-- out --+-- r_C -- C (vC)
                    |                      |         +-- R
                switch (r_on)            (node)      +-- i_load (constant current)
                    |
                   GND

Output node (KCL with the current ``i_n`` delivered into it by the rectifier, ``iout`` taken
by the load and ``iC`` into the capacitor branch)::

    i_n = iC + iout,   iout = vout/R + i_load,   vout = vC + r_C iC

Eliminating ``iC`` and ``vout``: ``vout = vC + r_C (i_n - vout/R - i_load)``, so::

    vout = (vC + r_C (i_n - i_load)) / (1 + r_C/R),     iC = i_n - vout/R - i_load

with ``1/R = 0`` for ``R = inf``. The rectifier delivers ``i_n = iL`` when the diode (or the
synchronous switch) conducts during the off-time, else ``i_n = 0``.

Modes (trailing-edge PWM: switch on for ``[k Ts, k Ts + D Ts)``):

* ``on``    switch on:     L diL/dt = vin - iL (r_L + r_on);                       i_n = 0
* ``cond``  switch off, diode conducting:
                           L diL/dt = vin - iL (r_L + r_d) - v_f - vout(i_n=iL);   i_n = iL
            (synchronous: r_sync instead of r_d, v_f = 0, iL may be negative)
* ``off``   switch off, diode off (DCM, non-synchronous only): iL = 0 held;        i_n = 0

Diode turn-off: terminal event ``iL = 0`` (falling) in ``cond``. Re-conduction: terminal event
``vin - v_f - vout(i_n=0) = 0`` (rising) in ``off``. At ``iL = 0`` the diode conducts when
``vin - v_f - vout(i_n=0) > 0``.

Time is split at every PWM edge and every step time; each piece is integrated by its own
``solve_ivp`` call (DOP853, rtol 1e-12).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.integrate import solve_ivp

from boostsim.params import BoostParams

__all__ = ["simulate_ivp"]

RTOL = 1e-12
ATOL = 1e-14
#: Samples and step times closer than this fraction of Ts to a PWM edge count as on the edge.
EDGE_TOL = 1e-9
#: Guard against an endless diode on/off chatter inside one segment.
MAX_EVENTS_PER_SEGMENT = 10_000

#: Fields a step may change (state stays continuous; L, C, fsw and synchronous may not change).
STEP_FIELDS = ("vin", "R", "i_load", "r_L", "r_on", "v_f", "r_d", "r_C", "r_sync")


class _Circuit:
    """The circuit equations for one set of (scalar) parameter values."""

    def __init__(self, values: Mapping[str, Any]):
        self.vin = float(values["vin"])
        self.L = float(values["L"])
        self.C = float(values["C"])
        R = float(values["R"])
        self.G = 0.0 if math.isinf(R) else 1.0 / R
        self.r_L = float(values["r_L"])
        self.r_on = float(values["r_on"])
        self.r_C = float(values["r_C"])
        self.i_load = float(values["i_load"])
        self.sync = bool(values["synchronous"])
        if self.sync:
            self.r_x = float(values["r_sync"])
            self.v_f = 0.0
        else:
            self.r_x = float(values["r_d"])
            self.v_f = float(values["v_f"])
        self.den = 1.0 + self.r_C * self.G

    # -- output node ----------------------------------------------------------------------
    def vout(self, vc, i_n):
        """Output voltage for capacitor voltage vc and rectifier current i_n into the node."""
        return (vc + self.r_C * (i_n - self.i_load)) / self.den

    def ic(self, vc, i_n):
        """Capacitor branch current."""
        return i_n - self.G * self.vout(vc, i_n) - self.i_load

    def vout_mode(self, mode: str, il, vc):
        return self.vout(vc, il if mode == "cond" else 0.0)

    def forward_margin(self, vc) -> float:
        """``vin - v_f - vout`` with no rectifier current: > 0 means the diode would conduct."""
        return self.vin - self.v_f - self.vout(vc, 0.0)

    # -- right-hand sides -------------------------------------------------------------------
    def rhs(self, mode: str) -> Callable[[float, np.ndarray], np.ndarray]:
        vin, L, C = self.vin, self.L, self.C
        if mode == "on":
            r = self.r_L + self.r_on

            def f(t, x):
                il, vc = x
                return np.array([(vin - il * r) / L, self.ic(vc, 0.0) / C])
        elif mode == "cond":
            r = self.r_L + self.r_x
            v_f = self.v_f

            def f(t, x):
                il, vc = x
                return np.array([(vin - il * r - v_f - self.vout(vc, il)) / L,
                                 self.ic(vc, il) / C])
        elif mode == "off":

            def f(t, x):
                return np.array([0.0, self.ic(x[1], 0.0) / C])
        else:  # pragma: no cover
            raise ValueError(mode)
        return f

    def diode_decision(self, il: float, vc: float) -> str:
        """Rectifier state during the off-time, decided at the start of an interval."""
        if self.sync or il > 0.0:
            return "cond"
        margin = self.forward_margin(vc)
        scale = 1e-12 * (abs(self.vin) + abs(vc) + abs(self.v_f) + 1e-30)
        if margin > scale:
            return "cond"
        if margin < -scale:
            return "off"
        # Tangency (margin ~ 0): conduct if, with the diode off, vout would fall (margin rises).
        return "cond" if self.ic(vc, 0.0) < 0.0 else "off"


def _circuit_values(p: BoostParams) -> dict[str, Any]:
    if p.n_lanes != 1:
        raise ValueError(f"simulate_ivp simulates one converter; got {p.n_lanes} lanes "
                         f"(use p.lane(i))")
    return {k: v[0].item() for k, v in p.arrays().items()}


def _duty_function(duty: float | Callable[[int], float]) -> Callable[[int], float]:
    if callable(duty):
        def f(k: int) -> float:
            d = float(duty(k))
            if not 0.0 <= d <= 1.0:
                raise ValueError(f"duty({k}) = {d!r} is outside [0, 1]")
            return d
        return f
    d = float(duty)
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"duty = {d!r} is outside [0, 1]")
    return lambda k: d


def _segments(values, duty_of, Ts, t_end, steps, tol):
    """Yield ``(ta, tb, switch_on, circuit_values)`` pieces covering [0, t_end], then one
    zero-length probe piece at t_end describing the right-hand limit there."""
    step_i = 0
    current = dict(values)
    k = 0
    while True:
        d = duty_of(k)
        t0 = k * Ts
        t_off = t0 + d * Ts if d < 1.0 else (k + 1) * Ts
        t1 = (k + 1) * Ts
        for phase_start, phase_end, on in ((t0, t_off, True), (t_off, t1, False)):
            if not phase_end > phase_start:
                continue
            a = phase_start
            while True:
                while step_i < len(steps) and steps[step_i][0] <= a + tol:
                    current = {**current, **steps[step_i][1]}
                    step_i += 1
                if a >= t_end - tol:
                    yield a, a, on, current
                    return
                b = phase_end
                if step_i < len(steps) and steps[step_i][0] < phase_end - tol:
                    b = steps[step_i][0]
                if t_end < b - tol:
                    b = t_end
                yield a, b, on, current
                a = b
                if a >= phase_end:
                    break
        k += 1


def simulate_ivp(p: BoostParams, duty: float | Callable[[int], float], t_end: float,
                 t_eval: Sequence[float] | np.ndarray, x0: Sequence[float] = (0.0, 0.0),
                 steps: Sequence[tuple[float, Mapping[str, float]]] = ()) -> dict[str, Any]:
    """Simulate one converter from t = 0 to ``t_end`` [s] with ``solve_ivp`` (reference).

    Parameters
    ----------
    p : a single-lane :class:`BoostParams`.
    duty : duty cycle in [0, 1], or a callable ``duty(k)`` giving the duty of period k.
    t_end : end time [s].
    t_eval : sorted sample times in [0, t_end]. A sample on a switching instant or step time
        (within ``EDGE_TOL * Ts``) gets the right-hand limit.
    x0 : initial ``(iL [A], vC [V])`` at t = 0 (``iL >= 0`` unless synchronous).
    steps : ``(t_step, {"vin": .., "R": .., "i_load": ..})`` parameter changes at absolute
        times (any of :data:`STEP_FIELDS`); iL and vC stay continuous across a step.

    Returns
    -------
    dict with ``t``, ``il``, ``vc``, ``vout`` (arrays at ``t_eval``), ``diode_off_times``
    (times iL fell to zero and the diode turned off), ``diode_on_times`` (times the diode
    started conducting again after an off interval), ``x_end`` (state ``(iL, vC)`` at t_end).
    """
    values = _circuit_values(p)
    Ts = 1.0 / values["fsw"]
    tol = EDGE_TOL * Ts
    t_end = float(t_end)
    if not t_end > 0.0:
        raise ValueError(f"t_end must be > 0, got {t_end!r}")
    t_eval = np.array(t_eval, dtype=float).reshape(-1)
    if t_eval.size and (np.any(np.diff(t_eval) < 0.0) or t_eval[0] < -tol
                        or t_eval[-1] > t_end + tol):
        raise ValueError("t_eval must be sorted and lie within [0, t_end]")
    duty_of = _duty_function(duty)

    parsed_steps = []
    for t_step, change in steps:
        unknown = set(change) - set(STEP_FIELDS)
        if unknown:
            raise ValueError(f"steps may change only {STEP_FIELDS}; got {sorted(unknown)}")
        changed = p.replace(**change)  # validates the new values (SI strings accepted)
        parsed_steps.append((float(t_step), {
            k: float(np.asarray(getattr(changed, k)).reshape(-1)[0]) for k in change}))
    parsed_steps.sort(key=lambda s: s[0])

    x = np.array([float(x0[0]), float(x0[1])])
    if x[0] < 0.0 and not values["synchronous"]:
        raise ValueError("a non-synchronous converter cannot start with iL < 0")

    n = t_eval.size
    il_out = np.full(n, np.nan)
    vc_out = np.full(n, np.nan)
    vout_out = np.full(n, np.nan)
    off_times: list[float] = []
    on_times: list[float] = []
    i = 0  # next sample to fill
    prev_diode = None  # rectifier mode at the end of the previous off-time piece

    def fill(upto: float, a: float, b: float, sol, circuit: _Circuit, mode: str,
             xa: np.ndarray, inclusive: bool) -> None:
        """Fill samples with t < upto (or <= upto) from a piece [a, b] of mode ``mode``."""
        nonlocal i
        j = int(np.searchsorted(t_eval, upto, side="right" if inclusive else "left"))
        if j <= i:
            return
        ts = np.clip(t_eval[i:j], a, b)
        if sol is None or b <= a:
            xs = np.repeat(xa[:, None], j - i, axis=1)
        else:
            xs = sol(ts)
        if mode == "off":
            xs[0] = 0.0
        il_out[i:j] = xs[0]
        vc_out[i:j] = xs[1]
        vout_out[i:j] = circuit.vout_mode(mode, xs[0], xs[1])
        i = j

    for ta, tb, on, seg_values in _segments(values, duty_of, Ts, t_end, parsed_steps, tol):
        circuit = _Circuit(seg_values)
        if tb <= ta:  # probe at t_end: right-hand limit of the state machine there
            mode = "on" if on else circuit.diode_decision(x[0], x[1])
            fill(np.inf, ta, ta, None, circuit, mode, x, inclusive=True)
            break
        if on:
            prev_diode = None
            want = i < n and t_eval[i] < tb - tol
            res = solve_ivp(circuit.rhs("on"), (ta, tb), x, method="DOP853", rtol=RTOL,
                            atol=ATOL, dense_output=want)
            if res.status < 0:  # pragma: no cover
                raise RuntimeError(f"solve_ivp failed in [{ta}, {tb}]: {res.message}")
            fill(tb - tol, ta, tb, res.sol, circuit, "on", x, inclusive=False)
            x = res.y[:, -1].copy()
            continue

        a = ta
        n_events = 0
        while True:
            mode = circuit.diode_decision(x[0], x[1])
            if mode == "off":
                x[0] = 0.0
            if prev_diode == "off" and mode == "cond":
                on_times.append(a)  # re-conduction decided at a boundary (e.g. a line step)
            prev_diode = mode
            event = _event(circuit, mode, a)
            want = i < n and t_eval[i] < tb - tol
            res = solve_ivp(circuit.rhs(mode), (a, tb), x, method="DOP853", rtol=RTOL,
                            atol=ATOL, dense_output=want, events=event)
            if res.status < 0:  # pragma: no cover
                raise RuntimeError(f"solve_ivp failed in [{a}, {tb}]: {res.message}")
            if res.status != 1:  # reached tb
                fill(tb - tol, a, tb, res.sol, circuit, mode, x, inclusive=False)
                x = res.y[:, -1].copy()
                if mode == "off":
                    x[0] = 0.0
                break
            # terminal event: the diode turned off (cond) or starts conducting again (off)
            te = float(res.t_events[0][0])
            fill(te, a, te, res.sol, circuit, mode, x, inclusive=False)
            x = res.y_events[0][0].copy()
            if mode == "cond":
                x[0] = 0.0
                off_times.append(te)
            else:
                on_times.append(te)
                prev_diode = "cond"  # already recorded
            a = te
            n_events += 1
            if n_events > MAX_EVENTS_PER_SEGMENT:
                raise RuntimeError(f"diode chatter: more than {MAX_EVENTS_PER_SEGMENT} "
                                   f"events in [{ta}, {tb}]")
            if a >= tb:
                break

    return {
        "t": t_eval,
        "il": il_out,
        "vc": vc_out,
        "vout": vout_out,
        "diode_off_times": off_times,
        "diode_on_times": on_times,
        "x_end": (float(x[0]), float(x[1])),
    }


def _event(circuit: _Circuit, mode: str, t_start: float):
    """Terminal event for the piece starting at ``t_start`` (None when there is none).

    At ``t_start`` itself the function returns a value of the "before" sign so that a piece
    that starts exactly on the boundary (iL = 0, or zero forward margin) does not stop at once.
    """
    if circuit.sync:
        return None
    if mode == "cond":
        def turn_off(t, x):
            return 1.0 if t <= t_start else x[0]
        turn_off.terminal = True
        turn_off.direction = -1.0
        return turn_off
    if mode == "off":
        def reconduct(t, x):
            return -1.0 if t <= t_start else circuit.forward_margin(x[1])
        reconduct.terminal = True
        reconduct.direction = 1.0
        return reconduct
    return None
