"""Decode-time JPEG reduction: 424-pixel JPEGs to 64-pixel stamps, reduced scale vs full.

    python bench/jpeg_reduce.py [FOLDER] [--n 96] [--crop-fraction 0.5] [--resize 64]

The data pipeline's work per image for ``data.crop_fraction`` + ``data.resize``
(:func:`astropt.data.decode.conform`): decoding the JPEG in full and resizing the
crop, against decoding it at the reduced scale :func:`~astropt.data.decode.jpeg_reduction`
picks (``data.jpeg_reduce``, 1/2 for 424 -> 0.5 crop -> 64) and resizing that.
The same images, one thread, the two sides timed alternately in rounds (load from
other jobs hits both alike); the ratio is of the medians over rounds. Also printed:
how far the two paths' stamps are apart (mean flux per image, pixel difference).

Without FOLDER the images are 424 x 424 stamps of the built-in survey in the zoom
framing (like Galaxy Zoo cutouts), and the result is appended to ``bench/results/``.
With FOLDER (any JPEGs, e.g. real survey cutouts) nothing is saved.
"""

from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from limits import save_result  # noqa: E402

from astropt.data.decode import (  # noqa: E402
    Prep,
    conform,
    decode_encoded,
    jpeg_reduction,
)


def survey_jpegs(n: int, side: int) -> list[bytes]:
    """``n`` JPEG stamps of the built-in survey, ``side`` pixels, zoom framing."""
    import pyarrow.parquet as pq

    from astropt.simulate import write_survey

    with tempfile.TemporaryDirectory() as tmp:
        write_survey(tmp, n, side, seed=0, framing="zoom", progress=False)
        images = []
        for shard in sorted(Path(tmp).rglob("*.parquet")):
            column = pq.read_table(shard, columns=["image"]).column("image").combine_chunks()
            images += column.field("bytes").to_pylist()
    return images[:n]


def folder_jpegs(folder: str, n: int) -> list[bytes]:
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    return [p.read_bytes() for p in paths[:n]]


def stamps(images: list[bytes], prep: Prep, min_side: float | None) -> list[np.ndarray]:
    return [conform(decode_encoded(data, min_side=min_side), prep, "bench") for data in images]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", help="a folder of JPEGs (default: the survey)")
    parser.add_argument("--n", type=int, default=96, help="images")
    parser.add_argument("--side", type=int, default=424, help="survey stamp side")
    parser.add_argument("--crop-fraction", type=float, default=0.5)
    parser.add_argument("--resize", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    images = folder_jpegs(args.folder, args.n) if args.folder else survey_jpegs(args.n, args.side)
    prep = Prep(
        crop=None, shape=None, bands=None, float_scaling="asinh", softening=0.01,
        crop_fraction=args.crop_fraction, resize=args.resize,
    )  # fmt: skip
    min_side = args.resize / args.crop_fraction
    height, width = decode_encoded(images[0]).shape[1:]
    factor = jpeg_reduction(height, width, min_side)
    print(
        f"{len(images)} JPEGs of {height}x{width} -> crop {args.crop_fraction:g} -> "
        f"{args.resize} px; reduced decode at 1/{factor}"
    )
    sides = {"full decode": None, "reduced decode": min_side}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, side in sides.items():  # alternately, the same images
            start = time.perf_counter()
            stamps(images, prep, side)
            times[name].append((time.perf_counter() - start) / len(images))
    full = np.stack(stamps(images, prep, None)).astype(np.float64)
    reduced = np.stack(stamps(images, prep, min_side)).astype(np.float64)
    flux = np.abs(reduced.mean(axis=(2, 3)) - full.mean(axis=(2, 3)))  # 8-bit steps
    median = {name: float(np.median(t)) for name, t in times.items()}
    ratio = median["full decode"] / median["reduced decode"]
    print("| path | ms per image (median of rounds) |")
    print("|---|---|")
    for name, value in median.items():
        print(f"| {name} | {value * 1e3:.3f} |")
    print(
        f"mean pixel value (flux per area) per image and band differs by {np.median(flux):.3f} "
        f"(median), {flux.max():.3f} (worst) of 255 (mean value {full.mean():.1f}); "
        f"mean |pixel difference| {np.abs(reduced - full).mean():.2f} of 255"
    )
    print(f"reduced decode is {ratio:.2f}x the full decode's speed")
    if not args.folder:
        save_result(
            "jpeg_reduce",
            {"n": len(images), "side": height, "factor": factor, "resize": args.resize,
             "crop_fraction": args.crop_fraction, "ms": {k: v * 1e3 for k, v in median.items()},
             "ratio": ratio, "flux_worst": float(flux.max())},
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
