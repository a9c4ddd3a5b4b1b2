"""Units, plausibility and configuration-file slips are caught where the value is read: a
value in another field's unit (L=100uF), an implausible magnitude, a byte-order mark or a
misspelt [converter] table would otherwise simulate a converter nobody meant."""

from __future__ import annotations

import re
import warnings

import pytest
from cli_helpers import cli, one_line_error

from boostsim import BoostParams
from boostsim.params import ImplausibleValueWarning
from boostsim.units import parse_si

BASE = dict(vin=5, L="100u", C="100u", R=48, fsw="100k")
TOML = '[converter]\nvin = 5\nL = "100u"\nC = "100u"\nR = 48\nfsw = "100k"\n'


@pytest.mark.parametrize("field, text, wrong", [
    ("L", "100mF", "F (farads)"), ("L", "100uF", "F (farads)"), ("fsw", "100kV", "V (volts)"),
    ("C", "47uH", "H (henries)"), ("R", "10mV", "V (volts)"), ("vin", "5A", "A (amps)"),
    ("r_L", "4k7V", "V (volts)"), ("t_rise", "20nHz", "Hz (hertz)"),
])
def test_a_unit_that_is_not_the_fields_unit_is_refused(field, text, wrong):
    with pytest.raises(ValueError, match=rf"^{field}: cannot read .*{re.escape(wrong)} is not"):
        BoostParams(**{**BASE, field: text})


@pytest.mark.parametrize("field, text, value", [
    ("L", "100uH", 100e-6), ("L", "100u", 100e-6), ("L", "100 uh", 100e-6),
    ("fsw", "100k", 1e5), ("fsw", "100kHz", 1e5), ("fsw", "100 khz", 1e5),
    ("r_C", "10m", 0.01), ("r_C", "10mOhm", 0.01), ("r_C", "10mΩ", 0.01), ("R", "4k7", 4700.0),
    ("C", "100uF", 100e-6), ("C", "1F", 1.0), ("t_rise", "20ns", 20e-9), ("vin", "5V", 5.0),
    ("vin", 5, 5.0), ("t_fall", "20f", 20e-15),
])
def test_the_right_unit_or_none_is_read(field, text, value):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImplausibleValueWarning)
        assert getattr(BoostParams(**{**BASE, field: text}), field) == pytest.approx(value)


def test_lane_lists_check_units_too():
    assert BoostParams(**{**BASE, "L": ["47u", "100uH"]}).L.tolist() == [47e-6, 100e-6]
    with pytest.raises(ValueError, match="L: cannot read '100uF'"):
        BoostParams(**{**BASE, "L": ["47u", "100uF"]})


def test_parse_si_without_a_unit_still_reads_any_unit_word():
    assert parse_si("100kV") == 1e5 and parse_si("1F") == 1.0


@pytest.mark.parametrize("field, value", [("L", 100), ("C", 10.0), ("fsw", 1.0),
                                          ("R", 1e-6), ("r_on", 5e3), ("vin", 1e6)])
def test_implausible_values_warn_naming_the_field(field, value):
    with pytest.warns(ImplausibleValueWarning, match=rf"^{field} = .* is the unit right\?"):
        BoostParams(**{**BASE, field: value})


def test_plausible_boards_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BoostParams(**{**BASE, "R": float("inf")}, r_L=0.0, i_load=0.0)
        BoostParams(vin="48", L="4u7", C="2200u", R="2", fsw="2meg", r_on="2m", t_rise="5n")


@pytest.mark.parametrize("value", [10**400, "1e400", -(10**400), [1e-4, 10**400]])
def test_huge_numbers_are_a_clear_error(value):
    with pytest.raises(ValueError, match=r"^L: "):
        BoostParams(**{**BASE, "L": value})


def test_toml_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "board.toml"
    path.write_bytes(b"\xef\xbb\xbf" + TOML.encode())
    assert BoostParams.load(path).fsw == 1e5
    assert BoostParams.from_toml("\ufeff" + TOML).L == 100e-6


def test_misspelt_converter_table_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"no \[converter\] table \(found \[convertr\]\); did "
                                         r"you mean \[converter\] instead of \[convertr\]\?"):
        BoostParams.from_toml(TOML.replace("converter", "convertr"))
    with pytest.raises(ValueError, match=r"no \[converter\] table \(found \[pid\]\)$"):
        BoostParams.from_toml("[pid]\nkp = 1\n")
    with pytest.raises(ValueError, match=r"\['fws'\] \(did you mean 'fsw' for 'fws'\?\)"):
        BoostParams.from_toml(TOML.replace("fsw", "fws"))


def test_cli_reports_unit_slips_bom_and_table_typos(capsys, tmp_path):
    status, _, err = cli(capsys, "steady", "--duty", "0.5", "--set", "fsw=100kV")
    assert status == 2 and "V (volts) is not the unit" in one_line_error(err)
    status, _, err = cli(capsys, "steady", "--duty", "0.5", "--set", "L=100mF")
    assert status == 2 and "F (farads) is not the unit" in one_line_error(err)
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + TOML.encode())
    status, _, err = cli(capsys, "steady", "--duty", "0.5", "--config", str(bom), "--json")
    assert status == 0 and err == ""
    typo = tmp_path / "typo.toml"
    typo.write_text(TOML.replace("converter", "convertr"))
    status, _, err = cli(capsys, "steady", "--duty", "0.5", "--config", str(typo))
    assert status == 1 and "did you mean [converter]" in one_line_error(err)
    status, _, err = cli(capsys, "steady", "--duty", "0.5", "--set", "L=100")
    assert status == 0
    assert err.splitlines() == ["boostsim: warning: L = 100 H is far outside the usual 1e-09 .. "
                                "1 H for the inductance: is the unit right?"]


@pytest.mark.slow  # a CLI subprocess
def test_cli_warns_in_one_stderr_line_as_a_process():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "boostsim", "steady", "--duty", "0.5", "--set",
                           "L=100"], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0
    assert done.stderr.splitlines() == ["boostsim: warning: L = 100 H is far outside the usual "
                                        "1e-09 .. 1 H for the inductance: is the unit right?"]
