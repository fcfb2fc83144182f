"""Scaling study: the power-law fitter, the frontier, ladders, the resumable runner."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from astropt import scaling
from astropt.model import GPT
from astropt.scaling import (
    fit_power_law,
    load_ladder,
    pareto_frontier,
    plan_runs,
    read_results,
    run_study,
    saturating_power_law,
)

# ---------------------------------------------------------------- fitter


@pytest.mark.slow
@pytest.mark.parametrize(
    "l_inf, a, alpha, x_lo, x_hi, noise, seed",
    [
        (1.20, 1000.0, 0.30, 1e10, 1e15, 0.004, 0),  # compute-like x
        (0.35, 10.0, 0.55, 1e2, 1e5, 0.002, 1),  # data-size-like x
        (0.80, 5.0, 0.12, 1e4, 1e9, 0.003, 2),  # shallow: hard to separate from L_inf
    ],
)
@pytest.mark.parametrize("bootstrap", ["residual", "cases"])
def test_fit_recovers_known_law_within_intervals(
    l_inf, a, alpha, x_lo, x_hi, noise, seed, bootstrap
):
    rng = np.random.default_rng(seed)
    x = np.logspace(math.log10(x_lo), math.log10(x_hi), 20)
    y = saturating_power_law(x, l_inf, a, alpha) + rng.normal(0.0, noise, x.size)
    fit = fit_power_law(x, y, n_boot=300, seed=seed, bootstrap=bootstrap)

    assert fit.alpha_ci[0] <= alpha <= fit.alpha_ci[1]
    assert fit.l_inf_ci[0] <= l_inf <= fit.l_inf_ci[1]
    # The intervals must be informative, not (0, alpha_max): a fitter that
    # returned huge intervals would otherwise pass.
    assert fit.alpha_ci[1] - fit.alpha_ci[0] < 0.5 * alpha
    assert fit.l_inf_ci[1] - fit.l_inf_ci[0] < 0.2 * l_inf + 0.05
    assert abs(fit.alpha - alpha) < 0.25 * alpha
    assert abs(fit.l_inf - l_inf) < 0.1 * l_inf + 0.02
    # `a` is reported in the caller's units: the law rebuilt from (l_inf, a, alpha)
    # must be the fitted curve.
    np.testing.assert_allclose(
        saturating_power_law(x, fit.l_inf, fit.a, fit.alpha), fit.predict(x), rtol=1e-9
    )
    assert fit.rmse < 2 * noise


@pytest.mark.slow
def test_fit_intervals_cover_the_truth_at_about_their_nominal_rate():
    # Over many independent noisy data sets a 90% interval must contain the
    # truth most of the time: too-narrow intervals (say, a bootstrap that
    # forgot the noise) would cover rarely, and this would fail.
    hits_alpha = hits_l_inf = 0
    trials = 24
    x = np.logspace(2, 6, 10)
    for seed in range(trials):
        rng = np.random.default_rng(100 + seed)
        y = saturating_power_law(x, 0.6, 4.0, 0.35) + rng.normal(0.0, 0.01, x.size)
        fit = fit_power_law(x, y, n_boot=150, ci=0.9, seed=seed)
        hits_alpha += fit.alpha_ci[0] <= 0.35 <= fit.alpha_ci[1]
        hits_l_inf += fit.l_inf_ci[0] <= 0.6 <= fit.l_inf_ci[1]
    # Binomial(24, 0.9): P(<= 17) is about 1.5%; a coverage of 50% would give ~12.
    assert hits_alpha >= 18 and hits_l_inf >= 18


def test_fit_reaches_the_least_squares_optimum():
    # The least-squares optimum is at least as good as the true parameters and
    # better than any nearby perturbation of the fit.
    rng = np.random.default_rng(5)
    x = np.logspace(11, 14, 12)
    y = saturating_power_law(x, 2.0, 300.0, 0.25) + rng.normal(0, 0.01, x.size)
    fit = fit_power_law(x, y, n_boot=0)

    def sse(l_inf, a, alpha):
        return float(np.sum((saturating_power_law(x, l_inf, a, alpha) - y) ** 2))

    best = sse(fit.l_inf, fit.a, fit.alpha)
    assert best <= sse(2.0, 300.0, 0.25) + 1e-12
    for d_alpha in (-0.01, 0.01):
        for d_l in (-0.005, 0.005):
            # Re-solve a at the perturbed (l_inf, alpha) so only those two move.
            z = x ** -(fit.alpha + d_alpha)
            a_best = float(np.dot(z, y - fit.l_inf - d_l) / np.dot(z, z))
            assert best <= sse(fit.l_inf + d_l, a_best, fit.alpha + d_alpha) + 1e-12
    assert math.isnan(fit.alpha_ci[0])  # n_boot=0: no interval


def test_fit_three_exact_points_is_exact_and_has_no_interval():
    x = np.array([1e3, 1e4, 1e5])
    y = saturating_power_law(x, 0.5, 10.0, 0.4)
    fit = fit_power_law(x, y, n_boot=100)
    assert fit.alpha == pytest.approx(0.4, rel=1e-4)
    assert fit.l_inf == pytest.approx(0.5, rel=1e-4)
    assert fit.a == pytest.approx(10.0, rel=1e-3)
    assert fit.n_boot == 0 and math.isnan(fit.alpha_ci[0])


def test_fit_rejects_too_few_points():
    with pytest.raises(ValueError, match="3 distinct"):
        fit_power_law([1.0, 2.0, 2.0], [3.0, 2.0, 2.0])


def test_pareto_frontier_keeps_lowest_loss_at_each_compute():
    compute = [1, 2, 2, 3, 4, 5, 6]
    loss = [5.0, 4.0, 3.5, 3.8, 3.0, 3.2, 2.9]
    # 1: first; 2 -> the 3.5 one (index 2), not 4.0; 3 (3.8) is worse than 3.5;
    # 4 (3.0) improves; 5 (3.2) does not; 6 (2.9) does.
    assert pareto_frontier(compute, loss).tolist() == [0, 2, 4, 6]
    assert pareto_frontier([3, 1, 2], [1.0, 3.0, 2.0]).tolist() == [1, 2, 0]
    assert pareto_frontier([1, 2], [float("nan"), 1.0]).tolist() == [1]


def test_compute_points_drop_warmup_evaluations_and_the_duplicate_final_one():
    row = {
        "rung": "r",
        "sweep": "compute",
        "compute": 100.0,
        "final_val_loss": 1.0,
        "curve": [[10.0, 5.0], [50.0, 2.0], [100.0, 1.0]],
    }
    data_row = {**row, "sweep": "data", "final_val_loss": 0.5}
    pts = scaling.compute_points([row, data_row], curve_from=0.25)
    assert sorted((p["compute"], p["loss"]) for p in pts) == [(50.0, 2.0), (100.0, 1.0)]
    assert len(scaling.compute_points([row], use_curves=False)) == 1
    assert len(scaling.compute_points([row], curve_from=0.0)) == 3


def test_data_points_pick_one_sweep_and_add_its_full_split_run():
    def row(rung, budget, size, loss, sweep="data"):
        return {
            "rung": rung,
            "budget_flops": budget,
            "sweep": sweep,
            "data_size": size,
            "train_galaxies": size if size else 1000,
            "final_val_loss": loss,
        }

    rows = [row("a", 1e9, d, 1.0) for d in (10, 20)]
    rows += [row("b", 3e9, d, 2.0) for d in (10, 20)]
    rows += [row("b", 3e9, None, 1.5, "compute"), row("a", 3e9, None, 9.0, "compute")]
    pts, rung, budget = scaling.data_points(rows)
    # Equal numbers of runs: the larger budget wins; its full-split run joins it.
    assert (rung, budget) == ("b", 3e9)
    assert [(p["galaxies"], p["loss"]) for p in pts] == [(10, 2.0), (20, 2.0), (1000, 1.5)]
    pts, rung, budget = scaling.data_points(rows, rung="a")
    assert (rung, budget) == ("a", 1e9) and len(pts) == 2


def test_params_law_compares_shapes_at_a_shared_budget_and_refuses_a_rising_loss():
    def row(rung, n, budget, loss):
        return {"rung": rung, "n_params": n, "budget_flops": budget, "compute": budget,
                "sweep": "compute", "final_val_loss": loss}  # fmt: skip

    falling = [row(r, n, c, saturating_power_law(n, 0.5, 30.0, 0.4) + 1e9 / c)
               for r, n in (("a", 1e4), ("b", 1e5), ("c", 1e6), ("d", 1e7))
               for c in (1e10, 1e11)]  # fmt: skip
    # A bigger budget for the smallest shape only must not enter the comparison.
    falling.append(row("a", 1e4, 1e13, 0.1))
    fit = scaling.fit_study(falling, n_boot=50)["params"]
    assert fit["budget_flops"] == 1e11 and fit["note"] is None
    assert fit["fit"]["alpha"] == pytest.approx(0.4, rel=1e-3)

    rising = [row(r, n, 1e10, 0.3 + 0.01 * i) for i, (r, n) in enumerate((("a", 1e4), ("b", 1e5), ("c", 1e6)))]  # fmt: skip
    fit = scaling.fit_study(rising, n_boot=0)["params"]
    assert fit["fit"] is None and "rises with N" in fit["note"]


# ---------------------------------------------------------------- ladders


def _write_ladder(tmp_path: Path, text: str, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


LADDER = """
overrides = ["data.image_size=64", "batch_size=4", "grad_accum=2"]
budgets = [2e9, 1e9]
data_sizes = [64, 32]
evals_per_run = 4

