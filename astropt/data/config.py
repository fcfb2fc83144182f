"""The data section of a run: :class:`DataConfig`, where images come from and how they become tokens.

Its own module so that the sources (:mod:`astropt.data.sources`) and the loader
(:mod:`astropt.data.loader`) both read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from astropt.tokens import Order

Source = Literal["synthetic", "hf", "folder"]
FloatScaling = Literal["asinh", "linear"]
Resample = Literal["area", "lanczos"]
SOURCES: tuple[str, ...] = get_args(Source)
#: DataConfig fields that must equal the model's GPTConfig fields of the same name: they
#: decide how images become tokens, so weights only work with the values they were trained on.
DATA_CONVENTIONS = ("patch_size", "order", "transpose_hw")


@dataclass
class DataConfig:
    """Where images come from and how they become tokens.

    The first block is the team contract; the fields after it are options,
    all with defaults.

    ``source``: ``"synthetic"`` (``path`` = a prepared survey folder, or ``""``
    to render on the fly), ``"hf"`` (``path`` = Hub name, local folder or glob of
    parquet/arrow), ``"folder"`` (``path`` = directory of JPEG/PNG/FITS/``.npy``).
    ``image_size`` is a centre-crop side in pixels (``None`` keeps the stored
    size; then every image must have the same size, unless ``resize`` is set).
    ``patch_size``, ``order``
    and ``transpose_hw`` must match the model (a loaded model's config says).
    """

    source: str = "synthetic"  # synthetic, hf (parquet/arrow/Hub) or folder (JPEG/PNG/FITS/.npy)
    path: str = ""  # survey folder, parquet dir/glob, Hub name or image folder ('': simulate)
    revision: str | None = None  # Hub dataset revision (branch, tag or commit)
    streaming: bool = False  # read a Hub dataset as a stream instead of downloading it
    image_size: int | None = None  # centre crop side in pixels (None: the stored size)
    patch_size: int = 16  # patch side in pixels (a model convention)
    order: str = "spiral"  # token order: spiral (from the centre out) or raster
    transpose_hw: bool = False  # read images as (C, W, H) like AstroPT's released models
    augment: bool = True  # random flips and right-angle rotations of training images
    num_workers: int = 0  # data loader worker processes
    strict: bool = False  # stop at the first bad file instead of skipping and counting it
    id_column: str | None = None  # column of galaxy ids (None: the first of dr8_id, id, objid, ...)
    catalogue: str | None = None  # CSV catalogue joined to a folder of images
    synthetic_n: int = 10000  # galaxies simulated on the fly (path '')
    synthetic_seed: int = 0  # seed of the on-the-fly survey

    #: Column holding the image (Image feature, binary, or numeric arrays such
    #: as the survey's ``flux_grz``); for the on-the-fly simulator, ``"flux_grz"``
    #: selects float fluxes instead of the colour rendering.
    image_column: str = "image"
    #: Catalogue columns to carry into ``Batch.catalogue``; ``None`` = every
    #: scalar column (numbers, booleans, strings) except the image and the id.
    columns: tuple[str, ...] | None = None
    #: Channel indices to keep, in stored order (e.g. ``(1,)`` for r of grz).
    bands: tuple[int, ...] | None = None
    #: Expected channel count after band selection (``None``: the first good
    #: sample decides); also tells a flat array column how to fold.
    channels: int | None = None
    #: Float images: ``"asinh"`` (``asinh(x / asinh_softening)``) or ``"linear"``.
    float_scaling: str = "asinh"
    asinh_softening: float = 0.01  # softening of the asinh scaling (image units)
    #: Centre crop as a fraction of each image's shorter side (``0 < f <= 1``), taken
    #: before ``resize``; the other way to crop, beside ``image_size`` in pixels.
    crop_fraction: float | None = None
    #: Resample every image (after any crop) to ``resize x resize`` pixels with
    #: anti-aliasing, so folders of mixed sizes feed one model; ``None`` keeps the size.
    resize: int | None = None
    #: ``"area"`` (box average: keeps flux per unit area) or ``"lanczos"`` (sharper).
    resample: str = "area"
    #: JPEGs that ``resize`` shrinks are decoded at 1/2, 1/4 or 1/8 scale when that
    #: still leaves at least ``resize`` pixels in the crop (faster; see astropt.data.decode).
    jpeg_reduce: bool = True
    #: Band suffixes grouping single-band FITS files (``gal_g.fits``, ...) in a folder.
    fits_bands: tuple[str, ...] = ("g", "r", "z")
    #: On-the-fly simulator: render side (``None``: ``image_size`` or 64) and split fractions.
    synthetic_image_size: int | None = None
    synthetic_val_fraction: float = 0.1  # on-the-fly survey: validation fraction
    synthetic_test_fraction: float = 0.1  # on-the-fly survey: test fraction
    #: Streaming only: examples held by the shuffle buffer.
    shuffle_buffer: int = 1000
    #: Batches each worker prepares ahead.
    prefetch_factor: int = 2
    #: With several ranks, drop the last ``n % world_size`` samples of each
    #: epoch's order so every rank has the same number of batches (DDP needs it).
    even_shards: bool = True
    #: ``datasets`` cache folder for converted parquet (``None``: its default).
    cache_dir: str | None = None
    #: Images with more pixels than this (per plane) are skipped as ``oversize``
    #: before they are decoded.
    max_image_pixels: int = 1 << 28
    #: Parquet/arrow image structs that name a local file (``{bytes: null, path}``)
    #: are read only when the file lies inside the dataset's own folder, unless this is on.
    allow_external_paths: bool = False

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {SOURCES}, got {self.source!r}")
        if self.order not in get_args(Order):
            raise ValueError(f"data.order must be 'spiral' or 'raster', got {self.order!r}")
        if self.float_scaling not in get_args(FloatScaling):
            raise ValueError(
                f"data.float_scaling must be 'asinh' or 'linear', got {self.float_scaling!r}"
            )
        if self.patch_size < 1:
            raise ValueError(f"data.patch_size must be positive, got {self.patch_size}")
        if (
            self.image_size is not None
            and self.resize is None
            and self.image_size % self.patch_size
        ):
            raise ValueError(
                f"data.image_size {self.image_size} is not a multiple of the patch size "
                f"{self.patch_size}"
            )
        if self.resample not in get_args(Resample):
            raise ValueError(
                f"data.resample must be one of {get_args(Resample)}, got {self.resample!r}"
            )
        if self.crop_fraction is not None and not 0 < self.crop_fraction <= 1:
            raise ValueError(f"data.crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.crop_fraction is not None and self.image_size is not None:
            raise ValueError(
                "data.crop_fraction and data.image_size both crop (a fraction of the side, or "
                "pixels): give one"
            )
        if self.resize is not None and (self.resize < 1 or self.resize % self.patch_size):
            raise ValueError(
                f"data.resize {self.resize} is not a positive multiple of the patch size "
                f"{self.patch_size}"
            )
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.max_image_pixels < 1:
            raise ValueError(f"data.max_image_pixels must be positive, got {self.max_image_pixels}")
        if self.channels is not None and self.channels < 1:
            raise ValueError(f"data.channels must be positive, got {self.channels}")
        if self.asinh_softening <= 0:
            raise ValueError("data.asinh_softening must be positive")
        # Config files give lists; keep tuples so the config stays hashable and immutable.
        for name in ("columns", "bands", "fits_bands"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                setattr(self, name, tuple(value))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def convention_mismatches(data_cfg: Any, model_cfg: Any) -> list[str]:
    """The :data:`DATA_CONVENTIONS` on which a data config and a model config disagree."""
    return [
        name for name in DATA_CONVENTIONS if getattr(data_cfg, name) != getattr(model_cfg, name)
    ]


def output_side(cfg: Any) -> int | None:
    """Side in pixels of the images a data config hands the model (``None``: as stored)."""
    return cfg.resize or cfg.image_size


def synthetic_split_sizes(cfg: Any) -> dict[str, int]:
    """Galaxies in each split of the on-the-fly synthetic survey of data config ``cfg``.

    The ``synthetic_n`` galaxies are cut into contiguous index ranges in this
    order: train, then validation (``synthetic_val_fraction``), then test
    (``synthetic_test_fraction``), each fraction rounded to a whole galaxy.
    """
    total = cfg.synthetic_n
    n_val = round(total * cfg.synthetic_val_fraction)
    n_test = round(total * cfg.synthetic_test_fraction)
    n_train = total - n_val - n_test
    if n_train < 0:
        raise ValueError("synthetic_val_fraction + synthetic_test_fraction exceed 1")
    return {"train": n_train, "validation": n_val, "test": n_test}
