"""Model folders, model cards, load_model's sources and the Hugging Face Hub (offline).

No network: Hub loading is tested on a cache folder laid out as
huggingface_hub documents it (``models--OWNER--NAME/{refs,snapshots,blobs}``)
with ``HF_HUB_OFFLINE=1``, and on a local folder laid out like a repo; push is
tested through the folder it would upload.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from astropt import hub
from astropt.hub import from_hub, load_model, parse_repo_spec, push_to_hub, save_pretrained
from astropt.interop import export_astropt_checkpoint
from astropt.model import GPT, GPTConfig


def _model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, patch_size=4, n_chan=3)
    cfg.update(overrides)
    model = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():  # LayerNorm gains away from 1 so every tensor matters
        for name, tensor in model.named_parameters():
            if "norm" in name:
                tensor.add_(0.2 * torch.randn_like(tensor))
    return model


def _same(a: GPT, b: GPT) -> None:
    x = torch.randn(2, a.config.block_size, a.config.patch_dim)
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x)[0], b(x)[0], rtol=0, atol=0)
        torch.testing.assert_close(a.embed(x), b.embed(x), rtol=0, atol=0)
    assert a.config == b.config


# ------------------------------------------------------------ model folders


def test_save_pretrained_writes_hub_layout_and_card(tmp_path):
    model = _model()
    probes = {"redshift": {"r2": 0.8125}, "smooth": {"accuracy": 0.9375}}
    save_pretrained(
        model,
        tmp_path,
        training_data="Smith42/galaxies revision v2.0 (256x256 JPEG)",
        probe_results=probes,
        training_summary={"steps": 1200, "best_val_loss": 0.3456},
        model_name="astropt-test",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md", "config.json", "model.safetensors",
    ]  # fmt: skip
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "astropt"
    assert card.data.datasets == ["Smith42/galaxies"]
    text = card.text
    assert "Smith42/galaxies revision v2.0" in text
    assert "| n_layer | 2 |" in text and "| n_embd | 32 |" in text
    assert f"| parameters | {model.num_params():,} |" in text
    assert "| redshift | r2 | 0.8125 |" in text and "| smooth | accuracy | 0.9375 |" in text
    assert "best_val_loss: 0.3456" in text
    _same(model, GPT.from_pretrained(tmp_path))


def test_card_reads_probe_results_file_and_states_layout(tmp_path):
    report = tmp_path / "probes.json"
    report.write_text(json.dumps({"M_g": 0.91}))
    model = _model(transpose_hw=True, embed_layer="middle")
    save_pretrained(model, tmp_path / "m", probe_results=report)
    text = (tmp_path / "m" / "README.md").read_text()
    assert "| M_g |  | 0.91 |" in text
    assert "swapaxes(0, 2)" in text and "`middle`" in text
    assert "Not recorded." in text  # no training data given
    save_pretrained(model, tmp_path / "bare", card=False)
    assert not (tmp_path / "bare" / "README.md").exists()


def test_push_to_hub_dry_run_stages_the_upload_folder(tmp_path):
    model = _model()
    folder = push_to_hub(
        model, "someone/astropt-small", dry_run=True, staging_dir=tmp_path / "stage",
        training_data={"survey": "synthetic", "n": 1000},
    )  # fmt: skip
    folder = Path(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "model.safetensors",
    ]  # fmt: skip
    text = (folder / "README.md").read_text()
    assert 'load_model("someone/astropt-small")' in text and "- n: 1000" in text
    _same(model, load_model(folder))


def test_model_methods_save_push_and_load_the_same_weights(tmp_path):
    model = _model(3)
    staged = Path(model.push_to_hub("someone/m", dry_run=True, staging_dir=tmp_path / "stage"))
    model.save_pretrained(tmp_path / "saved")
    for folder in (staged, tmp_path / "saved"):
        _same(model, type(model).from_pretrained(folder))


# ------------------------------------------------------------ load_model


def test_load_model_accepts_every_local_source(tmp_path):
    ours, astropt_model = _model(1), _model(2, transpose_hw=True, embed_layer="middle")
    save_pretrained(ours, tmp_path / "folder")
    run = tmp_path / "run"
    save_pretrained(_model(3), run / "checkpoints" / "latest")
    save_pretrained(ours, run / "checkpoints" / "best")
    export_astropt_checkpoint(astropt_model, tmp_path / "astropt_run")
    for source in (tmp_path / "folder", str(tmp_path / "folder" / "config.json"), run):
        _same(ours, load_model(source))
    shutil.rmtree(run / "checkpoints" / "best")
    _same(_model(3), load_model(run))  # no best: latest
    for source in (tmp_path / "astropt_run", tmp_path / "astropt_run" / "ckpt.pt"):
        _same(astropt_model, load_model(source))
    with pytest.raises(FileNotFoundError, match="no model found"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither an existing path"):
        load_model(tmp_path / "not" / "there")


def test_parse_repo_spec():
    assert parse_repo_spec("Smith42/astroPT_v2.0") == ("Smith42/astroPT_v2.0", None)
    assert parse_repo_spec("Smith42/astroPT_v2.0:astropt/095M/") == (
        "Smith42/astroPT_v2.0", "astropt/095M",
    )  # fmt: skip
    for bad in ("gpt2", "a/b/c", "/abs/path", "x/y:a:b"):
        with pytest.raises(ValueError):
            parse_repo_spec(bad)


# ------------------------------------------------------------ Hub, offline


def _cache_repo(cache: Path, repo_id: str, files: dict[str, Path], ref: str = "main") -> None:
    """Lay files out in the huggingface_hub cache as a download would (blobs + snapshot links)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{ref}".encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(Path(name).parts) + 1), "blobs", blob.name))


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    ours, theirs = _model(4), _model(5, transpose_hw=True, embed_layer="middle")
    staged = Path(push_to_hub(ours, "astro/ours", dry_run=True, staging_dir=tmp_path / "stage"))
    _cache_repo(cache, "astro/ours", {n: staged / n for n in ("config.json", "model.safetensors")})
    ckpt = export_astropt_checkpoint(theirs, tmp_path / "theirs")
    # AstroPT's repos keep a config.json of their own at the root (a download counter).
    root_config = tmp_path / "root_config.json"
    root_config.write_text(json.dumps({"model_type": "astropt", "note": "not ours"}))
    layout = {"config.json": root_config, "astropt/095M/ckpt.pt": ckpt}
    _cache_repo(cache, "Smith42/astroPT_v2.0", layout)
    _cache_repo(cache, "Smith42/astroPT_v2.0", {"astropt/095M/ckpt.pt": ckpt}, ref="v2.0")
    return {"ours": ours, "theirs": theirs, "cache": cache, "ckpt": ckpt, "layout": layout}


