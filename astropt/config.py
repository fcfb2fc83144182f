"""Run configuration: typed dataclasses, TOML files and ``key=value`` overrides.

A run is described by one :class:`RunConfig`:

* top-level keys (``out_dir``, ``max_iters``, ``batch_size``, ...);
* ``model``: the :class:`~astropt.model.GPTConfig` itself (no copy of its fields);
* ``data``: the :class:`~astropt.data.DataConfig` of the data pipeline;
* ``optim``: :class:`OptimConfig` (AdamW and the learning-rate schedule).

Sources are applied in order: the dataclass defaults, a TOML file (which may
name a ``base`` TOML of its own, relative to itself), then command-line
overrides such as ``model.n_layer=6`` or ``data.path=runs/survey``. Every key
is checked: an unknown one fails naming the nearest valid key, and a value is
parsed by its field's type (bool, int, float, str, ``None`` for optional
fields, a choice for ``Literal`` fields).

The model's data conventions (``patch_size``, ``order``, ``transpose_hw``) are
data settings: they are set under ``data.`` and copied into ``model`` by
:func:`resolve`, so the network and the loader can never disagree. Writing
them under ``model.`` is accepted only when the values agree (so a saved
``config.json`` loads back).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, packaged
    import tomli as tomllib

from astropt.data.config import DATA_CONVENTIONS, DataConfig
from astropt.model import GPTConfig


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (linear warmup, then cosine to ``min_lr``).

    Defaults are AstroPT's (and Chinchilla's): peak 6e-4, floor a tenth of the
    peak, 2000 warmup steps, betas (0.9, 0.95), weight decay 0.1 on matrices
    only, gradients clipped at norm 1.
    """

    lr: float = 6e-4  # peak learning rate, reached after warmup_iters
    min_lr: float | None = None  # floor of the cosine; None: lr / 10
    warmup_iters: int = 2000  # optimiser steps of linear warmup from 0
    decay_iters: int | None = None  # step where the cosine reaches min_lr; None: max_iters
    weight_decay: float = 0.1  # decoupled decay of weight matrices (not norms, biases, tokens)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    impl: Literal["auto", "fused", "foreach", "for"] = "auto"  # AdamW kernel; auto: fused


@dataclass
class RunConfig:
    """Everything one training run needs; ``config.json`` in the run folder holds it resolved."""

    out_dir: str = "runs/default"  # run folder: config.json, metrics.jsonl, checkpoints/, previews/
    max_iters: int = 1000  # optimiser steps in total
    eval_interval: int = 100  # evaluate on the validation split every this many steps
    eval_iters: int = 20  # validation batches per evaluation (per rank)
    eval_batch_size: int | None = None  # None: batch_size
    log_interval: int = 10  # append a metrics.jsonl row every this many steps
    checkpoint_interval: int = 0  # save checkpoints/latest every this many steps; 0: eval_interval
    log_checkpoints: int = 0  # extra snapshots checkpoints/step-NNNNNNN, log-spaced over the run
    resume: bool = False  # continue from out_dir/checkpoints/latest
    overwrite: bool = False  # allow a fresh run to replace the checkpoints already in out_dir
    init_from: str | None = None  # start from these weights (model/run folder, ckpt.pt, Hub id)
    seed: int = 0
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:N
    # Autocast dtype; auto: bfloat16 where the hardware has it (CUDA, AVX512-BF16/AMX CPUs).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    compile: bool = False  # torch.compile the model
    batch_size: int = 8  # galaxies per micro-batch per process
    train_samples: int | None = None  # use only the first N galaxies of the train split
    # Micro-batches per optimiser step over ALL processes (each runs grad_accum / world size).
    grad_accum: int = 1
    parallel: Literal["ddp", "fsdp"] = "ddp"  # how torchrun processes share the model
    peak_flops: float | None = None  # FLOP/s for MFU; None: measured matmul peak of this device
    preview: bool = True  # reconstruction preview PNG at each evaluation
    preview_n: int = 6  # galaxies in the preview
    progress: bool = True  # tqdm progress bar (rank 0)
    tensorboard: bool = False  # also log to out_dir/tensorboard when tensorboard is installed
    wandb: bool = False  # also log to Weights & Biases when wandb is installed
    wandb_project: str = "astropt"
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (JSON-ready)."""
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message says why and how to fix it."""


