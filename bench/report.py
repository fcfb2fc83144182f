"""Write the benchmark table of ``docs/benchmarks.md`` from the result files of ``make bench``.

Every benchmark appends one JSON line per run to ``bench/results/NAME.jsonl``
(:func:`limits.save_result`). This script quotes each headline as the range
over the recorded runs (at least two runs make a range; one run is marked as
such) and replaces the table between the ``bench-table`` markers of
``docs/benchmarks.md``, so no figure there is typed by hand.

    python bench/report.py [--results bench/results] [--page docs/benchmarks.md] [--check]

``--check`` (run by ``make test``) changes nothing and fails if any generated
text disagrees with its source: this table with ``bench/results``, every
generated block of README.md and ``docs/**/*.md`` (probe and finetune tables)
with the result file it cites, and every ``docs/results/*.json`` with itself
(:func:`astropt.results.check_result`: its digest, and intervals, tallies and
outcomes recomputed from its per-fold or per-seed rows). Result files written
before provenance stamps (legacy) are listed, and fail only with ``--strict``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
PAGE = Path("docs/benchmarks.md")  # relative to the repository root


def load(folder: Path, name: str) -> list[dict]:
    path = folder / f"{name}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def span(values: list[float], unit: str = "x", digits: int = 1) -> str:
    """``"3.1-3.6x (3 runs)"`` from one value per run."""
    if not values:
        return "not run yet"
    low, high = min(values), max(values)
    runs = f"{len(values)} run{'s' if len(values) > 1 else ''}"
    if f"{low:.{digits}f}" == f"{high:.{digits}f}":
        return f"{low:.{digits}f}{unit} ({runs})"
    joint = " to " if low < 0 else "-"  # "-55 to 43 MiB", not "-55-43"
    return f"{low:.{digits}f}{joint}{high:.{digits}f}{unit} ({runs})"


def rows(folder: Path) -> list[tuple[str, str, str]]:
    table = []
    embed = load(folder, "embed")
    shape = "astropt-smallest"
    same = [r[f"ratio/{shape}"] for r in embed if f"ratio/{shape}" in r]
    early = [
        r["rates"][f"{shape}/ours middle float32"] / r["rates"][f"{shape}/ours final float32"]
        for r in embed
    ]
    table.append((
        "embedding vs astropt 2.0.9 `generate_embeddings`, same work (every block, fp32 both; "
        "4 layers, width 128, 256 tokens)",
        "`python bench/embed.py`",
        f"{span(same, digits=2)}; early exit adds {span(early, digits=2)} on top (not a comparison)",
    ))  # fmt: skip
    generate = load(folder, "generate")
    ratio = [r["rows"][0]["ratio"] for r in generate]
    table.append((
        "generation, pre-allocated KV cache vs a fair uncached loop (batch 1, 256 tokens)",
        "`python bench/generate.py`",
        span(ratio),
    ))  # fmt: skip
    data = [r for r in load(folder, "data") if r.get("batch") == 8]  # the batch training reads
    if data:
        per_workers = sorted({row["workers"] for run in data for row in run["rows"]})
        parts = []
        for workers in per_workers:
            values = [row["ours"] / row["astropt"] for run in data for row in run["rows"]
                      if row["workers"] == workers]  # fmt: skip
            parts.append(f"{workers} worker{'s' if workers != 1 else ''}: {span(values)}")
        result = "; ".join(parts)
    else:
        result = "not run yet"
    table.append((
        "JPEG parquet (256x256) to token batches of 8 vs astropt 2.0.9's own data path, per worker count",
        "`python bench/data.py`",
        result,
    ))  # fmt: skip
    tokens = load(folder, "tokens")
    table.append((
        "images to spiral tokens vs astropt 2.0.9 `process_galaxy` (batch 32)",
        "`python bench/tokens.py`",
        span([r["ratios"][str(r["headline"])] for r in tokens]),
    ))  # fmt: skip
    memory = load(folder, "export_memory")
    growth = []
    for run in memory:
        stream = sorted((r for r in run["rows"] if r["kind"] == "stream"), key=lambda r: r["n"])
        if len(stream) >= 2:
            growth.append(stream[-1]["peak_mib"] - stream[-2]["peak_mib"])
    sizes = ""
    if memory:
        stream = sorted(r["n"] for r in memory[-1]["rows"] if r["kind"] == "stream")
        sizes = (
            f" ({stream[-2] // 1000}k to {stream[-1] // 1000}k galaxies)" if len(stream) > 1 else ""
        )
    table.append((
        f"embedding export peak RSS growth{sizes}",
        "`python bench/export_memory.py`",
        span(growth, unit=" MiB", digits=0),
    ))  # fmt: skip
    simulate = load(folder, "simulate")
    table.append((
        "synthetic stamps at 256x256, one process",
        "`python bench/simulate.py`",
        span([r["rates"]["256"] for r in simulate], unit=" stamps/s", digits=0),
    ))  # fmt: skip
    reduce = load(folder, "jpeg_reduce")
    table.append((
        "424 px JPEG -> 0.5 crop -> 64 px stamp, decoded at reduced scale vs in full "
        "(`data.jpeg_reduce`; built-in survey stamps)",
        "`python bench/jpeg_reduce.py`",
        span([r["ratio"] for r in reduce], digits=2),
    ))  # fmt: skip
    # Records of the current benchmark (005M/021M shapes, compiled variant) on a CPU.
    train = [r for r in load(folder, "train_step") if r.get("schema") == 2 and r["device"] == "cpu"]
    keys = list(train[-1]["ratios"]) if train else []
    result = "; ".join(
        f"{key.replace('astropt-', '')}: {span([r['ratios'][key] for r in train if key in r['ratios']], digits=2)}"
        f" at {span([100 * r['of_peak'][key + '/ours'] for r in train], unit='%', digits=0)} of the"
        f" {key.split('/')[1]} matmul peak"
        for key in keys
    )
    gains = [r["compile_gain"][key] for r in train for key in r["compile_gain"]]
    if gains:
        runs = sum(1 for r in train if r["compile_gain"])
        result += (
            f"; torch.compile of ours: {min(gains):.2f}-{max(gains):.2f}x over eager "
            f"({runs} runs, every shape and dtype)"
        )
    table.append((
        "training step vs astropt 2.0.9, same shape and dtype, both eager (batch 8 x 256 tokens)",
        "`python bench/train_step.py --threads 1`",
        result or "not run yet",
    ))  # fmt: skip
    finetune = load(folder, "finetune")
    parts = []
    for device in ("cpu", "cuda"):
        runs = [r for r in finetune if r.get("device") == device and "095M" in r["ratios"]]
        if runs:
            ratio = span([r["ratios"]["095M"]["lora/full"] for r in runs], digits=2)
            parts.append(f"{device} ({runs[-1]['dtype']}): {ratio}")
    table.append((
        "finetuning step, lora vs full examples/s at AstroPT's 095M shape (batch 8 x 256 "
        "tokens; per-mode peak memory in the run's output)",
        "`python bench/finetune.py`",
        "; ".join(parts) or "not run yet",
    ))  # fmt: skip
    table += search_rows(load(folder, "search"))
    return table


def search_rows(runs: list[dict]) -> list[tuple[str, str, str]]:
    """One row per size of ``bench/search.py``: each index kind's build rate, query latency,
    memory and (approximate kinds) recall@10 against faiss exact, as ranges over runs."""

    def bare(values: list[float], unit: str, digits: int) -> str:
        return span(values, unit, digits).rsplit(" (", 1)[0]  # the run count goes at the end

    sizes = sorted({row["rows"] for run in runs for row in run["rows"]})
    dims = sorted({run["dim"] for run in runs})
    out = []
    for n in sizes:
        parts, counts = [], []
        for kind in ("exact", "ivf", "hnsw"):
            rows = [r for run in runs for r in run["rows"] if r["rows"] == n and r["kind"] == kind]
            if not rows:
                continue
            counts.append(f"{kind} {len(rows)}")
            text = (
                f"{kind}: build {bare([r['build_rows_per_s'] / 1000 for r in rows], 'k rows/s', 0)}"
                f", {bare([r['query_ms_median'] for r in rows], ' ms/query', 2)}"
                f", +{bare([r['index_mib'] for r in rows], ' MiB', 0)}"
            )
            if kind != "exact":
                text += f", recall@10 {bare([r['recall_at_10'] for r in rows], '', 3)}"
            parts.append(text)
        size = f"{n // 1000}k" if n < 1_000_000 else f"{n / 1e6:g}M"
        out.append((
            f"similarity index of {size} synthetic {dims[-1]}-wide vectors, one faiss thread "
            "(CPU time; single-query latency; peak RSS over the process's own; recall vs exact)",
            "`python bench/search.py`",
            "; ".join(parts) + f" (runs: {', '.join(counts)})",
        ))  # fmt: skip
    return out or [("similarity index", "`python bench/search.py`", "not run yet")]


def render(folder: Path) -> str:
    lines = [
        START,
        "| benchmark | command | result (range over runs) |",
        "|---|---|---|",
    ]
    lines += [f"| {what} | {command} | {result} |" for what, command, result in rows(folder)]
    lines.append(END)
    return "\n".join(lines)


#: Generated blocks: (module, its block regex, its file reader, its block renderer).
BLOCKS = (
    ("astropt.probe", "README_BLOCK", "read_headline", "readme_block"),
    ("astropt.finetune.sweep", "README_BLOCK", "read_published", "readme_block"),
)
#: The command that regenerates a legacy result file, by file name prefix.
REGENERATE = {
    "quickstart-probes": "python -m astropt.quickstart --publish",
    "finetune-": "python -m astropt.finetune.sweep --out SWEEP --publish ...",
    "search-": "python -m astropt.search.evaluate EXPORT out=docs/results/NAME.json page=...",
}


def check_published(repo: Path, strict: bool = False) -> list[str]:
    """Problems of the generated blocks and result files of ``repo`` (empty: all agree)."""
    import importlib
    import json

    from astropt.results import check_result, is_stamped

    problems = []
    pages = [repo / "README.md", *sorted((repo / "docs").rglob("*.md"))]
    for module_name, pattern, reader, renderer in BLOCKS:
        module = importlib.import_module(module_name)
        for page in pages:
            text = page.read_text() if page.is_file() else ""
            for block in getattr(module, pattern).finditer(text):
                path = page.parent / block["path"]
                if not path.is_file():
                    problems.append(f"{page.relative_to(repo)} cites {block['path']}: no such file")
                    continue
                expected = getattr(module, renderer)(getattr(module, reader)(path))
                if block["body"] != expected:
                    problems.append(
                        f"{page.relative_to(repo)}: the block citing {block['path']} differs "
                        "from what that file renders (edited by hand, or not regenerated)"
                    )
    for path in sorted((repo / "docs" / "results").glob("*.json")):
        data = json.loads(path.read_text())
        name = path.relative_to(repo)
        if not is_stamped(data):
            command = next(
                (c for k, c in REGENERATE.items() if path.stem.startswith(k)), "its publisher"
            )
            note = f"{name}: legacy result file (no provenance); regenerate with `{command}`"
            print(note, file=sys.stderr)
            if strict:
                problems.append(note)
            continue
        problems += [f"{name}: {problem}" for problem in check_result(data)]
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(HERE / "results"))
    parser.add_argument("--page", dest="readme", default=str(HERE.parent / PAGE))
    parser.add_argument(
        "--check", action="store_true", help="fail if any generated table or result file is off"
    )
    parser.add_argument("--strict", action="store_true", help="with --check: legacy files fail")
    parser.add_argument("--repo", default=str(HERE.parent), help="the checkout --check reads")
    args = parser.parse_args()
    readme = Path(args.readme)
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} markers")
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    updated = before + render(Path(args.results)) + after
    if args.check:
        problems = check_published(Path(args.repo), args.strict)
        if updated != text:
            problems.insert(0, f"{readme}: the benchmark table differs from {args.results}")
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    readme.write_text(updated)
    print(render(Path(args.results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