def test_hub_repo_ids_load_from_the_offline_cache(offline_cache):
    assert hub.hub_offline()
    _same(offline_cache["ours"], load_model("astro/ours"))
    _same(offline_cache["ours"], GPT.from_pretrained("astro/ours"))
    theirs = offline_cache["theirs"]
    _same(theirs, load_model("Smith42/astroPT_v2.0:astropt/095M"))
    _same(theirs, load_model("Smith42/astroPT_v2.0:astropt/095M/ckpt.pt"))
    _same(theirs, from_hub("Smith42/astroPT_v2.0", "astropt/095M", "ckpt.pt"))
    _same(theirs, from_hub("Smith42/astroPT_v2.0", "astropt/095M", revision="v2.0"))


def test_missing_hub_models_fail_clearly_offline(offline_cache):
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        load_model("astro/not-cached")
    # The repo's root config.json is AstroPT's, not a model folder; no ckpt.pt at the root.
    with pytest.raises(FileNotFoundError, match="ckpt.pt"):
        load_model("Smith42/astroPT_v2.0")
    with pytest.raises(FileNotFoundError):
        from_hub("Smith42/astroPT_v2.0", "astropt/700M")


def test_local_folder_laid_out_like_a_repo(offline_cache, tmp_path):
    mirror = tmp_path / "mirror"
    for name, source in offline_cache["layout"].items():
        (mirror / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, mirror / name)
    theirs = offline_cache["theirs"]
    _same(theirs, from_hub(str(mirror), "astropt/095M"))
    _same(theirs, from_hub(str(mirror), "astropt/095M", "ckpt.pt"))
    _same(theirs, load_model(mirror / "astropt" / "095M"))


def test_offline_flag_is_read_at_call_time(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub.hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    assert hub.hub_offline()


def test_a_pushed_model_keeps_its_preprocessing_through_the_hub_cache(tmp_path, monkeypatch):
    from astropt.preprocessing import Preprocessing

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    record = Preprocessing(crop_fraction=0.5, resize=64, resample="lanczos", channels=3)
    model = _model(6)
    model.preprocessing = record
    staged = Path(push_to_hub(model, "astro/prep", dry_run=True, staging_dir=tmp_path / "stage"))
    assert "| resize | `64` |" in (staged / "README.md").read_text()
    names = ("config.json", "model.safetensors", "preprocessing.json")
    _cache_repo(cache, "astro/prep", {n: staged / n for n in names})
    loaded = load_model("astro/prep")
    _same(model, loaded)
    assert loaded.preprocessing == record
    # A repo without the file (AstroPT's, or pushed before records existed) has none.
    _cache_repo(cache, "astro/bare", {n: staged / n for n in names[:2]})
    assert load_model("astro/bare").preprocessing is None
    # Saving weights without a record over a folder that had one removes the stale file.
    save_pretrained(_model(7), staged)
    assert not (staged / "preprocessing.json").exists()
