"""``astropt probe`` (``python probe/linear_probe.py``): options and the command."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from astropt.options import Command, run_command
from astropt.probe.baselines import PixelSource, discover_embeddings
from astropt.probe.protocol import EVAL_SPLITS, PROTOCOLS
from astropt.probe.report import headline_table
from astropt.probe.suite import run_probe_suite


@dataclass
class ProbeOptions:
    """Options of ``astropt probe`` (``python probe/linear_probe.py``)."""

    embeddings: str  # embedding export (folder or parquet file)
    out: str = "report"  # report folder
    pixels: str | None = None  # pixel export (default: emb.pixels.parquet beside the export)
    random: str | None = None  # random-init baseline export (default: beside the export)
    morphometrics: str | None = None  # morphometrics export (default: beside the export)
    baselines: bool = True  # false: probe the model's embeddings only
    # columns, 'col>0.5' thresholds, 'col:regression', 'col:circular=180' (default: all numeric)
    targets: list[str] | None = None
    seed: int = 0  # folds and label subsets
    # repeated: stratified 5-fold x 3 repeats, CV-chosen ridge strength;
    # astropt: AstroPT's 5-fold ridge with alpha = 100
    protocol: str = "repeated"
    folds: int | None = None  # k of the k-fold (default: the protocol's)
    repeats: int | None = None  # repeats of the k-fold (default: the protocol's)
    # dev (choosing settings) or test (the published table); recorded in the report
    split: str | None = None
    # settings chosen before this run, as name:split (e.g. embed_layer:dev); recorded
    choices: list[str] = field(default_factory=list)
    # training-set sizes of the label-efficiency curves, e.g. 30,100,all ('' to skip)
    label_sizes: list[str] = field(
        default_factory=lambda: ["30", "100", "300", "1000", "3000", "all"]
    )
    label_targets: list[str] | None = None  # targets with label-efficiency curves ('all')
    threads: int = 1  # BLAS threads of the fits

    def __post_init__(self) -> None:
        for size in self.label_sizes:
            if size not in ("all", "") and not size.isdigit():
                raise ValueError(f"label_sizes: {size!r} is neither a count nor 'all'")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)}, got {self.protocol!r}")
        if self.split is not None and self.split not in EVAL_SPLITS:
            raise ValueError(f"split must be one of {EVAL_SPLITS}, got {self.split!r}")
        for choice in self.choices:
            if choice.partition(":")[2] not in EVAL_SPLITS:
                raise ValueError(f"choices: {choice!r} is not name:dev or name:test")


def eval_split(export: str | Path, split: str | None) -> str | None:
    """The evaluation split (``dev``/``test``) of an export: ``split`` checked against the
    data split its manifest records (dev = ``validation``, test = ``test``), else that record's."""
    from astropt.data.sources import canonical_split
    from astropt.embed import read_manifest

    manifest = read_manifest(export) or {}
    recorded = (manifest.get("settings") or {}).get("split") or manifest.get("split")
    recorded = {"validation": "dev", "test": "test"}.get(canonical_split(recorded or ""))
    if split is not None and recorded is not None and split != recorded:
        from astropt.errors import UserError

        raise UserError(f"split={split} but {export} was exported from the {recorded} split")
    return split or recorded


def run_probe(opts: ProbeOptions) -> int:
    """Probe an export and its baselines; write the report; print the family table."""
    from astropt.embed import export_baselines_for, read_manifest

    sets = discover_embeddings(opts.embeddings)
    if opts.pixels:
        sets["pixels"] = PixelSource(Path(opts.pixels))
        sets["pixels-normalised"] = PixelSource(Path(opts.pixels), normalise=True)
    if opts.random:
        sets["random-init"] = Path(opts.random)
    if opts.morphometrics:
        sets["morphometrics"] = Path(opts.morphometrics)
    if not opts.baselines:
        sets = {"model": sets["model"]}
    missing = tuple(
        dict.fromkeys(
            "pixels" if name.startswith("pixels") else name
            for name, path in sets.items()
            if path is None
        )
    )
    if missing:
        meta = (read_manifest(opts.embeddings) or {}).get("meta", {})
        if "model_config" in meta:
            print(f"computing the {', '.join(missing)} baseline(s)", file=sys.stderr)
            export_baselines_for(opts.embeddings, which=missing, seed=opts.seed)
            found = discover_embeddings(opts.embeddings)
            sets.update({name: found[name] for name, path in sets.items() if path is None})
        else:
            print(
                f"no {' or '.join(missing)} baseline beside {opts.embeddings} and no record of "
                "its model and data to compute them: probing without",
                file=sys.stderr,
            )
    label_targets = opts.label_targets
    if label_targets == ["all"]:
        label_targets = "all"
    sizes = [None if size in ("all", "") else int(size) for size in opts.label_sizes]
    run = run_probe_suite(
        sets,
        opts.out,
        split=eval_split(opts.embeddings, opts.split),
        targets=opts.targets,
        seed=opts.seed,
        protocol=opts.protocol,
        folds=opts.folds,
        repeats=opts.repeats,
        choices=dict(choice.split(":", 1) for choice in opts.choices),
        label_sizes=[s for s in sizes if s != 0] or None,
        label_targets=label_targets,
        threads=opts.threads,
        progress=True,
    )
    print(headline_table(run.headline()))
    print(f"report: {Path(opts.out) / 'report.md'}", file=sys.stderr)
    return 0


COMMAND = Command(
    ProbeOptions,
    run_probe,
    "Linear probes of an embedding export against four baselines, with intervals.",
    positional=("embeddings",),
    examples=(
        "astropt probe emb.parquet out=report/ label_sizes=30,all",
        "astropt probe emb.parquet out=report-astropt/ protocol=astropt",
        "python probe/linear_probe.py emb.parquet --out report/ --label-sizes 30,all",
    ),
)


def main(argv: list[str] | None = None) -> int:
    """``python probe/linear_probe.py`` (the same as ``astropt probe``)."""
    return run_command(COMMAND, argv, "python probe/linear_probe.py")
