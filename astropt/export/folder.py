"""Writing an export folder: parts, manifest, resume, and shards under ``torchrun``.

The format is described in :mod:`astropt.export`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from astropt.display import percentile_stretch, survey_colour_order
from astropt.distributed import process_group
from astropt.io import atomic_write, atomic_write_text

FORMAT = "astropt-embeddings/1"
MANIFEST = "_manifest.json"
POSITION = "_position"  # a sharded export's row position in the split
RESERVED_COLUMNS = ("id", "embedding", "thumbnail", "prediction", POSITION)
DEFAULT_ROWS_PER_PART = 16384


def read_manifest(path: str | Path) -> dict | None:
    """The manifest of an export folder, or None (a plain parquet file has none)."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text())


# --------------------------------------------------------------------------- rows
def _catalogue_columns(catalogue: dict[str, Any], batch_len: int) -> dict[str, np.ndarray]:
    """Keep one-value-per-galaxy columns; rename clashes with our own columns."""
    kept: dict[str, np.ndarray] = {}
    for name, values in (catalogue or {}).items():
        arr = values.detach().cpu().numpy() if torch.is_tensor(values) else np.asarray(values)
        if arr.ndim != 1 or len(arr) != batch_len:
            continue  # per-pixel arrays (e.g. flux_grz) are images, not catalogue values
        if arr.dtype.kind not in "biufUSO":
            continue
        key = f"cat_{name}" if name in RESERVED_COLUMNS else name
        kept[key] = arr
    return kept


