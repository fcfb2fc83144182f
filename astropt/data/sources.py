"""Where samples come from: Hugging Face datasets (parquet/arrow, hub), folders, the simulator.

A *map source* has a length and ``fetch(indices) -> Rows``: the ids, catalogue
columns and raw image payloads of those samples, cheap to read (no image is
decoded). ``decode(payload, name)`` then turns one payload into a
``(C, H, W)`` array, or raises :class:`~astropt.data.decode.SkipSample`. Both run
inside the DataLoader workers; the main process only ever holds indices.

A *stream* (``DataConfig.streaming``) is a ``datasets.IterableDataset`` read in
arrow batches; :class:`TableReader` turns each arrow table into ``Rows`` the
same way for both kinds, so parquet from disk and from the Hub decode by the
same code.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import DataConfig, synthetic_split_sizes
from .decode import (
    FITS_SUFFIXES,
    IMAGE_SUFFIXES,
    NPY_SUFFIXES,
    SkipSample,
    as_chw,
    decode_encoded,
    decode_min_side,
    file_stem,
    file_suffix,
    read_band_files,
    read_file,
)

if TYPE_CHECKING:
    import pyarrow as pa


log = logging.getLogger("astropt.data")

SPLITS = ("train", "validation", "test")
#: Folder / file-name spellings recognised for each split.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "validation": ("validation", "val", "valid", "dev"),
    "test": ("test", "testing"),
}
ID_CANDIDATES = ("dr8_id", "id", "objid", "object_id", "source_id", "iauname", "name")
FILE_COLUMN_CANDIDATES = ("filename", "file_name", "file", "path", "image", "image_path")
DATA_FILE_SUFFIXES = (".parquet", ".arrow")


@dataclass
class Rows:
    """What a source read for a list of samples, before decoding.

    ``names`` identify each sample in messages (file path, or row and file set);
    ``catalogue`` maps column names to arrays as long as ``names``.
    """

    names: list[str]
    ids: list[Any]
    catalogue: dict[str, np.ndarray]
    payloads: list[Any]


# ------------------------------------------------------------------------ arrow tables


def _is_scalar_type(arrow_type: pa.DataType) -> bool:
    import pyarrow as pa

    return (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_boolean(arrow_type)
        or pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
    )


def _is_list_type(arrow_type: pa.DataType) -> bool:
    import pyarrow as pa

    return (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_fixed_size_list(arrow_type)
    )


def _nested_list_to_numpy(value: pa.Array) -> np.ndarray:
    """A (possibly nested) rectangular arrow list value to an ndarray with its nesting as shape."""
    import pyarrow.compute as pc

    shape = [len(value)]
    while _is_list_type(value.type):
        if value.null_count:
            raise SkipSample("corrupt", "array value contains nulls")
        lengths = pc.list_value_length(value)
        low, high = pc.min_max(lengths).values()
        if low.as_py() != high.as_py():
            raise SkipSample("wrong_size", "ragged nested array")
        shape.append(low.as_py() or 0)
        value = value.flatten()
    if value.null_count:
        raise SkipSample("corrupt", "array value contains nulls")
    return value.to_numpy(zero_copy_only=False).reshape(shape)


class TableReader:
    """Reads ``Rows`` out of arrow tables with the ``Smith42/galaxies`` schema.

    The image column may be a ``datasets`` Image struct ``{bytes, path}``,
    plain binary, or numeric arrays (flat ``C*S*S`` or nested). The id column
    is ``id_column`` or the first of :data:`ID_CANDIDATES` present (else the
    row index). Catalogue columns: ``columns`` or every scalar column except
    the image and the id.
    """

    def __init__(self, schema: pa.Schema, cfg: DataConfig, label: str) -> None:
        names = schema.names
        self.label = label
        self.image_column = cfg.image_column
        if self.image_column not in names:
            raise ValueError(
                f"{label}: no image column {self.image_column!r}; columns are {names}"
                " (set data.image_column)"
            )
        image_type = schema.field(self.image_column).type
        import pyarrow as pa

        if pa.types.is_struct(image_type) and image_type.get_field_index("bytes") >= 0:
            self.image_kind = "struct"
        elif pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type):
            self.image_kind = "binary"
        elif _is_list_type(image_type):
            self.image_kind = "array"
        else:
            raise ValueError(
                f"{label}: image column {self.image_column!r} has type {image_type}; expected an "
                "Image feature (struct of bytes and path), binary, or numeric arrays"
            )
        if cfg.id_column is not None and cfg.id_column not in names:
            raise ValueError(f"{label}: no id column {cfg.id_column!r}; columns are {names}")
        self.id_column = cfg.id_column or next((c for c in ID_CANDIDATES if c in names), None)
        if cfg.columns is not None:
            unknown = [c for c in cfg.columns if c not in names]
            if unknown:
                raise ValueError(f"{label}: catalogue columns {unknown} not in {names}")
            self.columns = list(cfg.columns)
        else:
            self.columns = [
                f.name
                for f in schema
                if f.name not in (self.image_column, self.id_column) and _is_scalar_type(f.type)
            ]
        self.channels = cfg.channels if not cfg.bands else None
        self.max_pixels = cfg.max_image_pixels
        self.min_side = decode_min_side(cfg)
        self.allow_external_paths = cfg.allow_external_paths
        self.root = _local_root(cfg.path)

    def _local_image(self, path: str) -> np.ndarray:
        """An image struct that names a file: read it only inside the dataset's own folder."""
        resolved = os.path.realpath(os.path.join(self.root or "", path))
        inside = self.root is not None and os.path.commonpath([self.root, resolved]) == self.root
        if not (inside or self.allow_external_paths):
            raise SkipSample(
                "external_path",
                f"the image names {path!r}, outside the dataset's folder "
                f"({self.root or 'none: not a local dataset'}); set data.allow_external_paths=true "
                "to read it",
            )
        return read_file(resolved, self.max_pixels, self.min_side)

    def rows(self, table: pa.Table, positions: Sequence[int]) -> Rows:
        """``positions``: each row's index in its split (for ids and messages)."""
        column = table.column(self.image_column).combine_chunks()
        if self.image_kind == "struct":
            data = column.field("bytes").to_pylist()
            has_path = column.type.get_field_index("path") >= 0
            paths = column.field("path").to_pylist() if has_path else [None] * len(data)
            payloads: list[Any] = [
                ("bytes", b) if b is not None else ("path", p) if p else ("none", None)
                for b, p in zip(data, paths)
            ]
        elif self.image_kind == "binary":
            payloads = [
                ("bytes", b) if b is not None else ("none", None) for b in column.to_pylist()
            ]
        else:
            payloads = [
                ("array", column[j].values) if column[j].is_valid else ("none", None)
                for j in range(len(column))
            ]
        if self.id_column is not None:
            ids = table.column(self.id_column).to_pylist()
        else:
            ids = [int(p) for p in positions]
        catalogue = {
            name: table.column(name).to_numpy(zero_copy_only=False) for name in self.columns
        }
        id_name = self.id_column or "row"
        names = [
            f"row {p} ({id_name} {i}) of {self.label}" for p, i in zip(positions, ids, strict=True)
        ]
        return Rows(names=names, ids=ids, catalogue=catalogue, payloads=payloads)

    def decode(self, payload: tuple[str, Any], name: str) -> np.ndarray:
        kind, value = payload
        if kind == "bytes":
            return decode_encoded(value, self.max_pixels, self.min_side)
        if kind == "path":
            return self._local_image(value)
        if kind == "array":
            return as_chw(_nested_list_to_numpy(value), name, self.channels)
        raise SkipSample("missing", "the image value is null")


