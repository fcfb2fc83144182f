"""What a run reports: ``metrics.jsonl`` rows, speed and MFU, reconstruction previews.

``metrics.jsonl`` has one row per logged step: ``step, lr, tokens, flops,
time_s`` and, after the first step, ``train_loss, grad_norm, tokens_per_s,
mfu`` (plus ``val_loss`` on evaluation steps). TensorBoard and Weights & Biases
receive the same numbers when ``tensorboard=true`` / ``wandb=true``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astropt.config import RunConfig
from astropt.io import atomic_write_text, save_figure
from astropt.model import GPT, mae_mask

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"


class MetricsLog:
    """``OUT/metrics.jsonl`` and the optional TensorBoard / W&B writers (rank 0 only)."""

    def __init__(self, out: Path, enabled: bool):
        self.path = Path(out) / METRICS_NAME
        self.enabled = enabled
        self._writers: list[Any] = []

    def open(self, cfg: RunConfig) -> None:
        if not self.enabled:
            return
        out = self.path.parent
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writers.append(("tb", SummaryWriter(str(out / "tensorboard"))))
            except ImportError:
                log.warning("tensorboard=true but tensorboard is not installed: skipped")
        if cfg.wandb:
            try:
                import wandb

                run = wandb.init(
                    project=cfg.wandb_project,
                    config=cfg.to_dict(),
                    dir=str(out),
                    resume="allow",
                    id=out.resolve().name,
                )
                self._writers.append(("wandb", run))
            except ImportError:
                log.warning("wandb=true but wandb is not installed: skipped")

    def record(self, row: dict) -> None:
        """Append ``row`` (which has a ``step``) to every destination."""
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        for kind, writer in self._writers:
            if kind == "tb":
                for key, value in numbers.items():
                    writer.add_scalar(key, value, row["step"])
            else:
                writer.log(numbers, step=row["step"])

    def close(self) -> None:
        for kind, writer in self._writers:
            writer.close() if kind == "tb" else writer.finish()
        self._writers = []

    def truncate(self, step: int) -> None:
        """Drop rows past ``step`` (work a resumed run redoes) and lines cut short by a crash."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if int(row.get("step", 0)) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))


class Throughput:
    """Tokens per second since the last reading."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start, self.tokens = time.perf_counter(), 0

    def restart_clock(self) -> None:
        """Leave time spent outside training (checkpoint writes) out of the speed."""
        self.start = time.perf_counter()

    def rate(self) -> float:
        return self.tokens / max(time.perf_counter() - self.start, 1e-9)


def measure_matmul_peak(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int | None = None,
    seconds: float = 0.3,
) -> float:
    """Measured dense matmul throughput in FLOP/s (best of several timed bursts).

    ``size``: side of the square matrices (default 4096 on CUDA, 1024 on CPU).
    The basis of model FLOPs utilisation when no ``peak_flops`` is configured.
    """
    device = torch.device(device)
    n = size or (4096 if device.type == "cuda" else 1024)
    # A private generator: measuring must not move the training RNG.
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device, dtype)
    b = torch.randn(n, n, generator=generator).to(device, dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        a @ b
    sync()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        reps = 4
        sync()
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - start) / reps)
        if time.perf_counter() > deadline:
            break
    return 2.0 * n**3 / best


# =====================================================================
# Reconstruction previews
# =====================================================================
@torch.no_grad()
def reconstruct(
    model: GPT, tokens: torch.Tensor, seed: int = 0, stats: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's full-sequence reconstruction of ``tokens`` ``(B, N, D)``, normalised units.

    ``ar``: position 0 is the true first patch, position ``t > 0`` the
    prediction from patches ``< t``. ``mae``: masked positions predicted, the
    rest kept; also returns the ``(B, N)`` mask (None for ``ar``). ``stats``:
    the patches' statistics (flux-aware models, :meth:`GPT.token_stats`).
    """
    if model.config.objective == "ar":
        inputs = None if stats is None else stats[:, :-1]
        predictions, _ = model(tokens[:, :-1], prefix_len=1, stats=inputs)
        return torch.cat([tokens[:, :1], predictions.to(tokens.dtype)], dim=1), None
    generator = torch.Generator(device=tokens.device).manual_seed(seed)
    mask = mae_mask(tokens.shape[:2], model.config.mask_ratio, generator, tokens.device)
    predictions, _ = model(tokens, mask=mask, stats=stats)
    return torch.where(mask[..., None], predictions.to(tokens.dtype), tokens), mask


def render_preview(
    model: GPT,
    batch: Any,
    path: Path,
    n: int = 6,
    autocast: Callable = nullcontext,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> Path:
    """Save a PNG: rows of validation galaxies, the model's reconstruction (and MAE input)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from astropt.display import percentile_stretch
    from astropt.tokens import tokens_to_images

    cfg = model.config
    tokens = batch.tokens[:n].to(device)
    mean, std = batch.mean[:n].to(device), batch.std[:n].to(device)
    was_training = model.training
    model.eval()
    tokens, stats = model.prepare(tokens, mean, std)  # the model's units
    with autocast():
        recon, mask = reconstruct(model, tokens.float(), seed=seed, stats=stats)
    model.train(was_training)
    image_hw = tuple(batch.images.shape[-2:])

    def to_images(patches: torch.Tensor) -> np.ndarray:
        pixels = model.tokens_to_pixels(patches.float(), mean, std)
        images = tokens_to_images(pixels, image_hw, cfg.patch_size, cfg.order, cfg.transpose_hw)
        return images.cpu().numpy()

    rows = [("galaxy", to_images(tokens)), ("model", to_images(recon))]
    if mask is not None:
        rows.insert(1, ("masked input", to_images(torch.where(mask[..., None], 0.0, tokens))))
    truth = rows[0][1]
    count = truth.shape[0]
    fig, axes = plt.subplots(
        len(rows), count, figsize=(1.6 * count, 1.7 * len(rows)), squeeze=False
    )
    # One stretch per galaxy, from its true pixels, applied to every row.
    rows = [(title, percentile_stretch(images, truth, (1.0, 99.5))) for title, images in rows]
    for column in range(count):
        for row_index, (title, images) in enumerate(rows):
            image = np.clip(images[column], 0.0, 1.0)
            image = np.moveaxis(image, 0, -1)
            if image.shape[-1] != 3:
                image = image[..., 0]
            ax = axes[row_index][column]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)
