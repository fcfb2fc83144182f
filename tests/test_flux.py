"""Flux-aware pretraining: band statistics as targets, survey-wide token units, hybrid embeddings.

The planted pattern: every galaxy is one smooth profile scaled by its own brightness, so
per-patch normalisation leaves the same tokens for every galaxy and only the removed
statistics (or survey-wide units) tell the galaxies apart.
"""

from __future__ import annotations

import json

import pytest
import torch

from astropt.generate import complete
from astropt.model import GPT, GPTConfig
from astropt.tokens import (
    band_statistics,
    galaxy_statistics,
    images_to_tokens,
    survey_stretch,
    survey_unstretch,
)

SIDE, PATCH = 32, 8  # 16 patches of 8x8x3 = 192 values


def planted(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, 3, 32, 32)`` images of one profile times a per-galaxy brightness, and the brightness."""
    generator = torch.Generator().manual_seed(seed)
    brightness = 0.1 + 0.8 * torch.rand(n, generator=generator)
    y, x = torch.meshgrid(torch.arange(SIDE) - 15.5, torch.arange(SIDE) - 15.5, indexing="ij")
    profile = torch.exp(-(x**2 + y**2) / 60.0)  # a round galaxy at the centre
    colour = torch.tensor([0.6, 0.8, 1.0])[:, None, None]
    noise = 0.01 * torch.randn(n, 3, SIDE, SIDE, generator=generator)
    return brightness[:, None, None, None] * colour * profile + 0.05 + noise, brightness


def model_for(**overrides) -> GPT:
    values = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, patch_size=PATCH)
    values.update(overrides)
    torch.manual_seed(0)
    return GPT(GPTConfig(**values))


def train(model: GPT, images: torch.Tensor, steps: int) -> list[float]:
    """Adam on one fixed batch; the losses of every step."""
    tokens, mean, std = images_to_tokens(images, patch_size=PATCH)
    inputs, stats = model.prepare(tokens, mean, std)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in range(steps):
        _, loss = model.compute_loss(inputs, stats=stats)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses


def survey_units(images: torch.Tensor) -> dict:
    """Survey-wide stretch parameters that give these images' pixels zero mean, unit std."""
    stretched = torch.asinh(images)
    return dict(
        token_scale="survey",
        survey_offset=stretched.mean().item(),
        survey_scale=stretched.std().item(),
    )


def stat_loss(model: GPT, images: torch.Tensor) -> float:
    """The flux head's loss alone (next-patch band statistics), unweighted."""
    tokens, mean, std = images_to_tokens(images, patch_size=PATCH)
    inputs, stats = model.prepare(tokens, mean, std)
    with torch.no_grad():
        _, both = model(
            inputs[:, :-1], inputs[:, 1:], stats=stats[:, :-1], stat_targets=stats[:, 1:]
        )
        _, patches_only = model(inputs[:, :-1], inputs[:, 1:], stats=stats[:, :-1])
    return (both - patches_only).item() / model.config.flux_loss_weight


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["patch", "survey"])
def test_flux_targets_loss_falls_on_a_planted_flux_pattern(scale):
    images, _ = planted(16)
    extra = survey_units(images) if scale == "survey" else {"flux_tokens": True}
    model = model_for(flux_targets=True, **extra)
    before = stat_loss(model, images)
    losses = train(model, images, 80)
    after = stat_loss(model, images)
    assert after < 0.2 * before, (before, after)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.slow
def test_flux_head_predicts_the_brightness_that_per_patch_tokens_hide():
    images, brightness = planted(32)
    tokens, mean, std = images_to_tokens(images, patch_size=PATCH)
    model = model_for(flux_targets=True, flux_tokens=True)
    train(model, images, 150)
    model.eval()
    inputs, stats = model.prepare(tokens, mean, std)
    with torch.no_grad():
        _, predicted, _ = model(inputs[:, :-1], stats=stats[:, :-1], with_stats=True)
    # The predicted green-band mean of the second patch follows the planted brightness.
    green = predicted[:, 0, 1]
    assert torch.corrcoef(torch.stack([green, brightness]))[0, 1] > 0.95
    truth = band_statistics(tokens, mean, std, 3)[:, 1, 1]
    assert (green - truth).abs().mean() < 0.4 * truth.std()


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant", ["survey", "survey+targets", "flux_tokens+targets"], ids=lambda v: v
)
def test_completion_in_pixel_units_beats_the_blank(variant):
    images, _ = planted(32)
    if variant.startswith("survey"):
        model = model_for(flux_targets=variant.endswith("targets"), **survey_units(images))
    else:
        model = model_for(flux_targets=True, flux_tokens=True, **survey_units(images))
        model.config.token_scale = "patch"  # per-patch tokens; the survey units set the blank
    train(model, images, 200)
    model.eval()
    held_out, _ = planted(8, seed=1)
    tokens, mean, std = images_to_tokens(held_out, patch_size=PATCH)
    inputs, stats = model.prepare(tokens, mean, std)
    prefix = 4
    cfg = model.config
    if cfg.token_scale == "survey":
        completion = complete(model, inputs[:, :prefix], 16 - prefix)
        pixels = model.tokens_to_pixels(completion)
    else:
        completion, predicted = complete(
            model, inputs[:, :prefix], 16 - prefix, prefix_stats=stats[:, :prefix],
            return_stats=True,
        )  # fmt: skip
        pixels = model.tokens_to_pixels(completion, stats=predicted)
    truth = model.tokens_to_pixels(tokens, mean, std) if cfg.token_scale == "patch" else None
    truth = model.tokens_to_pixels(inputs) if truth is None else truth
    blank = survey_unstretch(torch.zeros(()), 1.0, cfg.survey_offset, cfg.survey_scale)
    hidden = slice(prefix, None)
    mse_model = (pixels[:, hidden] - truth[:, hidden]).pow(2).mean()
    mse_blank = (blank - truth[:, hidden]).pow(2).mean()
    assert mse_model < 0.5 * mse_blank, (mse_model, mse_blank)


