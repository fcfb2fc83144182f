"""Flux-aware pretraining ablation on the built-in survey's development (validation) split.

Each variant of the pretraining objective (AstroPT's per-patch tokens, band statistics as
inputs, as targets, survey-wide token units, both) is pretrained with the quickstart
recipe (``configs/quickstart.toml``, 1500 steps), its validation galaxies are embedded
(``middle+final``, plain and "hybrid": with the galaxy's aperture photometry appended)
and every embedding is probed in one pass with the probe suite's protocol against the
four baselines (pixels, pixels-normalised, morphometrics, and a randomly initialised
model of the same variant and embedding option) and against AstroPT's objective.

    python bench/photometry.py run --survey runs/quickstart/survey --out runs/photometry \
        --seeds 0 --jobs 5 --device auto
    python bench/photometry.py report runs/photometry --publish

``report --publish`` writes ``docs/results/photometry-ablation.json`` and regenerates the
table of ``docs/photometry.md`` from it. Choices made here use the validation split only;
the test split is left for the published quickstart table.
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

#: The quickstart recipe this ablation was run with (4 blocks, 1500 steps), pinned so that
#: it reproduces after the quickstart's own size changed (bench/photometry_scale.py).
RECIPE = ["model.n_layer=4", "max_iters=1500"]
#: name -> training overrides (on top of configs/quickstart.toml and RECIPE)
VARIANTS: dict[str, list[str]] = {
    "astropt": [],
    "flux-inputs": ["model.flux_tokens=true"],
    "flux-targets": ["model.flux_tokens=true", "model.flux_targets=true"],
    "survey": ["model.token_scale=survey"],
    "survey-targets": ["model.token_scale=survey", "model.flux_targets=true"],
    "survey-targets-w3": [
        "model.token_scale=survey",
        "model.flux_targets=true",
        "model.flux_loss_weight=3",
    ],
}
#: embedding options: suffix -> (layer, hybrid); layer None is the config's (middle+final)
EMBEDDINGS: dict[str, tuple[str | None, bool]] = {
    "": (None, False),
    "+hybrid": (None, True),
    "@final": ("final", False),
    "@all+hybrid": ("0+1+2+3+final", True),  # every block's output (the quickstart's 4 layers)
}
PHYSICAL = PHYSICAL_FAMILIES
RESULT = Path("docs/results/photometry-ablation.json")
PAGE = Path("docs/photometry.md")
BLOCK_START, BLOCK_END = "<!-- photometry-table -->", "<!-- /photometry-table -->"
COST_RESULT = Path("docs/results/photometry-cost.json")
COST_START, COST_END = "<!-- photometry-cost -->", "<!-- /photometry-cost -->"


def _train_one(name: str, seed: int, args) -> dict:
    out = Path(args.out) / "runs" / f"{name}-s{seed}"
    marker = out / "done.json"
    if marker.is_file():  # trained by an earlier call
        return json.loads(marker.read_text())
    cmd = [
        sys.executable, str(ROOT / "train.py"), str(ROOT / "configs/quickstart.toml"),
        f"out_dir={out}", f"data.path={args.survey}", f"seed={seed}", f"device={args.device}",
        "progress=false", "preview=false", "overwrite=true", *RECIPE, *VARIANTS[name], *args.override,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    log = out.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        subprocess.run(cmd, check=True, stdout=handle, stderr=subprocess.STDOUT, env=env)
    result = {"variant": name, "seed": seed, "seconds": round(time.perf_counter() - start, 1)}
    (out / "done.json").write_text(json.dumps(result))
    return result


def _embed_one(name: str, seed: int, args) -> list[str]:
    import torch

    from astropt.data import DataConfig
    from astropt.embed import export_embeddings, random_init_like
    from astropt.hub import load_model

    torch.set_num_threads(args.threads)
    model = load_model(Path(args.out) / "runs" / f"{name}-s{seed}")
    data_cfg = DataConfig(source="synthetic", path=str(args.survey), image_size=64)
    emb = Path(args.out) / "emb"
    written = []
    for suffix in args.embeddings:
        layer, hybrid = EMBEDDINGS[suffix]
        common = {"layer": layer, "hybrid": hybrid, "progress": False, "overwrite": True,
                  "device": args.device}  # fmt: skip
        path = emb / f"s{seed}" / f"{name}{suffix}.parquet"
        export_embeddings(model, data_cfg, path, SPLIT, **common)
        written.append(str(path))
        if seed == args.seeds[0]:  # the random-init baseline of this variant (seed-free)
            path = emb / f"random-init:{name}{suffix}.parquet"
            export_embeddings(random_init_like(model, 0), data_cfg, path, SPLIT,
                              kind="random-init", **common)  # fmt: skip
            written.append(str(path))
    return written


def _image_baselines(args) -> None:
    from astropt.data import DataConfig
    from astropt.embed import export_image_features

    data_cfg = DataConfig(source="synthetic", path=str(args.survey), image_size=64)
    for kind in ("pixels", "morphometrics"):
        export_image_features(kind, data_cfg, Path(args.out) / "emb" / f"{kind}.parquet", SPLIT,
                              overwrite=True, progress=False)  # fmt: skip


def _probe_variant(name: str, seed: int, args) -> Path:
    """One probe pass: the variant's embeddings (the models), AstroPT's objective's, the image
    baselines and the variant's random-init sets, on shared folds and resamples."""
    from astropt.probe import PixelSource, run_probes

    emb = Path(args.out) / "emb"
    sets: dict[str, object] = {}
    for suffix in args.embeddings:
        sets[f"{name}{suffix}"] = emb / f"s{seed}" / f"{name}{suffix}.parquet"
    models = len(sets)
    if name != "astropt":
        for suffix in args.embeddings:
            sets[f"astropt{suffix}"] = emb / f"s{seed}" / f"astropt{suffix}.parquet"
    sets["pixels"] = PixelSource(emb / "pixels.parquet")
    sets["pixels-normalised"] = PixelSource(emb / "pixels.parquet", normalise=True)
    sets["morphometrics"] = emb / "morphometrics.parquet"
    for suffix in args.embeddings:
        sets[f"random-init:{name}{suffix}"] = emb / f"random-init:{name}{suffix}.parquet"
    run = run_probes(sets, seed=0, label_sizes=(), models=models, threads=1)
    out = Path(args.out) / "probe" / f"{name}-s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    run.scores.to_csv(out / "scores.csv", index=False)
    run.comparisons.to_csv(out / "comparisons.csv", index=False)
    (out / "info.json").write_text(json.dumps(run.info, indent=1, default=str))
    return out


