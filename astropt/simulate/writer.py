"""The survey folder: parquet shards in the ``Smith42/galaxies`` schema, a montage, ``astropt survey``."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from astropt.options import Command, run_command
from astropt.simulate.spec import (
    _F32,
    BANDS,
    DR8,
    GALAXY10_CLASSES,
    IMAGE_SIZES,
    SIM_VERSION,
    ZOOM_FILL,
    SurveySpec,
)
from astropt.simulate.stamps import (
    _check_size,
    encode_jpeg,
    iter_render,
    label_columns,
    make_stamps,
    to_rgb_uint8,
)

SPLITS = ("train", "validation", "test")


def split_of(indices) -> np.ndarray:
    """Split of galaxy i: train if i % 10 < 8, validation if 8, test if 9 (0, 1, 2)."""
    r = np.asarray(indices) % 10
    return np.where(r < 8, 0, np.where(r == 8, 1, 2))


def split_indices(n: int, split: str) -> np.ndarray:
    """Galaxy indices of a split of an ``n``-galaxy survey, in order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    idx = np.arange(n)
    return idx[split_of(idx) == SPLITS.index(split)]


def survey_features(image_size: int, float_bands: bool, framing: str = "fixed"):
    """The ``datasets.Features`` of a shard (image, dr8_id, labels[, flux_grz])."""
    from datasets import Features, Image, List, Value

    feats = {"image": Image()}
    for k, (dtype, _, _) in label_columns(framing).items():
        feats[k] = Value(dtype)
    if float_bands:
        feats["flux_grz"] = List(Value("float32"), length=3 * image_size * image_size)
    return Features(feats)


def _rows(task: tuple) -> dict:
    """Worker: render one chunk of galaxies into parquet-ready columns."""
    indices, size, seed, float_bands, survey, framing, zoom_fill = task
    cols: dict[str, list] = {"image": [], **{k: [] for k in label_columns(framing)}}
    if float_bands:
        cols["flux_grz"] = []
    renders = iter_render(
        np.asarray(indices), size, seed, survey=survey, framing=framing, zoom_fill=zoom_fill
    )
    for flux, labels in renders:
        cols["image"].extend(
            encode_jpeg(im, survey.jpeg_quality) for im in to_rgb_uint8(flux, survey=survey)
        )
        for k, v in labels.items():
            cols[k].append(v)
        if float_bands:
            cols["flux_grz"].append(flux.reshape(len(flux), -1))
    return {k: v if k == "image" else np.concatenate(v) for k, v in cols.items()}


def _write_shard(path: Path, cols: list[dict], schema, float_bands: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = []
    for field in schema:
        name = field.name
        if name == "image":
            data = [b for c in cols for b in c["image"]]
            arrays.append(
                pa.StructArray.from_arrays(
                    [pa.array(data, pa.binary()), pa.nulls(len(data), pa.string())],
                    fields=list(field.type),
                )
            )
        elif name == "flux_grz":
            flat = np.concatenate([c["flux_grz"] for c in cols]).astype(_F32)
            arrays.append(
                pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), type=field.type)
            )
        else:
            arrays.append(pa.array(np.concatenate([c[name] for c in cols]), type=field.type))
    table = pa.Table.from_arrays(arrays, schema=schema)
    tmp = path.with_suffix(".parquet.tmp")
    # fixed writer settings: the same rows always give the same bytes
    pq.write_table(
        table,
        tmp,
        compression="snappy",
        row_group_size=max(len(table), 1),
        use_dictionary=False,
        write_statistics=True,
        version="2.6",
    )
    os.replace(tmp, path)


