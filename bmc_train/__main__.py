"""`python -m bmc_train --help`: train with a BMC objective (see bmc_train/cli.py)."""

import sys

from bmc_train.cli import main

if __name__ == "__main__":
    sys.exit(main())
