"""Fitting: the saturating power law with bootstrap intervals, and the fits of a study.

``fit_power_law`` fits ``L(x) = L_inf + A * x**-alpha``; ``fit_study`` fits it in
compute (on the compute-optimal frontier, ``pareto_frontier``), data size and
parameters from the rows of a results file.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("astropt.scaling")


def saturating_power_law(x: np.ndarray, l_inf: float, a: float, alpha: float) -> np.ndarray:
    """``L(x) = l_inf + a * x**-alpha`` (x > 0)."""
    return l_inf + a * np.power(np.asarray(x, dtype=float), -alpha)


@dataclass
class PowerLawFit:
    """A fitted ``L(x) = l_inf + a * x**-alpha`` with bootstrap intervals.

    ``x0`` is the geometric mean of the fitted ``x``; the fit itself works with
    ``b = a * x0**-alpha`` (the excess loss at ``x0``), which stays O(1) where
    ``a`` may be astronomically large (``x`` ~ 1e15 FLOPs).
    """

    l_inf: float
    a: float
    alpha: float
    x0: float
    b: float
    l_inf_ci: tuple[float, float]
    alpha_ci: tuple[float, float]
    ci: float
    n_points: int
    n_boot: int  # bootstrap refits that succeeded (0: no interval)
    rmse: float
    x_range: tuple[float, float]

    def predict(self, x: Iterable[float] | np.ndarray) -> np.ndarray:
        """Loss predicted at ``x`` (same units as the fitted ``x``)."""
        x = np.asarray(x, dtype=float)
        return self.l_inf + self.b * np.exp(-self.alpha * (np.log(x) - math.log(self.x0)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _design(logx_c: np.ndarray, alpha: float) -> np.ndarray:
    return np.exp(-alpha * logx_c)


def _profile_start(
    logx_c: np.ndarray, y: np.ndarray, alpha_max: float
) -> tuple[float, float, float]:
    """Starting point by profiling: for fixed alpha the model is linear in (l_inf, b).

    A grid over alpha with a two-column least squares at each value finds the
    basin of the global optimum, so the non-linear refinement does not depend
    on a lucky initial guess.
    """
    alphas = np.linspace(alpha_max / 400, alpha_max, 400)
    z = np.exp(-alphas[:, None] * logx_c[None, :])  # (grid, n)
    z_mean, y_mean = z.mean(axis=1), y.mean()
    zc = z - z_mean[:, None]
    var = np.einsum("gn,gn->g", zc, zc)
    b = np.where(var > 0, zc @ (y - y_mean) / np.maximum(var, 1e-300), 0.0)
    l_inf = y_mean - b * z_mean
    # Bounds: a rising curve (b < 0) becomes flat at the mean; a negative
    # asymptote becomes 0 with b refitted through the origin.
    flat = b < 0
    b = np.where(flat, 0.0, b)
    l_inf = np.where(flat, y_mean, l_inf)
    neg = l_inf < 0
    b = np.where(neg, (z @ y) / np.einsum("gn,gn->g", z, z), b)
    l_inf = np.where(neg, 0.0, l_inf)
    sse = np.sum((l_inf[:, None] + b[:, None] * z - y[None, :]) ** 2, axis=1)
    g = int(np.argmin(sse))
    return float(l_inf[g]), float(b[g]), float(alphas[g])


def _fit_once(
    logx_c: np.ndarray, y: np.ndarray, alpha_max: float
) -> tuple[float, float, float] | None:
    """Least-squares ``(l_inf, b, alpha)`` for centred log-x; None if it fails."""
    from scipy.optimize import least_squares

    l0, b0, a0 = _profile_start(logx_c, y, alpha_max)

    def residuals(p: np.ndarray) -> np.ndarray:
        return p[0] + p[1] * _design(logx_c, p[2]) - y

    scale = max(float(np.ptp(y)), 1e-12)
    start = np.array([l0, max(b0, 1e-12 * scale), min(max(a0, 1e-6), alpha_max)])
    try:
        res = least_squares(
            residuals,
            start,
            bounds=([0.0, 0.0, 0.0], [np.inf, np.inf, alpha_max]),
            x_scale=[scale, scale, 1.0],
            method="trf",
        )
    except (ValueError, np.linalg.LinAlgError):
        return None
    if not np.all(np.isfinite(res.x)):
        return None
    return float(res.x[0]), float(res.x[1]), float(res.x[2])


def _bootstrap_fits(
    logx_c: np.ndarray,
    y: np.ndarray,
    fitted: np.ndarray,
    n_boot: int,
    bootstrap: str,
    seed: int,
    alpha_max: float,
) -> list[tuple[float, float, float]]:
    """``(l_inf, b, alpha)`` of each bootstrap refit that converged (see :func:`fit_power_law`)."""
    n = y.size
    boots: list[tuple[float, float, float]] = []
    rng = np.random.default_rng(seed)
    # Three distinct x values determine the curve exactly: residuals are then
    # all zero and a bootstrap would report a zero-width interval, so none is given.
    if n_boot <= 0 or n <= 3:
        return boots
    resid = y - fitted
    centred = (resid - resid.mean()) * math.sqrt(n / (n - 3))
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        if bootstrap == "residual":
            sample = _fit_once(logx_c, fitted + centred[idx], alpha_max)
        else:
            if np.unique(logx_c[idx]).size < 3:
                continue
            sample = _fit_once(logx_c[idx], y[idx], alpha_max)
        if sample is not None:
            boots.append(sample)
    return boots


def fit_power_law(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    alpha_max: float = 5.0,
    bootstrap: str = "residual",
) -> PowerLawFit:
    """Fit ``y = l_inf + a * x**-alpha`` by bounded least squares, with bootstrap CIs.

    Args:
        x: positive abscissae (FLOPs, galaxies or parameters), shape (n,).
        y: losses, shape (n,); ``l_inf >= 0`` and ``a >= 0`` (a loss that falls).
        n_boot: bootstrap refits; 0 skips the intervals (returned as NaN).
        ci: central coverage of the percentile intervals.
        seed: bootstrap random seed.
        alpha_max: upper bound on the exponent.
        bootstrap: ``"residual"`` (resample residuals of the fit onto the fitted
            curve, inflated by sqrt(n / (n - 3)) for the three fitted
            parameters: keeps every x, so it works for a handful of points) or
            ``"cases"`` (resample points with replacement; needs more points).

    Returns:
        PowerLawFit with point estimates, percentile intervals on ``alpha`` and
        ``l_inf``, and the RMS residual.
    """
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} vs {y.size}")
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[keep], y[keep]
    if np.unique(x).size < 3:
        raise ValueError(f"need at least 3 distinct x values to fit 3 parameters, got {x.size}")
    if bootstrap not in ("residual", "cases"):
        raise ValueError(f"bootstrap must be 'residual' or 'cases', got {bootstrap!r}")

    logx = np.log(x)
    log_x0 = float(np.mean(logx))
    logx_c = logx - log_x0
    best = _fit_once(logx_c, y, alpha_max)
    if best is None:
        raise RuntimeError("power-law fit failed")
    l_inf, b, alpha = best
    fitted = l_inf + b * _design(logx_c, alpha)
    resid = y - fitted
    n = x.size

    boots = _bootstrap_fits(logx_c, y, fitted, n_boot, bootstrap, seed, alpha_max)
    if boots:
        arr = np.asarray(boots)
        lo, hi = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
        l_inf_ci = tuple(float(v) for v in np.percentile(arr[:, 0], [lo, hi]))
        alpha_ci = tuple(float(v) for v in np.percentile(arr[:, 2], [lo, hi]))
    else:
        l_inf_ci = alpha_ci = (math.nan, math.nan)

    # a = b * x0**alpha in the caller's units; computed in log space to avoid overflow.
    log_a = math.log(b) + alpha * log_x0 if b > 0 else -math.inf
    a = math.exp(log_a) if log_a < 700 else math.inf
    return PowerLawFit(
        l_inf=l_inf,
        a=a,
        alpha=alpha,
        x0=math.exp(log_x0),
        b=b,
        l_inf_ci=l_inf_ci,  # type: ignore[arg-type]
        alpha_ci=alpha_ci,  # type: ignore[arg-type]
        ci=ci,
        n_points=int(n),
        n_boot=len(boots),
        rmse=float(np.sqrt(np.mean(resid**2))),
        x_range=(float(x.min()), float(x.max())),
    )


def pareto_frontier(
    compute: Sequence[float] | np.ndarray, loss: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Indices of the compute-optimal frontier, in increasing compute.

    A point is on the frontier when no point with less or equal compute
    reached a lower loss: the lowest loss reached at each compute over all
    shapes (and, with learning curves, over all steps of all runs).
    """
    c = np.asarray(compute, dtype=float)
    l_ = np.asarray(loss, dtype=float)
    ok = np.flatnonzero(np.isfinite(c) & np.isfinite(l_))
    # Sort by compute, ties by loss, so the best of equal-compute points is seen first.
    order = ok[np.lexsort((l_[ok], c[ok]))]
    keep: list[int] = []
    best = math.inf
    for i in order:
        if l_[i] < best:
            keep.append(int(i))
            best = l_[i]
    return np.asarray(keep, dtype=int)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _loss(row: dict) -> float | None:
    value = row.get("final_val_loss")
    return float(value) if _finite(value) else None


