"""Checks of the synthetic survey against physics (issue 3), not against its own output."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from astropt import simulate as sim

PIX = 0.262


@pytest.fixture(scope="module")
def pop():
    return sim.sample_population(4000, np.random.default_rng(123))


def _subset(params, idx):
    return {k: np.array(v[idx]) for k, v in params.items()}


def _single_sersic(params, n, re_pix, q, pa_deg, flux=100.0):
    """Turn galaxy 0 of ``params`` into one centred Sersic profile with no other light."""
    p = _subset(params, [0])
    p["bulge_frac"][:] = 1.0
    p["bulge_n"][:] = n
    p["bulge_re_arcsec"][:] = re_pix * PIX
    p["bulge_q"][:] = q
    p["pa_rad"][:] = math.radians(pa_deg)
    p["comp_flux"][:] = 0.0
    p["comp_flux"][0, 0, :] = flux
    p["sub_flux"][:] = 0.0
    p["dust_lane_tau"][:] = 0.0
    p["center_offset_pix"][:] = 0.0
    return p


def _elliptical_radius(size, q, pa_deg):
    c = (size - 1) / 2
    x = np.arange(size)[None, :] - c  # right
    y = c - np.arange(size)[:, None]  # up
    pa = math.radians(pa_deg)
    u = -x * math.sin(pa) + y * math.cos(pa)  # along the major axis (PA east of north)
    v = x * math.cos(pa) + y * math.sin(pa)
    return np.sqrt(u**2 + (v / q) ** 2)


# --- Sersic profiles: analytic half-light radius and enclosed light ---------------------


def test_sersic_b_known_values():
    # b_1 = 1.67835, b_4 = 7.66925 (Ciotti & Bertin 1999); b ~ 2n - 1/3 for large n
    assert sim.sersic_b(1.0) == pytest.approx(1.67835, abs=1e-4)
    assert sim.sersic_b(4.0) == pytest.approx(7.66925, abs=1e-4)
    assert sim.sersic_b(10.0) == pytest.approx(2 * 10 - 1 / 3 + 4 / 405 / 10, abs=2e-3)


@pytest.mark.parametrize("n,q,pa", [(1.0, 1.0, 0.0), (2.5, 0.6, 40.0), (4.0, 0.8, 120.0)])
def test_half_light_radius_of_single_sersic(pop, n, q, pa):
    re_pix, size, flux = 8.0, 256, 100.0
    p = _single_sersic(pop, n, re_pix, q, pa, flux)
    img = sim.render(p, size, None, psf=False, noise=False, isolated=True)[0]
    assert img.shape == (3, size, size)
    a = _elliptical_radius(size, q, pa).ravel()
    order = np.argsort(a)
    for band in range(3):
        cum = np.cumsum(img[band].ravel()[order])
        # radius enclosing half of the *total* light (some of an n = 4 profile is outside)
        r_meas = np.interp(0.5 * flux, cum, a[order])
        assert r_meas == pytest.approx(re_pix, rel=0.05)
        # and the light inside 2 r_e follows the analytic Sersic growth curve
        b = special.gammaincinv(2 * n, 0.5)
        expect = flux * special.gammainc(2 * n, b * 2.0 ** (1 / n))
        assert cum[np.searchsorted(a[order], 2 * re_pix)] == pytest.approx(expect, rel=0.03)


def test_position_angle_is_east_of_north(pop):
    size, pa = 128, 30.0
    p = _single_sersic(pop, 1.0, 6.0, 0.35, pa)
    img = sim.render(p, size, None, psf=False, noise=False, isolated=True)[0, 1]
    c = (size - 1) / 2
    x = np.arange(size)[None, :] - c
    y = c - np.arange(size)[:, None]  # north (up) is decreasing row
    w = img / img.sum()
    ixx, iyy, ixy = (w * x * x).sum(), (w * y * y).sum(), (w * x * y).sum()
    phi = 0.5 * math.degrees(math.atan2(2 * ixy, ixx - iyy))  # major axis, from +x (west)
    measured = (phi - 90.0) % 180.0  # east of north = counter-clockwise from up
    assert measured == pytest.approx(pa, abs=1.5)


# --- photometry ----------------------------------------------------------------------


def test_aperture_photometry_recovers_catalogue_magnitudes(pop):
    """Noiseless isolated galaxies (PSF on): flux in a 0.45 S aperture = catalogue flux."""
    size = 256
    radius = 0.45 * size
    comp = pop["comp_flux"].sum(2)
    bulge_ext = np.where(comp[:, 0] > 0, 20 * pop["bulge_re_arcsec"], 0) / PIX
    disk_ext = np.where(comp[:, 1:].sum(1) > 0, 8 * pop["disk_re_arcsec"], 0) / PIX
    sub_r = np.hypot(pop["sub_x"], pop["sub_y"]) / PIX + 4 * pop["sub_re"] / PIX
    sub_ext = np.where(pop["sub_flux"].sum(2) > 0, sub_r, 0).max(1)
    contained = (np.maximum.reduce([bulge_ext, disk_ext, sub_ext]) < radius - 10) & ~pop[
        "is_merger"
    ]
    idx = np.flatnonzero(contained)[:40]
    assert len(idx) == 40
    p = _subset(pop, idx)
    img = sim.render(p, size, None, psf=True, noise=False, isolated=True)
    c = (size - 1) / 2
    r = np.hypot(np.arange(size)[None, :] - c, np.arange(size)[:, None] - c)
    aper = (img * (r <= radius)).sum(axis=(2, 3))  # (n, 3) nanomaggies
    measured = 22.5 - 2.5 * np.log10(aper)
    catalogue = np.stack([p["mag_g"], p["mag_r"], p["mag_z"]], 1)
    assert np.abs(measured - catalogue).max() < 0.05
    # colours come out too
    assert np.abs((measured[:, 0] - measured[:, 1]) - p["g_r"]).max() < 0.05


def _noise_only(params, idx):
    p = _subset(params, idx)
    for k in ("comp_flux", "sub_flux", "nbr_flux"):
        p[k][:] = 0.0
    p["art_kind"][:] = 0
    return p


def test_psf_image_fwhm_and_normalisation():
    for fwhm in (1.0, 1.3, 2.0):
        psf = sim.psf_image(fwhm, 65)
        assert psf.sum() == pytest.approx(1.0, rel=1e-4)
        row = psf[32]
        half = row.max() / 2
        right = row[32:]
        k = np.argmax(right < half)
        # linear interpolation between the samples around half maximum
        x = (k - 1) + (right[k - 1] - half) / (right[k - 1] - right[k])
        # the peak sits on a pixel centre, so FWHM = 2 x; allow for pixel sampling
        assert 2 * x * PIX == pytest.approx(fwhm, rel=0.05)


def test_background_noise_matches_depth(pop):
    """Sky sigma per pixel from the 5-sigma point-source depth: F5 / 5 / sqrt(NEA)."""
    p = _noise_only(pop, np.arange(6))
    img = sim.render(p, 128, np.random.default_rng(5), psf=True, noise=True)
    depths = {"g": 24.0, "r": 23.4, "z": 22.5}
    seeing = {"g": 1.5, "r": 1.3, "z": 1.2}
    for b, band in enumerate("grz"):
        psf = sim.psf_image(seeing[band], 81)
        nea = 1.0 / np.sum(psf**2)  # noise-equivalent area, pixels
        f5 = 10 ** (-0.4 * (depths[band] - 22.5))  # nanomaggies
        expected = f5 / 5 / math.sqrt(nea)
        assert img[:, b].std() == pytest.approx(expected, rel=0.10)
        assert abs(img[:, b].mean()) < 0.05 * expected


def test_source_noise_grows_with_flux(pop):
    """Poisson noise of the source adds to the sky: a bright galaxy is noisier in its core."""
    p = _subset(pop, [int(np.argmin(pop["mag_r"]))])
    clean = sim.render(p, 64, None, noise=False, isolated=True)
    noisy = np.stack([sim.render(p, 64, np.random.default_rng(s), isolated=True) for s in range(8)])
    resid = noisy - clean[None]
    core = clean[0, 1] > np.percentile(clean[0, 1], 99)
    sky = sim.sky_sigma()[1]
    assert resid[:, 0, 1][:, core].std() > 1.2 * sky
    edge = np.zeros_like(core)
    edge[:4] = True
    assert resid[:, 0, 1][:, edge].std() == pytest.approx(sky, rel=0.15)


# --- population ---------------------------------------------------------------------


def test_quenched_galaxies_are_redder_at_fixed_mass(pop):
    quenched = pop["log_ssfr"] < -11.0
    checked = 0
    for lo in (9.5, 10.0, 10.5, 11.0):
        sel = (pop["log_mstar"] >= lo) & (pop["log_mstar"] < lo + 0.5)
        q, s = sel & quenched, sel & ~quenched
        if q.sum() >= 20 and s.sum() >= 20:
            assert np.median(pop["g_r"][q]) > np.median(pop["g_r"][s]) + 0.15
            checked += 1
    assert checked >= 3
    # and the quenched fraction rises with mass (Peng et al. 2010)
    frac = [
        quenched[(pop["log_mstar"] >= lo) & (pop["log_mstar"] < lo + 0.5)].mean()
        for lo in (9.5, 10.0, 10.5, 11.0)
    ]
    assert np.all(np.diff(frac) > 0)


def _implied_k_corrections(pop) -> np.ndarray:
    """``m - M - DM`` per band, ``(n, 3)``: the catalogue's K-corrections, DM from astropy."""
    from astropy.cosmology import FlatLambdaCDM

    dm = FlatLambdaCDM(H0=70, Om0=0.3).distmod(pop["redshift"].astype(float)).value
    apparent_minus_absolute = [
        pop[f"mag_{band}"].astype(float) - pop[f"mag_abs_{band}"].astype(float) for band in "grz"
    ]
    return np.stack(apparent_minus_absolute, axis=1) - dm[:, None]


