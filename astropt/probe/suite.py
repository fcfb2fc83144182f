"""The probe suite: every target of every embedding set on shared splits, intervals and
label-efficiency curves (:func:`run_probes`, :func:`run_probe_suite`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from astropt.probe.baselines import FoldPCA, PixelSource, load_embedding_sets
from astropt.probe.fits import _metrics, fit_predict, split_r2
from astropt.probe.intervals import _intervals, _levels
from astropt.probe.protocol import (
    DEFAULT_LABEL_SIZES,
    EVAL_SPLITS,
    HEADLINE,
    HEADLINE_TARGETS,
    INTERVAL,
    METRICS,
    SPLIT_DIGITS,
    Protocol,
    Target,
    _strata,
    fold_plan,
    resolve_protocol,
    resolve_targets,
)
from astropt.probe.report import ProbeRun, write_report


def run_probes(
    embeddings: Mapping[str, object],
    targets: Sequence[str | Target] | None = None,
    *,
    seed: int = 0,
    protocol: str | Protocol = "repeated",
    folds: int | None = None,
    repeats: int | None = None,
    label_sizes: Iterable[int | None] | None = DEFAULT_LABEL_SIZES,
    label_targets: Sequence[str] | Literal["all"] | None = None,
    progress: bool = False,
    threads: int | None = 1,
    models: int = 1,
    split: str | None = None,
    choices: Mapping[str, str] | None = None,
) -> ProbeRun:
    """Probe every target with every embedding set on shared folds (no files written).

    ``embeddings``: name -> export path, ``(ids, features, catalogue)`` or
    :class:`PixelSource` (reduced by PCA to the first set's dimension inside
    each training fold); the first is the model, the others baselines.
    ``models``: how many of the first sets are models; each is compared with
    every set after it (paired, on the same splits), so several
    models and their differences cost one pass over the folds. The report
    (:func:`write_report`) shows the first model's comparisons.
    ``targets``: specs for :func:`parse_target` (default: :func:`auto_targets`
    of the primary catalogue). ``protocol``: ``"repeated"`` or ``"astropt"``
    (:data:`PROTOCOLS`); ``folds``/``repeats`` override its fields.
    ``label_sizes``: training-set sizes of the label-efficiency curves (on the
    first fold; ``None`` = all its training rows; nested random subsets from
    ``seed``); ``label_targets``: which targets get curves (default: the
    ``HEADLINE_TARGETS`` present, else the first eight; ``"all"``).
    ``threads``: BLAS threads for the fits (None = the library default; on busy
    or oversubscribed cores OpenBLAS threads make these small fits much slower).
    ``split``: which evaluation split the galaxies are (``"dev"`` for choosing
    settings, ``"test"`` for a published table; :data:`EVAL_SPLITS`) and
    ``choices``: setting -> the split it was chosen on; both are recorded in
    ``info`` and the headline.
    """
    from threadpoolctl import threadpool_limits

    chosen = resolve_protocol(protocol, folds=folds, repeats=repeats)
    if not 1 <= models <= len(embeddings):
        raise ValueError(f"models must be between 1 and {len(embeddings)}, got {models}")
    if split is not None and split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    with threadpool_limits(limits=threads):
        run = _run_probes(
            embeddings, targets, seed, chosen, label_sizes, label_targets, progress, models
        )
    run.info["split"] = split
    run.info["choices"] = dict(choices or {})
    return run


def _labelled(target: Target, y: np.ndarray) -> np.ndarray:
    return y >= 0 if target.task == "classification" else ~np.isnan(y)


def _run_probes(
    embeddings, targets, seed, protocol: Protocol, label_sizes, label_targets, progress, models
) -> ProbeRun:
    ids, features, catalogue = load_embedding_sets(embeddings)
    target_list = resolve_targets(targets, catalogue)
    if not target_list:
        raise ValueError("no probe targets: the catalogue has no numeric columns with two values")
    values = {t.name: t.values(catalogue) for t in target_list}
    names = list(features)
    dim = features[names[0]].shape[1]
    reduce = {name: (dim if isinstance(embeddings[name], PixelSource) else None) for name in names}
    strata, strata_name = _strata(target_list, values, protocol.folds)
    plan = fold_plan(ids, protocol, strata, seed)

    # Every set and target scored on every split's test rows: (set, target) -> metrics per split.
    per_split: dict[tuple[str, str], list[dict[str, float]]] = {}
    hypers: dict[tuple[str, str], list[float]] = {}
    reducers = {name: FoldPCA(features[name], reduce[name], seed) for name in names if reduce[name]}
    spread = {
        t.name: float(np.var(values[t.name][_labelled(t, values[t.name])]))
        for t in target_list
        if t.task == "regression"
    }
    for _, train, test in _progress(plan, progress, "probe folds"):
        for name in names:
            x = reducers[name](train) if name in reducers else features[name]
            fitted = fit_predict(x[train], x[test], target_list, values, train, protocol, seed)
            for t in target_list:
                y = values[t.name][test]
                labelled = _labelled(t, y)
                if t.name not in fitted or labelled.sum() < 2:
                    continue
                pred, alpha = fitted[t.name]
                metrics = _metrics(t, y[labelled], pred[labelled])
                if t.task == "regression":
                    metrics["r2"] = split_r2(y[labelled], pred[labelled], spread[t.name])
                per_split.setdefault((name, t.name), []).append(metrics)
                hypers.setdefault((name, t.name), []).append(alpha)

    split_scores: dict[tuple[str, str], np.ndarray] = {}
    records = []
    for t in target_list:
        for name in names:
            got = per_split.get((name, t.name), [])
            if len(got) != len(plan):
                continue  # some split had too few labels to fit or score
            frame = pd.DataFrame(got)
            # Rounded here so a result file's rows recompute its intervals exactly.
            split_scores[name, t.name] = frame[HEADLINE[t.task]].to_numpy().round(SPLIT_DIGITS)
            alpha = hypers[name, t.name]
            for metric in METRICS[t.task]:
                records.append(
                    {"embedding": name, "target": t.name, "task": t.task, "metric": metric,
                     "value": float(frame[metric].mean()),
                     "n": int(_labelled(t, values[t.name]).sum()),
                     "hyper": float(np.nanmedian(alpha)) if np.isfinite(alpha).any() else math.nan}
                )  # fmt: skip
    results = pd.DataFrame.from_records(
        records, columns=["embedding", "target", "task", "metric", "value", "n", "hyper"]
    )
    ratio = float(np.mean([len(test) / len(train) for _, train, test in plan]))
    scores, comparisons = _intervals(split_scores, _levels(target_list), names, ratio, models)
    folds = pd.DataFrame(
        [
            {"id": ids[row], "repeat": repeat, "fold": i % protocol.folds}
            for i, (repeat, _, test) in enumerate(plan)
            for row in test
        ]
    ).sort_values(["repeat", "id"], ignore_index=True)
    curves = _label_efficiency(
        features, reducers, target_list, values, plan[0], protocol, seed, label_sizes,
        _choose_label_targets(label_targets, target_list), progress,
    )  # fmt: skip
    info = {
        "protocol": asdict(protocol),
        "n_galaxies": len(ids),
        "embeddings": names,
        "pca_components": {name: k for name, k in reduce.items() if k is not None},
        "stratified_on": strata_name if protocol.stratified else None,
        "seed": seed,
        "interval": INTERVAL,
        "n_splits": len(plan),
        "test_train_ratio": ratio,
    }
    summary = _wide(scores[scores.level == "target"], names, target_list)
    families = _wide(scores[scores.level == "family"], names, None)
    sizes = pd.DataFrame(
        [{"split": j, "repeat": r, "n_train": len(tr), "n_test": len(te)}
         for j, (r, tr, te) in enumerate(plan)]
    )  # fmt: skip
    long = pd.DataFrame(
        [{"split": j, "embedding": name, "target": target, "value": v}
         for (name, target), values in split_scores.items() for j, v in enumerate(values)],
        columns=["split", "embedding", "target", "value"],
    )  # fmt: skip
    long = sizes.merge(long, on="split")
    return ProbeRun(summary, families, scores, comparisons, results, curves, folds, long, info, {})


def _wide(scores: pd.DataFrame, names: list[str], targets: list[Target] | None) -> pd.DataFrame:
    """One row per target (or family): its metric and each set's score."""
    key = "target" if targets is not None else "family"
    rows = []
    for name, group in scores.groupby("name", sort=False):
        row = {key: name}
        if targets is not None:
            target = next(t for t in targets if t.name == name)
            row.update(family=target.family, task=target.task)
        else:
            row["targets"] = group.targets.iloc[0]
        row["metric"] = group.metric.iloc[0]
        by_set = dict(zip(group.embedding, group.value))
        for emb in names:
            row[emb] = by_set.get(emb, math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc)


