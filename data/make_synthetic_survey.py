#!/usr/bin/env python
"""Write the built-in synthetic survey (DESI Legacy Survey DR8-like grz stamps) to parquet.

    python data/make_synthetic_survey.py --out DIR --n 10000 --image-size 128 --seed 0

Thin entry point of ``astropt survey`` (the same options, also as ``key=value``;
``--help`` lists them). Writes ``DIR/{train,validation,test}/shard-NNNNN.parquet``
in the ``Smith42/galaxies`` schema (an ``image`` column of JPEG bytes that
``datasets`` decodes as an Image, ``dr8_id``, and the truth labels of
``astropt.simulate.LABEL_COLUMNS``), plus ``DIR/survey.json`` describing the
survey. Load it with ``datasets.load_dataset("parquet", data_dir=DIR)``.

The pixel scale is DR8's 0.262 arcsec by default: ``--image-size`` changes the field of
view (64 px = 16.8 arcsec, 512 px = 134 arcsec), not the resolution; ``--framing zoom``
scales each stamp's field of view with its galaxy instead (``pixel_scale_arcsec`` column). Galaxy ``i``
depends only on (seed, i), so the files are byte-identical for any ``--workers``.
``--montage PNG`` also writes a labelled grid of galaxies 0-63 (alone, when ``--out``
is omitted). The work is :func:`astropt.simulate.write_survey`.
"""

import os
import sys
from pathlib import Path

# One thread per process: the workers are the parallelism.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# Importable without installing the package (a checkout run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from astropt.simulate.writer import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
