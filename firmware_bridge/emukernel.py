"""The emulator's compiled loops (numba): the plant's samples of one chunk, ADC conversions.

:meth:`firmware_bridge.plant.Plant.sample` spends most of its time evaluating a few to a few
dozen instants in the periods of one affine chunk (the ADC conversions of a control step, the
streamed samples and protection ticks since the last one): about twenty numpy calls on tiny
arrays. :func:`evaluate` does the same arithmetic in one compiled loop: the start state of
each sample's period by the chunk's map ``x -> phi x + gamma`` applied period after period
(exact to rounding, as :meth:`_Chunk.orbit`), the waveform tables interpolated with
``np.interp``'s formula (as :meth:`_Chunk.evaluate_at`) and combined as
:meth:`_Chunk._combine`. The numpy path stays the reference (``tests/test_emulator_plant.py``
compares the two) and runs when numba cannot be imported.

Under a certified map (no period needs checking) a request is one call: :func:`certified`
evaluates its samples and moves the state on by the map's closed form, in CPython's complex
arithmetic to the last bit (:meth:`_Chunk.state`); :func:`crossing` does the same through a
control step's duty change, taking the new duty's map from the change on when that one is
valid and certified there (the same decision, in the same arithmetic, as the Python loop).

:func:`adc_codes` converts a batch of voltages through a divider as :meth:`AdcModel.codes`
does (gain, offset, noise, the DNL's transition levels or rounding, clipping) and sums them,
for the streamed samples and the firmware's averaged conversions.

Compiled with ``cache=True``: the first process compiles (a few seconds), later ones load the
machine code from disk (about 0.2 s); :func:`warm_up` does it when a plant is made, before the
emulator's board thread starts, so the board's first samples do not wait.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["CCM", "DCM", "MAX_PERIODS", "TRANSITION", "adc_codes", "certified", "crossing",
           "evaluate", "stream_times", "warm_up"]

CCM, DCM, TRANSITION = 0, 1, 2
#: Periods past the chunk's start beyond which the caller takes the numpy path (closed-form
#: powers) rather than applying the map that many times.
MAX_PERIODS = 20000
# Table rows: w(tau; x) = alpha(tau) + beta_i(tau) iL + beta_v(tau) vC for vout and iL.
_VOUT, _VOUT_I, _VOUT_V, _IL, _IL_I, _IL_V = range(6)


@njit(cache=True, error_model="numpy")
def _bisect_right(a, x):  # pragma: no cover - compiled
    """``bisect.bisect_right(a, x)`` for a sorted array ``a``."""
    lo, hi = 0, a.size
    while lo < hi:
        mid = (lo + hi) // 2
        if x < a[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True, error_model="numpy")
def _interp(xp, row, k, dx, width):  # pragma: no cover - compiled
    """``np.interp``'s value on segment ``k`` (see :meth:`_Chunk.evaluate_at`)."""
    if dx == 0.0:
        return row[k]
    return (row[k + 1] - row[k]) / width * dx + row[k]


@njit(cache=True, error_model="numpy")
def evaluate(times, lo, hi, freq, base, m, il0, vc0, phi, gamma, xp, tabs, kind, current,
             out_v, out_i):  # pragma: no cover - compiled
    """vout (and iL if ``current``) at ``times[lo:hi]`` into ``out_v``/``out_i`` (same
    indices), all in the chunk's periods 0..m-1 counted from ``base`` = (period start of
    period 0) * freq, from the start state (il0, vc0); ``kind`` CCM, DCM or TRANSITION."""
    p11, p12, p21, p22 = phi[0], phi[1], phi[2], phi[3]
    g1, g2 = gamma[0], gamma[1]
    inv = 1.0 / freq
    n_xp = xp.size
    done = 0
    il, vc = il0, vc0
    for p in range(lo, hi):
        rel = times[p] * freq - base
        j = int(rel)  # truncation, as astype(int64): rel >= -rounding
        if j > m - 1:
            j = m - 1
        tau = rel - j
        if tau < 0.0:
            tau = 0.0
        elif tau > 1.0:
            tau = 1.0
        tau *= inv
        while done < j:
            il, vc = p11 * il + p12 * vc + g1, p21 * il + p22 * vc + g2
            done += 1
        k = _bisect_right(xp, tau) - 1
        if k < 0:
            k, dx, width = 0, 0.0, 1.0
        elif k >= n_xp - 1:
            k, dx, width = n_xp - 1, 0.0, 1.0
        else:
            dx, width = tau - xp[k], xp[k + 1] - xp[k]
        v = _interp(xp, tabs[_VOUT], k, dx, width) + _interp(xp, tabs[_VOUT_V], k, dx,
                                                               width) * vc
        if kind != DCM:
            v = v + _interp(xp, tabs[_VOUT_I], k, dx, width) * il
        out_v[p] = v
        if current:
            i = _interp(xp, tabs[_IL], k, dx, width)
            if kind != DCM:
                i = i + _interp(xp, tabs[_IL_I], k, dx, width) * il + _interp(
                    xp, tabs[_IL_V], k, dx, width) * vc
            if kind != CCM and i < 0.0:
                i = 0.0
            out_i[p] = i


