"""Closed-loop Monte-Carlo of a load step (boostsim.montecarlo) on the compiled kernel."""

import numpy as np
import pytest

from boostsim import Step, default_board, simulate
from boostsim.control import ADC, DigitalController
from boostsim.pid import PID
from boostsim.sweep import parse_limit, parse_tolerance

pytest.importorskip("boostsim.kernel")
from boostsim.montecarlo import COLUMNS, disturbance_response, load_step_yield

# The compiled Monte-Carlo against the numpy engine lane by lane: numba compiles the closed loop
# (10-20 s after an edit of its sources) and the reference runs every lane in Python.
pytestmark = pytest.mark.slow

BOARD = default_board()
TS = 1 / BOARD.fsw
STEP = Step(8e-3, R=24.0)
T_END = 12e-3


def _controller():
    pid = PID(kp=0.002, ki=30.0, kd=0.0, ts=TS, out_min=0.0, out_max=0.8,
              setpoint_rate=12 / 2e-3)
    return DigitalController(pid, adc=ADC(noise_rms=0.001))


def test_disturbance_response_on_a_known_signal():
    t = np.arange(1000) * 1e-5
    y = np.full(1000, 12.0)
    y[500:] += 0.6 * np.exp(-(t[500:] - t[500]) / 1e-4) - 0.3 * (t[500:] < t[500] + 2e-5)
    figures = disturbance_response(t, y[None, :], t[500], band=0.01)
    assert figures["vout_final"][0] == pytest.approx(12.0, abs=1e-12)
    assert figures["overshoot"][0] == pytest.approx((0.6 * np.exp(-0.2) - 0.0) / 12, rel=1e-12)
    assert figures["undershoot"][0] == 0.0
    # 0.6 exp(-t/0.1 ms) stays above 0.12 V until t = 0.1 ms * ln 5 = 0.161 ms.
    assert figures["settling_time"][0] == pytest.approx(1.7e-4, abs=1e-12)


