"""The host driver's safety guard, attacked the way a careless or hostile script would
(against the board emulator over a real pseudo-terminal):

* the output never goes on with the board's host watchdog off, whatever the host's cache
  says (a reset without banner zeroes the board's setting) and whatever route and encoding
  the script uses (``output``, ``send``, ``pipeline``, ``write_nowait``; ``1.0``, ``2``,
  ``"on"``, ``OUTP:STAT``);
* the watchdog cannot be disarmed (0, or a value the board rounds to 0 ms) while the output
  is on or unknown, by any route;
* a port held by a :class:`Board` cannot be opened by another (unprivileged) process.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest
from waiting import wait_until

from firmware_bridge.board import DEFAULT_WATCHDOG, Board, BoardError, BoardResetError
from firmware_bridge.emulator import Emulator

pytestmark = pytest.mark.slow  # the host driver against the emulator over a pseudo-terminal


@pytest.fixture
def emu():
    with Emulator(seed=5) as e:
        yield e


def _on_and_watched(emu: Emulator) -> tuple[bool, float]:
    snap = emu.snapshot()
    return snap["output"], snap["wdog_s"]


def test_output_after_a_reset_without_banner_is_watched(emu):
    with Board(emu.port, watchdog=0.7) as board:
        emu.reset("watchdog")                    # no banner: the board's watchdog is 0 again
        assert emu.snapshot()["wdog_s"] == 0.0
        try:
            board.set_duty(0.3)
            board.output(True)
        except BoardResetError:                  # noticed: the settings were re-applied
            board.set_duty(0.3)
            board.output(True)
        assert _on_and_watched(emu) == (True, 0.7)


def test_output_with_the_boards_watchdog_off_arms_the_default(emu):
    with Board(emu.port, watchdog=0) as board:   # "leave the board's setting": it is 0
        board.set_duty(0.3)
        board.output(True)
        assert _on_and_watched(emu) == (True, DEFAULT_WATCHDOG)
        board.output(False)
        emu.reset("watchdog")
        board.output(True)                       # re-armed, not trusted from the cache
        assert _on_and_watched(emu) == (True, DEFAULT_WATCHDOG)
        assert board.armed_watchdog == DEFAULT_WATCHDOG


ROUTES = {
    "send 1.0": lambda b: b.send("OUTP", 1.0),
    "send 2": lambda b: b.send("OUTP", 2),
    "send 1.5": lambda b: b.send("OUTP", 1.5),
    "send True": lambda b: b.send("OUTP", True),
    "send on": lambda b: b.send("outp:stat", "on"),
    "send :OUTPut": lambda b: b.send(":OUTPut", 1),
    "pipeline": lambda b: b.pipeline(("SOUR:PWM:DUTY?",), ("OUTP", 1.0), ("OUTP?",)),
    "write_nowait": lambda b: b.write_nowait("OUTP", 1.0),
    "send_marked": lambda b: b.send_marked("OUTP", 1.0),
}


@pytest.mark.parametrize("route", list(ROUTES))
def test_every_route_arms_the_watchdog_before_the_output_goes_on(emu, route):
    with Board(emu.port) as board:               # the host believes 3 s are armed
        board.set_duty(0.3)
        emu.reset("watchdog")                    # ... but the board's setting is 0 now
        board.send("SOUR:PWM:DUTY", 0.3)
        ROUTES[route](board)
        assert wait_until(lambda: emu.snapshot()["output"], 2.0)
        assert emu.snapshot()["wdog_s"] == DEFAULT_WATCHDOG


DISARM = {
    "set_watchdog 0": lambda b: b.set_watchdog(0),
    "send 0": lambda b: b.send("SYST:WDOG:TIM", 0),
    "send '0.0'": lambda b: b.send("syst:wdog:timeout", "0.0"),
    "send 0.0004 (0 ms)": lambda b: b.send("SYST:WDOG:TIM", 0.0004),
    "pipeline": lambda b: b.pipeline(("SYST:WDOG:TIM", 0), ("SYST:WDOG:TIM?",)),
    "write_nowait": lambda b: b.write_nowait("SYST:WDOG:TIM", 0),
}


@pytest.mark.parametrize("route", list(DISARM))
def test_the_watchdog_cannot_be_disarmed_with_the_output_on_or_unknown(emu, route):
    with Board(emu.port) as board:
        board.set_duty(0.3)
        board.output(True)
        with pytest.raises(BoardError, match="stays armed"):
            DISARM[route](board)
        board.output_state = None                # unknown (after a link error): refused too
        with pytest.raises(BoardError, match="stays armed"):
            DISARM[route](board)
        assert _on_and_watched(emu) == (True, DEFAULT_WATCHDOG)
        board.output(False)
        board.send("SYST:WDOG:TIM", 0)           # off: allowed
        assert emu.snapshot()["wdog_s"] == 0.0


def _open_as_nobody(path: str) -> int:
    """errno of an O_RDWR open of ``path`` by an unprivileged process (0: it opened). As root,
    a forked child drops to uid/gid 65534 (TIOCEXCL does not stop CAP_SYS_ADMIN)."""
    flags = os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK
    if os.geteuid() != 0:
        try:
            os.close(os.open(path, flags))
        except OSError as exc:
            return exc.errno
        return 0
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        code = 0
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.close(os.open(path, flags))
        except OSError as exc:
            code = exc.errno
        except BaseException:
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_port_held_by_a_board_cannot_be_opened_by_another_process(emu):
    path = os.path.realpath(emu.port)
    if os.geteuid() == 0:  # let the unprivileged child reach the pty at all
        os.chmod(path, os.stat(path).st_mode | stat.S_IRUSR | stat.S_IWUSR | stat.S_IROTH
                 | stat.S_IWOTH)
    assert _open_as_nobody(path) == 0            # nobody holds it: anyone may open it
    with Board(emu.port) as board:
        assert _open_as_nobody(path) == errno.EBUSY
        assert board.exclusive
        board.reconnect()                        # our own reopen claims it again
        assert _open_as_nobody(path) == errno.EBUSY
    assert _open_as_nobody(path) == 0            # released on close (the emulator keeps
    with Board(emu.port) as board:               # the pty open, so the flag would stay)
        assert board.exclusive
