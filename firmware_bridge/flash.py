"""Putting the firmware on a board: the files, a staging folder, and ``mpremote``.

The board needs the MicroPython files of ``firmware_bridge/firmware/`` (not its
``__init__.py``) plus ``boostsim/pid.py`` -- the very PID the simulator runs -- flat in its
filesystem, ``main.py`` last so that a half-finished copy never boots. ``mpremote`` (the
MicroPython project's own tool, ``pip install mpremote``) does the copying over USB serial;
``install`` runs it, ``stage`` writes the files to a folder for other tools (Thonny, a drive).
See docs/FIRMWARE.md for the safe-mode jumper needed to re-flash a running board.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["BOARD_FILES", "FlashError", "board_files", "install", "install_command", "stage"]

_FIRMWARE_DIR = Path(__file__).resolve().parent / "firmware"
_PID = Path(__file__).resolve().parent.parent / "boostsim" / "pid.py"

#: Firmware modules copied to the board, in copy order (``main.py`` last).
BOARD_FILES = ("config.py", "scpi.py", "commands.py", "acq.py", "device.py", "hal.py",
               "pid.py", "main.py")


class FlashError(RuntimeError):
    """The firmware could not be staged or copied (message says why and what to do)."""


def board_files(config: str | Path | None = None) -> list[tuple[Path, str]]:
    """``(source file, name on the board)`` for every file, ``main.py`` last; ``config``
    replaces the default ``config.py`` (your board's pins, divider, limits)."""
    files = []
    for name in BOARD_FILES:
        source = _PID if name == "pid.py" else _FIRMWARE_DIR / name
        if name == "config.py" and config is not None:
            source = Path(config)
        if not source.is_file():
            raise FlashError(f"firmware file missing: {source}")
        files.append((source, name))
    return files


def stage(directory: str | Path, *, config: str | Path | None = None) -> list[Path]:
    """Copy the board's files into ``directory`` (created if needed); returns their paths.

    Staged like every other output: the files are copied (and flushed) into a hidden folder
    beside ``directory`` first. A new ``directory`` is that folder renamed into place in one
    step; into an existing one the complete files are renamed one by one (``main.py`` last)
    and its other files are left alone. A copy that fails or is interrupted removes the
    hidden folder: ``directory`` stays as it was, never half new and half old or missing.
    """
    target = Path(directory)
    files = board_files(config)
    staging = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and not target.is_dir():
            raise FileExistsError(17, "not a directory", str(target))
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
        os.chmod(staging, 0o777 & ~_umask())
        for source, name in files:
            shutil.copyfile(source, staging / name)
            with open(staging / name, "rb") as f:
                os.fsync(f.fileno())
        if not target.exists():
            os.rename(staging, target)
            staging = None
        else:
            for _, name in files:  # main.py last: a board never boots a half set
                os.replace(staging / name, target / name)
        return [target / name for _, name in files]
    except OSError as exc:
        raise FlashError(f"cannot write the firmware to {target}: {exc}") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def install_command(port: str, *, config: str | Path | None = None,
                    mpremote: Sequence[str] | None = None) -> list[str]:
    """One ``mpremote`` command line that copies every file (``main.py`` last) and resets."""
    files = board_files(config)
    command = [*(mpremote or _mpremote()), "connect", port]
    for source, name in files:
        command += ["cp", str(source), f":{name}", "+"]
    return [*command, "reset"]


def install(port: str, *, config: str | Path | None = None, dry_run: bool = False,
            mpremote: Sequence[str] | None = None,
            run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[str]:
    """Copy the firmware to the board on ``port`` with mpremote and reset it.

    Returns the command; with ``dry_run`` only returns it. Raises :class:`FlashError` with
    mpremote's own message when the copy fails (for a running board: fit the safe-mode
    jumper first, see docs/FIRMWARE.md).
    """
    command = install_command(port, config=config, mpremote=mpremote)
    if dry_run:
        return command
    try:
        done = run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FlashError(f"mpremote did not run: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout or "").strip().splitlines()
        raise FlashError(f"mpremote failed on {port}: {detail[-1] if detail else 'no output'} "
                         f"(a running board must be in safe mode to be re-flashed: jumper "
                         f"GP22 to GND and reset; see docs/FIRMWARE.md)")
    return command


def _mpremote() -> list[str]:
    found = shutil.which("mpremote")
    if found:
        return [found]
    try:
        import mpremote  # noqa: F401
    except ImportError:
        raise FlashError("mpremote is not installed: pip install mpremote "
                         "(or pip install 'boostsim[firmware]')") from None
    return [sys.executable, "-m", "mpremote"]
