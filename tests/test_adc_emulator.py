"""The emulated board's imperfections: the shared ADC transfer (DNL), the streamed samples'
timer jitter, the on-board PID in single precision with its computation time, and their
``[emulator]`` configuration."""


import numpy as np
import pytest

from boostsim import default_board
from boostsim.adc_model import RP2040_DNL, rp2040
from boostsim.control import ADC
from firmware_bridge.emulated_hal import AdcModel, EmulatedHAL, ring_push
from firmware_bridge.emulator import EmulatorConfig, board_pid_class, firmware_config
from firmware_bridge.firmware import acq
from firmware_bridge.plant import Plant


def test_emulator_and_simulation_convert_through_the_same_transfer():
    emulated = AdcModel(3.3, 4096, 4095, dnl=RP2040_DNL, gain_error=0.01, offset_lsb=2.0)
    simulated = ADC(dnl=RP2040_DNL, gain_error=0.01, offset_codes=2.0)
    v_pin = np.linspace(-0.05, 3.35, 40001)
    codes = emulated.codes(v_pin.copy())
    np.testing.assert_array_equal(codes, simulated.codes(v_pin * simulated.divider, None))
    assert [emulated.code(float(v)) for v in v_pin[::97]] == codes[::97].tolist()
    # The E11 spike: an input ten codes below 512's ideal position still reads 511.
    x = (rp2040(noise_lsb=0).levels[511] - 5.0) * 3.3 / 4096 / 1.01 - 2.0 * 3.3 / 4096 / 1.01
    assert emulated.code(x) == 511
    assert emulated.code(float("nan")) == 0 and emulated.codes(np.array([np.nan]))[0] == 0


def test_noisy_conversions_are_the_transfers_with_the_same_draws():
    # The emulator converts batches in a compiled loop (emukernel.adc_codes): the shared
    # transfer's codes for the same standard normals, ideal and with the RP2040's DNL.
    v_pin = np.linspace(-0.05, 3.35, 5001)
    for dnl in (None, RP2040_DNL):
        emulated = AdcModel(3.3, 4096, 4095, dnl=dnl, noise_lsb=1.5, offset_lsb=-1.0, seed=7)
        normals = np.random.default_rng(7).standard_normal(v_pin.size)
        expected = np.clip(emulated.transfer.codes(v_pin, normals), 0, 4095)
        np.testing.assert_array_equal(emulated.codes(v_pin), expected)


def test_the_compiled_and_numpy_stream_instants_agree(monkeypatch):
    """emukernel.stream_times against the numpy route taken without numba: the same jittered
    instants (in order, never past now) for the same draws, and the same codes."""
    import firmware_bridge.emulated_hal as hal_module

    def run():
        now = [0.0]
        plant = Plant(default_board(), t0=0.0, freq=1e5)
        adc = AdcModel(3.3, 4096, 4095, jitter_s=3e-6, noise_lsb=1.0, dnl=RP2040_DNL, seed=4)
        hal = EmulatedHAL(firmware_config(), plant, clock=lambda: now[0], adc=adc)
        hal.adc_stream_start(50, ring=None)
        out = []
        for t in (0.0003, 0.0004, 0.002, 0.0105):
            now[0] = t
            times = _take_due(hal, t)
            out.append((times, adc.codes(np.linspace(0.5, 3.0, times.size))))
        return out

    compiled = run()
    monkeypatch.setattr(hal_module, "_kernel", None)
    reference = run()
    for (t1, c1), (t2, c2) in zip(compiled, reference, strict=True):
        np.testing.assert_allclose(t1, t2, rtol=0, atol=1e-15)
        np.testing.assert_array_equal(c1, c2)
        assert np.all(np.diff(t1) >= 0)


def _take_due(hal: EmulatedHAL, t: float) -> np.ndarray:
    """The plant times of the streamed samples due up to ``t``, counted as taken (no ring)."""
    times = hal._stream_due(t)
    if times is None:
        return np.empty(0)
    hal._stream[2] += times.size * hal._stream[0]
    return times