@njit(cache=True, error_model="numpy")
def _cpow(re, im, n):  # pragma: no cover - compiled
    """``complex(re, im) ** n`` for an int ``n >= 0`` as CPython computes it, to the last
    bit: binary powering up to 100, else polar form (Objects/complexobject.c)."""
    if n <= 100:
        r_re, r_im, p_re, p_im = 1.0, 0.0, re, im
        mask = 1
        while n >= mask:
            if n & mask:
                r_re, r_im = r_re * p_re - r_im * p_im, r_re * p_im + r_im * p_re
            mask <<= 1
            p_re, p_im = p_re * p_re - p_im * p_im, p_re * p_im + p_im * p_re
        return r_re, r_im
    if re == 0.0 and im == 0.0:
        return 0.0, 0.0
    size = math.hypot(re, im) ** float(n)
    phase = math.atan2(im, re) * float(n)
    return size * math.cos(phase), size * math.sin(phase)


@njit(cache=True, error_model="numpy")
def _mode(pack, at, e_i, e_v, n):  # pragma: no cover - compiled
    """One mode of :meth:`_Chunk.state`'s closed form, ``lam ** n * (w0 * e_i + w1 * e_v)``,
    in CPython's complex arithmetic (a float operand is complex(x, 0.0)): ``pack[at:at+2]``
    is lam, ``pack[at+2:at+6]`` the row (w0, w1) of V^-1."""
    w0_re, w0_im, w1_re, w1_im = pack[at + 2], pack[at + 3], pack[at + 4], pack[at + 5]
    s_re = (w0_re * e_i - w0_im * 0.0) + (w1_re * e_v - w1_im * 0.0)
    s_im = (w0_re * 0.0 + w0_im * e_i) + (w1_re * 0.0 + w1_im * e_v)
    l_re, l_im = _cpow(pack[at], pack[at + 1], n)
    return l_re * s_re - l_im * s_im, l_re * s_im + l_im * s_re


@njit(cache=True, error_model="numpy")
def _closed_state(pack, il0, vc0, n):  # pragma: no cover - compiled
    """:meth:`_Chunk.state` after ``n`` periods from (il0, vc0), to the last bit."""
    if n == 0:
        return il0, vc0
    fix_i, fix_v = pack[6], pack[7]
    e_i, e_v = il0 - fix_i, vc0 - fix_v
    p0_re, p0_im = _mode(pack, 8, e_i, e_v, n)
    p1_re, p1_im = _mode(pack, 14, e_i, e_v, n)
    # V = [[v00, v01], [v10, v11]] at pack[20:28]; the real parts of V (p0, p1).
    il = fix_i + ((pack[20] * p0_re - pack[21] * p0_im) + (pack[22] * p1_re - pack[23] * p1_im))
    vc = fix_v + ((pack[24] * p0_re - pack[25] * p0_im) + (pack[26] * p1_re - pack[27] * p1_im))
    return il, vc


@njit(cache=True, error_model="numpy")
def certified(times, lo, hi, freq, base, m, il0, vc0, pack, xp, tabs, kind, current, out_v,
              out_i, n):  # pragma: no cover - compiled
    """A certified map's periods (see :meth:`Plant._run_certified`): :func:`evaluate` of
    ``times[lo:hi]``, then the state after ``n`` periods by the map's closed form
    (:meth:`_Chunk.state`, to the last bit). ``pack``: :meth:`_Chunk.closed_arrays`."""
    if hi > lo:
        evaluate(times, lo, hi, freq, base, m, il0, vc0, pack[0:4], pack[4:6], xp, tabs, kind,
                 current, out_v, out_i)
    return _closed_state(pack, il0, vc0, n)


