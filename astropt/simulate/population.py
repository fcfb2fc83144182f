"""The population model: physical parameters and truth labels of each galaxy.

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

Every galaxy draws its parameters from a fixed budget of ``N_UNIFORMS`` uniforms,
handed out column by column in a fixed order by the stages below
(``_population_from_uniforms`` runs them in order), so galaxy ``i`` of a survey is
the same whatever else is drawn in the batch. A new draw goes at the end of the
stream, never between two existing ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import special

from astropt.simulate.physics import (
    _abs_mag_r,
    _main_sequence,
    _mass_cdf,
    _powerlaw_mag,
    _quenched_fraction,
    _rest_gr,
    _sigmoid,
    _size_kpc,
    _split_sizes,
    _to_sky,
    _zmax,
    cosmology_table,
    k_correction,
)
from astropt.simulate.spec import (
    _F32,
    DR8,
    LABEL_COLUMNS,
    N_CLUMPS,
    N_FIELD,
    N_PARTNER_TAIL,
    N_SUB,
    N_TAIL,
    N_UNIFORMS,
    SurveySpec,
)


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
    """The population model: uniforms (n, N_UNIFORMS) -> parameters (see module docstring).

    The stages run in the order they draw from ``u``; reordering them changes every galaxy.
    """
    d = _Draws(u)
    n = len(u)
    sf = _star_formation(d, survey)
    st = _structure(d, sf)
    ph = _photometry(sf, st, survey)
    sz = _sizes(d, sf, st)
    disc = _disc_features(d, sf, st, sz)
    cl = _clumps(d, sf, st, sz, disc)
    td = _tidal_features(d, st, sz)
    part_flux = _component_fluxes(sf, st, ph, disc, cl, td)
    neighbours = _neighbours(d, sf, sz, ph, td, survey)
    artefact, artefacts = _artefacts(d, survey)
    seeing, center_d, lane_tau = _observing(d, sf, st, survey)
    zoo = _galaxy_zoo(d, st, sz, disc, cl, td, seeing)

    labels = {
        "redshift": sf.z,
        "log_mstar": sf.logm,
        "log_ssfr": sf.log_ssfr,
        "mag_abs_g": ph.abs_mag[:, 0],
        "mag_abs_r": ph.abs_mag[:, 1],
        "mag_abs_z": ph.abs_mag[:, 2],
        "mag_g": ph.app[:, 0],
        "mag_r": ph.app[:, 1],
        "mag_z": ph.app[:, 2],
        "g_r": ph.app[:, 0] - ph.app[:, 1],
        "r_z": ph.app[:, 1] - ph.app[:, 2],
        "r_half_arcsec": sz.r_half,
        "sersic_n": zoo["sersic_n"],
        "bulge_frac": st.bt,
        "axis_ratio": zoo["axis_ratio"],
        "pos_angle": np.degrees(st.pa),
        "seeing_fwhm_r": seeing[:, 1],
        "smooth_frac": zoo["smooth_frac"],
        "is_edge_on": st.edge_on,
        "has_bar": zoo["has_bar"],
        "has_spiral": zoo["has_spiral"],
        "arm_count": np.where(zoo["has_spiral"], disc.arm_count, 0),
        "arm_pitch_deg": np.where(zoo["has_spiral"], disc.pitch, 0.0),
        "is_merger": td.merger,
        "is_artefact": artefact,
        "galaxy10": zoo["galaxy10"],
    }
    out = {k: np.asarray(v).astype(LABEL_COLUMNS[k][0]) for k, v in labels.items()}
    f32 = _F32
    out.update(
        {
            # physical truth not written as labels
            "quenched": sf.quenched,
            "is_elliptical": st.is_ell,
            "is_disturbed": td.disturbed,
            "r_half_kpc": sz.r_half_kpc,
            "gr_rest": sf.gr_rest,
            "rz_rest": sf.rz_rest,
            "dust_a_r": ph.a_dust,
            "inclination_deg": np.degrees(np.arccos(st.cosi)),
            # structure (arcsec, radians)
            "pa_rad": st.pa,
            "bulge_re_arcsec": sz.bulge_re,
            "bulge_n": st.bulge_n,
            "bulge_q": st.bulge_q,
            "disk_re_arcsec": sz.disk_re,
            "disk_q": st.disk_q,
            "bar_re_arcsec": disc.bar_re,
            "bar_q": disc.bar_q,
            "bar_angle": disc.bar_angle,
            "arm_count_phys": disc.arm_count,
            "arm_pitch_phys": disc.pitch,
            "arm_kappa": disc.arm_kappa,
            "arm_sign": disc.arm_sign,
            "arm_phase": disc.arm_phase,
            "arm_r0_arcsec": disc.arm_r0,
            "dust_lane_tau": lane_tau,
            "seeing_fwhm": seeing,  # (n, 3) arcsec
            "center_offset_pix": center_d,  # (n, 2) x, y
            "comp_flux": part_flux[:, :4, :],  # (n, 4, 3): bulge, disc, young, bar
            # sub-objects of the galaxy (clumps, tail blobs), offsets in arcsec (x right, y up)
            "sub_x": np.concatenate([cl.x, td.x], 1).astype(f32),
            "sub_y": np.concatenate([cl.y, td.y], 1).astype(f32),
            "sub_re": np.concatenate([cl.size_kpc / sz.scale[:, None], td.re], 1).astype(f32),
            "sub_n": np.full((n, N_SUB), 0.5, f32),
            "sub_q": np.concatenate([np.ones((n, N_CLUMPS)), np.full((n, N_TAIL), 0.45)], 1).astype(
                f32
            ),
            "sub_pa": np.concatenate([np.zeros((n, N_CLUMPS)), td.pa], 1).astype(f32),
            "sub_flux": part_flux[:, 4:, :].astype(f32),  # (n, N_SUB, 3)
            **neighbours,
            **artefacts,
        }
    )
    return out


class _StarFormation(NamedTuple):
    """Mass, star formation and redshift, each (n,)."""

    logm: np.ndarray  # log10 M* / M_sun
    quenched: np.ndarray  # bool
    z: np.ndarray
    log_ssfr: np.ndarray  # log10 1/yr
    gr_rest: np.ndarray  # rest-frame g - r, mag
    rz_rest: np.ndarray  # rest-frame r - z, mag


def _star_formation(d: _Draws, survey: SurveySpec) -> _StarFormation:
    """Stellar mass from the flux-limited mass function, star formation, then redshift."""
    cos = cosmology_table()
    zlo, zhi = survey.z_range
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
    return _StarFormation(logm, quenched, z, log_ssfr, gr_rest, rz_rest)


class _Structure(NamedTuple):
    """Morphological type, orientation and bulge, each (n,)."""

    is_ell: np.ndarray  # elliptical (bool); every other galaxy has a disc
    arms_phys: np.ndarray  # the disc has spiral arms, whatever its inclination (bool)
    cosi: np.ndarray  # cosine of the inclination
    disk_q: np.ndarray  # projected axis ratios
    bulge_q: np.ndarray
    pa: np.ndarray  # radians east of north
    edge_on: np.ndarray  # bool
    bt: np.ndarray  # bulge-to-total flux ratio in r
    bulge_n: np.ndarray  # Sersic index of the bulge

    @property
    def is_disk(self) -> np.ndarray:
        return ~self.is_ell


def _structure(d: _Draws, sf: _StarFormation) -> _Structure:
    """Ellipticals and discs, their random orientation, bulge fraction and Sersic index."""
    logm, quenched = sf.logm, sf.quenched
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
    return _Structure(is_ell, arms_phys, cosi, disk_q, bulge_q, pa, edge_on, bt, bulge_n)


class _Photometry(NamedTuple):
    a_dust: np.ndarray  # (n,) r-band dust dimming of the galaxy, mag
    abs_mag: np.ndarray  # (n, 3) rest-frame absolute magnitudes g r z, dust included
    app: np.ndarray  # (n, 3) apparent magnitudes g r z
    flux: np.ndarray  # (n, 3) total fluxes g r z, nanomaggies


def _photometry(sf: _StarFormation, st: _Structure, survey: SurveySpec) -> _Photometry:
    """Dust, absolute and apparent magnitudes and fluxes (no random draws)."""
    cos = cosmology_table()
    a_dust = np.where(st.is_disk, np.where(sf.quenched, 0.15, 0.55), 0.0) * -np.log10(st.disk_q)
    a_dust = a_dust * (1 - st.bt)  # the disc carries the dust
    atten = a_dust[:, None] * np.array([1.205, 1.0, 0.765])
    abs_r_int = _abs_mag_r(sf.logm, sf.gr_rest)
    abs_int = np.stack([abs_r_int + sf.gr_rest, abs_r_int, abs_r_int - sf.rz_rest], axis=1)
    abs_mag = abs_int + atten
    app = abs_mag + cos.dm(sf.z)[:, None] + k_correction(sf.z, sf.gr_rest)
    flux = 10.0 ** (-0.4 * (app - survey.zero_point))  # nanomaggies, g r z
    return _Photometry(a_dust, abs_mag, app, flux)


class _Sizes(NamedTuple):
    scale: np.ndarray  # kpc / arcsec at the galaxy's redshift
    r_half_kpc: np.ndarray  # half-light semi-major axis of bulge + disc
    r_half: np.ndarray  # the same in arcsec
    disk_re: np.ndarray  # arcsec
    bulge_re: np.ndarray  # arcsec


def _sizes(d: _Draws, sf: _StarFormation, st: _Structure) -> _Sizes:
    """Half-light radii from the size-mass relations, split between bulge and disc."""
    scale = cosmology_table().scale(sf.z)  # kpc / arcsec
    size_scatter = np.where(sf.quenched, 0.10, 0.16) * d.normal()
    r_half_kpc = _size_kpc(sf.logm, sf.quenched, sf.z) * 10.0**size_scatter
    r_half = r_half_kpc / scale  # arcsec
    size_ratio = 10.0 ** (np.log10(0.12) + np.log10(0.4 / 0.12) * d.uniform())
    disk_re, bulge_re = _split_sizes(r_half, st.bt, st.bulge_n, size_ratio)
    return _Sizes(scale, r_half_kpc, r_half, disk_re, bulge_re)


class _DiscFeatures(NamedTuple):
    """Bars and spiral arms in the disc plane, each (n,); lengths in arcsec, angles radians."""

    bar_phys: np.ndarray  # bool, whatever the inclination
    bar_frac: np.ndarray  # bar share of the disc light
    bar_re: np.ndarray
    bar_q: np.ndarray
    bar_angle: np.ndarray  # from the major axis
    arm_count: np.ndarray  # 1-4 (drawn for every galaxy; used where arms_phys)
    pitch: np.ndarray  # deg
    arm_kappa: np.ndarray  # arm contrast
    arm_sign: np.ndarray  # winding sense, +-1
    arm_phase: np.ndarray
    arm_r0: np.ndarray  # where the arms start
    young_frac: np.ndarray  # young (arm) share of the disc light


def _disc_features(d: _Draws, sf: _StarFormation, st: _Structure, sz: _Sizes) -> _DiscFeatures:
    """Bars and logarithmic spiral arms."""
    logm, bt = sf.logm, st.bt
    bar_phys = st.is_disk & (bt < 0.6) & (d.uniform() < 0.15 + 0.35 * _sigmoid((logm - 10.2) / 0.3))
    bar_frac = np.where(bar_phys, 0.12 + 0.15 * d.uniform(), 0.0)
    bar_re = sz.disk_re * (0.6 + 0.6 * d.uniform())
    bar_q = 0.2 + 0.15 * d.uniform()
    bar_angle = np.pi * d.uniform()  # in the disc plane, from the major axis
    arm_count = np.array([1, 2, 3, 4])[d.choice([0.08, 0.6, 0.2, 0.12])]
    pitch = np.clip(30.0 - 30.0 * bt + 6.0 * d.normal(), 8.0, 45.0)
    arm_kappa = 3.0 + 5.0 * d.uniform()
    arm_sign = np.where(d.uniform() < 0.5, -1.0, 1.0)
    arm_phase = 2 * np.pi * d.uniform()
    arm_phase = np.where(bar_phys, bar_angle, arm_phase)  # arms start at the bar ends
    arm_r0 = np.where(bar_phys, bar_re, np.maximum(0.25 * sz.disk_re, 1.5 * sz.bulge_re))
    # the young (arm) share of the disc light rises with sSFR
    young_frac = np.where(st.arms_phys, np.clip(0.5 + 0.3 * (sf.log_ssfr + 10.0), 0.3, 0.75), 0.0)
    return _DiscFeatures(
        bar_phys,
        bar_frac,
        bar_re,
        bar_q,
        bar_angle,
        arm_count,
        pitch,
        arm_kappa,
        arm_sign,
        arm_phase,
        arm_r0,
        young_frac,
    )


class _Clumps(NamedTuple):
    """Star-forming knots, (n, N_CLUMPS) unless noted."""

    present: np.ndarray  # bool
    frac_total: np.ndarray  # (n,) share of the galaxy's r light in clumps
    frac: np.ndarray  # share of each clump
    size_kpc: np.ndarray
    x: np.ndarray  # sky offsets from the centre, arcsec (x right, y up)
    y: np.ndarray


def _clumps(
    d: _Draws, sf: _StarFormation, st: _Structure, sz: _Sizes, disc: _DiscFeatures
) -> _Clumps:
    """Star-forming knots in the disc plane (on the arms when there are arms)."""
    p_clump = np.where(sf.quenched, 0.0, 0.15 + 0.5 * _sigmoid((sf.log_ssfr + 10.0) / 0.3))
    p_clump = p_clump * np.where(st.arms_phys, 1.0, 1.3)
    present = d.uniform(N_CLUMPS) < p_clump[:, None]
    h = sz.disk_re / 1.678
    c_r = -h[:, None] * np.log(np.clip(d.uniform(N_CLUMPS) * d.uniform(N_CLUMPS), 1e-9, 1))
    c_r = np.maximum(c_r, disc.arm_r0[:, None] * 0.8)
    which_arm = np.floor(d.uniform(N_CLUMPS) * disc.arm_count[:, None])
    on_arm = (
        disc.arm_phase[:, None]
        + disc.arm_sign[:, None]
        * np.log(c_r / disc.arm_r0[:, None])
        / np.tan(np.radians(disc.pitch))[:, None]
        + 2 * np.pi * which_arm / disc.arm_count[:, None]
        + 0.15 * d.normal(N_CLUMPS)
    )
    c_theta = np.where(st.arms_phys[:, None], on_arm, 2 * np.pi * d.uniform(N_CLUMPS))
    c_weight = present * np.exp(0.6 * d.normal(N_CLUMPS))
    clump_frac_total = np.where(present.any(1), 0.03 + 0.07 * d.uniform(), 0.0) * (1 - st.bt)
    c_weight = c_weight / np.maximum(c_weight.sum(1, keepdims=True), 1e-12)
    c_frac = clump_frac_total[:, None] * c_weight
    c_size_kpc = 0.15 + 0.25 * d.uniform(N_CLUMPS)
    # disc plane -> sky offsets (x right, y up), arcsec
    cu = c_r * np.cos(c_theta)
    cv = c_r * np.sin(c_theta) * st.disk_q[:, None]
    cx, cy = _to_sky(cu, cv, st.pa[:, None])
    return _Clumps(present, clump_frac_total, c_frac, c_size_kpc, cx, cy)


class _TidalFeatures(NamedTuple):
    """Mergers and disturbances; the blobs of tails or shells are (n, N_TAIL)."""

    merger: np.ndarray  # (n,) bool
    disturbed: np.ndarray  # (n,) bool
    tail_frac: np.ndarray  # (n,) share of the galaxy's light in the tails or shells
    curl: np.ndarray  # (n,) tail curvature, radians over the tail (the partner's tail too)
    x: np.ndarray  # blob offsets, arcsec (x right, y up)
    y: np.ndarray
    re: np.ndarray  # blob sizes, arcsec
    frac: np.ndarray  # share of each blob
    pa: np.ndarray  # blob position angles, radians


def _tidal_features(d: _Draws, st: _Structure, sz: _Sizes) -> _TidalFeatures:
    """Mergers and disturbed galaxies: tidal tails (discs, mergers) or shells (ellipticals)."""
    r_half = sz.r_half
    merger = d.uniform() < 0.06
    disturbed = ~merger & (d.uniform() < 0.05 / 0.94)
    n_tails = np.where(merger, 2, np.where(disturbed & st.is_disk, 1, 0))
    shells = disturbed & st.is_ell
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
    return _TidalFeatures(merger, disturbed, tail_frac, t_curl, tb_x, tb_y, tb_re, tb_frac, tb_pa)


def _component_fluxes(
    sf: _StarFormation,
    st: _Structure,
    ph: _Photometry,
    disc: _DiscFeatures,
    cl: _Clumps,
    td: _TidalFeatures,
) -> np.ndarray:
    """Band fluxes of every part, (n, 4 + N_SUB, 3) nanomaggies (no random draws).

    Rows: bulge, disc, young disc, bar, clumps..., tail blobs...; each band is
    normalised so that the parts add up to the galaxy's catalogue magnitudes.
    """
    n = len(st.bt)
    bt = st.bt
    disc_share = 1.0 - bt
    main_share = 1.0 - td.tail_frac
    comp_r = np.stack(
        [
            bt * main_share,
            disc_share * (1 - disc.young_frac - disc.bar_frac) * main_share - cl.frac_total,
            disc_share * disc.young_frac * main_share,
            disc_share * disc.bar_frac * main_share,
        ],
        axis=1,
    )
    comp_r = np.maximum(comp_r, 0.0)
    parts_r = np.concatenate([comp_r, cl.frac, td.frac], axis=1)  # (n, 4 + N_SUB)
    # colour offsets relative to the whole galaxy: d(g-r), d(r-z)
    d_gr = np.concatenate(
        [
            np.tile([0.08, 0.0, -0.30, 0.04], (n, 1)),
            np.full((n, N_CLUMPS), -0.45),
            np.full((n, N_TAIL), 0.0) + np.where(sf.quenched, 0.0, -0.1)[:, None],
        ],
        axis=1,
    )
    d_rz = 0.5 * d_gr
    w = np.stack(
        [parts_r * 10 ** (-0.4 * d_gr), parts_r, parts_r * 10 ** (0.4 * d_rz)], axis=2
    )  # (n, parts, band)
    w = w / np.maximum(w.sum(1, keepdims=True), 1e-30)
    return w * ph.flux[:, None, :]  # nanomaggies


class _Objects(NamedTuple):
    """Neighbouring objects, (n, k): offsets from the galaxy in arcsec (x right, y up),
    Sersic re (arcsec; 0 for a star), n, q, position angle (radians), fluxes (n, k, 3) nmgy."""

    x: np.ndarray
    y: np.ndarray
    re: np.ndarray
    n: np.ndarray
    q: np.ndarray
    pa: np.ndarray
    flux: np.ndarray


def _neighbours(
    d: _Draws,
    sf: _StarFormation,
    sz: _Sizes,
    ph: _Photometry,
    td: _TidalFeatures,
    survey: SurveySpec,
) -> dict[str, np.ndarray]:
    """Merger partner, companion, partner's tail, field: ``nbr_*`` (n, N_NBR) float32."""
    partner, partner_tail = _merger_partner(d, sf, sz, ph, td)
    companion = _companion(d, sf, sz, survey)
    field = _field_objects(d, len(sf.z), survey)
    columns = (partner, companion, partner_tail, field)
    return {
        f"nbr_{name}": np.concatenate([getattr(o, name) for o in columns], 1).astype(_F32)
        for name in _Objects._fields
    }


