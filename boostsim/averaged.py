"""The large-signal averaged model of the boost converter (CCM and DCM) and
:func:`simulate_averaged`. Its DC operating point and small-signal transfer functions are in
:mod:`boostsim.linearised`.

The switching engine (:mod:`boostsim.engine`) is exact; the models here trade the switching
ripple for speed and for transfer functions a controller can be designed with.

What "averaged" means here
--------------------------
The state is the *moving average over one switching period* of the inductor current and the
capacitor voltage, ``x(t) = (1/Ts) * integral_{t-Ts}^{t} x_switching``. So the value at
``t = (k+1) Ts`` is the exact mean of the switching waveform over period ``k`` -- what
:meth:`boostsim.simulation.SimulationResult.period_means` computes -- and the two can be compared
directly (Krein, Bentsman, Bass and Lesieutre [KBBL]). The moving average of the switching
function ``q(t)`` (1 while the switch is on) is not a staircase starting at the period start:
with trailing-edge modulation the on-time of period ``k`` is ``[k Ts, (k + d_k) Ts)``, so
its moving average changes from ``d_{k-1}`` to ``d_k`` around the PWM edge ``t = (k + d) Ts``.
The model integrates each period in two pieces, ``d_{k-1}`` up to ``(d_{k-1} + d_k) Ts / 2``
and ``d_k`` after it; that gives the exact period-average of the moving-averaged switching
function, ``d_k + (d_{k-1}^2 - d_k^2)/2``. In small-signal terms this is the trailing-edge
modulator delay ``e^{-s D Ts}`` of uniformly sampled PWM (Van de Sype et al. [VdS];
Corradini et al. [CMMZ]); leaving it out (the textbook staircase) makes the averaged model
lead the switching converter by ``D Ts``.

Large-signal model: full-order averaging valid in CCM and DCM (Sun et al. [SMGKB])
---------------------------------------------------------------------------------
Circuit quantities (per lane): ``g = 1/R`` (0 for an open load), ``a = 1/(1 + r_C g)``,
``r_x, v_x`` the diode's (or synchronous switch's) resistance and drop, and

* on-path resistance ``r_1 = r_L + r_on``;
* off-path resistance ``r_2 = r_L + r_x + a r_C`` (the ESR is in series with the output node
  while the diode feeds it: ``vout = a (vC + r_C (iL - i_load))``);
* off-interval inductor voltage at zero current ``V_0 = vin - v_x + a r_C i_load - a vC``.

With ``d_1`` the switch duty, ``d_2`` the diode conduction fraction and ``i_c`` the mean
inductor current *while it conducts* (Sun's correction matrix: in DCM the current flows only
during ``d_1 + d_2``, so ``i_c = iL / (d_1 + d_2)``)::

    L diL/dt = d_1 (vin - r_1 i_c) + d_2 (V_0 - r_2 i_c)
    C dvC/dt = a (d_2 i_c - i_load - g vC)
    vout     = a (vC + r_C (d_2 i_c - i_load))

and the duty-ratio constraint closes the model. The inductor current rises from zero for
``d_1 Ts`` to ``i_pk = vin d_1 Ts / L * phi1(-r_1 d_1 Ts / L)`` (the exact on-time ramp,
``phi1(z) = (e^z - 1)/z``) and falls back to zero in ``d_2 Ts``; with straight ramps its
period mean is ``iL = i_pk (d_1 + d_2) / 2``, hence ::

    d_2 = min(1 - d_1, 2 iL / i_pk - d_1)        ([SMGKB] eq. for d_2, with i_pk of this circuit)

* CCM (``d_2 = 1 - d_1``; always for ``synchronous`` lanes, whose current may reverse, and
  whenever ``V_0 >= 0``, i.e. the output is below the input so the current cannot fall to
  zero): the classic state-space average with conduction losses, ``i_c = iL``.
* DCM (``0 < d_2 < 1 - d_1``): ``i_c = i_pk / 2``; the inductor-current state stays in the
  model with a fast pole (near ``fsw``), which is Sun's "full-order" model: it reproduces the
  reduced-order DC and low-frequency results and the high-frequency pole.
* A current below one on-pulse's worth (``iL < d_1 i_pk / 2``, only transiently) gives
  ``d_2 = 0`` (nothing reaches the output yet).

``iL`` is kept >= 0 for diode lanes. The right-hand side is continuous across the CCM/DCM
boundary (only its Jacobian jumps).

Integration: one exponential (Rosenbrock-Euler) step per piece,
``x1 = x0 + h phi1(h J) f(x0)`` with ``J`` the Jacobian: exact for the CCM model (linear
within a piece) and second-order, L-stable for the DCM model (whose only nonlinearity is
``iL vC``), so the fast DCM pole needs no small steps. The 2x2 ``phi1`` is in closed form.
A period in which a lane crosses the CCM/DCM boundary (where the Jacobian jumps) is redone
for that lane in 16 sub-steps. Line and load steps act on the moving average half a period
after their instant (their moving average ramps over one period) and split the period there.

Speed: by default (``engine="auto"``) open loop, duty schedules and the built-in
:class:`~boostsim.control.DigitalController` run on a compiled loop (:mod:`boostsim.avgkernel`)
that compiles this module's single-lane integrator (:func:`_period_scalar`, the same model
functions on plain floats) from its text: ~0.2 us a period, 1 s (1e5 periods) under the PID in
~0.02-0.03 s on the default board. The numpy route (the reference, and the one any other
controller takes) steps every lane vectorised period by period (:class:`_Integrator`): one
step plus one controller call per period (1 s of one lane under the DigitalController in
~10 s). Tests hold the two routes to each other.

Controllers: :class:`AveragedView` follows the engine's :class:`boostsim.engine.PeriodView`,
but its ``sample(tau)`` returns the averages *centred* on ``tau`` -- the switching waveform
at ``tau`` without its ripple, which is what an ADC sees -- so a controller's loop timing is
the same on both models.

Accuracy against the switching engine (period means, tests/test_averaged.py): CCM within
0.01 % (vout) and 0.05 % (iL) through startup inrush, duty, load and line steps; lossy DCM
within 0.2 % and 0.4 %: Sun's model assumes straight current ramps, and the resistance in the
diode path (r_L + r_d + r_C) bends the fall, so the charge per period is over-estimated by
about ``r_2 i_pk / (6 (vout - vin))`` (exact for an ideal converter).

References
----------
[SMGKB] J. Sun, D. M. Mitchell, M. F. Greuel, P. T. Krein, R. M. Bass, "Averaged modeling of
        PWM converters operating in discontinuous conduction mode", IEEE Trans. Power
        Electronics 16(4), 482-492, 2001.
[KBBL]  P. T. Krein, J. Bentsman, R. M. Bass, B. C. Lesieutre, "On the use of averaging for
        the analysis of power electronic systems", IEEE Trans. Power Electronics 5(2),
        182-190, 1990.
[MC]    R. D. Middlebrook, S. Cuk, "A general unified approach to modelling switching-converter
        power stages", IEEE PESC 1976 (state-space averaging).
[EM]    R. W. Erickson, D. Maksimovic, *Fundamentals of Power Electronics*, 3rd ed., Springer
        2020, Ch. 3 (averaged models with losses), Ch. 7-8 (small-signal, boost Gvd).
[VdS]   D. M. Van de Sype, K. De Gusseme, F. M. L. L. De Belie, A. P. Van den Bossche,
        J. A. Melkebeek, "Small-signal Laplace-domain analysis of uniformly-sampled
        pulse-width modulators", IEEE PESC 2004.
[CMMZ]  L. Corradini, D. Maksimovic, P. Mattavelli, R. Zane, *Digital Control of
        High-Frequency Switched-Mode Power Converters*, Wiley-IEEE Press 2015 (DPWM delay).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from . import fastloop
from .analysis import LOSS_NAMES, SETTLED_TOLERANCE, Metrics
from .drive import check_duty, prepare_drive
from .engine import Step, _step_value
from .memory import check_memory
from .params import BoostParams
from .segments import phi1

__all__ = [
    "AveragedPeriods",
    "AveragedResult",
    "AveragedView",
    "simulate_averaged",
]

CCM, DCM, REST = 0, 1, 2  # REST: DCM with the current not yet reaching the output


# -- circuit constants ------------------------------------------------------------------------

class _Circuit:
    """Per-lane constants of the averaged model under given conditions (vin, R, i_load).

    Arrays have shape (n,) -- or (n, 1) after :meth:`column`, to broadcast against samples.
    """

    __slots__ = (
        "C",
        "L",
        "Ts",
        "_column",
        "a",
        "a_C",
        "a_L",
        "all_sync",
        "any_sync",
        "g",
        "g_aC",
        "i_load",
        "inv_L",
        "k_on",
        "r_1",
        "r_2",
        "r_12",
        "r_C",
        "sync",
        "v_off0",
        "vin",
        "vin_Ts_L",
    )

    def __init__(self, lanes: dict[str, np.ndarray], vin: np.ndarray, R: np.ndarray,
                 i_load: np.ndarray):
        sync = np.asarray(lanes["synchronous"], dtype=bool)
        R = np.asarray(R, dtype=float)
        with np.errstate(divide="ignore"):
            g = np.where(np.isinf(R), 0.0, 1.0 / R)
        r_C = np.asarray(lanes["r_C"], dtype=float)
        a = 1.0 / (1.0 + r_C * g)
        r_x = np.where(sync, lanes["r_sync"], lanes["r_d"])
        v_x = np.where(sync, 0.0, lanes["v_f"])
        self.L = np.asarray(lanes["L"], dtype=float)
        self.C = np.asarray(lanes["C"], dtype=float)
        self.Ts = 1.0 / np.asarray(lanes["fsw"], dtype=float)
        self.vin = np.asarray(vin, dtype=float)
        self.g, self.a, self.r_C = g, a, r_C
        self.i_load = np.asarray(i_load, dtype=float)
        self.r_1 = lanes["r_L"] + lanes["r_on"]
        self.r_2 = lanes["r_L"] + r_x + a * r_C
        self.v_off0 = self.vin - v_x + a * r_C * self.i_load
        self.k_on = self.r_1 / self.L
        self.inv_L = 1.0 / self.L
        self.a_L = a / self.L
        self.a_C = a / self.C
        self.g_aC = g * self.a_C
        self.r_12 = self.r_1 - self.r_2
        self.vin_Ts_L = self.vin * self.Ts / self.L  # i_pk <= vin_Ts_L * d
        self.sync = sync
        self.any_sync = bool(sync.any())
        self.all_sync = bool(sync.all())
        self._column = None

    @classmethod
    def gather(cls, circuits: Sequence[_Circuit], epoch: np.ndarray) -> _Circuit:
        """Lane i taken from ``circuits[epoch[i]]``."""
        first = int(epoch[0])
        if (epoch == first).all():
            return circuits[first]
        out = object.__new__(cls)
        lane = np.arange(epoch.size)
        for name in cls.__slots__:
            if name in ("any_sync", "all_sync", "_column"):
                continue
            stack = np.stack([getattr(c, name) for c in circuits])
            setattr(out, name, stack[epoch, lane])
        out.any_sync, out.all_sync = circuits[0].any_sync, circuits[0].all_sync
        out._column = None
        return out

    def column(self) -> _Circuit:
        """The same constants shaped (n, 1)."""
        if self._column is None:
            out = object.__new__(_Circuit)
            for name in self.__slots__:
                value = getattr(self, name)
                if isinstance(value, np.ndarray):
                    value = value[:, None]
                setattr(out, name, value)
            out._column = out
            self._column = out
        return self._column


def _ccm_linear(c: Any, d: Any) -> tuple:
    """The CCM averaged model at duty ``d`` as the linear system ``x' = J x + b``:
    (j11, j12, j21, j22, b1, b2). The one statement of continuous conduction, used by
    :class:`_Field` (the numpy route) and :func:`_field_scalar` (the compiled route); plain
    arithmetic, so lane arrays or floats."""
    dp = 1.0 - d
    r_eq = c.r_2 + d * c.r_12
    return (-r_eq * c.inv_L, -dp * c.a_L, dp * c.a_C, -c.g_aC,
            (d * c.vin + dp * c.v_off0) * c.inv_L, -c.a_C * c.i_load)


def _peak_current(c: Any, d: Any, phi: Any = phi1) -> Any:
    """``i_pk``: the inductor current after the on-time ``d Ts`` from zero (the exact ramp,
    ``vin d Ts / L * phi1(-r_1 d Ts / L)``). ``phi`` is ``phi1`` for arrays, a float version
    for the compiled route (the same function)."""
    tau = d * c.Ts
    return c.vin * tau * c.inv_L * phi(-c.k_on * tau)


def _dcm_terms(c: Any, i: Any, v: Any, d: Any, i_pk: Any, d2: Any) -> tuple:
    """DCM (``0 < d2 < 1 - d``, ``i_c = i_pk/2``): (f1, f2, j11, j12, j21, i_diode); ``j22``
    is the CCM one. Plain arithmetic: lane arrays or floats."""
    i_c = 0.5 * i_pk
    V1 = c.v_off0 - c.a * v - c.r_2 * i_c
    f1 = (d * (c.vin - c.r_1 * i_c) + d2 * V1) * c.inv_L
    f2 = c.a_C * (d2 * i_c - c.i_load) - c.g_aC * v
    return f1, f2, V1 / i_c * c.inv_L, -d2 * c.a_L, c.a_C, d2 * i_c


def _rest_terms(c: Any, i: Any, v: Any, d: Any) -> tuple:
    """DCM with ``d2 = 0`` (the current not yet reaching the output): only the on-ramp,
    ``f1 = (d vin - r_1 iL)/L``. (f1, f2, j11, j12, j21, i_diode) as :func:`_dcm_terms`."""
    return ((d * c.vin - c.r_1 * i) * c.inv_L, -c.a_C * c.i_load - c.g_aC * v,
            -c.r_1 * c.inv_L, 0.0, 0.0, 0.0)


def _output(c: Any, v: Any, i_diode: Any) -> Any:
    """The averaged output voltage ``a (vC + r_C (i_diode - i_load))``."""
    return c.a * (v + c.r_C * (i_diode - c.i_load))


def _surely_ccm(c: _Circuit, i: np.ndarray, v: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Lanes whose averaged state is certainly in CCM: synchronous, or the current cannot
    fall to zero (``V0 >= 0``), or ``2 iL > vin d Ts / L >= i_pk`` (see :class:`_Field`)."""
    return c.sync | (2.0 * i > c.vin_Ts_L * d) | (c.v_off0 - c.a * v >= 0)


