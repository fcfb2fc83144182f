"""Probe reports and result files: the headline JSON (with per-split rows it is recomputed
from), markdown tables, report.md and the generated docs blocks."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from astropt.probe.baselines import PixelSource
from astropt.probe.intervals import _intervals, holm
from astropt.probe.plots import plot_improvements, plot_label_efficiency


@dataclass
class ProbeRun:
    """Everything a probe suite computed (the DataFrames behind the report files)."""

    summary: pd.DataFrame  # one row per target: headline score of each embedding set
    families: pd.DataFrame  # one row per family: headline score of each embedding set
    scores: pd.DataFrame  # long: level, name, metric, embedding, value, ci_low, ci_high
    comparisons: pd.DataFrame  # long: level, name, model, baseline, improvement, ci, outcome
    results: pd.DataFrame  # long: embedding, target, task, metric, value, n, hyper
    label_efficiency: pd.DataFrame  # long: embedding, target, task, metric, n_labels, value
    folds: pd.DataFrame  # id, repeat, fold
    split_scores: pd.DataFrame  # long: split, repeat, n_train, n_test, embedding, target, value
    info: dict  # protocol and data facts for the report
    files: dict[str, Path]

    def headline(self) -> dict:
        """The run's result as JSON-able data: families and targets with intervals and outcomes."""
        return headline_data(self)


HEADLINE_FORMAT = "astropt-probe-headline/2"


#: Result files written before the per-split rows (bootstrap intervals over galaxies): read
#: and rendered, not recomputable; regenerate them with ``python -m astropt.quickstart --publish``.
LEGACY_HEADLINE_FORMATS = ("astropt-probe-headline/1",)


METRIC_LABELS = {
    "r2": "R^2",
    "balanced_accuracy": "bal. acc.",
    "angular_error": "angle error (deg)",
}


def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub markdown table of ``frame`` (floats to 3 decimals)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _rounded(value: float, digits: int = 4):
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def headline_data(run: ProbeRun) -> dict:
    """A :class:`ProbeRun` as JSON-able data: per family and per target, each set's score
    with its interval and the model's improvement over each baseline with its outcome,
    the count of comparisons with Holm's adjustment, and the per-split scores (``rows``)
    that all of it is recomputed from (:func:`recompute_headline`)."""
    names = run.info["embeddings"]
    rows: dict[str, dict[str, list[float]]] = {}
    for (target, emb), group in run.split_scores.groupby(["target", "embedding"], sort=False):
        rows.setdefault(target, {})[emb] = [float(v) for v in group.sort_values("split").value]
    order = {t: i for i, t in enumerate(run.summary.get("target", []))}
    rows = dict(sorted(rows.items(), key=lambda item: order.get(item[0], len(order))))
    levels = [
        (level, name, group.family.iloc[0], group.metric.iloc[0], group.targets.iloc[0].split(", "))
        for (level, name), group in run.scores.groupby(["level", "name"], sort=False)
    ]
    return _headline(dict(run.info), names[0], names[1:], levels, rows, run.scores, run.comparisons)


