"""The pretraining loop: ``train(cfg)`` in-process, ``python train.py CONFIG key=value`` outside.

One optimiser step is ``grad_accum`` micro-batches summed over all processes
(each of the ``world_size`` processes runs ``grad_accum / world_size`` of them),
then gradient clipping and AdamW (weight decay on matrices only), with a linear
warmup and a cosine decay of the learning rate to ``optim.min_lr``.

Run folder (``cfg.out_dir``)::

    config.json                 the resolved RunConfig
    metrics.jsonl               one row per logged step: step, train_loss, lr,
                                tokens, flops, tokens_per_s, mfu (+ val_loss on eval steps)
    summary.json                the dict train() returns, at the end
    previews/step-NNNNNNN.png   reconstruction previews of validation galaxies
    checkpoints/latest/         model folder (config.json, model.safetensors via
    checkpoints/best/           astropt.hub) + trainer_state.pt (optimiser,
    checkpoints/step-NNNNNNN/   scheduler, RNG and data-loader states, step)

A checkpoint is written into a hidden temporary folder and renamed into place,
so an interrupted write never replaces a good checkpoint (the previous one is
kept as ``.NAME.old`` for the instant between the two renames and recovered
from there if the process dies in that instant).

Distributed: under ``torchrun`` every process trains on its own shard of the
data (``make_loader(rank=, world_size=)``), gradients are averaged by DDP
(``gloo`` on CPU, ``nccl`` on CUDA) or the model is sharded with FSDP
(``parallel=fsdp``); evaluation runs on every rank over its validation shard
and the losses are all-reduced; rank 0 alone logs and writes files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors.torch import load_file

from astropt import hub
from astropt.config import ConfigError, RunConfig, config_from_dict, describe_keys, load_config
from astropt.data.config import convention_mismatches
from astropt.device import native_bf16, resolve_device
from astropt.io import (
    atomic_write,
    atomic_write_dir,
    atomic_write_text,
    load_state_checked,
    recover_atomic_dirs,
)
from astropt.model import GPT, GPTConfig, mae_mask

log = logging.getLogger("astropt.training")

TRAINER_STATE_NAME = "trainer_state.pt"
CHECKPOINTS = "checkpoints"
#: GPTConfig fields a run may change when it resumes or starts from other
#: weights; every other field shapes the network or its inputs.
TUNABLE_MODEL_FIELDS = ("dropout", "embed_layer", "mask_ratio", "prefix_len")
STATE_VERSION = 1


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient: the run stopped before applying the update."""


class ArchitectureMismatch(ConfigError):
    """A checkpoint whose architecture differs from the run's config."""


