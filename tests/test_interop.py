"""AstroPT checkpoints: our loader against the reference package itself.

The reference ``astropt`` 2.0.9 shares our import name, so it is installed
into a gitignored folder (``tests/.astropt_ref/``, once; from PyPI) and run in
a subprocess (``tests/astropt_ref_worker.py``) that cannot see our package
(DESIGN.md section 9). Everything it computes comes back through files. Tests
that need it skip, saying why, when pip cannot install it. The rest (safe
unpickling, unsupported variants, name mapping) run without it.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from astropt.interop import (
    AstroPTModality,
    AstroPTModalityRegistry,
    astropt_checkpoint_dict,
    export_astropt_checkpoint,
    load_astropt_checkpoint,
    read_astropt_checkpoint,
    write_astropt_checkpoint,
)
from astropt.model import GPT, GPTConfig
from astropt.tokens import images_to_tokens

HERE = Path(__file__).resolve().parent
REF_VERSION = "2.0.9"
REF_DIR = HERE / ".astropt_ref" / f"astropt-{REF_VERSION}"
WORKER = HERE / "astropt_ref_worker.py"
TOL = 1e-5

# Two reference shapes: the AIM tokeniser on 16x16 RGB patches, saved from a
# torch.compile wrapper ("_orig_mod." keys); the affine tokeniser on 8x8
# single-band patches, fed a sequence shorter than its block.
SHAPES = {
    "aim": dict(n_layer=3, n_head=4, n_embd=64, block_size=64, tokeniser="aim",
                patch_size=16, n_chan=3, compile=True, batch=2, seq=64),
    "affine": dict(n_layer=4, n_head=4, n_embd=128, block_size=100, tokeniser="affine",
                   patch_size=8, n_chan=1, compile=False, batch=3, seq=81),
}  # fmt: skip
IMAGE_SIDE = 80  # 5x5 grid of 16-pixel patches


# ---------------------------------------------------------------- reference


_INSTALL_FAILURE: list[str] = []  # remembered so one session asks pip only once


def _install_reference() -> Path:
    """pip-install astropt==2.0.9 (no dependencies) into tests/.astropt_ref once."""
    if _INSTALL_FAILURE:
        pytest.skip(_INSTALL_FAILURE[0])
    if (REF_DIR / "astropt" / "model.py").is_file() and (REF_DIR / "loralib").is_dir():
        return REF_DIR
    staging = REF_DIR.with_name(f"{REF_DIR.name}.partial-{os.getpid()}")
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--timeout", "30", "--retries", "1", "--target", str(staging),
        f"astropt=={REF_VERSION}", "loralib",
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        reason = str(err)
    else:
        reason = ((done.stderr or done.stdout).strip().splitlines() or ["pip failed"])[-1]
        if done.returncode == 0:
            reason = ""
    if reason:
        shutil.rmtree(staging, ignore_errors=True)
        _INSTALL_FAILURE.append(
            f"cannot pip-install the reference astropt=={REF_VERSION}: {reason}"
        )
        pytest.skip(_INSTALL_FAILURE[0])
    try:
        os.replace(staging, REF_DIR)
    except OSError:  # another run installed it meanwhile
        if not (REF_DIR / "astropt" / "model.py").is_file():
            raise
    return REF_DIR


def _run_worker(ref_dir: Path, spec: dict, workdir: Path) -> None:
    spec_path = workdir / f"spec-{len(list(workdir.glob('spec-*')))}.json"
    spec_path.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(WORKER), str(ref_dir), str(spec_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=workdir,
    )
    if done.returncode != 0:
        pytest.fail(f"reference worker failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def _write_test_jpeg(path: Path) -> np.ndarray:
    """A smooth RGB image with no symmetry (a transpose or flip changes it); returns the decoded pixels."""
    y, x = np.mgrid[0:IMAGE_SIDE, 0:IMAGE_SIDE].astype(np.float64)
    red = 128 + 90 * np.sin(x / 13.0 + 0.4) * (0.3 + y / IMAGE_SIDE)
    green = 30 + 2.2 * x + 0.4 * y
    blue = 210 - 1.6 * y + 25 * np.cos(x * y / 700.0)
    pixels = np.clip(np.stack([red, green, blue], axis=-1), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    return np.array(Image.open(path))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Run the reference once: two checkpoints, their outputs, their tokens of a JPEG."""
    ref_dir = _install_reference()
    work = tmp_path_factory.mktemp("astropt_ref")
    out = work / "out"
    rng = np.random.default_rng(1234)
    build = []
    for name, shape in SHAPES.items():
        inputs = rng.standard_normal(
            (shape["batch"], shape["seq"], shape["patch_size"] ** 2 * shape["n_chan"])
        ).astype(np.float32)
        np.save(work / f"{name}_inputs.npy", inputs)
        build.append(
            dict(name=name, seed=len(build), inputs=str(work / f"{name}_inputs.npy"), **shape)
        )
    jpeg = work / "galaxy.jpg"
    pixels = _write_test_jpeg(jpeg)
    spec = {
        "out": str(out),
        "build": build,
        "tokens": [{"name": "jpeg", "image": str(jpeg), "patch_size": 16}],
    }
    _run_worker(ref_dir, spec, work)
    return {"dir": ref_dir, "work": work, "out": out, "jpeg": jpeg, "pixels": pixels}