def _headline(info, model, baselines, levels, rows, scores, comparisons) -> dict:
    """The headline dict from its parts (shared by :func:`headline_data` and the check)."""
    compare = comparisons[comparisons.model == model]

    def entries(level: str) -> list[dict]:
        out = []
        for lvl, name, family, metric, members in levels:
            if lvl != level:
                continue
            mine = scores[(scores.level == level) & (scores.name == name)]
            versus = compare[(compare.level == level) & (compare.name == name)]
            out.append({
                "name": name,
                "family": family,
                "metric": metric,
                "targets": list(members),
                "scores": {
                    r.embedding: [_rounded(r.value), _rounded(r.ci_low), _rounded(r.ci_high)]
                    for r in mine.itertuples()
                },
                "vs": {
                    r.baseline: {
                        "improvement": [
                            _rounded(r.improvement), _rounded(r.ci_low), _rounded(r.ci_high)
                        ],
                        "p": _rounded(r.p_value, 6),
                        "outcome": r.outcome,
                    }
                    for r in versus.itertuples()
                },
            })  # fmt: skip
        return out

    families = entries("family")
    tally = {
        b: {k: sum(f["vs"].get(b, {}).get("outcome") == k for f in families)
            for k in ("win", "tie", "loss")}
        for b in baselines
    }  # fmt: skip
    table = [(f, b) for f in families for b in baselines if b in f["vs"]]
    adjusted = holm([f["vs"][b]["p"] if f["vs"][b]["p"] is not None else math.nan
                     for f, b in table])  # fmt: skip
    for (f, b), p in zip(table, adjusted):
        f["vs"][b]["holm"] = f["vs"][b]["outcome"] if p < 0.05 else "tie"
    return {
        "format": HEADLINE_FORMAT,
        "info": info,
        "model": model,
        "baselines": list(baselines),
        "families": families,
        "targets": entries("target"),
        "tally": tally,
        "comparisons": {
            "count": len(table),
            "families": len(families),
            "baselines": len(baselines),
            "confidence": 0.95,
            "adjustment": "none: each interval is a per-comparison 95% interval; 'holm' "
            "gives each outcome after Holm's adjustment over the table's comparisons",
            "wins_after_holm": sum(f["vs"][b]["holm"] == "win" for f, b in table),
            "losses_after_holm": sum(f["vs"][b]["holm"] == "loss" for f, b in table),
        },
        "rows": rows,
    }


def recompute_headline(data: dict) -> dict:
    """The headline a result file's per-split ``rows`` give: intervals, outcomes, tallies and
    Holm's adjustment recomputed with the same code that wrote them (:func:`check_headline`)."""
    info = data["info"]
    model, baselines = data["model"], data["baselines"]
    levels = [
        ("family", f["name"], f["family"], f["metric"], f["targets"]) for f in data["families"]
    ]
    levels = [
        *(("target", t["name"], t["family"], t["metric"], t["targets"]) for t in data["targets"]),
        *levels,
    ]
    split_scores = {
        (emb, target): np.asarray(values, dtype=np.float64)
        for target, per_set in data["rows"].items()
        for emb, values in per_set.items()
    }
    scores, comparisons = _intervals(
        split_scores, levels, [model, *baselines], info["test_train_ratio"]
    )
    return _headline(info, model, baselines, levels, data["rows"], scores, comparisons)


def check_headline(data: dict) -> list[str]:
    """What in a probe result file disagrees with its own rows (empty: it is consistent)."""
    if data.get("format") != HEADLINE_FORMAT:
        return [f"not a {HEADLINE_FORMAT} file"]
    fresh = recompute_headline(data)
    problems = []
    for key in ("families", "targets", "tally", "comparisons", "baselines", "model"):
        if json.loads(json.dumps(fresh[key])) != data.get(key):
            problems.append(f"{key!r} differs from what its per-split rows give")
    return problems


def read_headline(path: str | Path) -> dict:
    """A headline JSON file written by :func:`write_report` (``headline.json``)."""
    data = json.loads(Path(path).read_text())
    if data.get("format") not in (HEADLINE_FORMAT, *LEGACY_HEADLINE_FORMATS):
        raise ValueError(f"{path} is not a probe headline file ({HEADLINE_FORMAT})")
    return data


def comparisons_note(data: dict) -> str:
    """How many comparisons a headline's family table makes, and what its intervals claim."""
    n_families, baselines = len(data["families"]), len(data["baselines"])
    count = sum(len(f["vs"]) for f in data["families"])
    text = (
        f"{n_families} families x {baselines} baselines = {count} comparisons; each interval "
        "is a per-comparison 95% interval, not adjusted for multiplicity"
    )
    if "comparisons" not in data:  # a legacy file
        return text + "."
    wins = sum(t["win"] for t in data["tally"].values())
    losses = sum(t["loss"] for t in data["tally"].values())
    after = data["comparisons"]
    return (
        text + f" (with Holm's adjustment over the {count}: {after['wins_after_holm']} of the "
        f"{wins} wins and {after['losses_after_holm']} of the {losses} losses remain)."
    )


