"""Benchmark: token batches per second from JPEG parquet shards, ours vs a per-sample pipeline.

Writes a survey of 256x256 JPEG stamps as parquet shards in a temporary
folder (the simulator's colour rendering when ``astropt.simulate`` exists,
else smooth random galaxies drawn here), then reads it in batches of
normalised spiral tokens with 0, 1 and 2 DataLoader workers:

* reference, written the simple way: ``datasets`` decodes each row to a PIL
  image, the sample becomes a float tensor, is cut into patches, spiralled
  with Python ``sorted`` and normalised on its own; the default collate
  stacks the batch;
* ours: ``astropt.data.make_loader`` (raw JPEG bytes decoded in the workers,
  uint8 stacks, one ``images_to_tokens`` call per batch).

Both read the same shuffled train split without augmentation and must agree
on the tokens of the same galaxy. Rates are images per second over whole
epochs after a warm-up epoch (workers started, caches built).

Our loader makes tokens where the batch is used: in the workers for a CPU
target (the ``cpu`` column, the end-to-end comparison and the ratio), after
the copy for an accelerator. The ``meta`` column stands in for an accelerator
here: the copy and the token step cost nothing on it, so it is the rate at
which the CPU side (reading, decoding, stacking) can feed a GPU; the
reference's rate would not change on a GPU target, since its workers make the
tokens either way. The last rows compare the loader's tokens per second with
what a training step of the quickstart model consumes on this machine.

    python bench/data.py [--n 512] [--batch 64] [--workers 0 1 2] [--epochs 1]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

import numpy as np
import torch
from einops import rearrange

from astropt.data import DataConfig, make_loader
from astropt.tokens import spiral_order

SIZE = 256


# ---------------------------------------------------------------- the survey on disk


def smooth_stamps(n: int, size: int, seed: int) -> np.ndarray:
    """``(n, size, size, 3)`` uint8: an elliptical galaxy-like blob with a colour gradient, plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        angle = rng.uniform(0, np.pi)
        a, b = rng.uniform(size / 16, size / 5), rng.uniform(size / 40, size / 10)
        u = x * np.cos(angle) + y * np.sin(angle)
        v = -x * np.sin(angle) + y * np.cos(angle)
        r2 = (u / a) ** 2 + (v / b) ** 2
        core = np.exp(-0.5 * r2 * 4)[..., None] * rng.uniform(120, 255, 3)
        disc = np.exp(-np.sqrt(r2))[..., None] * rng.uniform(40, 160, 3)
        image = core + disc + 10 + rng.normal(0, 5, (size, size, 3))
        out[i] = np.clip(image, 0, 255).astype(np.uint8)
    return out


def make_stamps(n: int, size: int, seed: int) -> tuple[np.ndarray, str]:
    try:
        from astropt import simulate
    except ImportError:
        return smooth_stamps(n, size, seed), "smooth random galaxies (astropt.simulate absent)"
    rgb, _, _ = simulate.make_stamps(n, size, seed)
    return rgb, "astropt.simulate colour stamps"


def write_survey(root: str, n: int, shards: int, seed: int = 0) -> str:
    """``root/train/shard-*.parquet`` in the ``Smith42/galaxies`` schema; returns a description."""
    import datasets
    from PIL import Image

    images, what = make_stamps(n, SIZE, seed)
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
    return f"{n} {what}, JPEG q90 ({kib:.1f} KiB each), {shards} shards"


# ------------------------------------------------------------------ the reference


def reference_tokens(image: torch.Tensor, patch_size: int = 16) -> torch.Tensor:
    """One image ``(C, H, W)`` in [0, 1] -> normalised spiral tokens ``(N, P*P*C)``, per sample."""
    patches = rearrange(image, "c (h p1) (w p2) -> (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)
    side = image.shape[1] // patch_size
    rank_of_raster = torch.argsort(spiral_order(side)).tolist()
    spiralled = [patch for _, patch in sorted(zip(rank_of_raster, patches), key=lambda x: x[0])]
    sample = torch.stack(spiralled)
    std, mean = torch.std_mean(sample, dim=-1, keepdim=True)
    return (sample - mean) / (std + 1e-8)


class ReferenceDataset(torch.utils.data.Dataset):
    """Per-sample pipeline: ``datasets`` decodes the row, the sample is tokenised alone."""

    def __init__(self, root: str, cache: str) -> None:
        import datasets

        files = sorted(
            os.path.join(root, "train", f) for f in os.listdir(os.path.join(root, "train"))
        )
        self.ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=cache)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.ds[i]
        image = torch.from_numpy(np.array(row["image"])).permute(2, 0, 1).float() / 255
        return reference_tokens(image), row["dr8_id"]


