"""Imports inside ``astropt`` run one way: the layer order below, and no cycles.

Every module under ``astropt/`` is parsed with :mod:`ast`; every ``import``
and ``from ... import`` counts, at module level or inside a function (a lazy
import is still a dependency, and a lazy import against the order is how the
old ``model -> hub -> interop -> model`` cycle hid). A module may import from
its own layer or an earlier one, never a later one, and the graph of module
imports has no cycle.

A module belongs to the layer of the longest name in :data:`LAYERS` that is
itself or a package above it, so ``astropt/train/checkpoint.py`` belongs to
``astropt.train``; a module no entry covers fails the test, so a new module
has to be placed in the order on purpose.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "astropt"

#: Bottom to top. Each row is one layer; a module may import its own row and the rows above it.
LAYERS: list[tuple[str, ...]] = [
    (
        "astropt.errors",
        "astropt.io",
        "astropt.device",
        "astropt.display",
        "astropt.options",
        "astropt.morphometrics",
        "astropt.preprocessing",
        "astropt.results",
    ),  # leaves: no astropt imports
    ("astropt.distributed",),  # the torchrun process group every command joins
    ("astropt.tokens",),
    ("astropt.model",),
    ("astropt.interop",),
    ("astropt.hub",),
    ("astropt.simulate",),
    ("astropt.data",),
    ("astropt.config",),  # RunConfig: the data and model sections of a training run
    ("astropt.train",),
    ("astropt.export", "astropt.embed"),  # the export core is shared by embed and predict
    ("astropt.probe", "astropt.generate"),
    ("astropt.maps",),
    ("astropt.finetune", "astropt.predict", "astropt.search"),
    ("astropt.scaling", "astropt.quickstart", "astropt.realbench"),
    ("astropt.cli",),
    # The package itself: it imports astropt.hub so that GPT has its Hub methods.
    ("astropt",),
]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    return {_module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The ``astropt`` modules that ``name`` (file ``path``) imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Relative: resolved against this module's package.
                base = name.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from astropt import hub` imports the submodule astropt.hub.
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target == "astropt" or target.startswith("astropt."):
                # `import astropt.data.loader` depends on the deepest module that exists.
                while target not in known and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target != name:
                    found.add(target)
    return found


def _layer(module: str) -> int | None:
    best, best_len = None, -1
    for index, names in enumerate(LAYERS):
        for prefix in names:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def _graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    modules = _modules(root)
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if target == "astropt" and module != "astropt":
                bad.append(f"{module} imports the package facade astropt (import the module)")
            elif _layer(target) > _layer(module):
                bad.append(
                    f"{module} (layer {LAYERS[_layer(module)]}) imports {target} "
                    f"(later layer {LAYERS[_layer(target)]})"
                )
    return bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each as a path ``[a, b, ..., a]`` (one per strongly connected set)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                found.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, path)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_every_module_has_a_layer():
    unplaced = sorted(name for name in _modules() if _layer(name) is None)
    assert not unplaced, f"place these modules in LAYERS of {__file__}: {unplaced}"


def test_imports_follow_the_layer_order():
    violations = _layer_violations(_graph())
    assert not violations, "imports against the layer order:\n" + "\n".join(violations)


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_io_is_a_leaf():
    graph = _graph()
    assert graph["astropt.errors"] == set()
    assert graph["astropt.io"] <= {"astropt.errors"}


@pytest.mark.parametrize(
    "source, message",
    [
        # What model.py used to do: a lazy Hub import inside a method.
        ("def save(self):\n    from astropt import hub\n", "astropt.model"),
        ("import astropt.interop\n", "astropt.model"),
    ],
)
def test_checker_catches_a_late_import_in_model(tmp_path, source, message):
    """The checks above fail when model.py imports the Hub or interop again."""
    root = tmp_path / "astropt"
    for name, path in _modules().items():
        target = root / path.relative_to(PACKAGE_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = path.read_text()
        if name == "astropt.model":
            text += "\n\n" + source
        target.write_text(text)
    graph = _graph(root)
    violations = _layer_violations(graph)
    assert any(v.startswith(message + " ") for v in violations), violations
    assert _cycles(graph), "a hub/interop import in model.py closes a cycle"


def test_checker_resolves_relative_and_submodule_imports():
    graph = _graph()
    assert "astropt.data.config" in graph["astropt.data.loader"]  # from .config import ...
    assert "astropt.data.config" in graph["astropt.data.sources"]
    assert "astropt.hub" in graph["astropt"]  # from astropt import hub


# ------------------------------------------------------------ the light `import astropt`

#: What ``import astropt`` loads: the core (and the leaves it imports, nothing above the model).
CORE = {"astropt", "astropt.io", "astropt.model", "astropt.tokens"}


def _fresh_python(code: str) -> str:
    """Run ``code`` in a new interpreter (nothing imported yet); its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_import_astropt_loads_only_the_core():
    out = _fresh_python(
        "import sys, astropt\n"
        "print(sorted(m for m in sys.modules if m.startswith('astropt')))\n"
        "print([m for m in ('datasets', 'pyarrow', 'pandas', 'safetensors', 'huggingface_hub')"
        " if m in sys.modules])"
    )
    loaded, heavy = (ast.literal_eval(line) for line in out.splitlines())
    assert CORE <= set(loaded)
    above_the_model = [m for m in loaded if m != "astropt" and _layer(m) > _layer("astropt.model")]
    assert not above_the_model, f"import astropt loaded {above_the_model}"
    assert not any(m.startswith(("astropt.finetune", "astropt.data")) for m in loaded)
    assert heavy == []


