"""What every command shares at run time: the :class:`Context` (board file, printing, JSON),
the user-facing errors (exit status 1 and 2) and their one-line form.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ..outputs import StagedOutputs
from ..params import DEFAULT_BOARD_FILE, BoostParams, parse_toml, read_config_text

PROG = "boostsim"


class CliError(Exception):
    """A runtime error with a message meant for the user (exit status 1)."""


# -- running a command ----------------------------------------------------------------------

class Context:
    """What a command needs besides its arguments: the board, printing, progress."""

    def __init__(self, args: argparse.Namespace, argv: Sequence[str]):
        self.args = args
        #: The command's files: written beside their targets, put in place together when the
        #: command returns (``main`` commits or discards them).
        self.outputs = StagedOutputs()
        self.command_line = shlex.join([PROG, *argv])
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        self._board: tuple[BoostParams, dict[str, Any], str] | None = None

    # printing
    @property
    def human(self) -> bool:
        """Tables and messages go to stdout (not with --json or --quiet)."""
        return not (self.args.json or self.args.quiet)

    def print(self, text: str = "") -> None:
        if self.human:
            print(text, file=self.stdout)

    @property
    def progress(self) -> bool:
        return not self.args.quiet and self.stderr.isatty()

    def note(self, message: str) -> None:
        """A progress message on stdout, shown at once (not with --json or --quiet)."""
        if self.human:
            print(message, file=self.stdout, flush=True)

    def output(self, path: str | Path) -> Path:
        """Where to write the output file ``path`` now: a temporary file beside it that
        replaces it when the command completes (and is removed if it fails or is
        interrupted, leaving any earlier ``path`` as it was)."""
        try:
            return self.outputs.path(path)
        except OSError as exc:
            raise CliError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None

    def commit(self) -> None:
        """Put the files written so far in place now (before saying "wrote ..."): a target
        that cannot be replaced is an error naming it."""
        try:
            self.outputs.commit()
        except OSError as exc:
            raise CliError(f"cannot write {exc.filename!r}: {exc.strerror or exc}") from None

    def warn(self, message: str) -> None:
        if not self.args.quiet:
            print(f"{PROG}: warning: {message}", file=self.stderr)

    def emit_json(self, document: Any) -> None:
        if self.args.json:
            from ..outputs import write_json

            write_json(self.stdout, document)

    # the board
    def board(self) -> BoostParams:
        return self._load()[0]

    def document(self) -> tuple[dict[str, Any], str]:
        _, doc, source = self._load()
        return doc, source

    def _load(self) -> tuple[BoostParams, dict[str, Any], str]:
        if self._board is None:
            path = getattr(self.args, "config", None)
            if path:
                text = read_config_text(path)
                source = path
            else:
                text = _default_board_text()
                source = "built-in default board"
            document = parse_toml(text, source=source)
            params = BoostParams.from_toml(text, source=source)
            settings = dict(getattr(self.args, "settings", []) or [])
            if settings:
                try:
                    params = params.replace(**settings)
                except ValueError as exc:
                    raise CliError(f"--set: {exc}") from None
            self._board = (params, document, source)
        return self._board

    def metadata(self, **extra: Any) -> dict[str, Any]:
        from ..outputs import metadata

        params = self.board() if hasattr(self.args, "settings") else None
        return metadata(self.command_line, params, **extra)


def _default_board_text() -> str:
    return resources.files("boostsim").joinpath("data", DEFAULT_BOARD_FILE).read_text("utf-8")


class _UsageError(Exception):
    """A combination of options that cannot be used together (exit status 2)."""


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
