"""The exact duty solver (boostsim.steady.duty_for_vout / solve_duty): the duty giving a target
mean output in the exact periodic steady state, per lane, and why a target is unreachable."""

import numpy as np
import pytest
from scipy.optimize import brentq

from boostsim import default_board, steady_state
from boostsim.steady import duty_for_vout, solve_duty

BOARD = default_board()


# -- duty for a target output voltage -------------------------------------------------------

def _exact_root(params, target):
    return brentq(lambda d: steady_state(params, d, points=1).vout_mean - target, 0.0, 0.9,
                  xtol=1e-13)


@pytest.mark.parametrize("params,target", [
    (BOARD, 12.0), (BOARD, 5.0), (BOARD, 30.0), (BOARD.replace(R=2000.0), 12.0),
    (BOARD.replace(synchronous=True), 9.0),
])
def test_duty_for_vout_matches_brentq_on_the_exact_steady_state(params, target):
    duty = solve_duty(params, target)
    assert duty == pytest.approx(_exact_root(params, target), abs=1e-8)
    assert steady_state(params, duty).vout_mean == pytest.approx(target, rel=1e-8)


def test_duty_for_vout_per_lane_marks_unreachable_lanes():
    sol = duty_for_vout(BOARD, np.array([3.0, 12.0, 100.0, 60.0]))
    assert sol.reachable.tolist() == [False, True, False, True]
    assert np.isnan(sol.duty[0]) and np.isnan(sol.duty[2])
    assert sol.vout_at_zero[0] == pytest.approx(4.64, abs=0.01)
    assert sol.vout_max[2] == pytest.approx(60.6, abs=0.1)
    assert 0.9 < sol.duty_at_max[2] < 0.99


def test_unreachable_targets_say_why():
    with pytest.raises(ValueError, match=r"below the zero-duty output 4\.64"):
        solve_duty(BOARD, 3.0)
    with pytest.raises(ValueError, match=r"highest steady-state output .* is 60\.6"):
        solve_duty(BOARD, 100.0)
