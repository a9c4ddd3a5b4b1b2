"""A Ctrl-C while the ``boostsim`` command is still starting: one line and exit status 130.

The command's ``main`` turns Ctrl-C into ``boostsim: interrupted`` (status 130), but importing
numpy, scipy and the package takes a moment before ``main`` runs. A KeyboardInterrupt raised
inside those imports prints the interpreter's traceback, or worse, is turned by a C extension
into an unrelated ImportError (numpy: "PyCapsule_Import could not import module datetime").
So, only in the ``boostsim`` command (``boostsim ...`` or ``python -m boostsim ...``), never in a
program importing boostsim, importing this module defers Ctrl-C: the first press is noted and
the imports finish (a second press exits at once), then :func:`release`, called first thing by
``main``, restores Python's handler and says whether to stop.
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["release"]

_state: dict[str, object] = {"previous": None, "pending": False}


def _is_command() -> bool:
    argv = getattr(sys, "orig_argv", [])
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1] in ("boostsim", "boostsim.cli"):
        return True
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    return name in ("boostsim", "boostsim.exe", "boostsim-script.py")


def _interrupted() -> None:
    sys.stderr.write("boostsim: interrupted\n")
    sys.stderr.flush()


def _defer(signum, frame) -> None:
    if _state["pending"]:
        _interrupted()
        os._exit(130)
    _state["pending"] = True


def _install() -> None:
    if not _is_command() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return
    try:
        _state["previous"] = signal.signal(signal.SIGINT, _defer)
    except ValueError:  # not the main thread
        _state["previous"] = None


def release() -> bool:
    """End the start-up: restore Ctrl-C's usual handler; True (after printing the one line)
    if Ctrl-C was pressed meanwhile, so the command should exit with status 130."""
    previous, _state["previous"] = _state["previous"], None
    if previous is None:
        return False
    signal.signal(signal.SIGINT, previous)
    if _state["pending"]:
        _interrupted()
        return True
    return False


_install()
