"""Finetuning: from a pretrained model to a galaxy classifier or regressor.

``python finetune.py CONFIG.toml key=value ...`` (or ``finetune(cfg)``) trains
a task head on labelled galaxies, with the trunk frozen (``probe``), adapted
by low-rank adapters (``lora``) or fully trained (``full``), or fits the ridge
probe of the trunk's embeddings (``ridge``, the comparator); the result is a
model folder that :func:`astropt.hub.load_model` loads with its head and that
``python -m astropt.predict`` runs over any data.

Modules: :mod:`~astropt.finetune.config` (the run config),
:mod:`~astropt.finetune.model` (task heads), :mod:`~astropt.finetune.data`
(label sources, stratified splits, label subsets),
:mod:`~astropt.finetune.lora` (adapters through ``peft``),
:mod:`~astropt.finetune.metrics` (test scores, confusion matrix, intervals),
:mod:`~astropt.finetune.trainer` (the loop and ``main``),
:mod:`~astropt.finetune.ridge` (``mode=ridge``: the ridge-probe comparator),
:mod:`~astropt.finetune.sweep` (label-efficiency curves).
"""

from astropt.finetune.config import FinetuneConfig, load_finetune_config
from astropt.finetune.model import FinetunedGPT, HeadConfig

__all__ = ["FinetuneConfig", "FinetunedGPT", "HeadConfig", "finetune", "load_finetune_config"]


def finetune(cfg: FinetuneConfig, **kwargs) -> dict:
    """Run a finetune (see :func:`astropt.finetune.trainer.finetune`)."""
    from astropt.finetune.trainer import finetune as run

    return run(cfg, **kwargs)
