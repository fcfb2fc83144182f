"""A built-in synthetic survey: DESI Legacy Survey DR8-like grz stamps with physical truth.

Every stamp is rendered from a galaxy whose physical parameters are known, so an
embedding can be tested against the truth (issue 3). The library needs no
network: ``make_stamps`` renders in memory, ``write_survey`` (and
``data/make_synthetic_survey.py``) writes parquet shards in the
``Smith42/galaxies`` schema.

Public API
----------
``sample_population(n, rng) -> dict``      physical parameters + labels, length n
``render(params, image_size, rng, psf=True, noise=True) -> (n, 3, S, S) float32``
                                           nanomaggies per pixel, bands g, r, z
``to_rgb_uint8(flux) -> (n, S, S, 3) uint8``  z, r, g -> R, G, B, Lupton asinh stretch
``make_stamps(n, image_size, seed, start=0) -> (rgb, flux, labels)``
                                           galaxy ``i`` depends only on ``(seed, i)``
``write_survey(out, n, image_size, seed, ...)``  parquet shards + ``survey.json``

Stamps keep the survey's pixel scale at every size: a 64 px stamp is the central
16.8 arcsec of the same sky as a 512 px one (134 arcsec), *not* a downsampled
512 stamp. The centre pixel grid, the PSF, the noise level per pixel and the
angular size of each galaxy do not depend on the stamp size (only the noise
realisation does).

Numbers and where they come from
--------------------------------
Survey (``SurveySpec``; DESI Legacy Imaging Surveys DR8, Dey et al. 2019, AJ 157, 168):

* pixel scale 0.262 arcsec/pixel (DECam / Legacy Surveys coadd pixels);
* bands g, r, z; fluxes in nanomaggies, AB zero point 22.5
  (``m = 22.5 - 2.5 log10(flux)``), the Legacy Surveys catalogue convention;
* 5-sigma point-source AB depths g 24.0, r 23.4, z 22.5 (DR8 DECaLS targets);
  the per-pixel sky noise is ``sigma_pix = F5 / 5 / sqrt(NEA)`` with
  ``F5 = 10**(-0.4 (m5 - 22.5))`` and ``NEA = 1 / sum(psf**2)`` the
  noise-equivalent area of the PSF at the median seeing: the optimal
  (PSF-weighted) flux of a point source at the depth then has S/N = 5;
* seeing FWHM median 1.5 / 1.3 / 1.2 arcsec in g / r / z, log-normal scatter
  0.15 (shared by the bands of one object) plus 0.07 per band, clipped to
  0.8-2.6 arcsec;
* PSF: double Gaussian, 90 % core + 10 % wing of twice the core width (the
  classic SDSS-style PSF model), scaled so its FWHM equals the seeing;
* source Poisson noise with an effective gain of 1e4 photo-electrons per
  nanomaggy (DECam zero points ~26.5 mag for 1 e-/s and ~3 x 90 s per band);
* colour JPEGs: z, r, g into R, G, B with the colour-preserving asinh stretch
  of Lupton et al. 2004 (the one ``astropy.visualization.make_lupton_rgb``
  implements; ``tests/test_simulate.py`` checks ours against it), as survey
  cutout services do; 8 bit, Pillow JPEG quality 90, 4:4:4.

Cosmology: flat LambdaCDM, H0 = 70 km/s/Mpc, Omega_m = 0.3, computed once with
``astropy.cosmology.FlatLambdaCDM`` into a 2048-point interpolation table in
log(1+z) (``cosmology_table``).

Population (``sample_population``):

* selection: an (approximately) flux-limited sample, r < 19.0 (the Galaxy Zoo
  DESI selection, Walmsley et al. 2023), 0.01 < z < 0.25, 9 < log M* < 11.5;
  stellar masses follow the double-Schechter mass function of Baldry et al.
  2012 (GAMA: log M* = 10.66, phi1 = 3.96e-3, alpha1 = -0.35, phi2 = 0.79e-3,
  alpha2 = -1.47) weighted by the comoving volume in which the galaxy passes
  the flux limit, and redshifts are drawn uniformly in comoving volume up to
  that limit, so massive galaxies reach higher z (the Malmquist trend of
  real samples);
* quenched fraction ``1 - exp(-(M*/10**10.56)**0.80)``: the mass-quenching
  efficiency of Peng et al. 2010;
* star-forming main sequence ``log SFR = 0.76 log M* - 7.64`` (Renzini & Peng
  2015, z ~ 0) with 0.3 dex scatter and ``(1+z)**2.8`` evolution (the cosmic
  decline of specific star formation, e.g. Speagle et al. 2014); quenched
  galaxies lie 1.7 +- 0.35 dex (at least 0.9 dex) below it;
* rest-frame g-r: blue cloud ``0.50 + 0.10 (log M* - 10)``, red sequence
  ``0.76 + 0.04 (log M* - 10.5)`` (SDSS colour bimodality, Strateva et al.
  2001; Baldry et al. 2004), mixed by a logistic in log sSFR centred on
  -11; scatter 0.035 mag; rest r-z = 0.6 (g-r) - 0.02 +- 0.03;
* mass-to-light ratio ``log(M/L_r) = -0.306 + 1.097 (g-r)`` (Bell et al.
  2003, from the colour), solar absolute magnitude M_sun,r = 4.65 AB (Willmer
  2018); M_g = M_r + (g-r), M_z = M_r - (r-z);
* dust: inclined discs are dimmed by ``A_r = a (-log10 q_disk)`` (a = 0.55 for
  star-forming, 0.15 for passive discs; inclination dependence as in Masters
  et al. 2010) and reddened with a ``lambda**-0.7`` attenuation curve
  (Charlot & Fall 2000): A_g = 1.205 A_r, A_z = 0.765 A_r;
* K-corrections: linear in z with a colour-dependent slope,
  ``K_b(z) = z (c_b + d_b (g-r)_rest)``; an approximation (ours) that gives
  red-sequence galaxies observed g-r ~ 1.0 at z = 0.1 and ~ 1.4 at z = 0.25
  and blue ones 0.1-0.2 mag of reddening, of the size of published
  K-corrections (e.g. Blanton & Roweis 2007) at these redshifts; not a fit;
* apparent magnitudes ``m = M + DM(z) + K(z)``;
* sizes: the size-mass relations of van der Wel et al. 2014 (3D-HST+CANDELS,
  z = 0.25 bin): star-forming ``log R_e/kpc = 0.86 + 0.25 log(M*/5e10)``,
  scatter 0.16 dex; quenched ``0.60 + 0.75 log(M*/5e10)``, scatter 0.10 dex,
  flattening to slope 0.25 below 10**10.2 M_sun as low-mass early types do
  (Shen et al. 2003); evolved to each z with ``(1+z)**-0.75`` (star-forming)
  and ``(1+z)**-1.48`` (quenched) from the same paper. ``r_half_arcsec =
  R_e / (kpc per arcsec at z)``, the angular-diameter distance scale;
* structure: Sersic bulge (b_n from the exact ``gammaincinv(2n, 1/2)``) plus
  exponential disc; bulge r_e / disc r_e 0.12-0.4 (Courteau et al. 1996
  find bulge r_e ~ 0.2 disc scale lengths, i.e. ~ 0.13 disc r_e, in late
  types; early types have larger bulges); bulge fraction rising with
  mass for discs, 1 for ellipticals; elliptical fraction of quenched
  galaxies rising with mass; intrinsic disc thickness 0.1-0.2 and bulge
  flattening 0.5-0.8, random orientations (``cos i`` uniform) giving the
  projected axis ratio ``q**2 = cos(i)**2 (1 - q0**2) + q0**2``;
  ellipticals q = 0.75 +- 0.13;
* spiral structure in star-forming discs (most of them, fewer at low mass):
  logarithmic arms ``theta = phi0 + ln(R/R0) / tan(pitch)``, 1-4 arms (2 most
  common, as Galaxy Zoo 2 finds), pitch 8-45 deg and tighter for larger
  bulges (the Hubble sequence; Kennicutt 1981), carrying the young (bluer)
  part of the disc light; star-forming clumps along the arms; bars in
  15-50 % of discs rising with mass (Masters et al. 2011);
* edge-on discs (inclination > 78.5 deg) carry a dust lane;
* mergers (6 %): a partner of mass ratio 0.3-1 and tidal tails; disturbed
  galaxies (5 %): a tidal plume (discs) or shells (ellipticals);
* neighbours: a physical companion in 20 % of fields, foreground stars
  (1 per arcmin^2, r = 15-22.5) and background galaxies (4 per arcmin^2,
  r = 18-22.5) with Euclidean-like number-count slopes;
* artefacts (3 %): a saturated star with diffraction spikes and a bleed trail,
  or a satellite trail in one band (a single exposure).

Labels (``LABEL_COLUMNS``, written to parquet with the dtypes listed there) are
the truth behind each image, plus Galaxy Zoo-like answers: ``smooth_frac`` is a
vote fraction from 40 simulated volunteers whose chance of answering "smooth"
falls with how strong and how well resolved the features are (the resolution
bias of real Galaxy Zoo votes), and ``galaxy10`` follows the Galaxy10 DECaLS
classes (``GALAXY10_CLASSES``).

Determinism: galaxy ``i`` of survey ``seed`` draws everything (its parameters
and its noise) from ``np.random.default_rng([seed, i])``, so a stamp is the
same whatever chunking, worker count or split it is rendered in.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import fft as sfft
from scipy import special

SIM_VERSION = "1.0"

BANDS = ("g", "r", "z")

GALAXY10_CLASSES = (
    "Disturbed",
    "Merging",
    "Round Smooth",
    "In-between Round Smooth",
    "Cigar Shaped Smooth",
    "Barred Spiral",
    "Unbarred Tight Spiral",
    "Unbarred Loose Spiral",
    "Edge-on without Bulge",
    "Edge-on with Bulge",
)

# name -> (dtype, unit, description). The parquet writer, make_stamps and the
# docs all read this one table.
LABEL_COLUMNS: dict[str, tuple[str, str, str]] = {
    "dr8_id": (
        "int64",
        "",
        "galaxy index i in the survey (unique; the stamp depends on (seed, i))",
    ),
    "redshift": ("float32", "", "cosmological redshift"),
    "log_mstar": ("float32", "log10 M_sun", "stellar mass"),
    "log_ssfr": ("float32", "log10 1/yr", "specific star formation rate"),
    "mag_abs_g": ("float32", "AB mag", "rest-frame absolute magnitude, g (dust included)"),
    "mag_abs_r": ("float32", "AB mag", "rest-frame absolute magnitude, r (dust included)"),
    "mag_abs_z": ("float32", "AB mag", "rest-frame absolute magnitude, z (dust included)"),
    "mag_g": ("float32", "AB mag", "apparent total magnitude, g"),
    "mag_r": ("float32", "AB mag", "apparent total magnitude, r"),
    "mag_z": ("float32", "AB mag", "apparent total magnitude, z"),
    "g_r": ("float32", "AB mag", "observed colour mag_g - mag_r"),
    "r_z": ("float32", "AB mag", "observed colour mag_r - mag_z"),
    "r_half_arcsec": ("float32", "arcsec", "half-light semi-major axis of bulge + disc"),
    "sersic_n": ("float32", "", "Sersic index of the dominant component (disc: 1)"),
    "bulge_frac": ("float32", "", "bulge-to-total flux ratio in r"),
    "axis_ratio": ("float32", "", "projected axis ratio b/a (r-light-weighted over components)"),
    "pos_angle": (
        "float32",
        "deg",
        "major-axis position angle, east of north (counter-clockwise from up), 0-180",
    ),
    "seeing_fwhm_r": ("float32", "arcsec", "PSF FWHM in r"),
    "smooth_frac": ("float32", "", "Galaxy Zoo-like vote fraction for 'smooth' (40 votes)"),
    "is_edge_on": ("bool", "", "disc seen edge-on (inclination > 78.5 deg)"),
    "has_bar": ("bool", "", "bar (answered for discs not edge-on)"),
    "has_spiral": ("bool", "", "spiral arms (answered for discs not edge-on)"),
    "arm_count": ("int64", "", "number of spiral arms (0 when has_spiral is false)"),
    "arm_pitch_deg": (
        "float32",
        "deg",
        "arm pitch angle, small = tight (0 when has_spiral is false)",
    ),
    "is_merger": ("bool", "", "major merger with tidal tails"),
    "is_artefact": ("bool", "", "saturated-star spikes or a satellite trail in the stamp"),
    "galaxy10": ("int64", "", "Galaxy10 DECaLS class 0-9 (GALAXY10_CLASSES)"),
}

IMAGE_SIZES = (64, 128, 256, 512)


@dataclass(frozen=True)
class SurveySpec:
    """Survey constants (sources in the module docstring). Angles in arcsec."""

    pixel_scale: float = 0.262
    zero_point: float = 22.5
    psf_depth: tuple[float, float, float] = (24.0, 23.4, 22.5)  # 5-sigma point source, g r z
    seeing_fwhm: tuple[float, float, float] = (1.5, 1.3, 1.2)  # median, g r z
    seeing_scatter_common: float = 0.15  # log-normal sigma shared by the bands
    seeing_scatter_band: float = 0.07
    seeing_range: tuple[float, float] = (0.8, 2.6)
    psf_wing_frac: float = 0.1
    psf_wing_ratio: float = 2.0
    electrons_per_nmgy: float = 1.0e4
    mag_limit_r: float = 19.0
    z_range: tuple[float, float] = (0.01, 0.25)
    log_mstar_range: tuple[float, float] = (9.0, 11.5)
    field_size_pix: int = 512  # neighbours are scattered over the largest stamp
    star_density: float = 1.0  # per arcmin^2, r < 22.5
    galaxy_density: float = 4.0  # per arcmin^2, r < 22.5
    # Colour JPEG: flux (nmgy) is multiplied by these per band (g, r, z) before
    # the Lupton asinh stretch, so that a typical galaxy is neutral-to-yellow
    # and the sky noise is a dark speckle as in the Legacy Surveys viewer.
    rgb_scale: tuple[float, float, float] = (1.75, 1.0, 0.72)
    rgb_stretch: float = 0.16
    rgb_q: float = 5.0
    jpeg_quality: int = 90


DR8 = SurveySpec()

# Sizes of the per-galaxy arrays of sub-objects.
N_CLUMPS = 12
N_TAIL = 28  # two tails of 14 blobs, or three shells of 9
N_SUB = N_CLUMPS + N_TAIL
N_FIELD = 40
N_PARTNER_TAIL = 10
N_NBR = 2 + N_PARTNER_TAIL + N_FIELD  # merger partner, companion, partner's tail, field
N_UNIFORMS = 1024  # uniforms drawn per galaxy (a fixed budget keeps galaxy i's stream fixed)

_F32 = np.float32


# ----------------------------------------------------------------------------
# Cosmology and small physics helpers
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CosmologyTable:
    """Distances on a grid in z (flat LCDM, H0 = 70, Om0 = 0.3), for np.interp.

    ``z`` (N,), ``distmod`` (N,) mag, ``kpc_per_arcsec`` (N,) proper kpc per arcsec
    (angular-diameter distance), ``comoving_volume`` (N,) Gpc^3 (full sky).
    """

    z: np.ndarray
    distmod: np.ndarray
    kpc_per_arcsec: np.ndarray
    comoving_volume: np.ndarray

    def _at(self, table: np.ndarray, z) -> np.ndarray:
        # interpolate in log(1+z) where the distance functions are smooth
        return np.interp(np.log1p(np.asarray(z, float)), np.log1p(self.z), table)

    def dm(self, z) -> np.ndarray:
        return self._at(self.distmod, z)

    def scale(self, z) -> np.ndarray:
        return self._at(self.kpc_per_arcsec, z)

    def volume(self, z) -> np.ndarray:
        return self._at(self.comoving_volume, z)


@functools.lru_cache(maxsize=1)
def cosmology_table() -> CosmologyTable:
    """Compute the distance table once with astropy (about 0.1 s)."""
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=70.0, Om0=0.3)
    z = np.expm1(np.linspace(np.log1p(0.001), np.log1p(0.40), 2048))
    dm = cosmo.distmod(z).value
    scale = 1.0 / cosmo.arcsec_per_kpc_proper(z).value
    vol = cosmo.comoving_volume(z).value / 1e9
    return CosmologyTable(z=z, distmod=dm, kpc_per_arcsec=scale, comoving_volume=vol)


def sersic_b(n) -> np.ndarray:
    """Exact Sersic b_n: the half-light radius encloses half the light."""
    return special.gammaincinv(2.0 * np.asarray(n, float), 0.5)


def sersic_enclosed(radius, r_e, n) -> np.ndarray:
    """Fraction of a Sersic profile's light inside an ellipse of semi-major ``radius``."""
    n = np.asarray(n, float)
    x = sersic_b(n) * (np.asarray(radius, float) / np.asarray(r_e, float)) ** (1.0 / n)
    return special.gammainc(2.0 * n, x)