# ------------------------------------------------------------------ AstroPT format kept
#: GPTConfig's fields before the flux options: a default model's config.json has exactly these.
ASTROPT_FORMAT_KEYS = {
    "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "tokeniser", "attn_type",
    "objective", "mask_ratio", "prefix_len", "flux_tokens", "patch_size", "n_chan", "order",
    "transpose_hw", "embed_layer",
}  # fmt: skip


def test_default_models_save_exactly_the_astropt_format(tmp_path):
    model = model_for()
    assert model.config.astropt_format
    assert set(model.config.to_dict()) == ASTROPT_FORMAT_KEYS
    assert not any("flux" in name for name in model.state_dict())
    model.save_pretrained(tmp_path / "plain")
    saved = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert set(saved) == ASTROPT_FORMAT_KEYS
    # AstroPT's tokens go in untouched: the very same tensor, no statistics.
    tokens, mean, std = images_to_tokens(planted(2)[0], patch_size=PATCH)
    inputs, stats = model.prepare(tokens, mean, std)
    assert inputs is tokens and stats is None


def test_flux_options_round_trip_and_add_only_the_flux_head(tmp_path):
    model = model_for(flux_targets=True, flux_loss_weight=0.5, token_scale="survey")
    assert set(model.state_dict()) - set(model_for().state_dict()) == {"flux_head.weight"}
    model.save_pretrained(tmp_path / "flux")
    loaded = GPT.from_pretrained(tmp_path / "flux")
    assert loaded.config == model.config and not loaded.config.astropt_format
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name])


def test_survey_stretch_inverts_and_keeps_brightness():
    images, _ = planted(4)
    tokens, mean, std = images_to_tokens(images, patch_size=PATCH)
    dim_tokens, *_ = images_to_tokens(images * 0.5, patch_size=PATCH)
    model = model_for(**survey_units(images))
    inputs, _ = model.prepare(tokens, mean, std)
    pixels = model.tokens_to_pixels(inputs)
    assert torch.allclose(pixels, tokens * (std + 1e-8) + mean, atol=1e-5)
    assert torch.allclose(survey_unstretch(survey_stretch(images)), images, atol=1e-5)
    # Per-patch tokens of a dimmer copy are the same; survey-wide ones are not.
    assert torch.allclose(tokens, dim_tokens, atol=1e-4)
    dim_inputs, _ = model.prepare(*images_to_tokens(images * 0.5, patch_size=PATCH))
    assert not torch.allclose(inputs, dim_inputs, atol=1e-2)


def test_galaxy_statistics_measure_central_apertures():
    images, brightness = planted(6)
    tokens, mean, std = images_to_tokens(images, patch_size=PATCH)
    stats = galaxy_statistics(tokens, mean, std, 3)
    assert stats.shape == (6, 2 * 3 * 3)
    # The central patch's green mean grows with the planted brightness.
    order = brightness.argsort()
    assert torch.all(stats[order, 1].diff() > 0)


# ------------------------------------------------------------------ published ablation
def _photometry_bench(name: str = "photometry"):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_photometry_page_blocks_are_what_their_result_files_render():
    from astropt.results import check_result

    bench = _photometry_bench()
    page = (bench.ROOT / bench.PAGE).read_text()
    for result_path, start, end, render in (
        (bench.RESULT, bench.BLOCK_START, bench.BLOCK_END, bench.render),
        (bench.COST_RESULT, bench.COST_START, bench.COST_END, bench.render_cost),
    ):
        data = json.loads((bench.ROOT / result_path).read_text())
        assert check_result(data) == [], result_path  # stamped, not edited by hand
        block = page[page.index(start) + len(start) : page.index(end)]
        assert block == "\n" + render(data) + "\n", f"{result_path} and docs/photometry.md differ"
    ablation = json.loads((bench.ROOT / bench.RESULT).read_text())
    assert ablation["split"] == "validation"  # choices are made on the development split


