"""bench/real.py: a thin wrapper of astropt realbench for one folder and one label, with
survey-pretrained models (any run folders) compared beside the real-image model."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import encode

REPO = Path(__file__).resolve().parents[1]


def _bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    sys.modules.pop("real", None)
    import real

    return real


def _folder(tmp_path: Path, n: int = 48) -> tuple[Path, Path]:
    """JPEGs of two kinds, 96 px: label 1 a large bright disc, label 0 a small faint one."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows, cols = np.indices((96, 96)) - 47.5
    lines = ["filename,spiral"]
    for i in range(n):
        label = i % 2
        width, peak = (14.0, 200.0) if label else (5.0, 90.0)
        plane = peak * np.exp(-(rows**2 + cols**2) / (2 * width**2)) + rng.normal(12, 3, rows.shape)
        plane = np.clip(plane, 0, 255).astype(np.uint8)
        (folder / f"gal_{i:03d}.jpg").write_bytes(encode(np.stack([plane] * 3, axis=-1)))
        lines.append(f"gal_{i:03d}.jpg,{label}")
    catalogue = tmp_path / "catalogue.csv"
    catalogue.write_text("\n".join(lines) + "\n")
    return folder, catalogue


def test_bare_run_skips(monkeypatch, capsys):
    assert _bench(monkeypatch).main([]) == 0
    assert "skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_real_bench_compares_survey_models_beside_the_real_one(tmp_path, monkeypatch):
    real = _bench(monkeypatch)
    folder, catalogue = _folder(tmp_path)
    out = tmp_path / "work"
    argv = [
        str(folder), "--catalogue", str(catalogue), "--label", "spiral", "--out", str(out),
        "--iters", "2", "--batch-size", "8", "folds=2", "repeats=1",
    ]  # fmt: skip
    assert real.main(argv) == 0
    (model,) = (out / "models").iterdir()
    survey = tmp_path / "survey-models"
    for framing in ("fixed", "zoom"):
        shutil.copytree(model, survey / framing)
    assert real.main([*argv, "--survey-models", str(survey)]) == 0
    result = json.loads((out / "results" / "dev" / "realbench.json").read_text())
    scores = {r["embedding"]: r["value"] for r in result["scores"] if r["label"] == "spiral"}
    assert set(scores) == {"model", "survey (zoom)", "survey (fixed)", "random-init", "pixels",
                           "pixels-normalised", "morphometrics"}  # fmt: skip
    # The images and their labels stay paired: pixels tell the two kinds apart.
    assert scores["pixels"] > 0.9
    # A copy of the same weights embeds identically: it scores exactly like the model.
    assert scores["survey (fixed)"] == scores["model"]
    pairs = {(r["model"], r["baseline"]) for r in result["comparisons"]}
    assert ("survey (zoom)", "morphometrics") in pairs and ("model", "survey (fixed)") in pairs
