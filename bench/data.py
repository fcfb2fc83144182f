"""Benchmark: galaxies per second from JPEG parquet shards, ours vs AstroPT 2.0.9's data path.

Writes a survey of 256x256 JPEG stamps (``Smith42/galaxies`` schema) as
parquet shards in a temporary folder, then reads it into batches of
normalised spiral tokens (256 tokens of 768 values) two ways, with the same
batch size and the same DataLoader worker counts, timed alternately:

* AstroPT 2.0.9 as its ``scripts/train.py`` runs it on Hugging Face data:
  ``load_dataset(..., streaming=True).select_columns("image").map(wrapper)``
  where the wrapper is its ``process_galaxy_wrapper`` (``np.array`` of the
  decoded PIL image, ``swapaxes(0, 2)``, then ``GalaxyImageDataset.process_galaxy``
  of the installed package: patches, per-patch normalisation cast to float16
  as its ``normalise`` transform does, spiral by ``sorted``), batched by a
  ``DataLoader(batch_size, num_workers, pin_memory=True)``. It runs in a
  subprocess whose ``sys.path`` starts with ``bench/_astropt_ref`` (``pip
  install --no-deps --target bench/_astropt_ref astropt==2.0.9 loralib``,
  done here when missing) and cannot see our package (DESIGN.md section 9).
  Its module imports ``torchvision.io`` for the JPEG-file path, which the
  Hugging Face path never calls: an empty stand-in module takes its place.
* ours: ``astropt.data.make_loader`` as the shipped AstroPT-sized configs run
  it (``streaming=true``, the train split shuffled through the stream's
  buffer), with ``transpose_hw=True`` so both make the same tokens.

Before timing, the first batch of both (read in order) must agree to float16
precision. A rate is galaxies per second from the first batch to the end of
an epoch (the steady state a training run sees; worker start-up excluded on
both sides), median over ``--rounds`` alternating rounds.

Beside the ratio: the machine's copy bandwidth (bench/limits.py) and the
fraction of it the loader's output reaches (bytes of float32 tokens written
per second), and, for every shipped config, how far the loader keeps ahead of
the training step on this machine: the galaxies per second a step would
consume at 100% of the measured matmul peak (an upper bound on any real step)
against the loader's rate per worker times the config's ``data.num_workers``
(linear in workers: each worker decodes its own batches).

Batch 8 by default: the micro-batch of AstroPT's ``scripts/train.py`` and of
our ``astropt-*.toml`` configs, so the loader is measured as training runs it
(at batch 64 a batch's 50 MB of fresh float32 tokens costs more in page faults
than in arithmetic, on both sides).

    python bench/data.py [--n 512] [--batch 8] [--workers 0 1 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from limits import Limits, save_result

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REF_DIR = HERE / "_astropt_ref"
SIZE, PATCH = 256, 16
REPLY = "@reply "


# ---------------------------------------------------------------- the survey on disk
def write_survey(root: str, n: int, shards: int, seed: int = 0, size: int = SIZE) -> str:
    """``root/train/shard-*.parquet`` of simulator colour stamps; returns a description."""
    import datasets
    from PIL import Image

    from astropt import simulate

    images, _, _ = simulate.make_stamps(n, size, seed)
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    features = datasets.Features({"image": datasets.Image(), "dr8_id": datasets.Value("int64")})
    os.makedirs(os.path.join(root, "train"))
    datasets.disable_progress_bars()
    for s, chunk in enumerate(np.array_split(np.arange(n), shards)):
        rows = {"image": [{"bytes": encoded[i], "path": None} for i in chunk], "dr8_id": chunk}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            os.path.join(root, "train", f"shard-{s:05d}.parquet")
        )
    kib = sum(map(len, encoded)) / len(encoded) / 1024
    return f"{n} simulator colour stamps, JPEG q90 ({kib:.1f} KiB each), {shards} shards"


def shard_files(root: str) -> list[str]:
    folder = os.path.join(root, "train")
    return sorted(os.path.join(folder, name) for name in os.listdir(folder))


def steady_rate(batches) -> tuple[float, torch.Tensor]:
    """Galaxies per second after the first batch, and that first batch's tokens."""
    first, count, start = None, 0, 0.0
    for batch in batches:
        tokens = batch["images"] if isinstance(batch, dict) else batch.tokens
        if first is None:
            first, start = tokens, time.perf_counter()
            continue
        count += len(tokens)
    return count / max(time.perf_counter() - start, 1e-9), first


# ------------------------------------------------------------------ AstroPT's side
def ensure_reference() -> bool:
    if (REF_DIR / "astropt" / "local_datasets.py").is_file():
        return True
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
               str(REF_DIR), "astropt==2.0.9", "loralib"]  # fmt: skip
    print("installing the reference:", " ".join(command), file=sys.stderr)
    return subprocess.run(command).returncode == 0


def _normalise(x: np.ndarray) -> torch.Tensor:
    # AstroPT's scripts/train.py ``normalise(x, use_hf=True)``, without the
    # torchvision ``Compose([Lambda(...)])`` wrapper around it.
    x = torch.from_numpy(x).to(torch.float32)
    std, mean = torch.std_mean(x, dim=1, keepdim=True)
    return ((x - mean) / (std + 1e-8)).to(torch.float16)


