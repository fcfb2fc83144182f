"""Survey size, training length and flux-loss weight of the quickstart recipe, on the
development (validation) split.

The flux-aware recipe (``configs/quickstart.toml``: survey-wide tokens, flux head, hybrid
``middle+final`` embeddings) is pretrained with each setting below, its validation
galaxies are embedded, and one probe pass per variant compares the model with the
morphometrics baseline and a randomly initialised model of the same shape (the probe
suite's protocol: 5 folds x 3 repeats, corrected resampled t intervals). A larger survey
gives the probes more labelled galaxies (its validation split is a tenth of it); that is
what the quickstart's survey size and step count were chosen on.

    python bench/photometry_scale.py run --out runs/photometry-scale/a \
        --variants base12-s0,base24,it3000-24 --device cuda
    python bench/photometry_scale.py report runs/photometry-scale/a runs/photometry-scale/b --publish

``run`` trains every variant at once (one process each, on ``--device``), then embeds and
probes them in ``--jobs`` processes; it writes ``comparisons.csv`` (every probe
comparison, a ``variant`` column first) into ``--out``. ``report --publish`` writes
``docs/results/photometry-scale.json`` and regenerates the table of ``docs/photometry.md``.
The test split is never read.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from astropt.probe.protocol import PHYSICAL_FAMILIES

ROOT = Path(__file__).resolve().parent.parent
SPLIT = "validation"  # the development split: every choice here is made on it
CONFIG = ROOT / "configs/quickstart.toml"

#: name -> (survey galaxies, pretraining seed, training overrides on top of CONFIG)


def _variant(n: int, seed: int, steps: int, weight: float = 1, layers: int = 4, *other: str):
    keys = [f"max_iters={steps}", f"model.flux_loss_weight={weight:g}", f"model.n_layer={layers}"]
    return n, seed, [*keys, *other]


VARIANTS: dict[str, tuple[int, int, list[str]]] = {
    "base12-s0": _variant(12000, 0, 1500),
    "base12-s1": _variant(12000, 1, 1500),
    "it3000-12": _variant(12000, 0, 3000),
    "it4500-12": _variant(12000, 0, 4500),
    "w3-12": _variant(12000, 0, 1500, 3),
    "w3-it3000-12": _variant(12000, 0, 3000, 3),
    "base24": _variant(24000, 0, 1500),
    "base24-s1": _variant(24000, 1, 1500),
    "w3-24": _variant(24000, 0, 1500, 3),
    "it3000-24": _variant(24000, 0, 3000),
    "it3000-24-s1": _variant(24000, 1, 3000),
    "it3000-24-s2": _variant(24000, 2, 3000),
    "w3-it3000-24": _variant(24000, 0, 3000, 3),
    "w10-it3000-24": _variant(24000, 0, 3000, 10),
    "w10-it3000-24-s1": _variant(24000, 1, 3000, 10),
    "w10-it3000-24-s2": _variant(24000, 2, 3000, 10),
    "it4500-24": _variant(24000, 0, 4500),
    "it4500-24-s1": _variant(24000, 1, 4500),
    "w10-it4500-24": _variant(24000, 0, 4500, 10),
    "l6-it3000-24": _variant(24000, 0, 3000, 1, 6),
    "noflux-it3000-24": _variant(24000, 0, 3000, 1, 4, "model.flux_targets=false"),
    "it3000-36": _variant(36000, 0, 3000),
    "w10-it3000-36": _variant(36000, 0, 3000, 10),
    "it3000-36-s1": _variant(36000, 1, 3000),
    "it3000-36-s2": _variant(36000, 2, 3000),
    "l6-it2000-36": _variant(36000, 0, 2000, 1, 6),
    "l6-it2000-36-s1": _variant(36000, 1, 2000, 1, 6),
    "l6-it3000-36": _variant(36000, 0, 3000, 1, 6),
}

PHYSICAL = PHYSICAL_FAMILIES
BASELINES = ("morphometrics", "random-init", "pixels")
RESULT = Path("docs/results/photometry-scale.json")
PAGE = Path("docs/photometry.md")
BLOCK_START, BLOCK_END = "<!-- photometry-scale -->", "<!-- /photometry-scale -->"
RULE = (
    "stage 1 (the sweep runs): the survey size of the setting with the most physical-family "
    "wins over morphometrics in its worst seed, then the highest smallest lower interval "
    "bound over those families; stage 2 (the CPU runs of the quickstart itself at that size, "
    "settings of equal training compute, layers x steps): the most physical wins, then the "
    "most wins over random-init and pixels on the other families"
)


def _log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def _survey(work: Path, n: int) -> Path:
    from astropt.simulate import write_survey

    path = work / f"survey{n}"
    if not (path / ".done").exists():
        write_survey(path, n=n, image_size=64, seed=0, workers=8, overwrite=True, progress=False)
        (path / ".done").write_text("ok")
    return path


def _train(name: str, work: Path, device: str) -> tuple[str, int]:
    n, seed, overrides = VARIANTS[name]
    cmd = [
        sys.executable, str(ROOT / "train.py"), str(CONFIG), f"out_dir={work / 'runs' / name}",
        f"data.path={work / f'survey{n}'}", f"seed={seed}", f"device={device}",
        "progress=false", "preview=false", "overwrite=true", *overrides,
    ]  # fmt: skip
    with open(work / f"{name}.log", "w") as log:
        done = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
    return name, done.returncode


def _embed(name: str, work: Path, device: str) -> str:
    from astropt.data import DataConfig
    from astropt.embed import export_embeddings, random_init_like
    from astropt.hub import load_model

    n = VARIANTS[name][0]
    model = load_model(work / "runs" / name)
    data = DataConfig(source="synthetic", path=str(work / f"survey{n}"), image_size=64)
    out = work / "emb" / name
    common = {"progress": False, "overwrite": True, "device": device}
    export_embeddings(model, data, out / "model.parquet", SPLIT, **common)
    export_embeddings(random_init_like(model, 0), data, out / "random.parquet", SPLIT,
                      kind="random-init", **common)  # fmt: skip
    return name


def _image_features(n: int, work: Path, kinds: tuple[str, ...]) -> None:
    from astropt.data import DataConfig
    from astropt.embed import export_image_features

    data = DataConfig(source="synthetic", path=str(work / f"survey{n}"), image_size=64)
    for kind in kinds:
        path = work / "emb" / f"{kind}{n}.parquet"
        export_image_features(kind, data, path, SPLIT, overwrite=True, progress=False)


def _probe(name: str, work: Path, pixels: bool):
    from astropt.probe import PixelSource, run_probes

    n = VARIANTS[name][0]
    emb = work / "emb" / name
    sets = {
        "model": emb / "model.parquet",
        "morphometrics": work / "emb" / f"morphometrics{n}.parquet",
        "random-init": emb / "random.parquet",
    }
    if pixels:  # PCA of the scaled pixels, fitted inside each training fold
        sets["pixels"] = PixelSource(work / "emb" / f"pixels{n}.parquet")
    comparisons = run_probes(sets, seed=0, label_sizes=(), threads=1).comparisons
    comparisons.insert(0, "variant", name)
    return comparisons


def run(args) -> None:
    import pandas as pd

    out, work = Path(args.out), Path(args.work or Path(args.out) / "work")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    sizes = sorted({VARIANTS[name][0] for name in names})
    for n in sizes:
        _survey(work, n)
        _log("survey", n)
    with ThreadPoolExecutor(len(names)) as pool:
        codes = dict(pool.map(lambda name: _train(name, work, args.device), names))
    failed = [name for name, code in codes.items() if code]
    if failed:
        raise SystemExit(f"training failed for {failed}; logs in {work}")
    _log("trained", len(names))
    spawn = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    with ProcessPoolExecutor(4, mp_context=spawn) as pool:
        kinds = ("morphometrics", "pixels") if args.pixels else ("morphometrics",)
        list(pool.map(_image_features, sizes, [work] * len(sizes), [kinds] * len(sizes)))
        list(pool.map(_embed, names, [work] * len(names), [args.device] * len(names)))
    _log("embedded", len(names))
    found = []
    with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
        for comparisons in pool.map(_probe, names, [work] * len(names), [args.pixels] * len(names)):
            found.append(comparisons)
            _log("probed", comparisons.variant.iloc[0])
            pd.concat(found).to_csv(out / "comparisons.csv", index=False)  # each as it comes


def _same_value(stored, given: str) -> bool:
    """A config value against a ``key=value`` text: ``1.0`` is ``1``, ``False`` is ``false``."""
    if str(stored).lower() == given.lower():
        return True
    try:
        return float(stored) == float(given)
    except (TypeError, ValueError):
        return False


def collect(args) -> None:
    """Rows from quickstart dev runs (``python -m astropt.quickstart --split dev``): each
    ``VARIANT=RUN`` is checked against the variant's survey size and training keys, and the
    run's probe comparisons are written to ``--out`` with a ``variant`` column."""
    import pandas as pd

    frames = []
    for item in args.runs:
        name, _, folder = item.partition("=")
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")
        folder = Path(folder)
        n, seed, overrides = VARIANTS[name]
        config = json.loads((folder / "model" / "config.json").read_text())
        splits = json.loads((folder / ".steps" / "survey.json").read_text())["splits"]
        found = {"seed": config["seed"], "galaxies": sum(splits.values())}
        for key, value in (o.split("=", 1) for o in overrides):
            section, _, field = key.rpartition(".")
            found[key] = (config[section] if section else config)[field]
            if not _same_value(found[key], value):
                raise SystemExit(f"{folder}: {key}={found[key]}, but {name} has {value}")
        if (found["seed"], found["galaxies"]) != (seed, n):
            raise SystemExit(f"{folder}: seed/survey {found['seed']}/{found['galaxies']} != {name}")
        frame = pd.read_csv(folder / "probes-dev" / "comparisons.csv")
        frame.insert(0, "variant", name)
        frames.append(frame)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.concat(frames).to_csv(out / "comparisons.csv", index=False)


