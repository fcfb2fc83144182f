"""How good are the neighbours and the anomaly ranking of an export, against its truth columns?

``python -m astropt.search.evaluate emb.parquet --label galaxy10 --out result.json``

* neighbour agreement: for every galaxy, the fraction of its ``k`` nearest
  other galaxies (the index's answer) that share its class ``label``; the
  mean over galaxies with a 95% bootstrap interval over galaxies, against
  chance: the same fraction for neighbours drawn at random from the other
  galaxies (``sum_c p_c (n_c - 1) / (n - 1)``, the class prior's);
* anomaly precision at ``top`` for the ``truth`` columns (any true), each
  score of :mod:`astropt.search.anomalies` against the base rate.

Written as JSON (the figures of ``docs/search.md`` come from such a file).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from astropt.export import read_table
from astropt.io import atomic_write_text
from astropt.options import Command, run_command
from astropt.search.anomalies import DEFAULT_TRUTH, anomaly_scores, report_precision
from astropt.search.index import SearchError, SearchIndex, build_index, open_index, set_threads


def neighbour_agreement(
    index: SearchIndex, labels: np.ndarray, k: int = 10, n_boot: int = 2000, seed: int = 0
) -> dict:
    """Mean fraction of each galaxy's ``k`` neighbours sharing its label, with its interval.

    ``labels``: ``(n,)`` in the export's row order. Returns ``agreement``,
    ``interval`` (95% bootstrap over galaxies), ``chance`` (random neighbours),
    ``lift`` and ``k``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    per_galaxy = np.empty(n)
    for start in range(0, n, 4096):
        rows = np.arange(start, min(n, start + 4096))
        for row, found in zip(rows, index.neighbours_of_rows(rows, k)):
            per_galaxy[row] = np.mean(labels[found.positions] == labels[row])
    rng = np.random.default_rng(seed)
    draws = np.array([per_galaxy[rng.integers(0, n, n)].mean() for _ in range(n_boot)])
    _, counts = np.unique(labels, return_counts=True)
    chance = float(np.sum(counts * (counts - 1)) / (n * (n - 1)))
    agreement = float(per_galaxy.mean())
    return {
        "k": k,
        "agreement": agreement,
        "interval": [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))],
        "chance": chance,
        "lift": agreement / chance if chance > 0 else float("inf"),
        "galaxies": n,
    }


@dataclass
class EvaluateOptions:
    """Options of ``python -m astropt.search.evaluate``."""

    export: str  # embedding export (folder or parquet file) with truth columns
    label: str = "galaxy10"  # class column the neighbours should share
    k: int = 10  # neighbours per galaxy
    top: int = 50  # anomaly precision cut
    truth: list[str] = field(default_factory=lambda: list(DEFAULT_TRUTH))  # planted oddities
    rebuild: bool = False  # rebuild the index first
    standardise: bool = False  # index option when (re)building
    seed: int = 0  # bootstrap and isolation forest seed
    out: str | None = None  # JSON result file
    page: str | None = None  # rewrite this page's results block from the JSON (needs out)
    threads: int | None = None  # faiss threads


def _as_text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def command_line(opts: EvaluateOptions) -> str:
    """The command that reproduces ``opts`` (the export, then every key not at its default)."""
    defaults = EvaluateOptions(export=opts.export)
    keys = [
        f"{f.name}={_as_text(getattr(opts, f.name))}"
        for f in dataclasses.fields(opts)
        if f.name != "export" and getattr(opts, f.name) != getattr(defaults, f.name)
    ]
    return " ".join(["python -m astropt.search.evaluate", str(opts.export), *keys])


