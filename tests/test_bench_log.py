"""The incremental sample log (boostsim.datalog): header, one whole line per row, readable by
boostsim.outputs.read_csv at any moment, a torn last line tolerated by read_log, and a writer
killed with SIGKILL mid-run leaving every row it had written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from boostsim.datalog import SampleLog, read_log, utc_timestamp
from boostsim.outputs import read_csv

pytestmark = pytest.mark.slow  # subprocesses

ROOT = Path(__file__).resolve().parents[1]


def test_header_rows_and_reading_back(tmp_path):
    path = tmp_path / "log.csv"
    meta = {"boostsim": "0.1.0", "command": "boostsim bench live", "firmware":
            "boostsim,PicoBoost,1,0.1.0", "config": {"L": 1e-4, "R": float("inf")}}
    with SampleLog(path, ["t_s", "point", "vout_V", "mode"], meta) as log:
        log.row(0.001, 0, 12.000123456789, "CCM")
        # readable while open: every row is on disk already
        _m, cols = read_csv(path)
        assert cols["vout_V"].tolist() == [12.00012346]
        log.row(t_s=0.002, point=1, vout_V=float("nan"), mode="DCM")
        log.rows_from([np.array([0.003, 0.004]), np.array([2, 3]), np.array([11.9, 12.1]),
                       "CCM"])
        assert log.rows == 4
    assert log.closed
    meta2, cols = read_csv(path)
    assert meta2["boostsim"] == "0.1.0" and meta2["firmware"] == "boostsim,PicoBoost,1,0.1.0"
    assert meta2["config"] == {"L": 1e-4, "R": "inf"}
    assert meta2["started"].endswith("Z") and len(meta2["started"]) == len(utc_timestamp())
    assert cols["point"].tolist() == [0, 1, 2, 3]
    assert np.isnan(cols["vout_V"][1]) and cols["mode"].tolist() == ["CCM", "DCM", "CCM", "CCM"]
    with pytest.raises(ValueError):
        log.row(1, 2, 3, "x")


def test_bad_rows_are_refused(tmp_path):
    log = SampleLog(tmp_path / "x.csv", ["a", "b"])
    with pytest.raises(ValueError):
        log.row(1)
    with pytest.raises(ValueError):
        log.row(1, "a,b")
    with pytest.raises(KeyError):
        log.row(a=1, c=2)
    with pytest.raises(ValueError):
        SampleLog(tmp_path / "y.csv", ["a,b"])
    log.close()
    with pytest.raises(OSError):
        SampleLog(tmp_path / "missing" / "z.csv", ["a"])


def test_a_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "torn.csv"
    with SampleLog(path, ["t_s", "v_V"], {"boostsim": "0.1.0"}) as log:
        log.row(0.1, 1.0)
        log.row(0.2, 2.0)
    with open(path, "a", encoding="utf-8") as f:
        f.write("0.3,3")                           # cut mid-row (no line end)
    _, cols = read_log(path)
    assert cols["v_V"].tolist() == [1.0, 2.0]


def test_a_killed_writer_leaves_every_row(tmp_path):
    path = tmp_path / "killed.csv"
    code = textwrap.dedent(f"""
        import time
        from boostsim.datalog import SampleLog
        log = SampleLog({str(path)!r}, ["t_s", "k", "vout_V"], {{"boostsim": "x"}})
        k = 0
        while True:
            log.row(time.monotonic(), k, 12.0 + k * 1e-6)
            k += 1
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 20
        while (not path.exists() or path.stat().st_size < 200_000) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    _, cols = read_csv(path)                       # the strict reader: no torn line
    k = cols["k"]
    assert k.size > 1000 and np.array_equal(k, np.arange(k.size))