# ------------------------------------------------------------------------------- report
def summarise(outs: list[Path]) -> tuple[dict, list[Path]]:
    """Every variant's family-level comparisons with the baselines, its settings, the
    per-setting summary and the choice :data:`RULE` makes."""
    import pandas as pd

    rows, files = [], []
    for out in outs:
        path = out / "comparisons.csv"
        files.append(path)
        frame = pd.read_csv(path)
        frame = frame[(frame.level == "family") & frame.baseline.isin(BASELINES)]
        for name, group in frame.groupby("variant", sort=False):
            n, seed, overrides = VARIANTS[name]
            keys = dict(item.split("=", 1) for item in overrides)
            families = {}
            for r in group.itertuples():
                entry = families.setdefault(r.family, {"name": r.family, "vs": {}})
                entry["vs"][r.baseline] = {
                    "improvement": [round(float(v), 4) for v in (r.improvement, r.ci_low, r.ci_high)],
                    "outcome": r.outcome,
                }  # fmt: skip
            rows.append({
                "variant": name, "run": out.name, "seed": seed, "n_galaxies": n,
                "evaluation_galaxies": n // 10, "max_iters": int(keys.pop("max_iters")),
                "flux_loss_weight": float(keys.pop("model.flux_loss_weight")),
                "n_layer": int(keys.pop("model.n_layer")),
                "other": [f"{k}={v}" for k, v in keys.items()],
                "families": list(families.values()),
            })  # fmt: skip
    result = {"split": SPLIT, "config": "configs/quickstart.toml", "rule": RULE, "rows": rows}
    result["settings"] = _settings([r for r in rows if not _is_check(r)])
    result["chosen"] = choose(result)
    return result, files


