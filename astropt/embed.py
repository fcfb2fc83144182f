"""Embedding export: galaxies in, one vector per galaxy out, resumable.

``python -m astropt.embed --checkpoint RUN --data DIR --split test --out emb.parquet``

The export is the resumable parquet folder of :mod:`astropt.export` (columns
``id``, the catalogue columns, ``embedding`` and optionally ``thumbnail``);
under ``torchrun`` it is sharded across ranks and read back in the split's order.

Baselines for the probe suite use the same format and the same rows:
``kind="random-init"`` (the same architecture with fresh weights under a fixed
seed), ``kind="pixels"`` (the scaled pixel values as patches, before per-patch
normalisation: the probe reduces them by PCA inside each training fold, so no
test galaxy reaches the fit) and ``kind="morphometrics"`` (aperture fluxes,
colours, CAS, Gini, M20, shape: :mod:`astropt.morphometrics`), each computed
once per galaxy. :func:`baseline_paths` names them next to an export.

Read any of them back with :func:`astropt.export.read_embeddings`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from astropt.export import (
    DEFAULT_ROWS_PER_PART,
    MODEL_DATA_FLAGS,
    data_config_from_options,
    export_outputs,
    model_data_section,
    model_export_device,
    model_fingerprint,
    read_embeddings,
    read_manifest,
    resolve_dtype,
)
from astropt.model import Pool
from astropt.options import Command, run_command
from astropt.tokens import GALAXY_PREFIXES, galaxy_statistics, tokens_to_images


# --------------------------------------------------------------------------- encoders
def hybrid_width(n_chan: int) -> int:
    """Values :func:`hybrid_features` appends for ``n_chan`` bands (34 for 3)."""
    from astropt.morphometrics import APERTURES, COLOUR_APERTURES

    patches = 2 * n_chan * (len(GALAXY_PREFIXES) + 1)
    return patches + n_chan * len(APERTURES) + (n_chan - 1) * len(COLOUR_APERTURES)


def hybrid_features(tokens: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, config):
    """What a "hybrid" embedding appends to the model's vector: the galaxy's photometry.

    ``tokens (B, N, P*P*C)`` per-patch normalised in the model's order with
    ``mean``/``std`` ``(B, N, 1)``; ``config``: the model's :class:`GPTConfig`
    (patch size, order, layout). Returns ``(B, hybrid_width(C))`` float32: the
    per-band mean and log-std of the central 1 and 4 patches and of the stamp
    (:func:`astropt.tokens.galaxy_statistics`), then the aperture photometry
    of the morphometrics baseline (log10 sky-subtracted fluxes in circles of
    radius 2, 4, 8 and 16 pixels and colours between adjacent bands,
    :func:`astropt.morphometrics.aperture_photometry`) of the stamp itself.
    """
    from astropt.morphometrics import aperture_photometry

    side = math.isqrt(tokens.shape[1]) * config.patch_size
    pixels = tokens_to_images(
        tokens.float(), (side, side), config.patch_size, config.order, config.transpose_hw,
        mean.float(), std.float(),
    )  # fmt: skip
    apertures = torch.from_numpy(aperture_photometry(pixels.cpu().numpy())).to(tokens.device)
    patches = galaxy_statistics(tokens, mean, std, config.n_chan)
    return torch.cat([patches, apertures.to(patches.dtype)], dim=-1)


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
        hybrid: bool | None = None,
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # "hybrid": the galaxy's aperture photometry appended (default: the model's config)
        self.hybrid = bool(model.config.embed_hybrid if hybrid is None else hybrid)
        self.layers = model.resolve_layers(layer)  # validates; None = final LayerNorm
        if pool not in get_args(Pool):
            raise ValueError(f"pool must be 'mean', 'prefix' or 'last', got {pool!r}")
        if pool == "prefix" and (not prefix or prefix < 1):
            raise ValueError("pool='prefix' needs prefix=k with k >= 1 tokens")
        self.pool = pool
        self.prefix = prefix if pool == "prefix" else None
        self.dtype = resolve_dtype(dtype, self.device)
        self.dim = model.config.n_embd * len(self.layers)
        if self.hybrid:
            self.dim += hybrid_width(model.config.n_chan)

    @property
    def layer_name(self) -> str:
        """``"final"``, a block index, or several joined by ``+`` (concatenated in that order)."""
        return self.model.layer_name(self.layers)

    @property
    def reads_stats(self) -> bool:
        """Whether it needs the batch's normalisation statistics (any model not in
        AstroPT's format: flux-aware inputs or survey-wide token units)."""
        return self.hybrid or not self.model.config.astropt_format

    def __call__(
        self,
        tokens: torch.Tensor,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``mean``/``std``: the tokens' ``(B, N, 1)`` statistics, needed when :attr:`reads_stats`."""
        tokens = tokens.to(self.device, non_blocking=True)
        stats = photometry = None
        if self.reads_stats:
            if mean is None or std is None:
                raise ValueError(
                    "a flux-aware model or hybrid embedding needs the tokens' mean and std"
                )
            mean, std = mean.to(self.device), std.to(self.device)
            if self.hybrid:
                photometry = hybrid_features(tokens, mean, std, self.model.config)
            tokens, stats = self.model.prepare(tokens, mean, std)
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.dtype == "bfloat16"
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            out = self.model.embed(
                tokens, layer=self.layers, pool=self.pool, prefix=self.prefix, stats=stats
            )
        if photometry is not None:
            out = torch.cat([out.float(), photometry.float()], dim=-1)
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
    hybrid: bool | None = None,
) -> Path:
    """Embed every galaxy of ``split`` of ``data_cfg`` with ``model``; write the export ``out``.

    ``layer``: ``"final"``, ``"middle"``, a block index or several joined by ``+``
    (``"middle+final"``: their vectors concatenated; default the model's
    ``config.embed_layer``); ``pool``: ``"mean"``, ``"prefix"`` (first ``prefix``
    tokens) or ``"last"``; ``dtype``: ``"auto"`` (bfloat16 autocast where the
    device has native bfloat16 matmuls, see :func:`resolve_dtype`), ``"float32"``
    or ``"bfloat16"``; ``thumbnails``: side in
    pixels of RGB thumbnails stored per galaxy for UMAP stamp panels (0 = none);
    ``hybrid``: append each galaxy's photometry (:func:`hybrid_features`, 34
    values for 3 bands) to its vector (default: the model's ``config.embed_hybrid``).
    Rerunning the same call resumes an interrupted export. Returns ``out``.
    """
    device = model_export_device(model, data_cfg, device)
    encoder = ModelEncoder(model, layer, pool, prefix, device, dtype, hybrid)
    return export_outputs(
        encoder,
        data_cfg,
        out,
        split,
        kind=kind,
        batch_size=batch_size,
        max_samples=max_samples,
        settings={
            "layer": encoder.layer_name,
            "pool": pool,
            "prefix": encoder.prefix,
            **({"hybrid": True} if encoder.hybrid else {}),
        },
        meta={
            "checkpoint": checkpoint,
            "model_config": model.config.to_dict(),
            "layer": encoder.layer_name,
            "pool": pool,
            **({"hybrid": True} if encoder.hybrid else {}),
        },
        rows_per_part=rows_per_part,
        thumbnail_size=thumbnails,
        overwrite=overwrite,
        progress=progress,
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


@dataclasses.dataclass
class EmbedOptions:
    """Options of ``astropt embed`` (``python -m astropt.embed``)."""

    checkpoint: str  # run folder, model folder, AstroPT ckpt.pt or Hub id
    out: str  # output export folder, e.g. emb.parquet
    split: str = "test"  # data split to embed (dev: the validation split, for choosing settings)
    # final | middle | block index, or several joined by + (middle+final: concatenated);
    # default: the model's embed_layer
    layer: str | None = None
    pool: Pool = "mean"  # how token outputs become one vector
    prefix: int | None = None  # tokens averaged by pool=prefix
    # "hybrid": append each galaxy's photometry (band means and log-stds of its central
    # patches, aperture fluxes and colours) to its vector; default: the model's embed_hybrid
    hybrid: bool | None = None
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
    # refuse data options that differ from the preprocessing the model was trained with
    # (otherwise one line names the difference)
    strict: bool = False
    # where the galaxies come from: path ('' = synthetic on the fly), source, image_size, ...
    data: dict[str, Any] = model_data_section()


def run_embed(opts: EmbedOptions) -> int:
    """Embed the split the options name; write the export (and baselines)."""
    from astropt.hub import load_model

    model = load_model(opts.checkpoint)
    data_cfg = data_config_from_options(
        model, opts.data, strict=opts.strict, model_name=str(opts.checkpoint)
    )
    kind = "model"
    if opts.random_init:
        model, kind = random_init_like(model, opts.seed), "random-init"
    options = {
        "layer": opts.layer,
        "pool": opts.pool,
        "prefix": opts.prefix,
        "hybrid": opts.hybrid,
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