def _merger_partner(
    d: _Draws, sf: _StarFormation, sz: _Sizes, ph: _Photometry, td: _TidalFeatures
) -> tuple[_Objects, _Objects]:
    """The partner of a major merger and its own tidal tail (zero flux without a merger)."""
    n, z, r_half = len(sf.z), sf.z, sz.r_half
    mu = 0.3 + 0.7 * d.uniform()
    p_quench = d.uniform() < 0.5 * sf.quenched + 0.1
    p_logm = sf.logm + np.log10(mu)
    p_re = _size_kpc(p_logm, p_quench, z) * 10 ** (0.14 * d.normal()) / sz.scale
    p_sep = (0.7 + 1.0 * d.uniform()) * (r_half + p_re)
    p_ang = 2 * np.pi * d.uniform()
    p_flux = ph.flux * mu[:, None] * 10 ** (-0.4 * 0.05 * d.normal())[:, None]
    p_q = 0.35 + 0.6 * d.uniform()
    p_pa = np.pi * d.uniform()
    p_n = np.where(p_quench, 3.5, 1.0)
    px, py = -p_sep * np.sin(p_ang), p_sep * np.cos(p_ang)
    # the partner's own tail
    tt = (np.arange(N_PARTNER_TAIL) + 0.5) / N_PARTNER_TAIL
    pt_r = p_re[:, None] * (0.8 + 2.5 * tt)
    pt_phi = p_ang[:, None] + np.pi + 0.7 * d.uniform()[:, None] + td.curl[:, None] * tt
    ptx = px[:, None] - pt_r * np.sin(pt_phi)
    pty = py[:, None] + pt_r * np.cos(pt_phi)
    pt_w = (1 - 0.6 * tt) / np.sum(1 - 0.6 * tt)
    pt_flux = 0.06 * p_flux[:, None, :] * pt_w[None, :, None]
    merger = td.merger
    partner = _Objects(
        px[:, None],
        py[:, None],
        p_re[:, None],
        p_n[:, None],
        p_q[:, None],
        p_pa[:, None],
        (p_flux * merger[:, None])[:, None, :],
    )
    tail = _Objects(
        ptx,
        pty,
        0.3 * p_re[:, None] * np.ones(N_PARTNER_TAIL),
        np.full((n, N_PARTNER_TAIL), 0.5),
        np.full((n, N_PARTNER_TAIL), 0.5),
        np.mod(pt_phi + np.pi / 2, np.pi),
        pt_flux * merger[:, None, None],
    )
    return partner, tail