def _local_root(path: str) -> str | None:
    """The real path of the local folder a dataset's files live in (``None`` for a Hub name)."""
    if not path:
        return None
    if os.path.isdir(path):
        return os.path.realpath(path)
    if os.path.isfile(path) or any(ch in path for ch in "*?["):
        # A file or a glob: the folder above its first wildcard.
        head = re.split(r"[*?\[]", path, maxsplit=1)[0]
        folder = head if head.endswith(os.sep) else os.path.dirname(head)
        return os.path.realpath(folder or ".")
    return None


# ------------------------------------------------------------------ Hugging Face source


@contextmanager
def _quiet_datasets():
    """Hide ``datasets``' progress bars for local loads (they are noise in training logs)."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def canonical_split(name: str) -> str:
    """The split a spelling names (:data:`SPLIT_ALIASES`): ``"dev"`` and ``"val"`` are
    ``"validation"``, ``"testing"`` is ``"test"``; an unknown name is returned unchanged."""
    for split, aliases in SPLIT_ALIASES.items():
        if name.lower() in aliases:
            return split
    return name


def _split_of(name: str) -> str | None:
    lowered = name.lower()
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            if lowered == alias or re.match(rf"^{alias}[-_.]", lowered):
                return split
    return None


def _data_files_in(folder: str) -> list[str]:
    found = []
    for dirpath, _, filenames in os.walk(folder):
        found += [os.path.join(dirpath, f) for f in filenames if f.endswith(DATA_FILE_SUFFIXES)]
    return sorted(found)


def resolve_data_files(path: str, split: str) -> tuple[list[str], bool]:
    """Local parquet/arrow files of ``split`` under a folder or glob.

    Splits are recognised as sub-folders (``DIR/train/...``, ``DIR/validation``
    or ``val``, ``DIR/test``) or file-name prefixes (``train-00000-of-00004.parquet``,
    the Hub layout). Returns ``(files, fell_back)``: a source without any split
    structure gives all its files for every split (``fell_back=True``); a source
    with splits but not this one is an error.
    """
    if os.path.isdir(path):
        files = _data_files_in(path)
        root = path
    else:
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        root = os.path.commonpath(files) if len(files) > 1 else os.path.dirname(path)
    if not files:
        raise FileNotFoundError(f"no .parquet or .arrow files found at {path}")
    by_split: dict[str, list[str]] = {}
    for f in files:
        rel = os.path.relpath(f, root) if os.path.isdir(root) else os.path.basename(f)
        parts = rel.split(os.sep)
        found = next((_split_of(p) for p in parts if _split_of(p)), None)
        if found:
            by_split.setdefault(found, []).append(f)
    if not by_split:
        return files, True
    if split not in by_split:
        raise ValueError(f"split {split!r} not found at {path}; it has {sorted(by_split)}")
    return by_split[split], False


def _cast_image_undecoded(ds: Any, column: str) -> Any:
    """Keep images as raw bytes so a corrupt one is caught (and counted) per sample by us."""
    import datasets

    features = getattr(ds, "features", None)
    if features is not None and isinstance(features.get(column), datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds


def open_hf(cfg: DataConfig, split: str, streaming: bool) -> tuple[Any, str]:
    """Open a split as a ``datasets.Dataset`` (or ``IterableDataset`` when streaming).

    ``cfg.path``: a local folder of parquet/arrow files (split layout as in
    :func:`resolve_data_files`), a folder written by ``save_to_disk``, a glob,
    or a Hub dataset name (``revision`` applies). Returns ``(dataset, label)``
    where ``label`` names the files for messages.
    """
    import datasets

    path = cfg.path
    if not path:
        raise ValueError("data.path is empty: name a Hub dataset, a folder or a glob of parquet")
    local = os.path.exists(path) or any(ch in path for ch in "*?[")
    with _quiet_datasets():
        if os.path.isdir(path) and (
            os.path.exists(os.path.join(path, "dataset_dict.json"))
            or os.path.exists(os.path.join(path, "state.json"))
        ):
            loaded = datasets.load_from_disk(path)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"split {split!r} not in {path}; it has {list(loaded)}")
                loaded = loaded[split]
            ds = loaded.to_iterable_dataset(num_shards=1) if streaming else loaded
            label = f"{path} [{split}]"
        elif local:
            files, fell_back = resolve_data_files(path, split)
            if fell_back:
                log.info("%s has no split structure: split %r reads all its files", path, split)
            builder = "arrow" if files[0].endswith(".arrow") else "parquet"
            ds = datasets.load_dataset(
                builder,
                data_files={"train": files},
                split="train",
                streaming=streaming,
                cache_dir=cfg.cache_dir,
            )
            label = files[0] if len(files) == 1 else f"{len(files)} files under {path} [{split}]"
        else:
            ds = datasets.load_dataset(
                path,
                revision=cfg.revision,
                split=split,
                streaming=streaming,
                cache_dir=cfg.cache_dir,
            )
            label = f"{path}@{cfg.revision or 'main'} [{split}]"
    return _cast_image_undecoded(ds, cfg.image_column), label


class HFMapSource:
    """A map-style ``datasets.Dataset``, read as arrow so nothing is decoded by ``datasets``."""

    def __init__(self, ds: Any, cfg: DataConfig, label: str, max_samples: int | None) -> None:
        self.ds = ds.with_format("arrow")
        self.reader = TableReader(ds.data.schema, cfg, label)
        self.n = len(ds) if max_samples is None else min(len(ds), max_samples)

    def __len__(self) -> int:
        return self.n

    def fetch(self, indices: Sequence[int]) -> Rows:
        # One arrow ``take`` for the whole batch: no per-row Python formatting.
        return self.reader.rows(self.ds[list(indices)], indices)

    def decode(self, payload: Any, name: str) -> np.ndarray:
        return self.reader.decode(payload, name)


# ---------------------------------------------------------------------- folder source


@dataclass(frozen=True)
class FolderSample:
    """One sample of a folder: a file, or a set of single-band FITS files in band order."""

    name: str
    id: Any
    paths: tuple[str, ...]
    band_set: bool = False
    #: Why the sample cannot be used, when known before decoding: ``(reason, detail)``
    #: with a reason of :data:`~astropt.data.decode.REASONS` (no file, a missing
    #: band, a duplicate or blank catalogue id).
    problem: tuple[str, str] | None = None


def _scan_folder(folder: str, fits_bands: tuple[str, ...]) -> list[FolderSample]:
    """Image files under ``folder`` (recursive, sorted), FITS band files grouped.

    A FITS file whose name ends in ``_<band>``, ``-<band>`` or ``.<band>`` (band
    in ``fits_bands``, e.g. ``gal42_g.fits``) belongs to the set ``gal42``; the
    set's bands are stacked in ``fits_bands`` order and a set lacking a band is
    skipped as ``missing``.
    """
    suffixes = IMAGE_SUFFIXES + FITS_SUFFIXES + NPY_SUFFIXES
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        files += [os.path.join(dirpath, f) for f in filenames if file_suffix(f) in suffixes]
    files.sort()
    band_re = (
        re.compile(rf"^(?P<stem>.+)[_.\-](?P<band>{'|'.join(map(re.escape, fits_bands))})$")
        if fits_bands
        else None
    )
    samples: list[FolderSample] = []
    sets: dict[str, dict[str, str]] = {}
    for path in files:
        rel = os.path.relpath(path, folder)
        match = band_re.match(file_stem(path)) if band_re else None
        if match and file_suffix(path) in FITS_SUFFIXES:
            key = os.path.join(os.path.dirname(rel), match["stem"])
            if key not in sets:
                sets[key] = {}
                samples.append(FolderSample(name=key, id=match["stem"], paths=(), band_set=True))
            sets[key][match["band"]] = path
        else:
            samples.append(FolderSample(name=rel, id=file_stem(path), paths=(path,)))
    out = []
    for sample in samples:
        if sample.band_set:
            bands = sets[sample.name]
            lacking = [b for b in fits_bands if b not in bands]
            sample = FolderSample(
                name=sample.name,
                id=sample.id,
                paths=tuple(bands[b] for b in fits_bands if b in bands),
                band_set=True,
                problem=("missing", f"band file(s) {lacking} of {sample.name} not found")
                if lacking
                else None,
            )
        out.append(sample)
    return out


def _read_catalogue(cfg: DataConfig):
    """The CSV catalogue with its id and file columns read as text (ids such as ``gal_000``,
    ``J1234+5678`` or blanks stay exactly as written), blanks as empty strings."""
    import pandas as pd

    header = pd.read_csv(cfg.catalogue, nrows=0).columns
    if cfg.id_column is not None and cfg.id_column not in header:
        raise ValueError(
            f"catalogue {cfg.catalogue} has no id column {cfg.id_column!r}; it has {list(header)}"
        )
    text = [c for c in header if c in (*ID_CANDIDATES, *FILE_COLUMN_CANDIDATES, cfg.id_column)]
    table = pd.read_csv(cfg.catalogue, dtype={c: str for c in text})
    for column in text:
        table[column] = table[column].fillna("").str.strip()
    return table


def _catalogue_ids(column) -> list[Any]:
    """Ids as Python values: integers when every non-blank id is one, else strings; blank -> None.

    Integers keep numeric ids (``dr8_id``) equal to the same ids read from parquet.
    """
    values = column.tolist()
    present = [v for v in values if v != ""]
    if present and all(re.fullmatch(r"[+-]?\d+", v) for v in present):
        return [int(v) if v != "" else None for v in values]
    return [v if v != "" else None for v in values]


class FolderSource:
    """A directory of JPEG/PNG/FITS/``.npy`` images with an optional CSV catalogue.

    Splits: sub-folders ``train``/``validation``/``test`` (aliases as in
    :data:`SPLIT_ALIASES`) when present, else the whole folder for any split.
    Without a catalogue the samples are the files (sorted by path) and the id
    is the file name stem. With a catalogue the samples are its rows, in order:
    the row's file is found by a file-name column (one of
    :data:`FILE_COLUMN_CANDIDATES`; a relative path, a file name, or a stem)
    or else by the id column matched against file stems; a row whose file is
    absent is a ``missing`` sample (reported by the train split when the
    folder has splits). Files not in the catalogue are left out (logged).
    """

    def __init__(self, cfg: DataConfig, split: str, max_samples: int | None) -> None:
        root = cfg.path
        if not os.path.isdir(root):
            raise FileNotFoundError(f"data.path {root!r} is not a directory")
        subdirs: dict[str, str] = {}
        for entry in sorted(os.listdir(root)):
            for name, aliases in SPLIT_ALIASES.items():
                if entry.lower() in aliases and os.path.isdir(os.path.join(root, entry)):
                    subdirs.setdefault(name, entry)
        by_split: dict[str, list[FolderSample]] = {}
        if subdirs:
            if split not in subdirs:
                raise ValueError(f"split {split!r} not found in {root}; it has {sorted(subdirs)}")
            for name, sub in subdirs.items():
                by_split[name] = _scan_folder(os.path.join(root, sub), cfg.fits_bands)
        else:
            by_split[split] = _scan_folder(root, cfg.fits_bands)
        samples = by_split[split]
        self.catalogue: dict[str, np.ndarray] = {}
        self.max_pixels = cfg.max_image_pixels
        self.min_side = decode_min_side(cfg)
        if cfg.catalogue:
            samples = self._join(cfg, split, by_split, bool(subdirs))
        elif not samples:
            raise FileNotFoundError(f"no JPEG, PNG, FITS or .npy files in {root} [{split}]")
        self.samples = samples if max_samples is None else samples[:max_samples]
        self.label = f"{root} [{split}]"

    def _join(
        self,
        cfg: DataConfig,
        split: str,
        by_split: dict[str, list[FolderSample]],
        has_splits: bool,
    ) -> list[FolderSample]:
        table = _read_catalogue(cfg)
        file_col = next((c for c in FILE_COLUMN_CANDIDATES if c in table.columns), None)
        id_col = cfg.id_column or next((c for c in ID_CANDIDATES if c in table.columns), None)
        if file_col is None and id_col is None:
            raise ValueError(
                f"catalogue {cfg.catalogue} needs a file column ({', '.join(FILE_COLUMN_CANDIDATES)})"
                f" or an id column ({', '.join(ID_CANDIDATES)}) to join on; it has "
                f"{list(table.columns)}"
            )
        key_col = file_col or id_col
        ids = _catalogue_ids(table[id_col]) if id_col else None
        # Every spelling a catalogue might use for a sample points at (split, sample).
        lookup: dict[str, tuple[str, FolderSample]] = {}
        for name, samples in by_split.items():
            for sample in samples:
                keys = {sample.name, os.path.basename(sample.name), str(sample.id)}
                keys.update(os.path.basename(p) for p in sample.paths)
                for key in keys:
                    lookup.setdefault(key, (name, sample))
        keep_rows, joined = [], []
        first_row_of_id: dict[Any, int] = {}
        first_row_of_file: dict[str, int] = {}
        for row, key in enumerate(table[key_col].tolist()):
            key_stem = file_stem(key) if file_col else key
            hit = None
            if key:
                hit = lookup.get(key) or lookup.get(os.path.normpath(key)) or lookup.get(key_stem)
            sample_id = ids[row] if ids is not None else key_stem
            if hit is not None and hit[0] != split:
                continue
            if hit is None and has_splits and split != "train":
                continue
            problem: tuple[str, str] | None = None
            if ids is not None and sample_id is None:
                problem = ("bad_id", f"catalogue row {row} has a blank {id_col}")
            elif not key:
                problem = ("missing", f"catalogue row {row} has a blank {key_col}")
            elif ids is not None and sample_id in first_row_of_id:
                problem = (
                    "duplicate",
                    f"catalogue row {row} repeats {id_col or key_col} {sample_id!r} of row "
                    f"{first_row_of_id[sample_id]}",
                )
            elif hit is not None and hit[1].name in first_row_of_file:
                problem = (
                    "duplicate",
                    f"catalogue row {row} names {hit[1].name}, already used by row "
                    f"{first_row_of_file[hit[1].name]}",
                )
            elif hit is None:
                problem = (
                    "missing",
                    f"catalogue row {row} names {key!r}, which is not in {cfg.path}",
                )
            if problem is None:
                first_row_of_id[sample_id] = row
                first_row_of_file[hit[1].name] = row
                found = hit[1]
                sample = FolderSample(
                    name=found.name,
                    id=sample_id if ids is not None else found.id,
                    paths=found.paths,
                    band_set=found.band_set,
                    problem=found.problem,
                )
            else:
                sample = FolderSample(
                    name=hit[1].name if hit else f"catalogue row {row}",
                    id=sample_id,
                    paths=(),
                    problem=problem,
                )
            keep_rows.append(row)
            joined.append(sample)
        unlisted = len(by_split[split]) - sum(1 for s in joined if s.paths)
        if unlisted > 0:
            log.info(
                "%d files in %s [%s] are not in the catalogue: left out", unlisted, cfg.path, split
            )
        drop = {key_col} | ({id_col} if id_col else set())
        names = (
            list(cfg.columns)
            if cfg.columns is not None
            else [c for c in table.columns if c not in drop]
        )
        subset = table.iloc[keep_rows]
        self.catalogue = {c: subset[c].to_numpy() for c in names}
        if not joined:
            raise ValueError(f"catalogue {cfg.catalogue} matches no file in {cfg.path} [{split}]")
        return joined

    def __len__(self) -> int:
        return len(self.samples)

    def fetch(self, indices: Sequence[int]) -> Rows:
        picked = [self.samples[i] for i in indices]
        return Rows(
            names=[s.name for s in picked],
            ids=[s.id for s in picked],
            catalogue={k: v[list(indices)] for k, v in self.catalogue.items()},
            payloads=picked,
        )

    def decode(self, sample: FolderSample, name: str) -> np.ndarray:
        if sample.problem is not None:
            raise SkipSample(*sample.problem)
        if sample.band_set:
            return read_band_files(sample.paths, self.max_pixels, self.min_side)
        return read_file(sample.paths[0], self.max_pixels, self.min_side)


# ------------------------------------------------------------------- synthetic source


def _simulate():
    try:
        from astropt import simulate
    except ImportError as exc:
        raise ImportError(
            "on-the-fly synthetic data needs astropt.simulate (the survey simulator), which "
            f"could not be imported ({exc}); point data.path at a prepared survey folder instead"
        ) from exc
    return simulate


@dataclass
class SyntheticSource:
    """The survey simulator rendered on the fly, one galaxy per index.

    Galaxy ``i`` depends only on ``(synthetic_seed, i)``. Splits are
    contiguous index ranges of the ``synthetic_n`` galaxies: train first, then
    validation (``synthetic_val_fraction``), then test
    (``synthetic_test_fraction``). The image is the survey's colour JPEG
    rendering (uint8 RGB = z, r, g) before compression, or the float grz fluxes
    in nanomaggies when ``image_column`` is ``"flux_grz"``.
    """

    cfg: DataConfig
    split: str
    max_samples: int | None
    side: int = field(init=False)
    start: int = field(init=False)
    n: int = field(init=False)

    def __post_init__(self) -> None:
        _simulate()  # fail at construction, not inside a worker
        cfg = self.cfg
        self.side = cfg.synthetic_image_size or cfg.image_size or 64
        sizes = synthetic_split_sizes(cfg)
        starts = {
            "train": 0,
            "validation": sizes["train"],
            "test": sizes["train"] + sizes["validation"],
        }
        self.start, self.n = starts[self.split], sizes[self.split]
        if self.max_samples is not None:
            self.n = min(self.n, self.max_samples)
        self.float_bands = cfg.image_column == "flux_grz"

    def __len__(self) -> int:
        return self.n

    def fetch(self, indices: Sequence[int]) -> Rows:
        simulate = _simulate()
        images, ids, labels = [], [], []
        for i in indices:
            index = self.start + int(i)
            rgb, flux, lab = simulate.make_stamps(1, self.side, self.cfg.synthetic_seed, index)
            images.append(("array", flux[0] if self.float_bands else rgb[0].transpose(2, 0, 1)))
            lab = {k: np.asarray(v) for k, v in lab.items()}
            ids.append(lab.pop("dr8_id").item() if "dr8_id" in lab else index)
            labels.append(lab)
        wanted = (
            self.cfg.columns if self.cfg.columns is not None else list(labels[0]) if labels else []
        )
        catalogue = {k: np.concatenate([lab[k].reshape(-1) for lab in labels]) for k in wanted}
        names = [
            f"synthetic galaxy {self.start + int(i)} (seed {self.cfg.synthetic_seed})"
            for i in indices
        ]
        return Rows(names=names, ids=ids, catalogue=catalogue, payloads=images)

    def decode(self, payload: Any, name: str) -> np.ndarray:
        return payload[1]


def guess_source(path: str) -> str:
    """The data source for a path: a survey folder (``survey.json``) or ``""`` is
    ``synthetic``, parquet/arrow files or a Hub dataset name ``hf``, other folders ``folder``."""
    if not path:
        return "synthetic"
    p = Path(path)
    if (p / "survey.json").is_file():
        return "synthetic"
    if p.exists():
        parquet_like = any(p.rglob("*.parquet")) or any(p.rglob("*.arrow")) if p.is_dir() else True
        return "hf" if parquet_like else "folder"
    return "hf"  # a Hub dataset name
