"""Finetuning end to end: planted labels, frozen trunks, adapters, resume, reload, torchrun.

The data is a folder of 32x32 PNG stamps, one sub-folder per class (4 tokens
per galaxy), whose class is planted in the pixels: horizontal versus vertical
stripes under noise, so a head that learns anything separates them. The model
is 2 layers, 32 wide; each run takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from astropt import hub
from astropt.finetune import FinetunedGPT, load_finetune_config
from astropt.finetune.trainer import finetune
from astropt.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=4)


def stripes(n: int, horizontal: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        period = rng.integers(4, 9)
        phase = rng.uniform(0, 2 * np.pi)
        axis = np.arange(32)[:, None] if horizontal else np.arange(32)[None, :]
        wave = 0.5 + 0.4 * np.sin(2 * np.pi * axis / period + phase) * np.ones((32, 32))
        image = wave[..., None] * rng.uniform(120, 230, 3) + rng.normal(0, 12, (32, 32, 3))
        out[i] = np.clip(image, 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("planted")
    for k, name in enumerate(("horizontal", "vertical")):
        (root / name).mkdir()
        for i, image in enumerate(stripes(40, name == "horizontal", seed=k)):
            Image.fromarray(image).save(root / name / f"{name}-{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A model folder with non-trivial (seeded random) trunk weights."""
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("pretrained")
    GPT(TINY).save_pretrained(folder)
    return folder


def overrides(out: Path, data: Path, *extra: str) -> list[str]:
    return [
        f"out_dir={out}",
        "data.source=folder",
        f"data.path={data}",
        "data.augment=false",
        "model.n_layer=2",
        "model.n_head=2",
        "model.n_embd=32",
        "model.block_size=4",
        "batch_size=8",
        "max_iters=40",
        "eval_interval=10",
        "log_interval=5",
        "optim.lr=3e-3",
        "optim.warmup_iters=2",
        "dtype=float32",
        "device=cpu",
        "progress=false",
        *extra,
    ]


def run(out: Path, data: Path, *extra: str, on_step=None) -> dict:
    return finetune(load_finetune_config(None, overrides(out, data, *extra)), on_step=on_step)


def test_planted_label_is_learnt_to_near_perfect_test_accuracy(tmp_path, planted):
    summary = run(tmp_path / "ft", planted, "mode=full")
    assert summary["test"]["n"] == 16  # 20 % of 80, stratified: 8 per class
    assert summary["test"]["accuracy"] >= 0.9, summary["test"]
    splits = json.loads((tmp_path / "ft" / "splits.json").read_text())
    assert not set(splits["test"]) & set(splits["train"])
    assert not set(splits["validation"]) & set(splits["train"])
    rows = [
        json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows if "val_loss" in r] == [10, 20, 30, 40]
    assert (tmp_path / "ft" / "confusion.png").stat().st_size > 1000


def test_probe_leaves_the_trunk_bit_identical(tmp_path, planted, pretrained):
    run(tmp_path / "ft", planted, "mode=probe", f"init_from={pretrained}", "max_iters=10")
    before = load_file(str(pretrained / hub.WEIGHTS_NAME))
    after = load_file(str(tmp_path / "ft" / "model" / hub.WEIGHTS_NAME))
    assert set(after) - set(before) == {"task_head.1.weight", "task_head.1.bias"}
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert after["task_head.1.weight"].abs().sum() > 0  # the head did train