def test_k_corrections_have_the_published_size_and_sign(pop):
    """Checked against published K-corrections, not against the module's formula.

    SDSS-band K-corrections (Blanton & Roweis 2007; Chilingarian et al. 2010)
    at z = 0.1: red-sequence galaxies K_g ~ 0.3, K_r ~ 0.1, K_z ~ 0.05 (the
    4000 A break leaving g), blue star-forming ones a few hundredths to ~0.1;
    zero at z = 0 by definition; red-sequence observed g - r ~ 1.0 at z = 0.1.
    """
    k = _implied_k_corrections(pop)
    z = pop["redshift"].astype(float)
    red = pop["quenched"] & (pop["gr_rest"] > 0.7)
    blue = ~pop["quenched"] & (pop["gr_rest"] < 0.5)
    near = np.abs(z - 0.1) < 0.015
    red_k, blue_k = np.median(k[red & near], axis=0), np.median(k[blue & near], axis=0)
    assert 0.2 < red_k[0] < 0.5 and 0.03 < red_k[1] < 0.2 and -0.05 < red_k[2] < 0.12
    assert red_k[0] > red_k[1] > red_k[2]
    assert 0.0 < blue_k[0] < 0.25 and -0.05 < blue_k[1] < 0.1
    assert red_k[0] > blue_k[0] + 0.1  # redder spectrum, larger K in g
    # K(z) extrapolates to zero at z = 0 (a wrong distance modulus would leave an offset).
    for sample in (red, blue):
        for band in range(3):
            _, intercept = np.polyfit(z[sample], k[sample, band], 1)
            assert abs(intercept) < 0.03
    # Observed colours: the red sequence at g - r ~ 1.0 at z = 0.1, redder further out.
    assert 0.9 < np.median(pop["g_r"][red & near]) < 1.1
    assert np.median(pop["g_r"][red & (np.abs(z - 0.2) < 0.015)]) > 1.15
    np.testing.assert_allclose(pop["g_r"], pop["mag_g"] - pop["mag_r"], atol=1e-5)
    # The module's own function: zero at z = 0, small over the survey's range.
    assert np.all(sim.k_correction(np.zeros(3), np.array([0.3, 0.6, 0.9])) == 0)
    assert np.abs(k).max() < 1.0


