"""The export core: an encoder's per-galaxy output as a resumable parquet folder, and reading it back.

Shared by :mod:`astropt.embed` (embeddings and probe baselines) and
:mod:`astropt.predict` (a finetuned model's predictions); read by the probes,
maps and search. The public names live here; the modules behind them are
:mod:`~astropt.export.folder` (writing, resuming, sharding),
:mod:`~astropt.export.read` (reading) and :mod:`~astropt.export.inputs` (the
data a model expects and the export of a data split).

An export is a *folder* named like a parquet file (``emb.parquet/``) that
pandas and pyarrow read as one table::

    emb.parquet/part-00000.parquet   rows 0 .. R-1       (R = rows per part)
    emb.parquet/part-00001.parquet   rows R .. 2R-1
    ...
    emb.parquet/_manifest.json       settings, finished parts, loader state, "complete"

Columns: ``id``, the catalogue columns of the data source, the vector column
(``embedding``, or ``prediction`` for :mod:`astropt.predict`: fixed-size list of
float32, ``d`` values) and optionally ``thumbnail`` (fixed-size list of uint8,
``S*S*3`` RGB values, row-major ``(S, S, 3)``).

Why a folder of parts: a part is written to a temporary name and renamed, then
the manifest (also atomic) records it with the data loader's state *after* its
last batch. An interrupted export therefore restarts exactly after the last
recorded part: no duplicate rows, no gap. The order is deterministic (no
shuffling, no augmentation), so the same data and weights give the same table.

Under ``torchrun`` (or any initialised ``torch.distributed`` group) an export
is sharded: rank ``r`` of ``W`` handles the galaxies at positions ``r, r+W,
r+2W, ...`` of the split into its own resumable export
``emb.parquet/rank-0000r-of-0000W/`` (parts and manifest as above, plus a
``_position`` column: each row's position in the split), and the top-level
``_manifest.json`` lists the shards. :func:`read_table` and
:func:`read_embeddings` merge them back into the split's order, so the result
equals the single-process export row for row (map sources: local parquet,
folders, the synthetic survey; a stream's rows come rank after rank). Rerun the
same ``torchrun`` command, with the same number of processes, to resume.
"""

from astropt.export.folder import (
    DEFAULT_ROWS_PER_PART,
    FORMAT,
    MANIFEST,
    POSITION,
    RESERVED_COLUMNS,
    display_rgb,
    export_loader,
    process_group,
    read_manifest,
    shard_name,
)
from astropt.export.inputs import (
    MODEL_DATA_FLAGS,
    MODEL_DECIDES,
    check_data_config,
    data_config_for,
    data_config_from_options,
    export_outputs,
    model_data_section,
    model_export_device,
    model_fingerprint,
    resolve_dtype,
)
from astropt.export.read import (
    export_preprocessing,
    has_thumbnails,
    read_embeddings,
    read_table,
    read_thumbnails,
)

__all__ = [
    "DEFAULT_ROWS_PER_PART",
    "FORMAT",
    "MANIFEST",
    "MODEL_DATA_FLAGS",
    "MODEL_DECIDES",
    "POSITION",
    "RESERVED_COLUMNS",
    "check_data_config",
    "data_config_for",
    "data_config_from_options",
    "display_rgb",
    "export_loader",
    "export_outputs",
    "export_preprocessing",
    "has_thumbnails",
    "model_data_section",
    "model_export_device",
    "model_fingerprint",
    "process_group",
    "read_embeddings",
    "read_manifest",
    "read_table",
    "read_thumbnails",
    "resolve_dtype",
    "shard_name",
]
