"""``python -m boostsim``: the same as the ``boostsim`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
