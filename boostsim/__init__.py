"""boostsim: DC-DC boost converter simulator and bench controller.

>>> from boostsim import BoostParams, simulate, steady_state
>>> p = BoostParams(vin=12, L=100e-6, C=100e-6, R=10, fsw=100e3)
>>> round(steady_state(p, duty=0.5).vout_mean, 2)
24.0
"""

# First: in the boostsim command, a Ctrl-C during the imports below is deferred (one line, 130).
from . import _interrupt  # noqa: F401, I001
from importlib.metadata import PackageNotFoundError, version

from .analysis import Metrics, StepMetrics, step_response
from .averaged import AveragedResult, simulate_averaged
from .control import ADC, PWM, DigitalController
from .design import LoopGain, PIDGains, TunedPID, loop_gain, tune_pid
from .engine import Step
from .linearised import (
    OperatingPoint,
    SmallSignal,
    averaged_duty_for_vout,
    operating_point,
    small_signal,
)
from .params import BoostParams, default_board
from .pid import PID
from .simulation import SimulationResult, simulate
from .steady import DutySolution, SteadyState, duty_for_vout, steady_state
from .sweep import Sweep, SweepResult, run_sweep

try:  # the one version string is pyproject.toml's, read from the installed metadata
    __version__ = version("boostsim")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["ADC", "PID", "PWM", "AveragedResult", "BoostParams", "DigitalController",
           "DutySolution", "LoopGain", "Metrics", "OperatingPoint", "PIDGains",
           "SimulationResult", "SmallSignal", "SteadyState", "Step", "StepMetrics", "Sweep",
           "SweepResult", "TunedPID", "__version__", "averaged_duty_for_vout", "default_board",
           "duty_for_vout", "loop_gain", "operating_point", "run_sweep", "simulate",
           "simulate_averaged", "small_signal", "steady_state", "step_response", "tune_pid"]