def _companion(d: _Draws, sf: _StarFormation, sz: _Sizes, survey: SurveySpec) -> _Objects:
    """A star-forming physical companion, 0.7-1.7 dex less massive (zero flux when absent)."""
    n, z, logm = len(sf.z), sf.z, sf.logm
    comp_on = d.uniform() < 0.2
    c_mu = 10 ** -(0.7 + 1.0 * d.uniform())
    c_logm = logm + np.log10(c_mu)
    c_re = _size_kpc(c_logm, np.zeros(n, bool), z) * 10 ** (0.16 * d.normal()) / sz.scale
    c_sep = 3.0 + (1.5 + 3.5 * d.uniform()) * sz.r_half
    c_ang = 2 * np.pi * d.uniform()
    c_gr = _rest_gr(c_logm, _main_sequence(c_logm, z)) + 0.05 * d.normal()
    c_abs_r = _abs_mag_r(c_logm, c_gr)
    c_mag_r = c_abs_r + cosmology_table().dm(z) + k_correction(z, c_gr)[:, 1]
    c_flux_r = 10 ** (-0.4 * (c_mag_r - survey.zero_point))
    c_q = 0.3 + 0.7 * d.uniform()
    c_pa = np.pi * d.uniform()
    c_flux = c_flux_r[:, None] * 10 ** (-0.4 * np.stack([c_gr + 0.2 * z, 0 * z, -0.6 * c_gr], 1))
    return _Objects(
        (-c_sep * np.sin(c_ang))[:, None],
        (c_sep * np.cos(c_ang))[:, None],
        c_re[:, None],
        np.ones((n, 1)),
        c_q[:, None],
        c_pa[:, None],
        (c_flux * comp_on[:, None])[:, None, :],
    )


