#!/usr/bin/env python
"""UMAP maps of an embedding export: hexbin panels coloured by properties, plus stamps.

    python probe/umap_maps.py emb.parquet --out report/umap.png

Thin entry point of ``astropt maps`` (the same options, also as ``key=value``;
``--help`` lists them). One panel per property (default: AstroPT's magnitudes,
sSFR, stellar mass, redshift and morphology when present), each hexagon
coloured by the median of the property over its galaxies, and a panel of
example stamps at their UMAP positions. Coordinates go to
``<out stem>_coords.csv``. The work is done by :func:`astropt.maps.make_maps`.
"""

import sys
from pathlib import Path

# Importable without installing the package (a checkout run as a script).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from astropt.maps import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
