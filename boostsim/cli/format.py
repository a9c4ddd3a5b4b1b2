"""Shared output: plain-text tables, number formatting, and writing data files and figures.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..params import FIELDS
from ..units import format_si
from .context import CliError, Context, _UsageError

# -- shared output helpers ------------------------------------------------------------------

def _table(headers: Sequence[str], rows: Sequence[Sequence[str]],
           right: Sequence[bool] | None = None) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    right = right or [True] * len(headers)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out)


def _fmt(value: Any, spec: str) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return "-"
    text = format(v, spec)
    if text.startswith("-") and not any(c in "123456789" for c in text):
        text = text[1:]  # no "-0.0000"
    return text


def _unit(name: str) -> str:
    unit = FIELDS[name].unit if name in FIELDS else ""
    return "Ω" if unit == "ohm" else unit


def _si(value: float, name: str) -> str:
    return format_si(float(value), _unit(name), digits=4)


def _write_plot(ctx: Context, fig, path: str) -> None:
    from ..plots import save

    try:
        save(fig, ctx.output(path))
    except OSError as exc:
        raise CliError(f"cannot write plot {path!r}: {exc.strerror or exc}") from None


def _write_columns(ctx: Context, path: str, columns: dict[str, np.ndarray],
                   meta: dict[str, Any], summary: Any = None) -> None:
    from ..outputs import write_columns

    try:
        write_columns(ctx.output(path), columns, meta, summary, progress=ctx.progress)
    except OSError as exc:
        raise CliError(f"cannot write {path!r}: {exc.strerror or exc}") from None


def _check_writable(path: str | None, kinds: Sequence[str], what: str) -> None:
    """Fail early (before a long run) on an unknown extension or a missing directory."""
    if not path:
        return
    suffix = Path(path).suffix.lower()
    if suffix not in kinds:
        raise _UsageError(f"{what} {path!r}: unknown extension {suffix or '(none)'!r} (use "
                          f"{', '.join(kinds)})")
    parent = Path(path).parent
    if not parent.is_dir():
        raise CliError(f"cannot write {path!r}: directory {str(parent)!r} does not exist")


def _check_outputs(ctx: Context, *outputs: tuple[str | None, Sequence[str], str],
                   incremental: Collection[str] = ()) -> None:
    """Every (path, kinds, option) checked before the work (and before a board or port is
    opened): the extension, the directory, no two options naming one file, and that the file
    can really be written (a directory in the way, no permission, a read-only file system):
    opened for appending, a new file removed again. The staged outputs (all but the options
    in ``incremental``, which are written row by row) are announced to ``ctx.outputs``, so an
    interrupted run names every file it did not write."""
    seen: dict[Path, str] = {}
    for path, kinds, what in outputs:
        if not path:
            continue
        _check_writable(path, kinds, what)
        p = Path(path)
        key = p.resolve()
        if key in seen:
            raise _UsageError(f"{seen[key]} and {what} name the same file {path!r}")
        seen[key] = what
        if p.is_dir():
            raise CliError(f"cannot write {path!r} ({what}): it is a directory")
        existed = p.exists()
        try:
            with open(p, "ab"):
                pass
        except OSError as exc:
            raise CliError(f"cannot write {path!r} ({what}): {exc.strerror or exc}") from None
        if not existed:
            with contextlib.suppress(OSError):
                p.unlink()
    for path, _, what in outputs:
        if path and what not in incremental:
            ctx.outputs.plan(path)


_DATA_KINDS = (".csv", ".json", ".npz")
_PLOT_KINDS = (".png", ".svg", ".pdf")


def _seconds(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _default_file(ctx: Context, given: str | None, default: str) -> str | None:
    if given:
        return given
    return None if ctx.args.no_files else default


def _open_log(ctx: Context, path: str | None, columns: Sequence[str], meta: dict[str, Any]):
    if not path:
        return None
    from ..datalog import SampleLog

    try:
        return SampleLog(path, columns, meta)
    except OSError as exc:
        raise CliError(f"cannot write {path!r}: {exc.strerror or exc}") from None
