"""Benchmark: completing galaxies patch by patch, with and without the key-value cache.

Quickstart-shaped model (4 layers, width 128, 8 heads, 16x16x3 patches,
block_size 256) continues a ``--prefix``-patch centre to a 256-token
sequence. "cached" runs the prefix once and then one token per new patch;
"uncached" recomputes the whole sequence at every step (what a model without
a cache has to do). Both run in this process on the same model and prefix;
the table also shows that they produce the same patches.

    python bench/generate.py [--width 128] [--batch 1 8] [--device cpu] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from astropt.generate import complete
from astropt.model import GPT, GPTConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_completion(model, prefix, n_new, use_cache, repeats) -> tuple[float, torch.Tensor]:
    """Best wall time (s) of ``repeats`` completions, and the completion itself.

    A short completion first warms up kernels and allocator for both paths.
    """
    complete(model, prefix, min(n_new, 4), use_cache=use_cache)
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync(prefix.device)
        start = time.perf_counter()
        out = complete(model, prefix, n_new, use_cache=use_cache)
        _sync(prefix.device)
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256, help="tokens per completed galaxy")
    parser.add_argument("--prefix", type=int, default=16, help="central patches given")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's default). One by default: a decode step of a "
        "small model is too small to split, and on a shared CPU more threads only add contention",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(0)
    config = GPTConfig(
        n_layer=args.layers, n_head=args.heads, n_embd=args.width, block_size=args.seq
    )
    model = GPT(config).to(device).eval()
    n_new = args.seq - args.prefix
    print(
        f"model: {args.layers} layers, width {args.width}, {args.heads} heads, "
        f"{model.num_params() / 1e6:.2f}M parameters; {args.prefix}-patch prefix + "
        f"{n_new} generated = {args.seq} tokens; device {device}"
    )
    print(
        f"{'batch':>5} {'cached patch/s':>15} {'uncached patch/s':>17} {'ratio':>7} {'max |diff|':>11}"
    )
    ratios = []
    for batch in args.batch:
        prefix = torch.randn(batch, args.prefix, config.patch_dim, device=device)
        cached, with_cache = time_completion(model, prefix, n_new, True, args.repeats)
        uncached, without = time_completion(model, prefix, n_new, False, args.repeats)
        diff = (with_cache - without).abs().max().item()
        rate_cached, rate_uncached = batch * n_new / cached, batch * n_new / uncached
        ratios.append(rate_cached / rate_uncached)
        print(
            f"{batch:>5} {rate_cached:>15.0f} {rate_uncached:>17.0f} "
            f"{ratios[-1]:>6.1f}x {diff:>11.2e}"
        )
    print(
        f"ratio cached/uncached generated patches per second at batch {args.batch[0]}: "
        f"{ratios[0]:.1f}x (target >= 5x)"
    )


if __name__ == "__main__":
    main()
