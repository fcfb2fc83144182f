"""AstroPT checkpoints: our loader against the reference package itself.

The reference ``astropt`` 2.0.9 shares our import name, so it only ever runs in
a subprocess that cannot see our package (``tests/astropt_ref_worker.py``,
DESIGN.md section 9); everything it computes comes back through files.
``tests/golden/`` holds such files, written by ``tests/make_golden.py`` (see
there for what they are): every parity test runs on them, offline. When pip
can install the reference (into the gitignored ``tests/.astropt_ref/``), the
same tests run again on a fresh reference run, which must also reproduce the
golden files. The rest (safe unpickling, unsupported variants, name mapping)
needs no reference.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import make_golden
import numpy as np
import pytest
import torch
from PIL import Image

from astropt.data import DataConfig, make_loader
from astropt.interop import (
    AstroPTModality,
    AstroPTModalityRegistry,
    astropt_checkpoint_dict,
    export_astropt_checkpoint,
    load_astropt_checkpoint,
    read_astropt_checkpoint,
    strip_compile_prefixes,
    write_astropt_checkpoint,
)
from astropt.model import GPT, GPTConfig
from astropt.tokens import images_to_tokens, spiral_order

TOL = 1e-5
MODELS = make_golden.MODELS


# ---------------------------------------------------------------- reference


_LIVE: dict[str, Path | str] = {}  # one fresh reference run (or pip's refusal) per session


def _live_reference(tmp_path_factory) -> Path:
    """Install the reference (once) and run make_golden.generate into a temporary folder."""
    if "out" not in _LIVE:
        reason = make_golden.install_reference()
        if reason:
            _LIVE["out"] = reason
        else:
            out = tmp_path_factory.mktemp("astropt_ref") / "out"
            make_golden.generate(make_golden.REF_DIR, out)
            _LIVE["out"] = out
    if isinstance(_LIVE["out"], str):
        pytest.skip(_LIVE["out"])
    return _LIVE["out"]


@pytest.fixture(scope="module", params=["golden", pytest.param("live", marks=pytest.mark.slow)])
def reference(request, tmp_path_factory) -> Path:
    """A folder of the reference's outputs: the committed golden files, or a fresh run."""
    if request.param == "golden":
        return make_golden.GOLDEN_DIR
    return _live_reference(tmp_path_factory)


@pytest.mark.slow
def test_golden_files_are_what_the_reference_writes(tmp_path_factory):
    """A fresh reference run reproduces tests/golden (else: rerun tests/make_golden.py)."""
    live, golden = _live_reference(tmp_path_factory), make_golden.GOLDEN_DIR
    generated = {p.relative_to(live) for p in live.rglob("*") if p.is_file()}
    committed = {p.relative_to(golden) for p in golden.rglob("*") if p.is_file()}
    assert generated <= committed, f"not in tests/golden: {sorted(generated - committed)}"
    for name in sorted(generated):
        if name.suffix == ".npy":
            # Another CPU may round the reference's arithmetic differently in the last bits.
            np.testing.assert_allclose(np.load(golden / name), np.load(live / name), atol=TOL)
        elif name.suffix == ".pt":
            ours, theirs = (
                read_astropt_checkpoint(root / name)["model"] for root in (golden, live)
            )
            assert ours.keys() == theirs.keys()
            for key in ours:
                torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)
        elif name.suffix == ".png":
            assert np.array_equal(
                np.array(Image.open(golden / name)), np.array(Image.open(live / name))
            )
        elif name.name != "worker.json":
            assert (golden / name).read_bytes() == (live / name).read_bytes(), name


def _ours(model: GPT, inputs: np.ndarray, layer=None) -> tuple[np.ndarray, np.ndarray, float]:
    """Next-patch predictions, (default-layer, mean-pooled) embeddings and the training loss."""
    model.eval()
    x = torch.from_numpy(inputs)
    with torch.no_grad():
        predictions, _ = model(x)
        embeddings = model.embed(x, layer=layer, pool="mean")
        _, loss = model.compute_loss(x)
    return predictions.numpy(), embeddings.numpy(), loss.item()