def _is_check(row: dict) -> bool:
    """Rows of the quickstart's own CPU runs (``collect``), the rule's second stage."""
    return row["run"].startswith("cpu")


def _physical(row: dict, baseline: str = "morphometrics") -> list[dict]:
    by_name = {f["name"]: f for f in row["families"]}
    return [by_name[name]["vs"][baseline] for name in PHYSICAL if name in by_name]


def _physical_wins(row: dict) -> int:
    return sum(v["outcome"] == "win" for v in _physical(row))


def _other_wins(row: dict) -> int:
    """Wins over random-init and pixels on the families that are not physical."""
    return sum(
        f["vs"][b]["outcome"] == "win"
        for f in row["families"]
        if f["name"] not in PHYSICAL
        for b in ("random-init", "pixels")
        if b in f["vs"]
    )


def _tally(row: dict, baseline: str) -> str:
    got = [f["vs"][baseline]["outcome"] for f in row["families"] if baseline in f["vs"]]
    if not got:
        return "-"
    return f"{got.count('win')}/{got.count('tie')}/{got.count('loss')}"


def _setting(row: dict) -> tuple:
    return (row["n_galaxies"], row["max_iters"], row["flux_loss_weight"], row["n_layer"],
            tuple(row["other"]))  # fmt: skip


