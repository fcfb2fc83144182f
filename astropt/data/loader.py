"""Token batches from any source: sampling, workers, collation, resume, bad-input accounting.

Flow of one batch:

1. the main process picks the batch's sample indices and augmentations from
   ``(seed, epoch)`` alone (map sources) or reads an arrow batch of the rank's
   stream (streaming sources);
2. a DataLoader worker reads the rows, decodes each image, checks it, crops,
   augments and stacks the batch (8-bit images stay uint8, a quarter of the
   bytes of float32, until they reach the device), recording skipped samples;
3. the main process moves the stack to the target device (pinned on CUDA),
   scales it and makes tokens with :func:`astropt.tokens.images_to_tokens` in one
   call for the whole batch.

Because nothing random happens in a worker, the batches depend only on
``(seed, epoch, batch position)``, whatever the number of workers, and a
loader restored with :meth:`TokenLoader.load_state_dict` yields exactly the
batch an uninterrupted loader would have yielded next.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, get_worker_info
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import IterableDataset as TorchIterableDataset

from astropt.tokens import images_to_tokens

from .config import DataConfig, output_side
from .decode import (
    REASONS,
    BadSampleError,
    DataError,
    Prep,
    SkipSample,
    augment,
    conform,
    scale,
)
from .sources import (
    SPLITS,
    FolderSource,
    HFMapSource,
    Rows,
    SyntheticSource,
    TableReader,
    canonical_split,
    open_hf,
)

log = logging.getLogger("astropt.data")

#: How many samples the loader reads, at most, to find the image shape, and
#: how many failures in a row (with no success yet) stop a run.
PROBE_LIMIT = 256


class SkippedSampleWarning(UserWarning):
    """Issued the first time a sample is skipped for each reason."""


class Batch:
    """One batch of token sequences and what they came from.

    ``tokens``: ``(B, N, P*P*C)`` float32, per-patch normalised, in ``order``;
    ``mean``/``std``: ``(B, N, 1)`` per-patch statistics in scaled-pixel units
    (so ``tokens * (std + 1e-8) + mean`` gives the patches back); ``images``:
    ``(B, C, H, W)`` float32 scaled pixels after crop and augmentation, in the
    natural layout (``transpose_hw`` affects only the tokens). ``ids`` and each
    ``catalogue`` column have length ``B``. ``B`` can be below the requested
    batch size when samples were skipped.

    8-bit images are kept as uint8 until ``images`` is first read (a training
    step never reads them), and may be stored channels-last: call
    ``.contiguous()`` before ``.view()``.

    ``indices``: for map sources (local parquet, folders, the synthetic
    survey), each sample's position in the split (after ``max_samples``,
    before shuffling and sharding), so rows read by different ranks can be put
    back in the split's order; ``None`` for streams.
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        ids: list,
        catalogue: dict[str, np.ndarray],
        images: torch.Tensor,
        indices: list[int] | None = None,
    ) -> None:
        self.tokens = tokens
        self.mean = mean
        self.std = std
        self.ids = ids
        self.catalogue = catalogue
        self._images = images
        self.indices = indices

    @property
    def images(self) -> torch.Tensor:
        if self._images.dtype == torch.uint8:
            self._images = self._images.to(torch.float32).div_(255.0)
        return self._images

    @images.setter
    def images(self, value: torch.Tensor) -> None:
        self._images = value

    @property
    def inputs(self) -> torch.Tensor:
        """``(B, N-1, D)``: every token but the last (next-patch prediction inputs)."""
        return self.tokens[:, :-1]

    @property
    def targets(self) -> torch.Tensor:
        """``(B, N-1, D)``: every token but the first (next-patch targets)."""
        return self.tokens[:, 1:]

    @property
    def positions(self) -> torch.Tensor:
        """``(N-1,)`` LongTensor ``0..N-2``: sequence positions of ``inputs``."""
        return torch.arange(self.tokens.shape[1] - 1, device=self.tokens.device)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __repr__(self) -> str:
        return (
            f"Batch(tokens={tuple(self.tokens.shape)}, images={tuple(self._images.shape)}, "
            f"ids={self.ids[:3]}{'...' if len(self.ids) > 3 else ''}, "
            f"catalogue={list(self.catalogue)}, device={self.tokens.device})"
        )

    def to(self, device: str | torch.device, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device`` (ids and catalogue shared)."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(
            tokens=move(self.tokens),
            mean=move(self.mean),
            std=move(self.std),
            ids=self.ids,
            catalogue=self.catalogue,
            images=move(self._images),
            indices=self.indices,
        )