def _field_objects(d: _Draws, n: int, survey: SurveySpec) -> _Objects:
    """Foreground stars and background galaxies over the largest stamp (Poisson-like counts)."""
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
    return _Objects(f_x, f_y, f_re, f_n, f_q, f_pa, f_flux)


def _artefacts(d: _Draws, survey: SurveySpec) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(is_artefact (n,) bool, ``art_*`` parameters): a saturated star or a satellite trail."""
    artefact = d.uniform() < 0.03
    art_kind = np.where(artefact, np.where(d.uniform() < 0.6, 1, 2), 0)
    art_x = 0.8 * d.uniform() - 0.4  # fraction of the stamp side, from the centre
    art_y = 0.8 * d.uniform() - 0.4
    art_angle = np.pi * d.uniform()
    art_mag = 11.0 + 3.0 * d.uniform()
    art_band = np.floor(3 * d.uniform())
    art_level = 10 ** (-1.7 + 1.0 * d.uniform())  # trail surface brightness, nmgy / pixel
    return artefact, {
        "art_kind": art_kind,
        "art_xy": np.stack([art_x, art_y], 1),
        "art_angle": art_angle,
        "art_flux": 10 ** (-0.4 * (art_mag - survey.zero_point)),
        "art_band": art_band.astype(np.int64),
        "art_level": art_level,
    }


def _observing(
    d: _Draws, sf: _StarFormation, st: _Structure, survey: SurveySpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeing FWHM (n, 3) arcsec, centre offset (n, 2) pixels, dust-lane depth (n,)."""
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
    lane_tau = np.where(st.edge_on, np.where(sf.quenched, 0.3, 1.2), 0.0) * (
        0.6 + 0.8 * d.uniform()
    )
    return seeing, center_d, lane_tau


