"""UMAP maps of embeddings: where do physical properties live in embedding space?

:func:`make_maps` projects the embeddings to 2-D with UMAP (umap-learn, fixed
random state) and draws one hexbin panel per property, each hexagon coloured
by the median of the property over its galaxies (as in AstroPT's figure;
booleans show the fraction that is true, class labels the most common class),
plus a panel of example stamps placed at their UMAP positions.

Stamps come from, in order: thumbnails passed in, the ``thumbnail`` column of
the export (``python -m astropt.embed --thumbnails 32``), or the images of the
export's data source (read again by id with the data pipeline).

``probe/umap_maps.py`` is the command line.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from astropt.options import Command, run_command

# AstroPT's figure: absolute magnitudes, sSFR, stellar mass, redshift, Galaxy Zoo answers.
DEFAULT_MAP_PROPERTIES = (
    "mag_abs_g",
    "mag_abs_z",
    "log_ssfr",
    "log_mstar",
    "redshift",
    "smooth_frac",
    "is_edge_on",
    "galaxy10",
)


@dataclass
class MapResult:
    """What :func:`make_maps` drew."""

    ids: np.ndarray  # (n,) galaxies mapped (a seeded subsample when there were more)
    coords: np.ndarray  # (n, 2) float32 UMAP coordinates
    properties: list[str]  # one hexbin panel each, in order
    n_panels: int  # property panels + the stamp panel when drawn
    stamp_ids: np.ndarray = field(default_factory=lambda: np.array([]))  # galaxies shown as stamps
    path: Path | None = None  # the PNG
    coords_path: Path | None = None  # CSV of id, umap_x, umap_y
    titles: list[str] = field(default_factory=list)  # titles of the panels drawn, in order


def fit_umap(
    features: np.ndarray,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    standardise: bool = True,
) -> np.ndarray:
    """UMAP of ``features (n, d)`` to ``(n, 2)`` float32, deterministic for a given ``seed``.

    Features are z-scored first (``standardise``) so no single wide dimension
    dominates the distances. A fixed random state makes umap-learn run
    single-threaded, which is what makes the result repeatable.
    """
    import umap

    x = np.asarray(features, dtype=np.float32)
    if standardise:
        scale = x.std(axis=0)
        scale[scale < 1e-12] = 1.0
        x = (x - x.mean(axis=0)) / scale
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(n_neighbors, len(x) - 1),
        min_dist=min_dist,
        random_state=seed,
        n_jobs=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "n_jobs overridden by random_state" etc.
        return reducer.fit_transform(x).astype(np.float32)


def _kind(values: pd.Series, name: str) -> str:
    if pd.api.types.is_bool_dtype(values):
        return "fraction"
    if name == "galaxy10" or (
        pd.api.types.is_integer_dtype(values) and values.nunique(dropna=True) <= 10
    ):
        return "class"
    return "median"


def _mode(values: np.ndarray) -> float:
    uniques, counts = np.unique(values, return_counts=True)
    return float(uniques[np.argmax(counts)])


def default_properties(catalogue: pd.DataFrame, limit: int = 8) -> list[str]:
    """AstroPT's properties when present, else the first numeric probe targets."""
    chosen = [p for p in DEFAULT_MAP_PROPERTIES if p in catalogue.columns]
    if chosen:
        return chosen
    from astropt.probe import auto_targets

    return list(dict.fromkeys(t.column for t in auto_targets(catalogue)))[:limit]


def pick_stamps(coords: np.ndarray, grid: int = 8) -> np.ndarray:
    """Row indices of example galaxies: in each non-empty cell of a ``grid x grid``
    tiling of the map, the galaxy nearest the cell centre. Deterministic."""
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    size = np.maximum(hi - lo, 1e-9) / grid
    cell = np.minimum(((coords - lo) / size).astype(int), grid - 1)
    centre = lo + (cell + 0.5) * size
    distance = ((coords - centre) ** 2).sum(axis=1)
    key = cell[:, 0] * grid + cell[:, 1]
    order = np.lexsort((np.arange(len(coords)), distance, key))  # by cell, then distance
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    return np.sort(order[first])


