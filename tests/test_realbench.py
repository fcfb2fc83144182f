"""astropt realbench: labelled folders (a catalogue and sub-folder labels) written from the
synthetic survey as JPEG files, pretrained once, split by id hash, probed against every
baseline, reused on rerun."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from astropt.cli import main as cli_main
from astropt.errors import UserError
from astropt.options import ConfigError
from astropt.realbench import (
    BASELINES,
    RealbenchOptions,
    _data_options,
    _parse_mapping,
    run_realbench,
    split_of,
    write_example,
)


def test_split_of_is_a_fixed_function_of_the_id():
    # Published dev/test tables depend on this assignment: it must never drift.
    assert [split_of(i) for i in ("gal_0", "gal_1", "gal_2", "587722952767439450")] == [
        split_of(i) for i in ("gal_0", "gal_1", "gal_2", 587722952767439450)
    ]
    assert [split_of(f"gal_{i}") for i in range(8)] == [
        "test", "test", "dev", "dev", "test", "dev", "dev", "dev"
    ]  # fmt: skip
    shares = [split_of(f"g{i}", 0.3) == "test" for i in range(4000)]
    assert 0.27 < sum(shares) / len(shares) < 0.33
    # A larger test fraction only moves galaxies from dev to test.
    assert all(split_of(f"g{i}", 0.5) == "test" for i in range(4000) if shares[i])


def test_derived_label_mapping_and_option_errors():
    assert _parse_mapping("spiral", "CLASS: 0 -> 0; 1, 2 -> 1") == (
        "CLASS",
        {"0": 0, "1": 1, "2": 1},
    )
    with pytest.raises(ConfigError, match="COLUMN"):
        _parse_mapping("spiral", "CLASS 0 -> 0")
    with pytest.raises(ConfigError, match="did you mean 'catalogue'"):
        RealbenchOptions(sets={"a": {"images": "x", "catalog": "y.csv"}}).real_sets()
    with pytest.raises(ConfigError, match="pretrain_on"):
        RealbenchOptions(pretrain_on=["everything"])
    # Data overrides reach the exports too, typed; the suite's own data keys stay its own.
    assert _data_options(
        [
            "data.resample=lanczos",
            "data.augment=false",
            "model.n_layer=2",
            "data.jpeg_reduce=false",
            "data.path=x",
        ]
    ) == {  # fmt: skip
        "resample": "lanczos",
        "jpeg_reduce": False,
    }


@pytest.mark.slow
def test_realbench_end_to_end_on_labelled_folders(tmp_path, capsys):
    suite = write_example(tmp_path / "example", n=96)
    out = tmp_path / "out"
    argv = [
        "realbench", str(suite), f"out={out}", "max_iters=12", "batch_size=8", "folds=2",
        "repeats=1", "pretrain_on=without-test,all-images", "model.n_layer=2",
        'variants={narrow = ["model.n_embd=64"]}',
    ]  # fmt: skip
    assert cli_main(argv) == 0
    result = json.loads((out / "results" / "dev" / "realbench.json").read_text())
    assert result["split"] == "dev" and result["choices"]["max_iters"] == 12

    # dev/test: disjoint, every galaxy in one, decided by the id's hash alone.
    tables = {name: pd.read_csv(out / "sets" / name / "catalogue.csv", dtype={"id": str})
              for name in ("catalogued", "by_folder")}  # fmt: skip
    for table in tables.values():
        assert set(table.split) == {"dev", "test"}
        assert list(table.split) == [split_of(i) for i in table.id]
        assert not set(table.id[table.split == "dev"]) & set(table.id[table.split == "test"])
    # Sub-folder labels follow the folders' order; the catalogue's derived label its mapping.
    folder = tables["by_folder"]
    assert (folder.spiral == folder.filename.str.startswith("spiral/").astype(int)).all()
    catalogued = tables["catalogued"]
    assert (catalogued["round"] == catalogued.galaxy10.isin([0, 1]).astype(int)).all()

    # Pretraining exclusion: the trainer drew no test galaxy in the without-test pool, and
    # it drew test galaxies in the all-images pool.
    test_ids = {f"{n}:{i}" for n, t in tables.items() for i in t.id[t.split == "test"]}
    dev_ids = {f"{n}:{i}" for n, t in tables.items() for i in t.id[t.split == "dev"]}
    (without,) = (out / "models").glob("model-without-test-*")
    (with_all,) = (out / "models").glob("model-all-images-*")
    seen_without = set((without / "seen-ids.txt").read_text().split())
    seen_all = set((with_all / "seen-ids.txt").read_text().split())
    assert seen_without and seen_without <= dev_ids
    assert seen_all & test_ids and seen_all <= dev_ids | test_ids
    assert result["models"]["model"]["seen_images"] == len(seen_without)
    # A variant is its own model, trained with its overrides on the same pool.
    (narrow,) = (out / "models").glob("narrow-without-test-*")
    assert json.loads((narrow / "config.json").read_text())["model"]["n_embd"] == 64

    # The table: every label of every set against every baseline, for both models.
    labels = {"catalogued": {"is_edge_on", "smooth_frac", "galaxy10", "round"},
              "by_folder": {"spiral"}}  # fmt: skip
    pairs = {(r["set"], r["label"], r["model"], r["baseline"]) for r in result["comparisons"]}
    for name, names in labels.items():
        for label in names:
            for model in ("model", "model [all-images]", "narrow", "narrow [all-images]"):
                for baseline in BASELINES:
                    assert (name, label, model, baseline) in pairs
    assert {r["outcome"] for r in result["comparisons"]} <= {"win", "tie", "loss"}
    assert all(r["ci_low"] <= r["difference"] <= r["ci_high"] for r in result["comparisons"])
    counts = {name: info["n_galaxies"] for name, info in result["sets"].items()}
    assert counts == {n: int((t.split == "dev").sum()) for n, t in tables.items()}
    text = (out / "results" / "dev" / "realbench.md").read_text()
    assert "split=dev" in text and "| spiral | model | morphometrics |" in text

    # A rerun reuses every model, marker and export.
    made = sorted(
        p
        for pattern in ("*.json", "_manifest.json", "*.safetensors", "seen-ids.txt")
        for p in out.rglob(pattern)
        if "results" not in p.parts
    )
    stamps = [p.stat().st_mtime_ns for p in made]
    capsys.readouterr()
    assert cli_main(argv) == 0
    assert "reused" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in made] == stamps
    again = json.loads((out / "results" / "dev" / "realbench.json").read_text())
    assert again["comparisons"] == result["comparisons"]

    # Another layer re-embeds the models and random-init but reuses the image baselines.
    images = sorted(out.glob("embeddings/*/baselines-*/_manifest.json"))
    assert len(images) == 4  # pixels and morphometrics of both sets
    stamps = [p.stat().st_mtime_ns for p in images]
    assert cli_main([*argv, "layer=final"]) == 0
    assert [p.stat().st_mtime_ns for p in images] == stamps
    assert len(list(out.glob("embeddings/*/random-*.random.parquet"))) == 4

    # The test split is run once: other settings are refused once its table exists.
    test_opts = RealbenchOptions(
        sets={}, images=str(tmp_path / "example" / "by_folder"), folders=["no_spiral", "spiral"],
        out=str(out / "t"), split="test", max_iters=2, batch_size=8, folds=2, repeats=1,
        overrides=["model.n_layer=1"],
    )  # fmt: skip
    assert run_realbench(test_opts) == 0
    with pytest.raises(UserError, match="run once"):
        run_realbench(RealbenchOptions(**{**test_opts.__dict__, "crop_fraction": 0.8}))
