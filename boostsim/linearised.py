"""DC operating point and small-signal (linearised) model of the averaged boost converter.

The large-signal averaged model these linearise is :mod:`boostsim.averaged` (its module
docstring has the equations and references [SMGKB], [MC], [EM]).

Small-signal model
------------------
:func:`small_signal` linearises the same equations at the DC operating point
(:func:`operating_point`): state-space matrices with inputs ``(d, vin, i_load)`` and the
transfer functions ``Gvd = vout/d``, ``Gvg = vout/vin`` and ``Zout = -vout/i_load``, as
``scipy.signal.ZerosPolesGain`` objects. In CCM this is the textbook boost model with
conduction losses and ESR ([EM] Ch. 7-8): the double pole near ``(1-D)/sqrt(LC)``, the ESR
zero and the right-half-plane zero near ``(1-D)^2 R / L``. In DCM it is the linearised
full-order model of [SMGKB] (a low-frequency pole near ``2/(R C)`` and a high-frequency pole
near the switching frequency; the RHP zero moves to high frequency).

Why ``scipy.signal`` and not python-control: scipy is already a dependency and its LTI objects
cover what is needed (``freqresp``, ``bode``, ``step``, poles/zeros); python-control would be
a new dependency for little gain -- the loop analysis (:mod:`boostsim.design`) works on the
exact sampled-data loop, evaluated on the unit circle, which python-control would not give
either.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from scipy import signal

from .averaged import CCM, DCM, _Circuit, _subset
from .drive import lane_arrays, operating_lanes
from .params import BoostParams
from .segments import phi1

__all__ = ["OperatingPoint", "SmallSignal", "averaged_duty_for_vout", "operating_point",
           "small_signal"]


# -- DC operating point ---------------------------------------------------------------------------

@dataclasses.dataclass
class OperatingPoint:
    """DC solution of the averaged model (per lane; floats for scalar inputs).

    ``il``: mean inductor current [A]; ``vc``, ``vout`` [V] (equal at DC: the capacitor carries
    no mean current); ``d2``: diode conduction fraction (``1 - duty`` in CCM); ``i_pk``: peak
    inductor current of a DCM period [A] (NaN in CCM); ``mode``: "CCM" or "DCM";
    ``pin = vin il``, ``pout`` into R and i_load [W] (ripple losses not included).
    """

    duty: Any
    vin: Any
    il: Any
    vc: Any
    vout: Any
    d2: Any
    i_pk: Any
    mode: Any
    pin: Any
    pout: Any
    efficiency: Any


def _dc_solution(c: _Circuit, d: np.ndarray) -> dict[str, np.ndarray]:
    """Closed-form DC solution of f(x) = 0 in CCM and DCM (see :func:`operating_point`)."""
    dp = 1.0 - d
    # CCM: dp iL = i_load + g v  and  d vin + dp (v_off0 - a v) = r_eq iL.
    r_eq = d * c.r_1 + dp * c.r_2
    v = (d * c.vin + dp * c.v_off0 - r_eq * c.i_load / dp) / (dp * c.a + r_eq * c.g / dp)
    i = (c.i_load + c.g * v) / dp
    d2 = dp.copy()
    i_pk_all = c.vin * d * c.Ts / c.L * phi1(-c.k_on * d * c.Ts)
    i_pk = np.full(d.shape, np.nan)
    mode = np.zeros(d.shape, dtype=np.int8)
    dcm = ~c.sync & (c.v_off0 - c.a * v < 0) & (i < 0.5 * i_pk_all)
    if dcm.any():
        # DCM: d2 i_c = i_load + g v (charge) and d (vin - r_1 i_c) + d2 (W - a v) = 0 with
        # i_c = i_pk/2, W = v_off0 - r_2 i_c (volt-seconds): a quadratic in v.
        i_c = 0.5 * i_pk_all
        W = c.v_off0 - c.r_2 * i_c
        E = d * (c.vin - c.r_1 * i_c)
        A2 = c.a * c.g
        B2 = -(c.g * W - c.a * c.i_load)
        C2 = -(c.i_load * W + E * i_c)
        root = np.sqrt(np.maximum(B2 * B2 - 4.0 * A2 * C2, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            v_dcm = np.where(B2 > 0, -2.0 * C2 / (B2 + root), (root - B2) / (2.0 * A2))
            d2_dcm = (c.i_load + c.g * v_dcm) / i_c
        v = np.where(dcm, v_dcm, v)
        i = np.where(dcm, (d + d2_dcm) * i_c, i)
        d2 = np.where(dcm, d2_dcm, d2)
        i_pk = np.where(dcm, i_pk_all, i_pk)
        mode = np.where(dcm, DCM, CCM).astype(np.int8)
    return {"il": i, "vc": v, "vout": v, "d2": d2, "i_pk": i_pk, "mode": mode}


def _lane_circuit(params: BoostParams, duty: Any) -> tuple[_Circuit, np.ndarray, bool]:
    lanes, _, scalar, d = operating_lanes(params, duty, "operating point")
    return _Circuit(lanes, lanes["vin"], lanes["R"], lanes["i_load"]), d, scalar


def operating_point(params: BoostParams, duty: Any) -> OperatingPoint:
    """DC operating point of the averaged model at a constant ``duty`` (CCM or DCM).

    Closed form: in CCM ``vout = (d vin + d' V_off - r_eq i_load/d') / (d' a + r_eq/(R d'))``
    (``r_eq = d r_1 + d' r_2``; this is [EM] Ch. 3's lossy boost, with the diode drop, ESR
    and constant-current load), in DCM the root of a quadratic from volt-second and charge
    balance with the duty-ratio constraint. ``duty`` broadcasts with the parameter lanes.
    Ripple-dependent losses are not in the averaged model, so this differs from
    :func:`boostsim.steady_state` by a few 0.01 % in CCM and up to a few 0.1 % in lossy DCM.
    """
    c, d, scalar = _lane_circuit(params, duty)
    sol = _dc_solution(c, d)
    pin = c.vin * sol["il"]
    pout = sol["vout"] * (sol["vout"] * c.g + c.i_load)
    with np.errstate(invalid="ignore", divide="ignore"):
        efficiency = pout / pin
    values = dict(duty=d, vin=c.vin, il=sol["il"], vc=sol["vc"], vout=sol["vout"], d2=sol["d2"],
                  i_pk=sol["i_pk"], mode=np.where(sol["mode"] == CCM, "CCM", "DCM"), pin=pin,
                  pout=pout, efficiency=efficiency)
    if scalar:
        values = {k: np.asarray(v)[0].item() for k, v in values.items()}
    return OperatingPoint(**values)


def averaged_duty_for_vout(params: BoostParams, vout: Any, *, d_max: float = 0.98) -> Any:
    """Duty at which the *averaged model's* DC output is ``vout`` [V] (per lane): the duty of
    the operating point that :func:`small_signal` and the loop design linearise about. (The
    duty giving ``vout`` in the exact switching steady state is
    :func:`boostsim.steady.duty_for_vout`.)

    The output rises with the duty up to a maximum set by the losses (then falls); the duty
    returned is on the rising branch, found by bisection to 1e-12. Raises ``ValueError``
    when ``vout`` is below the output at zero duty or above the maximum (naming both).
    """
    target = np.asarray(vout, dtype=float)
    _, n, scalar = lane_arrays(params, vout=target)
    target = np.broadcast_to(target, (n,)).astype(float)
    c, _, _ = _lane_circuit(params, np.zeros(n) if n > 1 else 0.0)
    grid = np.linspace(0.0, d_max, 981)
    curve = np.stack([_dc_solution(c, np.full(n, g))["vout"] for g in grid])  # (grid, n)
    peak = np.argmax(curve, axis=0)
    lanes_idx = np.arange(n)
    v_low, v_high = curve[0], curve[peak, lanes_idx]
    bad = ~np.isfinite(target) | (target < v_low) | (target > v_high)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        where = f" (lane {i})" if n > 1 else ""
        raise ValueError(f"vout {target[i]:g} V is not reachable{where}: the averaged model "
                         f"gives {v_low[i]:.4g} V at duty 0 and at most {v_high[i]:.4g} V "
                         f"(at duty {grid[peak[i]]:.3f})")
    lo, hi = np.zeros(n), grid[peak]
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        above = _dc_solution(c, mid)["vout"] >= target
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    duty = 0.5 * (lo + hi)
    return float(duty[0]) if scalar else duty


# -- small-signal model ---------------------------------------------------------------------------

@dataclasses.dataclass
class SmallSignal:
    """Small-signal model of one converter at a DC operating point.

    State ``x = (iL, vC)``, inputs ``u = (d, vin, i_load)``, output ``vout``:
    ``x' = A x + B u``, ``vout = C x + D u`` (``ss`` is the ``scipy.signal.StateSpace``).
    ``gvd`` (vout/d [V]), ``gvg`` (vout/vin), ``zout`` (-vout/i_load [ohm]) are
    ``scipy.signal.ZerosPolesGain`` objects (continuous time). ``rhp_zero_hz``: the
    right-half-plane zero of ``gvd`` (inf if none); ``resonance_hz`` and ``q_factor``: the
    natural frequency and Q of complex poles (NaN for real poles, as in DCM); ``poles_hz``:
    the poles / 2 pi. ``op`` is the :class:`OperatingPoint`, ``mode`` its conduction mode.
    """

    op: OperatingPoint
    mode: str
    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    D: np.ndarray
    ss: Any
    gvd: Any
    gvg: Any
    zout: Any
    rhp_zero_hz: float
    resonance_hz: float
    q_factor: float
    poles_hz: np.ndarray

    def response(self, f: Any, which: str = "gvd") -> np.ndarray:
        """Complex frequency response at ``f`` [Hz] of "gvd", "gvg" or "zout", computed from
        the state-space matrices (well conditioned at any frequency)."""
        column = {"gvd": 0, "gvg": 1, "zout": 2}
        if which not in column:
            raise ValueError(f"which must be 'gvd', 'gvg' or 'zout', got {which!r}")
        j = column[which]
        s = 2j * np.pi * np.atleast_1d(np.asarray(f, dtype=float))
        A, B, C, D = self.A, self.B[:, j], self.C[0], self.D[0, j]
        # (sI - A)^-1 B for a 2x2 A, in closed form.
        det = (s - A[0, 0]) * (s - A[1, 1]) - A[0, 1] * A[1, 0]
        x1 = ((s - A[1, 1]) * B[0] + A[0, 1] * B[1]) / det
        x2 = (A[1, 0] * B[0] + (s - A[0, 0]) * B[1]) / det
        h = C[0] * x1 + C[1] * x2 + D
        h = -h if which == "zout" else h
        return h if np.ndim(f) else h[0]


def _linearise(c: _Circuit, d: float, i: float, v: float, mode: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Jacobians of the averaged model w.r.t. x = (iL, vC) and u = (d, vin, i_load), and of
    vout; analytic (checked against finite differences of the large-signal model in tests)."""
    L, C, a, g, r_C = c.L, c.C, c.a, c.g, c.r_C
    dp = 1.0 - d
    V0 = c.v_off0 - a * v
    if mode == CCM:
        r_eq = d * c.r_1 + dp * c.r_2
        F1 = [-r_eq, -dp * a, c.vin - V0 - (c.r_1 - c.r_2) * i, 1.0, dp * a * r_C]
        F2 = [dp, -c.g, -i, 0.0, -1.0]
        Y = [a * r_C * dp, a, -a * r_C * i, 0.0, -a * r_C]
    else:
        tau = d * c.Ts
        i_pk = c.vin * tau / L * float(phi1(-c.k_on * tau))
        i_c = 0.5 * i_pk
        d2 = i / i_c - d
        V1 = V0 - c.r_2 * i_c
        dic_dd = 0.5 * c.vin * c.Ts / L * math.exp(-c.k_on * tau)
        dic_dvin = i_c / c.vin
        F1_ic = -d * c.r_1 - (i / (i_c * i_c)) * V1 - d2 * c.r_2
        F2_ic = -d
        Y_ic = -a * r_C * d
        F1 = [V1 / i_c, -a * d2, (c.vin - c.r_1 * i_c) - V1 + F1_ic * dic_dd,
              d + d2 + F1_ic * dic_dvin, d2 * a * r_C]
        F2 = [1.0, -g, -i_c + F2_ic * dic_dd, F2_ic * dic_dvin, -1.0]
        Y = [a * r_C, a, -a * r_C * i_c + Y_ic * dic_dd, Y_ic * dic_dvin, -a * r_C]
    A = np.array([[F1[0] / L, F1[1] / L], [a * F2[0] / C, a * F2[1] / C]])
    B = np.array([[F1[2] / L, F1[3] / L, F1[4] / L], [a * F2[2] / C, a * F2[3] / C,
                                                       a * F2[4] / C]])
    Cm = np.array([[Y[0], Y[1]]])
    Dm = np.array([[Y[2], Y[3], Y[4]]])
    return A, B, Cm, Dm


