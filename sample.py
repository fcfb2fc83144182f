"""Complete galaxies from their centre with a trained autoregressive model.

    python sample.py --checkpoint runs/x --data surveys/s0 --prefix 64 --n 16 --out grid.png

Writes ``grid.png`` (per galaxy: the original, the kept centre and the
completion, per-patch normalised and in pixel units) and ``grid.npz`` (the
arrays) beside it. The work is :func:`astropt.generate.completion_grid`.
"""

from __future__ import annotations

import argparse
import sys

from astropt.embed import add_model_data_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python sample.py",
        description="Complete galaxies from their central patches and save a PNG grid and .npz.",
    )
    add_model_data_arguments(parser)
    parser.add_argument("--prefix", type=int, required=True, help="central patches kept")
    parser.add_argument("--n", type=int, default=16, help="galaxies (the first n of the split)")
    parser.add_argument("--out", required=True, help="PNG path; the .npz goes beside it")
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="noise in units of the residual scale measured on the prefix (0: deterministic)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from astropt.device import resolve_device
    from astropt.embed import data_config_from_args
    from astropt.generate import completion_grid
    from astropt.hub import load_model

    device = resolve_device(args.device)
    model = load_model(args.checkpoint)
    data_cfg = data_config_from_args(model, args)
    result = completion_grid(
        model,
        data_cfg,
        args.out,
        n=args.n,
        prefix=args.prefix,
        split=args.split,
        temperature=args.temperature,
        seed=args.seed,
        device=device,
    )
    print(
        f"completed {result.n} galaxies from {result.prefix} of {result.n_patches} patches; "
        f"MSE on hidden patches (normalised): completion {result.mse_completion:.4f}, "
        f"blank {result.mse_blank:.4f}; wrote {result.png} and {result.npz}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