def display_rgb(images: torch.Tensor, size: int) -> np.ndarray:
    """Small display thumbnails ``(B, size, size, 3)`` uint8 from loader images ``(B, C, H, W)``.

    Images already in [0, 1] (decoded JPEG/PNG, RGB as stored) are shown as
    they are. Anything else is taken as scaled survey fluxes in g, r, z order
    (the data pipeline's asinh or linear float scaling), shown as z, r, g ->
    R, G, B with a per-image stretch from the 0.5th to the 99.5th percentile.
    One-channel images become grey.
    """
    small = F.interpolate(images.detach().float().cpu(), size=(size, size), mode="area")
    if small.shape[1] == 1:
        small = small.expand(-1, 3, -1, -1)
    elif small.shape[1] >= 3:
        small = small[:, :3]
    else:
        small = torch.cat([small, small[:, :1]], dim=1)[:, :3]
    in_unit_range = bool(small.min() >= 0) and bool(small.max() <= 1.0 + 1e-6)
    pixels = small.numpy()
    if not in_unit_range:
        pixels = percentile_stretch(survey_colour_order(pixels))
    rgb = (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(rgb.transpose(0, 2, 3, 1))


def _fixed_size_list(values: np.ndarray, value_type: pa.DataType) -> pa.FixedSizeListArray:
    rows, width = values.shape[0], int(np.prod(values.shape[1:]))
    flat = pa.array(np.ascontiguousarray(values).reshape(rows * width), type=value_type)
    return pa.FixedSizeListArray.from_arrays(flat, width)


def _rows_table(
    ids: list,
    catalogue: dict[str, np.ndarray],
    emb: np.ndarray,
    thumbs: np.ndarray | None,
    positions: list[int] | None = None,
    column: str = "embedding",
) -> pa.Table:
    id_array = np.asarray(ids)
    columns: dict[str, pa.Array] = {"id": pa.array(id_array)}
    if positions is not None:
        columns[POSITION] = pa.array(np.asarray(positions, dtype=np.int64))
    for name, values in catalogue.items():
        columns[name] = pa.array(values)
    columns[column] = _fixed_size_list(emb.astype(np.float32, copy=False), pa.float32())
    if thumbs is not None:
        columns["thumbnail"] = _fixed_size_list(thumbs, pa.uint8())
    return pa.table(columns)


def _jsonable(state: Any) -> Any | None:
    """The loader state if it survives a JSON round trip unchanged, else None."""
    try:
        text = json.dumps(state)
    except (TypeError, ValueError):
        return None
    return json.loads(text)


# --------------------------------------------------------------------------- export core
def export_loader(
    encoder,
    open_loader: Callable[[], Iterable],
    out: str | Path,
    *,
    settings: dict,
    meta: dict | None = None,
    rows_per_part: int = DEFAULT_ROWS_PER_PART,
    batch_size: int,
    thumbnail_size: int = 0,
    total: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    column: str = "embedding",
) -> Path:
    """Run ``encoder`` over the batches of ``open_loader()`` and write the export folder ``out``.

    Under an initialised ``torch.distributed`` group of ``W > 1`` processes
    (``torchrun``; a group is started from torchrun's environment when none
    is), every rank must call this with the same arguments: ``open_loader``
    is then called as ``open_loader(rank=r, world_size=W)`` and must return
    that rank's disjoint share, which goes to its own shard folder (see the
    module docstring); rank 0 ties the shards with the top-level manifest.

    ``open_loader()`` returns a *deterministic* iterable of batches (attributes
    ``tokens (B, N, D)``, ``ids``, ``catalogue``, and ``images (B, C, H, W)``
    when thumbnails are wanted); when it has ``state_dict``/``load_state_dict``
    a resumed export restores it, else it skips the batches already written.
    ``settings`` (JSON-able) must match to resume; anything else in the folder
    is an error unless ``overwrite``. A part holds ``rows_per_part //
    batch_size`` batches (fewer rows when the loader skipped bad samples), so
    part boundaries are batch boundaries and resume positions are exact.
    ``column`` names the vector column (``prediction`` for :mod:`astropt.predict`).
    Returns ``out``.
    """
    out = Path(out)
    settings = dict(settings, rows_per_part=rows_per_part, batch_size=batch_size)
    settings["thumbnail_size"] = int(thumbnail_size)
    settings = json.loads(json.dumps(settings))  # normalise (tuples -> lists) for comparison
    rank, world_size = process_group()
    common = dict(meta=meta, rows_per_part=rows_per_part, batch_size=batch_size,
                  thumbnail_size=thumbnail_size, total=total, column=column)  # fmt: skip
    if world_size == 1:
        return _export_rows(
            encoder, open_loader, out, settings, overwrite=overwrite, progress=progress, **common
        )
    return _export_sharded(
        encoder, open_loader, out, settings, rank, world_size, overwrite, progress, common
    )


def _agree(rank: int, action: Callable[[], Any]) -> Any:
    """Run ``action`` on rank 0 and hand its result (or its error) to every rank.

    Every rank raises the same error, so none is left waiting in a collective.
    """
    import torch.distributed as dist

    box: list[Any] = [None]
    if rank == 0:
        try:
            box[0] = ("ok", action())
        except Exception as error:  # noqa: BLE001 - re-raised on every rank below
            box[0] = ("error", error)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise value
    return value


def shard_name(rank: int, world_size: int) -> str:
    """The folder of ``rank``'s rows inside a sharded export."""
    return f"rank-{rank:05d}-of-{world_size:05d}"


def _export_sharded(
    encoder, open_loader, out: Path, settings: dict, rank: int, world_size: int,
    overwrite: bool, progress: bool, common: dict,
) -> Path:  # fmt: skip
    """Each rank writes its own resumable shard; rank 0 writes the manifest that ties them."""
    import functools

    import torch.distributed as dist

    top_settings = dict(settings, world_size=world_size)
    shards = [shard_name(r, world_size) for r in range(world_size)]

    def prepare() -> dict:
        manifest = _prepare_folder(out, top_settings, overwrite, world_size=world_size)
        manifest.setdefault("shards", shards)
        manifest["meta"] = dict(common["meta"] or {}, **manifest.get("meta", {}))
        _write_manifest(out, manifest)
        return manifest

    manifest = _agree(rank, prepare)
    if not manifest.get("complete"):
        _export_rows(
            encoder,
            functools.partial(open_loader, rank=rank, world_size=world_size),
            out / shards[rank],
            dict(settings, rank=rank, world_size=world_size),
            overwrite=False,
            progress=progress and rank == 0,
            positions=True,
            **dict(common, total=None),
        )
    dist.barrier()

    def finish() -> dict:
        parts = [read_manifest(out / shard) for shard in shards]
        manifest["complete"] = True
        manifest["rows"] = sum(part["rows"] for part in parts)
        manifest["dim"] = next((p["dim"] for p in parts if "dim" in p), None)
        _write_manifest(out, manifest)
        return manifest

    _agree(rank, finish)  # every rank returns only once the export is readable
    return out


def _export_rows(
    encoder,
    open_loader: Callable[[], Iterable],
    out: Path,
    settings: dict,
    *,
    meta: dict | None,
    rows_per_part: int,
    batch_size: int,
    thumbnail_size: int,
    total: int | None,
    overwrite: bool,
    progress: bool,
    positions: bool = False,
    column: str = "embedding",
) -> Path:
    """One process's export into ``out`` (see :func:`export_loader`); ``positions``
    stores each row's position in the split (:data:`POSITION`) when the loader knows it."""
    batches_per_part = max(1, rows_per_part // batch_size)
    manifest = _prepare_folder(out, settings, overwrite)
    if manifest.get("complete"):
        return out
    manifest["meta"] = dict(meta or {}, **manifest.get("meta", {}))
    done_rows = sum(part["rows"] for part in manifest["parts"])

    loader = open_loader()
    if total is None:
        total = getattr(loader, "num_samples", None)  # None for streams: a bar without an end
    skip_batches = 0
    if manifest["parts"]:
        state = manifest["parts"][-1].get("loader_state")
        if state is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(state)
        else:
            skip_batches = sum(part["batches"] for part in manifest["parts"])

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        initial=done_rows,
        unit="gal",
        desc=f"embed {out.name}",
        disable=not progress,
        dynamic_ncols=True,
    )
    pending: list[tuple[list, dict, np.ndarray, np.ndarray | None, list | None]] = []
    iterator = iter(loader)
    try:
        for batch in iterator:
            if skip_batches:
                skip_batches -= 1
                continue
            ids = list(batch.ids)
            if getattr(encoder, "reads_images", False):
                emb = encoder(batch.images).numpy()
            elif getattr(encoder, "reads_stats", False):
                emb = encoder(batch.tokens, batch.mean, batch.std).numpy()
            else:
                emb = encoder(batch.tokens).numpy()
            if emb.shape[1] != manifest.setdefault("dim", emb.shape[1]):
                raise RuntimeError(
                    f"embedding width changed from {manifest['dim']} to {emb.shape[1]}"
                )
            thumbs = display_rgb(batch.images, thumbnail_size) if thumbnail_size else None
            where = getattr(batch, "indices", None) if positions else None
            pending.append((ids, _catalogue_columns(batch.catalogue, len(ids)), emb, thumbs, where))
            bar.update(len(ids))
            if len(pending) >= batches_per_part:
                _flush(out, manifest, pending, loader, column)
                pending = []
        if pending:
            _flush(out, manifest, pending, loader, column)
    finally:
        bar.close()
    manifest["complete"] = True
    manifest["rows"] = sum(part["rows"] for part in manifest["parts"])
    _write_manifest(out, manifest)
    return out


def _prepare_folder(out: Path, settings: dict, overwrite: bool, world_size: int = 1) -> dict:
    """Open (resume) or create the export folder; refuse a mismatching one."""
    if out.exists() and overwrite:
        _remove_export(out)
    if out.is_file():
        raise FileExistsError(f"{out} is a file; pass overwrite=True (--overwrite) to replace it")
    manifest = read_manifest(out) if out.is_dir() else None
    if manifest is None:
        if out.is_dir() and any(out.iterdir()):
            raise FileExistsError(
                f"{out} exists and is not an embedding export; choose another --out or --overwrite"
            )
        out.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "settings": settings, "parts": [], "complete": False}
        _write_manifest(out, manifest)
        return manifest
    if manifest.get("settings") != settings:
        old = manifest.get("settings", {})
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff == ["world_size"] or (world_size > 1 and "world_size" not in old):
            raise ValueError(
                f"{out} was exported by {old.get('world_size', 1)} process(es); resume it with "
                f"the same number (this run has {world_size}), choose another --out, or "
                "pass --overwrite"
            )
        raise ValueError(
            f"{out} holds an export made with other settings (differing: {', '.join(diff)}); "
            "resume with the same options, choose another --out, or pass --overwrite"
        )
    return manifest