def test_lora_run_changes_only_adapters_and_its_merged_model_predicts_the_same_on_reload(
    tmp_path, planted, pretrained
):
    pytest.importorskip("peft")
    from astropt.predict import export_predictions, load_finetuned, read_predictions

    out = tmp_path / "ft"
    summary = run(out, planted, "mode=lora", f"init_from={pretrained}", "lora_rank=4")
    state = load_file(str(out / "checkpoints" / "best" / hub.WEIGHTS_NAME))  # unmerged
    before = load_file(str(pretrained / hub.WEIGHTS_NAME))
    for name, value in before.items():
        key = "base_model.model." + name.replace(".weight", ".base_layer.weight")
        key = key if key in state else "base_model.model." + name
        assert torch.equal(state[key], value), name
    trainable = {k for k in state if "lora_" in k}
    assert trainable and all(".attn." in k or ".mlp." in k for k in trainable)
    model = load_finetuned(out)
    assert type(model) is FinetunedGPT
    merged = model.state_dict()
    assert not any("lora" in k for k in merged)
    assert not torch.equal(merged["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])
    # The reloaded model, run by the prediction export over the whole folder, scores the
    # test galaxies exactly as the run itself did.
    from astropt.export import data_config_for

    preds = export_predictions(
        model,
        data_config_for(model, source="folder", path=str(planted)),
        tmp_path / "preds.parquet",
        "train",
        batch_size=16,
        device="cpu",
        dtype="float32",
        progress=False,
    )
    frame = read_predictions(preds).set_index("id")
    test_ids = json.loads((out / "splits.json").read_text())["test"]
    truth = [str(i).split("-")[0] for i in test_ids]
    accuracy = np.mean(frame.loc[test_ids, "predicted_class"].to_numpy() == np.asarray(truth))
    assert accuracy == pytest.approx(summary["test"]["accuracy"])
    assert np.allclose(frame[["p_horizontal", "p_vertical"]].sum(axis=1), 1.0, atol=1e-5)


def test_resumed_finetune_equals_an_uninterrupted_one(tmp_path, planted, pretrained):
    extra = ("mode=full", f"init_from={pretrained}", "max_iters=12", "eval_interval=4",
             "checkpoint_interval=2", "head_dropout=0.3", "data.augment=true")  # fmt: skip
    whole = run(tmp_path / "a", planted, *extra)

    def stop(step: int, info: dict) -> None:
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", planted, *extra, on_step=stop)
    seen = []
    resumed = run(
        tmp_path / "b", planted, *extra, "resume=true", on_step=lambda s, i: seen.append(s)
    )
    assert seen == list(range(7, 13))  # continued after the checkpoint of step 6
    assert resumed["test"] == whole["test"]
    a = load_file(str(tmp_path / "a" / "model" / hub.WEIGHTS_NAME))
    b = load_file(str(tmp_path / "b" / "model" / hub.WEIGHTS_NAME))
    assert all(torch.equal(a[k], b[k]) for k in a)

    def losses(folder: Path) -> list:
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["train_loss"], r.get("val_loss")) for r in rows]

    assert losses(tmp_path / "b") == losses(tmp_path / "a")


def test_existing_run_folder_is_refused_without_resume_or_overwrite(tmp_path, planted):
    from astropt.config import ConfigError

    run(tmp_path / "ft", planted, "max_iters=2", "eval_interval=2")
    with pytest.raises(ConfigError, match="resume=true"):
        run(tmp_path / "ft", planted, "max_iters=2", "eval_interval=2")


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tmp_path, planted, pretrained):
    common = overrides(tmp_path / "x", planted, "mode=full", f"init_from={pretrained}",
                       "max_iters=8", "eval_interval=4")  # fmt: skip
    common = [c for c in common if not c.startswith(("out_dir=", "batch_size="))]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(ROOT / "finetune.py"), f"out_dir={tmp_path / 'two'}",
               "batch_size=4", *common]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one = run(tmp_path / "one", planted, "mode=full", f"init_from={pretrained}", "max_iters=8",
              "eval_interval=4", "batch_size=8")  # fmt: skip
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert two["test"]["accuracy"] == one["test"]["accuracy"]
    assert two["best_step"] == one["best_step"]
    a = load_file(str(tmp_path / "one" / "model" / hub.WEIGHTS_NAME))
    b = load_file(str(tmp_path / "two" / "model" / hub.WEIGHTS_NAME))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-5, rtol=1e-4)


# The Galaxy Zoo-style votes planted in the stripes: question 1 (2 answers) is answered by every
# volunteer, question 2 (3 answers) by nobody for a third of the galaxies (Zoobot's unasked
# question, which must add nothing to the likelihood nor to the scores).
PLANTED_VOTES = {
    "horizontal": (0.8, 0.2, 0.6, 0.3, 0.1),
    "vertical": (0.25, 0.75, 0.1, 0.2, 0.7),
}
VOTE_COLUMNS = ("smooth_yes", "smooth_no", "arms_1", "arms_2", "arms_3")


@pytest.fixture(scope="module")
def voted(tmp_path_factory) -> Path:
    """The planted stripes as one flat folder with a CSV catalogue of vote counts."""
    from PIL import Image

    root = tmp_path_factory.mktemp("voted")
    rng = np.random.default_rng(5)
    rows = ["filename,id," + ",".join(VOTE_COLUMNS)]
    for k, name in enumerate(PLANTED_VOTES):
        fractions = PLANTED_VOTES[name]
        for i, image in enumerate(stripes(60, name == "horizontal", seed=10 + k)):
            Image.fromarray(image).save(root / f"{name}-{i:03d}.png")
            first = rng.multinomial(rng.integers(20, 41), fractions[:2])
            asked = i % 3 != 0
            second = rng.multinomial(rng.integers(20, 41), fractions[2:]) if asked else [0, 0, 0]
            counts = ",".join(str(int(c)) for c in (*first, *second))
            rows.append(f"{name}-{i:03d}.png,{name}-{i:03d},{counts}")
    (root / "votes.csv").write_text("\n".join(rows) + "\n")
    return root


