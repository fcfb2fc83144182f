"""The figures of a study: loss against compute, data and parameters; probes."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from astropt.scaling.fit import PowerLawFit, _loss
from astropt.scaling.ladder import format_flops


def _fit_label(f: dict | None) -> str:
    if f is None:
        return "no fit"
    lo, hi = f["alpha_ci"]
    ci = f" [{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) else ""
    return f"fit: alpha={f['alpha']:.3f}{ci}, L_inf={f['l_inf']:.3f}"


def _draw_fit(ax, f: dict | None, x_lo: float, x_hi: float) -> None:
    if f is None:
        return
    fit = PowerLawFit(**{**f, "l_inf_ci": tuple(f["l_inf_ci"]), "alpha_ci": tuple(f["alpha_ci"])})
    xs = np.logspace(math.log10(x_lo), math.log10(x_hi), 200)
    ax.plot(xs, fit.predict(xs), "k--", lw=1.5, label=_fit_label(f))


def plot_study(rows: Sequence[dict], fit: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write the study's figures as PNGs; return their paths.

    ``loss_vs_compute.png`` (learning curves, final losses, frontier, fit),
    ``loss_vs_data.png``, ``loss_vs_params.png`` and, when runs were probed,
    ``probe_vs_params.png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    compute_rows = [r for r in rows if r.get("sweep", "compute") == "compute" and _loss(r)]
    figures = {"loss_vs_compute.png": _loss_vs_compute(plt, rows, compute_rows, fit)}
    if fit["data"]["points"]:
        figures["loss_vs_data.png"] = _loss_vs_data(plt, fit)
    if fit["params"]["points"]:
        figures["loss_vs_params.png"] = _loss_vs_params(plt, compute_rows, fit)
    if fit["probe"]:
        figures["probe_vs_params.png"] = _probe_vs_params(plt, fit)
    written = []
    for name, fig in figures.items():
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def _loss_vs_compute(plt, rows: Sequence[dict], compute_rows: list[dict], fit: dict):
    """Learning curves and final losses per shape, the compute-optimal frontier, L(C)."""
    rung_params = {r["rung"]: r["n_params"] for r in rows}
    rungs = sorted(rung_params, key=rung_params.get)
    colours = {
        name: plt.get_cmap("viridis")(i / max(1, len(rungs) - 1)) for i, name in enumerate(rungs)
    }
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    labelled = set()
    for r in compute_rows:
        colour = colours[r["rung"]]
        label = None
        if r["rung"] not in labelled:
            label = f"{r['rung']} ({r['n_params'] / 1e6:.2g}M)"
            labelled.add(r["rung"])
        curve = np.asarray(r.get("curve") or [], dtype=float)
        if fit["compute"]["use_curves"] and curve.size:
            ax.plot(curve[:, 0], curve[:, 1], "-", color=colour, alpha=0.35, lw=1)
        ax.plot(r["compute"], _loss(r), "o", color=colour, label=label, ms=5)
    frontier = fit["compute"]["frontier"]
    if frontier:
        fc = [p["compute"] for p in frontier]
        ax.plot(
            fc,
            [p["loss"] for p in frontier],
            "o",
            mfc="none",
            mec="red",
            ms=9,
            label="compute-optimal frontier",
        )
        _draw_fit(ax, fit["compute"]["fit"], min(fc), max(fc) * 3)
    ax.set(
        xscale="log",
        xlabel="training compute C (FLOPs)",
        ylabel="validation loss (Huber)",
        title="Loss against compute",
    )
    ax.legend(fontsize=7)
    return fig


def _loss_vs_data(plt, fit: dict):
    """Final losses of the data sweep and L(D)."""
    dpts = fit["data"]["points"]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    dx = [p["galaxies"] for p in dpts]
    ax.plot(dx, [p["loss"] for p in dpts], "o", ms=6, label="final validation loss")
    _draw_fit(ax, fit["data"]["fit"], min(dx), max(dx) * 2)
    ax.set(
        xscale="log",
        xlabel="training galaxies D",
        ylabel="validation loss (Huber)",
        title=f"Loss against data ({fit['data']['rung']}, "
        f"C={format_flops(fit['data']['budget_flops'])} FLOPs)",
    )
    ax.legend(fontsize=7)
    return fig


def _loss_vs_params(plt, compute_rows: list[dict], fit: dict):
    """Loss against parameters at each budget, the shapes compared at one budget, L(N)."""
    npts = fit["params"]["points"]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    nx = [p["n_params"] for p in npts]
    for budget in sorted({r["budget_flops"] for r in compute_rows}):
        sel = sorted(
            (r for r in compute_rows if r["budget_flops"] == budget),
            key=lambda r: r["n_params"],
        )
        ax.plot(
            [r["n_params"] for r in sel],
            [_loss(r) for r in sel],
            ".-",
            alpha=0.6,
            label=f"C={format_flops(budget)}",
        )
    shared = fit["params"]["budget_flops"]
    ax.plot(
        nx,
        [p["loss"] for p in npts],
        "ks",
        mfc="none",
        ms=8,
        label=f"compared at C={format_flops(shared)}",
    )
    _draw_fit(ax, fit["params"]["fit"], min(nx), max(nx) * 2)
    title = "Loss against parameters"
    if fit["params"]["fit"] is None and fit["params"].get("note"):
        title += f"\n(not fitted: {fit['params']['note']})"
    ax.set(
        xscale="log",
        xlabel="parameters N (without positions)",
        ylabel="validation loss (Huber)",
        title=title,
    )
    ax.legend(fontsize=7)
    return fig


def _probe_vs_params(plt, fit: dict):
    """Mean probe score against parameters, one line per budget."""
    probes = fit["probe"]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for budget in sorted({p["budget_flops"] for p in probes}):
        sel = sorted(
            (p for p in probes if p["budget_flops"] == budget), key=lambda p: p["n_params"]
        )
        ax.plot(
            [p["n_params"] for p in sel],
            [p["probe_score"] for p in sel],
            "o-",
            label=f"C={format_flops(budget)}",
        )
    ax.set(
        xscale="log",
        xlabel="parameters N (without positions)",
        ylabel="mean probe score",
        title="Probe quality against parameters",
    )
    ax.legend(fontsize=7)
    return fig
