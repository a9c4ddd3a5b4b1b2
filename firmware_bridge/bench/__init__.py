"""Bench experiments on the board (or its emulator), each laid beside the same simulation.

One experiment per module, as PyMeasure keeps procedures, results and plots apart:

* :mod:`.sweep`: :func:`measure_sweep`, the open-loop duty sweep (settle, average
  ``MEAS:VOLT?`` repeats or streamed samples, abort on a trip, resume after a board reset if
  asked) and :func:`simulate_sweep` (the exact periodic steady state of the same board at the
  duties the RP2040 really produces); :func:`fit_losses` fits unknown loss parameters so the
  model matches the bench.
* :mod:`.step`: :func:`run_step`, a duty step (or load step, where an emulator applies it)
  captured with the streaming acquisition on the board's clock, and :func:`simulate_step` from
  the same initial condition (the steady state at the first duty).
* :mod:`.live`: :func:`run_live`, a host-side PID loop (:class:`boostsim.pid.PID`, the same
  class as in the simulator and the firmware) at a fixed rate, with ``MEAS:VOLT?`` as the
  sensor; :func:`simulate_live` runs the same loop in the switching simulator
  (:class:`boostsim.control.DigitalController` every N switching periods, an ADC averaging 16
  conversions like ``MEAS:VOLT?``).
* :mod:`.calibrate`: :func:`measure_reading`, :func:`solve_calibration`,
  :func:`calibration_toml`: ADC calibration from one or two reference voltages.
* :mod:`.identify`: :func:`measure_identify`, a PRBS duty excitation streamed on the board's
  clock, and :func:`run_identify`, which fits the exact model to it
  (:func:`boostsim.identify.identify`).
* :mod:`.board_loop`: :func:`~.board_loop.run_board_step`, a setpoint step of the board's own
  PID (``CONT:MODE PID``), and :func:`~.board_loop.simulate_board_step`, the same loop as the
  firmware runs it (:mod:`.board_model`: the serve loop's poll jitter, the compute time, the
  PWM latch, single precision) in the switching simulator, several realisations at once.
* :mod:`.common`: what they share (the effective RP2040 duty, ramping the output on, holding
  while streaming, outlier rejection); :mod:`.figures`: their figures.

Every experiment can write an incremental per-sample log (:class:`boostsim.datalog.SampleLog`)
and leaves the output off when it ends, fails or is interrupted. Figures are built without
pyplot (headless); :class:`LivePlotter` shows a live window in a separate process when a
display is available. Host code: nothing here imports the emulator.
"""

from __future__ import annotations

from .calibrate import calibration_toml, measure_reading, solve_calibration
from .common import effective_pwm, ramp_duty, switch_on_at, unlocked_rate
from .figures import (
    LivePlotter,
    bench_sweep_figure,
    display_available,
    identify_figure,
    live_figure,
    step_figure,
)
from .identify import IdentifyRecord, measure_identify, run_identify
from .live import LIVE_COLUMNS, LiveResult, host_loop_controller, run_live, simulate_live
from .step import BenchStep, run_step, simulate_step
from .sweep import FITTABLE, BenchSweep, LossFit, fit_losses, measure_sweep, simulate_sweep

__all__ = [
    "FITTABLE",
    "LIVE_COLUMNS",
    "BenchStep",
    "BenchSweep",
    "IdentifyRecord",
    "LivePlotter",
    "LiveResult",
    "LossFit",
    "bench_sweep_figure",
    "calibration_toml",
    "display_available",
    "effective_pwm",
    "fit_losses",
    "host_loop_controller",
    "identify_figure",
    "live_figure",
    "measure_identify",
    "measure_reading",
    "measure_sweep",
    "ramp_duty",
    "run_identify",
    "run_live",
    "run_step",
    "simulate_live",
    "simulate_step",
    "simulate_sweep",
    "solve_calibration",
    "step_figure",
    "switch_on_at",
    "unlocked_rate",
]
