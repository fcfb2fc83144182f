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

Modules: ``ladder`` (ladders and the plan of runs), ``runner`` (budgets turned
into steps, training, the results rows), ``results`` (the JSONL file),
``probing`` (probe scores of finished runs), ``fit`` (power laws and the fits of
a study), ``plots`` (figures), ``cli`` (the command line).

Units: compute in training FLOPs (forward + backward, the model's
``flops_per_token(seq_len)`` estimate times tokens processed), data size in
galaxies, parameters without the positional table.
"""

from astropt.scaling.cli import (
    main,
)
from astropt.scaling.fit import (
    PowerLawFit,
    compute_points,
    data_points,
    fit_power_law,
    fit_study,
    format_report,
    pareto_frontier,
    saturating_power_law,
)
from astropt.scaling.ladder import (
    Ladder,
    Rung,
    RunSpec,
    Sweep,
    format_flops,
    load_ladder,
    make_run_id,
    plan_runs,
    resolve_ladder_path,
)
from astropt.scaling.plots import (
    plot_study,
)
from astropt.scaling.probing import (
    ProbeFn,
    default_probe,
    probe_results,
    probe_score,
)
from astropt.scaling.results import (
    append_result,
    read_results,
)
from astropt.scaling.runner import (
    DATA_SIZE_KEY,
    LoadConfigFn,
    ProbeChoice,
    RunGeometry,
    TrainFn,
    build_run,
    read_curve,
    run_geometry,
    run_study,
    train_split_size,
)

__all__ = [
    "DATA_SIZE_KEY",
    "Ladder",
    "LoadConfigFn",
    "PowerLawFit",
    "ProbeChoice",
    "ProbeFn",
    "RunGeometry",
    "RunSpec",
    "Rung",
    "Sweep",
    "TrainFn",
    "append_result",
    "build_run",
    "compute_points",
    "data_points",
    "default_probe",
    "fit_power_law",
    "fit_study",
    "format_flops",
    "format_report",
    "load_ladder",
    "main",
    "make_run_id",
    "pareto_frontier",
    "plan_runs",
    "plot_study",
    "probe_results",
    "probe_score",
    "read_curve",
    "read_results",
    "resolve_ladder_path",
    "run_geometry",
    "run_study",
    "saturating_power_law",
    "train_split_size",
]
