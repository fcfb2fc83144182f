"""Finetuning keeps training's run-folder rules (astropt.train.loop): a busy out_dir is
refused, and Ctrl-C finishes the step it interrupts, whose checkpoint then resumes exactly."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import lock_held_elsewhere
from safetensors.torch import load_file
from test_finetune import planted, pretrained, run  # noqa: F401 - fixtures used below

from astropt import hub
from astropt.finetune.trainer import Finetuner
from astropt.io import FolderBusyError
from astropt.train.checkpoint import load_trainer_state

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_busy_run_folder_is_refused(tmp_path, planted):  # noqa: F811
    out = tmp_path / "busy"
    with lock_held_elsewhere(out):
        with pytest.raises(FolderBusyError, match="in use by another"):
            run(out, planted, "max_iters=2", "eval_interval=2")
        assert not (out / "metrics.jsonl").exists() and not (out / "config.json").exists()
    # The dead holder's lock is gone: the run goes ahead.
    assert run(out, planted, "max_iters=2", "eval_interval=2")["steps"] == 2


def test_ctrl_c_inside_a_step_finishes_it_and_resumes_exactly(
    tmp_path,
    planted,  # noqa: F811
    pretrained,  # noqa: F811
    monkeypatch,
):
    extra = ("mode=full", f"init_from={pretrained}", "max_iters=8", "eval_interval=4",
             "log_interval=1", "checkpoint_interval=4")  # fmt: skip
    whole = run(tmp_path / "a", planted, *extra)
    step = Finetuner._train_step

    def interrupted_step(self, iterator):
        if self.step == 4:  # inside step 5, between checkpoints (every 4)
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, iterator)

    monkeypatch.setattr(Finetuner, "_train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", planted, *extra)
    monkeypatch.setattr(Finetuner, "_train_step", step)
    assert [r["step"] for r in _rows(tmp_path / "b")] == [1, 2, 3, 4, 5]  # step 5 recorded
    assert (
        load_trainer_state(tmp_path / "b" / "checkpoints" / "latest")["step"] == 5
    )  # saved at the interrupt
    resumed = run(tmp_path / "b", planted, *extra, "resume=true")
    assert resumed["test"] == whole["test"]

    def losses(folder: Path) -> list:
        return [(r["step"], r["train_loss"], r.get("val_loss")) for r in _rows(folder)]

    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    a = load_file(str(tmp_path / "a" / "model" / hub.WEIGHTS_NAME))
    b = load_file(str(tmp_path / "b" / "model" / hub.WEIGHTS_NAME))
    assert all(torch.equal(a[k], b[k]) for k in a)
