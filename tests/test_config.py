"""Run configuration: TOML files, overrides, typed parsing, nearest-key errors, shipped configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from astropt.config import (
    ConfigError,
    RunConfig,
    config_from_dict,
    describe_keys,
    load_config,
    valid_keys,
)
from astropt.model import GPT, GPTConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# AstroPT's own configs (config/scaling/astropt*.py of its repository): layers,
# heads, width, micro-batch, peak learning rate; block size 1024 throughout.
ASTROPT_SIZES = {
    "001M": (4, 8, 128, 8, 1e-3),
    "005M": (6, 8, 256, 8, 1e-3),
    "010M": (6, 8, 384, 8, 1e-3),
    "020M": (6, 8, 512, 8, 1e-3),
    "070M": (12, 12, 768, 8, 6e-4),
    "095M": (12, 12, 768, 8, 6e-4),
    "300M": (24, 16, 1024, 8, 3e-4),
    "700M": (16, 8, 2048, 8, 3e-4),
    "2100M": (26, 32, 2560, 16, 1.6e-4),
}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_overrides_and_types():
    cfg = load_config(
        None,
        [
            "max_iters=1e3",
            "resume=yes",
            "optim.lr=3e-4",
            "optim.min_lr=none",
            "init_from=runs/x",
            "model.n_layer=6",
            "model.attn_type=prefix",
            "data.columns=['redshift', 'mag_g']",
            "dtype=bfloat16",
        ],
    )
    assert cfg.max_iters == 1000 and isinstance(cfg.max_iters, int)
    assert cfg.resume is True
    assert cfg.optim.lr == 3e-4 and cfg.optim.min_lr is None
    assert cfg.init_from == "runs/x"
    assert cfg.model.n_layer == 6 and cfg.model.attn_type == "prefix"
    assert cfg.data.columns == ("redshift", "mag_g")
    assert cfg.dtype == "bfloat16"
    assert isinstance(cfg.model, GPTConfig)
    # Later overrides win.
    assert load_config(None, ["seed=1", "seed=2"]).seed == 2


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.n_layers=3", "did you mean 'model.n_layer'?"),
        ("n_layer=3", "did you mean 'model.n_layer'?"),
        ("max_iter=3", "did you mean 'max_iters'?"),
        ("optim.learning_rate=1", "unknown config key 'optim.learning_rate'"),
        ("data.pth=x", "did you mean 'data.path'?"),
        ("model.n_layer=six", "model.n_layer must be an integer, got 'six'"),
        ("optim.lr=fast", "optim.lr must be a number"),
        ("resume=maybe", "resume must be true or false"),
        ("dtype=bf16", "did you mean 'bfloat16'?"),
        ("model.tokeniser=mlp", "model.tokeniser must be one of 'aim', 'affine'"),
        ("batch_size=0", "batch_size"),
        ("model.n_head=5", "divisible"),
        ("max_iters", "key=value"),
    ],
)
def test_bad_keys_and_values_fail_naming_the_fix(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert message in str(error.value)


def test_toml_file_sections_base_and_errors_name_the_file(tmp_path):
    write(tmp_path / "base.toml", "max_iters = 50\n[model]\nn_layer = 3\n[optim]\nlr = 1e-3\n")
    child = write(
        tmp_path / "child.toml",
        'base = "base.toml"\nout_dir = "runs/c"\n[model]\nn_embd = 64\nn_head = 4\n',
    )
    cfg = load_config(child, ["optim.lr=2e-3"])
    assert (cfg.max_iters, cfg.model.n_layer, cfg.model.n_embd, cfg.out_dir) == (
        50,
        3,
        64,
        "runs/c",
    )
    assert cfg.optim.lr == 2e-3
    bad = write(tmp_path / "bad.toml", "[model]\nn_layers = 3\n")
    with pytest.raises(
        ConfigError, match=r"model.n_layers.*bad.toml.*did you mean 'model.n_layer'"
    ):
        load_config(bad)
    section = write(tmp_path / "section.toml", "[modle]\nn_layer = 3\n")
    with pytest.raises(ConfigError, match="model"):
        load_config(section)
    typed = write(tmp_path / "typed.toml", 'max_iters = "many"\n')
    with pytest.raises(ConfigError, match="max_iters must be an integer"):
        load_config(typed)
    loop = write(tmp_path / "loop.toml", 'base = "loop.toml"\n')
    with pytest.raises(ConfigError, match="include each other"):
        load_config(loop)


def test_model_data_conventions_come_from_the_data_section():
    cfg = load_config(None, ["data.patch_size=8", "data.order=raster", "data.transpose_hw=true"])
    assert (cfg.model.patch_size, cfg.model.order, cfg.model.transpose_hw) == (8, "raster", True)
    assert cfg.model.patch_dim == 8 * 8 * 3
    # Writing them under model. is accepted when they agree, refused when they do not.
    assert load_config(None, ["model.patch_size=16"]).model.patch_size == 16
    with pytest.raises(ConfigError, match="set data.transpose_hw instead"):
        load_config(None, ["model.transpose_hw=true"])


def test_saved_config_json_round_trips(tmp_path):
    cfg = load_config(None, ["data.patch_size=8", "model.n_layer=2", "optim.lr=1e-3"])
    path = write(tmp_path / "config.json", json.dumps(cfg.to_dict()))
    assert load_config(path) == cfg
    assert config_from_dict(json.loads(path.read_text())) == cfg
    assert load_config(path, ["model.n_layer=3"]).model.n_layer == 3


def test_every_key_is_listed_for_help():
    listing = describe_keys()
    for key in valid_keys():
        if key.split(".")[-1] in ("patch_size", "order", "transpose_hw") and key.startswith(
            "model."
        ):
            continue  # derived from data.*
        assert f"  {key} " in listing
    # The model section is GPTConfig itself: every architecture field is a key.
    model_fields = {f"model.{name}" for name in GPTConfig.__dataclass_fields__}
    assert model_fields <= set(valid_keys())
    assert isinstance(RunConfig().model, GPTConfig)


def test_quickstart_config():
    cfg = load_config(CONFIGS / "quickstart.toml")
    assert cfg.data.source == "synthetic" and cfg.data.path == "runs/quickstart/survey"
    assert cfg.data.image_size == 64
    tokens = (cfg.data.image_size // cfg.data.patch_size) ** 2
    assert tokens == 16 and cfg.model.block_size >= tokens
    with torch.device("meta"):
        model = GPT(cfg.model)
    assert model.num_params() < 5e6  # a CPU-minutes model
    assert cfg.device == "auto"


@pytest.mark.parametrize("name", sorted(ASTROPT_SIZES))
def test_astropt_sized_configs_record_astropt_shapes(name):
    layers, heads, width, batch, lr = ASTROPT_SIZES[name]
    cfg = load_config(CONFIGS / f"astropt-{name}.toml")
    model = cfg.model
    assert (model.n_layer, model.n_head, model.n_embd, model.block_size) == (
        layers,
        heads,
        width,
        1024,
    )
    assert cfg.batch_size == batch and cfg.optim.lr == pytest.approx(lr)
    assert cfg.optim.min_lr is None  # lr / 10
    tokens_per_step = cfg.batch_size * cfg.grad_accum * 1024
    assert tokens_per_step == 327_680  # AstroPT: ~0.33M tokens per optimiser step
    assert (cfg.max_iters, cfg.optim.warmup_iters, cfg.optim.decay_iters) == (30000, 2000, 29700)
    assert cfg.data.source == "hf" and cfg.data.path == "Smith42/galaxies"
    assert cfg.out_dir == f"runs/astropt-{name}"


@pytest.mark.parametrize("name", sorted(ASTROPT_SIZES))
def test_astropt_flux_configs_are_astropt_shapes_with_the_flux_objective(name):
    plain = load_config(CONFIGS / f"astropt-{name}.toml")
    flux = load_config(CONFIGS / f"astropt-flux-{name}.toml")
    shape = ("n_layer", "n_head", "n_embd", "block_size")
    assert [getattr(flux.model, k) for k in shape] == [getattr(plain.model, k) for k in shape]
    assert (flux.batch_size, flux.optim.lr, flux.max_iters) == (
        plain.batch_size, plain.optim.lr, plain.max_iters,
    )  # fmt: skip
    assert flux.model.token_scale == "survey" and flux.model.flux_targets
    quickstart = load_config(CONFIGS / "quickstart.toml").model
    flux_keys = ("token_scale", "flux_targets", "flux_loss_weight", "embed_hybrid")
    assert [getattr(flux.model, k) for k in flux_keys] == [
        getattr(quickstart, k) for k in flux_keys
    ]
    assert flux.out_dir == f"runs/astropt-flux-{name}"
