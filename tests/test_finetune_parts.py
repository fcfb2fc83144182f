"""Finetuning pieces on their own: config, heads, losses, label sources, splits, LoRA, model folders.

Expected values come from definitions (scipy's Dirichlet-multinomial, class
counts of the file the test wrote, tokens made from the stored pixels), never
from an earlier output of the same code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from astropt import hub
from astropt.config import ConfigError
from astropt.finetune import data as fdata
from astropt.finetune.config import FinetuneConfig, load_finetune_config
from astropt.finetune.model import FinetunedGPT, HeadConfig, dirichlet_multinomial_nll
from astropt.model import GPT, GPTConfig

TINY = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16)


# ------------------------------------------------------------------ config
def test_design_command_line_parses_and_a_misspelt_key_names_the_right_one(tmp_path):
    cfg = load_finetune_config(None, ["init_from=runs/x", "mode=lora", "label_column=galaxy10"])
    assert (cfg.init_from, cfg.mode, cfg.label_columns) == ("runs/x", "lora", ["galaxy10"])
    with pytest.raises(ConfigError, match="label_column"):
        load_finetune_config(None, ["label_colum=galaxy10"])
    with pytest.raises(ConfigError, match="'probe'"):
        load_finetune_config(None, ["mode=prob"])
    with pytest.raises(ConfigError, match="lr"):
        load_finetune_config(None, ["optim.lrr=1e-3"])
    toml = tmp_path / "ft.toml"
    toml.write_text('head = "regression"\nlabel_column = "a, b"\n[optim]\nlr = 3e-4\n')
    cfg = load_finetune_config(toml, ["max_iters=7"])
    assert (cfg.head, cfg.label_columns, cfg.optim.lr, cfg.max_iters) == (
        "regression",
        ["a", "b"],
        3e-4,
        7,
    )
    with pytest.raises(ConfigError, match="val_fraction"):
        load_finetune_config(None, ["val_fraction=0.6", "test_fraction=0.5"])


def test_shipped_finetune_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("finetune-quickstart.toml", "finetune-galaxy10.toml"):
        cfg = load_finetune_config(root / name)
        assert isinstance(cfg, FinetuneConfig)


# ------------------------------------------------------------------ heads
def test_dirichlet_multinomial_matches_scipy():
    from scipy.stats import dirichlet_multinomial

    torch.manual_seed(0)
    outputs = torch.randn(5, 5)
    counts = torch.tensor(
        [[3, 1, 0, 2, 4], [0, 0, 5, 1, 0], [7, 0, 1, 1, 1], [0, 0, 0, 0, 0], [2, 2, 2, 2, 2]]
    ).float()
    groups = [2, 3]
    alpha = (1 + torch.nn.functional.softplus(outputs)).double().numpy()
    expected = 0.0
    for b in range(5):
        start = 0
        for size in groups:
            k = counts[b, start : start + size].numpy()
            a = alpha[b, start : start + size]
            n = k.sum()
            if n > 0:
                # scipy includes the multinomial coefficient; ours leaves that constant out.
                from scipy.special import gammaln

                coeff = gammaln(n + 1) - gammaln(k + 1).sum()
                expected -= dirichlet_multinomial.logpmf(k, a, n) - coeff
            start += size
    got = dirichlet_multinomial_nll(outputs, counts, groups)
    assert got.item() == pytest.approx(expected / 5, rel=1e-5)


def test_finetuned_model_folder_reloads_with_its_head_and_predicts_the_same(tmp_path):
    torch.manual_seed(0)
    head = HeadConfig(
        kind="regression",
        n_outputs=2,
        targets=["a", "b"],
        target_mean=[1.0, -2.0],
        target_std=[0.5, 3.0],
        layer="middle",
    )
    model = FinetunedGPT.from_gpt(GPT(TINY), head)
    torch.nn.init.normal_(model.task_head[1].weight)
    tokens = torch.randn(3, 16, TINY.patch_dim)
    expected = model.eval().predict(tokens)
    # The head reads block n_layer // 2 = 1: the middle layer's output, destandardised.
    features = model.hidden_states(tokens, layer=1).mean(1)
    by_hand = model.task_head(features) * torch.tensor([0.5, 3.0]) + torch.tensor([1.0, -2.0])
    torch.testing.assert_close(expected, by_hand)
    model.save_pretrained(tmp_path / "m")
    loaded = hub.load_model(tmp_path / "m")
    assert isinstance(loaded, FinetunedGPT)
    assert loaded.head_config == head
    assert torch.equal(loaded.eval().predict(tokens), expected)
    # Still a GPT: embedding tools take it.
    assert loaded.embed(tokens).shape == (3, TINY.n_embd)


# ------------------------------------------------------------------ LoRA
@pytest.mark.slow
def test_lora_trains_only_adapters_and_merges_into_a_plain_model():
    from astropt.finetune import lora  # peft is a test extra: missing it is an error, not a skip

    torch.manual_seed(0)
    model = FinetunedGPT.from_gpt(GPT(TINY), HeadConfig(kind="classification", n_outputs=3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = lora.add_adapters(model, rank=4, alpha=8, dropout=0.0, targets=("attn.qkv", "mlp.fc"))
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "task_head" in n for n in trainable)
    assert any("blocks.1.mlp.fc.lora_A" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    tokens, labels = torch.randn(8, 16, TINY.patch_dim), torch.randint(0, 3, (8,))
    for _ in range(5):
        loss = model.task_loss(model.task_outputs(tokens), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    base = lora.base_model(wrapped).state_dict()
    for name, value in before.items():
        key = name.replace(".weight", ".base_layer.weight")
        current = base[key] if key in base else base[name]
        if name.startswith("task_head."):
            assert not torch.equal(current, value), name
        else:
            assert torch.equal(current, value), name
    adapted = model.eval().predict(tokens)
    merged = lora.merge_adapters(wrapped)
    assert type(merged) is FinetunedGPT
    assert not lora.is_adapted(merged)
    assert set(merged.state_dict()) == set(before)
    torch.testing.assert_close(merged.predict(tokens), adapted, atol=1e-5, rtol=1e-4)
    # The adapters moved the trunk: merged weights differ from the originals.
    assert not torch.equal(
        merged.state_dict()["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"]
    )


# ------------------------------------------------------------------ splits
def test_splits_are_stratified_disjoint_seeded_and_label_subsets_keep_every_class():
    rng = np.random.default_rng(0)
    labels = rng.choice(5, size=1000, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    splits = fdata.make_splits(labels, 0.1, 0.2, seed=3)
    again = fdata.make_splits(labels, 0.1, 0.2, seed=3)
    assert all(np.array_equal(splits[k], again[k]) for k in ("train", "validation", "test"))
    joined = np.concatenate(list(splits.values()))
    assert sorted(joined.tolist()) == list(range(1000))
    for c in range(5):
        n_c = (labels == c).sum()
        assert abs((labels[splits["test"]] == c).sum() - 0.2 * n_c) <= 1
        assert abs((labels[splits["validation"]] == c).sum() - 0.1 * n_c) <= 1
    other = fdata.make_splits(labels, 0.1, 0.2, seed=4)
    assert not np.array_equal(other["test"], splits["test"])
    subset = fdata.label_subset(labels, splits["train"], seed=0, fraction=0.01)
    assert set(subset) <= set(splits["train"])
    assert sorted(set(labels[subset])) == [0, 1, 2, 3, 4]
    assert len(subset) == max(5, round(0.01 * len(splits["train"])))
    exact = fdata.label_subset(labels, splits["train"], seed=0, n_labels=100)
    assert len(exact) == 100
    assert not np.array_equal(exact, fdata.label_subset(labels, splits["train"], 1, n_labels=100))
    # Regression: strata are quantile bins.
    values = rng.normal(size=500)
    bins = fdata.strata(values, "regression")
    assert len(np.unique(bins)) == 10 and abs(np.bincount(bins) - 50).max() <= 1


# ------------------------------------------------------------------ label sources
def write_galaxy10(path, n: int = 40, size: int = 32, seed: int = 0):
    import h5py

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    ans = rng.integers(0, 10, n).astype(np.uint8)  # the distributed file stores uint8
    with h5py.File(path, "w") as handle:
        handle.create_dataset("images", data=images)
        handle.create_dataset("ans", data=ans)
        handle.create_dataset("ra", data=rng.uniform(0, 360, n))
    return images, ans


def test_galaxy10_hdf5_loads_with_the_right_classes_and_pixels(tmp_path):
    from astropt.data import map_loader
    from astropt.tokens import images_to_tokens

    path = tmp_path / "Galaxy10_DECals.h5"
    images, ans = write_galaxy10(path)
    cfg = load_finetune_config(None, [f"data.path={path}", "data.patch_size=16"])
    assert fdata.label_kind(cfg) == "galaxy10"
    pool = fdata.open_pool(cfg)
    assert pool.class_names[2] == "Round Smooth" and len(pool.class_names) == 10
    np.testing.assert_array_equal(pool.labels, ans.astype(np.int64))
    subset = fdata.LabelledSubset(pool.source, pool.indices[[5, 9]], pool.labels[[5, 9]])
    loader = map_loader(
        subset, cfg.data, "g10", split="test", batch_size=2, shuffle=False, augment=False,
        seed=0, rank=0, world_size=1, device="cpu", drop_last=False, repeat=False,
    )  # fmt: skip
    batch = next(iter(loader))
    assert batch.ids == [5, 9]
    np.testing.assert_array_equal(batch.catalogue[fdata.LABEL_KEY], ans[[5, 9]])
    chw = torch.from_numpy(images[[5, 9]]).permute(0, 3, 1, 2).contiguous()
    expected, _, _ = images_to_tokens(chw, 16, "spiral", False)
    torch.testing.assert_close(batch.tokens, expected)
    bad = tmp_path / "bad.h5"
    import h5py

    with h5py.File(bad, "w") as handle:
        handle.create_dataset("images", data=images)
    with pytest.raises(ValueError, match="ans"):
        fdata.Galaxy10Source(bad)


def test_survey_galaxies_written_as_a_galaxy10_file_read_back_with_their_classes(tmp_path):
    import h5py

    from astropt.simulate import make_stamps

    path = fdata.write_galaxy10_like(tmp_path / "g10.h5", n=7, image_size=64, seed=3, chunk=3)
    rgb, _, labels = make_stamps(7, 64, 3)
    with h5py.File(path, "r") as handle:  # the distributed file's layout and dtypes
        assert handle["images"].dtype == np.uint8 and handle["images"].shape == (7, 64, 64, 3)
        assert handle["ans"].dtype == np.uint8
        np.testing.assert_array_equal(handle["images"][:], rgb)
    source = fdata.Galaxy10Source(path)
    np.testing.assert_array_equal(source.labels, labels["galaxy10"])
    np.testing.assert_array_equal(source.decode(4, "x"), rgb[4].transpose(2, 0, 1))
    assert not list(tmp_path.glob("*.tmp"))


def test_class_subfolders_become_sorted_classes(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    counts = {"spiral": 3, "elliptical": 5}
    for name, n in counts.items():
        (tmp_path / name).mkdir()
        for i in range(n):
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(image).save(tmp_path / name / f"{name}{i}.png")
    cfg = load_finetune_config(None, ["data.source=folder", f"data.path={tmp_path}"])
    assert fdata.label_kind(cfg) == "folders"
    pool = fdata.open_pool(cfg)
    assert pool.class_names == ["elliptical", "spiral"]
    assert np.bincount(pool.labels).tolist() == [5, 3]
    assert sorted(pool.ids.tolist()) == sorted(
        f"{k}{i}" for k, n in counts.items() for i in range(n)
    )


def test_catalogue_column_labels_pool_the_held_out_splits_unless_told(tiny_survey, hf_cache):
    held_out = fdata.open_pool(
        load_finetune_config(None, [*_data(tiny_survey, hf_cache), "label_column=galaxy10"])
    )  # by default never the train split, which pretraining reads
    expected = np.concatenate([tiny_survey.ids[s] for s in ("validation", "test")])
    np.testing.assert_array_equal(held_out.ids, expected)
    cfg = load_finetune_config(
        None,
        [*_data(tiny_survey, hf_cache), "label_column=galaxy10",
         'source_splits=["train", "validation", "test"]'],
    )  # fmt: skip
    pool = fdata.open_pool(cfg)
    expected = np.concatenate(
        [tiny_survey.labels[s]["galaxy10"] for s in ("train", "validation", "test")]
    )
    classes = sorted(set(expected.tolist()))
    assert pool.class_names == [fdata.GALAXY10_CLASSES[c] for c in classes]
    np.testing.assert_array_equal(np.asarray(classes)[pool.labels], expected)
    ids = np.concatenate([tiny_survey.ids[s] for s in ("train", "validation", "test")])
    np.testing.assert_array_equal(pool.ids, ids)
    with pytest.raises(ValueError, match="no column 'galaxy11'"):
        fdata.open_pool(
            load_finetune_config(None, [*_data(tiny_survey, hf_cache), "label_column=galaxy11"])
        )


def _data(survey, cache):
    return [f"data.path={survey.path}", "data.source=hf", f"data.cache_dir={cache}"]


def test_task_head_json_is_plain_json(tmp_path):
    model = FinetunedGPT.from_gpt(GPT(TINY), HeadConfig(kind="classification", n_outputs=4))
    model.save_pretrained(tmp_path)
    values = json.loads((tmp_path / hub.TASK_HEAD_NAME).read_text())
    assert values["kind"] == "classification" and values["n_outputs"] == 4


# ------------------------------------------------------------------ sweep arithmetic
def test_intervals_over_seeds_and_paired_differences():
    import pandas as pd
    from scipy import stats

    from astropt.finetune.metrics import mean_interval
    from astropt.finetune.sweep import differences

    values = [0.61, 0.65, 0.58, 0.70]
    mean, low, high = mean_interval(values)
    expected = stats.t.interval(0.95, 3, loc=np.mean(values), scale=stats.sem(values))
    assert (low, high) == pytest.approx(expected)
    assert mean == pytest.approx(np.mean(values))
    rows = []
    for seed, base in enumerate([0.5, 0.6, 0.4]):
        rows.append(dict(mode="full", init="scratch", label_fraction=0.1, seed=seed, accuracy=base))
        rows.append(dict(mode="full", init="pretrained", label_fraction=0.1, seed=seed,
                         accuracy=base + 0.1 + 0.01 * seed))  # fmt: skip
    rows.append(dict(mode="full", init="pretrained", label_fraction=0.1, seed=9, accuracy=0.0))
    diffs = differences(pd.DataFrame(rows), "accuracy")
    row = diffs[diffs.comparison == "pretrained - scratch (full)"].iloc[0]
    assert row.seeds == 3  # seed 9 has no scratch partner
    assert row.difference == pytest.approx(0.11)
    assert row.low == pytest.approx(0.11 - stats.t.ppf(0.975, 2) * 0.01 / np.sqrt(3))
    assert row.win


def test_predict_command_writes_probabilities_of_the_saved_model(tmp_path, tiny_survey, hf_cache):
    from astropt.data import make_loader
    from astropt.export import data_config_for
    from astropt.predict import main, read_predictions

    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=4)
    head = HeadConfig(kind="classification", n_outputs=3, class_names=["a", "b", "c"])
    model = FinetunedGPT.from_gpt(GPT(config), head)
    torch.nn.init.normal_(model.task_head[1].weight)
    model.save_pretrained(tmp_path / "ft" / "model")  # a run folder's model/
    out = tmp_path / "preds.parquet"
    argv = ["--checkpoint", str(tmp_path / "ft"), "--data", tiny_survey.path, "--out", str(out),
            "--batch-size", "5", "--dtype", "float32", "--device", "cpu",
            "--data-opt", f"cache_dir={hf_cache}", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    frame = read_predictions(out)
    np.testing.assert_array_equal(frame["id"], tiny_survey.ids["test"])
    cfg = data_config_for(model, source="hf", path=tiny_survey.path, cache_dir=hf_cache)
    batch = next(iter(make_loader(cfg, "test", batch_size=100, shuffle=False, augment=False)))
    expected = model.eval().predict(batch.tokens).numpy()
    np.testing.assert_allclose(frame[["p_a", "p_b", "p_c"]].to_numpy(), expected, atol=1e-6)
    assert (frame["predicted_class"] == np.asarray(["a", "b", "c"])[expected.argmax(1)]).all()
    assert main(argv) == 0  # a finished export is left as it is


def test_published_sweep_rewrites_its_readme_block_from_the_result_file(tmp_path):
    from astropt.finetune.config import FinetuneConfig
    from astropt.finetune.sweep import publish, record_command, update_readme

    sweep = tmp_path / "sweep"
    accuracy = {("pretrained", 0): 0.50, ("pretrained", 1): 0.54, ("scratch", 0): 0.40,
                ("scratch", 1): 0.41}  # fmt: skip
    for (init, seed), value in accuracy.items():
        folder = sweep / f"full-{init}-f0.1-s{seed}"
        folder.mkdir(parents=True)
        spec = "runs/qs" if init == "pretrained" else "scratch:runs/qs"
        cfg = FinetuneConfig(init_from=spec, label_column="galaxy10", label_fraction=0.1, seed=seed)
        (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
        summary = {"mode": "full", "init_from": spec, "label_fraction": 0.1, "n_labels": 21,
                   "labels_used": 24, "seed": seed, "head": "classification",
                   "test": {"balanced_accuracy": value, "accuracy": value + 0.2}}  # fmt: skip
        (folder / "summary.json").write_text(json.dumps(summary))
    record_command(sweep, ["configs/x.toml", "--out", str(sweep)])
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- finetune-table: res/g10.json -->\nstale\n<!-- /finetune-table -->\nend\n"
    )
    (tmp_path / "res").mkdir()
    publish(sweep, tmp_path / "res" / "g10.json", "Galaxy10-style class", root=tmp_path)
    assert update_readme(readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("<!-- /finetune-table -->\nend\n")
    assert "stale" not in text
    assert f"python -m astropt.finetune.sweep configs/x.toml --out {sweep}" in text
    # The pretrained mean (0.52) and the paired difference (+0.115 = mean of 0.10 and 0.13);
    # the headline is balanced accuracy, plain accuracy beside it; labels used count validation.
    assert "| full | pretrained | 24 | 0.1 | 2 | 0.520 |" in text
    assert "| 0.720 | [" in text
    assert "| pretrained - scratch (full) | 0.1 | 2 | +0.115 |" in text
    assert (tmp_path / "docs" / "finetune" / "label_efficiency_g10.png").stat().st_size > 1000
    assert not update_readme(readme)  # a second pass changes nothing
    # The file is stamped, and its tables are recomputed from its per-seed rows: an edit of
    # a row, or of a table entry with a digest recomputed to match, is caught.
    from astropt.results import check_result, content_digest

    data = json.loads((tmp_path / "res" / "g10.json").read_text())
    assert check_result(data) == [] and data["format"] == "astropt-finetune-sweep/1"
    data["rows"][0]["balanced_accuracy"] += 0.1
    data["digest"] = content_digest(data)
    assert any("its rows give" in p for p in check_result(data))
