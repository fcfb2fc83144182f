"""Ranked oddities of an export: ``astropt anomalies emb.parquet``.

Two scores per galaxy, both larger for odder galaxies, computed on the index's
vectors (standardised, unit length; see :mod:`astropt.search.index`):

* ``anomaly_knn``: the mean cosine distance to the galaxy's ``k`` nearest
  other galaxies (an isolated point in embedding space);
* ``anomaly_iforest``: the isolation forest score of scikit-learn
  (``-score_samples``), the forest grown on a seeded sample of rows;

and ``anomaly``: the mean of their two percentile ranks (0-1). They are
written as columns of ``emb.anomalies.parquet`` beside the export (``id`` and
the three scores, in the export's row order; the index identity in the file's
metadata). The export is read one part at a time.

Where the export has truth columns (``truth``; on the built-in survey the
planted artefacts and mergers, ``is_artefact`` and ``is_merger``), the command
reports each score's precision among its top ``top`` galaxies (with a Wilson
95% interval) against the base rate: the precision a random ranking expects.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from astropt.export import read_table
from astropt.io import atomic_write
from astropt.options import Command, run_command
from astropt.search.index import (
    SAMPLE_ROWS,
    SearchError,
    SearchIndex,
    _Reservoir,
    column_names,
    iter_vectors,
    open_index,
    set_threads,
)

SCORES = ("anomaly", "anomaly_knn", "anomaly_iforest")
DEFAULT_TRUTH = ("is_artefact", "is_merger")


def anomalies_path(export: str | Path) -> Path:
    """``emb.parquet`` -> ``emb.anomalies.parquet`` beside it."""
    export = Path(export)
    stem = export.name[: -len(".parquet")] if export.name.endswith(".parquet") else export.name
    return export.with_name(f"{stem}.anomalies.parquet")


def _percentile_rank(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to (0, 1]; ties share their mean rank."""
    return pd.Series(values).rank(method="average").to_numpy() / len(values)


def anomaly_scores(
    export: str | Path,
    *,
    k: int = 10,
    trees: int = 200,
    seed: int = 0,
    sample_rows: int = SAMPLE_ROWS,
    index: SearchIndex | str | Path | None = None,
    build: bool = True,
) -> pd.DataFrame:
    """``id`` and the scores :data:`SCORES` of every row of ``export``, in row order.

    ``k``: neighbours averaged by ``anomaly_knn``; ``trees``: isolation forest
    size, grown on a seeded sample of at most ``sample_rows`` rows. ``index``:
    an open :class:`SearchIndex`, an index folder, or None (the one beside the
    export; built when missing and ``build``).
    """
    from sklearn.ensemble import IsolationForest

    opened = index if isinstance(index, SearchIndex) else open_index(export, index, build=build)
    n = opened.rows
    if n < 2:
        raise SearchError(f"{export} has {n} galaxy: anomalies need at least 2")
    k = max(1, min(k, n - 1))
    knn = np.empty(n, dtype=np.float64)
    reservoir = _Reservoir(min(sample_rows, n), seed)
    for positions, vectors in iter_vectors(export):
        unit = opened.transform(vectors)
        reservoir.update(unit)
        found, distances = opened.search_vectors(unit, k + 1)
        own = found == positions[:, None]
        # Drop each row's own entry (or, when it was not found, the farthest of k + 1).
        drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
        keep = np.ones_like(own)
        keep[np.arange(len(positions)), drop] = False
        kept = distances[keep].reshape(len(positions), k)
        knn[positions] = np.where(np.isfinite(kept), kept, 2.0).mean(axis=1)
    forest = IsolationForest(n_estimators=trees, random_state=seed, n_jobs=1)
    forest.fit(reservoir.sample())
    iforest = np.empty(n, dtype=np.float64)
    for positions, vectors in iter_vectors(export):
        iforest[positions] = -forest.score_samples(opened.transform(vectors))
    combined = (_percentile_rank(knn) + _percentile_rank(iforest)) / 2
    return pd.DataFrame(
        {"id": opened.ids, "anomaly": combined, "anomaly_knn": knn, "anomaly_iforest": iforest}
    )


def write_anomalies(scores: pd.DataFrame, out: str | Path, identity: dict) -> Path:
    """Write the scores table with the index identity it was computed from in its metadata."""
    out = Path(out)
    table = pa.Table.from_pandas(scores, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"astropt_anomalies"] = json.dumps(identity).encode()
    table = table.replace_schema_metadata(meta)
    atomic_write(out, lambda tmp: pq.write_table(table, tmp))
    return out


