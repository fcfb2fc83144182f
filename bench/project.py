"""Write docs/performance.md: projected time and cost of pretraining and embedding at scale.

The arithmetic is here, so every figure in the document comes from code:
model FLOPs from :meth:`astropt.model.GPT.flops_per_token` of the shipped
configs, the loader's measured galaxies per second per worker from
``bench/results/data.jsonl``, our CPU embedding rate from
``bench/results/embed.jsonl``, and the assumptions named in ``ASSUMPTIONS``
(GPU type, peak, utilisation, price, interconnect). Change an assumption and
rerun::

    python bench/project.py [--out docs/performance.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

GALAXIES = 8.5e6  # Smith42/galaxies, one epoch (AstroPT's scaling runs are one epoch)
TOKENS = 256  # 256x256 stamps, 16x16 patches
ASSUMPTIONS = {
    "gpu": "NVIDIA H100 SXM 80 GB",
    "gpu_bf16_peak": 989e12,  # dense bf16 FLOP/s (NVIDIA data sheet, without sparsity)
    "mfu": {"astropt-095M": 0.35, "astropt-700M": 0.45},  # model FLOPs utilisation, training
    "embed_mfu": 0.30,  # inference forward, batch 512, bf16, flash-attn
    "scaling_efficiency": {8: 0.95, 64: 0.85},  # DDP/FSDP, 8 per node (NVLink), 400 Gb/s IB
    "usd_per_gpu_hour": 2.50,  # on-demand cloud H100 price, mid-2020s market range 2-4 USD
    "cpu_cores_per_gpu": 12,  # a typical 8-GPU node has 96+ cores
    "ib_gbytes_per_s": 50,  # 400 Gb/s per GPU
}
CONFIGS = ("astropt-095M", "astropt-700M")


def results(name: str) -> list[dict]:
    path = HERE / "results" / f"{name}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def model_numbers(name: str) -> dict:
    from astropt.config import load_config
    from astropt.model import GPT

    cfg = load_config(ROOT / "configs" / f"{name}.toml")
    with torch.device("meta"):
        model = GPT(cfg.model)
    n = TOKENS - 1  # next-patch inputs per galaxy
    train = model.flops_per_token(n) * n
    width, layers = cfg.model.n_embd, cfg.model.n_layer
    # Forward only, through the middle block (the exporter's early exit).
    blocks = layers // 2 + 1
    params_to_middle = 12 * width * width * blocks + (768 * 4 * width + 4 * width * width)
    embed = 2 * TOKENS * params_to_middle + 2 * TOKENS * blocks * TOKENS * width
    return {
        "params": model.num_params(),
        "train_flops_per_galaxy": train,
        "embed_flops_per_galaxy": embed,
        "grad_bytes": 2 * model.num_params(),  # bf16 gradients all-reduced
    }


def render() -> str:
    a = ASSUMPTIONS
    data = results("data")
    per_worker = (
        statistics.median(
            row["ours"] / max(row["workers"], 1) for run in data for row in run["rows"]
        )
        if data
        else None
    )
    embed = results("embed")
    cpu_embed = (
        statistics.median(r["rates"]["astropt-smallest/ours middle float32"] for r in embed)
        if embed
        else None
    )
    lines = [
        "# Performance at scale, projected",
        "",
        "Written by `python bench/project.py` from the shipped configs, the benchmark",
        "results in `bench/results/` and the assumptions below; do not edit by hand.",
        "",
        "## Assumptions",
        "",
        f"- GPU: {a['gpu']}, dense bf16 peak {a['gpu_bf16_peak'] / 1e12:.0f} TFLOP/s.",
        "- Model FLOPs utilisation (MFU) in training: "
        + ", ".join(f"{k} {100 * v:.0f}%" for k, v in a["mfu"].items())
        + " (bf16 autocast, flash-attn, `compile=true`; small widths with 256-token",
        "  galaxies reach less of the peak than wide models). Not measured here: this",
        "  project's development machine has no GPU; `python bench/train_step.py --device cuda`",
        "  measures it on one.",
        f"- Forward-only utilisation when embedding: {100 * a['embed_mfu']:.0f}%.",
        "- Multi-GPU efficiency (fraction of linear speed-up): "
        + ", ".join(f"{k} GPUs {100 * v:.0f}%" for k, v in a["scaling_efficiency"].items())
        + f"; 8 GPUs per node over NVLink, nodes joined by {8 * a['ib_gbytes_per_s']} GB/s of",
        f"  InfiniBand ({a['ib_gbytes_per_s']} GB/s per GPU). DDP all-reduces bf16 gradients",
        "  once per optimiser step, overlapped with the backward pass.",
        f"- Price: {a['usd_per_gpu_hour']:.2f} USD per GPU-hour (on-demand cloud H100s cost",
        "  about 2-4 USD).",
        f"- Data: `Smith42/galaxies`, {GALAXIES / 1e6:.1f}M galaxies of {TOKENS} tokens (256x256 JPEG),",
        "  one epoch as in AstroPT's scaling runs. FLOPs per galaxy from",
        "  `GPT.flops_per_token` (6 x parameters + attention, 255 predicted tokens).",
        f"- CPU data loading: {a['cpu_cores_per_gpu']} cores per GPU; the loader's rate per worker",
        "  (one core each) is the median over `bench/data.py` runs on the development machine"
        + (f": {per_worker:.0f} galaxies/s" if per_worker else " (not run yet)")
        + ", measured on a",
        "  2-core machine shared by several developers, so a dedicated core does at least as well.",
        "",
        "The 850M size asked for is not a shipped config; the closest is `astropt-700M`.",
        "",
        "## Pretraining, one epoch of 8.5M galaxies",
        "",
        "| config | parameters | FLOPs per galaxy | GPUs | galaxies/s (compute) | loader capacity | bound | wall time | GPU-hours | cost (USD) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in CONFIGS:
        m = model_numbers(name)
        total = GALAXIES * m["train_flops_per_galaxy"]
        for gpus in (8, 64):
            compute = a["gpu_bf16_peak"] * a["mfu"][name] * a["scaling_efficiency"][gpus] * gpus
            compute /= m["train_flops_per_galaxy"]
            capacity = per_worker * a["cpu_cores_per_gpu"] * gpus if per_worker else float("inf")
            rate = min(compute, capacity)
            hours = GALAXIES / rate / 3600
            lines.append(
                f"| {name} | {m['params'] / 1e6:.0f}M | {m['train_flops_per_galaxy']:.2e} | {gpus} | "
                f"{compute:,.0f} | {capacity:,.0f} | {'GPU' if compute <= capacity else 'loader'} | "
                f"{hours:.2f} h | {hours * gpus:,.1f} | {hours * gpus * a['usd_per_gpu_hour']:,.0f} |"
            )
        lines.append(
            f"|  | total {total:.2e} FLOPs; gradients {m['grad_bytes'] / 1e6:.0f} MB per all-reduce, "
            f"{2 * m['grad_bytes'] / (a['ib_gbytes_per_s'] * 1e9) * 1e3:.0f} ms of ring traffic "
            "per optimiser step across nodes ||||||||| "
        )
    lines += [
        "",
        "Where the loader is the bound, the run is data-bound at the measured per-core rate:",
        "more cores per GPU (`data.num_workers`), or a dedicated core's rate (the figure here",
        "comes from a shared, oversubscribed machine; on a GPU target our loader also leaves",
        "tokenising to the GPU, so a core only decodes JPEGs), move it back to the GPU bound.",
        "At 8.5M galaxies both sizes are short runs: one epoch is 2.2B tokens.",
        "",
        "## Embedding 8.5M galaxies (middle layer, the AstroPT default)",
        "",
        "| config | forward FLOPs per galaxy | GPUs | galaxies/s (compute) | loader capacity | wall time | GPU-hours | cost (USD) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in CONFIGS:
        m = model_numbers(name)
        for gpus in (8, 64):
            compute = a["gpu_bf16_peak"] * a["embed_mfu"] * gpus / m["embed_flops_per_galaxy"]
            capacity = per_worker * a["cpu_cores_per_gpu"] * gpus if per_worker else float("inf")
            rate = min(compute, capacity)
            hours = GALAXIES / rate / 3600
            lines.append(
                f"| {name} | {m['embed_flops_per_galaxy']:.2e} | {gpus} | {compute:,.0f} | "
                f"{capacity:,.0f} | {hours:.2f} h | {hours * gpus:,.1f} | "
                f"{hours * gpus * a['usd_per_gpu_hour']:,.0f} |"
            )
    lines += [
        "",
        "Embedding is bound by whichever is slower, the GPUs or the JPEG decoding on",
        "their CPU cores; `torchrun --nproc_per_node=8 -m astropt.embed ...` shards the",
        "galaxies over the GPUs (each rank writes its own resumable shard, one manifest ties",
        "them; see `astropt/embed.py`).",
    ]
    if cpu_embed:
        lines += [
            "",
            f"On a CPU, the development machine embeds {cpu_embed:.0f} galaxies/s per core with",
            "AstroPT's smallest shape (4 layers, width 128, float32, middle layer; median of",
            f"`bench/embed.py` runs): 8.5M galaxies take {GALAXIES / cpu_embed / 3600:.0f} core-hours.",
        ]
    lines += [
        "",
        "## Measured on the development machine (2 shared CPU cores)",
        "",
        "See the benchmark table in [benchmarks](benchmarks.md) (`make bench`, `bench/report.py`). Where",
        "the time goes on this CPU:",
        "",
        "- bf16 matmuls run at about half the float32 rate here (AVX512-BF16 without AMX:",
        "  `bench/limits.py` measures both), so `dtype=auto` stays in float32 on such CPUs",
        "  and takes bf16 only with AMX tiles (`astropt.device.native_bf16`).",
        "- A one-token decode step of the quickstart-sized model is ~3 MFLOP: at batch 1 it",
        "  reaches about 1% of the float32 matmul peak; the time is per-operator overhead",
        "  (about 60 small kernels a step), which the pre-allocated KV cache cannot remove.",
        "- The data loader writes float32 tokens at a few percent of the copy bandwidth: JPEG",
        "  decoding (libjpeg-turbo), the per-patch normalisation passes and first-touch page",
        "  faults on each batch's fresh buffers (costly on this virtual machine) dominate; a",
        "  worker makes its batch straight into shared memory, so it is written once.",
        "",
    ]
    lines += training_step_section()
    return "\n".join(lines)


def training_step_section() -> list[str]:
    """The CPU training step against AstroPT and where its time goes, from the result files."""
    runs = [r for r in results("train_step") if r.get("schema") == 2 and r["device"] == "cpu"]
    runs = [r for r in runs if "best_s" in r]
    if not runs:
        return []
    last = runs[-1]
    keys = list(last["ratios"])
    lines = [
        "## The training step on this CPU",
        "",
        f"`python bench/train_step.py --threads 1` (batch {last['batch']} x 256 tokens, one thread,",
        "process CPU clock, variants timed alternately; the latest of "
        f"{len(runs)} run{'s' if len(runs) > 1 else ''}):",
        "",
        "| shape | dtype | ours eager | ours compiled | astropt 2.0.9 | ours vs astropt "
        "| ours, of the matmul peak |",
        "|---|---|---|---|---|---|---|",
    ]
    best = last["best_s"]
    for key in keys:
        shape, dtype = key.split("/")
        compiled = best.get(f"{key}/ours+compile")
        lines.append(
            f"| {shape} | {dtype} | {1e3 * best[key + '/ours']:.0f} ms | "
            + (f"{1e3 * compiled:.0f} ms" if compiled else "-")
            + f" | {1e3 * best[key + '/astropt']:.0f} ms | {last['ratios'][key]:.2f}x | "
            f"{100 * last['of_peak'][key + '/ours']:.0f}% |"
        )
    gains = [g for r in runs for g in r.get("compile_gain", {}).values()]
    if gains:
        lines += [
            "",
            f"`torch.compile` of our step changes it by {min(gains):.2f}-{max(gains):.2f}x on this "
            "CPU and costs tens of seconds",
            "to a few minutes of compilation, so `compile` stays off by default; turn it on",
            "(`compile=true`) for GPU runs, where `--device cuda` measures what it gives.",
        ]
    profiles: dict[str, dict] = {}
    for record in results("train_profile"):
        if record.get("schema") == 2 and record["device"] == "cpu" and not record["compiled"]:
            profiles[record["key"]] = record
    if profiles:
        lines += [
            "",
            "Where the time goes (`python bench/train_step.py --threads 1 --profile SHAPE/DTYPE`:",
            "profiler self time by operator category, then the step's matmuls replayed alone",
            "at their shapes, the floor no other change can go below):",
            "",
            "| shape/dtype | step | matmuls | attention | GELU | rest | matmul floor "
            "| astropt's step / our floor | non-matmul time: now / allowed for 1.5x |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for key, record in profiles.items():
            shares = record["shares"]
            main = {name: shares.get(name, 0.0) for name in ("matmul", "attention", "gelu")}
            theirs = best.get(f"{key}/astropt")
            floor = record["matmul_floor_s"]
            bound = f"{theirs / floor:.2f}x" if theirs else "-"
            allowed = (
                f"{1e3 * (record['step_s'] - floor):.0f} / {1e3 * (theirs / 1.5 - floor):.0f} ms "
                f"(attention alone {1e3 * main['attention'] * record['step_s']:.0f} ms)"
                if theirs
                else "-"
            )
            lines.append(
                f"| {key} | {1e3 * record['step_s']:.0f} ms | {100 * main['matmul']:.0f}% | "
                f"{100 * main['attention']:.0f}% | {100 * main['gelu']:.0f}% | "
                f"{100 * (1 - sum(main.values())):.0f}% | "
                f"{1e3 * record['matmul_floor_s']:.0f} ms "
                f"({100 * record['matmul_flops'] / record['matmul_floor_s'] / record['peak']:.0f}% "
                f"of peak) | {bound} | {allowed} |"
            )
        lines += [
            "",
            "Both models run the same matmuls at the same shapes, and here those alone take",
            "most of a step at close to the square-matmul peak (the matmul floor). \"astropt's",
            'step / our floor" is the most any implementation of this step could gain over',
            "AstroPT's on this CPU if attention, GELU, LayerNorm, the loss and the optimiser",
            "cost nothing. A 1.5x speed-up leaves the non-matmul part of the step the time in",
            "the last column: less than torch's CPU flash-attention kernel alone takes (its",
            "forward and backward, both single kernels, like tanh-GELU's; `torch.compile` finds",
            "nothing more to fuse). That is why 1.5x over AstroPT is out of reach on this CPU at",
            "these shapes; the gain left is in those kernels, not in the model code around them.",
            "",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    args = parser.parse_args()
    text = render()
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