SECTIONS: dict[str, type] = {"model": GPTConfig, "data": DataConfig, "optim": OptimConfig}


# ------------------------------------------------------------------ keys
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def sections_of(root: type) -> dict[str, type]:
    """The ``[section]`` tables of a config dataclass: its fields that are dataclasses."""
    hints = _hints(root)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(root)
        if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name])
    }


def valid_keys(root: type = RunConfig) -> dict[str, Any]:
    """Every settable dotted key with its type: ``{"max_iters": int, "model.n_layer": int, ...}``.

    ``root``: the config dataclass (:class:`RunConfig`, or another command's
    config built the same way: top-level fields plus dataclass sections).
    """
    keys: dict[str, Any] = {}
    sections = sections_of(root)
    run_hints = _hints(root)
    for f in dataclasses.fields(root):
        if f.name in sections:
            continue
        keys[f.name] = run_hints[f.name]
    for section, cls in sections.items():
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                keys[f"{section}.{f.name}"] = hints[f.name]
    return keys


def _nearest(key: str, keys: list[str]) -> str | None:
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if close:
        return close[0]
    # "n_layer" written without its section: match on the last component.
    leaf = key.rsplit(".", 1)[-1]
    by_leaf = {k.rsplit(".", 1)[-1]: k for k in keys}
    close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
    return by_leaf[close[0]] if close else None


