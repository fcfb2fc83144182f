"""Label-efficiency sweep: how many labels does a task need, from pretrained weights or scratch?

``python -m astropt.finetune.sweep CONFIG.toml --out runs/sweep --modes full,lora,probe
--inits runs/quickstart,scratch --fractions 0.01,0.1,1 --seeds 0,1,2 [key=value ...]``

Runs :func:`astropt.finetune.trainer.finetune` for every ``mode x init x
label_fraction x seed`` (in-process, one after another; a finished run, one
whose ``summary.json`` exists, is skipped, so an interrupted sweep resumes),
all with the same ``split_seed`` (the same test galaxies), then writes:

* ``results.csv``: one row per run (mode, init, label fraction, labels used,
  seed, every test score);
* ``label_efficiency.png``: the headline test score (accuracy, or R^2) against
  the number of training labels, one line per mode and init, the mean over
  seeds with its 95 % Student-t interval;
* ``differences.csv`` / ``report.md``: for each mode and fraction, pretrained
  minus scratch (paired by seed: the same label subset), and each mode minus
  ``probe`` at the same init, with the interval over seeds; a win is a
  difference whose interval lies above zero.

``scratch`` as an init means the architecture of the first pretrained init
with fresh weights (``init_from=scratch:PATH``), the fair baseline.

Every invocation appends its command line, machine and load to ``commands.json``.
``--publish docs/results/NAME.json --title TEXT`` copies a finished sweep into
a committed result file (the per-run rows, the commands, the settings of the
runs, the trunk's pretraining), draws its figure beside the README's other
figures, and rewrites every ``<!-- finetune-table: PATH -->`` block of
``docs/finetuning.md`` from the file it cites (:func:`update_readme`), so no number there is
typed by hand.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from astropt.config import ConfigError
from astropt.finetune.config import load_finetune_config
from astropt.finetune.metrics import HEADLINE, mean_interval
from astropt.io import atomic_write, atomic_write_text, save_figure
from astropt.options import Command, run_command

log = logging.getLogger("astropt.finetune")

#: Where published figures go (relative to the repository root, beside the docs pages).
FIGURES = Path("docs/finetune")
#: The docs page whose finetune-table blocks ``--publish`` rewrites (block paths relative to it).
PAGE = Path("docs/finetuning.md")
README_BLOCK = re.compile(
    r"<!-- finetune-table: (?P<path>\S+) -->\n(?P<body>.*?)<!-- /finetune-table -->", flags=re.S
)


def init_name(spec: str) -> str:
    return "scratch" if spec.lower().startswith("scratch") else "pretrained"


def run_name(mode: str, init: str, fraction: float, seed: int) -> str:
    return f"{mode}-{init_name(init)}-f{fraction:g}-s{seed}"


def run_sweep(
    config: str | Path | None,
    out: str | Path,
    modes: list[str],
    inits: list[str],
    fractions: list[float],
    seeds: list[int],
    overrides: list[str] = (),
    combos: list[tuple[str, str, float]] | None = None,
) -> Path:
    """Run (or resume) the grid; write ``results.csv``, the figure and the report. Returns ``out``.

    ``combos``: an explicit list of ``(mode, init, fraction)`` instead of the full product.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pretrained = [i for i in inits if init_name(i) == "pretrained"]
    resolved = {
        i: (f"scratch:{pretrained[0]}" if i.lower() == "scratch" and pretrained else i)
        for i in inits
    }
    grid = combos or list(itertools.product(modes, inits, fractions))
    from astropt.finetune.trainer import finetune

    for (mode, init, fraction), seed in itertools.product(grid, seeds):
        folder = out / run_name(mode, init, fraction, seed)
        if (folder / "summary.json").is_file():
            continue
        cfg = load_finetune_config(
            config,
            [
                *overrides,
                f"out_dir={folder}",
                f"mode={mode}",
                f"init_from={resolved.get(init, init)}",
                f"label_fraction={fraction}",
                f"seed={seed}",
                "overwrite=true",
            ],
        )
        log.info("sweep: %s", folder.name)
        finetune(cfg)
    rows = collect(out)
    write_results(out, rows)
    return out


