"""Labelled galaxies for finetuning: label sources, stratified splits, label subsets, loaders.

Labels come from one of three places (``FinetuneConfig.labels``):

* ``column``: catalogue column(s) of any data source (a survey's truth columns,
  a parquet column, a folder's CSV catalogue);
* ``folders``: a folder with one sub-folder per class (``DIR/spiral/*.jpg``,
  ``DIR/elliptical/*.png``); classes are the sub-folder names, sorted;
* ``galaxy10``: the Galaxy10 DECaLS HDF5 file as distributed (``images``
  uint8 ``(N, 256, 256, 3)``, ``ans`` int 0-9), read with ``h5py``.

The labelled *pool* is every galaxy of the source splits named in
``source_splits`` whose label is present: by default a survey's held-out
``validation`` and ``test`` splits, never the ``train`` split that pretraining
reads. :func:`pretraining_overlap` counts the labelled galaxies that the
trunk's pretraining run read anyway (the trainer refuses a run with any, or
warns naming the count). :func:`make_splits` cuts the pool into
fixed train/validation/test parts, stratified by class (by quantile bins of
the first target for regression), from ``split_seed`` alone, so every run of a
sweep tests on the same galaxies; with ``split=dev`` the test part is set
aside and the rest is cut again the same way, its last part (``dev``) scored
instead. :func:`label_subset` then keeps ``label_fraction`` (or ``n_labels``)
of the training part, stratified, drawn from the run's ``seed``: at least one
galaxy per class; the validation part keeps the same share
(``val_labels=fraction``). :func:`choose_galaxies` does all of this.

Batches are ordinary :class:`~astropt.data.Batch` objects from
:func:`astropt.data.map_loader` over a :class:`LabelledSubset`; the label of
each galaxy rides in ``batch.catalogue[LABEL_KEY]``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from astropt.data import DataConfig, open_source
from astropt.data.decode import SkipSample
from astropt.data.sources import Rows
from astropt.simulate.spec import GALAXY10_CLASSES  # index = the file's ``ans``

log = logging.getLogger("astropt.finetune")

LABEL_KEY = "__label__"
HDF5_SUFFIXES = (".h5", ".hdf5")


# ------------------------------------------------------------------ sources
class Galaxy10Source:
    """The Galaxy10 DECaLS HDF5 file as a map source: ``images`` ``(N, H, W, 3)`` uint8
    and ``ans`` (class 0-9). The id of galaxy ``i`` is ``i`` (its row in the file).

    The file is opened lazily in each process (an open h5py handle cannot be
    sent to a DataLoader worker).
    """

    def __init__(self, path: str | os.PathLike):
        import h5py

        self.path = str(path)
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"Galaxy10 HDF5 file {self.path} not found")
        with h5py.File(self.path, "r") as handle:
            for name in ("images", "ans"):
                if name not in handle:
                    raise ValueError(
                        f"{self.path} has no {name!r} dataset: not a Galaxy10 DECaLS file "
                        f"(it has {sorted(handle)})"
                    )
            shape = handle["images"].shape
            if len(shape) != 4 or shape[-1] != 3:
                raise ValueError(f"{self.path}: images have shape {shape}, expected (N, H, W, 3)")
            self.labels = np.asarray(handle["ans"][:], dtype=np.int64)
        if len(self.labels) != shape[0]:
            raise ValueError(f"{self.path}: {shape[0]} images but {len(self.labels)} labels")
        self.n = shape[0]
        self._handle = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _handle=None)

    def __len__(self) -> int:
        return self.n

    def fetch(self, indices: Sequence[int]) -> Rows:
        indices = [int(i) for i in indices]
        return Rows(
            names=[f"{self.path} row {i}" for i in indices],
            ids=indices,
            catalogue={"ans": self.labels[indices]},
            payloads=indices,
        )

    def decode(self, payload: int, name: str) -> np.ndarray:
        if self._handle is None:
            import h5py

            self._handle = h5py.File(self.path, "r")
        try:
            image = np.asarray(self._handle["images"][payload])
        except OSError as error:
            raise SkipSample("corrupt", f"{name}: {error}") from None
        return image.transpose(2, 0, 1)


class PooledSource:
    """Several map sources read as one, in order (e.g. a survey's three splits)."""

    def __init__(self, sources: list[Any]):
        self.sources = sources
        self.offsets = np.cumsum([0] + [len(s) for s in sources])
        names = [set(getattr(s, "catalogue_names", lambda: [])()) for s in sources]
        self._names = set.intersection(*names) if names else set()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return k, int(index - self.offsets[k])

    def fetch(self, indices: Sequence[int]) -> Rows:
        located = [self.locate(int(i)) for i in indices]
        parts: dict[int, list[int]] = {}
        for k, local in located:
            parts.setdefault(k, []).append(local)
        fetched = {k: self.sources[k].fetch(local) for k, local in parts.items()}
        cursor = dict.fromkeys(fetched, 0)
        names, ids, payloads, order = [], [], [], []
        for k, _ in located:
            rows, j = fetched[k], cursor[k]
            names.append(rows.names[j])
            ids.append(rows.ids[j])
            payloads.append((k, rows.payloads[j]))
            order.append((k, j))
            cursor[k] += 1
        common = set.intersection(*(set(r.catalogue) for r in fetched.values()))
        catalogue = {
            c: np.asarray([fetched[k].catalogue[c][j] for k, j in order]) for c in sorted(common)
        }
        return Rows(names=names, ids=ids, catalogue=catalogue, payloads=payloads)

    def decode(self, payload: tuple[int, Any], name: str) -> np.ndarray:
        k, inner = payload
        return self.sources[k].decode(inner, name)


class LabelledSubset:
    """Galaxies ``indices`` of a map source with their ``labels`` (``(n,)`` or ``(n, T)``),
    which travel in each batch's ``catalogue[LABEL_KEY]``."""

    def __init__(self, source: Any, indices: np.ndarray, labels: np.ndarray):
        if len(indices) != len(labels):
            raise ValueError("one label per index")
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels)

    def __len__(self) -> int:
        return len(self.indices)

    def fetch(self, indices: Sequence[int]) -> Rows:
        picked = np.asarray(indices, dtype=np.int64)
        rows = self.source.fetch(self.indices[picked].tolist())
        rows.catalogue = dict(rows.catalogue, **{LABEL_KEY: self.labels[picked]})
        return rows

    def decode(self, payload: Any, name: str) -> np.ndarray:
        return self.source.decode(payload, name)


