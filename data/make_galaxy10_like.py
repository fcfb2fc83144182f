#!/usr/bin/env python
"""Write a Galaxy10 DECaLS-format HDF5 file of built-in survey galaxies (no download).

    python data/make_galaxy10_like.py --out g10-synthetic.h5 --n 2000 [--image-size 256] [--seed 0]

The file has the layout of ``Galaxy10_DECals.h5`` (``images`` uint8 ``(N, S, S, 3)``,
``ans`` the class 0-9), with each galaxy's ``galaxy10`` truth as its class, so
``configs/finetune-galaxy10.toml`` runs end to end where the real 2.7 GB file is
absent. The work is :func:`astropt.finetune.data.write_galaxy10_like`.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from astropt.options import Command, run_command  # noqa: E402


@dataclass
class Galaxy10LikeOptions:
    """Options of ``python data/make_galaxy10_like.py``."""

    out: str  # HDF5 file to write
    n: int = 2000  # galaxies
    image_size: int = 256  # stamp side in pixels
    seed: int = 0  # survey seed


def write(opts: Galaxy10LikeOptions) -> int:
    from astropt.finetune.data import write_galaxy10_like

    path = write_galaxy10_like(opts.out, opts.n, opts.image_size, opts.seed)
    print(f"wrote {opts.n} galaxies of {opts.image_size}x{opts.image_size} to {path}")
    return 0


COMMAND = Command(
    Galaxy10LikeOptions,
    write,
    __doc__.splitlines()[0],
    examples=("python data/make_galaxy10_like.py --out g10-synthetic.h5 --n 2000",),
)

if __name__ == "__main__":
    raise SystemExit(run_command(COMMAND, None, "python data/make_galaxy10_like.py"))
