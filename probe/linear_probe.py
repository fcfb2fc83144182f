"""Linear probes of an embedding export, with baselines and label-efficiency curves.

    python probe/linear_probe.py emb.parquet --out report/

Probes every numeric catalogue column (or ``--targets``) with the model's
embeddings and with two baselines on the same train/test split: PCA of the raw
normalised pixels (``emb.pca.parquet``) and a randomly initialised model of
the same architecture (``emb.random.parquet``). Baselines found beside the
export are used; missing ones are computed from the export's manifest (its
model architecture, data source and split) unless ``--no-baselines``.
Writes ``report.md``, ``probe_results.csv``, ``label_efficiency.csv``,
``split.csv`` and PNG plots into ``--out``. The work is done by
:func:`astropt.probe.run_probe_suite`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _sizes(text: str) -> list[int | None]:
    return [None if part in ("all", "") else int(part) for part in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("embeddings", help="embedding export (folder or parquet file)")
    parser.add_argument("--out", default="report", help="report folder")
    parser.add_argument(
        "--pca", default=None, help="pixel-PCA baseline export (default: beside the export)"
    )
    parser.add_argument(
        "--random", default=None, help="random-init baseline export (default: beside the export)"
    )
    parser.add_argument(
        "--no-baselines", action="store_true", help="probe the model's embeddings only"
    )
    parser.add_argument(
        "--targets", nargs="+", default=None, help="columns, 'col>0.5' thresholds, 'col:regression'"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument(
        "--folds", type=int, default=5, help="k of the k-fold CV on the training part"
    )
    parser.add_argument(
        "--label-sizes",
        type=_sizes,
        default=[30, 100, 300, 1000, 3000, None],
        help="e.g. 30,100,300,1000,3000,all ('' to skip)",
    )
    parser.add_argument(
        "--label-targets",
        nargs="+",
        default=None,
        help="targets with label-efficiency curves ('all')",
    )
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads of the fits")
    return parser  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from astropt.embed import export_baselines_for, read_manifest
    from astropt.probe import discover_embeddings, markdown_table, run_probe_suite

    sets = discover_embeddings(args.embeddings)
    if args.pca:
        sets["pca"] = Path(args.pca)
    if args.random:
        sets["random"] = Path(args.random)
    if args.no_baselines:
        sets = {"model": sets["model"]}
    missing = tuple(name for name, path in sets.items() if path is None)
    if missing:
        meta = (read_manifest(args.embeddings) or {}).get("meta", {})
        if "model_config" in meta:
            print(f"computing the {' and '.join(missing)} baseline(s)", file=sys.stderr)
            sets.update(export_baselines_for(args.embeddings, which=missing, seed=args.seed))
        else:
            print(
                f"no {' or '.join(missing)} baseline beside {args.embeddings} and no record of "
                "its model and data to compute them: probing without",
                file=sys.stderr,
            )
    label_targets = args.label_targets
    if label_targets == ["all"]:
        label_targets = "all"
    summary = run_probe_suite(
        sets,
        args.out,
        targets=args.targets,
        seed=args.seed,
        test_fraction=args.test_fraction,
        folds=args.folds,
        label_sizes=[s for s in args.label_sizes if s != 0] or None,
        label_targets=label_targets,
        threads=args.threads,
        progress=True,
    )
    print(markdown_table(summary))
    print(f"report: {Path(args.out) / 'report.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
