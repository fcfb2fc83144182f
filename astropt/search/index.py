"""A nearest-neighbour index of an embedding export (faiss), saved beside it.

``astropt index emb.parquet`` writes ``emb.index/``::

    emb.index/index.faiss     the faiss index (row positions of the export as its ids)
    emb.index/ids.npy         the export's ids in row order
    emb.index/transform.npz   per-dimension mean and scale applied before normalising
    emb.index/identity.json   what it was built from: rows, width, a hash of the ids,
                              the export's model fingerprint, layer, pool, checkpoint,
                              creation time and parts; the index kind and its settings

Similarity is the cosine of the embeddings: every vector is normalised to unit
length and faiss searches by inner product; a distance is ``1 - cosine``,
between 0 and 2. ``standardise=True`` first centres and scales each dimension
with the export's own mean and standard deviation; it is off by default: on the
quickstart survey's validation split it left the neighbours' class agreement
unchanged and halved the anomaly precision (docs/search.md).

Up to ``exact_max_rows`` rows the index is exact (``IndexFlatIP``); above, it is
approximate: IVF by default (``IndexIVFFlat``, its coarse quantiser trained on
a seeded sample) or HNSW (``IndexHNSWFlat``, no training; slower to build). The export is read one part
at a time (a parquet part, or a slice of a single parquet file), so building
holds one part plus the index itself; a ``torchrun``-sharded export is read
shard by shard with each row's ``_position``, which becomes its id in the
index, so results follow the split's order exactly as :func:`read_embeddings`
merges it.

Opening an index checks it against the export as it is now: a rebuilt or
replaced export (other ids, other model, other layer, other parts) makes the
index *stale*, and it is refused with one line saying what changed.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from astropt.export import POSITION, read_manifest, read_table
from astropt.io import atomic_write, atomic_write_text
from astropt.options import Command, ConfigError, run_command

INDEX_FORMAT = "astropt-index/1"
#: Exact search up to this many rows; an approximate index above.
EXACT_MAX_ROWS = 100_000
#: Rows read (and added to the index) at a time from a plain parquet file.
BATCH_ROWS = 16384
#: Rows kept for the IVF quantiser's training and the isolation forest.
SAMPLE_ROWS = 65536

IndexKind = Literal["auto", "exact", "hnsw", "ivf"]


class SearchError(ConfigError):
    """Bad input to a search command (unknown id, stale index, mismatched model, empty export):
    one line, exit status 2, like a bad option."""


# --------------------------------------------------------------------------- reading
def index_path(export: str | Path) -> Path:
    """Where the index of ``export`` lives: ``emb.parquet`` -> ``emb.index`` beside it."""
    export = Path(export)
    stem = export.name[: -len(".parquet")] if export.name.endswith(".parquet") else export.name
    return export.with_name(f"{stem}.index")


def _check_export(export: Path) -> dict | None:
    """The manifest (None for a plain parquet file); one clear line for what cannot be indexed."""
    if not export.exists():
        raise SearchError(f"{export} does not exist")
    if export.is_file():
        if pq.ParquetFile(export).metadata.num_rows == 0:
            raise SearchError(f"{export} is an empty export (no rows): nothing to index")
        return None
    manifest = read_manifest(export)
    if manifest is None:
        raise SearchError(f"{export} is neither a parquet file nor an embedding export folder")
    if not manifest.get("complete"):
        raise SearchError(
            f"{export} is an unfinished export: run the same export command again to finish it"
        )
    return manifest


def _pieces(export: Path, manifest: dict | None) -> list[tuple[Path, bool]]:
    """``(parquet file, carries _position)`` of every part, shard after shard."""
    if manifest is None:
        return [(export, False)]
    if "shards" not in manifest:
        return [(export / part["file"], False) for part in manifest["parts"]]
    pieces: list[tuple[Path, bool]] = []
    for shard in manifest["shards"]:
        shard_manifest = read_manifest(export / shard) or {"parts": []}
        pieces += [(export / shard / part["file"], True) for part in shard_manifest["parts"]]
    return pieces


def _as_matrix(column: pa.ChunkedArray | pa.Array, dtype=np.float32) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(array.type):
        flat = array.flatten().to_numpy(zero_copy_only=False)
        return flat.astype(dtype, copy=False).reshape(len(array), array.type.list_size)
    return np.asarray(array.to_pylist(), dtype=dtype)  # variable-length lists


def iter_vectors(
    export: str | Path, column: str = "embedding", batch_rows: int = BATCH_ROWS, dtype=np.float32
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(positions (b,) int64, vectors (b, d) dtype)`` of an export, one part at a time.

    Positions are rows of the export in the order :func:`read_embeddings` returns
    them (a sharded export's ``_position``; else the running row number). A plain
    parquet file is read in slices of ``batch_rows``. Memory: one part or slice.
    ``column``: any fixed-size list column (``embedding``, ``thumbnail`` as uint8).
    """
    export = Path(export)
    manifest = _check_export(export)
    offset = 0
    for piece, positioned in _pieces(export, manifest):
        handle = pq.ParquetFile(piece)
        if column not in handle.schema_arrow.names:
            raise SearchError(f"{export} has no {column!r} column")
        columns = [column, POSITION] if positioned else [column]
        for batch in handle.iter_batches(batch_size=batch_rows, columns=columns):
            vectors = _as_matrix(batch.column(column), dtype)
            if positioned:
                positions = batch.column(POSITION).to_numpy().astype(np.int64)
            else:
                positions = np.arange(offset, offset + len(vectors), dtype=np.int64)
            offset += len(vectors)
            yield positions, vectors


