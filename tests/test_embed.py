"""Embedding export: same rows as the data, same numbers as the model, resumable, baselines."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from astropt.data import DataConfig, make_loader
from astropt.embed import (
    ModelEncoder,
    baseline_paths,
    export_baselines,
    export_embeddings,
    main,
    random_init_like,
)
from astropt.export import (
    MANIFEST,
    display_rgb,
    read_embeddings,
    read_manifest,
    read_table,
    read_thumbnails,
)
from astropt.model import GPT, GPTConfig
from astropt.tokens import band_statistics

ROOT = Path(__file__).resolve().parents[1]
N_GALAXIES = 48
BATCH = 8


def small_model(seed: int = 1) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, patch_size=8)
    return GPT(config).eval()


def survey_config(model: GPT) -> DataConfig:
    """On-the-fly synthetic survey: 48 galaxies of 32x32 pixels, all in the test split."""
    return DataConfig(
        source="synthetic",
        path="",
        image_size=32,
        patch_size=model.config.patch_size,
        order=model.config.order,
        transpose_hw=model.config.transpose_hw,
        augment=False,
        synthetic_n=N_GALAXIES,
        synthetic_val_fraction=0.0,
        synthetic_test_fraction=1.0,
    )


@pytest.fixture(scope="module")
def model() -> GPT:
    return small_model()


@pytest.fixture(scope="module")
def direct(model):
    """What the loader yields and what the model says, computed without the exporter."""
    loader = make_loader(survey_config(model), "test", batch_size=BATCH, shuffle=False)
    ids, emb, redshift, mids = [], [], [], []
    with torch.no_grad():
        for batch in loader:
            ids += list(batch.ids)
            emb.append(model.embed(batch.tokens, layer="final"))
            mids.append(_middle_by_hand(model, batch.tokens))
            redshift.append(batch.catalogue["redshift"])
    return {
        "ids": np.array(ids),
        "final": torch.cat(emb).numpy(),
        "middle": torch.cat(mids).numpy(),
        "redshift": np.concatenate(redshift),
    }


def _middle_by_hand(model: GPT, tokens: torch.Tensor) -> torch.Tensor:
    """Residual stream after block n_layer // 2, averaged over tokens (AstroPT's recipe)."""
    x = model.tokeniser(tokens) + model.pos_emb(torch.arange(tokens.shape[1]))
    for block in model.blocks[: model.config.n_layer // 2 + 1]:
        x = block(x, "causal")
    return x.mean(dim=1)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("emb") / "emb.parquet"
    export_embeddings(
        model, survey_config(model), out, "test", layer="final", batch_size=BATCH,
        rows_per_part=16, device="cpu", dtype="float32", progress=False,
    )  # fmt: skip
    return out


def test_export_rows_and_numbers_match_the_loader_and_model(exported, direct):
    ids, emb, catalogue = read_embeddings(exported)
    assert emb.dtype == np.float32 and emb.shape == (N_GALAXIES, 32)
    np.testing.assert_array_equal(ids, direct["ids"])
    assert len(set(ids.tolist())) == N_GALAXIES
    np.testing.assert_allclose(emb, direct["final"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(catalogue["redshift"].to_numpy(), direct["redshift"])
    assert {"galaxy10", "is_edge_on", "log_mstar"} <= set(catalogue.columns)
    assert list(catalogue.index) == list(ids)
    # The folder reads as one parquet table with a fixed-size float32 list column.
    table = pq.read_table(exported)
    assert table.num_rows == N_GALAXIES
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    manifest = read_manifest(exported)
    assert manifest["complete"] and [p["rows"] for p in manifest["parts"]] == [16, 16, 16]


def test_export_twice_is_identical(model, exported, tmp_path):
    again = tmp_path / "again.parquet"
    export_embeddings(
        model, survey_config(model), again, "test", layer="final", batch_size=BATCH,
        rows_per_part=16, device="cpu", dtype="float32", progress=False,
    )  # fmt: skip
    assert read_table(again).equals(read_table(exported))


def test_middle_layer_is_the_residual_stream_after_block_n_over_2(model, direct):
    loader = make_loader(survey_config(model), "test", batch_size=BATCH, shuffle=False)
    batch = next(iter(loader))
    got = ModelEncoder(model, layer="middle", device="cpu", dtype="float32")(batch.tokens)
    got = got.numpy()
    np.testing.assert_allclose(got, direct["middle"][:BATCH], rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, direct["final"][:BATCH])


def test_several_layers_export_concatenated(model, direct, tmp_path):
    out = export_embeddings(
        model, survey_config(model), tmp_path / "two.parquet", "test",
        layer="middle+final", batch_size=BATCH, device="cpu", dtype="float32", progress=False,
    )  # fmt: skip
    _, emb, _ = read_embeddings(out)
    assert emb.shape == (N_GALAXIES, 64)
    np.testing.assert_allclose(emb[:, :32], direct["middle"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb[:, 32:], direct["final"], rtol=1e-5, atol=1e-6)
    assert read_manifest(out)["settings"]["layer"] == "1+final"


def test_flux_aware_model_exports_with_the_batch_statistics(model, tmp_path):
    torch.manual_seed(2)
    flux = GPT(dataclasses.replace(model.config, flux_tokens=True)).eval()
    out = export_embeddings(
        flux, survey_config(flux), tmp_path / "flux.parquet", "test", batch_size=BATCH,
        device="cpu", dtype="float32", progress=False,
    )  # fmt: skip
    _, emb, _ = read_embeddings(out)
    batch = next(iter(make_loader(survey_config(flux), "test", batch_size=BATCH, shuffle=False)))
    with torch.no_grad():
        stats = band_statistics(batch.tokens, batch.mean, batch.std, 3)
        direct = flux.embed(batch.tokens, stats=stats).numpy()
    np.testing.assert_allclose(emb[:BATCH], direct, rtol=1e-5, atol=1e-6)


def test_bfloat16_autocast_is_close_to_float32(model):
    tokens = torch.randn(4, 16, model.config.patch_dim)
    full = ModelEncoder(model, device="cpu", dtype="float32")(tokens)
    half = ModelEncoder(model, device="cpu", dtype="bfloat16")(tokens)
    assert half.dtype == torch.float32
    assert torch.allclose(full, half, rtol=0.1, atol=0.05)


def test_interrupted_export_resumes_without_duplicates_or_gaps(model, exported, tmp_path):
    out = tmp_path / "resumed.parquet"
    interrupted = small_model()
    calls = {"n": 0}
    real_embed = interrupted.embed

    def failing_embed(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # parts hold 2 batches: one part written, one batch lost
            raise KeyboardInterrupt
        return real_embed(*args, **kwargs)

    interrupted.embed = failing_embed
    options = dict(
        layer="final", batch_size=BATCH, rows_per_part=16, device="cpu", dtype="float32",
        progress=False,
    )  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        export_embeddings(interrupted, survey_config(model), out, "test", **options)
    manifest = read_manifest(out)
    assert not manifest["complete"] and [p["rows"] for p in manifest["parts"]] == [16]
    with pytest.raises(RuntimeError, match="unfinished"):
        read_embeddings(out)

    calls["n"] = -100  # no more failures; count the batches the resumed run embeds
    export_embeddings(interrupted, survey_config(model), out, "test", **options)
    assert calls["n"] + 100 == N_GALAXIES // BATCH - 2  # restarted after the first part
    assert read_table(out).equals(read_table(exported))


def test_resume_refuses_other_settings_and_foreign_folders(model, exported, tmp_path):
    with pytest.raises(ValueError, match="pool"):
        export_embeddings(
            model, survey_config(model), exported, "test", layer="final", pool="last",
            batch_size=BATCH, rows_per_part=16, device="cpu", progress=False,
        )  # fmt: skip
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        export_embeddings(model, survey_config(model), foreign, "test", progress=False)
    mismatched = DataConfig(source="synthetic", patch_size=16)
    with pytest.raises(ValueError, match="patch_size"):
        export_embeddings(model, mismatched, tmp_path / "x.parquet", "test", progress=False)


def test_random_init_is_seeded_and_leaves_the_global_rng_alone(model):
    state = torch.get_rng_state()
    a, b = random_init_like(model, seed=3), random_init_like(model.config, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert not torch.equal(a.tokeniser.fc1.weight, model.tokeniser.fc1.weight)
    assert not torch.equal(a.tokeniser.fc1.weight, random_init_like(model, 4).tokeniser.fc1.weight)


@pytest.mark.slow
def test_baselines_share_the_rows_pixels_are_unnormalised_patches(model, exported, tmp_path):
    from astropt.morphometrics import feature_names, morphometrics
    from astropt.probe import PixelSource
    from astropt.tokens import patchify

    out = tmp_path / "emb.parquet"
    paths = export_baselines(
        model, survey_config(model), out, "test", seed=0, layer="final",
        batch_size=BATCH, rows_per_part=16, device="cpu", progress=False,
    )  # fmt: skip
    assert paths == baseline_paths(out)
    assert set(paths) == {"pixels", "random-init", "morphometrics"}
    model_ids = read_embeddings(exported)[0]
    rand_ids, rand_emb, _ = read_embeddings(paths["random-init"])
    pix_ids, pixels, pix_cat = read_embeddings(paths["pixels"])
    morph_ids, morph, _ = read_embeddings(paths["morphometrics"])
    for other in (rand_ids, pix_ids, morph_ids):
        np.testing.assert_array_equal(other, model_ids)
    assert rand_emb.shape == (N_GALAXIES, 32)
    assert "redshift" in pix_cat.columns
    manifest = read_manifest(paths["pixels"])
    assert manifest["settings"]["kind"] == "pixels" and manifest["meta"]["token_dim"] == 192
    assert read_manifest(paths["morphometrics"])["meta"]["features"] == feature_names()

    # The pixel export is the loader's scaled images as patches, before normalisation,
    # and normalising it per patch gives exactly the tokens the model reads.
    batches = list(make_loader(survey_config(model), "test", batch_size=BATCH, shuffle=False))
    images = torch.cat([b.images for b in batches])
    expected = patchify(images, patch_size=8, order="raster").reshape(N_GALAXIES, -1).numpy()
    np.testing.assert_array_equal(pixels, expected)
    _, normalised, _ = PixelSource(paths["pixels"], normalise=True).load()
    tokens = torch.cat([b.tokens for b in batches]).reshape(N_GALAXIES, -1).numpy()
    # Tokens are in spiral order, the export in raster order: compare each galaxy's values.
    np.testing.assert_allclose(np.sort(normalised), np.sort(tokens), atol=1e-4)
    np.testing.assert_allclose(morph, morphometrics(images.numpy()), rtol=1e-5, atol=1e-6)


def test_read_embeddings_accepts_a_plain_parquet_file(tmp_path):
    frame = pd.DataFrame(
        {
            "id": [5, 7, 9],
            "redshift": [0.1, 0.2, 0.3],
            "embedding": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
        }
    )
    path = tmp_path / "plain.parquet"
    frame.to_parquet(path)
    ids, emb, catalogue = read_embeddings(path)
    np.testing.assert_array_equal(ids, [5, 7, 9])
    np.testing.assert_array_equal(emb, [[1, 2], [3, 4], [5, 6]])
    assert list(catalogue.columns) == ["redshift"]


def test_display_rgb_handles_jpeg_range_and_fluxes():
    unit = torch.rand(2, 3, 16, 16)
    rgb = display_rgb(unit, 8)
    assert rgb.shape == (2, 8, 8, 3) and rgb.dtype == np.uint8
    # Area downsampling of a constant image keeps the value; [0, 1] shown as is.
    flat = display_rgb(torch.full((1, 3, 16, 16), 0.5), 4)
    assert np.all(flat == 128)
    flux = torch.zeros(1, 3, 16, 16)
    flux[0, 2] = 5.0  # only z is bright: the red channel after z, r, g -> R, G, B
    flux[0, :, 0, 0] = -1.0
    shown = display_rgb(flux, 16)
    assert shown[0, 8, 8, 0] == 255 and shown[0, 8, 8, 2] < 100


def test_command_line_with_thumbnails(model, tmp_path, capsys):
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    out = tmp_path / "cli.parquet"
    argv = [
        "--checkpoint", str(model_dir), "--source", "synthetic", "--out", str(out),
        "--image-size", "32", "--batch-size", "16", "--thumbnails", "8", "--device", "cpu",
        "--data-opt", f"synthetic_n={N_GALAXIES}", "--data-opt", "synthetic_val_fraction=0",
        "--data-opt", "synthetic_test_fraction=1.0", "--no-progress", "--max-samples", "20",
    ]  # fmt: skip
    assert main(argv) == 0
    ids, emb, _ = read_embeddings(out)
    assert emb.shape == (20, 32)
    thumb_ids, thumbs = read_thumbnails(out, ids[[3, 1]])
    assert thumbs.shape == (2, 8, 8, 3) and thumbs.dtype == np.uint8
    np.testing.assert_array_equal(thumb_ids, ids[[3, 1]])
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["meta"]["data_config"]["synthetic_n"] == N_GALAXIES
    assert manifest["settings"]["layer"] == "final"  # the model's embed_layer default


# ------------------------------------------------------------------ torchrun
def _torchrun_export(model_dir, data_file, out, crash: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(ROOT / "tests" / "export_worker.py"), str(model_dir), str(data_file), str(out),
        str(crash),
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_torchrun_export_is_sharded_resumable_and_equals_one_process(model, tmp_path):
    """Two gloo ranks embed disjoint shards; rank 1 dies mid-way; the rerun resumes
    its shard (earlier parts untouched, only the missing batches embedded) and the
    merged export equals the single-process one row for row."""
    n = 45  # odd: rank 0 reads 23 galaxies, rank 1 reads 22 (an export drops none)
    data_cfg = dataclasses.replace(survey_config(model), synthetic_n=n)
    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps(dataclasses.asdict(data_cfg)))
    model.save_pretrained(tmp_path / "model")
    single = export_embeddings(
        model, data_cfg, tmp_path / "single.parquet", "test", layer="final", batch_size=8,
        rows_per_part=8, device="cpu", dtype="float32", progress=False,
    )  # fmt: skip
    out = tmp_path / "sharded.parquet"

    crashed = _torchrun_export(tmp_path / "model", data_file, out, crash=2)
    assert crashed.returncode != 0 and "simulated crash" in crashed.stderr + crashed.stdout
    assert not read_manifest(out)["complete"]
    shard1 = out / "rank-00001-of-00002"
    before = {p.name: p.stat().st_mtime_ns for p in shard1.glob("part-*.parquet")}
    assert sorted(before) == ["part-00000.parquet", "part-00001.parquet"]
    with pytest.raises(RuntimeError, match="unfinished sharded export"):
        read_embeddings(out)

    resumed = _torchrun_export(tmp_path / "model", data_file, out, crash=0)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # Rank 1 embedded only its last batch (22 rows: batches of 8, 8, 6); parts kept.
    assert (tmp_path / "sharded.parquet.calls.1").read_text() == "1"
    assert {p: shard1.joinpath(p).stat().st_mtime_ns for p in before} == before
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["rows"] == n
    assert manifest["shards"] == ["rank-00000-of-00002", "rank-00001-of-00002"]
    rank_ids = [
        set(pq.read_table(out / shard, columns=["id"]).column("id").to_pylist())
        for shard in manifest["shards"]
    ]
    assert len(rank_ids[0]) == 23 and len(rank_ids[1]) == 22 and not rank_ids[0] & rank_ids[1]

    ids, emb, catalogue = read_embeddings(out)
    want_ids, want_emb, want_catalogue = read_embeddings(single)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(emb, want_emb, rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(catalogue, want_catalogue)
    # A one-process run may not resume (or mix into) a two-process export.
    with pytest.raises(ValueError, match="2 process"):
        export_embeddings(
            model, data_cfg, out, "test", layer="final", batch_size=8, rows_per_part=8,
            device="cpu", dtype="float32", progress=False,
        )  # fmt: skip