def _fit_or_none(x, y, **kwargs) -> PowerLawFit | None:
    if np.unique(np.asarray(x, dtype=float)).size < 3:
        return None
    try:
        return fit_power_law(x, y, **kwargs)
    except (ValueError, RuntimeError) as err:
        log.warning("fit skipped: %s", err)
        return None


def compute_points(
    rows: Sequence[dict], use_curves: bool = True, curve_from: float = 0.25
) -> list[dict]:
    """(compute, loss) points of the compute sweep: final losses, plus learning curves.

    Learning-curve points count from ``curve_from`` of each run's compute on:
    the first evaluations fall in the warmup, at a learning rate no run of that
    size would end with, and would otherwise set the low end of the frontier.
    """
    points = []
    for row in rows:
        if row.get("sweep", "compute") != "compute" or _loss(row) is None:
            continue
        points.append(
            {"compute": row["compute"], "loss": _loss(row), "rung": row["rung"], "final": True}
        )
        if use_curves:
            for c, loss in row.get("curve") or []:
                # The last evaluation duplicates the final loss.
                early = c < curve_from * row["compute"]
                if not early and c < row["compute"] * (1 - 1e-9) and _finite(loss):
                    points.append({"compute": c, "loss": loss, "rung": row["rung"], "final": False})
    return points


