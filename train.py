#!/usr/bin/env python
"""Pretrain an observation model: ``python train.py CONFIG.toml key=value ...``.

Thin entry point: parsing, training and checkpointing live in
:mod:`astropt.train` (see ``python train.py --help`` for every key). Runs
from any working directory; under ``torchrun`` every process runs this file.
"""

import sys
from pathlib import Path

# Importable without installing the package (a checkout run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from astropt.train import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
