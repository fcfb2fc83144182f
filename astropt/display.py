"""Pixels for people: the one display stretch used by previews, completion grids and thumbnails.

A leaf of the import order (numpy only).
"""

from __future__ import annotations

import numpy as np


def percentile_stretch(
    images: np.ndarray,
    reference: np.ndarray | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """Map each image ``(B, C, H, W)`` linearly so its percentiles become 0 and 1.

    The low and high ``percentiles`` are taken per image over all its bands and
    pixels, from ``reference`` (same batch size; default ``images`` itself), so
    a model's output can be shown on the stretch of the true galaxy. The result
    is not clipped.
    """
    ref = images if reference is None else reference
    low = np.percentile(ref, percentiles[0], axis=(1, 2, 3), keepdims=True)
    high = np.percentile(ref, percentiles[1], axis=(1, 2, 3), keepdims=True)
    return (images - low) / np.maximum(high - low, 1e-12)


def survey_colour_order(images: np.ndarray) -> np.ndarray:
    """Three survey bands g, r, z ``(B, 3, H, W)`` as z, r, g: the reddest band in red."""
    return images[:, ::-1]
