"""Model folders and the Hugging Face Hub: the one place that writes and reads model weights.

A model folder holds ``config.json`` (the :class:`~astropt.model.GPTConfig`),
``model.safetensors`` (the weights), a model card ``README.md`` and, for a
model trained by this package, ``preprocessing.json`` (the
:class:`~astropt.preprocessing.Preprocessing` its images were made with,
loaded as ``model.preprocessing``): the layout the Hugging Face Hub expects.
Training checkpoints are model folders with a trainer state beside. Every write goes to a temporary name and is renamed into
place, so a crash never leaves a half-written file where a good one was.

:func:`load_model` is the loader every entry point uses. It accepts

* a model folder (``save_pretrained`` output);
* a run folder (``checkpoints/best``, else ``checkpoints/latest``);
* an AstroPT ``ckpt.pt``, or a folder holding one (:mod:`astropt.interop`);
* a Hub repo id ``owner/name`` or ``owner/name:path/in/repo`` (e.g.
  ``Smith42/astroPT_v2.0:astropt/095M``), fetched with ``huggingface_hub``
  into its cache; with ``HF_HUB_OFFLINE=1`` only the cache is read.

``GPT.from_pretrained``, ``model.save_pretrained`` and ``model.push_to_hub``
(DESIGN.md section 7) are this module's functions, installed on
:class:`~astropt.model.GPT` when this module is imported (``astropt/__init__.py``
gives GPT stand-ins that import it on first call, so ``import astropt`` need not).
Why not methods
written in ``model.py`` that import this module lazily: imports then run both
ways (model -> hub -> interop -> model), and the model would depend on file
formats, the Hub client and AstroPT's checkpoints. This way imports run one way
(io < model < interop < hub; ``tests/test_architecture.py`` checks it) while
the model class keeps the methods scripts and notebooks call.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from astropt.interop import CKPT_NAME, load_astropt_checkpoint
from astropt.io import (
    CorruptFileError,
    atomic_write,
    atomic_write_text,
    load_state_checked,
    load_weights,
    read_json,
)
from astropt.model import GPT, GPTConfig
from astropt.preprocessing import FILE_NAME as PREPROCESSING_NAME
from astropt.preprocessing import Preprocessing

log = logging.getLogger("astropt.hub")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
README_NAME = "README.md"
TASK_HEAD_NAME = "task_head.json"  # a finetuned model's head (astropt.finetune.model)
LIBRARY_NAME = "astropt"
_REPO_SPEC = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<path>[^:]*))?$")
_FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".json")
_HF_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def save_pretrained(
    model,
    directory: str | os.PathLike,
    *,
    card: bool = True,
    preprocessing: Preprocessing | None = None,
    **card_info,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a model card ``README.md`` into ``directory``.

    ``preprocessing`` (default: ``model.preprocessing``, when it has one) is
    written as ``preprocessing.json`` and listed on the card; without one, a
    ``preprocessing.json`` already in the folder is removed (it would describe
    other weights). ``card_info`` goes to :func:`model_card` (``training_data``,
    ``probe_results``, ``training_summary``, ``description``, ``model_name``,
    ``license``, ``tags``, ``base_model``). ``card=False`` skips the card.
    Returns the folder.
    """
    if preprocessing is None:
        preprocessing = getattr(model, "preprocessing", None)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()
    }
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp))
    atomic_write_text(
        directory / CONFIG_NAME, json.dumps(model.config.to_dict(), indent=2, sort_keys=True)
    )
    if preprocessing is not None:
        text = json.dumps(preprocessing.to_dict(), indent=2)
        atomic_write_text(directory / PREPROCESSING_NAME, text)
    else:
        (directory / PREPROCESSING_NAME).unlink(missing_ok=True)
    if card:
        text = model_card(
            model.config,
            num_params=_count_params(model),
            preprocessing=preprocessing,
            **card_info,
        )
        atomic_write_text(directory / README_NAME, text)
    return directory


def _count_params(model) -> int | None:
    try:
        return int(model.num_params())
    except (AttributeError, TypeError):
        return sum(p.numel() for p in model.parameters())


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _load_mapping(value, what: str) -> Mapping:
    if isinstance(value, Mapping):
        return value
    path = Path(value)
    if path.is_file():
        loaded = json.loads(path.read_text())
        if isinstance(loaded, Mapping):
            return loaded
    raise ValueError(f"{what} must be a mapping or a JSON file holding one, got {value!r}")


