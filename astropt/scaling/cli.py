"""``astropt scaling run|probe|fit`` (``python -m astropt.scaling``; see the package docstring)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from astropt.errors import UserError
from astropt.options import Command, CommandGroup, resolve_config_path, run_command
from astropt.scaling.fit import fit_study, format_report
from astropt.scaling.ladder import Sweep, load_ladder
from astropt.scaling.plots import plot_study
from astropt.scaling.probing import probe_results
from astropt.scaling.results import _json_default, read_results
from astropt.scaling.runner import ProbeChoice, run_study

#: Rows ``astropt scaling probe`` probes: one sweep, or all.
ProbeSweep = Literal[Sweep, "all"]


@dataclass
class StudyOptions:
    """Options of ``astropt scaling run``."""

    ladder: str  # ladder TOML (e.g. configs/scaling/cpu)
    out: str | None = None  # run folders and results.jsonl (default runs/scaling/LADDER)
    results: str | None = None  # results JSONL (default OUT/results.jsonl)
    budgets: list[float] | None = None  # FLOPs, comma separated (e.g. 1e11,3e11)
    data_sizes: list[int] | None = None  # training galaxies of the data sweep ('': no sweep)
    data_rung: str | None = None  # shape of the data sweep
    data_budget: float | None = None  # FLOPs of the data sweep runs
    rungs: list[str] | None = None  # only these rungs (comma separated)
    seeds: list[int] | None = None  # seeds (comma separated; default the ladder's)
    probe: ProbeChoice | None = None  # embed and probe each finished run: all, or compute only
    threads: int | None = None  # torch CPU threads (1 is fastest on a shared machine)
    dry_run: bool = False  # print the plan, train nothing
    # training key=value for every run (a training key given directly lands here too)
    overrides: list[str] = field(default_factory=list)


@dataclass
class ProbeRunsOptions:
    """Options of ``astropt scaling probe``."""

    results: str  # results JSONL written by `run`
    sweep: ProbeSweep = "compute"  # rows to probe
    force: bool = False  # probe rows that have scores too
    threads: int | None = None  # torch CPU threads


@dataclass
class FitOptions:
    """Options of ``astropt scaling fit``."""

    results: str  # results JSONL written by `run`
    out: str | None = None  # folder for fit.json and PNGs (default: beside results)
    n_boot: int = 1000  # bootstrap refits
    ci: float = 0.95  # interval coverage
    seed: int = 0  # bootstrap seed
    curves: bool = True  # learning curves too (false: frontier from final losses only)
    curve_from: float = 0.25  # learning-curve points count from this fraction of each run's compute
    data_rung: str | None = None  # data sweep to fit (default: the one with most runs)
    data_budget: float | None = None  # budget of the data sweep to fit


def _logging(threads: int | None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if threads:
        import torch

        torch.set_num_threads(threads)


def _ladder_path(name: str) -> Path:
    """The ladder file ``name`` names: as given, or the shipped one (also without ``.toml``)."""
    path = resolve_config_path(name)
    if not path.exists() and path.suffix != ".toml":
        with_suffix = resolve_config_path(f"{name}.toml")
        if with_suffix.exists():
            return with_suffix
    return path


def run_scaling_study(opts: StudyOptions) -> int:
    """Train the planned runs missing from the results file."""
    _logging(opts.threads)
    ladder = load_ladder(_ladder_path(opts.ladder))
    out = Path(opts.out) if opts.out else Path("runs") / "scaling" / ladder.name
    run_study(
        ladder,
        out,
        budgets=opts.budgets,
        data_sizes=opts.data_sizes,
        data_rung=opts.data_rung,
        data_budget=opts.data_budget,
        seeds=opts.seeds,
        rungs=opts.rungs,
        results=opts.results,
        overrides=opts.overrides,
        probe=opts.probe or False,
        dry_run=opts.dry_run,
    )
    return 0


def run_probe_runs(opts: ProbeRunsOptions) -> int:
    """Probe finished runs of a results file."""
    _logging(opts.threads)
    sweep = None if opts.sweep == "all" else opts.sweep
    count = probe_results(opts.results, sweep=sweep, force=opts.force)
    print(f"probed {count} runs of {opts.results}")
    return 0


def run_fit(opts: FitOptions) -> int:
    """Fit the power laws of a results file and draw the figures."""
    _logging(None)
    rows = read_results(opts.results)
    if not rows:
        raise UserError(f"no rows in {opts.results}")
    out = Path(opts.out) if opts.out else Path(opts.results).parent
    fit = fit_study(
        rows,
        n_boot=opts.n_boot,
        ci=opts.ci,
        seed=opts.seed,
        use_curves=opts.curves,
        curve_from=opts.curve_from,
        data_rung=opts.data_rung,
        data_budget=opts.data_budget,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit.json").write_text(json.dumps(fit, indent=2, default=_json_default) + "\n")
    paths = plot_study(rows, fit, out)
    print(format_report(fit))
    print(f"\nwrote {out / 'fit.json'} and {', '.join(p.name for p in paths)}")
    return 0


def _training_keys():
    from astropt.config import valid_keys

    return valid_keys()


COMMAND = CommandGroup(
    "Scaling study: train a ladder of shapes over compute budgets and data sizes, then fit "
    "L = L_inf + A * x^-alpha in compute, data and parameters.",
    {
        "run": Command(
            StudyOptions,
            run_scaling_study,
            "Train the planned runs missing from the results file (resumable, torchrun-aware).",
            forward=("overrides", _training_keys),
            examples=(
                "astropt scaling run ladder=configs/scaling/cpu budgets=1e10,3e10 "
                "data.path=runs/survey",
                "python -m astropt.scaling run --ladder configs/scaling/cpu --dry-run",
            ),
        ),
        "probe": Command(
            ProbeRunsOptions,
            run_probe_runs,
            "Probe finished runs of a results file afterwards.",
            positional=("results",),
        ),
        "fit": Command(
            FitOptions,
            run_fit,
            "Fit the power laws and draw the figures.",
            positional=("results",),
            examples=("astropt scaling fit runs/scaling/cpu/results.jsonl out=docs/scaling",),
        ),
    },
)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m astropt.scaling`` (the same as ``astropt scaling``)."""
    return run_command(COMMAND, None if argv is None else list(argv), "python -m astropt.scaling")
