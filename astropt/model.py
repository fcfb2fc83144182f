"""The observation model: a GPT decoder over patch tokens, AstroPT-compatible.

One file holds the whole network (DESIGN.md section 4): a patch tokeniser maps
each ``P*P*C`` patch to the embedding, a learned positional embedding is added,
pre-LayerNorm transformer blocks run, and a head maps back to patch space.

Objectives:

* ``ar`` (default): predict the next normalised patch; Huber loss over values;
* ``mae``: masked patches are replaced by a learned mask token, attention is
  bidirectional and the loss counts masked patches only.

Attention modes: ``causal`` (default), ``prefix`` (bidirectional over the first
``prefix_len`` tokens, causal after) and ``full``.

Persistence (``GPT.from_pretrained``, ``save_pretrained``, ``push_to_hub``)
lives in :mod:`astropt.hub`, which sits above this module in the import order
and adds those methods to :class:`GPT`; importing any ``astropt`` module
imports it (see ``astropt/__init__.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Literal, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F

from astropt.preprocessing import Preprocessing
from astropt.tokens import (
    BAND_STD_FLOOR,
    NORM_EPS,
    SURVEY_OFFSET,
    SURVEY_SCALE,
    SURVEY_SOFTENING,
    Order,
    band_statistic_targets,
    band_statistics,
    denormalise_patches,
    survey_stretch,
    survey_unstretch,
)

try:  # optional: only used on CUDA in half precision
    from flash_attn import flash_attn_func as _flash_attn_func
except Exception:  # ImportError, or a build that does not match the installed torch
    _flash_attn_func = None

AttnType = Literal["causal", "prefix", "full"]
Objective = Literal["ar", "mae"]
Tokeniser = Literal["aim", "affine"]
TokenScale = Literal["patch", "survey"]
Pool = Literal["mean", "prefix", "last"]


@dataclass
class GPTConfig:
    """Architecture of the observation model, plus how its inputs were made.

    The last group of fields does not change the network but records the data
    conventions the weights expect, so loaders can feed images correctly.
    """

    block_size: int = 1024  # rows of the positional table: the longest sequence
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # dropout probability (attention and MLP outputs)
    bias: bool = False  # biases in Linear and LayerNorm layers
    tokeniser: Tokeniser = "aim"  # "aim": Linear-GELU-Linear MLP, "affine": one Linear
    attn_type: AttnType = "causal"  # causal, prefix (bidirectional first k tokens) or full
    objective: Objective = "ar"  # ar: next-patch prediction; mae: masked autoencoder
    mask_ratio: float = 0.75  # fraction of patches masked by the "mae" objective
    prefix_len: int = 0  # bidirectional prefix of "prefix" attention; 0 draws one per batch
    # Flux-aware tokens: each patch's per-band mean and log-std (what per-patch
    # normalisation removes, astropt.tokens.band_statistics) projected and added to its
    # embedding. False keeps the AstroPT architecture (no extra weights).
    flux_tokens: bool = False
    # Flux targets: a linear head on the final output also predicts the next patch's
    # per-band mean and log-std (astropt.tokens.band_statistic_targets), Huber loss
    # weighted by flux_loss_weight, so the representation must carry the photometry.
    # False keeps the AstroPT architecture.
    flux_targets: bool = False
    flux_loss_weight: float = 1.0  # weight of the flux head's Huber loss beside the patch loss
    # Token units: "patch" (AstroPT: each patch normalised to zero mean, unit std) or
    # "survey" (one fixed stretch for the whole survey, astropt.tokens.survey_stretch:
    # tokens keep their brightness and colour, so predictions are pixels).
    token_scale: TokenScale = "patch"
    survey_softening: float = SURVEY_SOFTENING  # survey_stretch's asinh softening (pixel units)
    survey_offset: float = SURVEY_OFFSET  # survey_stretch's offset, subtracted after the asinh
    survey_scale: float = SURVEY_SCALE  # survey_stretch's divisor after the offset
    # Data conventions (not architecture):
    patch_size: int = 16
    n_chan: int = 3  # image channels (bands)
    order: Order = "spiral"
    transpose_hw: bool = False  # True for AstroPT's released weights (images seen as (C, W, H))
    # default layer(s) of `GPT.embed`: "final", "middle", a block index or several joined by "+"
    embed_layer: str = "final"
    # "hybrid" embeddings by default: exports append each galaxy's aperture photometry
    # (astropt.tokens.galaxy_statistics) to the model's vector
    embed_hybrid: bool = False

    @property
    def patch_dim(self) -> int:
        """Values per patch token: ``patch_size**2 * n_chan``."""
        return self.patch_size * self.patch_size * self.n_chan

    @property
    def stats_dim(self) -> int:
        """Values of a flux-aware token's statistics: a mean and a log-std per band."""
        return 2 * self.n_chan

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "patch_size", "n_chan"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        for name, allowed in (
            ("tokeniser", get_args(Tokeniser)),
            ("attn_type", get_args(AttnType)),
            ("objective", get_args(Objective)),
            ("order", get_args(Order)),
            ("token_scale", get_args(TokenScale)),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.survey_softening <= 0 or self.survey_scale <= 0:
            raise ValueError("survey_softening and survey_scale must be positive")

    @property
    def reads_stats(self) -> bool:
        """Whether the model needs the patches' band statistics (inputs or targets)."""
        return self.flux_tokens or self.flux_targets

    @property
    def astropt_format(self) -> bool:
        """True when weights and tokens are exactly AstroPT's (no flux-aware option)."""
        return not self.reads_stats and self.token_scale == "patch"

    def to_dict(self) -> dict:
        """Every field, except flux options left at their defaults: a model in AstroPT's
        format saves the same ``config.json`` as before those options existed."""
        values = asdict(self)
        if not self.flux_targets:
            for name in ("flux_targets", "flux_loss_weight"):
                values.pop(name)
        if not self.embed_hybrid:
            values.pop("embed_hybrid")
        if self.token_scale == "patch":
            for name in ("token_scale", "survey_softening", "survey_offset", "survey_scale"):
                values.pop(name)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s): {', '.join(unknown)}")
        return cls(**values)


