"""Tests of boostsim.pid on CPython: closed loop, anti-windup, filters, lanes, validation."""

import ast
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boostsim.pid import PID, _clamp

PID_SOURCE = Path(__file__).resolve().parents[1] / "boostsim" / "pid.py"

# Tiny first-order plant standing in for the averaged converter: y' = (G*u - y) / tau,
# discretised exactly for a zero-order-hold input.
G = 20.0
TAU = 1e-3
TS = 1e-5
ALPHA = math.exp(-TS / TAU)


def plant_step(y, u):
    return ALPHA * y + (1.0 - ALPHA) * G * u


def closed_loop(pid, setpoints, y0=0.0):
    """Run the loop; ``setpoints`` is a sequence. Return (measurements, outputs)."""
    y = y0
    ys, us = [], []
    for sp in setpoints:
        u = pid.update(sp, y)
        ys.append(y)
        us.append(u)
        y = plant_step(y, u)
    return ys, us


def no_anti_windup(**kw):
    # Back-calculation with zero tracking gain is a plain, windup-prone PID.
    return PID(anti_windup="backcalc", kt=0.0, **kw)


# ---------------------------------------------------------------------------------------------
# Step responses


def test_pi_step_response_settles_without_overshoot():
    # ki/kp = 1/tau cancels the plant pole: a first-order loop, no overshoot, no saturation.
    pid = PID(0.05, 50.0, 0.0, TS)
    ys, us = closed_loop(pid, [12.0] * 3000)
    assert abs(ys[-1] - 12.0) < 1e-6
    assert max(ys) < 12.0 + 1e-6
    assert all(0.0 <= u <= 1.0 for u in us)
    assert not pid.saturated
    # Steady state: the integral carries the whole duty, u = 12/20.
    assert pid.integral == pytest.approx(0.6, rel=1e-6)
    # Closed-loop time constant tau / (G*kp) = 1 ms: at t = 1 ms about 63 % of the step.
    assert ys[100] == pytest.approx(12.0 * (1.0 - math.exp(-1.0)), rel=0.02)


def test_p_only_has_the_textbook_steady_state_error():
    kp = 0.1
    pid = PID(kp, 0.0, 0.0, TS)
    ys, _ = closed_loop(pid, [10.0] * 5000)
    assert ys[-1] == pytest.approx(10.0 * G * kp / (1.0 + G * kp), rel=1e-9)
    assert pid.integral == 0.0


def test_output_is_clamped_and_state_is_exposed():
    pid = PID(1.0, 0.0, 0.0, TS, out_min=0.1, out_max=0.9)
    assert pid.update(12.0, 0.0) == 0.9
    assert pid.unclamped == 12.0
    assert pid.last_output == 0.9
    assert pid.saturated is True
    assert pid.update(0.0, 12.0) == 0.1
    assert pid.unclamped == -12.0
    assert pid.saturated is True
    assert pid.update(0.5, 0.0) == 0.5
    assert pid.saturated is False
    assert pid.ramped_setpoint == 0.5


def test_before_first_update_the_state_is_empty():
    pid = PID(1.0, 1.0, 1.0, TS)
    assert pid.integral == 0.0
    assert pid.derivative == 0.0
    assert pid.last_output is None
    assert pid.unclamped is None
    assert pid.saturated is False
    assert pid.ramped_setpoint is None


def test_integral_is_forward_euler():
    ki = 3.0
    pid = PID(0.0, ki, 0.0, 0.5, out_min=-100.0, out_max=100.0)
    errors = [1.0, 2.0, -0.5, 4.0]
    outputs = [pid.update(e, 0.0) for e in errors]
    # u_k = ki*ts*(e_0 + ... + e_{k-1}): the integral path has one sample of delay.
    assert outputs == [0.0, 1.5, 4.5, 3.75]
    assert pid.integral == 9.75


# ---------------------------------------------------------------------------------------------
# Anti-windup


