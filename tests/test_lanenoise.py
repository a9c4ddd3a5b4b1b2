"""The closed loop's ADC noise (boostsim.lanenoise) and its compiled twin."""

import numpy as np
import pytest
from scipy import special, stats

from boostsim import kernel
from boostsim.control import ADC, DigitalController
from boostsim.lanenoise import noise_key, ppnd16, unit_normals
from boostsim.pid import PID


def test_quantile_is_the_normal_quantile_to_rounding():
    p = np.concatenate([np.linspace(1e-6, 1 - 1e-6, 20001), np.logspace(-300, -1, 400),
                        1 - np.logspace(-16, -1, 200), [2.0 ** -54, 0.075, 0.925]])
    np.testing.assert_allclose(ppnd16(p), special.ndtri(p), rtol=2e-15, atol=0)
    assert ppnd16(np.array([0.5]))[0] == 0.0


def test_compiled_draws_are_the_numpy_draws():
    key = noise_key(11)
    table = kernel.unit_normal_table(np.uint64(key), 7, 3000)
    ref = unit_normals(key, np.arange(7)[None, :], np.arange(3000)[:, None])
    np.testing.assert_allclose(table, ref, rtol=1e-15, atol=1e-300)
    p = np.linspace(1e-9, 1 - 1e-9, 4001)  # both branches and the tails of the quantile
    np.testing.assert_allclose([kernel.ppnd16(x) for x in p], ppnd16(p), rtol=1e-15)


def test_draws_are_standard_normal_and_independent():
    z = unit_normals(noise_key(0), np.arange(200)[None, :], np.arange(1000)[:, None])
    assert stats.kstest(z.ravel(), "norm").pvalue > 1e-3
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    for a, b in ((z[:-1], z[1:]), (z[:, :-1], z[:, 1:])):  # along draws, across lanes
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01


def test_keys_follow_the_seed():
    assert noise_key(3) == noise_key(3) != noise_key(4)
    assert noise_key([3, 100]) != noise_key([3, 200])
    assert noise_key(None) != noise_key(None)  # fresh entropy
    a = unit_normals(noise_key(3), 2, np.arange(5))
    assert not np.allclose(a, unit_normals(noise_key(4), 2, np.arange(5)))
    assert not np.allclose(a, unit_normals(noise_key(3), 3, np.arange(5)))


def test_a_lane_draws_the_same_noise_whatever_lanes_run_beside_it():
    def noise(lanes):
        pid = PID(kp=0.002, ki=30.0, kd=0.0, ts=1e-5, out_min=0.0, out_max=0.8)
        ctl = DigitalController(pid, adc=ADC(noise_rms=0.01, oversample=2, seed=5))
        ctl.start({"fsw": np.full(lanes, 1e5)}, vref=12.0)
        draws = []
        for step in range(70):  # across the edge of a block of draws
            ctl._step = step
            draws.append(ctl._noise(lanes))
        return np.stack(draws)

    np.testing.assert_array_equal(noise(5)[:, :, :2], noise(2))


@pytest.mark.parametrize("rms", [0.0, 0.004])
def test_adc_codes_take_unit_draws(rms):
    adc = ADC(noise_rms=rms)
    vout = np.linspace(11.0, 13.0, 50)
    unit = unit_normals(noise_key(1), np.arange(50), 0)
    expected = np.clip(np.rint((vout / adc.divider + rms * unit) / adc.vref * 4096), 0, 4095)
    np.testing.assert_array_equal(adc.codes(vout, None, unit), expected)