def run(args) -> None:
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.variants = args.variants.split(",") if args.variants else list(VARIANTS)
    args.embeddings = args.embeddings.split(",") if args.embeddings else list(EMBEDDINGS)
    args.embeddings = ["" if e == "plain" else e for e in args.embeddings]
    jobs = [(name, seed) for seed in args.seeds for name in args.variants]
    timings = {}
    if "train" in args.steps:
        with ThreadPoolExecutor(args.jobs) as pool:
            for result in pool.map(lambda job: _train_one(*job, args), jobs):
                timings[f"{result['variant']}-s{result['seed']}"] = result["seconds"]
                print("trained", result, flush=True)
    names, seeds = zip(*jobs, strict=True)
    # spawned workers: CUDA cannot be used in a forked child of a process that touched it
    spawn = multiprocessing.get_context("spawn")
    if "embed" in args.steps:
        _image_baselines(args)
        with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
            for written in pool.map(_embed_one, names, seeds, [args] * len(jobs)):
                print("embedded", written, flush=True)
    if "probe" in args.steps:
        with ProcessPoolExecutor(args.probe_jobs, mp_context=spawn) as pool:
            for out in pool.map(_probe_variant, names, seeds, [args] * len(jobs)):
                print("probed", out, flush=True)
    (Path(args.out) / "train_seconds.json").write_text(json.dumps(timings, indent=1))


# ------------------------------------------------------------------------------- report
def summarise(outs: list[Path], legacy: tuple[Path, ...] = ()) -> tuple[dict, list[Path]]:
    """Every (run folder, variant, embedding, seed): each family's score and comparisons.

    ``legacy``: run folders made when "hybrid" appended the central-patch band statistics
    only; their ``+hybrid`` sets are reported as ``+patch-stats``. Returns the result and
    the files it summarises.
    """

    result: dict = {"split": SPLIT, "variants": VARIANTS, "rows": []}
    files: list[Path] = []
    for out in outs:
        result["rows"] += _summarise_one(out, out in legacy, files)
    return result, files


