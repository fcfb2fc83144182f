"""Read and write AstroPT ``ckpt.pt`` checkpoints (the ``astropt`` 2.x package's format).

AstroPT's training script saves a torch pickle::

    {"model": state_dict, "optimizer": ..., "model_args": dict, "iter_num": int,
     "best_val_loss": float, "config": dict, "modality_registry": ModalityRegistry}

where ``model_args["modalities"]`` is a list of ``astropt.model.ModalityConfig``
and the state dict may carry ``_orig_mod.`` prefixes (it was taken from a
``torch.compile`` wrapper). Those class names would resolve to *our*
``astropt.model`` (the two packages share an import name, DESIGN.md section
9), so they are mapped deliberately onto the small stand-in classes below, and
the file is read with ``torch.load(weights_only=True)``: nothing but tensors,
containers, these stand-ins and plain numeric numpy scalars can be built, so a
checkpoint cannot run code.

Weight names, AstroPT -> ours (``{m}`` is the modality, ``images``):

======================================  ==============================
``transformer.wte.{m}.c_fc``            ``tokeniser.fc1``
``transformer.wte.{m}.c_proj``          ``tokeniser.fc2`` ("aim" only)
``transformer.wpe.{m}.wpe``             ``pos_emb``
``transformer.h.{i}.ln_1``              ``blocks.{i}.norm_attn``
``transformer.h.{i}.attn.c_attn``       ``blocks.{i}.attn.qkv``
``transformer.h.{i}.attn.c_proj``       ``blocks.{i}.attn.proj``
``transformer.h.{i}.ln_2``              ``blocks.{i}.norm_mlp``
``transformer.h.{i}.mlp.c_fc``          ``blocks.{i}.mlp.fc``
``transformer.h.{i}.mlp.c_proj``        ``blocks.{i}.mlp.proj``
``transformer.ln_f``                    ``norm_f``
``lm_head.{m}.c_fc`` / ``c_proj``       ``head.fc1`` / ``head.fc2``
======================================  ==============================

Later AstroPT versions name the per-modality parts ``encoders.{m}``,
``embedders.{m}.wpe`` and ``decoders.{m}``; those are read too.

A loaded model records AstroPT's data conventions in its config: images as
``(C, W, H)`` (``transpose_hw=True``: their loader's ``swapaxes(0, 2)``), spiral
order, and embeddings from the middle block averaged over tokens
(``embed_layer="middle"``, their ``generate_embeddings``).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, get_args

import numpy as np
import torch

from astropt.io import atomic_write, load_state_checked
from astropt.model import GPT, GPTConfig, Tokeniser

log = logging.getLogger(__name__)

CKPT_NAME = "ckpt.pt"
IMAGE_MODALITY = "images"
_TORCH_COMPILE_PREFIX = "_orig_mod."
_DDP_PREFIX = "module."

# ----------------------------------------------------------------------------
# Stand-ins for the classes AstroPT pickles into its checkpoints.


@dataclass
class AstroPTModality:
    """Stand-in for ``astropt.model.ModalityConfig`` (one input modality).

    ``input_size``: values per token (``patch_size**2 * n_chan`` for images);
    ``pos_input_size``: values per position input (1: an integer index);
    ``embed_pos``: positions go through a learned table (True for images).
    """

    name: str
    input_size: int
    pos_input_size: int
    patch_size: int
    embed_pos: bool
    loss_weight: float = 1.0


class AstroPTModalityRegistry:
    """Stand-in for ``astropt.model.ModalityRegistry``: ``modalities`` maps name to config."""

    def __init__(self, modalities: list[AstroPTModality]):
        self.modalities = {m.name: m for m in modalities}

    def names(self) -> list[str]:
        return sorted(self.modalities)


class _NumpyDTypeRecord:
    """What a pickled ``numpy.dtype`` rebuilds to here: its name and byte order, nothing else."""

    def __init__(self, name: str, align: bool = False, copy: bool = True):
        self.name = str(name)
        self.byteorder = "="

    def __setstate__(self, state) -> None:
        # numpy's dtype state is (version, byteorder, ...); only the byte order matters.
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|"):
            self.byteorder = state[1]


def _numpy_scalar(dtype: _NumpyDTypeRecord, data: bytes = b"") -> int | float | bool | complex:
    """Rebuild a pickled numpy scalar (e.g. AstroPT's ``best_val_loss``) as a Python number.

    Only boolean and numeric dtypes are accepted: an object dtype could smuggle
    arbitrary objects through, so it is refused.
    """
    if not isinstance(dtype, _NumpyDTypeRecord):
        raise pickle.UnpicklingError("numpy scalar without a plain dtype")
    resolved = np.dtype(dtype.name)
    if resolved.kind not in "biufc":
        raise pickle.UnpicklingError(f"refusing a numpy scalar of dtype {dtype.name!r}")
    if dtype.byteorder in ("<", ">"):
        resolved = resolved.newbyteorder(dtype.byteorder)
    return np.frombuffer(data, dtype=resolved, count=1)[0].item()


# Pickled names -> what they rebuild to under weights_only loading. The two
# numpy module spellings cover numpy 1.x and 2.x writers.
_SAFE_GLOBALS: list[tuple[Any, str]] = [
    (AstroPTModality, "astropt.model.ModalityConfig"),
    (AstroPTModalityRegistry, "astropt.model.ModalityRegistry"),
    (_NumpyDTypeRecord, "numpy.dtype"),
    (_numpy_scalar, "numpy.core.multiarray.scalar"),
    (_numpy_scalar, "numpy._core.multiarray.scalar"),
]
# Names our stand-ins are written under when exporting.
_EXPORT_NAMES = {
    AstroPTModality: ("astropt.model", "ModalityConfig"),
    AstroPTModalityRegistry: ("astropt.model", "ModalityRegistry"),
}


# ----------------------------------------------------------------------------
# Weight names.

# (AstroPT template, our template); "{m}" is the modality name, "{i}" a block index.
_BLOCK_RULES = [
    ("transformer.h.{i}.ln_1", "blocks.{i}.norm_attn"),
    ("transformer.h.{i}.attn.c_attn", "blocks.{i}.attn.qkv"),
    ("transformer.h.{i}.attn.c_proj", "blocks.{i}.attn.proj"),
    ("transformer.h.{i}.ln_2", "blocks.{i}.norm_mlp"),
    ("transformer.h.{i}.mlp.c_fc", "blocks.{i}.mlp.fc"),
    ("transformer.h.{i}.mlp.c_proj", "blocks.{i}.mlp.proj"),
    ("transformer.ln_f", "norm_f"),
]
_MODALITY_RULES = {
    # AstroPT 2.0.x names (what export writes).
    "v2": [
        ("transformer.wte.{m}.c_fc", "tokeniser.fc1"),
        ("transformer.wte.{m}.c_proj", "tokeniser.fc2"),
        ("transformer.wpe.{m}.wpe", "pos_emb"),
        ("lm_head.{m}.c_fc", "head.fc1"),
        ("lm_head.{m}.c_proj", "head.fc2"),
    ],
    # Later AstroPT versions moved the per-modality modules out of `transformer`.
    "v3": [
        ("encoders.{m}.c_fc", "tokeniser.fc1"),
        ("encoders.{m}.c_proj", "tokeniser.fc2"),
        ("embedders.{m}.wpe", "pos_emb"),
        ("decoders.{m}.c_fc", "head.fc1"),
        ("decoders.{m}.c_proj", "head.fc2"),
    ],
}
_PARAM_SUFFIX = r"\.(weight|bias)"


def _compile_rules(rules, modality: str, forward: bool):
    compiled = []
    for theirs, ours in rules:
        source, target = (theirs, ours) if forward else (ours, theirs)
        pattern = re.escape(source.replace("{m}", modality)).replace(r"\{i\}", r"(?P<i>\d+)")
        compiled.append(
            (re.compile(f"^{pattern}{_PARAM_SUFFIX}$"), target.replace("{m}", modality))
        )
    return compiled


def _rename(name: str, rules) -> str | None:
    for pattern, target in rules:
        found = pattern.match(name)
        if found:
            renamed = target.replace("{i}", found.group("i")) if "{i}" in target else target
            return f"{renamed}.{found.group(found.lastindex)}"
    return None


def strip_compile_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop leading ``_orig_mod.`` (``torch.compile``) and ``module.`` (DDP) from every key."""
    cleaned = {}
    for name, tensor in state.items():
        while name.startswith((_TORCH_COMPILE_PREFIX, _DDP_PREFIX)):
            name = name.split(".", 1)[1]
        cleaned[name] = tensor
    return cleaned


def astropt_to_ours(
    state: dict[str, torch.Tensor], modality: str = IMAGE_MODALITY
) -> dict[str, torch.Tensor]:
    """Rename an AstroPT state dict to our :class:`GPT`'s names.

    Raises ``ValueError`` naming every tensor it cannot place (LoRA adapters,
    other modalities, task heads, an LLM backbone...), so nothing is dropped silently.
    """
    state = strip_compile_prefixes(state)
    rules = _compile_rules(_BLOCK_RULES, modality, True)
    for family in _MODALITY_RULES.values():
        rules += _compile_rules(family, modality, True)
    mapped, unplaced = {}, []
    for name, tensor in state.items():
        ours = _rename(name, rules)
        if ours is None:
            unplaced.append(name)
        elif ours in mapped:
            raise ValueError(f"AstroPT checkpoint holds two tensors for {ours} (e.g. {name})")
        else:
            mapped[ours] = tensor
    if unplaced:
        kinds = []
        if any("lora_" in name for name in unplaced):
            kinds.append("LoRA adapter weights (merge them into the base weights first)")
        if any(name.startswith(("llm", "transformer.model", "backbone")) for name in unplaced):
            kinds.append("an LLM backbone")
        if any(name.startswith("task_head") for name in unplaced):
            kinds.append("a fine-tuning task head")
        shown = ", ".join(unplaced[:8]) + (" ..." if len(unplaced) > 8 else "")
        detail = f" ({'; '.join(kinds)})" if kinds else ""
        raise ValueError(
            f"unsupported AstroPT checkpoint{detail}: {len(unplaced)} tensor(s) have no "
            f"place in an image-only AstroPT GPT: {shown}"
        )
    return mapped


def ours_to_astropt(
    state: dict[str, torch.Tensor], modality: str = IMAGE_MODALITY
) -> dict[str, torch.Tensor]:
    """Rename our :class:`GPT` state dict to AstroPT 2.0.x names (``transformer.wte...``)."""
    rules = _compile_rules(_BLOCK_RULES + _MODALITY_RULES["v2"], modality, False)
    mapped = {}
    for name, tensor in state.items():
        theirs = _rename(name, rules)
        if theirs is None:
            raise ValueError(f"{name} has no counterpart in an AstroPT checkpoint")
        mapped[theirs] = tensor
    return mapped


# ----------------------------------------------------------------------------
# Reading.


def _resolve_checkpoint(path_or_file) -> str | IO[bytes]:
    if isinstance(path_or_file, (str, os.PathLike)):
        path = Path(path_or_file)
        if path.is_dir():
            path = path / CKPT_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no AstroPT checkpoint at {path}")
        return str(path)
    return path_or_file


def read_astropt_checkpoint(path_or_file, map_location: str | torch.device = "cpu") -> dict:
    """Safely unpickle an AstroPT ``ckpt.pt`` (a file, a folder holding one, or a binary file object).

    Returns the checkpoint dict with ``ModalityConfig``/``ModalityRegistry``
    rebuilt as :class:`AstroPTModality`/:class:`AstroPTModalityRegistry` and
    numpy scalars as Python numbers. Anything else the pickle names is refused.
    """
    source = _resolve_checkpoint(path_or_file)
    if not hasattr(torch.serialization, "safe_globals"):
        raise RuntimeError("reading AstroPT checkpoints safely needs torch >= 2.5")
    try:
        # Memory-map zip checkpoints: the optimiser state (twice the weights for
        # AdamW) is then never read into memory.
        mmap = isinstance(source, str) and zipfile.is_zipfile(source)
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            checkpoint = torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{source} holds objects the safe checkpoint reader does not build (only tensors, "
            f"containers, AstroPT's modality configs and numeric numpy scalars are allowed): {err}"
        ) from err
    except FileNotFoundError:
        raise
    except Exception as err:  # torch reports a non-checkpoint in many ways (zip, pickle, memo)
        raise ValueError(f"{source} is not a readable torch checkpoint: {err}") from err
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"{source} is not an AstroPT checkpoint (no 'model' state dict)")
    return checkpoint


