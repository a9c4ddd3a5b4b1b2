"""Another git revision's packages, for the benchmarks' ``--against REV`` comparisons (the
same figure, this tree's code and REV's, measured in turns in one run)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("boostsim", "firmware_bridge")


def checkout(rev: str, into: Path, needs: str | None = None) -> Path:
    """The packages of git revision ``rev`` extracted under ``into`` (returned); ``needs``: a
    file (relative to the tree) the benchmark cannot do without -- a clear error when ``rev``
    predates it."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, *PACKAGES],
                             capture_output=True, check=False)
    if archive.returncode:
        raise SystemExit(f"--against {rev}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    if needs is not None and not (into / needs).exists():
        raise SystemExit(f"--against {rev}: that revision has no {needs}")
    return into


def in_turn(rounds: int, trees: list[tuple[str, Path]]) -> Iterator[tuple[int, str, Path]]:
    """(round, name, tree): ``rounds`` rounds, each tree once per round, who goes first
    alternating from round to round (neither tree always meets the machine as the other left
    it)."""
    for k in range(rounds):
        for name, tree in (trees if k % 2 == 0 else trees[::-1]):
            yield k, name, tree
