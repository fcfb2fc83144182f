"""What every training loop shares: folder lock, deferred Ctrl-C, schedule, progress bar.

Pretraining (:mod:`astropt.train.trainer`) and finetuning
(:mod:`astropt.finetune.trainer`) both hold ``out_dir`` with :func:`run_lock`
for the whole run (a second run in the same folder stops before touching it,
on every rank) and run each iteration (step, counters, metrics row,
checkpoint) inside :func:`deferred_interrupts`, so Ctrl-C finishes the
iteration it interrupts and the run stops with a consistent record.
"""

from __future__ import annotations

import logging
import sys
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from astropt.distributed import DistInfo, teardown_distributed
from astropt.io import FolderBusyError, folder_lock

_deferring = False


@contextmanager
def deferred_interrupts(note: str = ""):
    """Hold SIGINT (Ctrl-C) until the block ends, then raise KeyboardInterrupt.

    A second Ctrl-C inside the block raises at once. Nested blocks defer to the
    outermost one, so a whole training iteration (step, counters, metrics row,
    checkpoint) finishes or is redone, never half-recorded. ``note`` is printed
    at the first Ctrl-C.
    """
    import signal
    import threading

    global _deferring
    if _deferring or threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def hold(*args):
        if received:
            raise KeyboardInterrupt
        received.append(args)
        if note:
            print(f"\n{note} (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, hold)
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


@contextmanager
def run_lock(out: Path, what: str, info: DistInfo, device: torch.device):
    """Rank 0 holds ``out``'s lock for the block; every rank stops if another run has it.

    ``what`` names the holder in the lock file ("training run"). A busy folder
    raises :class:`~astropt.io.FolderBusyError` on every rank (after the
    process group this process started is torn down).
    """
    busy: FolderBusyError | None = None
    with ExitStack() as stack:
        if info.is_main:
            try:
                stack.enter_context(folder_lock(out, what))
            except FolderBusyError as error:
                busy = error
        flag = info.all_reduce(torch.tensor([float(busy is not None)], device=device))
        if flag.item() > 0:
            teardown_distributed(info)
            raise busy or FolderBusyError(f"{out} is in use by another run")
        yield


def save_on_interrupt(run, log) -> None:
    """After Ctrl-C: save ``checkpoints/latest`` unless the last checkpoint is this step.

    ``run`` has ``dist`` (:class:`DistInfo`), ``step``, ``last_saved_step`` and
    ``save_checkpoint(names)``. Under torchrun nothing is saved (the other
    processes may not be at a collective): the last checkpoint stands.
    """
    if not run.dist.enabled and run.last_saved_step != run.step:
        log.warning("interrupted at step %d: saving checkpoints/latest", run.step)
        run.save_checkpoint(["latest"])
    elif run.dist.enabled:
        log.warning(
            "interrupted at step %d: under torchrun the processes cannot agree on a "
            "checkpoint; the last one is step %s",
            run.step,
            run.last_saved_step,
        )


@dataclass(frozen=True)
class Schedule:
    """When a loop evaluates, logs and checkpoints (steps count from 1 after each update).

    ``checkpoint_interval`` 0 means ``eval_interval``; ``snapshots`` are the steps
    that also keep a ``step-NNNNNNN`` checkpoint. The last step always evaluates,
    logs and saves ``latest``.
    """

    max_iters: int
    eval_interval: int
    log_interval: int
    checkpoint_interval: int = 0
    snapshots: frozenset[int] = frozenset()

    def is_eval(self, step: int) -> bool:
        return step % self.eval_interval == 0 or step == self.max_iters

    def is_log(self, step: int) -> bool:
        return self.is_eval(step) or step % self.log_interval == 0

    def checkpoints(self, step: int, improved: bool) -> list[str]:
        """Checkpoint folders to write after ``step``: latest, best (``improved``), snapshot."""
        names = ["best"] if improved else []
        every = self.checkpoint_interval or self.eval_interval
        if step % every == 0 or step == self.max_iters:
            names.insert(0, "latest")
        if step in self.snapshots:
            names.append(f"step-{step:07d}")
        return names


def progress_bar(total: int, initial: int, enabled: bool, desc: str):
    """The loop's tqdm bar over optimiser steps (rank 0 with ``progress=true`` draws it)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, desc=desc)


class RunBase:
    """What pretraining's Trainer and finetuning's Finetuner share beyond the schedule.

    Subclasses set ``dist`` (:class:`DistInfo`), ``device``, ``amp_dtype`` (None:
    float32) and the class attribute ``log`` (their logger).
    """

    log: logging.Logger
    dist: DistInfo
    device: torch.device
    amp_dtype: torch.dtype | None

    def say(self, message: str, *args) -> None:
        """Log on rank 0 only."""
        if self.dist.is_main:
            self.log.info(message, *args)

    def autocast(self):
        """The autocast context of the run's precision (a no-op for float32)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)
