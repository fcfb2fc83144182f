"""``mode=ridge``: the linear-probe comparator of a finetune, with no training loop.

The trunk embeds the run's galaxies at its own ``embed_layer`` (the layer choice
its embeddings are published with; float32, no augmentation), and the ridge
probe of :mod:`astropt.probe` (class-balanced ridge classifier, or ridge
regression; the ridge strength chosen by 5-fold CV inside the labelled
galaxies) is fitted on the same labels a finetune of the same ``seed`` and
``label_fraction`` reads, training plus validation, then scored on the same
test (or dev) galaxies. The run folder gets ``config.json``, ``splits.json``,
``<split>_metrics.json`` and ``summary.json`` with the keys of a finetune's
summary, so a sweep tabulates it beside ``full`` and ``lora``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from astropt.device import resolve_device
from astropt.errors import UserError
from astropt.finetune import data as fdata
from astropt.finetune.config import FinetuneConfig
from astropt.finetune.metrics import score
from astropt.finetune.modes import (
    inputs_as_trunk_expects,
    labelled_loader,
    load_trunk,
    write_splits,
)
from astropt.io import atomic_write_text
from astropt.model import GPT
from astropt.probe import RIDGE_ALPHAS, ridge_classifier_cv, ridge_cv
from astropt.train.checkpoint import seed_everything

log = logging.getLogger("astropt.finetune")

INNER_FOLDS = 5  # CV folds inside the labelled galaxies that choose the ridge strength


@torch.no_grad()
def embed_positions(
    trunk: GPT, cfg: FinetuneConfig, pool: fdata.LabelledPool, positions: np.ndarray, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(features (n, d), labels)`` of the pool's galaxies ``positions``: the trunk's
    ``embed_layer`` embeddings (mean over tokens; tokens in the trunk's units, with the
    patch statistics a flux-aware trunk reads), float32."""
    device = next(trunk.parameters()).device
    features, labels = [], []
    for batch in labelled_loader(cfg, pool, positions, name, device):
        tokens = batch.tokens.to(device).float()
        mean, std = (t.to(device).float() for t in (batch.mean, batch.std))
        inputs, stats = trunk.prepare(tokens, mean, std)  # the trunk's units and statistics
        features.append(trunk.embed(inputs, stats=stats).float().cpu().numpy())
        labels.append(np.asarray(batch.catalogue[fdata.LABEL_KEY]))
    return np.concatenate(features), np.concatenate(labels)


def ridge_probe(cfg: FinetuneConfig) -> dict:
    """Fit and score the ridge probe of ``cfg.init_from``; returns a finetune-like summary."""
    if cfg.head not in ("classification", "regression"):
        raise UserError(f"mode=ridge fits classes or values, not head={cfg.head}")
    started = time.perf_counter()
    seed_everything(cfg.seed)
    trunk = load_trunk(cfg.init_from, cfg.model, cfg.seed)
    cfg.model = trunk.config
    inputs_as_trunk_expects(cfg, trunk)
    device = resolve_device(cfg.device)
    trunk.to(device).eval()
    pool, overlap = fdata.open_checked_pool(cfg)
    galaxies = fdata.choose_galaxies(cfg, pool)
    fit = np.sort(np.concatenate([galaxies.train, galaxies.validation]))
    x_fit, y_fit = embed_positions(trunk, cfg, pool, fit, "ridge fit")
    x_scored, y_scored = embed_positions(trunk, cfg, pool, galaxies.scored, cfg.split)
    layer = trunk.layer_name(trunk.resolve_layers(None))
    log.info(
        "%s: ridge probe of %s (layer %s, %d features) on %d labels, scored on %d %s galaxies",
        cfg.out_dir, cfg.init_from, layer, x_fit.shape[1], len(fit), len(y_scored), cfg.split,
    )  # fmt: skip
    if cfg.head == "classification":
        n_classes = len(pool.class_names or [])
        alpha, predict = ridge_classifier_cv(x_fit, y_fit, RIDGE_ALPHAS, INNER_FOLDS, cfg.seed)
        predictions = np.eye(n_classes)[predict(x_scored).astype(np.int64)]
        alpha = float(alpha)
    else:
        alphas, _, _, predict = ridge_cv(x_fit, y_fit, RIDGE_ALPHAS, INNER_FOLDS, cfg.seed)
        predictions = predict(x_scored)
        alpha = float(np.median(alphas))
    scores = score(cfg.head, y_scored, predictions, pool.targets)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    write_splits(out, pool, galaxies)
    summary = {
        "out_dir": str(out),
        "mode": "ridge",
        "init_from": cfg.init_from,
        "head": cfg.head,
        "targets": pool.targets,
        "layer": layer,
        "ridge_alpha": alpha,
        "n_labels": int(len(galaxies.train)),
        "n_validation": int(len(galaxies.validation)),
        "labels_used": galaxies.labels_used,
        "split": cfg.split,
        "n_test": int(len(y_scored)),
        "pretraining_overlap": overlap,
        "label_fraction": cfg.label_fraction,
        "seed": cfg.seed,
        "trainable_params": int(x_fit.shape[1] * max(predictions.shape[1], 1)),
        "wall_time_s": time.perf_counter() - started,
        "world_size": 1,
        cfg.split: scores,
    }
    atomic_write_text(
        out / f"{cfg.split}_metrics.json", json.dumps(scores, indent=2, default=float)
    )
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float))
    return summary
