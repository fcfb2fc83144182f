"""Complete galaxies from their centre: autoregressive patch generation.

In spiral order the first tokens of a sequence are the centre of the stamp,
so a short prefix is "the galaxy" and an autoregressive (``objective="ar"``)
model can continue it outwards, one patch at a time. AstroPT 2.0.9's own
``generate`` returns its input unchanged; this module is the working version.

* :func:`complete` continues normalised patch sequences. With the key-value
  cache (default) each new patch costs one token's forward pass; with
  ``use_cache=False`` the whole sequence is recomputed at every step (the
  slow path that the cached one is checked against).
* :func:`completion_grid` reads galaxies through the data pipeline, completes
  them from their central ``prefix`` patches and writes a PNG grid plus the
  arrays (``.npz``); ``sample.py`` is its command line.

Units. Tokens are per-patch normalised (zero mean, unit std over the
``P*P*C`` values of each patch; :mod:`astropt.tokens`), and so are the
model's predictions. Shown "as AstroPT does" they are folded back unchanged;
shown in pixel units each patch is unnormalised with the *true* per-patch
mean and std of the original image, which the model never predicts (so the
brightness of each hidden patch comes from the data, its structure from the
model). The figure title says this.
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astropt.display import percentile_stretch, survey_colour_order
from astropt.export import MODEL_DATA_FLAGS, data_config_from_options, model_data_section
from astropt.io import atomic_write
from astropt.model import GPT, KVCache
from astropt.options import Command, run_command
from astropt.tokens import denormalise_patches, survey_unstretch, tokens_to_images

# Display stretch of per-patch normalised values: +-NORM_CLIP std maps to [0, 1].
NORM_CLIP = 3.0
# Colour of patches that were blanked (not given to the model) in the "kept centre" panels.
BLANK_RGB = (1.0, 1.0, 1.0)


# --------------------------------------------------------------------- generation
def check_can_complete(model: GPT) -> None:
    """Raise a ValueError that says why ``model`` cannot complete sequences, if it cannot."""
    cfg = model.config
    if cfg.objective != "ar":
        raise ValueError(
            f"completion needs an autoregressive model (objective='ar'); this model has "
            f"objective={cfg.objective!r}, which reconstructs masked patches and does not "
            "predict the next one"
        )
    if cfg.attn_type == "full":
        raise ValueError(
            "completion needs causal or prefix attention; an 'ar' model with attn_type='full' "
            "lets every token see the future, so its next-patch predictions are meaningless"
        )
    if cfg.flux_tokens and not cfg.flux_targets:
        raise ValueError(
            "completion needs each new patch's brightness, which a flux-aware model "
            "with flux_tokens=True reads but does not predict (flux_targets=True predicts it)"
        )


def _check_lengths(model: GPT, n_prefix: int, n_new: int) -> None:
    cfg = model.config
    if n_prefix < 1:
        raise ValueError("completion needs a prefix of at least one patch")
    if not isinstance(n_new, int) or isinstance(n_new, bool) or n_new < 0:
        raise ValueError(f"n_new must be a non-negative integer, got {n_new!r}")
    # The last generated patch is never fed back, so the model sees positions
    # 0 .. n_prefix + n_new - 2: they must fit in the positional table.
    if n_prefix + n_new - 1 > cfg.block_size:
        raise ValueError(
            f"cannot generate {n_new} patches after a {n_prefix}-patch prefix: the model's "
            f"block_size is {cfg.block_size}, so prefix + n_new can be at most "
            f"{cfg.block_size + 1} (at most {cfg.block_size + 1 - n_prefix} new patches here)"
        )


def _prefix_residual_scale(predictions: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """Per-galaxy RMS of the model's teacher-forced errors on the prefix, ``(B, 1, 1)``.

    ``predictions[:, t]`` predicts ``prefix[:, t + 1]``. With a one-patch
    prefix there is nothing to measure and the scale is 1.0, the std of a
    normalised patch (what predicting zero would leave).
    """
    batch = prefix.shape[0]
    if prefix.shape[1] < 2:
        return prefix.new_ones(batch, 1, 1)
    errors = predictions[:, :-1].float() - prefix[:, 1:].float()
    return errors.pow(2).mean(dim=(1, 2), keepdim=True).sqrt().to(prefix.dtype)


def _noise(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype
) -> torch.Tensor:
    # Draw on the generator's own device so a CPU generator drives a CUDA model
    # with the same numbers it would give on the CPU.
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where).to(device=device, dtype=dtype)


@torch.no_grad()
def complete(
    model: GPT,
    prefix_patches: torch.Tensor,
    n_new: int,
    use_cache: bool = True,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    residual_scale: float | None = None,
    prefix_stats: torch.Tensor | None = None,
    return_stats: bool = False,
):
    """Continue patch sequences (in the model's units) by ``n_new`` patches.

    ``prefix_patches``: ``(B, K, patch_dim)`` per-patch normalised tokens in
    the model's order (the first ``K`` of a spiral sequence: the galaxy's
    centre), ``K >= 1``. Returns the **full** sequence ``(B, K + n_new,
    patch_dim)`` on the input's device and dtype: ``out[:, :K]`` is the
    prefix, bit for bit, and ``out[:, K:]`` the generated patches, so the
    result folds straight back into an image with
    :func:`astropt.tokens.unpatchify` when ``K + n_new`` is the image's patch count.

    ``use_cache``: with a pre-allocated :class:`~astropt.model.KVCache`, the
    prefix runs once and each new patch is one token's forward pass; ``False``
    recomputes the whole sequence at every step, heading only its last position
    (same numbers within float tolerance; for checking).

    ``temperature``: 0 (default) is deterministic, each new patch being the
    model's prediction. Above 0, Gaussian noise of standard deviation
    ``temperature * residual_scale`` is added to every prediction before it
    is fed back, for diverse completions. ``residual_scale`` is in normalised
    units; ``None`` (default) measures it per galaxy as the RMS error of the
    model's own next-patch predictions over its prefix (``K >= 2``; with
    ``K == 1`` it is 1.0, the std of a normalised patch). ``generator`` drives
    the noise (a CPU generator works with a model on any device).

    Only ``objective="ar"`` models with causal or prefix attention can
    complete; a prefix-attention model attends bidirectionally over the ``K``
    given patches. ``K + n_new - 1`` must not exceed ``block_size``.
    Dropout is off during generation and the model's train/eval mode is restored.

    Flux-aware models: ``prefix_stats`` ``(B, K, 2 * n_chan)`` are the prefix's
    band statistics (:meth:`GPT.prepare`), which a ``flux_tokens`` model reads;
    a ``flux_targets`` model predicts each new patch's statistics and, with
    ``return_stats``, returns ``(sequence, stats)`` where ``stats`` is
    ``(B, K + n_new, 2 * n_chan)``: the prefix's given ones (zeros when not
    given) then the predicted ones (:func:`astropt.tokens.band_statistics` units).
    """
    if prefix_patches.ndim != 3:
        raise ValueError(
            f"prefix_patches must be (B, K, patch_dim), got shape {tuple(prefix_patches.shape)}"
        )
    batch, n_prefix, dim = prefix_patches.shape
    check_can_complete(model)
    _check_lengths(model, n_prefix, n_new)
    if dim != model.config.patch_dim:
        raise ValueError(
            f"prefix patches have {dim} values but the model expects {model.config.patch_dim}"
        )
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    cfg = model.config
    if cfg.flux_tokens and prefix_stats is None:
        raise ValueError("a flux_tokens model needs prefix_stats (GPT.prepare) to complete")
    if return_stats and not cfg.flux_targets:
        raise ValueError("return_stats needs a model that predicts statistics (flux_targets)")
    if n_new == 0:
        if return_stats:
            given = (
                prefix_stats
                if prefix_stats is not None
                else prefix_patches.new_zeros(batch, n_prefix, cfg.stats_dim)
            )
            return prefix_patches.clone(), given.clone()
        return prefix_patches.clone()

    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    was_training = model.training
    model.eval()
    try:
        sequence = prefix_patches.to(device=device, dtype=dtype)
        # Every position the model will see: the last new patch is never fed back.
        capacity = n_prefix + n_new - 1
        cache = KVCache(model.config.n_layer, capacity) if use_cache else None
        # prefix_len only matters for attn_type="prefix": the known patches see each other.
        # The residual scale needs predictions over the whole prefix; else the last one does.
        need_all = temperature > 0 and residual_scale is None
        with_stats = cfg.flux_targets
        stats_in = None
        if cfg.flux_tokens:
            stats_in = prefix_stats.to(device=device, dtype=torch.float32)

        def run(patches, stats, **kwargs):
            """(patch predictions, predicted stats or None) of a forward pass."""
            out = model(patches, stats=stats, prefix_len=n_prefix, with_stats=with_stats, **kwargs)
            return (out[0], out[1]) if with_stats else (out[0], None)

        predictions, next_stats = run(sequence, stats_in, cache=cache, last_only=not need_all)
        new_stats: list[torch.Tensor] = []
        scale = None
        if temperature > 0:
            scale = (
                _prefix_residual_scale(predictions, sequence)
                if residual_scale is None
                else torch.full((batch, 1, 1), float(residual_scale), device=device, dtype=dtype)
            )
        new: list[torch.Tensor] = []
        for step in range(n_new):
            patch = predictions[:, -1:]
            if scale is not None:
                patch = patch + temperature * scale * _noise(
                    (batch, 1, dim), generator, device, dtype
                )
            new.append(patch)
            patch_stats = None if next_stats is None else next_stats[:, -1:]
            if patch_stats is not None:
                new_stats.append(patch_stats)
            if step == n_new - 1:
                break  # the last patch is returned, never fed back
            step_stats = patch_stats if cfg.flux_tokens else None
            if use_cache:
                predictions, next_stats = run(patch, step_stats, cache=cache)
            else:
                # Without a cache the whole sequence runs again; only its last
                # position needs the head.
                sequence = torch.cat([sequence, patch], dim=1)
                if cfg.flux_tokens:
                    stats_in = torch.cat([stats_in, step_stats], dim=1)
                predictions, next_stats = run(sequence, stats_in, last_only=True)
    finally:
        model.train(was_training)
    generated = torch.cat(new, dim=1).to(device=prefix_patches.device, dtype=prefix_patches.dtype)
    full = torch.cat([prefix_patches, generated], dim=1)
    if not return_stats:
        return full
    given = (
        prefix_stats.float()
        if prefix_stats is not None
        else prefix_patches.new_zeros(batch, n_prefix, cfg.stats_dim, dtype=torch.float32)
    )
    predicted = torch.cat(new_stats, dim=1).float().to(given.device)
    return full, torch.cat([given, predicted], dim=1)


# --------------------------------------------------------------- completion grid
@dataclass
class CompletionGrid:
    """What :func:`completion_grid` wrote and measured."""

    png: Path
    npz: Path
    n: int  # galaxies completed
    prefix: int  # patches kept from the centre
    n_patches: int  # patches per galaxy
    mse_completion: float  # the model's token units, over hidden patches of all galaxies
    mse_blank: float  # the same for a blank (all-zero) completion
    # pixel units, over hidden patches: the completion (for per-patch models without a flux
    # head, unnormalised with the true mean/std) and a blank at the survey-wide mean level
    mse_pixels_completion: float = float("nan")
    mse_pixels_blank: float = float("nan")


def _read_galaxies(data_cfg, split: str, n: int, seed: int):
    """The first ``n`` galaxies of ``split``: ``(tokens, mean, std, images, ids)`` on the CPU."""
    from astropt.data import make_loader

    loader = make_loader(
        data_cfg,
        split,
        batch_size=n,
        shuffle=False,
        augment=False,
        seed=seed,
        drop_last=False,
        max_samples=n,
    )
    parts: dict[str, list] = {"tokens": [], "mean": [], "std": [], "images": [], "ids": []}
    have = 0
    for batch in loader:
        take = min(n - have, batch.tokens.shape[0])
        for name in ("tokens", "mean", "std", "images"):
            parts[name].append(getattr(batch, name)[:take].detach().cpu().float())
        parts["ids"].extend(list(batch.ids)[:take])
        have += take
        if have >= n:
            break
    if have == 0:
        raise ValueError(f"no galaxies could be read from split {split!r} of {data_cfg.path!r}")
    if have < n:
        warnings.warn(
            f"split {split!r} holds only {have} galaxies; completing {have}", stacklevel=3
        )
    tokens, mean, std, images = (torch.cat(parts[k]) for k in ("tokens", "mean", "std", "images"))
    return tokens, mean, std, images, parts["ids"]


def _is_display_rgb(images: np.ndarray) -> bool:
    """True for pixels already in [0, 1] (decoded JPEG/PNG colour, shown as stored)."""
    return images.shape[1] == 3 and images.min() >= 0.0 and images.max() <= 1.0


def _to_display(
    images: np.ndarray, kind: str, rgb: bool, reference: np.ndarray | None = None
) -> np.ndarray:
    """``(B, C, H, W)`` values to ``(B, H, W, 3)`` display colours in [0, 1].

    ``kind="normalised"``: +-NORM_CLIP std to [0, 1]. ``kind="pixel"``:
    decoded colour images are shown as they are; other data (float bands)
    get a linear stretch between the 0.5 and 99.5 percentiles of the
    galaxy's ``reference`` image, and three float bands g, r, z are shown as
    z, r, g in R, G, B (the survey's colour convention).
    """
    if kind == "normalised":
        shown = images / (2 * NORM_CLIP) + 0.5
    elif rgb:
        shown = images
    else:
        shown = percentile_stretch(images, reference)
        if images.shape[1] == 3:
            shown = survey_colour_order(shown)
    if shown.shape[1] == 3:
        colour = shown
    else:  # one band, or a band count with no colour convention: grey from the band mean
        colour = np.repeat(shown.mean(axis=1, keepdims=True), 3, axis=1)
    return np.clip(colour, 0.0, 1.0).transpose(0, 2, 3, 1)


def _blank_outside(display: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Paint pixels outside the kept centre (``kept``: ``(B, H, W)`` bool) in the blank colour."""
    out = display.copy()
    out[~kept] = BLANK_RGB
    return out


def _plot_grid(panels: list[tuple[str, np.ndarray]], title: str, ids: list, out_png: Path) -> None:
    """One column per galaxy, one row per panel kind; written atomically as PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    n_rows, n_cols = len(panels), panels[0][1].shape[0]
    cell, label_width = 1.25, 1.0  # inches
    width = max(cell * n_cols + label_width, 6.0)
    # About 16 characters per inch at 8 points; the title gets as many lines as it needs.
    lines = textwrap.wrap(title, width=int(width * 16))
    title_height = 0.2 + 0.16 * len(lines)
    height = cell * n_rows + title_height
    fig = Figure(figsize=(width, height), dpi=100)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for row, (label, images) in enumerate(panels):
        for col in range(n_cols):
            ax = axes[row, col]
            ax.imshow(images[col], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize=7)
            if row == 0:
                ax.set_title(str(ids[col])[:14], fontsize=6)
    fig.suptitle("\n".join(lines), fontsize=8, y=1 - 0.08 / height, va="top")
    grid_width = min(cell * n_cols, width - label_width - 0.1)
    fig.subplots_adjust(
        left=label_width / width,
        right=(label_width + grid_width) / width,
        bottom=0.02 / height,
        top=1 - title_height / height,
        wspace=0.04,
        hspace=0.04,
    )
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png"))


def _fold_completion(cfg, tokens, completion, completion_pixels, images, prefix: int) -> dict:
    """The grid's images ``(n, C, H, W)``: true tokens and completion folded back in the model's
    units, the completion in pixel units (``completion_pixels``: patches ``(n, N, D)``), the
    original pixels, and ``kept`` ``(n, H, W)``: the pixels of the ``prefix`` patches the model
    was given."""
    image_hw = (images.shape[-2], images.shape[-1])

    def fold(seq: torch.Tensor, **pixel_units) -> np.ndarray:
        return tokens_to_images(
            seq, image_hw, cfg.patch_size, cfg.order, cfg.transpose_hw, **pixel_units
        ).numpy()

    kept_tokens = torch.zeros(tokens.shape)
    kept_tokens[:, :prefix] = 1.0
    return {
        "kept": fold(kept_tokens).max(axis=1) > 0.5,
        "normalised": fold(tokens),
        "completion_normalised": fold(completion),
        "completion_pixels": fold(completion_pixels),
        "originals": images.numpy(),
    }


def _grid_panels(folded: dict) -> list[tuple[str, np.ndarray]]:
    """The six rows of the grid: original, kept centre and completion, normalised then pixels."""
    originals, kept = folded["originals"], folded["kept"]
    rgb = _is_display_rgb(originals)

    def show_pixels(x: np.ndarray) -> np.ndarray:
        return _to_display(x, "pixel", rgb, reference=originals)

    normalised = _to_display(folded["normalised"], "normalised", rgb)
    return [
        ("original\n(normalised)", normalised),
        ("kept centre\n(normalised)", _blank_outside(normalised, kept)),
        (
            "completion\n(normalised)",
            _to_display(folded["completion_normalised"], "normalised", rgb),
        ),
        ("original\n(pixels)", show_pixels(originals)),
        ("kept centre\n(pixels)", _blank_outside(show_pixels(originals), kept)),
        ("completion\n(pixels)", show_pixels(folded["completion_pixels"])),
    ]


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a file handle: numpy would append ".npz" to a name
            np.savez_compressed(handle, **arrays)

    atomic_write(path, write)


def completion_grid(
    model: GPT,
    data_cfg,
    out_png: str | Path,
    n: int = 16,
    prefix: int = 16,
    split: str = "test",
    temperature: float = 0.0,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> CompletionGrid:
    """Complete ``n`` galaxies from their central ``prefix`` patches; write a PNG grid and ``.npz``.

    ``data_cfg``: an :class:`astropt.data.DataConfig` for the source; its
    ``patch_size``, ``order`` and ``transpose_hw`` are replaced by the
    model's, augmentation is off and galaxies are read in stored order (the
    first ``n`` of ``split``). ``temperature``/``seed``: noise of
    :func:`complete` and its generator. ``device``: default the model's.

    The PNG has one column per galaxy and six rows: original, kept centre
    (hidden patches blank) and completion, first per-patch normalised (as
    AstroPT shows them), then in pixel units (each patch unnormalised with the
    original image's own per-patch mean and std). The ``.npz`` beside it
    (same name) holds ``ids``, ``prefix``, ``tokens`` (true, normalised),
    ``completion`` (normalised, prefix included), ``mean``/``std`` (per patch),
    ``images`` (original pixels ``(n, C, H, W)``), ``completion_pixels`` and
    ``completion_normalised`` (folded, ``(n, C, H, W)``), ``kept`` (``(n, H,
    W)`` bool) and per-galaxy ``mse_completion``/``mse_blank`` over hidden patches.
    """
    check_can_complete(model)  # before reading any data
    out_png = Path(out_png)
    cfg = model.config
    data_cfg = dataclasses.replace(
        data_cfg,
        patch_size=cfg.patch_size,
        order=cfg.order,
        transpose_hw=cfg.transpose_hw,
        augment=False,
    )
    tokens, mean, std, images, ids = _read_galaxies(data_cfg, split, n, seed)
    n_got, n_patches, _ = tokens.shape
    if not 1 <= prefix < n_patches:
        raise ValueError(f"prefix must be between 1 and {n_patches - 1} patches, got {prefix}")
    if device is not None:
        model = model.to(device)
    run_device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    inputs, stats = model.prepare(tokens, mean, std)  # the model's units
    completed = complete(
        model,
        inputs[:, :prefix].to(run_device),
        n_patches - prefix,
        temperature=temperature,
        generator=generator,
        prefix_stats=None if stats is None else stats[:, :prefix].to(run_device),
        return_stats=cfg.flux_targets,
    )
    completion, completion_stats = (
        (completed[0].cpu(), completed[1].cpu()) if cfg.flux_targets else (completed.cpu(), None)
    )
    true_pixels = denormalise_patches(tokens, mean, std)  # the data, in pixel units
    if cfg.token_scale == "survey":
        completion_pixels = model.tokens_to_pixels(completion)
    elif completion_stats is not None:  # the model's own brightness for the hidden patches
        hidden = model.tokens_to_pixels(completion[:, prefix:], stats=completion_stats[:, prefix:])
        completion_pixels = torch.cat([true_pixels[:, :prefix], hidden], dim=1)
    else:
        completion_pixels = model.tokens_to_pixels(completion, mean, std)

    hidden_true, hidden_pred = inputs[:, prefix:], completion[:, prefix:]
    mse_completion = (hidden_pred - hidden_true).pow(2).mean(dim=(1, 2))
    mse_blank = hidden_true.pow(2).mean(dim=(1, 2))
    hidden_pixels = true_pixels[:, prefix:]
    mse_pixels_completion = (completion_pixels[:, prefix:] - hidden_pixels).pow(2).mean((1, 2))
    blank_level = survey_unstretch(
        torch.zeros(()), cfg.survey_softening, cfg.survey_offset, cfg.survey_scale
    )
    mse_pixels_blank = (hidden_pixels - blank_level).pow(2).mean(dim=(1, 2))
    folded = _fold_completion(cfg, inputs, completion, completion_pixels, images, prefix)
    noise = "deterministic" if temperature == 0 else f"temperature {temperature:g}, seed {seed}"
    if cfg.token_scale == "survey":
        units = "survey-wide stretch"
        brightness = "the model predicts each patch's brightness (survey-wide token units)"
    elif cfg.flux_targets:
        units = "per-patch normalised"
        brightness = "each hidden patch given the band means and stds the flux head predicts"
    else:
        units = "per-patch normalised"
        brightness = (
            "each patch unnormalised with the original's own per-patch mean/std (the model "
            "predicts shape within a patch, not its brightness)"
        )
    title = (
        f"Completion from the central {prefix} of {n_patches} patches ({cfg.order} order, "
        f"{noise}). Rows 1-3: model units ({units}, +-{NORM_CLIP:g}); "
        f"rows 4-6: pixel units,\n{brightness}. "
        f"MSE on hidden patches (model units): completion {mse_completion.mean():.3f}, "
        f"blank {mse_blank.mean():.3f}; (pixels): completion {mse_pixels_completion.mean():.4f}, "
        f"survey-mean blank {mse_pixels_blank.mean():.4f}"
    )
    _plot_grid(_grid_panels(folded), title, ids, out_png)

    npz_path = out_png.with_suffix(".npz")
    _write_npz(
        npz_path,
        ids=np.asarray([str(i) for i in ids]),
        prefix=np.asarray(prefix),
        temperature=np.asarray(temperature),
        seed=np.asarray(seed),
        tokens=tokens.numpy(),
        completion=completion.numpy(),
        mean=mean.numpy(),
        std=std.numpy(),
        images=folded["originals"],
        completion_pixels=folded["completion_pixels"],
        completion_normalised=folded["completion_normalised"],
        kept=folded["kept"],
        mse_completion=mse_completion.numpy(),
        mse_blank=mse_blank.numpy(),
        mse_pixels_completion=mse_pixels_completion.numpy(),
        mse_pixels_blank=mse_pixels_blank.numpy(),
    )
    return CompletionGrid(
        png=out_png,
        npz=npz_path,
        n=n_got,
        prefix=prefix,
        n_patches=n_patches,
        mse_completion=float(mse_completion.mean()),
        mse_blank=float(mse_blank.mean()),
        mse_pixels_completion=float(mse_pixels_completion.mean()),
        mse_pixels_blank=float(mse_pixels_blank.mean()),
    )


# --------------------------------------------------------------------------- command line
@dataclass
class SampleOptions:
    """Options of ``astropt sample`` (``python sample.py``)."""

    checkpoint: str  # run folder, model folder, AstroPT ckpt.pt or Hub id
    prefix: int  # central patches kept
    out: str  # PNG path; the .npz goes beside it
    n: int = 16  # galaxies (the first n of the split)
    split: str = "test"  # data split the galaxies come from
    # noise in units of the residual scale measured on the prefix (0: deterministic)
    temperature: float = 0.0
    seed: int = 0  # seed of the noise
    device: str = "auto"  # auto (cuda if available), cpu, cuda, ...
    # refuse data options that differ from the preprocessing the model was trained with
    # (otherwise one line names the difference)
    strict: bool = False
    # where the galaxies come from: path ('' = synthetic on the fly), source, image_size, ...
    data: dict[str, Any] = model_data_section()


def run_sample(opts: SampleOptions) -> int:
    """Complete the first ``n`` galaxies of the split; write the grid PNG and ``.npz``."""
    from astropt.device import resolve_device
    from astropt.hub import load_model

    device = resolve_device(opts.device)
    model = load_model(opts.checkpoint)
    data_cfg = data_config_from_options(
        model, opts.data, strict=opts.strict, model_name=str(opts.checkpoint)
    )
    result = completion_grid(
        model,
        data_cfg,
        opts.out,
        n=opts.n,
        prefix=opts.prefix,
        split=opts.split,
        temperature=opts.temperature,
        seed=opts.seed,
        device=device,
    )
    print(
        f"completed {result.n} galaxies from {result.prefix} of {result.n_patches} patches; "
        f"MSE on hidden patches (model units): completion {result.mse_completion:.4f}, "
        f"blank {result.mse_blank:.4f}; (pixels): completion "
        f"{result.mse_pixels_completion:.5f}, survey-mean blank {result.mse_pixels_blank:.5f}; "
        f"wrote {result.png} and {result.npz}",
        file=sys.stderr,
    )
    return 0


COMMAND = Command(
    SampleOptions,
    run_sample,
    "Complete galaxies from their central patches and save a PNG grid and .npz.",
    flags=MODEL_DATA_FLAGS,
    examples=(
        "astropt sample checkpoint=runs/x data.path=runs/survey prefix=64 n=16 out=grid.png",
        "python sample.py --checkpoint runs/x --data runs/survey --prefix 64 --out grid.png",
    ),
)


def main(argv: list[str] | None = None) -> int:
    """``python sample.py`` (the same as ``astropt sample``)."""
    return run_command(COMMAND, argv, "python sample.py")
