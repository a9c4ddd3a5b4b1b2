"""Parameters: SI parsing, validation with clear errors, lane broadcasting, TOML round trip."""

import math

import numpy as np
import pytest

from boostsim import BoostParams, default_board, simulate, steady_state
from boostsim.units import format_si, parse_si

BASE = dict(vin=5, L=100e-6, C=100e-6, R=48, fsw=100e3)


@pytest.mark.parametrize("text,value", [
    ("47u", 47e-6), ("100k", 100e3), ("4.7m", 4.7e-3), ("47uH", 47e-6), ("100 kHz", 100e3),
    ("4k7", 4700.0), ("2M2", 2.2e6), ("1meg", 1e6), ("12V", 12.0), ("10ohm", 10.0),
    ("100nF", 100e-9), ("1F", 1.0), ("2.2e-6", 2.2e-6), ("inf", math.inf), (".5m", 0.5e-3),
    ("  3.3 V ", 3.3), ("1µ", 1e-6), ("100u", 1e-4),
])
def test_parse_si(text, value):
    assert parse_si(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1x", "1N", "--1", "1..2", "k", "1 2"])
def test_parse_si_rejects_garbage_with_the_text_in_the_message(text):
    with pytest.raises(ValueError, match="cannot read"):
        parse_si(text, name="L")


def test_format_si():
    assert format_si(47e-6, "H") == "47uH"
    assert format_si(100e3, "Hz") == "100kHz"
    assert format_si(0.0, "V") == "0V"


def test_strings_with_prefixes_are_accepted_for_every_field():
    p = BoostParams(vin="5V", L="100u", C="100uF", R="48", fsw="100k", r_on="30m")
    assert (p.vin, p.L, p.C, p.R, p.fsw, p.r_on) == (5.0, 1e-4, 1e-4, 48.0, 1e5, 0.03)


@pytest.mark.parametrize("field,value,message", [
    ("L", -1e-6, r"L \(inductance\) must be a finite number > 0 \[H\], got -1e-06"),
    ("L", 0.0, r"L .* must be a finite number > 0"),
    ("C", math.nan, r"C .* got nan"),
    ("fsw", math.inf, r"fsw .* must be a finite number > 0 \[Hz\], got inf"),
    ("vin", 0, r"vin .* > 0 \[V\]"),
    ("R", 0.0, r"R .* > 0 or inf \[ohm\]"),
    ("R", -math.inf, r"R .* got -inf"),
    ("r_on", -0.1, r"r_on .* >= 0 \[ohm\], got -0.1"),
    ("r_L", math.inf, r"r_L .* got inf"),
    ("v_f", -0.3, r"v_f .* >= 0 \[V\]"),
    ("i_load", math.nan, r"i_load .* got nan"),
    ("t_rise", -1e-9, r"t_rise .* >= 0 \[s\]"),
    ("L", "abc", r"L: cannot read 'abc'"),
    ("L", [[1e-6]], r"L: expected a scalar or a 1-D array"),
    ("L", [], r"L: empty array"),
    ("L", True, r"L: expected a number, got a boolean"),
    ("synchronous", "maybe", r"synchronous: expected true or false"),
])
def test_bad_values_raise_clear_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        BoostParams(**{**BASE, field: value})


def test_bad_lane_is_named():
    with pytest.raises(ValueError, match=r"lane 2"):
        BoostParams(**{**BASE, "L": [1e-6, 2e-6, -3e-6]})


def test_lane_lengths_must_agree():
    with pytest.raises(ValueError, match=r"different lengths \(L: 3, C: 2\)"):
        BoostParams(**{**BASE, "L": [1e-6, 2e-6, 3e-6], "C": [1e-6, 2e-6]})


def test_lanes_broadcast():
    p = BoostParams(**{**BASE, "L": [47e-6, 100e-6], "R": np.array([10.0, 20.0])})
    assert p.n_lanes == 2
    arrays = p.arrays()
    assert arrays["vin"].tolist() == [5.0, 5.0]
    assert p.lane(1).L == 100e-6 and p.lane(1).R == 20.0
    assert p.arrays(2)["L"].tolist() == [47e-6, 100e-6]
    with pytest.raises(ValueError, match="cannot broadcast"):
        p.arrays(3)


def test_duty_array_makes_lanes():
    ss = steady_state(BoostParams(**BASE), np.array([0.3, 0.5]))
    assert ss.vout_mean.shape == (2,)


@pytest.mark.parametrize("duty", [-0.1, 1.0, 1.5, math.nan, math.inf])
def test_duty_outside_zero_one_is_rejected_before_computing(duty):
    with pytest.raises(ValueError, match=r"duty must be in \[0, 1\)"):
        steady_state(BoostParams(**BASE), duty)
    with pytest.raises(ValueError, match=r"duty must be in \[0, 1\)"):
        simulate(BoostParams(**BASE), duty=duty, t_end=1e-4)


def test_simulate_argument_errors():
    p = BoostParams(**BASE)
    with pytest.raises(ValueError, match="t_end"):
        simulate(p, duty=0.5, t_end=-1)
    with pytest.raises(ValueError, match="dt"):
        simulate(p, duty=0.5, t_end=1e-4, dt=0)
    with pytest.raises(ValueError, match="either duty"):
        simulate(p, duty=0.5, t_end=1e-4, controller=lambda k, t, v: 0.5)
    with pytest.raises(ValueError, match="x0"):
        simulate(p, duty=0.5, t_end=1e-4, x0=(1, 2, 3))
    with pytest.raises(ValueError, match="schedule has 3 periods but the simulation needs 10"):
        simulate(p, duty=np.full((3, 1), 0.5), t_end=1e-4)
    with pytest.raises(ValueError, match=r"controller duty \(period 0\) must be in \[0, 1\)"):
        simulate(p, controller=lambda k, t, v: 1.2, t_end=1e-4)
    with pytest.raises(TypeError, match="BoostParams"):
        simulate({"vin": 5}, duty=0.5, t_end=1e-4)


def test_unloaded_converter_has_no_steady_state():
    with pytest.raises(ValueError, match="no periodic steady state without a load"):
        steady_state(BoostParams(**{**BASE, "R": math.inf}), 0.5)


def test_toml_round_trip(tmp_path):
    p = BoostParams(**{**BASE, "R": math.inf, "i_load": 0.25, "L": [47e-6, 100e-6]})
    path = tmp_path / "board.toml"
    p.save(path)
    q = BoostParams.load(path)
    assert q.to_dict() == p.to_dict()


def test_toml_accepts_si_strings_and_reports_the_file(tmp_path):
    path = tmp_path / "board.toml"
    path.write_text('[converter]\nvin = "12V"\nL = "47u"\nC = "220u"\nR = "4k7"\n'
                    'fsw = "200k"\n')
    p = BoostParams.load(path)
    assert (p.vin, p.L, p.C, p.R, p.fsw) == (12.0, 47e-6, 220e-6, 4700.0, 200e3)
    path.write_text('[converter]\nvin = "12V"\nL = "-47u"\nC = "220u"\nR = 10\nfsw = 1e5\n')
    with pytest.raises(ValueError, match=r"board.toml: L \(inductance\) must be"):
        BoostParams.load(path)
    path.write_text('[converter]\nvin = 12\nLL = 1\n')
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['LL'\]"):
        BoostParams.load(path)
    path.write_text('[converter]\nvin = 12\n')
    with pytest.raises(ValueError, match=r"missing required parameter\(s\): L, C, R, fsw"):
        BoostParams.load(path)
    path.write_text('[converter\n')
    with pytest.raises(ValueError, match="not valid TOML"):
        BoostParams.load(path)
    with pytest.raises(ValueError, match="cannot read configuration"):
        BoostParams.load(tmp_path / "missing.toml")


def test_default_board_is_a_12_volt_ccm_design():
    p = default_board()
    assert (p.vin, p.fsw) == (5.0, 100e3)
    ss = steady_state(p, 0.6)
    assert ss.mode == "CCM"
    assert 11.5 < ss.vout_mean < 12.5
    assert 0.85 < ss.efficiency < 0.97