def _modalities(checkpoint: dict) -> dict[str, AstroPTModality]:
    registry = checkpoint.get("modality_registry")
    if isinstance(registry, AstroPTModalityRegistry):
        return dict(registry.modalities)
    listed = (checkpoint.get("model_args") or {}).get("modalities")
    if listed:
        return {m.name: m for m in listed if isinstance(m, AstroPTModality)}
    return {}


def astropt_config(
    checkpoint: dict,
    *,
    transpose_hw: bool | None = None,
    order: str | None = None,
) -> GPTConfig:
    """Our :class:`GPTConfig` for an AstroPT checkpoint dict (see :func:`read_astropt_checkpoint`).

    ``transpose_hw``: default from the run's ``use_hf`` (their Hugging Face
    loader swaps axes, their file loader does not; True when unrecorded).
    ``order``: default from the run's ``spiral`` flag (spiral when unrecorded).
    Raises ``ValueError`` for variants this library cannot reproduce.
    """
    args = dict(checkpoint.get("model_args") or {})
    run = checkpoint.get("config") or {}
    if not args:
        raise ValueError("AstroPT checkpoint has no 'model_args'")
    backbone = args.get("backbone", "native")
    if backbone != "native" or args.get("llm_model_name"):
        raise ValueError(
            f"unsupported AstroPT checkpoint: LLM backbone ({args.get('llm_model_name') or backbone})"
        )
    if args.get("lora_r", 0):
        raise ValueError(
            f"unsupported AstroPT checkpoint: LoRA (lora_r={args['lora_r']}); merge the "
            "adapters into the base weights first"
        )
    modalities = _modalities(checkpoint)
    if not modalities:
        raise ValueError("AstroPT checkpoint records no modality configuration")
    if set(modalities) != {IMAGE_MODALITY}:
        raise ValueError(
            "unsupported AstroPT checkpoint: modalities "
            f"{sorted(modalities)}; only the image-only model ({IMAGE_MODALITY!r}) is supported"
        )
    image = modalities[IMAGE_MODALITY]
    if not image.embed_pos:
        raise ValueError("unsupported AstroPT checkpoint: image positions are not a learned table")
    n_chan = int(args.get("n_chan", run.get("n_chan", 1)))
    if image.input_size != image.patch_size**2 * n_chan:
        # Trust the modality config (it sized the weights); recover the channels from it.
        channels = image.input_size / image.patch_size**2
        if channels != int(channels):
            raise ValueError(
                f"AstroPT image modality has input_size {image.input_size}, not a multiple of "
                f"patch_size**2 = {image.patch_size**2}"
            )
        n_chan = int(channels)
    tokeniser = args.get("tokeniser", "aim")
    if tokeniser not in get_args(Tokeniser):
        raise ValueError(f"unsupported AstroPT tokeniser {tokeniser!r} (aim and affine are)")
    attn_type = args.get("attn_type", "causal")
    if attn_type == "prefix":
        # AstroPT 2.0.x calls its blocks with block_mask=None, so "prefix" models
        # were trained (and run) with full bidirectional attention (DESIGN.md section 8).
        log.warning("AstroPT 'prefix' attention ran as full attention; loading it as 'full'")
        attn_type = "full"
    elif attn_type != "causal":
        raise ValueError(f"unsupported AstroPT attention type {attn_type!r}")
    state = strip_compile_prefixes(checkpoint["model"])
    bias = any(name.endswith("ln_f.bias") for name in state)
    if transpose_hw is None:
        transpose_hw = bool(run.get("use_hf", True))
    if order is None:
        order = "spiral" if run.get("spiral", True) else "raster"
    return GPTConfig(
        block_size=int(args.get("block_size", 1024)),
        n_layer=int(args.get("n_layer", 12)),
        n_head=int(args.get("n_head", 12)),
        n_embd=int(args.get("n_embd", 768)),
        dropout=float(args.get("dropout", 0.0)),
        bias=bias,
        tokeniser=tokeniser,
        attn_type=attn_type,
        objective="ar",
        patch_size=int(image.patch_size),
        n_chan=n_chan,
        order=order,
        transpose_hw=bool(transpose_hw),
        embed_layer="middle",
    )