def _probe_rows(probe_results: Mapping) -> list[tuple[str, str, str]]:
    """Flatten ``{task: value}`` or ``{task: {metric: value}}`` into table rows."""
    rows = []
    for task, result in probe_results.items():
        if isinstance(result, Mapping):
            for metric, value in result.items():
                if isinstance(value, (int, float, str)):
                    rows.append((str(task), str(metric), _format_value(value)))
        else:
            rows.append((str(task), "", _format_value(result)))
    return rows


def model_card(
    config,
    *,
    num_params: int | None = None,
    training_data: str | Mapping | None = None,
    probe_results: Mapping | str | os.PathLike | None = None,
    training_summary: Mapping | None = None,
    description: str | None = None,
    model_name: str | None = None,
    license: str = "mit",
    tags: list[str] | None = None,
    base_model: str | None = None,
    repo_id: str | None = None,
    preprocessing: Preprocessing | None = None,
) -> str:
    """Markdown model card (Hub YAML metadata + sections) for a model with ``config``.

    ``training_data``: a dataset name (a Hub dataset id is also listed in the
    metadata) or a mapping of facts (e.g. a synthetic survey's ``survey.json``).
    ``probe_results``: ``{task: value}`` or ``{task: {metric: value}}``, or a
    JSON file holding that. ``training_summary``: e.g. the dict
    ``astropt.train.train`` returns (steps, tokens, best validation loss).
    ``preprocessing``: the record the training images were made with (a table
    under "Inputs"; ``astropt`` commands apply it from ``preprocessing.json``).
    """
    from huggingface_hub import ModelCardData

    name = model_name or (repo_id.split("/")[-1] if repo_id else "astropt model")
    datasets = None
    if isinstance(training_data, str) and _HF_DATASET_ID.match(training_data.split()[0]):
        datasets = [training_data.split()[0]]
    metadata = ModelCardData(
        library_name=LIBRARY_NAME,
        license=license,
        tags=sorted(set(["astronomy", "galaxies", "self-supervised", "astropt"] + (tags or []))),
        datasets=datasets,
        base_model=base_model,
        model_name=name,
    )
    cfg = config.to_dict()
    lines = [f"---\n{metadata.to_yaml()}\n---", "", f"# {name}", ""]
    lines.append(
        description
        or (
            "A large observation model of galaxy images: a GPT decoder over patch tokens "
            "that predicts the next patch (AstroPT-compatible)."
        )
    )
    lines += ["", "## Model", ""]
    lines.append("| field | value |")
    lines.append("|---|---|")
    if num_params is not None:
        lines.append(f"| parameters | {num_params:,} |")
    for key in ("n_layer", "n_head", "n_embd", "block_size", "tokeniser", "attn_type",
                "objective", "bias", "dropout"):  # fmt: skip
        lines.append(f"| {key} | {_format_value(cfg[key])} |")
    lines += ["", "## Inputs", ""]
    lines.append(
        f"Images are cut into {cfg['patch_size']}x{cfg['patch_size']}-pixel patches of "
        f"{cfg['n_chan']} channel(s) ({cfg['patch_size'] ** 2 * cfg['n_chan']} values per token), "
        f"in {cfg['order']} order, each patch normalised to zero mean and unit std."
    )
    if cfg["transpose_hw"]:
        lines.append(
            "The image axes are swapped before patching (AstroPT's `swapaxes(0, 2)` layout: "
            "`transpose_hw=True`); `astropt` loaders do this from the config."
        )
    lines.append(f"Default embedding layer: `{cfg['embed_layer']}`, mean over tokens.")
    if preprocessing is not None:
        intro = (
            "Preprocessing of the training images (`preprocessing.json`; `astropt` embed, "
            "predict, sample and finetune apply it unless told otherwise):"
        )
        lines += ["", intro, "", "| data option | value |", "|---|---|"]
        lines += [
            f"| {name} | `{value!r}` |"
            for name, value in preprocessing.to_dict().items()
            if name != "format"
        ]
    lines += ["", "## Training data", ""]
    if training_data is None:
        lines.append("Not recorded.")
    elif isinstance(training_data, Mapping):
        lines += [f"- {key}: {_format_value(value)}" for key, value in training_data.items()]
    else:
        lines.append(str(training_data))
    if training_summary:
        lines += ["", "## Training", ""]
        lines += [
            f"- {key}: {_format_value(value)}"
            for key, value in training_summary.items()
            if isinstance(value, (int, float, str, bool))
        ]
    if probe_results is not None:
        rows = _probe_rows(_load_mapping(probe_results, "probe_results"))
        lines += ["", "## Probe results", "", "| task | metric | value |", "|---|---|---|"]
        lines += [f"| {task} | {metric} | {value} |" for task, metric, value in rows]
    lines += ["", "## Use", "", "```python", "from astropt.hub import load_model", ""]
    lines.append(f'model = load_model("{repo_id or "path/to/this/folder"}")')
    lines.append("embeddings = model.embed(tokens)  # tokens: (B, N, patch values)")
    lines += ["```", ""]
    return "\n".join(lines)


