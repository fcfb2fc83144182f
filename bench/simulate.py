"""Speed of the synthetic survey: stamps per second for one process, one thread.

    python bench/simulate.py [--n 256] [--sizes 64 128 256 512]

For each stamp size it times the survey writer's work per stamp (population,
rendering with PSF and noise, colour stretch, JPEG encoding) and, at 256 px, the
stages separately. Times are the process's CPU time (``time.process_time``): with
one thread that is the time on one core, unaffected by other jobs sharing the
machine; wall-clock figures are printed beside them. The last line is the
256 x 256 rate, ending in ``<N> stamps/s``; the line before it is its ratio to the
issue's target of 100 stamps/s.
"""

from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import time  # noqa: E402

import numpy as np  # noqa: E402
from limits import Limits, save_result  # noqa: E402

from astropt import simulate as sim  # noqa: E402
from astropt.simulate.population import (  # noqa: E402
    _galaxy_uniforms,
    _population_from_uniforms,
)
from astropt.simulate.stamps import _slice  # noqa: E402
from astropt.simulate.writer import ZOOM_FILL, _rows  # noqa: E402

TARGET = 100.0  # stamps/s at 256 x 256 on one core (issue 3)


def _timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def full_pipeline(n: int, size: int, seed: int = 0, start: int = 0) -> tuple[float, float]:
    """CPU and wall seconds to make n JPEG stamps the way write_survey does."""
    task = (np.arange(start, start + n), size, seed, False, sim.DR8, "fixed", ZOOM_FILL)
    cols, cpu, wall = _timed(lambda: _rows(task))
    assert len(cols["image"]) == n
    return cpu, wall


def stages(n: int, size: int = 256, seed: int = 0) -> list[tuple[str, float]]:
    """CPU seconds per stage for n stamps."""
    idx = np.arange(10_000, 10_000 + n)
    (u, gens), t_u, _ = _timed(lambda: _galaxy_uniforms(seed, idx))
    params, t_pop, _ = _timed(lambda: _population_from_uniforms(u, sim.DR8))
    chunk = max(1, (1 << 19) // (size * size))
    t_draw = t_psf = t_noise = t_rgb = t_jpeg = 0.0
    for c in range(0, n, chunk):
        p = _slice(params, slice(c, c + chunk))
        g = gens[c : c + chunk]
        _, dt, _ = _timed(lambda p=p: sim.render(p, size, None, psf=False, noise=False))
        t_draw += dt
        _, dt, _ = _timed(lambda p=p: sim.render(p, size, None, psf=True, noise=False))
        t_psf += dt
        flux, dt, _ = _timed(lambda p=p, g=g: sim.render(p, size, g))
        t_noise += dt
        rgb, dt, _ = _timed(lambda flux=flux: sim.to_rgb_uint8(flux))
        t_rgb += dt
        _, dt, _ = _timed(lambda rgb=rgb: [sim.encode_jpeg(im) for im in rgb])
        t_jpeg += dt
    # each render call repeats the drawing: report the increments
    return [
        ("per-galaxy generators + uniforms", t_u),
        ("population model", t_pop),
        ("draw galaxies and neighbours", t_draw),
        ("PSF convolution (FFT)", t_psf - t_draw),
        ("noise (sky + source)", t_noise - t_psf),
        ("colour stretch to uint8", t_rgb),
        ("JPEG encoding", t_jpeg),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=256, help="stamps per size (default 256)")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512])
    args = p.parse_args()

    sim.make_stamps(2, 64, seed=0)  # warm caches (cosmology table, FFT plans)
    print(
        f"{'size':>6} {'stamps':>7} {'cpu s':>8} {'wall s':>8} {'stamps/s (cpu)':>15} {'(wall)':>8}"
    )
    rates = {}
    for size in args.sizes:
        # the same number of pixels per size (at least 16 stamps)
        n = int(np.clip(args.n * 256 * 256 // (size * size), 16, 4096))
        cpu, wall = full_pipeline(n, size)
        rates[size] = n / cpu
        print(f"{size:>6} {n:>7} {cpu:>8.2f} {wall:>8.2f} {n / cpu:>15.1f} {n / wall:>8.1f}")

    n = min(args.n, 128)
    print(f"\nstages at 256 x 256 ({n} stamps), ms per stamp (cpu):")
    parts = stages(n)
    for name, sec in parts:
        print(f"  {name:<34} {1e3 * sec / n:7.2f}")
    print(f"  {'total':<34} {1e3 * sum(s for _, s in parts) / n:7.2f}")

    if 256 not in rates:
        cpu, _ = full_pipeline(args.n, 256)
        rates[256] = args.n / cpu
    print(f"\nratio to the 100 stamps/s target at 256 x 256: {rates[256] / TARGET:.2f}x")
    print(f"simulate 256x256, 1 process, 1 thread: {rates[256]:.0f} stamps/s")
    # Rendering is neither one big matmul nor one streaming pass: the limits are
    # printed for scale (pixels written per second against the copy bandwidth).
    limits = Limits.measure("cpu", clock="cpu")
    print(limits.describe())
    print(
        f"rendered uint8 pixels at 256x256: {limits.bandwidth_fraction(rates[256] * 256 * 256 * 3)}"
    )
    save_result("simulate", {"rates": rates, "limits": vars(limits)})


if __name__ == "__main__":
    main()