def load_astropt_checkpoint(
    path_or_file,
    map_location: str | torch.device = "cpu",
    *,
    transpose_hw: bool | None = None,
    order: str | None = None,
) -> GPT:
    """An AstroPT ``ckpt.pt`` (file, folder holding one, or file object) as our :class:`GPT`.

    The model gives the same next-patch predictions as AstroPT's ``GPT`` on the
    same tokens, and ``model.embed(tokens)`` equals its
    ``generate_embeddings`` (middle block, mean over tokens). Its config
    records ``transpose_hw``/``order`` (see :func:`astropt_config`) so loaders
    feed images in AstroPT's layout. Unsupported variants (LLM backbone,
    several modalities, LoRA, task heads, missing tensors) raise ``ValueError``.
    """
    checkpoint = read_astropt_checkpoint(path_or_file, map_location=map_location)
    config = astropt_config(checkpoint, transpose_hw=transpose_hw, order=order)
    state = astropt_to_ours(checkpoint["model"], IMAGE_MODALITY)
    model = GPT(config)
    source = path_or_file if isinstance(path_or_file, (str, os.PathLike)) else "checkpoint"
    load_state_checked(model, state, source=f"AstroPT checkpoint {source}")
    return model.to(map_location)


# ----------------------------------------------------------------------------
# Writing.