# ------------------------------------------------------------------ reading labels
@dataclass
class LabelledPool:
    """A map source with one label (row) per galaxy; ``classes`` for class labels."""

    source: Any
    indices: np.ndarray  # (n,) galaxy positions in ``source``
    labels: np.ndarray  # (n,) int classes, (n, T) float targets or vote counts
    ids: np.ndarray
    class_names: list[str] | None
    targets: list[str]
    label_text: str  # names the source in messages


def _catalogue_values(source: Any, columns: list[str], label: str) -> np.ndarray:
    """``(n, len(columns))`` catalogue values of every galaxy, without decoding images."""
    from astropt.data.sources import FolderSource, HFMapSource

    if isinstance(source, HFMapSource):
        table = source.ds.data
        absent = [c for c in columns if c not in table.column_names]
        if absent:
            raise ValueError(
                f"{label} has no column {absent[0]!r}; it has {sorted(table.column_names)}"
            )
        return np.stack(
            [
                np.asarray(table.column(c).to_numpy(zero_copy_only=False))[: len(source)]
                for c in columns
            ],
            axis=1,
        )
    if isinstance(source, FolderSource):
        absent = [c for c in columns if c not in source.catalogue]
        if absent:
            raise ValueError(
                f"{label}: the catalogue has no column {absent[0]!r}; it has "
                f"{sorted(source.catalogue)} (set data.catalogue to a CSV with the labels)"
            )
        return np.stack([np.asarray(source.catalogue[c]) for c in columns], axis=1)
    # Any other source (e.g. the simulator on the fly): read the rows in chunks.
    values = []
    for start in range(0, len(source), 256):
        rows = source.fetch(range(start, min(len(source), start + 256)))
        absent = [c for c in columns if c not in rows.catalogue]
        if absent:
            raise ValueError(
                f"{label} has no column {absent[0]!r}; it has {sorted(rows.catalogue)}"
            )
        values.append(np.stack([np.asarray(rows.catalogue[c]) for c in columns], axis=1))
    return np.concatenate(values) if values else np.zeros((0, len(columns)))


