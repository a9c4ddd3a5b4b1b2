"""The host driver (firmware_bridge.board.Board) against the board emulator over a real
pseudo-terminal: settings verified, refusals, the safe-state context manager, streaming with
gaps tracked across fetches, and the link faults: garbled and dropped bytes, corrupted
commands, a stalled board, resets (settings re-applied), the host watchdog, a port in use.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from boostsim import default_board, steady_state
from firmware_bridge.board import (
    Board,
    BoardError,
    BoardResetError,
    LinkError,
    TripError,
    find_ports,
)
from firmware_bridge.emulator import Emulator
from firmware_bridge.firmware import config

pytestmark = pytest.mark.slow  # the host driver against the emulator over a pseudo-terminal

BOARD = default_board()


@pytest.fixture
def emu():
    with Emulator(seed=1) as e:
        yield e



def test_connects_and_applies_the_host_limits(emu):
    with Board(emu.port, max_vout=14.0, watchdog=0.7) as board:
        assert str(board.identity).startswith("boostsim,PicoBoost,")
        assert board.identity.firmware == config.FW_VERSION
        assert board.output_state is False
        snap = emu.snapshot()
        assert snap["ovp_level"] == 14.0          # capped at max_vout (default 15)
        assert snap["wdog_s"] == 0.7
        assert board.watchdog == 0.7
    with Board(emu.port, max_vout=20.0) as board:  # never raises the board's own level
        assert emu.snapshot()["ovp_level"] == 14.0


def test_settings_are_verified_and_refusals_change_nothing(emu):
    with Board(emu.port, max_duty=0.7) as board:
        board.set_duty(0.5)
        assert emu.snapshot()["duty"] == 0.5 and board.duty == 0.5
        with pytest.raises(BoardError) as exc:
            board.set_duty(0.72)                  # host limit: never sent
        assert exc.value.code is None and "max_duty" in str(exc.value)
        board.max_duty = None
        with pytest.raises(BoardError) as exc:
            board.set_duty(0.8)                   # the board's DUTY:LIM 0.75
        assert exc.value.code == -222 and "above limit" in str(exc.value)
        for bad in (-0.1, math.nan, math.inf):
            with pytest.raises(BoardError):
                board.set_duty(bad)
        assert emu.snapshot()["duty"] == 0.5
        with pytest.raises(BoardError) as exc:
            board.measure_current()               # current sense not wired
        assert exc.value.code == -241
        assert board.query("SYST:ERR:COUN?") == 0  # the queue was drained


def test_output_is_off_after_an_exception_in_the_context(emu):
    with pytest.raises(RuntimeError), Board(emu.port) as board:
        board.set_duty(0.5)
        board.output(True)
        assert emu.plant_state()["enabled"]
        raise RuntimeError("experiment failed")
    assert not emu.plant_state()["enabled"]
    assert board.output_state is False and not board.is_open


def test_measurement_matches_the_converter(emu):
    with Board(emu.port) as board:
        board.set_duty(0.5)
        board.output(True)
        board.hold(0.15)
        v = np.mean([board.measure_vout() for _ in range(16)])
        assert v == pytest.approx(steady_state(BOARD, 0.5).vout_mean, abs=3e-3)
        gain, offset = board.calibration
        assert (gain, offset) == (1.0, 0.0)


def test_pipeline_reads_several_answers_in_one_round_trip(emu):
    with Board(emu.port) as board:
        duty, volts = board.pipeline(("SOUR:PWM:DUTY", 0.3), ("SOUR:PWM:DUTY?",),
                                     ("MEAS:VOLT?",))
        assert duty == 0.3 and 4 < volts < 6
        with pytest.raises(BoardError) as exc:
            board.pipeline(("MEAS:CURR?",), ("OUTP?",))
        assert exc.value.code == -241
        assert board.query("OUTP?") is False      # still in step


def test_streaming_tracks_gaps_across_fetches():
    # A 51 ms ring: the fetch right after the overflow must not overflow too when the host
    # process stalls for a few tens of ms (a 12.8 ms ring did once, under the parallel suite).
    with Emulator(seed=1, firmware={"RING_SIZE": 1024}) as emu, Board(emu.port) as board:
        with board.acquisition(20000) as rate:
            assert rate == 20000
            time.sleep(0.004)
            first = board.fetch()
            assert first.count > 0 and first.index[0] == 0 and not first.gaps
            assert np.allclose(np.diff(first.t), 50e-6)
            time.sleep(0.2)                       # 4000 samples > the 1024-sample ring
            second = board.fetch()
            assert second.overflow
            expected = int(first.index[-1]) + 1
            assert second.gaps and second.gaps[0][0] == expected
            assert second.gaps[0][1] == int(second.index[0]) - expected
            assert second.lost == second.gaps[0][1]
            time.sleep(0.002)
            third = board.fetch()
            assert not third.gaps and third.index[0] == second.index[-1] + 1
            # a set command marked on the sample clock
            acq, mark = board.send_marked("SOUR:PWM:DUTY", 0.2)
            assert mark == (acq.index[-1] + 1 if acq.count else third.index[-1] + 1)
            assert board.duty == 0.2
        assert board.fetch().running is False


def test_garbled_answers_raise_or_are_retried(emu):
    with Board(emu.port, timeout=0.5) as board:
        board.set_duty(0.5)
        emu.corrupt_next(4, "tx")                  # the answer's first bytes
        with pytest.raises(LinkError) as exc:
            board.query("SOUR:PWM:DUTY?")
        assert "garbled" in str(exc.value) or "no valid answer" in str(exc.value)
        assert board.output_state is None          # unknown, never assumed off
        assert board.resync() is False             # no reset: just noise
        assert board.duty == 0.5
    with Board(emu.port, timeout=0.5, retries=2) as board:
        emu.corrupt_next(4, "tx")
        assert board.duty == 0.5
        emu.drop_next(3, "tx")
        assert board.query("*OPC?") == 1          # lost answer: timeout, resync, retried
        assert board.stats["retries"] >= 1


def test_a_corrupted_command_is_noticed_and_repeated(emu):
    with Board(emu.port, timeout=0.5, retries=3) as board:
        for _ in range(5):
            emu.corrupt_next(2, "rx")              # e.g. 'SOUR' -> 'S\x0fUR': -101/-113
            board.set_duty(0.45)
            assert emu.snapshot()["duty"] == 0.45
        assert board.stats["retries"] >= 1


def test_a_stalled_board_gives_a_clear_timeout():
    with Emulator(seed=1) as emu, Board(emu.port, timeout=0.3) as board:
        emu.stall(0.8)
        time.sleep(0.01)
        start = time.monotonic()
        with pytest.raises(LinkError) as exc:
            board.measure_vout()
        assert time.monotonic() - start < 0.6
        assert "within 0.3 s" in str(exc.value) and "output state unknown" in str(exc.value)
        time.sleep(0.8)
        assert board.resync() is False             # the late answer is skipped
        assert board.query("*OPC?") == 1


def test_close_confirms_the_output_off_after_the_board_comes_back():
    # A stall past the hardware watchdog reboots the board; close() keeps trying meanwhile.
    with Emulator(seed=1, firmware={"HW_WDT_MS": 400}) as emu:
        board = Board(emu.port, timeout=0.2)
        board.set_duty(0.5)
        board.output(True)
        emu.stall(2.0)
        time.sleep(0.01)
        with pytest.raises(LinkError):
            board.measure_vout()
        board.close(timeout=3.0)
        assert board.output_state is False
        assert not emu.plant_state()["enabled"]


def test_a_reset_is_detected_and_the_settings_restored(emu):
    with Board(emu.port, max_vout=14.0, watchdog=0.7, retries=2) as board:
        board.calibrate_vout(1.01, 0.02)
        board.set_duty(0.5)
        board.output(True)
        emu.reset("soft")                          # banner, state lost
        with pytest.raises(BoardResetError):
            board.measure_vout()
            board.check(expect_on=True)
        snap = emu.snapshot()
        assert snap["ovp_level"] == 14.0 and snap["wdog_s"] == 0.7
        assert snap["cal"] == (1.01, 0.02) and not snap["output"]
        assert board.stats["resets"] == 1
        board.set_duty(0.5)
        board.output(True)
        emu.reset("watchdog")                      # no banner: seen by the output check
        with pytest.raises(BoardResetError):
            board.hold(0.3)
        assert emu.snapshot()["wdog_s"] == 0.7
        assert board.reconnect() is False          # reopening the port: same board


def test_trips_are_reported_and_the_watchdog_is_fed_while_holding(emu):
    with Board(emu.port, watchdog=0.2) as board:
        board.set_duty(0.4)
        board.output(True)
        board.hold(0.6)                            # 3x the watchdog: still on
        assert emu.snapshot()["trip"] is None
        time.sleep(0.35)                           # the host goes quiet
        with pytest.raises(TripError) as exc:
            board.check(expect_on=True)
        assert exc.value.cause == "WDOG" and "watchdog" in str(exc.value)
        board.clear_trip()
        board.output(True)
        board.hold(0.2)                            # settled at 7.9 V
        board.set_ovp(8.0)
        with pytest.raises(TripError) as exc:
            board.set_duty(0.5)                    # 9.6 V > 8 V: seen by the read-back
            board.hold(0.2)                        # or by the next poll
        assert exc.value.cause == "OVP"
        assert not emu.plant_state()["enabled"]


def test_a_port_in_use_is_refused_clearly(emu):
    with Board(emu.port):
        with pytest.raises(LinkError) as exc:
            Board(emu.port)
        assert "in use" in str(exc.value)


def test_discovery_and_bad_ports():
    assert isinstance(find_ports(), list)
    if not find_ports():
        with pytest.raises(LinkError) as exc:
            Board()
        assert "no board found" in str(exc.value) and "bench ports" in str(exc.value)
    with pytest.raises(LinkError) as exc:
        Board("/dev/does-not-exist-boostsim")
    # One clear line: the reason once, not pyserial's errno nested three times.
    assert str(exc.value) == ("cannot open /dev/does-not-exist-boostsim: No such file or "
                              "directory")
    with pytest.raises(LinkError) as exc:
        Board("/tmp")
    assert str(exc.value) == "cannot open /tmp: Is a directory"
    with pytest.raises(ValueError, match="watchdog"):
        Board("/dev/null", watchdog=-1)
    with pytest.raises(ValueError):
        Board("/dev/null", max_duty=1.5)


def test_host_limit_messages_tell_the_numbers_apart(emu):
    with Board(emu.port, max_duty=0.7, max_vout=14.0) as board:
        with pytest.raises(BoardError, match=r"duty 0\.7000001 above the host limit "
                                             r"max_duty=0\.7$"):
            board.set_duty(0.7000001)
        with pytest.raises(BoardError, match=r"OVP 14\.00001 V above the host limit "
                                             r"max_vout=14\.0 V$"):
            board.set_ovp(14.00001)