def test_magnitudes_follow_the_distance_modulus(pop):
    # at fixed absolute magnitude, apparent magnitudes fall (get fainter) with redshift
    from astropy.cosmology import FlatLambdaCDM

    dm = FlatLambdaCDM(H0=70, Om0=0.3).distmod(pop["redshift"].astype(float)).value
    sel = (pop["mag_abs_r"] > -21.5) & (pop["mag_abs_r"] < -21.0)
    slope = np.polyfit(dm[sel], pop["mag_r"][sel], 1)[0]
    assert slope == pytest.approx(1.0, abs=0.15)


def test_sizes_follow_the_angular_diameter_distance(pop):
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=70, Om0=0.3)
    z = pop["redshift"].astype(float)
    kpc_per_arcsec = cosmo.angular_diameter_distance(z).to("kpc").value * math.pi / 180 / 3600
    np.testing.assert_allclose(pop["r_half_arcsec"] * kpc_per_arcsec, pop["r_half_kpc"], rtol=5e-3)
    # at fixed mass and type, angular sizes shrink with redshift
    sel = (pop["log_mstar"] > 10.5) & (pop["log_mstar"] < 10.8) & pop["quenched"]
    lo, hi = sel & (z < 0.1), sel & (z > 0.15)
    assert np.median(pop["r_half_arcsec"][lo]) > 1.3 * np.median(pop["r_half_arcsec"][hi])


