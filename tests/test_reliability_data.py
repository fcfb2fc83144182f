"""Hostile and messy inputs to the data pipeline (issue 18): catalogue ids, channel counts,
oversize images, image structs naming local files, and random mixtures of bad files."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from conftest import encode, galaxy_stamps
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astropt.data import DataConfig, SkippedSampleWarning, make_loader

P = 8


def _collect_ids(loader) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedSampleWarning)
        return [i for batch in loader for i in batch.ids]


def _labels(loader, column: str) -> dict:
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedSampleWarning)
        for batch in loader:
            for i, value in zip(batch.ids, batch.catalogue[column]):
                out.setdefault(i, []).append(value)
    return out


def _folder(tmp_path, names: list[str], size: int = 32):
    stamps = galaxy_stamps(len(names), size, seed=5)
    for name, stamp in zip(names, stamps):
        (tmp_path / name).write_bytes(encode(stamp, "PNG"))


def _loader(path, **kw):
    cfg = DataConfig(source="folder", path=str(path), patch_size=P, **kw)
    return make_loader(cfg, "train", batch_size=1, shuffle=False, drop_last=False)


# ------------------------------------------------------------------ catalogue joins


def test_string_ids_join_and_stay_strings(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _folder(images, ["a.png", "b.png", "c.png"])
    catalogue = tmp_path / "cat.csv"
    catalogue.write_text(
        "iauname,filename,mass\nJ0001+0002,a.png,10.1\ngal_000,b.png,9.5\n007,c.png,11.0\n"
    )
    loader = _loader(images, catalogue=str(catalogue))
    labels = _labels(loader, "mass")
    # "007" stays a string (the column holds non-numeric ids): no leading zero is lost.
    assert labels == {"J0001+0002": [10.1], "gal_000": [9.5], "007": [11.0]}


def test_blank_id_skips_that_row_only(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _folder(images, ["a.png", "b.png", "c.png"])
    catalogue = tmp_path / "cat.csv"
    catalogue.write_text("id,filename,mass\n11,a.png,1.0\n,b.png,2.0\n13,c.png,3.0\n")
    loader = _loader(images, catalogue=str(catalogue))
    ids = _collect_ids(loader)
    assert ids == [11, 13]
    assert all(type(i) is int for i in ids)
    assert loader.skipped() == {"bad_id": 1}


def test_duplicate_ids_and_files_are_used_once(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    _folder(images, ["a.png", "b.png", "c.png"])
    catalogue = tmp_path / "cat.csv"
    catalogue.write_text(
        "id,filename,mass\n"
        "1,a.png,1.0\n"
        "2,b.png,2.0\n"
        "1,c.png,9.0\n"  # the id of row 0 again, another file
        "3,a.png,7.0\n"  # the file of row 0 again, another id
        "4,c.png,4.0\n"
    )
    loader = _loader(images, catalogue=str(catalogue))
    labels = _labels(loader, "mass")
    assert labels == {1: [1.0], 2: [2.0], 4: [4.0]}
    assert loader.skipped() == {"duplicate": 2}
    assert "repeats id 1 of row 0" in loader.summary()


# ------------------------------------------------------------------ channel count


def test_one_greyscale_file_sorting_first_is_the_one_skipped(tmp_path):
    stamps = galaxy_stamps(4, 32, seed=2)
    (tmp_path / "0_grey.png").write_bytes(encode(stamps[0][..., 0], "PNG"))
    for k in range(1, 4):
        (tmp_path / f"{k}.png").write_bytes(encode(stamps[k], "PNG"))
    loader = _loader(tmp_path)
    assert _collect_ids(loader) == ["1", "2", "3"]
    assert loader.skipped() == {"wrong_channels": 1}


def test_configured_channels_win_even_against_a_majority(tmp_path):
    stamps = galaxy_stamps(3, 32, seed=2)
    (tmp_path / "a.png").write_bytes(encode(stamps[0], "PNG"))
    (tmp_path / "b.png").write_bytes(encode(stamps[1], "PNG"))
    (tmp_path / "c.png").write_bytes(encode(stamps[2][..., 1], "PNG"))
    loader = _loader(tmp_path, channels=1)
    assert _collect_ids(loader) == ["c"]
    assert loader.skipped() == {"wrong_channels": 2}


def test_run_config_takes_channels_from_the_model():
    from astropt.config import ConfigError, load_config

    cfg = load_config(None, ["model.n_chan=1"])
    assert cfg.data.channels == 1
    with pytest.raises(ConfigError, match="data.channels=3 disagrees with model.n_chan=1"):
        load_config(None, ["model.n_chan=1", "data.channels=3"])


# ------------------------------------------------------------------ oversize images


def test_oversize_image_is_a_skip_reason_with_a_limit(tmp_path):
    _folder(tmp_path, ["a.png", "b.png"])
    # 15000 x 15000 is over Pillow's own decompression-bomb limit; 1-bit keeps the file small.
    from PIL import Image

    Image.new("1", (15000, 15000)).save(tmp_path / "huge.png")
    loader = _loader(tmp_path)
    assert _collect_ids(loader) == ["a", "b"]
    assert loader.skipped() == {"oversize": 1}
    assert "huge.png" in loader.summary()
    # The limit is ours to set: 32x32 stamps pass at 1024 pixels, not at 1023.
    assert _collect_ids(_loader(tmp_path, max_image_pixels=32 * 32)) == ["a", "b"]
    with pytest.raises(Exception, match="none of the first 3 samples"):
        _loader(tmp_path, max_image_pixels=32 * 32 - 1)


def test_oversize_npy_and_fits_are_refused_before_reading(tmp_path):
    from astropy.io import fits

    _folder(tmp_path, ["a.png"])
    np.save(tmp_path / "big.npy", np.zeros((3, 64, 64), np.float32))
    fits.PrimaryHDU(np.zeros((3, 64, 64), np.float32)).writeto(tmp_path / "big.fits")
    loader = _loader(tmp_path, max_image_pixels=40 * 40)
    assert _collect_ids(loader) == ["a"]
    assert loader.skipped() == {"oversize": 2}


# --------------------------------------------------------- parquet structs naming paths


def _struct_parquet(root, paths_or_bytes: list) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "id": datasets.Value("int64")})
    os.makedirs(root, exist_ok=True)
    table = datasets.Dataset.from_dict(
        {"image": paths_or_bytes, "id": list(range(len(paths_or_bytes)))}, features=features
    )
    # Write the structs as given (datasets would otherwise embed the files' bytes).
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(table.data.to_pandas()), os.path.join(root, "d.parquet"))


def test_parquet_struct_paths_stay_inside_the_dataset(tmp_path, hf_cache):
    outside = tmp_path / "outside"
    outside.mkdir()
    _folder(outside, ["secret.png"])
    data = tmp_path / "data"
    data.mkdir()
    _folder(data, ["inside.png"])
    good = encode(galaxy_stamps(1, 32, seed=9)[0], "PNG")
    _struct_parquet(
        str(data),
        [
            {"bytes": good, "path": None},
            {"bytes": None, "path": str(outside / "secret.png")},
            {"bytes": None, "path": str(data / "inside.png")},
            {"bytes": None, "path": "../outside/secret.png"},
        ],
    )
    cfg = DataConfig(source="hf", path=str(data), patch_size=P, cache_dir=hf_cache)
    loader = make_loader(cfg, "train", batch_size=1, shuffle=False, drop_last=False)
    assert _collect_ids(loader) == [0, 2]
    assert loader.skipped() == {"external_path": 2}
    assert "allow_external_paths" in loader.summary()
    cfg = DataConfig(
        source="hf", path=str(data), patch_size=P, cache_dir=hf_cache, allow_external_paths=True
    )
    loader = make_loader(cfg, "train", batch_size=1, shuffle=False, drop_last=False)
    assert _collect_ids(loader) == [0, 1, 2, 3]


# ------------------------------------------------------------- random mixtures (property)

BAD_KINDS = {
    "truncated": "corrupt",
    "empty": "corrupt",
    "text": "corrupt",
    "nan": "nonfinite",
    "grey": "wrong_channels",
    "small": "wrong_size",
    "oversize": "oversize",
}


def _write_bad(path, kind: str, stamp: np.ndarray) -> str:
    if kind == "truncated":
        data = encode(stamp)
        (path / f"{kind}.jpg").write_bytes(data[: len(data) // 3])
    elif kind == "empty":
        (path / f"{kind}.png").write_bytes(b"")
    elif kind == "text":
        (path / f"{kind}.jpg").write_text("not an image at all")
    elif kind == "nan":
        array = stamp.transpose(2, 0, 1).astype(np.float32)
        array[0, 3, 3] = np.nan
        np.save(path / f"{kind}.npy", array)
    elif kind == "grey":
        (path / f"{kind}.png").write_bytes(encode(stamp[..., 0], "PNG"))
    elif kind == "small":
        (path / f"{kind}.png").write_bytes(encode(stamp[:16, :16], "PNG"))
    elif kind == "oversize":
        # A JPEG: the libjpeg-turbo path must refuse it from the header too.
        (path / f"{kind}.jpg").write_bytes(encode(np.tile(stamp, (2, 2, 1))))
    return kind


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    n_good=st.integers(1, 5),
    bad=st.lists(st.sampled_from(sorted(BAD_KINDS)), unique=True, max_size=len(BAD_KINDS)),
    duplicate=st.booleans(),
    missing=st.booleans(),
    blank=st.booleans(),
    epochs=st.integers(1, 2),
)
def test_random_mixtures_of_good_and_bad_files(
    tmp_path_factory, n_good, bad, duplicate, missing, blank, epochs
):
    root = tmp_path_factory.mktemp("mix")
    stamps = galaxy_stamps(n_good + 1, 32, seed=n_good)
    good = [f"g{k}" for k in range(n_good)]
    for name, stamp in zip(good, stamps):
        (root / f"{name}.png").write_bytes(encode(stamp, "PNG"))
    for kind in bad:
        _write_bad(root, kind, stamps[-1])
    # A catalogue listing every file once by id, plus the requested catalogue faults.
    files = sorted(p.name for p in root.iterdir())
    rows = [f"{k + 100},{name}" for k, name in enumerate(files)]
    expected_counts: dict[str, int] = {}
    for kind in bad:
        expected_counts[BAD_KINDS[kind]] = expected_counts.get(BAD_KINDS[kind], 0) + 1
    if duplicate:
        rows.append(f"100,{files[0]}")
        expected_counts["duplicate"] = 1
    if missing:
        rows.append("999,nowhere.png")
        expected_counts["missing"] = 1
    if blank:
        rows.append(f",{files[-1]}")
        expected_counts["bad_id"] = 1
    catalogue = root.parent / f"{root.name}.csv"
    catalogue.write_text("id,filename\n" + "\n".join(rows) + "\n")
    loader = _loader(root, catalogue=str(catalogue), channels=3, max_image_pixels=40 * 40)
    expected_ids = sorted(k + 100 for k, name in enumerate(files) if name[:-4] in good)
    for epoch in range(epochs):
        ids = _collect_ids(loader)
        assert sorted(ids) == expected_ids  # every good file once per epoch
        assert loader.skipped() == {k: v * (epoch + 1) for k, v in expected_counts.items()}
