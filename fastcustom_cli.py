"""The command line's former module name, an alias of `fastcustom.cli` for the callers not yet
moved to it (tests/test_multi_worker.py, bench/test_bench_multi_worker.py); remove with them."""

import sys

from fastcustom.cli import main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