def test_votes_head_learns_the_planted_vote_fractions(tmp_path, voted):
    from astropt.export import data_config_for
    from astropt.predict import export_predictions, load_finetuned, read_predictions

    out = tmp_path / "ft"
    summary = run(
        out, voted, "mode=full", "head=votes", f"data.catalogue={voted / 'votes.csv'}",
        f"label_column={','.join(VOTE_COLUMNS)}", "vote_groups=[2,3]", "max_iters=120", "eval_interval=40",
    )  # fmt: skip
    assert summary["head"] == "votes" and summary["targets"] == list(VOTE_COLUMNS)
    model = load_finetuned(out)
    preds = export_predictions(
        model,
        data_config_for(model, source="folder", path=str(voted)),
        tmp_path / "preds.parquet",
        "train",
        batch_size=32,
        device="cpu",
        dtype="float32",
        progress=False,
    )
    frame = read_predictions(preds).set_index("id")
    test_ids = [str(i) for i in json.loads((out / "splits.json").read_text())["test"]]
    predicted = frame.loc[test_ids, list(VOTE_COLUMNS)].to_numpy()
    # Expected fractions: each question sums to one, whatever the head outputs.
    np.testing.assert_allclose(predicted[:, :2].sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(predicted[:, 2:].sum(1), 1.0, atol=1e-5)
    # The predicted fractions are near those planted for each galaxy's class: the counts
    # carry binomial noise of about 0.08 per galaxy, the planted class means none.
    kinds = np.asarray([i.split("-")[0] for i in test_ids])
    for kind, fractions in PLANTED_VOTES.items():
        mean = predicted[kinds == kind].mean(0)
        np.testing.assert_allclose(mean, fractions, atol=0.08, err_msg=kind)
    planted = np.asarray([PLANTED_VOTES[k] for k in kinds])
    assert np.median(np.abs(predicted - planted)) < 0.06
    # The run's test R^2 is that of each answer's vote fraction over the galaxies asked the
    # question, averaged over answers (recomputed here with scikit-learn), and comes close to
    # that of the planted fractions themselves (the ceiling the counts' noise allows).
    from sklearn.metrics import r2_score

    counts = pd.read_csv(voted / "votes.csv").set_index("id").loc[test_ids, list(VOTE_COLUMNS)]
    counts = counts.to_numpy(dtype=np.float64)
    model_r2, ceiling = [], []
    for j in range(len(VOTE_COLUMNS)):
        question = slice(0, 2) if j < 2 else slice(2, 5)
        asked = counts[:, question].sum(1) > 0
        fraction = counts[asked, j] / counts[asked, question].sum(1)
        model_r2.append(r2_score(fraction, predicted[asked, j]))
        ceiling.append(r2_score(fraction, planted[asked, j]))
    assert summary["test"]["r2"] == pytest.approx(np.mean(model_r2), abs=1e-4)
    assert summary["test"]["r2"] > np.mean(ceiling) - 0.1, (summary["test"], np.mean(ceiling))


def test_flux_aware_trunk_is_refused_by_name(tmp_path):
    """The finetune loop has no patch statistics to feed: such a trunk must not start."""
    from astropt.errors import UserError
    from astropt.finetune.modes import load_trunk

    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, flux_tokens=True)
    GPT(config).save_pretrained(tmp_path / "flux")
    with pytest.raises(UserError, match="flux_tokens"):
        load_trunk(str(tmp_path / "flux"), GPTConfig(), seed=0)
    with pytest.raises(UserError, match="flux_tokens"):
        load_trunk("scratch", config, seed=0)
    plain = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)
    assert isinstance(load_trunk("scratch", plain, seed=0), GPT)


