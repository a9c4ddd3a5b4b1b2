"""A Ctrl-C while the command is still importing: one line, exit status 130, as at any other
moment (not a traceback from inside numpy's import, which reads as a crash); a program that
imports boostsim keeps its own Ctrl-C handling."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # CLI processes interrupted

ROOT = Path(__file__).resolve().parents[1]


def _interrupt_while_importing(argv: list[str]) -> subprocess.CompletedProcess:
    """Start ``argv``, send SIGINT once numpy is loaded (the package imports are under way,
    ``main`` has not run yet), and collect the result."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if "_multiarray_umath" in maps.read_text():
                    break
            except OSError:
                pass
            time.sleep(0.002)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
@pytest.mark.parametrize("how", ["module", "script"])
def test_ctrl_c_during_import_is_one_line(how):
    if how == "module":
        argv = [sys.executable, "-m", "boostsim", "steady", "--duty", "0.5"]
    else:
        script = shutil.which("boostsim")
        if script is None:
            pytest.skip("the boostsim console script is not installed")
        argv = [script, "steady", "--duty", "0.5"]
    done = _interrupt_while_importing(argv)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "boostsim: interrupted\n"


def test_a_program_importing_boostsim_keeps_its_own_ctrl_c():
    code = ("import boostsim, signal; "
            "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "True"