def _summarise_one(out: Path, legacy: bool, files: list[Path]) -> list[dict]:
    import pandas as pd

    rows = []
    for probe_dir in sorted(out.glob("probe/*-s*")):
        seed = int(probe_dir.name.rsplit("-s", 1)[1])
        files += [probe_dir / name for name in ("comparisons.csv", "scores.csv", "info.json")]
        compare = pd.read_csv(probe_dir / "comparisons.csv")
        scores = pd.read_csv(probe_dir / "scores.csv")
        compare = compare[compare.level == "family"]
        scores = scores[scores.level == "family"]
        info = json.loads((probe_dir / "info.json").read_text())
        for model in compare.model.unique():
            own = compare[compare.model == model]
            label = model.replace("+hybrid", "+patch-stats") if legacy else model
            row = {"set": label, "seed": seed, "run": out.name,
                   "interval": info.get("interval"), "families": []}  # fmt: skip
            for family, group in own.groupby("name", sort=False):
                score = scores[(scores.name == family) & (scores.embedding == model)].iloc[0]
                vs = {}
                for r in group.itertuples():
                    baseline = r.baseline
                    if baseline.startswith("random-init:"):
                        if baseline != f"random-init:{model}":
                            continue
                        baseline = "random-init"
                    elif baseline not in ("pixels", "pixels-normalised", "morphometrics"):
                        # other models: AstroPT's objective with the same embedding option,
                        # and this variant's other embedding options
                        suffix = model[len(model.split("+")[0].split("@")[0]) :]
                        if baseline != f"astropt{suffix}" and not baseline.startswith(
                            model.split("+")[0].split("@")[0]
                        ):
                            continue
                        baseline = "vs " + baseline
                    vs[baseline] = {
                        "improvement": [
                            round(r.improvement, 4),
                            round(r.ci_low, 4),
                            round(r.ci_high, 4),
                        ],
                        "outcome": r.outcome,
                    }
                row["families"].append(
                    {"name": family, "metric": score.metric,
                     "score": [round(score.value, 4), round(score.ci_low, 4), round(score.ci_high, 4)],
                     "vs": vs}
                )  # fmt: skip
            rows.append(row)
    return rows


def _bar(row: dict) -> dict:
    """The issue's bar for one row: physical wins/losses vs morphometrics, morphology keeps."""
    fam = {f["name"]: f for f in row["families"]}
    morph = [fam[n]["vs"].get("morphometrics", {}).get("outcome") for n in PHYSICAL if n in fam]
    return {"physical_wins": morph.count("win"), "physical_losses": morph.count("loss")}


