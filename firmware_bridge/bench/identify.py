"""System identification on the bench: a short pseudo-random duty excitation around an
operating point, streamed at the ADC rate on the board's clock (:func:`measure_identify`), then
the exact switching model fitted to it (:func:`run_identify`, :func:`boostsim.identify.identify`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from boostsim.adc_model import RP2040_ADC_JITTER
from boostsim.identify import Excitation, Identification, identify, model_vout
from boostsim.params import BoostParams
from boostsim.units import format_apart

from ..board import Board, BoardError
from ..firmware import config as fw
from .common import (
    Reporter,
    _hold_and_fetch,
    _quiet,
    _streamed,
    _streaming_at,
    effective_pwm,
)

__all__ = ["IdentifyRecord", "measure_identify", "prbs", "run_identify"]

#: Largest excitation amplitude (duty) accepted: a larger step rings into the OVP.
MAX_AMPLITUDE = 0.1


_TAPS = {3: (3, 2), 4: (4, 3), 5: (5, 3), 6: (6, 5), 7: (7, 6)}  # primitive polynomials


def prbs(order: int = 4) -> np.ndarray:
    """The maximal-length pseudo-random binary sequence of an ``order``-bit Fibonacci LFSR
    (a primitive polynomial per order): 2^order - 1 bits of 0/1, 2^(order-1) of them ones."""
    if order not in _TAPS:
        raise ValueError(f"PRBS order must be 3..7, got {order!r}")
    a, b = _TAPS[order]
    state = [1] * order
    out = []
    for _ in range(2 ** order - 1):
        out.append(state[-1])
        state = [state[a - 1] ^ state[b - 1], *state[:-1]]
    return np.array(out, dtype=int)


@dataclasses.dataclass
class IdentifyRecord:
    """A measured excitation. ``t`` [s] from the first sample (board clock), ``vout`` [V]
    single conversions, ``index`` the board's sample indices; ``excitation`` the duty
    schedule on the same time axis (effective RP2040 duties); ``vin`` [V] the measured input
    (None where the board has no input channel); ``rate`` [Hz]; ``gaps`` lost samples;
    ``bench_s`` the wall time of the experiment."""

    t: np.ndarray
    vout: np.ndarray
    index: np.ndarray
    excitation: Excitation
    vin: float | None
    rate: float
    gaps: list[tuple[int, int]]
    bench_s: float

    def columns(self) -> dict[str, np.ndarray]:
        return {"t_s": self.t, "index": self.index.astype(int), "vout_meas_V": self.vout}


def _levels(duty0: float, amplitude: float, bits: np.ndarray) -> np.ndarray:
    return np.where(bits == 1, duty0 + amplitude, duty0 - amplitude)


def _check_duties(board: Board, duty0: float, amplitude: float) -> None:
    if not (0 < amplitude <= MAX_AMPLITUDE):
        raise ValueError(f"excitation amplitude must be in (0, {MAX_AMPLITUDE:g}], got "
                         f"{amplitude!r}")
    low, high = duty0 - amplitude, duty0 + amplitude
    if low < 0:
        raise ValueError("excitation {} ± {} goes below duty 0".format(
            *format_apart(duty0, amplitude)))
    limit = board.duty_limit
    ceilings = [("the board's limit", limit)]
    if board.max_duty is not None:
        ceilings.append(("max_duty", board.max_duty))
    for what, ceiling in ceilings:
        if high > ceiling:
            high_text, ceiling_text = format_apart(high, ceiling)
            raise ValueError(f"excitation {duty0:g} ± {amplitude:g} reaches duty {high_text}, "
                             f"above {what} {ceiling_text}")


def measure_identify(board: Board, duty0: float, amplitude: float = 0.04, *,
                     bit: float = 2e-3, order: int = 3, rate: float = 20e3,
                     pre: float = 4e-3, post: float = 8e-3, settle: float = 0.2, log=None,
                     report: Reporter = _quiet) -> IdentifyRecord:
    """Run the excitation on ``board`` and stream the output.

    The output is ramped on to ``duty0`` and held ``settle`` s; ``vin`` is measured
    (``MEAS:VOLT:IN?``, where wired); the board streams at about ``rate``; after ``pre`` s the
    duty follows a PRBS of ``order`` (2^order - 1 bits of ``bit`` s) between ``duty0 ±
    amplitude``, each change sent with a ``FETC:ADC?`` in one write (marks it on the sample
    clock to one sample), then ``post`` s at ``duty0``. Samples above the board's
    ``max_vout`` turn the output off and raise BoardError. The output is off when this returns.
    ``log``: a SampleLog with columns (t_board_s, index, vout_V).
    """
    import time

    _check_duties(board, duty0, amplitude)
    for name, value in (("bit", bit), ("pre", pre), ("post", post)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0 [s], got {value!r}")
    levels = _levels(duty0, amplitude, prbs(order))
    chunks: list = []

    def take(chunk) -> None:
        if chunk.count and board.max_vout is not None and chunk.volts.max() > board.max_vout:
            board.output(False)
            peak, ceiling = format_apart(chunk.volts.max(), board.max_vout, digits=4)
            raise BoardError(f"output {peak} V above the host limit max_vout={ceiling} V "
                             f"during the excitation: output turned off", None, "FETC:ADC?")
        chunks.append(chunk)
        if log is not None and chunk.count:
            log.rows_from([chunk.t, chunk.index, chunk.volts])

    marks: list[int] = []
    vin = None
    begin = time.monotonic()
    freq = board.frequency
    with _streaming_at(board, duty0, settle=settle, rate=rate, take=take) as (effective, every):
        try:  # the input under load, while the stream runs
            vin = float(board.measure_vin())
        except BoardError as exc:
            if exc.code != -241:
                raise
            report("no input-voltage channel: vin is fitted from the output alone")
        _hold_and_fetch(board, pre, take, every)
        take(board.fetch())
        for level in [*levels, duty0]:
            acq, mark = board.send_marked("SOUR:PWM:DUTY", round(float(level), 6))
            take(acq)
            marks.append(mark)
            if len(marks) <= levels.size:
                time.sleep(bit)  # the next change's fetch takes what came meanwhile
            else:
                _hold_and_fetch(board, post, take, every)
    index, times, volts, gaps = _streamed(chunks, "the excitation")
    if gaps:
        report(f"warning: {sum(g[1] for g in gaps)} samples lost in {len(gaps)} gap(s)")
    period = 1.0 / effective
    t0 = times[0] - index[0] * period  # board time of sample index 0
    first = t0 + index[0] * period
    # A change took effect between the sample before its mark and the mark.
    t_change = t0 + (np.array(marks, dtype=float) - 0.5) * period - first
    f_eff, duties = effective_pwm([*levels, duty0], freq)
    _, (d0,) = effective_pwm([duty0], freq)
    excitation = Excitation(float(d0), t_change, duties, float(f_eff))
    return IdentifyRecord(t=times - first, vout=volts, index=index, excitation=excitation,
                          vin=vin, rate=effective, gaps=gaps, bench_s=time.monotonic() - begin)


def predicted_peak(params: BoostParams, duty0: float, amplitude: float, *, bit: float = 2e-3,
                   order: int = 3, frequency: float = fw.PWM_FREQ_DEFAULT) -> float:
    """The highest output [V] the excitation reaches on ``params`` (simulated, per-period
    means): what :func:`run_identify` checks against ``max_vout`` before it starts."""
    levels = _levels(duty0, amplitude, prbs(order))
    f_eff, duties = effective_pwm([*levels, duty0], frequency)
    _, (d0,) = effective_pwm([duty0], frequency)
    times = bit * np.arange(duties.size)
    exc = Excitation(float(d0), times, duties, float(f_eff))
    t = np.linspace(0.0, float(times[-1]) + 10 * bit, 2000)
    return float(model_vout(params, exc, t).max())


def run_identify(board: Board, params: BoostParams, duty0: float, amplitude: float = 0.04, *,
                 fit: Any = None, margin: float = 0.5, adc_jitter: float = RP2040_ADC_JITTER,
                 report: Reporter = _quiet, **measure: Any
                 ) -> tuple[IdentifyRecord, Identification]:
    """:func:`measure_identify` on ``board``, then :func:`boostsim.identify.identify` from
    ``params`` (the starting board), the board's sampling ``adc_jitter`` [s rms] modelled
    (0 for an ideal sampling instant). Before anything is switched on, the excitation is
    simulated on ``params``: if its peak plus ``margin`` times the swing reaches the board's
    ``max_vout``, ValueError (the real board may ring harder than the model)."""
    if params.n_lanes != 1:
        raise ValueError("identify a single board (params with one lane)")
    _check_duties(board, duty0, amplitude)
    if board.max_vout is not None:
        keys = {k: measure[k] for k in ("bit", "order") if k in measure}
        peak = predicted_peak(params, duty0, amplitude, frequency=board.frequency, **keys)
        base = predicted_peak(params, duty0, 1e-9, frequency=board.frequency)
        if peak + margin * (peak - base) > board.max_vout:
            raise ValueError(f"the excitation is predicted to reach {peak:.2f} V (+ "
                             f"{margin:.0%} of its swing as a margin), above max_vout "
                             f"{board.max_vout:g} V: lower the duty or the amplitude")
    record = measure_identify(board, duty0, amplitude, report=report, **measure)
    kw = {} if fit is None else {"fit": fit}
    result = identify(params, record.excitation, record.t, record.vout,
                      vin_measured=record.vin, adc_jitter=adc_jitter, **kw)
    return record, result
