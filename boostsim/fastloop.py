"""The compiled route of :func:`boostsim.simulate`: open loop, duty schedules and the built-in
:class:`~boostsim.control.DigitalController` with :class:`boostsim.pid.PID`.

Prepares the arrays of :mod:`boostsim.kernel` (numba) from a checked request, runs it, and hands
the controller its log and final state back, so that the result is the numpy engine's to
rounding. Any other controller object takes the numpy route. If numba cannot be imported, the
numpy route is used with one warning.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .control import ControlLog, DigitalController
from .pid import PID

__all__ = ["ENGINES", "available", "closed_loop_means", "pid_arrays", "run", "use_compiled"]

ENGINES = ("auto", "numpy", "compiled")
_kernel: Any = None
_import_error: str | None = None


def _load() -> Any:
    """The kernel module, or None (with the reason in ``_import_error``) without numba."""
    global _kernel, _import_error
    if _kernel is None and _import_error is None:
        try:
            from . import kernel
        except ImportError as exc:
            _import_error = str(exc)
            warnings.warn(f"numba is not available ({exc}); boostsim.simulate uses the slower "
                          f"numpy engine", RuntimeWarning, stacklevel=4)
        else:
            _kernel = kernel
    return _kernel


def available() -> bool:
    """True if the compiled kernel can run (numba imports)."""
    return _load() is not None


def supports(controller: Any) -> bool:
    """True for open loop and for the built-in controller with the built-in PID and an ADC
    the kernel models (no DNL table, no sampling jitter: those run on the numpy engine)."""
    return controller is None or (type(controller) is DigitalController
                                  and type(controller.pid) is PID and controller.adc.compiled)


def use_compiled(engine: str, controller: Any) -> bool:
    """Decide the route of one ``simulate`` call (``engine`` is "auto", "numpy" or "compiled")."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "numpy":
        return False
    if engine == "compiled":
        if not supports(controller):
            what = (type(controller).__name__ if type(controller) is not DigitalController
                    or type(controller.pid) is not PID else "an ADC with DNL or jitter")
            raise ValueError(f"engine='compiled' runs open loop and DigitalController with "
                             f"boostsim.pid.PID and an ideal-timing, DNL-free ADC, not "
                             f"{what}; use engine='auto'")
        if _load() is None:
            raise ValueError(f"engine='compiled' needs numba: {_import_error}")
        return True
    return supports(controller) and _load() is not None