#: Extra files of a model folder that make it a subclass of GPT: file name -> ``build(config,
#: the file's JSON)``, or the ``"module:attribute"`` name of that builder, imported only when
#: such a folder is loaded. The finetuned model is named, not imported: this module never
#: imports upwards, and ``import astropt`` stays light (no finetuning, no data pipeline).
_MODEL_PARTS: dict[str, Callable[[GPTConfig, dict], GPT] | str] = {
    TASK_HEAD_NAME: "astropt.finetune.model:FinetunedGPT",
}


def register_model_part(name: str, build: Callable[[GPTConfig, dict], GPT] | str) -> None:
    """Load model folders holding file ``name`` with ``build(config, json_of_that_file)``.

    ``build`` may be a ``"module:attribute"`` name, imported when the first such folder loads.
    """
    _MODEL_PARTS[name] = build


def _model_part(name: str) -> Callable[[GPTConfig, dict], GPT]:
    build = _MODEL_PARTS[name]
    if isinstance(build, str):
        import importlib

        module, attribute = build.split(":")
        build = _MODEL_PARTS[name] = getattr(importlib.import_module(module), attribute)
    return build


def load_pretrained_dir(directory: str | os.PathLike, map_location: str = "cpu"):
    """Read a model folder written by :func:`save_pretrained` into a :class:`GPT`.

    A folder with a part registered by :func:`register_model_part` (a finetuned
    model's ``task_head.json``) loads as that part's class, head included.
    """
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise FileNotFoundError(f"{directory} is not a model folder: {needed.name} is missing")
    config = GPTConfig.from_dict(read_json(config_path))
    model = None
    for part in list(_MODEL_PARTS):
        if (directory / part).is_file():
            model = _model_part(part)(config, read_json(directory / part))
            break
    if model is None:
        model = GPT(config)
    state = load_weights(weights_path, device=str(map_location))
    load_state_checked(model, state, source=str(weights_path))
    model.preprocessing = _read_preprocessing(directory)
    return model


def _read_preprocessing(directory: Path) -> Preprocessing | None:
    """The record in a model folder, or None when it has none."""
    path = directory / PREPROCESSING_NAME
    if not path.is_file():
        return None
    return Preprocessing.from_dict(read_json(path), origin=str(path))


def _run_preprocessing(run: Path) -> Preprocessing | None:
    """The preprocessing in a run folder's ``config.json`` (runs trained before checkpoints
    recorded their own), or None."""
    path = run / CONFIG_NAME
    data = read_json(path).get("data") if path.is_file() else None
    if not isinstance(data, dict):
        return None
    known = {name: data[name] for name in Preprocessing.field_names() if name in data}
    return Preprocessing.from_dict(known, origin=f"{path} [data]")