def reference_loader(
    root: str, cache: str, batch: int, workers: int
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        ReferenceDataset(root, cache),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )


# ------------------------------------------------------------------------ timing


def images_per_second(loader, epochs: int) -> float:
    """Whole epochs after one warm-up epoch."""
    for _ in loader:
        pass
    count = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            count += len(batch[0]) if isinstance(batch, list) else len(batch)
    return count / (time.perf_counter() - start)


def check_agreement(root: str, cache: str, ours_cfg: DataConfig) -> float:
    """Largest token difference between the two pipelines on the same galaxies."""
    reference = ReferenceDataset(root, cache)
    batch = next(iter(make_loader(ours_cfg, "train", batch_size=8, shuffle=False)))
    worst = 0.0
    for j, sample_id in enumerate(batch.ids):
        tokens, ref_id = reference[int(sample_id)]
        assert ref_id == sample_id
        worst = max(worst, (tokens - batch.tokens[j]).abs().max().item())
    return worst


def quickstart_tokens_per_second(steps: int = 5) -> tuple[float, str]:
    """Tokens per second a training step of the quickstart model consumes here.

    One forward + backward + AdamW step of the model, batch and image size in
    ``configs/quickstart.toml`` (4 layers, 128 wide, 64x64 stamps = 16 tokens,
    batch 32 when this was written), on random tokens. Compared in tokens, as
    the loader's cost grows with pixels, i.e. with tokens.
    """
    from astropt.config import load_config
    from astropt.model import GPT

    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart.toml"))
    side = (cfg.data.image_size or 64) // cfg.model.patch_size
    n_tokens, batch = side * side, cfg.batch_size
    model = GPT(cfg.model)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randn(batch, n_tokens, cfg.model.patch_dim)

    def step() -> None:
        _, loss = model(tokens[:, :-1], targets=tokens[:, 1:])
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    rate = batch * n_tokens * steps / (time.perf_counter() - start)
    shape = f"{cfg.model.n_layer} layers x {cfg.model.n_embd}, batch {batch} of {n_tokens} tokens"
    return rate, shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="stamps in the survey")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per measurement")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="astropt-bench-data-") as tmp:
        root, cache = os.path.join(tmp, "survey"), os.path.join(tmp, "hf_cache")
        described = write_survey(root, args.n, args.shards)

        def ours_cfg(workers: int) -> DataConfig:
            return DataConfig(
                source="hf", path=root, augment=False, num_workers=workers, cache_dir=cache
            )

        diff = check_agreement(root, cache, ours_cfg(0))
        if diff > 1e-4:
            raise SystemExit(f"the two pipelines disagree on the same galaxy by {diff}")

        rows = []
        for workers in args.workers:
            ref = images_per_second(reference_loader(root, cache, args.batch, workers), args.epochs)
            rates = []
            for device in ("cpu", "meta"):
                loader = make_loader(
                    ours_cfg(workers), "train", batch_size=args.batch, seed=0, device=device
                )
                rates.append(images_per_second(loader, args.epochs))
                del loader
            rows.append((workers, ref, *rates))
        train_rate, train_shape = quickstart_tokens_per_second()

    print(f"survey: {described}; {SIZE}x{SIZE}x3, batch {args.batch}, 256 tokens of 768")
    print(
        f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}; tokens agree to {diff:.1e}"
    )
    print(
        f"{'workers':>7}  {'reference img/s':>16}  {'ours cpu img/s':>15}  {'ours meta img/s':>16}"
        f"  {'ratio cpu':>9}  {'ratio meta':>10}"
    )
    for workers, ref, cpu, meta in rows:
        print(
            f"{workers:>7}  {ref:>16.1f}  {cpu:>15.1f}  {meta:>16.1f}  {cpu / ref:>9.1f}"
            f"  {meta / ref:>10.1f}"
        )
    n_tokens = (SIZE // 16) ** 2
    best = max(cpu for _, _, cpu, _ in rows) * n_tokens
    print(
        f"quickstart training step ({train_shape}) consumes {train_rate:,.0f} tokens/s here; "
        f"the loader makes {best:,.0f} tokens/s (CPU target, best worker count): "
        f"{best / train_rate:.1f}x what training consumes"
    )
    for workers, ref, cpu, meta in rows:
        print(
            f"speed-up ratio vs per-sample reference with {workers} workers: {cpu / ref:.1f} "
            f"(CPU target), {meta / ref:.1f} (accelerator stand-in)"
        )
    smallest = min(cpu / ref for _, ref, cpu, _ in rows)
    print(f"speed-up ratio (CPU target, smallest over worker counts): {smallest:.1f}")


if __name__ == "__main__":
    main()