def _ids(source: Any) -> np.ndarray:
    from astropt.data.sources import FolderSource, HFMapSource

    if isinstance(source, PooledSource):
        return np.concatenate([_ids(s) for s in source.sources])
    if isinstance(source, FolderSource):
        return np.asarray([s.id for s in source.samples], dtype=object)
    if isinstance(source, HFMapSource):
        id_col = source.reader.id_column
        if id_col is not None:
            return np.asarray(source.ds.data.column(id_col).to_numpy(zero_copy_only=False))[
                : len(source)
            ]
        return np.arange(len(source))
    if isinstance(source, Galaxy10Source):
        return np.arange(len(source))
    return np.asarray(
        [
            i
            for s in range(0, len(source), 256)
            for i in source.fetch(range(s, min(len(source), s + 256))).ids
        ]
    )


def is_hdf5(path: str) -> bool:
    return str(path).lower().endswith(HDF5_SUFFIXES)


def label_kind(cfg) -> str:
    """``column``, ``folders`` or ``galaxy10``: where a finetune's labels come from."""
    if cfg.labels != "auto":
        return cfg.labels
    if is_hdf5(cfg.data.path):
        return "galaxy10"
    if cfg.data.source == "folder" and not cfg.label_columns:
        return "folders"
    return "column"


def _class_folders(root: str) -> list[str]:
    return sorted(
        e
        for e in os.listdir(root)
        if os.path.isdir(os.path.join(root, e)) and not e.startswith(".")
    )


def open_pool(cfg) -> LabelledPool:
    """The labelled pool a :class:`~astropt.finetune.FinetuneConfig` describes."""
    kind = label_kind(cfg)
    data = cfg.data
    if kind == "galaxy10":
        source = Galaxy10Source(data.path)
        labels = source.labels
        if labels.min() < 0 or labels.max() >= len(GALAXY10_CLASSES):
            raise ValueError(f"{data.path}: 'ans' holds values outside 0-9")
        everything = np.arange(len(source))
        return LabelledPool(
            source, everything, labels, everything, list(GALAXY10_CLASSES), ["galaxy10"], data.path
        )
    if kind == "folders":
        root = data.path
        if not os.path.isdir(root):
            raise FileNotFoundError(f"labels=folders: data.path {root!r} is not a folder")
        classes = _class_folders(root)
        if len(classes) < 2:
            raise ValueError(
                f"labels=folders needs one sub-folder per class in {root}; found {classes}"
            )
        sources, labels = [], []
        for k, name in enumerate(classes):
            sub = DataConfig(**dict(_fields(data), source="folder", path=os.path.join(root, name)))
            source, _ = open_source(sub, "train")
            sources.append(source)
            labels.append(np.full(len(source), k, dtype=np.int64))
        pooled = PooledSource(sources)
        return LabelledPool(
            pooled,
            np.arange(len(pooled)),
            np.concatenate(labels),
            _ids(pooled),
            classes,
            ["folders"],
            root,
        )
    columns = cfg.label_columns
    if not columns:
        raise ValueError(
            "no label_column given: name the catalogue column(s) holding the labels "
            "(e.g. label_column=galaxy10), or use labels=folders / a Galaxy10 .h5 file"
        )
    sources, values, texts = [], [], []
    for split in cfg.source_splits:
        try:
            source, text = open_source(data, split)
        except ValueError as error:
            if "not found" in str(error) and len(cfg.source_splits) > 1:
                log.info("source split %s absent: %s", split, error)
                continue
            raise
        if any(_same_source(source, s) for s in sources):
            continue  # a source without splits returns everything for each split
        sources.append(source)
        values.append(_catalogue_values(source, columns, text))
        texts.append(text)
    if not sources:
        raise ValueError(f"none of the splits {list(cfg.source_splits)} exist in {data.path}")
    pooled = PooledSource(sources) if len(sources) > 1 else sources[0]
    raw = np.concatenate(values)
    ids = _ids(pooled)
    return _pool_from_values(cfg, pooled, raw, ids, columns, "; ".join(texts))


