"""The small helpers that exist once and are shared by training, embedding, sampling and scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import galaxy_stamps

from astropt.data import DataConfig
from astropt.data.config import DATA_CONVENTIONS, convention_mismatches, synthetic_split_sizes
from astropt.device import native_bf16, resolve_device
from astropt.display import percentile_stretch, survey_colour_order
from astropt.export import resolve_dtype
from astropt.model import GPT, GPTConfig, mae_mask
from astropt.tokens import images_to_tokens, tokens_to_images
from astropt.train.parallel import autocast_dtype


def test_resolve_device_auto_and_ranks():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu"), local_rank=3) == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(False, False, False), (True, False, False), (True, True, True), (False, True, True)],
)
def test_cpu_bf16_counts_as_native_only_with_amx(monkeypatch, avx512_bf16, amx, expected):
    # AVX512-BF16 alone runs bf16 matmuls at about half the fp32 rate (measured by
    # bench/limits.py on such a Xeon), so dtype=auto must stay in float32 there.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert native_bf16(torch.device("cpu")) is expected
    assert (autocast_dtype("auto", torch.device("cpu")) == torch.bfloat16) is expected
    assert (resolve_dtype("auto", torch.device("cpu")) == "bfloat16") is expected
    # An explicit choice is obeyed whatever the hardware.
    assert autocast_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_cpu_bf16_detection_survives_a_failing_probe(monkeypatch):
    def broken():
        raise RuntimeError("cpuinfo unavailable")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    assert native_bf16(torch.device("cpu")) is False


def test_percentile_stretch_maps_the_reference_percentiles_to_0_and_1():
    # One image whose values are 0..99: its 1st/99th percentiles are 0.99 and 98.01.
    reference = np.arange(100, dtype=np.float64).reshape(1, 1, 10, 10)
    shown = percentile_stretch(reference * 2, reference, (1.0, 99.0))
    assert shown[0, 0, 0, 0] == pytest.approx((0 - 0.99) / 97.02)
    assert shown[0, 0, 9, 9] == pytest.approx((198 - 0.99) / 97.02)
    # Each image gets its own stretch; a flat image does not divide by zero.
    pair = np.stack([reference[0], np.full((1, 10, 10), 5.0)])
    stretched = percentile_stretch(pair)
    assert stretched[0].min() < 0 < 1 < stretched[0].max()
    assert np.all(stretched[1] == 0)
    bands = np.stack([np.full((4, 4), v) for v in (1.0, 2.0, 3.0)])[None]
    assert survey_colour_order(bands)[0, :, 0, 0].tolist() == [3.0, 2.0, 1.0]


@pytest.mark.parametrize("transpose_hw", [False, True])
def test_tokens_to_images_inverts_images_to_tokens(transpose_hw):
    images = torch.from_numpy(galaxy_stamps(2, 32)).permute(0, 3, 1, 2).float() / 255
    tokens, mean, std = images_to_tokens(images, 8, "spiral", transpose_hw)
    back = tokens_to_images(tokens, (32, 32), 8, "spiral", transpose_hw, mean, std)
    assert torch.allclose(back, images, atol=1e-4)
    # Without mean/std the images stay normalised: each patch has zero mean.
    normalised = tokens_to_images(tokens, (32, 32), 8, "spiral", transpose_hw)
    assert normalised.shape == images.shape
    assert normalised[:, :, :8, :8].mean().abs() < 1e-4


def test_convention_mismatches_names_every_disagreeing_field():
    model_cfg = GPTConfig(n_layer=1, n_head=1, n_embd=8, patch_size=8, transpose_hw=True)
    assert convention_mismatches(DataConfig(patch_size=8, transpose_hw=True), model_cfg) == []
    assert convention_mismatches(DataConfig(order="raster"), model_cfg) == list(DATA_CONVENTIONS)


def test_synthetic_split_sizes_cover_every_galaxy_once():
    sizes = synthetic_split_sizes(
        DataConfig(synthetic_n=1003, synthetic_val_fraction=0.15, synthetic_test_fraction=0.05)
    )
    assert sizes == {"train": 803, "validation": 150, "test": 50}
    with pytest.raises(ValueError, match="exceed 1"):
        synthetic_split_sizes(DataConfig(synthetic_val_fraction=0.6, synthetic_test_fraction=0.6))


def test_mae_mask_of_training_previews_is_the_training_mask():
    """The preview and the training loss hide the same patches for the same generator state."""
    from astropt.train.metrics import reconstruct

    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=16, patch_size=2,
                          objective="mae", attn_type="full", mask_ratio=0.5))  # fmt: skip
    tokens = torch.randn(3, 16, model.config.patch_dim)
    seen = []
    model.register_forward_pre_hook(lambda m, a, k: seen.append(k["mask"]), with_kwargs=True)
    with torch.no_grad():
        model.compute_loss(tokens, generator=torch.Generator().manual_seed(7))
    _, preview_mask = reconstruct(model, tokens, seed=7)
    assert torch.equal(seen[0], preview_mask)
    assert torch.equal(preview_mask, mae_mask((3, 16), 0.5, torch.Generator().manual_seed(7)))
    assert preview_mask.sum(dim=1).tolist() == [8, 8, 8]
