"""Colour stamps: the Lupton asinh stretch, JPEG encoding, and galaxies by index."""

from __future__ import annotations

import io
import math

import numpy as np

from astropt.simulate.population import _galaxy_uniforms, _population_from_uniforms
from astropt.simulate.render import render
from astropt.simulate.spec import (
    _F32,
    DR8,
    FRAMINGS,
    LABEL_COLUMNS,
    PIXEL_SCALE_COLUMN,
    ZOOM_FILL,
    SurveySpec,
    zoom_pixel_scales,
)


def to_rgb_uint8(flux: np.ndarray, *, survey: SurveySpec = DR8) -> np.ndarray:
    """Colour images (n, S, S, 3) uint8 from fluxes (n, 3, S, S) in nanomaggies (g, r, z).

    z, r, g go to R, G, B after per-band scaling (``survey.rgb_scale``), then the
    colour-preserving asinh stretch of Lupton et al. 2004: with the mean intensity
    ``I`` of the three channels, each channel is multiplied by
    ``asinh(Q I / stretch) * frac / asinh(frac Q) / I`` (frac = 0.1, as astropy's
    ``LuptonAsinhStretch``), negatives clip to 0 and saturated pixels are scaled by
    their brightest channel so they keep their colour.
    """
    flux = np.asarray(flux)
    if flux.ndim != 4 or flux.shape[1] != 3:
        raise ValueError(f"flux must be (n, 3, S, S), got {flux.shape}")
    scale = np.asarray(survey.rgb_scale, _F32)[::-1]  # z, r, g -> R, G, B
    x = flux[:, ::-1] * scale[None, :, None, None]
    x = x.astype(_F32, copy=False)
    intensity = x[:, 0] + x[:, 1]
    intensity += x[:, 2]
    intensity *= _F32(1 / 3)
    q, stretch, frac = survey.rgb_q, survey.rgb_stretch, 0.1
    slope = _F32(frac / math.asinh(frac * q))
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.arcsinh(intensity * _F32(q / stretch))
        f *= slope
        f /= intensity
    f[~(intensity > 0)] = 0  # black where the mean intensity is not positive
    x *= f[:, None]
    np.maximum(x, _F32(0), out=x)
    peak = x.max(axis=1)
    np.maximum(peak, _F32(1), out=peak)  # saturated pixels keep their colour
    x /= peak[:, None]
    x *= _F32(255)
    x += _F32(0.5)
    rgb = x.astype(np.uint8)  # truncation of x + 0.5: round to nearest
    return np.ascontiguousarray(rgb.transpose(0, 2, 3, 1))


