"""Incremental CSV logs: one row per sample, each row on disk as soon as it is taken.

A bench run can be killed at any moment (Ctrl-C, SIGKILL, a crash, a pulled cable); its log
must still be a valid file holding every row taken up to then. :class:`SampleLog` therefore

* writes the metadata header (``#`` lines: boostsim version, command, start time, firmware
  identity, configuration, experiment settings) and the column labels in one ``write`` when it
  opens the file;
* writes each row as **one complete line in one unbuffered ``os.write``** (no Python buffer
  to lose, no half line left by a kill between two writes), so the operating system has it
  the moment :meth:`SampleLog.row` returns;
* ``fsync``\\ s on :meth:`SampleLog.sync` and on close (to survive a power cut too, call
  :meth:`SampleLog.sync` from time to time; it is not done per row because it can take
  milliseconds);
* marks the file incomplete until it is closed cleanly: the header's ``# status:`` line reads
  ``"incomplete"`` while rows are written; a clean :meth:`SampleLog.close` appends a trailer
  line ``# closed: {"rows": N, "at": TIME}`` and rewrites the status in place to
  ``"complete"``. A run killed (SIGKILL, power cut) or interrupted (Ctrl-C, an error) leaves
  ``"incomplete"``, and :func:`boostsim.outputs.read_csv` warns whoever reads it.

The format is the one of :mod:`boostsim.outputs` (units in the column names, ``#`` metadata
lines with JSON values), so :func:`boostsim.outputs.read_csv`, ``numpy.genfromtxt(...,
comments="#")`` and ``pandas.read_csv(..., comment="#")`` read it. :func:`read_log` also
tolerates a torn last line (a file copied while being written, or a disk full).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .outputs import STATUS_COMPLETE, STATUS_INCOMPLETE, metadata_lines, read_csv

__all__ = ["SampleLog", "read_log", "utc_timestamp"]


def utc_timestamp() -> str:
    """Now, UTC, ISO 8601 with milliseconds: ``2025-01-01T12:00:00.123Z``."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _cell(value: Any) -> str:
    if value is None:
        return "nan"
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        return "nan" if math.isnan(v) else repr(v) if math.isinf(v) else f"{v:.10g}"
    text = str(value)
    if any(c in text for c in ",\n\r\""):
        raise ValueError(f"log cell {text!r} contains a comma, quote or line break")
    return text


class SampleLog:
    """An append-only CSV log written row by row (see the module docstring).

    ``SampleLog(path, ["t_s", "vout_V"], meta)``; ``log.row(0.001, 12.01)`` or
    ``log.row(t_s=0.001, vout_V=12.01)``; ``log.close()`` (or ``with``). ``meta`` is the
    metadata header, e.g. from :func:`boostsim.outputs.metadata` plus the firmware identity;
    a ``started`` time (UTC, ms) is added if missing. Existing files are replaced.
    """

    def __init__(self, path: str | Path, columns: Sequence[str],
                 meta: Mapping[str, Any] | None = None):
        if not columns:
            raise ValueError("a log needs at least one column")
        for name in columns:
            if not name or any(c in name for c in ",\n\r\"#"):
                raise ValueError(f"bad column label {name!r}")
        self.path = Path(path)
        self.columns = tuple(columns)
        self.rows = 0
        meta = dict(meta or {})
        meta.pop("status", None)
        meta.setdefault("started", utc_timestamp())
        self.meta = meta
        head = "".join(line + "\n" for line in metadata_lines(meta)) + "# status: "
        self._status_offset = len(head.encode("utf-8"))
        text = f"{head}{STATUS_INCOMPLETE}\n{','.join(self.columns)}\n"
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                                       | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            self._write(text.encode("utf-8"))
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a regular file takes it all at once; loop only for exotic targets
            n = os.write(self._fd, view)
            view = view[n:]

    def row(self, *values: Any, **named: Any) -> None:
        """Append one row (positional in column order, or by label) and hand it to the OS."""
        if self._fd is None:
            raise ValueError(f"log {str(self.path)!r} is closed")
        if named:
            if values:
                raise TypeError("give the row's values positionally or by name, not both")
            unknown = set(named) - set(self.columns)
            if unknown:
                raise KeyError(f"unknown log column(s) {sorted(unknown)}")
            values = tuple(named.get(c) for c in self.columns)
        if len(values) != len(self.columns):
            raise ValueError(f"a row needs {len(self.columns)} values, got {len(values)}")
        self._write((",".join(_cell(v) for v in values) + "\n").encode("utf-8"))
        self.rows += 1

    def rows_from(self, columns: Sequence[Any]) -> None:
        """Append many rows at once from equal-length columns (one write; each line whole)."""
        if self._fd is None:
            raise ValueError(f"log {str(self.path)!r} is closed")
        arrays = [np.atleast_1d(np.asarray(c)) if not np.isscalar(c) else None for c in columns]
        n = max((a.size for a in arrays if a is not None), default=0)
        if n == 0:
            return
        cols = [a.tolist() if a is not None else [c] * n for a, c in zip(arrays, columns,
                                                                         strict=True)]
        if len(cols) != len(self.columns) or any(len(c) != n for c in cols):
            raise ValueError("rows_from needs one column per log column, all of one length")
        lines = [",".join(_cell(v) for v in values) for values in zip(*cols, strict=True)]
        self._write(("\n".join(lines) + "\n").encode("utf-8"))
        self.rows += n

    def sync(self) -> None:
        """Force the rows to the disk (``fsync``): survives a power cut, not just a kill."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self, complete: bool | None = None) -> None:
        """Close the log; mark it complete (trailer line, ``status`` rewritten in place) if
        ``complete`` -- by default, unless an exception is propagating (an interrupted or failed
        run, e.g. ``close()`` in a ``finally`` after Ctrl-C), which leaves it "incomplete"."""
        if self._fd is None:
            return
        if complete is None:
            complete = sys.exc_info()[0] is None
        fd = self._fd
        try:
            if complete:
                trailer = {"rows": self.rows, "at": utc_timestamp()}
                self._write(f"# closed: {json.dumps(trailer)}\n".encode())
                os.fsync(fd)
                os.pwrite(fd, STATUS_COMPLETE.encode("ascii"), self._status_offset)
            os.fsync(fd)
        except OSError:
            pass
        finally:
            self._fd = None
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __enter__(self) -> SampleLog:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        self.close(complete=exc_type is None)

    def __del__(self) -> None:  # pragma: no cover - best effort
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass


def read_log(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a log (or any :mod:`boostsim.outputs` CSV): (metadata, {label: column}); a torn
    last line (the run was killed while writing it) is dropped."""
    return read_csv(path, partial=True)
