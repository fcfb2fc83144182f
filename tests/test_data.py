"""The data pipeline: sources, token layout, sharding, resume, bad input (astropt.data)."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest
import torch
from conftest import encode, galaxy_stamps, write_parquet_survey
from PIL import Image

from astropt.data import (
    BadSampleError,
    Batch,
    DataConfig,
    DataError,
    SkippedSampleWarning,
    TokenLoader,
    make_loader,
)
from astropt.tokens import images_to_tokens

P = 8  # patch size for the 32x32 test stamps: a 4x4 grid, 16 tokens

# DESIGN.md section 3: raster index of each spiral position for a 4x4 grid.
SPIRAL_4 = [9, 10, 6, 5, 4, 8, 12, 13, 14, 15, 11, 7, 3, 2, 1, 0]


def hf_config(survey, cache, **kw) -> DataConfig:
    return DataConfig(source="hf", path=survey.path, patch_size=P, cache_dir=cache, **kw)


def collect(loader: TokenLoader, n_batches: int | None = None) -> list[Batch]:
    out = []
    for batch in loader:
        out.append(batch)
        if n_batches is not None and len(out) == n_batches:
            break
    return out


def all_ids(batches: list[Batch]) -> list:
    return [i for b in batches for i in b.ids]


def jpeg_decoded(image: np.ndarray) -> np.ndarray:
    """What Pillow decodes from the fixture's JPEG encoding of ``image``: (C, H, W) in [0, 1]."""
    with Image.open(io.BytesIO(encode(image))) as img:
        return np.asarray(img).transpose(2, 0, 1).astype(np.float32) / np.float32(255)


# ------------------------------------------------------------------ parquet sources


@pytest.mark.parametrize("streaming", [False, True])
def test_parquet_split_reads_every_row_with_its_labels(tiny_survey, hf_cache, streaming):
    cfg = hf_config(tiny_survey, hf_cache, streaming=streaming)
    loader = make_loader(cfg, "validation", batch_size=5)
    batches = collect(loader)
    # Validation: no shuffle, no drop_last, no augmentation: file order, all 12 rows.
    assert [len(b) for b in batches] == [5, 5, 2]
    assert all_ids(batches) == tiny_survey.ids["validation"].tolist()
    images = torch.cat([b.images for b in batches]).numpy()
    expected = np.stack([jpeg_decoded(im) for im in tiny_survey.images["validation"]])
    np.testing.assert_allclose(images, expected, atol=1e-6)
    labels = tiny_survey.labels["validation"]
    for name, values in labels.items():
        got = np.concatenate([b.catalogue[name] for b in batches])
        np.testing.assert_array_equal(got, values)
    assert set(batches[0].catalogue) == set(labels)  # image and id are not catalogue columns
    assert loader.skipped() == {}
    assert loader.num_samples == (None if streaming else 12)


def test_streaming_and_map_style_give_the_same_unshuffled_batches(tiny_survey, hf_cache):
    mapped = collect(make_loader(hf_config(tiny_survey, hf_cache), "test", batch_size=4))
    streamed = collect(
        make_loader(hf_config(tiny_survey, hf_cache, streaming=True), "test", batch_size=4)
    )
    assert all_ids(mapped) == all_ids(streamed)
    for a, b in zip(mapped, streamed, strict=True):
        assert torch.equal(a.tokens, b.tokens)


def test_train_epochs_are_permutations_fixed_by_seed(tiny_survey, hf_cache):
    cfg = hf_config(tiny_survey, hf_cache, augment=False)
    loader = make_loader(cfg, "train", batch_size=8, seed=3, repeat=True)
    epochs = [all_ids(collect(loader, 5)), all_ids(collect(loader, 5))]
    assert loader.batches_per_epoch == 5
    for ids in epochs:
        assert sorted(ids) == sorted(tiny_survey.ids["train"].tolist())
    assert epochs[0] != epochs[1], "each epoch needs its own order"
    again = make_loader(cfg, "train", batch_size=8, seed=3)
    assert all_ids(collect(again)) == epochs[0]
    other = make_loader(cfg, "train", batch_size=8, seed=4)
    assert all_ids(collect(other)) != epochs[0]


def test_drop_last_and_epoch_end_without_repeat(tiny_survey, hf_cache):
    cfg = hf_config(tiny_survey, hf_cache)
    loader = make_loader(cfg, "train", batch_size=16, seed=0)  # 40 = 2*16 + 8 dropped
    first = collect(loader)
    assert [len(b) for b in first] == [16, 16]
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["batch"] == 0
    second = collect(loader)  # the next for-loop is the next epoch
    assert len(second) == 2 and all_ids(second) != all_ids(first)