def encode_jpeg(rgb: np.ndarray, quality: int = DR8.jpeg_quality) -> bytes:
    """One (S, S, 3) uint8 image -> JPEG bytes (fixed settings, so bytes are reproducible)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(
        buf, format="JPEG", quality=quality, subsampling=0, optimize=False, progressive=False
    )
    return buf.getvalue()


def _check_size(image_size: int) -> int:
    if int(image_size) != image_size or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    return int(image_size)


def _labels(params: dict, indices: np.ndarray) -> dict[str, np.ndarray]:
    out = {"dr8_id": np.asarray(indices, np.int64)}
    for k, (dtype, _, _) in LABEL_COLUMNS.items():
        if k != "dr8_id":
            out[k] = np.asarray(params[k]).astype(dtype)
    return out


def _slice(params: dict, sl: slice) -> dict:
    return {k: v[sl] for k, v in params.items()}


def label_columns(framing: str = "fixed") -> dict[str, tuple[str, str, str]]:
    """The truth columns of a survey with this framing: zoomed stamps add their pixel scale."""
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
    if framing == "fixed":
        return LABEL_COLUMNS
    name, spec = PIXEL_SCALE_COLUMN
    return {**LABEL_COLUMNS, name: spec}


def iter_render(
    indices: np.ndarray,
    image_size: int,
    seed: int,
    *,
    survey: SurveySpec = DR8,
    block: int = 256,
    chunk: int | None = None,
    framing: str = "fixed",
    zoom_fill: float = ZOOM_FILL,
):
    """Yield ``(flux (m, 3, S, S) float32, labels)`` for consecutive pieces of ``indices``.

    Parameters are drawn for ``block`` galaxies at a time (vectorised), images are
    rendered ``chunk`` at a time (default ~2 MB of pixels, small enough that the
    temporaries stay in cache and are not re-faulted from the OS every call).
    ``framing="zoom"``: each stamp gets the pixel scale of :func:`zoom_pixel_scales`
    (the galaxy's observed half-light diameter spans ``zoom_fill`` of the side), and
    the labels carry it as ``pixel_scale_arcsec``. The galaxies are the same in both
    framings (same parameters); only how they are framed differs.
    """
    size = _check_size(image_size)
    label_columns(framing)  # checks the name
    indices = np.asarray(indices, np.int64)
    if (indices < 0).any() or seed < 0:
        raise ValueError("seed and galaxy indices must be >= 0")
    chunk = chunk or max(1, (1 << 19) // (size * size))
    for s in range(0, len(indices), block):
        idx = indices[s : s + block]
        u, gens = _galaxy_uniforms(seed, idx)
        params = _population_from_uniforms(u, survey)
        for c in range(0, len(idx), chunk):
            sl = slice(c, c + chunk)
            p = _slice(params, sl)
            if framing == "fixed":
                yield render(p, size, gens[sl], survey=survey), _labels(p, idx[sl])
                continue
            scales = zoom_pixel_scales(p["r_half_arcsec"], p["seeing_fwhm_r"], size, zoom_fill)
            labels = _labels(p, idx[sl])
            labels[PIXEL_SCALE_COLUMN[0]] = scales.astype(np.float32)
            yield render(p, size, gens[sl], survey=survey, pixel_scales=scales), labels


def render_indices(
    indices: np.ndarray,
    image_size: int,
    seed: int,
    *,
    survey: SurveySpec = DR8,
    framing: str = "fixed",
    zoom_fill: float = ZOOM_FILL,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Galaxies ``indices`` of survey ``seed``: (flux (n, 3, S, S) float32, labels).

    ``framing``/``zoom_fill``: see :func:`iter_render`.
    """
    size = _check_size(image_size)
    indices = np.asarray(indices, np.int64)
    flux = np.empty((len(indices), 3, size, size), _F32)
    columns = label_columns(framing)
    labels: dict[str, list] = {k: [] for k in columns}
    pos = 0
    for f, lab in iter_render(
        indices, size, seed, survey=survey, framing=framing, zoom_fill=zoom_fill
    ):
        flux[pos : pos + len(f)] = f
        pos += len(f)
        for k, v in lab.items():
            labels[k].append(v)
    return flux, {
        k: np.concatenate(v) if v else np.zeros(0, columns[k][0]) for k, v in labels.items()
    }


def make_stamps(
    n: int,
    image_size: int,
    seed: int,
    start: int = 0,
    *,
    survey: SurveySpec = DR8,
    framing: str = "fixed",
    zoom_fill: float = ZOOM_FILL,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Galaxies ``start .. start+n-1`` of survey ``seed``.

    Returns ``(rgb (n, S, S, 3) uint8, flux (n, 3, S, S) float32 nanomaggies g r z,
    labels)`` with labels as in ``LABEL_COLUMNS`` (``dr8_id`` = galaxy index; zoomed
    stamps add ``pixel_scale_arcsec``, see :func:`iter_render`).
    Galaxy i depends only on (seed, i): any chunking gives identical arrays.
    """
    if n < 0 or start < 0:
        raise ValueError("n and start must be >= 0")
    flux, labels = render_indices(
        np.arange(start, start + n),
        image_size,
        seed,
        survey=survey,
        framing=framing,
        zoom_fill=zoom_fill,
    )
    size = flux.shape[-1]
    rgb = np.empty((n, size, size, 3), np.uint8)
    step = max(1, (1 << 19) // (size * size))
    for s in range(0, n, step):  # in pieces: small temporaries are much faster
        rgb[s : s + step] = to_rgb_uint8(flux[s : s + step], survey=survey)
    return rgb, flux, labels
