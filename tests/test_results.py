"""Published result files: stamped with command, commit and output hash; a hand edit of a
result file or of a table generated from it fails ``bench/report.py --check``."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest

from astropt.probe import headline_data, readme_block, run_probes
from astropt.results import check_result, content_digest, hash_files, stamp, write_result

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A stamped probe result and a page with its generated block, in a scratch repository."""
    from test_probe import planted

    ids, x, catalogue = planted(n=200)
    noise = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    run = run_probes(
        {"model": (ids, x, catalogue), "noise": (ids, noise, catalogue)},
        label_sizes=None,
        split="test",
        choices={"embed_layer": "dev"},
    )
    root = tmp_path_factory.mktemp("repo")
    outputs = root / "run" / "split_scores.csv"
    outputs.parent.mkdir()
    run.split_scores.to_csv(outputs, index=False)
    data = stamp(headline_data(run), "python -m astropt.quickstart", [outputs], root=root)
    write_result(root / "docs" / "results" / "probes.json", data)
    block = readme_block(json.loads((root / "docs" / "results" / "probes.json").read_text()))
    page = f"# Page\n\n<!-- probe-table: results/probes.json -->\n{block}<!-- /probe-table -->\n"
    (root / "docs" / "page.md").write_text(page)
    (root / "README.md").write_text("# readme\n")
    return root


def _check(root: Path) -> list[str]:
    report = runpy.run_path(str(REPO / "bench" / "report.py"), run_name="report")
    return report["check_published"](root)


def test_a_stamped_result_records_its_run_and_passes_the_check(published):
    data = json.loads((published / "docs" / "results" / "probes.json").read_text())
    provenance = data["provenance"]
    assert provenance["command"] == "python -m astropt.quickstart"
    assert len(provenance["commit"]) == 40 and isinstance(provenance["dirty"], bool)
    assert provenance["outputs"] == ["run/split_scores.csv"]
    assert provenance["outputs_sha256"] == hash_files(
        [published / "run" / "split_scores.csv"], published
    )
    assert data["info"]["split"] == "test" and data["info"]["choices"] == {"embed_layer": "dev"}
    # The rows are every split's score of every set: 5 folds x 3 repeats.
    assert {len(v) for per_set in data["rows"].values() for v in per_set.values()} == {15}
    assert data["comparisons"]["count"] == 3  # 3 families x 1 baseline
    assert check_result(data) == [] and _check(published) == []
    page = (published / "docs" / "page.md").read_text()
    assert "3 families x 1 baselines = 3 comparisons" in page and "split `test`" in page


def _edited(published: Path, tmp_path: Path, edit) -> Path:
    root = tmp_path / "edited"
    shutil.copytree(published, root)
    path = root / "docs" / "results" / "probes.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return root


def _widen(data):
    data["families"][0]["vs"]["noise"]["improvement"][1] = -0.5


def _move_row(data):
    data["rows"]["linear"]["noise"][0] += 0.3


def _restamp_after_edit(data):
    # A careful forger who also recomputes the digest is still caught by the rows.
    data["tally"]["noise"] = {"win": 0, "tie": 3, "loss": 0}
    data["digest"] = content_digest(data)


@pytest.mark.parametrize("edit", [_widen, _move_row, _restamp_after_edit])
def test_a_hand_edited_result_file_fails_the_check(published, tmp_path, edit):
    problems = _check(_edited(published, tmp_path, edit))
    assert any("probes.json" in p for p in problems), problems


def test_a_hand_edited_generated_table_fails_the_check(published, tmp_path):
    root = tmp_path / "edited"
    shutil.copytree(published, root)
    page = root / "docs" / "page.md"
    page.write_text(page.read_text().replace("**win**", "tie", 1))
    problems = _check(root)
    assert len(problems) == 1 and "docs/page.md" in problems[0], problems


def test_legacy_files_are_listed_and_fail_only_when_strict(published, tmp_path, capsys):
    root = tmp_path / "legacy"
    shutil.copytree(published, root)
    (root / "docs" / "results" / "old.json").write_text('{"title": "an old sweep"}\n')
    report = runpy.run_path(str(REPO / "bench" / "report.py"), run_name="report")
    assert report["check_published"](root) == []
    assert "old.json: legacy result file" in capsys.readouterr().err
    assert report["check_published"](root, strict=True)