def _cell(triple: list) -> str:
    value, low, high = triple
    if value is None:
        return ""
    if low is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def headline_table(data: dict, level: str = "families") -> str:
    """Markdown table of a headline (:func:`headline_data`): one row per family (or target).

    The model's cell is its score with a 95% interval; each baseline's cell is
    its score and the model's improvement over it with an interval, then
    **win**, tie or *loss*. The last row counts the outcomes per baseline.
    """
    model, baselines = data["model"], data["baselines"]
    header = ["family" if level == "families" else "target", "metric", model, *baselines]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    marks = {"win": "**win**", "tie": "tie", "loss": "*loss*"}
    for entry in data[level]:
        cells = [entry["name"], METRIC_LABELS.get(entry["metric"], entry["metric"])]
        cells.append(_cell(entry["scores"].get(model, [None, None, None])))
        for baseline in baselines:
            score = entry["scores"].get(baseline)
            versus = entry["vs"].get(baseline)
            if score is None or versus is None:
                cells.append("")
                continue
            value, low, high = versus["improvement"]
            cells.append(
                f"{score[0]:.3f}; {value:+.3f} [{low:+.3f}, {high:+.3f}] {marks[versus['outcome']]}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    if level == "families":
        tally = [
            "{win}/{tie}/{loss}".format(**data["tally"][b]) for b in baselines
        ]  # fmt: skip
        lines.append("| wins/ties/losses | | | " + " | ".join(tally) + " |")
    return "\n".join(lines)


def write_report(
    run: ProbeRun,
    out_dir: str | Path,
    embeddings: Mapping[str, object] | None = None,
) -> dict[str, Path]:
    """Write the report files of a :class:`ProbeRun` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "report": out / "report.md",
        "headline": out / "headline.json",
        "scores": out / "scores.csv",
        "comparisons": out / "comparisons.csv",
        "results": out / "probe_results.csv",
        "label_efficiency": out / "label_efficiency.csv",
        "folds": out / "folds.csv",
        "split_scores": out / "split_scores.csv",
        "summary_png": out / "probe_summary.png",
        "label_efficiency_png": out / "label_efficiency.png",
    }
    data = headline_data(run)
    files["headline"].write_text(json.dumps(data, indent=1) + "\n")
    run.scores.to_csv(files["scores"], index=False)
    run.comparisons.to_csv(files["comparisons"], index=False)
    run.results.to_csv(files["results"], index=False)
    run.label_efficiency.to_csv(files["label_efficiency"], index=False)
    run.folds.to_csv(files["folds"], index=False)
    run.split_scores.to_csv(files["split_scores"], index=False)
    names = run.info["embeddings"]
    plot_improvements(run.comparisons, files["summary_png"])
    plot_label_efficiency(run.label_efficiency, files["label_efficiency_png"])

    info, protocol = run.info, run.info["protocol"]
    sources = embeddings or {}
    described = []
    for name in names:
        src = sources.get(name)
        if isinstance(src, PixelSource):
            what = "normalised pixels" if src.normalise else "scaled pixels"
            k = info["pca_components"].get(name)
            described.append(f"`{name}` (PCA of the {what} to {k} components per training fold)")
        elif isinstance(src, (str, Path)):
            described.append(f"`{name}` ({src})")
        else:
            described.append(f"`{name}`")
    if protocol["alpha"] is None:
        fits = f"strength chosen by {protocol['inner_folds']}-fold CV inside each training fold"
    else:
        fits = f"fixed strength alpha = {protocol['alpha']:g}"
    folds_text = f"{protocol['folds']} folds x {protocol['repeats']} repeats" + (
        f", stratified on {info['stratified_on']}" if info["stratified_on"] else ""
    )
    lines = [
        "# Linear probe report",
        "",
        f"{info['n_galaxies']} galaxies, protocol `{protocol['name']}`: {folds_text} "
        "(the same folds for every embedding set, see `folds.csv`). "
        f"Linear probes on standardised features, ridge {fits}; classes by a "
        "class-balanced ridge classifier, circular targets as (cos 2t, sin 2t).",
        "",
        "Embedding sets: " + ", ".join(described) + ". The first is the model.",
        "",
        f"Galaxies: the `{info.get('split') or 'unstated'}` split"
        + "".join(f"; {k} was chosen on `{v}`" for k, v in info.get("choices", {}).items())
        + ". Scores are the mean over the splits (folds x repeats) of each split's score on "
        f"its test rows (`split_scores.csv`); intervals: {info['interval']}. "
        "A baseline's cell gives its score, then the model's improvement over it (positive = "
        "the model is better) with its interval: **win** if the interval is above zero, "
        "*loss* if below, else tie. " + comparisons_note(data),
        "",
        "## Headline: one row per target family",
        "",
        headline_table(data, "families"),
        "",
        "![improvements](probe_summary.png)",
        "",
        "## Every target",
        "",
        headline_table(data, "targets"),
        "",
        "## All metrics (point estimates)",
        "",
    ]
    if not run.results.empty:
        wide = run.results.pivot_table(
            index=["target", "metric"], columns="embedding", values="value", sort=False
        ).reset_index()
        wide = wide[["target", "metric", *[n for n in names if n in wide.columns]]]
        lines.append(markdown_table(wide))
    lines += ["", "## Label efficiency (first fold)", ""]
    if not run.label_efficiency.empty:
        curves = run.label_efficiency.pivot_table(
            index=["target", "metric", "n_labels"], columns="embedding", values="value", sort=False
        ).reset_index()
        curves = curves[["target", "metric", "n_labels", *[n for n in names if n in curves]]]
        lines += ["![label efficiency](label_efficiency.png)", "", markdown_table(curves)]
    else:
        lines.append("(not computed)")
    lines.append("")
    files["report"].write_text("\n".join(lines))
    run.files.update(files)
    return files


README_BLOCK = re.compile(
    r"<!-- probe-table: (?P<path>\S+) -->\n(?P<body>.*?)<!-- /probe-table -->", flags=re.S
)


def readme_block(data: dict) -> str:
    """The README's probe section body for a headline (:func:`headline_data`): provenance,
    the family table and the count of families won against every baseline."""
    run = data.get("run", {})
    info = data["info"]
    protocol = info["protocol"]
    won = [
        f["name"]
        for f in data["families"]
        if all(f["vs"].get(b, {}).get("outcome") == "win" for b in data["baselines"])
    ]
    settings = run.get("settings", {})
    trained = (
        f"{settings['max_iters']} pretraining steps on a {settings['n_galaxies']}-galaxy survey, "
        if settings
        else ""
    )
    if data["format"] in LEGACY_HEADLINE_FORMATS:
        how = (
            "95% bootstrap intervals over galaxies (a legacy result file: those intervals leave "
            "out the variance of refitting the probe and are too narrow; regenerate it with "
            "`python -m astropt.quickstart --publish`)"
        )
    else:
        split = info.get("split") or "unstated"
        choices = ", ".join(f"{k} on {v}" for k, v in info.get("choices", {}).items())
        provenance = data.get("provenance", {})
        commit = provenance.get("commit", "")[:12] + (" (dirty)" if provenance.get("dirty") else "")
        how = (
            f"95% corrected resampled t intervals over the {info['n_splits']} splits (they "
            f"include refitting the probe); split `{split}`"
            + (f"; choices made: {choices}" if choices else "")
            + (f"; code {commit}" if commit else "")
        )
    lines = [
        f"From `{run.get('command', 'the probe suite')}` "
        f"({json.dumps(run.get('machine', {}))}): {trained}{info['n_galaxies']} test galaxies, "
        f"{protocol['folds']} folds x {protocol['repeats']} repeats, {how}. Cells: score; "
        "model minus baseline [interval] and the outcome "
        "(for angle errors, baseline minus model: positive is always better).",
        "",
        headline_table(data),
        "",
        f"The model wins against every baseline on {len(won)} of {len(data['families'])} "
        f"target families. {comparisons_note(data)}",
        "",
    ]
    return "\n".join(lines)


def update_readme(readme: str | Path) -> bool:
    """Regenerate every probe-table block of ``readme`` from the result file it cites.

    Returns True if the file changed.
    """
    readme = Path(readme)
    text = readme.read_text()

    def fill(match: re.Match) -> str:
        data = read_headline(readme.parent / match["path"])
        return f"<!-- probe-table: {match['path']} -->\n{readme_block(data)}<!-- /probe-table -->"

    new = README_BLOCK.sub(fill, text)
    if new != text:
        readme.write_text(new)
    return new != text
