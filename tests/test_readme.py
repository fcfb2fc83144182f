"""Every cheap command in the README and the docs pages runs as written.

``bash`` blocks of the pages in :data:`PAGES` run line by line, in that order, from
one scratch folder that holds links to the repository's entry points (so ``runs/``
lands in the scratch folder and a page may use what an earlier one made);
``python`` blocks that need no network run in a fresh interpreter. ``text``
blocks (GPU launch lines) and the two ``make`` commands are not run here:
``make test`` is this suite, and the quickstart has its own test.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
#: The pages whose examples run, in the order a reader meets them (later ones use earlier runs).
PAGES = (
    "README.md",
    "docs/getting-started.md",
    "docs/your-data.md",
    "docs/training.md",
    "docs/embeddings.md",
    "docs/preprocessing.md",
    "docs/finetuning.md",
)
#: The pages holding generated tables (and the generators writing them).
PROBE_PAGE = REPO / "docs" / "embeddings.md"
FINETUNE_PAGE = REPO / "docs" / "finetuning.md"
BENCH_PAGE = REPO / "docs" / "benchmarks.md"
#: Commands left out: the make targets, and a 10,000-galaxy survey (minutes).
EXPENSIVE = ("make ", "--n 10000")


def _blocks(language: str) -> list[str]:
    return [
        block
        for page in PAGES
        for block in re.findall(rf"```{language}\n(.*?)```", (REPO / page).read_text(), flags=re.S)
    ]


def _commands() -> list[str]:
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip() if line.strip().startswith("make") else line.strip()
            if line and not line.startswith("#") and not any(e in line for e in EXPENSIVE):
                commands.append(line)
    return commands


def test_readme_has_the_two_commands_and_ci_runs_make_test():
    assert "make quickstart" in README and "make test" in README
    assert "make test" in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow
def test_readme_shell_commands_run_as_written(tmp_path):
    for entry in ("configs", "data", "probe", "train.py", "sample.py", "finetune.py"):
        (tmp_path / entry).symlink_to(REPO / entry)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    commands = _commands()
    assert any(c.startswith("python train.py") for c in commands)
    for command in commands:
        result = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, (
            f"documented command failed: {command}\n{result.stderr[-3000:]}"
        )
    # What the commands promise exists.
    assert (tmp_path / "runs" / "mine" / "checkpoints" / "latest" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "mine" / "report" / "report.md").is_file()
    assert (tmp_path / "runs" / "mine" / "umap.png").is_file()
    assert (tmp_path / "runs" / "mine" / "completions.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "block", [b for b in _blocks("python") if "Smith42" not in b and "ckpt.pt" not in b]
)
def test_readme_python_examples_run(block, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_readme_probe_table_matches_the_result_file_it_cites():
    from astropt.probe import README_BLOCK, read_headline, readme_block

    blocks = list(README_BLOCK.finditer(PROBE_PAGE.read_text()))
    assert blocks, f"{PROBE_PAGE} has no generated probe table"
    for block in blocks:
        data = read_headline(PROBE_PAGE.parent / block["path"])
        assert block["body"] == readme_block(data), (
            f"the probe table of {PROBE_PAGE.name} differs from {block['path']}: "
            "run `python -m astropt.quickstart --publish`"
        )
        # The file is a real quickstart run: it names its command and machine.
        assert data["run"]["command"].startswith("python -m astropt.quickstart")
        assert {"threads", "cpu_capability", "torch"} <= set(data["run"]["machine"])


def test_readme_finetune_tables_match_the_result_files_they_cite():
    from astropt.finetune.sweep import README_BLOCK, read_published, readme_block

    blocks = list(README_BLOCK.finditer(FINETUNE_PAGE.read_text()))
    assert len(blocks) >= 2, f"{FINETUNE_PAGE} lacks the generated label-efficiency tables"
    for block in blocks:
        data = read_published(FINETUNE_PAGE.parent / block["path"])
        assert block["body"] == readme_block(data), (
            f"the finetune table of {FINETUNE_PAGE.name} differs from {block['path']}: rerun "
            "`python -m astropt.finetune.sweep --out SWEEP --publish ...`"
        )
        # A real sweep: its commands and machine are recorded, its figure is committed, and
        # every cell compared has at least 3 seeds.
        assert all(
            c["command"].startswith("python -m astropt.finetune.sweep") and c["machine"]
            for c in data["commands"]
        )
        assert (REPO / data["figure"]).is_file()
        cells = {}
        for row in data["rows"]:
            key = (row["mode"], row["init"], row["label_fraction"])
            cells.setdefault(key, set()).add(row["seed"])
        assert min(len(seeds) for seeds in cells.values()) >= 3, cells


def test_benchmark_table_matches_the_result_files():
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "report.py"), "--check", "--page", str(BENCH_PAGE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, (
        f"the benchmark table of {BENCH_PAGE.name} differs from bench/results: "
        f"run `python bench/report.py`\n{result.stderr[-2000:]}"
    )


def test_published_text_names_no_machine_folders():
    """Commands and paths in the README, the docs and the result files are repo-relative."""
    published = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    published += sorted((REPO / "docs").rglob("*.json"))
    machine = re.compile(r"(?<![\w.])/(work|home|tmp|scratch|Users|mnt)/")
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()[:120]}"
        for path in published
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if machine.search(line)
    ]
    assert not found, "machine paths in published files:\n" + "\n".join(found)