def _assert_outputs_match(reference: Path, name: str, model: GPT, layer=None) -> None:
    inputs = np.load(reference / f"{name}_inputs.npy")
    predictions, embeddings, loss = _ours(model, inputs, layer)
    their_predictions = np.load(reference / f"{name}_preds.npy")
    assert predictions.shape == their_predictions.shape
    np.testing.assert_allclose(predictions, their_predictions, rtol=0, atol=TOL)
    np.testing.assert_allclose(embeddings, np.load(reference / f"{name}_emb.npy"), rtol=0, atol=TOL)
    assert loss == pytest.approx(np.load(reference / f"{name}_loss.npy").item(), abs=TOL)


# ------------------------------------------------- reference -> our model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loaded_checkpoint_matches_reference(reference, name):
    shape = MODELS[name]
    model = load_astropt_checkpoint(reference / name / "ckpt.pt")
    cfg = model.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (
        shape["n_layer"], shape["n_head"], shape["n_embd"], shape["block_size"],
    )  # fmt: skip
    assert (cfg.tokeniser, cfg.patch_size, cfg.n_chan) == (
        shape["tokeniser"], shape["patch_size"], shape["n_chan"],
    )  # fmt: skip
    # AstroPT's data conventions travel with the model.
    assert cfg.transpose_hw and cfg.order == "spiral" and cfg.embed_layer == "middle"
    _assert_outputs_match(reference, name, model)

    # The comparison can fail: the final-LayerNorm embedding is a different vector.
    inputs = np.load(reference / f"{name}_inputs.npy")
    with torch.no_grad():
        final = model.embed(torch.from_numpy(inputs), layer="final").numpy()
    assert np.abs(final - np.load(reference / f"{name}_emb.npy")).max() > 100 * TOL


def test_reference_checkpoint_is_what_their_training_script_writes(reference):
    """The fixture really exercises the compile prefix, numpy scalars and optimiser state."""
    checkpoint = read_astropt_checkpoint(reference / "aim")
    assert set(checkpoint) == {
        "model", "optimizer", "model_args", "iter_num", "best_val_loss", "config",
        "modality_registry",
    }  # fmt: skip
    assert all(key.startswith("_orig_mod.transformer.") or key.startswith("_orig_mod.lm_head.")
               for key in checkpoint["model"])  # fmt: skip
    assert isinstance(checkpoint["best_val_loss"], float)  # a numpy float32 when pickled
    assert checkpoint["optimizer"]["state"]  # AdamW moments after one step
    modality = checkpoint["modality_registry"].modalities["images"]
    assert isinstance(modality, AstroPTModality)
    assert (modality.patch_size, modality.input_size) == (4, 48)
    assert checkpoint["model_args"]["modalities"][0] == modality


# ------------------------------------------------------------ data path


def _decoded_batch(path: Path) -> torch.Tensor:
    """An RGB image file as our (1, C, H, W) image batch in pixel units."""
    pixels = np.array(Image.open(path).convert("RGB"))
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float()