@pytest.mark.parametrize("anti_windup", ["clamp", "backcalc"])
def test_anti_windup_bounds_overshoot_after_saturated_start(anti_windup):
    gains = dict(kp=0.2, ki=200.0, kd=0.0, ts=TS)
    ys_free, us_free = closed_loop(no_anti_windup(**gains), [18.0] * 4000)
    ys_aw, us_aw = closed_loop(PID(anti_windup=anti_windup, **gains), [18.0] * 4000)
    assert us_free[0] == 1.0 and us_aw[0] == 1.0  # the start saturates the duty
    assert max(ys_free) - 18.0 > 1.0  # windup: large overshoot
    assert max(ys_aw) - 18.0 < 0.05  # anti-windup: essentially none
    assert ys_aw[-1] == pytest.approx(18.0, abs=1e-6)
    # The anti-windup loop is saturated for far fewer samples.
    assert sum(u == 1.0 for u in us_aw) < sum(u == 1.0 for u in us_free) / 3


@pytest.mark.parametrize("anti_windup", ["clamp", "backcalc"])
def test_output_leaves_saturation_when_the_error_changes_sign(anti_windup):
    # 20 ms of an unreachable setpoint (25 V > G*out_max), then a drop to 10 V.
    setpoints = [25.0] * 2000 + [10.0] * 2000
    gains = dict(kp=0.2, ki=200.0, kd=0.0, ts=TS)
    _, us_free = closed_loop(no_anti_windup(**gains), setpoints)
    ys_aw, us_aw = closed_loop(PID(anti_windup=anti_windup, **gains), setpoints)
    assert all(u == 1.0 for u in us_aw[1:2000])
    # The error is negative from sample 2000 on; the duty must leave the limit right then.
    assert us_aw[2000] < 1.0
    assert us_free[2000:2100] == [1.0] * 100  # the wound-up integral holds it for > 1 ms
    assert min(ys_aw[2000:]) > 8.0  # no blow-up on the way down
    assert ys_aw[-1] == pytest.approx(10.0, abs=1e-3)


def test_backcalc_drives_the_integral_to_the_limit_during_long_saturation():
    pid = PID(0.2, 200.0, 0.0, TS, anti_windup="backcalc")
    for _ in range(3000):
        pid.update(25.0, 19.0)  # error +6 forever, output pinned at 1.0
    # Steady state of I_{k+1} = I_k + ki*ts*e + kt*ts*(u - v) with the default kt.
    assert pid.integral == pytest.approx(1.0 + 200.0 * TS * 6.0, rel=1e-9)


def test_clamp_freezes_the_integral_only_when_pushing_into_the_limit():
    pid = PID(1.0, 100.0, 0.0, 0.01, out_min=0.0, out_max=1.0)
    pid.update(5.0, 0.0)  # v = 5 > 1 and e > 0: frozen
    assert pid.integral == 0.0
    pid.reset()
    pid.update(0.0, 5.0)  # v = -5 < 0 and e < 0: frozen
    assert pid.integral == 0.0
    pid.reset(output=2.0)  # integral 2: saturated high but the error is negative
    pid.update(0.0, 0.5)
    assert pid.saturated is True
    assert pid.integral == pytest.approx(2.0 - 100.0 * 0.01 * 0.5)


def test_default_kt():
    assert PID(0.2, 200.0, 0.0, TS, anti_windup="backcalc").kt == 200.0 / (0.2 + 200.0 * TS)
    assert PID(0.0, 5.0, 0.0, 0.1, anti_windup="backcalc").kt == pytest.approx(10.0)
    assert PID(1.0, 0.0, 0.0, 0.1, anti_windup="backcalc").kt == 0.0
    assert PID(0.0, 0.0, 1.0, 0.1, anti_windup="backcalc").kt == 0.0
    assert PID(1.0, 1.0, 0.0, 0.1, anti_windup="backcalc", kt=10.0).kt == 10.0


# ---------------------------------------------------------------------------------------------
# Derivative


