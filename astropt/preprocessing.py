"""The preprocessing a model was trained with: one typed record that travels with its weights.

A model sees pixels only after the data pipeline has chosen a column or bands,
scaled floats, cropped, resampled and (for JPEGs) reduced at decode time. Those
choices are the :class:`Preprocessing` record: the
:class:`~astropt.data.DataConfig` fields, beside the patch conventions that
:class:`~astropt.model.GPTConfig` already carries (``patch_size``, ``order``,
``transpose_hw``), that decide what a galaxy looks like to the model.

Training writes it into every checkpoint and model folder as
``preprocessing.json`` (and :mod:`astropt.hub` lists it on the model card);
a loaded model carries it as ``model.preprocessing`` (``None`` for AstroPT
checkpoints and models built in code, which keep the data defaults).
Commands that feed a trained model galaxies (embed, predict, sample, finetune
``init_from``) start from it: :func:`data_fields` puts the options given on
the command line over the record and prints one line naming any difference
from training (or refuses it with ``strict=true``). Every export records the
preprocessing it used (:func:`astropt.export.export_preprocessing`).

A leaf module (it imports only :mod:`astropt.options`), so the model folders
of :mod:`astropt.hub` read and write the typed record below the data pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from astropt.options import ConfigError, table_fields

FORMAT = "astropt-preprocessing/1"
FILE_NAME = "preprocessing.json"
#: The two ways to crop (pixels, or a fraction of the shorter side): giving one replaces both.
CROP_FIELDS = ("image_size", "crop_fraction")


@dataclass(frozen=True)
class Preprocessing:
    """The :class:`~astropt.data.DataConfig` fields that decide what a model sees.

    Same names, types and defaults as there (``tests/test_preprocessing.py``
    checks it), so a record applies to a data config field by field. Order:
    what is read (column, bands, channels, FITS band files), how floats are
    scaled, then the geometry (crop, resize, resampling, JPEG reduction).
    """

    image_column: str = "image"  # column holding the image (parquet/arrow, simulator)
    bands: tuple[int, ...] | None = None  # channel indices kept, in stored order
    channels: int | None = None  # channel count after band selection
    fits_bands: tuple[str, ...] = ("g", "r", "z")  # FITS band-file suffixes, in channel order
    float_scaling: str = "asinh"  # float images: asinh or linear
    asinh_softening: float = 0.01  # softening of the asinh scaling (image units)
    image_size: int | None = None  # centre crop side in pixels
    crop_fraction: float | None = None  # centre crop as a fraction of the shorter side
    resize: int | None = None  # side in pixels after resampling
    resample: str = "area"  # area (flux-keeping box average) or lanczos
    jpeg_reduce: bool = True  # JPEGs decoded at 1/2, 1/4 or 1/8 scale when resize allows

    def __post_init__(self) -> None:
        # Lists from JSON or a config file: tuples, so records compare and hash by value.
        for name in ("bands", "fits_bands"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def of(cls, data_config: Any) -> Preprocessing:
        """The record of a :class:`~astropt.data.DataConfig` (any object with these attributes)."""
        return cls(**{name: getattr(data_config, name) for name in cls.field_names()})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"format": FORMAT, field: value, ...}`` (tuples as lists)."""
        values = json.loads(json.dumps(dataclasses.asdict(self)))
        return {"format": FORMAT, **values}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], origin: str = "preprocessing") -> Preprocessing:
        """A record from :meth:`to_dict` output, checked: an unknown field fails naming the
        nearest, values are parsed by type, a missing field takes its default (older records).
        ``origin`` names where the values came from in errors."""
        values = dict(values)
        written = values.pop("format", FORMAT)
        if written != FORMAT:
            raise ConfigError(f"{origin}: preprocessing format {written!r}, expected {FORMAT!r}")
        return cls(**table_fields(cls, values, origin))

    def differences(self, other: Preprocessing, other_is: str = "trained with") -> list[str]:
        """``"data.NAME=VALUE (trained with VALUE)"`` for each field where ``self`` (what is
        used) differs from ``other`` (by default what the model was trained with;
        ``other_is`` says what it is)."""
        return [
            f"data.{name}={getattr(self, name)!r} ({other_is} {getattr(other, name)!r})"
            for name in self.field_names()
            if getattr(self, name) != getattr(other, name)
        ]


def data_fields(
    given: Mapping[str, Any],
    trained: Preprocessing | None,
    *,
    model_name: str,
    strict: bool = False,
    report: bool = True,
) -> dict[str, Any]:
    """Data config fields for a trained model: its ``trained`` record, then the ``given`` options.

    ``given``: the data options a user set (only those: any ``DataConfig``
    keys, preprocessing or not). A given crop (``image_size`` or
    ``crop_fraction``) replaces the recorded crop of either kind. When the
    result differs from ``trained``, one line naming each difference goes to
    stderr, or, with ``strict``, :class:`~astropt.options.ConfigError` is
    raised. ``trained=None`` (an AstroPT checkpoint, a model built in code):
    ``given`` as it is, so the data defaults apply. ``model_name`` names the
    model in the message; ``report=False`` prints nothing (other ranks of a
    distributed run).
    """
    if trained is None:
        return dict(given)
    fields = {name: getattr(trained, name) for name in Preprocessing.field_names()}
    if any(name in given for name in CROP_FIELDS):
        fields.update(dict.fromkeys(CROP_FIELDS))
    fields.update(given)
    used = Preprocessing(**{name: fields[name] for name in Preprocessing.field_names()})
    differences = used.differences(trained)
    if differences:
        text = (
            f"data options differ from the preprocessing {model_name} was trained with: "
            + ", ".join(differences)
        )
        if strict:
            raise ConfigError(text + " (strict=true refuses this: drop those options)")
        if report:
            print(text, file=sys.stderr)
    return fields
