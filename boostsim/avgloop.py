"""The compiled route of :func:`boostsim.averaged.simulate_averaged`: open loop, duty schedules
and the built-in :class:`~boostsim.control.DigitalController` with :class:`boostsim.pid.PID`.

Prepares the arrays of :mod:`boostsim.avgkernel` (numba) from a checked request, runs it and
hands the controller back its log and final state (:func:`boostsim.fastloop.hand_back`), so
that the result is the numpy route's. The route is chosen as for :func:`boostsim.simulate`
(:func:`boostsim.fastloop.use_compiled`): any other controller object takes the numpy route,
and without numba so does everything (with one warning).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import fastloop
from .averaged import _Conditions, _Grid, _Records, _ScalarCircuit
from .control import DigitalController
from .drive import Drive, check_duty
from .engine import Step

__all__ = ["CIRCUIT_DTYPE", "PARALLEL_LANES", "circuit_table", "run"]

# Lanes from which the kernel's parallel loop pays on two cores.
PARALLEL_LANES = 64
#: One lane's circuit in one epoch as the kernel reads it: the attributes of
#: :class:`boostsim.averaged._ScalarCircuit`, so the same model functions evaluate on either.
CIRCUIT_DTYPE = np.dtype([(name, np.bool_ if name == "sync" else np.float64)
                          for name in _ScalarCircuit._fields])


def circuit_table(lanes: dict[str, np.ndarray], steps: Sequence[Step]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's circuit constants (lanes, epochs) (:data:`CIRCUIT_DTYPE`) and shifted
    step instants (lanes, steps) [s], from :class:`boostsim.averaged._Conditions`."""
    cond = _Conditions(lanes, steps)
    tab = np.empty((lanes["L"].size, len(cond.circuits)), dtype=CIRCUIT_DTYPE)
    for e, c in enumerate(cond.circuits):
        for name in _ScalarCircuit._fields:
            tab[name][:, e] = getattr(c, name)
    return tab, np.ascontiguousarray(cond.times.T)


def run(drive: Drive, steps: Sequence[Step], d_prev: np.ndarray | None, grid: _Grid,
        controller: DigitalController | None) -> _Records:
    """Simulate ``drive`` on the compiled kernel; returns the per-period records and fills
    ``grid`` when its step is not a whole number of periods (else the caller fills it from
    the records)."""
    from . import avgkernel as k

    n, n_periods = drive.n, drive.n_periods
    tab, times = circuit_table(drive.lanes, steps)
    d_first = np.full(n, np.nan) if d_prev is None else np.asarray(d_prev, dtype=float)
    rec = np.empty((k.N_RECORDS, n, n_periods))
    vout0 = np.empty(n)
    n_t = 0 if grid.stride else drive.n_t
    wave = np.empty((3, n, n_t))
    bad = np.full(n, -1)
    kernel = k.run_lanes_parallel if n >= PARALLEL_LANES else k.run_lanes
    common = (tab, times, drive.Ts, drive.il0, drive.vc0, d_first, n_periods, drive.dt, n_t)
    if controller is None:
        mode = k.CONSTANT if drive.schedule is None else k.SCHEDULE
        duties = drive.constant[None, :] if mode == k.CONSTANT else drive.schedule
        kernel(*common, mode, np.ascontiguousarray(duties), 1, *fastloop._no_controller(n),
               rec, vout0, wave, np.empty((6, n, 0)), bad)
    else:
        a = fastloop.controller_arrays(controller, n, drive.Ts, n_periods, log=True)
        duties = np.array(controller._duty, dtype=float).reshape(1, n)
        kernel(*common, k.CONTROLLER, duties, a["every"], a["par"], a["st"], a["use_ramp"],
               a["backcalc"], a["adc"], a["offsets"], a["noise_key"], a["pwm"], a["ref_times"],
               a["ref_values"], a["per_step"], rec, vout0, wave, a["log"], bad)
        if np.any(bad >= 0):
            period = int(bad[bad >= 0].min())
            check_duty(rec[k.R_DUTY, :, period].copy(), f"controller duty (period {period})")
        fastloop.hand_back(controller, a, duties[0], drive.Ts)
    out = _Records(0, n)  # views of the kernel's rows: (periods, lanes) as _Records has them
    for row, name in enumerate(("duty", "il_start", "vc_start", "il_mean", "vc_mean",
                                "vout_mean", "d2")):
        setattr(out, name, rec[row].T)
    out.mode = rec[k.R_MODE].T.astype(np.int8)
    out.vout0 = vout0
    if n_t:
        grid.il[:], grid.vc[:], grid.vout[:] = wave
    return out

