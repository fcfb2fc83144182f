#!/usr/bin/env python
"""Finetune a model on labelled galaxies: ``python finetune.py CONFIG.toml key=value ...``.

Thin entry point: the loop, heads, label sources and evaluation live in
:mod:`astropt.finetune` (see ``python finetune.py --help`` for every key).
Runs from any working directory; under ``torchrun`` every process runs this file.
"""

import sys
from pathlib import Path

# Importable without installing the package (a checkout run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from astropt.finetune.trainer import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