[[rungs]]
name = "small"
overrides = ["model.n_layer=1", "model.n_embd=16", "model.n_head=2"]

[[rungs]]
name = "big"
overrides = ["model.n_layer=2", "model.n_embd=32", "model.n_head=2"]
"""


def test_load_ladder_resolves_paths_and_rejects_unknown_keys(tmp_path):
    path = _write_ladder(tmp_path, LADDER)
    ladder = load_ladder(tmp_path / "tiny")  # ".toml" may be left out
    assert ladder.path == path and ladder.name == "tiny"
    assert ladder.base is None
    assert [r.name for r in ladder.rungs] == ["small", "big"]

    with pytest.raises(ValueError, match="did you mean 'budgets'"):
        load_ladder(_write_ladder(tmp_path, LADDER.replace("budgets", "budget"), "bad.toml"))
    bad_rung = LADDER.replace('name = "big"\noverrides', 'name = "big"\noverride')
    with pytest.raises(ValueError, match="did you mean 'overrides'"):
        load_ladder(_write_ladder(tmp_path, bad_rung, "bad2.toml"))
    with pytest.raises(KeyError, match="did you mean 'small'"):
        load_ladder(_write_ladder(tmp_path, 'data_rung = "smal"\n' + LADDER, "bad3.toml"))


def test_rung_config_file_is_relative_to_the_ladder_and_overrides_apply_in_order(tmp_path):
    # A rung may point at its own run config (the AstroPT ladder reuses
    # configs/astropt-*.toml); ladder overrides come after the file, rung
    # overrides after those.
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "r.toml").write_text(
        "batch_size = 3\n[model]\nn_layer = 3\nn_embd = 48\nn_head = 3\n"
    )
    ladder_dir = tmp_path / "ladders"
    ladder_dir.mkdir()
    path = _write_ladder(
        ladder_dir,
        'overrides = ["data.image_size=32", "model.n_head=4"]\nbudgets = [1e9]\n'
        '[[rungs]]\nname = "r"\nconfig = "../shapes/r.toml"\noverrides = ["model.n_head=6"]\n',
    )
    ladder = load_ladder(path)
    (spec,) = plan_runs(ladder)
    cfg, geom, max_iters = scaling.build_run(spec, ladder, tmp_path / "out")
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head) == (3, 48, 6)
    assert cfg.batch_size == 3 and cfg.data.image_size == 32
    assert geom.seq_len == (32 // 16) ** 2 - 1
    assert geom.tokens_per_step == 3 * geom.seq_len
    assert cfg.max_iters == max_iters == round(1e9 / geom.flops_per_step)


def test_plan_covers_every_rung_and_budget_then_the_data_sweep(tmp_path):
    ladder = load_ladder(_write_ladder(tmp_path, LADDER))
    specs = plan_runs(ladder)
    compute = [(s.rung.name, s.budget) for s in specs if s.sweep == "compute"]
    assert compute == [("small", 1e9), ("big", 1e9), ("small", 2e9), ("big", 2e9)]
    data = [(s.rung.name, s.budget, s.data_size) for s in specs if s.sweep == "data"]
    # Default data rung: the middle of the ladder (index len // 2); budget: the largest.
    assert data == [("big", 2e9, 32), ("big", 2e9, 64)]
    assert len({s.run_id for s in specs}) == len(specs)
    assert scaling.format_flops(3e11) == "3e11" and scaling.format_flops(2.5e12) == "2.5e12"


# ---------------------------------------------------------------- runner (stub training)


class _StubTrain:
    """Records configs and writes a metrics.jsonl the way a run folder has one."""

    def __init__(self):
        self.calls = []

    def __call__(self, cfg):
        self.calls.append(cfg)
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        # Loss falls with steps and width, like a real run.
        losses = {
            s: 1.0 + 1.0 / (1 + s) + 1.0 / cfg.model.n_embd
            for s in range(cfg.eval_interval, cfg.max_iters + 1, cfg.eval_interval)
        }
        with open(out / "metrics.jsonl", "w") as fh:
            for s, loss in losses.items():
                fh.write(json.dumps({"step": s, "val_loss": loss}) + "\n")
        final = losses[max(losses)] if losses else 2.0
        return {"final_val_loss": final, "best_val_loss": final}


def test_runner_converts_budgets_and_skips_finished_runs(tmp_path):
    ladder = load_ladder(_write_ladder(tmp_path, LADDER))
    out = tmp_path / "study"
    train = _StubTrain()
    rows = run_study(ladder, out, train_fn=train)
    assert len(train.calls) == 6 and len(rows) == 6
    results = read_results(out / "results.jsonl")
    assert [r["run_id"] for r in results] == [r["run_id"] for r in rows]

    for cfg, row in zip(train.calls, results, strict=True):
        # FLOPs per step from a real (not meta) model: independent of the runner's count.
        model = GPT(cfg.model)
        seq = (64 // 16) ** 2 - 1  # 64x64 stamps, 16 tokens, inputs drop the last
        per_step = model.flops_per_token(seq) * cfg.batch_size * cfg.grad_accum * seq
        assert row["n_params"] == model.num_params(exclude_positions=True)
        assert cfg.max_iters == max(1, round(row["budget_flops"] / per_step))
        assert abs(cfg.max_iters * per_step - row["budget_flops"]) <= per_step / 2 + 1e-6
        assert cfg.out_dir == str(out / row["run_id"])
        assert cfg.train_samples == row["data_size"]
        assert cfg.resume  # an interrupted run folder is continued, not refused
        assert cfg.optim.warmup_iters == round(0.05 * cfg.max_iters)  # ladder default warmup_frac
        assert cfg.eval_interval == max(1, cfg.max_iters // 4)  # evals_per_run = 4
        assert cfg.optim.decay_iters is None  # the cosine ends with each run
        assert row["final_val_loss"] is not None
        assert len(row["curve"]) >= 1 and row["curve"][-1][0] <= row["compute"] * (1 + 1e-9)
    # Bigger budgets, more steps; the data sweep trains the same shape.
    by_id = {r["run_id"]: r for r in results}
    assert by_id["small_C2e9_Dall_s0"]["max_iters"] > by_id["small_C1e9_Dall_s0"]["max_iters"]

    # Second call: everything is in the results file, nothing is trained again.
    again = _StubTrain()
    assert run_study(ladder, out, train_fn=again) == []
    assert again.calls == []

    # Drop one row and leave a half-written line, as a crash mid-append would.
    lines = (out / "results.jsonl").read_text().splitlines()
    dropped = json.loads(lines[2])["run_id"]
    (out / "results.jsonl").write_text("\n".join(lines[:2] + lines[3:]) + "\n" + lines[2][:40])
    third = _StubTrain()
    rows = run_study(ladder, out, train_fn=third)
    assert [r["run_id"] for r in rows] == [dropped] and len(third.calls) == 1
    assert sorted(r["run_id"] for r in read_results(out / "results.jsonl")) == sorted(by_id)


def test_step_bounds_prune_the_compute_grid_only(tmp_path):
    ladder = load_ladder(_write_ladder(tmp_path, LADDER))
    steps = {}
    for spec in plan_runs(ladder):
        steps[spec.run_id] = scaling.build_run(spec, ladder, tmp_path / "plan")[2]
    big_most = max(v for k, v in steps.items() if k.startswith("big_") and "_Dall_" in k)
    small_least = min(v for k, v in steps.items() if k.startswith("small_"))
    assert big_most < small_least  # the bigger shape takes fewer steps per budget
    bounded = load_ladder(
        _write_ladder(tmp_path, f"min_steps = {big_most + 1}\n" + LADDER, "bounded.toml")
    )
    train = _StubTrain()
    rows = run_study(bounded, tmp_path / "study", train_fn=train)
    # Every compute run of "big" has too few steps; its data sweep still runs.
    assert sorted(r["run_id"] for r in rows) == sorted(
        [k for k in steps if k.startswith("small_")] + [k for k in steps if "_Dall_" not in k]
    )
    assert all(r["sweep"] == "data" for r in rows if r["rung"] == "big")


def test_runner_under_torchrun_counts_all_ranks_and_only_rank0_writes(tmp_path, monkeypatch):
    ladder = load_ladder(_write_ladder(tmp_path, LADDER))

    def study(name, grad_accum):
        train = _StubTrain()  # no process group is started: training is stubbed
        rows = run_study(
            ladder,
            tmp_path / name,
            train_fn=train,
            overrides=[f"grad_accum={grad_accum}"],
        )
        assert len(train.calls) == 6
        return rows

    single = study("one", 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    # grad_accum counts micro-batches per step over all ranks (astropt.config):
    # 2 on two ranks is the same step as 2 on one.
    same = study("same", 2)
    assert not (tmp_path / "same" / "results.jsonl").exists()  # rank 1 writes nothing
    for one, two in zip(single, same, strict=True):
        assert two["tokens_per_step"] == one["tokens_per_step"]
        assert two["max_iters"] == one["max_iters"]
    double = study("double", 4)
    for one, two in zip(single, double, strict=True):
        # Twice the galaxies per step: half the steps for the same budget.
        assert two["tokens_per_step"] == 2 * one["tokens_per_step"]
        assert abs(two["max_iters"] - one["max_iters"] / 2) <= 1
    with pytest.raises(ValueError, match="multiple of the 2 processes"):
        study("odd", 3)
    monkeypatch.setenv("RANK", "0")
    study("rank0", 2)
    assert (tmp_path / "rank0" / "results.jsonl").exists()


# ---------------------------------------------------------------- fit of a study


def _synthetic_rows(l_inf=1.0, a=2e3, alpha=0.3):
    """Rows of a fake study whose frontier follows a known law.

    Each shape saturates at its own floor above the frontier, so the lowest
    loss at each compute is reached by different shapes.
    """
    rows = []
    shapes = {"s": 1e4, "m": 1e5, "l": 1e6}
    budgets = [1e10, 3e10, 1e11, 3e11, 1e12]
    for name, n in shapes.items():
        for c in budgets:
            frontier = saturating_power_law(c, l_inf, a, alpha)
            floor = saturating_power_law(n, l_inf, 20.0, 0.3)
            loss = max(frontier, floor) + 0.002 * (n / 1e4) ** 0.1
            rows.append(
                {
                    "run_id": f"{name}_{c}",
                    "rung": name,
                    "sweep": "compute",
                    "budget_flops": c,
                    "compute": c,
                    "n_params": n,
                    "final_val_loss": loss,
                    "train_galaxies": 1000 if (name, c) == ("m", 1e12) else None,
                    "curve": [],
                    "probe_score": 0.5 + 0.05 * math.log10(n),
                }
            )
    for r in rows:
        if r["train_galaxies"]:  # the full-split point of the data sweep follows the data law
            r["final_val_loss"] = saturating_power_law(1000, 1.0, 5.0, 0.5)
    for d in [100, 200, 400, 800]:
        rows.append(
            {
                "run_id": f"d{d}",
                "rung": "m",
                "sweep": "data",
                "budget_flops": 1e12,
                "compute": 1e12,
                "n_params": 1e5,
                "data_size": d,
                "train_galaxies": d,
                "final_val_loss": saturating_power_law(d, 1.0, 5.0, 0.5),
                "curve": [],
            }
        )
    return rows


@pytest.mark.slow
def test_fit_study_and_cli_write_fits_and_figures(tmp_path):
    rows = _synthetic_rows()
    fit = scaling.fit_study(rows, n_boot=100)
    frontier = fit["compute"]["frontier"]
    # Lowest loss at each budget over the three shapes.
    for p in frontier:
        same = [r["final_val_loss"] for r in rows if r["compute"] == p["compute"]]
        assert p["loss"] == min(same)
    data = fit["data"]
    assert data["rung"] == "m" and [p["galaxies"] for p in data["points"]] == [
        100,
        200,
        400,
        800,
        1000,
    ]
    assert fit["params"]["fit"] is not None
    assert len(fit["probe"]) == 15

    results = tmp_path / "results.jsonl"
    for r in rows:
        scaling.append_result(results, r)
    assert (
        scaling.main(["fit", str(results), "--out", str(tmp_path / "fig"), "--n-boot", "50"]) == 0
    )
    saved = json.loads((tmp_path / "fig" / "fit.json").read_text())
    assert saved["data"]["fit"]["alpha"] == pytest.approx(0.5, abs=0.05)
    for name in ("loss_vs_compute", "loss_vs_data", "loss_vs_params", "probe_vs_params"):
        png = tmp_path / "fig" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "L(compute)" in scaling.format_report(saved)


# ---------------------------------------------------------------- end to end (real training)

TINY = """
overrides = [
    "device=cpu", "dtype=float32", "data.source=synthetic", "data.image_size=64",
    "model.block_size=16", "model.tokeniser=affine", "batch_size=8", "eval_iters=1",
    "eval_batch_size=30", "log_interval=1000", "preview=false", "progress=false",
    "peak_flops=1e12",
]
budgets = [1e8, 4e8]
data_sizes = [16, 64]
data_rung = "w16"
evals_per_run = 2

