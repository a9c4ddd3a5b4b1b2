"""boostsim: DC-DC boost converter simulator and bench controller.

>>> from boostsim import BoostParams, simulate, steady_state
>>> p = BoostParams(vin=12, L=100e-6, C=100e-6, R=10, fsw=100e3)
>>> round(steady_state(p, duty=0.5).vout_mean, 2)
24.0
"""

# First: in the boostsim command, a Ctrl-C during the imports below is deferred (one line, 130).
from . import _interrupt  # noqa: F401
from .analysis import Metrics, step_response
from .averaged import operating_point, simulate_averaged, small_signal
from .control import ADC, PWM, DigitalController
from .design import loop_gain, tune_pid
from .engine import Step
from .params import BoostParams, default_board
from .pid import PID
from .simulation import SimulationResult, simulate
from .steady import SteadyState, steady_state

__version__ = "0.1.0"

__all__ = ["ADC", "PID", "PWM", "BoostParams", "DigitalController", "Metrics",
           "SimulationResult", "SteadyState", "Step", "__version__", "default_board",
           "loop_gain", "operating_point", "simulate", "simulate_averaged", "small_signal",
           "steady_state", "step_response", "tune_pid"]