@pytest.mark.parametrize("tf", [0.0, 1e-4, 2e-3])
def test_derivative_filter_step_response_matches_the_difference_equation(tf):
    kd, ts = 0.01, 1e-4
    pid = PID(0.0, 0.0, kd, ts, out_min=-1e6, out_max=1e6, tf=tf)
    measurements = [1.0] + [3.0] * 10  # a step of +2 at k = 1
    outputs = [pid.update(0.0, y) for y in measurements]
    a, b = tf / (tf + ts), kd / (tf + ts)
    expected = [0.0] + [-b * 2.0 * a ** (k - 1) for k in range(1, 11)]
    assert outputs == pytest.approx(expected, rel=1e-12, abs=1e-15)
    if tf == 0.0:
        assert outputs[1] == pytest.approx(-kd / ts * 2.0)
        assert outputs[2:] == [0.0] * 9
    else:
        # Filtered: the kick is smaller than unfiltered and decays monotonically.
        assert abs(outputs[1]) < kd / ts * 2.0
        assert all(abs(x) > abs(y) for x, y in itertools.pairwise(outputs[1:]))


def test_derivative_of_a_measurement_ramp_converges_to_minus_kd_times_slope():
    kd, ts, tf, slope = 0.02, 1e-4, 5e-4, 300.0
    pid = PID(0.0, 0.0, kd, ts, out_min=-1e3, out_max=1e3, tf=tf)
    for k in range(400):
        out = pid.update(0.0, slope * k * ts)
    assert out == pytest.approx(-kd * slope, rel=1e-9)
    assert pid.derivative == out


def test_no_derivative_kick_on_setpoint_step():
    pid = PID(0.0, 0.0, 5.0, TS, out_min=-10.0, out_max=10.0)
    outputs = [pid.update(sp, 3.0) for sp in [0.0, 0.0, 12.0, 12.0, -5.0]]
    assert outputs == [0.0] * 5


def test_first_update_has_no_derivative_kick_unless_measurement_given_to_reset():
    pid = PID(0.0, 0.0, 1.0, 0.1, out_min=-100.0, out_max=100.0)
    assert pid.update(0.0, 7.0) == 0.0
    pid.reset(measurement=5.0)
    assert pid.update(0.0, 7.0) == pytest.approx(-20.0)


# ---------------------------------------------------------------------------------------------
# Setpoint ramp and bumpless start


def test_setpoint_ramp_from_first_measurement():
    rate, ts = 1000.0, 1e-4  # 0.1 V per sample
    pid = PID(0.0, 0.0, 0.0, ts, setpoint_rate=rate)
    ramp = []
    for _ in range(80):
        pid.update(12.0, 5.0)
        ramp.append(pid.ramped_setpoint)
    assert ramp[0] == pytest.approx(5.1)
    assert ramp[:69] == pytest.approx([5.0 + 0.1 * (k + 1) for k in range(69)])
    assert all(b > a for a, b in itertools.pairwise(ramp[:70]))
    assert ramp[70:] == [12.0] * 10  # reaches the target exactly and stays
    # Ramping down works the same way.
    for _ in range(5):
        pid.update(11.0, 5.0)
    assert pid.ramped_setpoint == pytest.approx(11.5)


def test_setpoint_ramp_starts_at_reset_setpoint_and_step_without_rate():
    pid = PID(0.0, 0.0, 0.0, 1e-3, setpoint_rate=100.0)
    pid.reset(setpoint=2.0)
    pid.update(3.0, 0.0)
    assert pid.ramped_setpoint == pytest.approx(2.1)
    step = PID(1.0, 0.0, 0.0, 1e-3, out_min=-100.0, out_max=100.0)
    assert step.update(3.0, 0.0) == 3.0
    assert step.ramped_setpoint == 3.0


def test_soft_start_limits_the_error_and_the_overshoot():
    gains = dict(kp=0.2, ki=200.0, kd=0.0, ts=TS)
    ys_soft, us_soft = closed_loop(PID(setpoint_rate=5000.0, **gains), [18.0] * 6000, y0=5.0)
    assert max(ys_soft) < 18.0 + 0.01
    assert us_soft.count(1.0) < 50
    assert ys_soft[-1] == pytest.approx(18.0, abs=1e-6)