def data_points(
    rows: Sequence[dict], rung: str | None = None, budget: float | None = None
) -> tuple[list[dict], str | None, float | None]:
    """Rows of one data sweep (one rung, one budget), with the full-split run when sized.

    Without ``rung``/``budget``: the sweep with the most runs, ties going to
    the larger budget (more epochs over small subsets: more data-limited).
    """
    sweep = [
        r
        for r in rows
        if r.get("sweep") == "data"
        and _loss(r) is not None
        and (rung is None or r["rung"] == rung)
        and (budget is None or float(r["budget_flops"]) == float(budget))
    ]
    if not sweep:
        return [], None, None
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in sweep:
        groups.setdefault((r["rung"], float(r["budget_flops"])), []).append(r)
    (rung, budget), members = max(groups.items(), key=lambda kv: (len(kv[1]), kv[0][1]))
    for r in rows:
        if (
            r.get("sweep", "compute") == "compute"
            and r["rung"] == rung
            and float(r["budget_flops"]) == budget
            and _finite(r.get("train_galaxies"))
            and _loss(r) is not None
        ):
            members = [*members, r]
    pts = [
        {"galaxies": float(r.get("train_galaxies") or r["data_size"]), "loss": _loss(r)}
        for r in members
    ]
    return sorted(pts, key=lambda p: p["galaxies"]), rung, budget


def fit_study(
    rows: Sequence[dict],
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    use_curves: bool = True,
    curve_from: float = 0.25,
    data_rung: str | None = None,
    data_budget: float | None = None,
) -> dict:
    """Fit L(C) on the compute-optimal frontier, L(D) on the data sweep, L(N) per shape.

    The frontier is the Pareto set of final losses and (with ``use_curves``)
    learning-curve points from ``curve_from`` of each run on, at compute no
    smaller than the smallest finished run's.
    L(N) compares the shapes at the largest budget every shape reached. A law with fewer than three distinct
    x values is not fitted (None); with exactly three it is fitted without
    an interval.
    """
    kw = {"n_boot": n_boot, "ci": ci, "seed": seed}
    return {
        "n_runs": len(rows),
        "compute": _fit_compute(rows, use_curves, curve_from, kw),
        "data": _fit_data(rows, data_rung, data_budget, kw),
        "params": _fit_params(rows, kw),
        "probe": [
            {
                "rung": r["rung"],
                "n_params": r["n_params"],
                "budget_flops": r["budget_flops"],
                "probe_score": r["probe_score"],
                "probe": r.get("probe"),
            }
            for r in rows
            if r.get("sweep", "compute") == "compute" and _finite(r.get("probe_score"))
        ],
    }


