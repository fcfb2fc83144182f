"""Cosmology and the small physics and geometry helpers of the population model.


Cosmology: flat LambdaCDM, H0 = 70 km/s/Mpc, Omega_m = 0.3, computed once with
``astropy.cosmology.FlatLambdaCDM`` into a 2048-point interpolation table in
log(1+z) (``cosmology_table``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from astropt.simulate.spec import SurveySpec


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