def _same_source(a: Any, b: Any) -> bool:
    label_a, label_b = getattr(a, "label", None), getattr(b, "label", None)
    files_a = getattr(getattr(a, "ds", None), "cache_files", None)
    files_b = getattr(getattr(b, "ds", None), "cache_files", None)
    if files_a and files_a == files_b:
        return True
    samples_a, samples_b = getattr(a, "samples", None), getattr(b, "samples", None)
    if samples_a is not None and samples_a == samples_b:
        return True
    return label_a is not None and label_a == label_b


def _fields(cfg: DataConfig) -> dict:
    import dataclasses

    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _pool_from_values(
    cfg, source: Any, raw: np.ndarray, ids: np.ndarray, columns: list[str], text: str
) -> LabelledPool:
    """Labels from raw catalogue values: classes for classification, floats otherwise;
    galaxies with a missing (NaN / None) label are left out of the pool."""
    if cfg.head == "classification":
        column = raw[:, 0]
        missing = np.array([_is_missing(v) for v in column])
        keep = np.flatnonzero(~missing)
        values = column[keep]
        if values.dtype.kind == "b":
            values = values.astype(np.int64)
        classes = sorted(set(values.tolist()), key=_sort_key)
        index = {c: k for k, c in enumerate(classes)}
        labels = np.asarray([index[v] for v in values.tolist()], dtype=np.int64)
        names = [str(c) for c in classes]
        if columns[0] == "galaxy10" and all(isinstance(c, int) for c in classes):
            names = [
                GALAXY10_CLASSES[c] if 0 <= c < len(GALAXY10_CLASSES) else str(c) for c in classes
            ]
        if len(classes) < 2:
            raise ValueError(f"label_column {columns[0]!r} of {text} has fewer than two classes")
        if len(classes) > 1000:
            raise ValueError(
                f"label_column {columns[0]!r} has {len(classes)} distinct values: a regression "
                "target? set head=regression"
            )
    else:
        values = raw.astype(np.float64)
        keep = np.flatnonzero(np.isfinite(values).all(axis=1))
        labels = values[keep].astype(np.float32)
        names = None
    dropped = len(raw) - len(keep)
    if dropped:
        log.info("%d galaxies of %s have no label: left out", dropped, text)
    if cfg.max_labelled is not None:
        keep, labels = keep[: cfg.max_labelled], labels[: cfg.max_labelled]
    return LabelledPool(source, keep, labels, np.asarray(ids)[keep], names, columns, text)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(np.isnan(value))
    except TypeError:
        return False


def _sort_key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float, np.number)) else (1, 0, str(value))


# ------------------------------------------------------------------ splits
def strata(labels: np.ndarray, head: str, bins: int = 10) -> np.ndarray:
    """Stratum of each galaxy: its class, or its quantile bin of the first target."""
    if head == "classification":
        return np.asarray(labels, dtype=np.int64)
    first = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)[:, 0]
    edges = np.quantile(first, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, first, side="right")


