"""`sagactl ...` / `python -m sagactl ...`: see `sagactl --help`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
