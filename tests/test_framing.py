"""Zoomed framing of the built-in survey: each galaxy fills a set fraction of its stamp."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from astropt import simulate

SIZE = 64


def _half_light_radius(plane: np.ndarray) -> float:
    """Radius (pixels) of the circle about the flux-weighted centre enclosing half the flux."""
    rows, cols = np.indices(plane.shape)
    total = plane.sum()
    cy, cx = (rows * plane).sum() / total, (cols * plane).sum() / total
    radius = np.hypot(rows - cy, cols - cx).ravel()
    order = np.argsort(radius)
    enclosed = np.cumsum(plane.ravel()[order])
    return float(radius[order][np.searchsorted(enclosed, total / 2)])


@pytest.fixture(scope="module")
def round_galaxies():
    """Nearly face-on galaxies (circular apertures measure their semi-major axis) over the
    survey's redshift range, without mergers (a partner moves the light centre)."""
    params = simulate.sample_population(400, np.random.default_rng(5))
    keep = np.flatnonzero((params["axis_ratio"] > 0.75) & ~params["is_merger"])
    redshift = params["redshift"][keep]
    # The 12 nearest and 12 farthest of them: the redshift lever is as long as it gets.
    chosen = keep[np.r_[np.argsort(redshift)[:12], np.argsort(redshift)[-12:]]]
    return {k: v[chosen] for k, v in params.items()}


def _radii(params: dict, pixel_scales) -> np.ndarray:
    images = simulate.render(
        params, SIZE, None, noise=False, isolated=True, pixel_scales=pixel_scales
    )
    return np.array([_half_light_radius(image[1]) for image in images])  # r band


def test_zoom_keeps_the_half_light_radius_in_pixels_while_the_pixel_scale_varies(
    round_galaxies,
):
    params = round_galaxies
    scales = simulate.zoom_pixel_scales(
        params["r_half_arcsec"], params["seeing_fwhm_r"], SIZE, simulate.ZOOM_FILL
    )
    near, far = slice(0, 12), slice(12, 24)
    assert params["redshift"][far].min() > 2 * params["redshift"][near].max()
    # The pixel scale follows the galaxies: distant ones are small, so finer pixels.
    assert np.median(scales[near]) > 1.5 * np.median(scales[far])

    zoom = _radii(params, scales)
    fixed = _radii(params, None)
    # Fixed framing: near galaxies are much bigger in pixels than far ones.
    assert np.median(fixed[near]) > 1.5 * np.median(fixed[far])
    # Zoom: about the target everywhere (half-light diameter = ZOOM_FILL of the side),
    # with no trend in redshift.
    target = simulate.ZOOM_FILL * SIZE / 2
    np.testing.assert_allclose(np.median(zoom), target, rtol=0.2)
    assert np.percentile(zoom, 90) / np.percentile(zoom, 10) < 1.5
    assert np.median(zoom[near]) / np.median(zoom[far]) == pytest.approx(1.0, abs=0.2)


def test_zoom_renders_the_same_galaxies_with_their_pixel_scale_in_the_truth():
    rgb_fixed, _, fixed = simulate.make_stamps(6, SIZE, seed=3)
    rgb_zoom, _, zoom = simulate.make_stamps(6, SIZE, seed=3, framing="zoom")
    assert "pixel_scale_arcsec" not in fixed
    for key, value in fixed.items():
        np.testing.assert_array_equal(zoom[key], value)
    expected = simulate.zoom_pixel_scales(fixed["r_half_arcsec"], fixed["seeing_fwhm_r"], SIZE)
    np.testing.assert_allclose(zoom["pixel_scale_arcsec"], expected, rtol=1e-6)
    assert not np.array_equal(rgb_fixed, rgb_zoom)
    with pytest.raises(ValueError, match="framing"):
        simulate.make_stamps(1, SIZE, seed=3, framing="zoomed")


def test_zoomed_survey_files_record_the_pixel_scale_of_every_stamp(tmp_path):
    meta = simulate.write_survey(tmp_path, 10, SIZE, seed=1, framing="zoom", progress=False)
    on_disk = json.loads((tmp_path / "survey.json").read_text())
    assert on_disk["framing"] == "zoom" and meta["framing"] == "zoom"
    assert on_disk["zoom_fill"] == simulate.ZOOM_FILL
    assert on_disk["columns"]["pixel_scale_arcsec"]["unit"] == "arcsec/pixel"
    table = pq.read_table(tmp_path / meta["shards"]["train"][0]).to_pydict()
    scales = np.array(table["pixel_scale_arcsec"])
    expected = simulate.zoom_pixel_scales(
        np.array(table["r_half_arcsec"]), np.array(table["seeing_fwhm_r"]), SIZE
    )
    np.testing.assert_allclose(scales, expected, rtol=1e-6)
    assert scales.max() > 1.2 * scales.min()  # one scale per stamp, not one per survey


def test_survey_command_takes_the_framing(tmp_path):
    with pytest.raises(ValueError, match="framing"):
        simulate.writer.SurveyOptions(out=str(tmp_path), framing="wide")
