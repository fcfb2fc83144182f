"""Checkpoint folders of a run: atomic writes, recovery, full and sharded state, resume.

Layout under ``OUT/checkpoints/`` (``latest``, ``best``, ``step-NNNNNNN``)::

    config.json, model.safetensors, README.md    a model folder (astropt.hub)
    trainer_state.pt                             step, counters, optimiser,
                                                 scaler, RNG and data-loader
                                                 states (per rank)

A folder is written under a hidden temporary name and renamed into place, so
an interrupted write never replaces a good checkpoint (the previous one is
kept as ``.NAME.old`` for the instant between the two renames and recovered
from there if the process dies in that instant). Under FSDP the weights and
the optimiser state are gathered into full (unsharded) tensors on CPU, so a
checkpoint does not depend on the number of processes that wrote it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

from astropt import hub
from astropt.config import ConfigError
from astropt.data.config import convention_mismatches
from astropt.distributed import DistInfo
from astropt.errors import UserError
from astropt.io import (
    CorruptFileError,
    atomic_write,
    atomic_write_dir,
    load_state_checked,
    load_weights,
    read_json,
    recover_atomic_dirs,
)
from astropt.model import GPT, GPTConfig
from astropt.preprocessing import Preprocessing

if TYPE_CHECKING:
    from astropt.data import DataConfig

log = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.pt"
CHECKPOINTS = "checkpoints"
#: GPTConfig fields a run may change when it resumes or starts from other
#: weights; every other field shapes the network or its inputs.
TUNABLE_MODEL_FIELDS = ("dropout", "embed_layer", "mask_ratio", "prefix_len")
STATE_VERSION = 1


class CheckpointWriteError(UserError, RuntimeError):
    """A checkpoint could not be written (disk full, permissions); earlier ones are intact."""


class ArchitectureMismatch(ConfigError):
    """A checkpoint whose architecture differs from the run's config."""


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


def log_spaced_steps(count: int, max_iters: int) -> list[int]:
    """``count`` snapshot steps: 0 (the initialisation), then geometric up to ``max_iters``."""
    if count <= 0 or max_iters <= 0:
        return []
    if count == 1:
        return [max_iters]
    steps = {0}
    steps.update(int(round(s)) for s in np.geomspace(1, max_iters, count - 1))
    return sorted(steps)


# =====================================================================
# Atomic folders
# =====================================================================
class _Weights:
    """What ``hub.save_pretrained`` needs: a config and a full (unsharded) state dict."""

    def __init__(self, config: GPTConfig, state: dict[str, torch.Tensor]):
        self.config = config
        self._state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state

    def num_params(self) -> int:
        return sum(t.numel() for t in self._state.values())


def write_checkpoints(
    root: Path,
    names: list[str],
    config: GPTConfig,
    weights: dict[str, torch.Tensor],
    trainer_state: dict,
    training_data: str,
    training_summary: dict,
    preprocessing: Preprocessing | None = None,
) -> None:
    """Write ``root/NAME`` for each name: the first filled, the rest copied from it.

    ``preprocessing``: how the training images were made (the model folder's
    ``preprocessing.json``, which embed, predict, sample and finetune apply).
    """
    first = root / names[0]

    def fill(tmp: Path) -> None:
        hub.save_pretrained(
            _Weights(config, weights),
            tmp,
            training_data=training_data,
            training_summary=training_summary,
            preprocessing=preprocessing,
        )
        atomic_write(tmp / TRAINER_STATE_NAME, lambda p: torch.save(trainer_state, p))

    try:
        atomic_write_dir(first, fill)
        for name in names[1:]:
            atomic_write_dir(
                root / name, lambda tmp: shutil.copytree(first, tmp, dirs_exist_ok=True)
            )
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
        raise CheckpointWriteError(
            f"could not write a checkpoint under {root} ({str(exc)[:200]}); the previous "
            "checkpoints are intact: free disk space (or fix the folder), then resume=true"
        ) from exc


# =====================================================================
# Resume
# =====================================================================
def _numpy_globals() -> list:
    """The numpy names a pickled RNG state needs: arrays and dtypes, nothing that runs code."""
    core = getattr(np, "_core", None) or np.core
    return [
        core.multiarray._reconstruct,
        core.multiarray.scalar,
        np.ndarray,
        np.dtype,
        *{type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.uint8, np.bool_)},
    ]


class UnsafeCheckpointError(UserError, ValueError):
    """A trainer state that holds more than tensors, numbers, strings and numpy arrays."""


def load_trainer_state(folder: str | os.PathLike) -> dict:
    """The ``trainer_state.pt`` of a checkpoint folder (written by this module).

    Read with torch's weights-only unpickler, which builds tensors, containers,
    numbers, strings and (allow-listed) numpy arrays and refuses everything
    else: a state file in a shared run folder cannot run code on ``resume=true``.
    """
    import pickle

    path = Path(folder) / TRAINER_STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {TRAINER_STATE_NAME}: not a training checkpoint")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds objects other than tensors, numbers and "
            f"arrays, so it was not written by astropt (or was altered): {str(exc)[:200]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CorruptFileError(f"{path} cannot be read ({str(exc)[:200]})") from None


@dataclasses.dataclass
class ResumePoint:
    """The checkpoint a resumed run continues from: its folder, trainer state and weights."""

    folder: Path
    state: dict
    weights: dict[str, torch.Tensor]


