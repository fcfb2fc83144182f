"""Test-split scores of a finetuned model, the confusion matrix figure, intervals over seeds.

Scores are those of the probe suite (:mod:`astropt.probe`: accuracy, balanced
accuracy, macro F1; R^2, NMAD, MAE, Spearman) so a finetune and a linear probe
are compared on the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astropt.probe import classification_metrics, regression_metrics

#: The score each head is judged by (higher is better for every one of them).
HEADLINE = {"classification": "balanced_accuracy", "regression": "r2", "votes": "r2"}


def score(
    kind: str,
    labels: np.ndarray,
    predictions: np.ndarray,
    targets: list[str],
    vote_groups: list[int] | None = None,
) -> dict:
    """Test scores: ``labels`` as trained on (class indices, values in target units, or vote
    counts), ``predictions`` from :meth:`FinetunedGPT.predict`. Votes are scored as each
    answer's fraction over the galaxies whose question (``vote_groups``) had votes."""
    if kind == "classification":
        predicted = predictions.argmax(1)
        out = classification_metrics(labels, predicted)
        out["n"] = len(labels)
        return out
    if kind == "votes":
        return _per_column(*vote_fractions(labels, vote_groups), predictions, targets)
    return _per_column(labels, None, predictions, targets)


def vote_fractions(counts: np.ndarray, groups: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(fractions, answered)``, both ``(n, A)``: each answer's share of its question's votes,
    and whether that question had any vote (an unasked question has no fraction to score)."""
    counts = np.asarray(counts, dtype=np.float64).reshape(len(counts), -1)
    fractions = np.zeros_like(counts)
    answered = np.zeros(counts.shape, dtype=bool)
    start = 0
    for size in groups or [counts.shape[1]]:
        block = counts[:, start : start + size]
        total = block.sum(1, keepdims=True)
        fractions[:, start : start + size] = block / np.maximum(total, 1)
        answered[:, start : start + size] = total > 0
        start += size
    return fractions, answered


def _per_column(
    labels: np.ndarray,
    valid: np.ndarray | None,
    predictions: np.ndarray,
    targets: list[str],
) -> dict:
    labels = labels.reshape(len(labels), -1)
    predictions = predictions.reshape(len(predictions), -1)
    if valid is None:
        valid = np.ones(labels.shape, dtype=bool)
    columns = {
        name: regression_metrics(labels[valid[:, j], j], predictions[valid[:, j], j])
        for j, name in enumerate(targets)
    }
    out: dict = {"n": len(labels)}
    for metric in ("r2", "nmad", "mae", "spearman"):
        out[metric] = float(np.mean([c[metric] for c in columns.values()]))
    if len(columns) > 1:
        out["per_target"] = columns
    return out


def confusion(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """``(K, K)`` counts: row = true class, column = predicted class."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, predicted, labels=list(range(n_classes)))


def plot_confusion(
    matrix: np.ndarray, class_names: list[str], path: str | Path, title: str = ""
) -> Path:
    """Row-normalised confusion matrix PNG (each cell annotated with its share and count)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from astropt.io import save_figure

    rows = matrix.sum(1, keepdims=True)
    shares = matrix / np.maximum(rows, 1)
    k = len(class_names)
    side = max(4.0, 0.6 * k + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i in range(k):
        for j in range(k):
            if matrix[i, j]:
                colour = "white" if shares[i, j] > 0.5 else "black"
                ax.text(j, i, f"{shares[i, j]:.2f}\n{matrix[i, j]}", ha="center", va="center",
                        fontsize=6, color=colour)  # fmt: skip
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student-t interval of the mean of ``values`` (over seeds).

    One value gives an infinite interval (no spread to estimate).
    """
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, -np.inf, np.inf
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1)
    half /= np.sqrt(len(values))
    return mean, mean - half, mean + half
