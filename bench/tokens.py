"""Benchmark: 256x256x3 images to normalised spiral tokens, ours vs AstroPT 2.0.9's own code.

AstroPT's side is what its training script runs per galaxy: the decoded
uint8 image as ``np.array(image).swapaxes(0, 2)``, then
``GalaxyImageDataset.process_galaxy`` of the installed package (patches by
einops, its ``normalise`` transform: per-patch ``std_mean`` cast to float16,
spiral by Python ``sorted``), then ``.to(torch.float)``; the DataLoader's
default collate stacks the batch. It runs in a subprocess whose ``sys.path``
starts with ``bench/_astropt_ref`` and cannot see our package (DESIGN.md
section 9). Ours is one ``images_to_tokens`` call on the uint8 batch with
``transpose_hw=True`` (the same layout). Both read the same images (passed
through a file) and must agree to float16 precision.

Timing: CPU time of one thread per batch, best of ``--repeats``, the two
sides alternating batch size by batch size. Beside the ratio: the bytes our
call moves (uint8 in, float32 tokens out) per second against the machine's
copy bandwidth (bench/limits.py): tokenising is memory-bound.

    python bench/tokens.py [--batches 8,32,64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from limits import Limits, save_result

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REF_DIR = HERE / "_astropt_ref"
REPLY = "@reply "


def best_time(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


# ------------------------------------------------------------------ AstroPT's side
def _normalise(x: np.ndarray) -> torch.Tensor:
    # AstroPT's scripts/train.py ``normalise(x, use_hf=True)`` (without torchvision's Compose).
    x = torch.from_numpy(x).to(torch.float32)
    std, mean = torch.std_mean(x, dim=1, keepdim=True)
    return ((x - mean) / (std + 1e-8)).to(torch.float16)


def reference_worker() -> None:
    """Serve ``{"images": npy, "repeats": n, "out": npy}`` requests: time AstroPT's per-sample path."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
    sys.path[:] = [str(REF_DIR)] + [
        p for p in sys.path if Path(p or ".").resolve() not in (ROOT, HERE)
    ]
    stand_in = types.ModuleType("torchvision")  # imported for JPEG files, never called here
    stand_in.io = types.ModuleType("torchvision.io")
    sys.modules["torchvision"], sys.modules["torchvision.io"] = stand_in, stand_in.io
    from astropt.local_datasets import GalaxyImageDataset

    import astropt
    from astropt.model import ModalityConfig, ModalityRegistry

    if not Path(astropt.__file__).resolve().is_relative_to(REF_DIR.resolve()):
        raise RuntimeError(f"imported the wrong astropt: {astropt.__file__}")
    torch.set_num_threads(1)
    modality = ModalityConfig(name="images", input_size=768, patch_size=16, loss_weight=1.0,
                              embed_pos=True, pos_input_size=1)  # fmt: skip
    tds = GalaxyImageDataset(paths={"images": None}, spiral=True,
                             transform={"images": _normalise},
                             modality_registry=ModalityRegistry([modality]))  # fmt: skip

    def batch(images: np.ndarray) -> torch.Tensor:
        # process_galaxy_wrapper per galaxy, then the DataLoader's default collate.
        return torch.stack([tds.process_galaxy(im.swapaxes(0, 2)).to(torch.float) for im in images])

    for line in sys.stdin:
        request = json.loads(line)
        images = np.load(request["images"])  # (B, H, W, C) uint8, as decoded
        np.save(request["out"], batch(images).numpy())
        seconds = best_time(lambda images=images: batch(images), request["repeats"])
        print(REPLY + json.dumps({"seconds": seconds}), flush=True)


# ------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="8,32,64", help="batch sizes to time")
    parser.add_argument("--headline", type=int, default=32, help="batch size of the ratio line")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_worker:
        reference_worker()
        return
    sys.path.insert(0, str(ROOT))
    from astropt.tokens import images_to_tokens

    torch.set_num_threads(1)
    if not (REF_DIR / "astropt" / "local_datasets.py").is_file():
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                   str(REF_DIR), "astropt==2.0.9", "loralib"]  # fmt: skip
        subprocess.run(command, check=True)
    batches = sorted({int(b) for b in args.batches.split(",")} | {args.headline})
    worker = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--reference-worker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip

    def theirs(images_file: str, out: str) -> float:
        request = {"images": images_file, "repeats": args.repeats, "out": out}
        worker.stdin.write(json.dumps(request) + "\n")
        worker.stdin.flush()
        while not (line := worker.stdout.readline()).startswith(REPLY):
            if not line:
                raise RuntimeError("the AstroPT worker died (see its error output above)")
        return json.loads(line[len(REPLY) :])["seconds"]

    from astropt import simulate

    results = {}
    with tempfile.TemporaryDirectory(prefix="astropt-bench-tokens-") as tmp:
        for batch in batches:
            rgb, _, _ = simulate.make_stamps(batch, args.size, 0)  # (B, H, W, 3) uint8
            images_file, out = os.path.join(tmp, "images.npy"), os.path.join(tmp, "ref.npy")
            np.save(images_file, rgb)
            images = torch.from_numpy(rgb).permute(0, 3, 1, 2)  # (B, C, H, W) view, as loaded
            t_ref = theirs(images_file, out)
            ours = images_to_tokens(images, transpose_hw=True)[0]
            diff = float(np.abs(np.load(out) - ours.numpy()).max())
            if diff > 2e-2:
                raise SystemExit(
                    f"tokens differ from AstroPT's by {diff} (float16 rounding is <1e-2)"
                )
            t_ours = best_time(
                lambda im=images: images_to_tokens(im, transpose_hw=True), args.repeats
            )
            results[batch] = (t_ref, t_ours, diff)
    worker.stdin.close()
    worker.wait(timeout=60)

    limits = Limits.measure("cpu", clock="cpu")
    side = args.size
    moved = side * side * 3 * (1 + 4)  # uint8 pixels read, float32 tokens written, per image
    print(f"{side}x{side}x3 uint8 images, 1 thread, CPU clock, best of {args.repeats}")
    print(limits.describe())
    print(f"{'batch':>6}{'astropt 2.0.9 img/s':>21}{'ours img/s':>12}{'ratio':>8}  ours vs limits")
    for batch, (t_ref, t_ours, _) in results.items():
        print(
            f"{batch:>6}{batch / t_ref:>21.1f}{batch / t_ours:>12.1f}{t_ref / t_ours:>7.1f}x  "
            f"{limits.bandwidth_fraction(batch / t_ours * moved)}"
        )
    ratios = {b: r[0] / r[1] for b, r in results.items()}
    print(
        f"ratio vs astropt 2.0.9 tokenisation: {ratios[args.headline]:.1f}x (batch "
        f"{args.headline}; {min(ratios.values()):.1f}-{max(ratios.values()):.1f}x over batch sizes)"
    )
    save_result("tokens", dict(ratios=ratios, headline=args.headline, limits=vars(limits)))


if __name__ == "__main__":
    main()
