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
