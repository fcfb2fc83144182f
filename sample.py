#!/usr/bin/env python
"""Complete galaxies from their centre with a trained autoregressive model.

    python sample.py --checkpoint runs/x --data surveys/s0 --prefix 64 --n 16 --out grid.png

Thin entry point of ``astropt sample`` (the same options, also as ``key=value``;
``--help`` lists them): writes ``grid.png`` (per galaxy: the original, the kept
centre and the completion, per-patch normalised and in pixel units) and
``grid.npz`` (the arrays) beside it. The work is :func:`astropt.generate.completion_grid`.
"""

import sys
from pathlib import Path

# Importable without installing the package (a checkout run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from astropt.generate import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