def _settings(rows: list[dict]) -> list[dict]:
    """Seeds of one setting together: worst-seed physical wins and smallest lower bound."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(_setting(row), []).append(row)
    summary = []
    for (n, steps, weight, layers, other), members in sorted(groups.items()):
        wins = [_physical_wins(r) for r in members]
        lows = [min(v["improvement"][1] for v in _physical(r)) for r in members]
        means = [sum(v["improvement"][0] for v in _physical(r)) / len(PHYSICAL) for r in members]
        summary.append({
            "n_galaxies": n, "max_iters": steps, "flux_loss_weight": weight, "n_layer": layers,
            "other": list(other), "seeds": [r["seed"] for r in members], "physical_wins": wins,
            "worst_seed_wins": min(wins), "smallest_lower_bound": round(min(lows), 4),
            "mean_physical_difference": round(sum(means) / len(means), 4),
        })  # fmt: skip
    return summary


def choose(result: dict) -> dict | None:
    """:data:`RULE` applied to the rows: stage 1 picks the survey size, stage 2 the setting."""
    plain = [s for s in result["settings"] if not s["other"]]
    if not plain:
        return None
    size = max(plain, key=lambda s: (s["worst_seed_wins"], s["smallest_lower_bound"]))["n_galaxies"]
    checks = [r for r in result["rows"] if _is_check(r) and r["n_galaxies"] == size]
    if not checks:
        return {"n_galaxies": size}
    best = max(checks, key=lambda r: (_physical_wins(r), _other_wins(r), -r["max_iters"]))
    keep = ("variant", "n_galaxies", "max_iters", "flux_loss_weight", "n_layer")
    return {key: best[key] for key in keep}


def _row_table(rows: list[dict], extra: tuple[str, ...]) -> list[str]:
    heads = " | ".join(f"vs {b}" for b in extra)
    lines = [
        "| survey (eval galaxies) | steps | layers | flux weight | other | seed | redshift | "
        f"mass & luminosity | apparent mag | star formation | colour | physical wins | {heads} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(extra),
    ]
    for row in sorted(rows, key=lambda r: (*_setting(r), r["seed"])):
        cells = []
        for v in _physical(row):
            mark = {"win": " **win**", "loss": " *loss*"}.get(v["outcome"], " tie")
            cells.append("{:+.3f} [{:+.3f}, {:+.3f}]".format(*v["improvement"]) + mark)
        lines.append(
            f"| {row['n_galaxies']:,} ({row['evaluation_galaxies']:,}) | {row['max_iters']} | "
            f"{row['n_layer']} | {row['flux_loss_weight']:g} | {' '.join(row['other']) or '-'} | "
            f"{row['seed']} | " + " | ".join(cells) + f" | {_physical_wins(row)} of 5 | "
            + " | ".join(_tally(row, b) for b in extra) + " |"
        )  # fmt: skip
    return lines


def render(result: dict) -> str:
    sweep = [r for r in result["rows"] if not _is_check(r)]
    checks = [r for r in result["rows"] if _is_check(r)]
    lines = [
        f"Split: `{result['split']}` (development); recipe `{result['config']}` with each "
        "row's settings. Cells: model minus morphometrics, R^2 [95% corrected resampled t "
        "interval over 5 folds x 3 repeats], **win** / *loss* / tie. Tallies are "
        "wins/ties/losses over all 16 families.",
        "",
        f"The sweep ({', '.join(sorted({r['run'] for r in sweep}))}):",
        "",
        *_row_table(sweep, ("morphometrics", "random-init")),
        "",
        "By setting (seeds together):",
        "",
        "| survey | steps | layers | flux weight | other | seeds | physical wins per seed | "
        "smallest lower bound | mean physical difference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["settings"]:
        lines.append(
            f"| {s['n_galaxies']:,} | {s['max_iters']} | {s['n_layer']} | "
            f"{s['flux_loss_weight']:g} | {' '.join(s['other']) or '-'} | "
            f"{', '.join(map(str, s['seeds']))} | {', '.join(map(str, s['physical_wins']))} | "
            f"{s['smallest_lower_bound']:+.3f} | {s['mean_physical_difference']:+.3f} |"
        )
    if checks:
        lines += [
            "",
            f"The quickstart's own runs on CPU ({', '.join(sorted({r['run'] for r in checks}))}, "
            "`python -m astropt.quickstart --split dev`):",
            "",
            *_row_table(checks, ("morphometrics", "random-init", "pixels")),
        ]
    lines += ["", f"Rule: {result['rule']}."]
    chosen = result.get("chosen")
    if chosen and "variant" in chosen:
        lines.append(
            f"Chosen: `{chosen['variant']}`: {chosen['n_galaxies']:,} galaxies, "
            f"{chosen['n_layer']} layers, {chosen['max_iters']} steps, flux weight "
            f"{chosen['flux_loss_weight']:g}."
        )
    return "\n".join(lines)


def report(args) -> None:
    from astropt.results import stamp, write_result

    outs = [Path(o) for o in args.out]
    result, files = summarise(outs)
    text = render(result)
    print(text)
    if args.publish:
        result["machine"] = args.machine
        stamp(result, args.command_line, files, root=Path(os.path.commonpath(outs)).parent)
        write_result(ROOT / RESULT, result)
        page = ROOT / PAGE
        body = page.read_text()
        start = body.index(BLOCK_START) + len(BLOCK_START)
        page.write_text(body[:start] + "\n" + render(result) + "\n" + body[body.index(BLOCK_END) :])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train, embed and probe variants")
    r.add_argument("--out", required=True)
    r.add_argument("--work", default=None, help="surveys, models and embeddings (default OUT/work)")
    r.add_argument("--variants", required=True, help=f"comma-separated names of {len(VARIANTS)}")
    r.add_argument("--device", default="auto")
    r.add_argument("--jobs", type=int, default=2, help="probe passes at once")
    r.add_argument("--pixels", action="store_true", help="also probe against the pixels baseline")
    c = sub.add_parser("collect", help="rows from quickstart --split dev runs")
    c.add_argument("--out", required=True)
    c.add_argument("runs", nargs="+", help="VARIANT=RUN_FOLDER")
    p = sub.add_parser("report", help="summarise run folders; --publish writes the result")
    p.add_argument("out", nargs="+", help="run folders (each with comparisons.csv)")
    p.add_argument("--publish", action="store_true")
    p.add_argument("--machine", default="", help="where the runs ran, recorded in the result")
    from astropt.options import parse_or_print_config

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_or_print_config(parser, argv)
    if args is None:  # --print-config: parsed and printed
        return 0
    args.command_line = "python bench/photometry_scale.py " + " ".join(argv)
    {"run": run, "collect": collect, "report": report}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
