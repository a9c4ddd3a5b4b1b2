"""Calibration of the output-voltage reading, ``v = gain * v_board + offset`` (``CAL:VOUT``),
from one or two reference voltages.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from boostsim.units import format_apart

from ..board import Board
from ..firmware import config as fw
from .common import VOLTS_PER_CODE, _robust

# ---------------------------------------------------------------------------- calibration

#: Largest correction taken without ``force``: a divider of 1 % resistors and the RP2040's ADC
#: are off by a few %; more is a mistyped meter reading or the wrong point far more often.
PLAUSIBLE_GAIN_ERROR = 0.10     # |gain - 1|
PLAUSIBLE_OFFSET_V = 0.5        # |offset| [V], 2 % of the divider's 25.4 V full scale


def measure_reading(board: Board, samples: int = 32) -> tuple[float, float, float]:
    """Mean of ``samples`` MEAS:VOLT? readings, converted back to the *uncalibrated* divider
    voltage with the board's present calibration. Returns (raw mean, raw std, calibrated
    mean) [V]."""
    gain, offset = board.calibration
    values = np.array([board.measure_vout() for _ in range(samples)])
    kept, _ = _robust(values, 4 * VOLTS_PER_CODE * gain)
    raw = (kept - offset) / gain
    return float(raw.mean()), float(raw.std(ddof=1)) if raw.size > 1 else 0.0, \
        float(kept.mean())


def solve_calibration(raw: Sequence[float], reference: Sequence[float], *,
                      force: bool = False) -> tuple[float, float]:
    """``v_true = gain * v_raw + offset`` from one point (gain only, offset 0) or two
    (gain and offset). Raises ValueError for two points too close together, outside the
    board's ranges (``CAL_GAIN_MIN..MAX``, ``|offset| <= CAL_OFFSET_MAX``) and, unless
    ``force``, for a correction beyond the plausible (``PLAUSIBLE_GAIN_ERROR``,
    ``PLAUSIBLE_OFFSET_V``)."""
    raw = [float(v) for v in raw]
    ref = [float(v) for v in reference]
    if len(raw) != len(ref) or len(raw) not in (1, 2):
        raise ValueError("calibration needs one or two (reading, reference) pairs")
    if len(raw) == 1:
        if raw[0] <= 0.1:
            raise ValueError(f"the board reads {raw[0]:.4g} V: too low for a gain calibration "
                             f"(apply a reference voltage or turn the converter on)")
        gain, offset = ref[0] / raw[0], 0.0
    else:
        if abs(raw[1] - raw[0]) < 0.5:
            raise ValueError(f"the two readings ({raw[0]:.4g} V, {raw[1]:.4g} V) are too close "
                             f"for a two-point calibration (>= 0.5 V apart)")
        gain = (ref[1] - ref[0]) / (raw[1] - raw[0])
        offset = ref[0] - gain * raw[0]
    if not (fw.CAL_GAIN_MIN <= gain <= fw.CAL_GAIN_MAX):
        raise ValueError("calibration gain {} outside {}..{}: check the reference values and "
                         "the wiring".format(*format_apart(gain, fw.CAL_GAIN_MIN,
                                                           fw.CAL_GAIN_MAX, digits=5)))
    if abs(offset) > fw.CAL_OFFSET_MAX:
        size, ceiling = format_apart(abs(offset), fw.CAL_OFFSET_MAX, digits=4)
        raise ValueError(f"calibration offset {'-' if offset < 0 else ''}{size} V beyond "
                         f"+-{ceiling} V: check the reference values and the wiring")
    if not force:
        what = []
        if abs(gain - 1) > PLAUSIBLE_GAIN_ERROR:
            error, ceiling = format_apart(100 * abs(gain - 1), 100 * PLAUSIBLE_GAIN_ERROR,
                                          digits=3)
            what.append(f"gain {gain:.5g} ({'+' if gain > 1 else '-'}{error} %, more than "
                        f"{ceiling} %)")
        if abs(offset) > PLAUSIBLE_OFFSET_V:
            size, ceiling = format_apart(abs(offset), PLAUSIBLE_OFFSET_V, digits=4)
            what.append(f"offset {'+' if offset > 0 else '-'}{size} V (more than {ceiling} V)")
        if what:
            raise ValueError(f"calibration {' and '.join(what)} is implausible for this board: "
                             f"check the meter reading(s) and the point(s); --force to apply "
                             f"it anyway")
    return gain, offset


def calibration_toml(gain: float, offset: float, *, identity: str = "",
                     points: Sequence[tuple[float, float]] = ()) -> str:
    """The TOML snippet for the board configuration (``[board.calibration]``, applied by the
    bench commands on connect) and the firmware ``config.py`` lines for power-up defaults."""
    when = time.strftime("%Y-%m-%d")
    lines = [f"# boostsim bench calibrate, {when}" + (f", {identity}" if identity else "")]
    for raw, ref in points:
        lines.append(f"#   board read {raw:.5f} V (uncalibrated) at {ref:.5f} V")
    lines += ["[board.calibration]", f"vout_gain = {gain:.6g}", f"vout_offset = {offset:.6g}",
              "# firmware config.py (power-up default):",
              f"# CAL_VOUT_GAIN = {gain:.6g}", f"# CAL_VOUT_OFFSET = {offset:.6g}"]
    return "\n".join(lines) + "\n"