class _Field:
    """The averaged right-hand side at one state and duty: derivatives, Jacobian, outputs."""

    __slots__ = ("d2", "f1", "f2", "i_diode", "j11", "j12", "j21", "j22", "mode", "vout")

    def __init__(self, c: _Circuit, i: np.ndarray, v: np.ndarray, d: np.ndarray):
        dp = 1.0 - d
        V0 = c.v_off0 - c.a * v
        # Continuous conduction (the classic state-space average with losses), linear.
        j11, j12, j21, j22, b1, b2 = _ccm_linear(c, d)
        f1 = j11 * i + j12 * v + b1
        f2 = j21 * i + j22 * v + b2
        i_diode = dp * i
        d2_out = dp
        mode = None
        # The duty-ratio constraint: d2 = 2 iL / i_pk - d1, the current resting at zero for the
        # rest of the period when d2 < 1 - d1 (and only if it can fall: V0 < 0).
        if not c.all_sync and not _surely_ccm(c, i, v, d).all():
            i_pk = _peak_current(c, d)
            safe_pk = np.where(i_pk > 0, i_pk, 1.0)
            with np.errstate(over="ignore"):  # a vanishing duty: d2 = inf, i.e. CCM
                d2 = np.where(i_pk > 0, 2.0 * i / safe_pk - d, np.where(i > 0, np.inf, 0.0))
            dcm = (d2 < dp) & (V0 < 0)
            if c.any_sync:
                dcm &= ~c.sync
            if dcm.any():
                rest = dcm & (d2 <= 0)
                d2 = np.clip(d2, 0.0, None)
                with np.errstate(over="ignore"):  # i_pk -> 0 only where rest replaces it
                    dcm_terms = _dcm_terms(c, i, v, d, safe_pk, d2)
                rest_terms = _rest_terms(c, i, v, d)
                df1, df2, dj11, dj12, dj21, di_diode = (
                    np.where(rest, r, t) for r, t in zip(rest_terms, dcm_terms, strict=True))
                f1 = np.where(dcm, df1, f1)
                f2 = np.where(dcm, df2, f2)
                j11 = np.where(dcm, dj11, j11)
                j12 = np.where(dcm, dj12, j12)
                j21 = np.where(dcm, dj21, j21)
                i_diode = np.where(dcm, di_diode, i_diode)
                d2_out = np.where(dcm, d2, dp)
                mode = np.where(dcm, np.where(rest, REST, DCM), CCM).astype(np.int8)
        shape = np.shape(f1)
        self.f1, self.f2 = f1, f2
        self.j11, self.j12 = j11, j12
        self.j21 = j21 if np.shape(j21) == shape else np.broadcast_to(j21, shape)
        self.j22 = j22
        self.i_diode = i_diode
        self.d2 = d2_out
        self.vout = _output(c, v, i_diode)
        self.mode = np.zeros(shape, dtype=np.int8) if mode is None else mode


