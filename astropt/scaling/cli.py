"""``python -m astropt.scaling run|probe|fit`` (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from astropt.scaling.fit import fit_study, format_report
from astropt.scaling.ladder import Sweep, load_ladder
from astropt.scaling.plots import plot_study
from astropt.scaling.probing import probe_results
from astropt.scaling.results import _json_default, read_results
from astropt.scaling.runner import ProbeChoice, run_study


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
        choices=get_args(ProbeChoice),
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
        "--sweep", default="compute", choices=[*get_args(Sweep), "all"], help="rows to probe"
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
