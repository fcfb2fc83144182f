"""Figures of a probe run: improvements per family, label-efficiency curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd


def plot_improvements(comparisons: pd.DataFrame, path: str | Path) -> Path:
    """One panel per baseline: the model's improvement per family with its 95% interval."""
    from matplotlib.figure import Figure

    rows = comparisons[comparisons.level == "family"]
    rows = rows[rows.model == rows.model.iloc[0]] if len(rows) else rows  # the first model's
    baselines = list(dict.fromkeys(rows.baseline)) or ["(none)"]
    families = list(dict.fromkeys(rows.name))
    fig = Figure(
        figsize=(3.2 * len(baselines) + 1.5, 0.32 * len(families) + 1.4), layout="constrained"
    )
    axes = np.atleast_1d(fig.subplots(1, len(baselines), sharey=True, squeeze=False)).ravel()
    colours = {"win": "tab:green", "tie": "tab:grey", "loss": "tab:red"}
    positions = {name: i for i, name in enumerate(families)}
    for ax, baseline in zip(axes, baselines):
        sel = rows[rows.baseline == baseline]
        for r in sel.itertuples():
            y = positions[r.name]
            err = [[r.improvement - r.ci_low], [r.ci_high - r.improvement]]
            ax.errorbar(r.improvement, y, xerr=err, fmt="o", ms=3, color=colours[r.outcome])
        ax.axvline(0, color="black", lw=0.6)
        ax.set_title(f"model - {baseline}", fontsize=9)
        ax.set_xlabel("improvement (R^2, bal. acc.; deg for angles)", fontsize=7)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(range(len(families)), families)
    axes[0].invert_yaxis()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_label_efficiency(curves: pd.DataFrame, path: str | Path) -> Path | None:
    """One panel per target: headline metric against the number of labelled galaxies."""
    if curves.empty:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    targets = list(dict.fromkeys(curves.target))
    ncols = min(4, len(targets))
    nrows = math.ceil(len(targets) / ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.8 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, target in zip(axes, targets):
        sel = curves[curves.target == target]
        for name, group in sel.groupby("embedding", sort=False):
            ax.plot(group.n_labels, group.value, marker="o", ms=3, label=name)
        ax.set_xscale("log")
        sizes = sorted(sel.n_labels.unique())
        ax.set_xticks(sizes, [str(int(n)) for n in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())  # log minor labels overlap
        ax.set_title(target, fontsize=9)
        ax.set_xlabel("labelled galaxies", fontsize=8)
        ax.set_ylabel(sel.metric.iloc[0], fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(targets) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return Path(path)