def test_bumpless_reset():
    pid = PID(0.3, 40.0, 1e-4, TS, tf=2e-5)
    pid.reset(output=0.4, measurement=5.0, setpoint=5.0)
    assert pid.last_output == 0.4
    assert pid.update(5.0, 5.0) == 0.4
    pid.reset(output=0.4, measurement=5.0, setpoint=12.0)
    assert pid.integral == pytest.approx(0.4 - 0.3 * 7.0)
    assert pid.update(12.0, 5.0) == pytest.approx(0.4, abs=1e-15)
    # With the soft start, the ramp begins at the reset setpoint: the bump is one ramp step.
    ramped = PID(0.3, 40.0, 1e-4, TS, setpoint_rate=1000.0)
    ramped.reset(output=0.4, measurement=5.0, setpoint=5.0)
    assert ramped.update(12.0, 5.0) == pytest.approx(0.4 + 0.3 * 1000.0 * TS)


# ---------------------------------------------------------------------------------------------
# Vectorised lanes: bit-identical to scalar PIDs


def _scalar_config(cfg, i):
    return {k: (float(v[i]) if isinstance(v, np.ndarray) else v) for k, v in cfg.items()}


def _state(pid):
    return [pid.last_output, pid.unclamped, pid.integral, pid.derivative, pid.ramped_setpoint,
            pid.saturated]


@pytest.mark.parametrize("anti_windup", ["clamp", "backcalc"])
def test_lanes_closed_loop_bit_identical_to_scalar_pids(anti_windup):
    cfg = dict(kp=np.array([0.05, 0.2, 0.5, 0.0]), ki=np.array([50.0, 200.0, 900.0, 300.0]),
               kd=np.array([0.0, 1e-5, 5e-5, 0.0]), ts=TS, tf=np.array([0.0, 2e-5, 1e-4, 0.0]),
               out_min=np.array([0.0, 0.0, 0.05, 0.0]), out_max=np.array([1.0, 0.9, 0.95, 1.0]),
               setpoint_rate=np.array([np.inf, 2000.0, 5000.0, 1e4]), anti_windup=anti_windup)
    n = 4
    setpoints = [18.0] * 700 + [9.0] * 700
    lanes = PID(**cfg)
    y = np.full(n, 4.0)
    out_lanes = []
    for sp in setpoints:
        u = lanes.update(sp, y)
        out_lanes.append(u)
        y = plant_step(y, u)
    out_lanes = np.array(out_lanes)
    assert out_lanes.shape == (len(setpoints), n)
    assert lanes.saturated.dtype == bool
    for i in range(n):
        pid = PID(**_scalar_config(cfg, i))
        _, us = closed_loop(pid, setpoints, y0=4.0)
        assert out_lanes[:, i].tolist() == us  # exact equality, not approx
        assert _state(pid) == [x[i].item() for x in _state(lanes)]


lane_floats = st.floats(min_value=0.0, max_value=5.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 4), steps=st.integers(1, 25),
       anti_windup=st.sampled_from(["clamp", "backcalc"]), ramp=st.booleans(),
       user_kt=st.booleans())
def test_lanes_bit_identical_for_random_configurations(data, n, steps, anti_windup, ramp,
                                                       user_kt):
    ts = data.draw(st.sampled_from([1e-5, 2e-5, 1e-3]))

    def arr(strategy):
        return np.array(data.draw(st.lists(strategy, min_size=n, max_size=n)), dtype=float)

    lo = arr(st.floats(-1.0, 0.5))
    cfg = dict(kp=arr(lane_floats), ki=arr(st.floats(0.0, 1e3)), kd=arr(st.floats(0.0, 1e-3)),
               ts=ts, tf=arr(st.floats(0.0, 1e-3)), out_min=lo,
               out_max=lo + arr(st.floats(0.01, 2.0)), anti_windup=anti_windup)
    if ramp:
        cfg["setpoint_rate"] = arr(st.floats(1.0, 1e5))
    if user_kt:
        cfg["kt"] = arr(st.floats(0.0, 1.0)) / ts
    meas = [arr(st.floats(-30.0, 30.0)) for _ in range(steps)]
    sps = [arr(st.floats(-30.0, 30.0)) for _ in range(steps)]
    reset = data.draw(st.booleans())

    lanes = PID(**cfg)
    if reset:
        lanes.reset(output=lo + 0.005, measurement=meas[0], setpoint=sps[0])
    out = np.array([lanes.update(s, m) for s, m in zip(sps, meas, strict=True)])
    for i in range(n):
        pid = PID(**_scalar_config(cfg, i))
        if reset:
            pid.reset(output=float(lo[i] + 0.005), measurement=float(meas[0][i]),
                      setpoint=float(sps[0][i]))
        ref = [pid.update(float(s[i]), float(m[i])) for s, m in zip(sps, meas, strict=True)]
        assert out[:, i].tolist() == ref
        assert float(lanes.integral[i]) == pid.integral


