"""What a trained model needs from the galaxies fed to it, and the export of a data split.

:mod:`astropt.embed`, :mod:`astropt.predict` and :mod:`astropt.generate` (``sample``)
share these: the :class:`~astropt.data.DataConfig` that makes the inputs a model was
trained on, the ``data`` options of their command lines, the device an export
runs on, the autocast dtype, a fingerprint that tells checkpoints apart on resume,
and :func:`export_outputs`, which runs an encoder over a split into an export folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from astropt.device import native_bf16, resolve_device
from astropt.export.folder import export_loader, process_group
from astropt.preprocessing import Preprocessing, data_fields


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


def check_data_config(model, data_cfg) -> None:
    from astropt.data.config import convention_mismatches

    mismatched = [
        f"{name}: data {getattr(data_cfg, name)!r} vs model {getattr(model.config, name)!r}"
        for name in convention_mismatches(data_cfg, model.config)
    ]
    if mismatched:
        raise ValueError(
            "the data config does not make the inputs this model expects ("
            + "; ".join(mismatched)
            + "); build it with astropt.export.data_config_for(model, ...)"
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


def model_export_device(model, data_cfg, device: str | torch.device = "auto") -> torch.device:
    """Check that ``data_cfg`` makes the inputs ``model`` expects, join the ``torchrun`` group
    (which picks this rank's GPU), then resolve ``device``: the start of every model export."""
    check_data_config(model, data_cfg)
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
    holds the data config, the :class:`~astropt.preprocessing.Preprocessing` it
    made the galaxies with (``preprocessing``) and the one the encoder's model
    was trained with (``trained_preprocessing``, None when it records none),
    ``split`` and the creation time, plus ``meta``.
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
    trained = getattr(getattr(encoder, "model", None), "preprocessing", None)
    info = {
        "data_config": _data_settings(data_cfg),
        "preprocessing": Preprocessing.of(data_cfg).to_dict(),
        "trained_preprocessing": None if trained is None else trained.to_dict(),
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


def data_config_from_options(
    model, data: dict[str, Any], *, strict: bool = False, model_name: str = "the model"
):
    """The :class:`DataConfig` of a ``data`` section (:func:`model_data_section`) for ``model``.

    Preprocessing keys the section does not set come from ``model.preprocessing``
    (the record it was trained with, when it has one); a set key that differs
    from it prints one line naming the difference, or with ``strict`` raises
    :class:`~astropt.options.ConfigError` (see :func:`astropt.preprocessing.data_fields`).
    ``model_name`` names the model in that line.
    """
    from astropt.data import guess_source

    trained = getattr(model, "preprocessing", None)
    fields = data_fields(data, trained, model_name=model_name, strict=strict)
    if fields.get("source", "auto") == "auto":
        fields["source"] = guess_source(fields.get("path", ""))
    return data_config_for(model, **fields)