# ------------------------------------------------------------------ worker side


@dataclass(frozen=True)
class _TokenSpec:
    patch_size: int
    order: str
    transpose_hw: bool


def _buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty CPU tensor; in a DataLoader worker, one in shared memory.

    A worker's batch reaches the main process through shared memory: a tensor
    made there from the start is sent as it is, where an ordinary one is first
    copied (as torch's ``default_collate`` does for its batches).
    """
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


def _tokenize(
    images: torch.Tensor, spec: _TokenSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``images_to_tokens`` on a whole batch; uint8 batches are tokenised as integers.

    Per-patch normalisation does not depend on the pixel unit, so 8-bit
    values give the same tokens as their /255 scaling while skipping a full
    float pass (and a 4x larger gather); only mean and std are rescaled.
    """
    batch, chan, height, width = images.shape
    per_token = spec.patch_size * spec.patch_size * chan
    shape = (batch, height * width * chan // per_token, per_token)
    # In a worker, tokens are made straight into shared memory (see _buffer).
    in_worker = get_worker_info() is not None and images.device.type == "cpu"
    out = _buffer(shape, torch.float32) if in_worker else None
    tokens, mean, std = images_to_tokens(
        images, spec.patch_size, spec.order, spec.transpose_hw, out=out
    )
    if images.dtype == torch.uint8:
        mean, std = mean.div_(255.0), std.div_(255.0)
    return tokens, mean, std


@dataclass
class _RawBatch:
    """A stacked batch as it leaves a worker.

    ``images``: ``(B, C, H, W)`` uint8 (8-bit sources) or float32 (scaled),
    a view of a channels-last buffer. ``tokens``/``mean``/``std`` are filled in
    the worker when the target device is the CPU, else left for the main
    process to make on the device.
    """

    pos: int
    images: torch.Tensor
    ids: list
    catalogue: dict[str, np.ndarray]
    skipped: list[tuple[str, str, str]]
    read: int
    indices: list[int] | None = None
    tokens: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

    def pin_memory(self) -> _RawBatch:  # called by the DataLoader's pinning thread
        self.images = self.images.pin_memory()
        return self


def _keep(raw: Any) -> Any:
    return raw


def _assemble(
    source: Any,
    rows: Rows,
    augs: Any,
    prep: Prep,
    strict: bool,
    pos: int,
    spec: _TokenSpec | None,
    indices: tuple[int, ...] | None = None,
) -> _RawBatch:
    """Decode, check, crop, augment and stack one batch of rows (runs in a worker).

    ``indices``: the rows' positions in the split (map sources), kept for the good ones.
    """
    kept: list[int] = []
    arrays: list[np.ndarray] = []
    skipped: list[tuple[str, str, str]] = []
    for j, (name, payload) in enumerate(zip(rows.names, rows.payloads, strict=True)):
        try:
            array = conform(source.decode(payload, name), prep, name)
        except SkipSample as skip:
            if strict:
                raise BadSampleError(f"{name}: {skip.reason}: {skip.detail}") from None
            skipped.append((skip.reason, name, skip.detail))
            continue
        if augs is not None:
            array = augment(array, int(augs[j]))
        kept.append(j)
        arrays.append(array)
    chan, height, width = arrays[0].shape if arrays else (prep.shape or (0, 0, 0))
    # The buffer is channels-last: decoded JPEGs are (H, W, C) already, so each
    # copy below is contiguous, and the patch gather reads C-contiguous rows.
    # Pure 8-bit batches stay uint8 (a quarter of the bytes) until the device.
    eight_bit = bool(arrays) and all(a.dtype == np.uint8 for a in arrays)
    images = _buffer(
        (len(arrays), height, width, chan), torch.uint8 if eight_bit else torch.float32
    )
    stack = images.numpy()
    for i, array in enumerate(arrays):
        stack[i] = (array if eight_bit else scale(array, prep)).transpose(1, 2, 0)
    images = images.permute(0, 3, 1, 2)
    index = np.asarray(kept, dtype=np.intp)
    raw = _RawBatch(
        pos=pos,
        images=images,
        ids=[rows.ids[j] for j in kept],
        catalogue={k: v[index] for k, v in rows.catalogue.items()},
        skipped=skipped,
        read=len(rows.names),
        indices=None if indices is None else [indices[j] for j in kept],
    )
    if spec is not None and arrays:
        raw.tokens, raw.mean, raw.std = _tokenize(images, spec)
    return raw


@dataclass(frozen=True)
class _Key:
    """What a worker needs for one batch of a map source."""

    pos: int
    indices: tuple[int, ...]
    augs: tuple[int, ...] | None


@dataclass
class _EpochPlan:
    """Which samples a rank reads in an epoch, batch by batch, and how each is augmented.

    Epoch ``e``'s order is a permutation drawn from ``(seed, e)`` (or the
    natural order without shuffling), the same on every rank; rank ``r`` of
    ``W`` takes positions ``r, r+W, r+2W, ...`` so ranks are disjoint and
    together complete (less at most ``W-1`` samples with ``even_shards``).
    Sample ``i``'s augmentation in epoch ``e`` is entry ``i`` of a code array
    drawn from ``(seed, e)``: it depends on neither rank nor worker.
    """

    n: int
    batch_size: int
    shuffle: bool
    augment: bool
    seed: int
    rank: int
    world_size: int
    drop_last: bool
    even_shards: bool

    @property
    def per_rank(self) -> int:
        usable = self.n - self.n % self.world_size if self.even_shards else self.n
        return len(range(self.rank, usable, self.world_size))

    @property
    def num_batches(self) -> int:
        full, rest = divmod(self.per_rank, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def rank_indices(self, epoch: int) -> np.ndarray:
        if self.shuffle:
            # The trailing tag keeps this stream apart from the augmentation
            # codes' (NumPy seed sequences ignore trailing zeros, so a tag of 0
            # would not).
            order = np.random.default_rng([self.seed, epoch, 1]).permutation(self.n)
        else:
            order = np.arange(self.n)
        if self.even_shards:
            order = order[: self.n - self.n % self.world_size]
        return order[self.rank :: self.world_size]

    def aug_codes(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 2]).integers(0, 8, self.n, dtype=np.uint8)


class _BatchKeys(Sampler):
    """Yields the remaining batches of the current epoch as :class:`_Key` (main process)."""

    def __init__(self, plan: _EpochPlan) -> None:
        self.plan = plan
        self.epoch = 0
        self.start = 0

    def __iter__(self) -> Iterator[_Key]:
        plan = self.plan
        order = plan.rank_indices(self.epoch)
        codes = plan.aug_codes(self.epoch) if plan.augment else None
        for b in range(self.start, plan.num_batches):
            idx = order[b * plan.batch_size : (b + 1) * plan.batch_size]
            augs = tuple(codes[idx].tolist()) if codes is not None else None
            yield _Key(pos=b, indices=tuple(idx.tolist()), augs=augs)

    def __len__(self) -> int:
        return max(self.plan.num_batches - self.start, 0)


class _MapBatches(TorchDataset):
    """Map source -> one assembled batch per :class:`_Key`."""

    def __init__(self, source: Any, prep: Prep, strict: bool, spec: _TokenSpec | None) -> None:
        self.source, self.prep, self.strict, self.spec = source, prep, strict, spec

    def __getitem__(self, key: _Key) -> _RawBatch:
        rows = self.source.fetch(key.indices)
        return _assemble(
            self.source, rows, key.augs, self.prep, self.strict, key.pos, self.spec, key.indices
        )


class _StreamBatches(TorchIterableDataset):
    """A rank's ``datasets`` stream cut into batches, shared round-robin between workers.

    Every worker reads the rank's stream (cheap: arrow rows, no decoding) and
    decodes only batches ``start + worker, start + worker + W, ...``; the
    DataLoader returns worker results round-robin, so the batch sequence is the
    same for any worker count and resuming at batch ``start`` needs no saved
    stream state. Workers are not persistent here: a fresh worker sees the
    current ``epoch`` and ``start``.
    """

    def __init__(
        self,
        stream: Any,
        reader: TableReader,
        prep: Prep,
        strict: bool,
        batch_size: int,
        drop_last: bool,
        augment: bool,
        seed: int,
        rank: int,
        spec: _TokenSpec | None,
    ) -> None:
        self.stream, self.reader, self.prep, self.strict = stream, reader, prep, strict
        self.spec = spec
        self.batch_size, self.drop_last, self.augment = batch_size, drop_last, augment
        self.seed, self.rank = seed, rank
        self.epoch = 0
        self.start = 0

    def __iter__(self) -> Iterator[_RawBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self.stream.set_epoch(self.epoch)
        batches = self.stream.iter(batch_size=self.batch_size, drop_last_batch=self.drop_last)
        for g, table in enumerate(batches):
            if g < self.start or (g - self.start) % workers != worker:
                continue
            first = g * self.batch_size
            rows = self.reader.rows(table, range(first, first + table.num_rows))
            augs = None
            if self.augment:
                rng = np.random.default_rng([self.seed, self.epoch, self.rank, g, 3])
                augs = rng.integers(0, 8, table.num_rows)
            yield _assemble(self.reader, rows, augs, self.prep, self.strict, g, self.spec)


# ------------------------------------------------------------------------ main side


class TokenLoader:
    """Iterable of :class:`Batch`: the remaining batches of the current epoch, or
    every epoch forever with ``repeat=True``.

    ``state_dict()`` records the epoch and the number of batches consumed in it;
    a loader built with the same arguments and given that state yields the
    batch an uninterrupted loader would have yielded next. One iteration at a
    time: start a new ``for`` loop only after abandoning the previous one.

    ``num_samples``: samples this rank reads per epoch (``None`` for streams);
    ``batches_per_epoch`` likewise.
    """

    def __init__(
        self,
        *,
        dataset: _MapBatches | _StreamBatches,
        keys: _BatchKeys | None,
        cfg: DataConfig,
        split: str,
        label: str,
        batch_size: int,
        device: torch.device,
        repeat: bool,
        seed: int,
        rank: int,
        world_size: int,
        shuffle: bool,
    ) -> None:
        self.cfg = cfg
        self.split = split
        self.label = label
        self.batch_size = batch_size
        self.device = device
        self.repeat = repeat
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.num_samples: int | None = keys.plan.per_rank if keys is not None else None
        self.batches_per_epoch: int | None = keys.plan.num_batches if keys is not None else None
        self._dataset = dataset
        self._keys = keys
        self._pin = device.type == "cuda"
        self._spec = _TokenSpec(cfg.patch_size, cfg.order, cfg.transpose_hw)
        workers = cfg.num_workers
        self._loader = DataLoader(
            dataset,
            batch_size=None,
            sampler=keys,
            num_workers=workers,
            collate_fn=_keep,
            pin_memory=self._pin,
            persistent_workers=workers > 0 and keys is not None,
            prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
        )
        self._epoch = 0
        self._pos = 0
        self._counts: dict[str, int] = {}
        self._examples: dict[str, list[str]] = {}
        self._read = 0
        self._good = 0

    # -- iteration

    def __len__(self) -> int:
        if self.batches_per_epoch is None:
            raise TypeError("a streaming TokenLoader has no known length")
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        while True:
            start = self._pos
            if self._keys is not None:
                self._keys.epoch, self._keys.start = self._epoch, start
            else:
                self._dataset.epoch, self._dataset.start = self._epoch, start
            epoch_read = epoch_good = 0
            for raw in self._loader:
                self._pos = raw.pos + 1
                epoch_read += raw.read
                epoch_good += len(raw.ids)
                self._account(raw)
                if raw.ids:
                    yield self._finish(raw)
            if start == 0 and epoch_read == 0:
                raise DataError(f"{self.label}: rank {self.rank} has no samples to read")
            if epoch_read and not epoch_good:
                raise DataError(
                    f"{self.label}: every one of the {epoch_read} samples read in epoch "
                    f"{self._epoch} failed; {self.summary()}"
                )
            if self._counts:
                log.info("%s: end of epoch %d; %s", self.label, self._epoch, self.summary())
            self._epoch += 1
            self._pos = 0
            if not self.repeat:
                return

    def _account(self, raw: _RawBatch) -> None:
        self._read += raw.read
        self._good += len(raw.ids)
        for reason, name, detail in raw.skipped:
            if reason not in self._counts:
                warnings.warn(
                    f"astropt.data: skipping {name}: {reason}: {detail} (later samples skipped "
                    "for this reason are only counted: see TokenLoader.summary())",
                    SkippedSampleWarning,
                    stacklevel=3,
                )
            self._counts[reason] = self._counts.get(reason, 0) + 1
            examples = self._examples.setdefault(reason, [])
            if len(examples) < 3:
                examples.append(f"{name} ({detail})")
        if self._good == 0 and self._read >= PROBE_LIMIT:
            raise DataError(
                f"{self.label}: the first {self._read} samples all failed; {self.summary()}"
            )

    def _finish(self, raw: _RawBatch) -> Batch:
        if raw.tokens is not None:  # made by the worker: the device is the CPU
            return Batch(
                raw.tokens, raw.mean, raw.std, raw.ids, raw.catalogue, raw.images, raw.indices
            )
        images = raw.images.to(self.device, non_blocking=self._pin)
        tokens, mean, std = _tokenize(images, self._spec)
        return Batch(tokens, mean, std, raw.ids, raw.catalogue, images, raw.indices)

    # -- bookkeeping

    def skipped(self) -> dict[str, int]:
        """Samples skipped so far (this rank, whole run including before a resume), by reason."""
        return dict(self._counts)

    def summary(self) -> str:
        """One paragraph for logs and run summaries: samples read, skipped by reason, examples."""
        skipped = sum(self._counts.values())
        text = f"{self._read} samples read, {skipped} skipped"
        if not skipped:
            return text
        parts = []
        for reason, count in sorted(self._counts.items()):
            shown = "; ".join(self._examples.get(reason, []))
            parts.append(f"{reason} ({REASONS.get(reason, reason)}): {count}, e.g. {shown}")
        return text + ": " + " | ".join(parts)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image this loader yields (after band selection and crop)."""
        return self._dataset.prep.shape

    @property
    def tokens_per_image(self) -> int:
        """Patch tokens per image: ``(H / patch_size) * (W / patch_size)``."""
        _, height, width = self.image_shape
        return (height // self.cfg.patch_size) * (width // self.cfg.patch_size)

    def state_dict(self) -> dict:
        """Position (epoch, batches consumed in it) plus what must match on resume."""
        return {
            "epoch": self._epoch,
            "batch": self._pos,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "skipped": dict(self._counts),
            "examples": {k: list(v) for k, v in self._examples.items()},
            "read": self._read,
            "good": self._good,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; the loader must be built with the same seed, ranks and batch size."""
        for key in ("seed", "rank", "world_size", "batch_size", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume this data loader: {key} was {state[key]!r} when the state "
                    f"was saved and is {getattr(self, key)!r} now (the batch order would differ)"
                )
        if self.batches_per_epoch is not None and state["batch"] > self.batches_per_epoch:
            raise ValueError(
                f"saved position {state['batch']} is past the {self.batches_per_epoch} batches of "
                "an epoch: the data changed since the state was saved"
            )
        self._epoch = int(state["epoch"])
        self._pos = int(state["batch"])
        self._counts = dict(state.get("skipped", {}))
        self._examples = {k: list(v) for k, v in state.get("examples", {}).items()}
        self._read = int(state.get("read", 0))
        self._good = int(state.get("good", 0))


# ----------------------------------------------------------------------- building


#: Decodable samples the probe looks at when the config does not give the channel count.
CHANNEL_VOTES = 8


def _first_good(
    candidates: Iterator[tuple[Any, Rows]],
    prep: Prep,
    strict: bool,
    label: str,
    channels: int | None = None,
) -> tuple[int, int, int]:
    """Shape ``(C, H, W)`` (after bands and crop) of the first sample that decodes.

    With ``channels`` (from the config or the model) samples with another
    channel count are passed over. Without it the most common count among the
    first :data:`CHANNEL_VOTES` decodable samples wins, so one odd file that
    sorts first (a greyscale PNG among RGB stamps) is the one skipped later.
    """
    failures: list[str] = []
    shapes: list[tuple[int, int, int]] = []
    for source, rows in candidates:
        for name, payload in zip(rows.names, rows.payloads, strict=True):
            try:
                shape = conform(source.decode(payload, name), prep, name).shape
            except SkipSample as skip:
                if strict:
                    raise BadSampleError(f"{name}: {skip.reason}: {skip.detail}") from None
                failures.append(f"{name}: {skip.reason}: {skip.detail}")
                continue
            if channels is not None:
                if shape[0] == channels:
                    return shape
                failures.append(f"{name}: wrong_channels: {shape[0]} channels, expected {channels}")
                continue
            shapes.append(shape)
            if len(shapes) >= CHANNEL_VOTES:
                break
        if len(shapes) >= CHANNEL_VOTES:
            break
    if shapes:
        counts = [s[0] for s in shapes]
        winner = max(counts, key=lambda c: (counts.count(c), -counts.index(c)))
        return next(s for s in shapes if s[0] == winner)
    if not failures:
        raise DataError(f"{label} has no samples")
    raise DataError(
        f"{label}: none of the first {len(failures)} samples could be used, e.g. "
        + " | ".join(failures[:3])
    )


def _probe_map(
    source: Any, prep: Prep, strict: bool, label: str, channels: int | None
) -> tuple[int, int, int]:
    candidates = ((source, source.fetch([i])) for i in range(min(len(source), PROBE_LIMIT)))
    return _first_good(candidates, prep, strict, label, channels)


def _probe_stream(
    stream: Any, reader: TableReader, prep: Prep, strict: bool, label: str, channels: int | None
):
    def candidates():
        for g, table in enumerate(stream.with_format("arrow").iter(batch_size=16)):
            if g * 16 >= PROBE_LIMIT:
                return
            yield reader, reader.rows(table, range(g * 16, g * 16 + table.num_rows))

    return _first_good(candidates(), prep, strict, label, channels)


def make_loader(
    cfg: DataConfig,
    split: str = "train",
    *,
    batch_size: int,
    shuffle: bool | None = None,
    augment: bool | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    drop_last: bool | None = None,
    repeat: bool = False,
    max_samples: int | None = None,
) -> TokenLoader:
    """Build the loader of ``split`` (``"train"``, ``"validation"`` or ``"test"``) for one rank.

    Defaults: ``shuffle`` and ``drop_last`` on for the train split only;
    ``augment`` = ``cfg.augment`` on the train split only. ``max_samples``
    keeps the first samples of the split (before shuffling and sharding).
    Under ``torchrun`` pass ``rank`` and ``world_size`` from ``torch.distributed``.
    Reads (and decodes) the first usable sample to learn the image shape, so a
    misconfigured source fails here rather than in a worker.
    """
    split = canonical_split(split)  # "dev" is the validation split
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    is_train = split == "train"
    shuffle = is_train if shuffle is None else shuffle
    augment = (cfg.augment and is_train) if augment is None else augment
    drop_last = is_train if drop_last is None else drop_last
    device = torch.device(device)
    streaming = cfg.streaming and cfg.source != "folder" and bool(cfg.path)
    if cfg.streaming and not streaming:
        log.info(
            "data.streaming applies to parquet/arrow/Hub sources only: reading %s in place",
            cfg.source,
        )
    options = dict(batch_size=batch_size, shuffle=shuffle, augment=augment, seed=seed,
                   rank=rank, world_size=world_size, device=device, drop_last=drop_last,
                   repeat=repeat)  # fmt: skip
    if streaming:
        return _stream_loader(cfg, split, max_samples, **options)
    source, label = open_source(cfg, split, max_samples)
    return map_loader(source, cfg, label, split=split, **options)


def open_source(cfg: DataConfig, split: str, max_samples: int | None = None) -> tuple[Any, str]:
    """``(source, label)``: the random-access source of ``split`` and the text naming it.

    The one dispatch over ``cfg.source`` for every consumer (the loaders here,
    finetuning's labelled pool): a folder of images, the built-in synthetic
    survey (simulated when ``path`` is empty), else parquet/arrow/Hub files
    (a survey folder is checked first). ``max_samples`` keeps the first N.
    """
    if cfg.source == "folder":
        source = FolderSource(cfg, split, max_samples)
        return source, source.label
    if cfg.source == "synthetic" and not cfg.path:
        label = f"synthetic survey (seed {cfg.synthetic_seed}) [{split}]"
        return SyntheticSource(cfg, split, max_samples), label
    _check_survey_folder(cfg)
    ds, label = open_hf(cfg, split, streaming=False)
    return HFMapSource(ds, cfg, label, max_samples), label


def _stream_loader(
    cfg: DataConfig,
    split: str,
    max_samples: int | None,
    *,
    batch_size: int,
    shuffle: bool,
    augment: bool,
    seed: int,
    rank: int,
    world_size: int,
    device: torch.device,
    drop_last: bool,
    repeat: bool,
) -> TokenLoader:
    """The loader of a streamed parquet/arrow/Hub split (see :func:`make_loader`)."""
    prep = Prep.from_config(cfg)
    # Tokens are made where the batch is used: on a CPU target inside the
    # workers (the work spreads over them), on an accelerator after the copy.
    worker_spec = (
        _TokenSpec(cfg.patch_size, cfg.order, cfg.transpose_hw) if device.type == "cpu" else None
    )
    _check_survey_folder(cfg)
    stream, label = open_hf(cfg, split, streaming=True)
    if stream.features is not None:
        schema = stream.features.arrow_schema
    else:
        schema = next(iter(stream.with_format("arrow").iter(batch_size=1))).schema
    reader = TableReader(schema, cfg, label)
    shape = _probe_stream(stream, reader, prep, cfg.strict, label, cfg.channels)
    if max_samples is not None:
        stream = stream.take(max_samples)
    if world_size > 1:
        from datasets.distributed import split_dataset_by_node

        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
    if shuffle:
        # One input shard at a time: with several, ``datasets`` interleaves
        # them through a thread pool and sleeps 5 s whenever a pass ends or
        # is abandoned (an Arrow shutdown workaround), in every worker.
        # Shard order is still shuffled per epoch, rows through the buffer.
        stream = stream.shuffle(
            seed=seed, buffer_size=cfg.shuffle_buffer, max_buffer_input_shards=1
        )
    prep = _with_shape(prep, shape, cfg)
    dataset = _StreamBatches(
        stream.with_format("arrow"),
        reader,
        prep,
        cfg.strict,
        batch_size,
        drop_last,
        augment,
        seed,
        rank,
        worker_spec,
    )
    return TokenLoader(
        dataset=dataset,
        keys=None,
        cfg=cfg,
        split=split,
        label=label,
        batch_size=batch_size,
        device=device,
        repeat=repeat,
        seed=seed,
        rank=rank,
        world_size=world_size,
        shuffle=shuffle,
    )


def map_loader(
    source: Any,
    cfg: DataConfig,
    label: str,
    *,
    split: str,
    batch_size: int,
    shuffle: bool,
    augment: bool,
    seed: int,
    rank: int,
    world_size: int,
    device: str | torch.device,
    drop_last: bool,
    repeat: bool,
) -> TokenLoader:
    """A :class:`TokenLoader` over any map source (``len``, ``fetch(indices) -> Rows``,
    ``decode(payload, name)``), with the sampling, workers and resume of :func:`make_loader`.

    ``label`` names the source in messages. Used by :func:`make_loader` and by
    callers with sources of their own (e.g. the labelled subsets of
    :mod:`astropt.finetune`).
    """
    device = torch.device(device)
    prep = Prep.from_config(cfg)
    worker_spec = (
        _TokenSpec(cfg.patch_size, cfg.order, cfg.transpose_hw) if device.type == "cpu" else None
    )
    if isinstance(source, SyntheticSource) and cfg.bands is None:
        # The simulator's shape is known: no need to render a galaxy to find it.
        side = output_side(cfg) or source.side
        shape = (3, side, side)
    else:
        shape = _probe_map(source, prep, cfg.strict, label, cfg.channels)
    prep = _with_shape(prep, shape, cfg)
    plan = _EpochPlan(
        n=len(source),
        batch_size=batch_size,
        shuffle=shuffle,
        augment=augment,
        seed=seed,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
        even_shards=cfg.even_shards,
    )
    if plan.num_batches == 0:
        raise ValueError(
            f"{label}: rank {rank} of {world_size} gets {plan.per_rank} samples, not one "
            f"batch of {batch_size}{' (drop_last is on)' if drop_last else ''}"
        )
    return TokenLoader(
        dataset=_MapBatches(source, prep, cfg.strict, worker_spec),
        keys=_BatchKeys(plan),
        cfg=cfg,
        split=split,
        label=label,
        batch_size=batch_size,
        device=device,
        repeat=repeat,
        seed=seed,
        rank=rank,
        world_size=world_size,
        shuffle=shuffle,
    )


def _check_survey_folder(cfg: DataConfig) -> None:
    # A synthetic survey path is a local folder: never let a typo fall through
    # to a Hub lookup.
    if cfg.source == "synthetic" and not os.path.isdir(cfg.path):
        raise FileNotFoundError(
            f"synthetic survey folder {cfg.path!r} not found: write one with "
            f"python data/make_synthetic_survey.py --out {cfg.path} --n N --image-size S, "
            "or set data.path='' to render galaxies on the fly"
        )


def _with_shape(prep: Prep, shape: tuple[int, int, int], cfg: DataConfig) -> Prep:
    chan, height, width = shape
    if cfg.channels is not None and chan != cfg.channels:
        raise ValueError(f"images have {chan} channels but data.channels is {cfg.channels}")
    if height % cfg.patch_size or width % cfg.patch_size:
        raise ValueError(
            f"images are {height}x{width} pixels, not a multiple of the patch size "
            f"{cfg.patch_size}: set data.image_size to crop them or data.resize to resample them"
        )
    if cfg.order == "spiral" and height != width:
        raise ValueError(
            f"images are {height}x{width} pixels; the spiral order needs square images: set "
            "data.image_size or data.crop_fraction to crop them"
        )
    return dataclasses.replace(prep, shape=(chan, height, width))


__all__ = [
    "Batch",
    "DataConfig",
    "SkippedSampleWarning",
    "TokenLoader",
    "make_loader",
    "map_loader",
]
