"""Write the built-in synthetic survey (DESI Legacy Survey DR8-like grz stamps) to parquet.

    python data/make_synthetic_survey.py --out DIR --n 10000 --image-size 128 --seed 0

writes ``DIR/{train,validation,test}/shard-NNNNN.parquet`` in the ``Smith42/galaxies``
schema (an ``image`` column of JPEG bytes that ``datasets`` decodes as an Image,
``dr8_id``, and the truth labels of ``astropt.simulate.LABEL_COLUMNS``), plus
``DIR/survey.json`` describing the survey. Load it with
``datasets.load_dataset("parquet", data_dir=DIR)``.

The pixel scale is always DR8's 0.262 arcsec: ``--image-size`` changes the field of
view (64 px = 16.8 arcsec, 512 px = 134 arcsec), not the resolution. Galaxy ``i``
depends only on (seed, i), so the files are byte-identical for any ``--workers``.
``--montage PNG`` also writes a labelled grid of galaxies 0-63 (alone, when ``--out``
is omitted).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# One thread per process: the workers are the parallelism.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from astropt import simulate  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python data/make_synthetic_survey.py --out runs/survey --n 10000 "
        "--image-size 128 --seed 0 --workers 2",
    )
    p.add_argument("--out", help="output folder (must be empty unless --overwrite)")
    p.add_argument("--n", type=int, default=10000, help="number of galaxies (default 10000)")
    p.add_argument(
        "--image-size",
        type=int,
        default=256,
        choices=simulate.IMAGE_SIZES,
        help="stamp side in pixels at 0.262 arcsec/pixel (default 256)",
    )
    p.add_argument("--seed", type=int, default=0, help="survey seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument(
        "--float-bands",
        action="store_true",
        help="also store the float g, r, z images (nanomaggies) as a flux_grz column",
    )
    p.add_argument("--shard-size", type=int, default=None, help="galaxies per shard (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing survey")
    p.add_argument("--montage", metavar="PNG", help="write a labelled grid of galaxies 0-63")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.out is None and args.montage is None:
        p.error("give --out DIR (and/or --montage PNG)")
    if args.n < 1:
        p.error(f"--n must be >= 1, got {args.n}")
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    if args.shard_size is not None and args.shard_size < 1:
        p.error(f"--shard-size must be >= 1, got {args.shard_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.montage:
        rgb, _, labels = simulate.make_stamps(64, args.image_size, args.seed)
        simulate.montage(rgb, labels, args.montage)
        print(f"wrote {args.montage}")
    if args.out:
        t0 = time.perf_counter()
        try:
            meta = simulate.write_survey(
                args.out,
                args.n,
                args.image_size,
                args.seed,
                workers=args.workers,
                float_bands=args.float_bands,
                shard_size=args.shard_size,
                overwrite=args.overwrite,
                progress=not args.quiet,
            )
        except (FileExistsError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        dt = time.perf_counter() - t0
        splits = ", ".join(f"{k} {v}" for k, v in meta["splits"].items())
        print(f"wrote {args.n} stamps ({splits}) to {args.out} in {dt:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
