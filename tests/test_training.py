"""The training loop: schedule, optimiser groups, run folder, resume, safety, torchrun.

End-to-end runs use a tiny parquet survey (32x32 JPEG stamps: 4 tokens each)
read by the real data pipeline, and a 2-layer, 32-wide model, so each run
takes seconds. Expected values come from definitions (the schedule formula, a
loss recomputed on the validation split, one optimiser step done by hand),
never from an earlier output of the same code.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from astropt import hub
from astropt.config import ConfigError, OptimConfig, config_from_dict, load_config
from astropt.data import make_loader
from astropt.io import recover_atomic_dirs
from astropt.model import GPT
from astropt.tokens import band_statistics
from astropt.train import ArchitectureMismatch, TrainingDiverged, train
from astropt.train.checkpoint import load_trainer_state, log_spaced_steps
from astropt.train.optim import lr_at, make_optimizer

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def survey(training_survey):
    return training_survey


@pytest.fixture
def make_cfg(survey, hf_cache, tmp_path):
    def make(name="run", *overrides):
        return load_config(
            None,
            [
                f"out_dir={tmp_path / name}",
                "data.source=hf",
                f"data.path={survey.path}",
                f"data.cache_dir={hf_cache}",
                "model.n_layer=2",
                "model.n_head=2",
                "model.n_embd=32",
                "model.block_size=4",
                "batch_size=4",
                "max_iters=6",
                "eval_interval=3",
                "eval_iters=2",
                "log_interval=1",
                "optim.warmup_iters=2",
                "optim.lr=3e-3",
                "peak_flops=1e9",
                "dtype=float32",  # exact comparisons are fp32 ones
                "preview=false",
                "progress=false",
                *overrides,
            ],
        )

    return make


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------- pieces
def test_lr_schedule_warmup_cosine_floor():
    optim = OptimConfig(lr=1.0, min_lr=0.1, warmup_iters=10, decay_iters=110)
    assert lr_at(0, optim, 200) == pytest.approx(1 / 11)
    assert lr_at(9, optim, 200) == pytest.approx(10 / 11)
    assert lr_at(10, optim, 200) == pytest.approx(1.0)
    assert lr_at(60, optim, 200) == pytest.approx(0.55)  # half way down the cosine
    assert lr_at(110, optim, 200) == pytest.approx(0.1)
    assert lr_at(150, optim, 200) == pytest.approx(0.1)
    default = OptimConfig(lr=6e-4, warmup_iters=0)  # floor lr/10 at max_iters
    assert lr_at(100, default, 100) == pytest.approx(6e-5)


def test_weight_decay_on_matrices_only():
    from astropt.model import GPTConfig

    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=4, objective="mae", bias=True))
    optimizer = make_optimizer(model, OptimConfig(weight_decay=0.1), torch.device("cpu"))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() == 2 for p in decayed["params"])
    plain_names = {names[id(p)] for p in plain["params"]}
    assert "mask_token" in plain_names
    assert "blocks.0.norm_attn.weight" in plain_names and "blocks.0.attn.qkv.bias" in plain_names
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_log_spaced_steps():
    assert log_spaced_steps(0, 100) == []
    assert log_spaced_steps(4, 1000) == [0, 1, 32, 1000]
    steps = log_spaced_steps(10, 30000)
    assert steps[0] == 0 and steps[-1] == 30000 and steps == sorted(set(steps))


# ------------------------------------------------------------- a run
def test_run_folder_metrics_checkpoints_and_validation_loss(make_cfg, survey, hf_cache):
    cfg = make_cfg("run", "log_interval=2", "log_checkpoints=3", "preview=true", "preview_n=2")
    summary = train(cfg)
    run = Path(cfg.out_dir)
    assert summary["steps"] == 6
    # Resolved config, reloadable.
    saved = json.loads((run / "config.json").read_text())
    assert config_from_dict(saved) == cfg
    # metrics.jsonl: step 0 evaluation, logged steps, val_loss on eval steps only.
    metrics = rows(run)
    assert [r["step"] for r in metrics] == [0, 2, 3, 4, 6]
    assert [r["step"] for r in metrics if "val_loss" in r] == [0, 3, 6]
    for r in metrics[1:]:
        assert {"train_loss", "lr", "tokens", "flops", "tokens_per_s", "mfu"} <= set(r)
        assert r["tokens"] == r["step"] * 4 * 3  # 4 galaxies x 3 predicted tokens per step
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, cfg.optim, cfg.max_iters))
    # Checkpoints: model folders + trainer state; log-spaced snapshots 0, 1, 6.
    ckpts = run / "checkpoints"
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == ["best", "latest", "step-0000000", "step-0000001", "step-0000006"]
    state = load_trainer_state(ckpts / "latest")
    assert state["step"] == 6
    assert {"optimizer", "rng", "loader"} <= set(state)
    for name in ("config.json", "model.safetensors"):
        assert (ckpts / "latest" / name).is_file()
    assert sorted(p.name for p in (run / "previews").iterdir()) == [
        "step-0000000.png",
        "step-0000003.png",
        "step-0000006.png",
    ]
    # The recorded val_loss is the loss on the *validation split*, recomputed here.
    model = hub.load_pretrained_dir(ckpts / "latest").eval()
    loader = make_loader(cfg.data, "validation", batch_size=4, shuffle=False, augment=False)
    total = count = 0.0
    with torch.no_grad():
        for index, batch in enumerate(loader):
            if index == cfg.eval_iters:
                break
            total += float(model.compute_loss(batch.tokens)[1]) * len(batch)
            count += len(batch)
    assert metrics[-1]["val_loss"] == pytest.approx(total / count, rel=1e-5)
    assert summary["final_val_loss"] == pytest.approx(total / count, rel=1e-5)
    # A run folder loads as a model (best checkpoint).
    assert isinstance(hub.load_model(run), GPT)


def test_flux_aware_run_feeds_the_band_statistics(make_cfg):
    cfg = make_cfg("flux", "model.flux_tokens=true", "preview=true", "preview_n=2")
    summary = train(cfg)
    model = hub.load_pretrained_dir(Path(cfg.out_dir) / "checkpoints" / "latest").eval()
    assert model.config.flux_tokens and model.flux_proj.weight.abs().sum() > 0
    # The recorded validation loss is the one with each batch's statistics as input.
    loader = make_loader(cfg.data, "validation", batch_size=4, shuffle=False, augment=False)
    total = count = 0.0
    with torch.no_grad():
        for index, batch in enumerate(loader):
            if index == cfg.eval_iters:
                break
            stats = band_statistics(batch.tokens, batch.mean, batch.std, 3)
            total += float(model.compute_loss(batch.tokens, stats=stats)[1]) * len(batch)
            count += len(batch)
    assert summary["final_val_loss"] == pytest.approx(total / count, rel=1e-5)
    assert (Path(cfg.out_dir) / "previews" / "step-0000006.png").is_file()


@pytest.mark.parametrize("objective", ["ar", "mae"])  # mae: masks drawn from the torch RNG
def test_resume_continues_exactly(make_cfg, objective):
    # peak_flops=none: the MFU peak is measured at start-up, which must not touch the RNG.
    common = (
        "max_iters=12",
        "checkpoint_interval=4",
        f"model.objective={objective}",
        "peak_flops=none",
    )
    straight = make_cfg("straight", *common)
    train(straight)

    def stop_at_7(step, info):
        if step == 7:
            raise KeyboardInterrupt  # as Ctrl-C; step 7 is not a checkpoint step

    first = make_cfg("split", *common)
    with pytest.raises(KeyboardInterrupt):
        train(first, on_step=stop_at_7)
    assert load_trainer_state(Path(first.out_dir) / "checkpoints" / "latest")["step"] == 7
    resumed = make_cfg("split", *common, "resume=true")
    train(resumed)

    a, b = rows(Path(straight.out_dir)), rows(Path(first.out_dir))
    assert [r["step"] for r in b] == [r["step"] for r in a]  # no duplicated or missing rows
    assert [r.get("train_loss") for r in b] == [r.get("train_loss") for r in a]
    assert [r.get("val_loss") for r in b] == [r.get("val_loss") for r in a]
    wa = load_file(str(Path(straight.out_dir) / "checkpoints/latest/model.safetensors"))
    wb = load_file(str(Path(first.out_dir) / "checkpoints/latest/model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_with_another_architecture_names_the_fields(make_cfg):
    train(make_cfg("arch", "max_iters=2"))
    other = make_cfg("arch", "max_iters=4", "resume=true", "model.n_layer=3", "model.n_embd=48")
    with pytest.raises(ArchitectureMismatch) as error:
        train(other)
    message = str(error.value)
    assert "n_layer: checkpoint 2, config 3" in message
    assert "n_embd: checkpoint 32, config 48" in message
    assert "n_head" not in message


def test_fresh_run_refuses_to_replace_checkpoints(make_cfg):
    train(make_cfg("again", "max_iters=1"))
    with pytest.raises(ConfigError, match="resume=true"):
        train(make_cfg("again", "max_iters=1"))
    assert train(make_cfg("again", "max_iters=1", "overwrite=true"))["steps"] == 1


def test_interrupted_checkpoint_write_keeps_the_previous_one(make_cfg, monkeypatch):
    cfg = make_cfg("crash", "max_iters=4", "checkpoint_interval=2", "eval_interval=100")
    real_save = torch.save
    calls = []

    def failing_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the trainer state of the step-4 checkpoint
            with open(path, "wb") as handle:
                handle.write(b"half a file")
            raise OSError("disk full")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    from astropt.train.checkpoint import CheckpointWriteError

    with pytest.raises(CheckpointWriteError, match="disk full.*previous checkpoints are intact"):
        train(cfg)
    monkeypatch.setattr(torch, "save", real_save)
    ckpts = Path(cfg.out_dir) / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest"]  # no half-written folder
    assert load_trainer_state(ckpts / "latest")["step"] == 2
    assert isinstance(hub.load_model(cfg.out_dir), GPT)

    # A death between the two renames of a checkpoint swap: only `.latest.old` is left.
    os.rename(ckpts / "latest", ckpts / ".latest.old")
    recover_atomic_dirs(ckpts)
    assert load_trainer_state(ckpts / "latest")["step"] == 2
    summary = train(make_cfg("crash", "max_iters=4", "checkpoint_interval=2", "resume=true"))
    assert summary["steps"] == 4


class PoisonedLoader:
    """Wraps a loader and turns the tokens of its ``bad``-th batch (0-based) into NaN."""

    def __init__(self, loader, bad: int):
        self.loader, self.bad = loader, bad

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            if index == self.bad:
                batch.tokens = torch.full_like(batch.tokens, float("nan"))
            yield batch

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(make_cfg):
    def factory(cfg, split, **kwargs):
        loader = make_loader(cfg, split, **kwargs)
        return PoisonedLoader(loader, bad=4) if split == "train" else loader

    cfg = make_cfg("nan", "max_iters=8", "checkpoint_interval=2", "eval_interval=100")
    with pytest.raises(TrainingDiverged) as error:
        train(cfg, loader_factory=factory)
    message = str(error.value)
    assert "step 5" in message and "(step 4)" in message
    latest = Path(cfg.out_dir) / "checkpoints" / "latest"
    assert load_trainer_state(latest)["step"] == 4
    weights = load_file(str(latest / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


class FixedLoader:
    """In-memory loader over fixed token tensors, in order (for exact batch control)."""

    def __init__(self, tokens: torch.Tensor, batch_size: int, repeat: bool):
        self.tokens, self.batch_size, self.repeat, self.pos = tokens, batch_size, repeat, 0

    def __iter__(self):
        while True:
            while self.pos + self.batch_size <= len(self.tokens):
                chunk = self.tokens[self.pos : self.pos + self.batch_size]
                self.pos += self.batch_size
                yield types.SimpleNamespace(tokens=chunk, ids=list(range(len(chunk))))
            self.pos = 0
            if not self.repeat:
                return

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def test_gradient_accumulation_equals_one_big_batch(make_cfg):
    data = torch.randn(8, 4, 768, generator=torch.Generator().manual_seed(0))

    def factory(cfg, split, *, batch_size, repeat=False, **kwargs):
        return FixedLoader(data, batch_size, repeat)

    weights, norms = [], []
    for name, overrides in (("accum", ["batch_size=2", "grad_accum=2"]), ("big", ["batch_size=4"])):
        cfg = make_cfg(name, "max_iters=1", "eval_interval=100", *overrides)
        train(cfg, loader_factory=factory)
        weights.append(load_file(str(Path(cfg.out_dir) / "checkpoints/latest/model.safetensors")))
        norms.append(rows(Path(cfg.out_dir))[1]["grad_norm"])
    # Adam hides a wrong gradient scale; the logged gradient norm does not.
    assert norms[0] == pytest.approx(norms[1], rel=1e-5)
    for key in weights[0]:
        assert torch.allclose(weights[0][key], weights[1][key], atol=1e-6), key


def test_init_from_a_run_and_its_data_conventions(make_cfg):
    source = make_cfg("source", "max_iters=3")
    first = train(source)
    # Validation loss at step 0 of the new run is the source's best model's.
    target = make_cfg("target", "max_iters=1", f"init_from={source.out_dir}", "model.n_layer=5")
    train(target)
    assert rows(Path(target.out_dir))[0]["val_loss"] == pytest.approx(first["best_val_loss"])
    assert json.loads((Path(target.out_dir) / "config.json").read_text())["model"]["n_layer"] == 2
    wrong = make_cfg("wrong", f"init_from={source.out_dir}", "data.transpose_hw=true")
    with pytest.raises(ConfigError, match="transpose_hw"):
        train(wrong)


# ------------------------------------------------------------- command line
@pytest.mark.slow
def test_train_py_help_from_any_directory(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert "model.n_layer" in result.stdout and "data.path" in result.stdout


def test_cli_config_errors_exit_2_naming_the_key(capsys):
    from astropt.train import main

    assert main([str(ROOT / "configs/quickstart.toml"), "model.n_layers=2"]) == 2
    assert "did you mean 'model.n_layer'" in capsys.readouterr().err
    assert main(["max_iters=ten"]) == 2
    assert "max_iters must be an integer" in capsys.readouterr().err


# ------------------------------------------------------------- torchrun
def _torchrun_worker(out, survey, hf_cache, mode: str, accum: int = 2) -> list[dict]:
    """Run tests/ddp_worker.py on 2 gloo processes; each rank's record."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(ROOT / "tests" / "ddp_worker.py"), str(out), survey.path, hf_cache, mode, str(accum),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in (0, 1)]