def test_yield_figures_equal_the_numpy_engine_lane_by_lane():
    tolerances = [parse_tolerance("L=20%"), parse_tolerance("C=10%")]
    limits = [parse_limit("undershoot<5%", COLUMNS), parse_limit("overshoot<6%", COLUMNS)]
    result = load_step_yield(BOARD, _controller(), vref=12.0, step=STEP, t_end=T_END,
                             samples=12, tolerances=tolerances, limits=limits, seed=3)
    cols = result.columns
    assert set(COLUMNS) <= set(cols) and cols["sample"].tolist() == list(range(12))
    assert np.ptp(cols["L"]) > 0 and np.all(np.abs(cols["L"] / BOARD.L - 1) <= 0.2)
    lanes = slice(None)  # all of them
    params = BOARD.replace(L=cols["L"], C=cols["C"])
    ref = simulate(params, controller=_controller(), vref=12.0, t_end=T_END, dt=TS,
                   steps=[STEP], engine="numpy")
    means = ref.period_means()
    expected = disturbance_response(means["t_start"][0], means["vout"], STEP.t, 0.01)
    for name in COLUMNS:
        np.testing.assert_allclose(cols[name][lanes], expected[name], rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    summary = result.yield_summary()
    passed = (cols["undershoot"] <= 0.05) & (cols["overshoot"] <= 0.06)
    assert summary["pass"] == int(passed.sum()) and 0 < summary["pass"] < 12


@pytest.mark.parametrize("kwargs,match", [
    (dict(tolerances=[parse_tolerance("duty=5%")]), "sets the duty"),
    (dict(step=Step(1e-3, vin=6.0)), "load step"),
    (dict(step=Step(13e-3, R=10.0)), "inside"),
    (dict(limits=[parse_limit("vout<13")]), "unknown figure"),
])
def test_bad_studies_are_refused(kwargs, match):
    args = dict(vref=12.0, step=STEP, t_end=T_END, samples=4, tolerances=[])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        load_step_yield(BOARD, _controller(), **args)


def test_limit_names_of_another_study_are_checked():
    with pytest.raises(ValueError, match="unknown figure 'overshot'"):
        parse_limit("overshot<5%", COLUMNS)
    assert parse_limit("overshoot<5%", COLUMNS).hi == pytest.approx(0.05)


def test_cli_monte_carlo_is_the_library_study(capsys, tmp_path):
    import json

    from cli_helpers import cli

    from boostsim.cli.bench import board_loop_controller

    args = ["simulate", "--vref", "12", "--kp", "0.002", "--ki", "30", "--rate", "100k",
            "--slew", "6k", "--t-end", "12m", "--load-step", "8ms:R=24", "--mc", "16",
            "--tol", "L=20%", "C=10%", "--seed", "2", "--limit", "undershoot<6.5%", "--json",
            "--out", str(tmp_path / "mc.csv")]
    status, out, _ = cli(capsys, *args)
    assert status == 0
    doc = json.loads(out)
    controller, *_ = board_loop_controller(BOARD, kp=0.002, ki=30.0, kd=0.0, tf=0.0,
                                           rate=100e3, duty_max=None, slew=6e3, noise_lsb=1.0,
                                           initial_duty=0.0)
    expected = load_step_yield(BOARD, controller, vref=12.0, step=Step(8e-3, R=24.0),
                               t_end=12e-3, samples=16, seed=2,
                               tolerances=[parse_tolerance("L=20%"), parse_tolerance("C=10%")],
                               limits=[parse_limit("undershoot<6.5%", COLUMNS)])
    assert doc["yield"]["pass"] == expected.yield_summary()["pass"]
    assert 0 < doc["yield"]["pass"] < 16
    assert doc["figures"]["undershoot"]["p50"] == pytest.approx(
        float(np.median(expected.columns["undershoot"])), rel=1e-12)
    rows = (tmp_path / "mc.csv").read_text().splitlines()
    assert "undershoot" in next(line for line in rows if not line.startswith("#"))


@pytest.mark.parametrize("extra,match", [
    (["--duty", "0.5", "--mc", "4", "--tol", "L=10%"], "needs the closed loop"),
    (["--vref", "12", "--kp", "0.002", "--ki", "30", "--tol", "L=10%"], "--tol needs --mc"),
    (["--vref", "12", "--kp", "0.002", "--ki", "30", "--mc", "4", "--tol", "L=10%",
      "--load-step", "8ms:R=24", "--load-step", "9ms:R=48"], "exactly one --load-step"),
    (["--vref", "12", "--kp", "0.002", "--ki", "30", "--mc", "4", "--load-step", "8ms:R=24"],
     "needs tolerances"),
])
def test_cli_monte_carlo_errors_are_one_line(capsys, extra, match):
    from cli_helpers import cli, one_line_error

    status, _, err = cli(capsys, "simulate", "--t-end", "12m", *extra)
    assert status == 2 and match in one_line_error(err)


def test_the_nominal_board_is_reported_beside_the_draws():
    # A zero tolerance draws the nominal board in every lane: the study's own nominal figures
    # must then sit inside the (noise-only) spread of the draws, and equal the numpy engine's.
    result = load_step_yield(BOARD, DigitalController(_controller().pid, adc=ADC()),
                             vref=12.0, step=STEP, t_end=T_END, samples=4,
                             tolerances=[parse_tolerance("L=0%")])
    assert set(result.nominal) == set(COLUMNS)
    for name in COLUMNS:  # noise-free ADC: every lane is the nominal board exactly
        np.testing.assert_allclose(result.columns[name], result.nominal[name], rtol=1e-9,
                                   atol=1e-12, err_msg=name)
    ref = simulate(BOARD, controller=DigitalController(_controller().pid, adc=ADC()),
                   vref=12.0, t_end=T_END, dt=TS, steps=[STEP], engine="numpy")
    means = ref.period_means()
    expected = disturbance_response(means["t_start"], np.atleast_2d(means["vout"]), STEP.t,
                                    0.01)
    for name in COLUMNS:
        assert result.nominal[name] == pytest.approx(float(expected[name][0]), rel=1e-9,
                                                     abs=1e-12), name
