"""One process of the exit test: ``torchrun --nproc_per_node=2 tests/exit_worker.py``.

Joins the group through the project's bootstrap, leaves collectives on
Python-made tensors in flight and ends as every command line does
(:func:`astropt.distributed.exit_launched`). Without it, the interpreter
finalises while gloo worker threads still hold those tensors, and a finished
rank aborts ("terminate called without an active exception", SIGABRT) in most runs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from astropt.distributed import exit_launched, process_group

if __name__ == "__main__":
    torch.set_num_threads(1)
    process_group()
    works = [dist.all_reduce(torch.ones(1_000_000), async_op=True) for _ in range(8)]
    del works
    raise SystemExit(exit_launched(0))
