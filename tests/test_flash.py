"""Putting the firmware on a board: file list, staging, the mpremote command and its errors."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_bridge import flash

pytestmark = pytest.mark.slow  # mpremote subprocesses

ROOT = Path(__file__).resolve().parent.parent


def test_board_files_are_the_firmware_plus_the_simulators_pid_main_last():
    files = flash.board_files()
    names = [name for _, name in files]
    assert names[-1] == "main.py"
    assert "pid.py" in names and "__init__.py" not in names
    sources = dict((name, source) for source, name in files)
    assert sources["pid.py"] == ROOT / "boostsim" / "pid.py"
    firmware = {p.name for p in (ROOT / "firmware_bridge" / "firmware").glob("*.py")}
    assert firmware - {"__init__.py"} == set(names) - {"pid.py"}


def test_stage_copies_the_files_and_a_custom_config(tmp_path):
    custom = tmp_path / "my_config.py"
    custom.write_text("MAKER = 'me'\n")
    written = flash.stage(tmp_path / "out", config=custom)
    assert [p.name for p in written] == list(flash.BOARD_FILES)
    assert (tmp_path / "out" / "config.py").read_text() == "MAKER = 'me'\n"
    assert (tmp_path / "out" / "pid.py").read_bytes() == (ROOT / "boostsim" / "pid.py").read_bytes()
    with pytest.raises(flash.FlashError, match="firmware file missing"):
        flash.board_files(config=tmp_path / "nope.py")


def test_install_runs_one_mpremote_command_and_resets():
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    command = flash.install("/dev/ttyACM0", mpremote=["mpremote"], run=fake_run)
    assert calls == [command]
    assert command[:3] == ["mpremote", "connect", "/dev/ttyACM0"]
    assert command[-1] == "reset"
    targets = [command[i + 2] for i, word in enumerate(command) if word == "cp"]
    assert targets == [f":{name}" for name in flash.BOARD_FILES]
    assert flash.install("/dev/ttyACM0", mpremote=["mpremote"], dry_run=True) == command


def test_install_failure_gives_mpremotes_message_and_the_safe_mode_hint():
    def failing_run(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "mpremote: could not enter raw repl\n")

    with pytest.raises(flash.FlashError, match=r"could not enter raw repl.*safe mode"):
        flash.install("/dev/ttyACM0", mpremote=["mpremote"], run=failing_run)


def test_cli_firmware_files_and_dry_run(tmp_path):
    out = subprocess.run([sys.executable, "-m", "boostsim", "firmware", "files", "--out",
                          str(tmp_path / "fw")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "fw").iterdir()) == sorted(flash.BOARD_FILES)
    dry = subprocess.run([sys.executable, "-m", "boostsim", "firmware", "install", "--port",
                          "/dev/ttyACM9", "--dry-run"], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "connect /dev/ttyACM9" in dry.stdout and dry.stdout.strip().endswith("reset")


def test_cli_firmware_errors_are_one_line(tmp_path):
    no_action = subprocess.run([sys.executable, "-m", "boostsim", "firmware"],
                               capture_output=True, text=True)
    assert no_action.returncode == 2
    assert no_action.stderr.strip() == ("boostsim: error: choose an action: install or files "
                                        "(see 'boostsim firmware --help')")
    missing = subprocess.run([sys.executable, "-m", "boostsim", "firmware", "files", "--out",
                              str(tmp_path), "--firmware-config", str(tmp_path / "nope.py")],
                             capture_output=True, text=True)
    assert missing.returncode == 1
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "firmware file missing" in missing.stderr


@pytest.mark.parametrize("existing", [False, True])
def test_an_interrupted_stage_leaves_no_half_folder(tmp_path, monkeypatch, existing):
    """A copy stopped part-way (Ctrl-C, a full disk) leaves the folder as it was: absent, or
    with its earlier files untouched -- never some new files beside old or missing ones."""
    out = tmp_path / "pico"
    if existing:
        out.mkdir()
        (out / "config.py").write_text("OLD = 1\n")
        (out / "notes.txt").write_text("mine\n")
    real = shutil.copyfile
    copied = []

    def copy_then_stop(source, target, *args, **kwargs):
        if len(copied) == 3:
            raise KeyboardInterrupt
        copied.append(target)
        return real(source, target, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copy_then_stop)
    with pytest.raises(KeyboardInterrupt):
        flash.stage(out)
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["config.py", "notes.txt"]
        assert (out / "config.py").read_text() == "OLD = 1\n"
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["pico"] if existing else [])
    monkeypatch.setattr(shutil, "copyfile", real)
    written = flash.stage(out)
    assert [p.name for p in written] == list(flash.BOARD_FILES)
    assert all(p.parent == out and p.is_file() for p in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pico"]
    if existing:
        assert (out / "notes.txt").read_text() == "mine\n"
