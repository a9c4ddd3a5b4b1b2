"""What drives a simulation: the lanes, the duty (constant, schedule or controller), the initial
state and the time grid -- checked once, shared by the switching engine and the averaged model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from .params import BoostParams, broadcast_lanes
from .units import quantity

__all__ = ["Drive", "check_duty", "lane_arrays", "operating_lanes", "prepare_drive"]


@dataclasses.dataclass
class Drive:
    """A checked simulation request. ``constant`` (per-lane duty) or ``schedule`` (periods,
    lanes) is set in open loop; neither with a controller (already started)."""

    lanes: dict[str, np.ndarray]
    n: int
    scalar: bool
    Ts: np.ndarray
    dt: float
    n_t: int
    n_periods: int
    il0: np.ndarray
    vc0: np.ndarray
    constant: np.ndarray | None
    schedule: np.ndarray | None

    @property
    def t(self) -> np.ndarray:
        return np.arange(self.n_t) * self.dt


def prepare_drive(params: BoostParams, duty: Any, t_end: float | None, dt: float | None, *,
                  x0: Any, controller: Any, vref: Any, steps: Sequence[Any],
                  default_dt_periods: float) -> Drive:
    """Check a ``simulate``-style request and broadcast it to lanes; starts the controller.

    ``dt=None`` gives ``default_dt_periods`` times the shortest switching period.
    """
    if t_end is None or not np.isfinite(t_end) or t_end <= 0:
        raise ValueError(f"t_end must be a finite time > 0 [s], got {t_end!r}")
    if (duty is None) == (controller is None):
        raise ValueError("give either duty (open loop) or controller (closed loop), not both"
                         if duty is not None else "give a duty or a controller")
    if vref is not None and controller is None:
        raise ValueError("vref needs a controller (e.g. boostsim.control.DigitalController)")
    schedule = None
    duty_lanes: Any = 0.0
    if duty is not None:
        duty_array = np.asarray(duty, dtype=float)
        if duty_array.ndim == 2:
            schedule = duty_array
            duty_lanes = duty_array[0] if duty_array.shape[1] > 1 else duty_array[0, 0]
        elif duty_array.ndim > 2:
            raise ValueError(f"duty must be a scalar, a 1-D array of lanes or a 2-D "
                             f"(periods, lanes) schedule, got shape {duty_array.shape}")
        else:
            duty_lanes = duty_array
    x0_array = _initial_state(x0)
    inputs = {"duty": duty_lanes, "x0": x0_array[..., 0]}
    # Lanes may also come from the controller (per-lane gains) or a per-lane constant vref.
    controller_lanes = getattr(controller, "n_lanes", 1)
    if controller_lanes > 1:
        inputs["controller (its per-lane gains or reference)"] = np.zeros(controller_lanes)
    if _is_lane_vector(vref):
        inputs["vref"] = vref
    for i, s in enumerate(steps):
        inputs.update({f"steps[{i}].{k}": v for k, v in
                       (("vin", s.vin), ("R", s.R), ("i_load", s.i_load)) if v is not None})
    lanes, n, scalar = lane_arrays(params, **inputs)
    Ts = 1.0 / lanes["fsw"]
    if dt is None:
        dt = float(np.min(Ts)) * default_dt_periods
    if not np.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a finite time > 0 [s], got {dt!r}")
    n_t = int(np.floor(t_end / dt * (1 + 1e-12))) + 1
    if n_t * n > 2e9:
        raise ValueError(f"output grid too large: {n} lanes x {n_t} samples; raise dt")
    n_periods = int(np.max(np.ceil(t_end / Ts - 1e-9)))
    constant = None
    if schedule is not None:
        schedule = _check_schedule(schedule, n, n_periods)
    elif duty is not None:
        constant = check_duty(np.broadcast_to(duty_lanes, (n,)).astype(float), "duty")
    start = getattr(controller, "start", None)
    if start is not None:
        start(lanes, vref)
    elif vref is not None:
        raise ValueError("this controller takes no vref (it has no start(lanes, vref) method)")
    il0 = np.broadcast_to(x0_array[..., 0], (n,)).astype(float)
    vc0 = np.broadcast_to(x0_array[..., 1], (n,)).astype(float)
    return Drive(lanes, n, scalar, Ts, float(dt), n_t, n_periods, il0, vc0, constant, schedule)


def _is_lane_vector(value: Any) -> bool:
    """A 1-D sequence of numbers (not a list of (time, value) steps, not a function)."""
    if value is None or callable(value):
        return False
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return False
    return array.ndim == 1


def _initial_state(x0: Any) -> np.ndarray:
    if x0 is None:
        return np.zeros(2)
    array = np.asarray(x0, dtype=float)
    if array.shape[-1:] != (2,) or array.ndim > 2:
        raise ValueError(f"x0 must be (il, vc) or an array of shape (lanes, 2), got shape "
                         f"{array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("x0 must be finite")
    return array


def lane_arrays(params: BoostParams, /, **inputs: Any
                ) -> tuple[dict[str, np.ndarray], int, bool]:
    """Broadcast parameters and other per-lane inputs; returns (lane arrays, n, all scalar).

    ``inputs`` are named as the caller's user knows them (``duty=...``, ``vout=...``): the
    names appear in the errors about their shapes and lengths."""
    if not isinstance(params, BoostParams):
        raise TypeError(f"params must be a BoostParams, got {type(params).__name__}")
    own = {k: getattr(params, k) for k in params.field_names()}
    clash = sorted(set(inputs) & set(own))
    if clash:
        raise TypeError(f"lane_arrays: inputs named like parameters: {clash}")
    named = {**own, **{k: np.asarray(v) for k, v in inputs.items()}}
    for key, value in named.items():
        if np.ndim(value) > 1:
            raise ValueError(f"{key}: per-lane values must be 1-D, got shape "
                             f"{np.shape(value)}")
    n, arrays = broadcast_lanes(**named)
    scalar = all(np.ndim(v) == 0 for v in named.values())
    lanes = {k: np.ascontiguousarray(arrays[k]) for k in own}
    return lanes, n, scalar


def check_duty(duty: np.ndarray, what: str) -> np.ndarray:
    bad = ~np.isfinite(duty) | (duty < 0) | (duty >= 1)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        where = f" (lane {i})" if duty.size > 1 else ""
        raise ValueError(f"{what} must be in [0, 1), got {float(duty[i])!r}{where}")
    return duty


def _check_schedule(schedule: np.ndarray, n: int, n_periods: int) -> np.ndarray:
    if schedule.shape[1] not in (1, n):
        raise ValueError(f"duty schedule has {schedule.shape[1]} columns for {n} lanes")
    if schedule.shape[0] < n_periods:
        raise ValueError(f"duty schedule has {quantity(schedule.shape[0], 'period')} but the "
                         f"simulation "
                         f"needs {n_periods}")
    full = np.broadcast_to(schedule[:n_periods], (n_periods, n)).astype(float)
    bad = ~np.isfinite(full) | (full < 0) | (full >= 1)
    if np.any(bad):
        k, i = np.argwhere(bad)[0]
        raise ValueError(f"duty schedule must be in [0, 1), got {full[k, i]!r} at period {k}, "
                         f"lane {i}")
    return full


def operating_lanes(params: BoostParams, duty: Any, what: str
                    ) -> tuple[dict[str, np.ndarray], int, bool, np.ndarray]:
    """Lanes and checked duties for a DC/periodic operating point: (lanes, n, scalar, duty).

    Refuses lanes with no load (R=inf, i_load=0, diode rectifier), which have no ``what``: the
    output charges up without limit.
    """
    lanes, n, scalar = lane_arrays(params, duty=np.asarray(duty, dtype=float))
    d = check_duty(np.broadcast_to(np.asarray(duty, dtype=float), (n,)).astype(float), "duty")
    unloaded = ~lanes["synchronous"] & np.isinf(lanes["R"]) & (lanes["i_load"] == 0)
    if np.any(unloaded):
        lane = int(np.flatnonzero(unloaded)[0])
        raise ValueError(f"no {what} without a load (R=inf and i_load=0, lane {lane}): the "
                         f"output charges up without limit")
    return lanes, n, scalar, d