def small_signal(params: BoostParams, duty: float) -> SmallSignal:
    """Small-signal (linearised averaged) model of one converter at ``duty``.

    CCM: the state-space averaged model with r_L, r_on, v_f, r_d (or r_sync), r_C and i_load
    ([MC], [EM] Ch. 7-8): ``Gvd`` has the LC double pole near ``(1-D)/sqrt(LC)``, the ESR
    zero and the right-half-plane zero near ``(1-D)^2 R / L`` (exactly as the losses place
    them). DCM: the linearised full-order model of [SMGKB] (real poles, one near the
    switching frequency). Needs scalar parameters (use ``params.lane(i)`` for a batch).
    """
    if params.n_lanes != 1:
        raise ValueError(f"small_signal needs one converter, got {params.n_lanes} lanes; use "
                         f"params.lane(i)")
    if np.ndim(duty) != 0:
        raise ValueError(f"duty must be a scalar, got shape {np.shape(duty)}")
    op = operating_point(params, float(duty))
    op = op if isinstance(op.il, float) else OperatingPoint(
        **{k: np.asarray(v).ravel()[0].item() for k, v in dataclasses.asdict(op).items()})
    c_vec, _, _ = _lane_circuit(params, float(duty))
    c = _subset(c_vec, 0)  # the lane's constants as numpy scalars
    mode = CCM if op.mode == "CCM" else DCM
    A, B, Cm, Dm = _linearise(c, float(duty), op.il, op.vc, mode)
    ss = signal.StateSpace(A, B, Cm, Dm)

    poles = np.linalg.eigvals(A)

    def zpk(j: int, sign: float = 1.0):
        # Numerator of C (sI - A)^-1 B + D for two states:
        # D s^2 + (C.B - D tr A) s + (D det A + C adj(-A) B).
        b, c0, c1, dd = B[:, j], Cm[0, 0], Cm[0, 1], Dm[0, j]
        const = (c0 * (-A[1, 1] * b[0] + A[0, 1] * b[1])
                 + c1 * (A[1, 0] * b[0] - A[0, 0] * b[1]))
        num = np.array([dd, c0 * b[0] + c1 * b[1] - dd * np.trace(A),
                        dd * np.linalg.det(A) + const])
        num = np.trim_zeros(num, "f")
        zeros = np.roots(num) if num.size > 1 else np.array([])
        gain = num[0] if num.size else 0.0
        return signal.ZerosPolesGain(zeros, poles, sign * gain)

    gvd = zpk(0)
    rhp = [z for z in gvd.zeros if z.real > 0]
    rhp_zero_hz = float(min(abs(z) for z in rhp) / (2 * np.pi)) if rhp else math.inf
    det, trace = float(np.linalg.det(A)), float(np.trace(A))
    complex_poles = bool(np.any(np.abs(poles.imag) > 0))
    resonance_hz = math.sqrt(det) / (2 * np.pi) if complex_poles else math.nan
    q_factor = math.sqrt(det) / -trace if complex_poles else math.nan
    return SmallSignal(op=op, mode=op.mode, A=A, B=B, C=Cm, D=Dm, ss=ss, gvd=gvd, gvg=zpk(1),
                       zout=zpk(2, -1.0), rhp_zero_hz=rhp_zero_hz, resonance_hz=resonance_hz,
                       q_factor=q_factor, poles_hz=poles / (2 * np.pi))
