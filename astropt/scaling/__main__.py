"""``python -m astropt.scaling`` (also under ``torchrun -m``)."""

import sys

from astropt.scaling.cli import main

if __name__ == "__main__":
    sys.exit(main())
