"""A Ctrl-C while the ``boostsim`` command is still starting: one line and exit status 130.

The command's ``main`` turns Ctrl-C into ``boostsim: interrupted`` (status 130), but importing
numpy, scipy and the package takes a moment before ``main`` runs; an interrupt then would
print the interpreter's traceback. :func:`install` (run first thing by the package) sets a
``sys.excepthook`` that answers such an interrupt the same way -- only in the ``boostsim``
command (``boostsim ...`` or ``python -m boostsim ...``), never in a program importing boostsim.
Importing this module installs it.
"""

from __future__ import annotations

import os
import sys

__all__ = ["install"]


def _is_command() -> bool:
    argv = getattr(sys, "orig_argv", [])
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1] in ("boostsim", "boostsim.cli"):
        return True
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    return name in ("boostsim", "boostsim.exe", "boostsim-script.py")


def install() -> None:
    """In the boostsim command, report an uncaught Ctrl-C in one line and exit with 130."""
    if not _is_command():
        return
    previous = sys.excepthook

    def hook(kind, value, traceback) -> None:
        if issubclass(kind, KeyboardInterrupt):
            try:
                sys.stdout.flush()
            except (OSError, ValueError):
                pass
            sys.stderr.write("boostsim: interrupted\n")
            sys.stderr.flush()
            os._exit(130)
        previous(kind, value, traceback)

    sys.excepthook = hook


install()
