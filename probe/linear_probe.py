#!/usr/bin/env python
"""Linear probes of an embedding export, with baselines and label-efficiency curves.

    python probe/linear_probe.py emb.parquet --out report/

Thin entry point of ``astropt probe`` (the same options, also as ``key=value``;
``--help`` lists them). Probes every numeric catalogue column (or ``targets``)
with the model's embeddings and with four baselines on the same repeated
stratified folds: ``pixels`` and ``pixels-normalised`` (PCA of the scaled
pixels before / after per-patch normalisation, fitted inside each training
fold, from ``emb.pixels.parquet``), ``random-init`` (``emb.random.parquet``)
and ``morphometrics`` (``emb.morphometrics.parquet``). Baselines found beside
the export are used; missing ones are computed from the export's manifest
unless ``--no-baselines``. ``--protocol astropt`` probes the way AstroPT does.
Writes ``report.md``, ``headline.json``, CSVs and PNG plots into ``--out``.
The work is done by :func:`astropt.probe.run_probe_suite`.
"""

import sys
from pathlib import Path

# Importable without installing the package (a checkout run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from astropt.probe import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
