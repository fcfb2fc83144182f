"""Patch tokens: spiral order, patching and normalisation (DESIGN.md section 3)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from astropt.tokens import (
    BAND_STD_FLOOR,
    band_statistics,
    denormalise_patches,
    images_to_tokens,
    normalise_patches,
    patchify,
    spiral_order,
    unpatchify,
)

# AstroPT's order, from DESIGN.md section 3 (raster index of each sequence position).
ASTROPT_ORDERS = {
    3: [4, 3, 6, 7, 8, 5, 2, 1, 0],
    4: [9, 10, 6, 5, 4, 8, 12, 13, 14, 15, 11, 7, 3, 2, 1, 0],
    5: [12, 11, 16, 17, 18, 13, 8, 7, 6, 5, 10, 15, 20, 21, 22, 23, 24, 19, 14, 9, 4, 3, 2, 1, 0],
}


@pytest.mark.parametrize("n", sorted(ASTROPT_ORDERS))
def test_spiral_order_matches_astropt_vectors(n):
    assert spiral_order(n).tolist() == ASTROPT_ORDERS[n]


def test_spiral_order_is_cached_and_long():
    first = spiral_order(7)
    assert first is spiral_order(7)
    assert first.dtype == torch.long


def _chebyshev_ring(index: int, n: int) -> float:
    """Distance (in patches) of a raster index from the grid centre, max-norm."""
    row, col = divmod(index, n)
    centre = (n - 1) / 2
    return max(abs(row - centre), abs(col - centre))


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=40))
def test_spiral_is_a_centre_first_outward_permutation(n):
    order = spiral_order(n)
    assert sorted(order.tolist()) == list(range(n * n))
    rings = [_chebyshev_ring(i, n) for i in order.tolist()]
    # The first patch is a central one, and the spiral never moves back inwards.
    assert rings[0] == min(rings) <= 0.5
    assert all(a <= b for a, b in zip(rings, rings[1:]))
    # Consecutive positions are grid neighbours (it is a spiral, not a shuffle).
    for a, b in zip(order.tolist(), order.tolist()[1:]):
        (ra, ca), (rb, cb) = divmod(a, n), divmod(b, n)
        assert abs(ra - rb) + abs(ca - cb) == 1
    inverse = torch.argsort(order)
    assert torch.equal(order[inverse], torch.arange(n * n))


@pytest.mark.parametrize("bad", [0, -3, 2.0, True])
def test_spiral_order_rejects_bad_sides(bad):
    with pytest.raises(ValueError, match="positive integer"):
        spiral_order(bad)


def test_patchify_matches_einops_definition_and_spiral():
    # Distinct values everywhere so any mis-ordering shows.
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    patches = patchify(images, patch_size=4, order="raster")
    assert patches.shape == (2, 4, 4 * 4 * 3)
    # Patch (h=1, w=0), pixel (p1=2, p2=3), channel 1 sits at (p1 * P + p2) * C + c.
    expected = images[0, 1, 1 * 4 + 2, 0 * 4 + 3]
    assert patches[0, 1 * 2 + 0, (2 * 4 + 3) * 3 + 1] == expected
    spiral = patchify(images, patch_size=4)
    assert torch.equal(spiral, patches[:, [2, 3, 1, 0]])


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    channels=st.integers(1, 5),
    grid=st.integers(1, 6),
    patch=st.sampled_from([1, 2, 4, 16]),
    order=st.sampled_from(["spiral", "raster"]),
)
def test_patchify_round_trip_is_exact(batch, channels, grid, patch, order):
    side = grid * patch
    images = torch.randn(batch, channels, side, side)
    patches = patchify(images, patch_size=patch, order=order)
    assert patches.shape == (batch, grid * grid, patch * patch * channels)
    assert torch.equal(unpatchify(patches, side, patch_size=patch, order=order), images)


def test_raster_round_trip_for_rectangular_images():
    images = torch.randint(0, 255, (2, 3, 32, 48), dtype=torch.uint8)
    patches = patchify(images, patch_size=16, order="raster")
    assert patches.shape == (2, 6, 768)
    assert torch.equal(unpatchify(patches, (32, 48), order="raster"), images)


def test_spiral_first_token_is_the_centre_patch():
    images = torch.zeros(1, 3, 80, 80)
    images[:, :, 32:48, 32:48] = 1.0  # the central 16x16 patch of a 5x5 grid
    tokens = patchify(images)
    assert tokens[0, 0].eq(1).all() and tokens[0, 1:].eq(0).all()


def test_errors_are_clear():
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="square patch grid"):
        patchify(torch.zeros(1, 3, 32, 48))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        patchify(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="order must be"):
        patchify(torch.zeros(1, 3, 32, 32), order="zigzag")
    with pytest.raises(ValueError, match="cannot fold"):
        unpatchify(torch.zeros(1, 5, 768), 32)
    with pytest.raises(ValueError, match=r"\(B, N, P\*P\*C\)"):
        unpatchify(torch.zeros(5, 768), 32)


def test_normalisation_statistics_and_round_trip():
    torch.manual_seed(0)
    patches = torch.rand(4, 9, 768) * 50 + 3
    normalised, mean, std = normalise_patches(patches)
    assert mean.shape == std.shape == (4, 9, 1)
    # Independent check against NumPy's unbiased (ddof=1) statistics.
    reference = patches.numpy()
    ref_mean = reference.mean(-1, keepdims=True)
    ref_std = reference.std(-1, ddof=1, keepdims=True)
    np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-5)
    np.testing.assert_allclose(
        normalised.numpy(), (reference - ref_mean) / (ref_std + 1e-8), atol=1e-4
    )
    assert torch.allclose(denormalise_patches(normalised, mean, std), patches, atol=1e-4)


def test_constant_patch_normalises_to_zero_not_nan():
    normalised, _, std = normalise_patches(torch.full((1, 2, 12), 7.0))
    assert torch.all(std == 0) and torch.all(normalised == 0)


def test_uint8_inputs_are_normalised_in_float():
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    tokens, mean, _ = images_to_tokens(images)
    assert tokens.dtype == torch.float32
    assert math.isclose(
        float(mean[0, 0]), float(patchify(images)[0, 0].float().mean()), rel_tol=1e-6
    )


def test_transpose_hw_reproduces_astropt_swapaxes_layout():
    # AstroPT reads a (H, W, C) JPEG array with swapaxes(0, 2): a (C, W, H) tensor.
    pixels_hwc = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    astropt_layout = torch.from_numpy(pixels_hwc.swapaxes(0, 2).copy())[None]
    natural = torch.from_numpy(pixels_hwc.transpose(2, 0, 1).copy())[None]
    ours, _, _ = images_to_tokens(natural, transpose_hw=True)
    theirs, _, _ = images_to_tokens(astropt_layout)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, images_to_tokens(natural)[0])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("order", ["spiral", "raster"])
@pytest.mark.parametrize(("batch", "side", "patch", "chan"), [(3, 64, 16, 3), (2, 12, 4, 1)])
def test_transposed_channels_last_batches_patch_like_contiguous_ones(
    dtype, order, batch, side, patch, chan
):
    # A decoded JPEG batch is channels-last; transpose_hw views it transposed, which
    # patchify packs with one gather of precomputed offsets. It must equal the einops
    # definition applied to a plain contiguous copy of the same view.
    generator = torch.Generator().manual_seed(2)
    buffer = torch.randint(0, 256, (batch, side, side, chan), generator=generator).to(dtype)
    view = buffer.permute(0, 3, 1, 2).transpose(-1, -2)
    plain = view.contiguous()
    grid = side // patch
    expected = plain.reshape(batch, chan, grid, patch, grid, patch)
    expected = expected.permute(0, 2, 4, 3, 5, 1).reshape(batch, grid * grid, -1)
    if order == "spiral":
        expected = expected[:, spiral_order(grid)]
    assert torch.equal(patchify(view, patch, order), expected)
    assert torch.equal(patchify(plain, patch, order), expected)
    # The loader's form: straight from the channels-last batch into a given buffer,
    # the same values bit for bit as the default path.
    out = torch.empty(expected.shape)
    natural = buffer.permute(0, 3, 1, 2)
    given = images_to_tokens(natural, patch, order, transpose_hw=True, out=out)
    default = normalise_patches(expected)
    assert given[0].data_ptr() == out.data_ptr()
    assert all(torch.equal(a, b) for a, b in zip(given, default, strict=True))


def test_band_statistics_are_what_normalisation_removes_per_band():
    # Planted: band b of every patch has its own brightness and contrast.
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 32, 32, generator=generator)
    images = (
        images * torch.tensor([0.01, 0.1, 0.3])[:, None, None]
        + torch.tensor([0.2, 0.5, 0.05])[:, None, None]
    )
    patches = patchify(images)
    tokens, mean, std = normalise_patches(patches.clone())
    stats = band_statistics(tokens, mean, std, n_chan=3)
    assert stats.shape == (2, 4, 6)
    # Independent: NumPy on the raw pixels of each patch, band by band (channel fastest).
    raw = patches.numpy().reshape(2, 4, 16 * 16, 3)
    np.testing.assert_allclose(stats[..., :3].numpy(), raw.mean(axis=2), atol=1e-5)
    np.testing.assert_allclose(
        stats[..., 3:].numpy(), np.log(raw.std(axis=2, ddof=1) + BAND_STD_FLOOR), atol=1e-4
    )
    # Brightness differences survive, while the normalised tokens cannot tell them apart.
    brighter, mean2, std2 = normalise_patches(patchify(images * 2 + 0.1))
    assert torch.allclose(brighter, tokens, atol=1e-4)
    assert not torch.allclose(band_statistics(brighter, mean2, std2, 3), stats, atol=1e-2)
    # A flat patch has a finite log-std.
    flat = band_statistics(*normalise_patches(torch.full((1, 1, 12), 0.5)), n_chan=3)
    assert torch.isfinite(flat).all()
