"""Optimiser-step speed: our GPT against AstroPT 2.0.9's GPT at the same shapes, same run.

One optimiser step = forward and backward of the next-patch loss on a batch of
8 galaxies of 256 tokens (16x16x3 = 768 values each; 255 predicted), gradient
clipping at norm 1 and an AdamW update (each side with its own optimiser
set-up: ours fused AdamW with decay on matrices, AstroPT's ``configure_optimizers``).
Shapes: AstroPT's smallest (4 layers, 8 heads, width 128) and a wider one (its
~5M model: 6 layers, 8 heads, width 256); float32 and bfloat16 autocast.

The machine's dense matmul peak (float32 and bfloat16) is measured in the same
run; utilisation = model FLOPs per step (``GPT.flops_per_token`` x tokens, the
same arithmetic for both models) / step time / peak.

The reference package is installed with pip into ``bench/_astropt_ref`` (git
ignored) and run in a subprocess whose ``sys.path`` starts with that folder
and cannot see this project (DESIGN.md section 9). Each implementation runs in
its own subprocess, alternating over several rounds so that load from other
processes hits both alike (persistent workers, alternating short bursts of
steps); a row reports the best and the median step time.

    python bench/train_step.py [--rounds 6] [--steps 2] [--device cpu] [--threads N] [--no-reference]

On a CPU shared with other busy processes, ``--threads 1`` gives steadier
figures (OpenMP threads that spin-wait for each other suffer most from it).
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REF_DIR = HERE / "_astropt_ref"
REF_VERSION = "2.0.9"

SHAPES = {  # name: (layers, heads, width)
    "astropt-001M": (4, 8, 128),
    "astropt-005M": (6, 8, 256),
}
BATCH, TOKENS, PATCH_VALUES = 8, 256, 16 * 16 * 3
DTYPES = ("float32", "bfloat16")
REPLY = "@reply "  # marks the worker's answers on its stdout


# ---------------------------------------------------------------- reference
def ensure_reference() -> Path | None:
    """``bench/_astropt_ref`` with astropt==2.0.9 (and loralib), installed on first use."""
    if (REF_DIR / "astropt" / "model.py").is_file():
        return REF_DIR
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
        "--target", str(REF_DIR), f"astropt=={REF_VERSION}", "loralib",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not (REF_DIR / "astropt" / "model.py").is_file():
        print(f"(astropt {REF_VERSION} did not install: {result.stderr.strip()[-300:]})")
        return None
    return REF_DIR


def _import_reference(folder: str):
    """AstroPT's ``astropt.model`` from ``folder``, never this project's package."""
    sys.path.insert(0, folder)
    # Our package is installed in editable mode through a meta-path finder; drop it.
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    import astropt.model as ref

    if not Path(ref.__file__).resolve().is_relative_to(Path(folder).resolve()):
        raise RuntimeError(f"imported the wrong astropt: {ref.__file__}")
    return ref


# ---------------------------------------------------------------- workers
def _builders(impl: str, device, ref_folder: str | None):
    """``build(shape, dtype) -> step()`` for one implementation."""
    import torch

    x = torch.randn(BATCH, TOKENS, PATCH_VALUES, generator=torch.Generator().manual_seed(0))
    x = x.to(device)

    def autocast(dtype: str):
        if dtype == "float32":
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=getattr(torch, dtype))

    if impl == "ours":
        sys.path.insert(0, str(ROOT))
        from astropt.config import OptimConfig
        from astropt.model import GPT, GPTConfig
        from astropt.train.optim import make_optimizer

        def build(layers, heads, width, dtype):
            torch.manual_seed(0)
            model = GPT(GPTConfig(n_layer=layers, n_head=heads, n_embd=width, block_size=1024))
            model = model.to(device)
            optimizer = make_optimizer(model, OptimConfig(), device)
            flops = model.flops_per_token(TOKENS - 1) * BATCH * (TOKENS - 1)

            def step():
                with autocast(dtype):
                    _, loss = model.compute_loss(x)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            return step, flops, model.num_params()

        return build

    ref = _import_reference(ref_folder)
    modality = ref.ModalityConfig(
        name="images", input_size=PATCH_VALUES, pos_input_size=1, patch_size=16, embed_pos=True
    )
    registry = ref.ModalityRegistry([modality])
    positions = torch.arange(TOKENS - 1, device=device).expand(BATCH, -1)
    inputs = {"images": x[:, :-1], "images_positions": positions}
    targets = {"images": x[:, 1:]}

    def build(layers, heads, width, dtype):
        torch.manual_seed(0)
        config = ref.GPTConfig(
            n_layer=layers, n_head=heads, n_embd=width, block_size=1024, n_chan=3,
            modalities=[modality],
        )  # fmt: skip
        model = ref.GPT(config, registry, master_process=False).to(device)
        optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.type)

        def step():
            with autocast(dtype):
                _, loss = model(inputs, targets=targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step, None, model.get_num_params()

    return build


def worker(impl: str, device_name: str, ref_folder: str | None, threads: int | None) -> None:
    """Serve commands on stdin, one JSON object a line, answering on stdout.

    ``{"op": "build", "shape": NAME, "dtype": D}`` builds the model and runs two
    warm-up steps (allocator, kernels, optimiser state); ``{"op": "time",
    "steps": N}`` times N optimiser steps of the last built model.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    build = _builders(impl, device, ref_folder)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step = None
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "build":
            step = None  # free the previous model first
            step, flops, params = build(*SHAPES[command["shape"]], command["dtype"])
            for _ in range(2):
                step()
            sync()
            reply = {"flops": flops, "params": params}
        else:
            times = []
            for _ in range(command["steps"]):
                sync()
                start = time.perf_counter()
                step()
                sync()
                times.append(time.perf_counter() - start)
            reply = {"times": times}
        print(REPLY + json.dumps(reply), flush=True)