def _hub_preprocessing(
    repo_id: str, prefix: str, revision: str | None, cache_dir=None, offline: bool | None = None
) -> Preprocessing | None:
    """The record in Hub repo ``repo_id`` (folder ``prefix``), or None where it has none
    (or, ``offline``, where the cache has none)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        local = hf_hub_download(
            repo_id,
            f"{prefix}/{PREPROCESSING_NAME}" if prefix else PREPROCESSING_NAME,
            revision=revision,
            cache_dir=cache_dir or os.environ.get("HF_HUB_CACHE") or None,
            local_files_only=hub_offline() if offline is None else offline,
            library_name=LIBRARY_NAME,
        )
    except EntryNotFoundError:  # also the offline cache's LocalEntryNotFoundError
        return None
    return Preprocessing.from_dict(read_json(Path(local)), origin=f"{repo_id}:{local}")


def _load_local(path: Path, map_location):
    """Load from an existing local file or folder (see :func:`load_model`)."""
    if path.is_file():
        if path.name in (CONFIG_NAME, WEIGHTS_NAME):
            return load_pretrained_dir(path.parent, map_location)
        return load_astropt_checkpoint(path, map_location)
    if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
        return load_pretrained_dir(path, map_location)
    candidates = [path / "checkpoints" / name for name in ("best", "latest")]
    candidates = [c for c in candidates if (c / WEIGHTS_NAME).is_file()]
    failures = []
    for candidate in candidates:
        try:
            model = load_pretrained_dir(candidate, map_location)
        except CorruptFileError as exc:
            failures.append(str(exc))
            log.warning("cannot load %s: %s; trying the next checkpoint", candidate, exc)
            continue
        if failures:
            log.warning("loaded %s instead", candidate)
        if model.preprocessing is None:
            model.preprocessing = _run_preprocessing(path)
        return model
    if failures:
        raise CorruptFileError(f"no readable checkpoint in {path}: " + "; ".join(failures))
    if (path / CKPT_NAME).is_file():
        return load_astropt_checkpoint(path / CKPT_NAME, map_location)
    raise FileNotFoundError(
        f"no model found at {path}: expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME}, "
        f"a run folder with checkpoints/best or checkpoints/latest, or an AstroPT {CKPT_NAME}"
    )


def parse_repo_spec(spec: str) -> tuple[str, str | None]:
    """``"owner/name"`` or ``"owner/name:path/in/repo"`` -> ``(repo_id, path or None)``."""
    found = _REPO_SPEC.match(spec)
    if not found:
        raise ValueError(f"{spec!r} is not a Hub repo id (owner/name or owner/name:path/in/repo)")
    return found.group("repo"), (found.group("path") or "").strip("/") or None


def load_model(
    path_or_repo_id: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    *,
    revision: str | None = None,
):
    """Load a :class:`~astropt.model.GPT` from any place a model can live.

    Local paths win: a model folder, a run folder (its best, else latest
    checkpoint), an AstroPT ``ckpt.pt`` or a folder holding one, a
    ``config.json``/``model.safetensors`` file (its folder). Anything else is
    read as a Hub repo id ``owner/name[:path/in/repo]`` (see :func:`from_hub`).
    """
    path = Path(path_or_repo_id)
    if path.exists():
        return _load_local(path, map_location)
    try:
        repo_id, subpath = parse_repo_spec(str(path_or_repo_id))
    except ValueError:
        raise FileNotFoundError(
            f"no model at {path_or_repo_id}: it is neither an existing path nor a Hub repo id "
            "(owner/name or owner/name:path/in/repo)"
        ) from None
    return from_hub(repo_id, subpath, revision=revision, map_location=map_location)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (read now, not when ``huggingface_hub`` was imported)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE)


def _is_our_config(path: str) -> bool:
    try:
        GPTConfig.from_dict(json.loads(Path(path).read_text()))
    except (ValueError, TypeError):
        return False
    return True


def from_hub(
    repo_id: str | os.PathLike,
    path: str | None = None,
    filename: str | None = None,
    *,
    revision: str | None = None,
    map_location: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
):
    """Load a model from a Hub repo (or a local folder laid out like one).

    ``path``: folder inside the repo (e.g. ``"astropt/095M"`` in
    ``Smith42/astroPT_v2.0``; a ``path`` ending in ``.pt`` etc. names a file).
    ``filename``: a file in that folder; without it, a model folder (``config.json`` + ``model.safetensors``) is looked for,
    then an AstroPT ``ckpt.pt``. Files come through ``hf_hub_download`` and its
    cache (``cache_dir``, default ``HF_HUB_CACHE``); ``local_files_only``
    defaults to ``HF_HUB_OFFLINE``, in which case only the cache is read.
    """
    prefix = (path or "").strip("/")
    if filename is None and Path(prefix).suffix in _FILE_SUFFIXES:
        # "owner/name:folder/ckpt.pt" names a file, not a folder.
        prefix, _, filename = prefix.rpartition("/")
    local_root = Path(repo_id)
    if local_root.is_dir():
        base = local_root / prefix if prefix else local_root
        return _load_local(base / filename if filename else base, map_location)

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline() if local_files_only is None else local_files_only
    if cache_dir is None:
        cache_dir = os.environ.get("HF_HUB_CACHE") or None

    def fetch(name: str) -> str:
        return hf_hub_download(
            str(repo_id),
            f"{prefix}/{name}" if prefix else name,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=offline,
            library_name=LIBRARY_NAME,
        )

    def with_record(model):
        if model.preprocessing is None:
            model.preprocessing = _hub_preprocessing(
                str(repo_id), prefix, revision, cache_dir, offline
            )
        return model

    tried = []
    try:
        if filename is not None:
            tried.append(filename)
            local = Path(fetch(filename))
            if local.name == WEIGHTS_NAME or local.name == CONFIG_NAME:
                fetch(CONFIG_NAME if local.name == WEIGHTS_NAME else WEIGHTS_NAME)
                return with_record(load_pretrained_dir(local.parent, map_location))
            return load_astropt_checkpoint(local, map_location)
        tried.append(CONFIG_NAME)
        try:
            config_file = fetch(CONFIG_NAME)
        except EntryNotFoundError:
            config_file = None
        # AstroPT's repos have a root config.json of their own: only ours is a model folder.
        if config_file is not None and _is_our_config(config_file):
            tried.append(WEIGHTS_NAME)
            fetch(WEIGHTS_NAME)
            return with_record(load_pretrained_dir(Path(config_file).parent, map_location))
        tried.append(CKPT_NAME)
        return load_astropt_checkpoint(fetch(CKPT_NAME), map_location)
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as err:
        where = f"{repo_id}" + (f" (folder {prefix})" if prefix else "")
        mode = " in the local Hugging Face cache (HF_HUB_OFFLINE)" if offline else ""
        raise FileNotFoundError(
            f"no model found in Hub repo {where}{mode}: tried {', '.join(tried)} "
            f"({type(err).__name__}: {err})"
        ) from err


def push_to_hub(
    model,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    staging_dir: str | os.PathLike | None = None,
    dry_run: bool = False,
    **card_info,
) -> str:
    """Upload ``model`` as a model folder (weights, config, card) to Hub repo ``repo_id``.

    The folder is written by :func:`save_pretrained` into ``staging_dir`` (a
    temporary folder by default), then sent with ``HfApi.upload_folder``
    (the repo is created if needed). ``dry_run=True`` only writes the folder
    and returns its path (a new temporary folder when ``staging_dir`` is None:
    the caller removes it); otherwise returns the commit URL.
    """
    card_info.setdefault("repo_id", repo_id)
    if dry_run:
        folder = Path(staging_dir) if staging_dir else Path(tempfile.mkdtemp(prefix="astropt-hub-"))
        return str(save_pretrained(model, folder, **card_info))

    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="astropt-hub-") as tmp:
        folder = save_pretrained(model, Path(staging_dir) if staging_dir else tmp, **card_info)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=commit_message or f"Upload {LIBRARY_NAME} model",
        )
    return str(getattr(info, "commit_url", info))


# --------------------------------------------------------------- GPT methods
def _gpt_save_pretrained(self: GPT, directory, **card_info) -> None:
    """Write ``config.json`` and ``model.safetensors`` (and a model card) to ``directory``.

    See :func:`astropt.hub.save_pretrained` for ``card_info``.
    """
    save_pretrained(self, directory, **card_info)


def _gpt_from_pretrained(cls: type[GPT], path_or_repo_id, **kwargs) -> GPT:
    """Load from a ``save_pretrained`` folder, a run folder, an AstroPT ``ckpt.pt`` or a Hub repo.

    See :func:`astropt.hub.load_model` for the places and ``kwargs``.
    """
    return load_model(path_or_repo_id, **kwargs)


def _gpt_push_to_hub(self: GPT, repo_id: str, **kwargs) -> str:
    """Upload as a model folder to the Hugging Face Hub (see :func:`astropt.hub.push_to_hub`)."""
    return push_to_hub(self, repo_id, **kwargs)


for _name, _function in (
    ("save_pretrained", _gpt_save_pretrained),
    ("from_pretrained", _gpt_from_pretrained),
    ("push_to_hub", _gpt_push_to_hub),
):
    _function.__name__, _function.__qualname__ = _name, f"GPT.{_name}"
    setattr(GPT, _name, classmethod(_function) if _name == "from_pretrained" else _function)
del _name, _function
