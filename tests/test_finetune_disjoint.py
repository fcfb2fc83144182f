"""Finetuning v2: labelled galaxies disjoint from pretraining, dev/test discipline, the ridge
comparator, balanced accuracy and labels-used counts in the published sweep.

The trunk is a real pretraining run folder (``train.py``'s loop, a few steps on a small
parquet survey), so the overlap check reads what a user's run folder records.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import write_parquet_survey

from astropt.errors import UserError
from astropt.finetune import data as fdata
from astropt.finetune import load_finetune_config
from astropt.finetune.trainer import finetune


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    root = tmp_path_factory.mktemp("disjoint_survey")
    return write_parquet_survey(str(root), sizes={"train": 24, "validation": 20, "test": 20})


@pytest.fixture(scope="module")
def trunk(survey, hf_cache, tmp_path_factory) -> Path:
    """A pretraining run folder: 2 steps on the survey's train split."""
    from astropt.config import load_config
    from astropt.train import train

    out = tmp_path_factory.mktemp("trunk") / "run"
    train(
        load_config(
            None,
            [
                f"out_dir={out}",
                "data.source=hf",
                f"data.path={survey.path}",
                f"data.cache_dir={hf_cache}",
                "model.n_layer=2",
                "model.n_head=2",
                "model.n_embd=32",
                "model.block_size=4",
                "batch_size=4",
                "max_iters=2",
                "eval_interval=2",
                "eval_iters=1",
                "optim.warmup_iters=1",
                "dtype=float32",
                "preview=false",
                "progress=false",
                "peak_flops=1e9",
            ],
        )  # fmt: skip
    )
    return out


def ridge_cfg(survey, hf_cache, out: Path, *extra: str):
    return load_finetune_config(
        None,
        [f"out_dir={out}", "mode=ridge", "data.source=hf", f"data.path={survey.path}",
         f"data.cache_dir={hf_cache}", "label_column=is_edge_on", "batch_size=8",
         "dtype=float32", "device=cpu", "progress=false", *extra],
    )  # fmt: skip


@pytest.mark.slow
def test_labelled_galaxies_from_the_trunks_pretraining_split_are_refused_naming_the_count(
    tmp_path, survey, hf_cache, trunk, caplog
):
    # Default: the held-out splits only, checked against the run folder's train split.
    summary = finetune(ridge_cfg(survey, hf_cache, tmp_path / "held", f"init_from={trunk}"))
    assert summary["pretraining_overlap"] == 0
    splits = json.loads((tmp_path / "held" / "splits.json").read_text())
    used = {str(i) for part in splits.values() for i in part}
    held_out = {str(i) for s in ("validation", "test") for i in survey.ids[s]}
    assert used <= held_out and len(used) == 40

    everything = 'source_splits=["train", "validation", "test"]'
    with pytest.raises(UserError, match="24 of the 64 labelled galaxies were in the trunk's"):
        finetune(ridge_cfg(survey, hf_cache, tmp_path / "all", f"init_from={trunk}", everything))
    assert not (tmp_path / "all" / "summary.json").exists()

    with caplog.at_level(logging.WARNING, logger="astropt.finetune"):
        summary = finetune(
            ridge_cfg(
                survey,
                hf_cache,
                tmp_path / "warned",
                f"init_from={trunk}",
                everything,
                "pretraining_overlap=warn",
            )  # fmt: skip
        )
    assert summary["pretraining_overlap"] == 24
    assert "24 of the 64 labelled galaxies" in caplog.text

    # Fresh weights of the trunk's shape saw nothing: no check, no refusal.
    summary = finetune(
        ridge_cfg(survey, hf_cache, tmp_path / "scratch", f"init_from=scratch:{trunk}", everything)
    )
    assert summary["pretraining_overlap"] is None


def _pool(labels) -> fdata.LabelledPool:
    labels = np.asarray(labels)
    index = np.arange(len(labels))
    return fdata.LabelledPool(None, index, labels, index, ["a", "b", "c"], ["c"], "pool")


def test_dev_split_sets_the_test_galaxies_aside_and_validation_labels_follow_the_fraction():
    labels = np.repeat([0, 1, 2], [300, 150, 50])
    pool = _pool(labels)

    def cfg(*extra):
        return load_finetune_config(None, ["label_column=c", "val_fraction=0.1",
                                           "test_fraction=0.2", *extra])  # fmt: skip

    test_run = fdata.choose_galaxies(cfg("label_fraction=0.1"), pool)
    dev_run = fdata.choose_galaxies(cfg("label_fraction=0.1", "split=dev"), pool)
    assert dev_run.split == "dev" and len(test_run.scored) == 100
    test_ids = set(test_run.scored.tolist())
    for part in (dev_run.train, dev_run.validation, dev_run.scored, dev_run.train_split):
        assert not set(part.tolist()) & test_ids  # a dev run never reads a test galaxy
    assert len(dev_run.scored) == 80  # 20 % of the 400 galaxies left, stratified
    assert not set(dev_run.scored.tolist()) & set(dev_run.train_split.tolist())
    # 10 % of the labels: 10 % of the training part, and of the validation part too.
    assert len(test_run.train) == 35 and len(test_run.validation) == 5
    assert test_run.labels_used == 40
    assert set(labels[test_run.validation].tolist()) == {0, 1, 2}  # at least one per class
    full = fdata.choose_galaxies(cfg("val_labels=all", "label_fraction=0.1"), pool)
    assert len(full.validation) == 50 and full.labels_used == 85
    np.testing.assert_array_equal(full.scored, test_run.scored)  # the same test galaxies
