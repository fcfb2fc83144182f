"""Does pretraining work on real galaxies? Probe a label of a folder of real images.

    python bench/real.py FOLDER --catalogue CSV --label COLUMN [--crop-fraction 0.5]

1. pretrain the quickstart-shaped model (``configs/quickstart.toml``) on every image
   of FOLDER (labels unused), each image centre-cropped (``--crop-fraction``) and
   resampled to 64 pixels (``data.resize``);
2. embed every image with that model and with quickstart-shaped models pretrained on
   the built-in survey in both framings (``fixed`` and ``zoom``; written and trained
   here unless ``--survey-models`` names run folders ``fixed/`` and ``zoom/``), through
   :mod:`astropt.embed`, which also writes the evaluation suite's baselines of the same
   images: ``random-init`` (the same shape, fresh weights), ``pixels`` and
   ``pixels-normalised`` (PCA fitted inside each training fold) and ``morphometrics``
   (:mod:`astropt.morphometrics`);
3. probe COLUMN with the evaluation protocol of :mod:`astropt.probe` (repeated
   stratified k-fold, ridge strength chosen inside each training fold, 95 % bootstrap
   intervals over galaxies) and print one table: every variant's score with its
   interval, then each pretrained model minus every set after it (the baselines, and
   for the real-image model the survey models: the transfer gap; for the zoomed
   survey the fixed one: whether zooming narrows the gap), paired, with win/tie/loss.

Everything written (models, surveys, embedding exports) goes under ``--out`` and is
reused by a rerun with the same settings. Nothing is downloaded; the images are never
copied. Keep third-party images and anything derived from them out of the repository
(write ``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
SIDE = 64
REAL = "pretrained on these images"
SURVEY = "pretrained on survey ({})"
#: Names of the baseline exports (:func:`astropt.probe.discover_embeddings`) in the table.
BASELINES = ("random-init", "pixels", "pixels-normalised", "morphometrics")


def pretrain(out: Path, data_overrides: list[str], iters: int, batch_size: int) -> Path:
    """Train the quickstart-shaped model into ``out`` (or reuse a finished run there)."""
    from astropt.config import load_config
    from astropt.train import train

    if (out / "done.json").exists():
        return out
    overrides = [
        f"out_dir={out}",
        f"max_iters={iters}",
        f"eval_interval={max(iters // 2, 1)}",
        "eval_iters=2",
        f"batch_size={batch_size}",
        f"optim.warmup_iters={max(iters // 15, 1)}",
        "resume=true",
        *data_overrides,
    ]
    start = time.perf_counter()
    summary = train(load_config(REPO / "configs" / "quickstart.toml", overrides))
    summary["bench_seconds"] = time.perf_counter() - start
    (out / "done.json").write_text(json.dumps(summary, default=str))
    return out


def survey_model(work: Path, framing: str, n: int, iters: int, batch_size: int) -> Path:
    from astropt.simulate import write_survey

    survey = work / f"survey-{framing}-{n}"
    if not (survey / "survey.json").exists():
        write_survey(survey, n, SIDE, seed=0, framing=framing, overwrite=True, progress=False)
    return pretrain(
        work / f"model-{framing}-{n}-{iters}",
        ["data.source=synthetic", f"data.path={survey}", f"data.image_size={SIDE}"],
        iters,
        batch_size,
    )


def _export(export, *args, **kwargs) -> Path:
    """``export(*args, **kwargs)``, reusing a finished export with the same settings and
    replacing one made with others (a retrained model, another data option)."""
    try:
        return export(*args, **kwargs)
    except ValueError as error:
        if "other settings" not in str(error):
            raise
        return export(*args, overwrite=True, **kwargs)


def embed_all(
    models: dict[str, Path], data_fields: dict, folder: Path, layer, max_images: int | None
) -> dict[str, object]:
    """Export every model's embeddings of the images (and the baselines beside the first);
    the embedding sets in table order: models, then :data:`BASELINES`."""
    from astropt.embed import export_baselines, export_embeddings
    from astropt.export import data_config_for
    from astropt.hub import load_model
    from astropt.probe import discover_embeddings

    sets: dict[str, object] = {}
    options = dict(split="train", layer=layer, max_samples=max_images, progress=False)
    first = None
    for name, path in models.items():
        model = load_model(path)
        cfg = data_config_for(model, **data_fields)
        tag = name.replace(" ", "-").replace("(", "").replace(")", "")
        out = folder / f"emb-{tag}-{layer or 'default'}.parquet"
        _export(export_embeddings, model, cfg, out, **options)
        sets[name] = out
        if first is None:
            first = (model, cfg, out)
    model, cfg, out = first
    _export(export_baselines, model, cfg, out, **options)
    found = discover_embeddings(out)
    sets.update({name: found[name] for name in BASELINES})
    return sets


def _ci(value: float, low: float, high: float, sign: bool = False) -> str:
    fmt = "{:+.4f}" if sign else "{:.4f}"
    return f"{fmt.format(value)} | [{fmt.format(low)}, {fmt.format(high)}]"


def print_table(run, label: str) -> None:
    """Scores with intervals, then every paired difference with its outcome."""
    scores = run.scores[run.scores.level == "target"]
    metric = scores.metric.iloc[0].replace("_", " ")
    info = run.info
    protocol = info["protocol"]
    print(
        f"\nlinear probe of {label!r} on {info['n_galaxies']} real images: "
        f"{protocol['folds']} folds x {protocol['repeats']} repeats"
        f"{' (stratified)' if info['stratified_on'] else ''}, {info['interval']}"
    )
    print(f"\n| variant | {metric} | 95 % interval |")
    print("|---|---|---|")
    for row in scores.itertuples():
        print(f"| {row.embedding} | {_ci(row.value, row.ci_low, row.ci_high)} |")
    compare = run.comparisons[run.comparisons.level == "target"]
    print("\n| model | minus | difference | 95 % interval | outcome |")
    print("|---|---|---|---|---|")
    for row in compare.itertuples():
        diff = _ci(row.improvement, row.ci_low, row.ci_high, sign=True)
        print(f"| {row.model} | {row.baseline} | {diff} | {row.outcome} |")
    for model in dict.fromkeys(compare.model):
        mine = compare[(compare.model == model) & compare.baseline.isin(BASELINES)]
        tally = {k: int((mine.outcome == k).sum()) for k in ("win", "tie", "loss")}
        print(
            f"\n{model} against the {len(mine)} baselines: {tally['win']} wins, "
            f"{tally['tie']} ties, {tally['loss']} losses",
            end="",
        )
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", help="folder of real images (none: skip)")
    parser.add_argument("--catalogue")
    parser.add_argument("--label")
    parser.add_argument("--crop-fraction", type=float, default=0.5)
    parser.add_argument("--out", default="runs/real", help="work folder (models, exports)")
    parser.add_argument("--max-images", type=int, default=None, help="embed and probe the first N")
    parser.add_argument("--iters", type=int, default=300, help="pretraining steps per model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--survey-n", type=int, default=3000)
    parser.add_argument("--survey-models", default=None, help="folder with fixed/ and zoom/")
    parser.add_argument("--layer", default=None, help="final, middle or a block index")
    parser.add_argument("--folds", type=int, default=None, help="default: the protocol's")
    parser.add_argument("--repeats", type=int, default=None, help="default: the protocol's")
    parser.add_argument("--n-boot", type=int, default=None, help="default: the protocol's")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads of the probes")
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    args = parser.parse_args(argv)
    if args.folder is None:  # `make bench` runs every script bare: there is no data to use
        print(
            "bench/real.py needs a folder of real images: python bench/real.py FOLDER "
            "--catalogue CSV --label COLUMN (skipped)"
        )
        return 0
    if not args.catalogue or not args.label:
        parser.error("--catalogue and --label are required with a folder")
    layer = int(args.layer) if args.layer and args.layer.lstrip("-").isdigit() else args.layer
    if args.torch_threads:  # on a shared machine one thread avoids waiting on a busy core
        torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    work = Path(args.out)
    images = work / f"images-crop{args.crop_fraction:g}-{SIDE}"
    images.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    data_fields = dict(
        source="folder",
        path=args.folder,
        catalogue=args.catalogue,
        crop_fraction=args.crop_fraction,
        resize=SIDE,
    )
    data_overrides = [f"data.{k}={v}" for k, v in data_fields.items()]
    data_overrides += ["data.image_size=null", "data.augment=true"]
    models = {REAL: pretrain(images / f"model-{args.iters}", data_overrides, args.iters,
                             args.batch_size)}  # fmt: skip
    for framing in ("zoom", "fixed"):  # zoom first: it is compared with fixed
        if args.survey_models:
            models[SURVEY.format(framing)] = Path(args.survey_models) / framing
        else:
            models[SURVEY.format(framing)] = survey_model(
                work, framing, args.survey_n, args.iters, args.batch_size
            )
    pretrain_s = time.perf_counter() - start

    sets = embed_all(models, data_fields, images, layer, args.max_images)
    embed_s = time.perf_counter() - start - pretrain_s

    from astropt.probe import run_probes

    run = run_probes(
        sets,
        targets=[args.label],
        protocol="repeated",
        folds=args.folds,
        repeats=args.repeats,
        n_boot=args.n_boot,
        label_sizes=None,
        threads=args.threads,
        models=len(models),
    )
    print_table(run, args.label)
    print(
        f"pretraining {pretrain_s:.0f} s, embedding {embed_s:.0f} s, "
        f"total {time.perf_counter() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
