"""The finetuning run configuration: one typed dataclass, read like a pretraining config.

``python finetune.py CONFIG.toml key=value ...`` builds a :class:`FinetuneConfig`
with :func:`load_finetune_config`: dataclass defaults, then the TOML file (which
may name a ``base``), then the overrides; an unknown key fails naming the
nearest valid one (the rules of :mod:`astropt.config`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from astropt.config import ConfigError, OptimConfig
from astropt.data import DataConfig
from astropt.model import GPTConfig
from astropt.options import Entry, build_options, parse_override, read_file, sections

Mode = Literal["probe", "lora", "full", "ridge"]
HeadKind = Literal["classification", "regression", "votes"]
LabelSource = Literal["auto", "column", "folders", "galaxy10"]


def _finetune_optim() -> OptimConfig:
    # A finetune is short: a brief warmup, a higher peak than pretraining
    # (the head starts from zero), light weight decay.
    return OptimConfig(lr=1e-3, warmup_iters=20, weight_decay=0.05)


@dataclass
class FinetuneConfig:
    """Everything one finetuning run needs; ``config.json`` in its run folder holds it resolved."""

    out_dir: str = "runs/finetune"  # run folder: config.json, metrics.jsonl, checkpoints/, model/
    # Starting weights: run/model folder, AstroPT ckpt.pt, Hub id, "scratch" (the [model]
    # section, random weights) or "scratch:PATH" (PATH's architecture, random weights).
    init_from: str = "scratch"
    # probe: trunk frozen, head trained; lora: low-rank adapters; full: every weight;
    # ridge: no training, astropt.probe's ridge probe on the trunk's embed_layer embeddings.
    mode: Mode = "full"
    head: HeadKind = "classification"  # classification, regression or votes (Galaxy Zoo counts)
    # Catalogue column(s) holding the labels; several comma-separated for regression/votes.
    label_column: str = ""
    # Where labels come from; auto: galaxy10 for .h5 files, folders for a folder source
    # without label_column, else the catalogue column.
    labels: LabelSource = "auto"
    # Source splits pooled into the labelled set before our own stratified split: by default
    # the held-out splits, never the train split that pretraining reads.
    source_splits: tuple[str, ...] = ("validation", "test")
    # Labelled galaxies that were in the trunk's pretraining data: refuse (the default) or
    # warn, naming the count (also recorded as pretraining_overlap in summary.json).
    pretraining_overlap: Literal["refuse", "warn"] = "refuse"
    # Galaxies scored at the end: test (touched once, to publish) or dev (the test galaxies
    # are set aside and the rest is split again the same way: choose settings here).
    split: Literal["dev", "test"] = "test"
    val_fraction: float = 0.1  # share of the labelled set held out for validation
    test_fraction: float = 0.2  # share held out for the final test evaluation
    split_seed: int = 0  # seed of the train/validation/test split (keep fixed across a sweep)
    label_fraction: float = 1.0  # share of the training split whose labels are used
    n_labels: int | None = None  # or: this many training labels (overrides label_fraction)
    # Validation labels (early stopping): the same share of the validation split as the
    # training labels take of theirs (fraction), or the whole validation split (all).
    val_labels: Literal["fraction", "all"] = "fraction"
    max_labelled: int | None = None  # use only the first N labelled galaxies of the pool
    pool: Literal["mean", "prefix", "last"] = "mean"  # token pooling into one vector
    layer: str = "final"  # trunk layer read by the head: final, middle or a block index
    prefix: int | None = None  # tokens averaged by pool=prefix
    head_dropout: float = 0.0  # dropout on the pooled vector before the head
    label_smoothing: float = 0.0  # classification: cross-entropy label smoothing
    class_weights: Literal["none", "balanced"] = "none"  # classification: loss weights
    # votes: answers per question, in label_column order (e.g. [2, 3] for a yes/no and a
    # three-answer question).
    vote_groups: tuple[int, ...] = ()
    lora_rank: int = 8  # rank r of each adapter (B A, A: r x in, B: out x r)
    lora_alpha: float = 16.0  # adapter scale alpha / r
    lora_dropout: float = 0.0  # dropout on the adapters' input
    # Trunk Linear layers given adapters (names inside each block).
    lora_targets: tuple[str, ...] = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    # full: learning rate of block i is lr * layer_decay ** (n_layer - i); tokeniser and
    # positions one step further down; the head gets lr.
    layer_decay: float = 0.8
    max_iters: int = 300  # optimiser steps in total
    batch_size: int = 32  # galaxies per micro-batch per process
    eval_batch_size: int | None = None  # None: batch_size
    eval_interval: int = 50  # evaluate on the validation split every this many steps
    log_interval: int = 10  # metrics.jsonl row every this many steps
    checkpoint_interval: int = 0  # checkpoints/latest every this many steps; 0: eval_interval
    resume: bool = False  # continue from out_dir/checkpoints/latest
    overwrite: bool = False  # allow a fresh run to replace the checkpoints already in out_dir
    seed: int = 0  # training seed: head init, data order, label subset
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:N
    # Autocast dtype; auto: bfloat16 where the hardware has it natively.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    progress: bool = True  # tqdm progress bar (rank 0)
    confusion_png: bool = True  # classification: write the test confusion matrix
    # Refuse data options that differ from the preprocessing init_from was trained with
    # (otherwise one line names the difference).
    strict: bool = False
    model: GPTConfig = field(default_factory=GPTConfig)  # architecture for init_from=scratch
    data: DataConfig = field(default_factory=lambda: DataConfig(augment=True))
    optim: OptimConfig = field(default_factory=_finetune_optim)

    #: The ``data`` keys a config file or the command line set (:func:`finetune_config_from_entries`
    #: fills it); the preprocessing recorded with ``init_from`` fills the other preprocessing
    #: keys. ``None`` (a config built in code or copied): the data section is used as it is.
    data_given: ClassVar[frozenset[str] | None] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def label_columns(self) -> list[str]:
        return [c.strip() for c in self.label_column.split(",") if c.strip()]

    def validate(self) -> None:
        """Reject values no run can use, naming the key to change."""
        checks = {
            "val_fraction": 0.0 < self.val_fraction < 1.0,
            "test_fraction": 0.0 < self.test_fraction < 1.0,
            "label_fraction": 0.0 < self.label_fraction <= 1.0,
            "max_iters": self.max_iters >= 0,
            "batch_size": self.batch_size >= 1,
            "eval_interval": self.eval_interval >= 1,
            "log_interval": self.log_interval >= 1,
            "checkpoint_interval": self.checkpoint_interval >= 0,
            "lora_rank": self.lora_rank >= 1,
            "layer_decay": 0.0 < self.layer_decay <= 1.0,
            "label_smoothing": 0.0 <= self.label_smoothing < 1.0,
            "head_dropout": 0.0 <= self.head_dropout < 1.0,
            "optim.lr": self.optim.lr > 0,
        }
        if self.n_labels is not None:
            checks["n_labels"] = self.n_labels >= 1
        if self.eval_batch_size is not None:
            checks["eval_batch_size"] = self.eval_batch_size >= 1
        bad = [key for key, ok in checks.items() if not ok]
        if bad:
            raise ConfigError("out of range: " + ", ".join(bad))
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("val_fraction + test_fraction must leave a training split (< 1)")
        if self.head == "votes" and sum(self.vote_groups) != len(self.label_columns):
            raise ConfigError(
                f"head=votes needs vote_groups summing to the {len(self.label_columns)} "
                f"label_column entries (answers per question), got {list(self.vote_groups)}"
            )
        if self.head == "classification" and len(self.label_columns) > 1:
            raise ConfigError("head=classification reads one label_column")
        if self.pool == "prefix" and not self.prefix:
            raise ConfigError("pool=prefix needs prefix=k (tokens averaged)")


def load_finetune_config(path: str | Path | None = None, overrides=()) -> FinetuneConfig:
    """A checked :class:`FinetuneConfig` from defaults, a TOML file and ``key=value`` overrides."""
    entries: list[Entry] = [] if path is None else read_file(Path(path), sections(FinetuneConfig))
    entries += [(*parse_override(text), "command line") for text in overrides]
    return finetune_config_from_entries(entries)


def finetune_config_from_entries(entries: list[Entry]) -> FinetuneConfig:
    """A checked :class:`FinetuneConfig` from ``(key, value, origin)`` entries applied in order;
    remembers which ``data`` keys they set (:attr:`FinetuneConfig.data_given`)."""
    cfg = build_options(FinetuneConfig, entries)
    try:
        cfg.validate()
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from error
    cfg.data_given = frozenset(key[5:] for key, _, _ in entries if key.startswith("data."))
    return cfg
