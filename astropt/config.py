"""Run configuration: typed dataclasses, TOML files and ``key=value`` overrides.

A run is described by one :class:`RunConfig`:

* top-level keys (``out_dir``, ``max_iters``, ``batch_size``, ...);
* ``model``: the :class:`~astropt.model.GPTConfig` itself (no copy of its fields);
* ``data``: the :class:`~astropt.data.DataConfig` of the data pipeline;
* ``optim``: :class:`OptimConfig` (AdamW and the learning-rate schedule).

Parsing is :mod:`astropt.options` (the one parser of every command). Sources are
applied in order: the dataclass defaults, a TOML file (which may
name a ``base`` TOML of its own, relative to itself), then command-line
overrides such as ``model.n_layer=6`` or ``data.path=runs/survey``. Every key
is checked: an unknown one fails naming the nearest valid key, and a value is
parsed by its field's type (bool, int, float, str, ``None`` for optional
fields, a choice for ``Literal`` fields).

The model's data conventions (``patch_size``, ``order``, ``transpose_hw``) are
data settings: they are set under ``data.`` and copied into ``model`` by
:func:`resolve`, so the network and the loader can never disagree. Writing
them under ``model.`` is accepted only when the values agree (so a saved
``config.json`` loads back).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from astropt.data.config import DATA_CONVENTIONS, DataConfig
from astropt.model import GPTConfig
from astropt.options import (
    ConfigError,
    Entry,
    build_options,
    coerce,
    describe_options,
    did_you_mean,
    flatten,
    option_keys,
    parse_override,
    read_file,
    sections,
    table_fields,
    unknown_key,
)

__all__ = [
    "DATA_CONVENTIONS",
    "ConfigError",
    "OptimConfig",
    "RunConfig",
    "coerce",
    "config_from_dict",
    "config_from_entries",
    "describe_keys",
    "did_you_mean",
    "load_config",
    "resolve",
    "sections_of",
    "table_fields",
    "valid_keys",
    "validate",
]


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (linear warmup, then cosine to ``min_lr``).

    Defaults are AstroPT's (and Chinchilla's): peak 6e-4, floor a tenth of the
    peak, 2000 warmup steps, betas (0.9, 0.95), weight decay 0.1 on matrices
    only, gradients clipped at norm 1.
    """

    lr: float = 6e-4  # peak learning rate, reached after warmup_iters
    min_lr: float | None = None  # floor of the cosine; None: lr / 10
    warmup_iters: int = 2000  # optimiser steps of linear warmup from 0
    decay_iters: int | None = None  # step where the cosine reaches min_lr; None: max_iters
    weight_decay: float = 0.1  # decoupled decay of weight matrices (not norms, biases, tokens)
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay
    eps: float = 1e-8  # AdamW denominator floor
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    impl: Literal["auto", "fused", "foreach", "for"] = "auto"  # AdamW kernel; auto: fused