def _moment_axis_ratio(image: np.ndarray) -> float:
    """Axis ratio b/a of an image's light from its second moments (about its centroid)."""
    rows, cols = np.indices(image.shape, dtype=float)
    w = image / image.sum()
    dy, dx = rows - (w * rows).sum(), cols - (w * cols).sum()
    moments = [
        [(w * dx * dx).sum(), (w * dx * dy).sum()],
        [(w * dx * dy).sum(), (w * dy * dy).sum()],
    ]
    minor, major = np.linalg.eigvalsh(moments)
    return math.sqrt(minor / major)


def test_catalogue_axis_ratio_and_edge_on_label_are_what_the_images_show(pop):
    """Labels are truths about the pixels: axis ratios measured on noiseless renders."""
    isolated = ~pop["is_merger"] & (pop["r_half_arcsec"] < 4) & (pop["art_kind"] == 0)
    edge_on = np.flatnonzero(isolated & pop["is_edge_on"])[:12]
    others = np.flatnonzero(isolated & ~pop["is_edge_on"])[:28]
    p = _subset(pop, np.concatenate([edge_on, others]))
    p["sub_flux"][:] = 0.0  # star-forming clumps are light outside the smooth profiles
    images = sim.render(p, 128, None, psf=False, noise=False, isolated=True)[:, 1]
    measured = np.array([_moment_axis_ratio(image) for image in images])
    assert np.corrcoef(measured, p["axis_ratio"])[0, 1] > 0.95
    assert np.median(np.abs(measured - p["axis_ratio"])) < 0.06
    # Edge-on, disc-dominated galaxies are thin on the sky.
    thin = p["is_edge_on"] & (p["bulge_frac"] < 0.25)
    assert thin.sum() >= 6 and np.all(measured[thin] < 0.35)


def test_population_ranges_and_label_types(pop):
    for name, (dtype, _, _) in sim.LABEL_COLUMNS.items():
        assert pop[name].dtype == np.dtype(dtype), name
        assert len(pop[name]) == 4000
    assert set(np.unique(pop["galaxy10"])) == set(range(10))
    # featured galaxies get fewer "smooth" votes
    assert (
        pop["smooth_frac"][pop["has_spiral"]].mean()
        < pop["smooth_frac"][pop["galaxy10"] == 2].mean() - 0.3
    )
    # the sample is (approximately) limited at r = 19, and reaches it at every redshift
    assert np.percentile(pop["mag_r"], 99) < 19.5
    z = pop["redshift"]
    for lo, hi in ((0.03, 0.08), (0.08, 0.15), (0.15, 0.25)):
        assert np.percentile(pop["mag_r"][(z >= lo) & (z < hi)], 90) > 17.5


# --- colour images ------------------------------------------------------------------------


def test_rgb_matches_astropy_lupton():
    from astropy.visualization import make_lupton_rgb

    rng = np.random.default_rng(0)
    flux = (rng.normal(0, 0.02, (2, 3, 32, 32)) + rng.exponential(0.2, (2, 3, 32, 32))).astype(
        np.float32
    )
    flux[0, :, 10:14, 10:14] = 50.0  # saturated
    ours = sim.to_rgb_uint8(flux)
    assert ours.shape == (2, 32, 32, 3) and ours.dtype == np.uint8
    s = sim.DR8
    for i in range(2):
        g, r, z = (flux[i, b].astype(float) * s.rgb_scale[b] for b in range(3))
        ref = make_lupton_rgb(z, r, g, stretch=s.rgb_stretch, Q=s.rgb_q, minimum=0)
        # astropy truncates where we round: at most one level apart
        assert np.abs(ref.astype(int) - ours[i].astype(int)).max() <= 1


