"""The optimiser and its learning-rate schedule.

AdamW with weight decay on matrices only; a linear warmup, then a cosine decay
of the learning rate to ``optim.min_lr``, then that floor.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from astropt.config import OptimConfig


def lr_at(step: int, optim: OptimConfig, max_iters: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warmup, cosine, floor.

    The one source of the schedule: pretraining and finetuning set each step's
    rate from it (finetuning times each group's ``lr_scale``); no scheduler
    object keeps a second copy, so a resumed run needs only its step.

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


def make_optimizer(model: nn.Module, optim: OptimConfig, device: torch.device) -> torch.optim.AdamW:
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


def make_grad_scaler(
    device: torch.device, amp_dtype: torch.dtype | None
) -> torch.amp.GradScaler | None:
    """A loss scaler for float16 autocast (None otherwise: bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
