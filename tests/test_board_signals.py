"""A ``with Board(...)`` script that dies, hangs up or freezes never leaves the output on.

Real subprocesses drive the emulator over its pseudo-terminal and are killed by SIGHUP (a
closed terminal), SIGKILL (no clean-up possible: the board's watchdog, armed by default) and
SIGSTOP (a frozen process: no background thread keeps feeding the watchdog).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from waiting import wait_until

from firmware_bridge.board import DEFAULT_WATCHDOG
from firmware_bridge.emulator import Emulator

pytestmark = pytest.mark.slow  # host processes signalled and killed

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = """
import sys
from firmware_bridge.board import Board
kwargs = {} if sys.argv[2] == "default" else {"watchdog": float(sys.argv[2])}
with Board(sys.argv[1], **kwargs) as board:
    board.set_duty(0.3)
    board.output(True)
    print("on", board.watchdog, flush=True)
    while True:
        board.hold(0.2)  # working: the board hears from the host every 0.1 s
"""


def _start(emu: Emulator, watchdog: str) -> tuple[subprocess.Popen, float]:
    child = subprocess.Popen([sys.executable, "-c", _SCRIPT, emu.port, watchdog],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = child.stdout.readline()
    assert line.startswith("on "), line
    assert emu.plant_state()["enabled"]
    return child, float(line.split()[1])


def _off_within(emu: Emulator, seconds: float) -> float:
    """Seconds until the emulated gate is off (fails past ``seconds``)."""
    t0 = time.monotonic()
    assert wait_until(lambda: not emu.plant_state()["enabled"], seconds, step=0.02), (
        f"output still on after {seconds} s")
    return time.monotonic() - t0


@pytest.fixture
def emu():
    with Emulator(seed=21, noise_lsb=0.0) as board:
        yield board


def test_sighup_turns_the_output_off_like_sigterm(emu):
    child, _ = _start(emu, "default")
    child.send_signal(signal.SIGHUP)
    assert child.wait(5) == 128 + signal.SIGHUP
    assert _off_within(emu, 1.0) < 1.0
    assert emu.snapshot()["trip"] is None  # a clean exit, not the watchdog


def test_sigkill_the_default_watchdog_turns_it_off(emu):
    # watchdog=0 ("leave the board's setting", which is off): Board still arms the default.
    child, armed = _start(emu, "0")
    assert armed == DEFAULT_WATCHDOG
    child.kill()
    child.wait(5)
    assert _off_within(emu, DEFAULT_WATCHDOG + 1.0) > DEFAULT_WATCHDOG - 0.5
    assert emu.snapshot()["trip"] == "WDOG"


def test_sigstop_a_frozen_script_does_not_keep_feeding_it(emu):
    child, armed = _start(emu, "0.5")
    assert armed == 0.5
    try:
        child.send_signal(signal.SIGSTOP)
        assert _off_within(emu, 2.0) > 0.3
        assert emu.snapshot()["trip"] == "WDOG"
    finally:
        child.kill()
        child.wait(5)