def _process_galaxy_wrapper(galdict: dict, func) -> dict:
    # AstroPT's scripts/train.py ``process_galaxy_wrapper``.
    patch_galaxy = func(np.array(galdict["image"]).swapaxes(0, 2))
    return {
        "images": patch_galaxy.to(torch.float),
        "images_positions": torch.arange(0, len(patch_galaxy), dtype=torch.long),
    }


def reference_worker() -> None:
    """Serve ``{"files", "batch", "workers"}`` requests on stdin with AstroPT's data path."""
    import functools
    import types

    ref = str(REF_DIR)
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
    sys.path[:] = [ref] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, HERE)]
    import datasets  # before the stand-in: it probes for torchvision when imported

    stand_in = types.ModuleType("torchvision")
    stand_in.io = types.ModuleType("torchvision.io")
    sys.modules["torchvision"], sys.modules["torchvision.io"] = stand_in, stand_in.io
    try:
        from astropt.local_datasets import GalaxyImageDataset

        import astropt
        from astropt.model import ModalityConfig, ModalityRegistry
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.io"]

    if not Path(astropt.__file__).resolve().is_relative_to(REF_DIR.resolve()):
        raise RuntimeError(f"imported the wrong astropt: {astropt.__file__}")
    datasets.disable_progress_bars()
    torch.set_num_threads(1)
    modality = ModalityConfig(
        name="images", input_size=PATCH * PATCH * 3, patch_size=PATCH, loss_weight=1.0,
        embed_pos=True, pos_input_size=1,
    )  # fmt: skip
    tds = GalaxyImageDataset(
        paths={"images": None},
        spiral=True,
        transform={"images": _normalise},
        modality_registry=ModalityRegistry([modality]),
    )
    for line in sys.stdin:
        request = json.loads(line)
        stream = datasets.load_dataset(
            "parquet", data_files=request["files"], split="train", streaming=True
        )
        stream = stream.select_columns("image").map(
            functools.partial(_process_galaxy_wrapper, func=tds.process_galaxy)
        )
        stream = stream.remove_columns("image")
        loader = torch.utils.data.DataLoader(
            stream, batch_size=request["batch"], num_workers=request["workers"], pin_memory=True
        )
        rate, first = steady_rate(loader)
        if request.get("first"):
            np.save(request["first"], first.numpy())
        print(REPLY + json.dumps({"rate": rate}), flush=True)