def _galaxy_zoo(
    d: _Draws,
    st: _Structure,
    sz: _Sizes,
    disc: _DiscFeatures,
    cl: _Clumps,
    td: _TidalFeatures,
    seeing: np.ndarray,
) -> dict[str, np.ndarray]:
    """Galaxy Zoo-like answers: what a volunteer sees (features only when resolved).

    Returns has_spiral, has_bar, smooth_frac (40 simulated votes), axis_ratio,
    sersic_n and galaxy10 (GALAXY10_CLASSES), each (n,).
    """
    edge_on, merger, disturbed, bt = st.edge_on, td.merger, td.disturbed, st.bt
    has_spiral = st.arms_phys & ~edge_on
    has_bar = disc.bar_phys & ~edge_on
    arm_strength = disc.young_frac * disc.arm_kappa / 4.0
    feature = (
        has_spiral * (0.6 + 1.2 * arm_strength)
        + has_bar * 0.7
        + edge_on * 1.0
        + (merger | disturbed) * 1.0
        + (cl.present.sum(1) / N_CLUMPS) * 0.5
    )
    resolved = sz.r_half**2 / (sz.r_half**2 + seeing[:, 1] ** 2)
    p_smooth = _sigmoid(2.5 - 5.0 * feature * resolved)
    votes = np.clip(p_smooth + np.sqrt(p_smooth * (1 - p_smooth) / 40) * d.normal(), 0, 1)
    smooth_frac = np.round(votes * 40) / 40

    axis_ratio = np.where(st.is_ell, st.bulge_q, bt * st.bulge_q + (1 - bt) * st.disk_q)
    sersic_n = np.where(bt >= 0.5, st.bulge_n, 1.0)
    g10 = np.select(
        [
            merger,
            disturbed,
            edge_on & (bt < 0.1),
            edge_on,
            has_bar,
            has_spiral & (disc.pitch < 20.0),
            has_spiral,
            axis_ratio >= 0.75,
            axis_ratio >= 0.45,
        ],
        [1, 0, 8, 9, 5, 6, 7, 2, 3],
        default=4,
    )
    return {
        "has_spiral": has_spiral,
        "has_bar": has_bar,
        "smooth_frac": smooth_frac,
        "axis_ratio": axis_ratio,
        "sersic_n": sersic_n,
        "galaxy10": g10,
    }
