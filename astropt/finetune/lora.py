"""Low-rank adapters (LoRA, Hu et al. 2021) on the trunk's Linear layers, through ``peft``.

``peft`` wraps any ``torch.nn.Linear`` found by a module-name pattern, and our
attention and MLP projections are plain ``nn.Linear`` (``blocks.i.attn.qkv``,
``attn.proj``, ``mlp.fc``, ``mlp.proj``), so no adapter code of our own is
needed: :func:`add_adapters` injects them, :func:`merge_adapters` folds
``W + (alpha / r) B A`` back into each weight and returns a plain
:class:`~astropt.finetune.model.FinetunedGPT` (no ``peft`` needed to load it).

``peft`` is an optional dependency (``pip install 'astropt[lora]'``): it pulls
in ``transformers`` and ``accelerate`` and takes seconds to import, which the
``probe`` and ``full`` modes do not need to pay.
"""

from __future__ import annotations

import re

import torch.nn as nn

ADAPTER_MARK = "lora_"


def _peft():
    try:
        import peft
    except ImportError as error:
        raise ImportError(
            "mode=lora needs the peft library: pip install 'astropt[lora]' (or pip install peft)"
        ) from error
    return peft


def target_pattern(targets: tuple[str, ...] | list[str]) -> str:
    """The full-name regular expression of the trunk Linear layers ``targets`` (block-relative)."""
    names = "|".join(re.escape(t) for t in targets)
    return rf"(.*\.)?blocks\.\d+\.({names})"


def add_adapters(model: nn.Module, rank: int, alpha: float, dropout: float, targets) -> nn.Module:
    """``model`` wrapped by ``peft`` with adapters on ``targets``; only adapters and the task
    head train (every other weight is frozen). Returns the ``PeftModel``."""
    peft = _peft()
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_pattern(targets),
        bias="none",
    )
    wrapped = peft.get_peft_model(model, config)
    if not any(ADAPTER_MARK in name for name, _ in wrapped.named_parameters()):
        raise ValueError(f"lora_targets {list(targets)} matched no Linear layer of the trunk")
    for name, param in wrapped.named_parameters():
        param.requires_grad = ADAPTER_MARK in name or ".task_head." in name
    return wrapped


def is_adapted(model: nn.Module) -> bool:
    return any(ADAPTER_MARK in name for name, _ in model.named_parameters())


def base_model(model: nn.Module) -> nn.Module:
    """The wrapped model inside a ``PeftModel`` (adapters still in place), else ``model``."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold the adapters into the weights; returns the plain (un-wrapped) model."""
    if not hasattr(model, "merge_and_unload"):
        return model
    merged = model.merge_and_unload()
    for param in merged.parameters():
        param.requires_grad = True
    return merged