# ------------------------------------------------------------------ distributed


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("split", ["train", "validation"])
def test_two_ranks_are_disjoint_and_complete(tiny_survey, hf_cache, streaming, split):
    # train has 2 parquet shards (streams split by shard), validation 1 (split by row).
    cfg = hf_config(tiny_survey, hf_cache, streaming=streaming, num_workers=0)
    per_rank = []
    for rank in (0, 1):
        loader = make_loader(
            cfg, split, batch_size=4, seed=5, rank=rank, world_size=2, drop_last=False
        )
        per_rank.append(all_ids(collect(loader)))
    a, b = per_rank
    assert len(a) == len(set(a)) and len(b) == len(set(b))
    assert not set(a) & set(b)
    assert sorted(a + b) == sorted(tiny_survey.ids[split].tolist())
    # Same seed, same epoch: a rebuilt rank reads the same samples in the same order.
    again = make_loader(cfg, split, batch_size=4, seed=5, rank=1, world_size=2, drop_last=False)
    assert all_ids(collect(again)) == b


def test_uneven_sample_count_keeps_ranks_equal_and_disjoint(tiny_survey, hf_cache):
    cfg = hf_config(tiny_survey, hf_cache)
    ids = []
    for rank in range(3):
        loader = make_loader(cfg, "train", batch_size=2, seed=1, rank=rank, world_size=3)
        assert loader.num_samples == 13  # 40 // 3: one sample per epoch is left out
        ids.append(all_ids(collect(loader)))
    flat = [i for r in ids for i in r]
    assert len(flat) == len(set(flat)) == 36  # 13 per rank, batches of 2 drop one each


# ------------------------------------------------------------------ resume


def _resume_matches(cfg: DataConfig, split: str, cut: int, total: int, **kw) -> None:
    """Batches after a save at ``cut`` equal those of an uninterrupted loader."""
    straight = collect(make_loader(cfg, split, repeat=True, **kw), total)
    first = make_loader(cfg, split, repeat=True, **kw)
    head = collect(first, cut)
    state = first.state_dict()
    del first
    resumed = make_loader(cfg, split, repeat=True, **kw)
    resumed.load_state_dict(state)
    tail = collect(resumed, total - cut)
    assert len(head) + len(tail) == len(straight)
    for a, b in zip(head + tail, straight, strict=True):
        assert a.ids == b.ids
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.images, b.images)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_with_exactly_the_next_batch(tiny_survey, hf_cache, workers):
    cfg = hf_config(tiny_survey, hf_cache, num_workers=workers)
    # 5 batches per epoch: cut inside epoch 0 and run past the epoch boundary.
    _resume_matches(cfg, "train", cut=3, total=8, batch_size=8, seed=11)
    # A cut exactly at the end of an epoch.
    _resume_matches(cfg, "train", cut=5, total=7, batch_size=8, seed=11)
    # Leaving a for-loop and starting another on the same loader continues too
    # (the workers' prefetched batches are discarded, not skipped over).
    loader = make_loader(cfg, "train", batch_size=8, seed=11, repeat=True)
    pieces = collect(loader, 2) + collect(loader, 4)
    straight = collect(make_loader(cfg, "train", batch_size=8, seed=11, repeat=True), 6)
    assert [b.ids for b in pieces] == [b.ids for b in straight]


def test_resume_streaming_with_workers(tiny_survey, hf_cache):
    cfg = hf_config(tiny_survey, hf_cache, streaming=True, num_workers=2, shuffle_buffer=16)
    _resume_matches(cfg, "train", cut=3, total=7, batch_size=8, seed=2)


@pytest.mark.parametrize("streaming", [False, True])
def test_worker_count_does_not_change_batches(tiny_survey, hf_cache, streaming):
    runs = []
    for workers in (0, 2):
        cfg = hf_config(tiny_survey, hf_cache, streaming=streaming, num_workers=workers)
        runs.append(collect(make_loader(cfg, "train", batch_size=8, seed=9)))
    assert len(runs[0]) == len(runs[1]) == 5
    for a, b in zip(*runs, strict=True):
        assert a.ids == b.ids and torch.equal(a.tokens, b.tokens)


def test_state_from_a_different_setup_is_refused(tiny_survey, hf_cache):
    cfg = hf_config(tiny_survey, hf_cache)
    state = make_loader(cfg, "train", batch_size=8, seed=1).state_dict()
    other = make_loader(cfg, "train", batch_size=8, seed=2)
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)


