"""One process of the sharded-export test: ``torchrun --nproc_per_node=2 tests/export_worker.py MODEL DATA OUT CRASH``.

``MODEL``: a ``save_pretrained`` folder; ``DATA``: a JSON file of DataConfig
fields; ``OUT``: the export folder. ``CRASH`` > 0 makes rank 1 fail on its
``CRASH + 1``-th batch (after ``CRASH`` batches were embedded): an interrupted
run. Each rank writes how many batches it embedded to ``OUT.calls.RANK``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from astropt import embed
from astropt.data import DataConfig
from astropt.distributed import exit_launched
from astropt.export import process_group
from astropt.model import GPT


def main() -> None:
    model_dir, data_file, out, crash = sys.argv[1:5]
    torch.set_num_threads(1)
    rank, _ = process_group()
    calls = 0
    encode = embed.ModelEncoder.__call__

    def counted(self, tokens):
        nonlocal calls
        if rank == 1 and int(crash) and calls == int(crash):
            raise RuntimeError("simulated crash of rank 1")
        calls += 1
        Path(f"{out}.calls.{rank}").write_text(str(calls))
        return encode(self, tokens)

    embed.ModelEncoder.__call__ = counted
    model = GPT.from_pretrained(model_dir)
    data_cfg = DataConfig(**json.loads(Path(data_file).read_text()))
    embed.export_embeddings(
        model, data_cfg, out, "test", layer="final", batch_size=8, rows_per_part=8,
        device="cpu", dtype="float32", progress=False,
    )  # fmt: skip


if __name__ == "__main__":
    main()
    # Work done and files written: leave as the command lines do (no interpreter
    # teardown, where a gloo thread can abort a finished rank; astropt.distributed).
    raise SystemExit(exit_launched(0))
