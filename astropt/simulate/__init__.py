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

``framing="zoom"`` (``make_stamps``, ``write_survey``, ``astropt survey framing=zoom``):
each stamp's pixel scale is chosen per galaxy (``zoom_pixel_scales``) so that its
observed half-light diameter spans ``zoom_fill`` of the side, as in Galaxy Zoo
images; the truth gains ``pixel_scale_arcsec``. The default ``"fixed"`` framing is
described below and is unchanged.

Stamps keep the survey's pixel scale at every size: a 64 px stamp is the central
16.8 arcsec of the same sky as a 512 px one (134 arcsec), *not* a downsampled
512 stamp. The centre pixel grid, the PSF, the noise level per pixel and the
angular size of each galaxy do not depend on the stamp size (only the noise
realisation does).

Determinism: galaxy ``i`` of survey ``seed`` draws everything (its parameters
and its noise) from ``np.random.default_rng([seed, i])``, so a stamp is the
same whatever chunking, worker count or split it is rendered in.

Where things live (and where the numbers come from, with their sources):
``spec`` survey constants and the label table, ``physics`` cosmology and scaling
relations, ``population`` the galaxy population, ``psf`` PSF and noise, ``render``
the images, ``stamps`` colour stamps by galaxy index, ``writer`` the survey folder.
"""

from astropt.simulate.physics import (
    CosmologyTable,
    cosmology_table,
    k_correction,
    sersic_b,
    sersic_enclosed,
)
from astropt.simulate.population import sample_population
from astropt.simulate.psf import psf_image, psf_sigmas, sky_sigma
from astropt.simulate.render import render
from astropt.simulate.spec import (
    BANDS,
    DR8,
    FRAMINGS,
    GALAXY10_CLASSES,
    IMAGE_SIZES,
    LABEL_COLUMNS,
    SIM_VERSION,
    ZOOM_FILL,
    SurveySpec,
    zoom_pixel_scales,
)
from astropt.simulate.stamps import (
    encode_jpeg,
    iter_render,
    label_columns,
    make_stamps,
    render_indices,
    to_rgb_uint8,
)
from astropt.simulate.writer import (
    SPLITS,
    montage,
    split_indices,
    split_of,
    survey_features,
    write_survey,
)

__all__ = [
    "BANDS",
    "CosmologyTable",
    "DR8",
    "FRAMINGS",
    "GALAXY10_CLASSES",
    "IMAGE_SIZES",
    "LABEL_COLUMNS",
    "SIM_VERSION",
    "SPLITS",
    "SurveySpec",
    "cosmology_table",
    "encode_jpeg",
    "iter_render",
    "k_correction",
    "label_columns",
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
    "ZOOM_FILL",
    "zoom_pixel_scales",
]
