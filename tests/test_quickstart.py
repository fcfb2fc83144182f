"""`make quickstart` end to end, in its --fast flavour: every report artefact exists and parses."""

import json
import re
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from astropt.errors import UserError
from astropt.probe import eval_split
from astropt.quickstart import PROBE_PAGE, main, publish

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fast_quickstart_writes_a_complete_report_and_resumes(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["--out", str(out), "--fast"]) == 0

    report = (out / "REPORT.md").read_text()
    # Every figure the report links exists and decodes as a PNG.
    links = re.findall(r"\]\(([^)]+\.png)\)", report)
    assert {"umap.png", "completions.png", "probes/probe_summary.png"} <= set(links)
    for link in links:
        with Image.open(out / link) as image:
            assert image.format == "PNG" and min(image.size) > 100

    # The probe numbers are real tables with the model and four baselines on the same folds.
    results = pd.read_csv(out / "probes" / "probe_results.csv")
    baselines = {"pixels", "pixels-normalised", "random-init", "morphometrics"}
    assert {"model", *baselines} == set(results["embedding"])
    assert {"log_mstar", "redshift", "galaxy10", "pos_angle"} <= set(results["target"])
    folds = pd.read_csv(out / "probes" / "folds.csv")
    assert sorted(folds.groupby("repeat").id.nunique().unique()) == [60]
    headline = json.loads((out / "probes" / "headline.json").read_text())
    assert set(headline["baselines"]) == baselines
    assert {f["name"] for f in headline["families"]} >= {"redshift", "colour", "orientation"}

    # The model was trained (loss fell) and the embeddings cover the test split.
    metrics = [
        json.loads(line) for line in (out / "model" / "metrics.jsonl").read_text().splitlines()
    ]
    val = [m["val_loss"] for m in metrics if m.get("val_loss") is not None]
    assert len(val) >= 2 and val[-1] < val[0]
    from astropt.export import read_embeddings

    ids, features, catalogue = read_embeddings(out / "embeddings" / "test.parquet")
    survey = json.loads((out / "survey" / "survey.json").read_text())
    test_size = survey["splits"]["test"]
    assert len(ids) == len(np.unique(ids)) == test_size
    assert np.isfinite(features).all() and "log_mstar" in catalogue

    completions = np.load(out / "completions.npz")
    assert completions["completion"].shape == completions["tokens"].shape

    # The scientific bar is stated with its numbers, and every family not won is named.
    assert re.search(r"wins .* against every baseline on \d+ of \d+ target families", report)
    bar = json.loads((out / ".steps" / "probe.json").read_text())
    for family in bar["not_won"]:
        assert f"- {family}: " in report

    # Running again redoes nothing: every step reports it is skipped.
    capsys.readouterr()
    assert main(["--out", str(out), "--fast"]) == 0
    printed = capsys.readouterr().out
    for step in ("survey", "train", "embed", "probe", "maps", "complete"):
        assert f"{step}: already done" in printed

    # The test run's headline records its split, choices and provenance; published into a
    # checkout it passes `bench/report.py --check`, and its generated table names its
    # comparisons.
    assert headline["info"]["split"] == "test" and "embed_layer" in headline["info"]["choices"]
    assert headline["provenance"]["command"] == "python -m astropt.quickstart --fast"
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "README.md").write_text("# readme\n")
    (repo / PROBE_PAGE).write_text(
        "<!-- probe-table: results/quickstart-probes.json -->\n<!-- /probe-table -->\n"
    )
    publish(out, repo)
    report = runpy.run_path(str(REPO / "bench" / "report.py"), run_name="report")
    assert report["check_published"](repo) == []
    page = (repo / PROBE_PAGE).read_text()
    assert re.search(r"\d+ families x 4 baselines = \d+ comparisons", page)

    # The dev split: the same loop on the validation galaxies, beside the test run.
    assert main(["--out", str(out), "--fast", "--split", "dev"]) == 0
    dev = json.loads((out / "probes-dev" / "headline.json").read_text())
    assert dev["info"]["split"] == "dev"
    assert dev["run"]["command"] == "python -m astropt.quickstart --fast --split dev"
    dev_ids, _, _ = read_embeddings(out / "embeddings" / "validation.parquet")
    assert len(dev_ids) == survey["splits"]["validation"] and not set(dev_ids) & set(ids)
    assert "probes-dev/probe_summary.png" in (out / "REPORT-dev.md").read_text()
    capsys.readouterr()
    assert main(["--out", str(out), "--fast", "--split", "dev", "--publish"]) == 2
    assert "run it with --split test" in capsys.readouterr().err
    with pytest.raises(UserError, match="exported from the dev split"):
        eval_split(out / "embeddings" / "validation.parquet", "test")
    assert eval_split(out / "embeddings" / "validation.parquet", None) == "dev"
