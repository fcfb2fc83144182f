"""Where the run computes: device, precision, process group and model wrapping.

Under ``torchrun`` every process joins one process group
(:mod:`astropt.distributed`); the training objective is wrapped for DDP (replicated model,
averaged gradients) or FSDP (``parallel=fsdp``: parameters sharded per block)
and optionally compiled. The model itself (:mod:`astropt.model`) knows nothing
of any of this.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

from astropt.device import native_bf16
from astropt.distributed import DistInfo
from astropt.model import GPT


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of config ``dtype`` on ``device`` (None: plain float32).

    ``auto``: bfloat16 where the hardware computes it natively (CUDA devices
    with bf16; CPUs with AMX tiles, see :func:`astropt.device.native_bf16`),
    else float32. Weights, optimiser state, LayerNorm and the
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


class LossModule(nn.Module):
    """``forward(tokens) -> loss``: the training objective behind one ``forward``.

    DDP synchronises gradients only for work done inside its ``forward``, and
    the objective lives in ``GPT.compute_loss``; this wrapper joins the two.
    """

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.compute_loss(tokens, stats=stats)[1]


def wrap_model(
    model: GPT, info: DistInfo, device: torch.device, parallel: str, compile: bool
) -> tuple[nn.Module, bool]:
    """``(step_module, fsdp)``: the module a training step calls, and whether it is sharded.

    ``step_module(tokens)`` returns the loss. Under FSDP ``model`` itself is
    sharded in place (one shard group per block, then the rest: tokeniser,
    head, positions); under DDP the objective is replicated with averaged
    gradients; ``compile`` wraps it in ``torch.compile`` first.
    """
    fsdp = info.enabled and parallel == "fsdp"
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    step_module: nn.Module = LossModule(model)
    if compile:
        step_module = torch.compile(step_module)
    if info.enabled and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        device_ids = [device.index] if device.type == "cuda" else None
        step_module = DDP(step_module, device_ids=device_ids)
    return step_module, fsdp


@contextmanager
def no_sync(step_module: nn.Module, model: GPT, info: DistInfo, fsdp: bool, last: bool):
    """Skip the gradient all-reduce on all but the ``last`` micro-batch of a step."""
    if last or not info.enabled:
        yield
    elif fsdp:
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        with step_module.no_sync():
            yield
