"""``boostsim bench`` and ``boostsim emulate`` end to end: the command run as a process against
the emulated board over a real pseudo-terminal (the emulator started as its own process with
``boostsim emulate --link``, or in this test process so that faults can be injected while the
command runs), the files it writes (CSV with units and a metadata header, overlay PNGs), its
summaries, exit codes and one-line errors, and what happens to the board's output when the
host is interrupted, suspended (SIGSTOP: the board's watchdog) or killed (SIGKILL: the log
stays readable).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest
from board_clock import assert_watchdog_trips, record_pwm, record_received
from waiting import wait_until

from boostsim import default_board, steady_state
from boostsim.cli import main
from boostsim.datalog import read_log
from boostsim.outputs import IncompleteFileWarning, read_csv
from firmware_bridge.bench import effective_pwm
from firmware_bridge.board import Board
from firmware_bridge.emulator import Emulator
from firmware_bridge.firmware import config

pytestmark = pytest.mark.slow  # CLI against the emulator over a pseudo-terminal

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
BOARD = default_board()
LSB = config.ADC_VREF / config.ADC_FULL_SCALE * config.VOUT_DIVIDER


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["MPLBACKEND"] = "Agg"
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return env


def run(*args: str, cwd, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "boostsim", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def spawn(*args: str, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "boostsim", *args], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "warning" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("boostsim: error: ") and "Traceback" not in err, err
    return lines[0]


def rows(path: Path) -> int:
    try:
        return read_log(path)[1][next(iter(read_log(path)[1]))].size
    except (OSError, ValueError, StopIteration):
        return 0



@pytest.fixture
def emu():
    with Emulator(seed=7) as e:
        yield e


def is_png(path: Path) -> bool:
    return path.exists() and path.read_bytes()[:8] == PNG and path.stat().st_size > 20_000


# -- the emulator as its own process, and a sweep against it ---------------------------------

def test_emulate_and_sweep_as_processes(tmp_path):
    link = tmp_path / "board"
    emulator = subprocess.Popen([sys.executable, "-m", "boostsim", "emulate", "--link",
                                 str(link), "--seed", "1", "--duration", "60", "--quiet"],
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        device = emulator.stdout.readline().strip()
        assert device.startswith("/dev/") and link.resolve() == Path(device).resolve()
        proc = run("bench", "sweep", "--port", str(link), "--duty", "0.1:0.6:0.1",
                   "--settle", "0.05", "--fit", "r_L", "--log", "raw.csv", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""
        out = proc.stdout
        assert out.splitlines()[0].startswith("boostsim bench sweep: boostsim,PicoBoost,")
        assert "error (measured - simulated) rms" in out and "r_L" in out
        assert out.rstrip().endswith("wrote bench_sweep.csv, bench_sweep.png, raw.csv")
        meta, cols = read_csv(tmp_path / "bench_sweep.csv")
        assert meta["firmware"].startswith("boostsim,PicoBoost,") and meta["port"] == str(link)
        assert meta["parameters"]["R"] == 48 and meta["aborted"] is None
        header = (tmp_path / "bench_sweep.csv").read_text().splitlines()[len(meta)]
        assert header.startswith("duty,duty_effective,vout_meas_V,vout_meas_std_V")
        err = cols["vout_error_V"]
        assert np.all(np.abs(err) <= 4 * cols["vout_meas_sem_V"] + 0.3e-3), err
        assert meta["errors"]["rms_V"] < 0.2 * LSB
        assert abs(meta["fit"]["values"]["r_L"] - BOARD.r_L) < 4 * meta["fit"]["std"]["r_L"] \
            + 2e-3
        assert is_png(tmp_path / "bench_sweep.png")
        raw_meta, raw = read_log(tmp_path / "raw.csv")
        assert raw["vout_V"].size == 6 * 16 and raw_meta["firmware"] == meta["firmware"]
        assert set(raw["point"].astype(int)) == set(range(6))
    finally:
        emulator.send_signal(signal.SIGINT)
        emulator.wait(10)
    assert emulator.returncode == 0
    assert not link.exists()


# -- usage errors and the no-hardware paths (in this process) --------------------------------

def test_usage_errors_and_no_board(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv, text in (
            (["bench"], "choose an action: ports, sweep, step, live, calibrate or identify"),
            (["bench", "step", "--duty", "0.5"], "give a duty step FROM:TO"),
            (["bench", "step", "--duty", "0.5", "--load-step", "R=24", "--port", "/dev/x"],
             "external gear"),
            (["bench", "step", "--duty", "0.4:0.6", "--rate", "50k"], "at most 20 kHz"),
            (["bench", "sweep", "--fit", "r_X"], "cannot fit r_X"),
            (["bench", "sweep", "--duty", "0.2:0.4:0.1", "--fit", "r_L,r_on,v_f"],
             "needs more than 3 points"),
            (["bench", "live", "--vref", "12", "--kp", "0.01"], "--ki"),
            (["bench", "calibrate", "--ref", "6", "--ref", "12", "--duty", "0.3"],
             "one duty per reference"),
            (["bench", "calibrate", "--ref", "1", "--ref", "2", "--ref", "3"],
             "one or two points"),
            (["simulate", "--kp", "0.1", "--duty", "0.5"], "--kp needs --vref"),
            (["simulate", "--vref", "12", "--kp", "0.1"], "--kp K --ki K"),
            (["bench", "sweep", "--max-duty", "1.5"], "--max-duty")):
        status = main(argv)
        out, err = capsys.readouterr()
        assert status == 2, (argv, err)
        assert text in one_line_error(err), (argv, err)
    status = main(["bench", "ports", "--json"])
    out, err = capsys.readouterr()
    assert status == 0 and json.loads(out)["vid_pid"] == "2E8A:0005"
    if not json.loads(out)["boards"]:
        assert main(["bench", "ports"]) == 0
        assert "no board found" in capsys.readouterr().out
        status = main(["bench", "sweep", "--no-files"])
        err = one_line_error(capsys.readouterr().err)
        # The CLI's own options, not the Python API's Board('/dev/ttyACM0').
        assert status == 1 and "no board found" in err and "--port" in err, err
        assert "Board(" not in err
    # A port that cannot be opened: the reason once, not the errno three times.
    status = main(["bench", "sweep", "--no-files", "--port", "/dev/does-not-exist-boostsim"])
    err = one_line_error(capsys.readouterr().err)
    assert status == 1 and err.endswith(
        "cannot open /dev/does-not-exist-boostsim: No such file or directory"), err


def test_simulate_runs_the_host_loop(capsys, tmp_path):
    status = main(["simulate", "--vref", "10", "--kp", "0.01", "--ki", "5", "--rate", "500",
                   "--start", "steady", "--t-end", "60m", "--json"])
    out, err = capsys.readouterr()
    assert status == 0, err
    summary = json.loads(out)
    assert summary["closed_loop"]["every_periods"] == 200
    assert summary["metrics"]["vout_mean"] == pytest.approx(10.0, abs=0.05)


# -- step, live, calibrate against an emulator in this process ------------------------------

def test_step_duty_and_load(tmp_path):
    proc = run("bench", "step", "--port", "emu:", "--duty", "0.4:0.6", "--post", "12m",
               "--settle", "0.1", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    m, s = summary["measured"], summary["simulated"]
    assert m["final"] == pytest.approx(s["final"], abs=3 * LSB)
    assert m["overshoot"] == pytest.approx(s["overshoot"], abs=6)
    assert summary["lost_samples"] == 0 and summary["mark_uncertainty_s"] < 1e-4
    meta, cols = read_csv(tmp_path / "bench_step.csv")
    assert {"t_s", "vout_meas_V", "vout_sim_V"} <= set(cols) and meta["step"]["duty"] == 0.4
    assert is_png(tmp_path / "bench_step.png")
    proc = run("bench", "step", "--port", "emu:", "--duty", "0.5", "--load-step", "R=24",
               "--post", "8m", "--settle", "0.1", "--out", "load.csv", "--plot", "load.png",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "load R=24 at duty 0.5" in proc.stdout
    _, cols = read_csv(tmp_path / "load.csv")
    after = cols["t_s"] > 6e-3
    assert np.mean(cols["vout_meas_V"][after]) == pytest.approx(
        np.mean(cols["vout_sim_V"][after]), abs=3 * LSB)
    assert is_png(tmp_path / "load.png")


def test_live_loop_with_comparison(emu, tmp_path):
    proc = run("bench", "live", "--port", emu.port, "--vref", "10", "--kp", "0.01", "--ki", "5",
               "--rate", "200", "--duration", "0.8", "--vref-step", "0.5:9", "--compare",
               "--compare-time", "0.2", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    # Host timing depends on the host's load (its figures are benchmarks/): checked is what
    # holds under any load: never faster than set, enough ticks to settle after the step.
    assert summary["stopped"] == "duration" and summary["ticks"] > 40
    assert summary["rate_achieved_Hz"] < 205 and summary["jitter_std_s"] >= 0
    assert summary["final"]["vout_mean_V"] == pytest.approx(9.0, abs=0.05)
    assert summary["compare"]["simulated_s"] == pytest.approx(0.2, abs=0.01)
    meta, cols = read_log(tmp_path / "bench_live.csv")
    assert cols["vout_V"].size == summary["ticks"]
    assert meta["loop"]["kp"] == 0.01 and meta["firmware"].startswith("boostsim,")
    assert is_png(tmp_path / "bench_live.png")
    assert not emu.plant_state()["enabled"]


def test_calibrate_writes_the_board_and_prints_toml(tmp_path):
    with Emulator(seed=8, adc_gain_error=0.02) as emu:
        refs = [steady_state(BOARD, effective_pwm(d, 1e5)[1][0]).vout_mean for d in (0.3, 0.6)]
        proc = run("bench", "calibrate", "--port", emu.port, "--duty", "0.3", "--duty", "0.6",
                   "--ref", f"{refs[0]:.5f}", "--ref", f"{refs[1]:.5f}", "--settle", "0.15",
                   "--out", "cal.toml", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        gain, offset = emu.snapshot()["cal"]
        assert not emu.plant_state()["enabled"]
    assert gain == pytest.approx(1 / 1.02, abs=2e-3) and abs(offset) < 0.02
    assert "[board.calibration]" in proc.stdout and "written to the board" in proc.stdout
    table = tomllib.loads((tmp_path / "cal.toml").read_text())["board"]["calibration"]
    assert table["vout_gain"] == pytest.approx(gain, rel=1e-5)
    check = float(proc.stdout.split("now reads ")[1].split(" V")[0])
    assert check == pytest.approx(refs[1], abs=2 * LSB)
    # the snippet in a board file is applied when a bench command connects
    board_file = tmp_path / "board.toml"
    board_file.write_text((ROOT / "boostsim" / "data" / "default_board.toml").read_text() +
                          "\n" + (tmp_path / "cal.toml").read_text())
    with Emulator(seed=9) as emu:
        proc = run("bench", "sweep", "--port", emu.port, "--config", str(board_file),
                   "--duty", "0.3", "--samples", "2", "--settle", "0.02", "--no-files",
                   cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert emu.snapshot()["cal"] == pytest.approx((table["vout_gain"],
                                                       table["vout_offset"]))


# -- the host interrupted, suspended or killed ---------------------------------------------

def _live(emu, tmp_path, *extra: str) -> subprocess.Popen:
    return spawn("bench", "live", "--port", emu.port, "--vref", "10", "--kp", "0.01", "--ki",
                 "5", "--rate", "200", "--duration", "60", "--out", "live.csv", "--no-files",
                 *extra, cwd=tmp_path)


def test_ctrl_c_stops_the_live_loop_safely(emu, tmp_path):
    proc = _live(emu, tmp_path)
    try:
        assert wait_until(lambda: rows(tmp_path / "live.csv") > 40, 30), proc.stderr
        assert emu.plant_state()["enabled"]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped by Ctrl-C; output off" in out
    assert not emu.plant_state()["enabled"]
    with pytest.warns(IncompleteFileWarning):  # 60 s asked for: the log says it is short
        meta, cols = read_csv(tmp_path / "live.csv")
    assert meta["status"] == "incomplete" and cols["vout_V"].size > 40


def test_a_suspended_host_is_caught_by_the_board_watchdog(emu, tmp_path):
    pwm, received = record_pwm(emu), record_received(emu)
    # A watchdog well above a loaded host's stalls: a live loop starved of the CPU for 0.3 s
    # let a 0.3 s watchdog trip before the kill (its report then came with the next bytes),
    # and with the suite on both cores (pytest -n auto) once for 0.8 s.
    # The setpoint ramps, as the README's live examples do (a 100 Hz loop with these gains
    # sometimes ran into the OVP, and ended before the test could stop it).
    proc = _live(emu, tmp_path, "--watchdog", "2", "--slew", "100")
    try:
        assert wait_until(lambda: rows(tmp_path / "live.csv") > 40, 30), proc.stderr
        assert emu.plant_state()["enabled"]
        proc.send_signal(signal.SIGSTOP)
        assert wait_until(lambda: not emu.plant_state()["enabled"], 10.0)
        assert emu.snapshot()["trip"] == "WDOG", (emu.snapshot(), proc.poll())
        assert_watchdog_trips(emu, pwm, received, 2.0)
        proc.send_signal(signal.SIGCONT)
        _out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 1
    line = one_line_error(err)
    assert "WDOG" in line and "stalled or suspended" in line and "data kept" in line


def test_a_killed_host_leaves_a_readable_log_and_the_watchdog_acts(emu, tmp_path):
    pwm, received = record_pwm(emu), record_received(emu)
    # A watchdog well above a loaded host's stalls: a live loop starved of the CPU for 0.3 s
    # let a 0.3 s watchdog trip before the kill (its report then came with the next bytes),
    # and with the suite on both cores (pytest -n auto) once for 0.8 s.
    # The setpoint ramps, as the README's live examples do (a 100 Hz loop with these gains
    # sometimes ran into the OVP, and ended before the test could stop it).
    proc = _live(emu, tmp_path, "--watchdog", "2", "--slew", "100")
    try:
        assert wait_until(lambda: rows(tmp_path / "live.csv") > 40, 30), proc.stderr
        assert emu.plant_state()["enabled"], "the watchdog tripped before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    assert wait_until(lambda: not emu.plant_state()["enabled"], 10.0)
    assert_watchdog_trips(emu, pwm, received, 2.0)
    meta, cols = read_csv(tmp_path / "live.csv")
    assert meta["firmware"].startswith("boostsim,PicoBoost") and "started" in meta
    assert cols["t_s"].size > 40 and np.all(np.diff(cols["t_s"]) > 0)


# -- faults during a sweep ---------------------------------------------------------------

def _sweep(emu, tmp_path, *extra: str) -> subprocess.Popen:
    return spawn("bench", "sweep", "--port", emu.port, "--duty", "0.1:0.6:0.05", "--settle",
                 "0.05", "--samples", "8", "--log", "raw.csv", "--out", "sweep.csv",
                 "--plot", "sweep.png", *extra, cwd=tmp_path)


def _at_point(tmp_path: Path, point: int, action) -> threading.Thread:
    def watch() -> None:
        def reached() -> bool:
            try:
                return read_log(tmp_path / "raw.csv")[1]["point"].max() >= point
            except (OSError, ValueError, KeyError):
                return False
        if wait_until(reached, 30):
            action()
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_stalled_board_ends_the_sweep_with_a_clear_error(emu, tmp_path):
    thread = _at_point(tmp_path, 2, lambda: emu.stall(3.0))
    proc = _sweep(emu, tmp_path, "--timeout", "0.4", "--retries", "0")
    _out, err = proc.communicate(timeout=60)
    thread.join(5)
    assert proc.returncode == 1
    line = one_line_error(err)
    assert "sweep stopped after" in line and "within 0.4 s" in line
    meta, cols = read_csv(tmp_path / "sweep.csv")
    assert 2 <= cols["duty"].size < 11 and "within 0.4 s" in meta["aborted"]
    assert is_png(tmp_path / "sweep.png")
    # the board rebooted (hardware watchdog) or the host turned it off once it answered
    assert wait_until(lambda: not emu.plant_state()["enabled"], 3.0)


def test_an_ovp_trip_ends_the_sweep_with_the_data_kept(emu, tmp_path):
    thread = _at_point(tmp_path, 3, emu.disconnect_load)
    proc = _sweep(emu, tmp_path)
    _out, err = proc.communicate(timeout=60)
    thread.join(5)
    assert proc.returncode == 1
    assert "tripped: OVP" in one_line_error(err)
    _, cols = read_csv(tmp_path / "sweep.csv")
    assert 3 <= cols["duty"].size <= 4
    assert not emu.plant_state()["enabled"] and emu.snapshot()["trip"] == "OVP"
    # a later run refuses to start on the latched trip, unless told to clear it
    emu.set_load(R=48)
    proc = run("bench", "sweep", "--port", emu.port, "--duty", "0.3", "--no-files",
               cwd=tmp_path)
    assert proc.returncode == 1 and "latched OVP trip" in one_line_error(proc.stderr)
    proc = run("bench", "sweep", "--port", emu.port, "--duty", "0.3", "--no-files",
               "--clear-trip", "--samples", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cleared a latched OVP trip" in proc.stdout


def test_a_reset_mid_sweep_is_resumed(emu, tmp_path):
    thread = _at_point(tmp_path, 2, lambda: emu.reset("soft", wait=False))
    proc = _sweep(emu, tmp_path, "--resume", "--json")
    out, err = proc.communicate(timeout=60)
    thread.join(5)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["resets"] == 1 and summary["points"] == 11
    assert summary["error_max_V"] < LSB  # the resumed point: within one ADC code


def test_a_port_in_use_is_a_clear_error(emu, tmp_path):
    with Board(emu.port):
        proc = run("bench", "sweep", "--port", emu.port, "--no-files", cwd=tmp_path)
    assert proc.returncode == 1
    assert "in use by another program" in one_line_error(proc.stderr)


def test_calibrate_refuses_an_implausible_correction_unless_forced(tmp_path):
    """The slip to guard against: a mistyped meter reading (7 V at duty 0.6, ~12 V) is
    refused, as is a 12 % correction; --force applies the latter (the board accepts it), never
    the former."""
    with Emulator(seed=8) as emu:
        proc = run("bench", "calibrate", "--port", emu.port, "--duty", "0.6", "--ref", "7",
                   "--settle", "0.1", "--force", cwd=tmp_path)
        assert proc.returncode == 1 and "outside 0.8..1.25" in proc.stderr, proc.stderr
        assert emu.snapshot()["cal"] == (1.0, 0.0)
        ref = steady_state(BOARD, effective_pwm(0.6, 1e5)[1][0]).vout_mean * 0.88
        proc = run("bench", "calibrate", "--port", emu.port, "--duty", "0.6", "--ref",
                   f"{ref:.4f}", "--settle", "0.1", cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert "implausible" in proc.stderr and "--force" in proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert emu.snapshot()["cal"] == (1.0, 0.0) and not emu.plant_state()["enabled"]
        proc = run("bench", "calibrate", "--port", emu.port, "--duty", "0.6", "--ref",
                   f"{ref:.4f}", "--settle", "0.1", "--force", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert emu.snapshot()["cal"][0] == pytest.approx(0.88, abs=0.01)


def test_a_slow_live_loop_keeps_its_own_watchdog_fed(emu, tmp_path):
    """--rate 1 with --watchdog 0.4: a tick every second, far longer than the watchdog; the
    loop waits talking to the board instead of tripping and blaming the host."""
    proc = run("bench", "live", "--port", emu.port, "--vref", "8", "--kp", "0.01", "--ki",
               "0.02", "--rate", "1", "--watchdog", "0.4", "--duration", "2.5", "--json",
               "--no-files", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["stopped"] == "duration" and summary["ticks"] == 3, summary
    assert emu.snapshot()["trip"] is None and not emu.plant_state()["enabled"]


def test_sweep_outputs_are_checked_before_the_board_is_touched(tmp_path):
    """A bad --out/--plot/--log is refused before the port is even opened (the port given
    here does not exist: the error must be about the file, not the port)."""
    (tmp_path / "adir.csv").mkdir()
    (tmp_path / "old.partial.csv").write_text("points of an interrupted sweep\n")
    bad_port = "/dev/does-not-exist-boostsim"
    for args, text in ((["--out", "adir.csv"], "it is a directory"),
                       (["--plot", "/proc/boostsim.png"], "cannot write '/proc/boostsim.png'"),
                       (["--out", "x.csv", "--log", "x.csv"], "name the same file"),
                       (["--out", "old.csv"], "'old.partial.csv' exists")):
        proc = run("bench", "sweep", "--port", bad_port, "--duty", "0.3", *args, cwd=tmp_path)
        assert proc.returncode in (1, 2), proc.stderr
        line = one_line_error(proc.stderr)
        assert text in line and "does-not-exist" not in line, (args, line)
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "bench_sweep.png").exists()


def test_a_killed_sweep_keeps_every_point_and_the_previous_result(emu, tmp_path):
    (tmp_path / "sweep.csv").write_text("# an earlier, complete result\n")
    proc = _sweep(emu, tmp_path, "--settle", "0.3")
    partial = tmp_path / "sweep.partial.csv"
    try:
        assert wait_until(lambda: rows(partial) >= 2, 30), proc.stderr
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    meta, cols = read_log(partial)
    assert meta["status"] == "incomplete"      # SampleLog's mark until a clean close
    assert cols["duty"].size >= 2 and np.all(np.diff(cols["duty"]) > 0)
    assert np.all(np.isfinite(cols["vout_meas_V"])) and np.all(np.isfinite(cols["vout_sim_V"]))
    # The earlier result is untouched (no partial file ever replaces it).
    assert (tmp_path / "sweep.csv").read_text() == "# an earlier, complete result\n"
    # A sweep that ends replaces it with the complete result and removes its partial file
    # (--clear-trip: the killed host left the output on, so the board's watchdog tripped).
    partial.rename(tmp_path / "kept.partial.csv")
    proc = run("bench", "sweep", "--port", emu.port, "--duty", "0.2:0.3:0.1", "--settle",
               "0.05", "--samples", "4", "--out", "sweep.csv", "--no-files", "--clear-trip",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    meta, cols = read_csv(tmp_path / "sweep.csv")
    assert meta["status"] == "complete" and cols["duty"].size == 2
    assert not partial.exists() and not (tmp_path / "sweep.writing.csv").exists()


@pytest.mark.parametrize("action", [["sweep"], ["step", "--duty", "0.4:0.5"],
                                    ["live", "--vref", "12", "--kp", "0.01", "--ki", "5"],
                                    ["identify", "--out", "fitted.toml"]])
def test_every_experiment_refuses_a_board_of_several_lanes(action, tmp_path):
    # One bench board: per-lane parameter arrays are refused before any port is opened.
    (tmp_path / "lanes.toml").write_text("[converter]\nvin = 5\nL = [100e-6, 47e-6]\n"
                                         "C = 100e-6\nR = 48\nfsw = 100e3\n")
    proc = run("bench", *action, "--port", "/dev/nonexistent", "--config", "lanes.toml",
               cwd=tmp_path)
    assert proc.returncode == 1
    assert "the bench compares one converter: no per-lane parameters" in proc.stderr
    assert not (tmp_path / "fitted.toml").exists()
