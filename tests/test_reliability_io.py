"""Files written by astropt follow the umask, so a shared group folder can read them (issue 18)."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from astropt.io import atomic_write, atomic_write_dir
from astropt.model import GPT, GPTConfig


@pytest.fixture(params=[0o022, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_save_pretrained_follows_the_umask(tmp_path, umask):
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16))
    model.save_pretrained(tmp_path / "model")
    files = sorted((tmp_path / "model").iterdir())
    assert {p.name for p in files} >= {"model.safetensors", "config.json"}
    for path in files:
        assert _mode(path) == 0o666 & ~umask, path.name


def test_atomic_folder_follows_the_umask(tmp_path, umask):
    def fill(folder):
        save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
        (folder / "sub").mkdir()
        (folder / "sub" / "state.json").write_text("{}")

    atomic_write_dir(tmp_path / "checkpoint", fill)
    assert _mode(tmp_path / "checkpoint") == 0o777 & ~umask
    assert _mode(tmp_path / "checkpoint" / "sub") == 0o777 & ~umask
    assert _mode(tmp_path / "checkpoint" / "model.safetensors") == 0o666 & ~umask
    assert _mode(tmp_path / "checkpoint" / "sub" / "state.json") == 0o666 & ~umask


def test_atomic_file_written_by_a_replacing_writer_follows_the_umask(tmp_path, umask):
    atomic_write(tmp_path / "w.safetensors", lambda tmp: save_file({"w": torch.zeros(2)}, tmp))
    assert _mode(tmp_path / "w.safetensors") == 0o666 & ~umask


def _run_folder(tmp_path):
    """A run folder with two checkpoints of different weights (best, latest)."""
    torch.manual_seed(0)
    best = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16))
    latest = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16))
    best.save_pretrained(tmp_path / "run" / "checkpoints" / "best")
    latest.save_pretrained(tmp_path / "run" / "checkpoints" / "latest")
    return tmp_path / "run", best, latest


def test_truncated_weights_name_the_file_and_fall_back(tmp_path, caplog):
    from astropt.hub import load_model
    from astropt.io import CorruptFileError

    run, best, latest = _run_folder(tmp_path)
    weights = run / "checkpoints" / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match=r"checkpoints/best/model\.safetensors"):
        load_model(run / "checkpoints" / "best")
    with caplog.at_level("WARNING", logger="astropt.hub"):
        model = load_model(run)
    assert "checkpoints/latest" in caplog.text
    for name, tensor in latest.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor)
    (run / "checkpoints" / "latest" / "config.json").write_text("{ not json")
    with pytest.raises(CorruptFileError, match="no readable checkpoint.*config.json"):
        load_model(run)


def test_folder_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from astropt.io import FolderBusyError, folder_lock

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from astropt.io import folder_lock\n"
            f"with folder_lock({str(tmp_path)!r}):\n"
            "    print('locked', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderBusyError, match=rf"in use by another run \(pid {holder.pid}"):
            with folder_lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # A killed holder leaves no stale lock.
    deadline = time.monotonic() + 10
    while True:
        try:
            with folder_lock(tmp_path):
                break
        except FolderBusyError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


@pytest.mark.parametrize("debug", [False, True])
def test_expected_errors_are_one_line_unless_debug(tmp_path, debug):
    import subprocess
    import sys

    # A truncated model folder: an expected error (a bad file), not a bug.
    model = tmp_path / "model"
    GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16)).save_pretrained(model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    command = [
        sys.executable,
        "-m",
        "astropt.cli",
        "embed",
        f"checkpoint={model}",
        "data.source=synthetic",
        f"out={tmp_path / 'emb.parquet'}",
    ]
    result = subprocess.run(
        command + (["--debug"] if debug else []), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == (1 if debug else 2)  # --debug: the uncaught error's status
    assert "model.safetensors" in result.stderr
    assert ("Traceback" in result.stderr) == debug
    if not debug:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