@pytest.mark.parametrize("name", sorted(make_golden.TOKEN_IMAGES))
def test_tokens_match_reference_preprocessing(reference, name):
    side, patch_size = make_golden.TOKEN_IMAGES[name]
    theirs = np.load(reference / f"{name}_tokens_fp32.npy")
    theirs_as_trained = np.load(reference / f"{name}_tokens.npy")
    assert theirs_as_trained.dtype == np.float16
    images = _decoded_batch(reference / f"{name}.png")
    ours, _, _ = images_to_tokens(images, patch_size=patch_size, order="spiral", transpose_hw=True)
    ours = ours[0].numpy()
    assert ours.shape == theirs.shape == ((side // patch_size) ** 2, patch_size**2 * 3)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOL)
    # They train on tokens rounded to float16; ours rounded the same way agree to
    # a float16 step (values near a rounding boundary may land either side).
    rounded = torch.from_numpy(ours).half().float().numpy()
    np.testing.assert_allclose(
        rounded, theirs_as_trained.astype(np.float32), rtol=2**-10, atol=1e-6
    )

    # Pixel scale does not matter to per-patch normalisation (beyond the 1e-8 epsilon).
    scaled, _, _ = images_to_tokens(images / 255.0, patch_size=patch_size, transpose_hw=True)
    np.testing.assert_allclose(scaled[0].numpy(), theirs, rtol=0, atol=1e-4)

    # The image is not symmetric, so the layout is really being tested.
    natural, _, _ = images_to_tokens(images, patch_size=patch_size, transpose_hw=False)
    assert np.abs(natural[0].numpy() - theirs).max() > 0.5


def test_spiral_order_matches_reference(reference):
    orders = json.loads((reference / "spiral.json").read_text())
    assert sorted(map(int, orders)) == make_golden.SPIRAL_SIDES
    for side, order in orders.items():
        assert spiral_order(int(side)).tolist() == order, f"{side}x{side} grid"


def test_data_pipeline_matches_reference_preprocessing(reference, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "galaxy.png").write_bytes((reference / "grid5.png").read_bytes())
    cfg = DataConfig(
        source="folder", path=str(folder), patch_size=8, order="spiral",
        transpose_hw=True, augment=False,
    )  # fmt: skip
    loader = make_loader(cfg, "train", batch_size=1, shuffle=False, augment=False)
    batch = next(iter(loader))
    theirs = np.load(reference / "grid5_tokens_fp32.npy")
    # Our pixels are scaled to [0, 1]; only the 1e-8 epsilon sees the scale.
    np.testing.assert_allclose(batch.tokens[0].numpy(), theirs, rtol=0, atol=1e-4)


# ------------------------------------------------- our model -> reference


def _export_source(reference: Path, name: str) -> GPT:
    if name == "roundtrip_aim":  # a model loaded from their checkpoint, written back
        return load_astropt_checkpoint(reference / "aim" / "ckpt.pt")
    return make_golden.fresh_model()


@pytest.mark.parametrize("name", make_golden.EXPORTS)
def test_exported_checkpoints_load_strictly_in_reference(reference, name, tmp_path):
    """Their ``load_astropt`` (strict) read our export of this model and computed our outputs.

    The reference read ``reference/NAME/ckpt.pt``; what we export today must be
    that checkpoint, so it would load the same way.
    """
    model = _export_source(reference, name)
    ours = read_astropt_checkpoint(export_astropt_checkpoint(model, tmp_path / name))
    theirs = read_astropt_checkpoint(reference / name)
    assert ours["model"].keys() == theirs["model"].keys()
    for key, tensor in theirs["model"].items():
        # Equal up to float rounding: fresh_model's random draws may differ in the last
        # bits on another CPU; a renamed or transposed tensor is off by far more.
        torch.testing.assert_close(ours["model"][key], tensor, rtol=1e-6, atol=1e-7, msg=key)
    assert ours["model_args"] == theirs["model_args"]
    assert ours["modality_registry"].modalities == theirs["modality_registry"].modalities
    assert ours["config"] == theirs["config"]
    # Their generate_embeddings is always the middle block.
    _assert_outputs_match(reference, name, model, layer="middle")
    if name == "roundtrip_aim":  # their weights come back unchanged
        original = strip_compile_prefixes(read_astropt_checkpoint(reference / "aim")["model"])
        assert original.keys() == ours["model"].keys()
        assert all(torch.equal(original[key], ours["model"][key]) for key in original)


# ------------------------------------------- without the reference package


@pytest.fixture
def small_model() -> GPT:
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, patch_size=4, n_chan=3)
    return make_golden.randomise(GPT(cfg), seed=0).eval()


def _outputs(model: GPT, seed: int = 0):
    x = torch.randn(2, model.config.block_size, model.config.patch_dim,
                    generator=torch.Generator().manual_seed(seed))  # fmt: skip
    model.eval()
    with torch.no_grad():
        return model(x)[0], model.embed(x, layer="middle")


def test_export_writes_astropt_class_names(small_model, tmp_path):
    path = export_astropt_checkpoint(small_model, tmp_path / "run")
    assert path == tmp_path / "run" / "ckpt.pt"
    # The pickle names AstroPT's classes, as their torch.load(weights_only=False) needs.
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    assert {"astropt.model.ModalityConfig", "astropt.model.ModalityRegistry"} <= unsafe
    checkpoint = read_astropt_checkpoint(path)
    names = set(checkpoint["model"])
    assert "transformer.wte.images.c_fc.weight" in names
    assert "transformer.wpe.images.wpe.weight" in names
    assert "transformer.h.1.attn.c_attn.weight" in names
    assert "lm_head.images.c_proj.weight" in names
    assert checkpoint["model_args"]["n_chan"] == 3
    assert checkpoint["modality_registry"].modalities["images"].input_size == 48


def test_export_then_load_is_identity(small_model, tmp_path):
    path = export_astropt_checkpoint(small_model, tmp_path / "ckpt.pt")
    loaded = load_astropt_checkpoint(path)
    for ours, theirs in zip(_outputs(small_model), _outputs(loaded)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # The data conventions are carried through the run config.
    assert loaded.config.transpose_hw is small_model.config.transpose_hw
    assert loaded.config.order == small_model.config.order


def test_loads_from_file_object_and_folder(small_model, tmp_path):
    export_astropt_checkpoint(small_model, tmp_path)
    buffer = io.BytesIO((tmp_path / "ckpt.pt").read_bytes())
    for source in (buffer, tmp_path, str(tmp_path / "ckpt.pt")):
        torch.testing.assert_close(_outputs(load_astropt_checkpoint(source))[0],
                                   _outputs(small_model)[0])  # fmt: skip


def _variant(small_model, tmp_path, change) -> Path:
    checkpoint = astropt_checkpoint_dict(small_model)
    change(checkpoint)
    return write_astropt_checkpoint(checkpoint, tmp_path / "variant.pt")


def test_compile_prefixes_are_stripped(small_model, tmp_path):
    def prefix(ck):
        ck["model"] = {f"_orig_mod.{k}": v for k, v in ck["model"].items()}

    loaded = load_astropt_checkpoint(_variant(small_model, tmp_path, prefix))
    torch.testing.assert_close(_outputs(loaded)[0], _outputs(small_model)[0], rtol=0, atol=0)


def test_later_astropt_names_load_too(small_model, tmp_path):
    renames = {"transformer.wte.": "encoders.", "transformer.wpe.": "embedders.",
               "lm_head.": "decoders."}  # fmt: skip

    def rename(ck):
        state = {}
        for key, value in ck["model"].items():
            for old, new in renames.items():
                key = key.replace(old, new) if key.startswith(old) else key
            state[key] = value
        ck["model"] = state

    loaded = load_astropt_checkpoint(_variant(small_model, tmp_path, rename))
    torch.testing.assert_close(_outputs(loaded)[0], _outputs(small_model)[0], rtol=0, atol=0)


def _spectra(ck):
    spectra = AstroPTModality("spectra", 16, 1, 16, False)
    ck["modality_registry"] = AstroPTModalityRegistry(
        [*ck["modality_registry"].modalities.values(), spectra]
    )


def _lora_weights(ck):
    ck["model"]["transformer.h.0.attn.c_attn.lora_A"] = torch.zeros(4, 32)
    ck["model"]["transformer.h.0.attn.c_attn.lora_B"] = torch.zeros(96, 4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda ck: ck["model_args"].update(backbone="llm", llm_model_name="smollm"), "LLM"),
        (_spectra, "modalities"),
        (lambda ck: ck["model_args"].update(lora_r=8), "LoRA"),
        (_lora_weights, "LoRA"),
        (lambda ck: ck["model"].pop("transformer.h.1.mlp.c_fc.weight"), "missing"),
        (lambda ck: ck["model"].update({"task_head.ln.weight": torch.ones(32)}), "task head"),
        (lambda ck: ck["model_args"].update(tokeniser="aion"), "tokeniser"),
        (lambda ck: ck["model"].update(
            {"transformer.wte.images.c_fc.weight": torch.zeros(128, 40)}), "shape"),
        (lambda ck: ck.pop("model"), "not an AstroPT checkpoint"),
    ],
)  # fmt: skip
def test_unsupported_variants_fail_clearly(small_model, tmp_path, change, message):
    path = _variant(small_model, tmp_path, change)
    with pytest.raises(ValueError, match=message):
        load_astropt_checkpoint(path)


