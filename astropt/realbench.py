"""The real-galaxy suite: pretrain once on your labelled folders, probe every label.

``astropt realbench SUITE.toml out=DIR split=dev`` (see ``docs/realbench.md``):

1. ``sets``: every set is a folder of images (JPEG/PNG/FITS/``.npy``) labelled by a
   CSV catalogue (``catalogue``, ``id_column``, label columns, optional ``derived``
   labels that map a column's values to classes) or by sub-folder name
   (``folders = ["non_spirals", "spirals"]``: class 0, 1, ... in that order, in the
   column ``folder_label``); a set without labels only adds pretraining images.
   Every labelled galaxy goes to ``dev`` or ``test`` by a stable hash of its id
   (:func:`split_of`: SHA-256 of the id as text; ``test_fraction`` of them, default
   half, are ``test``), so the assignment depends on nothing but the id. The images
   are never copied: ``OUT/sets/NAME/images`` holds symbolic links, and
   ``OUT/sets/NAME/catalogue.csv`` the ids, splits and labels.
2. ``pretrain``: the quickstart-shaped model (``configs/quickstart.toml``) is
   pretrained once per variant on the union of every set's images, each centre-cropped
   (``crop_fraction``) and resampled to ``resize`` pixels; ``pretrain_on`` chooses
   ``without-test`` (every set's test galaxies left out: the default), ``all-images``,
   or both (reported side by side). The ids the trainer actually drew are written
   to ``MODEL/seen-ids.txt`` (``seen_images`` in its marker).
3. ``embed``: every model embeds every labelled set (``layer``: default the
   model's ``embed_layer``), with the four baselines of :mod:`astropt.embed`
   (``random-init``, ``pixels``, ``pixels-normalised``, ``morphometrics``).
4. ``probe``: every label of every set, on the galaxies of ``split`` only, with
   :func:`astropt.probe.run_probes` (its folds, intervals and outcomes), every model
   against every baseline; one table, ``OUT/results/SPLIT/realbench.md`` and
   ``realbench.json``, records the split, the settings (``choices``) and where they
   were chosen (``chosen_on``).

Use ``split=dev`` to choose settings (crop, layer, steps, variants) and
``split=test`` once, with the chosen settings, for the published table: a test
table already written with other settings is refused. Every step is reused by a
rerun with the same settings (models, exports: folders named by a hash of their
settings), so dev runs with several crops share what they can.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from astropt.errors import UserError
from astropt.options import Command, ConfigError, run_command, table_fields

#: Names of the baseline embedding sets (:func:`astropt.probe.discover_embeddings`).
BASELINES = ("random-init", "pixels", "pixels-normalised", "morphometrics")
#: Pretraining image pools: every set's images, or every set's images but its test galaxies.
POOLS = ("without-test", "all-images")
SPLIT_NAMES = ("dev", "test")
DEFAULT_VARIANT = "model"


@dataclass
class RealSet:
    """One labelled folder (a ``[sets.NAME]`` table of the suite file)."""

    images: str  # folder of images (searched recursively)
    catalogue: str | None = None  # CSV with an id (or file name) column and label columns
    id_column: str | None = None  # the catalogue's id column (None: dr8_id, id, objid, ...)
    # probe targets (astropt.probe specs: "col", "col>0.5", "col:classification");
    # empty: the derived and folder labels
    labels: list[str] = field(default_factory=list)
    # new labels from a catalogue column: name -> "COLUMN: 0 -> 0; 1,2 -> 1"
    # (values not listed are unlabelled for that label)
    derived: dict = field(default_factory=dict)
    folders: list[str] = field(default_factory=list)  # sub-folders named by class (0, 1, ...)
    folder_label: str = "class"  # the label column that ``folders`` make

    def targets(self) -> list[str]:
        """The probe specs of this set's labels."""
        found = list(self.labels)
        found += [f"{name}:classification" for name in self.derived if name not in found]
        if self.folders and not any(t.split(":")[0] == self.folder_label for t in found):
            found.append(f"{self.folder_label}:classification")
        return found


