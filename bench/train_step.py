"""Optimiser-step speed: our GPT against AstroPT 2.0.9's GPT at its 005M and 021M shapes, same run.

One optimiser step = forward and backward of the next-patch loss on a batch of
galaxies of 256 tokens (16x16x3 = 768 values each; 255 predicted), gradient
clipping at norm 1 and an AdamW update, each side with its own optimiser
set-up (ours: ``astropt.train.optim.make_optimizer``, fused AdamW; AstroPT's:
``configure_optimizers``) and each side's step as its trainer runs it (ours:
``LossModule`` under autocast, compiled when ``compile`` is on; AstroPT's
``scripts/train.py``: eager, ``compile = False`` by default).

Shapes (AstroPT's scaling configs, ``configs/astropt-*.toml``): 005M (6 layers,
8 heads, width 256) and 021M (6 layers, 8 heads, width 512; our
``astropt-020M`` config). Precision: float32, and bfloat16 autocast.
Variants, timed alternately in the same run (persistent worker processes,
short bursts in turn, so load from other processes hits all alike):

* ``ours``: eager; ``ours+compile``: ``torch.compile`` of the same step module;
* ``astropt``: the reference model, eager, as its training script runs it.

A row reports the best and median step time, the model FLOP/s (the same
``GPT.flops_per_token`` arithmetic for both models: 6 x parameters +
attention, 255 predicted tokens) as a fraction of the matmul peak of the same
dtype measured in the same run, and the first step (which includes
``torch.compile``'s compilation).

``--device cuda``: bfloat16 autocast, the flash SDPA backend only (math and
memory-efficient backends off; flash-attn's own kernel when it is installed),
batch 64, shapes 005M, 021M and 095M; "of peak" is then the model FLOPs
utilisation (MFU) against the measured dense bf16 matmul peak of the GPU.

``--profile SHAPE/DTYPE``: torch.profiler of our eager step instead; prints
where the time goes (matmuls, attention, LayerNorm, GELU, loss, optimiser,
casts and copies, the rest).

The reference package is installed with pip into ``bench/_astropt_ref`` (git
ignored) and runs in a subprocess whose ``sys.path`` starts with that folder
and cannot see this project (DESIGN.md section 9).

    python bench/train_step.py [--threads 1] [--rounds 5] [--steps 1] [--clock cpu]
    python bench/train_step.py --device cuda
    python bench/train_step.py --threads 1 --profile astropt-005M/bfloat16

On a CPU shared with other busy processes, ``--threads 1`` gives steadier
figures (OpenMP threads that spin-wait for each other suffer most from it),
and then steps and the matmul peak are timed in the process's CPU seconds,
which other processes' load does not inflate (it still shares caches and the
memory bus).
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
    "astropt-005M": (6, 8, 256),
    "astropt-021M": (6, 8, 512),
    "astropt-095M": (12, 12, 768),
}
DEFAULT_SHAPES = {"cpu": ("astropt-005M", "astropt-021M"), "cuda": tuple(SHAPES)}
DEFAULT_DTYPES = {"cpu": ("float32", "bfloat16"), "cuda": ("bfloat16",)}
DEFAULT_BATCH = {"cpu": 8, "cuda": 64}  # 8: AstroPT's micro-batch
TOKENS, PATCH_VALUES = 256, 16 * 16 * 3
VARIANTS = ("ours", "ours+compile", "astropt")
REPLY = "@reply "  # marks the worker's answers on its stdout
SCHEMA = 2  # result records of this version of the benchmark (report.py reads these only)


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
def _autocast(device, dtype: str):
    import torch

    if dtype == "float32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def _ours_builder(device, batch: int):
    """``build(layers, heads, width, dtype, compile) -> (step, flops, params)`` for our model."""
    import torch

    sys.path.insert(0, str(ROOT))
    from astropt.config import OptimConfig
    from astropt.model import GPT, GPTConfig
    from astropt.train.optim import make_optimizer
    from astropt.train.parallel import LossModule

    x = torch.randn(batch, TOKENS, PATCH_VALUES, generator=torch.Generator().manual_seed(0))
    x = x.to(device)

    def build(layers, heads, width, dtype, compile):
        torch.manual_seed(0)
        model = GPT(GPTConfig(n_layer=layers, n_head=heads, n_embd=width, block_size=1024))
        model = model.to(device)
        optimizer = make_optimizer(model, OptimConfig(), device)
        module = LossModule(model)  # what the trainer calls (and compiles)
        if compile:
            module = torch.compile(module)
        flops = model.flops_per_token(TOKENS - 1) * batch * (TOKENS - 1)

        def step():
            with _autocast(device, dtype):
                loss = module(x)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step, flops, model.num_params()

    return build


def _reference_builder(device, batch: int, ref_folder: str):
    """The same for AstroPT's model, as its ``scripts/train.py`` sets it up."""
    import torch

    ref = _import_reference(ref_folder)
    x = torch.randn(batch, TOKENS, PATCH_VALUES, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    modality = ref.ModalityConfig(
        name="images", input_size=PATCH_VALUES, pos_input_size=1, patch_size=16, embed_pos=True
    )
    registry = ref.ModalityRegistry([modality])
    positions = torch.arange(TOKENS - 1, device=device).expand(batch, -1)
    inputs = {"images": x[:, :-1], "images_positions": positions}
    targets = {"images": x[:, 1:]}

    def build(layers, heads, width, dtype, compile):
        torch.manual_seed(0)
        config = ref.GPTConfig(
            n_layer=layers, n_head=heads, n_embd=width, block_size=1024, n_chan=3,
            modalities=[modality],
        )  # fmt: skip
        model = ref.GPT(config, registry, master_process=False).to(device)
        optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.type)
        forward = torch.compile(model) if compile else model

        def step():
            with _autocast(device, dtype):
                _, loss = forward(inputs, targets=targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step, None, model.get_num_params()

    return build


def _setup_device(device_name: str, threads: int | None):
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    if device.type == "cuda":
        # Attention on the flash kernel only (an unsupported case fails loudly).
        torch.backends.cuda.enable_math_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_flash_sdp(True)
        torch.backends.cuda.matmul.allow_tf32 = True
    return device


def worker(impl: str, args) -> None:
    """Serve commands on stdin, one JSON object a line, answering on stdout.

    ``{"op": "build", "variant": V, "shape": NAME, "dtype": D}`` builds one
    variant (a worker holds several) and runs three warm-up steps, the first
    timed (it includes compilation); ``{"op": "time", "variant": V, "steps": N}``
    times N optimiser steps of it; ``{"op": "drop"}`` frees every built model.
    """
    import torch

    device = _setup_device(args.device, args.threads)
    batch = args.batch or DEFAULT_BATCH[device.type]
    now = time.process_time if args.clock == "cpu" else time.perf_counter
    if impl == "ours":
        build = _ours_builder(device, batch)
    else:
        build = _reference_builder(device, batch, args.ref)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    steps = {}
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "drop":
            steps.clear()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            reply = {}
        elif command["op"] == "build":
            compile = command["variant"].endswith("+compile")
            sync()
            start = time.perf_counter()
            step, flops, params = build(*SHAPES[command["shape"]], command["dtype"], compile)
            step()
            sync()
            first = time.perf_counter() - start
            for _ in range(2):
                step()
            sync()
            steps[command["variant"]] = step
            reply = {"flops": flops, "params": params, "first": first}
        else:
            step = steps[command["variant"]]
            times = []
            for _ in range(command["steps"]):
                sync()
                start = now()
                step()
                sync()
                times.append(now() - start)
            reply = {"times": times}
        print(REPLY + json.dumps(reply), flush=True)


class Worker:
    """One implementation in its own process, driven burst by burst."""

    def __init__(self, impl: str, args, ref: Path | None):
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", impl]
        command += ["--device", args.device, "--clock", args.clock]
        if args.threads:
            command += ["--threads", str(args.threads)]
        if args.batch:
            command += ["--batch", str(args.batch)]
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
        self.process.wait(timeout=120)


# ---------------------------------------------------------------- profile
CATEGORIES = (  # (category, substrings of aten op names), first match wins
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
                "mkldnn", "onednn")),
    ("layer norm", ("layer_norm",)),
    ("gelu", ("gelu",)),
    ("loss", ("huber",)),
    ("optimiser + clipping", ("adam", "_foreach", "clip_grad", "linalg_vector_norm",
                              "aten::norm", "aten::stack")),
    ("casts + copies", ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous")),
)  # fmt: skip


