"""Periodic steady state, found directly by Newton's method on the period map (shooting).

The period map ``x_{k+1} = F(x_k)`` of the switching converter is affine in continuous
conduction and piecewise smooth in discontinuous conduction. Its exact Jacobian is the product
of the segments' transition matrices with the saltation matrix at the diode turn-off (which
removes iL perturbations), so Newton converges in one or two steps in CCM and a few in DCM.
A backtracking line search keeps it from overshooting across the CCM/DCM boundary.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from .analysis import Metrics, period_metrics
from .drive import operating_lanes
from .engine import Stepper, sample_segments
from .memory import SAMPLE_WORK_BYTES, check_memory
from .params import BoostParams
from .theory import ccm_vout

__all__ = ["SteadyState", "steady_state"]

_MAX_HALVINGS = 30


@dataclasses.dataclass
class SteadyState(Metrics):
    """Periodic steady state: the :class:`~boostsim.analysis.Metrics` of one period plus one
    period of waveform (``t`` from 0 to Ts inclusive) and the orbit's start state.

    ``converged`` is False (with NaN figures) for lanes where Newton did not converge; a warning
    names them.
    """

    t: np.ndarray = None  # type: ignore[assignment]
    il: np.ndarray = None  # type: ignore[assignment]
    vc: np.ndarray = None  # type: ignore[assignment]
    vout: np.ndarray = None  # type: ignore[assignment]
    il_start: Any = None
    vc_start: Any = None
    converged: Any = None
    iterations: int = 0


def steady_state(params: BoostParams, duty: Any, *, points: int = 200, tol: float = 1e-12,
                 max_iter: int = 100) -> SteadyState:
    """Periodic steady state of the switching converter at a constant ``duty``.

    ``duty`` (in [0, 1)) broadcasts with the parameter lanes: a scalar, or a 1-D array giving
    one operating point per lane (a duty sweep). ``points`` sets the waveform samples over the
    period. Converges when the period map's residual is below ``tol`` relative to the state.
    """
    if not isinstance(points, int | np.integer) or points < 1:
        raise ValueError(f"points must be an integer >= 1, got {points!r}")
    lanes, n, scalar, d = operating_lanes(params, duty, "periodic steady state")
    per_lane = steady_state_lane_bytes(points)
    check_memory(n * per_lane, "steady_state", f"{n} lanes with {points} waveform points each; "
                 f"solve the lanes in chunks or ask for fewer points", per_lane=per_lane)
    stepper = Stepper(lanes)
    il, vc = _averaged_guess(lanes, d)
    il, vc = il.copy(), vc.copy()
    il_scale = lanes["vin"] / lanes["fsw"] / lanes["L"]
    v_scale = lanes["vin"].copy()

    def residual(period, il0, vc0, idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r_il = period.il_end - il0
        r_vc = period.vc_end - vc0
        size = np.hypot(r_il / (np.abs(il0) + il_scale[idx]), r_vc / (np.abs(vc0) + v_scale[idx]))
        return r_il, r_vc, size

    period = stepper.period(0, il, vc, d, jacobian=True)
    jac = period.jacobian
    r_il, r_vc, size = residual(period, il, vc, slice(None))
    converged = size <= tol
    iterations = 0
    while iterations < max_iter and not np.all(converged):
        iterations += 1
        active = np.flatnonzero(~converged)
        # Newton step: (J - I) dx = -r, solved per lane.
        J = jac[active]
        m11, m12 = J[:, 0, 0] - 1.0, J[:, 0, 1]
        m21, m22 = J[:, 1, 0], J[:, 1, 1] - 1.0
        det = m11 * m22 - m12 * m21
        b1, b2 = -r_il[active], -r_vc[active]
        with np.errstate(divide="ignore", invalid="ignore"):
            dil = (m22 * b1 - m12 * b2) / det
            dvc = (m11 * b2 - m21 * b1) / det
        # Backtracking: halve the step for lanes whose residual did not shrink.
        pending = np.arange(active.size)
        scale = np.ones(active.size)
        for attempt in range(_MAX_HALVINGS):
            idx = active[pending]
            il_try = il[idx] + scale[pending] * dil[pending]
            vc_try = vc[idx] + scale[pending] * dvc[pending]
            il_try = np.where(lanes["synchronous"][idx], il_try, np.maximum(il_try, 0.0))
            trial = stepper.subset(idx).period(0, il_try, vc_try, d[idx], jacobian=True)
            t_il, t_vc, t_size = residual(trial, il_try, vc_try, idx)
            ok = (t_size < size[idx]) | (attempt == _MAX_HALVINGS - 1)
            take = idx[ok]
            il[take], vc[take] = il_try[ok], vc_try[ok]
            r_il[take], r_vc[take], size[take] = t_il[ok], t_vc[ok], t_size[ok]
            jac[take] = trial.jacobian[ok]
            pending = pending[~ok]
            if pending.size == 0:
                break
            scale[pending] *= 0.5
        converged = size <= tol
    if not np.all(converged):
        bad = np.flatnonzero(~converged)
        warnings.warn(f"steady_state did not converge in {max_iter} iterations for lanes "
                      f"{bad[:10].tolist()}{' ...' if bad.size > 10 else ''} (residual "
                      f"{np.max(size[bad]):.2e}); their figures are NaN", RuntimeWarning,
                      stacklevel=2)
    final = stepper.period(0, il, vc, d)
    metrics = period_metrics(stepper, final, d, scalar=False, il0=il, vc0=vc)
    Ts = 1.0 / lanes["fsw"]
    frac = np.linspace(0.0, 1.0, points + 1)
    tau = Ts[:, None] * frac[None, :]
    w_il, w_vc, w_vout = sample_segments(final.segments, tau)
    # The sample at t = Ts belongs to the next period: take the end state (periodic orbit).
    w_il[:, -1], w_vc[:, -1], w_vout[:, -1] = w_il[:, 0], w_vc[:, 0], w_vout[:, 0]
    values = metrics.as_dict()
    losses = metrics.losses
    nan = ~converged
    if np.any(nan):
        values = {k: np.where(nan, np.nan, v) if np.asarray(v).dtype.kind == "f" else v
                  for k, v in values.items()}
        losses = {k: np.where(nan, np.nan, v) for k, v in losses.items()}
    values = {k: v for k, v in values.items() if not k.startswith("loss_")}
    values["settled"] = values["settled"] & converged
    extra = dict(t=tau, il=w_il, vc=w_vc, vout=w_vout, il_start=il, vc_start=vc,
                 converged=converged)
    if scalar:
        values = {k: np.asarray(v)[0].item() for k, v in values.items()}
        losses = {k: v[0].item() for k, v in losses.items()}
        extra = {k: v[0] if np.ndim(v) == 2 else np.asarray(v)[0].item()
                 for k, v in extra.items()}
    return SteadyState(losses=losses, iterations=iterations, **values, **extra)


#: Newton's work arrays, the final period and its metrics, per lane [bytes] (measured with
#: tracemalloc: about 2.3 kB; ``tests/test_memory.py`` checks the estimate).
_LANE_WORK_BYTES = 2560


def steady_state_lane_bytes(points: int) -> float:
    """Memory [bytes] :func:`steady_state` needs per lane with ``points`` waveform points."""
    return _LANE_WORK_BYTES + (points + 1) * SAMPLE_WORK_BYTES


def _averaged_guess(lanes: dict[str, np.ndarray], duty: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Start of the Newton iteration: the lossy averaged CCM operating point, with iL at the
    bottom of its ripple (clamped at zero, which is where a DCM orbit starts)."""
    vout = ccm_vout(lanes["vin"], duty, lanes["R"], lanes["r_L"], lanes["r_on"], lanes["v_f"],
                    np.where(lanes["synchronous"], lanes["r_sync"], lanes["r_d"]),
                    lanes["i_load"])
    vout = np.where(np.isfinite(vout) & (vout > 0), vout, lanes["vin"])
    one_minus = 1.0 - duty
    il_mean = (vout * np.where(np.isinf(lanes["R"]), 0.0, 1.0 / lanes["R"]) + lanes["i_load"]) \
        / one_minus
    ripple = lanes["vin"] * duty / (lanes["fsw"] * lanes["L"])
    il = il_mean - 0.5 * ripple
    il = np.where(lanes["synchronous"], il, np.maximum(il, 0.0))
    return il, vout
