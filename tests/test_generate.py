"""Completing galaxies from their centre (issue 7): astropt.generate and sample.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_parquet_survey

from astropt.generate import complete
from astropt.model import GPT, GPTConfig
from astropt.simulate import make_stamps
from astropt.tokens import images_to_tokens, normalise_patches, tokens_to_images, unpatchify

REPO = Path(__file__).resolve().parents[1]


def tiny_model(seed: int = 0, **overrides) -> GPT:
    """2 layers, width 32, 8x8x3 patches: 192 values per token."""
    torch.manual_seed(seed)
    settings = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, patch_size=8)
    settings.update(overrides)
    return GPT(GPTConfig(**settings))


def random_prefix(batch: int, k: int, dim: int = 192, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return normalise_patches(torch.randn(batch, k, dim, generator=g))[0]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


# ------------------------------------------------------------------ cache vs none
@pytest.mark.parametrize("attn_type", ["causal", "prefix"])
def test_cached_and_uncached_give_the_same_patches(attn_type):
    model = tiny_model(attn_type=attn_type)
    prefix = random_prefix(3, 4)
    cached = complete(model, prefix, 12)
    uncached = complete(model, prefix, 12, use_cache=False)
    torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-5)
    # Same with noise: both paths draw the same numbers in the same order.
    noisy = [
        complete(model, prefix, 12, use_cache=c, temperature=0.7, generator=torch.Generator().manual_seed(5))
        for c in (True, False)
    ]  # fmt: skip
    torch.testing.assert_close(noisy[0], noisy[1], rtol=1e-5, atol=1e-5)


def test_each_new_patch_is_the_prediction_for_the_sequence_so_far():
    """Independent of the cache: a full forward over the completed sequence predicts each new patch."""
    model = tiny_model().eval()
    prefix = random_prefix(2, 3)
    out = complete(model, prefix, 10)
    with torch.no_grad():
        predictions, _ = model(out[:, :-1])
    # Position t predicts patch t + 1; from the last prefix patch on, those are the new patches.
    torch.testing.assert_close(out[:, 3:], predictions[:, 2:], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------- prefix, count and folding
def test_prefix_returned_unchanged_and_input_untouched():
    model = tiny_model()
    prefix = random_prefix(2, 5)
    before = prefix.clone()
    out = complete(model, prefix, 11, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 16, 192)
    assert torch.equal(out[:, :5], before)  # bit for bit
    assert torch.equal(prefix, before)
    assert out.dtype == prefix.dtype and out.device == prefix.device
    assert torch.isfinite(out).all()
    assert complete(model, prefix, 0).shape == (2, 5, 192)


@pytest.mark.parametrize("transpose_hw", [False, True])
def test_completion_folds_back_to_the_image_shape(transpose_hw):
    # 32x32 pixels, 8-pixel patches: 16 tokens; prefix 4 + 12 new.
    model = tiny_model(transpose_hw=transpose_hw)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=g)
    tokens, mean, std = images_to_tokens(images, 8, "spiral", transpose_hw)
    out = complete(model, tokens[:, :4], 12)
    folded = tokens_to_images(out, (32, 32), 8, "spiral", transpose_hw)
    assert folded.shape == (2, 3, 32, 32)
    # The true tokens, unnormalised and folded, are the images again (the
    # transpose of AstroPT's layout undone): the fold used for display is right.
    pixels = tokens_to_images(tokens * (std + 1e-8) + mean, (32, 32), 8, "spiral", transpose_hw)
    torch.testing.assert_close(pixels, images, rtol=0, atol=1e-5)


def test_fold_of_a_non_square_image_with_transpose():
    images = torch.rand(1, 3, 16, 32)
    tokens, mean, std = images_to_tokens(images, 8, "raster", transpose_hw=True)
    back = tokens_to_images(tokens * (std + 1e-8) + mean, (16, 32), 8, "raster", transpose_hw=True)
    torch.testing.assert_close(back, images, rtol=0, atol=1e-5)


# -------------------------------------------------------------------- temperature
def test_temperature_noise_is_in_units_of_the_residual_scale():
    model = tiny_model(patch_size=16, block_size=8)  # 768 values per patch: good statistics
    prefix = random_prefix(4, 3, dim=768)
    det = complete(model, prefix, 1)

    def first_patch_noise(**kw):
        out = complete(model, prefix, 1, generator=torch.Generator().manual_seed(3), **kw)
        return out[:, 3] - det[:, 3]  # the first new patch sees the same prefix either way

    fixed = first_patch_noise(temperature=0.5, residual_scale=2.0)
    assert fixed.std().item() == pytest.approx(1.0, rel=0.1)
    # Default scale: RMS of the model's own next-patch errors on each galaxy's prefix.
    with torch.no_grad():
        predictions, _ = model(prefix)
    rms = (predictions[:, :-1] - prefix[:, 1:]).pow(2).mean(dim=(1, 2)).sqrt()
    measured = first_patch_noise(temperature=0.5)
    torch.testing.assert_close(measured.std(dim=1), 0.5 * rms, rtol=0.12, atol=0)
    # Reproducible from the generator, different across seeds.
    again = first_patch_noise(temperature=0.5)
    assert torch.equal(measured, again)
    other = complete(model, prefix, 1, temperature=0.5, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(other[:, 3] - det[:, 3], measured)


# ------------------------------------------------------------------------ errors
def test_mae_model_cannot_complete():
    model = tiny_model(objective="mae")
    with pytest.raises(ValueError, match="autoregressive"):
        complete(model, random_prefix(1, 4), 4)


def test_full_attention_ar_model_cannot_complete():
    with pytest.raises(ValueError, match="causal or prefix"):
        complete(tiny_model(attn_type="full"), random_prefix(1, 4), 4)


def test_n_new_beyond_block_size_is_refused():
    model = tiny_model(block_size=16)
    prefix = random_prefix(1, 4)
    # The last new patch is never fed back: 4 + 13 patches use positions 0..15.
    assert complete(model, prefix, 13).shape == (1, 17, 192)
    with pytest.raises(ValueError, match="block_size is 16"):
        complete(model, prefix, 14)


@pytest.mark.parametrize(
    "prefix, n_new, message",
    [
        (torch.zeros(1, 0, 192), 3, "at least one patch"),
        (torch.zeros(1, 2, 100), 3, "expects 192"),
        (torch.zeros(2, 192), 3, r"\(B, K, patch_dim\)"),
        (torch.zeros(1, 2, 192), -1, "non-negative"),
    ],
)
def test_bad_inputs_are_refused(prefix, n_new, message):
    with pytest.raises(ValueError, match=message):
        complete(tiny_model(), prefix, n_new)


def test_negative_temperature_is_refused():
    with pytest.raises(ValueError, match="temperature"):
        complete(tiny_model(), random_prefix(1, 2), 2, temperature=-1.0)


def test_training_mode_is_restored():
    model = tiny_model(dropout=0.5).train()
    prefix = random_prefix(2, 3)
    # Dropout is off while generating: two runs agree, and the cache agrees with none.
    torch.testing.assert_close(
        complete(model, prefix, 6), complete(model, prefix, 6, use_cache=False)
    )
    assert model.training


# ------------------------------------------------------------ a model that learnt
def stamps(n: int, size: int, seed: int) -> torch.Tensor:
    """``(n, 3, size, size)`` galaxy images in [0, 1] from the survey simulator."""
    rgb = make_stamps(n, size, seed)[0]
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float() / 255


@pytest.mark.slow
def test_trained_model_completes_better_than_a_blank():
    """A few AdamW steps on 384 stamps; held-out galaxies completed from 4 of 16 patches."""
    tokens, _, _ = images_to_tokens(stamps(448, 32, seed=3), 8)
    train, held_out = tokens[:384], tokens[384:]
    model = tiny_model(seed=0, n_embd=64)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        _, loss = model.compute_loss(train[torch.randint(0, len(train), (32,), generator=g)])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    out = complete(model, held_out[:, :4], 12)
    truth = held_out[:, 4:]
    mse = (out[:, 4:] - truth).pow(2).mean().item()
    blank = truth.pow(2).mean().item()  # a blank completion predicts 0 everywhere
    untrained = complete(tiny_model(seed=0, n_embd=64), held_out[:, :4], 12)
    assert mse < 0.95 * blank, (mse, blank)
    assert mse < (untrained[:, 4:] - truth).pow(2).mean().item()


# ------------------------------------------------------------- sample.py and grid
def _load_sample_module():
    spec = importlib.util.spec_from_file_location("astropt_sample_cli", REPO / "sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate_survey")
    return write_parquet_survey(str(root), sizes={"train": 4, "test": 6})


@pytest.mark.slow
@pytest.mark.parametrize("transpose_hw", [False, True])
def test_sample_cli_writes_png_and_npz(survey, tmp_path, transpose_hw):
    from PIL import Image

    model_dir = tmp_path / "model"
    tiny_model(transpose_hw=transpose_hw).save_pretrained(model_dir)
    out = tmp_path / "grids" / "grid.png"
    argv = ["--checkpoint", str(model_dir), "--data", survey.path, "--prefix", "4"]
    argv += ["--n", "5", "--out", str(out), "--device", "cpu"]
    assert _load_sample_module().main(argv) == 0

    with Image.open(out) as png:
        assert png.format == "PNG" and png.size[0] > 300 and png.size[1] > 300
    arrays = np.load(out.with_suffix(".npz"))
    n, prefix = 5, 4
    assert int(arrays["prefix"]) == prefix
    assert list(arrays["ids"]) == [str(i) for i in survey.ids["test"][:n]]
    images = arrays["images"]
    assert images.shape == (n, 3, 32, 32)
    # The stored images are the JPEGs written by the test (lossy: loose tolerance).
    original = survey.images["test"][:n].transpose(0, 3, 1, 2) / 255.0
    assert np.abs(images - original).mean() < 0.03
    # Tokens are the model's tokenisation of those images, prefix kept unchanged.
    tokens, _, _ = images_to_tokens(torch.from_numpy(images), 8, "spiral", transpose_hw)
    np.testing.assert_allclose(arrays["tokens"], tokens.numpy(), atol=1e-4)
    completion = arrays["completion"]
    assert completion.shape == (n, 16, 192)
    np.testing.assert_array_equal(completion[:, :prefix], arrays["tokens"][:, :prefix])
    # In pixel units the kept centre is the original image, in place (fold and transpose right).
    kept = arrays["kept"]
    assert kept.shape == (n, 32, 32) and kept.sum() == n * prefix * 64
    assert kept[:, 8:24, 8:24].all()  # the 4 central patches of a 4x4 grid
    pixels = arrays["completion_pixels"]
    assert pixels.shape == images.shape
    np.testing.assert_allclose(
        pixels.transpose(0, 2, 3, 1)[kept], images.transpose(0, 2, 3, 1)[kept], atol=1e-5
    )
    normalised = unpatchify(torch.from_numpy(completion), 32, 8, "spiral")
    if transpose_hw:
        normalised = normalised.transpose(-1, -2)
    np.testing.assert_allclose(arrays["completion_normalised"], normalised.numpy(), atol=1e-6)
    blank = (arrays["tokens"][:, prefix:] ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(arrays["mse_blank"], blank, rtol=1e-5)


def test_sample_cli_refuses_a_masked_autoencoder(survey, tmp_path):
    model_dir = tmp_path / "mae"
    tiny_model(objective="mae").save_pretrained(model_dir)
    argv = ["--checkpoint", str(model_dir), "--data", survey.path, "--prefix", "4"]
    with pytest.raises(ValueError, match="autoregressive"):
        _load_sample_module().main(argv + ["--n", "2", "--out", str(tmp_path / "g.png")])
