"""Writing results: CSV with units in the column names and a ``#`` metadata header, JSON, NPZ.

CSV layout::

    # boostsim 0.1.0
    # command: boostsim sweep --duty 0.1:0.8:0.1
    # created: 2025-01-01T12:00:00Z
    # parameters: {"vin": 5.0, "L": 0.0001, ...}
    # <other metadata>: <JSON value>
    duty,vout_mean_V,vout_ripple_V,...,efficiency,mode,converged
    0.1,5.19...,...

Column names carry their SI unit after the last underscore (``vout_mean_V``, ``L_H``,
``R_ohm``, ``pin_W``, ``t_s``); dimensionless columns (``duty``, ``efficiency``) have none.
Booleans are written 1/0, ``mode`` as CCM/DCM, missing values as ``nan``. Read it back with
:func:`read_csv`, ``numpy.genfromtxt(path, delimiter=",", names=True, comments="#")`` or
``pandas.read_csv(path, comment="#")``.

JSON: ``{"metadata": {...}, "summary": {...}, "columns": {label: [values]}}`` with NaN written
as ``null`` and infinities as the strings ``"inf"`` / ``"-inf"``.

Files are never left half-written under their own name: every writer here writes a hidden
temporary file beside the target (``.NAME.partial-XXXX.EXT``) and renames it over the target
only once it is complete (:func:`atomic_file`), so an interrupted run leaves the previous
result untouched. :class:`StagedOutputs` does the same for the several files of one command (a
CSV and its plot): all are put in place together at the end, or none. Incremental logs, which
must keep their rows through a SIGKILL, are marked instead (:mod:`boostsim.datalog`): their
``# status:`` header line says ``"incomplete"`` until they are closed cleanly, and
:func:`read_csv` warns (:class:`IncompleteFileWarning`) when it reads such a file.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TextIO

import numpy as np

from .analysis import LOSS_NAMES
from .params import FIELDS, BoostParams

__all__ = ["STATUS_COMPLETE", "STATUS_INCOMPLETE", "UNITS", "IncompleteFileWarning",
           "StagedOutputs", "atomic_file", "column_label", "jsonable", "metadata", "read_csv",
           "staging_path", "unit_of", "write_columns", "write_csv", "write_json", "write_npz"]

#: ``status`` metadata of an incremental file while it is written, and once closed cleanly
#: (JSON strings of equal length, so the header line can be rewritten in place).
STATUS_INCOMPLETE = '"incomplete"'
STATUS_COMPLETE = '"complete"  '


class IncompleteFileWarning(UserWarning):
    """The file read was not closed cleanly (an interrupted or killed run): rows may be
    missing at its end."""


# -- writing without leaving partial files ------------------------------------------------------

def staging_path(path: str | Path) -> Path:
    """A new, empty, hidden file beside ``path`` with the same extension (so writers that go by
    the extension still work): ``dir/.NAME.partial-XXXX.EXT``. Created with the permissions a
    plain ``open`` would give (mode 0o666 less the umask)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.partial-",
                                suffix=path.suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return Path(name)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open`` for writing that replaces ``path`` only when the block completes.

    The data goes to :func:`staging_path`; on success it is flushed to disk and renamed over
    ``path`` (``os.replace``: readers see the old file or the new one, never a mix). On any
    exception, Ctrl-C included, the temporary file is removed and ``path`` is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes whole files (mode 'w' or 'wb'), got {mode!r}")
    tmp = staging_path(path)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class StagedOutputs:
    """The files of one command, written beside their targets and put in place together.

    ``with StagedOutputs() as out: write_csv(out.path("x.csv"), ...); save(fig,
    out.path("x.png"))``: the writers fill temporary files; when the block ends normally every
    one is renamed over its target, and if it raises (Ctrl-C, a full disk) they are all removed
    and the targets keep their earlier contents, so no new CSV ends up beside an old plot.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []
        self._planned: list[Path] = []
        self._committed: set[Path] = set()
        #: Targets left untouched by the last :meth:`discard` (for telling the user): those
        #: staged and those :meth:`plan`-ned but not yet put in place.
        self.discarded: list[Path] = []

    def plan(self, target: str | Path) -> None:
        """Announce ``target`` before the work that produces it (a run stopped before its
        files are staged still names them all in :attr:`discarded`)."""
        if Path(target) not in self._planned:
            self._planned.append(Path(target))

    def path(self, target: str | Path) -> Path:
        """Where to write ``target`` now (a temporary file beside it)."""
        tmp = staging_path(target)
        self._staged.append((tmp, Path(target)))
        self.plan(target)
        return tmp

    def commit(self) -> None:
        """Rename every staged file over its target (a Ctrl-C meanwhile is held until all
        are in place, so the set stays consistent)."""
        interrupted = None
        try:
            while self._staged:
                tmp, target = self._staged[0]
                try:
                    os.replace(tmp, target)
                except KeyboardInterrupt as exc:  # pragma: no cover - a signal mid-commit
                    interrupted = exc
                    if tmp.exists():
                        os.replace(tmp, target)
                except OSError as exc:
                    # Name the target, not the hidden temporary file (its name means nothing
                    # to the user and it is removed below).
                    raise OSError(exc.errno, exc.strerror, str(target)) from exc
                self._staged.pop(0)
                self._committed.add(target)
        except OSError:
            self.discard()  # e.g. a target that became a directory: no stray temporaries
            raise
        if interrupted is not None:  # pragma: no cover
            raise interrupted

    def discard(self) -> None:
        """Remove every staged file; the targets are untouched."""
        pending = [p for p in self._planned if p not in self._committed]
        self.discarded = list(dict.fromkeys([*pending, *(t for _, t in self._staged)]))
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

#: Units of result columns (converter parameters take theirs from ``params.FIELDS``).
UNITS: dict[str, str] = {
    "duty": "", "vout_target": "V", "sample": "", "pass": "", "mode": "", "converged": "",
    "vout_mean": "V", "vout_ripple": "V", "vout_min": "V", "vout_max": "V", "vc_mean": "V",
    "il_mean": "A", "il_ripple": "A", "il_min": "A", "il_max": "A", "il_rms": "A",
    "pin": "W", "pout": "W", "p_loss": "W", "p_switching": "W", "efficiency": "",
    "efficiency_total": "", "energy_balance": "", "stored_power": "W", "settled": "",
    "t_on": "s", "t_diode": "s", "t_idle": "s",
    **{f"loss_{k}": "W" for k in LOSS_NAMES},
    "t": "s", "il": "A", "vc": "V", "vout": "V", "gate": "",
}


def unit_of(name: str) -> str:
    """SI unit of a column name ('' for dimensionless or unknown)."""
    if name in UNITS:
        return UNITS[name]
    if name in FIELDS:
        return FIELDS[name].unit
    return ""


def column_label(name: str) -> str:
    """``vout_mean`` -> ``vout_mean_V``; ``efficiency`` -> ``efficiency``."""
    unit = unit_of(name)
    return f"{name}_{unit}" if unit else name


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def metadata(command: str | None = None, params: BoostParams | None = None,
             **extra: Any) -> dict[str, Any]:
    """The metadata block: boostsim version, command line, creation time, parameters, extras."""
    from . import __version__

    out: dict[str, Any] = {"boostsim": __version__}
    if command is not None:
        out["command"] = command
    out["created"] = _utc_now()
    if params is not None:
        out["parameters"] = params.to_dict()
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays to Python, NaN to None, inf to "inf"."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(target: str | Path | TextIO, document: Any) -> None:
    """Write ``document`` as indented JSON (through :func:`jsonable`) to a path or stream."""
    text = json.dumps(jsonable(document), indent=2, allow_nan=False) + "\n"
    if isinstance(target, str | Path):
        with atomic_file(target, encoding="utf-8") as f:
            f.write(text)
    else:
        target.write(text)


def metadata_lines(meta: Mapping[str, Any]) -> list[str]:
    """``# key: value`` header lines (JSON values; text on one line) for CSV files."""
    lines = []
    for key, value in meta.items():
        if key == "boostsim":
            lines.append(f"# boostsim {value}")
        elif isinstance(value, str):
            lines.append(f"# {key}: {' '.join(value.splitlines())}")
        else:
            text = json.dumps(jsonable(value), allow_nan=False, ensure_ascii=False)
            lines.append(f"# {key}: {text}")
    return lines


