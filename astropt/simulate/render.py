"""Rendering: galaxies, their clumps, tails and neighbours, PSF, artefacts and noise.

Profiles are evaluated analytically on pixel grids (the cusp re-sampled on a fine
sub-grid), convolved with each object's per-band PSF in Fourier space, then sky
and source noise are added from each galaxy's own generator.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import special

from astropt.simulate.physics import sersic_b
from astropt.simulate.psf import _convolve, _normals, psf_sigmas, sky_sigma
from astropt.simulate.spec import _F32, DR8, SurveySpec


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
    _draw_components(img3, _Galaxy(p, j, ps, size), cx, cy, float(p["dust_lane_tau"][j]))
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


def _draw_components(img3: np.ndarray, g: _Galaxy, cx: float, cy: float, tau: float) -> None:
    """Add bulge, disc, young disc and bar of ``g`` centred at pixel (cx, cy) to img3."""
    size = img3.shape[-1]
    exts = g.extents()
    ext = max([e for e, h in zip(exts, g.has) if h] + [2.0])
    x0, x1 = max(int(math.floor(cx - ext)), 0), min(int(math.ceil(cx + ext)) + 1, size)
    y0, y1 = max(int(math.floor(cy - ext)), 0), min(int(math.ceil(cy + ext)) + 1, size)
    if not (x1 > x0 and y1 > y0):
        return
    xs, ys = _box_grid(x0, x1, y0, y1, cx, cy)
    maps = g.maps(xs, ys)
    _resample_cusp(maps, g, cx, cy, x0, x1, y0, y1)
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
    if tau > 0:
        _dust_lane(box, xs, ys, g, tau)
    img3[:, y0:y1, x0:x1] += box


def _resample_cusp(maps: list, g: _Galaxy, cx: float, cy: float, x0, x1, y0, y1) -> None:
    """Cusps are badly sampled at pixel centres: replace the central pixels of each map
    (box ``[y0:y1, x0:x1]`` of the stamp) by its mean over a fine sub-grid, in place."""
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
    if not (by1 > by0 and bx1 > bx0):
        return
    sub = (np.arange(fine, dtype=_F32) + _F32(0.5)) / _F32(fine) - _F32(0.5)
    fx = (np.arange(bx0, bx1, dtype=_F32)[:, None] + sub[None, :]).reshape(1, -1) - _F32(cx)
    fy = (_F32(cy) - (np.arange(by0, by1, dtype=_F32)[:, None] + sub[None, :])).reshape(-1, 1)
    fmaps = g.maps(fx, fy)
    ny, nx = by1 - by0, bx1 - bx0
    for k, fm in enumerate(fmaps):
        if fm is not None:
            maps[k][by0 - y0 : by1 - y0, bx0 - x0 : bx1 - x0] = fm.reshape(ny, fine, nx, fine).mean(
                axis=(1, 3)
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


def render(
    params: dict[str, np.ndarray],
    image_size: int,
    rng: np.random.Generator | Sequence[np.random.Generator] | None,
    psf: bool = True,
    noise: bool = True,
    *,
    isolated: bool = False,
    survey: SurveySpec = DR8,
    pixel_scales: np.ndarray | None = None,
) -> np.ndarray:
    """Render galaxies to float images (n, 3, S, S), nanomaggies per pixel, bands g, r, z.

    params: a ``sample_population`` dict (or a slice of one with the same keys).
    rng: a Generator for the noise of the whole batch, or one Generator per galaxy
        (``make_stamps`` passes the per-galaxy ones), or None when ``noise=False``.
    psf: convolve with each object's per-band PSF; noise: add sky + source noise.
    isolated: draw only the galaxy itself (clumps and tidal features included) with no
        neighbours or artefacts; for photometry tests and clean examples.
    pixel_scales: (n,) arcsec/pixel, one per stamp (zoom framing); ``None``: the
        survey's own scale for all. Profiles, PSF and sky noise per pixel follow each
        stamp's scale (the noise per pixel grows with the pixel side, as when binning).
    """
    size = int(image_size)
    if size < 8:
        raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
    n = len(params["redshift"])
    if pixel_scales is not None:
        scales = np.asarray(pixel_scales, float)
        if scales.shape != (n,) or not (scales > 0).all():
            raise ValueError(f"pixel_scales must be {n} positive values, got {scales.shape}")
        out = np.empty((n, 3, size, size), _F32)
        for j in range(n):
            one = {k: v[j : j + 1] for k, v in params.items()}
            gen = [rng[j]] if isinstance(rng, Sequence) else rng
            spec = dataclasses.replace(survey, pixel_scale=float(scales[j]))
            out[j] = render(one, size, gen, psf, noise, isolated=isolated, survey=spec)[0]
        return out
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
