"""A pretrained trunk with a task head: classification, regression or Galaxy Zoo votes.

:class:`FinetunedGPT` *is* a :class:`~astropt.model.GPT` (so embedding export,
``hub.load_model`` and every tool that takes a GPT keep working) with one more
module, ``task_head``: dropout and a Linear map from the pooled trunk features
``(B, n_embd)`` to ``n_outputs`` numbers. What the numbers mean is in its
:class:`HeadConfig`, saved beside the weights as ``task_head.json`` so a model
folder reloads with its head (:func:`astropt.hub.load_model`).

Heads:

* ``classification``: ``n_outputs`` class logits; cross-entropy with optional
  label smoothing and class weights; predictions are class probabilities.
* ``regression``: one output per target column, trained on standardised
  targets (``(y - mean) / std`` of the training labels) with the mean squared
  error; predictions are in the targets' own units.
* ``votes``: Galaxy Zoo vote counts, questions of ``vote_groups`` answers each;
  outputs are Dirichlet concentrations ``1 + softplus(x)`` per answer and the
  loss is the Dirichlet-multinomial negative log-likelihood of the counts (as
  Zoobot, Walmsley et al. 2022); questions nobody answered add nothing.
  Predictions are the expected vote fractions.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from astropt import hub
from astropt.hub import TASK_HEAD_NAME
from astropt.io import atomic_write_text
from astropt.model import GPT, GPTConfig


@dataclass
class HeadConfig:
    """What the task head computes and how its outputs map back to labels."""

    kind: str = "classification"  # classification | regression | votes
    n_outputs: int = 2
    targets: list[str] = field(default_factory=list)  # label columns (or "folders"/"galaxy10")
    class_names: list[str] | None = None  # classification: name of each class index
    target_mean: list[float] | None = None  # regression: standardisation of each target
    target_std: list[float] | None = None
    vote_groups: list[int] = field(default_factory=list)  # votes: answers per question
    label_smoothing: float = 0.0
    class_weights: list[float] | None = None
    pool: str = "mean"  # mean | prefix | last
    layer: str = "final"  # final | middle | block index
    prefix: int | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("classification", "regression", "votes"):
            raise ValueError(f"head kind must be classification, regression or votes: {self.kind}")
        if self.kind == "votes" and sum(self.vote_groups) != self.n_outputs:
            raise ValueError("votes: vote_groups must sum to n_outputs")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> HeadConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {TASK_HEAD_NAME} field(s): {', '.join(unknown)}")
        return cls(**values)


class FinetunedGPT(GPT):
    """A :class:`GPT` trunk plus ``task_head``; ``task_outputs(tokens)`` gives ``(B, n_outputs)``."""

    def __init__(self, config: GPTConfig, head: HeadConfig | dict):
        super().__init__(config)
        self.head_config = head if isinstance(head, HeadConfig) else HeadConfig.from_dict(head)
        self.resolve_layer(self._layer_arg())  # fail now on a bad layer
        self.task_head = nn.Sequential(
            nn.Dropout(self.head_config.dropout),
            nn.Linear(config.n_embd, self.head_config.n_outputs),
        )
        # A zero head: every class equally likely, every target at its mean, at step 0.
        nn.init.zeros_(self.task_head[1].weight)
        nn.init.zeros_(self.task_head[1].bias)
        weights = self.head_config.class_weights
        self.register_buffer(
            "class_weights",
            torch.tensor(weights, dtype=torch.float32) if weights else torch.empty(0),
            persistent=False,
        )

    @classmethod
    def from_gpt(cls, trunk: GPT, head: HeadConfig) -> FinetunedGPT:
        """A FinetunedGPT holding a copy of ``trunk``'s weights and a fresh (zero) head."""
        model = cls(trunk.config, head)
        missing, unexpected = model.load_state_dict(trunk.state_dict(), strict=False)
        if unexpected or any(not name.startswith("task_head.") for name in missing):
            raise ValueError(f"trunk weights do not fit: missing {missing}, extra {unexpected}")
        return model

    def _layer_arg(self) -> int | str:
        layer = self.head_config.layer
        return int(layer) if isinstance(layer, str) and layer.lstrip("-").isdigit() else layer

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features ``(B, n_embd)`` of normalised tokens ``(B, N, patch_dim)``."""
        head = self.head_config
        return self.embed(tokens, layer=self._layer_arg(), pool=head.pool, prefix=head.prefix)

    def task_outputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw head outputs ``(B, n_outputs)``: logits, standardised values or log-concentrations."""
        return self.task_head(self.features(tokens).float())

    # ------------------------------------------------------------------ loss
    def task_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss of ``outputs`` against ``labels`` (class indices, values or vote counts)."""
        return head_loss(self.head_config, outputs, labels, self.class_weights)

    # ------------------------------------------------------------- prediction
    @torch.no_grad()
    def predict(self, tokens: torch.Tensor) -> torch.Tensor:
        """Predictions ``(B, n_outputs)`` in label units: class probabilities, target values,
        or expected vote fractions per answer."""
        return outputs_to_predictions(self.head_config, self.task_outputs(tokens))

    def save_pretrained(self, directory, **card_info) -> None:
        """A model folder: weights and trunk config (:mod:`astropt.hub`) plus ``task_head.json``."""
        card_info.setdefault(
            "description",
            f"A finetuned AstroPT-style model with a {self.head_config.kind} head "
            f"({self.head_config.n_outputs} outputs; targets {self.head_config.targets}).",
        )
        hub.save_pretrained(self, directory, **card_info)
        atomic_write_text(
            Path(directory) / TASK_HEAD_NAME,
            json.dumps(self.head_config.to_dict(), indent=2, sort_keys=True),
        )


def head_loss(
    head: HeadConfig,
    outputs: torch.Tensor,
    labels: torch.Tensor,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of a head kind; ``labels``: ``(B,)`` int classes, ``(B, T)`` standardised
    values, or ``(B, A)`` vote counts."""
    outputs = outputs.float()
    if head.kind == "classification":
        weight = class_weights if class_weights is not None and class_weights.numel() else None
        return F.cross_entropy(
            outputs, labels.long(), weight=weight, label_smoothing=head.label_smoothing
        )
    if head.kind == "regression":
        return F.mse_loss(outputs, labels.float().view_as(outputs))
    return dirichlet_multinomial_nll(outputs, labels.float(), head.vote_groups)