def fetch_thumbnails(data_cfg, split: str, ids: Sequence, size: int = 32, max_samples=None):
    """Thumbnails ``(len(ids), size, size, 3)`` uint8 of ``ids`` read from a data source.

    Scans the split in its deterministic order and stops once every id is
    found; raises KeyError naming the ids it did not find.
    """
    from astropt.data import make_loader
    from astropt.export import display_rgb

    wanted = {key: i for i, key in enumerate(np.asarray(ids).tolist())}
    out = np.zeros((len(wanted), size, size, 3), dtype=np.uint8)
    found = 0
    loader = make_loader(
        data_cfg, split, batch_size=64, shuffle=False, augment=False, max_samples=max_samples
    )
    for batch in loader:
        hits = [(j, wanted[key]) for j, key in enumerate(list(batch.ids)) if key in wanted]
        if hits:
            rows = [j for j, _ in hits]
            thumbs = display_rgb(batch.images[rows], size)
            for (_, target), thumb in zip(hits, thumbs):
                out[target] = thumb
            found += len(hits)
        if found >= len(wanted):
            return out
    missing = len(wanted) - found
    raise KeyError(f"{missing} of the requested ids were not found in the {split!r} split")


def stamps_for(source, ids: np.ndarray, thumbnails) -> np.ndarray | None:
    """Thumbnails of ``ids`` from the best available place, or None (with a warning)."""
    if thumbnails is not None:
        thumb_ids, thumbs = thumbnails
        position = {key: i for i, key in enumerate(np.asarray(thumb_ids).tolist())}
        return np.asarray(thumbs)[[position[key] for key in ids.tolist()]]
    if not isinstance(source, (str, Path)):
        warnings.warn("no thumbnails given: the stamp panel is left out", stacklevel=3)
        return None
    from astropt.export import has_thumbnails, read_manifest, read_thumbnails

    if has_thumbnails(source):
        return read_thumbnails(source, ids)[1]
    manifest = read_manifest(source) or {}
    meta, settings = manifest.get("meta", {}), manifest.get("settings", {})
    if "data_config" not in meta:
        warnings.warn(
            f"{source} has no thumbnails and records no data source: the stamp panel is left out "
            "(export with --thumbnails 32 to keep them)",
            stacklevel=3,
        )
        return None
    try:
        from astropt.data import DataConfig

        data_cfg = DataConfig(**meta["data_config"])
        return fetch_thumbnails(
            data_cfg, meta["split"], ids, max_samples=settings.get("max_samples")
        )
    except Exception as error:  # the map is still useful without stamps
        warnings.warn(f"could not read stamps from the data source ({error})", stacklevel=3)
        return None


