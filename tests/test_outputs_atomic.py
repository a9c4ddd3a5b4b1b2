"""No partial file that looks complete, no good result clobbered: an interrupted or failed
writer must leave the earlier file as it was (a truncated CSV reads like a shorter, finished
one), and files written together (data and plot) go in together or not at all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from boostsim.datalog import SampleLog, read_log
from boostsim.outputs import (
    IncompleteFileWarning,
    StagedOutputs,
    atomic_file,
    read_csv,
    write_columns,
    write_csv,
)

pytestmark = pytest.mark.slow  # writer processes interrupted

ROOT = Path(__file__).resolve().parents[1]
GOOD = "# boostsim good\nduty,vout_mean_V\n0.5,10\n"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _writer(target: Path, extra: str = "") -> subprocess.Popen:
    """A process writing a CSV of 20 M rows to ``target`` (seconds of work)."""
    code = textwrap.dedent(f"""
        import numpy as np
        from boostsim.outputs import write_csv
        {extra}
        n = 20_000_000
        write_csv({str(target)!r}, {{"duty": np.linspace(0, 1, n), "vout_mean": np.ones(n)}},
                  {{"boostsim": "new", "rows": n}})
    """)
    return subprocess.Popen([sys.executable, "-c", code], env=_env(), stderr=subprocess.PIPE)


def _wait_for_staging(directory: Path, proc: subprocess.Popen) -> Path:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        staged = [p for p in directory.iterdir() if ".partial-" in p.name]
        if staged and staged[0].stat().st_size > 100_000:
            return staged[0]
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    raise AssertionError("the writer never started")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_writer_leaves_the_earlier_file(tmp_path, sig):
    target = tmp_path / "x.csv"
    target.write_text(GOOD)
    proc = _writer(target)
    try:
        staged = _wait_for_staging(tmp_path, proc)
        proc.send_signal(sig)
        proc.wait(30)
    finally:
        proc.kill()
    assert target.read_text() == GOOD
    assert staged.name.startswith(".x.csv.partial-")
    left = sorted(p.name for p in tmp_path.iterdir())
    if sig == signal.SIGINT:
        assert left == ["x.csv"]  # the temporary file was removed
    else:
        assert left == sorted(["x.csv", staged.name])  # hidden, named partial, not the target


def test_a_complete_write_replaces_the_file(tmp_path):
    target = tmp_path / "x.csv"
    target.write_text(GOOD)
    write_csv(target, {"duty": np.array([0.1, 0.2])}, {"boostsim": "new"})
    meta, cols = read_csv(target)
    assert meta["boostsim"] == "new" and cols["duty"].tolist() == [0.1, 0.2]
    assert [p.name for p in tmp_path.iterdir()] == ["x.csv"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("suffix", [".csv", ".json", ".npz"])
def test_every_format_is_atomic(tmp_path, suffix):
    target = tmp_path / f"x{suffix}"
    target.write_bytes(b"good")

    class Boom:
        """A column that fails while the file is being written."""

        def __array__(self, dtype=None, copy=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_columns(target, {"duty": np.array([0.5]), "bad": Boom()}, {})
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_staged_outputs_go_in_together_or_not_at_all(tmp_path):
    csv, png = tmp_path / "x.csv", tmp_path / "x.png"
    csv.write_text("old csv")
    png.write_text("old png")
    with pytest.raises(KeyboardInterrupt), StagedOutputs() as out:
        out.path(csv).write_text("new csv")
        out.path(png).write_text("half a png")
        raise KeyboardInterrupt  # e.g. Ctrl-C while plotting
    assert (csv.read_text(), png.read_text()) == ("old csv", "old png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv", "x.png"]
    with StagedOutputs() as out:
        out.path(csv).write_text("new csv")
        out.path(png).write_text("new png")
        assert csv.read_text() == "old csv"  # nothing in place before the end
    assert (csv.read_text(), png.read_text()) == ("new csv", "new png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv", "x.png"]


def test_a_failed_plot_leaves_the_earlier_png(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from boostsim.plots import save

    target = tmp_path / "x.png"
    target.write_bytes(b"old png")
    fig = plt.figure()

    def broken(f, **kwargs):
        f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    fig.savefig = broken
    with pytest.raises(KeyboardInterrupt):
        save(fig, target)
    assert target.read_bytes() == b"old png"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
    plt.close(fig)


def test_atomic_file_refuses_append():
    with pytest.raises(ValueError, match="whole files"), atomic_file("x", "a"):
        pass


# -- incremental logs ---------------------------------------------------------------------------

def test_a_cleanly_closed_log_is_complete(tmp_path):
    path = tmp_path / "log.csv"
    with SampleLog(path, ["t_s", "v_V"], {"boostsim": "x"}) as log:
        log.row(0.1, 1.0)
        log.row(0.2, 2.0)
        with pytest.warns(IncompleteFileWarning):
            assert read_log(path)[0]["status"] == "incomplete"  # while it runs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        meta, cols = read_csv(path)
    assert meta["status"] == "complete" and meta["closed"]["rows"] == 2
    assert cols["v_V"].tolist() == [1.0, 2.0]
    lines = path.read_text().splitlines()
    assert lines[-1].startswith("# closed: ")  # a comment line to any other CSV reader
    assert [line for line in lines if not line.startswith("#")] == ["t_s,v_V", "0.1,1", "0.2,2"]


def test_an_interrupted_log_stays_incomplete(tmp_path):
    path = tmp_path / "log.csv"
    with pytest.raises(KeyboardInterrupt), SampleLog(path, ["t_s"]) as log:
        log.row(0.1)
        raise KeyboardInterrupt
    with pytest.warns(IncompleteFileWarning, match="did not finish"):
        meta, cols = read_csv(path)
    assert meta["status"] == "incomplete" and meta["complete"] is False
    assert cols["t_s"].tolist() == [0.1]
    log = SampleLog(path, ["t_s"])
    with pytest.raises(RuntimeError):
        try:
            raise RuntimeError("the board went away")
        finally:
            log.close()  # the CLI's pattern: closed in a finally while the error propagates
    with pytest.warns(IncompleteFileWarning):
        read_log(path)


def test_a_killed_log_keeps_its_rows_and_says_incomplete(tmp_path):
    path = tmp_path / "killed.csv"
    code = textwrap.dedent(f"""
        from boostsim.datalog import SampleLog
        log = SampleLog({str(path)!r}, ["k"])
        k = 0
        while True:
            log.row(k)
            k += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env())
    try:
        deadline = time.monotonic() + 30
        while (not path.exists() or path.stat().st_size < 50_000) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with pytest.warns(IncompleteFileWarning):
        meta, cols = read_log(path)
    assert meta["status"] == "incomplete"
    assert cols["k"].size > 1000 and np.array_equal(cols["k"], np.arange(cols["k"].size))


def test_a_failed_commit_leaves_no_temporaries(tmp_path):
    (tmp_path / "x.png").mkdir()  # the plot's target turned out to be a directory
    with pytest.raises(OSError), StagedOutputs() as out:
        out.path(tmp_path / "x.csv").write_text("new csv")
        out.path(tmp_path / "x.png").write_text("new png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv", "x.png"]
    assert (tmp_path / "x.png").is_dir()
