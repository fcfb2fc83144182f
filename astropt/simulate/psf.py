"""The point-spread function (a double Gaussian per band) and the pixel noise."""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import fft as sfft
from scipy import special

from astropt.simulate.spec import _F32, DR8, SurveySpec


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
