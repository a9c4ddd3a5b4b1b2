"""The errors about per-lane inputs name the argument the user gave (duty, x0, vref, the
controller, steps[i].R, vout), never an internal placeholder."""

from __future__ import annotations

import numpy as np
import pytest

from boostsim import Step, default_board, simulate
from boostsim.averaged import simulate_averaged
from boostsim.control import DigitalController
from boostsim.drive import lane_arrays
from boostsim.linearised import averaged_duty_for_vout
from boostsim.pid import PID
from boostsim.steady import steady_state

THREE = default_board().replace(vin=np.array([5.0, 6.0, 7.0]))


def _pid(kp=0.01):
    return PID(kp=kp, ki=5.0, kd=0.0, ts=1 / THREE.fsw, out_min=0.0, out_max=0.8)


@pytest.mark.parametrize("call,name", [
    (lambda: simulate(THREE, duty=[0.3, 0.4], t_end=1e-4), "duty: 2"),
    (lambda: simulate(THREE, duty=0.3, x0=np.zeros((2, 2)), t_end=1e-4), "x0: 2"),
    (lambda: simulate(THREE, duty=0.3, steps=[Step(5e-5, R=[10.0, 20.0])], t_end=1e-4),
     "steps[0].R: 2"),
    (lambda: simulate(THREE, duty=0.3, steps=[Step(1e-5, vin=6.0), Step(5e-5, i_load=[0, 1])],
                      t_end=1e-4), "steps[1].i_load: 2"),
    (lambda: simulate(THREE, controller=DigitalController(_pid()), vref=[12.0, 11.0],
                      t_end=1e-4), "vref: 2"),
    (lambda: simulate(THREE, controller=DigitalController(_pid(np.array([0.01, 0.02]))),
                      vref=12.0, t_end=1e-4), "controller (its per-lane gains or reference): 2"),
    (lambda: simulate_averaged(THREE, duty=[0.3, 0.2], t_end=1e-4), "duty: 2"),
    (lambda: steady_state(THREE, [0.3, 0.2]), "duty: 2"),
    (lambda: averaged_duty_for_vout(THREE, [12.0, 13.0]), "vout: 2"),
])
def test_length_mismatch_names_the_argument(call, name):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert f"(vin: 3, {name})" in message and "extra" not in message


def test_two_dimensional_step_values_are_named():
    with pytest.raises(ValueError, match=r"^steps\[0\]\.R: per-lane values must be 1-D"):
        simulate(THREE, duty=0.3, steps=[Step(5e-5, R=[[10.0, 20.0]])], t_end=1e-4)


def test_inputs_cannot_shadow_parameters():
    with pytest.raises(TypeError, match="named like parameters"):
        lane_arrays(THREE, R=[1.0, 2.0, 3.0])
