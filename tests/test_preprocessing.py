"""A trained model carries the preprocessing of its training images to every command that uses it.

The real sequence: a folder of 424x424 JPEGs (written here), a short training run
with ``data.resize=64`` (and a crop and resampling of its own), then ``astropt
embed``/``sample``/finetune ``init_from`` with no repeated data options.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import typing

import numpy as np
import pytest
import torch
from conftest import encode, galaxy_stamps

from astropt.cli import main as astropt_main
from astropt.data import DataConfig
from astropt.export import data_config_from_options, export_preprocessing, read_embeddings
from astropt.hub import load_model
from astropt.options import ConfigError
from astropt.preprocessing import Preprocessing, data_fields

#: What the run below trains with: a crop, a resize and a resampling that are not the defaults.
TRAINED = {"resize": 64, "crop_fraction": 0.75, "resample": "lanczos"}


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """Eight 424x424 colour JPEG files of galaxy-like blobs."""
    folder = tmp_path_factory.mktemp("jpegs")
    for k, stamp in enumerate(galaxy_stamps(8, 424, seed=3)):
        (folder / f"gal{k}.jpg").write_bytes(encode(stamp))
    return folder


@pytest.fixture(scope="module")
def run(jpegs, tmp_path_factory):
    """A two-step training run on the JPEG folder with :data:`TRAINED`."""
    from astropt.config import load_config
    from astropt.train import train

    out = tmp_path_factory.mktemp("runs") / "jpeg-run"
    cfg = load_config(
        None,
        [
            f"out_dir={out}", "data.source=folder", f"data.path={jpegs}",
            *(f"data.{key}={value}" for key, value in TRAINED.items()),
            "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=16",
            "batch_size=4", "max_iters=2", "eval_interval=2", "eval_iters=1",
            "optim.warmup_iters=1", "peak_flops=1e9", "dtype=float32", "preview=false",
            "progress=false",
        ],
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops on a shared machine: no OpenMP spin contention
    try:
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    return out


def _embed(run, jpegs, out, *options) -> int:
    return astropt_main(
        ["embed", f"checkpoint={run}", f"data.path={jpegs}", f"out={out}",
         "progress=false", "dtype=float32", "batch_size=8", *options]
    )  # fmt: skip


# ------------------------------------------------------------------ the record
def test_record_fields_are_data_config_fields_with_their_types_and_defaults():
    data_fields_ = {f.name: f for f in dataclasses.fields(DataConfig)}
    data_hints = typing.get_type_hints(DataConfig)
    hints = typing.get_type_hints(Preprocessing)
    for f in dataclasses.fields(Preprocessing):
        assert f.name in data_fields_, f.name
        assert hints[f.name] == data_hints[f.name], f.name
        assert f.default == data_fields_[f.name].default, f.name
    assert Preprocessing.of(DataConfig()) == Preprocessing()


def test_record_round_trips_and_is_checked():
    record = Preprocessing(bands=[1, 2], resize=64, crop_fraction=0.5, jpeg_reduce=False)
    assert record.bands == (1, 2)
    assert Preprocessing.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert Preprocessing.from_dict({"resize": 32}) == Preprocessing(resize=32)  # older records
    with pytest.raises(ConfigError, match="did you mean 'resize'"):
        Preprocessing.from_dict({"resise": 32})
    with pytest.raises(ConfigError, match="format"):
        Preprocessing.from_dict({"format": "astropt-preprocessing/99"})


def test_given_options_override_the_record_and_a_crop_replaces_either_crop(capsys):
    trained = Preprocessing(resize=64, crop_fraction=0.5)
    fields = data_fields({"path": "x"}, trained, model_name="runs/x")
    assert (fields["resize"], fields["crop_fraction"], fields["path"]) == (64, 0.5, "x")
    assert capsys.readouterr().err == ""
    fields = data_fields({"image_size": 200}, trained, model_name="runs/x")
    assert (fields["image_size"], fields["crop_fraction"], fields["resize"]) == (200, None, 64)
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "runs/x" in line
    assert "data.image_size=200 (trained with None)" in line
    assert "data.crop_fraction=None (trained with 0.5)" in line
    with pytest.raises(ConfigError, match="strict=true"):
        data_fields({"resize": 32}, trained, model_name="runs/x", strict=True)
    # No record (an AstroPT checkpoint): the options as given, so the data defaults apply.
    assert data_fields({"resize": 32}, None, model_name="ckpt.pt") == {"resize": 32}


def test_astropt_checkpoints_keep_todays_defaults(tmp_path):
    from astropt.interop import export_astropt_checkpoint
    from astropt.model import GPT, GPTConfig

    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, transpose_hw=True)
    export_astropt_checkpoint(GPT(config), tmp_path / "astropt")
    model = load_model(tmp_path / "astropt")
    assert model.preprocessing is None
    cfg = data_config_from_options(model, {"path": "", "source": "synthetic"})
    assert Preprocessing.of(cfg) == Preprocessing()
    assert cfg.transpose_hw


# ------------------------------------------------------------------ a real run
def test_run_folder_records_the_preprocessing(run):
    expected = Preprocessing(channels=3, **TRAINED)
    for name in ("best", "latest"):
        written = json.loads((run / "checkpoints" / name / "preprocessing.json").read_text())
        assert Preprocessing.from_dict(written) == expected
    assert load_model(run).preprocessing == expected
    assert "| resize | `64` |" in (run / "checkpoints" / "best" / "README.md").read_text()


def test_embed_needs_no_repeated_options_and_matches_explicit_ones(run, jpegs, tmp_path, capsys):
    assert _embed(run, jpegs, tmp_path / "implicit.parquet") == 0
    explicit = [f"data.{key}={value}" for key, value in TRAINED.items()]
    assert _embed(run, jpegs, tmp_path / "explicit.parquet", *explicit) == 0
    assert "data options differ" not in capsys.readouterr().err
    ids, implicit, catalogue = read_embeddings(tmp_path / "implicit.parquet")
    ids2, given, _ = read_embeddings(tmp_path / "explicit.parquet")
    assert len(ids) == 8 and list(ids) == list(ids2)
    np.testing.assert_array_equal(implicit, given)
    assert catalogue.attrs["preprocessing"] == Preprocessing(channels=3, **TRAINED)
    manifest = json.loads((tmp_path / "implicit.parquet" / "_manifest.json").read_text())
    assert manifest["meta"]["trained_preprocessing"] == manifest["meta"]["preprocessing"]
    # UMAP stamps are read again from the data source the way the export read it.
    from astropt.maps import stamps_for

    stamps = stamps_for(tmp_path / "implicit.parquet", ids[:2], None)
    assert stamps is not None and stamps.shape == (2, 32, 32, 3)

    # Without the record (a model folder from elsewhere) the 424-pixel JPEGs do not fit.
    bare = tmp_path / "bare"
    shutil.copytree(run / "checkpoints" / "best", bare)
    (bare / "preprocessing.json").unlink()
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        _embed(bare, jpegs, tmp_path / "bare.parquet")


def test_a_differing_override_prints_the_difference_and_strict_refuses_it(
    run, jpegs, tmp_path, capsys
):
    assert _embed(run, jpegs, tmp_path / "small.parquet", "data.resize=32") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "data options differ" in line]
    assert len(lines) == 1 and "data.resize=32 (trained with 64)" in lines[0]
    assert str(run) in lines[0]
    assert export_preprocessing(tmp_path / "small.parquet").resize == 32

    assert _embed(run, jpegs, tmp_path / "refused.parquet", "data.resize=32", "strict=true") == 2
    assert "strict=true" in capsys.readouterr().err
    assert not (tmp_path / "refused.parquet").exists()

    # Probing exports made with different preprocessing says so.
    from astropt.probe import load_embedding_sets

    assert _embed(run, jpegs, tmp_path / "same.parquet") == 0
    with pytest.warns(
        UserWarning, match=r"different preprocessing \(data.resize=64 \('small' has 32\)"
    ):
        load_embedding_sets(
            {"small": tmp_path / "small.parquet", "same": tmp_path / "same.parquet"}
        )


def test_sample_and_older_runs_use_the_record(run, jpegs, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = astropt_main(
        ["sample", f"checkpoint={run}", f"data.path={jpegs}", "prefix=4", "n=2", f"out={out}"]
    )
    assert code == 0 and out.is_file()
    assert np.load(out.with_suffix(".npz"))["images"].shape[-1] == 64
    # A run written before checkpoints recorded it: the run's config.json says.
    old = tmp_path / "old-run"
    shutil.copytree(run, old)
    for name in ("best", "latest"):
        (old / "checkpoints" / name / "preprocessing.json").unlink()
    assert load_model(old).preprocessing == Preprocessing(channels=3, **TRAINED)


def test_finetune_init_from_fills_the_data_keys_the_config_does_not_set(run, jpegs, capsys):
    from astropt.finetune.config import load_finetune_config
    from astropt.finetune.modes import apply_preprocessing, load_trunk

    base = [f"init_from={run}", "data.source=folder", f"data.path={jpegs}"]
    cfg = load_finetune_config(None, base)
    apply_preprocessing(cfg, load_trunk(cfg.init_from, cfg.model, 0))
    assert Preprocessing.of(cfg.data) == Preprocessing(channels=3, **TRAINED)
    assert "data options differ" not in capsys.readouterr().err

    cfg = load_finetune_config(None, [*base, "data.resample=area"])
    apply_preprocessing(cfg, load_trunk(cfg.init_from, cfg.model, 0))
    assert (cfg.data.resample, cfg.data.resize) == ("area", 64)
    assert "data.resample='area' (trained with 'lanczos')" in capsys.readouterr().err
    cfg = load_finetune_config(None, [*base, "data.resample=area", "strict=true"])
    with pytest.raises(ConfigError, match="strict"):
        apply_preprocessing(cfg, load_trunk(cfg.init_from, cfg.model, 0))


def test_a_finetuned_model_folder_keeps_the_record_for_predict(run, jpegs, tmp_path):
    from astropt.finetune.model import FinetunedGPT, HeadConfig
    from astropt.predict import read_predictions

    trunk = load_model(run)
    finetuned = FinetunedGPT.from_gpt(trunk, HeadConfig(n_outputs=2, targets=["folders"]))
    finetuned.save_pretrained(tmp_path / "ft" / "model", preprocessing=trunk.preprocessing)
    assert load_model(tmp_path / "ft" / "model").preprocessing == trunk.preprocessing
    out = tmp_path / "preds.parquet"
    code = astropt_main(
        ["predict", f"checkpoint={tmp_path / 'ft'}", f"data.path={jpegs}", f"out={out}",
         "progress=false", "dtype=float32"]
    )  # fmt: skip
    assert code == 0 and len(read_predictions(out)) == 8
    assert export_preprocessing(out) == trunk.preprocessing