def _fit_compute(rows: Sequence[dict], use_curves: bool, curve_from: float, kw: dict) -> dict:
    """L(C) on the compute-optimal frontier."""
    pts = compute_points(rows, use_curves, curve_from)
    # Below the smallest budget the frontier would be made only of early
    # evaluations of bigger runs: it starts at the smallest finished run.
    finals = [p["compute"] for p in pts if p["final"]]
    c_min = min(finals) * (1 - 1e-9) if finals else 0.0
    pts = [p for p in pts if p["compute"] >= c_min]
    frontier = [
        pts[i] for i in pareto_frontier([p["compute"] for p in pts], [p["loss"] for p in pts])
    ]
    fit_c = _fit_or_none([p["compute"] for p in frontier], [p["loss"] for p in frontier], **kw)
    return {
        "fit": fit_c.to_dict() if fit_c else None,
        "frontier": frontier,
        "points": len(pts),
        "use_curves": use_curves,
        "curve_from": curve_from,
    }


def _fit_data(
    rows: Sequence[dict], data_rung: str | None, data_budget: float | None, kw: dict
) -> dict:
    """L(D) on one data sweep."""
    dpts, d_rung, d_budget = data_points(rows, data_rung, data_budget)
    fit_d = _fit_or_none([p["galaxies"] for p in dpts], [p["loss"] for p in dpts], **kw)
    return {
        "fit": fit_d.to_dict() if fit_d else None,
        "points": dpts,
        "rung": d_rung,
        "budget_flops": d_budget,
    }


def _fit_params(rows: Sequence[dict], kw: dict) -> dict:
    """L(N): each shape at the largest budget every shape reached.

    The shapes are compared at equal compute: a shape trained only at a bigger
    budget would otherwise look better for its compute, not its size.
    """
    compute_rows = [r for r in rows if r.get("sweep", "compute") == "compute" and _loss(r)]
    by_rung: dict[str, dict[float, dict]] = {}
    for r in compute_rows:
        by_rung.setdefault(r["rung"], {})[float(r["budget_flops"])] = r
    common = set.intersection(*(set(b) for b in by_rung.values())) if by_rung else set()
    npts: list[dict] = []
    note = None
    if common:
        budget_n = max(common)
        npts = sorted(
            (
                {
                    "rung": k,
                    "n_params": v[budget_n]["n_params"],
                    "loss": _loss(v[budget_n]),
                    "compute": v[budget_n]["compute"],
                }
                for k, v in by_rung.items()
            ),
            key=lambda p: p["n_params"],
        )
    else:
        budget_n = None
        note = "no budget shared by every shape"
    fit_n = None
    if len(npts) >= 3 and npts[-1]["loss"] >= npts[0]["loss"]:
        # A law that falls with N cannot describe a loss that rises with N:
        # at these budgets the smaller shapes win (compute-limited, not size-limited).
        note = "loss rises with N at this budget (compute-limited)"
    elif npts:
        fit_n = _fit_or_none([p["n_params"] for p in npts], [p["loss"] for p in npts], **kw)
    return {
        "fit": fit_n.to_dict() if fit_n else None,
        "points": npts,
        "budget_flops": budget_n,
        "note": note,
    }


def format_report(fit: dict) -> str:
    """Markdown table of the fitted laws (for the README)."""

    def interval(lo: float, hi: float) -> str:
        return "n/a" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{lo:.3g}, {hi:.3g}]"

    lines = [
        "| law | x | alpha | alpha CI | L_inf | L_inf CI | points | x range |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, x_name in (("compute", "FLOPs"), ("data", "galaxies"), ("params", "parameters")):
        f = fit[key]["fit"]
        if f is None:
            why = fit[key].get("note") or "fewer than 3 x values"
            lines.append(f"| L({key}) | {x_name} | not fitted: {why} ||||||")
            continue
        ci = f"{round(100 * f['ci'])}%"
        lines.append(
            f"| L({key}) | {x_name} | {f['alpha']:.3f} | {ci} {interval(*f['alpha_ci'])} "
            f"| {f['l_inf']:.4f} | {ci} {interval(*f['l_inf_ci'])} | {f['n_points']} "
            f"| {f['x_range'][0]:.3g} to {f['x_range'][1]:.3g} |"
        )
    return "\n".join(lines)