def run_evaluate(opts: EvaluateOptions) -> int:
    set_threads(opts.threads)
    if opts.rebuild:
        build_index(opts.export, standardise=opts.standardise)
    opened = open_index(opts.export, build=True)
    table = read_table(opts.export, columns=[opts.label]) if opts.label else None
    result = {
        "export": str(opts.export),
        "rows": opened.rows,
        "index": opened.record["index"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if table is not None:
        labels = table.column(opts.label).to_numpy(zero_copy_only=False)
        result["neighbours"] = {"label": opts.label,
                                **neighbour_agreement(opened, labels, opts.k, seed=opts.seed)}  # fmt: skip
        a = result["neighbours"]
        print(
            f"neighbours sharing {opts.label} at k={opts.k}: {a['agreement']:.3f} "
            f"[{a['interval'][0]:.3f}, {a['interval'][1]:.3f}] vs chance {a['chance']:.3f} "
            f"({a['lift']:.1f}x)",
            file=sys.stderr,
        )
    scores = anomaly_scores(opts.export, seed=opts.seed, index=opened)
    result["anomalies"] = report_precision(opts.export, scores, opts.truth, opts.top)
    if result["anomalies"] is None:
        raise SearchError(f"{opts.export} has none of the truth columns {opts.truth}")
    if opts.out:
        from astropt.results import stamp, write_result

        # Provenance: this command, the commit, and a hash of the index identity (the
        # export's rows, ids hash, model fingerprint and layer) that the figures summarise.
        stamp(result, command_line(opts), [opened.path / "identity.json"])
        write_result(opts.out, result)
    if opts.page:
        if not opts.out:
            raise SearchError("page= rewrites a page from the result file: give out= too")
        update_page(opts.page, opts.out)
        print(f"rewrote the results block of {opts.page} from {opts.out}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- publishing
BLOCK = re.compile(r"<!-- search-results: (?P<file>\S+) -->\n.*?<!-- /search-results -->", re.S)


def results_block(result: dict, source: str) -> str:
    """The markdown block of a result file (``source``: its repo-relative path, cited)."""
    lines = [f"<!-- search-results: {source} -->"]
    index = result["index"]
    lines.append(
        f"From `{source}` ({result['rows']} galaxies, {index['kind']} cosine index, "
        f"standardise={str(index['standardise']).lower()}; 95% intervals):"
    )
    lines += ["", "| measure | value | chance | lift |", "|---|---|---|---|"]
    if "neighbours" in result:
        a = result["neighbours"]
        low, high = a["interval"]
        lines.append(
            f"| neighbours sharing the `{a['label']}` class, k={a['k']} (bootstrap over "
            f"galaxies) | {a['agreement']:.3f} [{low:.3f}, {high:.3f}] | {a['chance']:.3f} "
            f"(class prior) | {a['lift']:.1f}x |"
        )
    anomalies = result["anomalies"]
    truth = "+".join(anomalies["truth"])
    for name, value in anomalies["scores"].items():
        low, high = value["interval"]
        lines.append(
            f"| `{name}`: precision at {value['top']} for {truth} (Wilson) | "
            f"{value['precision']:.2f} [{low:.2f}, {high:.2f}] | {value['base_rate']:.3f} "
            f"(base rate) | {value['lift']:.1f}x |"
        )
    lines.append("<!-- /search-results -->")
    return "\n".join(lines)


def update_page(page: str | Path, result_file: str | Path) -> bool:
    """Rewrite the block of ``page`` citing ``result_file``; True when the text changed."""
    page = Path(page)
    text = page.read_text()
    source = Path(result_file).as_posix()
    result = json.loads(Path(result_file).read_text())
    new, count = BLOCK.subn(lambda _: results_block(result, source), text)
    if count == 0:
        raise SearchError(f"{page} has no <!-- search-results: ... --> block to rewrite")
    if new != text:
        atomic_write_text(page, new)
    return new != text


COMMAND = Command(
    EvaluateOptions,
    run_evaluate,
    "Neighbour class agreement (with a bootstrap interval, against chance) and anomaly "
    "precision against truth columns, for an embedding export.",
    positional=("export",),
    examples=("python -m astropt.search.evaluate emb.parquet --label galaxy10 --out r.json",),
)


def main(argv: list[str] | None = None) -> int:
    return run_command(COMMAND, argv, "python -m astropt.search.evaluate")


if __name__ == "__main__":
    raise SystemExit(main())
