"""Per-galaxy predictions of a finetuned model, written as a resumable parquet export.

``python -m astropt.predict --checkpoint runs/ft --data DIR --out preds.parquet``

``--checkpoint``: a finetune run folder (its ``model/``) or a finetuned model
folder (one with ``task_head.json``). ``--data``: anything ``astropt.embed``
reads (survey folder, parquet, image folder, Hub dataset) or a Galaxy10 DECaLS
``.h5`` file. The output is the export folder of :mod:`astropt.export` (parts
plus a manifest, resumed exactly after the last finished part when rerun) with
a ``prediction`` column: class probabilities, target values in their units,
or expected vote fractions. :func:`read_predictions` returns it as a pandas
table with one named column per class (``p_<class>`` and ``predicted_class``)
or per target.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from astropt.export import (
    MODEL_DATA_FLAGS,
    data_config_from_options,
    export_outputs,
    model_data_section,
    model_export_device,
    model_fingerprint,
    read_manifest,
    read_table,
    resolve_dtype,
)
from astropt.options import Command, run_command

COLUMN = "prediction"


def load_finetuned(path: str | Path):
    """The :class:`~astropt.finetune.model.FinetunedGPT` of a run folder or model folder."""
    from astropt.finetune.model import FinetunedGPT
    from astropt.hub import load_model

    folder = Path(path)
    if (folder / "model").is_dir():
        folder = folder / "model"
    model = load_model(folder)
    if not isinstance(model, FinetunedGPT):
        raise ValueError(
            f"{path} is a model without a task head: predictions need a finetuned model "
            "(python finetune.py ...; its run folder or OUT/model)"
        )
    return model


class PredictionEncoder:
    """Normalised tokens ``(B, N, D)`` -> predictions ``(B, n_outputs)`` (float32, CPU)."""

    def __init__(self, model, device: str | torch.device = "cpu", dtype: str = "auto"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.dtype = resolve_dtype(dtype, self.device)

    @property
    def reads_stats(self) -> bool:
        """Whether it needs the batch's normalisation statistics (survey-wide token units)."""
        return self.model.config.token_scale != "patch"

    def __call__(
        self,
        tokens: torch.Tensor,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``mean``/``std``: the tokens' ``(B, N, 1)`` statistics, needed when :attr:`reads_stats`."""
        tokens = tokens.to(self.device, non_blocking=True)
        if self.reads_stats:
            tokens, _ = self.model.prepare(tokens, mean.to(self.device), std.to(self.device))
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.dtype == "bfloat16"
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            out = self.model.predict(tokens)
        return out.float().cpu()

    def fingerprint(self) -> str:
        return model_fingerprint(self.model)


def output_names(head) -> list[str]:
    """Names of the prediction entries: ``p_<class>``, target columns, or vote answers."""
    if head.kind == "classification":
        names = head.class_names or [str(k) for k in range(head.n_outputs)]
        return [f"p_{name}" for name in names]
    if len(head.targets) == head.n_outputs:
        return list(head.targets)
    return [f"output_{k}" for k in range(head.n_outputs)]


def _galaxy10_opener(path: str, data_cfg, batch_size: int, max_samples: int | None):
    from astropt.data import map_loader
    from astropt.finetune.data import Galaxy10Source, LabelledSubset

    def open_loader(rank: int = 0, world_size: int = 1):
        source = Galaxy10Source(path)
        n = len(source) if max_samples is None else min(len(source), max_samples)
        subset = LabelledSubset(source, np.arange(n), source.labels[:n])
        cfg = dataclasses.replace(data_cfg, even_shards=False)  # a prediction drops nothing
        return map_loader(
            subset, cfg, path, split="test", batch_size=batch_size, shuffle=False,
            augment=False, seed=0, rank=rank, world_size=world_size, device="cpu",
            drop_last=False, repeat=False,
        )  # fmt: skip

    return open_loader


def export_predictions(
    model,
    data_cfg,
    out: str | Path,
    split: str = "test",
    *,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    dtype: str = "auto",
    max_samples: int | None = None,
    checkpoint: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Predict every galaxy of ``split`` of ``data_cfg`` (or of a Galaxy10 ``.h5`` file named by
    ``data_cfg.path``) with finetuned ``model``; write the export ``out`` (rerun to resume)."""
    from astropt.finetune.data import is_hdf5

    encoder = PredictionEncoder(model, model_export_device(model, data_cfg, device), dtype)
    opener = None
    if is_hdf5(data_cfg.path):
        opener = _galaxy10_opener(data_cfg.path, data_cfg, batch_size, max_samples)
    head = model.head_config
    return export_outputs(
        encoder,
        data_cfg,
        out,
        split,
        kind="predictions",
        batch_size=batch_size,
        max_samples=max_samples,
        open_loader=opener,
        meta={"checkpoint": checkpoint, "head": head.to_dict(), "names": output_names(head)},
        overwrite=overwrite,
        progress=progress,
        column=COLUMN,
    )


def read_predictions(path: str | Path):
    """The predictions export as a pandas table: ``id``, catalogue columns, one column per
    output (``p_<class>`` probabilities plus ``predicted_class``, or target values)."""
    table = read_table(path)
    manifest = read_manifest(path) or {}
    meta = manifest.get("meta", {})
    frame = table.drop_columns([COLUMN]).to_pandas()
    values = np.stack(table.column(COLUMN).to_numpy(zero_copy_only=False)) if len(table) else None
    names = meta.get("names") or [f"output_{k}" for k in range(manifest.get("dim", 0))]
    if values is not None:
        for k, name in enumerate(names):
            frame[name] = values[:, k]
        head = meta.get("head", {})
        if head.get("kind") == "classification":
            classes = head.get("class_names") or [str(k) for k in range(values.shape[1])]
            frame["predicted_class"] = [classes[k] for k in values.argmax(1)]
    return frame


@dataclasses.dataclass
class PredictOptions:
    """Options of ``astropt predict`` (``python -m astropt.predict``)."""

    checkpoint: str  # finetune run folder or finetuned model folder
    out: str  # output export folder, e.g. preds.parquet
    split: str = "test"  # data split to predict (a Galaxy10 .h5 file: every galaxy)
    batch_size: int = 256  # galaxies per forward pass
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:N
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bfloat16 where native
    max_samples: int | None = None  # predict only the first N galaxies of the split
    overwrite: bool = False  # replace an export made with other settings
    progress: bool = True  # progress bar
    # refuse data options that differ from the preprocessing the model was trained with
    # (otherwise one line names the difference)
    strict: bool = False
    # where the galaxies come from: path (a survey, parquet, folder or Galaxy10 .h5), source, ...
    data: dict[str, Any] = model_data_section()


def run_predict(opts: PredictOptions) -> int:
    """Predict the split the options name; write the export."""
    from astropt.finetune.data import is_hdf5

    try:
        model = load_finetuned(opts.checkpoint)
    except (FileNotFoundError, ValueError) as error:
        print(f"astropt predict: {error}", file=sys.stderr)
        return 2
    data = dict(opts.data)
    if is_hdf5(data.get("path", "")):
        data["source"] = "folder"  # any valid source: the .h5 file has its own reader
    data_cfg = data_config_from_options(
        model, data, strict=opts.strict, model_name=str(opts.checkpoint)
    )
    out = export_predictions(
        model, data_cfg, opts.out, opts.split, batch_size=opts.batch_size, device=opts.device,
        dtype=opts.dtype, max_samples=opts.max_samples, checkpoint=str(opts.checkpoint),
        overwrite=opts.overwrite, progress=opts.progress,
    )  # fmt: skip
    frame = read_predictions(out)
    print(f"wrote predictions for {len(frame)} galaxies to {out}", file=sys.stderr)
    return 0


COMMAND = Command(
    PredictOptions,
    run_predict,
    "Predict with a finetuned model (class probabilities or values) for every galaxy of a "
    "data source; writes a resumable parquet export. Rerun the same command to resume.",
    flags=MODEL_DATA_FLAGS,
    examples=(
        "astropt predict checkpoint=runs/ft data.path=runs/survey out=preds.parquet",
        "python -m astropt.predict --checkpoint runs/ft --data runs/survey --out preds.parquet",
    ),
)


def main(argv: list[str] | None = None) -> int:
    """``python -m astropt.predict`` (the same as ``astropt predict``)."""
    return run_command(COMMAND, argv, "python -m astropt.predict")


if __name__ == "__main__":
    raise SystemExit(main())