# ------------------------------------------------------------------ augmentation and tokens


def _dihedral(image: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations/reflections of a (C, H, W) image, built with torch (not the code under test)."""
    t = torch.from_numpy(np.ascontiguousarray(image))
    out = []
    for flip in (False, True):
        base = t.flip(-1) if flip else t
        out += [torch.rot90(base, k, dims=(1, 2)).numpy() for k in range(4)]
    return out


def test_augmentations_only_move_pixels(tiny_survey, hf_cache):
    cfg = hf_config(tiny_survey, hf_cache)
    kw = dict(batch_size=8, shuffle=False, drop_last=False)
    plain = torch.cat([b.images for b in make_loader(cfg, "train", augment=False, **kw)])
    augmented = torch.cat([b.images for b in make_loader(cfg, "train", augment=True, **kw)])
    seen = set()
    for before, after in zip(plain.numpy(), augmented.numpy(), strict=True):
        # Same multiset of pixel values, per channel ...
        np.testing.assert_array_equal(
            np.sort(before.reshape(3, -1), axis=1), np.sort(after.reshape(3, -1), axis=1)
        )
        # ... because the image is one of the square's 8 symmetries of the original.
        matches = [k for k, t in enumerate(_dihedral(before)) if np.array_equal(after, t)]
        assert matches
        seen.add(matches[0])
    # 40 draws from 8 symmetries: turns and reflections both occur (chance of not: ~1e-11).
    assert seen & {1, 2, 3} and seen & {4, 5, 6, 7} and len(seen) >= 5
    # Evaluation splits are never augmented by default.
    val = next(iter(make_loader(cfg, "validation", batch_size=4)))
    np.testing.assert_allclose(
        val.images.numpy(),
        np.stack([jpeg_decoded(im) for im in tiny_survey.images["validation"][:4]]),
        atol=1e-6,
    )


def _expected_tokens(images: np.ndarray, transpose_hw: bool) -> np.ndarray:
    """Independent tokens: loop over patches in the DESIGN spiral order, normalise each."""
    if transpose_hw:
        images = images.transpose(0, 1, 3, 2)
    grid = images.shape[-1] // P
    out = []
    for image in images.astype(np.float64):
        seq = []
        for raster in SPIRAL_4:
            r, c = divmod(raster, grid)
            patch = image[:, r * P : (r + 1) * P, c * P : (c + 1) * P]
            flat = patch.transpose(1, 2, 0).reshape(-1)  # (p1 p2 c): channel fastest
            seq.append((flat - flat.mean()) / (flat.std(ddof=1) + 1e-8))
        out.append(seq)
    return np.asarray(out)


@pytest.mark.parametrize("transpose_hw", [False, True])
def test_token_layout_matches_the_design(tiny_survey, hf_cache, transpose_hw):
    cfg = hf_config(tiny_survey, hf_cache, transpose_hw=transpose_hw)
    batch = next(iter(make_loader(cfg, "test", batch_size=6)))
    assert batch.tokens.shape == (6, 16, P * P * 3) and batch.tokens.dtype == torch.float32
    assert batch.mean.shape == batch.std.shape == (6, 16, 1)
    assert batch.images.dtype == torch.float32 and batch.images.shape == (6, 3, 32, 32)
    expected = _expected_tokens(batch.images.numpy(), transpose_hw)
    np.testing.assert_allclose(batch.tokens.numpy(), expected, atol=2e-4)
    # The same as astropt.tokens on the batch's images (8-bit batches are tokenised
    # as integers, so agreement is to rounding, not bitwise).
    tokens, mean, std = images_to_tokens(batch.images, P, "spiral", transpose_hw)
    torch.testing.assert_close(batch.tokens, tokens, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.mean, mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(batch.std, std, atol=1e-6, rtol=0)
    # The centre patch (raster 9 of a 4x4 grid) comes first; mean/std undo the normalisation.
    image = batch.images[0].transpose(1, 2) if transpose_hw else batch.images[0]
    centre = image[:, 2 * P : 3 * P, 1 * P : 2 * P].permute(1, 2, 0).reshape(-1)
    restored = batch.tokens[0, 0] * (batch.std[0, 0] + 1e-8) + batch.mean[0, 0]
    torch.testing.assert_close(restored, centre, atol=1e-5, rtol=0)
    assert torch.equal(batch.inputs, batch.tokens[:, :-1])
    assert torch.equal(batch.targets, batch.tokens[:, 1:])
    assert batch.positions.tolist() == list(range(15))
    moved = batch.to("cpu")
    assert torch.equal(moved.tokens, batch.tokens) and moved.ids == batch.ids


def test_centre_crop_keeps_the_centre(tiny_survey, hf_cache):
    cfg = hf_config(tiny_survey, hf_cache, image_size=16)
    batch = next(iter(make_loader(cfg, "validation", batch_size=3)))
    assert batch.images.shape == (3, 3, 16, 16) and batch.tokens.shape == (3, 4, P * P * 3)
    full = np.stack([jpeg_decoded(im) for im in tiny_survey.images["validation"][:3]])
    np.testing.assert_allclose(batch.images.numpy(), full[:, :, 8:24, 8:24], atol=1e-6)


def test_band_selection(tiny_survey, hf_cache):
    cfg = hf_config(tiny_survey, hf_cache, bands=[2, 0])
    batch = next(iter(make_loader(cfg, "validation", batch_size=2)))
    full = np.stack([jpeg_decoded(im) for im in tiny_survey.images["validation"][:2]])
    np.testing.assert_allclose(batch.images.numpy(), full[:, [2, 0]], atol=1e-6)
    assert batch.tokens.shape[-1] == P * P * 2


# ------------------------------------------------------------------ folders


def _write_fits(path: str, data: np.ndarray) -> None:
    from astropy.io import fits

    fits.PrimaryHDU(data).writeto(path, overwrite=True)


@pytest.fixture
def mixed_folder(tmp_path):
    """One sample of each kind, 32x32x3: JPEG, PNG, FITS cube, FITS per band, .npy (CHW, HWC)."""
    rgb = galaxy_stamps(3, 32, seed=7)
    rng = np.random.default_rng(0)
    flux = rng.normal(0.02, 0.05, (3, 3, 32, 32)).astype(np.float32)
    (tmp_path / "a.jpg").write_bytes(encode(rgb[0]))
    (tmp_path / "b.png").write_bytes(encode(rgb[1], "PNG"))
    _write_fits(str(tmp_path / "c.fits"), flux[0])
    for band, plane in zip("grz", flux[1], strict=True):
        _write_fits(str(tmp_path / f"d_{band}.fits"), plane)
    np.save(tmp_path / "e.npy", flux[2])
    np.save(tmp_path / "f.npy", rgb[2])  # (H, W, C) uint8
    expected = {
        "a": jpeg_decoded(rgb[0]),
        "b": rgb[1].transpose(2, 0, 1) / np.float32(255),
        "c": np.arcsinh(flux[0] / np.float32(0.01)),
        "d": np.arcsinh(flux[1] / np.float32(0.01)),
        "e": np.arcsinh(flux[2] / np.float32(0.01)),
        "f": rgb[2].transpose(2, 0, 1) / np.float32(255),
    }
    return tmp_path, expected


def test_folder_of_mixed_formats_with_catalogue(mixed_folder):
    folder, expected = mixed_folder
    catalogue = folder / "catalogue.csv"
    catalogue.write_text(
        "filename,redshift,kind\n"
        "e.npy,0.5,npy\nc.fits,0.3,cube\na.jpg,0.1,jpeg\nd,0.4,bands\n"
        "b.png,0.2,png\nf.npy,0.6,npy\nlost.jpg,0.9,jpeg\n"
    )
    cfg = DataConfig(source="folder", path=str(folder), patch_size=P, catalogue=str(catalogue))
    loader = make_loader(cfg, "test", batch_size=3)
    with pytest.warns(SkippedSampleWarning, match="lost.jpg"):
        batches = collect(loader)
    ids = all_ids(batches)
    assert ids == ["e", "c", "a", "d", "b", "f"]  # catalogue order, the missing row skipped
    images = torch.cat([b.images for b in batches]).numpy()
    for sample_id, image in zip(ids, images, strict=True):
        np.testing.assert_allclose(image, expected[sample_id], rtol=1e-6, atol=1e-6)
    redshift = np.concatenate([b.catalogue["redshift"] for b in batches])
    np.testing.assert_allclose(redshift, [0.5, 0.3, 0.1, 0.4, 0.2, 0.6])
    assert np.concatenate([b.catalogue["kind"] for b in batches]).tolist()[2] == "jpeg"
    assert loader.skipped() == {"missing": 1}
    assert "lost.jpg" in loader.summary()


def test_folder_without_catalogue_reads_files_in_name_order(mixed_folder):
    folder, expected = mixed_folder
    cfg = DataConfig(source="folder", path=str(folder), patch_size=P, float_scaling="linear")
    batches = collect(make_loader(cfg, "validation", batch_size=4))
    assert all_ids(batches) == ["a", "b", "c", "d", "e", "f"]
    # Linear scaling leaves float data as stored.
    flux_c = np.sinh(expected["c"]) * np.float32(0.01)
    np.testing.assert_allclose(batches[0].images[2].numpy(), flux_c, rtol=1e-5, atol=1e-7)


def _bad_folder(tmp_path) -> dict[str, str]:
    """Two good images and one bad file of each kind; returns file -> expected reason."""
    good = galaxy_stamps(3, 32, seed=1)
    (tmp_path / "good1.png").write_bytes(encode(good[0], "PNG"))
    (tmp_path / "good2.jpg").write_bytes(encode(good[1]))
    jpeg = encode(good[2])
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a png" * 20)
    (tmp_path / "garbage.fits").write_bytes(b"SIMPLE  = nonsense" * 200)
    nan = np.ones((3, 32, 32), np.float32)
    nan[1, 5, 5] = np.nan
    _write_fits(str(tmp_path / "nan.fits"), nan)
    inf = np.ones((3, 32, 32), np.float32)
    inf[0, 0, 0] = np.inf
    np.save(tmp_path / "inf.npy", inf)
    (tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "small.png").write_bytes(encode(galaxy_stamps(1, 16)[0], "PNG"))
    (tmp_path / "grey.png").write_bytes(encode(good[0][..., 0], "PNG"))
    _write_fits(str(tmp_path / "lonely_g.fits"), np.ones((32, 32), np.float32))  # no r, z
    return {
        "truncated.jpg": "corrupt",
        "garbage.png": "corrupt",
        "garbage.fits": "corrupt",
        "nan.fits": "nonfinite",
        "inf.npy": "nonfinite",
        "garbage.npy": "corrupt",
        "small.png": "wrong_size",
        "grey.png": "wrong_channels",
        "lonely": "missing",
    }


def test_bad_files_are_skipped_counted_and_named(tmp_path):
    bad = _bad_folder(tmp_path)
    cfg = DataConfig(source="folder", path=str(tmp_path), patch_size=P)
    loader = make_loader(cfg, "train", batch_size=4, shuffle=False, drop_last=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = collect(loader)
    assert sorted(all_ids(batches)) == ["good1", "good2"]
    counts: dict[str, int] = {}
    for reason in bad.values():
        counts[reason] = counts.get(reason, 0) + 1
    assert loader.skipped() == counts
    summary = loader.summary()
    assert "11 samples read, 9 skipped" in summary
    for reason in counts:
        assert reason in summary
    # One warning per reason, each naming a file.
    skip_warnings = [w for w in caught if issubclass(w.category, SkippedSampleWarning)]
    assert len(skip_warnings) == len(counts)
    # A second epoch neither loops nor retries: the same two good samples.
    assert sorted(all_ids(collect(loader))) == ["good1", "good2"]
    assert loader.skipped() == {k: 2 * v for k, v in counts.items()}


def test_strict_mode_raises_naming_the_file(tmp_path):
    _bad_folder(tmp_path)
    cfg = DataConfig(source="folder", path=str(tmp_path), patch_size=P, strict=True)
    # The first sorted file is garbage.fits: strict mode stops right there.
    with pytest.raises(BadSampleError, match=r"garbage\.fits.*corrupt"):
        make_loader(cfg, "train", batch_size=4)


def test_strict_mode_raises_from_a_worker(tiny_survey, tmp_path, hf_cache):
    survey = write_parquet_survey(str(tmp_path), {"train": 12}, corrupt_rows={"train": [9]}, seed=3)
    cfg = hf_config(survey, hf_cache, strict=True, num_workers=2)
    loader = make_loader(cfg, "train", batch_size=4, shuffle=False)
    with pytest.raises(
        BadSampleError, match=rf"row 9 \(dr8_id {survey.ids['train'][9]}\).*corrupt"
    ):
        collect(loader)


@pytest.mark.parametrize("streaming", [False, True])
def test_corrupt_jpeg_row_in_parquet_is_skipped(tmp_path, hf_cache, streaming):
    survey = write_parquet_survey(str(tmp_path), {"train": 10}, corrupt_rows={"train": [2, 7]})
    cfg = hf_config(survey, hf_cache, streaming=streaming, num_workers=2 if streaming else 0)
    loader = make_loader(cfg, "train", batch_size=5, shuffle=False)
    with pytest.warns(SkippedSampleWarning, match="row 2"):
        ids = all_ids(collect(loader))
    assert ids == [i for k, i in enumerate(survey.ids["train"].tolist()) if k not in (2, 7)]
    assert loader.skipped() == {"corrupt": 2}


def test_every_sample_failing_stops_with_an_error(tmp_path):
    for k in range(3):
        (tmp_path / f"bad{k}.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    cfg = DataConfig(source="folder", path=str(tmp_path), patch_size=P)
    with pytest.raises(DataError, match="none of the first 3 samples"):
        make_loader(cfg, "train", batch_size=2)


def test_folder_split_subdirectories(tmp_path):
    stamps = galaxy_stamps(5, 32, seed=2)
    for split, names in {"train": ["t0", "t1", "t2"], "val": ["v0"], "test": ["s0"]}.items():
        os.makedirs(tmp_path / split)
        for name in names:
            (tmp_path / split / f"{name}.png").write_bytes(encode(stamps[len(name)], "PNG"))
    cfg = DataConfig(source="folder", path=str(tmp_path), patch_size=P)
    assert all_ids(collect(make_loader(cfg, "validation", batch_size=2))) == ["v0"]
    assert sorted(all_ids(collect(make_loader(cfg, "train", batch_size=1)))) == ["t0", "t1", "t2"]


# ------------------------------------------------------------------ config and synthetic


def test_config_errors_are_explicit():
    with pytest.raises(ValueError, match="source"):
        DataConfig(source="webdataset")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        DataConfig(image_size=40, patch_size=16)
    with pytest.raises(ValueError, match="order"):
        DataConfig(order="zigzag")
    # A mistyped survey folder must not turn into a Hub download attempt.
    with pytest.raises(FileNotFoundError, match="make_synthetic_survey"):
        make_loader(DataConfig(source="synthetic", path="no/such/survey"), batch_size=2)


def test_images_not_divisible_by_the_patch_need_a_crop(tiny_survey, hf_cache):
    cfg = DataConfig(source="hf", path=tiny_survey.path, patch_size=12, cache_dir=hf_cache)
    with pytest.raises(ValueError, match="image_size"):
        make_loader(cfg, "test", batch_size=2)
    cfg.image_size = 24
    assert next(iter(make_loader(cfg, "test", batch_size=2))).tokens.shape == (2, 4, 432)


def test_on_the_fly_synthetic_survey():
    cfg = DataConfig(source="synthetic", image_size=32, patch_size=P, synthetic_n=20)
    train = make_loader(cfg, "train", batch_size=4, seed=0, augment=False)
    assert train.num_samples == 16
    batch = next(iter(train))
    assert batch.tokens.shape == (4, 16, P * P * 3)
    assert batch.images.min() >= 0 and batch.images.max() <= 1
    assert "redshift" in batch.catalogue and len(batch.catalogue["redshift"]) == 4
    # A galaxy depends only on its index: the same galaxy arrives identical in a
    # different batch composition.
    plain = collect(
        make_loader(cfg, "train", batch_size=5, shuffle=False, augment=False, drop_last=False)
    )
    by_id = {i: img for b in plain for i, img in zip(b.ids, b.images, strict=True)}
    for i, img in zip(batch.ids, batch.images, strict=True):
        assert torch.equal(by_id[i], img)
    val = all_ids(collect(make_loader(cfg, "validation", batch_size=2)))
    test = all_ids(collect(make_loader(cfg, "test", batch_size=2)))
    assert len(val) == len(test) == 2
    assert not (set(val) | set(test)) & set(by_id)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_fast_jpeg_decoder_gives_pillows_pixels_and_names_damage(mode):
    """libjpeg-turbo through simplejpeg (RGB, grey) or Pillow (CMYK): the pixels
    Pillow decodes, and a truncated file is still a counted 'corrupt' sample."""
    from astropt.data.decode import SkipSample, _decode_jpeg_fast, decode_encoded

    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as img:
        expected = np.asarray(img.convert("RGB") if mode == "CMYK" else img)
    expected = expected[None] if expected.ndim == 2 else expected.transpose(2, 0, 1)
    assert (_decode_jpeg_fast(data) is None) == (mode == "CMYK")
    np.testing.assert_array_equal(decode_encoded(data), expected)
    with pytest.raises(SkipSample) as caught:
        decode_encoded(data[: len(data) // 2])
    assert caught.value.reason == "corrupt"
