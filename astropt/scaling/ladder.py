"""Ladders of model shapes and the plan of a study's runs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


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
        from astropt.config import did_you_mean

        names = [r.name for r in self.rungs]
        raise KeyError(
            f"unknown rung {name!r}{did_you_mean(name, names)}; valid: {', '.join(names)}"
        )


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
    """Read a ladder TOML; unknown keys are errors naming the nearest valid key.

    Keys and values are checked against the fields of :class:`Ladder` and
    :class:`Rung` by the run configs' machinery (:func:`astropt.config.table_fields`).
    """
    from astropt.config import ConfigError, table_fields

    p = resolve_ladder_path(path)
    with open(p, "rb") as fh:
        raw = tomllib.load(fh)

    def rel(value: Path | None) -> Path | None:
        # Paths in a ladder are relative to the ladder file, so it works from any cwd.
        return None if value is None else (p.parent / value).resolve()

    entries = raw.pop("rungs", [])
    values = table_fields(Ladder, raw, str(p), exclude=("path", "rungs"))
    rungs = []
    for i, entry in enumerate(entries):
        fields = table_fields(Rung, entry, f"{p}: rung {i}")
        if "name" not in fields:
            raise ConfigError(f"{p}: rung {i} has no name")
        fields["config"] = rel(fields.get("config"))
        rungs.append(Rung(**fields))
    if not rungs:
        raise ConfigError(f"{p}: a ladder needs at least one [[rungs]] entry")
    names = [r.name for r in rungs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{p}: duplicate rung names in {names}")
    values["base"] = rel(values.get("base"))
    values.setdefault("name", p.stem)
    ladder = Ladder(path=p, rungs=rungs, **values)
    if ladder.data_rung is not None:
        ladder.rung(ladder.data_rung)  # raises with a hint when misspelt
    return ladder


#: "compute": every rung x every budget; "data": one rung, one budget, several data sizes.
Sweep = Literal["compute", "data"]


@dataclass
class RunSpec:
    """One training run of a study."""

    run_id: str  # key in the results file; also the run folder name
    rung: Rung
    budget: float  # training FLOPs
    data_size: int | None  # training galaxies; None: the whole training split
    seed: int
    sweep: Sweep


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
