"""The averaged model under the board's ADC, PID and PWM (or open loop) as one compiled loop.

The compiled twin of :func:`boostsim.averaged.simulate_averaged`'s period loop, one lane at a
time. It writes no physics of its own: the averaged model and its single-lane integrator
(:func:`boostsim.averaged._period_scalar`, :func:`~boostsim.averaged._sample_scalar`, the field
and the exponential step) are compiled here from their text in :mod:`boostsim.averaged`
(``numba.extending.register_jitable``), and the PID, the ADC conversion, the PWM quantiser and
the reference are the switching kernel's (:mod:`boostsim.kernel`). What is here is the loop:
the controller's sampling of the previous period (:class:`boostsim.control.DigitalController`'s
instants on the averaged model's centred samples), the records and the output grid.

Imported lazily by :mod:`boostsim.avgloop`, which prepares the arrays. Compiled with
``cache=True`` (no fastmath), the cache names following every compiled source
(:mod:`boostsim.jitcache`: an edit of ``averaged.py`` compiles these afresh).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import prange
from numba.extending import register_jitable

from . import averaged as av
from .jitcache import njit
from .kernel import (
    A_NOISE,
    NOISE_BLOCK,
    adc_code,
    control_step,
    conversion_instant,
    fill_noise,
    lane_noise_start,
)

_JIT = dict(cache=True, error_model="numpy")


def _jit(**options: Any) -> Any:
    """``njit(cache=True)`` whose cache follows every compiled source (:mod:`boostsim.jitcache`)."""
    return njit(**_JIT, **options)


# The averaged model and its single-lane integrator, compiled from boostsim.averaged as written
# (a lane's circuits are a structured array here, a list of _ScalarCircuit there: the same
# attributes). They allocate nothing, so they are compiled without numba's reference counting
# (as boostsim.kernel's): otherwise every call increments and decrements each array
# argument's count atomically, a good part of a period's time.
for _function in (av._ccm_linear, av._peak_current, av._dcm_terms, av._rest_terms, av._output,
                  av._phi1_scalar, av._taylor, av._phi1_coefficients_scalar, av._field_scalar,
                  av._step_scalar, av._count_le, av._period_scalar, av._sample_scalar,
                  av._put_tail):
    register_jitable(error_model="numpy", _nrt=False)(_function)

# Per-period record rows (boostsim.averaged._Records).
(R_DUTY, R_IL_START, R_VC_START, R_IL_MEAN, R_VC_MEAN, R_VOUT_MEAN, R_D2, R_MODE) = range(8)
N_RECORDS = 8
#: duty_mode: a constant duty per lane, a (periods, lanes) schedule, the DigitalController.
CONSTANT, SCHEDULE, CONTROLLER = 0, 1, 2


@_jit(_nrt=False)
def adc_reading(circuits, pieces, count, d_prev, d, Ts, adc, offsets, noise, first, table):
    """The averaged ADC code of one control step, sampled from the period held in ``pieces``
    (duty ``d``, after ``d_prev``) at DigitalController's instants, each the average centred
    on it (AveragedView.sample); conversion o adds the unit noise draw ``noise[first + o]``
    (boostsim.kernel.adc_reading)."""
    n_os = offsets.size
    total = 0.0
    for o in range(n_os):
        tau = conversion_instant(adc, offsets, o, d, Ts)
        vout = av._sample_scalar(circuits, pieces, count, tau + 0.5 * Ts, d_prev, d, Ts,
                                 table)[2]
        total += adc_code(adc, vout, noise[first + o])
    return total if n_os == 1 else total / n_os


@_jit(_nrt=False)
def record_grid(circuits, pieces, count, t0, Ts, d_prev, d, dt, n_t, final, wave, j, table):
    """Lane j's output-grid samples inside this period into ``wave`` (3, lanes, n_t), as
    boostsim.averaged._Grid.record (the last period also takes the sample at t_end)."""
    first = np.ceil(t0 / dt - 1e-9)
    end = np.floor((t0 + Ts) / dt + 1e-9) + 1 if final else np.ceil((t0 + Ts) / dt - 1e-9)
    for g in range(int(first), min(int(end), n_t)):
        il, vc, vout = av._sample_scalar(circuits, pieces, count, min(g * dt - t0, Ts),
                                         d_prev, d, Ts, table)
        wave[0, j, g], wave[1, j, g], wave[2, j, g] = il, vc, vout


@_jit()
def run_lane(j, tab, times, Ts_lanes, il0, vc0, d_first, n_periods, dt, n_t, duty_mode, duties,
             every, pid_par, pid_st, use_ramp, backcalc, adc, offsets, noise_key, pwm, ref_times,
             ref_values, ref_per_step, rec, vout0, wave, log):
    """Simulate lane j for ``n_periods`` periods (see :func:`run_lanes`)."""
    Ts = Ts_lanes[j]
    circuits = tab[j].copy()
    times_j = times[j].copy()
    buffers = np.empty((2, av._PW * (times_j.size + 3)))
    table = np.full((av._STEP_SLOTS, 6), np.nan)  # phi1 coefficients (see av._step_scalar)
    par, st = pid_par[j].copy(), pid_st[j].copy()
    noise_start = lane_noise_start(noise_key, j)  # the ADC noise, a block of steps at a time
    noise = np.zeros(NOISE_BLOCK * offsets.size)
    i, v = il0[j], vc0[j]
    d = duties[0, j]
    dp = d_first[j]
    prev_dp, prev_count = dp, 0
    step = 0
    for k in range(n_periods):
        t0 = k * Ts
        cur = k % 2
        if duty_mode == SCHEDULE:
            d = duties[k, j]
        elif duty_mode == CONTROLLER and k > 0 and k % every == 0:
            b = step % NOISE_BLOCK
            if b == 0 and adc[A_NOISE] > 0:
                fill_noise(noise, noise_start, step * offsets.size)
            code = adc_reading(circuits, buffers[1 - cur], prev_count, prev_dp, d, Ts, adc,
                               offsets, noise, b * offsets.size, table)
            d = control_step(code, adc, par, st, use_ramp, backcalc, ref_times, ref_values,
                             ref_per_step, j, t0, step, pwm[j], log)
            step += 1
            if not 0.0 <= d < 1.0:  # the caller reports it, as check_duty would
                rec[R_DUTY, j, k] = d
                pid_st[j] = st
                return k
        if k == 0 and np.isnan(dp):
            dp = d
        pieces = buffers[cur]
        count, i1, v1, end, epoch = av._period_scalar(circuits, times_j, t0, Ts, i, v, dp, d,
                                                      pieces, table)
        if k == 0:
            vout0[j] = av._field_scalar(circuits[int(pieces[av._P_EPOCH])], i, v, dp).vout
        rec[R_DUTY, j, k], rec[R_IL_START, j, k], rec[R_VC_START, j, k] = d, i, v
        rec[R_IL_MEAN, j, k], rec[R_VC_MEAN, j, k], rec[R_VOUT_MEAN, j, k] = i1, v1, end.vout
        rec[R_D2, j, k], rec[R_MODE, j, k] = end.d2, end.mode
        if n_t > 0:
            record_grid(circuits, pieces, count, t0, Ts, dp, d, dt, n_t, k == n_periods - 1,
                        wave, j, table)
        prev_count = av._put_tail(pieces, count, Ts, i1, v1, d, epoch)
        prev_dp = dp
        i, v, dp = i1, v1, d
    pid_st[j] = st
    if duty_mode == CONTROLLER:
        duties[0, j] = d
    return -1


@_jit()
def run_lanes(tab, times, Ts, il0, vc0, d_first, n_periods, dt, n_t, duty_mode, duties, every,
              pid_par, pid_st, use_ramp, backcalc, adc, offsets, noise_key, pwm, ref_times,
              ref_values, ref_per_step, rec, vout0, wave, log, bad):
    """Simulate every lane for ``n_periods`` periods, one after the other.

    ``tab`` (lanes, epochs) the circuit constants per epoch between line/load steps
    (structured, :data:`boostsim.avgloop.CIRCUIT_DTYPE`), ``times`` (lanes, steps) the
    shifted step instants [s],
    ``d_first`` the duty before t = 0 (NaN: the first period's). duty_mode :data:`CONSTANT`
    (``duties[0, j]``), :data:`SCHEDULE` (``duties[k, j]``) or :data:`CONTROLLER`
    (``duties[0, j]`` its initial duty, receiving the last; PID, ADC, PWM and reference as
    boostsim.fastloop.controller_arrays prepares them). Outputs: ``rec`` (8, lanes, periods),
    ``vout0`` (lanes,), ``wave`` (3, lanes, n_t) if ``n_t`` > 0 (else the caller fills the
    grid from the records), ``log`` (boostsim.kernel.N_LOG, lanes, steps) if it has columns,
    ``bad`` (lanes,) the period whose controller duty was outside [0, 1) (-1: none). The ADC
    noise comes from ``noise_key`` (boostsim.lanenoise), as in boostsim.kernel.
    """
    for j in range(Ts.size):
        bad[j] = run_lane(j, tab, times, Ts, il0, vc0, d_first, n_periods, dt, n_t, duty_mode,
                          duties, every, pid_par, pid_st, use_ramp, backcalc, adc, offsets,
                          noise_key, pwm, ref_times, ref_values, ref_per_step, rec, vout0, wave,
                          log)


@_jit(parallel=True)
def run_lanes_parallel(tab, times, Ts, il0, vc0, d_first, n_periods, dt, n_t, duty_mode,
                       duties, every, pid_par, pid_st, use_ramp, backcalc, adc, offsets, noise_key,
                       pwm, ref_times, ref_values, ref_per_step, rec, vout0, wave, log, bad):
    """:func:`run_lanes` with the lanes shared out over the cores."""
    for j in prange(Ts.size):
        bad[j] = run_lane(j, tab, times, Ts, il0, vc0, d_first, n_periods, dt, n_t, duty_mode,
                          duties, every, pid_par, pid_st, use_ramp, backcalc, adc, offsets,
                          noise_key, pwm, ref_times, ref_values, ref_per_step, rec, vout0, wave,
                          log)
