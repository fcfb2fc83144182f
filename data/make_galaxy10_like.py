#!/usr/bin/env python
"""Write a Galaxy10 DECaLS-format HDF5 file of built-in survey galaxies (no download).

    python data/make_galaxy10_like.py --out g10-synthetic.h5 --n 2000 [--image-size 256] [--seed 0]

The file has the layout of ``Galaxy10_DECals.h5`` (``images`` uint8 ``(N, S, S, 3)``,
``ans`` the class 0-9), with each galaxy's ``galaxy10`` truth as its class, so
``configs/finetune-galaxy10.toml`` runs end to end where the real 2.7 GB file is
absent. The work is :func:`astropt.finetune.data.write_galaxy10_like`.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from astropt.finetune.data import write_galaxy10_like  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="HDF5 file to write")
    parser.add_argument("--n", type=int, default=2000, help="galaxies")
    parser.add_argument("--image-size", type=int, default=256, help="stamp side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="survey seed")
    args = parser.parse_args()
    path = write_galaxy10_like(args.out, args.n, args.image_size, args.seed)
    print(f"wrote {args.n} galaxies of {args.image_size}x{args.image_size} to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