def test_streamed_conversions_are_late_by_the_timer_jitter():
    now = [0.0]
    cfg = firmware_config()
    plant = Plant(default_board(), t0=0.0, freq=1e5)
    adc = AdcModel(3.3, 4096, 4095, jitter_s=3e-6, seed=4)
    hal = EmulatedHAL(cfg, plant, clock=lambda: now[0], adc=adc)
    hal.adc_stream_start(100, ring=None)
    now[0] = 0.2
    times = _take_due(hal, now[0])
    nominal = (100 + 100 * np.arange(times.size)) * 1e-6
    delay = times - nominal
    assert times.size == 2000 and np.all(delay >= 0) and np.all(np.diff(times) > 0)
    assert np.sqrt(np.mean(delay ** 2)) == pytest.approx(3e-6, rel=0.1)
    assert times[-1] <= now[0]
    now[0] = 0.0
    ideal = EmulatedHAL(cfg, Plant(default_board(), t0=0.0, freq=1e5), clock=lambda: now[0])
    ideal.adc_stream_start(100, ring=None)
    now[0] = 0.2
    np.testing.assert_allclose(_take_due(ideal, now[0]), nominal, rtol=0, atol=1e-15)


def test_the_board_pid_computes_in_float32_and_takes_its_time():
    computed = []
    slow = board_pid_class(True, lambda: computed.append(slow.integral))(
        0.005, 0.2, 0.0, 5e-4, 0.0, 0.75)
    u = slow.update(12.0, 12.0 - 2e-4)
    assert computed == [slow.integral]  # its computation time is spent after the update
    assert type(u) is float and isinstance(slow.integral, np.float32)
    board_pid = board_pid_class(True)
    pid = board_pid(0.005, 0.2, 0.0, 5e-4, 0.0, 0.75)
    pid.reset(output=0.5, measurement=12.0)
    for _ in range(20000):
        pid.update(12.0, 12.0 - 2e-4)
    # Increments of 2e-8 (below half an ulp of 0.5 in float32) add up all the same.
    assert float(pid.integral) - 0.5 == pytest.approx(20000 * 0.2 * 5e-4 * 2e-4, rel=0.01)
    plain = board_pid_class(False)(0.005, 0.2, 0.0, 5e-4)
    plain.update(12.0, 11.0)
    assert type(plain.integral) is float
    with pytest.raises(ValueError, match="ki must be >= 0"):
        board_pid(0.005, -1.0, 0.0, 5e-4)


def test_emulator_config_keys_for_the_imperfections():
    board = default_board()
    cfg = EmulatorConfig.from_dict(board, {"adc_dnl": "ideal", "adc_jitter": "5u",
                                           "float32": False, "pid_compute_time": 0})
    assert (cfg.adc_dnl, cfg.adc_jitter, cfg.float32, cfg.pid_compute_time) == (
        "ideal", 5e-6, False, 0.0)
    default = EmulatorConfig()
    assert (default.adc_dnl, default.float32) == ("rp2040", True)
    assert default.adc_jitter > 0 and default.pid_compute_time > 0
    for table, match in [({"adc_dnl": "rp2350"}, "adc_dnl must be one of"),
                         ({"adc_jitter": -1e-6}, "adc_jitter"),
                         ({"float32": "yes"}, "float32 must be true or false"),
                         ({"pid_compute_time": "slow"}, "pid_compute_time")]:
        with pytest.raises(ValueError, match=match):
            EmulatorConfig.from_dict(board, table)


