"""Survey constants and the label table of the synthetic survey.

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

Labels (``LABEL_COLUMNS``, written to parquet with the dtypes listed there) are
the truth behind each image, plus Galaxy Zoo-like answers: ``smooth_frac`` is a
vote fraction from 40 simulated volunteers whose chance of answering "smooth"
falls with how strong and how well resolved the features are (the resolution
bias of real Galaxy Zoo votes), and ``galaxy10`` follows the Galaxy10 DECaLS
classes (``GALAXY10_CLASSES``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

SIM_VERSION = "1.0"

BANDS = ("g", "r", "z")

#: The Galaxy10 DECaLS classes, index = the class number of the published file's ``ans``
#: (Leung & Bovy, astroNN documentation); the finetuning reader names classes from it.
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

#: ``fixed``: every stamp at the survey's pixel scale (DR8 cutouts). ``zoom``: each stamp's
#: field of view scales with its galaxy, as Galaxy Zoo images and ``Smith42/galaxies`` v2.0
#: ``image_crop`` frame them.
Framing = Literal["fixed", "zoom"]
FRAMINGS: tuple[str, ...] = get_args(Framing)
#: Zoom framing: the galaxy's observed half-light diameter spans this fraction of the side.
ZOOM_FILL = 0.2
#: The extra truth column of zoomed surveys.
PIXEL_SCALE_COLUMN = ("pixel_scale_arcsec", ("float32", "arcsec/pixel", "pixel scale of the stamp"))


def zoom_pixel_scales(
    r_half_arcsec: np.ndarray, seeing_fwhm_r: np.ndarray, image_size: int, fill: float = ZOOM_FILL
) -> np.ndarray:
    """Pixel scale (arcsec/pixel) per galaxy so its observed half-light diameter spans ``fill``
    of an ``image_size``-pixel stamp.

    The observed half-light radius is approximated as ``sqrt(r_half**2 + (FWHM / 2)**2)``:
    exact for a Gaussian galaxy seen through a Gaussian PSF (whose half-light radius is
    FWHM / 2), close for the survey's profiles; framing on the observed size is what a
    cutout sized from a catalogue's measured radius (Galaxy Zoo: Petrosian R90) does.
    """
    if not 0 < fill <= 1:
        raise ValueError(f"zoom fill must be in (0, 1], got {fill}")
    observed = np.sqrt(
        np.asarray(r_half_arcsec, float) ** 2 + (0.5 * np.asarray(seeing_fwhm_r)) ** 2
    )
    return 2.0 * observed / (fill * image_size)


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
