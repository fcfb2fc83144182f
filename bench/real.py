"""Does pretraining work on real galaxies? A thin wrapper of ``astropt realbench``.

    python bench/real.py FOLDER --catalogue CSV --label COLUMN [--crop-fraction 0.5]

runs :mod:`astropt.realbench` on one labelled folder: it pretrains the
quickstart-shaped model on the folder's dev galaxies (split by a hash of the id),
embeds every image with it and the four baselines, and probes COLUMN on the dev
split (``--split test`` once, with settings chosen on dev). ``--survey-models DIR``
adds the models in ``DIR/fixed`` and ``DIR/zoom`` (pretrained on the built-in survey,
e.g. with ``astropt quickstart``) to the table: the transfer gap. Everything lands in
``--out`` and is reused by a rerun. Keep third-party images and anything derived from
them out of the repository (write ``--out`` elsewhere). Suites of several folders and
labels: ``astropt realbench SUITE.toml`` (docs/realbench.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    from astropt.options import run_command
    from astropt.realbench import COMMAND

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", help="folder of real images (none: skip)")
    parser.add_argument("--catalogue")
    parser.add_argument("--label")
    parser.add_argument("--split", default="dev", choices=("dev", "test"))
    parser.add_argument("--crop-fraction", type=float, default=0.5)
    parser.add_argument("--out", default="runs/real", help="work folder (models, exports)")
    parser.add_argument("--iters", type=int, default=1500, help="pretraining steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--survey-models", default=None, help="folder with fixed/ and zoom/")
    parser.add_argument("--layer", default=None, help="final, middle or a block index")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    args, rest = parser.parse_known_args(argv)  # the rest: realbench key=value entries
    if args.folder is None:  # `make bench` runs every script bare: there is no data to use
        print(
            "bench/real.py needs a folder of real images: python bench/real.py FOLDER "
            "--catalogue CSV --label COLUMN (skipped)"
        )
        return 0
    if not args.catalogue or not args.label:
        parser.error("--catalogue and --label are required with a folder")
    entries = [
        f"images={args.folder}", f"catalogue={args.catalogue}", f"labels={args.label}",
        f"split={args.split}", f"crop_fraction={args.crop_fraction}", f"out={args.out}",
        f"max_iters={args.iters}", f"batch_size={args.batch_size}", f"threads={args.threads}",
    ]  # fmt: skip
    if args.layer:
        entries.append(f"layer={args.layer}")
    if args.survey_models:
        root = Path(args.survey_models)
        entries.append(
            f'extra_models={{"survey (zoom)" = "{root / "zoom"}", '
            f'"survey (fixed)" = "{root / "fixed"}"}}'
        )
    return run_command(COMMAND, [*entries, *rest], "bench/real.py")


if __name__ == "__main__":
    sys.exit(main())