def read_anomalies(export: str | Path, index: SearchIndex) -> pd.DataFrame | None:
    """The saved scores of ``export`` when they were computed from this index, else None."""
    path = anomalies_path(export)
    if not path.is_file():
        return None
    meta = pq.read_schema(path).metadata or {}
    saved = json.loads(meta.get(b"astropt_anomalies", b"{}"))
    if saved.get("export") != index.record["export"]:
        return None
    return pq.read_table(path).to_pandas()


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``hits / n`` (95% by default)."""
    if n == 0:
        return (math.nan, math.nan)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def precision_at(scores: np.ndarray, truth: np.ndarray, top: int = 50) -> dict:
    """Precision among the ``top`` highest ``scores`` (ties broken by row), its Wilson interval,
    the base rate of ``truth`` (the precision of a random ranking) and the lift over it."""
    scores, truth = np.asarray(scores, dtype=float), np.asarray(truth, dtype=bool)
    top = min(top, len(scores))
    order = np.lexsort((np.arange(len(scores)), -scores))[:top]
    hits = int(truth[order].sum())
    low, high = wilson_interval(hits, top)
    base = float(truth.mean())
    return {
        "top": top,
        "hits": hits,
        "precision": hits / top,
        "interval": [low, high],
        "base_rate": base,
        "lift": (hits / top) / base if base > 0 else math.inf,
        "positives": int(truth.sum()),
        "rows": int(len(truth)),
    }


def truth_of(export: str | Path, columns: Sequence[str]) -> tuple[np.ndarray, list[str]] | None:
    """Rows where any of the ``columns`` present in the export is true, and those columns."""
    names = column_names(export)
    present = [c for c in columns if c in names]
    if not present:
        return None
    table = read_table(export, columns=present)
    truth = np.zeros(table.num_rows, dtype=bool)
    for column in present:
        truth |= table.column(column).to_numpy(zero_copy_only=False).astype(bool)
    return truth, present


def evaluate(scores: pd.DataFrame, truth: np.ndarray, top: int = 50) -> dict[str, dict]:
    """:func:`precision_at` of every score column of ``scores``."""
    return {name: precision_at(scores[name].to_numpy(), truth, top) for name in SCORES}


def describe(name: str, result: dict, truth_columns: Sequence[str]) -> str:
    low, high = result["interval"]
    return (
        f"{name}: precision at {result['top']} for {'+'.join(truth_columns)} "
        f"{result['precision']:.2f} [{low:.2f}, {high:.2f}] vs base rate "
        f"{result['base_rate']:.3f} ({result['lift']:.1f}x)"
    )


def report_precision(
    export: str | Path, scores: pd.DataFrame, truth_columns: Sequence[str], top: int = 50
) -> dict | None:
    """Print and return the precision at ``top`` of every score against the truth columns
    present in ``export`` (``{"truth", "top", "scores"}``); None when none is present."""
    found = truth_of(export, truth_columns)
    if found is None:
        return None
    truth, present = found
    results = evaluate(scores, truth, top)
    for name, result in results.items():
        print(describe(name, result, present), file=sys.stderr)
    return {"truth": present, "top": top, "scores": results}


# --------------------------------------------------------------------------- command line
@dataclass
class AnomaliesOptions:
    """Options of ``astropt anomalies``."""

    export: str  # embedding export (folder or parquet file)
    out: str | None = None  # scores file (default: emb.parquet -> emb.anomalies.parquet)
    k: int = 10  # neighbours averaged by the k-NN distance score
    trees: int = 200  # isolation forest trees
    seed: int = 0  # isolation forest seed (and its sample of rows)
    top: int = 50  # galaxies listed, and the cut of the precision reported against truth
    # truth columns (any true = a planted oddity) for the precision at top; absent ones are skipped
    truth: list[str] = field(default_factory=lambda: list(DEFAULT_TRUTH))
    threads: int | None = None  # faiss threads (None: all cores)


def run_anomalies(opts: AnomaliesOptions) -> int:
    """Score every galaxy, write the scores, list the oddest, report precision against truth."""
    set_threads(opts.threads)
    opened = open_index(opts.export, build=True)
    scores = anomaly_scores(opts.export, k=opts.k, trees=opts.trees, seed=opts.seed, index=opened)
    out = Path(opts.out) if opts.out else anomalies_path(opts.export)
    write_anomalies(scores, out, {"export": opened.record["export"], "k": opts.k})
    ranked = scores.sort_values("anomaly", ascending=False, kind="stable").head(opts.top)
    with pd.option_context("display.width", 200):
        print(ranked.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote anomaly scores of {len(scores)} galaxies to {out}", file=sys.stderr)
    if opts.truth:
        report_precision(opts.export, scores, opts.truth, opts.top)
    return 0


COMMAND = Command(
    AnomaliesOptions,
    run_anomalies,
    "Rank the galaxies of an embedding export by oddity (k-NN distance and isolation forest), "
    "write the scores as columns beside it, and report precision against truth columns.",
    positional=("export",),
    examples=("astropt anomalies emb.parquet", "astropt anomalies emb.parquet --top 100"),
)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, argv, "astropt anomalies")
