"""Embedding throughput: galaxies per second through our exporter's encoder vs AstroPT 2.0.9.

    python bench/embed.py [--threads 1 --clock cpu --batch-size 64 --rounds 3]

Two model shapes: the quickstart's (4 layers, 4 heads, width 128, 16 tokens
of 768 values: 64x64 stamps) and AstroPT's smallest (4 layers, 8 heads,
width 128, 256 tokens of 768: 256x256 stamps). Both sides embed the same
normalised token tensors with the same weights (ours converted to AstroPT's
names) and return the residual stream after block ``n_layer // 2`` averaged
over tokens, AstroPT's ``generate_embeddings`` default; the float32 outputs are
checked to agree before any timing counts.

AstroPT runs from ``astropt==2.0.9`` installed with ``pip install --no-deps
--target bench/_astropt_ref astropt==2.0.9 loralib`` (done here when missing),
in a subprocess whose ``sys.path`` starts with that folder and does not hold
our package (DESIGN.md section 9), under ``torch.no_grad()`` and, as its own
scripts do, in float32 on a CPU and under bfloat16 autocast on CUDA.

Fair comparison. AstroPT's ``generate_embeddings`` runs *every* block and
keeps the middle one; our exporter stops after the middle block. So the
headline ratio is at the same work: ours with ``layer="final"`` (every block,
plus one final LayerNorm) against AstroPT, both in float32. Reported beside it,
never as the headline: the early-exit gain (ours ``layer="middle"`` over ours
``layer="final"``, same dtype), the bfloat16-over-float32 gain of our default
precision where the CPU multiplies bf16 natively, and what the exporter's
default setting (early exit, default dtype) gives over AstroPT's own float32.

Timing: every batch is timed; the rounds alternate ours and theirs; the
median batch time counts. ``--clock cpu`` (default) measures the process's
CPU time, which on a shared, oversubscribed machine stays reproducible where
wall-clock time does not; use ``--clock wall --threads N`` on a dedicated
machine (CUDA always uses wall-clock with synchronisation). The machine's
limits (bench/limits.py) are printed with the fraction of the float32 matmul
peak each row reaches (model FLOPs of the blocks it runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from limits import Limits, save_result

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REF_DIR = HERE / "_astropt_ref"
SHAPES = {
    "quickstart": dict(n_layer=4, n_head=4, n_embd=128, tokens=16),
    "astropt-smallest": dict(n_layer=4, n_head=8, n_embd=128, tokens=256),
}
PATCH_VALUES = 16 * 16 * 3


# ---------------------------------------------------------------------------- timing
def batch_times(embed, tokens: torch.Tensor, batch: int, clock: str, device: torch.device) -> list:
    """Seconds per batch of ``embed`` over ``tokens`` (after one warm-up batch)."""
    cuda = device.type == "cuda"
    now = time.process_time if clock == "cpu" and not cuda else time.perf_counter
    embed(tokens[:batch])
    times = []
    for i in range(0, len(tokens) - batch + 1, batch):  # whole batches only
        chunk = tokens[i : i + batch]
        if cuda:
            torch.cuda.synchronize()
        start = now()
        embed(chunk)
        if cuda:
            torch.cuda.synchronize()
        times.append(now() - start)
    return times


# ---------------------------------------------------------------------------- reference side
def worker(ref_dir: str, spec_path: str) -> None:
    """Runs in the subprocess: AstroPT's ``generate_embeddings`` on the spec's inputs."""
    import contextlib

    ref_dir = os.path.abspath(ref_dir)
    sys.path[:] = [ref_dir] + [
        p for p in sys.path if p and os.path.abspath(p) not in (str(REPO), str(HERE), ref_dir)
    ]
    import astropt as ref

    if not os.path.abspath(ref.__file__).startswith(ref_dir + os.sep):
        sys.exit(f"imported the wrong astropt: {ref.__file__}")
    from astropt.model import GPT, GPTConfig, ModalityConfig, ModalityRegistry

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    # Their scripts: float32 on a CPU, bfloat16 autocast on CUDA when supported.
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    results = {}
    for job in spec["jobs"]:
        modality = ModalityConfig(
            name="images", input_size=PATCH_VALUES, pos_input_size=1, patch_size=16,
            embed_pos=True, loss_weight=1.0,
        )  # fmt: skip
        config = GPTConfig(
            n_layer=job["n_layer"], n_head=job["n_head"], n_embd=job["n_embd"], n_chan=3,
            block_size=job["tokens"], dropout=0.0, bias=False, attn_type="causal",
            tokeniser="aim", modalities=[modality],
        )  # fmt: skip
        model = GPT(config, ModalityRegistry([modality]), master_process=False)
        model.load_state_dict(torch.load(job["weights"], weights_only=True), strict=True)
        model.to(device).eval()
        tokens = torch.from_numpy(np.load(job["tokens_file"])).to(device)
        batch = job["batch_size"]
        positions = torch.arange(tokens.shape[1], device=device).expand(batch, -1)

        def embed(x, autocast=True, model=model, positions=positions):
            inputs = {"images": x, "images_positions": positions[: len(x)]}
            context = (
                torch.autocast("cuda", dtype=torch.bfloat16)
                if cuda_bf16 and autocast
                else contextlib.nullcontext()
            )
            with torch.no_grad(), context:
                return model.generate_embeddings(inputs)["images"].float()

        np.save(job["check_out"], embed(tokens[:batch], autocast=False).cpu().numpy())
        results[job["name"]] = batch_times(embed, tokens, batch, spec["clock"], device)
    Path(spec["out"]).write_text(json.dumps(results))


def ensure_reference(ref_dir: Path) -> bool:
    if (ref_dir / "astropt" / "model.py").is_file():
        return True
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
               str(ref_dir), "astropt==2.0.9", "loralib"]  # fmt: skip
    print("installing the reference:", " ".join(command), file=sys.stderr)
    done = subprocess.run(command).returncode == 0
    return done and (ref_dir / "astropt" / "model.py").is_file()


# ---------------------------------------------------------------------------- our side
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--galaxies", type=int, default=2048, help="per round, 16-token shape")
    parser.add_argument("--galaxies-long", type=int, default=256, help="per round, 256-token shape")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, both sides")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--ref-dir", default=str(REF_DIR))
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("REF_DIR", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0

    from astropt.device import resolve_device
    from astropt.embed import ModelEncoder
    from astropt.export import resolve_dtype
    from astropt.interop import ours_to_astropt
    from astropt.model import GPT, GPTConfig

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    clock = "wall" if device.type == "cuda" else args.clock
    reference = not args.no_reference and ensure_reference(Path(args.ref_dir))
    work = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    jobs, encoders, inputs = [], {}, {}
    for name, shape in SHAPES.items():
        config = GPTConfig(
            n_layer=shape["n_layer"], n_head=shape["n_head"], n_embd=shape["n_embd"],
            block_size=shape["tokens"], patch_size=16, n_chan=3,
        )  # fmt: skip
        torch.manual_seed(0)
        model = GPT(config).eval()
        count = args.galaxies if shape["tokens"] <= 64 else args.galaxies_long
        generator = torch.Generator().manual_seed(1)
        tokens = torch.randn(count, shape["tokens"], PATCH_VALUES, generator=generator)
        inputs[name] = tokens.to(device)
        for layer, dtype in (("final", "float32"), ("middle", "float32"), ("middle", "auto")):
            encoder = ModelEncoder(model, layer=layer, device=device, dtype=dtype)
            encoders.setdefault((name, f"ours {layer} {encoder.dtype}"), encoder)
        weights = work / f"{name}.pt"
        torch.save(ours_to_astropt(model.state_dict()), weights)
        np.save(work / f"{name}_tokens.npy", tokens.numpy())
        jobs.append(dict(shape, name=name, weights=str(weights), batch_size=args.batch_size,
                         tokens_file=str(work / f"{name}_tokens.npy"),
                         check_out=str(work / f"{name}_check.npy")))  # fmt: skip
    default = f"ours middle {resolve_dtype('auto', device)}"

    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for (name, impl), encoder in encoders.items():
            got = batch_times(encoder, inputs[name], args.batch_size, clock, device)
            times.setdefault((name, impl), []).extend(got)
        if not reference:
            continue
        spec = {"jobs": jobs, "threads": args.threads, "out": str(work / "ref.json"),
                "device": str(device), "clock": clock}  # fmt: skip
        (work / "spec.json").write_text(json.dumps(spec))
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", args.ref_dir,
                   str(work / "spec.json")]  # fmt: skip
        if subprocess.run(command, cwd=str(work)).returncode != 0:
            print("the reference run failed: no comparison", file=sys.stderr)
            reference = False
            continue
        for name, got in json.loads((work / "ref.json").read_text()).items():
            times.setdefault((name, "astropt 2.0.9"), []).extend(got)
    if reference:
        for name in SHAPES:
            theirs = np.load(work / f"{name}_check.npy")
            ours = encoders[name, "ours middle float32"](inputs[name][: args.batch_size]).numpy()
            if not np.allclose(ours, theirs, rtol=1e-4, atol=1e-5):
                print(f"{name}: embeddings differ from AstroPT's: not comparable", file=sys.stderr)
                return 1

    rate = {key: args.batch_size / float(np.median(values)) for key, values in times.items()}
    limits = Limits.measure(device, clock=clock)
    print(
        f"device: {device}, {args.threads} thread(s), {clock} clock, batch {args.batch_size}, "
        f"median batch over {args.rounds} alternating rounds, pool=mean"
    )
    print(limits.describe())
    print(f"{'shape':<18}{'tokens':>7}  {'implementation':<26}{'galaxies/s':>12}  vs limits")
    for (name, impl), value in sorted(rate.items()):
        shape = SHAPES[name]
        blocks = shape["n_layer"] // 2 + 1 if "middle" in impl else shape["n_layer"]
        dtype = "bfloat16" if "bfloat16" in impl else "float32"
        flops = forward_flops(shape, blocks) * value
        print(
            f"{name:<18}{shape['tokens']:>7}  {impl:<26}{value:>12.1f}  "
            f"{limits.compute_fraction(flops, dtype)}"
        )
    record = {"rates": {f"{n}/{i}": r for (n, i), r in rate.items()}, "limits": vars(limits),
              "threads": args.threads, "clock": clock, "batch": args.batch_size}  # fmt: skip
    for name in SHAPES:
        same = rate[name, "ours final float32"]
        early = rate[name, "ours middle float32"] / same
        print(f"early-exit gain {name}: {early:.2f}x (ours middle / ours final, float32 both)")
        if default != "ours middle float32":
            bf16 = rate[name, default] / rate[name, "ours middle float32"]
            print(f"bfloat16-vs-float32 gain {name}: {bf16:.2f}x (ours middle, not a comparison)")
        if (name, "astropt 2.0.9") not in rate:
            print(f"ratio {name}: n/a (reference not run)")
            continue
        theirs = rate[name, "astropt 2.0.9"]
        record[f"ratio/{name}"] = same / theirs
        print(
            f"ratio {name} (same work: every block, float32 both): {same / theirs:.2f}x "
            f"(ours final / astropt 2.0.9); exporter default ({default}) over astropt "
            f"float32: {rate[name, default] / theirs:.2f}x"
        )
    save_result("embed", record)
    return 0


def forward_flops(shape: dict, blocks: int) -> float:
    """Forward FLOPs per galaxy through the tokeniser and ``blocks`` causal blocks."""
    width, tokens = shape["n_embd"], shape["tokens"]
    tokeniser = PATCH_VALUES * 4 * width + 4 * width * width  # "aim": 768 -> 4E -> E
    block = 12 * width * width  # qkv, projection, MLP (4x)
    attention = 2 * tokens * width  # QK^T and AV, causal: half of 2 * 2 * T * E
    return 2 * tokens * (tokeniser + blocks * block) + 2 * tokens * blocks * attention


if __name__ == "__main__":
    raise SystemExit(main())
