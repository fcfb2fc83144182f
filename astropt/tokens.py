"""Images to patch-token sequences and back: the one place that knows the conventions.

Conventions (DESIGN.md section 3; they decide weight compatibility with AstroPT):

* an image batch is ``(B, C, H, W)``; a patch is ``P x P`` pixels of all ``C``
  channels flattened with the channel fastest-varying, einops pattern
  ``"c (h p1) (w p2) -> (h w) (p1 p2 c)"``;
* the *spiral* order starts at the central patch of the grid and winds
  outwards; it is the reverse of a clockwise spiral that starts at the top-left
  corner and winds inwards, which is exactly AstroPT's order;
* per-patch normalisation is ``(x - mean) / (std + 1e-8)`` over the ``P*P*C``
  values of each patch, with torch's default (unbiased) std; what it removes
  (each band's mean and log-std) is :func:`band_statistics`, the extra input of
  flux-aware models.

Everything here is batched and device-agnostic: one gather reorders a whole
batch, no Python loop ever runs over patches or samples.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal, get_args

import torch
from einops import rearrange

Order = Literal["spiral", "raster"]

NORM_EPS = 1e-8
DEFAULT_PATCH_SIZE = 16


@lru_cache(maxsize=64)
def _spiral_order_cached(n: int) -> torch.Tensor:
    grid = torch.arange(n * n).reshape(n, n)
    inward: list[torch.Tensor] = []
    # Peel the outer ring clockwise (top row, right column, bottom row back,
    # left column up), then recurse on the interior.
    while grid.numel() > 0:
        inward.append(grid[0])
        grid = grid[1:]
        if grid.numel() == 0:
            break
        grid = grid.T.flip(0)  # rotate anticlockwise so the right column becomes the top row
    order = torch.cat(inward).flip(0)
    order.requires_grad_(False)
    return order


def spiral_order(n: int) -> torch.Tensor:
    """Raster index of each sequence position for an ``n x n`` patch grid.

    Returns a LongTensor of shape ``(n*n,)`` on the CPU: ``patches_raster[order]``
    is the spiral-ordered sequence, starting at the centre. Cached per ``n``;
    treat the result as read-only.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"spiral_order needs a positive integer grid side, got {n!r}")
    return _spiral_order_cached(n)


@lru_cache(maxsize=64)
def _inverse_order_cached(n: int) -> torch.Tensor:
    return torch.argsort(_spiral_order_cached(n))


def _device_order(n: int, device: torch.device, inverse: bool = False) -> torch.Tensor:
    order = _inverse_order_cached(n) if inverse else _spiral_order_cached(n)
    return order if order.device == device else order.to(device)


def _check_order(order: str) -> None:
    if order not in get_args(Order):
        raise ValueError(f"order must be 'spiral' or 'raster', got {order!r}")


