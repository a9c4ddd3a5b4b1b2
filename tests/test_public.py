"""The package's public face: what the functions return is importable from ``boostsim``, and
there is one version (pyproject.toml's, read from the installed metadata; the firmware, which
must import on MicroPython without boostsim, repeats it in ``config.FW_VERSION``, so a test
holds them equal)."""

import tomllib
from pathlib import Path

import numpy as np

import boostsim
from boostsim import (
    AveragedResult,
    LoopGain,
    Metrics,
    OperatingPoint,
    PIDGains,
    SimulationResult,
    SmallSignal,
    StepMetrics,
    Sweep,
    SweepResult,
    TunedPID,
    default_board,
    loop_gain,
    operating_point,
    run_sweep,
    simulate,
    simulate_averaged,
    small_signal,
    step_response,
    tune_pid,
)

BOARD = default_board()


def test_every_exported_name_exists():
    missing = [name for name in boostsim.__all__ if not hasattr(boostsim, name)]
    assert missing == []


def test_the_exported_types_are_what_the_functions_return():
    assert isinstance(simulate(BOARD, duty=0.5, t_end=2e-4), SimulationResult)
    averaged = simulate_averaged(BOARD, duty=0.5, t_end=2e-4)
    assert isinstance(averaged, AveragedResult) and isinstance(averaged.metrics(5), Metrics)
    assert isinstance(operating_point(BOARD, 0.5), OperatingPoint)
    assert isinstance(small_signal(BOARD, 0.5), SmallSignal)
    gains = tune_pid(BOARD, 12.0, 2000.0)
    assert isinstance(gains, TunedPID) and isinstance(gains, PIDGains)
    assert isinstance(loop_gain(BOARD, gains.duty, gains), LoopGain)
    t = np.linspace(0.0, 1.0, 101)
    assert isinstance(step_response(t, np.where(t < 0.5, 0.0, 1.0), 0.5), StepMetrics)
    result = run_sweep(Sweep(BOARD, duty=[0.3, 0.5]), workers=1)
    assert isinstance(result, SweepResult)


def test_one_version_string():
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml")
                              .read_text(encoding="utf-8"))
    assert boostsim.__version__ == pyproject["project"]["version"]


def test_the_firmware_reports_the_package_version():
    # *IDN? answers with config.FW_VERSION: the firmware released with this package is this
    # version (bump both together).
    from firmware_bridge.firmware import config

    assert config.FW_VERSION == boostsim.__version__
