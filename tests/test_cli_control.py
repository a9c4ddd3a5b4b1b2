"""The control commands end to end: ``boostsim tune``, ``boostsim bode`` and the closed-loop
options of ``simulate`` (``--tune``, ``--averaged``): what a user types, what they see, the
files they get, exit codes and one-line errors for bad input.

Most tests call ``boostsim.cli.main`` in this process (start-up costs about a second per
process); one runs the real command in a subprocess.
"""

import json
import os
import subprocess
import sys
import tomllib

import pytest
from cli_helpers import cli, one_line_error

from boostsim.outputs import read_csv

pytestmark = pytest.mark.slow  # CLI end to end

PNG = b"\x89PNG\r\n\x1a\n"




def header(path) -> list[str]:
    lines = [line for line in open(path, encoding="utf-8").read().splitlines()
             if not line.startswith("#")]
    return lines[0].split(",")


# -- tune -----------------------------------------------------------------------------------

def test_tune_as_a_process_prints_gains_and_writes_toml_and_plot(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    proc = subprocess.run([sys.executable, "-m", "boostsim", "tune", "--vref", "12",
                           "--crossover", "2k", "--out", "gains.toml", "--plot", "loop.png"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    for word in ("kp", "ki", "kd", "tf", "ts", "crossover", "phase margin", "gain margin",
                 "overshoot", "RHP zero", "crossover limit", "wrote gains.toml, loop.png"):
        assert word in proc.stdout, word
    assert "2000.0 (target 2000)" in proc.stdout
    document = tomllib.loads((tmp_path / "gains.toml").read_text("utf-8"))
    pid = document["pid"]
    assert set(pid) == {"kp", "ki", "kd", "tf", "rate"}
    assert pid["kp"] > 0 and pid["ki"] > 0 and pid["rate"] == 100e3
    assert (tmp_path / "loop.png").read_bytes().startswith(PNG)


def test_tune_json_has_gains_and_prediction(capsys):
    status, out, err = cli(capsys, "tune", "--vref", "12", "--crossover", "1.5k",
                           "--phase-margin", "55", "--json")
    assert status == 0 and err == ""
    doc = json.loads(out)
    assert doc["command"] == "tune"
    assert set(doc["gains"]) == {"kp", "ki", "kd", "tf", "ts"}
    p = doc["predicted"]
    assert p["crossover_hz"] == pytest.approx(1500, rel=1e-3)
    assert p["phase_margin_deg"] == pytest.approx(55, abs=0.5)
    assert p["gain_margin_db"] > 3 and p["rhp_zero_hz"] > p["crossover_limit_hz"]
    assert 0 < doc["duty"] < 1 and doc["rate_Hz"] == 100e3


def test_tune_slow_loop_is_integral_only(capsys):
    status, out, _ = cli(capsys, "tune", "--vref", "12", "--crossover", "5", "--rate", "200",
                         "--phase-margin", "30")
    assert status == 0
    assert "integral only" in out and "every 500 periods" in out


def test_tune_impossible_crossover_is_a_one_line_runtime_error(capsys):
    status, out, err = cli(capsys, "tune", "--vref", "12", "--crossover", "5k")
    assert status == 1 and out == ""
    line = one_line_error(err)
    assert "above the" in line and "right-half-plane zero" in line
    status, _, err = cli(capsys, "tune", "--vref", "12", "--crossover", "50", "--rate", "200")
    assert status == 1 and "sample rate" in one_line_error(err)


@pytest.mark.parametrize("args, words", [
    (["--crossover", "2k"], "--vref"),
    (["--vref", "12"], "--crossover"),
    (["--vref", "12", "--crossover", "fast"], "--crossover"),
    (["--vref", "12", "--crossover=-2k"], "> 0"),
    (["--vref", "12", "--crossover", "2k", "--phase-margin", "95"], "between 0 and 90"),
    (["--vref", "12", "--crossover", "2k", "--rate", "1Meg"], "above the switching"),
    (["--vref", "12", "--crossover", "2k", "--out", "gains.txt"], "unknown extension"),
])
def test_tune_usage_errors(capsys, args, words):
    status, out, err = cli(capsys, "tune", *args)
    assert status == 2 and out == ""
    assert words in one_line_error(err)


# -- bode -----------------------------------------------------------------------------------

def test_bode_tuned_loop_writes_csv_with_units_and_plot(capsys, tmp_path):
    csv, png = tmp_path / "bode.csv", tmp_path / "bode.png"
    status, out, err = cli(capsys, "bode", "--vref", "12", "--crossover", "2k", "--out",
                           str(csv), "--plot", str(png))
    assert status == 0 and err == ""
    assert "phase margin" in out and "gain margin" in out and "stable" in out
    assert header(csv) == ["f_Hz", "T_mag_dB", "T_phase_deg", "plant_mag_dB",
                           "plant_phase_deg", "controller_mag_dB", "controller_phase_deg"]
    meta, cols = read_csv(csv)
    assert "bode" in meta["command"]
    f = cols["f_Hz"]
    assert f[0] < 100 and f[-1] < 50e3
    png_bytes = png.read_bytes()
    assert png_bytes.startswith(PNG)


def test_bode_given_gains_json_margins_match_tune(capsys, tmp_path):
    status, out, _ = cli(capsys, "tune", "--vref", "12", "--crossover", "2k", "--json")
    doc = json.loads(out)
    g = doc["gains"]
    status, out, err = cli(capsys, "bode", "--vref", "12", "--kp", repr(g["kp"]), "--ki",
                           repr(g["ki"]), "--kd", repr(g["kd"]), "--tf", repr(g["tf"]),
                           "--rate", repr(doc["rate_Hz"]), "--json", "--no-files")
    assert status == 0, err
    m = json.loads(out)["margins"]
    assert m["crossover_hz"] == pytest.approx(2000, rel=1e-3)
    assert m["phase_margin_deg"] == pytest.approx(50, abs=0.2) and m["stable"]


def test_bode_plant_alone_default_plot(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, err = cli(capsys, "bode", "--duty", "0.6", "--out", "plant.csv")
    assert status == 0 and err == ""
    assert "plant Gvd alone" in out and "LC resonance" in out and "RHP zero" in out
    assert header("plant.csv") == ["f_Hz", "plant_mag_dB", "plant_phase_deg"]
    assert (tmp_path / "bode.png").read_bytes().startswith(PNG)


def test_bode_unstable_gains_warn(capsys, tmp_path):
    status, out, err = cli(capsys, "bode", "--vref", "12", "--kp", "1", "--ki", "100",
                           "--no-files")
    assert status == 0
    assert "UNSTABLE" in out and "unstable" in err


@pytest.mark.parametrize("args, words", [
    (["--kp", "0.1"], "operating point"),
    (["--vref", "12", "--duty", "0.5"], "not allowed with"),
    (["--duty", "0.6", "--crossover", "2k"], "needs --vref"),
    (["--vref", "12", "--crossover", "2k", "--kp", "1"], "do not give --kp"),
    (["--vref", "12", "--kd", "1e-5"], "--kp K and/or --ki K"),
    (["--vref", "12", "--phase-margin", "50"], "needs --crossover"),
    (["--vref", "12", "--kp", "x"], "--kp"),
    (["--vref", "12", "--fmax", "1Meg"], "above half the switching"),
    (["--vref", "12", "--fmin", "10k", "--fmax", "1k"], "below --fmax"),
])
def test_bode_usage_errors(capsys, args, words):
    status, out, err = cli(capsys, "bode", "--no-files", *args)
    assert status == 2 and out == ""
    assert words in one_line_error(err)


# -- simulate --tune / --averaged ------------------------------------------------------------

def test_simulate_tune_regulates(capsys):
    status, out, err = cli(capsys, "simulate", "--vref", "12", "--tune", "--crossover", "2k",
                           "--start", "steady", "--t-end", "5m", "--json")
    assert status == 0, err
    doc = json.loads(out)
    loop = doc["closed_loop"]
    assert loop["every_periods"] == 1 and loop["tf"] > 0
    assert loop["tuned"]["crossover_hz"] == pytest.approx(2000, rel=1e-3)
    assert doc["metrics"]["vout_mean"] == pytest.approx(12, abs=0.05)


def test_simulate_averaged_open_and_closed_loop(capsys, tmp_path):
    status, out, err = cli(capsys, "simulate", "--duty", "0.6", "--averaged", "--json")
    assert status == 0, err
    doc = json.loads(out)
    assert doc["model"] == "averaged" and doc["metrics"]["mode"] == "CCM"
    assert 11 < doc["metrics"]["vout_mean"] < 12.5
    png, csv = tmp_path / "avg.png", tmp_path / "avg.csv"
    status, out, err = cli(capsys, "simulate", "--vref", "12", "--tune", "--crossover", "2k",
                           "--averaged", "--t-end", "10m", "--load-step", "5ms:R=24",
                           "--plot", str(png), "--out", str(csv))
    assert status == 0, err
    assert "averaged model" in out and "tuned for 2000 Hz" in out
    assert png.read_bytes().startswith(PNG)
    assert header(csv) == ["t_s", "il_A", "vc_V", "vout_V"]


@pytest.mark.parametrize("args, words", [
    (["--duty", "0.6", "--tune"], "--tune needs --vref"),
    (["--vref", "12", "--tune"], "--crossover"),
    (["--vref", "12", "--tune", "--crossover", "2k", "--kp", "1"], "do not give --kp"),
    (["--vref", "12", "--kp", "1", "--ki", "1", "--crossover", "2k"], "needs --tune"),
    (["--vref", "12"], "--tune --crossover"),
])
def test_simulate_tune_usage_errors(capsys, args, words):
    status, out, err = cli(capsys, "simulate", *args)
    assert status == 2 and out == ""
    assert words in one_line_error(err)


def test_simulate_tune_impossible_target(capsys):
    status, out, err = cli(capsys, "simulate", "--vref", "12", "--tune", "--crossover", "9k")
    assert status == 1 and out == ""
    assert "cannot tune" in one_line_error(err)


def test_tuned_gains_file_drives_the_simulated_loop(capsys, tmp_path):
    gains = tmp_path / "gains.toml"
    status, _, err = cli(capsys, "tune", "--vref", "12", "--crossover", "2k", "--out",
                         str(gains), "--quiet")
    assert status == 0, err
    status, out, err = cli(capsys, "simulate", "--vref", "12", "--pid-config", str(gains),
                           "--start", "steady", "--t-end", "5m", "--json")
    assert status == 0, err
    loop = json.loads(out)["closed_loop"]
    table = tomllib.loads(gains.read_text())["pid"]
    assert loop["kp"] == pytest.approx(table["kp"]) and loop["rate"] == pytest.approx(table["rate"])
    status, out, err = cli(capsys, "simulate", "--vref", "12", "--pid-config", str(gains),
                           "--kp", "0.02", "--t-end", "1m", "--json")
    assert status == 0 and json.loads(out)["closed_loop"]["kp"] == 0.02  # flags override the file
    bad = tmp_path / "bad.toml"
    bad.write_text("[pid]\nkp = 1\nkq = 2\n")
    status, _, err = cli(capsys, "simulate", "--vref", "12", "--pid-config", str(bad),
                         "--t-end", "1m")
    assert status == 1 and "unknown [pid] key(s) ['kq']" in one_line_error(err)
    status, _, err = cli(capsys, "simulate", "--duty", "0.5", "--pid-config", str(gains))
    assert status == 2 and "--pid-config needs --vref" in one_line_error(err)
