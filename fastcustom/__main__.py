"""`python -m fastcustom ...`: the `fastcustom` command (fastcustom/cli.py), run as a module."""

import sys

from fastcustom.cli import main

if __name__ == "__main__":
    sys.exit(main())