def patchify(
    images: torch.Tensor, patch_size: int = DEFAULT_PATCH_SIZE, order: Order = "spiral"
) -> torch.Tensor:
    """Cut images into flattened patches in spiral (default) or raster order.

    ``images``: ``(B, C, H, W)``, any dtype and device, ``H`` and ``W`` multiples
    of ``patch_size``. Returns ``(B, N, P*P*C)`` with ``N = (H/P) * (W/P)``.
    The spiral order needs ``H == W`` (a square patch grid).
    """
    _check_order(order)
    if images.ndim != 4:
        raise ValueError(
            f"patchify expects a batch of images (B, C, H, W), got shape {tuple(images.shape)}"
        )
    _, _, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {height}x{width} is not divisible by the patch size {patch_size}"
        )
    if order == "spiral" and height != width:
        raise ValueError(
            f"spiral order needs a square patch grid, got {height // patch_size}x"
            f"{width // patch_size} patches ({height}x{width} pixels); use order='raster'"
        )
    transposed_channels_last = images.transpose(-1, -2).permute(0, 2, 3, 1).is_contiguous()
    if transposed_channels_last and not images.permute(0, 2, 3, 1).is_contiguous():
        # A transposed view of a channels-last batch (AstroPT's layout of decoded
        # JPEGs): one gather of precomputed offsets from the buffer packs the
        # patches in order, 3x faster than a strided copy and a reorder.
        batch, chan = images.shape[:2]
        index = _gather_index(width, height, chan, patch_size, order, images.device)
        buffer = images.transpose(-1, -2).permute(0, 2, 3, 1).reshape(batch, -1)
        patches = torch.gather(buffer, 1, index.expand(batch, -1))
        return patches.view(batch, index.numel() // (patch_size * patch_size * chan), -1)
    return _patchify_copy(images, patch_size, order)


def _patchify_copy(images: torch.Tensor, patch_size: int, order: Order) -> torch.Tensor:
    height = images.shape[2]
    # Within a patch the channel varies fastest, so packing patches from a
    # channels-last copy moves contiguous runs of P*C values: several times
    # faster than gathering from (C, H, W) planes (free when the batch is
    # already channels-last, as decoded JPEGs are).
    channels_last = images.permute(0, 2, 3, 1).contiguous()
    patches = rearrange(
        channels_last, "b (h p1) (w p2) c -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size
    )
    if order == "raster":
        return patches
    return patches.index_select(1, _device_order(height // patch_size, images.device))


@lru_cache(maxsize=16)
def _gather_index(
    height: int, width: int, chan: int, patch_size: int, order: Order, device: torch.device
) -> torch.Tensor:
    """``(N*P*P*C,)`` offsets into a channels-last ``(H, W, C)`` buffer, token value by value.

    For the *transpose* of that buffer's image: the patches of an image whose
    pixels hold their own offsets, so gathering with it is patchify of the
    transposed view. ``height``/``width`` are the buffer's.
    """
    offsets = torch.arange(height * width * chan).view(1, height, width, chan)
    offsets = offsets.permute(0, 3, 2, 1)  # (1, C, W, H): the transposed image
    return _patchify_copy(offsets, patch_size, order).reshape(-1).to(device)


def unpatchify(
    patches: torch.Tensor,
    image_size: int | tuple[int, int],
    patch_size: int = DEFAULT_PATCH_SIZE,
    order: Order = "spiral",
) -> torch.Tensor:
    """Fold ``(B, N, P*P*C)`` patch sequences back into ``(B, C, H, W)`` images.

    ``image_size`` is the side ``H == W`` in pixels or an ``(H, W)`` pair. The
    inverse of :func:`patchify` with the same ``patch_size`` and ``order``.
    """
    _check_order(order)
    if patches.ndim != 3:
        raise ValueError(
            f"unpatchify expects patch sequences (B, N, P*P*C), got shape {tuple(patches.shape)}"
        )
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {height}x{width} is not divisible by the patch size {patch_size}"
        )
    grid_h, grid_w = height // patch_size, width // patch_size
    if patches.shape[1] != grid_h * grid_w:
        raise ValueError(
            f"{patches.shape[1]} patches cannot fold into a {height}x{width} image "
            f"with {patch_size}-pixel patches ({grid_h * grid_w} expected)"
        )
    if patches.shape[2] % (patch_size * patch_size):
        raise ValueError(
            f"patch length {patches.shape[2]} is not a multiple of {patch_size}x{patch_size}"
        )
    if order == "spiral":
        if grid_h != grid_w:
            raise ValueError(
                f"spiral order needs a square patch grid, got {grid_h}x{grid_w} patches"
            )
        patches = patches.index_select(1, _device_order(grid_h, patches.device, inverse=True))
    return rearrange(
        patches,
        "b (h w) (p1 p2 c) -> b c (h p1) (w p2)",
        h=grid_h,
        w=grid_w,
        p1=patch_size,
        p2=patch_size,
    )


def normalise_patches(
    patches: torch.Tensor, eps: float = NORM_EPS, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise each patch to zero mean and unit (unbiased) std.

    ``patches``: ``(..., D)``. Returns ``(normalised, mean, std)`` where
    ``normalised`` has the input's shape and ``mean``/``std`` have shape
    ``(..., 1)``; inputs other than float32/float64 are computed in float32.
    ``out``: a float tensor of the input's shape to compute in (and return),
    e.g. one in shared memory that a DataLoader worker then sends uncopied;
    the values are the same bit for bit.
    """
    if out is not None:
        values = out.copy_(patches)
    elif patches.dtype in (torch.float32, torch.float64):
        values = patches
    else:
        values = patches.float()
    mean = values.mean(dim=-1, keepdim=True)
    # Two passes (mean, then the norm of the centred values) give torch.std's
    # unbiased value to rounding, several times faster than torch.std_mean on CPU.
    centred = values.sub_(mean) if values is not patches else values - mean
    std = torch.linalg.vector_norm(centred, dim=-1, keepdim=True) / math.sqrt(
        max(values.shape[-1] - 1, 1)
    )
    return centred.div_(std + eps), mean, std


#: Floor added to a band's std before its log (scaled-pixel units; 8-bit images are /255):
#: a flat patch (empty sky in a JPEG) gets a finite log-std near log(1e-3) = -6.9.
BAND_STD_FLOOR = 1e-3


def band_statistics(
    tokens: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    n_chan: int,
    eps: float = NORM_EPS,
) -> torch.Tensor:
    """What per-patch normalisation removes, per band: each patch's mean and log-std.

    ``tokens``: ``(..., P*P*C)`` normalised patches with the channel fastest
    (:func:`normalise_patches`); ``mean``/``std``: their ``(..., 1)`` statistics
    (scaled-pixel units). Returns ``(..., 2*C)`` float32: the ``C`` band means,
    then the ``C`` values ``log(band std + BAND_STD_FLOOR)``, both in the
    patch's pixel units (the bands' unbiased std over the patch's ``P*P``
    pixels). Computed from the normalised tokens exactly:
    ``pixels = tokens * (std + eps) + mean``.
    """
    values = tokens.float().unflatten(-1, (-1, n_chan))  # (..., P*P, C)
    band_std, band_mean = torch.std_mean(values, dim=-2)  # of the normalised values
    scale = std.float() + eps
    return torch.cat(
        [mean.float() + scale * band_mean, torch.log(scale * band_std + BAND_STD_FLOOR)], dim=-1
    )


def denormalise_patches(
    normalised: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = NORM_EPS
) -> torch.Tensor:
    """Inverse of :func:`normalise_patches`: back to the original pixel units."""
    return normalised * (std + eps) + mean


def images_to_tokens(
    images: torch.Tensor,
    patch_size: int = DEFAULT_PATCH_SIZE,
    order: Order = "spiral",
    transpose_hw: bool = False,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images ``(B, C, H, W)`` to normalised patch tokens ``(B, N, P*P*C)``.

    ``transpose_hw=True`` swaps the two image axes first, reproducing AstroPT's
    ``swapaxes(0, 2)`` layout (its released weights need it). Returns
    ``(tokens, mean, std)`` as :func:`normalise_patches` does (``out``: see there).
    """
    if transpose_hw:
        images = images.transpose(-1, -2)
    return normalise_patches(patchify(images, patch_size=patch_size, order=order), out=out)


def tokens_to_images(
    tokens: torch.Tensor,
    image_hw: tuple[int, int],
    patch_size: int = DEFAULT_PATCH_SIZE,
    order: Order = "spiral",
    transpose_hw: bool = False,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fold ``(B, N, P*P*C)`` token sequences back into ``(B, C, H, W)`` images.

    The inverse of :func:`images_to_tokens`: ``image_hw`` is the (height, width)
    of the images the tokens came from. With ``transpose_hw`` (AstroPT's layout)
    the tokens were cut from the transposed image ``(C, W, H)``; it is folded
    as such and transposed back, so the result is always the natural
    ``(C, H, W)``. With ``mean`` and ``std`` (``(B, N, 1)``, from
    :func:`normalise_patches`) the tokens are first turned back into pixel
    units; without them the images stay in normalised units.
    """
    if mean is not None and std is not None:
        tokens = denormalise_patches(tokens, mean, std)
    height, width = image_hw
    if transpose_hw:
        return unpatchify(tokens, (width, height), patch_size, order).transpose(-1, -2)
    return unpatchify(tokens, (height, width), patch_size, order)


#: Survey-wide stretch of the built-in survey's 8-bit stamps (pixels / 255, already
#: asinh-stretched by the survey, so a softening of 1 keeps them nearly linear): over
#: 2,048 stamps of its train split (64x64, seed 0) ``asinh(pixels)`` has mean 0.090 and
#: std 0.123, so these tokens have about zero mean and unit std. Float bands
#: (nanomaggies) want a softening near the sky noise instead.
SURVEY_SOFTENING = 1.0
SURVEY_OFFSET = 0.09
SURVEY_SCALE = 0.123


def survey_stretch(
    pixels: torch.Tensor,
    softening: float = SURVEY_SOFTENING,
    offset: float = SURVEY_OFFSET,
    scale: float = SURVEY_SCALE,
) -> torch.Tensor:
    """Pixels to tokens in one fixed, survey-wide stretch (not per patch).

    ``(asinh(pixels / softening) - offset) / scale``, elementwise, any shape:
    unlike :func:`normalise_patches` it keeps each patch's brightness and colour.
    ``softening`` is in pixel units (near-linear for pixels well below it, logarithmic
    above); ``offset``/``scale`` bring the survey's tokens to about zero mean and unit std.
    """
    return (torch.asinh(pixels.float() / softening) - offset) / scale


def survey_unstretch(
    tokens: torch.Tensor,
    softening: float = SURVEY_SOFTENING,
    offset: float = SURVEY_OFFSET,
    scale: float = SURVEY_SCALE,
) -> torch.Tensor:
    """Inverse of :func:`survey_stretch`: survey-stretched tokens back to pixel units."""
    return softening * torch.sinh(tokens.float() * scale + offset)


def band_statistic_targets(stats: torch.Tensor, n_chan: int, scale: float = SURVEY_SCALE):
    """:func:`band_statistics` ``(..., 2*C)`` in the units a flux head regresses.

    Band means are divided by the survey-wide ``scale`` (8-bit pixels /255 have
    means of a few hundredths: as targets they would carry almost no gradient);
    log-stds are kept (their spread is already of order one).
    """
    return torch.cat([stats[..., :n_chan] / scale, stats[..., n_chan:]], dim=-1)


#: Central regions of :func:`galaxy_statistics`: the first 1 and 4 patches of a spiral
#: sequence (the galaxy's core and its inner 2x2 patches), then the whole stamp.
GALAXY_PREFIXES = (1, 4)


def galaxy_statistics(
    tokens: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    n_chan: int,
    prefixes: tuple[int, ...] = GALAXY_PREFIXES,
    eps: float = NORM_EPS,
) -> torch.Tensor:
    """Aperture photometry of each galaxy from its tokens: ``(B, 2 * C * (len(prefixes) + 1))``.

    ``tokens (B, N, P*P*C)`` per-patch normalised in spiral order with their
    ``mean``/``std`` ``(B, N, 1)``. For the pixels of the first ``k`` patches
    (each ``k`` of ``prefixes``: centred apertures, as the spiral starts at the
    centre) and of the whole stamp: each band's mean (surface brightness, whose
    differences are colours) and ``log(std + BAND_STD_FLOOR)`` (contrast), in
    pixel units. The "hybrid" embedding appends these to a model's vector.
    """
    pixels = denormalise_patches(tokens.float(), mean.float(), std.float(), eps)
    n_patches = pixels.shape[1]
    parts = []
    for count in (*prefixes, n_patches):
        values = pixels[:, : min(count, n_patches)].reshape(pixels.shape[0], -1, n_chan)
        band_std, band_mean = torch.std_mean(values, dim=1)
        parts += [band_mean, torch.log(band_std + BAND_STD_FLOOR)]
    return torch.cat(parts, dim=-1)
