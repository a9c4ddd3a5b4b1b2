"""boostsim.adc_model: the one ADC transfer (DNL table, gain/offset, noise, jitter) and its use
by the simulation's ADC, including the routing of imperfect ADCs away from the compiled kernel."""

import numpy as np
import pytest

from boostsim import default_board, simulate
from boostsim.adc_model import RP2040_DNL, AdcTransfer, enob, rp2040
from boostsim.control import ADC, PWM, DigitalController
from boostsim.pid import PID

BOARD = default_board()
TS = 1 / BOARD.fsw


def test_ideal_transfer_rounds_and_clips():
    t = AdcTransfer(bits=12, vref=3.3, gain_error=0.01, offset_lsb=3.0)
    v = np.linspace(-0.1, 3.5, 10001)
    expected = np.clip(np.rint(v * (1.01 / 3.3 * 4096) + 3.0), 0, 4095)
    np.testing.assert_array_equal(t.codes(v), expected)
    assert t.ideal and t.levels[0] == 0.5 and t.levels[-1] == 4094.5


def test_rp2040_wide_and_missing_codes_in_a_slow_ramp():
    t = rp2040(noise_lsb=0.0)
    x = np.linspace(0, 4095, 4096 * 50)  # 50 samples per ideal code
    codes = t.quantize(x).astype(int)
    counts = np.bincount(codes, minlength=4096)
    typical = np.median(counts[1:4095])
    for code, dnl in RP2040_DNL.items():
        if dnl > 0:  # the E11 spikes: about (1 + dnl) codes wide
            assert counts[code] / typical == pytest.approx(1 + dnl, rel=0.1), code
        else:
            assert counts[code] == 0, code  # missing code
    # End-point definition: the first and last transitions stay where the ideal ones are.
    assert t.levels[0] == 0.5 and t.levels[-1] == pytest.approx(4094.5, abs=1e-9)
    assert np.all(np.diff(codes) >= 0)  # monotonic


def test_rp2040_has_about_nine_effective_bits():
    assert enob(AdcTransfer(noise_lsb=0.0)) == pytest.approx(12.0, abs=0.05)
    assert 8.5 < enob(rp2040()) < 9.3  # measured on Picos: 8.8 to 8.9 (sine fit)
    assert enob(rp2040()) < enob(AdcTransfer(noise_lsb=1.0)) - 1.0  # the DNL costs > 1 bit


@pytest.mark.parametrize("kwargs, match", [
    (dict(dnl={511: -2.0}), ">= -1"),
    (dict(dnl={5000: 1.0}), "not in 0..4095"),
    (dict(dnl=[0.0] * 10), "mapping or 4096 numbers"),
    (dict(dnl={3: float("nan")}), "finite"),
    (dict(noise_lsb=-1.0), "noise_lsb"),
    (dict(jitter_s=float("inf")), "jitter_s"),
    (dict(gain_error=-1.0), "gain_error"),
])
def test_bad_transfers_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdcTransfer(**kwargs)


def test_simulation_adc_default_is_unchanged_and_shares_the_transfer():
    adc = ADC(gain_error=0.02, offset_codes=-2.0)
    v = np.linspace(0, 26, 5001)
    rng = np.random.default_rng(0)
    expected = np.clip(np.rint(v / adc.divider * (1.02 / 3.3 * 4096) - 2.0), 0, 4095)
    np.testing.assert_array_equal(adc.codes(v, rng), expected)
    assert adc.compiled and adc.transfer.ideal
    pico = ADC(dnl=RP2040_DNL, noise_rms=3.3 / 4096, jitter=1e-6)
    assert not pico.compiled and pico.transfer.noise_lsb == pytest.approx(1.0)
    np.testing.assert_array_equal(pico.transfer.levels, rp2040().levels)
    with pytest.raises(ValueError, match="dnl"):
        ADC(dnl={0: -3.0})
    with pytest.raises(ValueError, match="jitter"):
        ADC(jitter=-1e-9)


