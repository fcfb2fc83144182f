"""Shared test helpers: tiny galaxy-like images and a tiny parquet survey on disk.

The survey has the ``Smith42/galaxies`` schema the rest of the project reads:
an ``image`` column (a ``datasets`` Image feature holding JPEG bytes), a
unique int64 ``dr8_id`` and a few label columns, in ``DIR/{train,validation,
test}/shard-NNNNN.parquet``. Use :func:`write_parquet_survey` for a custom one
or the session fixture ``tiny_survey`` for the default (32x32 stamps).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest


def galaxy_stamps(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``(n, size, size, 3)`` uint8 RGB stamps: an elliptical blob near the centre plus noise.

    Smooth enough to compress well as JPEG, different per stamp (position,
    size, colour, orientation), never constant (so per-patch std > 0).
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        dx, dy = rng.normal(0, size / 16, 2)
        angle = rng.uniform(0, np.pi)
        a, b = rng.uniform(size / 10, size / 4), rng.uniform(size / 20, size / 8)
        u = (x - dx) * np.cos(angle) + (y - dy) * np.sin(angle)
        v = -(x - dx) * np.sin(angle) + (y - dy) * np.cos(angle)
        blob = np.exp(-0.5 * ((u / a) ** 2 + (v / b) ** 2))
        colour = rng.uniform(80, 230, 3)
        image = blob[..., None] * colour + 12 + rng.normal(0, 4, (size, size, 3))
        out[i] = np.clip(image, 0, 255).astype(np.uint8)
    return out


def encode(image: np.ndarray, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """Encode an ``(H, W, C)`` or ``(H, W)`` uint8 array as JPEG/PNG bytes with Pillow."""
    from PIL import Image

    buffer = io.BytesIO()
    kwargs = {"quality": quality} if fmt == "JPEG" else {}
    Image.fromarray(image).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@dataclass
class Survey:
    """A survey written by :func:`write_parquet_survey`: its folder and what is in it."""

    path: str
    image_size: int
    ids: dict[str, np.ndarray]  # split -> dr8_id in file order
    images: dict[str, np.ndarray]  # split -> (n, S, S, 3) uint8 before JPEG compression
    labels: dict[str, dict[str, np.ndarray]]  # split -> column -> values


def write_parquet_survey(
    root: str,
    sizes: dict[str, int] | None = None,
    image_size: int = 32,
    seed: int = 0,
    shards: int | dict[str, int] = 1,
    quality: int = 90,
    corrupt_rows: dict[str, list[int]] | None = None,
) -> Survey:
    """Write a tiny survey in the ``Smith42/galaxies`` parquet schema under ``root``.

    ``sizes``: samples per split (default train 40, validation 12, test 12);
    ``shards``: parquet files per split (an int for all, or per split). Labels:
    ``redshift`` (float32), ``galaxy10`` (int64, 0-9), ``is_edge_on`` (bool).
    ``corrupt_rows``: per split, rows whose JPEG bytes are cut to half (a
    truncated file that no decoder accepts).
    """
    import datasets

    sizes = sizes or {"train": 40, "validation": 12, "test": 12}
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "dr8_id": datasets.Value("int64"),
            "redshift": datasets.Value("float32"),
            "galaxy10": datasets.Value("int64"),
            "is_edge_on": datasets.Value("bool"),
        }
    )
    survey = Survey(path=root, image_size=image_size, ids={}, images={}, labels={})
    # Writing parquet shows a progress bar per shard: noise in test logs.
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    offset = 0
    for k, (split, n) in enumerate(sizes.items()):
        rng = np.random.default_rng([seed, k])
        images = galaxy_stamps(n, image_size, seed=seed * 100 + k)
        ids = 1_000_000 + offset + np.arange(n, dtype=np.int64) * 7
        offset += 7 * n + 1
        labels = {
            "redshift": rng.uniform(0.01, 0.25, n).astype(np.float32),
            "galaxy10": rng.integers(0, 10, n).astype(np.int64),
            "is_edge_on": rng.random(n) < 0.3,
        }
        survey.ids[split], survey.images[split], survey.labels[split] = ids, images, labels
        n_shards = shards[split] if isinstance(shards, dict) else shards
        os.makedirs(os.path.join(root, split), exist_ok=True)
        encoded = [encode(image, quality=quality) for image in images]
        for i in (corrupt_rows or {}).get(split, []):
            encoded[i] = encoded[i][: len(encoded[i]) // 2]
        for s, chunk in enumerate(np.array_split(np.arange(n), n_shards)):
            table = datasets.Dataset.from_dict(
                {
                    "image": [{"bytes": encoded[i], "path": None} for i in chunk],
                    "dr8_id": ids[chunk],
                    **{name: values[chunk] for name, values in labels.items()},
                },
                features=features,
            )
            table.to_parquet(os.path.join(root, split, f"shard-{s:05d}.parquet"))
    if was_enabled:
        datasets.enable_progress_bars()
    return survey


@pytest.fixture(scope="session")
def tiny_survey(tmp_path_factory) -> Survey:
    """32x32 JPEG survey: train 40 (2 shards), validation 12, test 12 (1 shard each)."""
    root = str(tmp_path_factory.mktemp("tiny_survey"))
    return write_parquet_survey(root, shards={"train": 2, "validation": 1, "test": 1})


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory) -> str:
    """A private ``datasets`` cache folder, so tests write nothing under the home directory."""
    return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: small ops on a shared 2-core machine otherwise wait
    on OpenMP spin contention. Modules use it with ``pytestmark = pytest.mark.usefixtures``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def training_survey(tmp_path_factory) -> Survey:
    """32x32 JPEG survey for tiny training runs: train 48, validation 16, test 4 (one per module)."""
    root = str(tmp_path_factory.mktemp("training_survey"))
    return write_parquet_survey(root, sizes={"train": 48, "validation": 16, "test": 4})


@contextlib.contextmanager
def lock_held_elsewhere(folder):
    """Another process holds ``folder``'s run lock (astropt.io.folder_lock) for the
    duration of the block; it is killed afterwards, which releases the lock."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from astropt.io import folder_lock\n"
            f"with folder_lock({str(folder)!r}):\n"
            "    print('locked', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()