# --- determinism, stamps, survey files -------------------------------------------------------


def test_make_stamps_depend_only_on_seed_and_index():
    rgb, flux, lab = sim.make_stamps(7, 64, seed=11)
    assert rgb.shape == (7, 64, 64, 3) and rgb.dtype == np.uint8
    assert flux.shape == (7, 3, 64, 64) and flux.dtype == np.float32
    rgb2, flux2, lab2 = sim.make_stamps(3, 64, seed=11, start=4)
    np.testing.assert_array_equal(rgb2, rgb[4:])
    np.testing.assert_array_equal(flux2, flux[4:])
    for k in sim.LABEL_COLUMNS:
        np.testing.assert_array_equal(lab2[k], lab[k][4:])
    np.testing.assert_array_equal(lab["dr8_id"], np.arange(7))
    # another chunking inside the renderer gives the same pixels
    f3, _ = next(sim.iter_render(np.arange(7), 64, 11, block=2, chunk=1))
    np.testing.assert_array_equal(f3, flux[:1])
    # another seed gives other galaxies
    assert not np.array_equal(sim.make_stamps(2, 64, seed=12)[1], flux[:2])


def test_bigger_stamp_is_a_wider_field_of_the_same_sky():
    _, small, _ = sim.make_stamps(2, 64, seed=3)
    _, big, _ = sim.make_stamps(2, 128, seed=3)
    # same galaxy, same pixel scale: the central 64 px agree up to noise
    centre = big[:, :, 32:96, 32:96]
    diff = (centre - small)[:, 1]
    assert np.abs(np.median(diff)) < 0.01
    assert diff.std() < 3 * sim.sky_sigma()[1]


@pytest.mark.slow
def test_survey_is_reproducible_across_workers_and_loads_with_datasets(tmp_path):
    import datasets

    kwargs = dict(n=25, image_size=64, seed=4, shard_size=6, progress=False)
    a = sim.write_survey(tmp_path / "a", workers=1, float_bands=True, **kwargs)
    sim.write_survey(tmp_path / "b", workers=2, float_bands=True, **kwargs)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.parquet"))
    assert files_a == files_b and len(files_a) >= 5
    for f in files_a:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert a["splits"] == {"train": 21, "validation": 2, "test": 2}  # i % 10 rule
    with pytest.raises(FileExistsError):
        sim.write_survey(tmp_path / "a", workers=1, **kwargs)

    ds = datasets.load_dataset(
        "parquet", data_dir=str(tmp_path / "a"), cache_dir=str(tmp_path / "hf-cache")
    )
    assert set(ds) == {"train", "validation", "test"}
    assert ds["train"].num_rows == 21 and ds["test"].num_rows == 2
    assert isinstance(ds["train"].features["image"], datasets.Image)
    row = ds["validation"][0]
    assert row["image"].size == (64, 64) and row["image"].mode == "RGB"
    assert row["dr8_id"] % 10 == 8
    assert len(row["flux_grz"]) == 3 * 64 * 64
    # the stored rows are the stamps make_stamps renders
    rgb, flux, lab = sim.make_stamps(1, 64, seed=4, start=row["dr8_id"])
    np.testing.assert_array_equal(np.asarray(row["flux_grz"], np.float32), flux[0].ravel())
    assert row["galaxy10"] == lab["galaxy10"][0]
    raw = ds["validation"].cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert raw["bytes"] == sim.encode_jpeg(rgb[0]) and raw["path"] is None
    decoded = np.asarray(row["image"], dtype=float)
    assert np.abs(decoded - rgb[0]).mean() < 8.0  # lossy, and noise is all high frequency
    tab = ds["train"].with_format("numpy")[:]
    for name, (dtype, _, _) in sim.LABEL_COLUMNS.items():
        assert tab[name].dtype == np.dtype(dtype), name


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError):
        sim.make_stamps(2, 4, seed=0)
    with pytest.raises(ValueError):
        sim.write_survey(tmp_path / "x", n=0)
    with pytest.raises(ValueError):
        sim.split_indices(10, "training")
    with pytest.raises(ValueError):
        sim.render(sim.sample_population(1, np.random.default_rng(0)), 32, None, noise=True)