def test_quickstart_size_is_the_one_its_development_sweep_chose():
    """docs/photometry.md's scale table is its result file, made on the validation split,
    and the quickstart's survey size and steps are the setting its rule picks."""
    from astropt.config import load_config
    from astropt.quickstart import FULL
    from astropt.results import check_result

    bench = _photometry_bench("photometry_scale")
    data = json.loads((bench.ROOT / bench.RESULT).read_text())
    assert check_result(data) == []
    assert data["split"] == "validation"
    page = (bench.ROOT / bench.PAGE).read_text()
    start, end = bench.BLOCK_START, bench.BLOCK_END
    assert (
        page[page.index(start) + len(start) : page.index(end)] == "\n" + bench.render(data) + "\n"
    )
    chosen = bench.choose(data)  # the rule, applied again to the stored rows
    assert chosen == data["chosen"]
    config = load_config(bench.CONFIG)
    assert (chosen["n_galaxies"], chosen["max_iters"]) == (FULL.n_galaxies, FULL.max_iters)
    assert (chosen["n_layer"], chosen["flux_loss_weight"]) == (
        config.model.n_layer,
        config.model.flux_loss_weight,
    )
    assert config.max_iters == FULL.max_iters


def test_scale_summary_takes_the_worst_seed_and_the_lowest_bound(tmp_path):
    import pandas as pd

    bench = _photometry_bench("photometry_scale")
    rows = []
    # Seed 0 wins every physical family; seed 1 loses colour and ties mass.
    for variant, outcomes in (
        ("base24", ["win"] * 5),
        ("base24-s1", ["win", "tie", "win", "win", "loss"]),
    ):
        for family, outcome in zip(bench.PHYSICAL, outcomes, strict=True):
            low = {"win": 0.01, "tie": -0.02, "loss": -0.05}[outcome]
            rows.append(("family", family, family, "r2", "model", "morphometrics",
                         low + 0.02, low, low + 0.04, 0.01, outcome, variant))  # fmt: skip
            rows.append(("family", family, family, "r2", "model", "random-init",
                         0.05, 0.03, 0.07, 0.01, "win", variant))  # fmt: skip
    columns = ["level", "name", "family", "metric", "model", "baseline", "improvement",
               "ci_low", "ci_high", "p_value", "outcome", "variant"]  # fmt: skip
    (tmp_path / "run").mkdir()
    frame = pd.DataFrame(rows, columns=columns)
    frame[["variant", *columns[:-1]]].to_csv(tmp_path / "run" / "comparisons.csv", index=False)
    result, _ = bench.summarise([tmp_path / "run"])
    (setting,) = result["settings"]
    assert (setting["n_galaxies"], setting["max_iters"]) == (24000, 1500)
    assert setting["physical_wins"] == [5, 3] and setting["worst_seed_wins"] == 3
    assert setting["smallest_lower_bound"] == -0.05
    table = bench.render(result)
    assert "| 24,000 (2,400) | 1500 | 4 | 1 | - | 1 |" in table and "3 of 5" in table


@pytest.mark.slow
def test_completion_grid_of_a_survey_unit_model_is_in_pixels(tmp_path):
    import numpy as np
    from conftest import write_parquet_survey

    from astropt.data import DataConfig
    from astropt.generate import completion_grid

    survey = write_parquet_survey(str(tmp_path / "survey"), sizes={"train": 4, "test": 5})
    model = model_for(token_scale="survey", flux_targets=True).eval()
    data_cfg = DataConfig(source="hf", path=survey.path, patch_size=PATCH)
    result = completion_grid(model, data_cfg, tmp_path / "grid.png", n=5, prefix=4)
    arrays = np.load(result.npz)
    images, kept, pixels = arrays["images"], arrays["kept"], arrays["completion_pixels"]
    # The kept centre comes back as the original pixels: survey units invert exactly.
    np.testing.assert_allclose(
        pixels.transpose(0, 2, 3, 1)[kept], images.transpose(0, 2, 3, 1)[kept], atol=1e-4
    )
    hidden = ~kept
    truth = images.transpose(0, 2, 3, 1)[hidden]
    completion = pixels.transpose(0, 2, 3, 1)[hidden]
    assert result.mse_pixels_completion == pytest.approx(
        ((completion - truth) ** 2).mean(), rel=1e-3
    )
    blank = survey_unstretch(
        torch.zeros(()), 1.0, model.config.survey_offset, model.config.survey_scale
    )
    assert result.mse_pixels_blank == pytest.approx(((truth - blank.item()) ** 2).mean(), rel=1e-3)