def column_names(export: str | Path) -> list[str]:
    """The export's column names (a sharded export's ``_position`` left out)."""
    export = Path(export)
    pieces = _pieces(export, _check_export(export))
    if not pieces:
        raise SearchError(f"{export} is an empty export (no rows)")
    return [name for name in pq.read_schema(pieces[0][0]).names if name != POSITION]


def read_ids(export: str | Path) -> np.ndarray:
    """The export's ids in row order (sharded exports merged as :func:`read_table` does)."""
    export = Path(export)
    _check_export(export)
    return read_table(export, columns=["id"]).column("id").to_numpy(zero_copy_only=False)


def ids_digest(ids: np.ndarray) -> str:
    """A hash of the ids in order (tells a re-ordered or changed export apart)."""
    digest = hashlib.sha1(str(np.asarray(ids).dtype.kind).encode())
    for chunk in np.array_split(np.asarray(ids), max(1, len(ids) // 65536)):
        digest.update("\x1f".join(map(str, chunk.tolist())).encode())
    return digest.hexdigest()


def export_identity(export: str | Path, ids: np.ndarray | None = None) -> dict:
    """What an index must match: rows, ids hash, model fingerprint, layer, pool, parts."""
    export = Path(export)
    manifest = _check_export(export)
    ids = read_ids(export) if ids is None else ids
    if len(ids) == 0:
        raise SearchError(f"{export} is an empty export (no rows): nothing to index")
    identity = {"rows": int(len(ids)), "ids_sha1": ids_digest(ids)}
    if manifest is None:
        stat = export.stat()
        identity.update(model=None, layer=None, pool=None, checkpoint=None, kind=None)
        identity["file"] = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        return identity
    settings, meta = manifest.get("settings", {}), manifest.get("meta", {})
    parts = [(str(p), p.stat().st_size) for p, _ in _pieces(export, manifest)]
    identity.update(
        model=settings.get("model"),
        layer=settings.get("layer"),
        pool=settings.get("pool"),
        kind=settings.get("kind"),
        checkpoint=meta.get("checkpoint"),
        created=meta.get("created"),
        parts_sha1=hashlib.sha1(json.dumps([(Path(n).name, s) for n, s in parts]).encode())
        .hexdigest(),
    )  # fmt: skip
    return identity


# --------------------------------------------------------------------------- transform
@dataclass
class Transform:
    """Per-dimension centring and scaling, then unit length: ``(n, d)`` -> ``(n, d)`` float32."""

    mean: np.ndarray  # (d,) float32
    scale: np.ndarray  # (d,) float32, 1 where a dimension does not vary

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        x = (np.asarray(vectors, dtype=np.float32) - self.mean) / self.scale
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return np.ascontiguousarray(x / np.maximum(norm, 1e-12), dtype=np.float32)


class _Moments:
    """Running per-dimension mean and variance (Chan's parallel update, float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        x = x.astype(np.float64)
        n, mean = len(x), x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        if self.mean is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.n * n / total
        self.n = total

    def transform(self, standardise: bool) -> Transform:
        d = len(self.mean)
        if not standardise:
            return Transform(np.zeros(d, np.float32), np.ones(d, np.float32))
        std = np.sqrt(self.m2 / max(self.n - 1, 1))
        scale = np.where(std > 1e-12, std, 1.0)
        return Transform(self.mean.astype(np.float32), scale.astype(np.float32))


class _Reservoir:
    """A seeded uniform sample of ``size`` rows from a stream of batches (reservoir sampling)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.rng = size, np.random.default_rng(seed)
        self.rows: np.ndarray | None = None
        self.seen = 0

    def update(self, x: np.ndarray) -> None:
        if self.rows is None:
            self.rows = np.empty((self.size, x.shape[1]), np.float32)
        take = min(len(x), max(0, self.size - self.seen))
        self.rows[self.seen : self.seen + take] = x[:take]
        rest = np.arange(take, len(x))
        if len(rest):
            slots = self.rng.integers(0, self.seen + rest + 1)  # slot for row seen+j
            keep = slots < self.size
            self.rows[slots[keep]] = x[rest[keep]]  # later rows overwrite earlier, as in order
        self.seen += len(x)

    def sample(self) -> np.ndarray:
        return self.rows[: min(self.size, self.seen)]


# --------------------------------------------------------------------------- building
def _faiss():
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - a dependency of the package
        raise SearchError("faiss is not installed: pip install faiss-cpu") from error
    return faiss


def choose_kind(kind: str, rows: int, exact_max_rows: int = EXACT_MAX_ROWS) -> str:
    """``"auto"`` is exact up to ``exact_max_rows`` rows, else IVF (bench/search.py: on one
    CPU thread it builds several times faster than HNSW at a recall@10 above 0.95)."""
    if kind == "auto":
        return "exact" if rows <= exact_max_rows else "ivf"
    if kind not in ("exact", "hnsw", "ivf"):
        raise SearchError(f"index kind must be auto, exact, hnsw or ivf, got {kind!r}")
    return kind


def _new_index(kind: str, dim: int, rows: int, settings: dict, sample: np.ndarray):
    """An empty faiss index of ``kind`` taking ids (row positions); IVF trained on ``sample``."""
    faiss = _faiss()
    if kind == "exact":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, settings["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = settings["ef_construction"]
        inner.hnsw.efSearch = settings["ef_search"]
        return faiss.IndexIDMap2(inner)
    quantiser = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantiser, dim, settings["nlist"], faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    index.nprobe = settings["nprobe"]
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct(position)
    return index


def index_settings(kind: str, rows: int, **given) -> dict:
    """Settings of an index of ``kind`` over ``rows`` rows (defaults fill what is not given)."""
    if kind == "hnsw":
        defaults = {"hnsw_m": 16, "ef_construction": 40, "ef_search": 64}
    elif kind == "ivf":
        nlist = int(max(1, min(rows // 39, round(4 * np.sqrt(rows)))))
        defaults = {"nlist": nlist, "nprobe": max(1, min(nlist, 32))}
    else:
        defaults = {}
    return {k: (given[k] if given.get(k) is not None else v) for k, v in defaults.items()}


def build_index(
    export: str | Path,
    *,
    kind: IndexKind = "auto",
    standardise: bool = False,
    exact_max_rows: int = EXACT_MAX_ROWS,
    out: str | Path | None = None,
    seed: int = 0,
    progress: bool = False,
    **settings,
) -> Path:
    """Index every row of ``export``; write the index folder (default :func:`index_path`).

    Two passes over the export, one part at a time: the first gathers the
    per-dimension moments (and a seeded sample for an IVF quantiser), the
    second adds the transformed vectors. ``settings``: ``hnsw_m``,
    ``ef_construction``, ``ef_search`` (HNSW) or ``nlist``, ``nprobe`` (IVF).
    Returns the index folder.
    """
    export = Path(export)
    out = index_path(export) if out is None else Path(out)
    ids = read_ids(export)
    identity = export_identity(export, ids)
    rows = identity["rows"]
    kind = choose_kind(kind, rows, exact_max_rows)
    params = index_settings(kind, rows, **settings)
    start = time.perf_counter()

    moments, reservoir = _Moments(), _Reservoir(SAMPLE_ROWS, seed)
    for _, vectors in iter_vectors(export):
        moments.update(vectors)
        if kind == "ivf":
            reservoir.update(vectors)
    if moments.mean is None:
        raise SearchError(f"{export} is an empty export (no rows): nothing to index")
    transform = moments.transform(standardise)
    dim = len(transform.mean)
    sample = transform(reservoir.sample()) if kind == "ivf" else None
    index = _new_index(kind, dim, rows, params, sample)
    added = 0
    for positions, vectors in iter_vectors(export):
        index.add_with_ids(transform(vectors), positions)
        added += len(positions)
        if progress:
            print(f"\rindexed {added}/{rows}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    if added != rows:
        raise SearchError(f"{export} changed while it was indexed ({added} rows, ids say {rows})")

    record = {
        "format": INDEX_FORMAT,
        "export": identity,
        "dim": dim,
        "index": {"kind": kind, "metric": "cosine", "standardise": standardise, **params},
        "seconds": round(time.perf_counter() - start, 3),
    }
    out.mkdir(parents=True, exist_ok=True)
    faiss = _faiss()
    atomic_write(out / "index.faiss", lambda tmp: faiss.write_index(index, tmp))
    atomic_write(out / "ids.npy", lambda tmp: np.save(open(tmp, "wb"), ids, allow_pickle=True))
    atomic_write(
        out / "transform.npz",
        lambda tmp: np.savez(open(tmp, "wb"), mean=transform.mean, scale=transform.scale),
    )
    atomic_write_text(out / "identity.json", json.dumps(record, indent=1))  # written last
    return out


# --------------------------------------------------------------------------- opening
@dataclass
class Neighbours:
    """The ``k`` nearest rows of one query, nearest first."""

    positions: np.ndarray  # (k,) int64 rows of the export
    ids: np.ndarray  # (k,) their ids
    distances: np.ndarray  # (k,) float32, 1 - cosine


@dataclass
class SearchIndex:
    """An open index and the export it belongs to (see :func:`open_index`)."""

    export: Path
    path: Path
    index: object  # faiss index
    ids: np.ndarray  # (n,) export ids in row order
    transform: Transform
    record: dict  # identity.json

    @property
    def rows(self) -> int:
        return len(self.ids)

    @property
    def kind(self) -> str:
        return self.record["index"]["kind"]

    def position_of(self, key) -> int:
        """The row of the id ``key`` (given as it is stored, or as text); SearchError if unknown."""
        return int(self.positions_of([key])[0])

    def positions_of(self, keys) -> np.ndarray:
        lookup = self._lookup()
        out = []
        for key in keys:
            position = lookup.get(_id_key(key))
            if position is None:
                example = ", ".join(map(str, self.ids[:3].tolist()))
                raise SearchError(
                    f"id {key!r} is not in {self.export} ({self.rows} galaxies; ids look like "
                    f"{example})"
                )
            out.append(position)
        return np.asarray(out, dtype=np.int64)

    def _lookup(self) -> dict:
        if not hasattr(self, "_by_id"):
            self._by_id = {_id_key(key): i for i, key in enumerate(self.ids.tolist())}
        return self._by_id

    def vectors(self, positions) -> np.ndarray:
        """The indexed (transformed, unit) vectors of rows ``positions``: ``(m, d)`` float32."""
        return np.stack([self.index.reconstruct(int(p)) for p in positions])

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(positions (m, k) int64, distances (m, k) float32)`` of transformed unit ``queries``.

        Missing neighbours (an approximate index that found fewer) are -1 with distance inf.
        """
        k = max(1, min(int(k), self.rows))
        similarity, positions = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        # Rounding can put a cosine a hair above 1: distances are clipped at 0.
        distances = np.maximum(1.0 - similarity, 0.0).astype(np.float32)
        distances[positions < 0] = np.inf
        return positions.astype(np.int64), distances

    def neighbours_of_rows(self, positions, k: int) -> list[Neighbours]:
        """The ``k`` nearest *other* rows of each row in ``positions``."""
        positions = np.asarray(positions, dtype=np.int64)
        found, distances = self.search_vectors(self.vectors(positions), k + 1)
        out = []
        for own, row, dist in zip(positions, found, distances):
            keep = (row != own) & (row >= 0)
            row, dist = row[keep][:k], dist[keep][:k]
            out.append(Neighbours(row, self.ids[row], dist))
        return out

    def neighbours_of_vectors(self, raw_vectors: np.ndarray, k: int) -> list[Neighbours]:
        """The ``k`` nearest rows of each raw (untransformed) embedding ``(m, d)``."""
        raw_vectors = np.atleast_2d(np.asarray(raw_vectors, dtype=np.float32))
        if raw_vectors.shape[1] != len(self.transform.mean):
            raise SearchError(
                f"query vectors have {raw_vectors.shape[1]} values, the index "
                f"{len(self.transform.mean)}: they come from another model or layer"
            )
        found, distances = self.search_vectors(self.transform(raw_vectors), k)
        out = []
        for row, dist in zip(found, distances):
            keep = row >= 0
            out.append(Neighbours(row[keep], self.ids[row[keep]], dist[keep]))
        return out


def _id_key(key) -> str:
    """Ids compare as text, so ``--id 1000007`` finds the int64 id 1000007."""
    if isinstance(key, bytes):
        key = key.decode()
    if isinstance(key, (float, np.floating)) and float(key).is_integer():
        key = int(key)
    return str(key.item() if isinstance(key, np.generic) else key)


def _stale_reasons(built: dict, now: dict) -> list[str]:
    names = {
        "rows": "rows",
        "ids_sha1": "ids",
        "model": "model",
        "layer": "layer",
        "pool": "pool",
        "kind": "export kind",
        "created": "export time",
        "parts_sha1": "parts",
        "file": "file size or time",
    }
    reasons = []
    for key, name in names.items():
        if built.get(key) != now.get(key):
            if key in ("rows", "model", "layer", "pool", "kind", "created"):
                reasons.append(f"{name} {built.get(key)!r} -> {now.get(key)!r}")
            else:
                reasons.append(f"{name} differ")
    return reasons


def open_index(export: str | Path, path: str | Path | None = None, build: bool = False):
    """The index of ``export`` (default folder :func:`index_path`), checked against the export.

    Raises :class:`SearchError` when there is none (unless ``build``: then it is
    built) or when it is stale (the export changed since: rows, ids, model,
    layer, pool or parts differ).
    """
    export = Path(export)
    _check_export(export)
    path = index_path(export) if path is None else Path(path)
    record_file = path / "identity.json"
    if not record_file.is_file():
        if not build:
            raise SearchError(f"{export} has no index at {path}: run `astropt index {export}`")
        build_index(export, out=path)
    record = json.loads(record_file.read_text())
    if record.get("format") != INDEX_FORMAT:
        raise SearchError(f"{path} is not an astropt index (format {record.get('format')!r})")
    ids = np.load(path / "ids.npy", allow_pickle=True)
    now = export_identity(export)
    reasons = _stale_reasons(record["export"], now)
    if reasons:
        raise SearchError(
            f"stale index {path}: the export changed since it was built ({'; '.join(reasons)}); "
            f"rebuild it with `astropt index {export}`"
        )
    with np.load(path / "transform.npz") as saved:
        transform = Transform(saved["mean"], saved["scale"])
    index = _faiss().read_index(str(path / "index.faiss"))
    return SearchIndex(export, path, index, ids, transform, record)


# --------------------------------------------------------------------------- command line
@dataclass
class IndexOptions:
    """Options of ``astropt index``."""

    export: str  # embedding export (folder or parquet file)
    out: str | None = None  # index folder (default: beside the export, emb.parquet -> emb.index)
    kind: IndexKind = "auto"  # auto: exact up to exact_max_rows rows, else ivf
    exact_max_rows: int = EXACT_MAX_ROWS  # largest export searched exactly by kind=auto
    standardise: bool = False  # centre and scale each dimension before the cosine
    hnsw_m: int | None = None  # HNSW links per node (default 16)
    ef_construction: int | None = None  # HNSW build breadth (default 40)
    ef_search: int | None = None  # HNSW search breadth (default 64)
    nlist: int | None = None  # IVF cells (default 4 sqrt(rows))
    nprobe: int | None = None  # IVF cells searched per query (default 32)
    seed: int = 0  # seed of the IVF training sample
    threads: int | None = None  # faiss threads (None: all cores)
    progress: bool = True  # print rows indexed


def set_threads(threads: int | None) -> None:
    if threads is not None:
        _faiss().omp_set_num_threads(int(threads))


def run_index(opts: IndexOptions) -> int:
    """Build the index of an export and say what was built."""
    set_threads(opts.threads)
    params = {
        k: getattr(opts, k) for k in ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe")
    }
    out = build_index(
        opts.export, kind=opts.kind, standardise=opts.standardise,
        exact_max_rows=opts.exact_max_rows, out=opts.out, seed=opts.seed,
        progress=opts.progress, **params,
    )  # fmt: skip
    record = json.loads((out / "identity.json").read_text())
    print(
        f"indexed {record['export']['rows']} galaxies of width {record['dim']} "
        f"({record['index']['kind']}, cosine) in {record['seconds']:.1f} s -> {out}",
        file=sys.stderr,
    )
    return 0


COMMAND = Command(
    IndexOptions,
    run_index,
    "Build a nearest-neighbour index (faiss, cosine) of an embedding export, saved beside it "
    "(emb.parquet -> emb.index) with the export's identity, so a stale index is refused.",
    positional=("export",),
    examples=("astropt index emb.parquet", "astropt index emb.parquet --kind hnsw"),
)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, argv, "astropt index")


__all__ = [
    "SearchError",
    "SearchIndex",
    "Neighbours",
    "build_index",
    "open_index",
    "index_path",
    "iter_vectors",
    "read_ids",
    "export_identity",
]