# -- the 2x2 matrix function phi1 ---------------------------------------------------------------

# Below this size (|s| + |q|) phi1 is summed as a series: the closed form divides by det M,
# which is ~|M|^2, so at |M| = 1e-3 it still has ~1e-10 relative accuracy, and the 5-term
# series' truncation error there is |M|^5/6! ~ 1e-18.
_SMALL = 1e-3


def _taylor(s, q2):
    """(c0, c1) of phi1(M) = c0 I + c1 N from the series sum_k M^k/(k+1)!, k < 5, using
    M^k = v_k I + u_k N with v_{k+1} = s v_k + q2 u_k, u_{k+1} = v_k + s u_k."""
    v2, u2 = s * s + q2, 2.0 * s
    v3, u3 = s * v2 + q2 * u2, v2 + s * u2
    v4, u4 = s * v3 + q2 * u3, v3 + s * u3
    c0 = 1.0 + s / 2.0 + v2 / 6.0 + v3 / 24.0 + v4 / 120.0
    c1 = 0.5 + u2 / 6.0 + u3 / 24.0 + u4 / 120.0
    return c0, c1


def phi1_apply(m11, m12, m21, m22, w1, w2):
    """``phi1(M) @ w`` for stacks of 2x2 matrices ``M`` given by components (any broadcastable
    shapes), ``phi1(z) = (e^z - 1)/z``, so that ``x0 + phi1(hJ) (h f)`` is the exact solution
    of ``x' = J x + b`` after ``h`` from ``x0`` (with ``f = J x0 + b``).

    Closed form: with ``s = tr(M)/2``, ``N = M - s I`` (so ``N^2 = q^2 I``,
    ``q^2 = s^2 - det M``), ``phi1(M) = c0 I + c1 N`` where
    ``c1 = (1 + s e^s S - e^s C) / det M``, ``c0 = e^s S - s c1`` and ``C, S`` are
    ``cosh q, sinh(q)/q`` (``cos, sin`` for ``q^2 < 0``). Where that divides by a small
    determinant the divided difference over the eigenvalues is used (real eigenvalues, one
    near zero), and for tiny matrices (``|s| + |q| < 1e-3``) the Taylor series. Accurate to
    ~1e-10 relative for matrices without fast-growing modes (eigenvalue real parts <~ 1; the
    averaged model's Jacobians are stable: det >= 0, trace <= 0).
    """
    c0, c1, n11 = _phi1_coefficients(m11, m12, m21, m22)
    nw1 = n11 * w1 + m12 * w2
    nw2 = m21 * w1 - n11 * w2
    return c0 * w1 + c1 * nw1, c0 * w2 + c1 * nw2


def _phi1_coefficients(m11, m12, m21, m22):
    """(c0, c1, n11) with phi1(M) = c0 I + c1 N, N = [[n11, m12], [m21, -n11]] (see
    :func:`phi1_apply`)."""
    s = 0.5 * (m11 + m22)
    n11 = 0.5 * (m11 - m22)
    q2 = n11 * n11 + m12 * m21
    det = m11 * m22 - m12 * m21
    root = np.sqrt(np.abs(q2))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        real = q2 >= 0
        if real.all():
            ep = np.exp(s + root)
            e_s = ep * phi1(-2.0 * root)
            e_c = ep - root * e_s
        elif not real.any():  # underdamped everywhere (the usual CCM case): root > 0
            es = np.exp(s)
            e_c = es * np.cos(root)
            e_s = es * np.sin(root) / root
        else:
            ep = np.exp(np.where(real, s + root, s))
            ph = phi1(-2.0 * np.where(real, root, 0.0))
            e_s = np.where(real, ep * ph, ep * np.sinc(root / np.pi))
            e_c = np.where(real, ep - root * ep * ph, ep * np.cos(root))
        c1 = (1.0 + s * e_s - e_c) / det
        c0 = e_s - s * c1
        small = np.abs(s) + root < _SMALL
        fix_small = small.any()
        if real.any():
            singular = real & (np.abs(det) < 0.25 * s * s) & ~small
            fix_singular = singular.any()
        else:
            fix_singular = False
        if fix_small or fix_singular:
            c0, c1 = np.array(c0, dtype=float, copy=True), np.array(c1, dtype=float, copy=True)
            s_, q2_ = np.broadcast_to(s, c0.shape), np.broadcast_to(q2, c0.shape)
        if fix_singular:
            # Real eigenvalues s +- q, one near zero: Newton's divided-difference form.
            ss, rr = s_[singular], np.sqrt(q2_[singular])
            p_plus, p_minus = phi1(ss + rr), phi1(ss - rr)
            d1 = (p_plus - p_minus) / (2.0 * rr)
            c1[singular] = d1
            c0[singular] = p_minus + rr * d1
        if fix_small:
            c0[small], c1[small] = _taylor(s_[small], q2_[small])
    return c0, c1, n11


# -- conditions over time (line and load steps) ----------------------------------------------------

class _Conditions:
    """The circuit constants in each epoch between line/load steps.

    A step at ``t`` changes the switching circuit at once, but its moving average over one
    period ramps over ``[t, t + Ts]``; to first order (same integral) that is a step at
    ``t + Ts/2``, which is where the averaged model applies it (``times``, per lane).
    """

    def __init__(self, lanes: dict[str, np.ndarray], steps: Sequence[Step]):
        n = lanes["L"].size
        ordered = sorted(steps, key=lambda s: s.t)
        Ts = 1.0 / np.asarray(lanes["fsw"], dtype=float)
        self.times = np.array([s.t for s in ordered], dtype=float).reshape(-1, 1) \
            + 0.5 * Ts[None, :]
        vin, R, i_load = (np.asarray(lanes[k], dtype=float) for k in ("vin", "R", "i_load"))
        self.circuits = [_Circuit(lanes, vin, R, i_load)]
        for step in ordered:
            vin = _step_value(step, "vin", step.vin, vin, n)
            R = _step_value(step, "R", step.R, R, n)
            i_load = _step_value(step, "i_load", step.i_load, i_load, n)
            self.circuits.append(_Circuit(lanes, vin, R, i_load))

    def epoch(self, t: np.ndarray) -> np.ndarray:
        """Number of (shifted) steps at or before time t, per lane."""
        return (self.times <= t[None, :]).sum(axis=0)

    def circuit(self, epoch: np.ndarray) -> _Circuit:
        if len(self.circuits) == 1:
            return self.circuits[0]
        return _Circuit.gather(self.circuits, epoch)


# -- one switching period --------------------------------------------------------------------

class _Piece:
    """One piece of a period (constant duty and conditions) for every lane."""

    __slots__ = ("circuit", "duty", "end", "field", "i0", "start", "v0")

    def __init__(self, start, end, i0, v0, field, circuit, duty):
        self.start, self.end, self.i0, self.v0 = start, end, i0, v0
        self.field, self.circuit, self.duty = field, circuit, duty


def _step(field: _Field, i0, v0, h, c: _Circuit):
    """Exponential-Euler step of length ``h`` (per lane) from (i0, v0)."""
    di, dv = phi1_apply(field.j11 * h, field.j12 * h, field.j21 * h, field.j22 * h,
                        field.f1 * h, field.f2 * h)
    i1 = i0 + di
    if not c.all_sync:
        i1 = np.where(c.sync, i1, np.maximum(i1, 0.0)) if c.any_sync else np.maximum(i1, 0.0)
    return i1, v0 + dv


class _PeriodEnd(NamedTuple):
    """The state at the end of the last period, with its duty, circuit and field there."""

    i: np.ndarray
    v: np.ndarray
    d: np.ndarray
    circuit: _Circuit
    field: _Field


