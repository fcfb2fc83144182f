"""Training runs under hostile conditions (issue 18): busy folders, crafted state files,
interruptions, leftovers of other runs, and SIGKILL at random moments.

The reference for "exact" is always an uninterrupted run of the same config in the
same process set-up: same weights bit for bit, each step once in ``metrics.jsonl``,
the same token and FLOP counters.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import lock_held_elsewhere
from safetensors.torch import load_file

from astropt.config import ConfigError, load_config
from astropt.data import make_loader
from astropt.io import FolderBusyError
from astropt.train import train
from astropt.train.checkpoint import TRAINER_STATE_NAME, UnsafeCheckpointError

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def survey(training_survey):
    return training_survey


def _overrides(survey, hf_cache, out: Path, *extra: str) -> list[str]:
    return [
        f"out_dir={out}",
        "data.source=hf",
        f"data.path={survey.path}",
        f"data.cache_dir={hf_cache}",
        "model.n_layer=2",
        "model.n_head=2",
        "model.n_embd=32",
        "model.block_size=4",
        "batch_size=4",
        "max_iters=8",
        "eval_interval=4",
        "eval_iters=2",
        "log_interval=1",
        "checkpoint_interval=2",
        "optim.warmup_iters=2",
        "peak_flops=1e9",
        "dtype=float32",
        "preview=false",
        "progress=false",
        *extra,
    ]


@pytest.fixture
def make_cfg(survey, hf_cache, tmp_path):
    def make(name="run", *extra):
        return load_config(None, _overrides(survey, hf_cache, tmp_path / name, *extra))

    return make


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _weights(out) -> dict:
    return load_file(str(Path(out) / "checkpoints" / "latest" / "model.safetensors"))


def _assert_same_run(out, reference) -> None:
    """Same final weights, each step once with the same counters and losses."""
    ours, theirs = _weights(out), _weights(reference)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    rows, expected = _rows(out), _rows(reference)
    assert [r["step"] for r in rows] == [r["step"] for r in expected]
    for row, want in zip(rows, expected):
        for key in ("tokens", "flops", "train_loss", "val_loss", "lr"):
            assert row.get(key) == want.get(key), (row["step"], key)


# ------------------------------------------------------------------ busy folders


def test_second_run_in_a_busy_folder_is_refused(make_cfg, tmp_path):
    cfg = make_cfg("busy")
    with lock_held_elsewhere(cfg.out_dir):
        with pytest.raises(FolderBusyError, match="in use by another"):
            train(cfg)
        assert not (Path(cfg.out_dir) / "metrics.jsonl").exists()
    # The dead holder's lock is gone: the run goes ahead.
    assert train(cfg)["steps"] == 8


def test_cli_reports_a_busy_folder_in_one_line(make_cfg, survey, hf_cache, tmp_path):
    out = tmp_path / "busy_cli"
    with lock_held_elsewhere(out):
        result = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *_overrides(survey, hf_cache, out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode != 0
    assert "in use by another" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------ state that runs code


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_trainer_state_is_refused_without_running_it(make_cfg, tmp_path):
    cfg = make_cfg("crafted", "max_iters=2")
    train(cfg)
    marker = tmp_path / "payload_ran"
    state_path = Path(cfg.out_dir) / "checkpoints" / "latest" / TRAINER_STATE_NAME
    with open(state_path, "wb") as handle:
        pickle.dump({"step": 2, "evil": _Payload(str(marker))}, handle)
    # Also as torch.save writes it (a zip archive holding the pickle).
    with pytest.raises(UnsafeCheckpointError, match=TRAINER_STATE_NAME):
        train(make_cfg("crafted", "max_iters=4", "resume=true"))
    torch.save({"step": 2, "evil": _Payload(str(marker))}, state_path)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        train(make_cfg("crafted", "max_iters=4", "resume=true"))
    assert not marker.exists()


# --------------------------------------------------------------- metrics and counters


def test_fresh_run_over_old_metrics_and_resume_of_a_finished_run(make_cfg):
    reference = make_cfg("reference")
    train(reference)
    # A run killed before its first checkpoint leaves metrics.jsonl behind.
    cfg = make_cfg("leftover")
    Path(cfg.out_dir).mkdir(parents=True)
    (Path(cfg.out_dir) / "metrics.jsonl").write_text('{"step": 0, "tokens": 0}\n' * 3)
    train(cfg)
    _assert_same_run(cfg.out_dir, reference.out_dir)
    # resume=true on the finished run: no step, and the summary keeps its losses.
    before = json.loads((Path(cfg.out_dir) / "summary.json").read_text())
    summary = train(make_cfg("leftover", "resume=true"))
    assert summary["final_train_loss"] == before["final_train_loss"] is not None
    assert summary["final_val_loss"] == before["final_val_loss"] is not None
    assert summary["tokens"] == before["tokens"]
    _assert_same_run(cfg.out_dir, reference.out_dir)


def test_ctrl_c_inside_a_step_loses_nothing(make_cfg):
    reference = make_cfg("reference")
    train(reference)
    cfg = make_cfg("ctrl_c")
    fetched = []

    class SigintLoader:
        """Delivers a real SIGINT to this process while a training step reads its batch."""

        def __init__(self, loader):
            self.loader = loader

        def __getattr__(self, name):
            return getattr(self.loader, name)

        def __iter__(self):
            for batch in self.loader:
                fetched.append(1)
                if len(fetched) == 5:  # inside step 5, between checkpoints (every 2)
                    os.kill(os.getpid(), signal.SIGINT)
                yield batch

    def factory(data, split, **kwargs):
        loader = make_loader(data, split, **kwargs)
        return SigintLoader(loader) if split == "train" else loader

    with pytest.raises(KeyboardInterrupt):
        train(cfg, loader_factory=factory)
    rows = _rows(cfg.out_dir)
    assert [r["step"] for r in rows] == list(range(6))  # step 5 finished and recorded
    train(make_cfg("ctrl_c", "resume=true"))
    _assert_same_run(cfg.out_dir, reference.out_dir)


# ----------------------------------------------------------------- start-up checks


def test_block_size_too_short_fails_before_training(make_cfg):
    cfg = make_cfg("short", "model.block_size=2")
    with pytest.raises(ConfigError, match=r"4 tokens.*model.block_size=2.*raise model.block_size"):
        train(cfg)
    assert not (Path(cfg.out_dir) / "checkpoints").exists()


# ------------------------------------------------------------------ fault injection


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(
    survey, hf_cache, tmp_path
):
    """Kill ``train.py`` with SIGKILL at random moments (several inside checkpoint writes),
    resume each time; the result equals an uninterrupted run's."""
    extra = ["max_iters=24", "checkpoint_interval=1"]
    reference = tmp_path / "reference"
    train(load_config(None, _overrides(survey, hf_cache, reference, *extra)))
    out = tmp_path / "killed"
    metrics = out / "metrics.jsonl"
    command = [sys.executable, str(ROOT / "train.py"), *_overrides(survey, hf_cache, out, *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    rng = random.Random(18)

    def rows() -> int:
        try:
            return metrics.read_text().count("\n")
        except FileNotFoundError:
            return 0

    kills = 0
    for attempt in range(12):
        process = subprocess.Popen(
            [*command, f"resume={'true' if attempt else 'false'}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Kill after a random number of new metrics rows (each step writes a row, then a
        # checkpoint), a few milliseconds later: often inside the checkpoint write.
        target = rows() + rng.randint(1, 3)
        started = time.monotonic()
        while process.poll() is None and rows() < target and time.monotonic() - started < 300:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.03))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
        if process.returncode == 0 or kills >= 6:
            break
    # Finish whatever is left.
    result = subprocess.run([*command, "resume=true"], env=env, capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert kills >= 3
    _assert_same_run(out, reference)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 24