def k_correction(z, gr_rest) -> np.ndarray:
    """K-corrections (g, r, z) in mag, shape ``z.shape + (3,)``; see the module docstring."""
    z = np.asarray(z, float)[..., None]
    c = np.clip(np.asarray(gr_rest, float), 0.2, 1.0)[..., None]
    # columns g, r, z: K_b = z (c_b + d_b (g-r)); g - r slope spans ~0.8 (blue) to ~2.4 (red)
    intercept = np.array([-1.90, -0.52, 0.03])
    slope = np.array([6.67, 1.82, 0.60])
    return z * (intercept + slope * c)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _quenched_fraction(logm):
    return 1.0 - np.exp(-((10.0 ** (logm - 10.56)) ** 0.80))


def _main_sequence(logm, z):
    """log sSFR of the star-forming main sequence, 1/yr."""
    return -0.24 * logm - 7.64 + 2.8 * np.log10(1.0 + z)


def _rest_gr(logm, log_ssfr):
    blue = 0.50 + 0.10 * (logm - 10.0)
    red = 0.76 + 0.04 * (logm - 10.5)
    w = _sigmoid((log_ssfr + 11.0) / 0.25)
    return w * blue + (1.0 - w) * red


def _abs_mag_r(logm, gr):
    log_ml = -0.306 + 1.097 * gr
    return 4.65 - 2.5 * (logm - log_ml)


def _size_kpc(logm, quenched, z):
    """Median half-light semi-major axis (kpc) at z, van der Wel et al. 2014."""
    x = logm - math.log10(5e10)
    early = 0.60 + 0.75 * np.maximum(x, -0.5) + 0.25 * np.minimum(x + 0.5, 0.0)
    late = 0.86 + 0.25 * x
    evo = np.log10((1.0 + z) / 1.25)
    return 10.0 ** np.where(quenched, early - 1.48 * evo, late - 0.75 * evo)


def _zmax(abs_r, gr, survey: SurveySpec) -> np.ndarray:
    """Redshift at which m_r reaches the flux limit (fixed-point on the K-correction)."""
    cos = cosmology_table()
    lo, hi = survey.z_range
    target = survey.mag_limit_r - abs_r
    z = np.full_like(target, 0.1)
    for _ in range(4):
        dm_needed = target - k_correction(z, gr)[..., 1]
        z = np.interp(dm_needed, cos.distmod, cos.z)
    return np.clip(z, lo, hi)