@dataclass
class RealbenchOptions:
    """Options of ``astropt realbench`` (a suite TOML file and/or ``key=value``)."""

    out: str = "runs/realbench"  # work folder: links, models, exports, results
    split: Literal["dev", "test"] = "dev"  # dev: choose settings; test: once, for the table
    # the labelled sets: name -> table of RealSet keys (images, catalogue, labels, ...)
    sets: dict = field(default_factory=dict)
    images: str | None = None  # one set from the command line: its folder (the set's name)
    catalogue: str | None = None  # that set's CSV catalogue
    id_column: str | None = None  # that set's id column (None: dr8_id, id, objid, ...)
    labels: list[str] = field(default_factory=list)  # that set's probe targets
    folders: list[str] = field(default_factory=list)  # that set's class sub-folders (0, 1, ...)
    test_fraction: float = 0.5  # share of each labelled set's galaxies in the test split
    # pretraining pools: without-test (every set's test galaxies left out), all-images
    pretrain_on: list[str] = field(default_factory=lambda: ["without-test"])
    config: str = "configs/quickstart.toml"  # model and training config of every variant
    # model/training variants: name -> list of key=value overrides, e.g.
    # {flux = ["model.flux_tokens=true"]}; the plain config always runs as "model"
    variants: dict = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)  # training overrides for every variant
    # models trained elsewhere to embed and compare too: name -> run folder or Hub name
    # (e.g. survey-pretrained models, for the transfer gap)
    extra_models: dict = field(default_factory=dict)
    max_iters: int = 1500  # pretraining steps
    batch_size: int = 32  # pretraining batch size
    crop_fraction: float | None = 0.5  # centre crop, fraction of the shorter side
    resize: int = 64  # pixels after the crop
    layer: str | None = None  # embedding layer (final, middle, an index, a+b; None: the model's)
    folds: int | None = None  # probe folds (None: astropt.probe's protocol)
    repeats: int | None = None  # probe repeats (None: the protocol's)
    threads: int = 1  # torch and BLAS threads (one is kindest to a shared machine)
    chosen_on: str = ""  # where the settings were chosen, recorded in the table (e.g. "dev")
    seed: int = 0  # training, fold and resampling seed

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be between 0 and 1, got {self.test_fraction}")
        unknown = [p for p in self.pretrain_on if p not in POOLS]
        if unknown or not self.pretrain_on:
            raise ConfigError(f"pretrain_on takes {list(POOLS)}, got {self.pretrain_on}")
        if DEFAULT_VARIANT in self.variants:
            raise ConfigError(f"variant name {DEFAULT_VARIANT!r} is the plain config's")

    def real_sets(self) -> dict[str, RealSet]:
        """Every set, checked against :class:`RealSet`'s keys."""
        found = {}
        for name, table in self.sets.items():
            if not isinstance(table, dict):
                raise ConfigError(f"sets.{name} must be a table of {RealSet.__name__} keys")
            values = table_fields(RealSet, table, f"sets.{name}")
            if "images" not in values:
                raise ConfigError(f"sets.{name} needs images = FOLDER")
            found[name] = RealSet(**values)
        if self.images:
            name = Path(self.images).name or "images"
            found[name] = RealSet(
                images=self.images,
                catalogue=self.catalogue,
                id_column=self.id_column,
                labels=list(self.labels),
                folders=list(self.folders),
            )
        if not found:
            raise ConfigError("no sets: give a suite file with [sets.NAME] tables, or images=DIR")
        return found

    def choices(self) -> dict:
        """The settings a table depends on (recorded beside it; a test table is tied to them)."""
        keep = (
            "test_fraction", "pretrain_on", "config", "variants", "overrides", "extra_models",
            "max_iters",
            "batch_size", "crop_fraction", "resize", "layer", "folds", "repeats", "seed",
        )  # fmt: skip
        return {k: getattr(self, k) for k in keep}


