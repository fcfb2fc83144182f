"""Refit-aware intervals: the corrected resampled t of Nadeau & Bengio (2003) over the
splits, Holm's adjustment, and scores and paired differences per target and family."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from astropt.probe.protocol import HEADLINE, LOWER_IS_BETTER, Target, families_of, family_headline


def resampled_t(
    values: np.ndarray, test_train_ratio: float, confidence: float = 0.95
) -> tuple[float, float, float, float]:
    """Nadeau & Bengio's (2003) corrected resampled t interval of a mean over J train/test splits.

    ``values``: ``(J,)`` a score, or a paired difference of two scores, on each
    split; ``test_train_ratio``: ``n_test / n_train`` of a split (``1/(k-1)`` for
    k-fold). The variance of the mean is ``(1/J + n_test/n_train) s^2`` with
    ``s^2`` the sample variance of ``values`` (the second term: the splits share
    most of their training rows, so their scores are correlated), with ``J - 1``
    degrees of freedom. Returns ``(mean, low, high, p)``: the two-sided p-value
    of a zero mean, below ``1 - confidence`` exactly when the interval excludes 0.
    """
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    j = len(values)
    mean = float(values.mean())
    if j < 2:
        return mean, math.nan, math.nan, math.nan
    se = math.sqrt((1.0 / j + test_train_ratio) * values.var(ddof=1))
    if se == 0.0:  # identical on every split (a set against itself)
        return mean, mean, mean, 1.0 if mean == 0.0 else 0.0
    half = float(stats.t.ppf(0.5 + confidence / 2, j - 1)) * se
    p = float(2.0 * stats.t.sf(abs(mean) / se, j - 1))
    return mean, mean - half, mean + half, p


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN): a family of comparisons whose
    adjusted p-values are below 0.05 has at most a 5% chance of any false win or loss."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(len(p), np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def outcome(low: float, high: float) -> str:
    """``"win"`` if the interval lies above zero, ``"loss"`` if below, else ``"tie"``."""
    if low > 0:
        return "win"
    if high < 0:
        return "loss"
    return "tie"


def _levels(targets: list[Target]) -> list[tuple[str, str, str, str, list[str]]]:
    """``(level, name, family, metric, member targets)`` of every target, then every family."""
    levels = [("target", t.name, t.family, HEADLINE[t.task], [t.name]) for t in targets]
    for family, members in families_of(targets).items():
        headline = family_headline(members)
        levels.append(
            ("family", family, family, HEADLINE[headline[0].task], [t.name for t in headline])
        )
    return levels


def _intervals(split_scores, levels, names: list[str], test_train_ratio: float, models: int = 1):
    """Scores and model-vs-baseline improvements with intervals, per target and per family.

    ``split_scores``: ``(set, target) -> (J,)`` headline scores per split;
    ``levels``: :func:`_levels`. A family's per-split score is the mean of its
    members'. Each of the first ``models`` sets is compared with every set after it.
    """
    score_rows, compare_rows = [], []
    for level, name, family, metric, members in levels:
        per_set = {}
        for emb in names:
            got = [split_scores[emb, t] for t in members if (emb, t) in split_scores]
            if len(got) != len(members):
                continue
            per_set[emb] = np.mean(got, axis=0)
            value, low, high, _ = resampled_t(per_set[emb], test_train_ratio)
            score_rows.append(
                {"level": level, "name": name, "family": family, "metric": metric,
                 "targets": ", ".join(members), "embedding": emb,
                 "value": value, "ci_low": low, "ci_high": high}
            )  # fmt: skip
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
        for i, model in enumerate(names[:models]):
            for baseline in names[i + 1 :]:
                if model not in per_set or baseline not in per_set:
                    continue
                diff = sign * (per_set[model] - per_set[baseline])
                value, low, high, p = resampled_t(diff, test_train_ratio)
                compare_rows.append(
                    {"level": level, "name": name, "family": family, "metric": metric,
                     "model": model, "baseline": baseline, "improvement": value,
                     "ci_low": low, "ci_high": high, "p_value": p, "outcome": outcome(low, high)}
                )  # fmt: skip
    score_cols = ["level", "name", "family", "metric", "targets", "embedding"]
    compare_cols = ["level", "name", "family", "metric", "model", "baseline", "improvement"]
    return (
        pd.DataFrame(score_rows, columns=[*score_cols, "value", "ci_low", "ci_high"]),
        pd.DataFrame(
            compare_rows, columns=[*compare_cols, "ci_low", "ci_high", "p_value", "outcome"]
        ),
    )
