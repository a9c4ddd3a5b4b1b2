"""Every ``boostsim ...`` command shown in README.md and in the ``--help`` epilogs runs as
written: they are what a reader copies first, and nothing else checks that they still match
the options and defaults of the code.

What counts as a command: each line of a README code block that starts with ``boostsim`` (split
at ``&&``); each inline code span starting with ``boostsim `` with no ``a/b`` alternatives; in
the README's command table, each option example with a value (a span containing a space) after
the row's command; each epilog line starting with ``boostsim``. They run in this process
(``boostsim.cli.main``), in order, in one scratch directory per document (README.md, each
epilog: so ``config init board.toml`` precedes ``--config board.toml`` as a reader would run
them), with only these changes:

* bench commands talk to an emulator started inside the command (``--port emu:``, added when
  no port is given), since no board is attached: ``/dev/ttyACM0``, ``/tmp/board`` -> ``emu:``;
* ``boostsim emulate --link /tmp/board &`` runs as a process that is stopped once its link
  appears (the link under the scratch directory);
* ``firmware install`` gets ``--dry-run`` (no Pico to copy to);
* a Dask ``--scheduler tcp://host:8786`` (a placeholder address) runs on a local cluster
  when ``dask.distributed`` is installed, else the command is skipped;
* ``bench calibrate --interactive`` reads its meter readings from stdin;
* ``emulate`` gets ``--link`` to a file in its scratch directory (and a missing ``--config``
  file a copy of the default board);
* ``bench live`` without ``--duration`` (it runs until Ctrl-C) gets ``--duration 1``;
* ``--firmware-config my_config.py`` (the user's own firmware settings) gets a copy of the
  firmware's ``config.py``.
A line ``A && B`` runs A, then B.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boostsim.cli import build_parser, main

pytestmark = pytest.mark.slow  # every README and --help example: CLI runs, emulators

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _readme_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```[^\n]*\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            parts = [p.strip() for p in line.split("&&") if p.strip().startswith("boostsim ")]
            if parts:
                commands.append(" && ".join(parts))
    rows = set()  # a table row's command: run with the options its row gives
    for line in README.splitlines():
        cells = line.split("|")
        first = re.fullmatch(r"\s*`(boostsim [^`/]*)`\s*", cells[1]) if len(cells) > 2 else None
        if first:
            rows.add(first[1])
            for span in re.findall(r"`([^`]*)`", "|".join(cells[2:])):
                if span.startswith("--") and " " in span:
                    commands.append(f"{first[1]} {span}")
    for span in re.findall(r"`(boostsim [^`]*)`", README):
        if "/" not in span and not re.fullmatch(r"boostsim \w+", span) and span not in rows:
            commands.append(span)
    return [("README.md", c) for c in commands]


def _epilog_commands() -> list[tuple[str, str]]:
    commands = []

    def walk(parser: argparse.ArgumentParser) -> None:
        for line in (parser.epilog or "").replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("boostsim "):
                commands.append((parser.prog, line))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(build_parser())
    return commands


def _unique(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """First occurrence of each command (subcommands repeat their parent's epilog)."""
    seen: dict[str, str] = {}
    for source, command in pairs:
        seen.setdefault(command, source)
    return [(source, command) for command, source in seen.items()]


COMMANDS = _unique(_readme_commands() + _epilog_commands())


def test_the_examples_are_found():
    assert any("--mc" in c for _, c in _readme_commands())  # the README's Monte-Carlo example
    assert len(_epilog_commands()) > 30


@pytest.fixture(scope="module")
def scratch_dirs(tmp_path_factory) -> dict[str, Path]:
    return {}


def _as_run(command: str) -> list[str] | None:
    argv = shlex.split(command, comments=True)
    if ">" in argv:  # a shell redirection: the output goes to capsys instead
        argv = argv[:argv.index(">")]
    argv = argv[1:]
    if argv[:1] == ["bench"] and argv[1:2] != ["ports"]:
        argv = ["emu:" if a in ("/dev/ttyACM0", "/tmp/board") else a for a in argv]
        if "--port" not in argv:
            argv += ["--port", "emu:"]
        if argv[1:2] == ["live"] and "--duration" not in argv:
            argv += ["--duration", "1"]
    if argv[:2] == ["firmware", "install"] and "--dry-run" not in argv:
        argv.append("--dry-run")
    if "--scheduler" in argv:
        return None
    return argv


@pytest.mark.parametrize("source, line", COMMANDS)
def test_example_runs_as_written(source, line, scratch_dirs, tmp_path_factory, capsys,
                                 monkeypatch):
    if source not in scratch_dirs:
        scratch_dirs[source] = tmp_path_factory.mktemp("examples")
    scratch = scratch_dirs[source]
    monkeypatch.chdir(scratch)
    for command in line.split("&&"):
        _run(command.strip(), scratch, capsys, monkeypatch)


def _run(command: str, scratch: Path, capsys, monkeypatch) -> None:
    if command.startswith("boostsim emulate"):
        _run_emulator(command, scratch)
        return
    argv = _as_run(command)
    if argv is None:
        _run_on_local_dask(command, capsys)
        return
    if "--interactive" in argv:
        monkeypatch.setattr(sys, "stdin", io.StringIO("6.8\n12.0\n"))
    if "--firmware-config" in argv:
        user_file = scratch / argv[argv.index("--firmware-config") + 1]
        shutil.copy(ROOT / "firmware_bridge" / "firmware" / "config.py", user_file)
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 0, f"{command}\n{out}\n{err}"
    assert "Traceback" not in err


def _run_emulator(command: str, scratch: Path) -> None:
    argv = [a for a in shlex.split(command, comments=True)[1:] if a != "&"]
    link = scratch / "board"
    argv = [str(link) if a == "/tmp/board" else a for a in argv]
    if "--link" not in argv:  # the example prints its device path; the test needs a link
        argv += ["--link", str(link)]
    if "--config" in argv and not (scratch / argv[argv.index("--config") + 1]).exists():
        shutil.copy(ROOT / "boostsim" / "data" / "default_board.toml",
                    scratch / argv[argv.index("--config") + 1])
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # stdin a pipe kept open: --console reads commands from it (EOF would end the emulator)
    proc = subprocess.Popen([sys.executable, "-m", "boostsim", *argv], env=env, cwd=scratch,
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not link.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert link.exists(), proc.stderr.read() if proc.poll() is not None else "no link"
        assert main(["bench", "ports"]) == 0  # the emulated board answers on its link
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    assert proc.returncode in (0, 130), proc.stderr.read()


def _run_on_local_dask(command: str, capsys) -> None:
    distributed = pytest.importorskip("dask.distributed")
    argv = shlex.split(command, comments=True)[1:]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        argv[argv.index("--scheduler") + 1] = cluster.scheduler_address
        status = main(argv)
    out, err = capsys.readouterr()
    assert status == 0, f"{command}\n{out}\n{err}"


def test_the_readme_python_runs_as_written(tmp_path, monkeypatch):
    # The README's ```python blocks, in order, in one namespace (as a reader pastes them).
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