class Worker:
    """One implementation in its own process, driven step batch by step batch."""

    def __init__(self, impl: str, args, ref: Path | None):
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", impl]
        command += ["--device", args.device]
        if args.threads:
            command += ["--threads", str(args.threads)]
        if ref is not None:
            command += ["--ref", str(ref)]
        self.impl = impl
        self.process = subprocess.Popen(
            command, cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        while True:  # skip anything else the model code prints
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the {self.impl} worker died (see its error output above)")
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


# ---------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="alternating bursts per model")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per burst")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--no-reference", action="store_true", help="time our model only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--ref", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.device, args.ref, args.threads)
        return 0

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from astropt.train.metrics import measure_matmul_peak

    device = torch.device(args.device)
    ref = None if args.no_reference else ensure_reference()
    impls = ["ours"] + (["astropt"] if ref is not None else [])
    workers = [Worker(impl, args, ref) for impl in impls]
    times: dict[tuple[str, str], list[float]] = {}
    flops: dict[str, float] = {}
    peaks = {dtype: 0.0 for dtype in DTYPES}
    size = 4096 if device.type == "cuda" else 2048
    try:
        for shape in SHAPES:
            for dtype in DTYPES:
                key = f"{shape}/{dtype}"
                for w in workers:
                    built = w.ask(op="build", shape=shape, dtype=dtype)
                    if built["flops"]:
                        flops[key] = built["flops"]
                # Alternate short bursts so that load from other processes hits both alike.
                for round_index in range(args.rounds):
                    order = workers if round_index % 2 == 0 else workers[::-1]
                    for w in order:
                        reply = w.ask(op="time", steps=args.steps)
                        times.setdefault((w.impl, key), []).extend(reply["times"])
                # The machine's attainable peak: the best of every measurement.
                peak = measure_matmul_peak(device, getattr(torch, dtype), size=size, seconds=1.0)
                peaks[dtype] = max(peaks[dtype], peak)
    finally:
        for w in workers:
            w.close()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"load average {load:.1f}; batch {BATCH} x {TOKENS} tokens of {PATCH_VALUES} values; "
        f"{args.rounds} alternating bursts of {args.steps} steps per model"
    )
    print(f"measured matmul peak ({size}x{size}): " + ", ".join(
        f"{dtype} {peaks[dtype] / 1e9:.1f} GFLOP/s" for dtype in DTYPES))  # fmt: skip
    header = f"{'shape':14s} {'dtype':9s} {'model':8s} {'best ms':>9s} {'median ms':>10s} "
    header += f"{'GFLOP/s':>9s} {'of peak':>8s} {'speed-up':>9s}"
    print(header)
    print("-" * len(header))
    ratios = {}
    for key in flops:
        shape, dtype = key.split("/")
        best = {impl: min(times[(impl, key)]) for impl in impls}
        for impl in impls:
            t = times[(impl, key)]
            achieved = flops[key] / best[impl]
            ratio = ""
            if impl == "ours" and "astropt" in best:
                ratios[key] = best["astropt"] / best["ours"]
                ratio = f"{ratios[key]:8.2f}x"
            print(
                f"{shape:14s} {dtype:9s} {impl:8s} {1e3 * best[impl]:9.1f} "
                f"{1e3 * statistics.median(t):10.1f} {achieved / 1e9:9.1f} "
                f"{100 * achieved / peaks[dtype]:7.1f}% {ratio:>9s}"
            )
    for key, ratio in ratios.items():
        shape, dtype = key.split("/")
        print(f"speed-up ratio vs astropt: {ratio:.2f} ({shape}, {dtype} both, best step time)")
    from limits import Limits, save_result

    limits = Limits.measure(device)
    print(limits.describe(), "(the table's 'of peak' uses the best of the bursts above)")
    save_result(
        "train_step",
        {"ratios": ratios, "threads": torch.get_num_threads(), "limits": vars(limits),
         "of_peak": {key: flops[key] / min(times[("ours", key)]) / peaks[key.split("/")[1]]
                     for key in flops}},
    )  # fmt: skip
    if ratios:
        # What each side's trainer runs on a CPU by default: ours at its best
        # dtype here, AstroPT's train.py in float32 (it autocasts on GPUs only).
        shape = next(iter(SHAPES))
        ours = min(min(times[("ours", f"{shape}/{d}")]) for d in DTYPES)
        theirs = min(times[("astropt", f"{shape}/float32")])
        if device.type == "cuda":
            theirs = min(times[("astropt", f"{shape}/bfloat16")])
        print(
            f"speed-up ratio vs astropt: {theirs / ours:.2f} ({shape}, each at its trainer's setting)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