def _formats(columns: Mapping[str, np.ndarray]) -> list[str]:
    formats = []
    for values in columns.values():
        kind = np.asarray(values).dtype.kind
        formats.append({"b": "%d", "i": "%d", "u": "%d", "U": "%s", "S": "%s",
                        "O": "%s"}.get(kind, "%.12g"))
    return formats


def write_csv(path: str | Path, columns: Mapping[str, np.ndarray],
              meta: Mapping[str, Any] | None = None, *, progress: bool = False) -> None:
    """Columns (equal lengths) to CSV with unit-suffixed labels and the metadata header."""
    arrays = {k: np.asarray(v) for k, v in columns.items()}
    n = len(next(iter(arrays.values()))) if arrays else 0
    row = ",".join(_formats(arrays))
    bar = None
    if progress and n > 200_000:
        import sys

        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="row", desc=f"writing {Path(path).name}", file=sys.stderr,
                   delay=1.0, leave=False)
    block = 50_000
    with atomic_file(path, encoding="utf-8", newline="\n") as f:
        for line in metadata_lines(meta or {}):
            f.write(line + "\n")
        f.write(",".join(column_label(k) for k in arrays) + "\n")
        for start in range(0, n, block):
            lists = [a[start:start + block].tolist() for a in arrays.values()]
            f.write("\n".join(row % values for values in zip(*lists, strict=True)))
            f.write("\n")
            if bar is not None:
                bar.update(len(lists[0]))
    if bar is not None:
        bar.close()