def make_splits(
    strat: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Positions of each split (``train``, ``validation``, ``test``), stratified, sorted.

    Within every stratum the galaxies are shuffled by ``seed`` and the first
    ``round(test_fraction * n)`` go to test, the next ``round(val_fraction * n)``
    to validation; a stratum of one galaxy goes to train.
    """
    rng = np.random.default_rng([seed, 7])
    out: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for value in np.unique(strat):
        members = rng.permutation(np.flatnonzero(strat == value))
        n = len(members)
        n_test = int(round(test_fraction * n)) if n > 2 else 0
        n_val = int(round(val_fraction * n)) if n > 2 else 0
        out["test"].append(members[:n_test])
        out["validation"].append(members[n_test : n_test + n_val])
        out["train"].append(members[n_test + n_val :])
    return {k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in out.items()}


def label_subset(
    strat: np.ndarray,
    train: np.ndarray,
    seed: int,
    fraction: float = 1.0,
    n_labels: int | None = None,
) -> np.ndarray:
    """The training positions whose labels a run uses (sorted), stratified, at least one per
    stratum: ``n_labels`` of them, else ``fraction`` of ``train``."""
    if n_labels is None and fraction >= 1.0:
        return np.sort(train)
    groups = {v: train[strat[train] == v] for v in np.unique(strat[train])}
    total = len(train)
    wanted = min(total, n_labels if n_labels is not None else int(round(fraction * total)))
    wanted = max(wanted, len(groups))
    # Largest-remainder allocation of ``wanted`` over the strata, at least one each.
    shares = {v: wanted * len(g) / total for v, g in groups.items()}
    take = {v: max(1, int(np.floor(s))) for v, s in shares.items()}
    order = sorted(groups, key=lambda v: shares[v] - np.floor(shares[v]), reverse=True)
    i = 0
    while sum(take.values()) < wanted and i < 10 * len(order):
        v = order[i % len(order)]
        if take[v] < len(groups[v]):
            take[v] += 1
        i += 1
    rng = np.random.default_rng([seed, 11])
    picked = [rng.permutation(g)[: take[v]] for v, g in groups.items()]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def write_galaxy10_like(
    path: str | os.PathLike, n: int, image_size: int = 256, seed: int = 0, chunk: int = 256
) -> Path:
    """A file in the Galaxy10 DECaLS format (``images`` uint8 ``(n, S, S, 3)``, ``ans`` uint8)
    holding galaxies ``0 .. n-1`` of the built-in survey ``seed`` and their ``galaxy10``
    classes: runs the Galaxy10 recipe where the real file is absent (rendered in chunks of
    ``chunk`` galaxies, so memory stays flat)."""
    import h5py

    from astropt.simulate import make_stamps

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as handle:
        images = handle.create_dataset(
            "images",
            (n, image_size, image_size, 3),
            dtype=np.uint8,
            chunks=(1, image_size, image_size, 3),
        )
        ans = handle.create_dataset("ans", (n,), dtype=np.uint8)
        for start in range(0, n, chunk):
            count = min(chunk, n - start)
            rgb, _, labels = make_stamps(count, image_size, seed, start)
            images[start : start + count] = rgb
            ans[start : start + count] = labels["galaxy10"].astype(np.uint8)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------ the galaxies of one run
@dataclass
class RunGalaxies:
    """Positions (into a :class:`LabelledPool`) of the galaxies one run uses.

    ``train``: the labels trained on; ``validation``: the labels early stopping reads;
    ``scored``: the galaxies of the final score, the ``test`` part or (``split=dev``) the
    ``dev`` part; ``train_split``: the whole training part the labels were drawn from.
    """

    split: str  # "test" or "dev": which galaxies ``scored`` holds
    train: np.ndarray
    validation: np.ndarray
    scored: np.ndarray
    train_split: np.ndarray

    @property
    def labels_used(self) -> int:
        """Every label the run reads before its score: training plus validation."""
        return int(len(self.train) + len(self.validation))


def choose_galaxies(cfg, pool: LabelledPool) -> RunGalaxies:
    """The train / validation / scored galaxies of the run ``cfg`` over ``pool``."""
    strat = strata(pool.labels, cfg.head)
    parts = make_splits(strat, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    scored = parts["test"]
    if cfg.split == "dev":
        # The test galaxies are set aside before anything is chosen; the rest is cut again
        # with the same fractions (a different seed: not a subset of the test cut's parts).
        rest = np.sort(np.concatenate([parts["train"], parts["validation"]]))
        inner = make_splits(strat[rest], cfg.val_fraction, cfg.test_fraction, cfg.split_seed + 1)
        parts = {name: rest[positions] for name, positions in inner.items()}
        scored = parts["test"]
    train = label_subset(strat, parts["train"], cfg.seed, cfg.label_fraction, cfg.n_labels)
    validation = parts["validation"]
    share = len(train) / max(len(parts["train"]), 1)
    if cfg.val_labels == "fraction" and share < 1.0 and len(validation):
        validation = label_subset(strat, validation, cfg.seed + 1, share)
    return RunGalaxies(cfg.split, train, validation, scored, parts["train"])


# ------------------------------------------------------------------ disjoint from pretraining
def _run_config_of(init_from: str) -> dict | None:
    """The pretraining run config (``config.json`` with a ``data`` section) of a trunk spec,
    or None where none is recorded (Hub ids, AstroPT ckpt.pt, bare model folders)."""
    import json

    spec = init_from.strip()
    if not spec or spec.lower().startswith(("scratch", "none")):
        return None
    path = Path(spec)
    if not path.exists():
        return None
    folder = path if path.is_dir() else path.parent
    for candidate in (folder, folder.parent):  # a run folder, or a model folder inside one
        file = candidate / "config.json"
        if not file.is_file():
            continue
        try:
            values = json.loads(file.read_text())
        except ValueError:
            continue
        if isinstance(values, dict) and isinstance(values.get("data"), dict):
            if "label_column" in values:  # a finetune run: its trunk's pretraining counts
                return _run_config_of(str(values.get("init_from", "")))
            return values
    return None


def _dataset_key(data: DataConfig) -> str | None:
    """What identifies a dataset's galaxies: a synthetic survey by its seed (galaxy ``i``
    depends only on the seed and ``i``), anything else by its resolved local path."""
    import json

    if not data.path:
        return None
    path = Path(data.path)
    if not path.exists():
        return None
    survey = path / "survey.json"
    if survey.is_file():
        try:
            return f"synthetic survey seed {json.loads(survey.read_text())['seed']}"
        except (ValueError, KeyError):
            pass
    return str(path.resolve())


@dataclass
class Overlap:
    """Labelled galaxies that a trunk's pretraining run read (``count`` of ``pool_size``)."""

    count: int
    pool_size: int
    pretraining: str  # names the pretraining data
    examples: list

    def message(self) -> str:
        return (
            f"{self.count} of the {self.pool_size} labelled galaxies were in the trunk's "
            f"pretraining data ({self.pretraining}), e.g. ids {self.examples}"
        )


