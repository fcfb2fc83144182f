"""The pretraining loop: build, step, evaluate, run.

One optimiser step is ``grad_accum`` micro-batches summed over all processes
(each of the ``world_size`` processes runs ``grad_accum / world_size`` of them),
then gradient clipping and AdamW (weight decay on matrices only), with a linear
warmup and a cosine decay of the learning rate to ``optim.min_lr``
(:mod:`astropt.train.optim`).

Distributed: under ``torchrun`` every process trains on its own shard of the
data (``make_loader(rank=, world_size=)``), gradients are averaged by DDP or
the model is sharded with FSDP (:mod:`astropt.train.parallel`); evaluation
runs on every rank over its validation shard and the losses are all-reduced;
rank 0 alone logs and writes files (:mod:`astropt.train.checkpoint`,
:mod:`astropt.train.metrics`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from astropt.config import DATA_CONVENTIONS, ConfigError, RunConfig, config_from_entries
from astropt.distributed import setup_distributed, teardown_distributed
from astropt.errors import TrainingDiverged
from astropt.io import atomic_write_text
from astropt.model import GPT
from astropt.options import Command, run_and_print_summary, run_command
from astropt.preprocessing import Preprocessing
from astropt.train.checkpoint import (
    CHECKPOINTS,
    STATE_VERSION,
    ResumePoint,
    full_model_state,
    full_optim_state,
    load_full_optim_state,
    load_init_from,
    load_resume_model,
    log_spaced_steps,
    prepare_run_dir,
    rng_state,
    seed_everything,
    set_rng_state,
    write_checkpoints,
)
from astropt.train.loop import (
    RunBase,
    Schedule,
    deferred_interrupts,
    progress_bar,
    run_lock,
    save_on_interrupt,
)
from astropt.train.metrics import MetricsLog, Throughput, measure_matmul_peak, render_preview
from astropt.train.optim import lr_at, make_grad_scaler, make_optimizer
from astropt.train.parallel import autocast_dtype, no_sync, wrap_model

log = logging.getLogger(__name__)

StepHook = Callable[[int, dict], None]
LoaderFactory = Callable[..., Any]


class Trainer(RunBase):
    """One run: :meth:`build`, then :meth:`run`; :func:`train` is the public entry point."""

    log = log

    def __init__(
        self,
        cfg: RunConfig,
        on_step: StepHook | None = None,
        loader_factory: LoaderFactory | None = None,
    ):
        self.cfg = cfg
        self.on_step = on_step
        if loader_factory is None:
            from astropt.data import make_loader as loader_factory
        self.loader_factory = loader_factory
        self.dist, self.device = setup_distributed(cfg.device)
        if cfg.grad_accum % self.dist.world_size:
            raise ConfigError(
                f"grad_accum={cfg.grad_accum} is not a multiple of the world size "
                f"{self.dist.world_size}: it counts micro-batches per optimiser step over all "
                f"processes; set grad_accum={self.dist.world_size * max(1, cfg.grad_accum // self.dist.world_size)}"
            )
        self.accum = cfg.grad_accum // self.dist.world_size
        self.out = Path(cfg.out_dir)
        self.ckpt_root = self.out / CHECKPOINTS
        self.amp_dtype = autocast_dtype(cfg.dtype, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.metrics = MetricsLog(self.out, enabled=self.dist.is_main)
        self.step = 0
        self.tokens = 0
        self.flops = 0.0
        self.flops_per_token: float | None = None  # from the first batch's sequence length
        self.best_val = math.inf
        self.best_step: int | None = None
        self.last_val: float | None = None
        self.last_train: float | None = None
        self.last_saved_step: int | None = None
        self.elapsed = 0.0  # training seconds over all sessions of this run

    # ============================================================== build
    def build(self) -> None:
        """Model, optimiser, loaders and run folder; restores ``latest`` when resuming."""
        cfg = self.cfg
        resume = prepare_run_dir(self.out, cfg.resume, cfg.overwrite, self.dist)
        # Same seed on every rank for the initial weights (DDP also broadcasts them).
        seed_everything(cfg.seed)
        model = self._build_model(resume).to(self.device)
        self.n_params = model.num_params()
        self.raw_model = model
        self.step_module, self.fsdp = wrap_model(
            model, self.dist, self.device, cfg.parallel, cfg.compile
        )
        self.optimizer = make_optimizer(model, cfg.optim, self.device)
        self.scaler = make_grad_scaler(self.device, self.amp_dtype)
        self._make_loaders()
        self._check_sequence_fits()
        resume_rng = None
        if resume is not None:
            resume_rng = self._restore(resume.state)
            self.metrics.truncate(self.step)
            self.say("resumed %s at step %d", self.out, self.step)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                self.out / "config.json", json.dumps(cfg.to_dict(), indent=2, sort_keys=True)
            )
        # Training randomness (MAE masks, prefixes, dropout) differs across ranks.
        seed_everything(cfg.seed + 1_000_003 * self.dist.rank + 1)
        if resume_rng is not None:
            set_rng_state(resume_rng, self.device)
        self.peak = cfg.peak_flops or measure_matmul_peak(
            self.device, self.amp_dtype or torch.float32, seconds=0.2
        )
        self.metrics.open(cfg)
        self.say(
            "%s: %.2fM parameters, %d processes x %d micro-batches of %d, %s, %s, peak %.3g FLOP/s",
            self.out,
            self.n_params / 1e6,
            self.dist.world_size,
            self.accum,
            cfg.batch_size,
            self.device,
            self.amp_dtype or torch.float32,
            self.peak,
        )

    def _build_model(self, resume: ResumePoint | None) -> GPT:
        cfg = self.cfg
        if resume is not None:
            return load_resume_model(resume, cfg.model, self.out)
        if cfg.init_from and cfg.init_from.lower() not in ("scratch", "none"):
            model, cfg.model = load_init_from(cfg.init_from, cfg.data, cfg.model, self.dist)
            return model
        return GPT(cfg.model)

    def _make_loaders(self, seed: int | None = None) -> None:
        cfg = self.cfg
        seed = cfg.seed if seed is None else seed
        common = dict(seed=seed, rank=self.dist.rank, world_size=self.dist.world_size)
        self.train_loader = self.loader_factory(
            cfg.data,
            "train",
            batch_size=cfg.batch_size,
            repeat=True,
            max_samples=cfg.train_samples,
            device=self.device,
            **common,
        )
        self.val_loader = self.loader_factory(
            cfg.data,
            "validation",
            batch_size=cfg.eval_batch_size or cfg.batch_size,
            shuffle=False,
            augment=False,
            drop_last=False,
            device=self.device,
            **common,
        )
        # Every evaluation reads the same batches: rewind to this state first.
        self._val_start = self.val_loader.state_dict()

    def _check_sequence_fits(self) -> None:
        """Fail at start-up, not at the first evaluation, when images outgrow ``block_size``."""
        model = self.cfg.model
        per_image = getattr(self.train_loader, "tokens_per_image", None)
        if per_image is None:  # a custom loader_factory's loader: checked at its first batch
            return
        needed = per_image - (1 if model.objective == "ar" else 0)
        if needed > model.block_size:
            _, height, width = self.train_loader.image_shape
            raise ConfigError(
                f"{height}x{width} images make {per_image} tokens of "
                f"{model.patch_size}x{model.patch_size} pixels, more than model.block_size="
                f"{model.block_size} positions: raise model.block_size to {needed} or crop the "
                "images with data.image_size"
            )

    # ======================================================== checkpoints
    def save_checkpoint(self, names: list[str]) -> None:
        """Write ``checkpoints/NAME`` for each name; collective (every rank calls it)."""
        state = self._trainer_state()
        weights = full_model_state(self.raw_model, self.fsdp)
        if self.dist.is_main:
            write_checkpoints(
                self.ckpt_root,
                names,
                self.cfg.model,
                weights,
                state,
                training_data=f"{self.cfg.data.source}: {self.cfg.data.path or '(on the fly)'}",
                training_summary={
                    "step": self.step,
                    "tokens": self.tokens,
                    "flops": self.flops,
                    "best_val_loss": self.best_val,
                },
                preprocessing=Preprocessing.of(self.cfg.data),
            )
        self.last_saved_step = self.step
        self.dist.barrier()

    def _trainer_state(self) -> dict:
        """Everything but the weights; collective (every rank must call it)."""
        per_rank = self.dist.gather(self._step_snapshot())
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "tokens": self.tokens,
            "flops": self.flops,
            "elapsed": self.elapsed,
            "best_val_loss": self.best_val,
            "best_step": self.best_step,
            "last_train_loss": self.last_train,
            "last_val_loss": self.last_val,
            "world_size": self.dist.world_size,
            "optimizer": full_optim_state(self.raw_model, self.optimizer, self.fsdp),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": [r["rng"] for r in per_rank],
            "loader": [r["loader"] for r in per_rank],
            "config": self.cfg.to_dict(),
        }

    def _step_snapshot(self) -> dict:
        """RNG and loader state as they were at the end of the last completed step."""
        snapshot = getattr(self, "_snapshot", None)
        if snapshot is None or snapshot[0] != self.step:
            snapshot = (
                self.step,
                {"rng": rng_state(self.device), "loader": self.train_loader.state_dict()},
            )
            self._snapshot = snapshot
        return snapshot[1]

    def _restore(self, state: dict) -> dict | None:
        """Load a trainer state; returns this rank's RNG state to set once built (or None)."""
        self.step = int(state["step"])
        self.tokens = int(state["tokens"])
        self.flops = float(state["flops"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.best_val = float(state["best_val_loss"])
        self.best_step = state.get("best_step")
        self.last_train = state.get("last_train_loss")
        self.last_val = state.get("last_val_loss")
        load_full_optim_state(self.raw_model, self.optimizer, state["optimizer"], self.fsdp)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.last_saved_step = self.step
        saved_world = int(state.get("world_size", 1))
        if saved_world == self.dist.world_size:
            self.train_loader.load_state_dict(state["loader"][self.dist.rank])
            return state["rng"][self.dist.rank]
        # Another number of processes shards the data differently: the exact
        # stream cannot continue. Start a fresh order rather than replay step 0's.
        self.say(
            "world size changed (%d -> %d): data order and RNG restart with seed %d",
            saved_world,
            self.dist.world_size,
            self.cfg.seed + self.step,
        )
        self._make_loaders(seed=self.cfg.seed + self.step)
        return None

    # =============================================================== step
    def _next_batch(self, iterator: Iterator) -> Any:
        try:
            # torch's DataLoader draws a worker seed from the global RNG whenever
            # it starts an epoch; keep that away from the training RNG (MAE
            # masks, prefixes, dropout), or a resumed run would drift from an
            # uninterrupted one.
            with torch.random.fork_rng(devices=[]):
                return next(iterator)
        except StopIteration:
            raise RuntimeError(
                "the training loader stopped although it was asked to repeat: "
                "check data.path and its train split"
            ) from None

    def _model_inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's tokens in the model's units and the patch statistics a flux-aware
        model reads or predicts (None for others), on the device (:meth:`GPT.prepare`)."""
        tokens = batch.tokens.to(self.device, non_blocking=True)
        if self.cfg.model.astropt_format:
            return tokens, None
        mean, std = (t.to(self.device, non_blocking=True) for t in (batch.mean, batch.std))
        return self.raw_model.prepare(tokens, mean, std)

    def train_step(self, iterator: Iterator, lr: float) -> tuple[float, float, int, list]:
        """One optimiser step: returns (global mean loss, grad norm, global tokens, batches)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        tokens = 0
        batches = []
        for micro in range(self.accum):
            batch = self._next_batch(iterator)
            batches.append(batch)
            x, token_stats = self._model_inputs(batch)
            tokens += x.shape[0] * (x.shape[1] - (1 if self.cfg.model.objective == "ar" else 0))
            last = micro == self.accum - 1
            sync = no_sync(self.step_module, self.raw_model, self.dist, self.fsdp, last)
            # The backward pass inside `sync` too: FSDP decides at backward time
            # whether to reduce-scatter gradients (DDP at forward time).
            with sync:
                with self.autocast():
                    if token_stats is None:
                        loss = self.step_module(x)
                    else:
                        loss = self.step_module(x, token_stats)
                scaled = loss / self.accum
                if self.scaler is not None:
                    scaled = self.scaler.scale(scaled)
                scaled.backward()
            loss_sum += loss.detach().float()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), clip)
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
            norm = norm.full_tensor()
        # One small all-reduce per step tells every rank the global loss and
        # whether any rank saw a non-finite value, so they stop together.
        # (Gradients, hence their norm, are the same on every rank after the all-reduce.)
        local_loss = loss_sum / self.accum
        norm = norm.float().to(self.device)
        finite = torch.isfinite(local_loss)
        if self.scaler is None:  # with fp16 loss scaling, inf gradients only skip a step
            finite = finite & torch.isfinite(norm)
        stats = self.dist.all_reduce(torch.stack([local_loss, (~finite).float(), norm]))
        stats = stats.tolist()
        mean_loss, grad_norm = stats[0] / self.dist.world_size, stats[2] / self.dist.world_size
        if stats[1] > 0:
            self.optimizer.zero_grad(set_to_none=True)
            self._diverged(mean_loss, grad_norm)
        with deferred_interrupts():  # never half an update: Ctrl-C waits for the step's end
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self._snapshot = None
            self._step_snapshot()
        return mean_loss, grad_norm, tokens * self.dist.world_size, batches

    def _diverged(self, loss: float, grad_norm: float) -> None:
        last = (
            f"{self.ckpt_root / 'latest'} (step {self.last_saved_step})"
            if self.last_saved_step is not None
            else "none (no checkpoint was written yet)"
        )
        raise TrainingDiverged(
            f"non-finite loss or gradient at step {self.step + 1} (loss {loss:.4g}, "
            f"grad norm {grad_norm:.4g}); the update was not applied. Last good "
            f"checkpoint: {last}. Lower optim.lr, keep optim.grad_clip > 0 or use "
            "dtype=float32, then resume=true."
        )

    # =========================================================== evaluate
    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over up to ``eval_iters`` batches per rank, all-reduced."""
        model = self.raw_model
        was_training = model.training
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        first = None
        devices = [self.device] if self.device.type == "cuda" else []
        # Evaluation must not move the training RNG (exact resume, and a run's
        # data and masks must not depend on eval_interval); fixed seed so every
        # evaluation of an MAE or prefix model draws the same masks.
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(self.cfg.seed + 7919)
            self.val_loader.load_state_dict(self._val_start)
            for index, batch in enumerate(self.val_loader):
                if index >= self.cfg.eval_iters:
                    break
                if first is None:
                    first = batch
                tokens, stats = self._model_inputs(batch)
                with self.autocast():
                    _, loss = model.compute_loss(tokens, stats=stats)
                total[0] += loss.double() * tokens.shape[0]
                total[1] += tokens.shape[0]
        if self.fsdp:
            # FSDP keeps the root's parameters gathered after a forward without
            # backward; shard them again so the optimiser's parameters are the
            # module's (checkpointing maps one onto the other).
            model.reshard()
        self.dist.all_reduce(total)
        model.train(was_training)
        if total[1] == 0:
            raise RuntimeError(
                "the validation split produced no batches: check data.path and its "
                "validation split (or lower eval_batch_size)"
            )
        self._preview_batch = first
        return float(total[0] / total[1])

    @torch.no_grad()
    def save_preview(self, path: Path) -> None:
        """Validation galaxies, the model's reconstruction (and MAE input), as one PNG."""
        batch = getattr(self, "_preview_batch", None)
        if batch is None or not self.dist.is_main or self.fsdp:
            return
        render_preview(
            self.raw_model,
            batch,
            path,
            n=self.cfg.preview_n,
            autocast=self.autocast,
            device=self.device,
            seed=self.cfg.seed,
        )

    # ================================================================ run
    def run(self) -> dict:
        """Build, then step to ``max_iters``, evaluating and checkpointing on schedule."""
        with run_lock(self.out, "training run", self.dist, self.device):
            self.build()
            return self._loop()

    def _loop(self) -> dict:
        cfg = self.cfg
        snapshots = frozenset(log_spaced_steps(cfg.log_checkpoints, cfg.max_iters))
        schedule = Schedule(
            cfg.max_iters, cfg.eval_interval, cfg.log_interval, cfg.checkpoint_interval, snapshots
        )
        bar = progress_bar(cfg.max_iters, self.step, self.dist.is_main and cfg.progress, "train")
        iterator = iter(self.train_loader)
        interrupted = False
        try:
            if self.step == 0:
                self._eval_and_log(0, None, lr_at(0, cfg.optim, cfg.max_iters), 0, 0, bar)
                if 0 in snapshots:
                    self.save_checkpoint(["step-0000000"])
            speed = Throughput()
            while self.step < cfg.max_iters:
                note = f"stopping after step {self.step + 1} is recorded"
                with deferred_interrupts(note):
                    started = time.perf_counter()
                    lr = lr_at(self.step, cfg.optim, cfg.max_iters)
                    loss, norm, step_tokens, batches = self.train_step(iterator, lr)
                    self._count(step_tokens, batches, started)
                    self.last_train = loss
                    speed.tokens += step_tokens
                    bar.update(1)
                    is_eval = schedule.is_eval(self.step)
                    val = None
                    if schedule.is_log(self.step):
                        rate = speed.rate()
                        mfu = rate * self.flops_per_token / (self.peak * self.dist.world_size)
                        val = self._eval_and_log(self.step, loss, lr, rate, mfu, bar, is_eval, norm)
                        speed.reset()
                    improved = val is not None and val < self.best_val
                    if improved:
                        self.best_val, self.best_step = val, self.step
                    names = schedule.checkpoints(self.step, improved)
                    if names:
                        self.save_checkpoint(names)
                        speed.restart_clock()  # checkpoint time is not training speed
                    if self.on_step is not None:
                        info = {"loss": loss, "lr": lr, "val_loss": val, "tokens": self.tokens}
                        self.on_step(self.step, {**info, "batches": batches, "trainer": self})
        except KeyboardInterrupt:
            interrupted = True
            bar.close()
            save_on_interrupt(self, log)
            raise
        finally:
            bar.close()
            self.metrics.close()
            if interrupted or sys.exc_info()[0] is not None:
                teardown_distributed(self.dist)
        summary = self.summary()
        if self.dist.is_main:
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))
        teardown_distributed(self.dist)
        return summary

    def _count(self, step_tokens: int, batches: list, started: float) -> None:
        """Add a finished step's tokens, FLOPs and seconds to the run's totals."""
        if self.flops_per_token is None:
            seq = batches[0].tokens.shape[1] - (1 if self.cfg.model.objective == "ar" else 0)
            self.flops_per_token = float(self.raw_model.flops_per_token(seq))
        self.tokens += step_tokens
        self.flops += step_tokens * self.flops_per_token
        self.elapsed += time.perf_counter() - started

    def _eval_and_log(
        self,
        step: int,
        loss: float | None,
        lr: float,
        rate: float,
        mfu: float,
        bar,
        is_eval: bool = True,
        norm: float | None = None,
    ) -> float | None:
        val = None
        if is_eval:
            val = self.evaluate()
            self.last_val = val
            if self.cfg.preview:
                self.save_preview(self.out / "previews" / f"step-{step:07d}.png")
        row: dict[str, Any] = {"step": step, "lr": lr, "tokens": self.tokens, "flops": self.flops}
        if loss is not None:
            row.update(train_loss=loss, grad_norm=norm, tokens_per_s=rate, mfu=mfu)
        if val is not None:
            row["val_loss"] = val
        row["time_s"] = round(self.elapsed, 3)
        self.metrics.record(row)
        if loss is not None:
            bar.set_postfix(
                loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}", mfu=f"{100 * mfu:.1f}%"
            )
        if val is not None:
            message = f"step {step}: val_loss {val:.4f}"
            if loss is not None:
                message += f", train_loss {loss:.4f}"
            if self.dist.is_main:
                bar.write(message) if not bar.disable else log.info(message)
        return val

    def summary(self) -> dict:
        """What :func:`train` returns (and writes to ``summary.json``)."""
        return {
            "out_dir": str(self.out),
            "steps": self.step,
            "tokens": self.tokens,
            "flops": self.flops,
            "final_train_loss": self.last_train,
            "final_val_loss": self.last_val,
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
            "best_step": self.best_step,
            "n_params": self.n_params,
            "wall_time_s": self.elapsed,
            "world_size": self.dist.world_size,
        }


