"""UMAP maps of an embedding export: hexbin panels coloured by properties, plus stamps.

    python probe/umap_maps.py emb.parquet --out report/umap.png

One panel per property (default: AstroPT's magnitudes, sSFR, stellar mass,
redshift and morphology when present), each hexagon coloured by the median of
the property over its galaxies, and a panel of example stamps at their UMAP
positions. Coordinates go to ``<out stem>_coords.csv``. The work is done by
:func:`astropt.maps.make_maps`.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("embeddings", help="embedding export (folder or parquet file)")
    parser.add_argument("--out", default="umap.png", help="PNG path")
    parser.add_argument(
        "--properties", nargs="+", default=None, help="catalogue columns, one panel each"
    )
    parser.add_argument("--seed", type=int, default=0, help="UMAP random state and subsample seed")
    parser.add_argument("--max-points", type=int, default=20000)
    parser.add_argument("--n-neighbors", type=int, default=15)
    parser.add_argument("--min-dist", type=float, default=0.1)
    parser.add_argument("--gridsize", type=int, default=30, help="hexagons across")
    parser.add_argument("--no-stamps", action="store_true")
    parser.add_argument("--stamp-grid", type=int, default=8, help="stamps at most G x G")
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from astropt.maps import make_maps

    result = make_maps(
        args.embeddings,
        args.out,
        args.properties,
        seed=args.seed,
        max_points=args.max_points,
        n_neighbors=args.n_neighbors,
        min_dist=args.min_dist,
        gridsize=args.gridsize,
        stamps=not args.no_stamps,
        stamp_grid=args.stamp_grid,
    )
    print(
        f"{len(result.ids)} galaxies, {result.n_panels} panels -> {result.path} "
        f"(coordinates: {result.coords_path})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