class _Integrator:
    """Advances every lane one switching period at a time."""

    def __init__(self, lanes: dict[str, np.ndarray], steps: Sequence[Step]):
        self.n = lanes["L"].size
        self.Ts = 1.0 / np.asarray(lanes["fsw"], dtype=float)
        self.conditions = _Conditions(lanes, steps)
        self.stepped = self.conditions.times.size > 0
        self.last: _PeriodEnd | None = None

    def field(self, c: _Circuit, i, v, d) -> _Field:
        last = self.last
        if (last is not None and last.circuit is c and last.i is i and last.v is v
                and (last.d is d or np.array_equal(last.d, d))):
            return last.field
        return _Field(c, i, v, d)

    def period(self, k: int, i, v, d_prev, d
               ) -> tuple[list[_Piece], np.ndarray, np.ndarray, _Field]:
        """Pieces of period k from state (i, v), the end state and the field there (duty d)."""
        Ts = self.Ts
        t0 = k * Ts
        breaks = []
        split = d != d_prev
        any_split = bool(split.any())
        if any_split:
            t_edge = np.where(split, 0.5 * (d_prev + d) * Ts, np.inf)
            breaks.append(t_edge)
        cond = self.conditions
        epoch0 = cond.epoch(t0) if self.stepped else None
        offsets = None
        if self.stepped:
            offsets = cond.times - t0[None, :]
            inside = (offsets > 0) & (offsets < Ts[None, :])
            if inside.any():
                offsets = np.where(inside, offsets, np.inf)
                breaks.extend(offsets)
            else:
                offsets = None
        pieces = []
        if any_split and offsets is None:
            # Two pieces: the previous duty up to the edge, the new one after it (lanes whose
            # duty did not change get an empty second piece).
            c = cond.circuit(epoch0) if self.stepped else cond.circuits[0]
            edge = np.minimum(t_edge, Ts)
            fld = self.field(c, i, v, d_prev)
            i_e, v_e = _step(fld, i, v, edge, c)
            pieces.append(_Piece(np.zeros(self.n), edge, i, v, fld, c, d_prev))
            fld2 = _Field(c, i_e, v_e, d)
            i1, v1 = _step(fld2, i_e, v_e, Ts - edge, c)
            pieces.append(_Piece(edge, Ts, i_e, v_e, fld2, c, d))
        elif not breaks:
            c = cond.circuit(epoch0) if self.stepped else cond.circuits[0]
            fld = self.field(c, i, v, d)
            zero = np.zeros(self.n)
            i1, v1 = _step(fld, i, v, Ts, c)
            pieces.append(_Piece(zero, Ts, i, v, fld, c, d))
        else:
            bounds = np.sort(np.minimum(np.stack(breaks), Ts[None, :]), axis=0)
            edges = [np.zeros(self.n), *bounds, Ts]
            i1, v1 = i, v
            for j in range(len(edges) - 1):
                start, end = edges[j], edges[j + 1]
                duty = np.where(start < t_edge, d_prev, d) if any_split else d
                if offsets is not None:
                    epoch = epoch0 + (offsets <= start[None, :]).sum(axis=0)
                    c = cond.circuit(epoch)
                else:
                    c = cond.circuit(epoch0) if self.stepped else cond.circuits[0]
                fld = self.field(c, i1, v1, duty) if j == 0 else _Field(c, i1, v1, duty)
                i0, v0 = i1, v1
                i1, v1 = _step(fld, i0, v0, end - start, c)
                pieces.append(_Piece(start, end, i0, v0, fld, c, duty))
        # The field at the period end: the output there (the mean over this period) and the
        # first field of the next period when neither the duty nor the conditions change.
        if self.stepped:
            c_end = cond.circuit(cond.epoch(t0 + Ts))
        else:
            c_end = cond.circuits[0]
        end_field = _Field(c_end, i1, v1, d)
        if not c_end.all_sync:
            # A lane that crossed the CCM/DCM boundary inside the period: its Jacobian jumps
            # there, so one exponential step would overshoot the boundary; integrate those
            # lanes again in sub-steps, each starting from its own field.
            changed = end_field.mode != pieces[0].field.mode
            for p in pieces[1:]:
                changed |= p.field.mode != pieces[0].field.mode
            if changed.any():
                idx = np.flatnonzero(changed)
                i1, v1 = i1.copy(), v1.copy()
                i1[idx], v1[idx] = _substeps(pieces, idx, _SUBSTEPS)
                end_field = _Field(c_end, i1, v1, d)
        self.last = _PeriodEnd(i1, v1, d, c_end, end_field)
        return pieces, i1, v1, end_field


_SUBSTEPS = 16


