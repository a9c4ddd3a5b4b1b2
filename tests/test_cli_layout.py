"""Layering of the packages, read from the import statements of the sources (module level and
inside functions alike):

* the simulator (``boostsim``) does not depend on the bench: only the CLI modules that drive
  the board import ``firmware_bridge``;
* host code in ``firmware_bridge`` (the driver, the bench experiments, the session helper) does
  not import the emulator or its simulated hardware: only the emulator's own modules do.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOOSTSIM = ROOT / "boostsim"
BRIDGE = ROOT / "firmware_bridge"

#: boostsim modules allowed to import firmware_bridge: the commands that drive the board or
#: run its emulator, and 'firmware', which copies the firmware to it (firmware_bridge.flash).
BOARD_COMMANDS = {"cli/bench.py", "cli/emulate.py", "cli/firmware.py"}
#: The emulator side of firmware_bridge (simulated HAL and plant).
EMULATOR = {"emulator", "emulated_hal", "plant"}


def _imported(path: Path, root: Path) -> set[str]:
    """Absolute names of the modules (and names) that ``path``, inside the package directory
    ``root``, imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = path.relative_to(root.parent).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def bench_importers(root: Path = BOOSTSIM) -> set[str]:
    """Modules of ``root`` (posix paths relative to it) that import firmware_bridge."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*.py")
            if any(n.split(".")[0] == "firmware_bridge" for n in _imported(p, root))}


def emulator_importers(root: Path = BRIDGE) -> set[str]:
    """'module imports name' for each import of the emulator's modules by host code."""
    bad = set()
    for p in root.rglob("*.py"):
        if p.parent == root and p.stem in EMULATOR:
            continue
        for name in _imported(p, root):
            parts = name.split(".")
            if parts[0] == root.name and len(parts) > 1 and parts[1] in EMULATOR:
                bad.add(f"{p.relative_to(root).as_posix()} imports {name}")
    return bad


def test_only_the_board_commands_import_firmware_bridge():
    importers = bench_importers()
    assert importers <= BOARD_COMMANDS, sorted(importers - BOARD_COMMANDS)
    assert "cli/bench.py" in importers  # the check sees imports inside functions


def test_host_code_does_not_import_the_emulator():
    assert emulator_importers() == set()


def test_the_checks_catch_stray_imports(tmp_path):
    """Both checks fail on modules that break the rules (lazy and relative imports too)."""
    sim = tmp_path / "boostsim"
    (sim / "cli").mkdir(parents=True)
    (sim / "cli" / "bench.py").write_text("from firmware_bridge import bench\n")
    (sim / "cli" / "steady.py").write_text("def f():\n    import firmware_bridge.board\n")
    assert bench_importers(sim) == {"cli/bench.py", "cli/steady.py"}
    host = tmp_path / "firmware_bridge"
    (host / "bench").mkdir(parents=True)
    (host / "emulator.py").write_text("from .emulated_hal import EmulatedHAL\n")
    (host / "bench" / "sweep.py").write_text("from ..emulated_hal import rp2040_pwm\n")
    (host / "session.py").write_text("def f():\n    from .emulator import Emulator\n")
    (host / "rp2040.py").write_text("import math\nfrom . import board\n")
    assert emulator_importers(host) == {
        "bench/sweep.py imports firmware_bridge.emulated_hal",
        "bench/sweep.py imports firmware_bridge.emulated_hal.rp2040_pwm",
        "session.py imports firmware_bridge.emulator",
        "session.py imports firmware_bridge.emulator.Emulator"}


@pytest.mark.parametrize("command", ["sweep", "simulate", "steady", "control", "config",
                                     "firmware", "bench", "emulate"])
def test_each_command_registers_its_own_parser(command):
    """One module per command, each adding its subparser (with its epilog beside it)."""
    import importlib

    module = importlib.import_module(f"boostsim.cli.{command}")
    assert callable(module.register)
