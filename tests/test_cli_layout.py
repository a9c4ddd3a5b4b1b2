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
#: A name ending in '/' is a package (bench: one module per action), all of whose modules may.
BOARD_COMMANDS = {"cli/bench/", "cli/emulate.py", "cli/firmware.py"}
#: The emulator side of firmware_bridge (simulated HAL and plant).
EMULATOR = {"emulator", "emulated_hal", "plant", "emukernel", "virtual_board"}


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


def is_board_command(path: str) -> bool:
    """Whether the module ``path`` (posix, relative to boostsim/) may import firmware_bridge."""
    return any(path == c or (c.endswith("/") and path.startswith(c)) for c in BOARD_COMMANDS)


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
    assert sorted(p for p in importers if not is_board_command(p)) == []
    # The check sees imports inside functions (the bench modules import firmware_bridge lazily).
    assert {"cli/bench/session.py", "cli/bench/ports.py"} <= importers


def test_the_bench_package_is_allowed_and_nothing_beside_it():
    assert is_board_command("cli/bench/__init__.py")
    assert is_board_command("cli/bench/identify.py")
    assert is_board_command("cli/emulate.py")
    assert not is_board_command("cli/bench.py")
    assert not is_board_command("cli/benchmark.py")
    assert not is_board_command("cli/simulate.py")
    assert not is_board_command("bench/session.py")


def unresolved_imports(root: Path) -> set[str]:
    """'module imports name' for each relative import (lazy ones too) in the package directory
    ``root`` that names no module of it: what moving a module leaves behind, and what only
    fails when that import runs."""
    bad = set()
    for p in root.rglob("*.py"):
        tree = ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
        package = p.relative_to(root.parent).with_suffix("").parts[:-1]
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = package[:len(package) - node.level + 1]
            target = root.parent.joinpath(*base, *(node.module or "").split("."))
            if not (target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()):
                bad.add(f"{p.relative_to(root).as_posix()} imports "
                        f"{'.' * node.level}{node.module or ''}")
    return bad


def test_relative_imports_name_existing_modules(tmp_path):
    assert unresolved_imports(BOOSTSIM) == set()
    assert unresolved_imports(BRIDGE) == set()
    sim = tmp_path / "boostsim"
    (sim / "cli" / "bench").mkdir(parents=True)
    (sim / "__init__.py").write_text("")
    (sim / "params.py").write_text("")
    (sim / "cli" / "config.py").write_text("")
    (sim / "cli" / "bench" / "__init__.py").write_text("from . import sweep\n")
    (sim / "cli" / "bench" / "sweep.py").write_text(
        "from ...params import X\nfrom ..config import Y\n\n"
        "def f():\n    from .config import Z\n    from ..bench import sweep\n")
    assert unresolved_imports(sim) == {"cli/bench/sweep.py imports .config"}


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