def _choose_label_targets(
    label_targets: Sequence[str] | str | None, targets: list[Target]
) -> list[Target]:
    if label_targets == "all":
        return list(targets)
    by_name = {t.name: t for t in targets}
    if label_targets is None:
        chosen = [by_name[n] for n in HEADLINE_TARGETS if n in by_name]
        return chosen or list(targets[:8])
    missing = [n for n in label_targets if n not in by_name]
    if missing:
        raise KeyError(f"label-efficiency targets {missing} are not among the probe targets")
    return [by_name[n] for n in label_targets]


def _label_efficiency(
    features, reducers, targets, values, fold, protocol, seed, sizes, chosen, progress
) -> pd.DataFrame:
    """Headline scores on one fold's test rows against the number of labelled training galaxies.

    Nested subsets (prefixes of one seeded permutation of the fold's training
    rows) for every set; a PCA baseline is fitted on the fold's whole training
    part (it needs no labels) and never on its test rows.
    """
    columns = ["embedding", "target", "task", "metric", "n_labels", "value"]
    if sizes is None or not chosen:
        return pd.DataFrame(columns=columns)
    _, train, test = fold
    order = np.random.default_rng(seed + 1).permutation(len(train))
    train = train[order]
    counts = sorted({len(train) if s is None else min(int(s), len(train)) for s in sizes})
    records = []
    for name in _progress(list(features), progress, "label efficiency"):
        x = reducers[name](np.sort(train)) if name in reducers else features[name]
        for n in counts:
            subset = train[:n]
            fitted = fit_predict(x[subset], x[test], chosen, values, subset, protocol, seed)
            for t in chosen:
                y = values[t.name][test]
                labelled = y >= 0 if t.task == "classification" else ~np.isnan(y)
                value = math.nan
                if t.name in fitted and labelled.any():
                    pred = fitted[t.name][0][labelled]
                    value = _metrics(t, y[labelled], pred)[HEADLINE[t.task]]
                records.append(
                    {"embedding": name, "target": t.name, "task": t.task,
                     "metric": HEADLINE[t.task], "n_labels": n, "value": value}
                )  # fmt: skip
    return pd.DataFrame.from_records(records, columns=columns)


def run_probe_suite(
    embeddings: Mapping[str, object],
    out_dir: str | Path,
    targets: Sequence[str | Target] | None = None,
    seed: int = 0,
    **options,
) -> ProbeRun:
    """Probes, baselines, intervals and label-efficiency curves, written as a report.

    ``embeddings``: name -> export path, ``(ids, features, catalogue)`` or
    :class:`PixelSource` (the first is the model, the rest baselines; ``None``
    entries are skipped). Writes into ``out_dir``: ``report.md`` (family
    headline table with intervals and wins/ties/losses per baseline, per-target
    table, all metrics, curves), ``headline.json`` (the result the README
    table is generated from), ``scores.csv``, ``comparisons.csv``,
    ``probe_results.csv`` (every metric), ``label_efficiency.csv``,
    ``folds.csv`` (the shared folds) and PNG plots. ``options`` go to
    :func:`run_probes`. Returns the :class:`ProbeRun`.
    """
    run = run_probes(embeddings, targets, seed=seed, **options)
    write_report(run, out_dir, embeddings=embeddings)
    return run