def _ours(model: GPT, inputs: np.ndarray, layer=None) -> tuple[np.ndarray, np.ndarray]:
    """Next-patch predictions and (default-layer, mean-pooled) embeddings."""
    model.eval()
    x = torch.from_numpy(inputs)
    with torch.no_grad():
        predictions, _ = model(x)
        embeddings = model.embed(x, layer=layer, pool="mean")
    return predictions.numpy(), embeddings.numpy()


# ------------------------------------------------- reference -> our model


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_loaded_checkpoint_matches_reference(reference, name):
    shape = SHAPES[name]
    ckpt = reference["out"] / name / "ckpt.pt"
    model = load_astropt_checkpoint(ckpt)
    cfg = model.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (
        shape["n_layer"], shape["n_head"], shape["n_embd"], shape["block_size"],
    )  # fmt: skip
    assert (cfg.tokeniser, cfg.patch_size, cfg.n_chan) == (
        shape["tokeniser"], shape["patch_size"], shape["n_chan"],
    )  # fmt: skip
    # AstroPT's data conventions travel with the model.
    assert cfg.transpose_hw and cfg.order == "spiral" and cfg.embed_layer == "middle"

    inputs = np.load(reference["work"] / f"{name}_inputs.npy")
    predictions, embeddings = _ours(model, inputs)
    their_predictions = np.load(reference["out"] / f"{name}_preds.npy")
    their_embeddings = np.load(reference["out"] / f"{name}_emb.npy")
    assert predictions.shape == their_predictions.shape
    np.testing.assert_allclose(predictions, their_predictions, rtol=0, atol=TOL)
    np.testing.assert_allclose(embeddings, their_embeddings, rtol=0, atol=TOL)

    # The comparison can fail: the final-LayerNorm embedding is a different vector.
    with torch.no_grad():
        final = model.embed(torch.from_numpy(inputs), layer="final").numpy()
    assert np.abs(final - their_embeddings).max() > 100 * TOL


def test_reference_checkpoint_is_what_their_training_script_writes(reference):
    """The fixture really exercises the compile prefix, numpy scalars and optimiser state."""
    checkpoint = read_astropt_checkpoint(reference["out"] / "aim")
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
    assert (modality.patch_size, modality.input_size) == (16, 768)
    assert checkpoint["model_args"]["modalities"][0] == modality


# ------------------------------------------------------------ data path


def _decoded_batch(pixels: np.ndarray) -> torch.Tensor:
    """Decoded (H, W, C) uint8 pixels as our (1, C, H, W) image batch in pixel units."""
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float()


