"""Large requests are estimated and refused before any work: a simulation or steady-state
batch that would not fit in memory fails at once with its estimated size and what to shorten,
rather than swapping the machine or being killed part-way after minutes of work."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from cli_helpers import cli, one_line_error

from boostsim import BoostParams, default_board, simulate, steady_state
from boostsim.memory import BUDGET_ENV, MemoryBudgetError, memory_budget
from boostsim.simulation import simulation_bytes
from boostsim.steady import steady_state_lane_bytes


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_simulate_refuses_a_huge_record_at_once():
    with pytest.raises(MemoryBudgetError, match=r"simulate would need about 5\.\d+ TiB .* "
                                                r"records 100000000000 periods .* shorten t_end"):
        simulate(default_board(), 0.5, t_end=1e6, dt=1e3)


def test_the_budget_is_overridable(monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "200M")
    assert memory_budget() == (200e6, f"{BUDGET_ENV}=200M")
    with pytest.raises(MemoryBudgetError, match=rf"over the budget of 191 MiB \({BUDGET_ENV}"):
        simulate(default_board(), 0.5, t_end=0.5, dt=1e-7)
    simulate(default_board(), 0.5, t_end=1e-3)
    monkeypatch.setenv(BUDGET_ENV, "lots")
    with pytest.raises(ValueError, match=BUDGET_ENV):
        simulate(default_board(), 0.5, t_end=1e-3)
    monkeypatch.delenv(BUDGET_ENV)
    budget, source = memory_budget()
    assert 0 < budget < np.inf and "available" in source


def test_steady_state_says_how_many_lanes_fit(monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "100M")
    board = default_board().replace(R=np.linspace(10, 100, 1_000_000))
    with pytest.raises(MemoryBudgetError, match=r"1000000 lanes .*\(at most (\d+) lanes fit"
                       ) as caught:
        steady_state(board, 0.5)
    fit = int(caught.value.args[0].rsplit("at most ", 1)[1].split()[0])
    assert fit == int(100e6 // steady_state_lane_bytes(200))
    steady_state(board.replace(R=np.linspace(10, 100, fit)), 0.5)  # and they do fit


@pytest.mark.parametrize("points", [1, 200])
def test_steady_state_estimate_bounds_the_measured_peak(points):
    n = 4000
    board = default_board().replace(R=np.linspace(10, 2000, n))
    peak = _peak(lambda: steady_state(board, 0.5, points=points))
    estimate = n * steady_state_lane_bytes(points)
    assert peak <= estimate <= 2 * peak


def test_simulate_estimate_bounds_the_measured_peak():
    n, t_end, dt = 20, 20e-3, 1e-6  # 2000 periods and 20001 samples per lane
    board = default_board().replace(R=np.linspace(20, 60, n))
    peak = _peak(lambda: simulate(board, 0.5, t_end=t_end, dt=dt))
    assert peak <= simulation_bytes(n, 2000, 20001)


@pytest.mark.parametrize("change, name", [({"C": 1e-15}, r"\(R \+ r_C\)\*C"),
                                          ({"L": 1e-300}, r"L/\(series resistance\)"),
                                          ({"L": 1e-300, "r_L": 0.0, "r_on": 0.0, "r_d": 0.0,
                                            "r_C": 0.0, "r_sync": 0.0}, r"sqrt\(L\*C\)")])
def test_meaningless_time_scales_are_refused_at_validation(change, name):
    with pytest.raises(ValueError, match=rf"time constant {name} = .* below 1e-06"):
        BoostParams(**{**default_board().to_dict(), **change})


def test_cli_refuses_with_one_line(capsys):
    status, _, err = cli(capsys, "simulate", "--duty", "0.5", "--t-end", "1e6", "--dt", "1e3")
    assert status == 1 and "shorten t_end" in one_line_error(err)


def test_exact_averages_of_a_stiff_circuit_are_checked(monkeypatch):
    # 1 pF: the output time constant is 5e-6 of the period, so the averages need ~2e5
    # quadrature pieces per segment.
    res = simulate(default_board().replace(C=1e-12), 0.5, t_end=2e-5)
    monkeypatch.setenv(BUDGET_ENV, "50M")
    with pytest.raises(MemoryBudgetError, match=r"the exact averages .* \d+ quadrature pieces"):
        res.metrics(1)


def test_simulate_averaged_refuses_a_huge_record_at_once():
    from boostsim.averaged import simulate_averaged

    with pytest.raises(MemoryBudgetError, match=r"simulate_averaged would need about [\d.]+ TiB"
                                                r" .* records 100000000000 periods .* shorten "
                                                r"t_end, use a coarser dt"):
        simulate_averaged(default_board(), 0.5, t_end=1e6, dt=1e-3)


@pytest.mark.parametrize("engine", ["numpy", "compiled"])
@pytest.mark.parametrize("dt", [None, 3.3e-6])  # the grid from the records, or sampled
def test_simulate_averaged_estimate_bounds_the_measured_peak(engine, dt):
    from boostsim.averaged import averaged_bytes, simulate_averaged

    n = 20
    board = default_board().replace(R=np.linspace(20, 60, n))
    simulate_averaged(board, 0.5, t_end=1e-4, dt=dt, engine=engine)  # compiled: warm up
    result = simulate_averaged(board, 0.5, t_end=20e-3, dt=dt, engine=engine)
    periods, n_t = result.periods.duty.shape[1], result.t.size
    peak = _peak(lambda: simulate_averaged(board, 0.5, t_end=20e-3, dt=dt, engine=engine))
    assert peak <= averaged_bytes(n, periods, n_t)


def test_a_huge_monte_carlo_sweep_is_refused_before_any_point(capsys, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "1G")
    status, _, err = cli(capsys, "sweep", "--duty", "0.6", "--mc", "1000000000", "--tol",
                         "L=20%", "--no-files")
    assert status == 1
    line = one_line_error(err)
    assert "a Monte-Carlo study of 1000000000 samples would need about" in line
    assert "draw fewer samples (at most about" in line


def test_sweep_estimate_bounds_its_columns():
    from boostsim.sweep import (
        MonteCarlo,
        Sweep,
        parse_limit,
        parse_tolerance,
        run_sweep,
        sweep_bytes,
    )

    sweep = Sweep(default_board(), duty=np.array([0.5]),
                  mc=MonteCarlo(3000, (parse_tolerance("L=20%"), parse_tolerance("C=10%"))))
    limits = [parse_limit("vout=9:11")]
    result = run_sweep(sweep, limits=limits, workers=1)
    held = sum(np.asarray(v).nbytes for v in result.columns.values())
    assert held <= sweep_bytes(sweep, 1) <= 2 * held


def test_a_huge_closed_loop_monte_carlo_is_refused_before_any_draw(capsys, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "1G")
    status, _, err = cli(capsys, "simulate", "--vref", "12", "--kp", "0.01", "--ki", "5",
                         "--mc", "1000000000", "--tol", "L=20%", "--load-step", "8ms:R=24",
                         "--t-end", "10m")
    assert status == 1
    line = one_line_error(err)
    assert "a closed-loop Monte-Carlo of 1000000000 samples would need about" in line
    assert "draw fewer samples" in line