def train(
    cfg: RunConfig,
    *,
    on_step: StepHook | None = None,
    loader_factory: LoaderFactory | None = None,
) -> dict:
    """Train (or resume) the run described by ``cfg``; return a summary dict.

    Summary keys: ``out_dir, steps, tokens, flops, final_train_loss,
    final_val_loss, best_val_loss, best_step, n_params, wall_time_s,
    world_size``. ``on_step(step, info)`` is called after every optimiser step
    (``info``: loss, lr, val_loss or None, tokens, the batches this rank read,
    the trainer); raising ``KeyboardInterrupt`` from it behaves like Ctrl-C.
    ``loader_factory`` replaces :func:`astropt.data.make_loader` (same signature).
    Raises :class:`TrainingDiverged` on a non-finite loss and
    :class:`~astropt.train.checkpoint.ArchitectureMismatch` when resuming a
    different architecture.
    """
    return Trainer(cfg, on_step=on_step, loader_factory=loader_factory).run()


# =====================================================================
# Command line
# =====================================================================
class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def run_training(cfg: RunConfig) -> int:
    """Train ``cfg`` (every torchrun process runs this); rank 0 prints the summary as JSON."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[_TqdmHandler()])
    # Expected failures (TrainingDiverged, a busy folder, a bad file) are astropt.errors
    # UserErrors: run_command prints them in one line, with a traceback under --debug.
    return run_and_print_summary("train", lambda: train(cfg))


COMMAND = Command(
    RunConfig,
    run_training,
    "Pretrain an AstroPT-style observation model. Reads a TOML run config (or a run's "
    "config.json), applies key=value overrides (nested keys such as model.n_layer=6, "
    "data.path=DIR, optim.lr=3e-4) and trains; under torchrun every process takes part "
    "(DDP or FSDP on gloo/nccl).",
    load=config_from_entries,
    skip_keys=tuple(f"model.{name}" for name in DATA_CONVENTIONS),
    examples=(
        "python train.py configs/quickstart.toml out_dir=runs/x max_iters=200",
        "python train.py configs/quickstart.toml out_dir=runs/x resume=true",
        "torchrun --standalone --nproc_per_node=8 train.py configs/astropt-095M.toml",
        "torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d "
        "--rdzv_endpoint=HOST:29500 train.py configs/astropt-095M.toml  # node 1: --node_rank=1",
        "astropt train configs/quickstart.toml --print-config",
    ),
)


def main(argv: list[str] | None = None) -> int:
    """``python train.py [CONFIG.toml] [key=value ...]`` (the same as ``astropt train``)."""
    return run_command(COMMAND, argv, "train.py")
