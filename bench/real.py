"""Does pretraining work on real galaxies? Probe a label of a folder of real images.

    python bench/real.py FOLDER --catalogue CSV --label COLUMN [--crop-fraction 0.5]

1. pretrain the quickstart-shaped model (``configs/quickstart.toml``) on every image
   of FOLDER (labels unused), each image centre-cropped (``--crop-fraction``) and
   resampled to 64 pixels (``data.resize``);
2. embed every image with that model, with quickstart-shaped models pretrained on the
   built-in survey in both framings (``fixed`` and ``zoom``; written and trained here
   unless ``--survey-models`` names run folders ``fixed/`` and ``zoom/``), with the
   same shape randomly initialised, and with the baselines: raw pixels, per-patch
   normalised pixels (each reduced to its first 128 principal components, fitted
   inside each training fold) and morphometrics (concentration, asymmetry,
   ellipticity, Gini, colour, size);
3. probe COLUMN with a linear probe (logistic regression for a label of few integer
   values, ridge otherwise), repeated stratified k-fold (5 folds x 4 repeats), and
   print one table: each variant's score with a 95 % interval (corrected resampled
   t interval of Nadeau & Bengio 2003, which allows for the overlap of the folds'
   training sets), and its paired difference from the best baseline.

Nothing is downloaded; the images are never copied. Keep third-party images and
anything derived from them out of the repository (write ``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from astropt.data import DataConfig, make_loader  # noqa: E402
from astropt.embed import ModelEncoder, random_init_like  # noqa: E402
from astropt.tokens import images_to_tokens  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SIDE = 64
PCA_DIM = 128


def load_images(cfg: DataConfig, label: str) -> tuple[torch.Tensor, np.ndarray, list]:
    """Every image of the folder once, in catalogue order: (n, C, S, S) float32, labels, ids."""
    loader = make_loader(
        cfg, "train", batch_size=256, shuffle=False, augment=False, drop_last=False
    )
    images, labels, ids = [], [], []
    for batch in loader:
        images.append(batch.images.contiguous().clone())
        labels.append(np.asarray(batch.catalogue[label]))
        ids.extend(batch.ids)
    print(f"read {len(ids)} images; {loader.summary()}", flush=True)
    return torch.cat(images), np.concatenate(labels), ids


def pretrain(out: Path, data_overrides: list[str], iters: int, batch_size: int) -> Path:
    from astropt.config import load_config
    from astropt.train import train

    if (out / "checkpoints" / "latest").exists() and (out / "done.json").exists():
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

    survey = work / f"survey-{framing}"
    if not (survey / "survey.json").exists():
        write_survey(survey, n, SIDE, seed=0, framing=framing, overwrite=True, progress=False)
    return pretrain(
        work / f"model-{framing}",
        ["data.source=synthetic", f"data.path={survey}", f"data.image_size={SIDE}"],
        iters,
        batch_size,
    )


def embed(model, images: torch.Tensor) -> np.ndarray:
    encoder = ModelEncoder(model, layer=None, pool="mean", dtype="float32")
    out = []
    for start in range(0, len(images), 512):
        tokens, _, _ = images_to_tokens(images[start : start + 512], model.config.patch_size)
        out.append(encoder(tokens).numpy())
    return np.concatenate(out)


def morphometrics(images: torch.Tensor) -> np.ndarray:
    """Per image: concentration, asymmetry, ellipticity, Gini, colour and size of the
    summed-band light, measured about the flux-weighted centre (no segmentation)."""
    x = images.numpy().astype(np.float64)
    light = x.sum(axis=1)
    light = light - np.median(light, axis=(1, 2), keepdims=True)  # sky level
    light = np.clip(light, 0, None) + 1e-9
    n, side, _ = light.shape
    rows, cols = np.indices((side, side))
    total = light.sum(axis=(1, 2))
    cy = (light * rows).sum(axis=(1, 2)) / total
    cx = (light * cols).sum(axis=(1, 2)) / total
    dy, dx = rows[None] - cy[:, None, None], cols[None] - cx[:, None, None]
    radius = np.hypot(dy, dx).reshape(n, -1)
    order = np.argsort(radius, axis=1)
    cum = np.cumsum(np.take_along_axis(light.reshape(n, -1), order, axis=1), axis=1)
    sorted_r = np.take_along_axis(radius, order, axis=1)

    def radius_at(frac):
        idx = np.argmax(cum >= frac * cum[:, -1:], axis=1)
        return sorted_r[np.arange(n), idx] + 0.5

    r20, r50, r80 = radius_at(0.2), radius_at(0.5), radius_at(0.8)
    asym = np.abs(light - light[:, ::-1, ::-1]).sum(axis=(1, 2)) / (2 * total)
    myy = (light * dy**2).sum(axis=(1, 2)) / total
    mxx = (light * dx**2).sum(axis=(1, 2)) / total
    mxy = (light * dx * dy).sum(axis=(1, 2)) / total
    ellip = np.hypot(mxx - myy, 2 * mxy) / (mxx + myy)
    flat = np.sort(light.reshape(n, -1), axis=1)
    k = np.arange(1, flat.shape[1] + 1)
    gini = ((2 * k - flat.shape[1] - 1) * flat).sum(axis=1) / (flat.shape[1] * flat.sum(axis=1))
    inner = dy**2 + dx**2 <= (r50**2)[:, None, None]
    band_in = (x * inner[:, None]).sum(axis=(2, 3))
    colour = np.log((band_in[:, 0] + 1e-6) / (band_in[:, -1] + 1e-6))
    return np.stack(
        [5 * np.log10(r80 / r20), asym, ellip, gini, colour, r50, np.log(total)], axis=1
    )


def _pca_fold(train: np.ndarray, test: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(dim, train.shape[0], train.shape[1]), random_state=0)
    return pca.fit_transform(train), pca.transform(test)


def probe(features: np.ndarray, y: np.ndarray, folds, classify: bool, pca: bool) -> np.ndarray:
    """Score per fold: accuracy (classification) or R^2 (regression)."""
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.preprocessing import StandardScaler

    scores = []
    for train_idx, test_idx in folds:
        xtr, xte = features[train_idx], features[test_idx]
        if pca:
            xtr, xte = _pca_fold(xtr, xte, PCA_DIM)
        scaler = StandardScaler().fit(xtr)
        xtr, xte = scaler.transform(xtr), scaler.transform(xte)
        if classify:
            clf = LogisticRegression(C=0.1, max_iter=2000).fit(xtr, y[train_idx])
            scores.append(float((clf.predict(xte) == y[test_idx]).mean()))
        else:
            reg = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(xtr, y[train_idx])
            scores.append(float(reg.score(xte, y[test_idx])))
    return np.array(scores)


def corrected_interval(diffs: np.ndarray, test_fraction: float) -> tuple[float, float, float]:
    """Mean and 95 % interval of per-fold scores (Nadeau & Bengio corrected resampled t)."""
    from scipy import stats

    k = len(diffs)
    var = diffs.var(ddof=1) * (1 / k + test_fraction / (1 - test_fraction))
    half = stats.t.ppf(0.975, k - 1) * math.sqrt(var)
    return float(diffs.mean()), float(diffs.mean() - half), float(diffs.mean() + half)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", help="folder of real images (none: skip)")
    parser.add_argument("--catalogue")
    parser.add_argument("--label")
    parser.add_argument("--crop-fraction", type=float, default=0.5)
    parser.add_argument("--out", default="runs/real", help="work folder (models, surveys)")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--iters", type=int, default=300, help="pretraining steps per model")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--survey-n", type=int, default=3000)
    parser.add_argument("--survey-models", default=None, help="folder with fixed/ and zoom/")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args(argv)
    if args.folder is None:  # `make bench` runs every script bare: there is no data to use
        print(
            "bench/real.py needs a folder of real images: python bench/real.py FOLDER "
            "--catalogue CSV --label COLUMN (skipped)"
        )
        return 0
    if not args.catalogue or not args.label:
        parser.error("--catalogue and --label are required with a folder")
    torch.manual_seed(0)
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    data_fields = dict(
        source="folder",
        path=args.folder,
        catalogue=args.catalogue,
        crop_fraction=args.crop_fraction,
        resize=SIDE,
    )
    images, y, ids = load_images(DataConfig(**data_fields, augment=False), args.label)
    if args.max_images and len(ids) > args.max_images:
        keep = np.random.default_rng(0).choice(len(ids), args.max_images, replace=False)
        keep.sort()
        images, y = images[keep], y[keep]
    values = np.unique(y)
    classify = len(values) <= 20 and np.allclose(values, np.round(values))
    print(f"{len(y)} images, label {args.label}: {len(values)} values", flush=True)

    from astropt.hub import load_model

    data_overrides = [f"data.{k}={v}" for k, v in data_fields.items()]
    data_overrides += ["data.image_size=null", "data.augment=true"]
    models = {
        "pretrained on these images": pretrain(
            work / "model-real", data_overrides, args.iters, args.batch_size
        )
    }
    for framing in ("fixed", "zoom"):
        if args.survey_models:
            models[f"pretrained on survey ({framing})"] = Path(args.survey_models) / framing
        else:
            models[f"pretrained on survey ({framing})"] = survey_model(
                work, framing, args.survey_n, args.iters, args.batch_size
            )
    pretrain_s = time.perf_counter() - start

    features: dict[str, tuple[np.ndarray, bool]] = {}
    model = None
    for name, path in models.items():
        model = load_model(path)
        features[name] = (embed(model, images), False)
    features["random init (same shape)"] = (embed(random_init_like(model, seed=0), images), False)
    tokens = images_to_tokens(images, 16)[0]
    features["baseline: pixels (PCA 128)"] = (images.reshape(len(images), -1).numpy(), True)
    features["baseline: normalised pixels (PCA 128)"] = (
        tokens.reshape(len(tokens), -1).numpy(),
        True,
    )
    features["baseline: morphometrics"] = (morphometrics(images), False)

    from sklearn.model_selection import RepeatedKFold, RepeatedStratifiedKFold

    splitter = (RepeatedStratifiedKFold if classify else RepeatedKFold)(
        n_splits=args.folds, n_repeats=args.repeats, random_state=0
    )
    folds = list(splitter.split(np.zeros(len(y)), y))
    scores = {
        name: probe(feats, y, folds, classify, pca) for name, (feats, pca) in features.items()
    }
    baselines = [n for n in scores if n.startswith("baseline") or n.startswith("random")]
    best = max(baselines, key=lambda n: scores[n].mean())
    frac = 1 / args.folds
    metric = "accuracy" if classify else "R^2"
    print(
        f"\nlinear probe of {args.label!r} on {len(y)} real images ({args.folds}-fold x "
        f"{args.repeats}, 95 % corrected intervals); best baseline: {best}"
    )
    print(f"| variant | {metric} | 95 % interval | minus best baseline | 95 % interval |")
    print("|---|---|---|---|---|")
    for name, fold_scores in scores.items():
        mean, lo, hi = corrected_interval(fold_scores, frac)
        d, dlo, dhi = corrected_interval(fold_scores - scores[best], frac)
        diff = "-" if name == best else f"{d:+.4f} | [{dlo:+.4f}, {dhi:+.4f}]"
        if name == best:
            diff = "- | -"
        print(f"| {name} | {mean:.4f} | [{lo:.4f}, {hi:.4f}] | {diff} |")
    majority = max(np.mean(y == v) for v in values) if classify else float("nan")
    print(
        f"\nmajority class: {majority:.4f}; pretraining {pretrain_s:.0f} s, "
        f"total {time.perf_counter() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