# =====================================================================
# Small pieces (importable on their own: tests and benchmarks use them)
# =====================================================================
def lr_at(step: int, optim, max_iters: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warmup, cosine, floor.

    Warmup: ``lr * (step + 1) / (warmup_iters + 1)`` for ``step < warmup_iters``
    (never 0, so the first step moves). Then a cosine from ``lr`` at
    ``warmup_iters`` to ``min_lr`` at ``decay_iters`` (default ``max_iters``),
    and ``min_lr`` after.
    """
    min_lr = optim.lr / 10 if optim.min_lr is None else optim.min_lr
    decay_iters = max_iters if optim.decay_iters is None else optim.decay_iters
    if step < optim.warmup_iters:
        return optim.lr * (step + 1) / (optim.warmup_iters + 1)
    if step >= decay_iters:
        return min_lr
    progress = (step - optim.warmup_iters) / max(1, decay_iters - optim.warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (optim.lr - min_lr)


def make_optimizer(model: nn.Module, optim, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (``dim >= 2``) only.

    LayerNorm weights, biases and the MAE mask token are not decayed. The
    kernel is ``optim.impl``: ``auto`` takes the fused one (CPU and CUDA in
    torch >= 2.4), ``foreach`` and ``for`` are the fallbacks.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    impl = optim.impl
    kwargs: dict[str, Any] = {}
    if impl == "auto":
        # Sharded (DTensor) parameters take the foreach kernel; plain ones the fused one.
        sharded = any(type(p).__name__ == "DTensor" for p in params)
        impl = "foreach" if sharded else "fused"
    if impl == "fused":
        kwargs["fused"] = True
    elif impl == "foreach":
        kwargs["foreach"] = True
    else:
        kwargs["foreach"] = False
    return torch.optim.AdamW(
        groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, **kwargs
    )


def log_spaced_steps(count: int, max_iters: int) -> list[int]:
    """``count`` snapshot steps: 0 (the initialisation), then geometric up to ``max_iters``."""
    if count <= 0 or max_iters <= 0:
        return []
    if count == 1:
        return [max_iters]
    steps = {0}
    steps.update(int(round(s)) for s in np.geomspace(1, max_iters, count - 1))
    return sorted(steps)


def measure_matmul_peak(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int | None = None,
    seconds: float = 0.3,
) -> float:
    """Measured dense matmul throughput in FLOP/s (best of several timed bursts).

    ``size``: side of the square matrices (default 4096 on CUDA, 1024 on CPU).
    The basis of model FLOPs utilisation when no ``peak_flops`` is configured.
    """
    device = torch.device(device)
    n = size or (4096 if device.type == "cuda" else 1024)
    # A private generator: measuring must not move the training RNG.
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device, dtype)
    b = torch.randn(n, n, generator=generator).to(device, dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        a @ b
    sync()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        reps = 4
        sync()
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - start) / reps)
        if time.perf_counter() > deadline:
            break
    return 2.0 * n**3 / best


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of config ``dtype`` on ``device`` (None: plain float32).

    ``auto``: bfloat16 where the hardware computes it natively (CUDA devices
    with bf16; CPUs with AVX512-BF16 or AMX, where a bf16 step is about twice
    as fast as fp32), else float32. Weights, optimiser state, LayerNorm and the
    loss stay float32 either way (autocast).
    """
    if name == "float32":
        return None
    if name == "bfloat16":
        return torch.bfloat16
    if name == "float16":
        return torch.float16
    if native_bf16(device):
        return torch.bfloat16
    return None


def architecture_diff(saved: GPTConfig | dict, current: GPTConfig) -> list[str]:
    """``["n_layer: checkpoint 4, config 6", ...]`` over the fields that shape the network."""
    saved_values = saved if isinstance(saved, dict) else dataclasses.asdict(saved)
    diffs = []
    for f in dataclasses.fields(GPTConfig):
        if f.name in TUNABLE_MODEL_FIELDS:
            continue
        mine = getattr(current, f.name)
        theirs = saved_values.get(f.name, f.default)
        if theirs != mine:
            diffs.append(f"{f.name}: checkpoint {theirs!r}, config {mine!r}")
    return diffs


# =====================================================================
# Checkpoint folders
# =====================================================================
def load_trainer_state(folder: str | os.PathLike) -> dict:
    """The ``trainer_state.pt`` of a checkpoint folder (written by this module)."""
    path = Path(folder) / TRAINER_STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {TRAINER_STATE_NAME}: not a training checkpoint")
    # Our own file from the run folder: it holds RNG and loader states (numpy
    # arrays, tuples), which the weights-only unpickler refuses.
    return torch.load(path, map_location="cpu", weights_only=False)


class _Weights:
    """What ``hub.save_pretrained`` needs: a config and a full (unsharded) state dict."""

    def __init__(self, config: GPTConfig, state: dict[str, torch.Tensor]):
        self.config = config
        self._state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state

    def num_params(self) -> int:
        return sum(t.numel() for t in self._state.values())


# =====================================================================
# Distributed setup
# =====================================================================
@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _resolve_device(name: str, local_rank: int) -> torch.device:
    try:
        device = resolve_device(name, local_rank)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _setup_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo()
    if world_size > 1 or dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = _resolve_device(device_name, local_rank)
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(
                backend=backend, device_id=device if backend == "nccl" else None
            )
            info.initialised_here = True
        info.rank, info.world_size, info.local_rank = (
            dist.get_rank(),
            dist.get_world_size(),
            local_rank,
        )
        return info, device
    return info, _resolve_device(device_name, 0)


def _rng_state(device: torch.device) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        # Legacy global generators: not used by astropt, saved for code that does.
        "numpy": np.random.get_state(),  # noqa: NPY002
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    random.seed(seed)


@contextmanager
def _deferred_interrupts():
    """Hold SIGINT (Ctrl-C) until the block ends, then raise KeyboardInterrupt."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *args: received.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


class _LossModule(nn.Module):
    """``forward(tokens) -> loss``: the training objective behind one ``forward``.

    DDP synchronises gradients only for work done inside its ``forward``, and
    the objective lives in ``GPT.compute_loss``; this wrapper joins the two.
    """

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.compute_loss(tokens)[1]


# =====================================================================
# The trainer
# =====================================================================
StepHook = Callable[[int, dict], None]
LoaderFactory = Callable[..., Any]


class Trainer:
    """State of one run; :func:`train` is the public entry point."""

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
        self.dist, self.device = _setup_distributed(cfg.device)
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
        self.step = 0
        self.tokens = 0
        self.flops = 0.0
        self.best_val = math.inf
        self.best_step: int | None = None
        self.last_val: float | None = None
        self.last_train: float | None = None
        self.last_saved_step: int | None = None
        self.elapsed = 0.0  # training seconds over all sessions of this run
        self._writers: list[Any] = []

    # ------------------------------------------------------------ helpers
    def say(self, message: str, *args) -> None:
        if self.dist.is_main:
            log.info(message, *args)

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.dist.enabled:
            dist.all_reduce(tensor)
        return tensor

    def _barrier(self) -> None:
        if self.dist.enabled:
            dist.barrier()

    # -------------------------------------------------------------- setup
    def _prepare_out_dir(self) -> dict | None:
        """Rank 0 checks the run folder; returns the trainer state to resume from, if any."""
        cfg = self.cfg
        latest = self.ckpt_root / "latest"
        if self.dist.is_main:
            recover_atomic_dirs(self.ckpt_root)
        self._barrier()
        has_checkpoints = latest.is_dir() or (self.ckpt_root / "best").is_dir()
        if cfg.resume:
            if (latest / TRAINER_STATE_NAME).is_file():
                return load_trainer_state(latest)
            self.say("resume=true but %s holds no checkpoint: starting from scratch", self.out)
            return None
        if has_checkpoints and not cfg.overwrite:
            raise ConfigError(
                f"{self.out} already holds checkpoints: pass resume=true to continue that run, "
                "overwrite=true to replace it, or another out_dir"
            )
        if has_checkpoints and self.dist.is_main:
            self.say("overwrite=true: removing the checkpoints and metrics of %s", self.out)
            shutil.rmtree(self.ckpt_root, ignore_errors=True)
            shutil.rmtree(self.out / "previews", ignore_errors=True)
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
        self._barrier()
        return None

    def _build_model(self, resume_state: dict | None) -> GPT:
        cfg = self.cfg
        if resume_state is not None:
            folder = self.ckpt_root / "latest"
            saved = json.loads((folder / hub.CONFIG_NAME).read_text())
            diffs = architecture_diff(saved, cfg.model)
            if diffs:
                raise ArchitectureMismatch(
                    f"cannot resume from {folder}: it was trained with a different architecture ("
                    + "; ".join(diffs)
                    + f"). Use the checkpoint's values (see {self.out / 'config.json'}) "
                    "or start a new out_dir."
                )
            model = GPT(cfg.model)
            state = load_file(str(folder / hub.WEIGHTS_NAME), device="cpu")
            load_state_checked(model, state, source=str(folder))
            return model
        if cfg.init_from and cfg.init_from.lower() not in ("scratch", "none"):
            loaded = hub.load_model(cfg.init_from)
            base = loaded.config
            conventions = [
                f"data.{name}={getattr(base, name)!r} (run has {getattr(cfg.data, name)!r})"
                for name in convention_mismatches(cfg.data, base)
            ]
            if conventions:
                raise ConfigError(
                    f"init_from={cfg.init_from} expects its inputs made with "
                    + ", ".join(conventions)
                    + ": set those data keys"
                )
            ignored = architecture_diff(base, cfg.model)
            if ignored:
                self.say(
                    "init_from=%s: the architecture comes from its config; ignoring %s",
                    cfg.init_from,
                    "; ".join(d.replace("checkpoint", "weights") for d in ignored),
                )
            values = dataclasses.asdict(base)
            for name in TUNABLE_MODEL_FIELDS:
                values[name] = getattr(cfg.model, name)
            cfg.model = GPTConfig(**values)
            model = GPT(cfg.model)
            load_state_checked(model, loaded.state_dict(), source=str(cfg.init_from))
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

    def _wrap(self, model: GPT) -> None:
        """The module the loop calls: compiled and/or DDP/FSDP-wrapped objective."""
        cfg = self.cfg
        self.raw_model = model
        self.fsdp = self.dist.enabled and cfg.parallel == "fsdp"
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            # One shard group per block, then the rest (tokeniser, head, positions).
            for block in model.blocks:
                fully_shard(block)
            fully_shard(model)
        step_module: nn.Module = _LossModule(model)
        if cfg.compile:
            step_module = torch.compile(step_module)
        if self.dist.enabled and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            device_ids = [self.device.index] if self.device.type == "cuda" else None
            step_module = DDP(step_module, device_ids=device_ids)
        self.step_module = step_module

    # ------------------------------------------------------- state (I/O)
    def _full_model_state(self) -> dict[str, torch.Tensor]:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            return get_model_state_dict(
                self.raw_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return self.raw_model.state_dict()

    def _full_optim_state(self) -> dict | None:
        if not self.optimizer.state:
            # Before the first step there is nothing to save; and torch's
            # distributed state-dict helper would "initialise" the state by
            # running a zero-gradient step, shifting Adam's step count by one.
            return None
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            return get_optimizer_state_dict(
                self.raw_model,
                self.optimizer,
                options=StateDictOptions(full_state_dict=True, cpu_offload=True),
            )
        return self.optimizer.state_dict()

    def _gather(self, obj: Any) -> list:
        if not self.dist.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def _trainer_state(self) -> dict:
        """Everything but the weights; collective (every rank must call it)."""
        per_rank = self._gather(self._step_snapshot())
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "tokens": self.tokens,
            "flops": self.flops,
            "elapsed": self.elapsed,
            "best_val_loss": self.best_val,
            "best_step": self.best_step,
            "world_size": self.dist.world_size,
            "optimizer": self._full_optim_state(),
            "scheduler": self.scheduler.state_dict(),
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
                {"rng": _rng_state(self.device), "loader": self.train_loader.state_dict()},
            )
            self._snapshot = snapshot
        return snapshot[1]

    def save_checkpoint(self, names: list[str]) -> None:
        """Write ``checkpoints/NAME`` for each name (the first written, the rest copied)."""
        state = self._trainer_state()
        weights = self._full_model_state()
        if self.dist.is_main:
            first = self.ckpt_root / names[0]

            def fill(tmp: Path) -> None:
                hub.save_pretrained(
                    _Weights(self.cfg.model, weights),
                    tmp,
                    training_data=f"{self.cfg.data.source}: {self.cfg.data.path or '(on the fly)'}",
                    training_summary={
                        "step": self.step,
                        "tokens": self.tokens,
                        "flops": self.flops,
                        "best_val_loss": self.best_val,
                    },
                )
                atomic_write(tmp / TRAINER_STATE_NAME, lambda p: torch.save(state, p))

            atomic_write_dir(first, fill)
            for name in names[1:]:
                atomic_write_dir(
                    self.ckpt_root / name,
                    lambda tmp: shutil.copytree(first, tmp, dirs_exist_ok=True),
                )
        self.last_saved_step = self.step
        self._barrier()

    def _restore(self, state: dict) -> None:
        self.step = int(state["step"])
        self.tokens = int(state["tokens"])
        self.flops = float(state["flops"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.best_val = float(state["best_val_loss"])
        self.best_step = state.get("best_step")
        if state["optimizer"] is None:
            pass  # saved before the first step: a fresh optimiser is the same
        elif self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(
                self.raw_model,
                self.optimizer,
                state["optimizer"],
                options=StateDictOptions(full_state_dict=True),
            )
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.last_saved_step = self.step
        saved_world = int(state.get("world_size", 1))
        if saved_world == self.dist.world_size:
            self.train_loader.load_state_dict(state["loader"][self.dist.rank])
            self._resume_rng = state["rng"][self.dist.rank]
        else:
            # Another number of processes shards the data differently: the exact
            # stream cannot continue. Start a fresh order rather than replay step 0's.
            self.say(
                "world size changed (%d -> %d): data order and RNG restart with seed %d",
                saved_world,
                self.dist.world_size,
                self.cfg.seed + self.step,
            )
            self._resume_rng = None
            self._make_loaders(seed=self.cfg.seed + self.step)

    def _truncate_metrics(self) -> None:
        """Drop metrics rows past the checkpoint (work the resumed run redoes)."""
        path = self.out / "metrics.jsonl"
        if not self.dist.is_main or not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if int(row.get("step", 0)) <= self.step:
                kept.append(line)
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    # ------------------------------------------------------------ logging
    def _open_writers(self) -> None:
        if not self.dist.is_main:
            return
        cfg = self.cfg
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writers.append(("tb", SummaryWriter(str(self.out / "tensorboard"))))
            except ImportError:
                log.warning("tensorboard=true but tensorboard is not installed: skipped")
        if cfg.wandb:
            try:
                import wandb

                run = wandb.init(
                    project=cfg.wandb_project,
                    config=cfg.to_dict(),
                    dir=str(self.out),
                    resume="allow",
                    id=self.out.resolve().name,
                )
                self._writers.append(("wandb", run))
            except ImportError:
                log.warning("wandb=true but wandb is not installed: skipped")

    def _record(self, row: dict) -> None:
        if not self.dist.is_main:
            return
        with open(self.out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        for kind, writer in self._writers:
            if kind == "tb":
                for key, value in numbers.items():
                    writer.add_scalar(key, value, row["step"])
            else:
                writer.log(numbers, step=row["step"])

    def _close_writers(self) -> None:
        for kind, writer in self._writers:
            writer.close() if kind == "tb" else writer.finish()
        self._writers = []

    # --------------------------------------------------------- evaluation
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
                tokens = batch.tokens.to(self.device, non_blocking=True)
                with self.autocast():
                    _, loss = model.compute_loss(tokens)
                total[0] += loss.double() * tokens.shape[0]
                total[1] += tokens.shape[0]
        if self.fsdp:
            # FSDP keeps the root's parameters gathered after a forward without
            # backward; shard them again so the optimiser's parameters are the
            # module's (checkpointing maps one onto the other).
            model.reshard()
        self._all_reduce(total)
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

    # --------------------------------------------------------------- loop
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

    def _train_step(self, iterator: Iterator, lr: float) -> tuple[float, float, int, list]:
        """One optimiser step: returns (global mean loss, grad norm, global tokens, batches)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        tokens = 0
        batches = []
        for micro in range(self.accum):
            batch = self._next_batch(iterator)
            batches.append(batch)
            x = batch.tokens.to(self.device, non_blocking=True)
            tokens += x.shape[0] * (x.shape[1] - (1 if self.cfg.model.objective == "ar" else 0))
            last = micro == self.accum - 1
            with self._no_sync(last), self.autocast():
                loss = self.step_module(x)
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
        stats = self._all_reduce(torch.stack([local_loss, (~finite).float(), norm]))
        stats = stats.tolist()
        mean_loss, grad_norm = stats[0] / self.dist.world_size, stats[2] / self.dist.world_size
        if stats[1] > 0:
            self.optimizer.zero_grad(set_to_none=True)
            last = (
                f"{self.ckpt_root / 'latest'} (step {self.last_saved_step})"
                if self.last_saved_step is not None
                else "none (no checkpoint was written yet)"
            )
            raise TrainingDiverged(
                f"non-finite loss or gradient at step {self.step + 1} (loss {mean_loss:.4g}, "
                f"grad norm {grad_norm:.4g}); the update was not applied. Last good "
                f"checkpoint: {last}. Lower optim.lr, keep optim.grad_clip > 0 or use "
                "dtype=float32, then resume=true."
            )
        with _deferred_interrupts():  # never half an update: Ctrl-C waits for the step's end
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            self._snapshot = None
            self._step_snapshot()
        return mean_loss, grad_norm, tokens * self.dist.world_size, batches

    @contextmanager
    def _no_sync(self, last: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of a step."""
        if last or not self.dist.enabled:
            yield
        elif self.fsdp:
            self.raw_model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.raw_model.set_requires_gradient_sync(True)
        else:
            with self.step_module.no_sync():
                yield

    def run(self) -> dict:
        cfg = self.cfg
        resume_state = self._prepare_out_dir()
        self._resume_rng = None
        # Same seed on every rank for the initial weights (DDP also broadcasts them).
        _seed_everything(cfg.seed)
        model = self._build_model(resume_state).to(self.device)
        n_params = model.num_params()
        self._wrap(model)
        self.optimizer = make_optimizer(model, cfg.optim, self.device)
        base_lr = cfg.optim.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_at(step, cfg.optim, cfg.max_iters) / base_lr
        )
        self.scaler = (
            torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        )
        self._make_loaders()
        if resume_state is not None:
            self._restore(resume_state)
            self._truncate_metrics()
            self.say("resumed %s at step %d", self.out, self.step)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                self.out / "config.json", json.dumps(cfg.to_dict(), indent=2, sort_keys=True)
            )
        # Training randomness (MAE masks, prefixes, dropout) differs across ranks.
        _seed_everything(cfg.seed + 1_000_003 * self.dist.rank + 1)
        if self._resume_rng is not None:
            _set_rng_state(self._resume_rng, self.device)

        peak = cfg.peak_flops or measure_matmul_peak(
            self.device, self.amp_dtype or torch.float32, seconds=0.2
        )
        self._open_writers()
        self.say(
            "%s: %.2fM parameters, %d processes x %d micro-batches of %d, %s, %s, peak %.3g FLOP/s",
            self.out,
            n_params / 1e6,
            self.dist.world_size,
            self.accum,
            cfg.batch_size,
            self.device,
            self.amp_dtype or torch.float32,
            peak,
        )
        snapshots = set(log_spaced_steps(cfg.log_checkpoints, cfg.max_iters))
        checkpoint_interval = cfg.checkpoint_interval or cfg.eval_interval
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.max_iters,
            initial=self.step,
            disable=not (self.dist.is_main and cfg.progress),
            dynamic_ncols=True,
            desc="train",
        )
        fpt: float | None = None
        iterator = iter(self.train_loader)
        interrupted = False
        try:
            if self.step == 0:
                self._eval_and_log(0, None, lr_at(0, cfg.optim, cfg.max_iters), 0, 0, peak, bar)
                if 0 in snapshots:
                    self.save_checkpoint(["step-0000000"])
            window_start, window_tokens = time.perf_counter(), 0
            while self.step < cfg.max_iters:
                started = time.perf_counter()
                lr = lr_at(self.step, cfg.optim, cfg.max_iters)
                loss, norm, step_tokens, batches = self._train_step(iterator, lr)
                if fpt is None:
                    seq = batches[0].tokens.shape[1] - (1 if cfg.model.objective == "ar" else 0)
                    fpt = float(self.raw_model.flops_per_token(seq))
                self.tokens += step_tokens
                self.flops += step_tokens * fpt
                self.elapsed += time.perf_counter() - started
                self.last_train = loss
                window_tokens += step_tokens
                bar.update(1)
                is_eval = self.step % cfg.eval_interval == 0 or self.step == cfg.max_iters
                is_log = self.step % cfg.log_interval == 0 or is_eval
                val = None
                if is_log:
                    now = time.perf_counter()
                    rate = window_tokens / max(now - window_start, 1e-9)
                    mfu = rate * fpt / (peak * self.dist.world_size)
                    val = self._eval_and_log(
                        self.step, loss, lr, rate, mfu, peak, bar, is_eval, norm
                    )
                    window_start, window_tokens = time.perf_counter(), 0
                names = []
                if val is not None and val < self.best_val:
                    self.best_val, self.best_step = val, self.step
                    names.append("best")
                if self.step % checkpoint_interval == 0 or self.step == cfg.max_iters:
                    names.insert(0, "latest")
                if self.step in snapshots:
                    names.append(f"step-{self.step:07d}")
                if names:
                    self.save_checkpoint(names)
                    window_start = time.perf_counter()  # checkpoint time is not training speed
                if self.on_step is not None:
                    self.on_step(
                        self.step,
                        {
                            "loss": loss,
                            "lr": lr,
                            "val_loss": val,
                            "tokens": self.tokens,
                            "batches": batches,
                            "trainer": self,
                        },
                    )
        except KeyboardInterrupt:
            interrupted = True
            bar.close()
            if not self.dist.enabled and self.last_saved_step != self.step:
                log.warning("interrupted at step %d: saving checkpoints/latest", self.step)
                self.save_checkpoint(["latest"])
            elif self.dist.enabled:
                log.warning(
                    "interrupted at step %d: under torchrun the processes cannot agree on a "
                    "checkpoint; the last one is step %s",
                    self.step,
                    self.last_saved_step,
                )
            raise
        finally:
            bar.close()
            self._close_writers()
            if interrupted or sys.exc_info()[0] is not None:
                self._teardown()
        summary = {
            "out_dir": str(self.out),
            "steps": self.step,
            "tokens": self.tokens,
            "flops": self.flops,
            "final_train_loss": self.last_train,
            "final_val_loss": self.last_val,
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
            "best_step": self.best_step,
            "n_params": n_params,
            "wall_time_s": self.elapsed,
            "world_size": self.dist.world_size,
        }
        if self.dist.is_main:
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))
        self._teardown()
        return summary

    def _eval_and_log(
        self,
        step: int,
        loss: float | None,
        lr: float,
        rate: float,
        mfu: float,
        peak: float,
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
        self._record(row)
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

    def _teardown(self) -> None:
        if self.dist.initialised_here and dist.is_initialized():
            dist.destroy_process_group()
            self.dist.initialised_here = False


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
    :class:`ArchitectureMismatch` when resuming a different architecture.
    """
    return Trainer(cfg, on_step=on_step, loader_factory=loader_factory).run()


# =====================================================================
# Reconstruction previews
# =====================================================================
@torch.no_grad()
def reconstruct(
    model: GPT, tokens: torch.Tensor, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's full-sequence reconstruction of ``tokens`` ``(B, N, D)``, normalised units.

    ``ar``: position 0 is the true first patch, position ``t > 0`` the
    prediction from patches ``< t``. ``mae``: masked positions predicted, the
    rest kept; also returns the ``(B, N)`` mask (None for ``ar``).
    """
    if model.config.objective == "ar":
        predictions, _ = model(tokens[:, :-1], prefix_len=1)
        return torch.cat([tokens[:, :1], predictions.to(tokens.dtype)], dim=1), None
    generator = torch.Generator(device=tokens.device).manual_seed(seed)
    mask = mae_mask(tokens.shape[:2], model.config.mask_ratio, generator, tokens.device)
    predictions, _ = model(tokens, mask=mask)
    return torch.where(mask[..., None], predictions.to(tokens.dtype), tokens), mask


def render_preview(
    model: GPT,
    batch: Any,
    path: Path,
    n: int = 6,
    autocast: Callable = nullcontext,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> Path:
    """Save a PNG: rows of validation galaxies, the model's reconstruction (and MAE input)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from astropt.display import percentile_stretch
    from astropt.tokens import tokens_to_images

    cfg = model.config
    tokens = batch.tokens[:n].to(device)
    mean, std = batch.mean[:n].to(device), batch.std[:n].to(device)
    was_training = model.training
    model.eval()
    with autocast():
        recon, mask = reconstruct(model, tokens.float(), seed=seed)
    model.train(was_training)
    image_hw = tuple(batch.images.shape[-2:])

    def to_images(patches: torch.Tensor) -> np.ndarray:
        images = tokens_to_images(
            patches.float(), image_hw, cfg.patch_size, cfg.order, cfg.transpose_hw, mean, std
        )
        return images.cpu().numpy()

    rows = [("galaxy", to_images(tokens)), ("model", to_images(recon))]
    if mask is not None:
        rows.insert(1, ("masked input", to_images(torch.where(mask[..., None], 0.0, tokens))))
    truth = rows[0][1]
    count = truth.shape[0]
    fig, axes = plt.subplots(
        len(rows), count, figsize=(1.6 * count, 1.7 * len(rows)), squeeze=False
    )
    # One stretch per galaxy, from its true pixels, applied to every row.
    rows = [(title, percentile_stretch(images, truth, (1.0, 99.5))) for title, images in rows]
    for column in range(count):
        for row_index, (title, images) in enumerate(rows):
            image = np.clip(images[column], 0.0, 1.0)
            image = np.moveaxis(image, 0, -1)
            if image.shape[-1] != 3:
                image = image[..., 0]
            ax = axes[row_index][column]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)
    return path


# =====================================================================
# Command line
# =====================================================================
class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """``python train.py [CONFIG.toml] [key=value ...]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="train.py",
        description=(
            "Pretrain an AstroPT-style observation model. Reads a TOML run config, "
            "applies key=value overrides (nested keys such as model.n_layer=6, "
            "data.path=DIR, optim.lr=3e-4) and trains; under torchrun every process "
            "takes part (DDP on gloo/nccl)."
        ),
        epilog="examples:\n"
        "  python train.py configs/quickstart.toml out_dir=runs/x max_iters=200\n"
        "  python train.py configs/quickstart.toml out_dir=runs/x resume=true\n"
        "  torchrun --standalone --nproc_per_node=8 train.py configs/astropt-095M.toml\n"
        "  torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \\\n"
        "      --rdzv_endpoint=HOST:29500 train.py configs/astropt-095M.toml  # node 1: --node_rank=1\n\n"
        "keys:\n" + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", nargs="?", help="run config TOML (or a run's config.json)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, applied in order")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as JSON and exit"
    )
    args = parser.parse_args(argv)
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).exists():
        config, overrides = None, [config, *overrides]
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[_TqdmHandler()])
    try:
        cfg = load_config(config, overrides)
    except ConfigError as error:
        print(f"train.py: {error}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        return 0
    try:
        summary = train(cfg)
    except (ConfigError, TrainingDiverged) as error:
        print(f"train.py: {error}", file=sys.stderr)
        return 2 if isinstance(error, ConfigError) else 1
    except KeyboardInterrupt:
        print("train.py: interrupted", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


__all__ = [
    "ArchitectureMismatch",
    "Trainer",
    "TrainingDiverged",
    "config_from_dict",
    "load_trainer_state",
    "log_spaced_steps",
    "lr_at",
    "main",
    "make_optimizer",
    "measure_matmul_peak",
    "render_preview",
    "train",
]
