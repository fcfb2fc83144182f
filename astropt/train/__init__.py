"""Pretraining: ``train(cfg)`` in-process, ``python train.py CONFIG key=value`` outside.

Modules, in the order a run uses them:

- :mod:`~astropt.train.parallel`: device, precision, torchrun process group,
  DDP/FSDP/compile wrapping (shared with finetuning and scaling studies);
- :mod:`~astropt.train.optim`: AdamW, parameter groups, learning-rate schedule;
- :mod:`~astropt.train.trainer`: the loop (build, step, evaluate, run) and ``main``;
- :mod:`~astropt.train.checkpoint`: atomic checkpoint folders, recovery,
  full and sharded state, resume;
- :mod:`~astropt.train.metrics`: ``metrics.jsonl``, speed and MFU, previews.

Run folder (``cfg.out_dir``)::

    config.json                 the resolved RunConfig
    metrics.jsonl               one row per logged step: step, train_loss, lr,
                                tokens, flops, tokens_per_s, mfu (+ val_loss on eval steps)
    summary.json                the dict train() returns, at the end
    previews/step-NNNNNNN.png   reconstruction previews of validation galaxies
    checkpoints/latest/         model folder (config.json, model.safetensors via
    checkpoints/best/           astropt.hub) + trainer_state.pt (optimiser,
    checkpoints/step-NNNNNNN/   scaler, RNG and data-loader states, step)
"""

from astropt.train.checkpoint import ArchitectureMismatch
from astropt.train.trainer import COMMAND, Trainer, TrainingDiverged, main, train

__all__ = ["COMMAND", "ArchitectureMismatch", "Trainer", "TrainingDiverged", "main", "train"]
