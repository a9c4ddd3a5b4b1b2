"""Calibration of the output-voltage reading, ``v = gain * v_board + offset`` (``CAL:VOUT``),
from one or two reference voltages.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ..board import Board
from ..firmware import config as fw
from .common import VOLTS_PER_CODE, _robust

# ---------------------------------------------------------------------------- calibration


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


def solve_calibration(raw: Sequence[float], reference: Sequence[float]) -> tuple[float, float]:
    """``v_true = gain * v_raw + offset`` from one point (gain only, offset 0) or two
    (gain and offset). Raises ValueError outside the board's ranges (gain 0.5..2,
    |offset| <= 5 V) or for two points too close together."""
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
        raise ValueError(f"calibration gain {gain:.5g} outside {fw.CAL_GAIN_MIN:g}.."
                         f"{fw.CAL_GAIN_MAX:g}: check the reference values and the wiring")
    if abs(offset) > fw.CAL_OFFSET_MAX:
        raise ValueError(f"calibration offset {offset:.4g} V beyond +-{fw.CAL_OFFSET_MAX:g} V: "
                         f"check the reference values and the wiring")
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
