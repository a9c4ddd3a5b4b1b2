"""The compiled loops' disk cache follows every source they are compiled from."""

from __future__ import annotations

import ast
from pathlib import Path

from boostsim import avgkernel, jitcache, kernel

PACKAGE = Path(jitcache.__file__).parent


def _boostsim_imports(module) -> set[str]:
    """File names of the boostsim modules ``module`` imports (relative imports)."""
    names = set()
    for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0] + ".py")
            else:
                names.update(alias.name + ".py" for alias in node.names)
    return names


def test_every_compiled_source_is_in_the_digest():
    # A module the kernels import may be compiled into them (register_jitable, inlined njit):
    # a change there must change the cache names, or numba would load stale machine code.
    for module in (kernel, avgkernel):
        missing = _boostsim_imports(module) - set(jitcache.SOURCES)
        assert not missing, f"{module.__name__} compiles code from {missing}: add to SOURCES"
    assert all((PACKAGE / name).is_file() for name in jitcache.SOURCES)


def test_cached_functions_carry_the_digest():
    from numba.core.dispatcher import Dispatcher

    cached = [f for m in (kernel, avgkernel) for f in vars(m).values()
              if isinstance(f, Dispatcher) and type(f._cache).__name__ != "NullCache"]
    assert len(cached) > 10
    for f in cached:
        assert f.py_func.__qualname__.endswith("_" + jitcache.DIGEST), f.py_func.__name__
