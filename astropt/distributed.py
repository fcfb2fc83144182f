"""The one process-group bootstrap: every command that runs under ``torchrun`` joins here.

Training, finetuning, scaling studies and every model export (embed, image
features, predict) call :func:`setup_distributed` (or :func:`process_group`,
its ``(rank, world_size)`` form): under ``torchrun`` (``WORLD_SIZE > 1``) this
process joins one group, ``nccl`` on CUDA and ``gloo`` on CPU; a group that
already exists (a scaling study training several runs in the same processes)
is joined and left up. A group started here is destroyed by
:func:`teardown_distributed`, or at the latest when the interpreter exits.

Why a command line run under ``torchrun`` ends in :func:`exit_launched`: a
gloo worker thread drops its reference to a finished collective *after* the
caller's ``wait()`` has returned; when the collective's tensors were created in
Python, that last reference frees a Python object and takes the GIL. If the
main thread has meanwhile reached interpreter finalisation (a thread starved
for a few milliseconds on a busy machine is enough), CPython ends the worker
thread with ``pthread_exit``, whose forced unwinding meets the noexcept
destructor of the work (``c10d::ProcessGroupGloo::AsyncWork``) and calls
``std::terminate``: "terminate called without an active exception", SIGABRT,
and torchrun reports a finished rank as failed. Destroying the group first does
not close the window (the worker threads live on while DDP holds the group).
A finished rank therefore runs its exit handlers while the interpreter is fully
alive, flushes and leaves with ``os._exit``, skipping finalisation. (Destroying
the group at exit narrows the window but does not close it: exports did so and
still aborted now and then.)

Just above the leaves of the import order (torch, :mod:`astropt.device`, :mod:`astropt.options`).
"""

from __future__ import annotations

import atexit
import dataclasses
import os
from typing import Any

import torch
import torch.distributed as dist

from astropt.device import resolve_device
from astropt.options import ConfigError


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


def rank_device(name: str, local_rank: int) -> torch.device:
    """This process's device (made current on CUDA); asking for missing CUDA is a ConfigError."""
    try:
        device = resolve_device(name, local_rank)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def init_process_group(device: torch.device) -> bool:
    """Join the ``torchrun`` process group (nccl for CUDA, else gloo); True if started here.

    A group that already exists (started by the caller, e.g. a scaling study
    running many trainings in the same processes) is joined and left up. A
    group started here is destroyed at interpreter exit if nobody did so before.
    """
    if dist.is_initialized():
        return False
    global _launched
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
    atexit.register(_destroy_at_exit)
    _launched = True
    return True


#: Whether this process started a torchrun process group (see :func:`exit_launched`).
_launched = False


def _destroy_at_exit() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def setup_distributed(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """This process's :class:`DistInfo` and device; joins the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo()
    if world_size > 1 or dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = rank_device(device_name, local_rank)
        info.initialised_here = init_process_group(device)
        info.rank, info.world_size = dist.get_rank(), dist.get_world_size()
        info.local_rank = local_rank
        return info, device
    return info, rank_device(device_name, 0)


def teardown_distributed(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup_distributed` started it (idempotent)."""
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()
        info.initialised_here = False


def process_group() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a distributed run.

    Joins the ``torchrun`` group as :func:`setup_distributed` does (the device
    is the default one: this rank's GPU when CUDA is available); the group
    stays up until the interpreter exits.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    info, _ = setup_distributed("auto")
    return info.rank, info.world_size


def exit_launched(status: int) -> int:
    """End a finished torchrun rank with ``status`` without interpreter finalisation.

    Outside a process group started by :func:`init_process_group` this returns
    ``status`` and does nothing else (in-process callers, tests, one-process
    runs). Otherwise the group is destroyed, the ``atexit`` handlers run (the
    interpreter still alive: log files, progress bars, ``wandb``), stdout and
    stderr are flushed, and the process leaves with ``os._exit(status)``: the
    race described in the module docstring cannot happen. Command lines call it
    with their exit status (:func:`astropt.options.run_command`).
    """
    if not _launched:
        return status
    import logging
    import sys

    try:
        _destroy_at_exit()
        atexit._run_exitfuncs()
        logging.shutdown()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream must not stop the exit
                pass
        os._exit(status)