def test_scalar_gains_with_array_signals_and_array_limits():
    pid = PID(1.0, 0.0, 0.0, 1.0, out_min=np.array([0.0, 0.2]), out_max=np.array([1.0, 0.3]))
    out = pid.update(0.5, 0.0)  # float signal, array limits
    assert out.tolist() == [0.5, 0.3]
    assert pid.saturated.tolist() == [False, True]
    scalar = PID(1.0, 0.0, 0.0, 1.0)
    assert scalar.update(np.array([0.5, 2.0]), np.array([0.0, 0.0])).tolist() == [0.5, 1.0]


# ---------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(kp=-1.0), "kp must be >= 0"),
    (dict(ki=-1e-9), "ki must be >= 0"),
    (dict(kd=-0.5), "kd must be >= 0"),
    (dict(kp=math.nan), "kp must be >= 0"),
    (dict(kp=np.array([1.0, -1.0])), "kp must be >= 0"),
    (dict(ts=0.0), r"ts \(sample period\) must be > 0"),
    (dict(ts=-1e-5), r"ts \(sample period\) must be > 0"),
    (dict(tf=-1e-6), "tf .* must be >= 0"),
    (dict(out_min=1.0, out_max=1.0), "out_min must be < out_max"),
    (dict(out_min=0.5, out_max=0.2), "out_min must be < out_max"),
    (dict(out_min=np.array([0.0, 0.9]), out_max=np.array([1.0, 0.8])), "out_min must be <"),
    (dict(anti_windup="none"), "anti_windup must be 'clamp' or 'backcalc'"),
    (dict(anti_windup="backcalc", kt=-1.0), "kt must satisfy"),
    (dict(anti_windup="backcalc", kt=2e5), "kt must satisfy"),
    (dict(setpoint_rate=0.0), "setpoint_rate must be > 0"),
    (dict(setpoint_rate=-5.0), "setpoint_rate must be > 0"),
])
def test_validation_errors(kwargs, match):
    params = dict(kp=0.1, ki=10.0, kd=0.0, ts=TS)
    params.update(kwargs)
    with pytest.raises(ValueError, match=match):
        PID(**params)


def test_kt_of_exactly_one_over_ts_is_accepted():
    pid = PID(0.1, 10.0, 0.0, 3e-5, anti_windup="backcalc", kt=1.0 / 3e-5)
    assert pid.kt == 1.0 / 3e-5


# ---------------------------------------------------------------------------------------------
# Portability of the source


def test_source_imports_nothing():
    tree = ast.parse(PID_SOURCE.read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
    assert imports == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_scalar_clamp_is_numpys_clip(dtype):
    """The board's float32 PID clamps numpy scalars by selection (no ufunc call): the value,
    its sign (of zero) and its type are clip's, NaN and infinities included."""
    values = [dtype(v) for v in (-np.inf, -2.5, -0.0, 0.0, 0.3, 0.9, 0.95, 7.0, np.inf, np.nan)]
    for x, lo, hi in itertools.product(values, values, values):
        if not lo < hi:
            continue
        got, want = _clamp(x, lo, hi), x.clip(lo, hi)
        assert type(got) is type(want)
        assert np.array_equal(np.array(got), np.array(want), equal_nan=True)
        assert np.signbit(got) == np.signbit(want)