@pytest.mark.slow
def test_identify_recovers_L_and_C_from_a_board_with_every_imperfection():
    # The hidden board of tests/test_identify.py on an emulated Pico with the RP2040 DNL,
    # timer jitter, the float32 PID and its computation time all on: the dynamics (L, C)
    # still come out within 5 %; with the host's DNL correction (Board(adc_dnl="rp2040")) the
    # lumped loss resistance within 20 % too. (Uncorrected, the DNL's integral non-linearity,
    # up to ~6 LSB, biases the DC level and so the loss: +24 % in bench_identify.py.)
    from firmware_bridge.bench import run_identify
    from firmware_bridge.emulator import Emulator
    from firmware_bridge.session import connect

    hidden = default_board().replace(L=70e-6, C=150e-6, r_C=0.06, r_L=0.15, vin=5.1)
    with Emulator(hidden, seed=21, adc_dnl="rp2040", adc_jitter=2e-6, float32=True,
                  pid_compute_time=100e-6) as emu, \
            connect(emu.port, max_vout=14.0, adc_dnl="rp2040") as board:
        assert emu.hal.adc.transfer.levels[511] - emu.hal.adc.transfer.levels[510] > 10
        _, res = run_identify(board, default_board(), 0.5, 0.04)
    assert res.value["L"] == pytest.approx(70e-6, rel=0.05)
    assert res.value["C"] == pytest.approx(150e-6, rel=0.05)
    assert res.value["r_series"] == pytest.approx(0.15 + float(hidden.r_on), rel=0.2)


@pytest.mark.slow
def test_the_host_corrects_the_rp2040_dnl_of_streamed_and_averaged_readings():
    # At 10 V (code ~1619, above the wide code 1535) the raw readings are ~5 LSB off; the
    # host's correction (the default) reads each code as the middle of its width.
    from boostsim import steady_state
    from firmware_bridge.bench import switch_on_at, unlocked_rate
    from firmware_bridge.emulator import Emulator
    from firmware_bridge.firmware import config as fw
    from firmware_bridge.session import connect

    board_params = default_board()
    duty = 0.52
    lsb = fw.ADC_VREF / fw.ADC_FULL_SCALE * fw.VOUT_DIVIDER
    errors = {}
    with Emulator(board_params, seed=3, noise_lsb=1.0) as emu:
        assert emu.config.adc_dnl == "rp2040"  # the emulated Pico's default
        for dnl in ("rp2040", None):
            with connect(emu.port, max_vout=14.0, adc_dnl=dnl) as board:
                switch_on_at(board, duty)
                board.hold(0.2, expect_on=True)
                with board.acquisition(unlocked_rate(20e3, board.frequency)):
                    board.hold(0.1, expect_on=True)
                    streamed = board.fetch().volts.mean()
                averaged = np.mean([board.measure_vout() for _ in range(20)])
                effective = emu.hal.pwm_actual[2]
                board.output(False)
            truth = float(steady_state(board_params, effective).vout_mean)
            errors[dnl] = (streamed - truth) / lsb, (averaged - truth) / lsb
    assert abs(errors["rp2040"][0]) < 0.5 and abs(errors[None][0]) > 3
    assert abs(errors["rp2040"][1]) < 1.5 and abs(errors[None][1]) > 3


def test_the_emulator_reads_a_board_file_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + default_board().to_toml().encode()
                     + b"\n[emulator]\nnoise_lsb = 0.5\n")
    cfg = EmulatorConfig.load(path)
    assert cfg.noise_lsb == 0.5 and cfg.params.fsw == default_board().fsw


@pytest.mark.parametrize("size", [1, 7, 64])
def test_a_bulk_push_is_what_the_timer_interrupts_push(size):
    """ring_push writes a batch of streamed codes into the firmware's ring as that many
    SampleRing.push calls would: buffer, position and counter, through wraps, batches longer
    than the ring and the counter's wrap; the consumer then reads the same samples and
    overflows."""
    rng = np.random.default_rng(size)
    one, bulk = acq.SampleRing(size), acq.SampleRing(size)
    for ring in (one, bulk):
        ring.count = acq.COUNT_MASK - 5  # the counter wraps within the first batches
        ring._seen = ring.count
    for n in [0, 1, 3, size - 1, size, size + 1, 3 * size + 2, 5, 0, 2 * size]:
        codes = rng.integers(0, 4096, n)
        for c in codes.tolist():
            one.push(c)
        ring_push(bulk, codes)
        assert (one.buf, one.pos, one.count) == (bulk.buf, bulk.pos, bulk.count)
        if rng.random() < 0.5:  # the consumer takes some (an overflow is reported alike)
            take = int(rng.integers(1, 2 * size + 1))
            assert one.read(take) == bulk.read(take)
    assert one.read(4 * size) == bulk.read(4 * size)
