"""A local page to look at an export: ``astropt view emb.parquet``.

:func:`write_view` writes a static site (no network, no JavaScript library)::

    emb.view/index.html        the page: map, galaxy panel, neighbour grid, anomaly list
    emb.view/data.js           ids, UMAP coordinates, catalogue columns, neighbours, anomalies
    emb.view/thumbs-NNN.png    thumbnails, 1024 per sheet (32 x 32 tiles)

The map is a UMAP of the index's vectors (:func:`astropt.maps.fit_umap`; a
seeded sample of ``max_points`` galaxies beyond that), coloured by any
catalogue column or anomaly score chosen on the page. Clicking a galaxy shows
its stamp, its catalogue values and its ``k`` nearest neighbours in the whole
export (the index's answer) as a thumbnail grid; the ``top`` oddest galaxies
(:mod:`astropt.search.anomalies`) are listed beside, and a click on one
selects it. Thumbnails come from the export (``astropt embed thumbnails=32``)
or else from the images of its data source.

The command then serves the folder on ``127.0.0.1`` (``host``, ``port``) with
the standard library's HTTP server until interrupted; ``serve=false`` only
writes it (``index.html`` opens from the file system too).
"""

from __future__ import annotations

import functools
import json
import math
import sys
import threading
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from astropt.export import has_thumbnails, read_table
from astropt.io import atomic_write, atomic_write_text
from astropt.options import Command, run_command
from astropt.search.anomalies import SCORES, anomaly_scores, read_anomalies
from astropt.search.index import (
    SearchError,
    column_names,
    iter_vectors,
    open_index,
    set_threads,
)

TILES_PER_ROW = 32  # a thumbnail sheet is 32 x 32 tiles
TILES_PER_SHEET = TILES_PER_ROW * TILES_PER_ROW
MAX_CATEGORIES = 50  # text columns with more distinct values are not offered as colours
PAGE = Path(__file__).with_name("view.html")


def view_path(export: str | Path) -> Path:
    """``emb.parquet`` -> ``emb.view`` beside it."""
    export = Path(export)
    stem = export.name[: -len(".parquet")] if export.name.endswith(".parquet") else export.name
    return export.with_name(f"{stem}.view")


def _column_payload(values: pd.Series) -> dict | None:
    """A catalogue column as the page colours it: numbers, or categories; None to leave out."""
    if pd.api.types.is_bool_dtype(values):
        return {"kind": "category", "values": [str(bool(v)).lower() for v in values]}
    if pd.api.types.is_integer_dtype(values) and values.nunique() <= 10:
        return {"kind": "category", "values": [int(v) for v in values]}
    if pd.api.types.is_numeric_dtype(values):
        numbers = pd.to_numeric(values, errors="coerce").astype(float)
        return {
            "kind": "numeric",
            "values": [None if not math.isfinite(v) else round(v, 5) for v in numbers],
        }
    text = values.astype(str)
    if text.nunique() <= MAX_CATEGORIES:
        return {"kind": "category", "values": text.tolist()}
    return None


