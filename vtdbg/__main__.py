"""``python -m vtdbg``: the same entry point as the ``vtdbg`` console script."""
import sys

from vtdbg.frontends.cli import main

if __name__ == "__main__":
    sys.exit(main())
