"""numba's disk cache, keyed on every source file the compiled loops are built from.

numba keys a cached function on its own source file only (its modification time and size):
a kernel in ``kernel.py`` that compiles ``segments.diode_propagate`` or ``lanenoise``'s
draws, or one in ``avgkernel.py`` that compiles ``averaged.py``'s integrator, would load a
stale machine-code file after an edit (or an in-place upgrade) of those files alone. The
:func:`njit` here is numba's with ``cache=True`` functions renamed by a digest of all of
:data:`SOURCES`: any change there compiles the loops afresh (about 10 s once), never runs old
code. Old cache files stay in ``__pycache__`` (harmless).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numba

__all__ = ["DIGEST", "SOURCES", "njit"]

#: The modules whose text is compiled into the cached loops.
SOURCES = ("kernel.py", "avgkernel.py", "averaged.py", "segments.py", "lanenoise.py",
           "rp2040.py", "jitcache.py")
_HERE = Path(__file__).resolve().parent
DIGEST = hashlib.sha256(b"".join((_HERE / name).read_bytes() for name in SOURCES)
                        ).hexdigest()[:16]


def njit(*args: Any, **options: Any) -> Any:
    """``numba.njit``; with ``cache=True`` the function's cache name carries :data:`DIGEST`."""
    if not options.get("cache"):
        return numba.njit(*args, **options)

    def wrap(function: Any) -> Any:
        function.__qualname__ = f"{function.__qualname__}_{DIGEST}"
        return numba.njit(**options)(function)

    if args and callable(args[0]):
        return wrap(args[0])
    return wrap
