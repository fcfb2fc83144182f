"""Neighbours of a galaxy: ``astropt search emb.parquet --id ID --k 16`` and :func:`search`.

A query is a galaxy of the export (``id``), image files (``image``: each is
embedded with the export's own model, layer, pooling and data preprocessing,
read from the export's manifest, and refused when the checkpoint there is no
longer the model that made the export), or raw vectors (``vectors``). The
answer is a table, nearest first: ``query``, ``rank``, ``id``, ``distance``
(``1 - cosine``, see :mod:`astropt.search.index`) and any catalogue
``columns`` asked for.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from astropt.export import read_manifest, read_table
from astropt.options import Command, run_command
from astropt.search.index import Neighbours, SearchError, open_index, set_threads


def _layer_option(layer: str | None):
    if layer is None:
        return None
    return int(layer) if layer.lstrip("-").isdigit() else layer


def embed_images(
    export: str | Path, images: Sequence[str | Path], checkpoint: str | None = None
) -> np.ndarray:
    """Embeddings ``(len(images), d)`` float32 of image files, made as the export's rows were.

    The export's manifest names the checkpoint (``checkpoint`` overrides it),
    the layer, pooling, dtype and the data config; the files are read by the
    data pipeline as a folder source with that config, so they are decoded,
    cropped, resized, scaled and tokenised exactly as the export's galaxies.
    Raises :class:`SearchError` when the model loaded is not the export's
    (fingerprints differ) or the export records no model.
    """
    from astropt.data import DataConfig, make_loader
    from astropt.embed import ModelEncoder
    from astropt.export import export_preprocessing, model_fingerprint
    from astropt.hub import load_model

    export = Path(export)
    manifest = read_manifest(export) if export.is_dir() else None
    meta = (manifest or {}).get("meta", {})
    settings = (manifest or {}).get("settings", {})
    if "data_config" not in meta or settings.get("kind") not in ("model", None):
        raise SearchError(
            f"{export} records no model export (kind {settings.get('kind')!r}): a query by image "
            "needs an export written by `astropt embed`; query by --id instead"
        )
    source = checkpoint or meta.get("checkpoint")
    if not source:
        raise SearchError(f"{export} records no checkpoint: pass --checkpoint")
    try:
        model = load_model(source)
    except FileNotFoundError as error:
        raise SearchError(f"the export's model cannot be loaded: {error}") from error
    if model_fingerprint(model) != settings.get("model"):
        raise SearchError(
            f"mismatched model: {source} is not the model that made {export} (weights or "
            "configuration differ); pass --checkpoint with that model, or re-export"
        )
    missing = [str(p) for p in images if not Path(p).is_file()]
    if missing:
        raise SearchError(f"image file(s) not found: {', '.join(missing)}")
    data = dict(meta["data_config"])
    recorded = export_preprocessing(export)  # what the export's galaxies were made with
    if recorded is not None:
        data.update(dataclasses.asdict(recorded))
    data.update(source="folder", catalogue=None, id_column=None, strict=True, num_workers=0)
    data.pop("columns", None)
    encoder = ModelEncoder(
        model, _layer_option(settings.get("layer")), settings.get("pool", "mean"),
        settings.get("prefix"), "cpu", settings.get("dtype", "float32"),
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="astropt-query-") as folder:
        # Numbered copies keep the caller's order (a folder source reads files sorted).
        for i, image in enumerate(images):
            shutil.copyfile(image, os.path.join(folder, f"{i:06d}{Path(image).suffix.lower()}"))
        data["path"] = folder
        cfg = DataConfig(**{k: v for k, v in data.items() if k in DataConfig.field_names()})
        loader = make_loader(cfg, "test", batch_size=64, shuffle=False, augment=False)
        vectors = []
        for batch in loader:
            if encoder.reads_stats:
                vectors.append(encoder(batch.tokens, batch.mean, batch.std).numpy())
            else:
                vectors.append(encoder(batch.tokens).numpy())
    return np.concatenate(vectors).astype(np.float32)


def _table(queries: list, found: list[Neighbours]) -> pd.DataFrame:
    frames = [
        pd.DataFrame(
            {
                "query": [query] * len(n.ids),
                "rank": np.arange(1, len(n.ids) + 1),
                "id": n.ids,
                "distance": n.distances.astype(np.float64),
                "_position": n.positions,
            }
        )
        for query, n in zip(queries, found)
    ]
    return pd.concat(frames, ignore_index=True)


def search(
    export: str | Path,
    id=None,
    *,
    image: str | Path | Sequence[str | Path] | None = None,
    vectors: np.ndarray | None = None,
    k: int = 16,
    columns: Sequence[str] = (),
    checkpoint: str | None = None,
    index: str | Path | None = None,
    build: bool = False,
) -> pd.DataFrame:
    """The ``k`` nearest galaxies of each query, nearest first, as one table.

    Give exactly one of ``id`` (one id or a list; the galaxy itself is left
    out of its own neighbours), ``image`` (one file or a list, embedded with
    the export's model, see :func:`embed_images`) or ``vectors`` (``(m, d)``
    raw embeddings). Columns: ``query``, ``rank`` (1 = nearest), ``id``,
    ``distance`` (1 - cosine) and the catalogue ``columns`` asked for.
    ``index``: the index folder (default beside the export; ``build=True``
    builds it when missing).
    """
    given = [x is not None for x in (id, image, vectors)]
    if sum(given) != 1:
        raise SearchError("give exactly one query: an id, an image file or vectors")
    opened = open_index(export, index, build=build)
    if id is not None:
        keys = list(id) if isinstance(id, (list, tuple, np.ndarray, pd.Index)) else [id]
        found = opened.neighbours_of_rows(opened.positions_of(keys), k)
        queries = keys
    else:
        if image is not None:
            files = [image] if isinstance(image, (str, Path)) else list(image)
            vectors = embed_images(export, files, checkpoint)
            queries = [str(f) for f in files]
        else:
            vectors = np.atleast_2d(vectors)
            queries = list(range(len(vectors)))
        found = opened.neighbours_of_vectors(vectors, k)
    table = _table(queries, found)
    if columns:
        table = _with_columns(export, table, list(columns))
    return table.drop(columns="_position")


def _with_columns(export: str | Path, table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    try:
        values = read_table(export, columns=columns)
    except (KeyError, ValueError) as error:
        raise SearchError(f"{export}: cannot read columns {columns}: {error}") from error
    picked = values.take(table["_position"].to_numpy()).to_pandas()
    return pd.concat([table, picked.reset_index(drop=True)], axis=1)


# --------------------------------------------------------------------------- command line
@dataclass
class SearchOptions:
    """Options of ``astropt search``."""

    export: str  # embedding export (folder or parquet file) with its index beside it
    id: list[str] = field(default_factory=list)  # galaxy id(s) whose neighbours to list
    image: list[str] = field(default_factory=list)  # image file(s) embedded with the export's model
    k: int = 16  # neighbours per query
    columns: list[str] = field(default_factory=list)  # catalogue columns to show beside each
    checkpoint: str | None = None  # model for image queries (default: the export's)
    index: str | None = None  # index folder (default: beside the export)
    build: bool = False  # build the index first when there is none
    threads: int | None = None  # faiss threads (None: all cores)
    csv: str | None = None  # also write the table to this CSV file


def run_search(opts: SearchOptions) -> int:
    """Print the neighbours of each query as a table."""
    set_threads(opts.threads)
    if bool(opts.id) == bool(opts.image):
        raise SearchError("give --id ID ... or --image FILE ... (one of them)")
    table = search(
        opts.export, opts.id or None, image=opts.image or None, k=opts.k, columns=opts.columns,
        checkpoint=opts.checkpoint, index=opts.index, build=opts.build,
    )  # fmt: skip
    with pd.option_context("display.width", 200, "display.max_rows", 10_000):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if opts.csv:
        table.to_csv(opts.csv, index=False)
        print(f"wrote {len(table)} rows to {opts.csv}", file=sys.stderr)
    return 0


COMMAND = Command(
    SearchOptions,
    run_search,
    "Nearest galaxies of a galaxy (--id) or of image files (--image, embedded with the "
    "export's model) in an embedding export's index: id and distance (1 - cosine).",
    positional=("export",),
    examples=(
        "astropt search emb.parquet --id 123456 --k 16",
        "astropt search emb.parquet --image galaxy.jpg --columns galaxy10 redshift",
    ),
)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, argv, "astropt search")