def mae_mask(
    shape: tuple[int, int],
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The ``mae`` objective's random patch mask: ``(B, N)`` bool, True where a patch is hidden.

    Each sequence hides exactly ``max(1, round(mask_ratio * N))`` patches, chosen
    uniformly from ``generator``'s stream (one ``torch.rand(B, N)`` draw).
    """
    batch, seq = shape
    n_masked = max(1, round(mask_ratio * seq))
    scores = torch.rand(batch, seq, generator=generator, device=device)
    return scores.argsort(dim=1).argsort(dim=1) < n_masked


class PatchCodec(nn.Module):
    """Maps between patch space and embedding space ("aim" MLP or "affine")."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, kind: Tokeniser, bias: bool):
        super().__init__()
        self.kind = kind
        if kind == "affine":
            self.fc1 = nn.Linear(in_dim, out_dim, bias=bias)
        else:
            self.fc1 = nn.Linear(in_dim, hidden, bias=bias)
            self.fc2 = nn.Linear(hidden, out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        if self.kind == "affine":
            return x
        return self.fc2(F.gelu(x, approximate="tanh"))


class KVCache:
    """Keys and values of past tokens, one pre-allocated buffer pair per layer.

    Each layer's buffers ``(B, H, capacity, D)`` are allocated on the first
    append and written in place, so a decode step copies only its own token's
    keys and values (a cache that concatenates copies the whole past at every
    step, quadratic over a completion). ``capacity``: tokens to reserve, e.g.
    prefix plus new patches; ``None`` (or a longer sequence than reserved)
    grows the buffers by doubling.
    """

    def __init__(self, n_layer: int, capacity: int | None = None):
        self.capacity = capacity
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.lengths = [0] * n_layer

    def length(self, layer: int = 0) -> int:
        """Number of tokens cached so far for ``layer``."""
        return self.lengths[layer]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store ``(B, H, T, D)`` keys and values; return views of every cached token."""
        start = self.lengths[layer]
        end = start + k.shape[2]
        keys, values = self.keys[layer], self.values[layer]
        if keys is None or end > keys.shape[2]:
            held = 0 if keys is None else keys.shape[2]
            size = max(end, self.capacity or 0, 2 * held)
            batch, heads, _, dim = k.shape
            grown_k = k.new_empty(batch, heads, size, dim)
            grown_v = v.new_empty(batch, heads, size, v.shape[3])
            if keys is not None:
                grown_k[:, :, :start] = keys[:, :, :start]
                grown_v[:, :, :start] = values[:, :, :start]
            keys, values = self.keys[layer], self.values[layer] = grown_k, grown_v
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        self.lengths[layer] = end
        return keys[:, :, :end], values[:, :, :end]


def _dropout(module: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, skipped when it would be the identity (eval mode or p = 0)."""
    return module(x) if module.training and module.p > 0 else x


def attention_mask(
    attn_type: AttnType, q_len: int, kv_len: int, prefix_len: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean ``(q_len, kv_len)`` mask (True = may attend), or None for no mask.

    Queries are the last ``q_len`` of ``kv_len`` positions (a KV cache holds the rest).
    """
    if attn_type == "full":
        return None
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    kv_pos = torch.arange(kv_len, device=device)[None, :]
    allowed = kv_pos <= q_pos
    if attn_type == "prefix":
        allowed = allowed | (kv_pos < prefix_len)
    return allowed


class SelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        attn_type: AttnType,
        prefix_len: int = 0,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        batch, seq, width = x.shape
        head_dim = width // self.n_head
        qkv = self.qkv(x).view(batch, seq, 3, self.n_head, head_dim)
        dropout = self.dropout if self.training else 0.0
        past = 0 if cache is None else cache.length(layer)
        mask, is_causal = None, attn_type == "causal" and past == 0
        # One new causal token sees every cached one: no mask to build.
        if not is_causal and not (attn_type == "causal" and seq == 1):
            mask = attention_mask(attn_type, seq, past + seq, prefix_len, x.device)
        if x.device.type == "cpu":
            # One copy in, one copy out: torch's CPU attention kernels are ~10%
            # faster on contiguous (B, H, T, D) heads than on views of the fused
            # projection, and slower in bf16 than in fp32 at these head sizes
            # (forward + backward, head_dim 16-64: 1.2x to 10x), so attend in
            # fp32 with autocast off (it would cast straight back).
            heads = qkv.permute(2, 0, 3, 1, 4)  # (3, B, H, T, D)
            if cache is None:
                q, k, v = heads.to(torch.float32, memory_format=torch.contiguous_format)
            else:  # the cache copies k and v into its buffers anyway: no copy here
                q, k, v = heads.float()
                k, v = cache.append(layer, k, v)
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal
                )
            y = y.transpose(1, 2).to(qkv.dtype, memory_format=torch.contiguous_format)
            return _dropout(self.resid_dropout, self.proj(y.reshape(batch, seq, width)))
        q, k, v = qkv.unbind(2)  # (B, T, H, D) views
        if (
            _flash_attn_func is not None
            and q.is_cuda
            and q.dtype in (torch.float16, torch.bfloat16)
            and attn_type != "prefix"
            and cache is None
        ):
            y = _flash_attn_func(q, k, v, dropout_p=dropout, causal=attn_type == "causal")
            return _dropout(self.resid_dropout, self.proj(y.reshape(batch, seq, width)))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if cache is not None:
            k, v = cache.append(layer, k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal
        )
        y = y.transpose(1, 2).reshape(batch, seq, width)
        return _dropout(self.resid_dropout, self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _dropout(self.dropout, self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm_attn = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = SelfAttention(config)
        self.norm_mlp = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attn_type, prefix_len=0, cache=None, layer=0):
        x = x + self.attn(self.norm_attn(x), attn_type, prefix_len, cache, layer)
        return x + self.mlp(self.norm_mlp(x))


class GPT(nn.Module):
    """Decoder-only transformer over patch tokens.

    Inputs are normalised patch sequences ``(B, T, patch_dim)``; outputs have
    the same shape (for ``ar``: the prediction of the *next* patch at each
    position; for ``mae``: the reconstruction of each position's own patch).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        # How the training images were made; astropt.hub sets it when a folder records one.
        self.preprocessing: Preprocessing | None = None
        hidden = 4 * config.n_embd
        self.tokeniser = PatchCodec(
            config.patch_dim, config.n_embd, hidden, config.tokeniser, config.bias
        )
        if config.flux_tokens:
            self.flux_proj = nn.Linear(config.stats_dim, config.n_embd, bias=config.bias)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.head = PatchCodec(
            config.n_embd, config.patch_dim, hidden, config.tokeniser, config.bias
        )
        if config.flux_targets:
            self.flux_head = nn.Linear(config.n_embd, config.stats_dim, bias=config.bias)
        if config.objective == "mae":
            self.mask_token = nn.Parameter(torch.zeros(config.n_embd))
        self.reset_parameters()

    # ----------------------------------------------------------------- setup
    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2L)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)
        if hasattr(self, "mask_token"):
            nn.init.normal_(self.mask_token, mean=0.0, std=0.02)

    def num_params(self, exclude_positions: bool = False) -> int:
        """Number of parameters (optionally without the positional table)."""
        total = sum(p.numel() for p in self.parameters())
        return total - self.pos_emb.weight.numel() if exclude_positions else total

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token, PaLM appendix B estimate.

        ``6 * N + 12 * n_layer * n_embd * seq_len`` with ``N`` the parameters
        outside the positional table and ``seq_len`` the real sequence length
        (not ``block_size``: AstroPT's 4x overstatement for 256-token galaxies).
        """
        cfg = self.config
        seq_len = cfg.block_size if seq_len is None else seq_len
        return 6 * self.num_params(exclude_positions=True) + 12 * cfg.n_layer * cfg.n_embd * seq_len

    # --------------------------------------------------------------- forward
    def _resolve_prefix(self, prefix_len: int | None, seq: int) -> int:
        if self.config.attn_type != "prefix":
            return 0
        if prefix_len is not None:
            return prefix_len
        if self.config.prefix_len > 0:
            return self.config.prefix_len
        # Training without a fixed prefix: draw one per call (from torch's RNG, so
        # runs stay reproducible under a seed).
        return int(torch.randint(1, max(seq, 2), ()).item())

    def _trunk(
        self,
        patches: torch.Tensor,
        positions: torch.Tensor | None,
        mask: torch.Tensor | None,
        prefix_len: int,
        cache: KVCache | None,
        stop_after: int | None = None,
        taps: dict[int, torch.Tensor | None] | None = None,
        stats: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, seq, dim = patches.shape
        cfg = self.config
        if dim != cfg.patch_dim:
            raise ValueError(
                f"patch tokens have {dim} values but the model expects {cfg.patch_dim} "
                f"({cfg.patch_size}x{cfg.patch_size} pixels x {cfg.n_chan} channels)"
            )
        start = 0 if cache is None else cache.length()
        if positions is None:
            # Checked from Python ints: no device sync on the training path.
            if start + seq > cfg.block_size:
                raise ValueError(
                    f"sequence position {start + seq - 1} is beyond block_size {cfg.block_size}"
                )
            # A slice of the table: the rows of positions start..start+seq-1
            # without a gather kernel (a decode step is made of such small ops).
            pos = self.pos_emb.weight[start : start + seq]
        elif positions.max() >= cfg.block_size:
            raise ValueError(
                f"sequence position {int(positions.max())} is beyond block_size {cfg.block_size}"
            )
        else:
            pos = self.pos_emb(positions)
        x = self.tokeniser(patches)
        if cfg.flux_tokens:
            x = x + self.flux_proj(self._check_stats(stats, patches).to(x.dtype))
        if mask is not None:  # after the fluxes: a hidden patch hides its brightness too
            x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
        x = _dropout(self.drop, x + pos)
        attn_type = "full" if cfg.objective == "mae" else cfg.attn_type
        for index, block in enumerate(self.blocks):
            x = block(x, attn_type, prefix_len, cache, index)
            if taps is not None and index in taps:
                taps[index] = x
            if stop_after is not None and index == stop_after:
                return x
        return self.norm_f(x)

    def _check_stats(self, stats: torch.Tensor | None, patches: torch.Tensor) -> torch.Tensor:
        if stats is None:
            raise ValueError(
                "this model reads flux-aware tokens (flux_tokens=True): pass stats="
                "model.token_stats(tokens, mean, std) with the patches' normalisation statistics"
            )
        if stats.shape != (*patches.shape[:-1], self.config.stats_dim):
            raise ValueError(
                f"stats have shape {tuple(stats.shape)}, expected "
                f"{(*patches.shape[:-1], self.config.stats_dim)} (a mean and a log-std per band)"
            )
        return stats

    def token_stats(
        self, tokens: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
    ) -> torch.Tensor | None:
        """The ``stats`` of a flux-aware model (None for a model that reads none).

        ``tokens (B, N, patch_dim)`` with their ``mean``/``std`` ``(B, N, 1)`` from
        the data loader: :func:`astropt.tokens.band_statistics`, ``(B, N, 2 * n_chan)``,
        the input of ``flux_tokens`` models and the target of ``flux_targets`` models.
        """
        if not self.config.reads_stats:
            return None
        return band_statistics(tokens, mean, std, self.config.n_chan)

    def prepare(
        self, tokens: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model's inputs from the data loader's per-patch normalised tokens.

        ``tokens (B, N, patch_dim)`` with ``mean``/``std`` ``(B, N, 1)``. Returns
        ``(inputs, stats)``: ``inputs`` are ``tokens`` themselves for AstroPT's
        per-patch units (the same tensor, untouched) or their pixels in the
        survey-wide stretch (``token_scale="survey"``); ``stats`` is
        :meth:`token_stats` (None unless the model reads statistics).
        """
        stats = self.token_stats(tokens, mean, std)
        if self.config.token_scale == "patch":
            return tokens, stats
        pixels = denormalise_patches(tokens.float(), mean.float(), std.float())
        return self.pixels_to_tokens(pixels), stats

    def pixels_to_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch pixels ``(..., patch_dim)`` in this model's survey-wide units
        (``token_scale="survey"`` only; per-patch units come from :func:`normalise_patches`)."""
        cfg = self.config
        if cfg.token_scale != "survey":
            raise ValueError("pixels_to_tokens needs a model with token_scale='survey'")
        return survey_stretch(pixels, cfg.survey_softening, cfg.survey_offset, cfg.survey_scale)

    def tokens_to_pixels(
        self,
        tokens: torch.Tensor,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        stats: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Model-unit patches ``(B, N, patch_dim)`` (inputs or predictions) in pixel units.

        Survey-wide tokens invert the stretch and need nothing else. Per-patch
        tokens need each patch's brightness: its ``mean``/``std`` ``(B, N, 1)``
        (the data's), or per-band ``stats`` ``(B, N, 2 * n_chan)`` in
        :func:`astropt.tokens.band_statistics` units (what a ``flux_targets``
        model predicts): each band of the patch is then standardised and given
        that band's mean and std.
        """
        cfg = self.config
        if cfg.token_scale == "survey":
            return survey_unstretch(
                tokens, cfg.survey_softening, cfg.survey_offset, cfg.survey_scale
            )
        if mean is not None and std is not None:
            return denormalise_patches(tokens.float(), mean.float(), std.float())
        if stats is None:
            raise ValueError(
                "per-patch normalised tokens need their mean and std (or band statistics) "
                "to become pixels"
            )
        bands = tokens.float().unflatten(-1, (-1, cfg.n_chan))  # (B, N, P*P, C)
        band_std, band_mean = torch.std_mean(bands, dim=-2, keepdim=True)
        shape = (*stats.shape[:-1], 1, cfg.n_chan)
        target_mean = stats[..., : cfg.n_chan].float().reshape(shape)
        target_std = (stats[..., cfg.n_chan :].float().exp() - BAND_STD_FLOOR).clamp_min(0)
        standard = (bands - band_mean) / (band_std + NORM_EPS)
        return (standard * target_std.reshape(shape) + target_mean).flatten(-2)

    def predict_stats(self, hidden: torch.Tensor) -> torch.Tensor:
        """The flux head's band statistics ``(B, T, 2 * n_chan)`` for final outputs
        ``(B, T, n_embd)``, in :func:`astropt.tokens.band_statistics` units."""
        return band_statistic_targets(
            self.flux_head(hidden).float(), self.config.n_chan, 1 / self.config.survey_scale
        )

    def forward(
        self,
        patches: torch.Tensor,
        targets: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        prefix_len: int | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
        stats: torch.Tensor | None = None,
        stat_targets: torch.Tensor | None = None,
        with_stats: bool = False,
    ):
        """Predict patches; return ``(predictions, loss)``.

        ``patches``: ``(B, T, patch_dim)`` tokens in the model's units
        (:meth:`prepare`). ``targets``: same shape (for ``ar``, the inputs
        shifted by one). ``positions``: ``(T,)`` or ``(B, T)`` sequence
        positions, default ``0..T-1`` (after any cached tokens). ``mask``:
        ``(B, T)`` bool, True where a patch is hidden (``mae`` only; the loss
        then counts masked patches only). ``cache``: a :class:`KVCache` for
        incremental decoding. ``last_only``: apply the head to the last
        position only, predictions ``(B, 1, patch_dim)`` (all decoding needs;
        no targets). ``stats``: ``(B, T, 2 * n_chan)`` per-band statistics of
        the patches (:meth:`token_stats`), required by flux-aware models
        (``flux_tokens``) and ignored by others. ``stat_targets``: the band
        statistics each position's flux head must predict (``flux_targets``
        models: that Huber loss, weighted by ``flux_loss_weight``, is added).
        ``with_stats``: return ``(predictions, predicted_stats, loss)``, the
        flux head's output in :meth:`predict_stats` units (None for a model
        without one). ``loss`` is None without targets.
        """
        cfg = self.config
        if mask is not None and cfg.objective != "mae":
            raise ValueError("a patch mask needs a model built with objective='mae'")
        prefix = self._resolve_prefix(prefix_len, patches.shape[1])
        hidden = self._trunk(patches, positions, mask, prefix, cache, stats=stats)
        if last_only:
            if targets is not None:
                raise ValueError("last_only predicts one position: it takes no targets")
            hidden = hidden[:, -1:]
        predictions = self.head(hidden)
        loss = None
        if targets is not None:
            loss = self._patch_loss(predictions, targets, mask)
            if stat_targets is not None and cfg.flux_targets:
                wanted = band_statistic_targets(stat_targets, cfg.n_chan, cfg.survey_scale)
                stat_loss = self._patch_loss(self.flux_head(hidden), wanted, mask)
                loss = loss + cfg.flux_loss_weight * stat_loss
        if with_stats:
            predicted = self.predict_stats(hidden) if cfg.flux_targets else None
            return predictions, predicted, loss
        return predictions, loss

    @staticmethod
    def _patch_loss(
        predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Huber loss (delta 1) averaged over values (over masked positions' values with
        ``mask``), in float32 whatever the autocast dtype: a bf16 mean over millions of
        values would lose the digits that show progress."""
        if mask is None:
            return F.huber_loss(predictions.float(), targets.float(), delta=1.0)
        per_value = F.huber_loss(predictions.float(), targets.float(), delta=1.0, reduction="none")
        weights = mask[..., None].to(per_value.dtype)
        return (per_value * weights).sum() / (weights.sum() * per_value.shape[-1]).clamp_min(1)

    def compute_loss(
        self,
        tokens: torch.Tensor,
        generator: torch.Generator | None = None,
        stats: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss of the configured objective on full sequences ``(B, N, patch_dim)``.

        ``ar``: inputs are tokens ``0..N-2``, targets ``1..N-1``. With ``prefix``
        attention a prefix length ``k`` is drawn (or taken from the config) and
        the loss counts positions ``k-1..N-2`` only: inside the prefix the next
        patch is visible to bidirectional attention, so predicting it there
        would teach copying. ``mae``: a random ``mask_ratio`` of each sequence is
        hidden (drawn from ``generator``). ``stats``: see :meth:`forward`; a
        ``flux_targets`` model also regresses the target patches' statistics.
        Returns ``(predictions, loss)``.
        """
        cfg = self.config
        if cfg.flux_targets and stats is None:
            raise ValueError(
                "a flux_targets model needs stats=model.token_stats(tokens, mean, std)"
            )
        if cfg.objective == "ar":
            inputs, targets = tokens[:, :-1], tokens[:, 1:]
            in_stats = None if stats is None else stats[:, :-1]
            stat_targets = stats[:, 1:] if cfg.flux_targets else None
            if cfg.attn_type != "prefix":
                return self(inputs, targets=targets, stats=in_stats, stat_targets=stat_targets)
            prefix = self._resolve_prefix(None, inputs.shape[1])
            prefix = min(max(prefix, 1), inputs.shape[1])
            predictions, predicted_stats, _ = self(
                inputs, prefix_len=prefix, stats=in_stats, with_stats=True
            )
            kept = slice(prefix - 1, None)
            loss = self._patch_loss(predictions[:, kept], targets[:, kept], None)
            if stat_targets is not None:
                in_head_units = (  # predict_stats' units back to the head's
                    band_statistic_targets(s[:, kept], cfg.n_chan, cfg.survey_scale)
                    for s in (predicted_stats, stat_targets)
                )
                loss = loss + cfg.flux_loss_weight * self._patch_loss(*in_head_units, None)
            return predictions, loss
        mask = mae_mask(tokens.shape[:2], cfg.mask_ratio, generator, tokens.device)
        stat_targets = stats if cfg.flux_targets else None
        return self(tokens, targets=tokens, mask=mask, stats=stats, stat_targets=stat_targets)

    # ------------------------------------------------------------ embeddings
    def resolve_layer(self, layer: int | str | None) -> int | None:
        """Block index whose residual output is wanted, or None for the final LayerNorm.

        One layer only; :meth:`resolve_layers` also reads several (``"middle+final"``).
        """
        layers = self.resolve_layers(layer)
        if len(layers) != 1:
            raise ValueError(f"one layer is needed here, got {layer!r} ({len(layers)} layers)")
        return layers[0]

    def resolve_layers(
        self, layer: int | str | Sequence[int | str] | None
    ) -> tuple[int | None, ...]:
        """Block indices (None: the final LayerNorm) of a layer spec, in the order given.

        ``layer``: ``"final"`` or ``-1``, ``"middle"`` (block ``n_layer // 2``), a
        0-based block index, several of these joined by ``+`` (``"middle+final"``)
        or as a list; None: ``config.embed_layer``.
        """
        layer = self.config.embed_layer if layer is None else layer
        if isinstance(layer, str):
            parts: list = [p.strip() for p in layer.replace(",", "+").split("+")]
        elif isinstance(layer, (list, tuple)):
            parts = list(layer)
        else:
            parts = [layer]
        if not parts:
            raise ValueError("layer names no layer")
        resolved = tuple(self._one_layer(part, layer) for part in parts)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"layer {layer!r} names a layer twice")
        return resolved

    def _one_layer(self, layer: int | str, spec) -> int | None:
        if layer is None or layer in ("final", -1, "-1"):  # None: resolved "final"
            return None
        if layer == "middle":
            return self.config.n_layer // 2
        if isinstance(layer, str) and layer.isdigit():
            layer = int(layer)
        if (
            isinstance(layer, bool)
            or not isinstance(layer, int)
            or not 0 <= layer < self.config.n_layer
        ):
            raise ValueError(
                f"layer must be 'final' (or -1), 'middle', a block index 0..{self.config.n_layer - 1}"
                f" or several joined by '+', got {spec!r}"
            )
        return layer

    @staticmethod
    def layer_name(layers: Sequence[int | None]) -> str:
        """The spec string of resolved layers: ``(2, None)`` -> ``"2+final"``."""
        return "+".join("final" if b is None else str(b) for b in layers)

    def hidden_states(
        self,
        patches: torch.Tensor,
        layer: int | str | Sequence[int | str] | None = None,
        prefix_len: int | None = None,
        stats: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-token features ``(B, T, k * n_embd)`` from the ``k`` layers named by ``layer``
        (see :meth:`embed`), concatenated in the order given."""
        layers = self.resolve_layers(layer)
        # Deterministic: without a prefix length, prefix attention sees the whole sequence.
        prefix = self._resolve_prefix(prefix_len or self.config.prefix_len or patches.shape[1], 0)
        blocks = [b for b in layers if b is not None]
        deepest = None if None in layers else max(blocks)
        taps: dict[int, torch.Tensor | None] = dict.fromkeys(blocks)
        last = self._trunk(
            patches, None, None, prefix, None, stop_after=deepest, taps=taps, stats=stats
        )
        outputs = [last if b is None else taps[b] for b in layers]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)

    def embed(
        self,
        patches: torch.Tensor,
        layer: int | str | Sequence[int | str] | None = None,
        pool: Pool = "mean",
        prefix: int | None = None,
        stats: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One vector per image: ``(B, T, patch_dim)`` tokens to ``(B, k * n_embd)``.

        ``layer``: ``"final"`` or ``-1`` (final LayerNorm output), ``"middle"``
        (residual stream after block ``n_layer // 2``, AstroPT's
        ``generate_embeddings``), a 0-based block index, or ``k`` of these
        joined by ``+`` or as a list (``"middle+final"``: the layers' vectors
        concatenated in that order); default ``config.embed_layer``. ``pool``: mean over all tokens, mean over the
        first ``prefix`` tokens (the galaxy itself in spiral order), or the last token.
        ``stats``: the patches' statistics (flux-aware models, see :meth:`forward`).
        """
        hidden = self.hidden_states(patches, layer, stats=stats)
        if pool == "mean":
            return hidden.mean(dim=1)
        if pool == "prefix":
            if not prefix or prefix < 1:
                raise ValueError("pool='prefix' needs prefix=k with k >= 1 tokens")
            return hidden[:, :prefix].mean(dim=1)
        if pool == "last":
            return hidden[:, -1]
        raise ValueError(f"pool must be 'mean', 'prefix' or 'last', got {pool!r}")
