#!/usr/bin/env python
"""Linear probes of an embedding export, with baselines and label-efficiency curves.

    python probe/linear_probe.py emb.parquet --out report/

Thin entry point of ``astropt probe`` (the same options, also as ``key=value``;
``--help`` lists them). Probes every numeric catalogue column (or ``targets``)
with the model's embeddings and with two baselines on the same train/test
split: PCA of the raw normalised pixels (``emb.pca.parquet``) and a randomly
initialised model of the same architecture (``emb.random.parquet``). Baselines
found beside the export are used; missing ones are computed from the export's
manifest (its model architecture, data source and split) unless
``--no-baselines``. Writes ``report.md``, ``probe_results.csv``,
``label_efficiency.csv``, ``split.csv`` and PNG plots into ``--out``. The work
is done by :func:`astropt.probe.run_probe_suite`.
"""

import sys
from pathlib import Path

# Importable without installing the package (a checkout run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from astropt.probe import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