@functools.lru_cache(maxsize=8)
def _mass_cdf(survey: SurveySpec) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-CDF table of log M* for the flux-limited sample."""
    cos = cosmology_table()
    lo, hi = survey.log_mstar_range
    grid = np.linspace(lo, hi, 1001)
    x = grid - 10.66
    # Baldry et al. 2012 double Schechter, per dex
    phi = (
        np.log(10)
        * np.exp(-(10.0**x))
        * (3.96e-3 * 10.0 ** (x * (1 - 0.35)) + 0.79e-3 * 10.0 ** (x * (1 - 1.47)))
    )
    fq = _quenched_fraction(grid)
    gr = fq * _rest_gr(grid, -12.0) + (1 - fq) * _rest_gr(grid, _main_sequence(grid, 0.1))
    zmax = _zmax(_abs_mag_r(grid, gr), gr, survey)
    weight = phi * np.maximum(cos.volume(zmax) - cos.volume(survey.z_range[0]), 0.0)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (weight[1:] + weight[:-1]) * np.diff(grid))])
    return cdf / cdf[-1], grid


# ----------------------------------------------------------------------------
# Population
# ----------------------------------------------------------------------------


class _Draws:
    """Hands out columns of a per-galaxy uniform matrix (n, N_UNIFORMS) in a fixed order."""

    def __init__(self, u: np.ndarray):
        self.u = u
        self.i = 0

    def uniform(self, k: int | None = None) -> np.ndarray:
        m = 1 if k is None else k
        if self.i + m > self.u.shape[1]:
            raise RuntimeError("N_UNIFORMS is too small for the population model")
        out = self.u[:, self.i : self.i + m]
        self.i += m
        return out[:, 0] if k is None else out

    def normal(self, k: int | None = None) -> np.ndarray:
        return special.ndtri(np.clip(self.uniform(k), 1e-12, 1 - 1e-12))

    def choice(self, probs: Sequence[float]) -> np.ndarray:
        edges = np.cumsum(probs)[:-1] / np.sum(probs)
        return np.searchsorted(edges, self.uniform(), side="right")


def _galaxy_uniforms(seed: int, indices: np.ndarray) -> tuple[np.ndarray, list]:
    """Per-galaxy generators ``default_rng([seed, i])`` and their first N_UNIFORMS uniforms."""
    gens = [np.random.default_rng([int(seed), int(i)]) for i in indices]
    u = np.empty((len(gens), N_UNIFORMS))
    for k, g in enumerate(gens):
        u[k] = g.random(N_UNIFORMS)
    return u, gens


def sample_population(
    n: int, rng: np.random.Generator, *, survey: SurveySpec = DR8
) -> dict[str, np.ndarray]:
    """Draw ``n`` galaxies: every ``LABEL_COLUMNS`` entry (with its dtype) plus the
    hidden parameters ``render`` needs (float64, some of shape ``(n, k)``).

    ``dr8_id`` is ``arange(n)``. For stamps that depend only on ``(seed, i)`` use
    ``make_stamps``; this function consumes ``rng`` for the whole batch.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    parts = []
    for start in range(0, max(n, 1), 4096):  # bounded memory for the uniform matrix
        m = min(4096, n - start)
        if m <= 0:
            break
        parts.append(_population_from_uniforms(rng.random((m, N_UNIFORMS)), survey))
    if not parts:
        parts.append(_population_from_uniforms(np.zeros((0, N_UNIFORMS)), survey))
    params = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    params["dr8_id"] = np.arange(n, dtype=np.int64)
    return params


