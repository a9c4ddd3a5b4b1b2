"""The ``boostsim`` command end to end: what a user types, what they see, the files they get,
exit codes and one-line errors for bad input.

Start-up costs about a second per process, so a few tests run the real command in a
subprocess (``python -m boostsim``, the console script once) and the many error cases call
``boostsim.cli.main`` in this process, which is what the command runs.
"""

import json
import os
import shutil
import subprocess
import sys
import tomllib
from importlib import resources

import numpy as np
import pytest
from cli_helpers import cli, one_line_error

from boostsim import __version__
from boostsim.outputs import read_csv

pytestmark = pytest.mark.slow  # CLI end to end (subprocesses)

PNG = b"\x89PNG\r\n\x1a\n"
DEFAULT_BOARD_TEXT = resources.files("boostsim").joinpath("data", "default_board.toml") \
    .read_text("utf-8")


def run(*args: str, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m boostsim ARGS`` as a user would (stdin closed, stderr not a TTY)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run([sys.executable, "-m", "boostsim", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)




def body(path) -> list[str]:
    """A CSV file without its metadata lines."""
    return [line for line in open(path, encoding="utf-8").read().splitlines()
            if not line.startswith("#")]


# -- as a process ---------------------------------------------------------------------------

def test_sweep_without_arguments_runs_the_default_board(tmp_path):
    proc = run("sweep", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no progress bar or warning when stderr is not a terminal
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("boostsim sweep: vin 5V, L 100uH, C 100uF, R 48Ω, fsw 100kHz")
    assert lines[1].split() == ["duty", "vout", "[V]", "ripple", "[mV]", "iL", "[A]", "iL",
                                "peak", "[A]", "eff", "[%]", "mode"]
    rows = [line.split() for line in lines[3:84]]
    assert rows[0][0] == "0.050" and rows[-1][0] == "0.850"
    assert rows[55][:2] == ["0.600", "12.011"] and rows[55][-1] == "CCM"
    assert lines[-1] == "wrote sweep.csv, sweep.png"
    meta, cols = read_csv(tmp_path / "sweep.csv")
    assert meta["boostsim"] == __version__
    assert meta["command"] == "boostsim sweep"
    assert meta["parameters"]["L"] == 100e-6 and meta["parameters"]["R"] == 48
    assert meta["study"]["axes"] == {"duty": "0.05..0.85 (81 points)"}
    header = body(tmp_path / "sweep.csv")[0].split(",")
    assert header[:4] == ["duty", "vout_mean_V", "vout_ripple_V", "vout_min_V"]
    assert {"il_mean_A", "il_max_A", "pin_W", "efficiency", "efficiency_total", "mode",
            "converged", "loss_diode_forward_W", "t_on_s"} <= set(header)
    assert cols["duty"].size == 81 and cols["duty"][0] == 0.05 and cols["duty"][-1] == 0.85
    assert np.all(np.diff(cols["vout_mean_V"]) > 0)
    assert (tmp_path / "sweep.png").read_bytes().startswith(PNG)


def test_console_script_version_and_help():
    exe = shutil.which("boostsim")
    if exe is None:
        pytest.skip("the boostsim console script is not on PATH")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"boostsim {__version__}"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for command in ("sweep", "simulate", "steady", "config"):
        assert f"  {command} " in proc.stdout


def test_monte_carlo_with_limits_as_a_process_matches_in_process(tmp_path, monkeypatch,
                                                                   capsys):
    args = ["sweep", "--vout", "12", "--mc", "3000", "--tol", "L=20%", "C=10%", "r_on=30%",
            "--seed", "1", "--limit", "vout=11.99:12.01", "--limit", "efficiency>0.9607"]
    proc = run(*args, "--workers", "2", "--chunk-size", "700", "--out", "mc.csv", "--plot",
               "mc.png", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # nothing but JSON on stdout
    y = summary["yield"]
    assert y["points"] == 3000 and 0 < y["yield"] < 1
    assert y["limits"]["efficiency>0.9607"]["column"] == "efficiency"
    assert summary["nominal_duty"] == pytest.approx(0.59965, abs=1e-4)
    assert summary["study"]["monte_carlo"]["tolerances"] == ["L=±20%", "C=±10%", "r_on=±30%"]
    assert summary["files"] == {"data": "mc.csv", "plot": "mc.png"}
    meta, cols = read_csv(tmp_path / "mc.csv")
    assert list(cols)[:6] == ["sample", "vout_target_V", "duty", "L_H", "C_F", "r_on_ohm"]
    assert cols["pass"].sum() == y["pass"]
    assert meta["limits"] == ["vout=11.99:12.01", "efficiency>0.9607"]
    assert (tmp_path / "mc.png").read_bytes().startswith(PNG)
    # The same study in this process with one worker and other chunks: identical samples and
    # pass/fail (results equal to rounding; bit-identical at equal chunk sizes).
    monkeypatch.chdir(tmp_path)
    status, _, _ = cli(capsys, *args, "--workers", "1", "--chunk-size", "700", "--out",
                       "same.csv", "--no-files", "-q")
    assert status == 0
    assert body(tmp_path / "same.csv") == body(tmp_path / "mc.csv")


def test_steady_at_a_target_voltage_json(tmp_path):
    proc = run("steady", "--vout", "12", "--json", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    op = json.loads(proc.stdout)
    assert op["duty"] == pytest.approx(0.59965, abs=1e-4)
    assert op["vout_mean"] == pytest.approx(12.0, rel=1e-8)
    assert op["mode"] == "CCM" and op["vout_target"] == 12
    assert set(op["losses"]) == {"inductor_dcr", "switch_conduction", "diode_forward",
                                 "diode_resistance", "capacitor_esr"}
    assert op["files"] == {}
    assert list(tmp_path.iterdir()) == []


def test_simulate_writes_waveforms_and_plot(tmp_path):
    proc = run("simulate", "--duty", "0.6", "--t-end", "4m", "--dt", "1u", "--load-step",
               "2ms:R=24", "--out", "w.csv", "--plot", "w.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "last 20 periods:" in proc.stdout and "steps: 2ms R=24Ω" in proc.stdout
    assert "wrote w.csv, w.png" in proc.stdout
    meta, cols = read_csv(tmp_path / "w.csv")
    assert list(cols) == ["t_s", "il_A", "vc_V", "vout_V"]
    assert cols["t_s"].size == 4001 and cols["t_s"][-1] == pytest.approx(4e-3)
    assert meta["steps"] == [{"t": 0.002, "R": 24.0}] and meta["duty"] == 0.6
    assert cols["il_A"][0] == 0 and cols["vout_V"].max() > 12
    assert (tmp_path / "w.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize("args,status,message", [
    (["sweep", "--set", "Lx=47u"], 2, "unknown parameter 'Lx'; known: vin, L, C"),
    (["sweep", "--config", "missing.toml"], 1, "cannot read configuration 'missing.toml'"),
    (["steady", "--vout", "100"], 1, "vout = 100 V is not reachable"),
    (["sweep", "--limit", "ripple~0.1"], 2, "cannot read limit 'ripple~0.1'"),
])
def test_errors_are_one_line_with_the_right_exit_status(tmp_path, args, status, message):
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode == status
    assert message in one_line_error(proc.stderr)
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(tmp_path):
    proc = run("sweep", "--config", "missing.toml", "--debug", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "missing.toml" in proc.stderr


def test_scheduler_runs_on_a_dask_cluster_with_identical_results(tmp_path, monkeypatch,
                                                                   capsys):
    distributed = pytest.importorskip("distributed")
    args = ["sweep", "--duty", "0.6", "--mc", "2000", "--tol", "L=20%", "C=10%", "--seed", "4",
            "--chunk-size", "500", "--limit", "efficiency>0.96", "--no-files", "-q"]
    monkeypatch.chdir(tmp_path)
    assert cli(capsys, *args, "--workers", "1", "--out", "local.csv")[0] == 0
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  protocol="tcp", host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        proc = run(*args, "--scheduler", cluster.scheduler_address, "--out", "dask.csv",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert body(tmp_path / "dask.csv") == body(tmp_path / "local.csv")


# -- in this process ------------------------------------------------------------------------

def test_help_lists_commands_and_every_command_has_examples(capsys):
    status, out, _ = cli(capsys, "--help")
    assert status == 0
    assert "boostsim sweep" in out and "exit status" in out
    for command in (["sweep"], ["simulate"], ["steady"], ["config"], ["config", "init"],
                    ["config", "show"]):
        status, out, _ = cli(capsys, *command, "--help")
        assert status == 0 and "examples:" in out, command
    _, out, _ = cli(capsys, "sweep", "--help")
    for option in ("--duty", "--vout", "--sweep", "--mc", "--tol", "--dist", "--seed",
                   "--limit", "--transient", "--workers", "--scheduler", "--config", "--set",
                   "--out", "--plot", "--json", "--quiet", "--debug", "--no-files"):
        assert option in out


@pytest.mark.parametrize("args,status,message", [
    ([], 2, "choose a command"),
    (["config"], 2, "choose an action: init or show"),
    (["bogus"], 2, "invalid choice: 'bogus'"),
    (["sweep", "--set", "L=-47u"], 2, "L (inductance) must be a finite number > 0 [H]"),
    (["sweep", "--set", "L=abc"], 2, "L: cannot read 'abc'"),
    (["sweep", "--set", "L"], 2, "expected NAME=VALUE"),
    (["sweep", "--duty", "0.1:0.9"], 2, "expected start:stop:step"),
    (["sweep", "--duty", "0.5:1.2:0.1"], 2, "duty must be in [0, 1)"),
    (["sweep", "--duty", "-0.1"], 2, "duty must be in [0, 1)"),
    (["sweep", "--duty", "0.8:0.2:0.1"], 2, "stop must be >= start"),
    (["sweep", "--sweep", "L=1u:2u:x"], 2, "number of points"),
    (["sweep", "--sweep", "Q=1:2:3"], 2, "cannot sweep 'Q'"),
    (["sweep", "--sweep", "C=-1u:1u:3"], 2, "C (output capacitance) must be"),
    (["sweep", "--limit", "foo<3"], 2, "unknown figure 'foo'"),
    (["sweep", "--limit", "vout=12"], 2, "LO:HI"),
    (["sweep", "--mc", "100"], 2, "--mc needs tolerances"),
    (["sweep", "--mc", "100", "--tol", "L=5%"], 2, "--mc needs one operating point"),
    (["sweep", "--mc", "100", "--tol", "L=5%", "--duty", "0.3,0.5"], 2, "one operating point"),
    (["sweep", "--mc", "100", "--tol", "L=5%", "--duty", "0.5", "--sweep", "R=1:2:2"], 2,
     "cannot be combined with --sweep"),
    (["sweep", "--tol", "L=5%"], 2, "--tol needs --mc"),
    (["sweep", "--mc", "0", "--tol", "L=5%", "--duty", "0.5"], 2, "samples must be >= 1"),
    (["sweep", "--mc", "10", "--tol", "L=150%", "--duty", "0.5"], 1, "invalid value"),
    (["sweep", "--t-end", "10m"], 2, "--t-end needs --transient"),
    (["sweep", "--duty", "0.5", "--transient", "--t-end", "100u"], 1, "at least 40"),
    (["sweep", "--workers", "0"], 2, "--workers must be >= 1"),
    (["sweep", "--out", "x.txt"], 2, "unknown extension '.txt'"),
    (["sweep", "--plot", "nodir/x.png"], 1, "directory 'nodir' does not exist"),
    (["sweep", "--vout", "12", "--duty", "0.5"], 2, "not allowed with argument"),
    (["steady"], 2, "--duty D or --vout V"),
    (["steady", "--vout", "3"], 1, "below the zero-duty output"),
    (["steady", "--duty", "1"], 2, "duty must be in [0, 1)"),
    (["simulate"], 2, "give the open-loop duty"),
    (["simulate", "--duty", "0.6", "--t-end", "0"], 2, "--t-end must be a finite time > 0"),
    (["simulate", "--duty", "0.6", "--load-step", "2ms:vin=3"], 2, "one of R, i_load"),
    (["simulate", "--duty", "0.6", "--step", "2ms"], 2, "expected TIME:NAME=VALUE"),
    (["simulate", "--duty", "0.6", "--step", "2ms:R=-1"], 2, "R (load resistance"),
    (["simulate", "--duty", "0.6", "--t-end", "100u"], 1, "only 10 periods"),
])
def test_bad_input_gives_one_clear_line(tmp_path, monkeypatch, capsys, args, status, message):
    monkeypatch.chdir(tmp_path)
    got, out, err = cli(capsys, *args)
    assert got == status
    assert message in one_line_error(err)
    assert out == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content,message", [
    ("[converter\nvin = 5\n", "not valid TOML"),
    ('[converter]\nvin = 5\nL = "100u"\n', "missing required parameter(s): C, R, fsw"),
    ('[converter]\nvin = 5\nL = "-1u"\nC = "1u"\nR = 10\nfsw = "100k"\n',
     "L (inductance) must be a finite number > 0"),
    ('[converter]\nvin = 5\nL = "1u"\nC = "1u"\nR = 10\nfsw = "100k"\nfoo = 1\n',
     "unknown parameter(s) ['foo']"),
    (b"\xff\xfe\x00", "not a text file"),
])
def test_bad_configuration_files(tmp_path, monkeypatch, capsys, content, message):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "board.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    status, out, err = cli(capsys, "sweep", "--config", "board.toml", "--no-files")
    assert status == 1 and out == ""
    assert message in one_line_error(err)
    assert "board.toml" in err


def test_config_init_writes_the_default_board_verbatim_and_refuses_to_overwrite(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, _ = cli(capsys, "config", "init")
    assert status == 0 and "wrote board.toml" in out
    assert (tmp_path / "board.toml").read_text() == DEFAULT_BOARD_TEXT  # comments kept
    (tmp_path / "board.toml").write_text("# mine\n")
    status, out, err = cli(capsys, "config", "init")
    assert status == 1 and "exists; use --force" in one_line_error(err)
    assert (tmp_path / "board.toml").read_text() == "# mine\n"
    status, _, _ = cli(capsys, "config", "init", "--force")
    assert status == 0 and (tmp_path / "board.toml").read_text() == DEFAULT_BOARD_TEXT
    status, _, _ = cli(capsys, "config", "init", "other.toml", "-q")
    assert status == 0 and (tmp_path / "other.toml").read_text() == DEFAULT_BOARD_TEXT


def test_config_show_applies_config_and_set_and_keeps_other_tables(tmp_path, monkeypatch,
                                                                    capsys):
    monkeypatch.chdir(tmp_path)
    board = DEFAULT_BOARD_TEXT.replace('R = "48ohm"', 'R = "24ohm"') + \
        '\n[pwm]\nfrequency = "100kHz"\nresolution = 1250\n\n[adc]\nbits = 12\n'
    (tmp_path / "b.toml").write_text(board)
    status, out, err = cli(capsys, "config", "show", "--config", "b.toml", "--set", "L=47u",
                           "--set", "fsw=200k", "--set", "synchronous=true")
    assert status == 0 and err == ""
    assert out.startswith("# effective configuration: b.toml with --set L=47u --set fsw=200k")
    doc = tomllib.loads(out)
    conv = doc["converter"]
    assert (conv["L"], conv["fsw"], conv["R"], conv["vin"]) == ("47uH", "200kHz", "24ohm", "5V")
    assert conv["synchronous"] is True
    assert doc["pwm"] == {"frequency": "100kHz", "resolution": 1250} and doc["adc"]["bits"] == 12
    # Round trip: the shown configuration is itself a valid board file, and unknown tables
    # are ignored by the commands.
    (tmp_path / "shown.toml").write_text(out)
    status, out, _ = cli(capsys, "config", "show", "--config", "shown.toml", "--json")
    assert status == 0 and json.loads(out)["converter"]["L"] == "47uH"
    status, out, _ = cli(capsys, "steady", "--config", "b.toml", "--duty", "0.5", "--json")
    assert status == 0 and json.loads(out)["parameters"]["R"] == 24.0
    status, _, _ = cli(capsys, "config", "show", "--out", "eff.toml", "-q")
    assert status == 0
    assert tomllib.loads((tmp_path / "eff.toml").read_text())["converter"]["L"] == "100uH"


def test_json_quiet_and_no_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = cli(capsys, "sweep", "--duty", "0.3,0.6", "--no-files", "--json")
    assert status == 0 and err == ""
    summary = json.loads(out)
    assert summary["points"] == 2 and summary["files"] == {}
    assert summary["modes"] == {"CCM": 2, "DCM": 0}
    assert summary["best_efficiency"]["duty"] == 0.6
    status, out, err = cli(capsys, "sweep", "--duty", "0.3,0.6", "-q")
    assert status == 0 and out == "" and err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.csv", "sweep.png"]


def test_sweep_outputs_json_and_npz_with_limits_and_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, _ = cli(capsys, "sweep", "--duty", "0.4:0.6:0.1", "--sweep", "L=22u:220u:3",
                         "--log", "--limit", "efficiency>95%", "--out", "g.json",
                         "--no-files")
    assert status == 0
    assert "L [H]" in out and "pass" in out and "limits (efficiency>95%)" in out
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc["metadata"]["command"].startswith("boostsim sweep --duty 0.4:0.6:0.1")
    cols = doc["columns"]
    assert cols["L_H"] == pytest.approx([22e-6, 69.57e-6, 220e-6] * 3, rel=1e-3)  # log
    assert cols["duty"] == [0.4] * 3 + [0.5] * 3 + [0.6] * 3
    assert cols["pass"] == [e >= 0.95 for e in cols["efficiency"]]
    assert doc["summary"]["yield"]["pass"] == sum(cols["pass"])
    status, _, _ = cli(capsys, "sweep", "--vout", "10,12", "--out", "v.npz", "--no-files", "-q")
    assert status == 0
    with np.load(tmp_path / "v.npz") as npz:
        assert npz["vout_mean_V"] == pytest.approx([10, 12], rel=1e-8)
        assert json.loads(str(npz["metadata"]))["study"]["target"] == "vout"


def test_unreachable_targets_in_a_sweep_are_left_empty_with_a_warning(tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = cli(capsys, "sweep", "--vout", "3,12,100", "--no-files")
    assert status == 0
    assert "2 targets are out of reach" in out
    assert err.strip() == "boostsim: warning: 2 of 3 points did not converge (their " \
                          "figures are empty)"


def test_steady_outputs_and_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, _ = cli(capsys, "steady", "--duty", "0.6", "--set", "L=47u", "--out",
                         "op.json", "--plot", "op.png")
    assert status == 0
    assert "diode forward" in out and "% of Pin" in out and "mode" in out
    doc = json.loads((tmp_path / "op.json").read_text())
    assert doc["operating_point"]["duty"] == 0.6
    assert doc["metadata"]["parameters"]["L"] == 47e-6
    assert len(doc["waveform"]["il_A"]) == 401
    assert (tmp_path / "op.png").read_bytes().startswith(PNG)
    status, _, _ = cli(capsys, "steady", "--vout", "12", "--out", "op.csv", "-q")
    _, cols = read_csv(tmp_path / "op.csv")
    assert status == 0 and cols["vout_target_V"][0] == 12
    assert cols["vout_mean_V"][0] == pytest.approx(12, rel=1e-8)


def test_simulate_from_steady_state_to_npz_and_json(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, _ = cli(capsys, "simulate", "--duty", "0.6", "--start", "steady", "--t-end",
                         "2m", "--step", "1ms:vin=4.5,R=96", "--out", "w.npz", "--json")
    assert status == 0
    summary = json.loads(out)
    assert summary["steps"] == [{"t": 0.001, "vin": 4.5, "R": 96.0}]
    assert summary["metrics"]["vout_mean"] > 0 and summary["start"] == "steady"
    with np.load(tmp_path / "w.npz") as npz:
        assert set(npz.files) == {"t_s", "il_A", "vc_V", "vout_V", "metadata"}
        assert npz["vout_V"][0] == pytest.approx(12.0, abs=0.05)  # started in steady state
    status, _, _ = cli(capsys, "simulate", "--duty", "0.5", "--t-end", "1m", "--dt", "10u",
                       "--out", "w.json", "-q")
    assert status == 0
    doc = json.loads((tmp_path / "w.json").read_text())
    assert len(doc["columns"]["t_s"]) == 101 and "metrics" in doc["summary"]


def test_transient_sweep_from_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = cli(capsys, "sweep", "--duty", "0.5,0.6", "--transient", "--t-end",
                           "30m", "--no-files", "--json")
    assert status == 0 and err == ""
    summary = json.loads(out)
    assert summary["study"]["transient"] == {"t_end": 0.03, "last_periods": 20}
    assert summary["not_converged"] == 0
    assert summary["vout_mean"]["max"] == pytest.approx(12.0105, abs=1e-3)
