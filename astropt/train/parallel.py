"""Where the run computes: device, precision, process group and model wrapping.

Under ``torchrun`` every process joins one process group (``nccl`` on CUDA,
``gloo`` on CPU); the training objective is wrapped for DDP (replicated model,
averaged gradients) or FSDP (``parallel=fsdp``: parameters sharded per block)
and optionally compiled. The model itself (:mod:`astropt.model`) knows nothing
of any of this.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from astropt.config import ConfigError
from astropt.device import native_bf16, resolve_device
from astropt.model import GPT


@dataclasses.dataclass
class DistInfo:
    """This process's place in the run (one process: rank 0 of 1)."""

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

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all processes, in place (unchanged for one process)."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list:
        """Every process's ``obj``, in rank order."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


def _rank_device(name: str, local_rank: int) -> torch.device:
    """This process's device (made current on CUDA); asking for missing CUDA is a ConfigError."""
    try:
        device = resolve_device(name, local_rank)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


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


def init_process_group(device: torch.device) -> bool:
    """Join the ``torchrun`` process group (nccl for CUDA, else gloo); True if started here.

    A group that already exists (started by the caller, e.g. a scaling study
    running many trainings in the same processes) is joined and left up.
    """
    if dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
    return True


def setup_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """This process's :class:`DistInfo` and device; joins the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo()
    if world_size > 1 or dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = _rank_device(device_name, local_rank)
        info.initialised_here = init_process_group(device)
        info.rank, info.world_size = dist.get_rank(), dist.get_world_size()
        info.local_rank = local_rank
        return info, device
    return info, _rank_device(device_name, 0)


def teardown_distributed(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup_distributed` started it (idempotent)."""
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()
        info.initialised_here = False


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