def test_prefix_attention_loads_as_the_full_attention_it_ran(small_model, tmp_path, caplog):
    path = _variant(small_model, tmp_path, lambda ck: ck["model_args"].update(attn_type="prefix"))
    assert load_astropt_checkpoint(path).config.attn_type == "full"
    assert "full attention" in caplog.text


def test_run_config_sets_layout(small_model, tmp_path):
    path = _variant(
        small_model, tmp_path, lambda ck: ck["config"].update(use_hf=False, spiral=False)
    )
    cfg = load_astropt_checkpoint(path).config
    assert cfg.transpose_hw is False and cfg.order == "raster"
    assert load_astropt_checkpoint(path, transpose_hw=True).config.transpose_hw is True


class _Payload:
    """Unpickling this would run a shell command."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_unpickling_is_safe(small_model, tmp_path):
    target = tmp_path / "pwned"
    checkpoint = astropt_checkpoint_dict(small_model)
    checkpoint["config"]["payload"] = _Payload(target)
    path = tmp_path / "evil.pt"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="safe checkpoint reader"):
        load_astropt_checkpoint(path)
    assert not target.exists()


def test_numpy_scalars_are_read_as_numbers(small_model, tmp_path):
    checkpoint = astropt_checkpoint_dict(small_model)
    checkpoint["best_val_loss"] = np.float32(0.25)
    checkpoint["iter_num"] = np.int64(12)
    checkpoint["config"]["big_endian"] = np.array([3.5], dtype=">f8")[0]
    read = read_astropt_checkpoint(write_astropt_checkpoint(checkpoint, tmp_path / "n.pt"))
    assert (read["best_val_loss"], read["iter_num"], read["config"]["big_endian"]) == (
        0.25,
        12,
        3.5,
    )
    # Numpy arrays (their reconstruction runs numpy code) are not built.
    checkpoint["config"]["array"] = np.zeros(3)
    with pytest.raises(ValueError, match="safe checkpoint reader"):
        read_astropt_checkpoint(write_astropt_checkpoint(checkpoint, tmp_path / "a.pt"))


def test_object_dtype_scalars_are_refused():
    from astropt.interop import _numpy_scalar, _NumpyDTypeRecord

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _numpy_scalar(_NumpyDTypeRecord("O"), b"\0" * 8)
    assert _numpy_scalar(_NumpyDTypeRecord("f4"), np.float32(1.5).tobytes()) == 1.5


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "ckpt.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_astropt_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_astropt_checkpoint(tmp_path / "nowhere")


def test_export_refuses_models_astropt_cannot_run(tmp_path):
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=4, patch_size=2,
                          n_chan=1, objective="mae"))  # fmt: skip
    with pytest.raises(ValueError, match="objective"):
        export_astropt_checkpoint(model, tmp_path)
