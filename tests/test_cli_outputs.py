"""The command never leaves a partial file that looks complete, nor a new CSV beside an old
plot (a mismatched pair would show a figure of other data): a real ``boostsim sweep``
interrupted while writing its files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import cli

from boostsim.outputs import read_csv

pytestmark = pytest.mark.slow  # CLI processes interrupted while writing

ROOT = Path(__file__).resolve().parents[1]
MC = ["sweep", "--vout", "12", "--mc", "100000", "--tol", "L=20%", "--out", "x.csv",
      "--plot", "x.png"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "boostsim", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def _wait_for_staged_csv(cwd: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        staged = list(cwd.glob(".x.csv.partial-*"))
        if staged and staged[0].stat().st_size > 0:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.002)
    raise AssertionError("the sweep never started writing")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupting_the_write_keeps_the_earlier_results(tmp_path, sig):
    (tmp_path / "x.csv").write_text("# boostsim good\nduty\n0.5\n")
    (tmp_path / "x.png").write_bytes(b"old png")
    proc = _start(MC, tmp_path)
    try:
        _wait_for_staged_csv(tmp_path, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert (tmp_path / "x.csv").read_text() == "# boostsim good\nduty\n0.5\n"
    assert (tmp_path / "x.png").read_bytes() == b"old png"
    names = sorted(p.name for p in tmp_path.iterdir())
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert err.strip().splitlines()[-1].startswith("boostsim: interrupted; not written: "
                                                       "x.csv")
        assert names == ["x.csv", "x.png"]
    else:
        assert all(n in ("x.csv", "x.png") or ".partial-" in n for n in names), names


def test_a_complete_run_replaces_both_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.csv").write_text("old")
    (tmp_path / "x.png").write_bytes(b"old png")
    status, _, _ = cli(capsys, "sweep", "--vout", "12", "--mc", "200", "--tol", "L=20%",
                       "--out", "x.csv", "--plot", "x.png")
    assert status == 0
    _, cols = read_csv(tmp_path / "x.csv")
    assert cols["vout_mean_V"].size == 200
    assert (tmp_path / "x.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv", "x.png"]


def test_a_failing_command_writes_nothing(tmp_path, capsys, monkeypatch):
    import boostsim.plots

    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.csv").write_text("old")

    def disk_full(fig, path, dpi=120):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(boostsim.plots, "save", disk_full)
    # The CSV is written first, then the plot fails: neither may replace what was there.
    status, _, err = cli(capsys, "simulate", "--duty", "0.5", "--t-end", "1m", "--out", "x.csv",
                         "--plot", "x.png")
    assert status == 1 and "No space left on device" in err
    assert (tmp_path / "x.csv").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]