class Reference:
    def __init__(self) -> None:
        command = [sys.executable, str(Path(__file__).resolve()), "--reference-worker"]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.process = subprocess.Popen(
            command, cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def rate(self, **request) -> float:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError("the AstroPT data worker died (see its error output above)")
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])["rate"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


# ------------------------------------------------------------------------ our side
def our_loader(root: str, cache: str, batch: int, workers: int, shuffle: bool = True):
    from astropt.data import DataConfig, make_loader

    cfg = DataConfig(
        source="hf", path=root, streaming=True, transpose_hw=True, augment=False,
        num_workers=workers, cache_dir=cache,
    )  # fmt: skip
    return make_loader(cfg, "train", batch_size=batch, shuffle=shuffle, seed=0)


def shipped_configs() -> list[tuple[str, object]]:
    from astropt.config import load_config

    # The pretraining configs (finetuning configs have their own schema).
    names = sorted(ROOT.glob("configs/astropt-*.toml")) + [ROOT / "configs" / "quickstart.toml"]
    names = [p for p in names if p.stem != "astropt-base"]
    return [(path.stem, load_config(path)) for path in names]


def step_bound(cfg, limits: Limits) -> tuple[float, int]:
    """Galaxies/s a training step of ``cfg`` would consume at 100% of the best matmul peak."""
    from astropt.model import GPT

    side = (cfg.data.image_size or SIZE) // cfg.model.patch_size
    tokens = side * side
    with torch.device("meta"):
        model = GPT(cfg.model)
    flops = model.flops_per_token(tokens - 1) * (tokens - 1)
    peak = max(limits.float32_flops, limits.bfloat16_flops)
    return peak / flops, tokens


def measured_margin(cfg, tmp: str, n: int = 256, steps: int = 3) -> tuple[float, float]:
    """``(loader, step)`` galaxies/s of a small config, both measured here.

    The loader reads a JPEG survey of the config's image size with the
    config's data settings; the step is forward, backward and AdamW of the
    config's model at its batch size, the faster of float32 and bf16 autocast.
    """
    import dataclasses

    from astropt.data import make_loader
    from astropt.model import GPT

    side = cfg.data.image_size or SIZE
    root = os.path.join(tmp, f"survey-{side}")
    if not os.path.isdir(root):
        write_survey(root, n, 2, size=side)
    data_cfg = dataclasses.replace(cfg.data, source="hf", path=root, streaming=False,
                                   cache_dir=os.path.join(tmp, "hf_cache"))  # fmt: skip
    loader = make_loader(data_cfg, "train", batch_size=cfg.batch_size, seed=0)
    feed = steady_rate(loader)[0]
    del loader
    tokens = (side // cfg.model.patch_size) ** 2
    model = GPT(cfg.model)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(cfg.batch_size, tokens, cfg.model.patch_dim)
    best = float("inf")
    for dtype in (None, torch.bfloat16):
        for index in range(steps + 1):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                _, loss = model.compute_loss(x)
            loss.backward()
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
            if index:  # the first step warms up
                best = min(best, time.perf_counter() - start)
    return feed, cfg.batch_size / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="stamps in the survey")
    parser.add_argument(
        "--batch",
        type=int,
        default=8,
        help="galaxies a batch (8: AstroPT's train.py and our configs)",
    )
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per worker count")
    parser.add_argument("--reference-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference_worker:
        reference_worker()
        return
    if not ensure_reference():
        raise SystemExit("astropt 2.0.9 did not install: no comparison")
    torch.set_num_threads(1)

    reference = Reference()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="astropt-bench-data-") as tmp:
            root, cache = os.path.join(tmp, "survey"), os.path.join(tmp, "hf_cache")
            described = write_survey(root, args.n, args.shards)
            files = shard_files(root)
            first = os.path.join(tmp, "first.npy")
            reference.rate(files=files, batch=args.batch, workers=0, first=first)
            ours_first = next(iter(our_loader(root, cache, args.batch, 0, shuffle=False))).tokens
            diff = float(np.abs(np.load(first) - ours_first.numpy()).max())
            if diff > 2e-2:  # float16 rounding of values up to ~10
                raise SystemExit(f"the two data paths disagree on the same galaxies by {diff}")
            for workers in args.workers:
                ours, theirs = [], []
                for round_index in range(args.rounds):
                    sides = ("theirs", "ours") if round_index % 2 else ("ours", "theirs")
                    for side in sides:
                        if side == "ours":
                            loader = our_loader(root, cache, args.batch, workers)
                            ours.append(steady_rate(loader)[0])
                            del loader
                        else:
                            theirs.append(
                                reference.rate(files=files, batch=args.batch, workers=workers)
                            )
                rows.append((workers, statistics.median(theirs), statistics.median(ours),
                             min(ours) / max(theirs), max(ours) / min(theirs)))  # fmt: skip
    finally:
        reference.close()

    # CPU-clock limits: what one core can do whatever the other users' load,
    # so the step bound below is the fastest step this machine could take.
    limits = Limits.measure("cpu", clock="cpu")
    tokens = (SIZE // PATCH) ** 2
    out_bytes = tokens * PATCH * PATCH * 3 * 4  # float32 tokens per galaxy
    print(f"survey: {described}; {SIZE}x{SIZE}x3, batch {args.batch}, {tokens} tokens of 768")
    print(f"CPUs {os.cpu_count()}, torch threads 1; first batches agree to {diff:.1e} (float16)")
    print(limits.describe())
    print(
        f"{'workers':>7}  {'astropt 2.0.9 gal/s':>20}  {'ours gal/s':>11}  {'ratio':>6}  "
        f"{'range':>11}  ours vs limits"
    )
    for workers, theirs, ours, low, high in rows:
        print(
            f"{workers:>7}  {theirs:>20.1f}  {ours:>11.1f}  {ours / theirs:>5.1f}x  "
            f"{low:>4.1f}-{high:<4.1f}x  tokens written "
            f"{limits.bandwidth_fraction(ours * out_bytes)}"
        )
    for workers, theirs, ours, _, _ in rows:
        print(f"ratio vs astropt 2.0.9 data path, {workers} worker(s): {ours / theirs:.1f}x")
    per_worker = max(ours / max(workers, 1) for workers, _, ours, _, _ in rows)
    print(
        f"loader margin over the training step, every shipped config (256x256 JPEG configs: "
        f"the loader's best {per_worker:.1f} gal/s per worker x the config's num_workers against "
        "the galaxies/s a step would take at 100% of the best matmul peak, an upper bound; "
        "configs on a small local survey: both measured here):"
    )
    margins = {}
    with tempfile.TemporaryDirectory(prefix="astropt-bench-margin-") as tmp:
        for name, cfg in shipped_configs():
            if cfg.data.source == "synthetic":
                feed, consumed = measured_margin(cfg, tmp)
                how = f"{cfg.data.image_size}px JPEG, {cfg.data.num_workers} worker(s), measured"
            else:
                consumed, _ = step_bound(cfg, limits)
                feed = per_worker * max(cfg.data.num_workers, 1)
                how = f"{max(cfg.data.num_workers, 1)} worker(s) at the per-worker rate"
            margins[name] = feed / consumed
            print(
                f"  {name:<16} step {consumed:>9.2f} gal/s  loader {feed:>7.1f} gal/s "
                f"({how})  margin {feed / consumed:>8.1f}x"
            )
    save_result(
        "data",
        dict(rows=[dict(workers=w, astropt=t, ours=o, low=lo, high=hi) for w, t, o, lo, hi in rows],
             batch=args.batch, n=args.n, margins=margins, limits=vars(limits)),
    )  # fmt: skip


if __name__ == "__main__":
    main()
