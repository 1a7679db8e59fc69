"""`python -m nanollm`: the same as the `nanollm` command (see nanollm.cli)."""

import sys

from nanollm.cli import main

if __name__ == "__main__":
    sys.exit(main())
