"""Morphometrics: each measure recovers a property planted in an analytic galaxy image."""

from __future__ import annotations

import numpy as np
import pytest

from astropt.morphometrics import feature_names, morphometrics

SIZE = 64


def gaussian(sigma_major: float, sigma_minor: float, angle_deg: float, amplitude=1.0):
    """An elliptical Gaussian centred on the stamp (pixel units; angle from the x axis)."""
    centre = (SIZE - 1) / 2.0
    yy, xx = np.mgrid[:SIZE, :SIZE] - centre
    phi = np.radians(angle_deg)
    u = xx * np.cos(phi) + yy * np.sin(phi)
    v = -xx * np.sin(phi) + yy * np.cos(phi)
    return amplitude * np.exp(-0.5 * ((u / sigma_major) ** 2 + (v / sigma_minor) ** 2))


def features(images: np.ndarray) -> dict[str, np.ndarray]:
    values = morphometrics(images)
    assert values.shape == (len(images), len(feature_names()))
    return dict(zip(feature_names(), values.T))


def test_sizes_shape_colour_and_symmetry_of_planted_galaxies():
    round_ = gaussian(4.0, 4.0, 0.0)
    flat = gaussian(6.0, 2.0, 30.0)
    bands = np.stack([np.stack([2.0 * g, g, 0.5 * g]) for g in (round_, flat)])
    got = features(bands.astype(np.float32))
    # Circular Gaussian: half the light within sigma * sqrt(2 ln 2); r20, r80 likewise.
    radius = lambda f: 4.0 * np.sqrt(-2 * np.log(1 - f))  # noqa: E731
    assert got["r50"][0] == pytest.approx(radius(0.5), abs=0.6)
    assert got["r20"][0] == pytest.approx(radius(0.2), abs=0.6)
    assert got["concentration"][0] == pytest.approx(
        5 * np.log10(radius(0.8) / radius(0.2)), abs=0.3
    )
    # Colours: band 0 is twice band 1 -> -2.5 log10(2); band 1 twice band 2 likewise.
    assert got["colour_c0c1_r16"] == pytest.approx(-2.5 * np.log10(2), abs=1e-3)
    assert got["colour_c1c2_r4"] == pytest.approx(-2.5 * np.log10(2), abs=1e-3)
    # Shape: axis ratio 1/3 -> ellipticity 2/3 (moments inside the segment); angle 30 deg.
    assert got["ellipticity"][0] < 0.05
    assert got["ellipticity"][1] == pytest.approx(2 / 3, abs=0.08)
    orientation = np.degrees(0.5 * np.arctan2(got["sin_2phi"][1], got["cos_2phi"][1]))
    assert orientation == pytest.approx(30.0, abs=2.0)
    # Point-symmetric galaxies have no asymmetry and a smooth profile.
    assert got["asymmetry"].max() < 0.01 and got["smoothness"].max() < 0.05


def test_gini_m20_and_asymmetry_respond_to_concentrated_and_lopsided_light():
    rng = np.random.default_rng(0)
    noise = lambda: rng.normal(scale=0.005, size=(SIZE, SIZE))  # noqa: E731
    centre = (SIZE - 1) / 2.0
    yy, xx = np.mgrid[:SIZE, :SIZE] - centre
    disc = (np.hypot(yy, xx) <= 10).astype(float) + noise()  # uniform light: Gini ~ 0
    compact = gaussian(1.5, 1.5, 0.0) + noise()
    lopsided = disc + np.roll(gaussian(2.0, 2.0, 0.0), 6, axis=1) + noise()
    images = np.stack([np.stack([g, g, g]) for g in (disc, compact, lopsided)])
    got = features(images.astype(np.float32))
    # The uniform disc scores ~0.2, not 0: the segment (on the boxcar-smoothed image)
    # takes in a one-pixel dark rim.
    assert got["gini"][0] < 0.3 and got["gini"][1] > got["gini"][0] + 0.15
    assert got["concentration"][1] > got["concentration"][0] + 0.3
    assert got["m20"][1] < got["m20"][0] - 0.5  # brightest 20% at the centre: lower M20
    assert got["asymmetry"][2] > got["asymmetry"][0] + 0.05
    assert np.isfinite(morphometrics(np.zeros((1, 3, SIZE, SIZE)))).all()  # an empty stamp