def test_tokens_match_reference_preprocessing(reference):
    theirs = np.load(reference["out"] / "jpeg_tokens_fp32.npy")
    theirs_as_trained = np.load(reference["out"] / "jpeg_tokens.npy")
    images = _decoded_batch(reference["pixels"])
    ours, _, _ = images_to_tokens(images, patch_size=16, order="spiral", transpose_hw=True)
    ours = ours[0].numpy()
    assert ours.shape == theirs.shape == ((IMAGE_SIDE // 16) ** 2, 16 * 16 * 3)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOL)
    # They train on tokens rounded to float16; ours rounded the same way agree to
    # a float16 step (values near a rounding boundary may land either side).
    rounded = torch.from_numpy(ours).half().float().numpy()
    np.testing.assert_allclose(rounded, theirs_as_trained, rtol=2**-10, atol=1e-6)

    # Pixel scale does not matter to per-patch normalisation (beyond the 1e-8 epsilon).
    scaled, _, _ = images_to_tokens(images / 255.0, patch_size=16, transpose_hw=True)
    np.testing.assert_allclose(scaled[0].numpy(), theirs, rtol=0, atol=1e-4)

    # The image is not symmetric, so the layout is really being tested.
    natural, _, _ = images_to_tokens(images, patch_size=16, transpose_hw=False)
    assert np.abs(natural[0].numpy() - theirs).max() > 0.5


def _data_module():
    try:
        from astropt import data
    except ImportError:
        return None
    if not (hasattr(data, "DataConfig") and hasattr(data, "make_loader")):
        return None
    return data


def test_data_pipeline_matches_reference_preprocessing(reference, tmp_path):
    data = _data_module()
    if data is None:
        pytest.skip("astropt.data (DataConfig, make_loader) has not landed yet")
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "galaxy.jpg").write_bytes(reference["jpeg"].read_bytes())
    cfg = data.DataConfig(
        source="folder", path=str(folder), patch_size=16, order="spiral",
        transpose_hw=True, augment=False,
    )  # fmt: skip
    loader = data.make_loader(cfg, "train", batch_size=1, shuffle=False, augment=False)
    batch = next(iter(loader))
    theirs = np.load(reference["out"] / "jpeg_tokens_fp32.npy")
    # Our JPEG pixels are scaled to [0, 1]; only the 1e-8 epsilon sees the scale.
    np.testing.assert_allclose(batch.tokens[0].numpy(), theirs, rtol=0, atol=1e-4)


# ------------------------------------------------- our model -> reference


def _randomise(model: GPT, seed: int) -> GPT:
    """Random values in every tensor (biases, LayerNorm gains too) so no name swap goes unseen."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            noise = torch.randn(tensor.shape, generator=generator)
            if "norm" in name and name.endswith(".weight"):
                tensor.copy_(1 + 0.3 * noise)
            else:
                tensor.copy_(0.05 * noise)
    return model


def test_exported_checkpoints_load_strictly_in_reference(reference, tmp_path):
    rng = np.random.default_rng(7)
    jobs, expected = [], {}
    # 1. A model loaded from their checkpoint, written back.
    loaded = load_astropt_checkpoint(reference["out"] / "aim" / "ckpt.pt")
    # 2. One of ours with biases, the affine tokeniser and 2 channels.
    fresh_cfg = GPTConfig(
        n_layer=2, n_head=2, n_embd=64, block_size=16, tokeniser="affine", bias=True,
        patch_size=4, n_chan=2,
    )  # fmt: skip
    fresh = _randomise(GPT(fresh_cfg), seed=3)
    for name, model in (("roundtrip_aim", loaded), ("fresh_affine_bias", fresh)):
        export_astropt_checkpoint(model, tmp_path / name)
        inputs = rng.standard_normal((2, model.config.block_size, model.config.patch_dim))
        inputs = inputs.astype(np.float32)
        np.save(tmp_path / f"{name}_inputs.npy", inputs)
        # Their generate_embeddings is always the middle block.
        expected[name] = _ours(model, inputs, layer="middle")
        jobs.append(
            {"name": name, "ckpt_dir": str(tmp_path / name),
             "inputs": str(tmp_path / f"{name}_inputs.npy")}
        )  # fmt: skip
    out = tmp_path / "out"
    _run_worker(reference["dir"], {"out": str(out), "load": jobs}, tmp_path)
    for name, (predictions, embeddings) in expected.items():
        np.testing.assert_allclose(
            np.load(out / f"{name}_preds.npy"), predictions, rtol=0, atol=TOL
        )
        np.testing.assert_allclose(np.load(out / f"{name}_emb.npy"), embeddings, rtol=0, atol=TOL)


# ------------------------------------------- without the reference package


@pytest.fixture
def small_model() -> GPT:
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, patch_size=4, n_chan=3)
    return _randomise(GPT(cfg), seed=0).eval()


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