def test_jitter_moves_the_sampling_instants_within_the_period():
    adc = ADC(jitter=0.3e-6, oversample=2, spacing=1e-6)
    duty, ts = np.array([0.5, 0.01]), np.array([TS, TS])
    nominal = ADC(oversample=2, spacing=1e-6).instants(duty, ts)
    got = adc.instants(duty, ts, np.random.default_rng(1))
    assert got.shape == nominal.shape and np.all(got[:, 0] != nominal[:, 0])
    assert np.all((got >= 0) & (got < TS))
    assert np.std(got[:, 0] - nominal[:, 0]) < 1e-6
    with pytest.raises(ValueError, match="rng"):
        adc.instants(duty, ts)
    with pytest.raises(ValueError, match="jitter needs PWM update='next'"):
        DigitalController(PID(kp=0.002, ki=30.0, kd=0.0, ts=TS), adc=adc,
                          pwm=PWM(update="immediate"))


def _run(adc, engine):
    pid = PID(kp=0.002, ki=30.0, kd=0.0, ts=TS, out_min=0.0, out_max=0.8,
              setpoint_rate=12 / 2e-3)
    controller = DigitalController(pid, adc=adc)
    simulate(BOARD, controller=controller, vref=12.0, t_end=300 * TS, dt=TS, engine=engine)
    return controller.log()


@pytest.mark.parametrize("adc", [ADC(dnl=RP2040_DNL), ADC(jitter=0.5e-6)],
                         ids=["dnl", "jitter"])
def test_imperfect_adcs_take_the_numpy_engine(adc):
    fastloop = pytest.importorskip("boostsim.fastloop")
    controller = DigitalController(PID(kp=0.002, ki=30.0, kd=0.0, ts=TS), adc=adc)
    assert not fastloop.supports(controller)
    with pytest.raises(ValueError, match="DNL or jitter"):
        fastloop.use_compiled("compiled", controller)
    # "auto" runs the imperfection (the numpy engine), never the ideal ADC in its place.
    auto, numpy_run, ideal = _run(adc, "auto"), _run(adc, "numpy"), _run(ADC(), "auto")
    np.testing.assert_array_equal(auto.adc_code, numpy_run.adc_code)
    assert np.any(auto.adc_code != ideal.adc_code)


def test_dnl_correction_reads_each_code_as_the_middle_of_its_width():
    t = rp2040(noise_lsb=0.0)
    x = np.linspace(1.0, 4094.0, 4096 * 20)
    codes = t.quantize(x)
    raw = np.abs(codes - x)
    corrected = np.abs(t.correct(codes) - x)
    widths = np.diff(t.levels)
    assert raw.max() > 6  # the spikes' integral non-linearity, uncorrected
    near = np.zeros_like(x, dtype=bool)
    for code in (511, 1535, 2559, 3583):
        near |= (x > t.levels[code - 1]) & (x < t.levels[code])
        inside = (x > t.levels[code - 1]) & (x < t.levels[code])
        # Inside a wide code the input is known to half its width, no better.
        assert corrected[inside].max() == pytest.approx(widths[code - 1] / 2, abs=0.06)
    assert corrected[~near].max() <= 0.5 + 1e-9  # elsewhere: an ideal ADC's rounding
    assert raw[~near].max() > 5


def test_dnl_correction_of_averaged_readings_and_of_an_ideal_adc():
    t = rp2040(noise_lsb=0.0)
    centres = t.centres()
    # A mean of conversions that took two adjacent codes: their centres, weighted alike.
    for k, w in ((511, 0.25), (1000, 0.5), (1534, 0.9)):
        mean = w * k + (1 - w) * (k + 1)
        assert t.correct(mean) == pytest.approx(w * centres[k] + (1 - w) * centres[k + 1])
    assert np.isnan(t.correct(np.nan))
    ideal = AdcTransfer()
    np.testing.assert_array_equal(ideal.correct([0, 17.25, 4095]), [0, 17.25, 4095])
    np.testing.assert_array_equal(ideal.centres(), np.arange(4096))


def test_dnl_tables_by_name():
    from boostsim.adc_model import dnl_table

    assert dnl_table("rp2040") is RP2040_DNL
    assert dnl_table(None) is None and dnl_table("ideal") is None
    with pytest.raises(ValueError, match="rp2040"):
        dnl_table("rp2350")
