"""Benchmark: 256x256x3 images to normalised spiral tokens, batched vs per sample.

The reference is the straightforward way (what AstroPT's dataset does per
galaxy): cut one image into patches, reorder them with Python ``sorted`` over
the spiral index, normalise that one sample. Ours is one ``images_to_tokens``
call per batch. Both run in this process on the same images.

    python bench/tokens.py [--batches 8,32,64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from einops import rearrange

from astropt.tokens import images_to_tokens, spiral_order


def reference_tokens(image: torch.Tensor, patch_size: int = 16) -> torch.Tensor:
    """One image (C, H, W) -> (N, P*P*C), the per-sample way."""
    patches = rearrange(image, "c (h p1) (w p2) -> (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)
    side = image.shape[1] // patch_size
    rank_of_raster = torch.argsort(spiral_order(side)).tolist()
    spiralled = [patch for _, patch in sorted(zip(rank_of_raster, patches), key=lambda x: x[0])]
    sample = torch.stack(spiralled).float()
    std, mean = torch.std_mean(sample, dim=-1, keepdim=True)
    return (sample - mean) / (std + 1e-8)


def best_time(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="8,32,64", help="batch sizes to time")
    parser.add_argument("--headline", type=int, default=32, help="batch size of the ratio line")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.headline not in batches:
        batches.append(args.headline)

    torch.manual_seed(0)
    print(f"{args.size}x{args.size}x3 uint8 images, torch threads {torch.get_num_threads()}")
    print(f"{'batch':>6}{'reference img/s':>18}{'ours img/s':>14}{'ratio':>8}")
    ratios = {}
    for batch in batches:
        images = torch.randint(0, 256, (batch, 3, args.size, args.size), dtype=torch.uint8)
        ours = images_to_tokens(images)[0]
        reference = torch.stack([reference_tokens(image) for image in images])
        max_diff = (ours - reference).abs().max().item()
        if max_diff > 1e-4:
            raise SystemExit(f"batched tokens differ from the reference by {max_diff}")
        t_ours = best_time(lambda images=images: images_to_tokens(images), args.repeats)
        t_ref = best_time(
            lambda images=images: [reference_tokens(image) for image in images], args.repeats
        )
        ratios[batch] = t_ref / t_ours
        print(f"{batch:>6}{batch / t_ref:>18.1f}{batch / t_ours:>14.1f}{ratios[batch]:>8.1f}")
    low, high = min(ratios.values()), max(ratios.values())
    print(
        f"speed-up ratio vs per-sample reference: {ratios[args.headline]:.1f} "
        f"(batch {args.headline}; {low:.1f}-{high:.1f} over batch sizes)"
    )


if __name__ == "__main__":
    main()