def _thumbnails(export: Path, positions: np.ndarray, ids: np.ndarray) -> np.ndarray | None:
    """``(n, S, S, 3)`` uint8 thumbnails of the rows ``positions`` (ids ``ids``): the export's
    (read one part at a time, keeping only these rows), else its data source's images."""
    if has_thumbnails(export):
        slot = {int(p): i for i, p in enumerate(positions)}
        out = None
        for rows, flat in iter_vectors(export, "thumbnail", dtype=np.uint8):
            hit = [(j, slot[int(r)]) for j, r in enumerate(rows) if int(r) in slot]
            if not hit:
                continue
            if out is None:
                side = int(round(math.sqrt(flat.shape[1] // 3)))
                out = np.zeros((len(positions), side, side, 3), dtype=np.uint8)
            source, target = (list(x) for x in zip(*hit))
            out[target] = flat[source].reshape(len(source), *out.shape[1:])
        return out
    from astropt.maps import stamps_for

    return stamps_for(export, ids, None)


def _write_sheets(thumbs: np.ndarray, out: Path) -> list[str]:
    """Thumbnails in sheets of :data:`TILES_PER_SHEET` tiles; returns the file names."""
    from PIL import Image

    side = thumbs.shape[1]
    names = []
    for sheet, start in enumerate(range(0, len(thumbs), TILES_PER_SHEET)):
        chunk = thumbs[start : start + TILES_PER_SHEET]
        rows = math.ceil(len(chunk) / TILES_PER_ROW)
        canvas = np.zeros((rows * side, TILES_PER_ROW * side, 3), dtype=np.uint8)
        for i, thumb in enumerate(chunk):
            r, c = divmod(i, TILES_PER_ROW)
            canvas[r * side : (r + 1) * side, c * side : (c + 1) * side] = thumb
        name = f"thumbs-{sheet:03d}.png"
        atomic_write(out / name, lambda tmp, img=canvas: Image.fromarray(img).save(tmp, "PNG"))
        names.append(name)
    return names


def write_view(
    export: str | Path,
    out: str | Path | None = None,
    *,
    colour: str | None = None,
    max_points: int = 20000,
    k: int = 16,
    top: int = 50,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    projection: Literal["umap", "pca"] = "umap",
) -> Path:
    """Write the page of ``export`` into ``out`` (default :func:`view_path`); returns ``out``.

    ``colour``: the column the map starts coloured by (default ``galaxy10`` when
    present, else the combined anomaly score); ``max_points``: galaxies on the
    map at most (a seeded sample beyond); ``k``: neighbours shown per galaxy;
    ``top``: anomalies listed; ``projection``: ``"umap"`` or ``"pca"`` (the first
    two principal components: instant, for quick looks and tests). The index is built when missing; anomaly scores
    are read from ``emb.anomalies.parquet`` when it belongs to the same index,
    else computed.
    """
    from astropt.maps import fit_umap

    export = Path(export)
    out = view_path(export) if out is None else Path(out)
    opened = open_index(export, build=True)
    n = opened.rows
    mapped = np.arange(n)
    if n > max_points:
        mapped = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    if len(mapped) < 3:
        raise SearchError(f"{export} has {n} galaxies: a map needs at least 3")
    vectors = opened.vectors(mapped)
    if projection == "umap":
        coords = fit_umap(vectors, seed, n_neighbors, min_dist, standardise=False)
    else:
        centred = vectors - vectors.mean(axis=0)
        coords = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
    found = opened.neighbours_of_rows(mapped, k)

    scores = read_anomalies(export, opened)
    if scores is None:
        scores = anomaly_scores(export, seed=seed, index=opened)
    oddest = np.lexsort((np.arange(n), -scores["anomaly"].to_numpy()))[:top]

    # Galaxies the page knows: the mapped ones first, then neighbours and anomalies off the map.
    extra = np.concatenate([*(f.positions for f in found), oddest]).astype(np.int64)
    extra = np.setdiff1d(extra, mapped)
    galaxies = np.concatenate([mapped, extra])
    slot = {int(p): g for g, p in enumerate(galaxies)}

    names = [c for c in column_names(export) if c not in ("id", "embedding", "thumbnail")]
    catalogue = read_table(export, columns=names).take(galaxies).to_pandas() if names else None
    columns = {}
    for name in names:
        payload = _column_payload(catalogue[name])
        if payload is not None:
            columns[name] = payload
    for name in SCORES:
        values = scores[name].to_numpy()[galaxies]
        columns[name] = {"kind": "numeric", "values": [round(float(v), 5) for v in values]}
    if colour is not None and colour not in columns:
        raise SearchError(f"no column {colour!r} to colour by; choose from {sorted(columns)}")
    colour = colour or ("galaxy10" if "galaxy10" in columns else "anomaly")

    ids = opened.ids[galaxies]
    out.mkdir(parents=True, exist_ok=True)
    thumbs = _thumbnails(export, galaxies, ids)
    sheets = _write_sheets(thumbs, out) if thumbs is not None else []
    data = {
        "title": export.name,
        "rows": n,
        "k": k,
        "ids": [str(v) for v in ids.tolist()],
        "x": [round(float(v), 4) for v in coords[:, 0]],
        "y": [round(float(v), 4) for v in coords[:, 1]],
        "neighbours": [[slot[int(p)] for p in f.positions] for f in found],
        "distances": [[round(float(d), 4) for d in f.distances] for f in found],
        "columns": columns,
        "colour": colour,
        "anomalies": [slot[int(p)] for p in oddest],
        "sheets": sheets,
        "tile": int(thumbs.shape[1]) if thumbs is not None else 0,
        "tiles_per_row": TILES_PER_ROW,
        "tiles_per_sheet": TILES_PER_SHEET,
    }
    text = "window.ASTROPT_VIEW = " + json.dumps(data, separators=(",", ":")) + ";\n"
    atomic_write_text(out / "data.js", text)
    atomic_write_text(out / "index.html", PAGE.read_text())
    return out


# --------------------------------------------------------------------------- serving
class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """An HTTP server of ``folder`` on ``host:port`` (port 0: any free one), not yet started.

    Call ``serve_forever()`` (or run it in a thread) and ``shutdown()`` to stop.
    """
    handler = functools.partial(_QuietHandler, directory=str(folder))
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as error:
        raise SearchError(
            f"cannot serve on {host}:{port} ({error}); choose another --port"
        ) from error


def serve_in_thread(folder: str | Path, host: str = "127.0.0.1", port: int = 0):
    """``(server, url)``: ``folder`` served from a daemon thread (tests, notebooks)."""
    server = serve(folder, host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}/index.html"


# --------------------------------------------------------------------------- a real browser
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def system_chromium() -> tuple[str, str] | None:
    """``(chromium, chromedriver)`` from the system packages, or None when either is missing."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def chromium_driver(user_data_dir: str | Path, width: int = 1300, height: int = 900):
    """A Selenium driver of headless Chromium from the system packages (never a download).

    Raises :class:`SearchError` when Chromium or chromedriver is not installed
    (Debian: ``apt-get install chromium chromium-driver``).
    """
    found = system_chromium()
    if found is None:
        raise SearchError(
            "no Chromium and chromedriver on PATH: apt-get install chromium chromium-driver"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as error:
        raise SearchError("screenshots need selenium: pip install 'astropt[view]'") from error

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in (*BROWSER_FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    # An explicit driver path: Selenium Manager (which downloads drivers) is never asked.
    return webdriver.Chrome(options=options, service=Service(executable_path=found[1]))


def screenshot(site: str | Path, png: str | Path, select=None) -> Path:
    """A PNG of the page in ``site`` as headless Chromium draws it, with galaxy ``select``
    (default: the oddest) clicked."""
    import tempfile

    server, url = serve_in_thread(site)
    try:
        with tempfile.TemporaryDirectory(prefix="astropt-browser-") as profile:
            driver = chromium_driver(profile, 1180, 1060)
            try:
                driver.get(url)
                if select is None:
                    driver.execute_script("document.querySelector('#anomalies li').click();")
                else:
                    driver.execute_script("window.astroptView.select(arguments[0]);", str(select))
                png = Path(png)
                png.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(png))
            finally:
                driver.quit()
    finally:
        server.shutdown()
        server.server_close()
    return png


# --------------------------------------------------------------------------- command line
@dataclass
class ViewOptions:
    """Options of ``astropt view``."""

    export: str  # embedding export (folder or parquet file)
    out: str | None = None  # site folder (default: emb.parquet -> emb.view)
    colour: str | None = None  # column the map starts coloured by (default galaxy10 or anomaly)
    max_points: int = 20000  # galaxies on the map at most (a seeded sample beyond)
    k: int = 16  # neighbours shown for a clicked galaxy
    top: int = 50  # anomalies listed
    seed: int = 0  # UMAP, sample and isolation forest seed
    n_neighbors: int = 15  # UMAP neighbourhood size
    min_dist: float = 0.1  # UMAP minimum distance
    projection: Literal["umap", "pca"] = "umap"  # map: UMAP, or the first two principal components
    serve: bool = True  # serve the page until interrupted (false: only write it)
    screenshot: str | None = None  # also save a PNG of the page (headless Chromium, system package)
    select: str | None = None  # galaxy clicked in the screenshot (default: the oddest)
    host: str = "127.0.0.1"  # address to bind (127.0.0.1: this machine only)
    port: int = 8765  # port (0: any free one)
    threads: int | None = None  # faiss threads (None: all cores)


def run_view(opts: ViewOptions) -> int:
    """Write the page, then serve it until interrupted (unless serve=false)."""
    set_threads(opts.threads)
    out = write_view(
        opts.export, opts.out, colour=opts.colour, max_points=opts.max_points, k=opts.k,
        top=opts.top, seed=opts.seed, n_neighbors=opts.n_neighbors, min_dist=opts.min_dist,
        projection=opts.projection,
    )  # fmt: skip
    print(f"wrote the page to {out / 'index.html'}", file=sys.stderr)
    if opts.screenshot:
        print(f"screenshot: {screenshot(out, opts.screenshot, opts.select)}", file=sys.stderr)
    if not opts.serve:
        return 0
    server = serve(out, opts.host, opts.port)
    print(
        f"serving on http://{opts.host}:{server.server_address[1]}/ (Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


COMMAND = Command(
    ViewOptions,
    run_view,
    "A local page of an embedding export: UMAP map coloured by any column, click a galaxy to "
    "see its stamp and neighbours, the anomaly list. Served on 127.0.0.1 by default.",
    positional=("export",),
    examples=("astropt view emb.parquet", "astropt view emb.parquet --no-serve --out site/"),
)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, argv, "astropt view")
