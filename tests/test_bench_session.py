"""firmware_bridge.session: opening the bench board the way ``boostsim bench`` and notebook 04
do (against the emulated board over its pseudo-terminal)."""

from __future__ import annotations

import time

import pytest

from firmware_bridge.board import BoardError
from firmware_bridge.emulator import Emulator
from firmware_bridge.session import (
    BenchSession,
    calibration_from_config,
    connect,
    is_emulator_port,
)

pytestmark = pytest.mark.slow  # the session against the emulator over a pseudo-terminal


class Recorder:
    """A note/warn reporter that keeps its messages."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        self.lines.append(text)


def test_emulator_port_names():
    assert all(is_emulator_port(p) for p in ("emu:", "EMU", "emulator"))
    assert not any(is_emulator_port(p) for p in (None, "/dev/ttyACM0", "loop://", "emu:0"))


def test_calibration_from_the_board_file():
    assert calibration_from_config({}, "b.toml") is None
    assert calibration_from_config({"board": {"calibration": {}}}, "b.toml") is None
    assert calibration_from_config({"board": {"calibration": {"vout_gain": 1.02}}},
                                   "b.toml") == (1.02, 0.0)
    with pytest.raises(ValueError, match=r"b.toml: \[board.calibration\] vout_gain"):
        calibration_from_config({"board": {"calibration": {"vout_gain": "high"}}}, "b.toml")
    with pytest.raises(ValueError, match=r"b.toml: unknown key\(s\) vout_gian"):
        calibration_from_config({"board": {"calibration": {"vout_gian": 1.02}}}, "b.toml")


def test_emulator_port_without_an_emulator_is_refused_before_anything_opens():
    session = BenchSession("emu:")
    with pytest.raises(ValueError, match="no emulator was given"):
        session.__enter__()
    assert session.board is None and session.emulator is None


def test_session_starts_and_stops_its_emulator_and_applies_the_calibration():
    started: list[Emulator] = []

    def start() -> Emulator:
        started.append(Emulator(seed=1))
        return started[-1]

    notes = Recorder()
    with BenchSession("emu:", watchdog=1.0, calibration=(1.01, -0.02), start_emulator=start,
                      note=notes) as session:
        assert session.emulated and session.emulator is started[0]
        assert started[0].snapshot()["cal"] == pytest.approx((1.01, -0.02))
        session.board.output(True)
        session.board.set_duty(0.2)
    assert session.board is None and session.emulator is None
    assert not started[0].running
    assert notes.lines[0].startswith("started an emulated board on ")
    assert "calibration from the configuration: gain 1.01, offset -0.02 V" in notes.lines


def test_output_is_off_after_an_exception_in_the_block():
    with Emulator(seed=2) as emu:
        with pytest.raises(RuntimeError, match="experiment failed"):
            with connect(emu.port, max_duty=0.5, watchdog=1.0) as board:
                board.output(True)
                board.set_duty(0.3)
                assert emu.plant_state()["enabled"]
                raise RuntimeError("experiment failed")
        assert board.output_state is False
        assert not emu.plant_state()["enabled"]


def test_an_unconfirmed_output_off_names_the_watchdog_actually_armed():
    warned = Recorder()
    with Emulator(seed=6) as emu:
        # watchdog=0 ("leave the board's setting", which is off): the driver still arms its
        # default before the output goes on, and the warning must say so.
        with BenchSession(emu.port, watchdog=0.0, timeout=0.3, warn=warned) as session:
            session.board.set_duty(0.3)
            session.board.output(True)
            emu.blackout(10.0)                 # the link dies: off cannot be confirmed
    assert len(warned.lines) == 1, warned.lines
    assert "after 3 s without commands" in warned.lines[0], warned.lines
    assert "no host watchdog" not in warned.lines[0]


def test_host_limits_reach_the_board_and_a_refused_duty_is_never_sent():
    with Emulator(seed=4) as emu, connect(emu.port, max_duty=0.4, max_vout=12.0) as board:
        before = emu.snapshot()["duty"]
        with pytest.raises(BoardError):
            board.set_duty(0.45)
        assert emu.snapshot()["duty"] == before
        assert float(board.query("PROT:OVP:LEV?")) <= 12.0


def test_latched_trip_is_cleared_only_when_asked():
    with Emulator(seed=5) as emu:
        with connect(emu.port, watchdog=0.2) as board:
            board.set_duty(0.2)
            board.output(True)
            time.sleep(0.35)                    # the host goes quiet: the watchdog trips
        assert emu.snapshot()["trip"] == "WDOG"
        with connect(emu.port) as board:
            assert board.trip() == "WDOG"       # still latched: not cleared by default
        notes = Recorder()
        with BenchSession(emu.port, clear_trip=True, note=notes) as session:
            assert session.board.trip() == "NONE"
        assert notes.lines == ["cleared a latched WDOG trip"]