def _category(name: str) -> str:
    for category, keys in CATEGORIES:
        if any(key in name for key in keys):
            return category
    return "other (elementwise, autograd bookkeeping)"


def _matmul_floor(events, dtype, device, now) -> tuple[float, float, int]:
    """``(seconds, flops, calls)`` of the step's matmuls replayed alone at their shapes.

    ``events``: the profiler's averages grouped by input shape; every
    ``aten::mm``/``aten::bmm`` shape is run as often as one step runs it, best
    of three, on ``now``'s clock: the time the step could not go below without
    faster matmuls.
    """
    import torch

    seconds = flops = 0.0
    calls = 0
    for event in events:
        if event.key not in ("aten::mm", "aten::bmm") or not event.input_shapes:
            continue
        a_shape, b_shape = event.input_shapes[:2]
        a = torch.randn(a_shape, device=device).to(dtype)
        b = torch.randn(b_shape, device=device).to(dtype)
        op = torch.mm if event.key == "aten::mm" else torch.bmm
        best = float("inf")
        for _ in range(3):
            start = now()
            for _ in range(event.count):
                op(a, b)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, now() - start)
        seconds += best
        flops += 2.0 * event.count * a.numel() * b_shape[-1]
        calls += event.count
    return seconds, flops, calls


def profile(args) -> int:
    """Profile our eager (or compiled) step at one shape/dtype and print where the time goes.

    The step is timed on ``args.clock`` (best of ``--steps``, at least 3); the
    profiler's self times, taken over one more step, split it by operator
    category; the step's matmuls are then replayed alone at their shapes
    (``_matmul_floor``).
    """
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    shape, dtype = args.profile.split("/")
    device = _setup_device(args.device, args.threads)
    batch = args.batch or DEFAULT_BATCH[device.type]
    now = time.process_time if args.clock == "cpu" else time.perf_counter
    step, flops, _ = _ours_builder(device, batch)(*SHAPES[shape], dtype, args.profile_compiled)
    for _ in range(3):
        step()
    best = float("inf")
    for _ in range(max(args.steps, 3)):
        start = now()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, now() - start)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities, record_shapes=True) as prof:
        step()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr) > 0]
    total = sum(getattr(e, attr) for e in events)
    by_category: dict[str, float] = {}
    for event in events:
        name = _category(event.key)
        by_category[name] = by_category.get(name, 0.0) + getattr(event, attr) / total
    peak = _peak(device, dtype, args.clock)
    print(
        f"profile of our {'compiled' if args.profile_compiled else 'eager'} step, {shape} "
        f"{dtype}, batch {batch} x {TOKENS} tokens, {torch.get_num_threads()} thread(s): "
        f"{1e3 * best:.0f} ms a step (best of {max(args.steps, 3)}, {args.clock} clock), "
        f"model {flops / best / 1e9:.1f} GFLOP/s = {100 * flops / best / peak:.0f}% of the "
        f"{dtype} matmul peak ({peak / 1e9:.1f} GFLOP/s, measured now)"
    )
    print(f"{'where the time goes (profiler self time)':44s} {'ms/step':>8s} {'share':>6s}")
    for name, share in sorted(by_category.items(), key=lambda item: -item[1]):
        print(f"{name:44s} {1e3 * share * best:8.1f} {100 * share:5.1f}%")
    print(f"\n{'top operators (self time)':44s} {'ms/step':>8s} {'share':>6s} {'calls':>6s}")
    for event in sorted(events, key=lambda e: -getattr(e, attr))[:12]:
        share = getattr(event, attr) / total
        print(
            f"{event.key[:44]:44s} {1e3 * share * best:8.1f} {100 * share:5.1f}% {event.count:6d}"
        )
    mm_autocast = getattr(torch, dtype)
    seconds, mm_flops, calls = _matmul_floor(
        prof.key_averages(group_by_input_shape=True), mm_autocast, device, now
    )
    if calls:
        print(
            f"\nmatmul floor: the step's {calls} matmuls ({mm_flops / 1e9:.1f} GFLOP) replayed "
            f"alone at their shapes take {1e3 * seconds:.0f} ms = {100 * seconds / best:.0f}% of "
            f"the step, at {mm_flops / seconds / 1e9:.1f} GFLOP/s = "
            f"{100 * mm_flops / seconds / peak:.0f}% of the square-matmul peak"
        )
    from limits import save_result

    save_result(
        "train_profile",
        {"schema": SCHEMA, "device": str(device), "key": args.profile, "batch": batch,
         "compiled": args.profile_compiled, "threads": torch.get_num_threads(),
         "clock": args.clock, "step_s": best, "model_flops": flops, "peak": peak,
         "shares": by_category, "matmul_floor_s": seconds, "matmul_flops": mm_flops},
    )  # fmt: skip
    return 0