def pid_arrays(pid: PID, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The PID's parameters and state as the kernel's (lanes, rows) arrays."""
    k = _load()

    def lanes(value: Any, missing: float = 0.0) -> np.ndarray:
        return np.broadcast_to(np.asarray(missing if value is None else value, dtype=float),
                               (n,))

    par = np.empty((n, k.N_PID_PAR))
    par[:, k.P_KP], par[:, k.P_KI_TS], par[:, k.P_KT_TS] = (lanes(pid.kp), lanes(pid._ki_ts),
                                                            lanes(pid._kt_ts))
    par[:, k.P_D_A], par[:, k.P_D_B] = lanes(pid._d_a), lanes(pid._d_b)
    par[:, k.P_MIN], par[:, k.P_MAX] = lanes(pid.out_min), lanes(pid.out_max)
    par[:, k.P_RAMP] = lanes(pid._ramp_step)
    st = np.empty((n, k.N_PID_STATE))
    st[:, k.S_INTEGRAL], st[:, k.S_DERIV] = lanes(pid.integral), lanes(pid.derivative)
    st[:, k.S_INTEGRAL_ERROR] = lanes(pid._integral_error)
    st[:, k.S_Y_PREV], st[:, k.S_HAS_Y] = lanes(pid._y_prev), float(pid._y_prev is not None)
    st[:, k.S_SP] = lanes(pid.ramped_setpoint)
    st[:, k.S_HAS_SP] = float(pid.ramped_setpoint is not None)
    st[:, k.S_UNCLAMPED] = lanes(pid.unclamped, np.nan)
    st[:, k.S_OUTPUT] = lanes(pid.last_output, np.nan)
    return par, st


def _restore_pid(pid: PID, st: np.ndarray, n: int) -> None:
    """Leave the PID in the state the numpy route would (floats for one lane)."""
    k = _load()

    def value(row: int) -> Any:
        return st[:, row].copy() if n > 1 else float(st[0, row])

    pid.integral, pid.derivative, pid._y_prev = (value(k.S_INTEGRAL), value(k.S_DERIV),
                                                 value(k.S_Y_PREV))
    pid.ramped_setpoint, pid.unclamped = value(k.S_SP), value(k.S_UNCLAMPED)
    pid.last_output = value(k.S_OUTPUT)
    pid._integral_error = value(k.S_INTEGRAL_ERROR)
    pid.saturated = pid.last_output != pid.unclamped


def _reference(controller: DigitalController, n: int, Ts: np.ndarray, control_periods: range
               ) -> tuple[np.ndarray, np.ndarray, bool]:
    """(times, values (m, lanes), per control step?) of the controller's reference."""
    table = controller.reference.table
    if table is not None:
        times, values = table
        return (np.ascontiguousarray(times, dtype=float),
                np.stack([np.broadcast_to(np.asarray(v, dtype=float), (n,)) for v in values]),
                False)
    # A function of time: evaluated at each control step's period start, as the hook does.
    values = [np.broadcast_to(controller.reference(k * Ts), (n,)) for k in control_periods]
    return np.zeros(1), np.stack(values) if values else np.zeros((1, n)), True


def run(drive: Any, stepper: Any, controller: DigitalController | None, wave: np.ndarray,
        rec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Simulate the request ``drive`` (:class:`boostsim.drive.Drive`) on ``stepper``'s
    conditions; fills ``wave`` (3, lanes, n_t) and ``rec`` (5, lanes, periods) and returns the
    final state (il, vc)."""
    k = _load()
    n, Ts, n_periods = drive.n, drive.Ts, drive.n_periods
    cond = stepper.conditions
    tab = np.ascontiguousarray(cond.tables.transpose(2, 0, 1))
    il_end, vc_end = np.empty(n), np.empty(n)
    sync = stepper.sync
    chatter = np.full(n, -1)
    if controller is None:
        mode = 0 if drive.schedule is None else 1
        duties = drive.constant[None, :] if mode == 0 else drive.schedule
        _lanes_kernel(n)(tab, cond.times, Ts, sync, drive.il0, drive.vc0, n_periods, drive.dt,
                         drive.n_t, mode, np.ascontiguousarray(duties), 1, *_no_controller(n),
                         wave, rec, np.empty((n, 0)), np.empty((k.N_LOG, n, 0)), il_end, vc_end,
                         chatter)
    else:
        _run_controller(k, drive, tab, cond.times, sync, controller, wave, rec, np.empty((n, 0)),
                        il_end, vc_end, chatter)
    _check_chatter(chatter)
    return il_end, vc_end


def _check_chatter(chatter: np.ndarray) -> None:
    if np.any(chatter >= 0):
        lanes = np.flatnonzero(chatter >= 0)
        raise RuntimeError(f"period {int(chatter[lanes].min())}: more than "
                           f"{_load().MAX_SEGMENTS} segments in lanes {lanes[:5].tolist()} "
                           f"(diode chattering at the conduction boundary); check the "
                           f"parameters")


def closed_loop_means(params: Any, controller: DigitalController, *, t_end: float, vref: Any,
                      steps: Any = (), x0: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The closed loop's exact mean output voltage over every period [V], shape
    (lanes, periods), and the duties (lanes, periods), without waveforms or control log
    (compiled route only: the memory of a large study is the two arrays)."""
    from .drive import prepare_drive
    from .engine import Stepper

    use_compiled("compiled", controller)  # refuses what the kernel cannot run
    drive = prepare_drive(params, None, t_end, None, x0=x0, controller=controller, vref=vref,
                          steps=steps, default_dt_periods=1.0)
    stepper = Stepper(drive.lanes, steps)
    n, periods = drive.n, drive.n_periods
    tab = np.ascontiguousarray(stepper.conditions.tables.transpose(2, 0, 1))
    rec = np.empty((_load().N_REC, n, periods))
    means = np.empty((n, periods))
    chatter = np.full(n, -1)
    drive.n_t = 0
    _run_controller(_load(), drive, tab, stepper.conditions.times, stepper.sync, controller,
                    np.empty((3, n, 0)), rec, means, np.empty(n), np.empty(n), chatter,
                    log=False)
    _check_chatter(chatter)
    return means, rec[0]


# Lanes from which the kernel's parallel loop pays on two cores (benchmarks/bench_control.py).
PARALLEL_LANES = 64


def _lanes_kernel(n: int) -> Any:
    k = _load()
    return k.run_lanes_parallel if n >= PARALLEL_LANES else k.run_lanes


def _no_controller(n: int) -> tuple:
    k = _load()
    return (np.zeros((n, k.N_PID_PAR)), np.zeros((n, k.N_PID_STATE)), False, False,
            np.zeros(k.N_ADC), np.zeros(1), np.uint64(0), np.zeros((n, 3)), np.zeros(1),
            np.zeros((1, n)), False)


def controller_arrays(controller: DigitalController, n: int, Ts: np.ndarray, n_periods: int,
                      log: bool) -> dict[str, Any]:
    """The kernel's inputs for a started controller: PID, ADC, PWM, reference, the noise key
    (:mod:`boostsim.lanenoise`), log."""
    k = _load()
    every = controller.every
    control_periods = range(every, n_periods, every)
    steps = len(control_periods)
    adc, pwm = controller.adc, controller.pwm
    settings = np.zeros(k.N_ADC)
    settings[k.A_IMMEDIATE] = pwm.update == "immediate"
    settings[k.A_MID_ON] = adc.sample_at == "mid_on"
    settings[k.A_FRACTION] = 0.0 if adc.sample_at == "mid_on" else float(adc.sample_at)
    settings[k.A_DIVIDER] = adc.divider
    settings[k.A_FACTOR] = (1.0 + adc.gain_error) / adc.vref * adc.full_scale
    settings[k.A_OFFSET] = adc.offset_codes
    settings[k.A_TOP] = adc.full_scale - 1
    settings[k.A_VOLTS_PER_CODE] = adc.volts_per_code
    settings[k.A_NOISE] = adc.noise_rms
    offsets = (np.arange(adc.oversample) - 0.5 * (adc.oversample - 1)) * adc.spacing
    par, st = pid_arrays(controller.pid, n)
    ref_times, ref_values, per_step = _reference(controller, n, Ts, control_periods)
    return dict(every=every, par=par, st=st, use_ramp=controller.pid._ramp_step is not None,
                backcalc=controller.pid._backcalc, adc=settings, offsets=offsets,
                noise_key=np.uint64(controller._noise_key),
                pwm=np.ascontiguousarray(np.stack(pwm.counter_limits(controller._fsw), axis=1)),
                ref_times=ref_times, ref_values=np.ascontiguousarray(ref_values),
                per_step=per_step, log=np.empty((k.N_LOG, n, steps if log else 0)),
                periods=np.arange(every, n_periods, every))


def _run_controller(k: Any, drive: Any, tab: np.ndarray, times: np.ndarray, sync: np.ndarray,
                    controller: DigitalController, wave: np.ndarray, rec: np.ndarray,
                    means: np.ndarray, il_end: np.ndarray, vc_end: np.ndarray,
                    chatter: np.ndarray, log: bool = True) -> None:
    n, Ts = drive.n, drive.Ts
    a = controller_arrays(controller, n, Ts, drive.n_periods, log=log)
    duties = np.array(controller._duty, dtype=float).reshape(1, n)
    _lanes_kernel(n)(tab, times, Ts, sync, drive.il0, drive.vc0, drive.n_periods, drive.dt,
                     drive.n_t, 2, duties, a["every"], a["par"], a["st"], a["use_ramp"],
                     a["backcalc"], a["adc"], a["offsets"], a["noise_key"], a["pwm"],
                     a["ref_times"], a["ref_values"], a["per_step"], wave, rec, means, a["log"],
                     il_end, vc_end, chatter)
    hand_back(controller, a, duties[0], Ts)


def hand_back(controller: DigitalController, a: dict[str, Any], duty: np.ndarray,
              Ts: np.ndarray) -> None:
    """Leave the controller as the numpy route would after a compiled run of
    :func:`controller_arrays` ``a``: its last duty, the PID's state and the control log."""
    k = _load()
    n = duty.size
    controller._duty = duty.copy()
    log, periods = a["log"], a["periods"]
    controller._step += periods.size
    if periods.size:
        _restore_pid(controller.pid, a["st"], n)
    if log.shape[2]:
        volts_per_code = a["adc"][k.A_VOLTS_PER_CODE]

        def control_log() -> ControlLog:
            # Built when asked for: the kernel's rows, the reading in volts as the kernel
            # computed it (code times volts per code).
            measured = log[k.L_CODE].T * volts_per_code
            return ControlLog(
                period=periods, t=periods[:, None] * Ts[None, :], setpoint=log[k.L_SETPOINT].T,
                adc_code=log[k.L_CODE].T, measured=measured,
                error=log[k.L_SETPOINT].T - measured, integral=log[k.L_INTEGRAL].T,
                duty_command=log[k.L_COMMAND].T, duty=log[k.L_DUTY].T)

        controller._compiled_log = control_log
