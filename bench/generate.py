"""Benchmark: completing galaxies patch by patch, with and without the key-value cache.

Quickstart-shaped model (4 layers, width 128, 8 heads, 16x16x3 patches,
block_size 256) continues a ``--prefix``-patch centre to a 256-token
sequence. "cached" runs the prefix once and then one token per new patch;
"uncached" recomputes the whole sequence at every step but applies the
output head to its last position only (what a fair model without a cache has
to do: the other positions' predictions are never used). The cache is
pre-allocated for the whole completion and written in place. Both run in this
process on the same model and prefix, timed alternately (cached, uncached,
cached, ...), best of ``--repeats``; the table also shows that they produce
the same patches.

Beside the ratio: the machine's limits (bench/limits.py) and the fraction the
cached decode reaches: model FLOPs per generated patch (2 x parameters outside
the positional table + attention over the cache) against the float32 matmul
peak, and the weights streamed per decode step against the copy bandwidth (at
batch 1 a step reads every weight once for one token: memory- and
overhead-bound, never compute-bound).

    python bench/generate.py [--width 128] [--batch 1 8] [--device cpu] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from limits import Limits, save_result

from astropt.generate import complete
from astropt.model import GPT, GPTConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_completion(model, prefix, n_new, use_cache) -> tuple[float, torch.Tensor]:
    """Wall time (s) of one completion, and the completion itself."""
    _sync(prefix.device)
    start = time.perf_counter()
    out = complete(model, prefix, n_new, use_cache=use_cache)
    _sync(prefix.device)
    return time.perf_counter() - start, out


def alternate(model, prefix, n_new, repeats) -> dict:
    """Best time of each path over ``repeats`` alternating rounds (after a short warm-up)."""
    for use_cache in (True, False):
        complete(model, prefix, min(n_new, 4), use_cache=use_cache)
    best = {True: float("inf"), False: float("inf")}
    outs = {}
    for round_index in range(repeats):
        order = (True, False) if round_index % 2 == 0 else (False, True)
        for use_cache in order:
            seconds, outs[use_cache] = time_completion(model, prefix, n_new, use_cache)
            best[use_cache] = min(best[use_cache], seconds)
    return {"cached": best[True], "uncached": best[False], "outs": outs}


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
    limits = Limits.measure(device)
    print(limits.describe())
    print(
        f"{'batch':>5} {'cached patch/s':>15} {'uncached patch/s':>17} {'ratio':>7} "
        f"{'max |diff|':>11}  cached decode vs limits"
    )
    weights = model.num_params(exclude_positions=True)
    # Forward FLOPs per generated patch: 2 per weight, plus QK^T and AV over the
    # cache (mean context halfway through the completion).
    context = args.prefix + n_new / 2
    flops_per_patch = 2 * weights + 4 * args.layers * args.width * context
    rows = []
    for batch in args.batch:
        prefix = torch.randn(batch, args.prefix, config.patch_dim, device=device)
        timed = alternate(model, prefix, n_new, args.repeats)
        diff = (timed["outs"][True] - timed["outs"][False]).abs().max().item()
        rate_cached = batch * n_new / timed["cached"]
        rate_uncached = batch * n_new / timed["uncached"]
        ratio = rate_cached / rate_uncached
        steps_per_s = n_new / timed["cached"]
        compute = limits.compute_fraction(flops_per_patch * rate_cached, "float32")
        stream = limits.bandwidth_fraction(4 * weights * steps_per_s)
        print(
            f"{batch:>5} {rate_cached:>15.0f} {rate_uncached:>17.0f} {ratio:>6.1f}x "
            f"{diff:>11.2e}  {compute}; weights streamed {stream}"
        )
        rows.append(dict(batch=batch, cached=rate_cached, uncached=rate_uncached, ratio=ratio,
                         max_diff=diff, flops_per_patch=flops_per_patch))  # fmt: skip
    print(
        f"ratio cached/uncached (fair: uncached heads the last position only) generated "
        f"patches per second at batch {args.batch[0]}: {rows[0]['ratio']:.1f}x (target >= 5x)"
    )
    save_result(
        "generate",
        dict(rows=rows, threads=torch.get_num_threads(), limits=vars(limits),
             shape=dict(layers=args.layers, width=args.width, heads=args.heads, seq=args.seq,
                        prefix=args.prefix)),
    )  # fmt: skip


if __name__ == "__main__":
    main()