class _AstroPTPickler(pickle._Pickler):
    """Pickler writing our stand-ins under AstroPT's class names.

    The C pickler insists that a class's recorded name imports back to the
    same object, which ``astropt.model.ModalityConfig`` cannot (that name is
    *our* module here), so the pure-Python pickler is used and the GLOBAL
    opcode for the stand-ins is written directly. Torch saves with protocol 2.
    """

    def save_global(self, obj, name=None):
        target = _EXPORT_NAMES.get(obj) if isinstance(obj, type) else None
        if target is None:
            return super().save_global(obj, name)
        module, qualname = target
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)


class _AstroPTPickleModule:
    """The ``pickle_module`` handed to ``torch.save`` (it needs ``Pickler`` and ``dump``)."""

    Pickler = _AstroPTPickler

    @staticmethod
    def dump(obj, file, protocol=2):
        _AstroPTPickler(file, protocol=protocol).dump(obj)


def astropt_checkpoint_dict(
    model: GPT,
    *,
    iter_num: int = 0,
    best_val_loss: float = float("nan"),
    config: dict | None = None,
) -> dict:
    """The dict AstroPT's training script would have saved for ``model`` (see module docstring).

    ``optimizer`` is None (a fresh AstroPT run cannot resume an optimiser from
    it, but loads the weights). ``config`` entries override the recorded run
    configuration (``spiral``, ``use_hf``, ``n_chan``, ...).
    """
    cfg = model.config
    if cfg.objective != "ar" or cfg.attn_type != "causal":
        raise ValueError(
            "only causal next-patch models have an AstroPT counterpart; this one is "
            f"objective={cfg.objective!r}, attn_type={cfg.attn_type!r}"
        )
    if not cfg.astropt_format:
        raise ValueError(
            "a flux-aware model (flux_tokens, flux_targets or token_scale='survey') has no "
            "AstroPT counterpart: AstroPT reads and predicts per-patch normalised patches only"
        )
    modality = AstroPTModality(
        name=IMAGE_MODALITY,
        input_size=cfg.patch_dim,
        pos_input_size=1,
        patch_size=cfg.patch_size,
        embed_pos=True,
        loss_weight=1.0,
    )
    model_args = dict(
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_embd=cfg.n_embd,
        n_chan=cfg.n_chan,
        block_size=cfg.block_size,
        dropout=cfg.dropout,
        modalities=[modality],
        attn_type="causal",
        tokeniser=cfg.tokeniser,
        # AstroPT's own script leaves `bias` out (its GPTConfig default, False,
        # applies); recording it lets a bias=True model load there too.
        bias=cfg.bias,
    )
    run = {
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": cfg.n_embd,
        "n_chan": cfg.n_chan,
        "block_size": cfg.block_size,
        "dropout": cfg.dropout,
        "bias": cfg.bias,
        "tokeniser": cfg.tokeniser,
        "attn_type": "causal",
        "spiral": cfg.order == "spiral",
        # Their Hugging Face loader (use_hf) is the one that swaps image axes.
        "use_hf": cfg.transpose_hw,
    }
    side = math.isqrt(cfg.block_size)
    if side * side == cfg.block_size:
        run["image_size"] = side * cfg.patch_size
    run.update(config or {})
    state = {
        name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
    }
    return {
        "model": ours_to_astropt(state),
        "optimizer": None,
        "model_args": model_args,
        "iter_num": int(iter_num),
        "best_val_loss": float(best_val_loss),
        "config": run,
        "modality_registry": AstroPTModalityRegistry([modality]),
    }


