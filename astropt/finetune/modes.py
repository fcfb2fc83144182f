"""Building a finetune: the starting trunk, what trains in each mode, optimiser groups, the head.

* :func:`load_trunk`: loaded weights or a fresh trunk (``scratch``, ``scratch:PATH``);
* :func:`prepare_for_mode`: ``probe`` freezes the trunk, ``lora`` adds adapters
  (:mod:`astropt.finetune.lora`), ``full`` trains everything; parameters the
  head never reaches are frozen in every mode (DDP must not wait for them);
* :func:`param_groups` / :func:`make_optimizer`: AdamW with layer-wise
  learning-rate decay in ``full`` mode;
* :func:`head_config`: the task head a labelled pool and its training labels call for.

Used by the loop (:mod:`astropt.finetune.trainer`) and ``bench/finetune.py``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from astropt import hub
from astropt.config import ConfigError
from astropt.data import map_loader
from astropt.errors import UserError
from astropt.finetune import data as fdata
from astropt.finetune import lora
from astropt.finetune.config import FinetuneConfig
from astropt.finetune.model import FinetunedGPT, HeadConfig
from astropt.io import atomic_write_text
from astropt.model import GPT
from astropt.preprocessing import Preprocessing, data_fields

log = logging.getLogger("astropt.finetune")


def load_trunk(init_from: str, scratch_config, seed: int) -> GPT:
    """The trunk a run starts from: loaded weights, or fresh ones (``scratch``, seeded).

    ``scratch`` builds ``scratch_config``; ``scratch:PATH`` builds PATH's
    architecture (the fair baseline of a pretrained run) and keeps its
    preprocessing record; a finetuned model contributes its trunk (and record).
    """
    spec = init_from.strip()
    if spec.lower() in ("scratch", "none", ""):
        _refuse_flux_tokens(scratch_config, spec)
        torch.manual_seed(seed)
        return GPT(scratch_config)
    if spec.lower().startswith("scratch:"):
        shape = hub.load_model(spec.split(":", 1)[1])
        _refuse_flux_tokens(shape.config, spec)
        torch.manual_seed(seed)
        fresh = GPT(shape.config)
        fresh.preprocessing = shape.preprocessing  # the fair baseline sees the same inputs
        return fresh
    loaded = hub.load_model(spec)
    _refuse_flux_tokens(loaded.config, spec)
    if isinstance(loaded, FinetunedGPT):
        trunk = GPT(loaded.config)
        state = {k: v for k, v in loaded.state_dict().items() if not k.startswith("task_head.")}
        hub.load_state_checked(trunk, state, source=spec)
        trunk.preprocessing = loaded.preprocessing
        return trunk
    return loaded


def _refuse_flux_tokens(config, source: str) -> None:
    """The finetune loop feeds tokens in the trunk's units but no patch statistics; a trunk
    that reads them (flux_tokens) would silently run without them."""
    if getattr(config, "flux_tokens", False):
        raise UserError(
            f"{source or 'scratch'}: flux-aware models (model.flux_tokens=true) cannot be "
            "finetuned yet; finetune a model trained with flux_tokens=false"
        )


def _unused_parameters(model: FinetunedGPT) -> list[str]:
    """Trunk parameters a task head never reaches (frozen so DDP does not wait for them):
    the patch-prediction head, the mask token, and blocks past the head's layer."""
    block = model.resolve_layer(model._layer_arg())
    unused = []
    for name, _ in model.named_parameters():
        if name.startswith("head.") or name == "mask_token":
            unused.append(name)
        elif block is not None and (name.startswith("norm_f.")):
            unused.append(name)
        elif block is not None and name.startswith("blocks."):
            if int(name.split(".")[1]) > block:
                unused.append(name)
    return unused


def prepare_for_mode(model: FinetunedGPT, cfg: FinetuneConfig) -> nn.Module:
    """Set what trains for ``cfg.mode``; returns the module to train (``model``, or its
    ``peft`` wrapper for ``lora``). Parameters the head never reaches are frozen in every mode."""
    for param in model.parameters():
        param.requires_grad = True
    for name in _unused_parameters(model):
        model.get_parameter(name).requires_grad = False
    if cfg.mode == "probe":
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("task_head.")
    if cfg.mode == "lora":
        return lora.add_adapters(
            model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets
        )
    return model


