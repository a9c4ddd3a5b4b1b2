"""Results that must not mislead (issue 11): output paths checked before the work, "wrote ..."
only once the files are in place, the interrupted run's list of files not written, limits
quoted with the digits that tell them apart, and warnings that survive a failure."""

from __future__ import annotations

import pytest
from cli_helpers import cli, one_line_error

import boostsim.outputs

BAD_PORT = "/dev/does-not-exist-boostsim"


@pytest.mark.parametrize("action", [
    ["step", "--duty", "0.4:0.5", "--out", "adir.csv"],
    ["step", "--duty", "0.4:0.5", "--plot", "adir.png"],
    ["calibrate", "--ref", "12", "--out", "adir.toml"],
    ["live", "--vref", "12", "--kp", "0.01", "--ki", "5", "--out", "adir.csv"],
    ["identify", "--out", "fitted.toml", "--plot", "adir.png"],
])
def test_bench_outputs_are_checked_before_the_port_is_opened(action, capsys, tmp_path,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("adir.csv", "adir.png", "adir.toml"):
        (tmp_path / name).mkdir()
    status, out, err = cli(capsys, "bench", *action, "--port", BAD_PORT)
    assert status == 1
    line = one_line_error(err)
    assert "it is a directory" in line and "does-not-exist" not in line, line
    assert ".partial-" not in line and "wrote" not in out


def test_wrote_is_said_only_once_the_files_are_in_place(capsys, tmp_path, monkeypatch):
    """A target that cannot be replaced at the end: no "wrote ...", and the error names the
    target, not the hidden temporary file beside it."""
    monkeypatch.chdir(tmp_path)
    real = boostsim.outputs.os.replace

    def replace(src, dst):
        if str(dst).endswith("x.csv"):
            raise IsADirectoryError(21, "Is a directory", str(src))
        return real(src, dst)

    monkeypatch.setattr(boostsim.outputs.os, "replace", replace)
    status, out, err = cli(capsys, "steady", "--duty", "0.5", "--out", "x.csv")
    assert status == 1
    line = one_line_error(err)
    assert "x.csv" in line and ".partial-" not in line, line
    assert "wrote" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_interrupted_run_names_every_file_it_would_have_written(capsys, tmp_path,
                                                                  monkeypatch):
    import boostsim.sweep

    monkeypatch.chdir(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(boostsim.sweep, "run_sweep", interrupted)
    status, _, err = cli(capsys, "sweep", "--duty", "0.5")
    assert status == 130
    assert err.strip() == "boostsim: interrupted; not written: sweep.csv, sweep.png"


def test_an_interrupted_bench_step_names_its_default_plot(capsys, tmp_path, monkeypatch):
    import firmware_bridge.bench

    monkeypatch.chdir(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(firmware_bridge.bench, "run_step", interrupted)
    status, _, err = cli(capsys, "bench", "step", "--port", "emu:", "--duty", "0.4:0.5",
                         "--out", "dd.csv")
    assert status == 130
    assert err.strip().splitlines()[-1] == ("boostsim: interrupted; not written: dd.csv, "
                                            "bench_step.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- a value and the limit it exceeds read differently --------------------------------------

def test_a_duty_just_above_max_duty_is_quoted_with_its_digits(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, _, err = cli(capsys, "bench", "sweep", "--port", BAD_PORT, "--duty", "0.6000001",
                         "--max-duty", "0.6", "--no-files")
    assert status == 2
    assert "reaches duty 0.6000001, above --max-duty 0.6 " in err, err
    status, _, err = cli(capsys, "bench", "identify", "--port", BAD_PORT, "--out", "f.toml",
                         "--duty", "0.5", "--amplitude", "0.0400001", "--max-duty", "0.54")
    assert status == 2
    assert "reaches duty 0.5400001, above --max-duty 0.54 " in err, err
    status, _, err = cli(capsys, "tune", "--vref", "12", "--crossover", "2k", "--rate",
                         "100000.01")
    assert status == 2
    assert "--rate 100000.01 Hz is above the switching frequency 100000 Hz" in err, err


def test_a_duty_just_above_the_boards_limit_is_quoted_with_its_digits(capsys, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, _, err = cli(capsys, "bench", "step", "--port", "emu:", "--duty", "0.4:0.7500001",
                         "--no-files")
    assert status == 1
    assert "duty 0.7500001 is above the board's limit 0.75" in one_line_error(err)


def test_bench_library_limits_are_quoted_with_their_digits():
    from types import SimpleNamespace

    from firmware_bridge.bench.calibrate import solve_calibration
    from firmware_bridge.bench.identify import _check_duties

    board = SimpleNamespace(duty_limit=0.75, max_duty=None)
    with pytest.raises(ValueError, match=r"reaches duty 0\.7500001, above the board's limit "
                                         r"0\.75$"):
        _check_duties(board, 0.71, 0.0400001)
    with pytest.raises(ValueError, match=r"gain 1\.2500001 outside 0\.8\.\.1\.25:"):
        solve_calibration([10.0], [12.500001])
    with pytest.raises(ValueError, match=r"gain 1\.1 \(\+10\.0001 %, more than 10 %\)"):
        solve_calibration([10.0], [11.000010])


# -- a warning survives the failure it explains ---------------------------------------------

IMPLAUSIBLE = "boostsim: warning: L = 100 H is far outside the usual"


def test_a_plausibility_warning_is_shown_when_the_command_then_fails(capsys):
    status, _, err = cli(capsys, "steady", "--set", "L=100", "--vout", "500")
    assert status == 1
    lines = err.strip().splitlines()
    assert lines[0].startswith(IMPLAUSIBLE), err
    assert lines[-1].startswith("boostsim: error: vout = 500 V is not reachable"), err
    status, _, err = cli(capsys, "steady", "--set", "L=100", "--duty", "0.5")
    assert status == 0 and err.startswith(IMPLAUSIBLE), err


def test_a_warning_is_shown_when_the_run_is_interrupted(capsys, tmp_path, monkeypatch):
    import warnings

    import boostsim.sweep

    monkeypatch.chdir(tmp_path)

    def interrupted(*args, **kwargs):
        warnings.warn("a solver did not converge", RuntimeWarning, stacklevel=1)
        raise KeyboardInterrupt

    monkeypatch.setattr(boostsim.sweep, "run_sweep", interrupted)
    status, _, err = cli(capsys, "sweep", "--duty", "0.5", "--no-files")
    assert status == 130
    assert err.splitlines() == ["boostsim: warning: a solver did not converge",
                                "boostsim: interrupted"]
