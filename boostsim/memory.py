"""A memory budget for the large allocations: estimate first, refuse before any work.

The budget is half of the memory the system reports available (``MemAvailable`` of
``/proc/meminfo``, else the free physical pages) when the check runs: that leaves room for the
rest of the process (numpy temporaries, matplotlib) and for other programs, while a request that
would push the machine into swap or the out-of-memory killer is refused with a message saying
what to change. Set the environment variable ``BOOSTSIM_MEMORY_LIMIT`` to a byte count with an
SI prefix (``8G``, ``500M``; ``inf`` for no limit) to override it.
"""

from __future__ import annotations

import math
import os

from .units import parse_si

__all__ = ["BUDGET_ENV", "BUDGET_FRACTION", "SAMPLE_WORK_BYTES", "MemoryBudgetError",
           "available_memory", "check_memory", "format_bytes", "memory_budget"]

#: Environment variable overriding the budget [bytes].
BUDGET_ENV = "BOOSTSIM_MEMORY_LIMIT"
#: Share of the available memory one request may take.
BUDGET_FRACTION = 0.5
#: Working memory of evaluating the exact waveforms at one sample of one lane
#: (:func:`boostsim.engine.sample_segments`: about 24 float64 temporaries, measured with
#: tracemalloc; ``tests/test_memory.py`` keeps the estimates that use it honest).
SAMPLE_WORK_BYTES = 24 * 8


class MemoryBudgetError(ValueError, MemoryError):
    """A request would allocate more than the memory budget (raised before allocating)."""


def available_memory() -> int | None:
    """Bytes of memory the system reports available now, or None if it cannot tell."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def memory_budget() -> tuple[float, str]:
    """The budget [bytes] and where it comes from (for messages)."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if text:
        try:
            value = parse_si(text.removesuffix("B"), name=BUDGET_ENV)
        except ValueError as exc:
            raise ValueError(f"{exc} (a byte count such as 8G or 500M, or inf)") from None
        if not value > 0:
            raise ValueError(f"{BUDGET_ENV} must be > 0, got {text!r}")
        return value, f"{BUDGET_ENV}={text}"
    available = available_memory()
    if available is None:
        return math.inf, "available memory unknown"
    return BUDGET_FRACTION * available, (f"{BUDGET_FRACTION:.0%} of the {format_bytes(available)} "
                                         f"available; {BUDGET_ENV} overrides it")


def check_memory(nbytes: float, what: str, advice: str, *, per_lane: float | None = None
                 ) -> None:
    """Raise :class:`MemoryBudgetError` if ``what`` needs more than the budget.

    ``nbytes`` is the estimate of the request's largest live allocations; ``advice`` says
    what to change (e.g. "use a coarser dt"). With ``per_lane`` (bytes per lane) the message
    also says how many lanes fit in one call.
    """
    budget, source = memory_budget()
    if nbytes > budget:
        fit = ""
        if per_lane:
            fit = f" (at most {max(0, int(budget // per_lane))} lanes fit in one call)"
        raise MemoryBudgetError(f"{what} would need about {format_bytes(nbytes)} of memory, over "
                                f"the budget of {format_bytes(budget)} ({source}): "
                                f"{advice}{fit}")


def format_bytes(nbytes: float) -> str:
    """``1.5 GiB``-style text."""
    if not math.isfinite(nbytes):
        return f"{nbytes:g} B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(nbytes) < 1024 or unit == "PiB":
            return f"{nbytes:.3g} {unit}" if unit != "B" else f"{nbytes:.0f} B"
        nbytes /= 1024
    raise AssertionError("unreachable")
