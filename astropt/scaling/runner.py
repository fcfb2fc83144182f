"""Running a study: each planned run's budget turned into steps, trained, and recorded."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from astropt.data.config import synthetic_split_sizes
from astropt.scaling.fit import _finite
from astropt.scaling.ladder import Ladder, RunSpec, plan_runs
from astropt.scaling.probing import ProbeFn, default_probe, probe_score
from astropt.scaling.results import append_result, read_results

if TYPE_CHECKING:
    from astropt.distributed import DistInfo

log = logging.getLogger("astropt.scaling")


TrainFn = Callable[[Any], dict]
LoadConfigFn = Callable[[Any, list[str]], Any]
#: ``run --probe``: probe every run, or the compute sweep only (``True`` means "all").
ProbeChoice = Literal["all", "compute"]


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
        total = synthetic_split_sizes(data)["train"]
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
    probe: bool | ProbeChoice = False,
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
            ``astropt.train.train``, ``default_probe`` and
            ``astropt.config.load_config``.

    Under ``torchrun`` the study starts one process group for all its runs
    (nccl for CUDA runs, else gloo); every rank runs the plan rank 0 reads
    from the results file, and only rank 0 probes and writes rows.
    """
    out_root = Path(out_root)
    rank, world_size = _dist_info()
    study = _Study(
        ladder,
        out_root,
        Path(results) if results is not None else out_root / "results.jsonl",
        overrides=overrides,
        probe=probe,
        dry_run=dry_run,
        train_fn=train_fn,
        probe_fn=probe_fn,
        load_config_fn=load_config_fn,
        rank=rank,
        world_size=world_size,
    )
    specs = plan_runs(
        ladder,
        budgets,
        data_sizes,
        data_rung=data_rung,
        data_budget=data_budget,
        seeds=seeds,
        rungs=rungs,
    )
    # torchrun sets MASTER_ADDR for the env:// rendezvous; tests that only fake
    # RANK/WORLD_SIZE (with a stub training) get no group.
    if world_size > 1 and not dry_run and specs and "MASTER_ADDR" in os.environ:
        from astropt.distributed import setup_distributed

        # One process group for the whole study: training joins it and leaves it
        # up, since a group destroyed and created again in the same processes
        # (one per run) fails to reconnect (gloo, stale rendezvous keys). Ranks
        # meet at a barrier after each run while rank 0 probes and writes the row.
        first = study.build(specs[0])[0]
        study.group, _ = setup_distributed(getattr(first, "device", "auto"))
    try:
        return study.run(specs)
    finally:
        if study.group is not None:
            from astropt.distributed import teardown_distributed

            teardown_distributed(study.group)


@dataclass
class _Study:
    """What every run of a study shares; ``run`` trains the runs of a plan (``run_study``)."""

    ladder: Ladder
    out_root: Path
    results_path: Path
    overrides: Sequence[str] = ()
    probe: bool | ProbeChoice = False
    dry_run: bool = False
    train_fn: TrainFn | None = None
    probe_fn: ProbeFn | None = None
    load_config_fn: LoadConfigFn | None = None
    rank: int = 0
    world_size: int = 1
    group: DistInfo | None = None  # the study's process group under torchrun

    def build(self, spec: RunSpec) -> tuple[Any, RunGeometry, int]:
        """``build_run`` with the study's overrides and world size."""
        return build_run(
            spec,
            self.ladder,
            self.out_root,
            overrides=self.overrides,
            world_size=self.world_size,
            load_config_fn=self.load_config_fn,
        )

    def run(self, specs: Sequence[RunSpec]) -> list[dict]:
        """Train the runs of ``specs`` without a row yet; return their new rows."""
        rank = self.rank
        done = {r.get("run_id") for r in read_results(self.results_path)} if rank == 0 else set()
        if self.group is not None:
            # Every rank must skip exactly the runs rank 0 skips.
            done = self.group.broadcast(done)
        pending = [s for s in specs if s.run_id not in done]
        if rank == 0:
            log.info(
                "%s: %d runs planned, %d already in %s, %d to train",
                self.ladder.name,
                len(specs),
                len(specs) - len(pending),
                self.results_path,
                len(pending),
            )
        if self.train_fn is None and not self.dry_run:
            from astropt.train import train

            self.train_fn = train
        if self.probe and self.probe_fn is None:
            self.probe_fn = default_probe

        new_rows = []
        for spec in specs:
            if spec.run_id in done:
                if rank == 0:
                    log.info("skip %s (already in %s)", spec.run_id, self.results_path)
                continue
            row = self._run_one(spec)
            if row is not None:
                new_rows.append(row)
        return new_rows

    def _run_one(self, spec: RunSpec) -> dict | None:
        """Train one run and write its row (rank 0); None when it is skipped or a dry run."""
        ladder, rank = self.ladder, self.rank
        cfg, geom, max_iters = self.build(spec)
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
            return None
        if self.dry_run:
            print(
                f"{spec.run_id:40s} N={geom.n_params:>13,d} steps={max_iters:>8d} "
                f"C={compute:.3g} FLOPs"
            )
            return None
        run_dir = self.out_root / spec.run_id
        if rank == 0:
            log.info("train %s: %d steps, %.3g FLOPs", spec.run_id, max_iters, compute)
        t0 = time.time()
        summary = _finished_summary(run_dir, max_iters)
        if summary is not None:
            # Trained to the end, but the process died before its row was written.
            log.info("%s finished before: using its summary.json", spec.run_id)
        else:
            summary = self.train_fn(cfg) or {}
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
            "world_size": self.world_size,
            "run_dir": str(run_dir),
            "summary": summary,
        }
        wants_probe = self.probe in (True, "all") or self.probe == spec.sweep
        if wants_probe and rank == 0 and self.probe_fn is not None:
            scores = self.probe_fn(run_dir, cfg)
            row["probe"] = scores
            row["probe_score"] = probe_score(scores)
        if rank == 0:
            append_result(self.results_path, row)
        if self.group is not None:
            self.group.barrier()
        return row


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