@pytest.mark.slow
def test_fsdp_reduces_gradients_once_per_step_not_per_micro_batch(tmp_path, survey, hf_cache):
    # Gradient accumulation must skip FSDP's reduce-scatter on all but the last
    # micro-batch (set_requires_gradient_sync is read during the backward pass).
    one = _torchrun_worker(tmp_path / "one", survey, hf_cache, "fsdp", accum=2)
    two = _torchrun_worker(tmp_path / "two", survey, hf_cache, "fsdp", accum=4)
    assert len(one[0]["ids"][0]) == 2 and len(two[0]["ids"][0]) == 4  # micro-batches of 2
    assert one[0]["reduce_scatters"][0] > 0
    for rank in (0, 1):
        assert two[rank]["reduce_scatters"] == one[rank]["reduce_scatters"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_one_process_on_the_joint_batch(
    tmp_path, survey, hf_cache, mode
):
    out = tmp_path / mode
    seen = _torchrun_worker(out, survey, hf_cache, mode)
    # Disjoint samples: no galaxy read by both ranks over the whole run.
    ids = [{i for step in s["ids"] for i in step} for s in seen]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    # One step of two processes = one process on the concatenated batch.
    cfg = config_from_dict(json.loads((out / "config.json").read_text()))
    model = hub.load_pretrained_dir(out / "checkpoints" / "step-0000000")
    optimizer = make_optimizer(model, cfg.optim, torch.device("cpu"))
    for group in optimizer.param_groups:
        group["lr"] = lr_at(0, cfg.optim, cfg.max_iters)
    joint = torch.cat([seen[0]["tokens"][0], seen[1]["tokens"][0]])
    _, loss = model.compute_loss(joint)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    optimizer.step()
    logged = rows(out)[1]
    assert logged["step"] == 1
    assert logged["train_loss"] == pytest.approx(
        float(loss.detach()), rel=1e-5
    )  # mean of both ranks
    assert logged["grad_norm"] == pytest.approx(float(norm), rel=1e-4)  # scale-sensitive
    after = load_file(str(out / "checkpoints" / "step-0000001" / "model.safetensors"))
    for name, value in model.state_dict().items():
        assert torch.allclose(value, after[name], atol=1e-6), name
    assert math.isfinite(json.loads((out / "summary.json").read_text())["final_val_loss"])