def _remove_export(out: Path) -> None:
    if out.is_file():
        out.unlink()
        return
    if read_manifest(out) is None and any(out.iterdir()):
        raise FileExistsError(f"refusing to overwrite {out}: it is not an embedding export")
    import shutil

    for shard in (read_manifest(out) or {}).get("shards", []):
        if (out / shard).is_dir():
            _remove_export(out / shard)
    for child in out.iterdir():
        if child.is_dir() and read_manifest(child) is not None:
            shutil.rmtree(child)  # a shard of an earlier sharded export
        else:
            child.unlink()
    out.rmdir()


def _write_manifest(out: Path, manifest: dict) -> None:
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1, default=str))


def _flush(out: Path, manifest: dict, pending: list, loader, column: str = "embedding") -> None:
    """Write one part atomically, then record it (with the loader state) in the manifest."""
    index = len(manifest["parts"])
    names = list(pending[0][1])
    catalogue = {name: np.concatenate([p[1][name] for p in pending]) for name in names}
    ids = [i for p in pending for i in p[0]]
    emb = np.concatenate([p[2] for p in pending])
    thumbs = None if pending[0][3] is None else np.concatenate([p[3] for p in pending])
    known = all(p[4] is not None for p in pending)
    positions = [i for p in pending for i in p[4]] if known else None
    table = _rows_table(ids, catalogue, emb, thumbs, positions, column)
    name = f"part-{index:05d}.parquet"
    atomic_write(out / name, lambda tmp: pq.write_table(table, tmp))
    state = _jsonable(loader.state_dict()) if hasattr(loader, "state_dict") else None
    manifest["parts"].append(
        {
            "file": name,
            "rows": len(ids),
            "batches": len(pending),
            "first_id": _jsonable(ids[0]) if ids else None,
            "last_id": _jsonable(ids[-1]) if ids else None,
            "loader_state": state,
        }
    )
    manifest["dim"] = int(emb.shape[1])
    _write_manifest(out, manifest)