def read_csv(path: str | Path, *, partial: bool = False
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a file written by :func:`write_csv` (or a :mod:`boostsim.datalog` log):
    (metadata, {label: column}).

    Numeric columns come back as float arrays, others (``mode``) as string arrays. With
    ``partial`` a torn last line (a run killed while writing: fewer cells, or no line end) is
    dropped instead of failing.
    """
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    if partial:
        # The piece after the last line end is empty, or a torn line: drop it either way.
        lines = [line.rstrip("\r") for line in text.split("\n")[:-1]]
    else:
        lines = text.splitlines()
    meta: dict[str, Any] = {}
    body = len(lines)
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            body = i
            break
        _metadata_line(meta, line)
    if body >= len(lines):
        raise ValueError(f"{str(path)!r}: no column header line")
    labels = lines[body].split(",")
    rows = []
    for line in lines[body + 1:]:
        if line.startswith("#"):
            # Trailer lines (an incremental log's summary when it was closed).
            _metadata_line(meta, line)
        elif line:
            rows.append(line.split(","))
    if meta.get("status", "complete") != "complete":
        meta["complete"] = False
        warnings.warn(f"{str(path)!r} is incomplete (status {meta['status']!r}): the run that "
                      f"wrote it did not finish, rows may be missing at the end",
                      IncompleteFileWarning, stacklevel=2)
    if partial:
        rows = [r for r in rows if len(r) == len(labels)]
    columns: dict[str, np.ndarray] = {}
    for j, label in enumerate(labels):
        raw = [r[j] for r in rows]
        try:
            columns[label] = np.array(raw, dtype=float)
        except ValueError:
            columns[label] = np.array(raw)
    return meta, columns


def _metadata_line(meta: dict[str, Any], line: str) -> None:
    """Parse one ``# key: value`` line (JSON value, else text) into ``meta``."""
    content = line[1:].strip()
    if content.startswith("boostsim ") and ":" not in content:
        meta["boostsim"] = content.split(None, 1)[1]
        return
    key, _, value = content.partition(":")
    try:
        meta[key.strip()] = json.loads(value.strip())
    except json.JSONDecodeError:
        meta[key.strip()] = value.strip()


def write_npz(path: str | Path, columns: Mapping[str, np.ndarray],
              meta: Mapping[str, Any] | None = None) -> None:
    """Columns to a NumPy archive (unit-suffixed keys, metadata as a JSON string
    under ``metadata``)."""
    arrays = {column_label(k): np.asarray(v) for k, v in columns.items()}
    arrays["metadata"] = np.array(json.dumps(jsonable(dict(meta or {}))))
    with atomic_file(path, "wb") as f:
        np.savez(f, **arrays)


def write_columns(path: str | Path, columns: Mapping[str, np.ndarray],
                  meta: Mapping[str, Any] | None = None, summary: Any = None, *,
                  progress: bool = False) -> None:
    """Write columns by the file's extension: .csv, .json or .npz (raises ValueError)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        write_csv(path, columns, meta, progress=progress)
    elif suffix == ".json":
        document: dict[str, Any] = {"metadata": dict(meta or {})}
        if summary is not None:
            document["summary"] = summary
        document["columns"] = {column_label(k): np.asarray(v) for k, v in columns.items()}
        write_json(path, document)
    elif suffix == ".npz":
        write_npz(path, columns, meta)
    else:
        raise ValueError(f"cannot write {str(path)!r}: unknown extension {suffix or '(none)'!r} "
                         f"(use .csv, .json or .npz)")