def export_astropt_checkpoint(model: GPT, path: str | os.PathLike, **kwargs) -> Path:
    """Write ``model`` as an AstroPT ``ckpt.pt`` that ``astropt`` 2.0.x loads strictly.

    ``path``: a file, or a folder (``ckpt.pt`` is written inside). Keyword
    arguments go to :func:`astropt_checkpoint_dict`. The file is written to a
    temporary name and renamed into place. Returns the file's path.
    """
    path = Path(path)
    if path.is_dir() or path.suffix == "":
        path = path / CKPT_NAME
    return write_astropt_checkpoint(astropt_checkpoint_dict(model, **kwargs), path)


def write_astropt_checkpoint(checkpoint: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` a checkpoint dict, writing the stand-ins under AstroPT's class names.

    Atomic (temporary file, then rename). Returns ``path``.
    """
    path = Path(path)

    def write(tmp):
        torch.save(checkpoint, tmp, pickle_module=_AstroPTPickleModule, pickle_protocol=2)

    atomic_write(path, write)
    return path


__all__ = [
    "AstroPTModality",
    "AstroPTModalityRegistry",
    "astropt_checkpoint_dict",
    "astropt_config",
    "astropt_to_ours",
    "export_astropt_checkpoint",
    "load_astropt_checkpoint",
    "ours_to_astropt",
    "read_astropt_checkpoint",
    "strip_compile_prefixes",
    "write_astropt_checkpoint",
]
