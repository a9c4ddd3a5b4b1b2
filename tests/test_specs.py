"""Text specifications of a study (boostsim.specs): value ranges, grid axes, Monte-Carlo
tolerances and limits, and their one-line errors."""

import numpy as np
import pytest

from boostsim.specs import (
    Limit,
    parse_axis,
    parse_duty_range,
    parse_limit,
    parse_tolerance,
    parse_value_range,
)

# -- parsing ----------------------------------------------------------------------------------

def test_duty_range_includes_stop_without_rounding_noise():
    d = parse_duty_range("0.05:0.85:0.01")
    assert d.size == 81
    assert d[0] == 0.05 and d[-1] == 0.85 and d[3] == 0.08
    assert parse_duty_range("0.1:0.8:0.1").tolist() == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert parse_duty_range("0.3,0.5").tolist() == [0.3, 0.5]
    assert parse_duty_range("0.6").tolist() == [0.6]
    assert parse_value_range("5:20:5", "vout").tolist() == [5, 10, 15, 20]


@pytest.mark.parametrize("text,match", [
    ("0.1:0.9", "start:stop:step"), ("0.1:0.9:0", "step must be > 0"),
    ("0.8:0.2:0.1", "stop must be >= start"), ("a:b:c", "cannot read"), ("", "empty"),
    ("0.5:1.0:0.1", r"\[0, 1\)"), ("-0.1", r"\[0, 1\)"), ("0.2,x", "cannot read"),
    ("0.1:0.2:0.1:4", "start:stop:step"),
])
def test_bad_duty_ranges_say_why(text, match):
    with pytest.raises(ValueError, match=match):
        parse_duty_range(text)


def test_axis_linear_log_and_list():
    a = parse_axis("L=22u:220u:10")
    assert a.name == "L" and a.values.size == 10 and not a.log
    assert a.values[0] == pytest.approx(22e-6) and a.values[-1] == pytest.approx(220e-6)
    b = parse_axis("L=10u:1m:3:log")
    assert b.log and b.values == pytest.approx([10e-6, 100e-6, 1e-3])
    assert parse_axis("R=12,24,48").values.tolist() == [12, 24, 48]
    assert parse_axis("fsw=10k:1meg:3", log=True).values == pytest.approx([1e4, 1e5, 1e6])


@pytest.mark.parametrize("text,match", [
    ("Lx=1u:2u:3", "not a numeric converter parameter; known: vin, L"),
    ("L=1u:2u:x", "number of points"), ("L=1u:2u:2.5", "number of points"),
    ("L=1u:2u", "start:stop:count"), ("L", "NAME=start:stop:count"),
    ("L=-1u:2u:3", r"L \(inductance\) must be a finite number > 0"),
    ("L=0:1u:3:log", "logarithmic"), ("duty=0.1:0.2:3", "--duty"),
    ("synchronous=0,1", "not a numeric"), ("L=", "no values"),
])
def test_bad_axes_say_why(text, match):
    with pytest.raises(ValueError, match=match):
        parse_axis(text)


def test_tolerances():
    t = parse_tolerance("L=20%")
    assert (t.name, t.value, t.relative) == ("L", 0.2, True)
    assert t.span(100e-6) == pytest.approx(20e-6)
    v = parse_tolerance("vin=250m")
    assert (v.value, v.relative) == (0.25, False)
    for bad, match in (("Q=5%", "known: duty, vin"), ("L", "NAME=PERCENT"),
                       ("L=-5%", ">= 0"), ("L=abc%", "cannot read")):
        with pytest.raises(ValueError, match=match):
            parse_tolerance(bad)


def test_limits_forms_aliases_and_units():
    assert parse_limit("vout=11.5:12.5") == Limit("vout_mean", 11.5, 12.5, "vout=11.5:12.5")
    assert (parse_limit("ripple<100m").name, parse_limit("ripple<100m").hi) == \
        ("vout_ripple", 0.1)
    eff = parse_limit("efficiency>90%")
    assert (eff.name, eff.lo, eff.hi) == ("efficiency", 0.9, None)
    assert parse_limit("il_peak=:1.5").hi == 1.5 and parse_limit("il_peak=:1.5").lo is None
    assert parse_limit("il_rms <= 2").hi == 2
    assert parse_limit("efficiency=0.9:").lo == 0.9
    lim = parse_limit("vout=11:13")
    assert lim.passes(np.array([10.9, 11, 12, 13, 13.1, np.nan])).tolist() == \
        [False, True, True, True, False, False]


@pytest.mark.parametrize("text,match", [
    ("ripple~0.1", "expected NAME=LO:HI"), ("foo<3", "unknown figure 'foo'"),
    ("vout=12", "LO:HI"), ("vout=13:12", "lower bound exceeds"), ("vout<", "expected"),
    ("vout<abc", "not a number"), ("vout=:", "at least one bound"),
])
def test_bad_limits_say_why(text, match):
    with pytest.raises(ValueError, match=match):
        parse_limit(text)


def test_axis_and_tolerance_values_carry_the_fields_unit():
    # A unit word must be the swept field's own unit: a farad inductor is a slip, not 22 uH.
    np.testing.assert_allclose(parse_axis("L=22uH:220u:2").values, [22e-6, 220e-6])
    assert parse_tolerance("C=5uF").value == pytest.approx(5e-6)
    for text, parse in (("L=22uF:220u:3", parse_axis), ("fsw=100kV,200k", parse_axis),
                        ("C=5uH", parse_tolerance)):
        with pytest.raises(ValueError, match="is not the unit of this value"):
            parse(text)
