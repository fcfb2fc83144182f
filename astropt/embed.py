"""Embedding export: galaxies in, one vector per galaxy out, resumable.

``python -m astropt.embed --checkpoint RUN --data DIR --split test --out emb.parquet``

An export is a *folder* named like a parquet file (``emb.parquet/``) that
pandas and pyarrow read as one table::

    emb.parquet/part-00000.parquet   rows 0 .. R-1       (R = rows per part)
    emb.parquet/part-00001.parquet   rows R .. 2R-1
    ...
    emb.parquet/_manifest.json       settings, finished parts, loader state, "complete"

Columns: ``id``, the catalogue columns of the data source, ``embedding``
(fixed-size list of float32, ``d`` values) and optionally ``thumbnail``
(fixed-size list of uint8, ``S*S*3`` RGB values, row-major ``(S, S, 3)``).

Why a folder of parts: a part is written to a temporary name and renamed, then
the manifest (also atomic) records it with the data loader's state *after* its
last batch. An interrupted export therefore restarts exactly after the last
recorded part: no duplicate rows, no gap. The order is deterministic (no
shuffling, no augmentation), so the same data and weights give the same table.

Baselines for the probe suite use the same format and the same rows:
``kind="random-init"`` (the same architecture with fresh weights under a fixed
seed), ``kind="pixels"`` (the scaled pixel values as patches, before per-patch
normalisation: the probe reduces them by PCA inside each training fold, so no
test galaxy reaches the fit) and ``kind="morphometrics"`` (aperture fluxes,
colours, CAS, Gini, M20, shape: :mod:`astropt.morphometrics`), each computed
once per galaxy. :func:`baseline_paths` names them next to an export.

Read any of them back with :func:`read_embeddings`.

Under ``torchrun`` (or any initialised ``torch.distributed`` group) an export
is sharded: rank ``r`` of ``W`` embeds the galaxies at positions ``r, r+W,
r+2W, ...`` of the split into its own resumable export
``emb.parquet/rank-0000r-of-0000W/`` (parts and manifest as above, plus a
``_position`` column: each row's position in the split), and the top-level
``_manifest.json`` lists the shards. :func:`read_table` and
:func:`read_embeddings` merge them back into the split's order, so the result
equals the single-process export row for row (map sources: local parquet,
folders, the synthetic survey; a stream's rows come rank after rank). Rerun the
same ``torchrun`` command, with the same number of processes, to resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from astropt.device import native_bf16, resolve_device
from astropt.display import percentile_stretch, survey_colour_order
from astropt.io import atomic_write, atomic_write_text
from astropt.model import Pool
from astropt.options import Command, run_command

FORMAT = "astropt-embeddings/1"
MANIFEST = "_manifest.json"
POSITION = "_position"  # a sharded export's row position in the split
RESERVED_COLUMNS = ("id", "embedding", "thumbnail", "prediction", POSITION)
DEFAULT_ROWS_PER_PART = 16384


# --------------------------------------------------------------------------- encoders
class ModelEncoder:
    """Normalised patch tokens ``(B, N, P*P*C)`` -> embeddings ``(B, d)`` through a :class:`GPT`.

    Runs under ``torch.inference_mode`` (no autograd bookkeeping), stops at the
    requested block (``GPT.embed`` never runs later blocks nor the head), and
    optionally under bfloat16 autocast. Output is float32 on the CPU.
    """

    def __init__(
        self,
        model,
        layer: int | str | None = None,
        pool: str = "mean",
        prefix: int | None = None,
        device: str | torch.device = "cpu",
        dtype: str = "auto",
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.layers = model.resolve_layers(layer)  # validates; None = final LayerNorm
        if pool not in get_args(Pool):
            raise ValueError(f"pool must be 'mean', 'prefix' or 'last', got {pool!r}")
        if pool == "prefix" and (not prefix or prefix < 1):
            raise ValueError("pool='prefix' needs prefix=k with k >= 1 tokens")
        self.pool = pool
        self.prefix = prefix if pool == "prefix" else None
        self.dtype = resolve_dtype(dtype, self.device)
        self.dim = model.config.n_embd * len(self.layers)

    @property
    def layer_name(self) -> str:
        """``"final"``, a block index, or several joined by ``+`` (concatenated in that order)."""
        return self.model.layer_name(self.layers)

    @property
    def reads_stats(self) -> bool:
        """Whether it needs the batch's normalisation statistics (flux-aware models)."""
        return bool(self.model.config.flux_tokens)

    def __call__(
        self,
        tokens: torch.Tensor,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``mean``/``std``: the tokens' ``(B, N, 1)`` statistics, needed when :attr:`reads_stats`."""
        tokens = tokens.to(self.device, non_blocking=True)
        stats = None
        if self.reads_stats:
            if mean is None or std is None:
                raise ValueError("a flux-aware model needs the tokens' mean and std")
            stats = self.model.token_stats(tokens, mean.to(self.device), std.to(self.device))
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.dtype == "bfloat16"
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            out = self.model.embed(
                tokens, layer=self.layers, pool=self.pool, prefix=self.prefix, stats=stats
            )
        return out.float().cpu()

    def fingerprint(self) -> str:
        return model_fingerprint(self.model)


class PixelEncoder:
    """Images ``(B, C, H, W)`` -> their scaled pixel values as patches, flattened ``(B, N * D)``.

    The patches are the model's tokens before per-patch normalisation (same
    patch size; the order of the values does not matter to a PCA).
    """

    reads_images = True

    def __init__(self, patch_size: int):
        self.patch_size = patch_size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from astropt.tokens import patchify

        patches = patchify(images.float().cpu(), patch_size=self.patch_size, order="raster")
        return patches.reshape(images.shape[0], -1)

    def fingerprint(self) -> str:
        return f"pixels-{self.patch_size}"


class MorphometricEncoder:
    """Images ``(B, C, H, W)`` -> morphometric features (:func:`astropt.morphometrics.morphometrics`)."""

    reads_images = True

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from astropt.morphometrics import morphometrics

        return torch.from_numpy(morphometrics(images.float().cpu().numpy()))

    def fingerprint(self) -> str:
        return "morphometrics-1"


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """``"auto"``: bfloat16 autocast where the device has native bfloat16 matmuls, else float32.

    Embeddings feed linear probes, where bfloat16's ~3 significant digits
    change nothing, and it runs about 2x faster (CPU with AMX) or more (GPU).
    """
    if dtype == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")
    return dtype


def model_fingerprint(model) -> str:
    """A short hash of the configuration and weights (tells checkpoints apart on resume).

    Per-tensor sums and absolute sums rounded to 6 digits: cheap on any device
    and stable across devices, unlike a hash of the raw bytes of GPU tensors.
    """
    digest = hashlib.sha1(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            t = tensor.detach().double()
            digest.update(f"{name}{tuple(t.shape)}{t.sum():.6e}{t.abs().sum():.6e}".encode())
    return digest.hexdigest()


def random_init_like(model_or_config, seed: int = 0):
    """A freshly initialised :class:`GPT` with the same configuration, from a fixed seed.

    The global torch RNG is left untouched (the draw happens in a forked RNG).
    """
    from astropt.model import GPT

    config = getattr(model_or_config, "config", model_or_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT(config)


# --------------------------------------------------------------------------- paths
BASELINES = ("pixels", "random-init", "morphometrics")


def baseline_paths(out: str | Path) -> dict[str, Path]:
    """Where the baselines of the export ``out`` live, by name (:data:`BASELINES`).

    ``emb.parquet`` -> ``emb.pixels.parquet``, ``emb.random.parquet`` and
    ``emb.morphometrics.parquet`` beside it.
    """
    out = Path(out)
    stem = out.name[: -len(".parquet")] if out.name.endswith(".parquet") else out.name
    return {
        "pixels": out.with_name(f"{stem}.pixels.parquet"),
        "random-init": out.with_name(f"{stem}.random.parquet"),
        "morphometrics": out.with_name(f"{stem}.morphometrics.parquet"),
    }


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


def process_group() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a distributed run.

    Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) with no
    initialised group, one is started: NCCL when CUDA is available, else gloo,
    and destroyed when the interpreter exits.
    """
    import atexit
    import os

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if torch.cuda.is_available():
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=local)
    else:
        dist.init_process_group("gloo")
    # A group left alive at exit can abort the process while its C++ threads are torn down
    # ("terminate called without an active exception", SIGABRT after a finished export).
    atexit.register(_destroy_process_group)
    return dist.get_rank(), dist.get_world_size()


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


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
    a pandas DataFrame of the other columns (thumbnails excluded) indexed by id.
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
    return ids, embeddings, catalogue


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


# --------------------------------------------------------------------------- data
def data_config_for(model, **fields):
    """A :class:`~astropt.data.DataConfig` that feeds ``model`` the inputs it was trained on.

    ``patch_size``, ``order`` and ``transpose_hw`` come from the model's config;
    augmentation is off (an export must be deterministic).
    """
    from astropt.data.config import DATA_CONVENTIONS, DataConfig

    fields = dict(fields)
    fields.update({name: getattr(model.config, name) for name in DATA_CONVENTIONS}, augment=False)
    return DataConfig(**fields)


def _check_data_config(model, data_cfg) -> None:
    from astropt.data.config import convention_mismatches

    mismatched = [
        f"{name}: data {getattr(data_cfg, name)!r} vs model {getattr(model.config, name)!r}"
        for name in convention_mismatches(data_cfg, model.config)
    ]
    if mismatched:
        raise ValueError(
            "the data config does not make the inputs this model expects ("
            + "; ".join(mismatched)
            + "); build it with astropt.embed.data_config_for(model, ...)"
        )


def _open_data(data_cfg, split: str, batch_size: int, max_samples: int | None):
    from astropt.data import make_loader

    def open_loader(rank: int = 0, world_size: int = 1):
        cfg = data_cfg
        if world_size > 1:
            if cfg.streaming and cfg.source != "folder" and cfg.path:
                warnings.warn(
                    "sharded export of a stream: the shards' rows are read back rank after "
                    "rank, not in the stream's order",
                    stacklevel=2,
                )
            # An export drops nothing: ranks may differ by one sample.
            cfg = dataclasses.replace(cfg, even_shards=False)
        return make_loader(
            cfg,
            split,
            batch_size=batch_size,
            shuffle=False,
            augment=False,
            seed=0,
            rank=rank,
            world_size=world_size,
            device="cpu",
            drop_last=False,
            repeat=False,
            max_samples=max_samples,
        )

    return open_loader


# DataConfig fields that change how fast galaxies arrive, never which or in what order.
_RUNTIME_DATA_FIELDS = ("num_workers", "prefetch_factor", "cache_dir")


def _data_settings(data_cfg, runtime: bool = True) -> dict:
    """The data config as JSON; without the speed-only fields when ``runtime`` is False
    (so a resumed export may use other worker counts)."""
    values = json.loads(json.dumps(dataclasses.asdict(data_cfg), default=str))
    if not runtime:
        for name in _RUNTIME_DATA_FIELDS:
            values.pop(name, None)
    return values


def export_embeddings(
    model,
    data_cfg,
    out: str | Path,
    split: str = "test",
    *,
    layer: int | str | None = None,
    pool: str = "mean",
    prefix: int | None = None,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    dtype: str = "auto",
    rows_per_part: int = DEFAULT_ROWS_PER_PART,
    max_samples: int | None = None,
    thumbnails: int = 0,
    kind: str = "model",
    checkpoint: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Embed every galaxy of ``split`` of ``data_cfg`` with ``model``; write the export ``out``.

    ``layer``: ``"final"``, ``"middle"``, a block index or several joined by ``+``
    (``"middle+final"``: their vectors concatenated; default the model's
    ``config.embed_layer``); ``pool``: ``"mean"``, ``"prefix"`` (first ``prefix``
    tokens) or ``"last"``; ``dtype``: ``"auto"`` (bfloat16 autocast where the
    device has native bfloat16 matmuls, see :func:`resolve_dtype`), ``"float32"``
    or ``"bfloat16"``; ``thumbnails``: side in
    pixels of RGB thumbnails stored per galaxy for UMAP stamp panels (0 = none).
    Rerunning the same call resumes an interrupted export. Returns ``out``.
    """
    device = model_export_device(model, data_cfg, device)
    encoder = ModelEncoder(model, layer, pool, prefix, device, dtype)
    return export_outputs(
        encoder,
        data_cfg,
        out,
        split,
        kind=kind,
        batch_size=batch_size,
        max_samples=max_samples,
        settings={"layer": encoder.layer_name, "pool": pool, "prefix": encoder.prefix},
        meta={
            "checkpoint": checkpoint,
            "model_config": model.config.to_dict(),
            "layer": encoder.layer_name,
            "pool": pool,
        },
        rows_per_part=rows_per_part,
        thumbnail_size=thumbnails,
        overwrite=overwrite,
        progress=progress,
    )


def model_export_device(model, data_cfg, device: str | torch.device = "auto") -> torch.device:
    """Check that ``data_cfg`` makes the inputs ``model`` expects, join the ``torchrun`` group
    (which picks this rank's GPU), then resolve ``device``: the start of every model export."""
    _check_data_config(model, data_cfg)
    process_group()
    return resolve_device(device)


def export_outputs(
    encoder,
    data_cfg,
    out: str | Path,
    split: str,
    *,
    kind: str,
    batch_size: int,
    max_samples: int | None = None,
    open_loader: Callable | None = None,
    settings: dict | None = None,
    meta: dict | None = None,
    **options,
) -> Path:
    """Export ``encoder``'s output for every galaxy of ``split`` of ``data_cfg`` (embeddings,
    image features, a finetuned model's predictions) to ``out``, resumable.

    The settings a resume must match are ``kind``, the encoder's fingerprint,
    the data config (without speed-only fields), ``split``, ``max_samples``, the
    encoder's ``dtype`` where it has one, plus ``settings``; the manifest's meta
    holds the data config, ``split`` and the creation time, plus ``meta``.
    ``open_loader``: ``(rank, world_size) -> loader`` (default: ``split`` of
    ``data_cfg``); ``options`` go to :func:`export_loader`.
    """
    fixed = {
        "kind": kind,
        "model": encoder.fingerprint(),
        "data": _data_settings(data_cfg, runtime=False),
        "split": split,
        "max_samples": max_samples,
    }
    if getattr(encoder, "dtype", None) is not None:
        fixed["dtype"] = encoder.dtype
    info = {
        "data_config": _data_settings(data_cfg),
        "split": split,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return export_loader(
        encoder,
        open_loader or _open_data(data_cfg, split, batch_size, max_samples),
        out,
        settings={**fixed, **(settings or {})},
        meta={**info, **(meta or {})},
        batch_size=batch_size,
        **options,
    )


def export_image_features(
    kind: str,
    data_cfg,
    out: str | Path,
    split: str = "test",
    *,
    batch_size: int = 256,
    rows_per_part: int = DEFAULT_ROWS_PER_PART,
    max_samples: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """A model-free baseline export of ``split``: ``kind`` ``"pixels"`` or ``"morphometrics"``.

    ``"pixels"``: every galaxy's scaled pixel values as ``data_cfg.patch_size``
    patches before per-patch normalisation (``N * D`` float32 values; the
    manifest's ``meta.token_dim`` is ``D``), for the ``pixels`` and
    ``pixels-normalised`` baselines that the probe suite reduces by PCA inside
    each training fold. ``"morphometrics"``: :mod:`astropt.morphometrics`
    (``meta.features`` names the columns). Same rows as the model's export.
    """
    from astropt.morphometrics import feature_names

    if kind == "pixels":
        encoder = PixelEncoder(data_cfg.patch_size)
        channels = 3
        extra = {"token_dim": data_cfg.patch_size**2 * channels}
    elif kind == "morphometrics":
        encoder = MorphometricEncoder()
        extra = {"features": feature_names()}
    else:
        raise ValueError(f"kind must be 'pixels' or 'morphometrics', got {kind!r}")
    return export_outputs(
        encoder,
        data_cfg,
        out,
        split,
        kind=kind,
        batch_size=batch_size,
        max_samples=max_samples,
        meta=extra,
        rows_per_part=rows_per_part,
        overwrite=overwrite,
        progress=progress,
    )


def export_baselines(
    model,
    data_cfg,
    out: str | Path,
    split: str = "test",
    *,
    which: tuple[str, ...] = BASELINES,
    seed: int = 0,
    **options,
) -> dict[str, Path]:
    """Write the probe baselines of the export ``out`` beside it (see :func:`baseline_paths`).

    ``"random-init"``: ``model``'s architecture with fresh weights from ``seed``,
    the same layer/pool options; ``"pixels"`` and ``"morphometrics"``: see
    :func:`export_image_features`. ``options`` are passed to the exports
    (layer, pool, batch_size, ...).
    """
    unknown = set(which) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {BASELINES}")
    paths = baseline_paths(out)
    written: dict[str, Path] = {}
    common = {
        k: options[k]
        for k in ("batch_size", "rows_per_part", "max_samples", "overwrite", "progress")
        if k in options
    }
    if "random-init" in which:
        written["random-init"] = export_embeddings(
            random_init_like(model, seed), data_cfg, paths["random-init"], split,
            kind="random-init", **options,
        )  # fmt: skip
    for kind in ("pixels", "morphometrics"):
        if kind in which:
            written[kind] = export_image_features(kind, data_cfg, paths[kind], split, **common)
    return written


def export_baselines_for(path: str | Path, **overrides) -> dict[str, Path]:
    """Baselines for an existing export, rebuilt from its manifest (model config, data, split)."""
    from astropt.data import DataConfig
    from astropt.model import GPT, GPTConfig

    manifest = read_manifest(path)
    if manifest is None or "model_config" not in manifest.get("meta", {}):
        raise ValueError(f"{path} records no model and data: export the baselines explicitly")
    meta, settings = manifest["meta"], manifest["settings"]
    model = GPT(GPTConfig.from_dict(meta["model_config"]))
    data_cfg = DataConfig(**meta["data_config"])
    layer = settings["layer"]
    options = {
        "layer": int(layer) if layer.lstrip("-").isdigit() else layer,
        "pool": settings["pool"],
        "prefix": settings["prefix"],
        "batch_size": settings["batch_size"],
        "rows_per_part": settings["rows_per_part"],
        "max_samples": settings["max_samples"],
        "dtype": settings.get("dtype", "auto"),
    }
    options.update(overrides)
    return export_baselines(model, data_cfg, path, settings["split"], **options)


# --------------------------------------------------------------------------- command line
#: Data options a checkpoint decides (its conventions) or an export fixes (no augmentation).
MODEL_DECIDES = ("patch_size", "order", "transpose_hw", "augment")

#: The older flag spellings of the model/data keys shared by ``embed`` and ``sample``.
MODEL_DATA_FLAGS = {
    "--data": "data.path",
    "--source": "data.source",
    "--image-size": "data.image_size",
    "--num-workers": "data.num_workers",
    "--data-opt": "data.",
}


def model_data_section():
    """The ``data`` options of a command that reads galaxies for a trained model.

    Any :class:`~astropt.data.DataConfig` key except those the checkpoint decides
    (:data:`MODEL_DECIDES`); ``data.source=auto`` guesses the source from ``data.path``.
    """
    from astropt.data import DataConfig
    from astropt.options import partial_section

    return partial_section(DataConfig, exclude=MODEL_DECIDES, source="auto")


def data_config_from_options(model, data: dict[str, Any]):
    """The :class:`DataConfig` of a ``data`` section (:func:`model_data_section`) for ``model``."""
    from astropt.data import guess_source

    fields = dict(data)
    if fields.get("source", "auto") == "auto":
        fields["source"] = guess_source(fields.get("path", ""))
    return data_config_for(model, **fields)


@dataclasses.dataclass
class EmbedOptions:
    """Options of ``astropt embed`` (``python -m astropt.embed``)."""

    checkpoint: str  # run folder, model folder, AstroPT ckpt.pt or Hub id
    out: str  # output export folder, e.g. emb.parquet
    split: str = "test"  # data split to embed
    # final | middle | block index, or several joined by + (middle+final: concatenated);
    # default: the model's embed_layer
    layer: str | None = None
    pool: Pool = "mean"  # how token outputs become one vector
    prefix: int | None = None  # tokens averaged by pool=prefix
    batch_size: int = 256  # galaxies per forward pass
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:N
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bfloat16 where native
    max_samples: int | None = None  # embed only the first N galaxies of the split
    rows_per_part: int = DEFAULT_ROWS_PER_PART  # rows per parquet part (the resume unit)
    thumbnails: int = 0  # store SxS RGB thumbnails (UMAP stamp panels); 0: none
    random_init: bool = False  # embed with fresh weights of the checkpoint's architecture
    baselines: bool = False  # also write the pixels, random-init and morphometrics baselines
    seed: int = 0  # seed of random_init and the baselines
    overwrite: bool = False  # replace an export made with other settings
    progress: bool = True  # progress bar
    # where the galaxies come from: path ('' = synthetic on the fly), source, image_size, ...
    data: dict[str, Any] = model_data_section()


def run_embed(opts: EmbedOptions) -> int:
    """Embed the split the options name; write the export (and baselines)."""
    from astropt.hub import load_model

    model = load_model(opts.checkpoint)
    data_cfg = data_config_from_options(model, opts.data)
    kind = "model"
    if opts.random_init:
        model, kind = random_init_like(model, opts.seed), "random-init"
    options = {
        "layer": opts.layer,
        "pool": opts.pool,
        "prefix": opts.prefix,
        "batch_size": opts.batch_size,
        "device": opts.device,
        "dtype": opts.dtype,
        "rows_per_part": opts.rows_per_part,
        "max_samples": opts.max_samples,
        "overwrite": opts.overwrite,
        "progress": opts.progress,
    }
    out = export_embeddings(
        model, data_cfg, opts.out, opts.split, kind=kind, checkpoint=str(opts.checkpoint),
        thumbnails=opts.thumbnails, **options,
    )  # fmt: skip
    ids, emb, _ = read_embeddings(out)
    print(f"wrote {len(ids)} embeddings of width {emb.shape[1]} to {out}", file=sys.stderr)
    if opts.baselines:
        for name, path in export_baselines(
            model, data_cfg, out, opts.split, seed=opts.seed, **options
        ).items():
            print(f"wrote the {name} baseline to {path}", file=sys.stderr)
    return 0


COMMAND = Command(
    EmbedOptions,
    run_embed,
    "Embed galaxies with a model and write a resumable parquet export "
    "(id, catalogue columns, embedding). Rerun the same command to resume.",
    flags=MODEL_DATA_FLAGS,
    examples=(
        "astropt embed checkpoint=runs/x data.path=runs/survey out=emb.parquet baselines=true",
        "python -m astropt.embed --checkpoint runs/x --data runs/survey --out emb.parquet",
    ),
)


def main(argv: list[str] | None = None) -> int:
    """``python -m astropt.embed`` (the same as ``astropt embed``)."""
    return run_command(COMMAND, argv, "python -m astropt.embed")


if __name__ == "__main__":
    raise SystemExit(main())
