"""The data pipeline: every source to normalised, spiral-ordered token batches.

``from astropt.data import DataConfig, Batch, make_loader, TokenLoader``::

    cfg = DataConfig(source="synthetic", path="surveys/s0", image_size=64, num_workers=2)
    loader = make_loader(cfg, "train", batch_size=32, seed=0, rank=0, world_size=1)
    for batch in loader:           # Batch: tokens (B, N, P*P*C), mean, std, ids, ...
        loss = model(batch.inputs, batch.targets)[1]

Modules: :mod:`~astropt.data.config` (:class:`DataConfig`), :mod:`~astropt.data.decode` (reading one image, scaling rules, skip
reasons), :mod:`~astropt.data.sources` (Hugging Face datasets, folders, the
simulator), :mod:`~astropt.data.loader` (sampling, workers, collation, resume).
"""

from .config import DataConfig
from .decode import REASONS, BadSampleError, DataError
from .loader import (
    Batch,
    SkippedSampleWarning,
    TokenLoader,
    make_loader,
    map_loader,
    open_source,
)
from .sources import guess_source

__all__ = [
    "REASONS",
    "BadSampleError",
    "Batch",
    "DataConfig",
    "DataError",
    "SkippedSampleWarning",
    "TokenLoader",
    "guess_source",
    "make_loader",
    "map_loader",
    "open_source",
]