# ----------------------------------------------------------------------------- splits
def split_of(galaxy_id: Any, test_fraction: float = 0.5) -> str:
    """``"test"`` or ``"dev"`` for a galaxy id: SHA-256 of ``str(id)``, its first 8 bytes
    read as a fraction of 2**64, ``test`` below ``test_fraction``. Depends on the id only."""
    digest = hashlib.sha256(str(galaxy_id).encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "dev"


def _parse_mapping(name: str, spec: str) -> tuple[str, dict[str, int]]:
    """``"COLUMN: 0 -> 0; 1,2 -> 1"`` -> ``("COLUMN", {"0": 0, "1": 1, "2": 1})``."""
    column, sep, rules = str(spec).partition(":")
    form = f"derived label {name!r}: write 'COLUMN: v,v -> 0; v -> 1', got {spec!r}"
    if not sep:
        raise ConfigError(form)
    mapping: dict[str, int] = {}
    for rule in filter(None, (r.strip() for r in rules.split(";"))):
        values, arrow, label = rule.partition("->")
        try:
            code = int(label)
        except ValueError:
            code = None
        if not arrow or code is None:
            raise ConfigError(form)
        for value in values.split(","):
            mapping[value.strip()] = code
    if not mapping:
        raise ConfigError(f"derived label {name!r} maps no values: {spec!r}")
    return column.strip(), mapping


def _number_text(value: Any) -> str:
    """A catalogue value as the text a mapping names (``1.0`` and ``1`` are both ``"1"``)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def set_table(name: str, real_set: RealSet, test_fraction: float):
    """The galaxies of a set: a DataFrame of ``filename`` (path under the set's folder),
    ``source`` (the file), ``id``, ``split`` and the label columns, and how many were skipped."""
    import numpy as np
    import pandas as pd

    from astropt.data import DataConfig
    from astropt.data.sources import FolderSource

    root = Path(real_set.images)
    if not root.is_dir():
        raise UserError(f"sets.{name}: images {str(root)!r} is not a folder")
    frames, skipped = [], 0

    def read(folder: Path, catalogue: str | None, prefix: str) -> tuple[Any, dict]:
        cfg = DataConfig(
            source="folder", path=str(folder), catalogue=catalogue, id_column=real_set.id_column
        )
        try:
            source = FolderSource(cfg, "train", None)
        except (ValueError, FileNotFoundError) as error:
            raise UserError(f"sets.{name}: {error}") from error
        good = [i for i, s in enumerate(source.samples) if s.problem is None and s.paths]
        frame = pd.DataFrame(
            {
                "filename": [prefix + source.samples[i].name for i in good],
                "source": [os.path.abspath(source.samples[i].paths[0]) for i in good],
                "id": [str(source.samples[i].id) for i in good],
            }
        )
        columns = {k: np.asarray(v)[good] for k, v in source.catalogue.items()}
        return frame, columns, len(source.samples) - len(good)

    if real_set.folders:
        if real_set.catalogue:
            raise ConfigError(f"sets.{name}: give catalogue or folders, not both")
        for code, sub in enumerate(real_set.folders):
            if not (root / sub).is_dir():
                raise UserError(f"sets.{name}: no sub-folder {sub!r} in {root}")
            frame, _, bad = read(root / sub, None, sub + "/")
            frame[real_set.folder_label] = code
            frames.append(frame)
            skipped += bad
        table = pd.concat(frames, ignore_index=True)
    else:
        table, columns, skipped = read(root, real_set.catalogue, "")
        for column, values in columns.items():
            table[column] = values
        for label, spec in real_set.derived.items():
            column, mapping = _parse_mapping(label, spec)
            if column not in table.columns:
                raise ConfigError(f"derived label {label!r}: no catalogue column {column!r}")
            codes = [mapping.get(_number_text(v), -1) for v in table[column]]
            table[label] = pd.array([c if c >= 0 else None for c in codes], dtype="Int64")
    if table.id.duplicated().any():
        dup = table.id[table.id.duplicated()].iloc[0]
        raise UserError(f"sets.{name}: galaxy id {dup!r} appears twice (ids decide the split)")
    table["split"] = [split_of(i, test_fraction) for i in table.id]
    return table, skipped


def _link_tree(links: Path, table, prefix: str = "") -> None:
    """Symbolic links ``links/PREFIX/filename -> source`` for every row (made once)."""
    for filename, source in zip(table.filename, table.source):
        link = links / prefix / filename
        if not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(source)


# ----------------------------------------------------------------------------- steps
def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _step(marker: Path, action) -> dict:
    """Run ``action`` unless ``marker`` (its JSON result) exists; write the marker after."""
    if marker.is_file():
        print(f"[realbench] {marker.parent.name}/{marker.stem}: done, reused", flush=True)
        return json.loads(marker.read_text())
    start = time.perf_counter()
    result = action() or {}
    result["seconds"] = round(time.perf_counter() - start, 1)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(result, indent=1, default=str))
    return result


class _RecordIds:
    """A training loader that notes the id of every galaxy it hands the trainer."""

    def __init__(self, loader, seen: set[str]):
        self._loader, self._seen = loader, seen

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def __iter__(self):
        for batch in self._loader:
            self._seen.update(str(i) for i in batch.ids)
            yield batch


class Realbench:
    """The suite's steps over one :class:`RealbenchOptions`."""

    def __init__(self, opts: RealbenchOptions):
        self.opts = opts
        self.out = Path(opts.out)
        self.sets = opts.real_sets()

    # ------------------------------------------------------------------ data
    def data_fields(self, folder: Path, catalogue: Path | None = None) -> dict:
        return dict(
            source="folder",
            path=str(folder),
            catalogue=str(catalogue) if catalogue else None,
            id_column="id" if catalogue else None,
            crop_fraction=self.opts.crop_fraction,
            resize=self.opts.resize,
            image_size=None,
        )

    def prepare_sets(self) -> dict[str, dict]:
        """Each set's galaxies, splits and links; returns name -> summary."""
        summaries = {}
        for name, real_set in self.sets.items():
            folder = self.out / "sets" / name
            key = _digest([dataclasses.asdict(real_set), self.opts.test_fraction])

            def prepare(name=name, real_set=real_set, folder=folder):
                table, skipped = set_table(name, real_set, self.opts.test_fraction)
                _link_tree(folder / "images", table)
                labels = [c for c in table.columns if c not in ("filename", "source", "id")]
                table.drop(columns=["source"]).to_csv(folder / "catalogue.csv", index=False)
                table[["id", "split", "filename", "source"]].to_csv(
                    folder / "galaxies.csv", index=False
                )
                counts = table.split.value_counts()
                return {
                    "galaxies": len(table),
                    "dev": int(counts.get("dev", 0)),
                    "test": int(counts.get("test", 0)),
                    "skipped": skipped,
                    "columns": labels,
                    "targets": real_set.targets(),
                }

            summaries[name] = _step(folder / f"prepared-{key}.json", prepare)
        return summaries

    def pretrain_pool(self, pool: str) -> tuple[Path, Path]:
        """A folder of links to every set's pretraining images of ``pool`` and its catalogue
        (``filename``, ``id`` = ``SET:ID``), made once; returns ``(folder, catalogue)``."""
        import pandas as pd

        key = _digest([pool, {n: dataclasses.asdict(s) for n, s in self.sets.items()},
                       self.opts.test_fraction])  # fmt: skip
        folder = self.out / "pretrain-images" / f"{pool}-{key}"
        catalogue = folder / "catalogue.csv"

        def link():
            tables = []
            for name, real_set in self.sets.items():
                table = pd.read_csv(self.out / "sets" / name / "galaxies.csv", dtype=str)
                if pool == "without-test" and real_set.targets():
                    table = table[table.split != "test"]
                # "set-" keeps a set called train/dev/test from reading as a split folder
                _link_tree(folder / "images", table, prefix=f"set-{name}")
                tables.append(pd.DataFrame({"filename": f"set-{name}/" + table.filename,
                                            "id": f"{name}:" + table.id}))  # fmt: skip
            pd.concat(tables).to_csv(catalogue, index=False)
            return {"images": sum(map(len, tables))}

        _step(folder / "linked.json", link)
        return folder / "images", catalogue

    # ----------------------------------------------------------------- models
    def model_runs(self) -> dict[str, tuple[str, str, list[str]]]:
        """Table name -> (variant, pool, overrides) of every model to pretrain."""
        variants = {DEFAULT_VARIANT: [], **{k: list(v) for k, v in self.opts.variants.items()}}
        runs = {}
        for variant, overrides in variants.items():
            for pool in self.opts.pretrain_on:
                tag = variant if pool == POOLS[0] else f"{variant} [{pool}]"
                runs[tag] = (variant, pool, [*self.opts.overrides, *overrides])
        return runs

    def pretrain(self, variant: str, pool: str, overrides: list[str]) -> Path:
        """Pretrain one model (or reuse it); the ids it trained on go to ``seen-ids.txt``."""
        from astropt.config import load_config
        from astropt.data import make_loader
        from astropt.options import resolve_config_path
        from astropt.train import train

        images, catalogue = self.pretrain_pool(pool)
        opts = self.opts
        data = [f"data.{k}={'null' if v is None else v}" for k, v in
                self.data_fields(images, catalogue).items()]  # fmt: skip
        settings = [
            f"max_iters={opts.max_iters}",
            f"eval_interval={max(opts.max_iters // 2, 1)}",
            "eval_iters=2",
            f"batch_size={opts.batch_size}",
            f"optim.warmup_iters={max(opts.max_iters // 15, 1)}",
            f"seed={opts.seed}",
            "data.augment=true",
            *data,
            *overrides,
        ]
        key = _digest([opts.config, settings, images.parent.name])
        run = self.out / "models" / f"{variant}-{pool}-{key}"
        seen: set[str] = set()
        seen_file = run / "seen-ids.txt"

        def record(cfg, split, **kwargs):
            loader = make_loader(cfg, split, **kwargs)
            return _RecordIds(loader, seen) if split == "train" else loader

        def fit():
            if seen_file.is_file():  # a resumed run: keep what the first part saw
                seen.update(seen_file.read_text().split())
            cfg = load_config(
                resolve_config_path(opts.config),
                [f"out_dir={run}", "resume=true", "progress=false", *settings],
            )
            summary = train(cfg, loader_factory=record)
            seen_file.write_text("\n".join(sorted(seen)) + "\n")
            keep = ("steps", "best_val_loss", "final_val_loss", "n_params", "wall_time_s")
            return {
                "variant": variant,
                "pool": pool,
                "overrides": settings,
                "seen_images": len(seen),
                **{k: summary.get(k) for k in keep},
            }

        _step(run / "realbench-done.json", fit)
        return run

    # -------------------------------------------------------------- embedding
    def embed(self, models: dict[str, Path], name: str) -> dict[str, object]:
        """Every model's export of set ``name`` and the baselines; name -> embedding source."""
        from astropt.embed import export_baselines, export_embeddings
        from astropt.export import data_config_for
        from astropt.hub import load_model
        from astropt.probe import discover_embeddings

        folder = self.out / "sets" / name
        fields = self.data_fields(folder / "images", folder / "catalogue.csv")
        fields.update(_data_options(self.opts.overrides))
        runs = self.model_runs()
        layer = self.opts.layer
        if layer is not None and layer.lstrip("-").isdigit():
            layer = int(layer)
        exports = self.out / "embeddings" / name
        sources: dict[str, object] = {}
        first = None
        for tag, run in models.items():
            model = load_model(run)
            own = _data_options(runs[tag][2]) if tag in runs else {}
            cfg = data_config_for(model, **{**fields, **own})
            name_key = run.name if tag in runs else f"extra-{_digest(str(run))}"
            out = exports / f"{name_key}-{layer or 'default'}.parquet"
            _export(export_embeddings, model, cfg, out, split="train", layer=layer)
            sources[tag] = out
            if first is None:
                first = (model, cfg)
        model, cfg = first
        # The image baselines depend on the images only; random-init also on the shape and layer.
        # Each base path names the baselines written beside it.
        images = exports / f"baselines-{_digest(dataclasses.asdict(cfg))}.parquet"
        shaped = exports / f"random-{_digest([fields, layer, model.config.to_dict()])}.parquet"
        options = dict(split="train", layer=layer)
        _export(export_baselines, model, cfg, images, which=("pixels", "morphometrics"), **options)
        _export(export_baselines, model, cfg, shaped, which=("random-init",), **options)
        found = {
            **discover_embeddings(images),
            "random-init": discover_embeddings(shaped)["random-init"],
        }
        sources.update({b: found[b] for b in BASELINES})
        return sources

    # ---------------------------------------------------------------- probing
    def probe(self, name: str, sources: dict[str, object], n_models: int):
        """:func:`astropt.probe.run_probes` of set ``name``'s labels on ``split`` galaxies."""
        from astropt.probe import run_probes

        subsets = {n: _split_rows(src, self.opts.split) for n, src in sources.items()}
        return run_probes(
            subsets,
            targets=self.sets[name].targets(),
            seed=self.opts.seed,
            folds=self.opts.folds,
            repeats=self.opts.repeats,
            label_sizes=None,
            split=self.opts.split,
            threads=self.opts.threads,
            models=n_models,
        )

    # -------------------------------------------------------------------- run
    def run(self, command: str = "") -> dict:
        import torch

        opts = self.opts
        torch.set_num_threads(opts.threads)
        results_dir = self.out / "results" / opts.split
        _refuse_second_test(results_dir / "realbench.json", opts)
        summaries = self.prepare_sets()
        labelled = [n for n, s in summaries.items() if s["targets"]]
        if not labelled:
            raise UserError("no set has labels: give labels, derived labels or folders")
        runs = self.model_runs()
        models, trained = {}, {}
        for tag, (variant, pool, overrides) in runs.items():
            models[tag] = self.pretrain(variant, pool, overrides)
            trained[tag] = json.loads((models[tag] / "realbench-done.json").read_text())
        for tag, path in opts.extra_models.items():
            models[tag] = Path(path)
            trained[tag] = {"pretrained elsewhere": str(path)}
        rows, comparisons, infos = [], [], {}
        for name in labelled:
            run = self.probe(name, self.embed(models, name), len(models))
            infos[name] = {**run.info, "galaxies": summaries[name]}
            for row in run.scores[run.scores.level == "target"].itertuples():
                rows.append({"set": name, "label": row.name, "metric": row.metric,
                             "embedding": row.embedding, "value": row.value,
                             "ci_low": row.ci_low, "ci_high": row.ci_high})  # fmt: skip
            target_rows = run.comparisons[run.comparisons.level == "target"]
            for row in target_rows.itertuples():
                if row.model in models and (row.baseline in BASELINES or row.baseline in models):
                    comparisons.append({"set": name, "label": row.name, "model": row.model,
                                        "baseline": row.baseline, "difference": row.improvement,
                                        "ci_low": row.ci_low, "ci_high": row.ci_high,
                                        "outcome": row.outcome})  # fmt: skip
        result = {
            "split": opts.split,
            "chosen_on": opts.chosen_on,
            "choices": opts.choices(),
            "command": command,
            "sets": infos,
            "models": trained,
            "scores": rows,
            "comparisons": comparisons,
        }
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / "realbench.json").write_text(json.dumps(result, indent=1, default=str))
        text = markdown(result)
        (results_dir / "realbench.md").write_text(text)
        print(text, flush=True)
        return result


#: Data keys the suite sets itself (the set's folder and catalogue) or an export fixes.
_SUITE_DATA_KEYS = ("source", "path", "catalogue", "id_column", "augment")


def _data_options(overrides: list[str]) -> dict:
    """The ``data.KEY=VALUE`` training overrides that also shape the images an export reads
    (``data.resample=lanczos``, ...), typed as :class:`~astropt.data.DataConfig` fields."""
    import typing

    from astropt.data import DataConfig
    from astropt.options import coerce

    hints = typing.get_type_hints(DataConfig)
    found = {}
    for entry in overrides:
        key, _, value = entry.partition("=")
        name = key[len("data.") :]
        if key.startswith("data.") and name in hints and name not in _SUITE_DATA_KEYS:
            found[name] = coerce(value, hints[name], key)
    return found


def _export(export, *args, **kwargs) -> Path:
    """``export(...)``, reusing a finished export with the same settings and replacing one
    made with others (a retrained model)."""
    try:
        return export(*args, progress=False, **kwargs)
    except ValueError as error:
        if "other settings" not in str(error):
            raise
        return export(*args, progress=False, overwrite=True, **kwargs)


def _split_rows(source, split: str):
    """The rows of an embedding source whose catalogue ``split`` column is ``split``, as
    ``(ids, features, catalogue)`` (a :class:`~astropt.probe.PixelSource` stays one, so
    the probes still reduce it by PCA inside each training fold)."""
    from astropt.export import read_embeddings
    from astropt.probe import PixelSource

    if isinstance(source, PixelSource):
        ids, features, catalogue = source.load()  # normalised here when asked
    else:
        ids, features, catalogue = read_embeddings(source)
    keep = (catalogue["split"] == split).to_numpy()
    subset = (ids[keep], features[keep], catalogue[keep])
    return (
        PixelSource(subset, token_dim=source.token_dim)
        if isinstance(source, PixelSource)
        else subset
    )


def _refuse_second_test(path: Path, opts: RealbenchOptions) -> None:
    """The test split is run once: refuse a test table with settings other than the first's."""
    if opts.split != "test" or not path.is_file():
        return
    before = json.loads(path.read_text()).get("choices")
    if json.loads(json.dumps(before)) != json.loads(json.dumps(opts.choices())):
        raise UserError(
            f"{path} was written with other settings ({before}): the test split is run once, "
            "with settings chosen on split=dev; remove it to publish another test table"
        )


def _cell(value: float, low: float, high: float, sign: bool = False) -> str:
    fmt = "{:+.3f}" if sign else "{:.3f}"
    return f"{fmt.format(value)} [{fmt.format(low)}, {fmt.format(high)}]"


def markdown(result: dict) -> str:
    """The table of a :meth:`Realbench.run` result: scores with intervals, then each model
    minus each baseline with its outcome, per set and label."""
    import pandas as pd

    choices = result["choices"]
    lines = [
        f"# astropt realbench: split={result['split']}",
        "",
        f"Settings (chosen on: {result['chosen_on'] or 'not recorded'}): "
        + ", ".join(f"{k}={v}" for k, v in choices.items()),
        "",
    ]
    for name, info in result["sets"].items():
        galaxies = info["galaxies"]
        protocol = info["protocol"]
        lines += [
            f"## {name}: {info['n_galaxies']} {result['split']} galaxies "
            f"(of {galaxies['galaxies']}: dev {galaxies['dev']}, test {galaxies['test']})",
            "",
            f"Probe: {protocol['folds']} folds x {protocol['repeats']} repeats; {info['interval']}.",
            "",
        ]
        scores = pd.DataFrame([r for r in result["scores"] if r["set"] == name])
        embeddings = list(dict.fromkeys(scores.embedding))
        lines += ["| label | metric | " + " | ".join(embeddings) + " |",
                  "|---|---|" + "---|" * len(embeddings)]  # fmt: skip
        for label, group in scores.groupby("label", sort=False):
            by = {r.embedding: _cell(r.value, r.ci_low, r.ci_high) for r in group.itertuples()}
            lines.append(
                f"| {label} | {group.metric.iloc[0]} | "
                + " | ".join(by.get(e, "") for e in embeddings)
                + " |"
            )
        lines += ["", "| label | model | minus | difference [95%] | outcome |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for r in result["comparisons"]:
            if r["set"] == name:
                diff = _cell(r["difference"], r["ci_low"], r["ci_high"], sign=True)
                lines.append(
                    f"| {r['label']} | {r['model']} | {r['baseline']} | {diff} | {r['outcome']} |"
                )
        lines.append("")
    tally: dict[str, dict[str, int]] = {}
    for r in result["comparisons"]:
        if r["baseline"] not in BASELINES:
            continue
        counts = tally.setdefault(r["model"], {"win": 0, "tie": 0, "loss": 0})
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    lines += [
        "## Tally (every label x baseline)",
        "",
        "Each interval is a per-comparison 95% interval, not adjusted for the number of "
        "comparisons counted here; a win or loss is an interval that excludes zero.",
        "",
    ]
    lines += [
        f"- {model}: {c['win']} wins, {c['tie']} ties, {c['loss']} losses of "
        f"{sum(c.values())} comparisons"
        for model, c in tally.items()
    ]
    for tag, info in result["models"].items():
        if "pretrained elsewhere" in info:
            lines.append(f"- {tag}: {info['pretrained elsewhere']}")
            continue
        lines.append(
            f"- {tag}: pretrained {info.get('steps')} steps on {info.get('seen_images')} "
            f"images ({info.get('pool')})"
        )
    return "\n".join(lines) + "\n"


def write_example(out: str | Path, n: int = 160, image_size: int = 64, seed: int = 0) -> Path:
    """Two labelled folders from the built-in synthetic survey, and a suite file naming them.

    ``OUT/catalogued/*.jpg`` with ``OUT/catalogued.csv`` (``id``, ``is_edge_on``,
    ``smooth_frac``, ``galaxy10``) holds the first half of ``n`` galaxies;
    ``OUT/by_folder/{no_spiral,spiral}/*.jpg`` (labelled by sub-folder, from
    ``has_spiral``) the rest. The JPEG files are the survey's own encoded stamps.
    Returns ``OUT/suite.toml``, ready for ``astropt realbench OUT/suite.toml``.
    """
    import shutil

    import pyarrow.parquet as pq

    from astropt.simulate import write_survey

    out = Path(out)
    survey = out / "survey"
    write_survey(survey, n, image_size, seed=seed, overwrite=True, progress=False)
    rows = []
    for shard in sorted(survey.glob("*/*.parquet")):
        rows += pq.read_table(shard).to_pylist()
    rows.sort(key=lambda r: str(r["dr8_id"]))
    half = len(rows) // 2
    (out / "catalogued").mkdir(parents=True, exist_ok=True)
    lines = ["id,is_edge_on,smooth_frac,galaxy10"]
    for row in rows[:half]:
        (out / "catalogued" / f"gal_{row['dr8_id']}.jpg").write_bytes(row["image"]["bytes"])
        lines.append(
            f"gal_{row['dr8_id']},{int(row['is_edge_on'])},{row['smooth_frac']},{row['galaxy10']}"
        )
    (out / "catalogued.csv").write_text("\n".join(lines) + "\n")
    for row in rows[half:]:
        folder = out / "by_folder" / ("spiral" if row["has_spiral"] else "no_spiral")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"gal_{row['dr8_id']}.jpg").write_bytes(row["image"]["bytes"])
    shutil.rmtree(survey)
    suite = out / "suite.toml"
    root = out.resolve()
    suite.write_text(
        "# Two labelled folders written by astropt.realbench.write_example\n"
        "[sets.catalogued]\n"
        f'images = "{root / "catalogued"}"\n'
        f'catalogue = "{root / "catalogued.csv"}"\n'
        'labels = ["is_edge_on", "smooth_frac", "galaxy10"]\n'
        'derived = { round = "galaxy10: 0,1 -> 1; 2,3,4,5,6,7,8,9 -> 0" }\n'
        "\n[sets.by_folder]\n"
        f'images = "{root / "by_folder"}"\n'
        'folders = ["no_spiral", "spiral"]\n'
        'folder_label = "spiral"\n'
    )
    return suite


def run_realbench(opts: RealbenchOptions) -> int:
    """Run (or finish) the suite into ``opts.out``."""
    command = "astropt realbench " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [])
    Realbench(opts).run(command=command)
    return 0


def _training_keys():
    from astropt.config import valid_keys

    return valid_keys()


COMMAND = Command(
    RealbenchOptions,
    run_realbench,
    "Pretrain once on labelled folders of real galaxies, probe every label against the "
    "baselines on the dev or test split (split by id hash).",
    positional=(),
    forward=("overrides", _training_keys),
    examples=(
        "astropt realbench suite.toml out=runs/real split=dev",
        "astropt realbench images=my_galaxies catalogue=labels.csv labels=spiral max_iters=300",
        "astropt realbench suite.toml split=test chosen_on=dev crop_fraction=0.35",
    ),
)


def main(argv: list[str] | None = None) -> int:
    """``python -m astropt.realbench`` (the same as ``astropt realbench``)."""
    return run_command(COMMAND, argv, "python -m astropt.realbench")


if __name__ == "__main__":
    sys.exit(main())
