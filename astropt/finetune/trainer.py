"""The finetuning loop: ``finetune(cfg)`` in-process, ``python finetune.py CONFIG key=value`` outside.

A run starts from ``init_from`` weights (or a fresh trunk of the same
architecture: ``scratch``), adds a task head (:mod:`astropt.finetune.model`),
trains in one of three modes and evaluates on a held-out test split:

* ``probe``: the trunk is frozen (its weights stay bit-identical), the head trains;
* ``lora``: low-rank adapters on the trunk's attention and MLP projections
  train with the head (:mod:`astropt.finetune.lora`), then merge into the weights;
* ``full``: every weight trains, block ``i`` of ``L`` at ``lr * layer_decay**(L - i)``
  (layer-wise learning-rate decay, as in BEiT/ELECTRA finetuning), the tokeniser and
  positions at ``lr * layer_decay**(L + 1)``, the head at ``lr``.

(``mode=ridge`` runs no loop: :mod:`astropt.finetune.ridge`.) The labelled galaxies
come from :func:`astropt.finetune.data.open_checked_pool` (refused where the trunk
pretrained on them) and :func:`~astropt.finetune.data.choose_galaxies`
(``split=test`` scores the test part, ``split=dev`` a dev part with the test set aside).

Run folder (``cfg.out_dir``), the same conventions as pretraining::

    config.json               the resolved FinetuneConfig
    splits.json               ids of the train (labels used) / validation / test galaxies
    metrics.jsonl             one row per logged step: step, lr, train_loss, grad_norm,
                              examples_per_s (+ val_loss and the val score on eval steps)
    checkpoints/latest/       trainer_state.pt: weights (adapters included),
    checkpoints/best/         optimiser, RNG and loader states, step (atomic folders)
    model/                    the finetuned model folder (adapters merged):
                              astropt.hub.load_model(OUT / "model") loads it with its head
    test_metrics.json         scores on the test split (+ confusion.png for classes)
    summary.json              what finetune() returns

Checkpoints are written into a hidden folder and renamed into place
(:func:`astropt.io.atomic_write_dir`); ``resume=true``
continues from ``checkpoints/latest`` with the same data order, RNG and
optimiser state, so a resumed run equals an uninterrupted one. Under
``torchrun`` every process trains on its own shard of each batch order (DDP,
gloo on CPU, nccl on CUDA); evaluation runs on every rank over its shard and
the predictions are gathered.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from astropt import hub
from astropt.config import ConfigError
from astropt.data import map_loader
from astropt.distributed import setup_distributed, teardown_distributed
from astropt.errors import TrainingDiverged
from astropt.finetune import data as fdata
from astropt.finetune import lora
from astropt.finetune.config import FinetuneConfig, finetune_config_from_entries
from astropt.finetune.metrics import HEADLINE, confusion, plot_confusion, score
from astropt.finetune.model import FinetunedGPT, outputs_to_predictions
from astropt.finetune.modes import (
    head_config,
    inputs_as_trunk_expects,
    labelled_loader,
    load_trunk,
    make_optimizer,
    prepare_for_mode,
    write_splits,
)
from astropt.io import atomic_write, atomic_write_dir, atomic_write_text
from astropt.model import GPT
from astropt.options import Command, run_and_print_summary, run_command
from astropt.preprocessing import Preprocessing
from astropt.train.checkpoint import (
    CHECKPOINTS,
    TRAINER_STATE_NAME,
    prepare_run_dir,
    rng_state,
    seed_everything,
    set_rng_state,
)
from astropt.train.loop import (
    RunBase,
    Schedule,
    deferred_interrupts,
    progress_bar,
    run_lock,
    save_on_interrupt,
)
from astropt.train.metrics import MetricsLog
from astropt.train.optim import lr_at
from astropt.train.parallel import autocast_dtype

log = logging.getLogger("astropt.finetune")

#: One file per checkpoint folder: weights (adapters included), optimiser, RNG, loader, step.
STATE_NAME = TRAINER_STATE_NAME
MODEL_DIR = "model"
STATE_VERSION = 1


class _TaskLoss(nn.Module):
    """``forward(tokens, labels) -> loss`` (one forward for DDP to synchronise)."""

    def __init__(self, model: nn.Module, finetuned: FinetunedGPT, label_mean, label_std):
        super().__init__()
        self.model = model  # the FinetunedGPT, or the peft wrapper around it
        self.finetuned = finetuned
        self.register_buffer("label_mean", label_mean, persistent=False)
        self.register_buffer("label_std", label_std, persistent=False)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        outputs = self.finetuned.task_outputs(tokens)
        if self.finetuned.head_config.kind == "regression":
            labels = (labels.float() - self.label_mean) / self.label_std
        return self.finetuned.task_loss(outputs, labels)


# =====================================================================
# The finetuner
# =====================================================================
class Finetuner(RunBase):
    """State of one finetuning run; :func:`finetune` is the public entry point."""

    log = log

    def __init__(self, cfg: FinetuneConfig, on_step=None):
        self.cfg = cfg
        self.on_step = on_step
        self.dist, self.device = setup_distributed(cfg.device)
        self.out = Path(cfg.out_dir)
        self.ckpt_root = self.out / CHECKPOINTS
        self.amp_dtype = autocast_dtype(cfg.dtype, self.device)
        self.metrics = MetricsLog(self.out, self.dist.is_main)
        self.step = 0
        self.best_val = math.inf
        self.best_step: int | None = None
        self.last_saved_step: int | None = None
        self.elapsed = 0.0

    # ------------------------------------------------------------ data
    def _prepare_data(self, trunk: GPT) -> None:
        cfg = self.cfg
        inputs_as_trunk_expects(cfg, trunk, self.say, report=self.dist.is_main)
        self.pool, self.overlap = fdata.open_checked_pool(cfg)
        self.galaxies = fdata.choose_galaxies(cfg, self.pool)
        self.train_pos = self.galaxies.train
        # What each split name reads: the labels used for validation, the scored galaxies.
        self.splits = {
            "train": self.galaxies.train_split,
            "validation": self.galaxies.validation,
            cfg.split: self.galaxies.scored,
        }
        self.say(
            "%s: %d labelled galaxies; train %d (labels used %d), validation labels %d, %s %d",
            self.pool.label_text,
            len(self.pool.labels),
            len(self.galaxies.train_split),
            len(self.train_pos),
            len(self.galaxies.validation),
            cfg.split,
            len(self.galaxies.scored),
        )

    def _subset(self, positions: np.ndarray) -> fdata.LabelledSubset:
        return fdata.LabelledSubset(
            self.pool.source, self.pool.indices[positions], self.pool.labels[positions]
        )

    def _make_loaders(self) -> None:
        cfg = self.cfg
        world, rank = self.dist.world_size, self.dist.rank
        n_train = len(self.train_pos)
        batch = cfg.batch_size
        if n_train < batch * world:
            batch = max(1, n_train // world)
            self.say("only %d training labels: batch_size %d per process", n_train, batch)
        self.train_batch = batch
        self.train_loader = map_loader(
            self._subset(self.train_pos),
            cfg.data,
            f"{self.pool.label_text} [finetune train]",
            split="train",
            batch_size=batch,
            shuffle=True,
            augment=cfg.data.augment,
            seed=cfg.seed,
            rank=rank,
            world_size=world,
            device=self.device,
            drop_last=True,
            repeat=True,
        )

    def _eval_loader(self, split: str):
        positions = self.splits[split]
        loader = labelled_loader(
            self.cfg, self.pool, positions, split, self.device, self.dist.rank, self.dist.world_size
        )
        return positions, loader

    # ------------------------------------------------------------ model
    def _build(self, resume_weights: dict | None) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        trunk = load_trunk(cfg.init_from, cfg.model, cfg.seed)
        cfg.model = trunk.config
        self._prepare_data(trunk)
        head = head_config(cfg, self.pool, self.train_pos)
        model = FinetunedGPT.from_gpt(trunk, head)
        del trunk
        self.finetuned = model
        self.model = prepare_for_mode(model, cfg)
        if resume_weights is not None:
            self.model.load_state_dict(resume_weights)
        self.model.to(self.device)
        self.n_trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        mean = torch.tensor(head.target_mean or [0.0], dtype=torch.float32)
        std = torch.tensor(head.target_std or [1.0], dtype=torch.float32)
        step_module: nn.Module = _TaskLoss(self.model, model, mean, std).to(self.device)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            step_module = DDP(step_module, device_ids=ids)
        self.step_module = step_module
        self.optimizer = make_optimizer(self.model, cfg, model.config.n_layer)

    # ------------------------------------------------------------ state
    def _state(self) -> dict:
        per_rank = self.dist.gather(
            {"rng": rng_state(self.device), "loader": self.train_loader.state_dict()}
        )
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "elapsed": self.elapsed,
            "best_val_loss": self.best_val,
            "best_step": self.best_step,
            "world_size": self.dist.world_size,
            "optimizer": self.optimizer.state_dict(),
            "rng": [r["rng"] for r in per_rank],
            "loader": [r["loader"] for r in per_rank],
            "config": self.cfg.to_dict(),
        }

    def save_checkpoint(self, names: list[str]) -> None:
        state = self._state()  # collective
        if self.dist.is_main:
            from safetensors.torch import save_file

            weights = {
                k: v.detach().cpu().contiguous().clone() for k, v in self.model.state_dict().items()
            }
            first = self.ckpt_root / names[0]

            def fill(tmp: Path) -> None:
                # The weights as trained (adapters unmerged) beside the rest of the state.
                save_file(weights, str(tmp / hub.WEIGHTS_NAME))
                atomic_write(tmp / STATE_NAME, lambda p: torch.save(state, p))

            atomic_write_dir(first, fill)
            for name in names[1:]:
                atomic_write_dir(
                    self.ckpt_root / name,
                    lambda tmp: shutil.copytree(first, tmp, dirs_exist_ok=True),
                )
        self.last_saved_step = self.step
        self.dist.barrier()

    def _restore(self, state: dict) -> None:
        self.step = int(state["step"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.best_val = float(state["best_val_loss"])
        self.best_step = state.get("best_step")
        self.optimizer.load_state_dict(state["optimizer"])
        self.last_saved_step = self.step
        if int(state.get("world_size", 1)) != self.dist.world_size:
            raise ConfigError(
                f"{self.out} was finetuned by {state['world_size']} processes; resume it with "
                "the same number (the data shards would differ)"
            )
        self.train_loader.load_state_dict(state["loader"][self.dist.rank])
        self._resume_rng = state["rng"][self.dist.rank]

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict_split(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """``(positions, labels, predictions, mean loss)`` over a whole split (all ranks)."""
        positions, loader = self._eval_loader(split)
        finetuned = self.finetuned
        was_training = self.model.training
        self.model.eval()
        loss_module = (
            self.step_module.module if hasattr(self.step_module, "module") else self.step_module
        )
        rows: list[tuple[list, np.ndarray, np.ndarray]] = []
        loss_sum = 0.0
        for batch in loader:
            tokens = self._inputs(batch)
            labels = torch.as_tensor(batch.catalogue[fdata.LABEL_KEY]).to(self.device)
            with self.autocast():
                outputs = finetuned.task_outputs(tokens)
            if finetuned.head_config.kind == "regression":
                scaled = (labels.float() - loss_module.label_mean) / loss_module.label_std
            else:
                scaled = labels
            loss_sum += float(finetuned.task_loss(outputs, scaled)) * len(tokens)
            predictions = outputs_to_predictions(finetuned.head_config, outputs)
            rows.append((list(batch.ids), labels.cpu().numpy(), predictions.cpu().numpy()))
        self.model.train(was_training)
        gathered = self.dist.gather((rows, loss_sum))
        all_rows = [r for part, _ in gathered for r in part]
        total_loss = sum(loss for _, loss in gathered)
        labels = np.concatenate([r[1] for r in all_rows])
        predictions = np.concatenate([r[2] for r in all_rows])
        return positions, labels, predictions, total_loss / max(len(labels), 1)

    def evaluate(self, split: str = "validation") -> tuple[float, dict]:
        _, labels, predictions, loss = self.predict_split(split)
        head = self.finetuned.head_config
        return loss, score(head.kind, labels, predictions, head.targets, head.vote_groups)

    # ------------------------------------------------------------ loop
    def _inputs(self, batch) -> torch.Tensor:
        """The batch's tokens in the trunk's units (survey-wide stretch where it uses one)."""
        tokens = batch.tokens.to(self.device, non_blocking=True)
        if self.finetuned.config.token_scale == "patch":
            return tokens
        mean, std = (t.to(self.device, non_blocking=True) for t in (batch.mean, batch.std))
        return self.finetuned.prepare(tokens, mean, std)[0]

    def _train_step(self, iterator) -> tuple[float, float, int]:
        cfg = self.cfg
        lr = lr_at(self.step, cfg.optim, cfg.max_iters)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        with torch.random.fork_rng(devices=[]):
            batch = next(iterator)
        tokens = self._inputs(batch)
        labels = torch.as_tensor(batch.catalogue[fdata.LABEL_KEY]).to(self.device)
        with self.autocast():
            loss = self.step_module(tokens, labels)
        loss.backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        stats = self.dist.all_reduce(torch.stack([loss.detach().float(), norm.float()]))
        mean_loss = float(stats[0]) / self.dist.world_size
        if not math.isfinite(mean_loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                f"non-finite loss at step {self.step + 1}: lower optim.lr or use dtype=float32, "
                f"then resume=true from {self.ckpt_root / 'latest'}"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return mean_loss, float(stats[1]) / self.dist.world_size, len(tokens) * self.dist.world_size

    def run(self) -> dict:
        """Prepare the run folder (held for the run: a busy one is refused), build, train,
        evaluate on the test split; the process group started here is torn down at the end."""
        try:
            with run_lock(self.out, "finetuning run", self.dist, self.device):
                return self._run()
        finally:
            teardown_distributed(self.dist)

    def _run(self) -> dict:
        cfg = self.cfg
        point = prepare_run_dir(self.out, cfg.resume, cfg.overwrite, self.dist)
        resume_state = point.state if point is not None else None
        self._resume_rng = None
        self._build(point.weights if point is not None else None)
        self._make_loaders()
        if resume_state is not None:
            self._restore(resume_state)
            self.metrics.truncate(self.step)
            self.say("resumed %s at step %d", self.out, self.step)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                self.out / "config.json", json.dumps(cfg.to_dict(), indent=2, sort_keys=True)
            )
            self._write_splits()
        seed_everything(cfg.seed + 1_000_003 * self.dist.rank + 1)
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng, self.device)
        self.say(
            "%s: mode=%s, head=%s, %s trainable of %.2fM parameters, %s",
            self.out,
            cfg.mode,
            self.finetuned.head_config.kind,
            f"{self.n_trainable:,}",
            self.finetuned.num_params() / 1e6,
            self.device,
        )
        self._loop()
        return self._finish()

    def _loop(self) -> None:
        cfg = self.cfg
        schedule = Schedule(
            cfg.max_iters, cfg.eval_interval, cfg.log_interval, cfg.checkpoint_interval
        )
        enabled = self.dist.is_main and cfg.progress
        bar = progress_bar(cfg.max_iters, self.step, enabled, f"finetune {cfg.mode}")
        iterator = iter(self.train_loader)
        window_start, window_examples = time.perf_counter(), 0
        self.model.train()
        try:
            while self.step < cfg.max_iters:
                note = f"stopping after step {self.step + 1} is recorded"
                with deferred_interrupts(note):
                    started = time.perf_counter()
                    loss, norm, examples = self._train_step(iterator)
                    self.elapsed += time.perf_counter() - started
                    window_examples += examples
                    bar.update(1)
                    is_eval = schedule.is_eval(self.step)
                    improved = False
                    if schedule.is_log(self.step):
                        rate = window_examples / max(time.perf_counter() - window_start, 1e-9)
                        row: dict[str, Any] = {
                            "step": self.step,
                            "lr": lr_at(self.step - 1, cfg.optim, cfg.max_iters),
                            "train_loss": loss,
                            "grad_norm": norm,
                            "examples_per_s": rate,
                        }
                        if is_eval:
                            val_loss, scores = self.evaluate("validation")
                            row["val_loss"] = val_loss
                            headline = HEADLINE[self.finetuned.head_config.kind]
                            row[f"val_{headline}"] = scores[headline]
                            improved = val_loss < self.best_val
                            if improved:
                                self.best_val, self.best_step = val_loss, self.step
                            bar.set_postfix(loss=f"{loss:.4f}", val=f"{val_loss:.4f}")
                        row["time_s"] = round(self.elapsed, 3)
                        self.metrics.record(row)
                        window_start, window_examples = time.perf_counter(), 0
                    names = schedule.checkpoints(self.step, improved)
                    if names:
                        self.save_checkpoint(names)
                        window_start = time.perf_counter()
                    if self.on_step is not None:
                        self.on_step(self.step, {"loss": loss, "finetuner": self})
        except KeyboardInterrupt:
            bar.close()
            save_on_interrupt(self, log)
            raise
        finally:
            bar.close()

    def _write_splits(self) -> None:
        write_splits(self.out, self.pool, self.galaxies)

    def _finish(self) -> dict:
        cfg = self.cfg
        best = self.ckpt_root / "best" / hub.WEIGHTS_NAME
        if self.best_step is not None and best.is_file():
            # Every rank reads the best weights (the file is complete: written before a barrier).
            from safetensors.torch import load_file

            self.model.load_state_dict(load_file(str(best)))
        positions, labels, predictions, test_loss = self.predict_split(cfg.split)
        head = self.finetuned.head_config
        scores = score(head.kind, labels, predictions, head.targets, head.vote_groups)
        scores["loss"] = test_loss
        final = lora.merge_adapters(self.model) if cfg.mode == "lora" else self.finetuned
        summary = {
            "out_dir": str(self.out),
            "mode": cfg.mode,
            "init_from": cfg.init_from,
            "head": head.kind,
            "targets": head.targets,
            "steps": self.step,
            "best_step": self.best_step,
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
            "n_labels": int(len(self.train_pos)),
            "n_validation": int(len(self.galaxies.validation)),
            "labels_used": self.galaxies.labels_used,
            "split": cfg.split,
            "n_test": int(len(labels)),
            "pretraining_overlap": self.overlap,
            "label_fraction": cfg.label_fraction,
            "seed": cfg.seed,
            "trainable_params": self.n_trainable,
            "wall_time_s": self.elapsed,
            "world_size": self.dist.world_size,
            cfg.split: scores,
        }
        if self.dist.is_main:
            atomic_write_text(
                self.out / f"{cfg.split}_metrics.json", json.dumps(scores, indent=2, default=float)
            )
            if head.kind == "classification" and cfg.confusion_png:
                matrix = confusion(labels, predictions.argmax(1), head.n_outputs)
                plot_confusion(
                    matrix,
                    head.class_names,
                    self.out / "confusion.png",
                    title=f"{cfg.mode} from {cfg.init_from}: {cfg.split} accuracy "
                    f"{scores['accuracy']:.3f} (n={len(labels)})",
                )
            final.save_pretrained(
                self.out / MODEL_DIR,
                preprocessing=Preprocessing.of(cfg.data),
                training_data=self.pool.label_text,
                training_summary={k: v for k, v in summary.items() if k != cfg.split},
                probe_results={cfg.split: {k: v for k, v in scores.items() if k != "per_target"}},
            )
            atomic_write_text(
                self.out / "summary.json", json.dumps(summary, indent=2, default=float)
            )
        self.dist.barrier()
        return summary


def finetune(cfg: FinetuneConfig, *, on_step=None) -> dict:
    """Finetune (or resume) the run described by ``cfg``; return its summary.

    Summary keys: ``out_dir, mode, init_from, head, targets, steps, best_step,
    best_val_loss, n_labels, n_test, label_fraction, seed, trainable_params,
    wall_time_s, world_size, test`` (the test scores). ``on_step(step, info)``
    runs after every optimiser step; raising ``KeyboardInterrupt`` from it
    behaves like Ctrl-C (``checkpoints/latest`` is saved).
    """
    if cfg.mode == "ridge":
        from astropt.finetune.ridge import ridge_probe

        return ridge_probe(cfg)
    return Finetuner(cfg, on_step=on_step).run()


# =====================================================================
# Command line
# =====================================================================
def run_finetune(cfg: FinetuneConfig) -> int:
    """Run ``cfg``; print the summary (rank 0); returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # A bad label column or split (ValueError) is the user's to fix, like the UserErrors.
    return run_and_print_summary("finetune", lambda: finetune(cfg), (ValueError,))


COMMAND = Command(
    FinetuneConfig,
    run_finetune,
    "Finetune a pretrained model (or one from scratch) on labelled galaxies: a "
    "classification, regression or vote head; probe, lora or full mode. Under torchrun "
    "every process takes part (DDP).",
    load=finetune_config_from_entries,
    # The trunk decides how its inputs are made (data conventions): not settable per run.
    skip_keys=tuple(f"model.{name}" for name in ("patch_size", "order", "transpose_hw")),
    examples=(
        "python finetune.py configs/finetune-quickstart.toml init_from=runs/x mode=lora "
        "label_column=galaxy10",
        "astropt finetune configs/finetune-quickstart.toml head=regression "
        "label_column=log_mstar label_fraction=0.1",
        "torchrun --standalone --nproc_per_node=4 finetune.py configs/finetune-galaxy10.toml",
    ),
)


def main(argv: list[str] | None = None) -> int:
    """``python finetune.py [CONFIG.toml] [key=value ...]`` (the same as ``astropt finetune``)."""
    return run_command(COMMAND, argv, "finetune.py")
