"""`make quickstart` end to end, in its --fast flavour: every report artefact exists and parses."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from astropt.quickstart import main


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