def _read_resume_point(root: Path, info: DistInfo) -> ResumePoint | None:
    """``latest``, or ``best`` when ``latest`` cannot be read (saying so); None without either.

    A state that is not ours (:class:`UnsafeCheckpointError`) stops the run: it is not
    a damaged file to step around.
    """
    failures = []
    for name in ("latest", "best"):
        folder = root / name
        if not (folder / TRAINER_STATE_NAME).is_file():
            continue
        try:
            state = load_trainer_state(folder)
            weights = load_weights(folder / hub.WEIGHTS_NAME)
        except (CorruptFileError, FileNotFoundError) as exc:
            failures.append(str(exc))
            if info.is_main:
                log.warning("cannot resume from %s: %s", folder, exc)
            continue
        if failures and info.is_main:
            log.warning("resuming from %s (step %s) instead", folder, state.get("step"))
        return ResumePoint(folder=folder, state=state, weights=weights)
    if failures:
        raise CorruptFileError(
            f"no readable checkpoint to resume in {root}: " + "; ".join(failures)
        )
    return None


def prepare_run_dir(out: Path, resume: bool, overwrite: bool, info: DistInfo) -> ResumePoint | None:
    """Recover, check or clear run folder ``out``; the checkpoint to resume from, if any.

    Collective (every rank calls it); rank 0 alone changes files. A run that
    starts from step 0 starts a new ``metrics.jsonl`` (rows left by a run killed
    before its first checkpoint would otherwise repeat their steps).
    """
    root = out / CHECKPOINTS
    if info.is_main:
        recover_atomic_dirs(root)
    info.barrier()
    has_checkpoints = (root / "latest").is_dir() or (root / "best").is_dir()
    if resume:
        point = _read_resume_point(root, info)
        if point is not None:
            return point
        if info.is_main:
            log.info("resume=true but %s holds no checkpoint: starting from scratch", out)
    elif has_checkpoints and not overwrite:
        raise ConfigError(
            f"{out} already holds checkpoints: pass resume=true to continue that run, "
            "overwrite=true to replace it, or another out_dir"
        )
    elif has_checkpoints and info.is_main:
        log.info("overwrite=true: removing the checkpoints and metrics of %s", out)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(out / "previews", ignore_errors=True)
    if info.is_main:
        (out / "metrics.jsonl").unlink(missing_ok=True)
        (out / "summary.json").unlink(missing_ok=True)
    info.barrier()
    return None


def load_resume_model(point: ResumePoint, config: GPTConfig, out: Path) -> GPT:
    """The model of ``point``, refused if its architecture is not ``config``'s."""
    folder = point.folder
    saved = read_json(folder / hub.CONFIG_NAME)
    diffs = architecture_diff(saved, config)
    if diffs:
        raise ArchitectureMismatch(
            f"cannot resume from {folder}: it was trained with a different architecture ("
            + "; ".join(diffs)
            + f"). Use the checkpoint's values (see {out / 'config.json'}) "
            "or start a new out_dir."
        )
    model = GPT(config)
    load_state_checked(model, point.weights, source=str(folder))
    return model


def load_init_from(
    source: str, data: DataConfig, tunable: GPTConfig, info: DistInfo
) -> tuple[GPT, GPTConfig]:
    """``(model, config)`` for ``init_from=source``: its weights and architecture.

    The fields in :data:`TUNABLE_MODEL_FIELDS` come from ``tunable`` (the
    run's model config); the rest from the weights. Raises ConfigError when
    ``data`` does not make the inputs the weights expect.
    """
    loaded = hub.load_model(source)
    base = loaded.config
    conventions = [
        f"data.{name}={getattr(base, name)!r} (run has {getattr(data, name)!r})"
        for name in convention_mismatches(data, base)
    ]
    if conventions:
        raise ConfigError(
            f"init_from={source} expects its inputs made with "
            + ", ".join(conventions)
            + ": set those data keys"
        )
    ignored = architecture_diff(base, tunable)
    if ignored and info.is_main:
        log.info(
            "init_from=%s: the architecture comes from its config; ignoring %s",
            source,
            "; ".join(d.replace("checkpoint", "weights") for d in ignored),
        )
    values = dataclasses.asdict(base)
    for name in TUNABLE_MODEL_FIELDS:
        values[name] = getattr(tunable, name)
    config = GPTConfig(**values)
    model = GPT(config)
    load_state_checked(model, loaded.state_dict(), source=str(source))
    return model, config


# =====================================================================
# Full state of a possibly sharded model and optimiser
# =====================================================================
def full_model_state(model: nn.Module, fsdp: bool) -> dict[str, torch.Tensor]:
    """The whole model's state dict (gathered onto CPU from every rank under FSDP)."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        return get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return model.state_dict()


def full_optim_state(model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> dict | None:
    """The optimiser's full state dict; None before the first step (nothing to save)."""
    if not optimizer.state:
        # Before the first step there is nothing to save; and torch's
        # distributed state-dict helper would "initialise" the state by
        # running a zero-gradient step, shifting Adam's step count by one.
        return None
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return get_optimizer_state_dict(
            model,
            optimizer,
            options=StateDictOptions(full_state_dict=True, cpu_offload=True),
        )
    return optimizer.state_dict()


def load_full_optim_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict | None, fsdp: bool
) -> None:
    """Load what :func:`full_optim_state` saved (sharding it again under FSDP)."""
    if state is None:
        return  # saved before the first step: a fresh optimiser is the same
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(
            model, optimizer, state, options=StateDictOptions(full_state_dict=True)
        )
    else:
        optimizer.load_state_dict(state)


# =====================================================================
# Random number generators
# =====================================================================
def rng_state(device: torch.device) -> dict:
    """The global RNG states (torch, CUDA on ``device``, numpy, random) for a checkpoint."""
    state = {
        "torch": torch.get_rng_state(),
        # Legacy global generators: not used by astropt, saved for code that does.
        "numpy": np.random.get_state(),  # noqa: NPY002
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy's and Python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    random.seed(seed)
