"""The process-group bootstrap and how a finished torchrun rank exits (astropt.distributed).

A gloo worker thread that frees a Python tensor while the interpreter
finalises aborts the process ("terminate called without an active
exception"); command lines therefore end through ``exit_launched``. The slow
test runs 2-rank torchrun jobs that provoke the race and real ``astropt train``
and ``astropt embed`` runs, and asserts that none aborts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from astropt import distributed
from astropt.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        command + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_one_process_needs_no_group_and_exit_launched_returns():
    info, device = distributed.setup_distributed("cpu")
    assert (info.rank, info.world_size, info.enabled, device.type) == (0, 1, False, "cpu")
    assert distributed.process_group() == (0, 1)
    assert distributed.exit_launched(3) == 3  # no group started: an ordinary return


@pytest.mark.slow
def test_finished_torchrun_ranks_never_abort_at_exit(tmp_path, tiny_survey, hf_cache):
    failures = []
    # 8 jobs that leave collectives in flight at exit: without exit_launched most abort.
    for attempt in range(8):
        result = _torchrun([str(ROOT / "tests" / "exit_worker.py")], tmp_path)
        if result.returncode != 0 or "terminate called" in result.stderr:
            failures.append(("in-flight", attempt, result.returncode, result.stderr[-800:]))
    # A real pretraining run and a real embedding export through the command line.
    data = ["data.source=hf", f"data.path={tiny_survey.path}", f"data.cache_dir={hf_cache}"]
    train = [
        "-m", "astropt.cli", "train", f"out_dir={tmp_path / 'run'}", "data.augment=false",
        "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=4",
        "batch_size=2", "grad_accum=2", "max_iters=2", "eval_interval=2", "eval_iters=1",
        "log_interval=1", "optim.warmup_iters=1", "peak_flops=1e9", "dtype=float32",
        "preview=false", "progress=false", "device=cpu", *data,
    ]  # fmt: skip
    GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=4)).save_pretrained(tmp_path / "m")
    embed = [
        "-m", "astropt.cli", "embed", f"checkpoint={tmp_path / 'm'}", f"out={tmp_path / 'e'}",
        "batch_size=4", "rows_per_part=4", "device=cpu", "dtype=float32", "progress=false", *data,
    ]  # fmt: skip
    for name, args in (("train", train), ("embed", embed)):
        result = _torchrun(args, tmp_path)
        if result.returncode != 0 or "terminate called" in result.stderr:
            failures.append((name, 0, result.returncode, result.stderr[-800:]))
    assert not failures, failures
    assert (tmp_path / "run" / "summary.json").is_file()
    assert (tmp_path / "e" / "_manifest.json").is_file()
