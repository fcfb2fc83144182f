"""The observation model: attention masks, objectives, caching, embeddings, sizes.

Expected values come from the definitions (which positions may see which,
Huber loss over the counted values, parameter formulas), never from the
model's own earlier output.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import galaxy_stamps

from astropt.model import GPT, GPTConfig, KVCache
from astropt.tokens import images_to_tokens

DIM = 16 * 16 * 3


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def tiny(**overrides) -> GPT:
    values = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)
    values.update(overrides)
    torch.manual_seed(0)
    return GPT(GPTConfig(**values)).eval()


def tokens(batch=2, seq=12, seed=1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq, DIM, generator=generator)


def changed_positions(model, x, position, **kwargs) -> torch.Tensor:
    """Bool per output position: does changing input token ``position`` move it?"""
    with torch.no_grad():
        before, _ = model(x, **kwargs)
        x2 = x.clone()
        x2[:, position] += 3.0
        after, _ = model(x2, **kwargs)
    return (before - after).abs().amax(dim=(0, 2)) > 1e-6


# ----------------------------------------------------------- attention
def test_causal_outputs_ignore_later_tokens():
    model = tiny()
    x = tokens()
    for t in (0, 4, 10):
        moved = changed_positions(model, x, t + 1)
        assert not moved[: t + 1].any(), f"outputs <= {t} changed when token {t + 1} changed"
        assert moved[t + 1 :].all(), "later outputs must depend on the changed token"


def test_prefix_is_bidirectional_inside_the_prefix_only():
    model = tiny(attn_type="prefix")
    x = tokens()
    k = 5
    # A token inside the prefix is seen by every prefix position, earlier ones included.
    moved = changed_positions(model, x, 3, prefix_len=k)
    assert moved[:k].all()
    assert moved[k:].all()  # and by everything after the prefix (causal)
    # A token after the prefix is invisible to every earlier position, prefix included.
    moved = changed_positions(model, x, 8, prefix_len=k)
    assert not moved[:8].any()
    assert moved[8:].all()


def test_full_attention_sees_everything():
    model = tiny(attn_type="full")
    moved = changed_positions(model, tokens(), 11)
    assert moved.all()


def test_prefix_training_loss_skips_positions_that_can_see_their_target():
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, attn_type="prefix", prefix_len=4)
    )
    x = tokens(seq=10)
    _, loss = model.compute_loss(x)
    with torch.no_grad():
        predictions, _ = model(x[:, :-1], prefix_len=4)
    # Positions 0..2 predict tokens 1..3, visible inside the prefix: not counted.
    expected = F.huber_loss(predictions[:, 3:], x[:, 4:], delta=1.0)
    assert torch.allclose(loss, expected, atol=1e-6)


def test_kv_cache_decoding_matches_full_forward():
    model = tiny()
    x = tokens(seq=9)
    with torch.no_grad():
        full, _ = model(x)
        cache = KVCache(model.config.n_layer)
        first, _ = model(x[:, :4], cache=cache)
        steps = [first]
        for t in range(4, 9):
            out, _ = model(x[:, t : t + 1], cache=cache)
            steps.append(out)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("capacity", [9, None, 3])
def test_kv_cache_writes_in_place_and_grows_when_short(capacity):
    """A reserved cache keeps one buffer per layer (no copy of the past per token);
    an unreserved or short one grows and still decodes exactly."""
    model = tiny()
    x = tokens(seq=9)
    with torch.no_grad():
        full, _ = model(x)
        cache = KVCache(model.config.n_layer, capacity)
        steps = [model(x[:, :2], cache=cache)[0]]
        buffers = [cache.keys[0].data_ptr(), cache.values[0].data_ptr()]
        for t in range(2, 9):
            steps.append(model(x[:, t : t + 1], cache=cache)[0])
            if capacity == 9:
                assert [cache.keys[0].data_ptr(), cache.values[0].data_ptr()] == buffers
    assert cache.length() == 9 and cache.keys[0].shape[2] >= 9
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_last_only_heads_the_last_position():
    model = tiny()
    x = tokens(seq=7)
    with torch.no_grad():
        full, _ = model(x)
        last, _ = model(x, last_only=True)
    assert last.shape == (x.shape[0], 1, DIM)
    assert torch.allclose(last, full[:, -1:], atol=1e-6)
    with pytest.raises(ValueError, match="no targets"):
        model(x, targets=x, last_only=True)


# ----------------------------------------------------------- objectives
def test_ar_loss_is_huber_on_next_patch():
    model = tiny()
    x = tokens()
    _, loss = model.compute_loss(x)
    with torch.no_grad():
        predictions, _ = model(x[:, :-1])
    diff = (predictions - x[:, 1:]).abs()
    huber = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5)
    assert torch.allclose(loss, huber.mean(), atol=1e-6)


def test_mae_loss_counts_masked_patches_only():
    model = tiny(objective="mae")
    x = tokens(batch=3, seq=10)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[:, [1, 4, 7]] = True
    mask[0, 9] = True
    with torch.no_grad():
        predictions, loss = model(x, targets=x, mask=mask)
        diff = (predictions - x).abs()
        huber = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5)
        assert torch.allclose(loss, huber[mask].mean(), atol=1e-6)
        # Targets at visible positions do not enter the loss...
        other = x.clone()
        other[~mask] = 100.0
        _, same = model(x, targets=other, mask=mask)
        assert torch.allclose(same, loss)
        # ... targets at masked ones do.
        other = x.clone()
        other[mask] += 1.0
        _, moved = model(x, targets=other, mask=mask)
        assert not torch.allclose(moved, loss)


def test_mae_hides_masked_inputs():
    model = tiny(objective="mae")
    x = tokens(batch=1, seq=8)
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, 2] = True
    with torch.no_grad():
        before, _ = model(x, mask=mask)
        x2 = x.clone()
        x2[0, 2] += 5.0  # hidden behind the mask token: no output may move
        after, _ = model(x2, mask=mask)
    assert torch.allclose(before, after)


@pytest.mark.parametrize(("ratio", "seq", "n_masked"), [(0.5, 10, 5), (0.25, 16, 4), (0.75, 8, 6)])
def test_mae_compute_loss_masks_the_configured_fraction(ratio, seq, n_masked):
    model = tiny(objective="mae", mask_ratio=ratio)
    x = tokens(batch=4, seq=seq)
    masks = []

    def record_mask(module, args, kwargs):
        masks.append(kwargs["mask"])

    model.register_forward_pre_hook(record_mask, with_kwargs=True)
    with torch.no_grad():
        predictions, loss = model.compute_loss(x, generator=torch.Generator().manual_seed(3))
    (mask,) = masks
    assert mask.shape == (4, seq) and mask.dtype == torch.bool
    # round(ratio * seq) patches hidden in every sequence, a different set per sequence.
    assert mask.sum(dim=1).tolist() == [n_masked] * 4
    assert len({tuple(row.tolist()) for row in mask}) > 1
    # The loss is the Huber loss over the hidden patches only.
    diff = (predictions - x).abs()
    huber = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5)
    assert torch.allclose(loss, huber[mask].mean(), atol=1e-6)
    # The mask comes from the generator: same seed, same mask; another seed, another.
    with torch.no_grad():
        model.compute_loss(x, generator=torch.Generator().manual_seed(3))
        model.compute_loss(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(masks[1], mask) and not torch.equal(masks[2], mask)


def test_tiny_model_overfits_a_fixed_batch():
    # Four 64x64 galaxy-like stamps (16 tokens each), as the data pipeline scales them.
    stamps = torch.from_numpy(galaxy_stamps(4, 64, seed=0)).permute(0, 3, 1, 2) / 255.0
    x, _, _ = images_to_tokens(stamps, patch_size=16)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    with torch.no_grad():
        _, first = model.compute_loss(x)
    for _ in range(100):
        _, loss = model.compute_loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, last = model.compute_loss(x)
    assert last < first / 10, f"loss only fell from {first:.4f} to {last:.4f}"


# ----------------------------------------------------------- embeddings
def test_embed_layers_and_pools():
    model = tiny(n_layer=4)
    x = tokens(seq=9)
    with torch.no_grad():
        # The residual stream after block n_layer // 2, computed by hand.
        h = model.tokeniser(x) + model.pos_emb(torch.arange(9))
        for block in model.blocks[: model.config.n_layer // 2 + 1]:
            h = block(h, "causal")
        middle = model.embed(x, layer="middle")
        assert torch.allclose(middle, h.mean(dim=1), atol=1e-5)
        final = model.hidden_states(x, layer="final")
        assert torch.allclose(model.embed(x, layer=-1), final.mean(dim=1))
        assert torch.allclose(
            model.embed(x, layer=-1, pool="prefix", prefix=3), final[:, :3].mean(1)
        )
        assert torch.allclose(model.embed(x, layer=-1, pool="last"), final[:, -1])
    assert middle.shape == (2, 32)
    with pytest.raises(ValueError):
        model.embed(x, layer=7)
    with pytest.raises(ValueError):
        model.embed(x, pool="prefix")


def test_several_layers_concatenate_in_the_order_given():
    model = tiny(n_layer=4)
    x = tokens(seq=9)
    with torch.no_grad():
        h = model.tokeniser(x) + model.pos_emb(torch.arange(9))
        by_hand = []
        for block in model.blocks:
            h = block(h, "causal")
            by_hand.append(h.mean(dim=1))
        final = model.norm_f(h).mean(dim=1)
        both = model.embed(x, layer="middle+final")
        assert both.shape == (2, 64)
        assert torch.allclose(both[:, :32], by_hand[2], atol=1e-5)
        assert torch.allclose(both[:, 32:], final, atol=1e-5)
        assert torch.allclose(model.embed(x, layer=[3, 0]), torch.cat([by_hand[3], by_hand[0]], 1))
        # Blocks only (no final LayerNorm): the trunk stops after the deepest one asked for.
        assert torch.allclose(model.embed(x, layer="0+1"), torch.cat(by_hand[:2], 1), atol=1e-5)
    assert model.resolve_layers("middle+final") == (2, None)
    assert model.layer_name(model.resolve_layers("1,final")) == "1+final"
    for bad in ("middle+2", "final+-1", "1+9", ""):
        with pytest.raises(ValueError):
            model.resolve_layers(bad)
    with pytest.raises(ValueError, match="one layer"):
        model.resolve_layer("middle+final")  # a finetune head reads one layer


# ----------------------------------------------------------- flux-aware tokens
def test_default_model_keeps_the_astropt_weights_and_flux_tokens_add_one_projection():
    plain, flux = tiny(), tiny(flux_tokens=True)
    assert not any("flux" in name for name in plain.state_dict())
    extra = set(flux.state_dict()) - set(plain.state_dict())
    assert extra == {"flux_proj.weight"}
    assert flux.flux_proj.weight.shape == (32, 6)
    # The shared weights load both ways (strict, minus the one projection).
    flux.load_state_dict(plain.state_dict(), strict=False)
    plain.load_state_dict({k: v for k, v in flux.state_dict().items() if k not in extra})


def test_flux_tokens_see_the_brightness_that_normalisation_hides():
    images = torch.from_numpy(galaxy_stamps(2, 32, seed=4)).permute(0, 3, 1, 2).float() / 255
    dim_tokens, dim_mean, dim_std = images_to_tokens(images)
    bright_tokens, bright_mean, bright_std = images_to_tokens(images * 3.0 + 0.2)
    assert torch.allclose(dim_tokens, bright_tokens, atol=1e-4)  # the patches look the same
    plain, flux = tiny(), tiny(flux_tokens=True)
    with torch.no_grad():
        assert torch.allclose(plain.embed(dim_tokens), plain.embed(bright_tokens), atol=1e-4)
        dim = flux.embed(dim_tokens, stats=flux.token_stats(dim_tokens, dim_mean, dim_std))
        bright = flux.embed(
            bright_tokens, stats=flux.token_stats(bright_tokens, bright_mean, bright_std)
        )
    assert not torch.allclose(dim, bright, atol=1e-3)
    assert plain.token_stats(dim_tokens, dim_mean, dim_std) is None
    with pytest.raises(ValueError, match="flux-aware"):
        flux.embed(dim_tokens)
    with pytest.raises(ValueError, match="shape"):
        flux.embed(dim_tokens, stats=torch.zeros(2, 4, 3))


def test_flux_tokens_train_their_projection():
    model = tiny(flux_tokens=True).train()
    x = tokens(seq=6)
    stats = torch.randn(2, 6, 6)
    _, loss = model.compute_loss(x, stats=stats)
    loss.backward()
    assert model.flux_proj.weight.grad.abs().sum() > 0
    # The last patch's statistics are not an input of next-patch prediction.
    changed = stats.clone()
    changed[:, -1] += 5.0
    with torch.no_grad():
        assert torch.equal(
            model.compute_loss(x, stats=changed)[1], model.compute_loss(x, stats=stats)[1]
        )


# ----------------------------------------------------------- sizes
def test_num_params_and_flops_follow_the_formulas():
    cfg = GPTConfig(n_layer=3, n_head=4, n_embd=64, block_size=100)
    model = GPT(cfg)
    e, d = 64, DIM
    codec = d * 4 * e + 4 * e * e  # aim MLP, no biases
    block = 4 * e * e + 8 * e * e + 2 * e  # qkv + proj, MLP, two LayerNorm weights
    expected = 2 * codec + 3 * block + e + 100 * e  # + final LayerNorm + positions
    assert model.num_params() == expected
    assert model.num_params(exclude_positions=True) == expected - 100 * e
    assert model.flops_per_token(50) == 6 * (expected - 100 * e) + 12 * 3 * e * 50


def test_affine_tokeniser_and_bias_shapes():
    model = GPT(
        GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, tokeniser="affine", bias=True)
    )
    assert model.tokeniser.fc1.weight.shape == (32, DIM)
    assert model.head.fc1.weight.shape == (DIM, 32)
    assert model.tokeniser.fc1.bias is not None


def test_sequence_longer_than_block_size_is_refused():
    model = tiny(block_size=8)
    with pytest.raises(ValueError, match="block_size"):
        model(tokens(seq=9))
    with pytest.raises(ValueError, match="patch"):
        model(torch.randn(1, 4, 10))


def test_bf16_autocast_loss_is_float32():
    model = tiny()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model.compute_loss(tokens())
    assert loss.dtype == torch.float32


def test_dropout_trains_on_cpu_and_is_off_in_eval():
    """Attention dropout changes SDPA's output layout on CPU; the block must still run."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, dropout=0.5))
    x = torch.randn(2, 8, 768)
    model.train()
    first, second = model(x)[0], model(x)[0]
    assert not torch.equal(first, second)  # dropout is active in training
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])