def make_optimizer(model: nn.Module, cfg: FinetuneConfig, n_layer: int) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (trainable parameters only)."""
    return torch.optim.AdamW(
        param_groups(model, cfg, n_layer),
        lr=cfg.optim.lr,
        betas=(cfg.optim.beta1, cfg.optim.beta2),
        eps=cfg.optim.eps,
    )


def param_groups(model: nn.Module, cfg: FinetuneConfig, n_layer: int) -> list[dict]:
    """AdamW groups with an ``lr_scale`` each: layer-wise decay in ``full`` mode.

    Weight decay applies to matrices only (the positional table included, as in
    pretraining; not norms or biases).
    """
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        plain = name.replace("base_model.model.", "")
        scale = 1.0
        if cfg.mode == "full" and not plain.startswith("task_head."):
            if plain.startswith("blocks."):
                depth = int(plain.split(".")[1]) + 1
            elif plain.startswith(("tokeniser.", "pos_emb.", "mask_token")):
                depth = 0
            else:  # final norm
                depth = n_layer + 1
            scale = cfg.layer_decay ** (n_layer + 1 - depth)
        decay = param.dim() >= 2
        groups.setdefault((scale, decay), []).append(param)
    return [
        {
            "params": params,
            "lr_scale": scale,
            "weight_decay": cfg.optim.weight_decay if decay else 0.0,
        }
        for (scale, decay), params in sorted(groups.items(), key=lambda kv: kv[0])
    ]


def head_config(cfg: FinetuneConfig, pool: fdata.LabelledPool, train_pos: np.ndarray):
    labels = pool.labels[train_pos]
    common = dict(
        targets=list(pool.targets),
        pool=cfg.pool,
        layer=str(cfg.layer),
        prefix=cfg.prefix,
        dropout=cfg.head_dropout,
    )
    if cfg.head == "classification":
        k = len(pool.class_names)
        weights = None
        if cfg.class_weights == "balanced":
            counts = np.bincount(labels, minlength=k).astype(np.float64)
            weights = (len(labels) / (k * np.maximum(counts, 1))).tolist()
        return HeadConfig(
            kind="classification",
            n_outputs=k,
            class_names=list(pool.class_names),
            label_smoothing=cfg.label_smoothing,
            class_weights=weights,
            **common,
        )
    values = labels.reshape(len(labels), -1).astype(np.float64)
    if cfg.head == "regression":
        std = values.std(0)
        return HeadConfig(
            kind="regression",
            n_outputs=values.shape[1],
            target_mean=values.mean(0).tolist(),
            target_std=np.where(std > 0, std, 1.0).tolist(),
            **common,
        )
    return HeadConfig(
        kind="votes", n_outputs=values.shape[1], vote_groups=list(cfg.vote_groups), **common
    )


def apply_preprocessing(cfg: FinetuneConfig, trunk: GPT, report: bool = True) -> None:
    """The data keys the run's config did not set come from the preprocessing the trunk
    was trained with (its record; nothing for AstroPT checkpoints and fresh trunks)."""
    if cfg.data_given is None or trunk.preprocessing is None:
        return
    names = Preprocessing.field_names()
    given = {name: getattr(cfg.data, name) for name in names if name in cfg.data_given}
    fields = data_fields(
        given,
        trunk.preprocessing,
        model_name=f"init_from={cfg.init_from}",
        strict=cfg.strict,
        report=report,
    )
    try:
        cfg.data = dataclasses.replace(cfg.data, **{name: fields[name] for name in names})
    except ValueError as error:
        raise ConfigError(f"data options with init_from's preprocessing: {error}") from error


def inputs_as_trunk_expects(
    cfg: FinetuneConfig, trunk: GPT, say=log.info, report: bool = True
) -> None:
    """Make ``cfg.data`` read images as ``trunk`` was trained to (its recorded preprocessing,
    :func:`apply_preprocessing`) and cut tokens as it expects (data conventions)."""
    apply_preprocessing(cfg, trunk, report)
    names = ("patch_size", "order", "transpose_hw")
    changed = [
        f"data.{name}={getattr(trunk.config, name)!r}"
        for name in names
        if getattr(cfg.data, name) != getattr(trunk.config, name)
    ]
    if changed:
        say("inputs made as the model expects: %s", ", ".join(changed))
        for name in names:
            setattr(cfg.data, name, getattr(trunk.config, name))


def labelled_loader(
    cfg: FinetuneConfig,
    pool: fdata.LabelledPool,
    positions: np.ndarray,
    split: str,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
):
    """One pass, in order and without augmentation, over the pool's galaxies ``positions``
    (this rank's shard); labels in ``batch.catalogue[LABEL_KEY]``."""
    import dataclasses

    subset = fdata.LabelledSubset(pool.source, pool.indices[positions], pool.labels[positions])
    return map_loader(
        subset,
        dataclasses.replace(cfg.data, even_shards=False),
        f"{pool.label_text} [finetune {split}]",
        split=split,
        batch_size=cfg.eval_batch_size or cfg.batch_size,
        shuffle=False,
        augment=False,
        seed=0,
        rank=rank,
        world_size=world_size,
        device=device,
        drop_last=False,
        repeat=False,
    )


def write_splits(out: Path, pool: fdata.LabelledPool, galaxies: fdata.RunGalaxies) -> None:
    """``out/splits.json``: the ids of the galaxies of each part of the run."""
    ids = pool.ids

    def listed(positions):
        return [v.item() if hasattr(v, "item") else v for v in ids[positions]]

    splits = {
        "train_labelled": listed(galaxies.train),
        "train": listed(galaxies.train_split),
        "validation": listed(galaxies.validation),
        galaxies.split: listed(galaxies.scored),
    }
    atomic_write_text(out / "splits.json", json.dumps(splits, default=str))
