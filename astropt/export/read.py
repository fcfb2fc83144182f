"""Reading an export folder (or a single parquet file) back: tables, embeddings, thumbnails.

A sharded export is merged back into the split's order (see :mod:`astropt.export`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from astropt.export.folder import POSITION, read_manifest
from astropt.preprocessing import Preprocessing


# --------------------------------------------------------------------------- reading
def read_table(path: str | Path, columns: list[str] | None = None, allow_partial: bool = False):
    """The whole export (folder or single parquet file) as one ``pyarrow.Table``, in row order."""
    path = Path(path)
    if path.is_file():
        return pq.read_table(path, columns=columns)
    manifest = read_manifest(path)
    if manifest is None:
        raise FileNotFoundError(f"{path} is neither a parquet file nor an embedding export folder")
    if "shards" in manifest:
        return _read_sharded(path, manifest, columns, allow_partial)
    if not manifest.get("complete") and not allow_partial:
        rows = sum(p["rows"] for p in manifest["parts"])
        raise RuntimeError(
            f"{path} is an unfinished export ({rows} rows so far): run the same export command "
            "again to finish it, or pass allow_partial=True"
        )
    tables = [pq.read_table(path / part["file"], columns=columns) for part in manifest["parts"]]
    if not tables:
        raise RuntimeError(f"{path} holds no rows")
    return pa.concat_tables(tables)


def _read_sharded(path: Path, manifest: dict, columns: list[str] | None, allow_partial: bool):
    """The shards of a multi-process export merged back into the split's order."""
    if not manifest.get("complete") and not allow_partial:
        raise RuntimeError(
            f"{path} is an unfinished sharded export: run the same torchrun command again "
            "(same number of processes) to finish it, or pass allow_partial=True"
        )
    tables = []
    for shard in manifest["shards"]:
        shard_manifest = read_manifest(path / shard)
        if shard_manifest is None or not shard_manifest["parts"]:
            continue
        names = pq.read_schema(path / shard / shard_manifest["parts"][0]["file"]).names
        wanted = None if columns is None else list(columns)
        if wanted is not None and POSITION in names and POSITION not in wanted:
            wanted.append(POSITION)
        tables.append(read_table(path / shard, columns=wanted, allow_partial=allow_partial))
    if not tables:
        raise RuntimeError(f"{path} holds no rows")
    table = pa.concat_tables(tables)
    if POSITION in table.column_names:
        order = np.argsort(table.column(POSITION).to_numpy(), kind="stable")
        table = table.take(pa.array(order)).drop_columns([POSITION])
    return table


def _fixed_list_to_numpy(column: pa.ChunkedArray, dtype) -> np.ndarray:
    array = column.combine_chunks()
    width = array.type.list_size
    return (
        array.flatten()
        .to_numpy(zero_copy_only=False)
        .astype(dtype, copy=False)
        .reshape(len(array), width)
    )


def read_embeddings(path: str | Path, allow_partial: bool = False):
    """Read an export in one call: ``(ids, embeddings, catalogue)``.

    ``ids``: ``(n,)`` array; ``embeddings``: ``(n, d)`` float32; ``catalogue``:
    a pandas DataFrame of the other columns (thumbnails excluded) indexed by id,
    whose ``attrs["preprocessing"]`` is the :class:`~astropt.preprocessing.Preprocessing`
    the galaxies were made with (:func:`export_preprocessing`; None when unknown).
    Accepts an export folder or a single parquet file with ``id`` and ``embedding``.
    """
    path = Path(path)
    schema = pq.read_schema(path) if path.is_file() else _folder_schema(path)
    columns = [name for name in schema.names if name != "thumbnail"]
    table = read_table(path, columns=columns, allow_partial=allow_partial)
    if "embedding" not in table.column_names or "id" not in table.column_names:
        raise ValueError(f"{path} has no 'id' and 'embedding' columns")
    emb_col = table.column("embedding")
    if pa.types.is_fixed_size_list(emb_col.type):
        embeddings = _fixed_list_to_numpy(emb_col, np.float32)
    else:  # variable-length lists written by other tools
        embeddings = np.asarray(emb_col.to_pylist(), dtype=np.float32)
    ids = table.column("id").to_numpy(zero_copy_only=False)
    catalogue = table.drop_columns(["id", "embedding"]).to_pandas()
    catalogue.index = ids
    catalogue.index.name = "id"
    catalogue.attrs["preprocessing"] = export_preprocessing(path)
    return ids, embeddings, catalogue


def export_preprocessing(path: str | Path) -> Preprocessing | None:
    """The preprocessing an export's galaxies were made with, from its manifest (exports
    written before the record existed: from their data config); None for a plain parquet file."""
    path = Path(path)
    meta = (read_manifest(path) or {}).get("meta", {}) if path.is_dir() else {}
    if "preprocessing" in meta:
        return Preprocessing.from_dict(meta["preprocessing"], origin=f"{path} manifest")
    data = meta.get("data_config")
    if not isinstance(data, dict):
        return None
    known = {name: data[name] for name in Preprocessing.field_names() if name in data}
    return Preprocessing.from_dict(known, origin=f"{path} manifest [data_config]")


def _folder_schema(path: Path) -> pa.Schema:
    manifest = read_manifest(path)
    if manifest is None:
        raise FileNotFoundError(f"{path} is neither a parquet file nor an embedding export folder")
    if "shards" in manifest:
        for shard in manifest["shards"]:
            shard_manifest = read_manifest(path / shard)
            if shard_manifest is not None and shard_manifest["parts"]:
                schema = _folder_schema(path / shard)
                index = schema.get_field_index(POSITION)
                return schema if index < 0 else schema.remove(index)
        raise RuntimeError(f"{path} holds no rows yet: run the export command again to finish it")
    if not manifest["parts"]:
        raise RuntimeError(f"{path} holds no rows yet: run the export command again to finish it")
    return pq.read_schema(path / manifest["parts"][0]["file"])


def read_thumbnails(path: str | Path, ids=None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, thumbnails (n, S, S, 3) uint8)`` of an export made with thumbnails.

    ``ids``: only these (in the order given); raises KeyError for unknown ids.
    """
    table = read_table(path, columns=["id", "thumbnail"], allow_partial=True)
    all_ids = table.column("id").to_numpy(zero_copy_only=False)
    flat = _fixed_list_to_numpy(table.column("thumbnail"), np.uint8)
    side = int(round(math.sqrt(flat.shape[1] // 3)))
    thumbs = flat.reshape(len(all_ids), side, side, 3)
    if ids is None:
        return all_ids, thumbs
    position = {key: i for i, key in enumerate(all_ids.tolist())}
    wanted = [position[key] for key in np.asarray(ids).tolist()]
    return np.asarray(ids), thumbs[wanted]


def has_thumbnails(path: str | Path) -> bool:
    path = Path(path)
    schema = pq.read_schema(path) if path.is_file() else _folder_schema(path)
    return "thumbnail" in schema.names
