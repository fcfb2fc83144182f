"""Where a model runs and whether bfloat16 pays there: one answer for training, embedding and sampling.

A leaf of the import order (torch only).
"""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device, local_rank: int | None = None) -> torch.device:
    """The torch device a ``device`` option names.

    ``"auto"``: the first CUDA device when there is one, else the CPU. With
    ``local_rank`` (a ``torchrun`` process), a bare ``"cuda"`` becomes
    ``cuda:<local_rank>``. Asking for CUDA where there is none is a
    ``ValueError`` that says so (not a failure at the first tensor moved).
    """
    if str(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name} but CUDA is not available; use device=cpu")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices faster than float32.

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: AMX tiles only. AVX512-BF16
    without AMX is not enough: on such a Xeon ``bench/limits.py`` measures
    bfloat16 matmuls at about half the float32 rate (the training step and
    embedding follow), and without either bfloat16 is emulated, slower still.
    """
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
        except Exception:  # a private helper: treat any surprise as "no"
            return False
    return False