def did_you_mean(key: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` naming the candidate nearest to ``key``, or ``""``."""
    hint = _nearest(key, list(candidates))
    return f"; did you mean '{hint}'?" if hint else ""


def _unknown_key(
    key: str, keys: dict[str, Any], origin: str, sections: dict[str, type] = SECTIONS
) -> ConfigError:
    suggestion = did_you_mean(key, [*keys, *(f"[{s}]" for s in sections)])
    return ConfigError(f"unknown config key '{key}' ({origin}){suggestion}")


def table_fields(
    cls: type, table: dict, origin: str, *, exclude: Iterable[str] = ()
) -> dict[str, Any]:
    """The entries of a TOML ``table`` as init fields of the dataclass ``cls``, parsed by type.

    For configs other than a run's (a scaling ladder, ...): an unknown key raises
    :class:`ConfigError` naming the nearest field (``origin`` says where the table came
    from), each value is parsed by :func:`coerce`. Fields in ``exclude`` are not accepted.
    Returns ``{field: value}`` for the keys present, ready for ``cls(**values)``.
    """
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in set(exclude)]
    values = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(f"unknown key '{key}' ({origin}){did_you_mean(key, names)}")
        values[key] = coerce(value, hints[key], key)
    return values


# ---------------------------------------------------------------- values
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _parse_literal_text(text: str) -> Any:
    """A TOML value written on the command line (lists, quoted strings)."""
    return tomllib.loads(f"v = {text}")["v"]


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` (a command-line string or a TOML value) as the field type ``tp``.

    Raises :class:`ConfigError` naming ``key``, the expected type and the value.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if type(None) in args and (
            value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null"))
        ):
            return None
        errors = []
        for member in members:
            try:
                return coerce(value, member, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: cannot use {value!r} as {tp}")
    if origin is Literal:
        choices = args
        candidate = value
        if isinstance(value, str) and not all(isinstance(c, str) for c in choices):
            try:
                candidate = _parse_literal_text(value)
            except Exception:
                candidate = value
        if candidate in choices and type(candidate) is type(
            next(c for c in choices if c == candidate)
        ):
            return candidate
        hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}{suggestion}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.strip().replace("_", "")
            try:
                return int(text)
            except ValueError:
                pass
            try:  # "1e6" is a fine way to write a step count
                number = float(text)
                if number.is_integer():
                    return int(number)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip().replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if origin in (list, tuple, dict) or tp in (list, tuple, dict):
        container = origin or tp
        if isinstance(value, str):
            try:
                value = _parse_literal_text(value)
            except Exception as error:
                raise ConfigError(
                    f"{key} must be a {container.__name__} written as TOML, got {value!r}"
                ) from error
        if container is dict:
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a table, got {value!r}")
            return dict(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        item_types = [a for a in args if a is not Ellipsis]
        items = [
            coerce(v, item_types[0], f"{key}[{i}]") if item_types else v
            for i, v in enumerate(value)
        ]
        return container(items)
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{key} must be a path, got {value!r}")
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported field type {tp}")


# ------------------------------------------------------------------ apply
def _flatten(
    table: dict, prefix: str = "", sections: dict[str, type] = SECTIONS
) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and key in sections:
            items.extend(_flatten(value, key + ".", sections))
        else:
            items.append((key, value))
    return items


def _read_file(
    path: Path, seen: tuple[Path, ...] = (), sections: dict[str, type] = SECTIONS
) -> list[tuple[str, Any, str]]:
    """``(key, value, origin)`` entries of a TOML (or saved JSON) config, bases first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config files include each other: {' -> '.join(map(str, seen))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix == ".json":
        table = json.loads(path.read_text())
    else:
        try:
            with open(path, "rb") as handle:
                table = tomllib.load(handle)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from error
    entries: list[tuple[str, Any, str]] = []
    base = table.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: 'base' must be a path string, got {base!r}")
        entries.extend(_read_file(path.parent / base, (*seen, path), sections))
    entries.extend((key, value, str(path)) for key, value in _flatten(table, "", sections))
    return entries


def _parse_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. model.n_layer=6)")
    return key, value.strip()


def _set(cfg: Any, key: str, value: Any, keys: dict[str, Any]) -> None:
    target: Any = cfg
    name = key
    if "." in key:
        section, name = key.split(".", 1)
        target = getattr(cfg, section)
    setattr(target, name, coerce(value, keys[key], key))


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple = (), root: type = RunConfig
) -> Any:
    """Build a resolved :class:`RunConfig` from defaults, a TOML/JSON file and overrides.

    ``path``: a TOML file (or a run folder's ``config.json``), or None for the
    defaults. ``overrides``: ``key=value`` strings applied last, in order.
    ``root``: another config dataclass read by the same rules (e.g.
    :class:`astropt.finetune.FinetuneConfig`); its ``validate()`` method, when
    it has one, runs last. Raises :class:`ConfigError` for unknown keys
    (naming the nearest valid one) and for values that do not parse as the
    field's type.
    """
    sections = sections_of(root)
    keys = valid_keys(root)
    cfg = root()
    entries: list[tuple[str, Any, str]] = (
        [] if path is None else _read_file(Path(path), sections=sections)
    )
    for text in overrides:
        key, value = _parse_override(text)
        entries.append((key, value, "command line"))
    if root is not RunConfig:
        for key, value, origin in entries:
            if key not in keys:
                raise _unknown_key(key, keys, origin, sections)
            _set(cfg, key, value, keys)
        return _rebuild(cfg)
    explicit_conventions: dict[str, tuple[Any, str]] = {}
    for key, value, origin in entries:
        if key not in keys:
            raise _unknown_key(key, keys, origin)
        if key.startswith("model.") and key[6:] in DATA_CONVENTIONS:
            explicit_conventions[key[6:]] = (coerce(value, keys[key], key), origin)
            continue
        _set(cfg, key, value, keys)
    for name, (value, origin) in explicit_conventions.items():
        if getattr(cfg.data, name) != value:
            raise ConfigError(
                f"model.{name}={value!r} ({origin}) disagrees with data.{name}="
                f"{getattr(cfg.data, name)!r}: the model's data conventions come from the "
                f"data section; set data.{name} instead"
            )
    return resolve(cfg)


def resolve(cfg: RunConfig) -> RunConfig:
    """Copy the data conventions into ``cfg.model``, re-run the dataclasses' checks, validate."""
    values = dataclasses.asdict(cfg.model)
    for name in DATA_CONVENTIONS:
        values[name] = getattr(cfg.data, name)
    data_values = dataclasses.asdict(cfg.data)
    # The model decides how many channels an image has; a file that disagrees is skipped.
    if data_values["channels"] is None:
        data_values["channels"] = cfg.model.n_chan
    elif data_values["channels"] != cfg.model.n_chan:
        raise ConfigError(
            f"data.channels={data_values['channels']} disagrees with model.n_chan="
            f"{cfg.model.n_chan}: images must have the channels the model reads"
        )
    try:
        cfg.model = GPTConfig(**values)
        cfg.data = type(cfg.data)(**data_values)
        cfg.optim = OptimConfig(**dataclasses.asdict(cfg.optim))
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from error
    validate(cfg)
    return cfg


def _rebuild(cfg: Any) -> Any:
    """Re-run the sections' dataclass checks, then ``cfg.validate()`` (configs other than RunConfig)."""
    try:
        for name, cls in sections_of(type(cfg)).items():
            setattr(cfg, name, cls(**dataclasses.asdict(getattr(cfg, name))))
        if hasattr(cfg, "validate"):
            cfg.validate()
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(str(error)) from error
    return cfg


def validate(cfg: RunConfig) -> None:
    """Reject values no run can use, with the key to change."""
    positive = {
        "max_iters": cfg.max_iters >= 0,
        "eval_interval": cfg.eval_interval >= 1,
        "eval_iters": cfg.eval_iters >= 1,
        "log_interval": cfg.log_interval >= 1,
        "checkpoint_interval": cfg.checkpoint_interval >= 0,
        "log_checkpoints": cfg.log_checkpoints >= 0,
        "batch_size": cfg.batch_size >= 1,
        "grad_accum": cfg.grad_accum >= 1,
        "preview_n": cfg.preview_n >= 1,
        "model.n_layer": cfg.model.n_layer >= 1,
        "model.block_size": cfg.model.block_size >= 2,
        "optim.lr": cfg.optim.lr > 0,
        "optim.warmup_iters": cfg.optim.warmup_iters >= 0,
        "optim.grad_clip": cfg.optim.grad_clip >= 0,
        "optim.weight_decay": cfg.optim.weight_decay >= 0,
    }
    if cfg.eval_batch_size is not None:
        positive["eval_batch_size"] = cfg.eval_batch_size >= 1
    bad = [key for key, ok in positive.items() if not ok]
    if bad:
        raise ConfigError("out of range: " + ", ".join(f"{k}" for k in bad))
    if not 0.0 < cfg.model.mask_ratio < 1.0:
        raise ConfigError(f"model.mask_ratio must be in (0, 1), got {cfg.model.mask_ratio}")


def config_from_dict(values: dict, root: type = RunConfig) -> Any:
    """Rebuild a :class:`RunConfig` (or ``root``) from its ``to_dict`` output (checked like a file)."""
    sections = sections_of(root)
    keys = valid_keys(root)
    cfg = root()
    for key, value in _flatten(values, "", sections):
        if key not in keys:
            raise _unknown_key(key, keys, "dict", sections)
        if root is RunConfig and key.startswith("model.") and key[6:] in DATA_CONVENTIONS:
            continue  # derived from data.* by resolve()
        _set(cfg, key, value, keys)
    return resolve(cfg) if root is RunConfig else _rebuild(cfg)


def _field_notes(cls: type) -> dict[str, str]:
    """The comment written beside (or just above) each field in ``cls``'s source."""
    import inspect
    import re

    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    notes: dict[str, str] = {}
    above: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#: ").strip())
            continue
        match = re.match(r"(\w+)\s*:[^=]*(?:=.*?)?(?:#\s*(.*))?$", stripped)
        if match and not stripped.startswith(("def ", "class ", "@")):
            note = match.group(2) or " ".join(above)
            if note:
                notes[match.group(1)] = note
        above = []
    return notes


def describe_keys(root: type = RunConfig) -> str:
    """Every key with its type, default and note (the ``--help`` listing)."""
    sections = sections_of(root)
    defaults = _flatten(dataclasses.asdict(root()), "", sections)
    keys = valid_keys(root)
    notes = {name: note for name, note in _field_notes(root).items()}
    for section, cls in sections.items():
        notes.update({f"{section}.{k}": v for k, v in _field_notes(cls).items()})
    lines = []
    for key, default in defaults:
        if root is RunConfig and key.startswith("model.") and key[6:] in DATA_CONVENTIONS:
            continue
        lines.append(f"  {key} ({_type_name(keys[key])}, default {default!r})")
        if key in notes:
            lines.append(f"      {notes[key]}")
    return "\n".join(lines)
