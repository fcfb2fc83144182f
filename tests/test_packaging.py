"""The package outside the checkout: declared dependencies, their floors, shipped configs."""

from __future__ import annotations

import ast
import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
SETUP = configparser.ConfigParser()
SETUP.read(REPO / "setup.cfg")

#: Import names whose distribution is named otherwise.
DISTRIBUTION = {
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "umap": "umap-learn",
    "faiss": "faiss-cpu",
}
#: Imports that are optional by design (guarded where they are used), with where they are declared.
OPTIONAL = {"flash_attn": "gpu", "peft": "lora", "wandb": None, "selenium": "view"}
#: Floors set by features the code uses (raise them when the code needs more):
#: torch 2.6 made FSDP2 public as ``torch.distributed.fsdp.fully_shard``;
#: datasets 5.0 added ``IterableDataset.shuffle(max_buffer_input_shards=...)``.
FLOORS = {"torch": "2.6", "datasets": "5.0"}


def _normalise(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(text: str) -> dict[str, Requirement]:
    found = {}
    for line in text.strip().splitlines():
        if line.strip():
            requirement = Requirement(line.strip())
            found[_normalise(requirement.name)] = requirement
    return found


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module name -> files of ``astropt/`` importing it (not stdlib, not astropt)."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / "astropt").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "astropt" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_declared_with_its_floor():
    required = _requirements(SETUP["options"]["install_requires"])
    extras = {name: _requirements(text) for name, text in SETUP["options.extras_require"].items()}
    imports = _third_party_imports()
    assert {"torch", "numpy", "pandas", "threadpoolctl"} <= set(imports)  # the scan works
    for module, files in imports.items():
        dist = _normalise(DISTRIBUTION.get(module, module))
        if module in OPTIONAL:
            extra = OPTIONAL[module]
            assert extra is None or dist in extras[extra], (module, extra)
            continue
        assert dist in required, (
            f"{module} (imported by {sorted(files)}) is not in install_requires"
        )
    for dist, floor in FLOORS.items():
        specifier = required[dist].specifier
        lowest = [Version(s.version) for s in specifier if s.operator == ">="]
        assert lowest and max(lowest) >= Version(floor), (dist, str(specifier))
    # The Python 3.10 TOML parser is declared for exactly the versions that need it.
    assert "python_version" in str(required["tomli"].marker)


def test_configs_ship_inside_the_package():
    patterns = [p.strip() for p in SETUP["options.package_data"]["astropt"].split(",")]
    package = REPO / "astropt"
    shipped = {path for pattern in patterns for path in package.glob(pattern)}
    configs = set((package / "configs").rglob("*.toml"))
    assert configs and configs == {path for path in shipped if path.suffix == ".toml"}
    assert (package / "search" / "view.html") in shipped  # the page astropt view writes
    # The checkout's configs/ is the same folder (README paths keep working from the root).
    assert (REPO / "configs").resolve() == (package / "configs").resolve()


@pytest.mark.slow
def test_installed_package_runs_from_any_folder(tmp_path):
    """``pip install`` a copy of the checkout (no deps) and run commands from an empty folder."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns(".venv", "runs", ".git", "build", "*.egg-info", "__pycache__")
    shutil.copytree(REPO, source, ignore=ignore, symlinks=True)
    target = tmp_path / "site"
    install = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
        "--disable-pip-version-check", "--no-index", "--target", str(target), str(source),
    ]  # fmt: skip
    subprocess.run(install, check=True, capture_output=True, text=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
        )

    where = run(sys.executable, "-c", "import astropt; print(astropt.__file__)")
    assert where.stdout.strip().startswith(str(target)), where.stderr
    script = target / "bin" / "astropt"
    assert script.is_file()
    shown = run(sys.executable, str(script), "train", "configs/quickstart.toml", "--print-config")
    assert shown.returncode == 0, shown.stderr
    assert '"n_layer": 6' in shown.stdout  # read from the packaged quickstart.toml
    survey = run(
        sys.executable, str(script), "survey", "--out", "s", "--n", "12", "--image-size", "64",
        "--quiet",
    )  # fmt: skip
    assert survey.returncode == 0, survey.stderr
    assert sorted(p.name for p in (elsewhere / "s").iterdir()) == [
        "survey.json",
        "test",
        "train",
        "validation",
    ]