def test_a_finetuned_folder_loads_its_head_in_a_fresh_process(tmp_path):
    """The head registers by name: GPT.from_pretrained imports astropt.finetune when needed."""
    from astropt.finetune.model import FinetunedGPT, HeadConfig
    from astropt.model import GPTConfig

    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, patch_size=4)
    model = FinetunedGPT(config, HeadConfig(n_outputs=3, class_names=["a", "b", "c"]))
    model.save_pretrained(tmp_path / "ft")
    out = _fresh_python(
        "import sys\n"
        "from astropt.model import GPT\n"
        "assert 'astropt.finetune' not in sys.modules\n"
        f"model = GPT.from_pretrained({str(tmp_path / 'ft')!r})\n"
        "print(type(model).__name__, model.head_config.class_names)"
    )
    assert out.split() == ["FinetunedGPT", "['a',", "'b',", "'c']"]


# ------------------------------------------------------------ docs/architecture.md

ARCHITECTURE_PAGE = PACKAGE_ROOT.parent / "docs" / "architecture.md"

_PAGE_HEAD = """# Architecture: which module owns what, and the import order

Generated from the code by `python tests/test_architecture.py` (the layer table is
`LAYERS` in that file, the descriptions are the first lines of the module docstrings);
`tests/test_architecture.py` fails when this page is out of date, when a module imports
from a later layer, or when imports form a cycle.

Rules the layout keeps:

- One concept, one place: spiral order, patching and normalisation (`astropt.tokens`),
  checkpoint I/O (`astropt.io`, `astropt.hub`, `astropt.train.checkpoint`), config
  parsing (`astropt.options`, `astropt.config`), device and precision (`astropt.device`).
- Imports run one way, bottom to top of the table: a module may import its own row and
  the rows above it. The model knows nothing of files, the Hub or distributed training.
- Entry points are thin: `train.py`, `finetune.py`, `sample.py`, `probe/*.py`,
  `data/make_synthetic_survey.py` and the `astropt` console script (`astropt.cli`) all
  run the same typed commands.
"""


def architecture_page() -> str:
    """The text of docs/architecture.md, built from LAYERS and the module docstrings."""
    modules = _modules()
    lines = [_PAGE_HEAD, "| layer | module | owns |", "|---|---|---|"]
    for index in range(len(LAYERS)):
        members = sorted(m for m in modules if _layer(m) == index)
        for module in members:
            doc = ast.get_docstring(ast.parse(modules[module].read_text())) or ""
            first = doc.strip().split("\n")[0].replace("|", "\\|")
            lines.append(f"| {index} | `{module}` | {first} |")
    return "\n".join(lines) + "\n"


def test_architecture_page_is_current():
    assert ARCHITECTURE_PAGE.read_text() == architecture_page(), (
        "docs/architecture.md is out of date: run python tests/test_architecture.py"
    )


if __name__ == "__main__":
    ARCHITECTURE_PAGE.write_text(architecture_page())
    print(f"wrote {ARCHITECTURE_PAGE}")
