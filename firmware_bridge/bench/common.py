"""What the bench experiments share: the duty the RP2040 really produces, a streaming rate not
locked to the PWM, ramping the output on, holding while streaming, outlier rejection.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..board import Board, BoardError, TripError
from ..firmware import config as fw
from ..rp2040 import PWM_CLOCK, pwm_output

#: Output volts per ADC code with the firmware's nominal divider and reference.
VOLTS_PER_CODE = fw.ADC_VREF / fw.ADC_FULL_SCALE * fw.VOUT_DIVIDER

Reporter = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------------------- shared


def effective_pwm(duty: Any, freq: float, clock: float = PWM_CLOCK) -> tuple[float, np.ndarray]:
    """(frequency, duties) the RP2040 really produces for requested ``duty`` values at
    ``freq`` (the firmware's ``duty_u16`` and the slice counter quantise them)."""
    duties = np.atleast_1d(np.asarray(duty, dtype=float))
    if clock == 0:  # ideal PWM
        return float(freq), duties
    f, out = pwm_output(freq, duties, clock)
    return float(f), out


def unlocked_rate(rate: float, frequency: float) -> float:
    """A streaming rate near ``rate`` [Hz] whose sample period (whole microseconds, as the
    board rounds it) is not locked to the switching period.

    The sampling timer and the PWM run from the same crystal: at 20 kHz and a 100 kHz PWM
    every sample lands on the same phase of the switching ripple, so single conversions are
    biased by the ripple (several mV). A period such as 51 us steps the phase by 1 us per
    sample instead, so consecutive samples sweep the whole period."""
    target = max(1, round(1e6 / rate))
    ts_us = 1e6 / frequency
    lowest = max(1, math.ceil(1e6 / fw.ADC_RATE_MAX))
    # Whole-us periods reach at most ts_us distinct phases: look that many samples ahead.
    horizon = max(1, min(8, math.ceil(ts_us - 1e-9) - 1))
    best, best_score = target, -1.0
    for delta in sorted(range(-(target // 10) - 2, target // 10 + 3), key=abs):
        period = target + delta
        if period < lowest:
            continue
        step = (period / ts_us) % 1.0
        score = min(abs((k * step + 0.5) % 1.0 - 0.5) for k in range(1, horizon + 1))
        if score > best_score + 1e-9:
            best, best_score = period, score
        if best_score >= 0.05 and abs(delta) > 0:
            break
    return 1e6 / best


def _robust(values: np.ndarray, floor: float) -> tuple[np.ndarray, int]:
    """Drop gross outliers (a corrupted digit on the link): beyond 6 robust sigmas of the
    median, never closer than ``floor``. Returns (kept values, number dropped)."""
    v = np.asarray(values, dtype=float)
    if v.size < 4:
        return v, 0
    med = np.median(v)
    mad = 1.4826 * np.median(np.abs(v - med))
    keep = np.abs(v - med) <= max(6 * mad, floor)
    return v[keep], int(v.size - keep.sum())


def ramp_duty(board: Board, duty: float, *, max_step: float = 0.02, dwell: float = 0.005
              ) -> None:
    """Move the duty to ``duty`` in steps of at most ``max_step``, ``dwell`` s apart (the
    output state polled meanwhile), so the converter's LC ringing cannot overshoot into the
    over-voltage trip the way one large step can (0.3 -> 0.6 overshoots by about 3 V on the
    default board). With the output off the duty is simply set."""
    if board.output_state is not True:
        board.set_duty(duty)
        return
    present = board.duty
    steps = max(1, math.ceil(abs(duty - present) / max_step - 1e-9))
    for value in np.linspace(present, duty, steps + 1)[1:]:
        board.set_duty(float(value))
        if value != duty:
            board.hold(dwell, expect_on=True)


def switch_on_at(board: Board, duty: float, **ramp: Any) -> None:
    """Output on at duty 0, then :func:`ramp_duty` to ``duty``: the soft way to start."""
    if board.output_state is not True:
        board.set_duty(0.0)
        board.output(True)
    ramp_duty(board, duty, **ramp)


def _hold_and_fetch(board: Board, seconds: float, take: Callable[[Any], None],
                    every: float = 0.02) -> None:
    """Wait ``seconds`` fetching streamed samples every ``every`` s into ``take`` (keeps the
    ring from overflowing and the watchdog fed)."""
    end = time.monotonic() + seconds
    while True:
        remaining = end - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(every, remaining))
        take(board.fetch())


@contextlib.contextmanager
def _streaming_at(board: Board, duty: float, *, settle: float, rate: float,
                  take: Callable[[Any], None]) -> Iterator[tuple[float, float]]:
    """Refuse a latched trip, ramp the output on to ``duty`` (:func:`switch_on_at`), hold
    ``settle`` s, then stream at about ``rate`` (:func:`unlocked_rate`) inside the block,
    which gets (effective rate [Hz], fetch interval [s] that keeps the ring from
    overflowing). On exit the output is checked on (normal exit), the stream stops, the rest
    is fetched into ``take``, and the output is off however the block ends."""
    try:
        trip = board.trip()
        if trip != "NONE":
            raise TripError(f"the board has a latched {trip} trip from before (clear it first)",
                            trip, "PROT:TRIP?")
        switch_on_at(board, duty)
        board.hold(settle, expect_on=True)
        effective = board.configure_acquisition(unlocked_rate(rate, board.frequency))
        board.start_acquisition()
        try:
            yield effective, min(0.02, fw.RING_SIZE / effective / 4)
            board.check(expect_on=True)
        finally:
            with contextlib.suppress(BoardError):
                board.stop_acquisition()
        take(board.fetch())
    finally:
        with contextlib.suppress(BoardError):
            board.output(False)


def _streamed(chunks: list, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """The fetched chunks of a streamed capture joined: (index, board time [s], volts, gaps);
    TripError naming ``what`` if the board tripped meanwhile."""
    if any(c.ovp_tripped or c.wdog_tripped for c in chunks):
        raise TripError(f"the board tripped during {what}", "OVP")
    index = np.concatenate([c.index for c in chunks if c.count])
    times = np.concatenate([c.t for c in chunks if c.count])
    volts = np.concatenate([c.volts for c in chunks if c.count])
    return index, times, volts, [g for c in chunks for g in c.gaps]


def _smooth(y: np.ndarray, n: int) -> np.ndarray:
    if n <= 1 or y.size < n:
        return y.copy()
    kernel = np.ones(n) / n
    pad = n // 2
    ypad = np.concatenate([np.full(pad, y[0]), y, np.full(n - 1 - pad, y[-1])])
    return np.convolve(ypad, kernel, mode="valid")