[[rungs]]
name = "w16"
overrides = ["model.n_layer=1", "model.n_embd=16", "model.n_head=2"]

[[rungs]]
name = "w32"
overrides = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2"]
"""


@pytest.fixture(scope="module")
def tiny_survey(tmp_path_factory):
    """300 synthetic 64x64 galaxies (train 240, validation 30, test 30) on disk."""
    out = tmp_path_factory.mktemp("survey")
    script = Path(__file__).resolve().parents[1] / "data" / "make_synthetic_survey.py"
    subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--n", "300", "--image-size", "64",
         "--seed", "0", "--quiet", "--overwrite"],
        check=True,
    )  # fmt: skip
    return out


@pytest.mark.slow
def test_two_rung_ladder_trains_fits_and_resumes_end_to_end(tmp_path, tiny_survey):
    from astropt.train import train

    ladder = load_ladder(_write_ladder(tmp_path, TINY))
    calls = []

    def counted_train(cfg):
        calls.append(cfg.out_dir)
        return train(cfg)

    out = tmp_path / "study"
    rows = run_study(ladder, out, train_fn=counted_train, overrides=[f"data.path={tiny_survey}"])
    assert len(rows) == len(calls) == 6
    for row in rows:
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        # The training loop counts its own steps and FLOPs: they must be the
        # runner's plan (the budget turned into steps through flops_per_token).
        assert summary["steps"] == row["max_iters"]
        assert summary["flops"] == pytest.approx(row["compute"], rel=1e-9)
        assert (
            abs(row["compute"] - row["budget_flops"])
            <= row["flops_per_token"] * row["tokens_per_step"] / 2 + 1
        )
        assert math.isfinite(row["final_val_loss"])
        assert len(row["curve"]) >= 2 and row["curve"][-1][1] == row["final_val_loss"]
    # train_samples limits the training split of the data sweep.
    by_id = {r["run_id"]: r for r in rows}
    assert by_id["w16_C4e8_D16_s0"]["train_galaxies"] == 16
    assert by_id["w16_C4e8_Dall_s0"]["train_galaxies"] == 240  # the survey's train split

    calls.clear()
    assert run_study(ladder, out, train_fn=counted_train) == [] and calls == []

    # The probe hook: embed the test split with the run's model, probe the headline targets.
    cfg = scaling.build_run(
        plan_runs(ladder)[0], ladder, out, overrides=[f"data.path={tiny_survey}"]
    )[0]
    targets = ["redshift", "log_mstar", "is_edge_on"]
    scores = scaling.default_probe(Path(rows[0]["run_dir"]), cfg, targets=targets)
    assert sorted(scores) == sorted(targets)
    assert all(math.isfinite(v) for v in scores.values())

    # Probing afterwards: rows gain scores, computed from each run folder's config.json.
    seen = []

    def fake_probe(run_dir, cfg):
        seen.append((run_dir.name, cfg.train_samples))
        return {"a": 0.25, "b": 0.75}

    results = out / "results.jsonl"
    assert scaling.probe_results(results, sweep="data", probe_fn=fake_probe) == 2
    assert sorted(seen) == [("w16_C4e8_D16_s0", 16), ("w16_C4e8_D64_s0", 64)]
    probed = {r["run_id"]: r.get("probe_score") for r in read_results(results)}
    assert probed["w16_C4e8_D16_s0"] == 0.5 and probed["w16_C1e8_Dall_s0"] is None
    assert scaling.probe_results(results, sweep="data", probe_fn=fake_probe) == 0

    fig = tmp_path / "fig"
    assert (
        scaling.main(["fit", str(out / "results.jsonl"), "--out", str(fig), "--n-boot", "20"]) == 0
    )
    saved = json.loads((fig / "fit.json").read_text())
    assert [p["galaxies"] for p in saved["data"]["points"]] == [16, 64, 240]
    assert (fig / "loss_vs_compute.png").is_file() and (fig / "loss_vs_data.png").is_file()


@pytest.mark.slow
def test_study_under_torchrun_trains_several_runs_in_one_job(tmp_path, tiny_survey):
    # Several runs in one torchrun job: the process group must survive from
    # one training to the next, rank 0 alone writes, and a second job skips all.
    ladder = _write_ladder(tmp_path, TINY)
    out = tmp_path / "study"
    root = Path(__file__).resolve().parents[1]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "astropt.scaling", "run", "--ladder", str(ladder), "--out", str(out),
        "--budgets", "1e8", "--data-sizes", "", "--threads", "1",
        f"data.path={tiny_survey}", "grad_accum=2",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    for _ in range(2):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        rows = read_results(out / "results.jsonl")
        assert sorted(r["run_id"] for r in rows) == ["w16_C1e8_Dall_s0", "w32_C1e8_Dall_s0"]
    for row in rows:
        assert row["world_size"] == 2 and row["summary"]["world_size"] == 2
        assert row["summary"]["flops"] == pytest.approx(row["compute"], rel=1e-9)


def test_ladder_values_are_parsed_by_their_field_types(tmp_path):
    # The ladder is checked by the run configs' machinery: a value of the wrong
    # type is an error naming its key, integers may be written as floats, and a
    # rung's config path is resolved against the ladder file.
    with pytest.raises(ValueError, match="budgets"):
        load_ladder(
            _write_ladder(tmp_path, LADDER.replace("budgets = [", 'budgets = ["x", '), "a.toml")
        )
    with pytest.raises(ValueError, match="evals_per_run must be an integer"):
        load_ladder(
            _write_ladder(
                tmp_path, LADDER.replace("evals_per_run = 4", 'evals_per_run = "four"'), "b.toml"
            )
        )
    ladder = load_ladder(
        _write_ladder(
            tmp_path,
            LADDER.replace("evals_per_run = 4", "evals_per_run = 4.0")
            + '\n[[rungs]]\nname = "own"\nconfig = "shapes/own.toml"\n',
            "c.toml",
        )
    )
    assert ladder.evals_per_run == 4 and isinstance(ladder.evals_per_run, int)
    assert ladder.rung("own").config == (tmp_path / "shapes" / "own.toml").resolve()
