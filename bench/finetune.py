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

Peak memory of each mode is measured in a fresh child process that builds
that mode alone and takes two steps (in the timing process all three modes'
weights and optimiser states are resident at once): on CUDA
``torch.cuda.max_memory_allocated``; on CPU the growth of the peak resident
set (``VmHWM``, reset through ``/proc/self/clear_refs`` once torch is imported)
over the RSS at that moment (Linux).
On CUDA the step runs under bfloat16 autocast (``--dtype auto``).

Each run appends its figures to ``bench/results/finetune.jsonl`` (``bench/report.py``
quotes the lora / full ratio at 095M in the README).

    python bench/finetune.py [--shapes quickstart,095M] [--rounds 5] [--big-rounds 1]
        [--device auto|cpu|cuda] [--dtype auto|float32|bfloat16] [--threads N] [--no-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

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
    """Examples per second of each mode (median step over ``rounds`` alternating rounds)."""
    built = {mode: build(shape, mode, device) for mode in MODES}
    for mode in MODES:  # warm-up step (allocations, kernels, optimiser state)
        step(*built[mode], dtype)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(rounds):
        order = MODES[r % 3 :] + MODES[: r % 3]  # rotate who goes first
        for mode in order:
            sync(device)
            start = time.perf_counter()
            step(*built[mode], dtype)
            sync(device)
            times[mode].append(time.perf_counter() - start)
    batch = SHAPES[shape][4]
    out = {}
    for mode in MODES:
        median = statistics.median(times[mode])
        out[mode] = {
            "examples_per_s": batch / median,
            "median_step_s": median,
            "best_step_s": min(times[mode]),
            "trainable": sum(p.numel() for p in built[mode][1].parameters() if p.requires_grad),
        }
    return out


def peak_memory(shape: str, mode: str, device, dtype: str) -> int:
    """Peak bytes of one mode alone: build it and take two steps (this process; see the module
    docstring for what is counted on each device)."""
    import torch

    import astropt.finetune.modes  # noqa: F401  (imports are not the mode's memory)

    if mode == "lora":
        import peft  # noqa: F401
    base = _reset_rss_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    built = build(shape, mode, device)
    for _ in range(2):
        step(*built, dtype)
    sync(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return _status_kib("VmHWM") * 1024 - base


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_rss_peak() -> int:
    """Reset this process's peak RSS to its current RSS (Linux ``clear_refs`` 5); return the
    current RSS in bytes, the baseline the peak grows from."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def measure_in_child(shape: str, mode: str, args) -> int | None:
    """:func:`peak_memory` in a fresh process (``--memory-child``); None if it failed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", shape, mode,
               "--device", args.device, "--dtype", args.dtype]  # fmt: skip
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"memory of {shape}/{mode} not measured: {done.stderr[-500:]}", file=sys.stderr)
        return None
    return int(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="quickstart,095M")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per mode (quickstart)")
    parser.add_argument("--big-rounds", type=int, default=1, help="timed steps per mode (095M)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--memory-child", nargs=2, metavar=("SHAPE", "MODE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from astropt.device import resolve_device
    from astropt.export import resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.memory_child:
        print(peak_memory(*args.memory_child, device, dtype))
        return 0
    from limits import save_result

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), {dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    memory_note = "peak MiB" if device.type == "cuda" else "peak RSS+ MiB"
    print(f"{'shape':<11} {'mode':<6} {'trainable':>12} {'examples/s':>11} {'step s':>8} "
          f"{memory_note:>14}")  # fmt: skip
    results, ratios = {}, {}
    for shape in args.shapes.split(","):
        rounds = args.rounds if shape == "quickstart" else args.big_rounds
        rows = time_modes(shape, device, rounds, dtype)
        for mode, row in rows.items():
            row["peak_bytes"] = None if args.no_memory else measure_in_child(shape, mode, args)
            peak = "-" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2**20:.0f}"
            print(
                f"{shape:<11} {mode:<6} {row['trainable']:>12,} {row['examples_per_s']:>11.1f} "
                f"{row['median_step_s']:>8.3f} {peak:>14}"
            )
        ratio = rows["lora"]["examples_per_s"] / rows["full"]["examples_per_s"]
        probe = rows["probe"]["examples_per_s"] / rows["full"]["examples_per_s"]
        print(f"{shape}: lora / full speed {ratio:.2f}x, probe / full {probe:.2f}x "
              f"({rounds} alternating round(s))")  # fmt: skip
        results[shape] = rows
        ratios[shape] = {"lora/full": ratio, "probe/full": probe, "rounds": rounds}
    record = {"device": device.type, "device_name": name, "dtype": dtype,
              "threads": torch.get_num_threads(), "shapes": results, "ratios": ratios}  # fmt: skip
    save_result("finetune", record)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