def test_ridge_mode_probes_the_trunk_on_the_labels_and_galaxies_of_a_finetune(
    tmp_path, planted, pretrained
):
    import dataclasses

    middle = tmp_path / "middle"  # a trunk whose embeddings are published from block 1
    GPT(dataclasses.replace(TINY, embed_layer="middle")).save_pretrained(middle)
    extra = (f"init_from={middle}", "label_fraction=0.5", "seed=1")
    tuned = run(tmp_path / "ft", planted, "mode=full", "max_iters=2", "eval_interval=2", *extra)
    ridge = run(tmp_path / "ridge", planted, "mode=ridge", *extra)
    splits = [json.loads((tmp_path / k / "splits.json").read_text()) for k in ("ft", "ridge")]
    assert splits[0] == splits[1]  # the same training, validation and test galaxies
    # Half of the 56 training galaxies and half of the 8 validation ones, stratified.
    assert (ridge["n_labels"], ridge["n_validation"], ridge["labels_used"]) == (28, 4, 32)
    assert tuned["labels_used"] == 32 and ridge["test"]["n"] == tuned["test"]["n"] == 16
    assert ridge["mode"] == "ridge" and ridge["layer"] == "1"  # the trunk's embed_layer
    assert not (tmp_path / "ridge" / "checkpoints").exists()  # nothing trained
    # The same probe fitted here from the image files, the ids in splits.json and the trunk's
    # middle block gives the same test score.
    from PIL import Image

    from astropt.probe import RIDGE_ALPHAS, classification_metrics, ridge_classifier_cv
    from astropt.tokens import normalise_patches, patchify

    trunk = hub.load_model(middle).eval()

    def features(ids):
        images = np.stack([np.asarray(Image.open(planted / i.split("-")[0] / f"{i}.png"))
                           for i in ids])  # fmt: skip
        tokens = normalise_patches(patchify(torch.from_numpy(images).permute(0, 3, 1, 2).float()))
        with torch.no_grad():
            return trunk.embed(tokens[0], layer=1).numpy()

    fit = sorted(splits[1]["train_labelled"] + splits[1]["validation"])  # in pool order
    classes = {"horizontal": 0, "vertical": 1}
    _, predict = ridge_classifier_cv(
        features(fit), np.array([classes[i.split("-")[0]] for i in fit]), RIDGE_ALPHAS, 5, 1
    )
    truth = np.array([classes[i.split("-")[0]] for i in splits[1]["test"]])
    expected = classification_metrics(truth, predict(features(splits[1]["test"])))
    assert ridge["test"]["balanced_accuracy"] == pytest.approx(expected["balanced_accuracy"])


@pytest.mark.slow
def test_sweep_compares_each_mode_with_the_ridge_probe_and_publishes_dev_choices(
    tmp_path, planted, pretrained
):
    from astropt.finetune.sweep import publish, readme_block, record_command, run_sweep

    common = overrides(tmp_path / "unused", planted, "max_iters=4", "eval_interval=2")
    test_sweep, dev_sweep = tmp_path / "test", tmp_path / "dev"
    run_sweep(None, dev_sweep, ["ridge"], [str(pretrained)], [0.5], [0], [*common, "split=dev"])
    record_command(test_sweep, ["--out", str(test_sweep)])
    run_sweep(None, test_sweep, ["full", "ridge"], [str(pretrained), "scratch"], [0.5], [0, 1],
              common)  # fmt: skip
    frame = pd.read_csv(test_sweep / "results.csv")
    assert len(frame) == 8 and set(frame["split"]) == {"test"}
    assert (frame["labels_used"] == 32).all()
    diffs = pd.read_csv(test_sweep / "differences.csv")
    assert {"full - ridge (pretrained)", "full - ridge (scratch)",
            "pretrained - scratch (ridge)"} <= set(diffs.comparison)  # fmt: skip
    assert "full - probe" not in " ".join(diffs.comparison)
    with pytest.raises(ValueError, match="split=dev"):
        publish(test_sweep, tmp_path / "x.json", "planted", root=tmp_path, dev=test_sweep)
    result = tmp_path / "res" / "planted.json"
    result.parent.mkdir()
    publish(test_sweep, result, "planted", root=tmp_path, dev=dev_sweep,
            choices=["eval_interval=2 (dev)."])  # fmt: skip
    data = json.loads(result.read_text())
    assert data["split"] == "test" and data["dev"][0]["rows"][0]["split"] == "dev"
    assert data["settings"]["source_splits"] == ["validation", "test"]
    block = readme_block(data)
    assert "headline test balanced_accuracy; accuracy beside it" in block
    assert "| mode | init | labels used | fraction | seeds | balanced_accuracy |" in block
    assert "Chosen on the dev split" in block and "eval_interval=2 (dev)." in block
    assert "| full - ridge (pretrained) | 0.5 | 2 |" in block