def dirichlet_multinomial_nll(
    outputs: torch.Tensor, counts: torch.Tensor, groups: list[int]
) -> torch.Tensor:
    """Mean over galaxies of the summed per-question Dirichlet-multinomial NLL.

    ``outputs``: ``(B, A)`` raw head values, concentrations ``1 + softplus``;
    ``counts``: ``(B, A)`` votes per answer. The multinomial coefficient (a
    constant of the data) is left out.
    """
    alpha = 1.0 + F.softplus(outputs)
    total = torch.zeros(outputs.shape[0], device=outputs.device)
    start = 0
    for size in groups:
        a, k = alpha[:, start : start + size], counts[:, start : start + size]
        n, a0 = k.sum(1), a.sum(1)
        log_like = (
            torch.lgamma(a0) - torch.lgamma(n + a0) + (torch.lgamma(k + a) - torch.lgamma(a)).sum(1)
        )
        total = total - log_like
        start += size
    return total.mean()


def outputs_to_predictions(head: HeadConfig, outputs: torch.Tensor) -> torch.Tensor:
    """Raw head outputs to label units (see :meth:`FinetunedGPT.predict`)."""
    outputs = outputs.float()
    if head.kind == "classification":
        return outputs.softmax(-1)
    if head.kind == "regression":
        mean = torch.tensor(head.target_mean or [0.0] * outputs.shape[1], device=outputs.device)
        std = torch.tensor(head.target_std or [1.0] * outputs.shape[1], device=outputs.device)
        return outputs * std + mean
    alpha = 1.0 + F.softplus(outputs)
    parts, start = [], 0
    for size in head.vote_groups:
        a = alpha[:, start : start + size]
        parts.append(a / a.sum(1, keepdim=True))
        start += size
    return torch.cat(parts, 1)


hub.register_model_part(TASK_HEAD_NAME, FinetunedGPT)