def make_maps(
    embeddings,
    out: str | Path | None = None,
    properties: Sequence[str] | None = None,
    *,
    seed: int = 0,
    max_points: int = 20000,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    gridsize: int = 30,
    stamps: bool = True,
    stamp_grid: int = 8,
    thumbnails: tuple[np.ndarray, np.ndarray] | None = None,
    dpi: int = 110,
) -> MapResult:
    """UMAP hexbin maps of an embedding set, one panel per property, plus example stamps.

    ``embeddings``: an export path (see :mod:`astropt.embed`) or ``(ids,
    features (n, d), catalogue DataFrame)``. ``out``: PNG path (None: nothing
    written); the coordinates go beside it as ``<stem>_coords.csv``.
    ``properties``: catalogue columns (default :func:`default_properties`).
    ``max_points``: a seeded subsample beyond this many galaxies.
    ``thumbnails``: ``(ids, (n, S, S, 3) uint8)`` to use for the stamp panel.
    """
    from matplotlib.figure import Figure

    from astropt.probe import _load

    ids, features, catalogue = _load(embeddings)
    catalogue = pd.DataFrame(index=range(len(ids))) if catalogue is None else catalogue
    catalogue = catalogue.reset_index(drop=True)
    props = list(properties) if properties is not None else default_properties(catalogue)
    missing = [p for p in props if p not in catalogue.columns]
    if missing:
        raise KeyError(f"no catalogue column(s) {missing}; have {list(catalogue.columns)}")
    rows = np.arange(len(ids))
    if len(rows) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), max_points, replace=False))
    ids = np.asarray(ids)[rows]
    coords = fit_umap(features[rows], seed, n_neighbors, min_dist)
    catalogue = catalogue.iloc[rows].reset_index(drop=True)

    stamp_rows = pick_stamps(coords, stamp_grid) if stamps else np.array([], dtype=int)
    stamp_images = stamps_for(embeddings, ids[stamp_rows], thumbnails) if stamps else None
    n_panels = len(props) + (stamp_images is not None)
    result = MapResult(
        ids=ids,
        coords=coords,
        properties=props,
        n_panels=n_panels,
        stamp_ids=ids[stamp_rows] if stamp_images is not None else np.array([]),
    )
    if out is None:
        return result

    ncols = min(4, max(1, n_panels))
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(3.8 * ncols, 3.4 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    x, y = coords[:, 0], coords[:, 1]
    for ax, name in zip(axes, props):
        series = catalogue[name]
        kind = _kind(series, name)
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        ok = ~np.isnan(values)
        reduce, cmap, label = {
            "median": (np.median, "viridis", "median"),
            "fraction": (np.mean, "magma", "fraction true"),
            "class": (_mode, "tab10", "most common"),
        }[kind]
        limits = {}
        if kind == "class":  # one tab10 colour per class label, not a continuous ramp
            low = float(np.nanmin(values)) if ok.any() else 0.0
            limits = {"vmin": low - 0.5, "vmax": low + 9.5}
        art = ax.hexbin(
            x[ok], y[ok], C=values[ok], reduce_C_function=reduce, gridsize=gridsize,
            mincnt=1, cmap=cmap, linewidths=0, **limits,
        )  # fmt: skip
        bar = fig.colorbar(art, ax=ax, shrink=0.85)
        bar.set_label(f"{name} ({label})", fontsize=8)
        if kind == "class":
            bar.set_ticks(np.arange(limits["vmin"] + 0.5, limits["vmax"]))
        ax.set_title(name, fontsize=10)
        _style(ax)
    if stamp_images is not None:
        ax = axes[len(props)]
        ax.scatter(x, y, s=1, c="0.8", rasterized=True)
        width = (x.max() - x.min()) / stamp_grid * 0.95
        height = (y.max() - y.min()) / stamp_grid * 0.95
        for (cx, cy), image in zip(coords[stamp_rows], stamp_images):
            extent = (cx - width / 2, cx + width / 2, cy - height / 2, cy + height / 2)
            ax.imshow(image, extent=extent, origin="upper", interpolation="nearest", zorder=3)
        ax.set_xlim(x.min() - width / 2, x.max() + width / 2)
        ax.set_ylim(y.min() - height / 2, y.max() + height / 2)
        ax.set_aspect("auto")
        ax.set_title("example galaxies", fontsize=10)
        _style(ax)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    result.titles = [ax.get_title() for ax in axes[:n_panels]]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    coords_path = out.with_name(f"{out.stem}_coords.csv")
    pd.DataFrame({"id": ids, "umap_x": coords[:, 0], "umap_y": coords[:, 1]}).to_csv(
        coords_path, index=False
    )
    result.path, result.coords_path = out, coords_path
    return result


def _style(ax) -> None:
    ax.set_xlabel("UMAP 1", fontsize=8)
    ax.set_ylabel("UMAP 2", fontsize=8)
    ax.tick_params(labelsize=7)


# --------------------------------------------------------------------------- command line
@dataclass
class MapsOptions:
    """Options of ``astropt maps`` (``python probe/umap_maps.py``)."""

    embeddings: str  # embedding export (folder or parquet file)
    out: str = "umap.png"  # PNG path; coordinates go to <out stem>_coords.csv
    # catalogue columns, one panel each (default: magnitudes, sSFR, mass, redshift, morphology)
    properties: list[str] | None = None
    seed: int = 0  # UMAP random state and subsample seed
    max_points: int = 20000  # galaxies mapped at most (a seeded subsample beyond)
    n_neighbors: int = 15  # UMAP neighbourhood size (local vs global structure)
    min_dist: float = 0.1  # UMAP minimum distance between mapped points
    gridsize: int = 30  # hexagons across
    stamps: bool = True  # add the panel of example stamps
    stamp_grid: int = 8  # stamps at most G x G


def run_maps(opts: MapsOptions) -> int:
    """Write the UMAP panels and coordinates of an export."""
    result = make_maps(
        opts.embeddings,
        opts.out,
        opts.properties,
        seed=opts.seed,
        max_points=opts.max_points,
        n_neighbors=opts.n_neighbors,
        min_dist=opts.min_dist,
        gridsize=opts.gridsize,
        stamps=opts.stamps,
        stamp_grid=opts.stamp_grid,
    )
    print(
        f"{len(result.ids)} galaxies, {result.n_panels} panels -> {result.path} "
        f"(coordinates: {result.coords_path})",
        file=sys.stderr,
    )
    return 0


COMMAND = Command(
    MapsOptions,
    run_maps,
    "UMAP maps of an embedding export: hexbin panels coloured by properties, plus stamps.",
    positional=("embeddings",),
    examples=(
        "astropt maps emb.parquet out=report/umap.png",
        "python probe/umap_maps.py emb.parquet --out report/umap.png --no-stamps",
    ),
)


def main(argv: list[str] | None = None) -> int:
    """``python probe/umap_maps.py`` (the same as ``astropt maps``)."""
    return run_command(COMMAND, argv, "python probe/umap_maps.py")