def _peak(device, dtype: str, clock: str) -> float:
    from limits import Limits

    return Limits.measure(device, clock=clock).peak(dtype)


# ---------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating bursts per variant")
    parser.add_argument("--steps", type=int, help="timed steps per burst (CPU 1, GPU 10)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument(
        "--clock", choices=["wall", "cpu"],
        help="step timer: cpu = the process's CPU seconds (default with --threads 1 on a CPU, "
        "where other users' load then counts against neither side), else wall",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, help="galaxies per step (default 8 on CPU, 64 on GPU)")
    parser.add_argument("--shapes", help="comma-separated shape names (default: by device)")
    parser.add_argument("--dtypes", help="comma-separated: float32,bfloat16 (default: by device)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled variant")
    parser.add_argument("--no-reference", action="store_true", help="time our model only")
    parser.add_argument("--profile", metavar="SHAPE/DTYPE", help="profile our step instead")
    parser.add_argument("--profile-compiled", action="store_true", help="profile the compiled step")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--ref", help=argparse.SUPPRESS)
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    if args.clock is None:
        args.clock = "cpu" if args.threads == 1 and not on_gpu else "wall"
    if args.steps is None:
        args.steps = 10 if on_gpu else 1
    if args.worker:
        worker(args.worker, args)
        return 0
    if args.profile:
        return profile(args)

    import torch

    device = _setup_device(args.device, args.threads)
    sys.path.insert(0, str(ROOT))
    from limits import Limits, save_result

    shapes = args.shapes.split(",") if args.shapes else DEFAULT_SHAPES[device.type]
    dtypes = args.dtypes.split(",") if args.dtypes else DEFAULT_DTYPES[device.type]
    batch = args.batch or DEFAULT_BATCH[device.type]
    ref = None if args.no_reference else ensure_reference()
    variants = [v for v in VARIANTS if not (v == "astropt" and ref is None)]
    variants = [v for v in variants if not (v.endswith("+compile") and args.no_compile)]
    workers = {"ours": Worker("ours", args, ref)}
    if "astropt" in variants:
        workers["astropt"] = Worker("astropt", args, ref)

    def owner(variant: str) -> Worker:
        return workers[variant.split("+")[0]]

    times: dict[tuple[str, str], list[float]] = {}
    first: dict[tuple[str, str], float] = {}
    flops: dict[str, float] = {}
    try:
        for shape in shapes:
            for dtype in dtypes:
                key = f"{shape}/{dtype}"
                for variant in variants:
                    built = owner(variant).ask(
                        op="build", variant=variant, shape=shape, dtype=dtype
                    )
                    first[(variant, key)] = built["first"]
                    if built["flops"]:
                        flops[key] = built["flops"]
                # Alternate short bursts so that load from other processes hits all alike.
                for round_index in range(args.rounds):
                    shift = round_index % len(variants)
                    for variant in variants[shift:] + variants[:shift]:
                        reply = owner(variant).ask(op="time", variant=variant, steps=args.steps)
                        times.setdefault((variant, key), []).extend(reply["times"])
                for w in workers.values():
                    w.ask(op="drop")
    finally:
        for w in workers.values():
            w.close()
    # The machine's attainable peak, measured after the steps (a GPU then runs warm).
    limits = Limits.measure(device, seconds=1.0 if device.type == "cuda" else 0.5, clock=args.clock)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {device} ({name}, {torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"load average {load:.1f}; batch {batch} x {TOKENS} tokens of {PATCH_VALUES} values; "
        f"{args.rounds} alternating bursts of {args.steps} step(s) per variant, "
        f"{args.clock} clock"
    )
    print(limits.describe())
    unit, scale = ("TFLOP/s", 1e12) if device.type == "cuda" else ("GFLOP/s", 1e9)
    header = (
        f"{'shape':13s} {'dtype':9s} {'variant':13s} {'first s':>8s} {'best ms':>9s} "
        f"{'median ms':>10s} {unit:>8s} {'of peak':>8s} {'vs astropt':>11s}"
    )
    print(header)
    print("-" * len(header))
    best = {k: min(v) for k, v in times.items()}
    ratios, compile_gain, of_peak = {}, {}, {}
    for key in flops:
        shape, dtype = key.split("/")
        for variant in variants:
            achieved = flops[key] / best[(variant, key)]
            share = achieved / limits.peak(dtype)
            if variant.startswith("ours"):
                of_peak[f"{key}/{variant}"] = share
            ratio = ""
            if "astropt" in variants and variant != "astropt":
                ratio = f"{best[('astropt', key)] / best[(variant, key)]:10.2f}x"
            print(
                f"{shape:13s} {dtype:9s} {variant:13s} {first[(variant, key)]:8.1f} "
                f"{1e3 * best[(variant, key)]:9.1f} "
                f"{1e3 * statistics.median(times[(variant, key)]):10.1f} "
                f"{achieved / scale:8.2f} {100 * share:7.1f}% {ratio:>11s}"
            )
        if "ours+compile" in variants:
            eager, compiled = best[("ours", key)], best[("ours+compile", key)]
            compile_gain[key] = eager / compiled
            saved = eager - compiled
            cost = first[("ours+compile", key)] - first[("ours", key)]
            payback = f"pays back its {cost:.0f} s of compilation after " + (
                f"{cost / saved:.0f} steps" if saved > 0 else "never (no gain)"
            )
            print(f"torch.compile on {key}: {eager / compiled:.2f}x the eager step; {payback}")
        if "astropt" in variants:
            ours = min(best[(v, key)] for v in variants if v.startswith("ours"))
            ratios[key] = best[("astropt", key)] / best[("ours", key)]
            print(
                f"speed-up ratio vs astropt ({key}, both eager, best step): {ratios[key]:.2f}; "
                f"our best variant: {best[('astropt', key)] / ours:.2f}"
            )
    save_result(
        "train_step",
        {"schema": SCHEMA, "device": str(device), "device_name": name, "batch": batch,
         "ratios": ratios, "compile_gain": compile_gain, "of_peak": of_peak,
         "best_s": {f"{key}/{variant}": t for (variant, key), t in best.items()},
         "threads": torch.get_num_threads(), "clock": args.clock, "limits": vars(limits)},
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