def pretraining_overlap(init_from: str, data: DataConfig, pool: LabelledPool) -> Overlap | None:
    """Count the galaxies of ``pool`` that the trunk ``init_from`` was pretrained on.

    The trunk's run folder records its data (``config.json``); pretraining reads its
    ``train`` split. Ids are compared when both name the same dataset (the same survey
    seed or local path). None when nothing can be checked (a Hub id, a bare model
    folder, a dataset that is not local).
    """
    import dataclasses

    run = _run_config_of(init_from)
    if run is None:
        return None
    names = {f.name for f in dataclasses.fields(DataConfig)}
    trunk_data = DataConfig(**{k: v for k, v in run["data"].items() if k in names})
    key = _dataset_key(trunk_data)
    if key is None or key != _dataset_key(data):
        return None
    source, text = open_source(trunk_data, "train")
    seen = {str(i) for i in _ids(source)}
    hits = [i for i in pool.ids.tolist() if str(i) in seen]
    return Overlap(len(hits), len(pool.ids), text, hits[:5])


def open_checked_pool(cfg) -> tuple[LabelledPool, int | None]:
    """The labelled pool of ``cfg`` and how many of its galaxies the trunk was pretrained on
    (None: not checkable). Any overlap stops the run (``pretraining_overlap=refuse``) or
    is logged as a warning naming the count (``warn``)."""
    from astropt.errors import UserError

    pool = open_pool(cfg)
    overlap = pretraining_overlap(cfg.init_from, cfg.data, pool)
    if overlap is None:
        if not cfg.init_from.strip().lower().startswith(("scratch", "none")):
            log.info(
                "%s records no pretraining data on this machine: overlap with the labelled "
                "galaxies not checked",
                cfg.init_from,
            )
        return pool, None
    if overlap.count:
        if cfg.pretraining_overlap == "refuse":
            raise UserError(
                overlap.message() + ": a test score on them would flatter the pretrained trunk. "
                "Label held-out galaxies (source_splits=validation,test, the default) or set "
                "pretraining_overlap=warn to run anyway"
            )
        log.warning("WARNING: %s; scores on them flatter the pretrained trunk", overlap.message())
    return pool, overlap.count