@njit(cache=True, error_model="numpy")
def _holds(pack, il0, vc0):  # pragma: no cover - compiled
    """A CCM map's :meth:`_Chunk.first_valid` and its certificate's radius test
    (:meth:`_Chunk.certified`) at (il0, vc0), in the same arithmetic."""
    if pack[29] == 0.0:  # not synchronous: the CCM criteria of the first period
        if pack[30] != 0.0 or il0 < 0:
            return False
        i1 = pack[0] * il0 + pack[1] * vc0 + pack[4]
        v1 = pack[2] * il0 + pack[3] * vc0 + pack[5]
        il_edge = pack[31] * il0 + pack[32]
        vc_edge = pack[33] * vc0 + pack[34]
        slope_edge = pack[35] * il_edge + pack[36] * vc_edge + pack[37]
        slope_end = pack[35] * i1 + pack[36] * v1 + pack[37]
        if not (il_edge > 0 and i1 > 0 and not (slope_edge < 0 and slope_end > 0)):
            return False
    d_i, d_v = il0 - pack[6], vc0 - pack[7]
    return pack[28] > 0 and d_i * d_i + d_v * d_v < pack[28]


@njit(cache=True, error_model="numpy")
def crossing(times, lo, mid, hi, freq, base, n, il0, vc0, pack, xp, tabs, kind, base_next,
             n_next, pack_next, xp_next, tabs_next, current, out_v, out_i,
             i_eps):  # pragma: no cover - compiled
    """A control step's duty change under a certified map (see :meth:`Plant._cross`):
    :func:`certified` for the ``n`` periods up to the change (``times[lo:mid]``); then, if the
    new duty's CCM map holds from there (the current there not rounded to zero, its first
    period in CCM, its certificate), :func:`certified` under it for ``times[mid:hi]`` and
    ``n_next`` periods on. Returns (state at the change, whether the new map took over,
    state at the end)."""
    il_c, vc_c = certified(times, lo, mid, freq, base, n, il0, vc0, pack, xp, tabs, kind,
                           current, out_v, out_i, n)
    if not (abs(il_c) > i_eps and _holds(pack_next, il_c, vc_c)):
        return il_c, vc_c, False, il_c, vc_c
    il_e, vc_e = certified(times, mid, hi, freq, base_next, n_next + 1, il_c, vc_c, pack_next,
                           xp_next, tabs_next, CCM, current, out_v, out_i, n_next)
    return il_c, vc_c, True, il_e, vc_e


@njit(cache=True, error_model="numpy")
def adc_codes(v, divider, scale, offset, noise_lsb, normals, levels, max_code,
              out):  # pragma: no cover - compiled
    """Codes of the voltages ``v`` [V] through the divider ``divider`` into ``out``, and their
    sum: ``x = v / divider * scale + offset`` (+ ``noise_lsb`` times the standard
    ``normals``), then the first transition level above x (``levels``; empty: x rounded half
    to even), clipped to 0..max_code; NaN reads 0."""
    n_levels = levels.size
    total = 0
    for p in range(v.size):
        x = v[p] / divider * scale + offset
        if noise_lsb != 0.0:
            x += noise_lsb * normals[p]
        if not x >= 0.0:
            out[p] = 0
            continue
        if n_levels == 0:
            c = np.rint(x)
            code = max_code if c >= max_code else int(c)
        else:
            a = _bisect_right(levels, x)
            code = a if a < max_code else max_code
        out[p] = code
        total += code
    return total


@njit(cache=True, error_model="numpy")
def stream_times(base, nxt_us, period_us, jitter, normals, t, out):  # pragma: no cover
    """Instants [s] of the streamed conversions ``nxt_us + k * period_us`` [us of board time
    after ``base``], k = 0..out.size-1, each late by ``|normal| * jitter`` [s], never later
    than ``t`` nor earlier than the one before (the timer IRQ's order)."""
    late = -np.inf
    for k in range(out.size):
        x = base + (nxt_us + period_us * k) * 1e-6
        if jitter != 0.0:
            x = min(x + abs(normals[k]) * jitter, t)
            if x < late:
                x = late
            late = x
        out[k] = x


def warm_up() -> None:
    """Load (or compile, the first time) the machine code."""
    xp = np.array([0.0, 1e-5])
    out = np.empty(1)
    evaluate(np.zeros(1), 0, 1, 1e5, 0.0, 1, 0.0, 0.0, np.zeros(4), np.zeros(2), xp,
             np.zeros((6, 2)), CCM, True, out, np.empty(1))
    pack = np.zeros(38)
    crossing(np.zeros(1), 0, 0, 1, 1e5, 0.0, 1, 0.0, 0.0, pack, xp, np.zeros((6, 2)), CCM, 1.0,
             1, pack, xp, np.zeros((6, 2)), False, out, np.empty(0), 0.0)
    adc_codes(np.zeros(1), 1.0, 1.0, 0.0, 0.0, np.zeros(1), np.zeros(0), 4095,
              np.empty(1, dtype=np.int64))
    stream_times(0.0, 0, 50, 1e-7, np.zeros(1), 1.0, out)