def write_survey(
    out: str | os.PathLike,
    n: int,
    image_size: int = 256,
    seed: int = 0,
    *,
    workers: int = 1,
    float_bands: bool = False,
    shard_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    survey: SurveySpec = DR8,
    framing: str = "fixed",
    zoom_fill: float = ZOOM_FILL,
) -> dict:
    """Write ``out/{train,validation,test}/shard-NNNNN.parquet`` and ``out/survey.json``.

    Shards hold consecutive galaxies of one split (``split_of``); the shard layout
    depends only on (n, shard_size), never on ``workers``, and every galaxy only on
    (seed, i), so the files are byte-identical for any worker count. ``survey.json``
    is written last: its presence marks a complete survey. Returns its contents.
    ``framing="zoom"`` scales each stamp's field of view with its galaxy
    (:func:`astropt.simulate.iter_render`) and adds the ``pixel_scale_arcsec`` column.
    """
    size = _check_size(image_size)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    _clear(out, overwrite)
    if shard_size is None:
        per = 3 * size * size * 4 if float_bands else 0
        shard_size = int(min(1000, max(16, (256 << 20) // max(per, 1)))) if per else 1000
    chunk = int(max(4, min(256, (1 << 21) // (size * size))))
    schema = survey_features(size, float_bands, framing).arrow_schema

    tasks, plan = [], []  # plan: (split, shard number, number of chunks)
    sizes = {}
    for split in SPLITS:
        idx = split_indices(n, split)
        sizes[split] = int(len(idx))
        (out / split).mkdir(parents=True, exist_ok=True)
        for s, lo in enumerate(range(0, len(idx), shard_size)):
            shard = idx[lo : lo + shard_size]
            pieces = [shard[c : c + chunk] for c in range(0, len(shard), chunk)]
            plan.append((split, s, len(pieces)))
            tasks.extend(
                (p, size, int(seed), float_bands, survey, framing, zoom_fill) for p in pieces
            )

    shards = _render_shards(out, tasks, plan, schema, float_bands, workers, progress, n, size)
    meta = _survey_meta(n, size, seed, float_bands, sizes, shard_size, shards, survey)
    if framing == "zoom":
        # Only zoomed surveys get these keys: fixed surveys stay byte-identical to before.
        meta["framing"] = "zoom"
        meta["zoom_fill"] = zoom_fill
        meta["pixel_scale_arcsec"] = "per stamp: the pixel_scale_arcsec column"
        meta["field_of_view_arcsec"] = "per stamp: image_size * pixel_scale_arcsec"
        meta["columns"] = _columns_meta("zoom")
    tmp = out / "survey.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / "survey.json")
    return meta


def _clear(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite``; then remove an old survey's files."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} exists and is not empty (pass overwrite=True / --overwrite)"
            )
        for split in SPLITS:
            for f in (out / split).glob("shard-*.parquet*") if (out / split).is_dir() else []:
                f.unlink()
        (out / "survey.json").unlink(missing_ok=True)


def _render_shards(
    out: Path,
    tasks: list[tuple],
    plan: list[tuple[str, int, int]],
    schema,
    float_bands: bool,
    workers: int,
    progress: bool,
    n: int,
    size: int,
) -> dict[str, list[str]]:
    """Render ``tasks`` (in worker processes when ``workers > 1``) and write the shards of
    ``plan`` in order; returns ``{split: [relative shard paths]}``."""
    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc=f"survey {size}px", unit="stamp", disable=not progress)
    pool = None
    if workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
        results = pool.map(_rows, tasks)
    else:
        results = map(_rows, tasks)
    shards: dict[str, list[str]] = {s: [] for s in SPLITS}
    try:
        for split, s, count in plan:
            cols = []
            for _ in range(count):
                c = next(results)
                cols.append(c)
                bar.update(len(c["image"]))
            name = f"shard-{s:05d}.parquet"
            _write_shard(out / split / name, cols, schema, float_bands)
            shards[split].append(f"{split}/{name}")
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return shards


def _columns_meta(framing: str) -> dict:
    return {
        k: {"dtype": t, "unit": unit, "description": desc}
        for k, (t, unit, desc) in label_columns(framing).items()
    }


def _survey_meta(
    n: int,
    size: int,
    seed: int,
    float_bands: bool,
    sizes: dict[str, int],
    shard_size: int,
    shards: dict[str, list[str]],
    survey: SurveySpec,
) -> dict:
    """The contents of ``survey.json``."""
    return {
        "name": "astropt synthetic DESI Legacy Survey DR8-like survey",
        "simulator_version": SIM_VERSION,
        "n": int(n),
        "image_size": size,
        "seed": int(seed),
        "pixel_scale_arcsec": survey.pixel_scale,
        "field_of_view_arcsec": round(size * survey.pixel_scale, 4),
        "bands": list(BANDS),
        "image": "JPEG, RGB = z, r, g with a Lupton asinh stretch (astropt.simulate.to_rgb_uint8)",
        "flux_grz": (
            "float32 nanomaggies per pixel, shape (3, S, S) flattened, bands g, r, z"
            if float_bands
            else None
        ),
        "split_rule": "train if dr8_id % 10 < 8, validation if == 8, test if == 9",
        "splits": sizes,
        "shard_size": shard_size,
        "shards": shards,
        "galaxy10_classes": list(GALAXY10_CLASSES),
        "columns": _columns_meta("fixed"),
        "survey": asdict(survey),
    }


def montage(
    rgb: np.ndarray, labels: dict[str, np.ndarray], path: str | os.PathLike, columns: int = 8
) -> None:
    """Write a PNG grid of stamps (n, S, S, 3) captioned with their Galaxy10 class names."""
    from PIL import Image, ImageDraw, ImageFont

    n, size = len(rgb), rgb.shape[1]
    tile = max(size, 128)
    cap = 28
    rows_n = -(-n // columns)
    sheet = Image.new("RGB", (columns * tile, rows_n * (tile + cap)), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for pt in (11, 10, 9, 8):  # the largest size at which every class name fits a tile
        try:
            font = ImageFont.load_default(size=pt)
        except TypeError:  # Pillow < 10.1 has one bitmap font
            break
        if max(draw.textlength(c, font=font) for c in GALAXY10_CLASSES) <= tile - 6:
            break
    for k in range(n):
        r, c = divmod(k, columns)
        im = Image.fromarray(rgb[k]).resize((tile, tile), Image.NEAREST)
        sheet.paste(im, (c * tile, r * (tile + cap)))
        name = GALAXY10_CLASSES[int(labels["galaxy10"][k])]
        extra = f"z={labels['redshift'][k]:.2f} logM={labels['log_mstar'][k]:.1f}"
        if labels["is_artefact"][k]:
            extra += " artefact"
        draw.text(
            (c * tile + 3, r * (tile + cap) + tile + 1), name, fill=(235, 235, 235), font=font
        )
        draw.text(
            (c * tile + 3, r * (tile + cap) + tile + 14), extra, fill=(160, 160, 160), font=font
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG", optimize=True)


# --------------------------------------------------------------------------- command line
@dataclass
class SurveyOptions:
    """Options of ``astropt survey`` (``python data/make_synthetic_survey.py``)."""

    out: str | None = None  # output folder (must be empty unless overwrite)
    n: int = 10000  # number of galaxies
    image_size: int = 256  # stamp side in pixels (64, 128, 256 or 512)
    framing: str = "fixed"  # fixed (0.262 arcsec/pixel) or zoom (field of view per galaxy)
    zoom_fill: float = ZOOM_FILL  # zoom: fraction of the side the half-light diameter spans
    seed: int = 0  # survey seed
    workers: int = 1  # worker processes
    float_bands: bool = False  # also store the float g, r, z images (nanomaggies) as flux_grz
    shard_size: int | None = None  # galaxies per shard (None: 1000)
    overwrite: bool = False  # replace an existing survey
    montage: str | None = None  # also write a labelled PNG grid of galaxies 0-63 here
    progress: bool = True  # progress bar (quiet=true: none)

    def __post_init__(self) -> None:
        if self.out is None and self.montage is None:
            raise ValueError("give out=DIR (and/or montage=PNG)")
        label_columns(self.framing)  # a clear error for an unknown framing
        if self.image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {self.image_size}")
        for name, lowest in (("n", 1), ("workers", 1), ("seed", 0), ("shard_size", 1)):
            value = getattr(self, name)
            if value is not None and value < lowest:
                raise ValueError(f"{name} must be >= {lowest}, got {value}")


def run_survey(opts: SurveyOptions) -> int:
    """Write the survey (and/or the montage) the options describe."""
    if opts.montage:
        rgb, _, labels = make_stamps(
            64, opts.image_size, opts.seed, framing=opts.framing, zoom_fill=opts.zoom_fill
        )
        montage(rgb, labels, opts.montage)
        print(f"wrote {opts.montage}")
    if opts.out:
        start = time.perf_counter()
        try:
            meta = write_survey(
                opts.out,
                opts.n,
                opts.image_size,
                opts.seed,
                workers=opts.workers,
                float_bands=opts.float_bands,
                shard_size=opts.shard_size,
                overwrite=opts.overwrite,
                progress=opts.progress,
                framing=opts.framing,
                zoom_fill=opts.zoom_fill,
            )
        except (FileExistsError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        seconds = time.perf_counter() - start
        splits = ", ".join(f"{k} {v}" for k, v in meta["splits"].items())
        print(f"wrote {opts.n} stamps ({splits}) to {opts.out} in {seconds:.1f} s")
    return 0


COMMAND = Command(
    SurveyOptions,
    run_survey,
    "Write the built-in synthetic survey (DESI Legacy Survey DR8-like grz stamps) to parquet: "
    "OUT/{train,validation,test}/shard-NNNNN.parquet in the Smith42/galaxies schema plus "
    "OUT/survey.json. The pixel scale is always DR8's 0.262 arcsec: image_size changes the "
    "field of view, not the resolution. Galaxy i depends only on (seed, i).",
    examples=(
        "astropt survey out=runs/survey n=10000 image_size=128 seed=0 workers=2",
        "python data/make_synthetic_survey.py --out runs/survey --n 10000 --image-size 128 --seed 0",
    ),
)


def main(argv: list[str] | None = None) -> int:
    """``python data/make_synthetic_survey.py`` (the same as ``astropt survey``)."""
    return run_command(COMMAND, argv, "python data/make_synthetic_survey.py")
