"""One process of the torchrun test: ``torchrun --nproc_per_node=2 tests/ddp_worker.py OUT SURVEY CACHE MODE [ACCUM]``.

Trains a tiny model for 3 steps (batch 2 per process, ``grad_accum=ACCUM``
micro-batches over the two processes, default 2: one micro-batch each) on the
real data pipeline, the model replicated (``MODE=ddp``) or sharded
(``MODE=fsdp``), and writes, per rank, the ids and tokens it read at each
step and the number of gradient reduce-scatters (FSDP's gradient collective)
each step ran to ``OUT/rank{R}.pt``; the test compares step 1 with one process
on the two ranks' batches concatenated.
"""

from __future__ import annotations

import os
import sys

import torch

from astropt.config import load_config
from astropt.distributed import exit_launched
from astropt.train import train


def main() -> None:
    out, survey, cache, mode = sys.argv[1:5]
    accum = sys.argv[5] if len(sys.argv) > 5 else "2"
    torch.set_num_threads(1)
    # FSDP reduce-scatters gradients through this function, looked up at each call.
    reduce_scatter = torch.distributed.reduce_scatter_single
    calls = [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        return reduce_scatter(*args, **kwargs)

    torch.distributed.reduce_scatter_single = counted
    cfg = load_config(
        None,
        [
            f"out_dir={out}",
            "data.source=hf",
            f"data.path={survey}",
            f"data.cache_dir={cache}",
            "data.augment=false",
            "model.n_layer=2",
            "model.n_head=2",
            "model.n_embd=32",
            "model.block_size=4",
            "batch_size=2",
            f"grad_accum={accum}",
            "max_iters=3",
            "eval_interval=3",
            "eval_iters=2",
            "log_interval=1",
            "log_checkpoints=3",  # steps 0, 1 and 3
            "optim.warmup_iters=1",
            "optim.lr=3e-3",
            "peak_flops=1e9",
            "dtype=float32",
            f"parallel={mode}",
            "preview=false",
            "progress=false",
        ],
    )
    seen: dict[str, list] = {"ids": [], "tokens": [], "reduce_scatters": []}

    def record(step: int, info: dict) -> None:
        seen["reduce_scatters"].append(calls[0] - sum(seen["reduce_scatters"]))
        seen["ids"].append([i for b in info["batches"] for i in b.ids])
        seen["tokens"].append(torch.cat([b.tokens for b in info["batches"]]).cpu())

    train(cfg, on_step=record)
    torch.save(seen, os.path.join(out, f"rank{os.environ['RANK']}.pt"))


if __name__ == "__main__":
    main()
    # Work done and files written: leave as the command lines do (no interpreter
    # teardown, where a gloo thread can abort a finished rank; astropt.distributed).
    raise SystemExit(exit_launched(0))
