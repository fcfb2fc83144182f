"""Model folders: the one place that writes and reads model weights.

A model folder holds ``config.json`` (the :class:`~astropt.model.GPTConfig`)
and ``model.safetensors`` (the weights), the layout the Hugging Face Hub
expects. Training checkpoints are model folders with a trainer state beside.
Every write goes to a temporary name and is renamed into place, so a crash
never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path`` (same folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as handle:
            handle.write(text)

    atomic_write(path, write)


def save_pretrained(model, directory: str | os.PathLike, **card_info) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for ``model`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()
    }
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp))
    atomic_write_text(
        directory / CONFIG_NAME, json.dumps(model.config.to_dict(), indent=2, sort_keys=True)
    )
    return directory


def load_pretrained_dir(directory: str | os.PathLike, map_location: str = "cpu"):
    """Read a model folder written by :func:`save_pretrained` into a :class:`GPT`."""
    from astropt.model import GPT, GPTConfig

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise FileNotFoundError(f"{directory} is not a model folder: {needed.name} is missing")
    config = GPTConfig.from_dict(json.loads(config_path.read_text()))
    model = GPT(config)
    state = load_file(str(weights_path), device=str(map_location))
    load_state_checked(model, state, source=str(weights_path))
    return model


def load_state_checked(model: torch.nn.Module, state: dict, source: str) -> None:
    """``load_state_dict(strict=True)`` with a message naming missing, extra and misshapen tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    misshapen = [
        f"{name}: file {tuple(state[name].shape)} vs model {tuple(own[name].shape)}"
        for name in sorted(set(own) & set(state))
        if state[name].shape != own[name].shape
    ]
    if missing or extra or misshapen:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unexpected {extra}")
        if misshapen:
            parts.append(f"shape mismatch {misshapen}")
        raise ValueError(f"weights in {source} do not fit the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_model(path_or_repo_id: str | os.PathLike, map_location: str = "cpu"):
    """Load a model from a model folder or a run folder (its best, else latest checkpoint)."""
    path = Path(path_or_repo_id)
    if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
        return load_pretrained_dir(path, map_location)
    for candidate in (path / "checkpoints" / "best", path / "checkpoints" / "latest"):
        if (candidate / WEIGHTS_NAME).is_file():
            return load_pretrained_dir(candidate, map_location)
    raise FileNotFoundError(
        f"no model found at {path_or_repo_id}: expected a folder with {CONFIG_NAME} and "
        f"{WEIGHTS_NAME}, or a run folder with checkpoints/best or checkpoints/latest"
    )
