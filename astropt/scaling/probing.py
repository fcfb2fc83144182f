"""Probe scores of finished runs: embed held-out galaxies, fit the linear probes."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from astropt.scaling.results import _json_default, read_results

log = logging.getLogger("astropt.scaling")

#: ``probe_fn(run_dir, run_config) -> {target: score}``.
ProbeFn = Callable[[Path, Any], dict]


def probe_score(scores: dict) -> float | None:
    """One number per run: the mean of the probe suite's per-task scores."""
    values = [float(v) for v in scores.values() if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def default_probe(
    run_dir: Path,
    cfg: Any,
    *,
    splits: Sequence[str] = ("validation", "test"),
    max_samples: int | None = None,
    targets: Sequence[str] | None = None,
) -> dict:
    """Probe scores of a finished run: ``{target: headline metric}``.

    Embeds the held-out ``splits`` of the run's own data (augmentation off;
    both by default: a few hundred more galaxies make the scores much less
    noisy) with the run's model (``checkpoints/best``, else ``latest``), then
    fits the linear probes of :mod:`astropt.probe` on the headline targets
    (AstroPT's: magnitudes, sSFR, stellar mass, redshift, morphology) present
    in the catalogue. The headline metric is R^2 for a regression target and
    balanced accuracy for a classification one, so their mean
    (``probe_score``) is higher-is-better.
    """
    import pandas as pd

    from astropt.embed import export_embeddings
    from astropt.export import read_embeddings
    from astropt.hub import load_model
    from astropt.probe import HEADLINE_TARGETS, resolve_targets, run_probes

    model = load_model(run_dir)
    data_cfg = dataclasses.replace(cfg.data, augment=False, num_workers=0)
    device = "cpu" if getattr(cfg, "device", "auto") == "cpu" else "auto"
    parts = []
    for split in splits:
        path = export_embeddings(
            model,
            data_cfg,
            Path(run_dir) / f"embeddings-{split}",
            split=split,
            device=device,
            max_samples=max_samples,
            overwrite=True,
            progress=False,
        )
        parts.append(read_embeddings(path))
    ids = np.concatenate([p[0] for p in parts])
    features = np.concatenate([p[1] for p in parts])
    catalogue = pd.concat([p[2] for p in parts], ignore_index=True)
    if targets is None:
        available = {t.name for t in resolve_targets(None, catalogue)}
        targets = [t for t in HEADLINE_TARGETS if t.split(">")[0] in catalogue.columns]
        targets = targets or sorted(available)
    run = run_probes(
        {"model": (ids, features, catalogue)}, list(targets), label_sizes=None, folds=3
    )
    return {str(row["target"]): float(row["model"]) for _, row in run.summary.iterrows()}


def probe_results(
    results: str | os.PathLike,
    *,
    sweep: str | None = "compute",
    force: bool = False,
    probe_fn: ProbeFn | None = None,
) -> int:
    """Probe finished runs of a results file after the fact; returns how many.

    Rows of ``sweep`` (None: all) without probe scores (or all with
    ``force``) are probed from their run folder's ``config.json`` and the
    file is rewritten atomically with the scores added.
    """
    from astropt.config import load_config
    from astropt.io import atomic_write_text

    probe_fn = probe_fn or default_probe
    rows = read_results(results)
    done = 0
    for row in rows:
        if sweep is not None and row.get("sweep") != sweep:
            continue
        if row.get("probe") and not force:
            continue
        run_dir = Path(row["run_dir"])
        cfg = load_config(run_dir / "config.json", [])
        row["probe"] = probe_fn(run_dir, cfg)
        row["probe_score"] = probe_score(row["probe"])
        done += 1
        log.info("probed %s: mean score %.4f", row["run_id"], row["probe_score"])
    if done:
        text = "".join(json.dumps(r, default=_json_default) + "\n" for r in rows)
        atomic_write_text(Path(results), text)
    return done
