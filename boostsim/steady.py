"""Periodic steady state, found directly by Newton's method on the period map (shooting).

The period map ``x_{k+1} = F(x_k)`` of the switching converter is affine in continuous
conduction and piecewise smooth in discontinuous conduction. Its exact Jacobian is the product
of the segments' transition matrices with the saltation matrix at the diode turn-off (which
removes iL perturbations), so Newton converges in one or two steps in CCM and a few in DCM.
A backtracking line search keeps it from overshooting across the CCM/DCM boundary.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np

from .analysis import Metrics, period_metrics
from .drive import operating_lanes
from .engine import Stepper, sample_segments
from .memory import SAMPLE_WORK_BYTES, check_memory
from .params import BoostParams
from .theory import ccm_duty, ccm_vout

__all__ = ["DutySolution", "SteadyState", "duty_for_vout", "solve_duty", "steady_state"]

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


# -- duty for a target output voltage (the exact solver) --------------------------------------

# The search grid of duty_for_vout (refined by regula falsi inside the bracketing interval).
_DUTY_GRID = np.r_[np.arange(0.0, 0.9, 0.05), 0.9, 0.92, 0.94, 0.96, 0.97, 0.98, 0.99]
# Lanes per steady_state call of the duty search (bounds its memory).
_BATCH = 20_000


@dataclasses.dataclass
class DutySolution:
    """Result of :func:`duty_for_vout`, per lane: ``duty`` (NaN where unreachable), the output
    at zero duty ``vout_at_zero`` and the highest output ``vout_max`` found at ``duty_at_max``
    (both only for unreachable lanes; NaN elsewhere)."""

    duty: np.ndarray
    reachable: np.ndarray
    vout_at_zero: np.ndarray
    vout_max: np.ndarray
    duty_at_max: np.ndarray
    iterations: int


def _vout_of(arrays: dict[str, np.ndarray], idx: np.ndarray, duty: np.ndarray) -> np.ndarray:
    """Exact steady-state mean output voltage of lanes ``idx`` at ``duty`` (batched)."""
    out = np.empty(idx.size)
    for s in range(0, idx.size, _BATCH):
        part = slice(s, s + _BATCH)
        params = BoostParams(**{k: v[idx[part]] for k, v in arrays.items()})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[part] = steady_state(params, duty[part], points=1).vout_mean
    return out


def duty_for_vout(params: BoostParams, vout: Any, *, d_max: float = 0.99, rtol: float = 1e-9,
                  max_iter: int = 60) -> DutySolution:
    """Duty giving the mean output ``vout`` [V] in the exact periodic steady state, per lane.

    The lossy averaged CCM model (:func:`boostsim.theory.ccm_duty`) gives a first guess; the
    exact output is then evaluated on a grid of duties in [0, ``d_max``] plus that guess, the
    first interval where it crosses the target on its rising branch brackets the root, and
    regula falsi (Illinois) refines it on the exact steady state to ``rtol`` relative in
    voltage. Lanes whose target is below the zero-duty output or above the highest output
    reachable with duty <= ``d_max`` get NaN (``reachable`` False), so a sweep over many lanes
    keeps its other lanes; :func:`solve_duty` is the one-converter form that raises instead.
    (The duty of the *averaged model's* operating point, which the loop design linearises
    about, is :func:`boostsim.linearised.averaged_duty_for_vout`.)
    """
    target_in = np.asarray(vout, dtype=float)
    n = max(params.n_lanes, target_in.size)
    arrays = {k: np.ascontiguousarray(v) for k, v in params.arrays(n).items()}
    target = np.broadcast_to(target_in, (n,)).astype(float)
    lanes = np.arange(n)
    guess = np.full(n, np.nan)
    try:
        with np.errstate(all="ignore"):
            sync = arrays["synchronous"]
            guess = np.asarray(ccm_duty(arrays["vin"], target, arrays["R"], arrays["r_L"],
                                        arrays["r_on"], np.where(sync, 0.0, arrays["v_f"]),
                                        np.where(sync, arrays["r_sync"], arrays["r_d"]),
                                        arrays["i_load"]), dtype=float)
            guess = np.broadcast_to(guess, (n,)).copy()
    except ValueError:
        pass  # some lane is out of the model's reach: the grid alone brackets the root
    guess = np.where(np.isfinite(guess) & (guess > 0) & (guess < d_max), guess, np.nan)
    grid = _DUTY_GRID[_DUTY_GRID <= d_max]
    if grid[-1] < d_max:
        grid = np.r_[grid, d_max]
    G = grid.size
    duties = np.concatenate([np.tile(grid, (n, 1)), guess[:, None]], axis=1)
    has_guess = np.isfinite(guess)
    flat_lanes = np.repeat(lanes, G + 1)
    flat_duty = duties.ravel()
    values = np.full(flat_duty.size, np.nan)
    finite = np.isfinite(flat_duty)
    values[finite] = _vout_of(arrays, flat_lanes[finite], flat_duty[finite])
    values = values.reshape(n, G + 1)
    # Sort each lane's points by duty (the guess slots in between grid points).
    order = np.argsort(np.where(np.isfinite(duties), duties, np.inf), axis=1, kind="stable")
    d_sorted = np.take_along_axis(duties, order, axis=1)
    v_sorted = np.take_along_axis(values, order, axis=1)
    count = G + has_guess.astype(int)
    f = v_sorted - target[:, None]
    valid = np.arange(G + 1)[None, :] < count[:, None]
    above = (f >= 0) & valid & np.isfinite(f)
    first = np.where(above.any(axis=1), np.argmax(above, axis=1), -1)
    vout_at_zero = v_sorted[:, 0]
    reachable = first > 0
    below_zero = first == 0
    # Exactly on a grid point at zero duty.
    exact_zero = below_zero & (np.abs(f[:, 0]) <= rtol * np.abs(target))
    duty = np.full(n, np.nan)
    duty[exact_zero] = 0.0
    lo = np.full(n, np.nan)
    hi = np.full(n, np.nan)
    f_lo = np.full(n, np.nan)
    f_hi = np.full(n, np.nan)
    r = np.flatnonzero(reachable)
    lo[r], hi[r] = d_sorted[r, first[r] - 1], d_sorted[r, first[r]]
    f_lo[r], f_hi[r] = f[r, first[r] - 1], f[r, first[r]]
    # Lanes with no crossing on the grid: refine the maximum, which may lie between points.
    vmax = np.full(n, np.nan)
    dmax = np.full(n, np.nan)
    missing = np.flatnonzero(first < 0)
    if missing.size:
        fm = np.where(valid[missing], v_sorted[missing], -np.inf)
        k = np.argmax(fm, axis=1)
        a = d_sorted[missing, np.maximum(k - 1, 0)]
        b = d_sorted[missing, np.minimum(k + 1, count[missing] - 1)]
        dm, vm = _golden_max(arrays, missing, a, b)
        grid_best = fm[np.arange(missing.size), k]
        better = grid_best > vm
        dm = np.where(better, d_sorted[missing, k], dm)
        vm = np.where(better, grid_best, vm)
        vmax[missing], dmax[missing] = vm, dm
        fine = vm >= target[missing]
        got = missing[fine]
        reachable[got] = True
        lo[got], hi[got] = a[fine], dm[fine]
        f_lo[got] = (_vout_of(arrays, got, a[fine]) - target[got])
        f_hi[got] = vm[fine] - target[got]
    # Regula falsi inside [lo, hi], f(lo) < 0 <= f(hi), with the Anderson-Bjorck weighting:
    # when the same end is replaced twice in a row, the other end's value is scaled down so
    # that it cannot stick (superlinear convergence instead of linear).
    active = np.flatnonzero(reachable)
    last_side = np.zeros(n, dtype=np.int8)  # -1: lo replaced last time, +1: hi, 0: neither
    iterations = 0
    tol_v = rtol * np.maximum(np.abs(target), 1.0)
    while active.size and iterations < max_iter:
        iterations += 1
        a, b, fa, fb = lo[active], hi[active], f_lo[active], f_hi[active]
        with np.errstate(divide="ignore", invalid="ignore"):
            c = b - fb * (b - a) / (fb - fa)
        c = np.where(np.isfinite(c) & (c > a) & (c < b), c, 0.5 * (a + b))
        fc = _vout_of(arrays, active, c) - target[active]
        done = (np.abs(fc) <= tol_v[active]) | (b - a <= 1e-14)
        duty[active[done]] = c[done]
        left = fc < 0
        side = np.where(left, -1, 1).astype(np.int8)
        repeat = side == last_side[active]
        with np.errstate(divide="ignore", invalid="ignore"):
            m = 1.0 - fc / np.where(left, fa, fb)
        m = np.where(np.isfinite(m) & (m > 0), m, 0.5)
        scale = np.where(repeat, m, 1.0)
        lo[active] = np.where(left, c, a)
        hi[active] = np.where(left, b, c)
        f_lo[active] = np.where(left, fc, fa * scale)
        f_hi[active] = np.where(left, fb * scale, fc)
        last_side[active] = side
        active = active[~done]
    if active.size:
        duty[active] = 0.5 * (lo[active] + hi[active])
    reachable = np.isfinite(duty)
    return DutySolution(duty=duty, reachable=reachable,
                        vout_at_zero=np.where(reachable, np.nan, vout_at_zero),
                        vout_max=np.where(reachable, np.nan, vmax),
                        duty_at_max=np.where(reachable, np.nan, dmax), iterations=iterations)


def _golden_max(arrays: dict[str, np.ndarray], idx: np.ndarray, a: np.ndarray, b: np.ndarray,
                iterations: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Maximum of the exact vout(duty) on [a, b] per lane by golden-section search."""
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = a.copy(), b.copy()
    c = b - g * (b - a)
    d = a + g * (b - a)
    fc, fd = _vout_of(arrays, idx, c), _vout_of(arrays, idx, d)
    for _ in range(iterations):
        left = fc > fd
        b = np.where(left, d, b)
        a = np.where(left, a, c)
        c_new = b - g * (b - a)
        d_new = a + g * (b - a)
        # Reuse the kept interior point; evaluate the new one.
        x = np.where(left, c_new, d_new)
        fx = _vout_of(arrays, idx, x)
        fd, fc = np.where(left, fc, fx), np.where(left, fx, fd)
        d, c = np.where(left, c, d_new), np.where(left, c_new, d)
    best = np.where(fc > fd, c, d)
    return best, np.maximum(fc, fd)


def solve_duty(params: BoostParams, vout: float, **kwargs: Any) -> float:
    """Duty for one converter and one target ``vout`` [V]; ``ValueError`` saying why when the
    target cannot be reached (see :func:`duty_for_vout`)."""
    if params.n_lanes != 1 or np.ndim(vout) != 0:
        raise ValueError("solve_duty takes one converter and one target")
    target = float(vout)
    if not math.isfinite(target):
        raise ValueError(f"vout target must be finite, got {vout!r}")
    solution = duty_for_vout(params, target, **kwargs)
    if solution.reachable[0]:
        return float(solution.duty[0])
    v0 = float(solution.vout_at_zero[0])
    if target < v0:
        raise ValueError(f"vout = {target:g} V is not reachable: below the zero-duty output "
                         f"{v0:.4g} V (a boost converter only steps up)")
    d_max = kwargs.get("d_max", 0.99)
    raise ValueError(f"vout = {target:g} V is not reachable: the highest steady-state output "
                     f"with duty <= {d_max:g} is {float(solution.vout_max[0]):.4g} V (at duty "
                     f"{float(solution.duty_at_max[0]):.3f}) with these losses and load")
