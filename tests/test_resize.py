"""Real cutouts in: centre crops, resampling to the model's size, survey cutout conventions."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from conftest import encode
from PIL import Image

from astropt.data import DataConfig, SkippedSampleWarning, make_loader
from astropt.data.decode import (
    Prep,
    conform,
    decode_encoded,
    decode_min_side,
    jpeg_reduction,
    resize_image,
)

P = 8


def _centroid(plane: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(plane.shape)
    total = plane.sum()
    return float((rows * plane).sum() / total), float((cols * plane).sum() / total)


def _planted(side: int, top: float, left: float, size: float, value: float = 5.0) -> np.ndarray:
    """A ``(1, side, side)`` float image: zero sky and a square of ``value`` whose edges sit at
    the given fractions of the side (so the same pattern can be drawn at any resolution)."""
    image = np.zeros((1, side, side), np.float32)
    r0, c0, n = round(top * side), round(left * side), round(size * side)
    image[0, r0 : r0 + n, c0 : c0 + n] = value
    return image


def test_area_resize_by_a_whole_factor_averages_each_block():
    image = _planted(96, top=0.25, left=0.5, size=0.125)  # rows 24..35, cols 48..59
    out = resize_image(image, 32, "area")
    expected = np.zeros((1, 32, 32), np.float32)
    expected[0, 8:12, 16:20] = 5.0  # each output pixel is the mean of a 3x3 block
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("method", ["area", "lanczos"])
@pytest.mark.parametrize("source_side", [96, 80, 424])
def test_resized_pattern_keeps_its_position_and_flux_per_area(method, source_side):
    rng = np.random.default_rng(0)
    image = _planted(source_side, top=0.3, left=0.55, size=0.15)
    image += rng.normal(0, 0.01, image.shape).astype(np.float32)
    out = resize_image(image, 32, method)
    assert out.shape == (1, 32, 32)
    # Flux per unit area: the mean pixel value over the whole stamp.
    np.testing.assert_allclose(out.mean(), image.mean(), rtol=0.02)
    # Position as a fraction of the side (pixel centres at (i + 0.5) / side).
    before = (np.array(_centroid(image[0])) + 0.5) / source_side
    after = (np.array(_centroid(out[0])) + 0.5) / 32
    np.testing.assert_allclose(after, before, atol=0.2 / 32)


@pytest.mark.parametrize("method", ["area", "lanczos"])
def test_resize_is_anti_aliased(method):
    # A checkerboard at the input's Nyquist frequency has nothing a coarser grid can
    # show: an anti-aliased resize gives its mean, plain subsampling would give 0 or 1.
    board = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)[None]
    out = resize_image(board, 16, method)
    np.testing.assert_allclose(out, 0.5, atol=0.05)


def test_eight_bit_images_stay_eight_bit_when_resized():
    image = np.full((3, 50, 50), 200, np.uint8)
    out = resize_image(image, 16, "lanczos")
    assert out.dtype == np.uint8 and out.shape == (3, 16, 16)
    assert np.all(out == 200)


def _prep(**kw) -> Prep:
    base = dict(crop=None, shape=None, bands=None, float_scaling="linear", softening=0.01)
    return Prep(**{**base, **kw})


@pytest.mark.parametrize(
    ("height", "width", "fraction", "side"),
    [(40, 40, 0.5, 20), (40, 60, 0.5, 20), (424, 424, 0.6, 254), (33, 33, 1.0, 33)],
)
def test_crop_fraction_keeps_the_central_fraction_of_the_shorter_side(
    height, width, fraction, side
):
    image = np.arange(2 * height * width, dtype=np.float32).reshape(2, height, width)
    out = conform(image, _prep(crop_fraction=fraction), "x")
    top, left = (height - side) // 2, (width - side) // 2
    np.testing.assert_array_equal(out, image[:, top : top + side, left : left + side])


def test_crop_fraction_then_resize_zooms_on_the_centre():
    # The central half of a 96-pixel stamp resized to 32: the planted square
    # (centred, an eighth of the side) fills a quarter of the output side.
    image = _planted(96, top=0.4375, left=0.4375, size=0.125)
    out = conform(image, _prep(crop_fraction=0.5, resize=32), "x")
    expected = np.zeros((1, 32, 32), np.float32)
    expected[0, 12:20, 12:20] = 5.0
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_data_config_checks_the_crop_and_resize_options():
    with pytest.raises(ValueError, match="crop_fraction"):
        DataConfig(crop_fraction=1.5)
    with pytest.raises(ValueError, match="give one"):
        DataConfig(crop_fraction=0.5, image_size=64)
    with pytest.raises(ValueError, match="resize"):
        DataConfig(resize=50, patch_size=16)
    with pytest.raises(ValueError, match="resample"):
        DataConfig(resample="bicubic")


def test_folder_of_mixed_sizes_loads_at_one_size(tmp_path):
    sides = [424, 96, 64, 50, 200]
    for i, side in enumerate(sides):
        plane = (_planted(side, top=0.375, left=0.375, size=0.25, value=1.0)[0] * 255).astype(
            np.uint8
        )
        rgb = np.stack([plane, plane // 2, plane // 4], axis=-1)
        (tmp_path / f"gal_{i}.png").write_bytes(encode(rgb, fmt="PNG"))
    cfg = DataConfig(source="folder", path=str(tmp_path), patch_size=P, resize=32, augment=False)
    loader = make_loader(cfg, "train", batch_size=len(sides), shuffle=False, drop_last=False)
    (batch,) = list(loader)
    assert batch.images.shape == (len(sides), 3, 32, 32)
    assert loader.skipped() == {}
    # Every image shows the same square, a quarter of the side, at the centre.
    expected = np.zeros((32, 32), np.float32)
    expected[12:20, 12:20] = 1.0
    for image in batch.images.numpy():
        np.testing.assert_allclose(image[0], expected, atol=0.02)
        np.testing.assert_allclose(image[1], np.floor(expected * 255 / 2) / 255, atol=0.02)


# ------------------------------------------------------- decode-time JPEG reduction


@pytest.mark.parametrize(
    ("height", "width", "min_side", "factor"),
    [
        (424, 424, 128, 2),  # 212 >= 128; 106 is not
        (424, 424, 53, 8),  # 424 / 8 = 53 exactly
        (424, 424, 54, 4),
        (256, 512, 64, 4),  # the shorter side decides
        (420, 420, 50, 4),  # 8 does not divide 420
        (425, 425, 10, 1),  # no factor divides: full size
        (424, 424, None, 1),
    ],
)
def test_jpeg_reduction_is_the_strongest_exact_factor_that_keeps_the_side(
    height, width, min_side, factor
):
    assert jpeg_reduction(height, width, min_side) == factor


def test_decode_min_side_only_when_resizing_by_a_fraction():
    assert decode_min_side(DataConfig(resize=64, crop_fraction=0.5)) == 128
    assert decode_min_side(DataConfig(resize=64)) == 64
    assert decode_min_side(DataConfig(resize=64, crop_fraction=0.5, jpeg_reduce=False)) is None
    assert decode_min_side(DataConfig(resize=64, image_size=200)) is None  # a crop in pixels
    assert decode_min_side(DataConfig()) is None


def _galaxy_jpeg(side: int) -> bytes:
    """A smooth off-centre blob and a small bright square on a dark sky, as a colour JPEG."""
    rows, cols = np.indices((side, side)) / side
    blob = 180 * np.exp(-((rows - 0.45) ** 2 + (cols - 0.55) ** 2) / 0.004)
    blob[round(0.52 * side) : round(0.56 * side), round(0.40 * side) : round(0.44 * side)] = 250
    plane = np.clip(blob + 10, 0, 255).astype(np.uint8)
    rgb = np.stack([plane, (plane * 0.7).astype(np.uint8), (plane * 0.4).astype(np.uint8)], -1)
    return encode(rgb, quality=95)


def test_jpeg_decodes_at_the_reduced_scale():
    data = _galaxy_jpeg(424)
    assert decode_encoded(data).shape == (3, 424, 424)
    assert decode_encoded(data, min_side=128).shape == (3, 212, 212)
    assert decode_encoded(data, min_side=53).shape == (3, 53, 53)
    assert decode_encoded(_galaxy_jpeg(425), min_side=53).shape == (3, 425, 425)


@pytest.mark.parametrize(("fraction", "side"), [(0.5, 64), (None, 64), (0.75, 64)])
def test_reduced_decode_keeps_position_and_flux_per_area(tmp_path, fraction, side):
    """A 424-pixel JPEG folder through the loader, decoded at a reduced scale or in full:
    the same stamp up to the small differences of two anti-aliasing paths."""
    (tmp_path / "gal.jpg").write_bytes(_galaxy_jpeg(424))
    images = {}
    for reduce in (True, False):
        cfg = DataConfig(
            source="folder", path=str(tmp_path), patch_size=P, resize=side,
            crop_fraction=fraction, augment=False, jpeg_reduce=reduce,
        )  # fmt: skip
        (batch,) = list(make_loader(cfg, "train", batch_size=1, shuffle=False))
        images[reduce] = batch.images[0].numpy().astype(np.float64)
    reduced, full = images[True], images[False]
    assert reduced.shape == full.shape == (3, side, side)
    # Flux per unit area (mean value) and the light's centroid, per band: within 2% and a
    # quarter of a pixel decoded at half scale (0.15 output pixels). Pillow's box filter
    # averages the whole pixels whose centres fall in each output pixel, so the two paths
    # group pixels differently; the chroma planes are also upsampled at another scale.
    np.testing.assert_allclose(reduced.mean(axis=(1, 2)), full.mean(axis=(1, 2)), rtol=0.02)
    for band in range(3):
        np.testing.assert_allclose(_centroid(reduced[band]), _centroid(full[band]), atol=0.15)
    # Pixel by pixel, on average within a couple of 8-bit steps (single pixels on the
    # square's sharp edges differ more: the filters group the pixels differently).
    assert np.abs(reduced - full).mean() < 2 / 255


# --------------------------------------------------- Legacy Survey cutout service files


def _write_cutout_fits(path, planes: np.ndarray, bands: str) -> None:
    """A FITS file laid out as the cutout service writes it: one primary HDU of shape
    (bands, H, W), float32 nanomaggies, BANDS and BAND<i> keywords, a TAN WCS."""
    header = fits.Header()
    header["SURVEY"] = "LegacySurvey"
    header["VERSION"] = "DR10"
    header["BANDS"] = bands
    for i, band in enumerate(bands):
        header[f"BAND{i}"] = band
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CD1_1"], header["CD2_2"] = -0.262 / 3600, 0.262 / 3600
    fits.PrimaryHDU(data=planes.astype(">f4"), header=header).writeto(path)


def _grz(side: int = 32) -> np.ndarray:
    """Three distinguishable planes: g faint and round, r brighter, z brightest and offset."""
    rows, cols = np.indices((side, side)) - side / 2
    g = 0.2 * np.exp(-(rows**2 + cols**2) / 20)
    r = 0.5 * np.exp(-(rows**2 + cols**2) / 30)
    z = 0.9 * np.exp(-((rows - 3) ** 2 + cols**2) / 40)
    return np.stack([g, r, z]).astype(np.float32)


@pytest.mark.parametrize("stored", ["grz", "zrg", "rzg"])
def test_cutout_fits_planes_load_in_grz_order_with_blank_pixels_zero(tmp_path, stored):
    grz = _grz()
    planes = np.stack([grz["grz".index(b)] for b in stored])
    planes[:, 0, :5] = np.nan  # the stamp edge runs off the survey footprint
    folder = tmp_path / "cutouts"
    folder.mkdir()
    _write_cutout_fits(folder / "cutout.fits", planes, stored)
    cfg = DataConfig(
        source="folder", path=str(folder), patch_size=P, float_scaling="linear", augment=False
    )
    loader = make_loader(cfg, "train", batch_size=1, shuffle=False)
    (batch,) = list(loader)
    expected = grz.copy()
    expected[:, 0, :5] = 0.0
    np.testing.assert_allclose(batch.images[0].numpy(), expected, rtol=1e-6)
    assert loader.skipped() == {}


def test_plain_fits_with_nan_is_still_skipped(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    good = _grz()
    bad = good.copy()
    bad[0, 0, 0] = np.nan
    fits.PrimaryHDU(data=good).writeto(folder / "a.fits")
    fits.PrimaryHDU(data=bad).writeto(folder / "b.fits")
    cfg = DataConfig(source="folder", path=str(folder), patch_size=P, augment=False)
    loader = make_loader(cfg, "train", batch_size=1, shuffle=False, drop_last=False)
    with pytest.warns(SkippedSampleWarning, match="b.fits: nonfinite"):
        assert len(list(loader)) == 1
    assert loader.skipped() == {"nonfinite": 1}


def test_cutout_jpeg_and_fits_of_one_galaxy_agree_on_bands(tmp_path):
    # The service's JPEG puts z, r, g into R, G, B; it is read as decoded (R, G, B),
    # so JPEG channel 0 follows the FITS z plane and channel 2 the g plane.
    grz = _grz(64)
    folder = tmp_path / "both"
    folder.mkdir()
    _write_cutout_fits(folder / "gal_a.fits", grz, "grz")
    stretch = np.arcsinh(grz / 0.05)
    rgb = np.clip(stretch[::-1] / stretch.max() * 255, 0, 255).astype(np.uint8)
    Image.fromarray(rgb.transpose(1, 2, 0)).save(folder / "gal_b.jpg", quality=95)
    cfg = DataConfig(
        source="folder",
        path=str(folder),
        patch_size=P,
        augment=False,
        resize=32,
        float_scaling="linear",
    )
    loader = make_loader(cfg, "train", batch_size=2, shuffle=False)
    (batch,) = list(loader)
    assert batch.ids == ["gal_a", "gal_b"]
    fits_image, jpeg_image = batch.images.numpy()
    for jpeg_channel, fits_band in [(0, 2), (1, 1), (2, 0)]:
        rendered = np.arcsinh(fits_image[fits_band] / 0.05) / stretch.max()
        corr = np.corrcoef(jpeg_image[jpeg_channel].ravel(), rendered.ravel())[0, 1]
        assert corr > 0.99
    # And the pairing is not symmetric by accident: z is offset, g is not.
    assert _centroid(jpeg_image[0])[0] > _centroid(jpeg_image[2])[0] + 1
