"""Scaling study: loss and probe quality against compute, data and parameters.

Three commands:

* ``run``: train every rung of a *ladder* of model shapes for every compute
  budget (FLOPs), plus a sweep over the number of training galaxies, appending
  one JSON row per finished run to a results file (with ``--probe``, the
  run's linear-probe scores too). Finished runs (rows already in the file) are
  skipped and an interrupted run continues from its checkpoint, so a study
  resumes where it stopped. Under ``torchrun`` rank 0 alone writes.
* ``probe``: add probe scores to finished runs afterwards.
* ``fit``: fit the saturating power law ``L(x) = L_inf + A * x**-alpha`` in
  compute ``C`` (on the compute-optimal frontier), data size ``D`` and
  parameters ``N``, with bootstrap confidence intervals on ``alpha`` and
  ``L_inf``, and draw the figures.

Command lines::

    python -m astropt.scaling run --ladder configs/scaling/cpu --out runs/scaling/cpu \
        --rungs w32-l2,w64-l3 --budgets 1e10,1e11 --probe compute data.path=SURVEY
    torchrun --nproc_per_node=8 -m astropt.scaling run --ladder configs/scaling/astropt
    python -m astropt.scaling probe runs/scaling/cpu/results.jsonl
    python -m astropt.scaling fit runs/scaling/cpu/results.jsonl --out docs/scaling

Do not run ``probe`` while a ``run`` appends to the same results file.

A ladder is one TOML file (``configs/scaling/cpu.toml``; ``--ladder`` accepts
the path with or without ``.toml``)::

    base = "../quickstart.toml"        # optional run config, relative to this file
    overrides = ["data.image_size=64"] # key=value for every run
    budgets = [1e11, 3e11, 1e12]       # FLOPs; the command line may replace them
    data_sizes = [250, 500, 1000]      # training galaxies of the data sweep
    data_rung = "w64-l4"               # shape (and `data_budget`) of the data sweep
    data_budget = 1e12
    evals_per_run = 8                  # validation points per run (learning curves)
    warmup_frac = 0.05                 # warmup as a fraction of each run's steps
    min_steps = 1                      # skip (rung, budget) pairs outside these step counts
    max_steps = 100000

    [[rungs]]
    name = "w64-l4"
    overrides = ["model.n_layer=4", "model.n_embd=64", "model.n_head=4"]

    [[rungs]]
    name = "astropt-095M"
    config = "../astropt-095M.toml"    # a rung may point at its own run config

Each run's config is the rung's (or ``base``) file, then the ladder's
overrides, the rung's, the command line's, then what the study sets:
``out_dir=OUT/RUN_ID``, ``seed``, ``max_iters`` (budget / FLOPs per step),
``eval_interval``, ``optim.warmup_iters``, ``optim.decay_iters=none`` (the
cosine ends with the run), ``train_samples`` (data sweep) and ``resume=true``
(an interrupted run continues from its last checkpoint).

Units: compute in training FLOPs (forward + backward, the model's
``flops_per_token(seq_len)`` estimate times tokens processed), data size in
galaxies, parameters without the positional table.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

log = logging.getLogger("astropt.scaling")

# ======================================================================
# Fitting
# ======================================================================


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

    boots: list[tuple[float, float, float]] = []
    rng = np.random.default_rng(seed)
    # Three distinct x values determine the curve exactly: residuals are then
    # all zero and a bootstrap would report a zero-width interval, so none is given.
    if n_boot > 0 and n > 3:
        inflate = math.sqrt(n / (n - 3))
        centred = (resid - resid.mean()) * inflate
        for _ in range(n_boot):
            if bootstrap == "residual":
                idx = rng.integers(0, n, n)
                sample = _fit_once(logx_c, fitted + centred[idx], alpha_max)
            else:
                idx = rng.integers(0, n, n)
                if np.unique(x[idx]).size < 3:
                    continue
                sample = _fit_once(logx_c[idx], y[idx], alpha_max)
            if sample is not None:
                boots.append(sample)
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


# ======================================================================
# Ladders and run plans
# ======================================================================


@dataclass
class Rung:
    """One model shape: a run config (or the ladder's base) plus overrides."""

    name: str
    config: Path | None = None  # run-config TOML; None: the ladder's `base`
    overrides: list[str] = field(default_factory=list)


@dataclass
class Ladder:
    """A ladder of model shapes and the default grid of a study (see module doc)."""

    path: Path
    name: str
    rungs: list[Rung]
    base: Path | None = None
    overrides: list[str] = field(default_factory=list)
    budgets: list[float] = field(default_factory=list)  # training FLOPs
    data_sizes: list[int] = field(default_factory=list)  # training galaxies
    data_rung: str | None = None  # shape of the data sweep (default: middle rung)
    data_budget: float | None = None  # its budget (default: largest budget)
    evals_per_run: int = 8  # validation points per run (learning curves for the frontier)
    warmup_frac: float | None = 0.05  # optim.warmup_iters as a fraction of max_iters; None: keep
    # Compute sweep only: skip a (rung, budget) with fewer steps (the shape is too
    # big for the budget) or more (too small to matter at that budget).
    min_steps: int = 1
    max_steps: int | None = None
    seed: int = 0

    def rung(self, name: str) -> Rung:
        for r in self.rungs:
            if r.name == name:
                return r
        raise KeyError(_unknown_message("rung", name, [r.name for r in self.rungs]))


_LADDER_KEYS = {
    "name",
    "base",
    "overrides",
    "budgets",
    "data_sizes",
    "data_rung",
    "data_budget",
    "evals_per_run",
    "warmup_frac",
    "min_steps",
    "max_steps",
    "seed",
    "rungs",
}
_RUNG_KEYS = {"name", "config", "overrides"}


def _unknown_message(what: str, key: str, valid: Iterable[str]) -> str:
    near = difflib.get_close_matches(key, list(valid), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"unknown {what} {key!r}{hint}; valid: {', '.join(sorted(valid))}"


def resolve_ladder_path(path: str | os.PathLike) -> Path:
    """``configs/scaling/cpu`` -> ``configs/scaling/cpu.toml`` when only the latter exists."""
    p = Path(path)
    if p.is_file():
        return p
    if p.suffix != ".toml" and p.with_suffix(".toml").is_file():
        return p.with_suffix(".toml")
    if p.is_dir() and (p / "ladder.toml").is_file():
        return p / "ladder.toml"
    raise FileNotFoundError(f"no ladder at {p} (nor {p}.toml)")


def load_ladder(path: str | os.PathLike) -> Ladder:
    """Read a ladder TOML; unknown keys are errors naming the nearest valid key."""
    p = resolve_ladder_path(path)
    with open(p, "rb") as fh:
        raw = tomllib.load(fh)
    for key in raw:
        if key not in _LADDER_KEYS:
            raise ValueError(f"{p}: " + _unknown_message("ladder key", key, _LADDER_KEYS))

    def rel(value: str | None) -> Path | None:
        # Paths in a ladder are relative to the ladder file, so it works from any cwd.
        return None if value is None else (p.parent / value).resolve()

    rungs = []
    for i, entry in enumerate(raw.get("rungs", [])):
        for key in entry:
            if key not in _RUNG_KEYS:
                raise ValueError(f"{p}: rung {i}: " + _unknown_message("rung key", key, _RUNG_KEYS))
        if "name" not in entry:
            raise ValueError(f"{p}: rung {i} has no name")
        rungs.append(
            Rung(entry["name"], rel(entry.get("config")), list(entry.get("overrides", [])))
        )
    if not rungs:
        raise ValueError(f"{p}: a ladder needs at least one [[rungs]] entry")
    names = [r.name for r in rungs]
    if len(set(names)) != len(names):
        raise ValueError(f"{p}: duplicate rung names in {names}")
    base = rel(raw.get("base"))
    ladder = Ladder(
        path=p,
        name=raw.get("name", p.stem),
        rungs=rungs,
        base=base,
        overrides=list(raw.get("overrides", [])),
        budgets=[float(b) for b in raw.get("budgets", [])],
        data_sizes=[int(d) for d in raw.get("data_sizes", [])],
        data_rung=raw.get("data_rung"),
        data_budget=None if raw.get("data_budget") is None else float(raw["data_budget"]),
        evals_per_run=int(raw.get("evals_per_run", 8)),
        min_steps=int(raw.get("min_steps", 1)),
        max_steps=None if raw.get("max_steps") is None else int(raw["max_steps"]),
        warmup_frac=None
        if raw.get("warmup_frac", 0.05) is None
        else float(raw.get("warmup_frac", 0.05)),
        seed=int(raw.get("seed", 0)),
    )
    if ladder.data_rung is not None:
        ladder.rung(ladder.data_rung)  # raises with a hint when misspelt
    return ladder


@dataclass
class RunSpec:
    """One training run of a study."""

    run_id: str  # key in the results file; also the run folder name
    rung: Rung
    budget: float  # training FLOPs
    data_size: int | None  # training galaxies; None: the whole training split
    seed: int
    sweep: str  # "compute" (every rung x budget) or "data" (one rung, one budget, sizes)


def format_flops(x: float) -> str:
    """Compact, filename-safe FLOPs: 3e11 -> "3e11", 2.5e12 -> "2.5e12"."""
    text = f"{x:.3g}"
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"


def make_run_id(rung: str, budget: float, data_size: int | None, seed: int) -> str:
    return f"{rung}_C{format_flops(budget)}_D{'all' if data_size is None else data_size}_s{seed}"


def plan_runs(
    ladder: Ladder,
    budgets: Sequence[float] | None = None,
    data_sizes: Sequence[int] | None = None,
    *,
    data_rung: str | None = None,
    data_budget: float | None = None,
    seeds: Sequence[int] | None = None,
    rungs: Sequence[str] | None = None,
) -> list[RunSpec]:
    """The runs of a study, in the order they are trained.

    Compute sweep: every rung x every budget on the whole training split.
    Data sweep: ``data_rung`` at ``data_budget`` for every data size (the
    compute-sweep run of that rung and budget is its "all galaxies" point).
    Smallest compute first, so an interrupted study already has a usable fit.
    """
    budgets = sorted(ladder.budgets if budgets is None else budgets)
    data_sizes = sorted(ladder.data_sizes if data_sizes is None else data_sizes)
    seeds = [ladder.seed] if seeds is None else list(seeds)
    chosen = ladder.rungs if rungs is None else [ladder.rung(n) for n in rungs]
    specs: list[RunSpec] = []
    for seed in seeds:
        for budget in budgets:
            for rung in chosen:
                rid = make_run_id(rung.name, budget, None, seed)
                specs.append(RunSpec(rid, rung, budget, None, seed, "compute"))
        if data_sizes:
            d_rung = ladder.rung(data_rung or ladder.data_rung or chosen[len(chosen) // 2].name)
            d_budget = data_budget or ladder.data_budget or (max(budgets) if budgets else None)
            if d_budget is None:
                raise ValueError(
                    "the data sweep needs a budget (--data-budget or ladder data_budget)"
                )
            for size in data_sizes:
                rid = make_run_id(d_rung.name, d_budget, size, seed)
                specs.append(RunSpec(rid, d_rung, d_budget, size, seed, "data"))
    return specs


# ======================================================================
# Results file
# ======================================================================


def read_results(path: str | os.PathLike) -> list[dict]:
    """Rows of a results JSONL file (missing file: no rows).

    A last line cut short by a crash mid-write is ignored with a warning; a
    bad line elsewhere is an error naming the file and line.
    """
    p = Path(path)
    if not p.exists():
        return []
    lines = p.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                log.warning("%s: ignoring truncated last line %d (%s)", p, i + 1, err)
                continue
            raise ValueError(f"{p}:{i + 1}: not a JSON row: {err}") from err
    return rows


def append_result(path: str | os.PathLike, row: dict) -> None:
    """Append one row as a single line, flushed to disk before returning."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, default=_json_default, allow_nan=True) + "\n"
    if p.exists() and p.stat().st_size > 0:
        data = p.read_bytes()
        if not data.endswith(b"\n"):
            # A crash mid-append left a partial row: drop it (its run has no
            # result, so it is trained again) rather than bury it mid-file.
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping a partial last line (%d bytes)", p, len(data) - keep)
            with open(p, "r+b") as fh:
                fh.truncate(keep)
    with open(p, "a") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return str(obj)


# ======================================================================
# Running a study
# ======================================================================

TrainFn = Callable[[Any], dict]
ProbeFn = Callable[[Path, Any], dict]
LoadConfigFn = Callable[[Any, list[str]], Any]


def _dist_info() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment (1 process without it)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _gpt_config(cfg: Any):
    """The GPTConfig of a run config (its ``model`` section)."""
    from astropt.model import GPTConfig

    model = cfg.model
    if isinstance(model, GPTConfig):
        return model
    values = dataclasses.asdict(model) if dataclasses.is_dataclass(model) else dict(model)
    known = {f.name for f in dataclasses.fields(GPTConfig)}
    return GPTConfig(**{k: v for k, v in values.items() if k in known})


def _image_size(cfg: Any) -> int:
    """Side in pixels of the images a run trains on (the crop, else the survey's)."""
    data = cfg.data
    if getattr(data, "image_size", None):
        return int(data.image_size)
    survey = Path(getattr(data, "path", "") or "") / "survey.json"
    if survey.is_file():
        return int(json.loads(survey.read_text())["image_size"])
    raise ValueError(
        "cannot tell the image size of this run: set data.image_size in the ladder's overrides"
    )


@dataclass
class RunGeometry:
    """What turns a FLOPs budget into steps."""

    n_params: int  # without the positional table
    seq_len: int  # tokens the model processes per galaxy
    flops_per_token: float  # training FLOPs (forward + backward)
    tokens_per_step: int  # seq_len x galaxies per optimiser step over all ranks

    @property
    def flops_per_step(self) -> float:
        return self.flops_per_token * self.tokens_per_step


def run_geometry(cfg: Any, world_size: int = 1) -> RunGeometry:
    """Parameters, sequence length and FLOPs per step of a run config.

    The model is built on the ``meta`` device: counting a 2.1B-parameter
    model's weights must not allocate them.
    """
    import torch

    from astropt.model import GPT

    gcfg = _gpt_config(cfg)
    n_tokens = (_image_size(cfg) // gcfg.patch_size) ** 2
    # The autoregressive objective feeds tokens[:, :-1]; a masked autoencoder all N.
    seq_len = n_tokens - 1 if gcfg.objective == "ar" else n_tokens
    with torch.device("meta"):
        model = GPT(gcfg)
    # `grad_accum` counts micro-batches per optimiser step over all processes
    # (astropt.config; training insists it is a multiple of the world size).
    grad_accum = int(getattr(cfg, "grad_accum", 1))
    if grad_accum % world_size:
        raise ValueError(
            f"grad_accum={grad_accum} is not a multiple of the {world_size} processes: it counts "
            f"micro-batches per step over all of them; pass grad_accum={world_size * max(1, grad_accum // world_size)}"
        )
    galaxies_per_step = int(cfg.batch_size) * grad_accum
    return RunGeometry(
        n_params=model.num_params(exclude_positions=True),
        seq_len=seq_len,
        flops_per_token=float(model.flops_per_token(seq_len)),
        tokens_per_step=galaxies_per_step * seq_len,
    )


#: Run-config key that limits the number of training galaxies (the first N of the split).
DATA_SIZE_KEY = "train_samples"


def read_curve(run_dir: Path, flops_per_step: float) -> list[list[float]]:
    """``[[compute, val_loss], ...]`` from a run's ``metrics.jsonl`` evaluation rows.

    Compute is the row's ``flops`` (counted by the training loop), else step x
    ``flops_per_step``. The step-0 evaluation (no compute) is left out.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    curve = []
    for row in read_results(path):
        loss = row.get("val_loss")
        step = row.get("step")
        if loss is None or not step:
            continue
        flops = row.get("flops") or float(step) * flops_per_step
        curve.append([float(flops), float(loss)])
    return curve


def train_split_size(cfg: Any) -> int | None:
    """Galaxies in the run's training split (after ``train_samples``), when knowable cheaply."""
    limit = getattr(cfg, DATA_SIZE_KEY, None)
    data = cfg.data
    total = None
    if getattr(data, "source", None) == "synthetic" and not getattr(data, "path", ""):
        n = data.synthetic_n
        total = n - round(n * data.synthetic_val_fraction) - round(n * data.synthetic_test_fraction)
    elif getattr(data, "path", ""):
        survey = Path(data.path) / "survey.json"
        if survey.is_file():
            info = json.loads(survey.read_text())
            sizes = info.get("splits") or info.get("split_sizes") or {}
            total = sizes.get("train") if isinstance(sizes, dict) else None
    if total is None:
        return limit
    return total if limit is None else min(total, int(limit))


def build_run(
    spec: RunSpec,
    ladder: Ladder,
    out_root: Path,
    *,
    overrides: Sequence[str] = (),
    world_size: int = 1,
    load_config_fn: LoadConfigFn | None = None,
) -> tuple[Any, RunGeometry, int]:
    """The run config of ``spec``: its budget turned into ``max_iters``.

    Returns (config, geometry, max_iters). ``max_iters`` is the budget over
    FLOPs per step, rounded (at least 1), so the compute actually spent,
    recorded in the results, is within half a step of the budget.
    """
    if load_config_fn is None:
        from astropt.config import load_config as load_config_fn
    run_dir = Path(out_root) / spec.run_id
    common = [
        *ladder.overrides,
        *spec.rung.overrides,
        *overrides,
        f"out_dir={run_dir}",
        f"seed={spec.seed}",
    ]
    if spec.data_size is not None:
        common.append(f"{DATA_SIZE_KEY}={spec.data_size}")
    source = spec.rung.config or ladder.base
    cfg = load_config_fn(None if source is None else str(source), common)
    geom = run_geometry(cfg, world_size)
    max_iters = max(1, round(spec.budget / geom.flops_per_step))
    eval_interval = max(1, max_iters // max(1, ladder.evals_per_run))
    sized = [*common, f"max_iters={max_iters}", f"eval_interval={eval_interval}"]
    if ladder.warmup_frac is not None:
        # A fixed warmup (AstroPT's 2000 steps) would be most of a small budget:
        # scale it with the run, as the cosine decay already is (decay_iters = max_iters).
        sized.append(f"optim.warmup_iters={round(ladder.warmup_frac * max_iters)}")
    # The cosine ends with the run (Chinchilla): a run config's fixed decay_iters
    # (AstroPT's 29700) would leave a short run at peak learning rate.
    sized.append("optim.decay_iters=none")
    # A run folder without a result row is an interrupted run: continue it (with
    # no checkpoint there, training starts from scratch).
    sized.append("resume=true")
    cfg = load_config_fn(None if source is None else str(source), sized)
    return cfg, geom, max_iters


def run_study(
    ladder: Ladder,
    out_root: str | os.PathLike,
    *,
    budgets: Sequence[float] | None = None,
    data_sizes: Sequence[int] | None = None,
    data_rung: str | None = None,
    data_budget: float | None = None,
    seeds: Sequence[int] | None = None,
    rungs: Sequence[str] | None = None,
    results: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    probe: bool | str = False,
    dry_run: bool = False,
    train_fn: TrainFn | None = None,
    probe_fn: ProbeFn | None = None,
    load_config_fn: LoadConfigFn | None = None,
) -> list[dict]:
    """Train every planned run that has no row in ``results`` yet; return the new rows.

    Args:
        ladder: shapes and defaults (``load_ladder``).
        out_root: run folders go to ``out_root/RUN_ID``; results default to
            ``out_root/results.jsonl``.
        budgets, data_sizes, data_rung, data_budget, seeds, rungs: replace the
            ladder's defaults (see ``plan_runs``).
        overrides: extra ``key=value`` for every run (after the ladder's).
        probe: embed and probe each finished run (scores go into its row):
            True or ``"all"``; ``"compute"``: the compute sweep only (the
            probe-versus-parameters figure needs no more).
        dry_run: print the plan (steps and compute per run) and train nothing.
        train_fn, probe_fn, load_config_fn: injectable for tests; default
            ``astropt.training.train``, ``default_probe`` and
            ``astropt.config.load_config``.

    Under ``torchrun`` the study starts one process group for all its runs
    (nccl for CUDA runs, else gloo); every rank runs the plan rank 0 reads
    from the results file, and only rank 0 probes and writes rows.
    """
    out_root = Path(out_root)
    results_path = Path(results) if results is not None else out_root / "results.jsonl"
    rank, world_size = _dist_info()
    specs = plan_runs(
        ladder,
        budgets,
        data_sizes,
        data_rung=data_rung,
        data_budget=data_budget,
        seeds=seeds,
        rungs=rungs,
    )
    group = None
    # torchrun sets MASTER_ADDR for the env:// rendezvous; tests that only fake
    # RANK/WORLD_SIZE (with a stub training) get no group.
    if world_size > 1 and not dry_run and specs and "MASTER_ADDR" in os.environ:
        first = build_run(specs[0], ladder, out_root, overrides=overrides,
                          world_size=world_size, load_config_fn=load_config_fn)[0]  # fmt: skip
        group = _StudyProcessGroup(getattr(first, "device", "auto"))
    try:
        return _run_specs(
            specs, ladder, out_root, results_path, rank, world_size, group, overrides,
            probe, dry_run, train_fn, probe_fn, load_config_fn,
        )  # fmt: skip
    finally:
        if group is not None:
            group.close()


class _StudyProcessGroup:
    """One process group for a whole study under ``torchrun``.

    Training joins an existing group and leaves it up; a group destroyed and
    created again in the same processes (one per run) fails to reconnect
    (gloo, stale rendezvous keys), so the study owns it. Ranks meet at a
    barrier after each run, while rank 0 probes and writes the row.
    """

    def __init__(self, device: str):
        import torch
        import torch.distributed as dist

        self.dist = dist
        self.owned = not dist.is_initialized()
        if self.owned:
            cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
            if cuda:
                local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(local)
                dist.init_process_group("nccl", device_id=local)
            else:
                dist.init_process_group("gloo")

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        self.dist.barrier()

    def close(self) -> None:
        if self.owned and self.dist.is_initialized():
            self.dist.destroy_process_group()


def _run_specs(
    specs, ladder, out_root, results_path, rank, world_size, group, overrides,
    probe, dry_run, train_fn, probe_fn, load_config_fn,
) -> list[dict]:  # fmt: skip
    done = {row.get("run_id") for row in read_results(results_path)} if rank == 0 else set()
    if group is not None:
        # Every rank must skip exactly the runs rank 0 skips.
        done = group.broadcast(done)
    pending = [s for s in specs if s.run_id not in done]
    if rank == 0:
        log.info(
            "%s: %d runs planned, %d already in %s, %d to train",
            ladder.name,
            len(specs),
            len(specs) - len(pending),
            results_path,
            len(pending),
        )
    if train_fn is None and not dry_run:
        from astropt.training import train as train_fn
    if probe and probe_fn is None:
        probe_fn = default_probe

    new_rows = []
    for spec in specs:
        if spec.run_id in done:
            if rank == 0:
                log.info("skip %s (already in %s)", spec.run_id, results_path)
            continue
        cfg, geom, max_iters = build_run(
            spec,
            ladder,
            out_root,
            overrides=overrides,
            world_size=world_size,
            load_config_fn=load_config_fn,
        )
        compute = max_iters * geom.flops_per_step
        # The bounds prune the compute grid; a data sweep is chosen deliberately.
        if spec.sweep == "compute" and (
            max_iters < ladder.min_steps
            or (ladder.max_steps is not None and max_iters > ladder.max_steps)
        ):
            log.info(
                "skip %s: %d steps is outside the ladder's [min_steps, max_steps] = [%d, %s]",
                spec.run_id,
                max_iters,
                ladder.min_steps,
                ladder.max_steps,
            )
            continue
        if dry_run:
            print(
                f"{spec.run_id:40s} N={geom.n_params:>13,d} steps={max_iters:>8d} "
                f"C={compute:.3g} FLOPs"
            )
            continue
        run_dir = out_root / spec.run_id
        if rank == 0:
            log.info("train %s: %d steps, %.3g FLOPs", spec.run_id, max_iters, compute)
        t0 = time.time()
        summary = _finished_summary(run_dir, max_iters)
        if summary is not None:
            # Trained to the end, but the process died before its row was written.
            log.info("%s finished before: using its summary.json", spec.run_id)
        else:
            summary = train_fn(cfg) or {}
        wall = time.time() - t0
        row = {
            "run_id": spec.run_id,
            "ladder": ladder.name,
            "rung": spec.rung.name,
            "sweep": spec.sweep,
            "seed": spec.seed,
            "budget_flops": spec.budget,
            "data_size": spec.data_size,
            "train_galaxies": train_split_size(cfg),
            "n_params": geom.n_params,
            "seq_len": geom.seq_len,
            "flops_per_token": geom.flops_per_token,
            "tokens_per_step": geom.tokens_per_step,
            "max_iters": max_iters,
            "compute": compute,
            "final_val_loss": summary.get("final_val_loss"),
            "best_val_loss": summary.get("best_val_loss"),
            "curve": read_curve(run_dir, geom.flops_per_step),
            "wall_s": wall,
            "world_size": world_size,
            "run_dir": str(run_dir),
            "summary": summary,
        }
        wants_probe = probe in (True, "all") or probe == spec.sweep
        if wants_probe and rank == 0 and probe_fn is not None:
            scores = probe_fn(run_dir, cfg)
            row["probe"] = scores
            row["probe_score"] = _probe_score(scores)
        if rank == 0:
            append_result(results_path, row)
        if group is not None:
            group.barrier()
        new_rows.append(row)
    return new_rows


def _finished_summary(run_dir: Path, max_iters: int) -> dict | None:
    """The run's ``summary.json`` when it reached ``max_iters`` with a validation loss."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if summary.get("steps") == max_iters and _finite(summary.get("final_val_loss")):
        return summary
    return None


def _probe_score(scores: dict) -> float | None:
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

    from astropt.embed import export_embeddings, read_embeddings
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
        row["probe_score"] = _probe_score(row["probe"])
        done += 1
        log.info("probed %s: mean score %.4f", row["run_id"], row["probe_score"])
    if done:
        text = "".join(json.dumps(r, default=_json_default) + "\n" for r in rows)
        atomic_write_text(Path(results), text)
    return done


# ======================================================================
# Fitting a study and drawing it
# ======================================================================


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
    L(N) uses each shape's lowest final loss over the budgets (its best
    converged estimate on this grid). A law with fewer than three distinct
    x values is not fitted (None); with exactly three it is fitted without
    an interval.
    """
    kw = {"n_boot": n_boot, "ci": ci, "seed": seed}
    out: dict[str, Any] = {"n_runs": len(rows)}

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
    out["compute"] = {
        "fit": fit_c.to_dict() if fit_c else None,
        "frontier": frontier,
        "points": len(pts),
        "use_curves": use_curves,
        "curve_from": curve_from,
    }

    dpts, d_rung, d_budget = data_points(rows, data_rung, data_budget)
    fit_d = _fit_or_none([p["galaxies"] for p in dpts], [p["loss"] for p in dpts], **kw)
    out["data"] = {
        "fit": fit_d.to_dict() if fit_d else None,
        "points": dpts,
        "rung": d_rung,
        "budget_flops": d_budget,
    }

    # L(N): each shape at the largest budget every shape reached, so the shapes
    # are compared at equal compute (a shape trained only at a bigger budget
    # would otherwise look better for its compute, not its size).
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
    out["params"] = {
        "fit": fit_n.to_dict() if fit_n else None,
        "points": npts,
        "budget_flops": budget_n,
        "note": note,
    }

    out["probe"] = [
        {
            "rung": r["rung"],
            "n_params": r["n_params"],
            "budget_flops": r["budget_flops"],
            "probe_score": r["probe_score"],
            "probe": r.get("probe"),
        }
        for r in rows
        if r.get("sweep", "compute") == "compute" and _finite(r.get("probe_score"))
    ]
    return out


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
    written = []
    compute_rows = [r for r in rows if r.get("sweep", "compute") == "compute" and _loss(r)]
    rung_params = {r["rung"]: r["n_params"] for r in rows}
    rungs = sorted(rung_params, key=rung_params.get)
    colours = {
        name: plt.get_cmap("viridis")(i / max(1, len(rungs) - 1)) for i, name in enumerate(rungs)
    }

    def save(fig, name: str) -> None:
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    # Loss against compute.
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
    save(fig, "loss_vs_compute.png")

    # Loss against data size.
    dpts = fit["data"]["points"]
    if dpts:
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
        save(fig, "loss_vs_data.png")

    # Loss against parameters.
    npts = fit["params"]["points"]
    if npts:
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
        save(fig, "loss_vs_params.png")

    # Probe score against parameters.
    probes = fit["probe"]
    if probes:
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
        save(fig, "probe_vs_params.png")
    return written


# ======================================================================
# Command line
# ======================================================================


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",") if v.strip()]


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m astropt.scaling",
        description="Scaling study: train a ladder of shapes over compute budgets and "
        "data sizes, then fit L = L_inf + A * x^-alpha in compute, data and parameters.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train the planned runs missing from the results file")
    run.add_argument("--ladder", required=True, help="ladder TOML (e.g. configs/scaling/cpu)")
    run.add_argument("--out", help="run folders and results.jsonl (default runs/scaling/LADDER)")
    run.add_argument("--results", help="results JSONL (default OUT/results.jsonl)")
    run.add_argument("--budgets", type=_floats, help="FLOPs, comma separated (e.g. 1e11,3e11)")
    run.add_argument(
        "--data-sizes", type=_ints, help='training galaxies of the data sweep ("": no sweep)'
    )
    run.add_argument("--data-rung", help="shape of the data sweep")
    run.add_argument("--data-budget", type=float, help="FLOPs of the data sweep runs")
    run.add_argument("--rungs", type=_names, help="only these rungs (comma separated)")
    run.add_argument("--seeds", type=_ints, help="seeds (comma separated; default the ladder's)")
    run.add_argument(
        "--probe",
        choices=["all", "compute"],
        help="embed and probe each finished run: all, or the compute sweep only",
    )
    run.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (1 is fastest on a shared, oversubscribed machine)",
    )
    run.add_argument("--dry-run", action="store_true", help="print the plan, train nothing")
    run.add_argument("overrides", nargs="*", help="key=value overrides for every run")

    probe = sub.add_parser("probe", help="probe finished runs of a results file afterwards")
    probe.add_argument("results", help="results JSONL written by `run`")
    probe.add_argument(
        "--sweep", default="compute", choices=["compute", "data", "all"], help="rows to probe"
    )
    probe.add_argument("--force", action="store_true", help="probe rows that have scores too")
    probe.add_argument("--threads", type=int, help="torch CPU threads")

    fit = sub.add_parser("fit", help="fit the power laws and draw the figures")
    fit.add_argument("results", help="results JSONL written by `run`")
    fit.add_argument("--out", help="folder for fit.json and PNGs (default: beside RESULTS)")
    fit.add_argument("--n-boot", type=int, default=1000, help="bootstrap refits (default 1000)")
    fit.add_argument("--ci", type=float, default=0.95, help="interval coverage (default 0.95)")
    fit.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    fit.add_argument(
        "--no-curves",
        action="store_true",
        help="frontier from final losses only (default: learning curves too)",
    )
    fit.add_argument(
        "--curve-from",
        type=float,
        default=0.25,
        help="learning-curve points count from this fraction of each run's compute (0.25)",
    )
    fit.add_argument("--data-rung", help="data sweep to fit (default: the one with most runs)")
    fit.add_argument("--data-budget", type=float, help="budget of the data sweep to fit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.command == "run":
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        ladder = load_ladder(args.ladder)
        out = Path(args.out) if args.out else Path("runs") / "scaling" / ladder.name
        run_study(
            ladder,
            out,
            budgets=args.budgets,
            data_sizes=args.data_sizes,
            data_rung=args.data_rung,
            data_budget=args.data_budget,
            seeds=args.seeds,
            rungs=args.rungs,
            results=args.results,
            overrides=args.overrides,
            probe=args.probe or False,
            dry_run=args.dry_run,
        )
        return 0

    if args.command == "probe":
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        sweep = None if args.sweep == "all" else args.sweep
        count = probe_results(args.results, sweep=sweep, force=args.force)
        print(f"probed {count} runs of {args.results}")
        return 0

    rows = read_results(args.results)
    if not rows:
        print(f"no rows in {args.results}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path(args.results).parent
    fit = fit_study(
        rows,
        n_boot=args.n_boot,
        ci=args.ci,
        seed=args.seed,
        use_curves=not args.no_curves,
        curve_from=args.curve_from,
        data_rung=args.data_rung,
        data_budget=args.data_budget,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit.json").write_text(json.dumps(fit, indent=2, default=_json_default) + "\n")
    paths = plot_study(rows, fit, out)
    print(format_report(fit))
    print(f"\nwrote {out / 'fit.json'} and {', '.join(p.name for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