def _population_from_uniforms(u: np.ndarray, survey: SurveySpec) -> dict[str, np.ndarray]:
    """The population model: uniforms (n, N_UNIFORMS) -> parameters (see module docstring)."""
    d = _Draws(u)
    n = len(u)
    cos = cosmology_table()
    zlo, zhi = survey.z_range

    # --- mass, star formation, redshift -----------------------------------
    cdf, grid = _mass_cdf(survey)
    logm = np.interp(d.uniform(), cdf, grid)
    quenched = d.uniform() < _quenched_fraction(logm)
    below_ms = np.maximum(1.7 + 0.35 * d.normal(), 0.9)
    sf_offset = np.where(quenched, -below_ms, 0.3 * d.normal())
    gr_scatter = 0.035 * d.normal()
    rz_scatter = 0.03 * d.normal()
    # the flux limit is applied with the colour the galaxy would have at z = 0.1
    gr_nominal = _rest_gr(logm, _main_sequence(logm, 0.1) + sf_offset) + gr_scatter
    zmax = _zmax(_abs_mag_r(logm, gr_nominal), gr_nominal, survey)
    v_lo, v_hi = cos.volume(zlo), cos.volume(zmax)
    z = np.interp(v_lo + d.uniform() * (v_hi - v_lo), cos.comoving_volume, cos.z)
    z = np.clip(z, zlo, zhi)
    log_ssfr = _main_sequence(logm, z) + sf_offset
    gr_rest = _rest_gr(logm, log_ssfr) + gr_scatter
    rz_rest = 0.6 * gr_rest - 0.02 + rz_scatter

    # --- morphology type and orientation ---------------------------------
    is_ell = quenched & (d.uniform() < 0.3 + 0.5 * _sigmoid((logm - 10.9) / 0.25))
    is_disk = ~is_ell
    arms_phys = ~quenched & (d.uniform() < 0.55 + 0.35 * _sigmoid((logm - 9.8) / 0.3))
    cosi = d.uniform()
    q0 = 0.10 + 0.10 * d.uniform()
    qb0 = 0.50 + 0.30 * d.uniform()
    q_ell = np.clip(0.75 + 0.05 * (logm - 11.0) + 0.13 * d.normal(), 0.3, 1.0)
    disk_q = np.sqrt(cosi**2 * (1 - q0**2) + q0**2)
    bulge_q = np.where(is_ell, q_ell, np.sqrt(cosi**2 * (1 - qb0**2) + qb0**2))
    pa = np.pi * d.uniform()  # radians east of north
    edge_on = is_disk & (cosi < 0.2)

    # bulge fraction (r band)
    bt_sf_mean = 0.05 + 0.30 * _sigmoid((logm - 10.5) / 0.35)
    bt_sf = np.clip(bt_sf_mean * np.exp(0.5 * d.normal()), 0.0, 0.7)
    bulgeless = d.uniform() < 0.4 * (1 - _sigmoid((logm - 10.0) / 0.3))
    bt_sf = np.where(bulgeless, 0.0, bt_sf)
    bt_s0 = np.clip(0.55 + 0.15 * d.normal(), 0.25, 0.85)
    bt = np.where(is_ell, 1.0, np.where(quenched, bt_s0, bt_sf))
    n_ell = np.clip(4.0 + 0.5 * (logm - 11.0) + 0.8 * d.normal(), 2.5, 6.0)
    n_s0 = np.clip(3.0 + 0.8 * d.normal(), 1.5, 5.0)
    n_sf = np.clip(2.0 + 0.6 * d.normal(), 1.0, 4.0)
    bulge_n = np.where(is_ell, n_ell, np.where(quenched, n_s0, n_sf))

    # --- dust, magnitudes ---------------------------------------------------
    a_dust = np.where(is_disk, np.where(quenched, 0.15, 0.55), 0.0) * -np.log10(disk_q)
    a_dust = a_dust * (1 - bt)  # the disc carries the dust
    atten = a_dust[:, None] * np.array([1.205, 1.0, 0.765])
    abs_r_int = _abs_mag_r(logm, gr_rest)
    abs_int = np.stack([abs_r_int + gr_rest, abs_r_int, abs_r_int - rz_rest], axis=1)
    abs_mag = abs_int + atten
    app = abs_mag + cos.dm(z)[:, None] + k_correction(z, gr_rest)
    flux = 10.0 ** (-0.4 * (app - survey.zero_point))  # nanomaggies, g r z

    # --- sizes ----------------------------------------------------------------
    scale = cos.scale(z)  # kpc / arcsec
    size_scatter = np.where(quenched, 0.10, 0.16) * d.normal()
    r_half_kpc = _size_kpc(logm, quenched, z) * 10.0**size_scatter
    r_half = r_half_kpc / scale  # arcsec
    size_ratio = 10.0 ** (np.log10(0.12) + np.log10(0.4 / 0.12) * d.uniform())
    disk_re, bulge_re = _split_sizes(r_half, bt, bulge_n, size_ratio)

    # --- bars, arms, clumps ------------------------------------------------------
    bar_phys = is_disk & (bt < 0.6) & (d.uniform() < 0.15 + 0.35 * _sigmoid((logm - 10.2) / 0.3))
    bar_frac = np.where(bar_phys, 0.12 + 0.15 * d.uniform(), 0.0)
    bar_re = disk_re * (0.6 + 0.6 * d.uniform())
    bar_q = 0.2 + 0.15 * d.uniform()
    bar_angle = np.pi * d.uniform()  # in the disc plane, from the major axis
    arm_count_phys = np.array([1, 2, 3, 4])[d.choice([0.08, 0.6, 0.2, 0.12])]
    pitch = np.clip(30.0 - 30.0 * bt + 6.0 * d.normal(), 8.0, 45.0)
    arm_kappa = 3.0 + 5.0 * d.uniform()
    arm_sign = np.where(d.uniform() < 0.5, -1.0, 1.0)
    arm_phase = 2 * np.pi * d.uniform()
    arm_phase = np.where(bar_phys, bar_angle, arm_phase)  # arms start at the bar ends
    arm_r0 = np.where(bar_phys, bar_re, np.maximum(0.25 * disk_re, 1.5 * bulge_re))
    # the young (arm) share of the disc light rises with sSFR
    young_frac = np.where(arms_phys, np.clip(0.5 + 0.3 * (log_ssfr + 10.0), 0.3, 0.75), 0.0)

    # clumps: star-forming knots in the disc plane (on arms when there are arms)
    p_clump = np.where(quenched, 0.0, 0.15 + 0.5 * _sigmoid((log_ssfr + 10.0) / 0.3))
    p_clump = p_clump * np.where(arms_phys, 1.0, 1.3)
    present = d.uniform(N_CLUMPS) < p_clump[:, None]
    h = disk_re / 1.678
    c_r = -h[:, None] * np.log(np.clip(d.uniform(N_CLUMPS) * d.uniform(N_CLUMPS), 1e-9, 1))
    c_r = np.maximum(c_r, arm_r0[:, None] * 0.8)
    which_arm = np.floor(d.uniform(N_CLUMPS) * arm_count_phys[:, None])
    on_arm = (
        arm_phase[:, None]
        + arm_sign[:, None] * np.log(c_r / arm_r0[:, None]) / np.tan(np.radians(pitch))[:, None]
        + 2 * np.pi * which_arm / arm_count_phys[:, None]
        + 0.15 * d.normal(N_CLUMPS)
    )
    c_theta = np.where(arms_phys[:, None], on_arm, 2 * np.pi * d.uniform(N_CLUMPS))
    c_weight = present * np.exp(0.6 * d.normal(N_CLUMPS))
    clump_frac_total = np.where(present.any(1), 0.03 + 0.07 * d.uniform(), 0.0) * (1 - bt)
    c_weight = c_weight / np.maximum(c_weight.sum(1, keepdims=True), 1e-12)
    c_frac = clump_frac_total[:, None] * c_weight
    c_size_kpc = 0.15 + 0.25 * d.uniform(N_CLUMPS)
    # disc plane -> sky offsets (x right, y up), arcsec
    cu = c_r * np.cos(c_theta)
    cv = c_r * np.sin(c_theta) * disk_q[:, None]
    cx_, cy_ = _to_sky(cu, cv, pa[:, None])

    # --- mergers, disturbances, tails, shells ------------------------------------
    merger = d.uniform() < 0.06
    disturbed = ~merger & (d.uniform() < 0.05 / 0.94)
    n_tails = np.where(merger, 2, np.where(disturbed & is_disk, 1, 0))
    shells = disturbed & is_ell
    tail_frac = np.where(merger, 0.08 + 0.08 * d.uniform(), 0.0) + np.where(
        disturbed, 0.10 + 0.10 * d.uniform(), 0.0
    )
    t_phi0 = 2 * np.pi * d.uniform()
    t_curl = (0.6 + 1.0 * d.uniform()) * np.where(d.uniform() < 0.5, -1.0, 1.0)
    t_len = 2.0 + 2.0 * d.uniform()
    slot = np.arange(N_TAIL)
    tail_k = slot // 14
    t = (slot % 14 + 0.5) / 14
    shell_k = np.minimum(slot // 9, 2)
    ts = (slot % 9 + 0.5) / 9
    tail_r = r_half[:, None] * (0.8 + t_len[:, None] * t)
    tail_phi = t_phi0[:, None] + np.pi * tail_k + t_curl[:, None] * t
    shell_r = r_half[:, None] * np.array([1.6, 2.5, 3.6])[shell_k]
    shell_phi = t_phi0[:, None] + np.pi * (shell_k % 2) + (ts - 0.5) * 2.2
    use_shell = shells[:, None]
    b_r = np.where(use_shell, shell_r, tail_r)
    b_phi = np.where(use_shell, shell_phi, tail_phi)
    tail_present = np.where(use_shell, slot < 27, tail_k < n_tails[:, None])
    tb_w = tail_present * np.where(use_shell, 1.0, 1.0 - 0.6 * t)
    tb_w = tb_w / np.maximum(tb_w.sum(1, keepdims=True), 1e-12)
    tb_frac = tail_frac[:, None] * tb_w
    tb_re = r_half[:, None] * np.where(use_shell, 0.25, 0.12 + 0.25 * t)
    tb_x = b_r * -np.sin(b_phi)  # angle measured like the PA (from up, counter-clockwise)
    tb_y = b_r * np.cos(b_phi)
    # blobs are stretched along the tail / shell (tangent direction)
    tb_pa = np.mod(b_phi + np.pi / 2, np.pi)

    # --- component fluxes (band-normalised so the totals equal the magnitudes) ---------
    # rows: bulge, disc, young disc, bar, clumps..., tail blobs...
    disc = 1.0 - bt
    main_share = 1.0 - tail_frac
    comp_r = np.stack(
        [
            bt * main_share,
            disc * (1 - young_frac - bar_frac) * main_share - clump_frac_total,
            disc * young_frac * main_share,
            disc * bar_frac * main_share,
        ],
        axis=1,
    )
    comp_r = np.maximum(comp_r, 0.0)
    parts_r = np.concatenate([comp_r, c_frac, tb_frac], axis=1)  # (n, 4 + N_SUB)
    # colour offsets relative to the whole galaxy: d(g-r), d(r-z)
    d_gr = np.concatenate(
        [
            np.tile([0.08, 0.0, -0.30, 0.04], (n, 1)),
            np.full((n, N_CLUMPS), -0.45),
            np.full((n, N_TAIL), 0.0) + np.where(quenched, 0.0, -0.1)[:, None],
        ],
        axis=1,
    )
    d_rz = 0.5 * d_gr
    w = np.stack(
        [parts_r * 10 ** (-0.4 * d_gr), parts_r, parts_r * 10 ** (0.4 * d_rz)], axis=2
    )  # (n, parts, band)
    w = w / np.maximum(w.sum(1, keepdims=True), 1e-30)
    part_flux = w * flux[:, None, :]  # nanomaggies

    # --- neighbours: merger partner (+ tail), companion, field ----------------
    mu = 0.3 + 0.7 * d.uniform()
    p_quench = d.uniform() < 0.5 * quenched + 0.1
    p_logm = logm + np.log10(mu)
    p_re = _size_kpc(p_logm, p_quench, z) * 10 ** (0.14 * d.normal()) / scale
    p_sep = (0.7 + 1.0 * d.uniform()) * (r_half + p_re)
    p_ang = 2 * np.pi * d.uniform()
    p_flux = flux * mu[:, None] * 10 ** (-0.4 * 0.05 * d.normal())[:, None]
    p_q = 0.35 + 0.6 * d.uniform()
    p_pa = np.pi * d.uniform()
    p_n = np.where(p_quench, 3.5, 1.0)
    px, py = -p_sep * np.sin(p_ang), p_sep * np.cos(p_ang)
    # the partner's own tail
    tt = (np.arange(N_PARTNER_TAIL) + 0.5) / N_PARTNER_TAIL
    pt_r = p_re[:, None] * (0.8 + 2.5 * tt)
    pt_phi = p_ang[:, None] + np.pi + 0.7 * d.uniform()[:, None] + t_curl[:, None] * tt
    ptx = px[:, None] - pt_r * np.sin(pt_phi)
    pty = py[:, None] + pt_r * np.cos(pt_phi)
    pt_w = (1 - 0.6 * tt) / np.sum(1 - 0.6 * tt)
    pt_flux = 0.06 * p_flux[:, None, :] * pt_w[None, :, None]

    comp_on = d.uniform() < 0.2
    c_mu = 10 ** -(0.7 + 1.0 * d.uniform())
    c_logm = logm + np.log10(c_mu)
    c_re = _size_kpc(c_logm, np.zeros(n, bool), z) * 10 ** (0.16 * d.normal()) / scale
    c_sep = 3.0 + (1.5 + 3.5 * d.uniform()) * r_half
    c_ang = 2 * np.pi * d.uniform()
    c_gr = _rest_gr(c_logm, _main_sequence(c_logm, z)) + 0.05 * d.normal()
    c_abs_r = _abs_mag_r(c_logm, c_gr)
    c_mag_r = c_abs_r + cos.dm(z) + k_correction(z, c_gr)[:, 1]
    c_flux_r = 10 ** (-0.4 * (c_mag_r - survey.zero_point))
    c_q = 0.3 + 0.7 * d.uniform()
    c_pa = np.pi * d.uniform()
    c_flux = c_flux_r[:, None] * 10 ** (-0.4 * np.stack([c_gr + 0.2 * z, 0 * z, -0.6 * c_gr], 1))

    field_half = survey.field_size_pix * survey.pixel_scale / 2  # arcsec
    area = (2 * field_half / 60.0) ** 2  # arcmin^2
    lam_star, lam_gal = survey.star_density * area, survey.galaxy_density * area
    f_present = d.uniform(N_FIELD) < (lam_star + lam_gal) / N_FIELD
    f_star = d.uniform(N_FIELD) < lam_star / (lam_star + lam_gal)
    f_x = field_half * (2 * d.uniform(N_FIELD) - 1)
    f_y = field_half * (2 * d.uniform(N_FIELD) - 1)
    f_mag = np.where(
        f_star,
        _powerlaw_mag(d.uniform(N_FIELD), 15.0, 22.5, 0.25),
        _powerlaw_mag(d.uniform(N_FIELD), 18.0, 22.5, 0.45),
    )
    f_gr = np.where(f_star, 0.2 + 1.2 * d.uniform(N_FIELD), 0.4 + 1.1 * d.uniform(N_FIELD))
    f_rz = np.where(f_star, 0.15 + 0.55 * f_gr, 0.1 + 0.35 * f_gr) + 0.05 * d.normal(N_FIELD)
    f_flux_r = f_present * 10 ** (-0.4 * (f_mag - survey.zero_point))
    f_flux = f_flux_r[..., None] * 10 ** (-0.4 * np.stack([f_gr, 0 * f_gr, -f_rz], 2))
    f_re = np.where(f_star, 0.0, 10 ** (np.log10(0.3) + np.log10(4.0) * d.uniform(N_FIELD)))
    f_n = np.where(d.uniform(N_FIELD) < 0.6, 1.0, 4.0)
    f_q = 0.3 + 0.7 * d.uniform(N_FIELD)
    f_pa = np.pi * d.uniform(N_FIELD)

    # --- artefacts -----------------------------------------------------------
    artefact = d.uniform() < 0.03
    art_kind = np.where(artefact, np.where(d.uniform() < 0.6, 1, 2), 0)
    art_x = 0.8 * d.uniform() - 0.4  # fraction of the stamp side, from the centre
    art_y = 0.8 * d.uniform() - 0.4
    art_angle = np.pi * d.uniform()
    art_mag = 11.0 + 3.0 * d.uniform()
    art_band = np.floor(3 * d.uniform())
    art_level = 10 ** (-1.7 + 1.0 * d.uniform())  # trail surface brightness, nmgy / pixel

    # --- seeing -----------------------------------------------------------------
    common = survey.seeing_scatter_common * d.normal()
    seeing = np.stack(
        [
            np.clip(
                survey.seeing_fwhm[b] * np.exp(common + survey.seeing_scatter_band * d.normal()),
                *survey.seeing_range,
            )
            for b in range(3)
        ],
        axis=1,
    )
    center_d = d.uniform(2) - 0.5  # pixels
    lane_tau = np.where(edge_on, np.where(quenched, 0.3, 1.2), 0.0) * (0.6 + 0.8 * d.uniform())

    # --- Galaxy Zoo-like answers ---------------------------------------------------
    has_spiral = arms_phys & ~edge_on
    has_bar = bar_phys & ~edge_on
    is_merger = merger
    arm_strength = young_frac * arm_kappa / 4.0
    feature = (
        has_spiral * (0.6 + 1.2 * arm_strength)
        + has_bar * 0.7
        + edge_on * 1.0
        + (merger | disturbed) * 1.0
        + (present.sum(1) / N_CLUMPS) * 0.5
    )
    resolved = r_half**2 / (r_half**2 + seeing[:, 1] ** 2)
    p_smooth = _sigmoid(2.5 - 5.0 * feature * resolved)
    votes = np.clip(p_smooth + np.sqrt(p_smooth * (1 - p_smooth) / 40) * d.normal(), 0, 1)
    smooth_frac = np.round(votes * 40) / 40

    axis_ratio = np.where(is_ell, bulge_q, bt * bulge_q + (1 - bt) * disk_q)
    sersic_n = np.where(bt >= 0.5, bulge_n, 1.0)
    g10 = np.select(
        [
            merger,
            disturbed,
            edge_on & (bt < 0.1),
            edge_on,
            has_bar,
            has_spiral & (pitch < 20.0),
            has_spiral,
            axis_ratio >= 0.75,
            axis_ratio >= 0.45,
        ],
        [1, 0, 8, 9, 5, 6, 7, 2, 3],
        default=4,
    )

    labels = {
        "redshift": z,
        "log_mstar": logm,
        "log_ssfr": log_ssfr,
        "mag_abs_g": abs_mag[:, 0],
        "mag_abs_r": abs_mag[:, 1],
        "mag_abs_z": abs_mag[:, 2],
        "mag_g": app[:, 0],
        "mag_r": app[:, 1],
        "mag_z": app[:, 2],
        "g_r": app[:, 0] - app[:, 1],
        "r_z": app[:, 1] - app[:, 2],
        "r_half_arcsec": r_half,
        "sersic_n": sersic_n,
        "bulge_frac": bt,
        "axis_ratio": axis_ratio,
        "pos_angle": np.degrees(pa),
        "seeing_fwhm_r": seeing[:, 1],
        "smooth_frac": smooth_frac,
        "is_edge_on": edge_on,
        "has_bar": has_bar,
        "has_spiral": has_spiral,
        "arm_count": np.where(has_spiral, arm_count_phys, 0),
        "arm_pitch_deg": np.where(has_spiral, pitch, 0.0),
        "is_merger": is_merger,
        "is_artefact": artefact,
        "galaxy10": g10,
    }
    out = {k: np.asarray(v).astype(LABEL_COLUMNS[k][0]) for k, v in labels.items()}
    f32 = _F32
    out.update(
        {
            # physical truth not written as labels
            "quenched": quenched,
            "is_elliptical": is_ell,
            "is_disturbed": disturbed,
            "r_half_kpc": r_half_kpc,
            "gr_rest": gr_rest,
            "rz_rest": rz_rest,
            "dust_a_r": a_dust,
            "inclination_deg": np.degrees(np.arccos(cosi)),
            # structure (arcsec, radians)
            "pa_rad": pa,
            "bulge_re_arcsec": bulge_re,
            "bulge_n": bulge_n,
            "bulge_q": bulge_q,
            "disk_re_arcsec": disk_re,
            "disk_q": disk_q,
            "bar_re_arcsec": bar_re,
            "bar_q": bar_q,
            "bar_angle": bar_angle,
            "arm_count_phys": arm_count_phys,
            "arm_pitch_phys": pitch,
            "arm_kappa": arm_kappa,
            "arm_sign": arm_sign,
            "arm_phase": arm_phase,
            "arm_r0_arcsec": arm_r0,
            "dust_lane_tau": lane_tau,
            "seeing_fwhm": seeing,  # (n, 3) arcsec
            "center_offset_pix": center_d,  # (n, 2) x, y
            "comp_flux": part_flux[:, :4, :],  # (n, 4, 3): bulge, disc, young, bar
            # sub-objects of the galaxy (clumps, tail blobs), offsets in arcsec (x right, y up)
            "sub_x": np.concatenate([cx_, tb_x], 1).astype(f32),
            "sub_y": np.concatenate([cy_, tb_y], 1).astype(f32),
            "sub_re": np.concatenate([c_size_kpc / scale[:, None], tb_re], 1).astype(f32),
            "sub_n": np.full((n, N_SUB), 0.5, f32),
            "sub_q": np.concatenate([np.ones((n, N_CLUMPS)), np.full((n, N_TAIL), 0.45)], 1).astype(
                f32
            ),
            "sub_pa": np.concatenate([np.zeros((n, N_CLUMPS)), tb_pa], 1).astype(f32),
            "sub_flux": part_flux[:, 4:, :].astype(f32),  # (n, N_SUB, 3)
            # neighbours: partner, companion, partner tail, field (stars have re = 0)
            "nbr_x": np.concatenate(
                [px[:, None], (-c_sep * np.sin(c_ang))[:, None], ptx, f_x], 1
            ).astype(f32),
            "nbr_y": np.concatenate(
                [py[:, None], (c_sep * np.cos(c_ang))[:, None], pty, f_y], 1
            ).astype(f32),
            "nbr_re": np.concatenate(
                [p_re[:, None], c_re[:, None], 0.3 * p_re[:, None] * np.ones(N_PARTNER_TAIL), f_re],
                1,
            ).astype(f32),
            "nbr_n": np.concatenate(
                [p_n[:, None], np.ones((n, 1)), np.full((n, N_PARTNER_TAIL), 0.5), f_n], 1
            ).astype(f32),
            "nbr_q": np.concatenate(
                [p_q[:, None], c_q[:, None], np.full((n, N_PARTNER_TAIL), 0.5), f_q],
                1,
            ).astype(f32),
            "nbr_pa": np.concatenate(
                [p_pa[:, None], c_pa[:, None], np.mod(pt_phi + np.pi / 2, np.pi), f_pa],
                1,
            ).astype(f32),
            "nbr_flux": np.concatenate(
                [
                    (p_flux * merger[:, None])[:, None, :],
                    (c_flux * comp_on[:, None])[:, None, :],
                    pt_flux * merger[:, None, None],
                    f_flux,
                ],
                1,
            ).astype(f32),
            "art_kind": art_kind,
            "art_xy": np.stack([art_x, art_y], 1),
            "art_angle": art_angle,
            "art_flux": 10 ** (-0.4 * (art_mag - survey.zero_point)),
            "art_band": art_band.astype(np.int64),
            "art_level": art_level,
        }
    )
    return out


def _powerlaw_mag(u, bright, faint, slope):
    """Magnitudes with dlogN/dm = slope between ``bright`` and ``faint`` (inverse CDF)."""
    a = 10 ** (slope * (bright - faint))
    return faint + np.log10(a + u * (1 - a)) / slope


def _to_sky(u, v, pa):
    """Major/minor-axis offsets (u, v) -> image offsets (x right, y up) for PA east of north.

    The major axis points along (-sin pa, cos pa) (up, turning towards the left,
    i.e. east, as PA increases) and the minor axis along (cos pa, sin pa).
    """
    s, c = np.sin(pa), np.cos(pa)
    return -u * s + v * c, u * c + v * s


def _split_sizes(r_half, bt, n_b, ratio, iters: int = 60):
    """Disc and bulge r_e (arcsec) such that bulge + disc has half-light radius ``r_half``.

    Solves ``bt F_n(x/ratio) + (1 - bt) F_1(x) = 1/2`` for ``x = r_half / re_disc`` by
    bisection in log x (F = Sersic enclosed fraction along the major axis).
    """
    lo = np.full_like(r_half, np.log(1e-3))
    hi = np.full_like(r_half, np.log(1e3))
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        x = np.exp(mid)
        f = bt * sersic_enclosed(x / ratio, 1.0, n_b) + (1 - bt) * sersic_enclosed(x, 1.0, 1.0)
        big = f > 0.5
        hi = np.where(big, mid, hi)
        lo = np.where(big, lo, mid)
    x = np.exp(0.5 * (lo + hi))
    disk_re = np.where(bt >= 1.0, r_half / ratio, r_half / x)
    bulge_re = np.where(bt >= 1.0, r_half, disk_re * ratio)
    disk_re = np.where(bt <= 0.0, r_half, disk_re)
    return disk_re, bulge_re


# ----------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _psf_core_sigma_per_fwhm(wing_frac: float, wing_ratio: float) -> float:
    """Core sigma / FWHM of the double Gaussian (its FWHM differs from the core's)."""
    from scipy.optimize import brentq

    a, r = wing_frac, wing_ratio

    def profile(x):  # x in units of the core sigma; peak-normalised
        return ((1 - a) * np.exp(-0.5 * x * x) + a / r**2 * np.exp(-0.5 * x * x / r**2)) / (
            (1 - a) + a / r**2
        )

    hwhm = brentq(lambda x: profile(x) - 0.5, 0.1, 10.0)
    return 1.0 / (2.0 * hwhm)


def psf_sigmas(fwhm_pix, survey: SurveySpec = DR8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Double-Gaussian PSF of a given FWHM (pixels): (weights (2,), core sigma, wing sigma)."""
    k = _psf_core_sigma_per_fwhm(survey.psf_wing_frac, survey.psf_wing_ratio)
    s1 = np.asarray(fwhm_pix, float) * k
    w = np.array([1 - survey.psf_wing_frac, survey.psf_wing_frac])
    return w, s1, s1 * survey.psf_wing_ratio


def psf_image(fwhm_arcsec: float, size: int, survey: SurveySpec = DR8) -> np.ndarray:
    """The pixelised PSF (size, size) float64, unit sum, centred on pixel (size//2, size//2)."""
    w, s1, s2 = psf_sigmas(fwhm_arcsec / survey.pixel_scale, survey)
    img = np.zeros((size, size))
    img[size // 2, size // 2] = 1.0
    return _convolve(img[None, None], np.array([[s1]]), np.array([[s2]]), w)[0, 0].astype(float)


def sky_sigma(survey: SurveySpec = DR8) -> np.ndarray:
    """Per-pixel sky noise (g, r, z) in nanomaggies from the 5-sigma depths (module docstring)."""
    out = []
    for b in range(3):
        w, s1, s2 = psf_sigmas(survey.seeing_fwhm[b] / survey.pixel_scale, survey)
        s = np.array([s1, s2])
        # integral of psf^2 for a sum of Gaussians: sum_ij w_i w_j / (2 pi (s_i^2 + s_j^2))
        int_p2 = sum(
            w[i] * w[j] / (2 * np.pi * (s[i] ** 2 + s[j] ** 2)) for i in range(2) for j in range(2)
        )
        f5 = 10 ** (-0.4 * (survey.psf_depth[b] - survey.zero_point))
        out.append(f5 / 5.0 * math.sqrt(int_p2))
    return np.array(out)


@functools.lru_cache(maxsize=8)
def _k2_axes(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared spatial frequencies (cycles/pixel) of an rfft2: ky^2 (S, 1), kx^2 (1, S//2+1)."""
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    return (ky * ky).astype(_F32), (kx * kx).astype(_F32)


def _convolve(img: np.ndarray, s1: np.ndarray, s2: np.ndarray, w: np.ndarray) -> np.ndarray:
    """FFT-convolve (n, 3, S, S) with per-(galaxy, band) double Gaussians (sigmas (n, 3) px).

    The transfer function of a Gaussian is analytic, ``exp(-2 pi^2 sigma^2 k^2)``, so no
    PSF image is transformed; convolution is periodic (light leaving one edge wraps
    to the other, a negligible effect for stamps that contain their galaxy).
    """
    size = img.shape[-1]
    f = sfft.rfft2(img.astype(_F32, copy=False), workers=1)
    ky2, kx2 = _k2_axes(size)
    c = _F32(-2 * np.pi**2)
    otf = None
    for wk, sk in ((w[0], s1), (w[1], s2)):
        # each Gaussian's transfer function is separable: exp(-a ky^2) exp(-a kx^2)
        a = (c * np.asarray(sk, _F32) ** 2)[..., None, None]
        term = (_F32(wk) * np.exp(a * ky2)) * np.exp(a * kx2)
        otf = term if otf is None else otf + term
    f *= otf
    return sfft.irfft2(f, s=(size, size), workers=1)


def _sersic_unit(r2, re, n, q):
    """Unit-flux Sersic surface brightness per pixel at elliptical radius^2 ``r2`` (px^2).

    Normalised analytically: total = 2 pi q re^2 n Gamma(2n) b^-2n I0.
    """
    b = float(sersic_b(n))
    log_norm = (
        math.log(2 * math.pi * q * re * re * n) + special.gammaln(2 * n) - 2 * n * math.log(b)
    )
    i0 = _F32(math.exp(-log_norm))
    s = r2 * _F32(1.0 / (re * re))
    if n == 0.5:
        x = s
    elif n == 1.0:
        x = np.sqrt(s)
    else:
        x = np.power(s, _F32(0.5 / n))
    return i0 * np.exp(_F32(-b) * x)


def _box_grid(x0, x1, y0, y1, cx, cy):
    xs = (np.arange(x0, x1, dtype=_F32) - _F32(cx))[None, :]
    ys = (_F32(cy) - np.arange(y0, y1, dtype=_F32))[:, None]
    return xs, ys


class _Galaxy:
    """The analytic components of one galaxy, evaluated on arbitrary image offsets."""

    def __init__(self, p: dict, j: int, ps: float, size: int):
        self.bt = float(p["bulge_frac"][j])
        self.pa = float(p["pa_rad"][j])
        self.sin, self.cos = _F32(math.sin(self.pa)), _F32(math.cos(self.pa))
        self.re_b = float(p["bulge_re_arcsec"][j]) / ps
        self.n_b = float(p["bulge_n"][j])
        self.q_b = float(p["bulge_q"][j])
        self.re_d = float(p["disk_re_arcsec"][j]) / ps
        self.q_d = float(p["disk_q"][j])
        flux = p["comp_flux"][j]  # (4, 3)
        self.flux = flux
        self.has = flux.sum(1) > 0
        self.bar_re = float(p["bar_re_arcsec"][j]) / ps
        self.bar_q = float(p["bar_q"][j])
        self.bar_angle = float(p["bar_angle"][j])
        self.m = int(p["arm_count_phys"][j])
        self.tan_pitch = math.tan(math.radians(float(p["arm_pitch_phys"][j])))
        self.kappa = float(p["arm_kappa"][j])
        self.sign = float(p["arm_sign"][j])
        self.phase = float(p["arm_phase"][j])
        self.r0 = max(float(p["arm_r0_arcsec"][j]) / ps, 0.3)
        # Keep profiles finite; components this small are unit-normalised on the box.
        self.re_b = max(self.re_b, 0.15)
        self.re_d = max(self.re_d, 0.15)
        self.bar_re = max(self.bar_re, 0.15)

    def extents(self) -> list[float]:
        """Radius (px) of each component (bulge, disc, young, bar) holding ~all its light.

        Bulge: 20 r_e (40 for n > 4), > 99 % of a Sersic n <= 6; disc: 8 r_e,
        1 - 2e-5 of an exponential; bar (Gaussian): 4 r_e.
        """
        bulge = (20.0 if self.n_b <= 4 else 40.0) * self.re_b
        return [bulge + 2, 8.0 * self.re_d + 2, 8.0 * self.re_d + 2, 4.0 * self.bar_re + 2]

    def maps(self, xs, ys) -> list[np.ndarray | None]:
        """Unit-flux maps (bulge, disc, young disc, bar) at offsets xs (1, nx) / ys (ny, 1).

        The young-disc map is a disc modulated by logarithmic arms; it is renormalised
        later on the full box (its modulation averages to ~1, not exactly 1).
        """
        u = -xs * self.sin + ys * self.cos  # along the major axis
        v = xs * self.cos + ys * self.sin  # along the minor axis
        out: list[np.ndarray | None] = [None, None, None, None]
        if self.has[0]:
            out[0] = _sersic_unit(u * u + (v / _F32(self.q_b)) ** 2, self.re_b, self.n_b, self.q_b)
        if self.has[1] or self.has[2] or self.has[3]:
            vd = v / _F32(self.q_d)  # deprojected to the disc plane
            r2 = u * u + vd * vd
            disk = _sersic_unit(r2, self.re_d, 1.0, self.q_d)
            out[1] = disk
            if self.has[2]:
                if self.m > 0:
                    theta = np.arctan2(vd, u)
                    lnr = _F32(0.5) * np.log(r2 * _F32(1 / self.r0**2) + _F32(1e-6))
                    psi = _F32(self.m) * (
                        theta - _F32(self.phase) - _F32(self.sign / self.tan_pitch) * lnr
                    )
                    arm = np.exp(_F32(self.kappa) * (np.cos(psi) - _F32(1.0)))
                    # arms grow from r0 (bulge / bar region) and fade into a smooth
                    # outer disc beyond ~2.5 disc half-light radii
                    inner = _F32(1.0) - np.exp(-r2 * _F32(1 / self.r0**2))
                    outer = np.exp(-r2 * _F32(1 / (2.5 * self.re_d) ** 2))
                    mod = _F32(0.05) + _F32(0.95) * arm * inner
                    out[2] = disk * (outer * mod + (_F32(1.0) - outer))
                else:
                    out[2] = disk
            if self.has[3]:
                cb, sb = _F32(math.cos(self.bar_angle)), _F32(math.sin(self.bar_angle))
                ub = u * cb + vd * sb
                vb = (-u * sb + vd * cb) / _F32(self.bar_q)
                # unit flux in the disc plane; the projection shrinks area by q_d
                out[3] = _sersic_unit(ub * ub + vb * vb, self.bar_re, 0.5, self.bar_q * self.q_d)
        return out


def _draw_galaxy(img3: np.ndarray, p: dict, j: int, survey: SurveySpec, isolated: bool):
    """Add galaxy ``j`` (and, unless isolated, its neighbours) to img3 (3, S, S) before the PSF."""
    size = img3.shape[-1]
    ps = survey.pixel_scale
    off = p["center_offset_pix"][j]
    cx = (size - 1) / 2 + float(off[0])
    cy = (size - 1) / 2 + float(off[1])
    g = _Galaxy(p, j, ps, size)
    exts = g.extents()
    ext = max([e for e, h in zip(exts, g.has) if h] + [2.0])
    x0, x1 = max(int(math.floor(cx - ext)), 0), min(int(math.ceil(cx + ext)) + 1, size)
    y0, y1 = max(int(math.floor(cy - ext)), 0), min(int(math.ceil(cy + ext)) + 1, size)
    if x1 > x0 and y1 > y0:
        xs, ys = _box_grid(x0, x1, y0, y1, cx, cy)
        maps = g.maps(xs, ys)
        # Cusps are badly sampled at pixel centres: replace the central pixels by
        # the mean over a fine sub-grid.
        ic, jc = int(round(cy)), int(round(cx))
        smallest = min(
            g.re_b * g.q_b if g.has[0] else 99.0,
            g.re_d * g.q_d if g.has[1:].any() else 99.0,
            g.bar_re * g.bar_q * g.q_d if g.has[3] else 99.0,
        )
        half = int(np.clip(math.ceil(2.5 * max(g.re_b if g.has[0] else g.re_d, 0.5)), 1, 3))
        fine = int(np.clip(math.ceil(6.0 / max(smallest, 0.05)), 4, 32))
        by0, by1 = max(ic - half, y0), min(ic + half + 1, y1)
        bx0, bx1 = max(jc - half, x0), min(jc + half + 1, x1)
        if by1 > by0 and bx1 > bx0:
            sub = (np.arange(fine, dtype=_F32) + _F32(0.5)) / _F32(fine) - _F32(0.5)
            fx = (np.arange(bx0, bx1, dtype=_F32)[:, None] + sub[None, :]).reshape(1, -1) - _F32(cx)
            fy = (_F32(cy) - (np.arange(by0, by1, dtype=_F32)[:, None] + sub[None, :])).reshape(
                -1, 1
            )
            fmaps = g.maps(fx, fy)
            ny, nx = by1 - by0, bx1 - bx0
            for k, fm in enumerate(fmaps):
                if fm is not None:
                    maps[k][by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] = fm.reshape(
                        ny, fine, nx, fine
                    ).mean(axis=(1, 3))
        for k, mk in enumerate(maps):
            if mk is None:
                continue
            e = exts[k]
            if e <= cx <= size - 1 - e and e <= cy <= size - 1 - e:
                # The component lies inside the stamp: normalise it to unit sum, which
                # keeps its flux exact even when it is too thin or small to be sampled
                # well at pixel centres. (Components cut by the stamp edge are large,
                # hence well sampled, and keep their analytic normalisation.)
                mk *= _F32(1.0 / max(float(mk.sum()), 1e-30))
            elif k == 2 and g.m > 0:
                # the arm pattern moves light around; keep the young disc's total the disc's
                mk *= _F32(maps[1].sum() / max(float(mk.sum()), 1e-30))
        box = np.zeros((3, y1 - y0, x1 - x0), _F32)
        for k, mk in enumerate(maps):
            if mk is not None and g.has[k]:
                for b in range(3):
                    box[b] += _F32(g.flux[k, b]) * mk
        tau = float(p["dust_lane_tau"][j])
        if tau > 0:
            _dust_lane(box, xs, ys, g, tau)
        img3[:, y0:y1, x0:x1] += box
    # clumps and tidal features belong to the galaxy
    _add_blobs(
        img3,
        cx + p["sub_x"][j] / ps,
        cy - p["sub_y"][j] / ps,
        p["sub_re"][j] / ps,
        p["sub_n"][j],
        p["sub_q"][j],
        p["sub_pa"][j],
        p["sub_flux"][j],
    )
    if not isolated:
        _add_blobs(
            img3,
            cx + p["nbr_x"][j] / ps,
            cy - p["nbr_y"][j] / ps,
            p["nbr_re"][j] / ps,
            p["nbr_n"][j],
            p["nbr_q"][j],
            p["nbr_pa"][j],
            p["nbr_flux"][j],
        )


def _dust_lane(box, xs, ys, g: _Galaxy, tau_v: float):
    """Attenuate an edge-on disc along its mid-plane, keeping each band's total flux.

    The catalogue magnitudes already include the disc's dust dimming, so the lane only
    redistributes light (darker mid-plane, brighter elsewhere).
    """
    u = -xs * g.sin + ys * g.cos
    v = xs * g.cos + ys * g.sin
    width = _F32(max(0.35 * g.q_d * g.re_d, 0.4))
    offset = _F32(0.3) * width  # we see the near side of the lane
    lane = np.exp(-0.5 * ((v - offset) / width) ** 2) * np.exp(-np.abs(u) / _F32(2.5 * g.re_d))
    for b, scale in enumerate((1.105, 0.87, 0.66)):  # (5500 A / lambda)^0.7
        before = float(box[b].sum())
        box[b] *= np.exp(_F32(-tau_v * scale) * lane)
        after = float(box[b].sum())
        if after > 0:
            box[b] *= _F32(before / after)


def _add_blobs(img3, col, row, re_px, n, q, pa, flux):
    """Add small elliptical Sersic objects (k,) at pixel (col, row) with band fluxes (k, 3).

    Profiles are evaluated for all objects of a size class at once on (k, P, P)
    patches, each normalised to unit sum (so its flux is right even when it is
    barely resolved), then added patch by patch (a loop over objects, not pixels).
    Objects with re < 0.3 px are points, split bilinearly over 4 pixels.
    """
    size = img3.shape[-1]
    flux = np.asarray(flux, _F32)
    col, row, re_px = (np.asarray(a, float) for a in (col, row, re_px))
    reach = re_px * 12 + 4
    keep = (flux.sum(1) > 0) & (col > -reach) & (col < size - 1 + reach)
    keep &= (row > -reach) & (row < size - 1 + reach)
    if not keep.any():
        return
    col, row, re_px, flux = col[keep], row[keep], re_px[keep], flux[keep]
    n, q, pa = (np.asarray(a, float)[keep] for a in (n, q, pa))
    point = re_px < 0.3
    for k in np.flatnonzero(point):
        c0, r0 = math.floor(col[k]), math.floor(row[k])
        fc, fr = col[k] - c0, row[k] - r0
        for dc, dr, wt in (
            (0, 0, (1 - fc) * (1 - fr)),
            (1, 0, fc * (1 - fr)),
            (0, 1, (1 - fc) * fr),
            (1, 1, fc * fr),
        ):
            rr, cc = r0 + dr, c0 + dc
            if 0 <= rr < size and 0 <= cc < size:
                img3[:, rr, cc] += flux[k] * _F32(wt)
    ext_factor = np.where(n <= 0.5, 3.0, np.where(n <= 1.5, 6.0, 12.0))
    half = np.clip(np.ceil(re_px * ext_factor), 2, size // 2)
    for lo, hi in ((0, 6), (6, 16), (16, 40), (40, 1 << 30)):
        sel = np.flatnonzero(~point & (half > lo) & (half <= hi))
        if not len(sel):
            continue
        h = int(half[sel].max())
        c, r = col[sel], row[sel]
        ci, ri = np.round(c).astype(np.int64), np.round(r).astype(np.int64)
        off = np.arange(-h, h + 1)
        dx = (ci[:, None] + off[None, :] - c[:, None]).astype(_F32)[:, None, :]  # right
        dy = (r[:, None] - (ri[:, None] + off[None, :])).astype(_F32)[:, :, None]  # up
        s = np.sin(pa[sel]).astype(_F32)[:, None, None]
        co = np.cos(pa[sel]).astype(_F32)[:, None, None]
        u = -dx * s + dy * co
        v = (dx * co + dy * s) / q[sel].astype(_F32)[:, None, None]
        rr2 = (u * u + v * v) / (re_px[sel] ** 2).astype(_F32)[:, None, None]
        nn = n[sel]
        if np.all(nn == 0.5):
            x = rr2
        elif np.all(nn == 1.0):
            x = np.sqrt(rr2)
        else:
            x = np.power(rr2, (0.5 / nn).astype(_F32)[:, None, None])
        prof = np.exp(-sersic_b(nn).astype(_F32)[:, None, None] * x)
        prof /= prof.sum(axis=(1, 2), keepdims=True)
        for k in range(len(sel)):
            r0, c0 = ri[k] - h, ci[k] - h
            y0, y1 = max(r0, 0), min(r0 + 2 * h + 1, size)
            x0, x1 = max(c0, 0), min(c0 + 2 * h + 1, size)
            if y1 > y0 and x1 > x0:
                patch = prof[k, y0 - r0 : y1 - r0, x0 - c0 : x1 - c0]
                img3[:, y0:y1, x0:x1] += flux[sel[k]][:, None, None] * patch


def _add_artefacts(img3, p, j, survey: SurveySpec, fwhm_pix):
    """Post-PSF artefacts: saturated star with spikes and bleed, or a satellite trail."""
    kind = int(p["art_kind"][j])
    if kind == 0:
        return
    size = img3.shape[-1]
    x = (size - 1) / 2 + float(p["art_xy"][j][0]) * size
    y = (size - 1) / 2 - float(p["art_xy"][j][1]) * size
    ang = float(p["art_angle"][j])
    cols = np.arange(size, dtype=_F32)[None, :] - _F32(x)
    rows = np.arange(size, dtype=_F32)[:, None] - _F32(y)
    if kind == 1:
        flux = float(p["art_flux"][j])
        # Saturation clips every band alike, so the star is drawn white after the
        # colour scaling of the JPEG (flux per band inversely proportional to it).
        colour = 1.0 / np.asarray(survey.rgb_scale)
        sig = float(fwhm_pix[1]) / 2.355
        r2 = cols * cols + rows * rows
        # saturated core + broad halo (scattered light) of a bright star
        core = np.exp(-r2 / _F32(2 * (1.5 * sig) ** 2)) / _F32(2 * np.pi * (1.5 * sig) ** 2)
        halo = 3 * sig  # 5 % of the light in a (1 + r^2/a^2)^-1.5 halo (unit integral)
        core += _F32(0.05 / (2 * np.pi * halo**2)) / (_F32(1.0) + r2 / _F32(halo**2)) ** _F32(1.5)
        width = _F32(0.7)
        length = _F32(0.2 * size)
        for k in range(4):  # four diffraction spikes of the telescope's spider
            a = ang / 4 + k * np.pi / 2
            ca, sa = _F32(math.cos(a)), _F32(math.sin(a))
            along = cols * ca + rows * sa
            perp = -cols * sa + rows * ca
            core += (
                _F32(5e-4)
                * np.exp(-0.5 * (perp / width) ** 2)
                * np.exp(-np.maximum(along, 0) / length)
                * (along > 0)
            )
        # charge bleeding along the readout columns
        core += _F32(0.01) * ((np.abs(cols) < 1.0) & (np.abs(rows) < _F32(0.06 * size)))
        for b in range(3):
            img3[b] += _F32(flux * colour[b]) * core
    else:
        ca, sa = _F32(math.cos(ang)), _F32(math.sin(ang))
        perp = -cols * sa + rows * ca
        sig = _F32(float(fwhm_pix[1]) / 2.355)
        b = int(p["art_band"][j])
        img3[b] += _F32(float(p["art_level"][j])) * np.exp(-0.5 * (perp / sig) ** 2)


@functools.lru_cache(maxsize=1)
def _normal_table() -> np.ndarray:
    """Standard-normal quantiles at the 65536 mid-points of a 16-bit uniform.

    Normal deviates by table look-up are ~5x faster than numpy's generator and
    exact to the 1/65536 quantile (tails end at 4.4 sigma).
    """
    return special.ndtri((np.arange(65536) + 0.5) / 65536).astype(_F32)


def _normals(gen: np.random.Generator, shape) -> np.ndarray:
    count = int(np.prod(shape))
    raw = np.frombuffer(gen.bytes(2 * count), dtype="<u2")
    return _normal_table()[raw].reshape(shape)


def render(
    params: dict[str, np.ndarray],
    image_size: int,
    rng: np.random.Generator | Sequence[np.random.Generator] | None,
    psf: bool = True,
    noise: bool = True,
    *,
    isolated: bool = False,
    survey: SurveySpec = DR8,
) -> np.ndarray:
    """Render galaxies to float images (n, 3, S, S), nanomaggies per pixel, bands g, r, z.

    params: a ``sample_population`` dict (or a slice of one with the same keys).
    rng: a Generator for the noise of the whole batch, or one Generator per galaxy
        (``make_stamps`` passes the per-galaxy ones), or None when ``noise=False``.
    psf: convolve with each object's per-band PSF; noise: add sky + source noise.
    isolated: draw only the galaxy itself (clumps and tidal features included) with no
        neighbours or artefacts; for photometry tests and clean examples.
    """
    size = int(image_size)
    if size < 8:
        raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
    n = len(params["redshift"])
    img = np.zeros((n, 3, size, size), _F32)
    for j in range(n):
        _draw_galaxy(img[j], params, j, survey, isolated)
    fwhm_pix = np.asarray(params["seeing_fwhm"], float) / survey.pixel_scale  # (n, 3)
    if psf and n:
        w, s1, s2 = psf_sigmas(fwhm_pix, survey)
        img = _convolve(img, s1, s2, w)
    if not isolated:
        for j in range(n):
            _add_artefacts(img[j], params, j, survey, fwhm_pix[j])
    if noise and n:
        if rng is None:
            raise ValueError("render(noise=True) needs an rng")
        sky = sky_sigma(survey).astype(_F32)[:, None, None]
        gain = _F32(1.0 / survey.electrons_per_nmgy)
        gens = rng if isinstance(rng, Sequence) else None
        if gens is not None and len(gens) != n:
            raise ValueError(f"got {len(gens)} generators for {n} galaxies")
        eps = _normals(rng, img.shape) if gens is None else None
        for j in range(n):
            e = eps[j] if eps is not None else _normals(gens[j], img.shape[1:])
            std = np.sqrt(sky * sky + np.maximum(img[j], 0) * gain)
            img[j] += std * e
    return img


# ----------------------------------------------------------------------------
# Colour images, stamps
# ----------------------------------------------------------------------------


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


def iter_render(
    indices: np.ndarray,
    image_size: int,
    seed: int,
    *,
    survey: SurveySpec = DR8,
    block: int = 256,
    chunk: int | None = None,
):
    """Yield ``(flux (m, 3, S, S) float32, labels)`` for consecutive pieces of ``indices``.

    Parameters are drawn for ``block`` galaxies at a time (vectorised), images are
    rendered ``chunk`` at a time (default ~2 MB of pixels, small enough that the
    temporaries stay in cache and are not re-faulted from the OS every call).
    """
    size = _check_size(image_size)
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
            yield render(p, size, gens[sl], survey=survey), _labels(p, idx[sl])


def render_indices(
    indices: np.ndarray, image_size: int, seed: int, *, survey: SurveySpec = DR8
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Galaxies ``indices`` of survey ``seed``: (flux (n, 3, S, S) float32, labels)."""
    size = _check_size(image_size)
    indices = np.asarray(indices, np.int64)
    flux = np.empty((len(indices), 3, size, size), _F32)
    labels: dict[str, list] = {k: [] for k in LABEL_COLUMNS}
    pos = 0
    for f, lab in iter_render(indices, size, seed, survey=survey):
        flux[pos : pos + len(f)] = f
        pos += len(f)
        for k, v in lab.items():
            labels[k].append(v)
    return flux, {
        k: np.concatenate(v) if v else np.zeros(0, LABEL_COLUMNS[k][0]) for k, v in labels.items()
    }


def make_stamps(
    n: int, image_size: int, seed: int, start: int = 0, *, survey: SurveySpec = DR8
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Galaxies ``start .. start+n-1`` of survey ``seed``.

    Returns ``(rgb (n, S, S, 3) uint8, flux (n, 3, S, S) float32 nanomaggies g r z,
    labels)`` with labels as in ``LABEL_COLUMNS`` (``dr8_id`` = galaxy index).
    Galaxy i depends only on (seed, i): any chunking gives identical arrays.
    """
    if n < 0 or start < 0:
        raise ValueError("n and start must be >= 0")
    flux, labels = render_indices(np.arange(start, start + n), image_size, seed, survey=survey)
    size = flux.shape[-1]
    rgb = np.empty((n, size, size, 3), np.uint8)
    step = max(1, (1 << 19) // (size * size))
    for s in range(0, n, step):  # in pieces: small temporaries are much faster
        rgb[s : s + step] = to_rgb_uint8(flux[s : s + step], survey=survey)
    return rgb, flux, labels


# ----------------------------------------------------------------------------
# Survey folder (parquet shards in the Smith42/galaxies schema)
# ----------------------------------------------------------------------------

SPLITS = ("train", "validation", "test")


def split_of(indices) -> np.ndarray:
    """Split of galaxy i: train if i % 10 < 8, validation if 8, test if 9 (0, 1, 2)."""
    r = np.asarray(indices) % 10
    return np.where(r < 8, 0, np.where(r == 8, 1, 2))


def split_indices(n: int, split: str) -> np.ndarray:
    """Galaxy indices of a split of an ``n``-galaxy survey, in order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    idx = np.arange(n)
    return idx[split_of(idx) == SPLITS.index(split)]


def survey_features(image_size: int, float_bands: bool):
    """The ``datasets.Features`` of a shard (image, dr8_id, labels[, flux_grz])."""
    from datasets import Features, Image, List, Value

    feats = {"image": Image()}
    for k, (dtype, _, _) in LABEL_COLUMNS.items():
        feats[k] = Value(dtype)
    if float_bands:
        feats["flux_grz"] = List(Value("float32"), length=3 * image_size * image_size)
    return Features(feats)


def _rows(task: tuple) -> dict:
    """Worker: render one chunk of galaxies into parquet-ready columns."""
    indices, size, seed, float_bands, survey = task
    cols: dict[str, list] = {"image": [], **{k: [] for k in LABEL_COLUMNS}}
    if float_bands:
        cols["flux_grz"] = []
    for flux, labels in iter_render(np.asarray(indices), size, seed, survey=survey):
        cols["image"].extend(
            encode_jpeg(im, survey.jpeg_quality) for im in to_rgb_uint8(flux, survey=survey)
        )
        for k, v in labels.items():
            cols[k].append(v)
        if float_bands:
            cols["flux_grz"].append(flux.reshape(len(flux), -1))
    return {k: v if k == "image" else np.concatenate(v) for k, v in cols.items()}


def _write_shard(path: Path, cols: list[dict], schema, float_bands: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = []
    for field in schema:
        name = field.name
        if name == "image":
            data = [b for c in cols for b in c["image"]]
            arrays.append(
                pa.StructArray.from_arrays(
                    [pa.array(data, pa.binary()), pa.nulls(len(data), pa.string())],
                    fields=list(field.type),
                )
            )
        elif name == "flux_grz":
            flat = np.concatenate([c["flux_grz"] for c in cols]).astype(_F32)
            arrays.append(
                pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), type=field.type)
            )
        else:
            arrays.append(pa.array(np.concatenate([c[name] for c in cols]), type=field.type))
    table = pa.Table.from_arrays(arrays, schema=schema)
    tmp = path.with_suffix(".parquet.tmp")
    # fixed writer settings: the same rows always give the same bytes
    pq.write_table(
        table,
        tmp,
        compression="snappy",
        row_group_size=max(len(table), 1),
        use_dictionary=False,
        write_statistics=True,
        version="2.6",
    )
    os.replace(tmp, path)


def write_survey(
    out: str | os.PathLike,
    n: int,
    image_size: int = 256,
    seed: int = 0,
    *,
    workers: int = 1,
    float_bands: bool = False,
    shard_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    survey: SurveySpec = DR8,
) -> dict:
    """Write ``out/{train,validation,test}/shard-NNNNN.parquet`` and ``out/survey.json``.

    Shards hold consecutive galaxies of one split (``split_of``); the shard layout
    depends only on (n, shard_size), never on ``workers``, and every galaxy only on
    (seed, i), so the files are byte-identical for any worker count. ``survey.json``
    is written last: its presence marks a complete survey. Returns its contents.
    """
    from tqdm.auto import tqdm

    size = _check_size(image_size)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} exists and is not empty (pass overwrite=True / --overwrite)"
            )
        for split in SPLITS:
            for f in (out / split).glob("shard-*.parquet*") if (out / split).is_dir() else []:
                f.unlink()
        (out / "survey.json").unlink(missing_ok=True)
    if shard_size is None:
        per = 3 * size * size * 4 if float_bands else 0
        shard_size = int(min(1000, max(16, (256 << 20) // max(per, 1)))) if per else 1000
    chunk = int(max(4, min(256, (1 << 21) // (size * size))))
    schema = survey_features(size, float_bands).arrow_schema

    tasks, plan = [], []  # plan: (split, shard number, number of chunks)
    sizes = {}
    for split in SPLITS:
        idx = split_indices(n, split)
        sizes[split] = int(len(idx))
        (out / split).mkdir(parents=True, exist_ok=True)
        for s, lo in enumerate(range(0, len(idx), shard_size)):
            shard = idx[lo : lo + shard_size]
            pieces = [shard[c : c + chunk] for c in range(0, len(shard), chunk)]
            plan.append((split, s, len(pieces)))
            tasks.extend((p, size, int(seed), float_bands, survey) for p in pieces)

    bar = tqdm(total=n, desc=f"survey {size}px", unit="stamp", disable=not progress)
    pool = None
    if workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
        results = pool.map(_rows, tasks)
    else:
        results = map(_rows, tasks)
    shards: dict[str, list[str]] = {s: [] for s in SPLITS}
    try:
        for split, s, count in plan:
            cols = []
            for _ in range(count):
                c = next(results)
                cols.append(c)
                bar.update(len(c["image"]))
            name = f"shard-{s:05d}.parquet"
            _write_shard(out / split / name, cols, schema, float_bands)
            shards[split].append(f"{split}/{name}")
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    meta = {
        "name": "astropt synthetic DESI Legacy Survey DR8-like survey",
        "simulator_version": SIM_VERSION,
        "n": int(n),
        "image_size": size,
        "seed": int(seed),
        "pixel_scale_arcsec": survey.pixel_scale,
        "field_of_view_arcsec": round(size * survey.pixel_scale, 4),
        "bands": list(BANDS),
        "image": "JPEG, RGB = z, r, g with a Lupton asinh stretch (astropt.simulate.to_rgb_uint8)",
        "flux_grz": (
            "float32 nanomaggies per pixel, shape (3, S, S) flattened, bands g, r, z"
            if float_bands
            else None
        ),
        "split_rule": "train if dr8_id % 10 < 8, validation if == 8, test if == 9",
        "splits": sizes,
        "shard_size": shard_size,
        "shards": shards,
        "galaxy10_classes": list(GALAXY10_CLASSES),
        "columns": {
            k: {"dtype": t, "unit": unit, "description": desc}
            for k, (t, unit, desc) in LABEL_COLUMNS.items()
        },
        "survey": asdict(survey),
    }
    tmp = out / "survey.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / "survey.json")
    return meta


def montage(
    rgb: np.ndarray, labels: dict[str, np.ndarray], path: str | os.PathLike, columns: int = 8
) -> None:
    """Write a PNG grid of stamps (n, S, S, 3) captioned with their Galaxy10 class names."""
    from PIL import Image, ImageDraw, ImageFont

    n, size = len(rgb), rgb.shape[1]
    tile = max(size, 128)
    cap = 28
    rows_n = -(-n // columns)
    sheet = Image.new("RGB", (columns * tile, rows_n * (tile + cap)), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for pt in (11, 10, 9, 8):  # the largest size at which every class name fits a tile
        try:
            font = ImageFont.load_default(size=pt)
        except TypeError:  # Pillow < 10.1 has one bitmap font
            break
        if max(draw.textlength(c, font=font) for c in GALAXY10_CLASSES) <= tile - 6:
            break
    for k in range(n):
        r, c = divmod(k, columns)
        im = Image.fromarray(rgb[k]).resize((tile, tile), Image.NEAREST)
        sheet.paste(im, (c * tile, r * (tile + cap)))
        name = GALAXY10_CLASSES[int(labels["galaxy10"][k])]
        extra = f"z={labels['redshift'][k]:.2f} logM={labels['log_mstar'][k]:.1f}"
        if labels["is_artefact"][k]:
            extra += " artefact"
        draw.text(
            (c * tile + 3, r * (tile + cap) + tile + 1), name, fill=(235, 235, 235), font=font
        )
        draw.text(
            (c * tile + 3, r * (tile + cap) + tile + 14), extra, fill=(160, 160, 160), font=font
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG", optimize=True)


__all__ = [
    "BANDS",
    "DR8",
    "GALAXY10_CLASSES",
    "IMAGE_SIZES",
    "LABEL_COLUMNS",
    "SPLITS",
    "CosmologyTable",
    "SurveySpec",
    "cosmology_table",
    "encode_jpeg",
    "k_correction",
    "make_stamps",
    "montage",
    "psf_image",
    "psf_sigmas",
    "render",
    "render_indices",
    "sample_population",
    "sersic_b",
    "sersic_enclosed",
    "sky_sigma",
    "split_indices",
    "split_of",
    "survey_features",
    "to_rgb_uint8",
    "write_survey",
]
