"""`python -m fastcustom ...`: the `fastcustom` command (fastcustom_cli), run as a module.

The `fastcustom` command itself starts faster: this module's package imports TensorFlow.
"""

import sys

from fastcustom_cli import main

if __name__ == "__main__":
    sys.exit(main())