def render(result: dict) -> str:
    """Markdown: one summary table of all rows, then one family table per row."""
    intervals = {row["run"]: row["interval"] for row in result["rows"]}
    lines = [
        f"Split: `{result['split']}` (development). Cells: model minus baseline [95% "
        "interval], **win** / *loss* / tie. Intervals by run: "
        + "; ".join(f"`{run}`: {interval}" for run, interval in intervals.items())
        + ".",
        "",
        "| run | set | seed | physical families won vs morphometrics | lost | "
        "tally vs pixels | vs pixels-normalised | vs random-init | vs morphometrics |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        bar = _bar(row)
        tallies = []
        for baseline in ("pixels", "pixels-normalised", "random-init", "morphometrics"):
            got = [f["vs"].get(baseline, {}).get("outcome") for f in row["families"]]
            tallies.append(f"{got.count('win')}/{got.count('tie')}/{got.count('loss')}")
        lines.append(
            f"| {row['run']} | {row['set']} | {row['seed']} | "
            f"{bar['physical_wins']} of {len(PHYSICAL)} | "
            f"{bar['physical_losses']} | " + " | ".join(tallies) + " |"
        )
    lines += ["", "Tallies are wins/ties/losses over all families.", ""]
    for row in result["rows"]:
        lines += [f"#### {row['set']} (seed {row['seed']}, run `{row['run']}`)", ""]
        baselines = ["pixels", "pixels-normalised", "random-init", "morphometrics"]
        extra = sorted({k for f in row["families"] for k in f["vs"] if k.startswith("vs ")})
        heads = baselines + extra
        lines.append("| family | metric | score | " + " | ".join(heads) + " |")
        lines.append("|---|---|---|" + "---|" * len(heads))
        for f in row["families"]:
            cells = []
            for b in heads:
                v = f["vs"].get(b)
                if not v:
                    cells.append("")
                    continue
                mark = {"win": "**win**", "loss": "*loss*"}.get(v["outcome"], "tie")
                cells.append("{:+.3f} [{:+.3f}, {:+.3f}] ".format(*v["improvement"]) + mark)
            lines.append(
                f"| {f['name']} | {f['metric']} | {f['score'][0]:.3f} | " + " | ".join(cells) + " |"
            )
        lines.append("")
    return "\n".join(lines)


def report(args) -> None:
    from astropt.results import stamp, write_result

    outs = [Path(o) for o in args.out]
    result, files = summarise(outs, tuple(Path(o) for o in args.legacy_hybrid))
    text = render(result)
    print(text)
    if args.publish:
        stamp(result, args.command_line, files, root=Path(os.path.commonpath(outs)).parent)
        write_result(ROOT / RESULT, result)
        update_page(ROOT / PAGE, result)


def update_page(page: Path, result: dict) -> None:
    """Replace the generated block of ``docs/photometry.md`` with :func:`render` of ``result``."""
    replace_block(page, BLOCK_START, BLOCK_END, render(result))


def replace_block(page: Path, start_marker: str, end_marker: str, body: str) -> None:
    text = page.read_text()
    start, end = text.index(start_marker) + len(start_marker), text.index(end_marker)
    page.write_text(text[:start] + "\n" + body + "\n" + text[end:])


def cost(args) -> None:
    """CPU seconds per optimiser step of each variant at the quickstart's shape (batch 32 of
    64x64 stamps, one thread), timed in alternating rounds; prints ms/step and the ratio."""
    import torch

    from astropt.config import load_config
    from astropt.model import GPT
    from astropt.tokens import images_to_tokens

    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = torch.rand(32, 3, 64, 64) * 0.3
    tokens, mean, std = images_to_tokens(images)
    setups = {}
    for name, overrides in VARIANTS.items():
        cfg = load_config(ROOT / "configs/quickstart.toml", overrides)
        model = GPT(cfg.model).train()
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
        setups[name] = (model, optimiser)
    times: dict[str, list[float]] = {name: [] for name in setups}

    def step(model, optimiser):
        inputs, stats = model.prepare(tokens, mean, std)
        _, loss = model.compute_loss(inputs, stats=stats)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    for model, optimiser in setups.values():  # warm-up
        step(model, optimiser)
    for _ in range(args.rounds):
        for name, (model, optimiser) in setups.items():
            start = time.process_time()
            for _ in range(args.steps):
                step(model, optimiser)
            times[name].append((time.process_time() - start) / args.steps)
    result = {
        "format": "astropt-photometry-cost/1",
        "setup": f"batch 32 x 16 tokens (64x64 stamps), 1 thread, {args.rounds} rounds of "
        f"{args.steps} steps, CPU seconds of the process",
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "ms_per_step": {name: round(1000 * sorted(v)[len(v) // 2], 2) for name, v in times.items()},
    }
    text = render_cost(result)
    print(text)
    if args.publish:
        from astropt.results import stamp, write_result

        stamp(result, args.command_line, [])
        write_result(ROOT / COST_RESULT, result)
        replace_block(ROOT / PAGE, COST_START, COST_END, text)


def render_cost(result: dict) -> str:
    """The cost block: each variant's CPU milliseconds per step and the ratio to AstroPT's."""
    base = result["ms_per_step"]["astropt"]
    lines = [
        f"{result['setup']}; torch {result['torch']}, {result['cpu_capability']}.",
        "",
        "| variant | CPU ms per step | vs astropt |",
        "|---|---|---|",
    ]
    for name, ms in result["ms_per_step"].items():
        lines.append(f"| {name} | {ms:.1f} | {ms / base:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="pretrain, embed and probe every variant")
    r.add_argument("--survey", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--seeds", default="0")
    r.add_argument(
        "--embeddings", default="", help="comma-separated subset of the embedding options"
    )
    r.add_argument("--variants", default="", help="comma-separated subset of the variants")
    r.add_argument("--jobs", type=int, default=1, help="training runs at once")
    r.add_argument("--probe-jobs", type=int, default=1, help="probe passes at once")
    r.add_argument("--threads", type=int, default=1, help="torch threads per process")
    r.add_argument("--device", default="auto")
    r.add_argument("--steps", default="train,embed,probe")
    r.add_argument("override", nargs="*", help="training key=value for every variant")
    c = sub.add_parser("cost", help="CPU time per optimiser step of each variant")
    c.add_argument("--rounds", type=int, default=5)
    c.add_argument("--steps", type=int, default=10)
    c.add_argument("--publish", action="store_true")
    p = sub.add_parser("report", help="summarise a run folder (and publish it)")
    p.add_argument("out", nargs="+", help="run folders")
    p.add_argument("--publish", action="store_true")
    p.add_argument(
        "--legacy-hybrid", nargs="*", default=[],
        help="run folders whose +hybrid sets are the central-patch statistics only",
    )  # fmt: skip
    from astropt.options import parse_or_print_config

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_or_print_config(parser, argv)
    if args is None:  # --print-config: parsed and printed
        return 0
    args.command_line = "python bench/photometry.py " + " ".join(argv or sys.argv[1:])
    {"run": run, "cost": cost, "report": report}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
