"""boostsim: DC-DC boost converter simulator and bench controller."""

from .params import BoostParams, default_board

__version__ = "0.1.0"

__all__ = ["BoostParams", "__version__", "default_board"]