def _substeps(pieces: Sequence[_Piece], idx: np.ndarray, count: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """End state of lanes ``idx`` integrated through the pieces in ``count`` sub-steps each."""
    p0 = pieces[0]
    i, v = p0.i0[idx], p0.v0[idx]
    for p in pieces:
        c = _subset(p.circuit, idx)
        duty = np.broadcast_to(p.duty, p0.i0.shape)[idx]
        h = (p.end - p.start)[idx] / count
        if not (h > 0).any():
            continue
        for _ in range(count):
            i, v = _step(_Field(c, i, v, duty), i, v, h, c)
    return i, v


def _vout(c: _Circuit, i: np.ndarray, v: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The averaged output alone (``_Field(c, i, v, d).vout``), cheaper where every lane is
    surely in CCM."""
    if c.all_sync or _surely_ccm(c, i, v, d).all():
        return _ccm_vout(c, i, v, d)
    return _Field(c, i, v, d).vout


def _ccm_vout(c: _Circuit, i: np.ndarray, v: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The averaged output in CCM (the diode carries ``(1 - d) iL``)."""
    return _output(c, v, (1.0 - d) * i)


def _sample_pieces(pieces: Sequence[_Piece], tau: np.ndarray, d_prev: np.ndarray,
                   d: np.ndarray, Ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Averaged (il, vc, vout) at offsets ``tau`` (shape (n, m)) into a period."""
    # Moving average of the switching function at tau (exact for trailing-edge PWM).
    x = tau / Ts[:, None]
    duty_now = np.maximum(d_prev[:, None] - x, 0.0) + np.minimum(x, d[:, None])
    index = None
    if len(pieces) > 1:
        index = np.zeros(tau.shape, dtype=np.int64)
        for j, p in enumerate(pieces[1:], start=1):
            index[tau >= p.start[:, None]] = j
        first = index.flat[0]
        if (index == first).all():
            pieces, index = [pieces[first]], None
    if index is None:
        # Every sample in one piece: no masks.
        p = pieces[0]
        fl = p.field
        if tau.shape[1] == 1:
            h = tau[:, 0] - p.start
            di, dv = phi1_apply(fl.j11 * h, fl.j12 * h, fl.j21 * h, fl.j22 * h, fl.f1 * h,
                                fl.f2 * h)
            i_t, v_t = p.i0 + di, p.v0 + dv
            c = p.circuit
            if not c.all_sync:
                i_t = np.where(c.sync, i_t, np.maximum(i_t, 0.0))
            return i_t[:, None], v_t[:, None], _vout(c, i_t, v_t, duty_now[:, 0])[:, None]
        h = tau - p.start[:, None]
        j11, j12, j21, j22, f1, f2, i0, v0 = (np.asarray(q)[:, None] for q in (
            fl.j11, fl.j12, fl.j21, fl.j22, fl.f1, fl.f2, p.i0, p.v0))
        di, dv = phi1_apply(j11 * h, j12 * h, j21 * h, j22 * h, f1 * h, f2 * h)
        i_t, v_t = i0 + di, v0 + dv
        c = p.circuit.column()
        i_t = np.where(c.sync, i_t, np.maximum(i_t, 0.0))
        out = _Field(c, i_t, v_t, duty_now)
        return i_t, v_t, np.broadcast_to(out.vout, tau.shape).copy()
    il = np.empty(tau.shape)
    vc = np.empty(tau.shape)
    vout = np.empty(tau.shape)
    lanes = np.broadcast_to(np.arange(tau.shape[0])[:, None], tau.shape)
    for j, p in enumerate(pieces):
        mask = index == j
        if not mask.any():
            continue
        lane = lanes[mask]
        fl = p.field
        h = tau[mask] - p.start[lane]
        j11, j12, j21, j22, f1, f2, i0, v0 = (np.broadcast_to(q, p.start.shape)[lane] for q in (
            fl.j11, fl.j12, fl.j21, fl.j22, fl.f1, fl.f2, p.i0, p.v0))
        di, dv = phi1_apply(j11 * h, j12 * h, j21 * h, j22 * h, f1 * h, f2 * h)
        i_t, v_t = i0 + di, v0 + dv
        sub = _subset(p.circuit, lane)
        i_t = np.where(sub.sync, i_t, np.maximum(i_t, 0.0))
        out = _Field(sub, i_t, v_t, duty_now[mask])
        il[mask], vc[mask], vout[mask] = i_t, v_t, out.vout
    return il, vc, vout


def _subset(c: _Circuit, lane: np.ndarray) -> _Circuit:
    out = object.__new__(_Circuit)
    for name in _Circuit.__slots__:
        value = getattr(c, name)
        if isinstance(value, np.ndarray):
            value = value[lane]
        setattr(out, name, value)
    out._column = None
    return out


# -- results ------------------------------------------------------------------------------------

class AveragedView:
    """What a controller sees of the period that just ended (same protocol as the engine's
    :class:`boostsim.engine.PeriodView`): ``k``, ``t_start``, ``duty``, ``il_end``, ``vc_end``
    and :meth:`sample`, all of the averaged model's state."""

    def __init__(self, k: int, t_start: np.ndarray, duty: np.ndarray, d_prev: np.ndarray,
                 pieces: list[_Piece], il_end: np.ndarray, vc_end: np.ndarray, Ts: np.ndarray):
        self.k = k
        self.t_start = t_start
        self.duty = duty
        self._d_prev = d_prev
        self._pieces = pieces
        self._Ts = Ts
        self.il_end = il_end
        self.vc_end = vc_end

    def sample(self, tau: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(il, vc, vout) at offset ``tau`` [s] (scalar or per lane) into the period: the
        averages over the switching period *centred* on ``tau`` -- the switching waveforms
        at ``tau`` without their ripple, which is what an ADC sample sees (the trailing
        average would lag it by half a period and add that delay to a control loop). Past
        the period end the model is continued with the period's duty."""
        n = self.il_end.size
        tau = np.broadcast_to(np.asarray(tau, dtype=float), (n,))[:, None]
        il, vc, vout = _sample_pieces(self._pieces, tau + 0.5 * self._Ts[:, None],
                                      self._d_prev, self.duty, self._Ts)
        return il[:, 0], vc[:, 0], vout[:, 0]


@dataclasses.dataclass
class AveragedPeriods:
    """Per-period records of :func:`simulate_averaged`, arrays of shape (lanes, periods).

    ``il_mean``, ``vc_mean``, ``vout_mean`` are the model's values at the period end, i.e. its
    prediction of the switching waveforms' means over the period (compare with
    :meth:`boostsim.simulation.SimulationResult.period_means`). ``d2`` is the diode conduction
    fraction, ``mode_code`` 0 (CCM), 1 (DCM) or 2 (DCM, the current not yet reaching the
    output), at the period end.
    """

    t_start: np.ndarray
    duty: np.ndarray
    il_start: np.ndarray
    vc_start: np.ndarray
    il_mean: np.ndarray
    vc_mean: np.ndarray
    vout_mean: np.ndarray
    d2: np.ndarray
    mode_code: np.ndarray

    @property
    def mode(self) -> np.ndarray:
        """"CCM" or "DCM" per period."""
        return np.where(self.mode_code == CCM, "CCM", "DCM")


@dataclasses.dataclass
class AveragedResult:
    """Waveforms and per-period records of :func:`simulate_averaged`.

    ``t`` has shape (n_t,); ``il``, ``vc``, ``vout`` (the moving averages over one switching
    period, see the module docstring) have shape (lanes, n_t), or (n_t,) for scalar inputs;
    ``duty`` is the duty of each period, shape (lanes, periods) or (periods,).
    """

    params: BoostParams
    t: np.ndarray
    il: np.ndarray
    vc: np.ndarray
    vout: np.ndarray
    duty: np.ndarray
    periods: AveragedPeriods
    il_end: Any
    vc_end: Any
    scalar: bool
    steps: tuple[Step, ...] = ()
    _lanes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    #: The duty of the period before t = 0 (``duty0``; None: the first period's).
    _duty0: Any = dataclasses.field(default=None, repr=False)

    @property
    def n_lanes(self) -> int:
        return self.periods.duty.shape[0]

    def period_means(self) -> dict[str, np.ndarray]:
        """The model's per-period means, keyed like
        :meth:`boostsim.simulation.SimulationResult.period_means` (``t_start``, ``il``, ``vc``,
        ``vout``), so the two can be compared directly."""
        rec = self.periods
        out = {"t_start": rec.t_start, "il": rec.il_mean, "vc": rec.vc_mean,
               "vout": rec.vout_mean}
        return {k: v[0] if self.scalar else v for k, v in out.items()}

    def _window_powers(self, first: int) -> tuple[np.ndarray, ...] | None:
        """(pin [W], pout [W], iL [A], vout [V]) averaged over periods ``first``.. to the end,
        integrated over time.

        The period-end records are the model's state at the period ends, which is the period's
        mean only while the state changes slowly: in a fast transient (a CCM -> DCM drop)
        their average misses the input power and the energy balance reads above 100 %. So
        the window is run again from its recorded start (state, duties, conditions: the same
        trajectory) on a grid of 64 samples per period, and iL, vout, vin*iL and
        vout*(vout/R + i_load) are integrated (trapezoids), consistent with the stored-energy
        change between the window ends. None when the lanes' periods differ (no common
        window)."""
        rec, lanes = self.periods, self._lanes
        fsw = np.asarray(lanes["fsw"], dtype=float)
        if not np.all(fsw == fsw.flat[0]):
            return None
        Ts = 1.0 / float(fsw.flat[0])
        n, periods = rec.duty.shape
        t0 = first * Ts
        changes: dict[str, Any] = {}
        later = []
        for step in self.steps:
            if step.t <= t0 * (1 + 1e-12):
                changes.update({k: getattr(step, k) for k in ("vin", "R", "i_load")
                                if getattr(step, k) is not None})
            else:
                later.append(dataclasses.replace(step, t=step.t - t0))
        params = BoostParams(**{k: (np.broadcast_to(v, (n,)).copy() if np.ndim(v) else v)
                                for k, v in {**lanes, **changes}.items()
                                if k in self.params.to_dict()})
        duty0 = rec.duty[:, first - 1] if first > 0 else self._duty0
        replay = simulate_averaged(params, rec.duty[:, first:].T, t_end=(periods - first) * Ts,
                                   dt=Ts / 64, x0=np.stack([rec.il_start[:, first],
                                                            rec.vc_start[:, first]], axis=1),
                                   duty0=duty0, steps=later, engine="numpy")
        t = replay.t
        span = t[-1] - t[0]
        vout = np.atleast_2d(replay.vout)
        il = np.atleast_2d(replay.il)
        conditions = _Conditions(replay._lanes, replay.steps)
        # The conditions (vin, R, i_load) in force at each sample (one set without steps).
        times = t if later else t[:1]
        vin, g, i_load = (np.empty((n, times.size)) for _ in range(3))
        for j, tj in enumerate(times):
            c = conditions.circuit(conditions.epoch(np.full(n, tj)))
            vin[:, j], g[:, j], i_load[:, j] = c.vin, c.g, c.i_load

        def mean(values: np.ndarray) -> np.ndarray:
            return np.trapezoid(values, t, axis=1) / span

        return (mean(vin * il), mean(vout * (vout * g + i_load)), mean(il), mean(vout))

    def metrics(self, last_periods: int = 20) -> Metrics:
        """Averages over the last ``last_periods`` periods, as the same
        :class:`boostsim.analysis.Metrics` :meth:`boostsim.simulation.SimulationResult.metrics`
        returns (per lane; floats for scalar inputs).

        Means and powers are time averages of the averaged waveforms over the window (the
        window replayed on a fine grid: the period-end records alone are not the period means
        in a fast transient): ``il_mean``, ``vout_mean``, ``pin = vin iL``, ``pout = vout^2/R
        + vout i_load`` [W]; ``stored_power`` the change of ``L iL^2/2 + C vC^2/2`` between
        the window's ends over its length (so the balance closes: efficiency <= 1),
        ``p_loss = pin - pout - stored_power`` and ``efficiency = pout / (pin -
        stored_power)`` with ``settled`` as in :class:`boostsim.analysis.Metrics`; ``t_on``,
        ``t_diode``, ``t_idle`` [s] are the duty, the diode conduction fraction ``d2`` and the
        rest of the period times ``Ts``. What the averaged model does not resolve -- the
        switching ripple (``*_ripple``, ``*_min``, ``*_max``, ``il_rms``), the loss breakdown,
        the switching loss and the energy balance -- is NaN."""
        rec = self.periods
        n_periods = rec.duty.shape[1]
        if not 1 <= last_periods <= n_periods:
            raise ValueError(f"last_periods must be between 1 and {n_periods}, got "
                             f"{last_periods}")
        window = slice(n_periods - last_periods, n_periods)
        vout = rec.vout_mean[:, window].mean(axis=1)
        il = rec.il_mean[:, window].mean(axis=1)
        conditions = _Conditions(self._lanes, self.steps)
        Ts = 1.0 / np.asarray(self._lanes["fsw"], dtype=float)
        first = n_periods - last_periods
        powers = self._window_powers(first)
        if powers is not None:
            pin, pout, il, vout = powers
        else:  # lanes of different periods: the period-end values (exact when settled)
            c = conditions.circuit(conditions.epoch(rec.t_start[:, -1] + Ts))
            pin = c.vin * il
            pout = vout * (vout * c.g + c.i_load)
        L, C = self._lanes["L"], self._lanes["C"]
        energy_change = (0.5 * L * (rec.il_mean[:, -1] ** 2 - rec.il_start[:, first] ** 2)
                         + 0.5 * C * (rec.vc_mean[:, -1] ** 2 - rec.vc_start[:, first] ** 2))
        stored = energy_change / (rec.t_start[:, -1] + Ts - rec.t_start[:, first])
        with np.errstate(invalid="ignore", divide="ignore"):
            efficiency = pout / (pin - stored)
        settled = np.abs(stored) <= SETTLED_TOLERANCE * np.abs(pin - stored)
        codes = rec.mode_code[:, window]
        duty = rec.duty[:, window].mean(axis=1)
        d2 = rec.d2[:, window].mean(axis=1)
        idle = np.where(codes == CCM, 0.0, 1.0 - rec.duty[:, window] - rec.d2[:, window]
                        ).mean(axis=1)
        nan = np.full(vout.shape, np.nan)
        values = dict(vout_mean=vout, vout_ripple=nan, vout_min=nan, vout_max=nan,
                      vc_mean=rec.vc_mean[:, window].mean(axis=1), il_mean=il, il_ripple=nan,
                      il_min=nan, il_max=nan, il_rms=nan, pin=pin, pout=pout,
                      efficiency=efficiency, p_loss=pin - pout - stored, p_switching=nan,
                      efficiency_total=nan, energy_balance=nan, duty=duty, t_on=duty * Ts,
                      t_diode=d2 * Ts, t_idle=idle * Ts, stored_power=stored, settled=settled,
                      mode=np.where((codes != CCM).any(axis=1), "DCM", "CCM"))
        losses = {name: nan for name in LOSS_NAMES}
        if self.scalar:
            values = {k: np.asarray(v)[0].item() for k, v in values.items()}
            losses = {k: math.nan for k in losses}
        return Metrics(losses=losses, **values)


# -- simulation ---------------------------------------------------------------------------------

def simulate_averaged(params: BoostParams, duty: Any = None, t_end: float | None = None,
                      dt: float | None = None, *, x0: Any = None, controller: Any = None,
                      vref: Any = None, steps: Sequence[Step] = (), duty0: Any = None,
                      progress: bool = False, engine: str = "auto") -> AveragedResult:
    """Simulate the large-signal averaged model (CCM and DCM) from t = 0 to ``t_end`` [s].

    Same inputs as :func:`boostsim.simulate`, so the two can be swapped: ``duty`` (scalar,
    per lane, or a 2-D (periods, lanes) schedule) or a ``controller(k, t_start, view)`` called
    once per switching period with an :class:`AveragedView` of the previous period (its
    ``sample(tau)`` returns the averaged (il, vc, vout)); a controller with
    ``start(lanes, vref)`` (e.g. :class:`boostsim.control.DigitalController`) is started
    first. ``x0`` = (il, vc) is the initial averaged state (the means over the period before
    t = 0; default zero); ``steps`` are line/load steps.

    ``duty0`` is the duty of the period before t = 0 (default: the first period's duty, i.e.
    ``x0`` is taken to be consistent with it). It matters for the first period only: the
    moving average of the switching function moves from ``duty0`` to the first duty at the
    PWM edge. For a start from a non-switching state (zero, or ``steady_state(p, 0)``) pass
    ``duty0=0``.

    ``dt`` is the output grid step (default: one switching period of the fastest lane). The
    waveforms are moving averages over one switching period; ``periods`` holds the per-period
    records (the model's period means at each period end). The numpy route steps all lanes
    vectorised, period by period.

    ``engine``: "auto" runs open loop, duty schedules and ``DigitalController`` with
    ``boostsim.pid.PID`` on the compiled loop (:mod:`boostsim.avgkernel`: the same integrator
    compiled, the same results to rounding) and any other controller on the numpy route;
    "numpy" forces the numpy route (the reference), "compiled" insists on the compiled loop
    (as :func:`boostsim.simulate`).
    """
    compiled = fastloop.use_compiled(engine, controller)
    drive = prepare_drive(params, duty, t_end, dt, x0=x0, controller=controller, vref=vref,
                          steps=steps, default_dt_periods=1.0)
    lanes, n, scalar, Ts, dt = drive.lanes, drive.n, drive.scalar, drive.Ts, drive.dt
    n_periods, n_t = drive.n_periods, drive.n_t
    check_memory(averaged_bytes(n, n_periods, n_t, controller=controller is not None),
                 "simulate_averaged",
                 f"it records {n_periods} periods and {n_t} samples for each of {n} lane(s); "
                 f"shorten t_end, use a coarser dt or simulate fewer lanes per call")
    duty_source: Any = drive.schedule if drive.schedule is not None else drive.constant
    il, vc = drive.il0, drive.vc0
    if not np.all(lanes["synchronous"] | (il >= 0)):
        raise ValueError("x0: the inductor current of a diode converter cannot be negative")
    d_prev = None
    if duty0 is not None:
        d_prev = check_duty(np.broadcast_to(np.asarray(duty0, dtype=float), (n,)).astype(float),
                             "duty0")
    d_first = d_prev
    grid = _Grid(n, n_t, dt, Ts)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_periods, desc="simulate_averaged", unit="period", leave=False)
    try:
        if compiled:
            from .avgloop import run

            rec = run(drive, steps, d_prev, grid, controller)
            if bar is not None:
                bar.update(n_periods)
        else:
            rec = _run_vector(lanes, steps, n_periods, il, vc, d_prev, duty_source, controller,
                              grid, bar)
    finally:
        if bar is not None:
            bar.close()
    if grid.stride:
        grid.from_records(rec)
    k_index = np.arange(n_periods)
    periods = AveragedPeriods(t_start=Ts[:, None] * k_index[None, :], duty=rec.duty.T,
                              il_start=rec.il_start.T, vc_start=rec.vc_start.T,
                              il_mean=rec.il_mean.T, vc_mean=rec.vc_mean.T,
                              vout_mean=rec.vout_mean.T, d2=rec.d2.T, mode_code=rec.mode.T)
    squeeze = (lambda a: a[0]) if scalar else (lambda a: a)
    il_end, vc_end = rec.il_mean[-1], rec.vc_mean[-1]
    return AveragedResult(params=params, t=grid.t, il=squeeze(grid.il), vc=squeeze(grid.vc),
                          vout=squeeze(grid.vout), duty=squeeze(periods.duty), periods=periods,
                          il_end=float(il_end[0]) if scalar else il_end,
                          vc_end=float(vc_end[0]) if scalar else vc_end, scalar=scalar,
                          steps=tuple(steps), _lanes=lanes, _duty0=d_first)


def averaged_bytes(n_lanes: int, n_periods: int, n_t: int, *, controller: bool = False
                   ) -> float:
    """Memory [bytes] :func:`simulate_averaged` needs at most, by either route: the
    per-period records (8 float64 rows of lanes x periods, and the int8 mode), the grid's
    copies of three of them when the output grid is taken from the records, the output
    waveforms (iL, vC, vout: lanes x samples, twice on the compiled route's own grid, and the
    time axis), a controller's per-period log (6 float64 rows) and 1 MiB of working space
    (a period's pieces, temporaries)."""
    records = (8 * 8 + 1 + 3 * 8 + (6 * 8 if controller else 0)) * n_lanes * n_periods
    waveforms = 2 * 3 * 8 * n_lanes * n_t + 8 * n_t
    return records + waveforms + (1 << 20)


class _Records:
    """Per-period records, shape (periods, lanes), and the output at t = 0."""

    def __init__(self, n_periods: int, n: int):
        for name in ("duty", "il_start", "vc_start", "il_mean", "vc_mean", "vout_mean", "d2"):
            setattr(self, name, np.empty((n_periods, n)))
        self.mode = np.empty((n_periods, n), dtype=np.int8)
        self.vout0 = np.empty(n)


def _controller_duty(controller, k: int, t0, view, n: int) -> np.ndarray:
    return check_duty(np.broadcast_to(np.asarray(controller(k, t0, view), dtype=float),
                                       (n,)).astype(float), f"controller duty (period {k})")


def _run_vector(lanes, steps, n_periods, il, vc, d_prev, duty_source, controller, grid,
                bar) -> _Records:
    n = il.size
    Ts = 1.0 / lanes["fsw"]
    integrator = _Integrator(lanes, steps)
    rec = _Records(n_periods, n)
    view = None
    for k in range(n_periods):
        t0 = k * Ts
        if controller is not None:
            d = _controller_duty(controller, k, t0, view, n)
        elif duty_source.ndim == 2:
            d = duty_source[k]
        else:
            d = duty_source
        if d_prev is None:
            d_prev = d
        pieces, il1, vc1, end_field = integrator.period(k, il, vc, d_prev, d)
        if k == 0:
            rec.vout0[:] = pieces[0].field.vout
        rec.duty[k], rec.il_start[k], rec.vc_start[k] = d, il, vc
        rec.il_mean[k], rec.vc_mean[k], rec.vout_mean[k] = il1, vc1, end_field.vout
        rec.d2[k], rec.mode[k] = end_field.d2, end_field.mode
        if not grid.stride:
            grid.record(k, t0, pieces, d_prev, d, final=k == n_periods - 1)
        if controller is not None:
            # The period continued with its own duty, for samples centred near its end.
            c_end = integrator.last.circuit
            tail = _Piece(Ts, np.full(n, np.inf), il1, vc1, end_field, c_end, d)
            view = AveragedView(k, t0, d, d_prev, [*pieces, tail], il1, vc1, Ts)
        il, vc, d_prev = il1, vc1, d
        if bar is not None:
            bar.update(1)
    return rec


class _Grid:
    """Output-grid samples. With a common period and ``dt`` a whole number of periods
    (``stride``), the samples are period-boundary states taken from the records; otherwise
    they are evaluated inside each period as it is simulated."""

    def __init__(self, n: int, n_t: int, dt: float, Ts: np.ndarray):
        self.n, self.n_t, self.dt, self.Ts = n, n_t, dt, Ts
        self.t = np.arange(n_t) * dt
        self.il = np.empty((n, n_t))
        self.vc = np.empty((n, n_t))
        self.vout = np.empty((n, n_t))
        common = float(Ts[0]) if (Ts == Ts[0]).all() else None
        self.stride = 0
        if common is not None:
            ratio = dt / common
            if ratio >= 1 - 1e-9 and abs(ratio - round(ratio)) <= 1e-9 * ratio:
                self.stride = round(ratio)

    def from_records(self, rec: _Records) -> None:
        """Fill a period-boundary grid: the state at t = k Ts is the mean over period k-1."""
        il = np.concatenate([rec.il_start[:1], rec.il_mean])
        vc = np.concatenate([rec.vc_start[:1], rec.vc_mean])
        vout = np.concatenate([rec.vout0[None, :], rec.vout_mean])
        rows = np.arange(self.n_t) * self.stride
        self.il[:], self.vc[:], self.vout[:] = il[rows].T, vc[rows].T, vout[rows].T

    def record(self, k: int, t0: np.ndarray, pieces, d_prev, d, final: bool) -> None:
        dt, n_t, Ts = self.dt, self.n_t, self.Ts
        first = np.ceil(t0 / dt - 1e-9).astype(np.int64)
        end = np.floor((t0 + Ts) / dt + 1e-9) + 1 if final else np.ceil((t0 + Ts) / dt - 1e-9)
        last = np.minimum(end.astype(np.int64), n_t)
        m = int((last - first).max(initial=0))
        if m <= 0:
            return
        j = first[:, None] + np.arange(m)[None, :]
        valid = j < last[:, None]
        tau = np.minimum(np.where(valid, j, first[:, None]) * dt - t0[:, None], Ts[:, None])
        il, vc, vout = _sample_pieces(pieces, tau, d_prev, d, Ts)
        r = np.broadcast_to(np.arange(self.n)[:, None], j.shape)[valid]
        jj = j[valid]
        self.il[r, jj], self.vc[r, jj], self.vout[r, jj] = il[valid], vc[valid], vout[valid]


# -- the compiled route's integrator: the same model on plain floats -----------------------------
# Written in the part of Python that numba compiles: boostsim.avgkernel compiles these very
# functions (the numpy route is the vectorised reference above; tests check the two agree).
# Pieces of a period live in a flat buffer (an array), _PW numbers a piece: start, end [s from
# the period start], i0 [A], v0 [V], duty, epoch.

_P_START, _P_END, _P_I0, _P_V0, _P_DUTY, _P_EPOCH = range(6)
_PW = 6


class _ScalarCircuit(NamedTuple):
    """One lane of a :class:`_Circuit` as floats (the same constants, so the same model
    functions evaluate on either)."""

    C: float
    L: float
    Ts: float
    a: float
    a_C: float
    a_L: float
    g: float
    g_aC: float
    i_load: float
    inv_L: float
    k_on: float
    r_1: float
    r_2: float
    r_12: float
    r_C: float
    sync: bool
    v_off0: float
    vin: float
    vin_Ts_L: float

    @classmethod
    def of(cls, c: _Circuit, lane: int = 0) -> _ScalarCircuit:
        """Lane ``lane`` of ``c``."""
        return cls(*(bool(getattr(c, name)[lane]) if name == "sync"
                     else float(getattr(c, name)[lane]) for name in cls._fields))


def _phi1_scalar(z: float) -> float:
    return math.expm1(z) / z if z != 0.0 else 1.0


class _ScalarField(NamedTuple):
    """:class:`_Field` of one lane, as floats."""

    f1: float
    f2: float
    j11: float
    j12: float
    j21: float
    j22: float
    vout: float
    mode: int
    d2: float


def _field_scalar(c: _ScalarCircuit, i: float, v: float, d: float) -> _ScalarField:
    """:class:`_Field` for one lane: the same model functions (:func:`_ccm_linear`,
    :func:`_dcm_terms`, :func:`_rest_terms`, :func:`_output`) and the same mode decision,
    with ``if`` where the lane arrays use masks."""
    dp = 1.0 - d
    mode = CCM
    i_pk = 0.0
    d2 = dp
    # Not surely CCM (as _surely_ccm): the current may fall to zero within the period.
    if not c.sync and c.v_off0 - c.a * v < 0.0 and not 2.0 * i > c.vin_Ts_L * d:
        i_pk = _peak_current(c, d, _phi1_scalar)
        if i_pk > 0.0:
            d2 = 2.0 * i / i_pk - d
        else:
            d2 = math.inf if i > 0.0 else 0.0
        if d2 < dp:
            mode = REST if d2 <= 0.0 else DCM
    j11, j12, j21, j22, b1, b2 = _ccm_linear(c, d)
    if mode == CCM:
        f1, f2 = j11 * i + j12 * v + b1, j21 * i + j22 * v + b2
        d2, i_diode = dp, dp * i
    elif mode == DCM:
        f1, f2, j11, j12, j21, i_diode = _dcm_terms(c, i, v, d, i_pk, d2)
    else:
        f1, f2, j11, j12, j21, i_diode = _rest_terms(c, i, v, d)
        d2 = 0.0
    return _ScalarField(f1, f2, j11, j12, j21, j22, _output(c, v, i_diode), mode, d2)


def _phi1_apply_scalar(m11: float, m12: float, m21: float, m22: float, w1: float, w2: float
                       ) -> tuple[float, float]:
    """:func:`phi1_apply` for one matrix (same formulas and regimes)."""
    c0, c1, n11 = _phi1_coefficients_scalar(m11, m12, m21, m22)
    return (c0 * w1 + c1 * (n11 * w1 + m12 * w2), c0 * w2 + c1 * (m21 * w1 - n11 * w2))


def _phi1_coefficients_scalar(m11: float, m12: float, m21: float, m22: float
                              ) -> tuple[float, float, float]:
    """:func:`_phi1_coefficients` for one matrix: (c0, c1, n11)."""
    s = 0.5 * (m11 + m22)
    n11 = 0.5 * (m11 - m22)
    q2 = n11 * n11 + m12 * m21
    det = m11 * m22 - m12 * m21
    root = math.sqrt(abs(q2))
    if abs(s) + root < _SMALL:
        c0, c1 = _taylor(s, q2)
    elif q2 >= 0.0 and abs(det) < 0.25 * s * s:
        p_plus, p_minus = _phi1_scalar(s + root), _phi1_scalar(s - root)
        c1 = (p_plus - p_minus) / (2.0 * root)
        c0 = p_minus + root * c1
    else:
        if q2 >= 0.0:
            ep = math.exp(s + root)
            e_s = ep * _phi1_scalar(-2.0 * root)
            e_c = ep - root * e_s
        else:
            es = math.exp(s)
            e_c = es * math.cos(root)
            e_s = es * math.sin(root) / root
        c1 = (1.0 + s * e_s - e_c) / det
        c0 = e_s - s * c1
    return c0, c1, n11


# A compiled run keeps the phi1 coefficients of continuous-conduction steps, whose Jacobian
# depends on the circuit and the duty alone, in a small direct-mapped table per lane, keyed by
# (duty, h, epoch): under a PID the quantised duties and the piece lengths repeat. The numbers
# are the same either way; the interpreted route keeps none (table None).
_STEP_SLOTS = 64
_T_DUTY, _T_H, _T_EPOCH, _T_C0, _T_C1, _T_N11 = range(6)


def _step_scalar(field: _ScalarField, i0: float, v0: float, h: float, sync: bool,
                 epoch: int = 0, duty: float = 0.0, table: Any = None) -> tuple[float, float]:
    """Exponential-Euler step of length ``h`` [s] from (i0, v0) (:func:`_step`, one lane),
    with the phi1 coefficients from ``table`` in continuous conduction if there is one (then
    ``epoch`` and ``duty`` are the piece's)."""
    m12, m21 = field.j12 * h, field.j21 * h
    if table is None or field.mode != CCM:
        c0, c1, n11 = _phi1_coefficients_scalar(field.j11 * h, m12, m21, field.j22 * h)
    else:
        s = int(h * 7.0e9 + duty * 16384.0) % _STEP_SLOTS
        if table[s, _T_DUTY] == duty and table[s, _T_H] == h and table[s, _T_EPOCH] == epoch:
            c0, c1, n11 = table[s, _T_C0], table[s, _T_C1], table[s, _T_N11]
        else:
            c0, c1, n11 = _phi1_coefficients_scalar(field.j11 * h, m12, m21, field.j22 * h)
            table[s, _T_DUTY], table[s, _T_H], table[s, _T_EPOCH] = duty, h, epoch
            table[s, _T_C0], table[s, _T_C1], table[s, _T_N11] = c0, c1, n11
    w1, w2 = field.f1 * h, field.f2 * h
    i1 = i0 + (c0 * w1 + c1 * (n11 * w1 + m12 * w2))
    if not sync and i1 < 0.0:
        i1 = 0.0
    return i1, v0 + (c0 * w2 + c1 * (m21 * w1 - n11 * w2))


def _count_le(times: Any, t: float) -> int:
    """How many of the ascending ``times`` are <= ``t``: the epoch at ``t``."""
    n = 0
    while n < len(times) and times[n] <= t:
        n += 1
    return n


def _period_scalar(circuits: Any, times: Any, t0: float, Ts: float, i: float, v: float,
                   d_prev: float, d: float, pieces: Any, table: Any = None
                   ) -> tuple[int, float, float, _ScalarField, int]:
    """One switching period of one lane from the averaged state (i, v) (:meth:`_Integrator.
    period`): pieces split at the PWM edge (if the duty changed) and at the (shifted) step
    instants, one exponential step each; a period in which the mode changes is integrated
    again in ``_SUBSTEPS`` sub-steps per piece. ``circuits`` per epoch, ``times`` the shifted
    step instants [s]; the pieces go to ``pieces``; ``table`` see :func:`_step_scalar`.
    Returns (number of pieces, iL, vC at the end, the field there, the epoch there)."""
    first = _count_le(times, t0)
    last = first
    while last < len(times) and times[last] - t0 < Ts:
        last += 1
    t_edge = 0.5 * (d_prev + d) * Ts if d != d_prev else math.inf
    edge_pending = t_edge < Ts
    b = first
    start = 0.0
    count = 0
    i1, v1 = i, v
    mode0 = CCM
    changed = False
    while True:
        final = False
        if edge_pending and (b == last or t_edge <= times[b] - t0):
            end = t_edge
            edge_pending = False
        elif b < last:
            end = times[b] - t0
            b += 1
        else:
            end = Ts
            final = True
        duty = d_prev if start < t_edge else d
        epoch = first
        for m in range(first, last):
            if times[m] - t0 <= start:
                epoch += 1
        c = circuits[epoch]
        field = _field_scalar(c, i1, v1, duty)
        if count == 0:
            mode0 = field.mode
        elif field.mode != mode0:
            changed = True
        r = count * _PW
        pieces[r + _P_START], pieces[r + _P_END] = start, end
        pieces[r + _P_I0], pieces[r + _P_V0] = i1, v1
        pieces[r + _P_DUTY], pieces[r + _P_EPOCH] = duty, epoch
        if end > start:
            i1, v1 = _step_scalar(field, i1, v1, end - start, c.sync, epoch, duty, table)
        count += 1
        if final:
            break
        start = end
    epoch_end = _count_le(times, t0 + Ts)
    c_end = circuits[epoch_end]
    end_field = _field_scalar(c_end, i1, v1, d)
    if not c_end.sync and (changed or end_field.mode != mode0):
        # Crossed the CCM/DCM boundary: sub-steps (see _Integrator.period).
        i1, v1 = i, v
        for p in range(count):
            r = p * _PW
            epoch = int(pieces[r + _P_EPOCH])
            c, duty = circuits[epoch], pieces[r + _P_DUTY]
            h = (pieces[r + _P_END] - pieces[r + _P_START]) / _SUBSTEPS
            if h > 0.0:
                for _ in range(_SUBSTEPS):
                    i1, v1 = _step_scalar(_field_scalar(c, i1, v1, duty), i1, v1, h, c.sync,
                                          epoch, duty, table)
        end_field = _field_scalar(c_end, i1, v1, d)
    return count, i1, v1, end_field, epoch_end


def _sample_scalar(circuits: Any, pieces: Any, count: int, tau: float, d_prev: float,
                   d: float, Ts: float, table: Any = None) -> tuple[float, float, float]:
    """(il, vc, vout) at offset ``tau`` [s] into a period of :func:`_period_scalar` (its
    first ``count`` pieces)."""
    p = 0
    for m in range(1, count):
        if tau >= pieces[m * _PW + _P_START]:
            p = m
    r = p * _PW
    epoch = int(pieces[r + _P_EPOCH])
    c, duty = circuits[epoch], pieces[r + _P_DUTY]
    i0, v0 = pieces[r + _P_I0], pieces[r + _P_V0]
    i, v = _step_scalar(_field_scalar(c, i0, v0, duty), i0, v0, tau - pieces[r + _P_START],
                        c.sync, epoch, duty, table)
    x = tau / Ts
    duty_now = max(d_prev - x, 0.0) + min(x, d)
    return i, v, _field_scalar(c, i, v, duty_now).vout


def _put_tail(pieces: Any, count: int, Ts: float, i1: float, v1: float, d: float,
              epoch: int) -> int:
    """Append the period continued past its end with its own duty (for samples centred near
    the end); returns the new count."""
    r = count * _PW
    pieces[r + _P_START], pieces[r + _P_END] = Ts, math.inf
    pieces[r + _P_I0], pieces[r + _P_V0] = i1, v1
    pieces[r + _P_DUTY], pieces[r + _P_EPOCH] = d, epoch
    return count + 1


