"""Finetuning step speed and memory per mode: probe, lora, full, same shapes, same run.

One step = forward of the trunk up to the pooled features, the task head, a
10-class cross-entropy, backward through whatever trains in that mode,
gradient clipping and an AdamW update (the finetune loop's own
``prepare_for_mode`` and ``make_optimizer``, :mod:`astropt.finetune.modes`). Inputs are random normalised
tokens (the model's cost does not depend on their values).

Shapes: the quickstart model (4 layers, 4 heads, width 128; 16 tokens of a
64x64 stamp, batch 32) and AstroPT's 095M (12 layers, 12 heads, width 768; 256
tokens of a 256x256 stamp, batch 8). The modes are timed alternately, round
after round, so load from other processes hits them alike; a row reports
examples per second from the median step, and ``lora / full`` is the ratio
measured in the same run.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` over a mode's
steps; not measured on CPU (shown as ``-``).

    python bench/finetune.py [--shapes quickstart,095M] [--rounds 5] [--device auto] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # name: (layers, heads, width, tokens, batch)
    "quickstart": (4, 4, 128, 16, 32),
    "095M": (12, 12, 768, 256, 8),
}
MODES = ("probe", "lora", "full")


def build(shape: str, mode: str, device):
    import torch

    from astropt.finetune.config import FinetuneConfig
    from astropt.finetune.model import FinetunedGPT, HeadConfig
    from astropt.finetune.modes import make_optimizer, prepare_for_mode
    from astropt.model import GPT, GPTConfig

    layers, heads, width, tokens, batch = SHAPES[shape]
    config = GPTConfig(n_layer=layers, n_head=heads, n_embd=width, block_size=max(tokens, 16))
    torch.manual_seed(0)
    model = FinetunedGPT.from_gpt(GPT(config), HeadConfig(kind="classification", n_outputs=10))
    cfg = FinetuneConfig(mode=mode)
    trained = prepare_for_mode(model, cfg).to(device)
    optimizer = make_optimizer(trained, cfg, layers)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, tokens, config.patch_dim, generator=generator).to(device)
    y = torch.randint(0, 10, (batch,), generator=generator).to(device)
    return model, trained, optimizer, x, y


def step(model, trained, optimizer, x, y, dtype) -> None:
    import torch

    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    with autocast:
        loss = model.task_loss(model.task_outputs(x), y)
    loss.backward()
    params = [p for p in trained.parameters() if p.requires_grad]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_modes(shape: str, device, rounds: int, dtype: str) -> dict[str, dict]:
    import torch

    built = {mode: build(shape, mode, device) for mode in MODES}
    for mode in MODES:  # warm-up step (allocations, kernels, optimiser state)
        step(*built[mode], dtype)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    peaks: dict[str, int] = {}
    for r in range(rounds):
        order = MODES[r % 3 :] + MODES[: r % 3]  # rotate who goes first
        for mode in order:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            start = time.perf_counter()
            step(*built[mode], dtype)
            sync(device)
            times[mode].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[mode] = max(peaks.get(mode, 0), torch.cuda.max_memory_allocated(device))
    batch = SHAPES[shape][4]
    out = {}
    for mode in MODES:
        trainable = sum(p.numel() for p in built[mode][1].parameters() if p.requires_grad)
        median = statistics.median(times[mode])
        out[mode] = {
            "examples_per_s": batch / median,
            "median_step_s": median,
            "best_step_s": min(times[mode]),
            "trainable": trainable,
            "peak_bytes": peaks.get(mode),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="quickstart,095M")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per mode (quickstart)")
    parser.add_argument("--big-rounds", type=int, default=1, help="timed steps per mode (095M)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--memory-child", nargs=2, metavar=("SHAPE", "MODE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from astropt.device import resolve_device
    from astropt.embed import resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    print(f"device {device}, {dtype}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {}
    print(f"{'shape':<11} {'mode':<6} {'trainable':>12} {'examples/s':>11} {'step s':>8} "
          f"{'peak MiB':>9}")  # fmt: skip
    for shape in args.shapes.split(","):
        rounds = args.rounds if shape == "quickstart" else args.big_rounds
        rows = time_modes(shape, device, rounds, dtype)
        for mode, row in rows.items():
            peak = "-" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2**20:.0f}"
            print(
                f"{shape:<11} {mode:<6} {row['trainable']:>12,} {row['examples_per_s']:>11.1f} "
                f"{row['median_step_s']:>8.3f} {peak:>9}"
            )
        ratio = rows["lora"]["examples_per_s"] / rows["full"]["examples_per_s"]
        probe = rows["probe"]["examples_per_s"] / rows["full"]["examples_per_s"]
        print(f"{shape}: lora / full speed {ratio:.2f}x, probe / full {probe:.2f}x "
              f"({rounds} alternating round(s))")  # fmt: skip
        results[shape] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
