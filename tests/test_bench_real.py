"""bench/real.py on any folder of images with a label column: every variant probed on the
evaluation protocol, each pretrained model against every later set, work reused on rerun."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import encode

REPO = Path(__file__).resolve().parents[1]


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


@pytest.mark.slow
def test_real_bench_probes_every_variant_and_reuses_its_work(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    sys.modules.pop("real", None)
    import real

    folder, catalogue = _folder(tmp_path)
    out = tmp_path / "work"
    argv = [
        str(folder), "--catalogue", str(catalogue), "--label", "spiral", "--out", str(out),
        "--iters", "2", "--survey-n", "24", "--batch-size", "8", "--folds", "2", "--repeats", "1",
        "--n-boot", "50", "--torch-threads", "1",
    ]  # fmt: skip
    assert real.main(argv) == 0
    text = capsys.readouterr().out
    models = [real.REAL, real.SURVEY.format("zoom"), real.SURVEY.format("fixed")]
    scores = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0] in (*models, *real.BASELINES):
            scores[cells[0]] = float(cells[1])
    assert set(scores) == {*models, *real.BASELINES}
    # The images and their labels stay paired: pixels tell the two kinds apart.
    assert scores["pixels"] > 0.9
    pairs = set()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0] in models:
            assert cells[4] in ("win", "tie", "loss")
            pairs.add((cells[0], cells[1]))
    expected = {
        (model, later)
        for i, model in enumerate(models)
        for later in [*models[i + 1 :], *real.BASELINES]
    }
    assert pairs == expected
    # A rerun reuses the trained models and the embedding exports.
    done = sorted(out.rglob("done.json"))
    exports = sorted(out.rglob("_manifest.json"))
    assert len(done) == 3 and len(exports) == 6
    stamps = [p.stat().st_mtime_ns for p in (*done, *exports)]
    assert real.main(argv) == 0
    assert [p.stat().st_mtime_ns for p in (*done, *exports)] == stamps