def collect(out: Path) -> list[dict]:
    """One row per finished run under ``out``."""
    rows = []
    for summary_path in sorted(out.glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        split = summary.get("split", "test")
        row = {
            "run": summary_path.parent.name,
            "mode": summary["mode"],
            "init": init_name(summary["init_from"]),
            "label_fraction": summary["label_fraction"],
            "n_labels": summary["n_labels"],
            "labels_used": summary.get("labels_used", summary["n_labels"]),
            "seed": summary["seed"],
            "head": summary["head"],
            "split": split,
            "pretraining_overlap": summary.get("pretraining_overlap"),
        }
        row.update({k: v for k, v in summary[split].items() if isinstance(v, (int, float))})
        rows.append(row)
    return rows


def comparator(frame) -> str:
    """The mode every other is compared with: the ridge probe (``ridge``) where the sweep ran
    it, else the trained head on a frozen trunk (``probe``, sweeps published before it)."""
    return "ridge" if "ridge" in set(frame["mode"]) else "probe"


def differences(frame, metric: str):
    """Paired (by seed) differences with intervals: pretrained - scratch, and each mode minus
    the probe comparator (:func:`comparator`) at the same init."""
    import pandas as pd

    out = []
    base = comparator(frame)
    keyed = frame.set_index(["mode", "init", "label_fraction", "seed"])[metric].sort_index()
    for (mode, fraction), _ in frame.groupby(["mode", "label_fraction"]):
        comparisons = [(f"pretrained - scratch ({mode})", (mode, "pretrained"), (mode, "scratch"))]
        if mode not in ("probe", "ridge"):
            for init in ("pretrained", "scratch"):
                comparisons.append((f"{mode} - {base} ({init})", (mode, init), (base, init)))
        for name, a, b in comparisons:
            try:
                left = keyed.loc[(a[0], a[1], fraction)]
                right = keyed.loc[(b[0], b[1], fraction)]
            except KeyError:
                continue
            common = left.index.intersection(right.index)
            if len(common) == 0:
                continue
            diff = (left.loc[common] - right.loc[common]).to_numpy()
            mean, low, high = mean_interval(diff)
            out.append(
                {
                    "comparison": name,
                    "mode": mode,
                    "label_fraction": fraction,
                    "seeds": len(common),
                    "difference": mean,
                    "low": low,
                    "high": high,
                    "win": bool(low > 0),
                }
            )
    return pd.DataFrame(out)


def write_results(out: Path, rows: list[dict]) -> None:
    import pandas as pd

    if not rows:
        return
    frame = pd.DataFrame(rows).sort_values(["mode", "init", "label_fraction", "seed"])
    atomic_write(out / "results.csv", lambda tmp: frame.to_csv(tmp, index=False))
    metric = HEADLINE[frame["head"].iloc[0]]
    diffs = differences(frame, metric)
    if len(diffs):
        atomic_write(out / "differences.csv", lambda tmp: diffs.to_csv(tmp, index=False))
    plot_label_efficiency(frame, metric, out / "label_efficiency.png")
    atomic_write_text(out / "report.md", report(frame, diffs, metric))


#: Scores shown beside the headline (a class headline is balanced accuracy: the classes are
#: imbalanced, so plain accuracy rewards predicting the common ones).
SECONDARY = {"balanced_accuracy": "accuracy"}


def _labels_used(group) -> int:
    column = "labels_used" if "labels_used" in group else "n_labels"
    return int(group[column].median())


def summary_table(frame, metric: str):
    """Mean and 95 % interval over seeds of ``metric`` (and its :data:`SECONDARY` score) for
    every mode, init and fraction; ``labels``: the labels a run reads (training plus
    validation)."""
    import pandas as pd

    rows = []
    second = SECONDARY.get(metric)
    for (mode, init, fraction), group in frame.groupby(["mode", "init", "label_fraction"]):
        mean, low, high = mean_interval(group[metric].to_numpy())
        row = {
            "mode": mode,
            "init": init,
            "label_fraction": fraction,
            "labels": _labels_used(group),
            "seeds": len(group),
            metric: mean,
            "low": low,
            "high": high,
        }
        if second and second in group:
            row[second], row["low2"], row["high2"] = mean_interval(group[second].to_numpy())
        rows.append(row)
    return pd.DataFrame(rows)


def plot_label_efficiency(frame, metric: str, path: Path) -> Path:
    """Test score against training labels used: mean over seeds and its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    table = summary_table(frame, metric)
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    styles = {"pretrained": "-", "scratch": "--"}
    colours = {"full": "C0", "lora": "C1", "probe": "C2", "ridge": "C3"}
    for (mode, init), group in table.groupby(["mode", "init"]):
        group = group.sort_values("labels")
        x = group["labels"].to_numpy()
        y = group[metric].to_numpy()
        low = np.where(np.isfinite(group["low"]), group["low"], y)
        high = np.where(np.isfinite(group["high"]), group["high"], y)
        colour = colours.get(mode, None)
        ax.plot(x, y, styles.get(init, "-"), marker="o", color=colour, label=f"{mode}, {init}")
        ax.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0)
        if len(x) == 1:
            ax.errorbar(x, y, yerr=[y - low, high - y], color=colour, capsize=3, fmt="none")
    ax.set_xscale("log")
    ax.set_xlabel("labels used (training + validation)")
    split = frame["split"].iloc[0] if "split" in frame else "test"
    ax.set_ylabel(f"{split} {metric}")
    seeds = int(table["seeds"].min())
    ax.set_title(f"label efficiency (mean and 95% interval over {seeds}+ seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def report(frame, diffs, metric: str) -> str:
    split = frame["split"].iloc[0] if "split" in frame else "test"
    return f"# Label efficiency: {split} {metric}\n\n" + tables(frame, diffs, metric)


def tables(frame, diffs, metric: str) -> str:
    """Markdown: the score of every mode, init and fraction, then the paired differences."""
    table = summary_table(frame, metric)
    second = SECONDARY.get(metric) if SECONDARY.get(metric) in table else None
    extra = f" {second} | 95% interval |" if second else ""
    # Runs recorded before validation labels were counted give training labels only.
    counted = "labels used" if "labels_used" in frame else "training labels"
    lines = [f"| mode | init | {counted} | fraction | seeds | {metric} | 95% interval |{extra}"]
    lines.append("|---|---|---|---|---|---|---|" + ("---|---|" if second else ""))
    for row in table.sort_values(["mode", "init", "label_fraction"]).itertuples():
        value = getattr(row, metric)
        cells = (
            f" {getattr(row, second):.3f} | [{row.low2:.3f}, {row.high2:.3f}] |" if second else ""
        )
        lines.append(
            f"| {row.mode} | {row.init} | {row.labels} | {row.label_fraction:g} | {row.seeds} | "
            f"{value:.3f} | [{row.low:.3f}, {row.high:.3f}] |{cells}"
        )
    if len(diffs):
        lines += ["", "Differences, paired by seed (the same label subset):", ""]
        lines.append("| comparison | fraction | seeds | difference | 95% interval | win |")
        lines.append("|---|---|---|---|---|---|")
        for row in diffs.itertuples():
            lines.append(
                f"| {row.comparison} | {row.label_fraction:g} | {row.seeds} | "
                f"{row.difference:+.3f} | [{row.low:+.3f}, {row.high:+.3f}] | "
                f"{'**yes**' if row.win else 'no'} |"
            )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- publishing
def machine() -> dict:
    """What decides the numbers besides the code: threads, CPU kernels, torch."""
    import torch

    return {
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }


def record_command(out: Path, argv: list[str]) -> None:
    """Append this invocation to ``out/commands.json`` (published with the results)."""
    path = out / "commands.json"
    done = json.loads(path.read_text()) if path.is_file() else []
    done.append(
        {
            "command": shlex.join(["python", "-m", "astropt.finetune.sweep", *argv]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "load": round(os.getloadavg()[0], 2),
            "machine": machine(),
        }
    )
    atomic_write_text(path, json.dumps(done, indent=2))


def _trunk(init: str) -> dict:
    """How the pretrained trunk was trained: its run's last evaluated step and loss."""
    folder = Path(init)
    metrics = folder / "metrics.jsonl"
    info: dict = {"init_from": init}
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        evals = [r for r in rows if "val_loss" in r]
        if evals:
            info.update(steps=evals[-1]["step"], val_loss=round(evals[-1]["val_loss"], 4))
    return info


#: Settings of the runs quoted with the results (the rest is in each run's config.json).
SETTINGS = ("max_iters", "batch_size", "max_labelled", "layer", "pool", "layer_decay",
            "head_dropout", "split_seed", "val_fraction", "test_fraction",
            "eval_interval", "source_splits", "split", "val_labels", "class_weights")  # fmt: skip


def _setting(config: dict, key: str):
    """A run's setting; runs written before a key existed had its old behaviour."""
    before = {
        "source_splits": ["train", "validation", "test"],
        "split": "test",
        "val_labels": "all",
    }
    value = config.get(key, before.get(key))
    return list(value) if isinstance(value, tuple) else value


def _sweep_record(out: Path) -> tuple[list[dict], list[dict], dict]:
    """``(rows, commands, first config)`` of a finished sweep folder; refuses mixed recipes."""
    rows = collect(out)
    if not rows:
        raise ValueError(f"{out} has no finished run to publish")
    configs = [json.loads(p.read_text()) for p in sorted(out.glob("*/config.json"))]
    first = configs[0]
    mixed = sorted(
        k for k in SETTINGS if any(_setting(c, k) != _setting(first, k) for c in configs)
    )
    if mixed:
        raise ValueError(f"the runs in {out} differ in {', '.join(mixed)}: publish one recipe")
    commands = out / "commands.json"
    return rows, (json.loads(commands.read_text()) if commands.is_file() else []), first


def publish(
    out: str | Path,
    path: str | Path,
    title: str,
    root: str | Path = ".",
    dev: list[str | Path] = (),
    choices: list[str] = (),
    command: str = "",
) -> Path:
    """Copy the finished sweep ``out`` into the result file ``path`` and draw its figure
    (``docs/finetune/label_efficiency_<stem>.png`` under ``root``).

    ``dev``: the sweeps (``split=dev``, one per candidate setting) whose scores made the
    choices of this one; their settings, rows and commands are published beside the test
    rows, and ``choices`` says in words what was chosen there.
    """
    out, path, root = Path(out), Path(path), Path(root)
    rows, commands, first = _sweep_record(out)
    configs = [json.loads(p.read_text()) for p in sorted(out.glob("*/config.json"))]
    pretrained = sorted({c["init_from"] for c in configs if init_name(c["init_from"]) != "scratch"})
    figure = FIGURES / f"label_efficiency_{path.stem}.png"
    data = {
        "title": title,
        "figure": str(figure),
        "split": _setting(first, "split"),
        "commands": commands,
        "data": {
            "path": first["data"]["path"],
            "label_column": first["label_column"],
            "head": first["head"],
        },  # fmt: skip
        "settings": {k: _setting(first, k) for k in SETTINGS},
        "optim": {k: first["optim"][k] for k in ("lr", "warmup_iters", "weight_decay")},
        "trunks": [_trunk(p) for p in pretrained],
        "choices": list(choices),
        "rows": rows,
    }
    candidates = []
    for folder in [dev] if isinstance(dev, (str, Path)) else dev:
        dev_rows, dev_commands, dev_first = _sweep_record(Path(folder))
        if _setting(dev_first, "split") != "dev":
            raise ValueError(f"{folder} was not run with split=dev: its scores cannot make choices")
        settings = {k: _setting(dev_first, k) for k in SETTINGS}
        candidates.append({"settings": settings, "commands": dev_commands, "rows": dev_rows})
    if candidates:
        data["dev"] = candidates
    data = json.loads(json.dumps(data, default=float))  # plain JSON types before the digest
    frame = _frame(data)
    metric = HEADLINE[data["data"]["head"]]
    data["format"] = FORMAT
    data["tables"] = _tables_of(frame, metric)
    from astropt.results import stamp, write_result

    outputs = sorted(out.glob("*/summary.json"))
    for folder in [dev] if isinstance(dev, (str, Path)) else dev:
        outputs += sorted(Path(folder).glob("*/summary.json"))
    command = command or f"python -m astropt.finetune.sweep --out {out} --publish {path}"
    stamp(data, command, outputs, root=Path(os.path.commonpath([p.parent.parent for p in outputs])))
    write_result(path, data)
    draw_published(data, root)
    return path


#: Format of a published sweep (checked by :func:`check_sweep` through astropt.results).
FORMAT = "astropt-finetune-sweep/1"


def _tables_of(frame, metric: str) -> dict:
    """The published numbers a sweep's rows give: its summary and difference tables."""

    def records(table) -> list[dict]:
        return json.loads(table.to_json(orient="records")) if len(table) else []

    return {
        "summary": records(summary_table(frame, metric)),
        "differences": records(differences(frame, metric)),
    }


def check_sweep(data: dict) -> list[str]:
    """Problems of a published sweep: a table entry its per-seed rows do not give."""
    expected = _tables_of(_frame(data), HEADLINE[data["data"]["head"]])
    problems = []
    for name, rows in expected.items():
        stored = data.get("tables", {}).get(name)
        if stored is None or len(stored) != len(rows):
            problems.append(f"its {name} table does not have one entry per cell of its rows")
            continue
        for want, have in zip(rows, stored, strict=True):
            for key, value in want.items():
                other = have.get(key)
                same = (
                    np.isclose(value, other, rtol=1e-9, atol=1e-12, equal_nan=True)
                    if isinstance(value, float) and isinstance(other, (int, float))
                    else value == other
                )
                if not same:
                    problems.append(f"{name} {key}: stored {other!r}, its rows give {value!r}")
    return problems


def _frame(data: dict):
    import pandas as pd

    return pd.DataFrame(data["rows"]).sort_values(["mode", "init", "label_fraction", "seed"])


def draw_published(data: dict, root: str | Path = ".") -> Path:
    frame = _frame(data)
    return plot_label_efficiency(frame, HEADLINE[data["data"]["head"]], Path(root) / data["figure"])


def _overlap_text(rows: list[dict], sources: list[str]) -> str:
    """What the runs recorded about labelled galaxies inside the trunk's pretraining data."""
    counts = {r.get("pretraining_overlap") for r in rows if r["init"] == "pretrained"}
    if counts == {0}:
        return "checked by galaxy id in every pretrained run: none"
    if None in counts or not counts:
        if "train" in sources:
            return "not checked; **the pool includes the `train` split the trunk pretrained on**"
        return "not checked by these runs"
    return (
        f"**{max(c for c in counts if c is not None)} labelled galaxies were pretraining images**"
    )


def readme_block(data: dict) -> str:
    """The README section body for a published sweep: provenance, figure, tables."""
    frame = _frame(data)
    metric = HEADLINE[data["data"]["head"]]
    second = SECONDARY.get(metric)
    diffs = differences(frame, metric)
    settings, optim = data["settings"], data["optim"]
    split = data.get("split", "test")
    trunks = "; ".join(
        f"`{t['init_from']}`" + (f" ({t['steps']} steps, val loss {t['val_loss']})" if "steps" in t
                                 else "")
        for t in data["trunks"]
    )  # fmt: skip
    dev = data.get("dev") or []
    dev_commands = [c for candidate in dev for c in candidate["commands"]]
    commands = "\n".join(c["command"] for c in [*dev_commands, *data["commands"]])
    loads = sorted({c["load"] for c in data["commands"]})
    machines = sorted({json.dumps(c["machine"], sort_keys=True) for c in data["commands"]})
    pool = (
        f"the first {settings['max_labelled']} labelled galaxies"
        if settings["max_labelled"]
        else "every labelled galaxy"
    )
    sources = ", ".join(f"`{s}`" for s in _setting(settings, "source_splits"))
    shown = f"; {second} beside it" if second else ""
    fraction_text = (
        "the same share of the validation part (labels used = training + validation)"
        if settings.get("val_labels") == "fraction"
        else "the whole validation part (labels used = training + validation)"
    )
    comparator_mode = comparator(frame)
    comparator_text = (
        "`ridge`: the ridge probe of `astropt.probe` on the trunk's `embed_layer` "
        "embeddings, fitted on the same training + validation labels (no training loop). "
        if comparator_mode == "ridge"
        else ""
    )
    choices = data.get("choices") or []
    choice_text = (
        "Chosen on the dev split (the test galaxies set aside, the rest split again the same "
        "way; the first command(s) below): " + " ".join(choices) + " "
        if choices
        else ""
    )
    lines = [
        f"**{data['title']}** (`{data['data']['label_column']}`, headline {split} {metric}"
        f"{shown}): pretrained trunk {trunks}; {pool} of the {sources} "
        f"split(s) of `{data['data']['path']}` (galaxies in the trunk's pretraining data: "
        f"{_overlap_text(data['rows'], _setting(settings, 'source_splits'))}), split "
        f"{1 - settings['val_fraction'] - settings['test_fraction']:.0%} / "
        f"{settings['val_fraction']:.0%} / {settings['test_fraction']:.0%} "
        f"(train / validation / test, split_seed {settings['split_seed']}); a run uses "
        f"`label_fraction` of the training part and {fraction_text}. Every trained run "
        f"{settings['max_iters']} steps of batch {settings['batch_size']}, lr {optim['lr']:g}, "
        f"layer_decay {settings['layer_decay']:g}, head on layer {settings['layer']} "
        f"({settings['pool']} pool); validation every {settings['eval_interval']} steps, the "
        f"checkpoint of lowest validation loss scored. {comparator_text}{choice_text}Machine "
        f"{', '.join(machines)}; load average {', '.join(f'{v:g}' for v in loads)} at start.",
        "",
        "```text",
        commands,
        "```",
        "",
        f"![label efficiency, {data['title']}]({Path(data['figure']).relative_to(FIGURES.parent)})",
        "",
        tables(frame, diffs, metric),
        verdict(diffs),
        "",
    ]
    if dev:
        lines[-1:-1] = ["", dev_table(dev, metric)]
    return "\n".join(lines)


def dev_table(candidates: list[dict], metric: str) -> str:
    """Markdown: each dev candidate's settings (those that differ) and its mean dev score
    over every run (fractions and seeds) with the 95 % interval over runs."""
    keys = [k for k in SETTINGS if len({json.dumps(c["settings"][k]) for c in candidates}) > 1]
    lines = [
        "Dev split (the choices above; the test galaxies never read):",
        "",
        "| " + " | ".join([*keys, "runs", f"mean dev {metric}", "95% interval"]) + " |",
        "|" + "---|" * (len(keys) + 3),
    ]
    for candidate in candidates:
        values = [r[metric] for r in candidate["rows"]]
        mean, low, high = mean_interval(values)
        cells = [str(candidate["settings"][k]) for k in keys]
        lines.append(
            "| "
            + " | ".join([*cells, str(len(values)), f"{mean:.3f}", f"[{low:.3f}, {high:.3f}]"])
            + " |"
        )
    return "\n".join(lines) + "\n"


#: How the verdict names the comparator mode.
BASE_NAMES = {"ridge": "the ridge probe", "probe": "the probe head"}


def verdict(diffs) -> str:
    """One sentence per kind of comparison: where the interval lies above zero, and where not."""
    parts = []
    if not len(diffs):
        return ""
    base = "ridge" if diffs.comparison.str.contains("- ridge (", regex=False).any() else "probe"
    for kind, label in (("pretrained - scratch", "Pretrained beats scratch"),
                        (f"- {base} (pretrained)", f"Beats {BASE_NAMES[base]} (pretrained)")):  # fmt: skip
        rows = diffs[diffs.comparison.str.contains(kind, regex=False)]
        cells = [
            f"{r.mode} at {r.label_fraction:.0%} of the labels: {'yes' if r.win else 'no'}"
            for r in rows.sort_values(["mode", "label_fraction"]).itertuples()
        ]
        if cells:
            parts.append(f"{label}, interval above zero: " + "; ".join(cells) + ".")
    parts.append(
        f"{len(diffs)} comparisons in this table, each a 95 % interval over seeds with no "
        "multiplicity correction: where there is no true difference, about one interval in "
        "forty lies above zero by chance."
    )
    return " ".join(parts)


def read_published(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def update_readme(readme: str | Path) -> bool:
    """Regenerate every finetune-table block of ``readme`` from the file it cites; True if
    the README changed."""
    readme = Path(readme)
    text = readme.read_text()

    def fill(match: re.Match) -> str:
        path = readme.parent / match["path"]
        if not path.is_file():  # not published yet: left as it is
            log.warning("%s cites %s, which does not exist yet", readme, match["path"])
            return match.group(0)
        data = read_published(path)
        return f"<!-- finetune-table: {match['path']} -->\n{readme_block(data)}<!-- /finetune-table -->"

    new = README_BLOCK.sub(fill, text)
    if new != text:
        atomic_write_text(readme, new)
    return new != text


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


@dataclass
class SweepOptions:
    """Options of ``astropt sweep`` (``python -m astropt.finetune.sweep``)."""

    config: str | None = None  # finetune config TOML every run starts from
    out: str = ""  # sweep folder (required)
    modes: str = "full"  # comma-separated: probe,lora,full,ridge
    inits: str = "scratch"  # comma-separated init_from values; 'scratch' = fresh
    fractions: str = "0.01,0.1,1"  # comma-separated label fractions
    seeds: str = "0,1,2"  # comma-separated training seeds
    # run only these MODE:INIT:FRACTION combinations instead of the full grid
    combo: list[str] = field(default_factory=list)
    report_only: bool = False  # redraw from finished runs
    # copy the finished sweep into this result file (e.g. docs/results/NAME.json), draw its
    # figure under docs/finetune/ and rewrite the docs page blocks citing it
    publish: str | None = None
    title: str = ""  # name of the task in the published figure
    page: str = str(PAGE)  # docs page rewritten by publish
    # with publish: the split=dev sweeps whose scores made this sweep's choices (published
    # beside it; one per candidate setting)
    dev: list[str] = field(default_factory=list)
    # with publish: sentences saying what the dev sweeps chose
    choice: list[str] = field(default_factory=list)
    # finetune key=value overrides for every run (any finetune key given here lands in it)
    overrides: list[str] = field(default_factory=list)


def run_sweep_command(opts: SweepOptions) -> int:
    """Run, report or publish the sweep ``opts`` describes; returns the exit status."""
    if not opts.out:
        raise ConfigError("out is required: the sweep folder (out=runs/sweep)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(opts.out)
    if opts.publish:
        write_results(out, collect(out))
        root = Path(opts.page).resolve().parent.parent  # the page sits in docs/
        title = opts.title or Path(opts.publish).stem
        command = shlex.join(["python", "-m", "astropt.finetune.sweep", *sys.argv[1:]])
        publish(opts.out, opts.publish, title, root, opts.dev, opts.choice, command)
        changed = update_readme(opts.page)
        print(f"wrote {opts.publish}; {opts.page} {'updated' if changed else 'unchanged'}")
        return 0
    if opts.report_only:
        write_results(out, collect(out))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    argv = sys.argv[1:]
    record_command(out, argv[1:] if argv[:1] == ["sweep"] else argv)  # astropt sweep ...
    inits = [v.strip() for v in opts.inits.split(",") if v.strip()]
    combos = None
    if opts.combo:
        combos = []
        for text in opts.combo:
            mode, init, fraction = text.rsplit(":", 2)
            combos.append((mode, init, float(fraction)))
        inits = list(dict.fromkeys([*(c[1] for c in combos), *inits]))
    run_sweep(
        opts.config,
        opts.out,
        [m.strip() for m in opts.modes.split(",") if m.strip()],
        inits,
        _floats(opts.fractions),
        [int(s) for s in opts.seeds.split(",") if s.strip()],
        list(opts.overrides),
        combos,
    )
    print((out / "report.md").read_text())
    return 0


def _finetune_keys():
    from astropt.finetune.config import FinetuneConfig
    from astropt.options import option_keys

    return option_keys(FinetuneConfig)


COMMAND = Command(
    SweepOptions,
    run_sweep_command,
    "Label-efficiency sweep: finetune over mode x init x label_fraction x seed and plot the "
    "test score against labels used, with intervals over seeds. Rerun the same command to "
    "resume.",
    positional=("config",),
    toml_is_positional=True,
    forward=("overrides", _finetune_keys),
    examples=(
        "astropt sweep configs/finetune-quickstart.toml --out runs/sweep --modes full,probe "
        "--inits runs/quickstart,scratch --fractions 0.01,0.1,1 --seeds 0,1,2",
        "python -m astropt.finetune.sweep --out runs/sweep --publish docs/results/NAME.json "
        "--title 'Galaxy10-style class'",
    ),
)


def main(argv: list[str] | None = None) -> int:
    """``python -m astropt.finetune.sweep`` (the same as ``astropt sweep``)."""
    return run_command(COMMAND, argv, "python -m astropt.finetune.sweep")


if __name__ == "__main__":
    sys.exit(main())