@dataclass
class RunConfig:
    """Everything one training run needs; ``config.json`` in the run folder holds it resolved."""

    out_dir: str = "runs/default"  # run folder: config.json, metrics.jsonl, checkpoints/, previews/
    max_iters: int = 1000  # optimiser steps in total
    eval_interval: int = 100  # evaluate on the validation split every this many steps
    eval_iters: int = 20  # validation batches per evaluation (per rank)
    eval_batch_size: int | None = None  # None: batch_size
    log_interval: int = 10  # append a metrics.jsonl row every this many steps
    checkpoint_interval: int = 0  # save checkpoints/latest every this many steps; 0: eval_interval
    log_checkpoints: int = 0  # extra snapshots checkpoints/step-NNNNNNN, log-spaced over the run
    resume: bool = False  # continue from out_dir/checkpoints/latest
    overwrite: bool = False  # allow a fresh run to replace the checkpoints already in out_dir
    init_from: str | None = None  # start from these weights (model/run folder, ckpt.pt, Hub id)
    seed: int = 0  # weights, data order and augmentation
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:N
    # Autocast dtype; auto: bfloat16 where it beats float32 (CUDA, CPUs with AMX).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    compile: bool = False  # torch.compile the model
    batch_size: int = 8  # galaxies per micro-batch per process
    train_samples: int | None = None  # use only the first N galaxies of the train split
    # Micro-batches per optimiser step over ALL processes (each runs grad_accum / world size).
    grad_accum: int = 1
    parallel: Literal["ddp", "fsdp"] = "ddp"  # how torchrun processes share the model
    peak_flops: float | None = None  # FLOP/s for MFU; None: measured matmul peak of this device
    preview: bool = True  # reconstruction preview PNG at each evaluation
    preview_n: int = 6  # galaxies in the preview
    progress: bool = True  # tqdm progress bar (rank 0)
    tensorboard: bool = False  # also log to out_dir/tensorboard when tensorboard is installed
    wandb: bool = False  # also log to Weights & Biases when wandb is installed
    wandb_project: str = "astropt"  # Weights & Biases project of wandb=true
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (JSON-ready)."""
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {"model": GPTConfig, "data": DataConfig, "optim": OptimConfig}


def sections_of(root: type) -> dict[str, type]:
    """The ``[section]`` tables of a config dataclass: its fields that are dataclasses."""
    hints = typing.get_type_hints(root)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(root)
        if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name])
    }


def valid_keys(root: type = RunConfig) -> dict[str, Any]:
    """Every settable dotted key with its type: ``{"max_iters": int, "model.n_layer": int, ...}``.

    ``root``: the config dataclass (:class:`RunConfig`, or another command's
    config built the same way: top-level fields plus dataclass sections).
    """
    return option_keys(root)


# ------------------------------------------------------------------ apply
def _set(cfg: RunConfig, key: str, value: Any, keys: dict[str, Any]) -> None:
    target: Any = cfg
    name = key
    if "." in key:
        section, name = key.split(".", 1)
        target = getattr(cfg, section)
    setattr(target, name, coerce(value, keys[key], key))


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple = (), root: type = RunConfig
) -> Any:
    """Build a resolved :class:`RunConfig` from defaults, a TOML/JSON file and overrides.

    ``path``: a TOML file (or a run folder's ``config.json``), or None for the
    defaults. ``overrides``: ``key=value`` strings applied last, in order.
    ``root``: another config dataclass read by the same rules (e.g.
    :class:`astropt.finetune.FinetuneConfig`); its ``validate()`` method, when
    it has one, runs last. Raises :class:`ConfigError` for unknown keys
    (naming the nearest valid one) and for values that do not parse as the
    field's type.
    """
    entries: list[Entry] = [] if path is None else read_file(Path(path), sections(root))
    entries += [(*parse_override(text), "command line") for text in overrides]
    if root is not RunConfig:
        return _validated(build_options(root, entries))
    return config_from_entries(entries)


def config_from_entries(entries: list[Entry]) -> RunConfig:
    """A resolved :class:`RunConfig` from ``(key, value, origin)`` entries applied in order."""
    keys = valid_keys()
    cfg = RunConfig()
    explicit_conventions: dict[str, tuple[Any, str]] = {}
    for key, value, origin in entries:
        if key not in keys:
            raise unknown_key(key, keys, origin, tuple(SECTIONS))
        if key.startswith("model.") and key[6:] in DATA_CONVENTIONS:
            explicit_conventions[key[6:]] = (coerce(value, keys[key], key), origin)
            continue
        _set(cfg, key, value, keys)
    for name, (value, origin) in explicit_conventions.items():
        if getattr(cfg.data, name) != value:
            raise ConfigError(
                f"model.{name}={value!r} ({origin}) disagrees with data.{name}="
                f"{getattr(cfg.data, name)!r}: the model's data conventions come from the "
                f"data section; set data.{name} instead"
            )
    return resolve(cfg)


def resolve(cfg: RunConfig) -> RunConfig:
    """Copy the data conventions into ``cfg.model``, re-run the dataclasses' checks, validate."""
    values = dataclasses.asdict(cfg.model)
    for name in DATA_CONVENTIONS:
        values[name] = getattr(cfg.data, name)
    data_values = dataclasses.asdict(cfg.data)
    # The model decides how many channels an image has; a file that disagrees is skipped.
    if data_values["channels"] is None:
        data_values["channels"] = cfg.model.n_chan
    elif data_values["channels"] != cfg.model.n_chan:
        raise ConfigError(
            f"data.channels={data_values['channels']} disagrees with model.n_chan="
            f"{cfg.model.n_chan}: images must have the channels the model reads"
        )
    try:
        cfg.model = GPTConfig(**values)
        cfg.data = type(cfg.data)(**data_values)
        cfg.optim = OptimConfig(**dataclasses.asdict(cfg.optim))
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from error
    validate(cfg)
    return cfg


def _validated(cfg: Any) -> Any:
    """``cfg`` after its ``validate()`` method (configs other than RunConfig), errors as ConfigError."""
    if hasattr(cfg, "validate"):
        try:
            cfg.validate()
        except ConfigError:
            raise
        except (TypeError, ValueError) as error:
            raise ConfigError(str(error)) from error
    return cfg


def validate(cfg: RunConfig) -> None:
    """Reject values no run can use, with the key to change."""
    positive = {
        "max_iters": cfg.max_iters >= 0,
        "eval_interval": cfg.eval_interval >= 1,
        "eval_iters": cfg.eval_iters >= 1,
        "log_interval": cfg.log_interval >= 1,
        "checkpoint_interval": cfg.checkpoint_interval >= 0,
        "log_checkpoints": cfg.log_checkpoints >= 0,
        "batch_size": cfg.batch_size >= 1,
        "grad_accum": cfg.grad_accum >= 1,
        "preview_n": cfg.preview_n >= 1,
        "model.n_layer": cfg.model.n_layer >= 1,
        "model.block_size": cfg.model.block_size >= 2,
        "optim.lr": cfg.optim.lr > 0,
        "optim.warmup_iters": cfg.optim.warmup_iters >= 0,
        "optim.grad_clip": cfg.optim.grad_clip >= 0,
        "optim.weight_decay": cfg.optim.weight_decay >= 0,
    }
    if cfg.eval_batch_size is not None:
        positive["eval_batch_size"] = cfg.eval_batch_size >= 1
    bad = [key for key, ok in positive.items() if not ok]
    if bad:
        raise ConfigError("out of range: " + ", ".join(f"{k}" for k in bad))
    if not 0.0 < cfg.model.mask_ratio < 1.0:
        raise ConfigError(f"model.mask_ratio must be in (0, 1), got {cfg.model.mask_ratio}")


def config_from_dict(values: dict, root: type = RunConfig) -> Any:
    """Rebuild a :class:`RunConfig` (or ``root``) from its ``to_dict`` output (checked like a file)."""
    entries = [(key, value, "dict") for key, value in flatten(values, sections(root))]
    if root is not RunConfig:
        return _validated(build_options(root, entries))
    keys = valid_keys()
    cfg = RunConfig()
    for key, value, origin in entries:
        if key not in keys:
            raise unknown_key(key, keys, origin, tuple(SECTIONS))
        if key.startswith("model.") and key[6:] in DATA_CONVENTIONS:
            continue  # derived from data.* by resolve()
        _set(cfg, key, value, keys)
    return resolve(cfg)


def describe_keys(root: type = RunConfig) -> str:
    """Every key with its type, default and note (the ``--help`` listing)."""
    skip = tuple(f"model.{name}" for name in DATA_CONVENTIONS) if root is RunConfig else ()
    return describe_options(root, skip=skip)
