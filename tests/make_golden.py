"""Regenerate ``tests/golden/``: AstroPT 2.0.9's own outputs for the offline parity tests.

Usage: ``python tests/make_golden.py [--ref-dir DIR] [--out DIR]`` (default
``tests/golden``), from a checkout with our package installed.

The reference package shares our import name, so it is pip-installed into its
own folder (``tests/.astropt_ref/``, gitignored) and run by
``tests/astropt_ref_worker.py`` in a subprocess that cannot see our package
(DESIGN.md section 9). :func:`generate` writes, into one folder:

* the seeded inputs (``NAME_inputs.npy``) and two small RGB images
  (``grid5.png``, ``grid4.png``: 5x5 and 4x4 grids of 8-pixel patches);
* two checkpoints built and saved by the reference the way its training script
  saves them (``aim/ckpt.pt`` with ``torch.compile`` key prefixes and
  ``affine/ckpt.pt``, each after one AdamW step) and its forward predictions,
  training loss and middle-layer embeddings on the inputs;
* its tokens of the images (layout, spiral order, normalisation) and its spiral
  order for grids of side 1 to 9 (``spiral.json``);
* two checkpoints written by *our* exporter (``roundtrip_aim``: their ``aim``
  loaded by us and written back; ``fresh_affine_bias``: a model of ours with
  biases, seeded by :func:`fresh_model`) and the outputs of the reference
  loading them with its own ``load_astropt``.

``tests/test_interop.py`` compares our code with this folder on every run, and
with a fresh run of this function whenever pip can install the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
GOLDEN_DIR = HERE / "golden"
REF_VERSION = "2.0.9"
REF_DIR = HERE / ".astropt_ref" / f"astropt-{REF_VERSION}"
WORKER = HERE / "astropt_ref_worker.py"

# Two reference shapes, small enough to commit: the AIM tokeniser on 4x4 RGB
# patches, saved from a torch.compile wrapper ("_orig_mod." keys), 3 blocks (so
# the middle block is not the last); the affine tokeniser on single-band
# patches, 4 blocks, fed a sequence shorter than its block.
MODELS = {
    "aim": dict(n_layer=3, n_head=2, n_embd=8, block_size=16, tokeniser="aim",
                patch_size=4, n_chan=3, compile=True, batch=2, seq=16),
    "affine": dict(n_layer=4, n_head=2, n_embd=8, block_size=20, tokeniser="affine",
                   patch_size=4, n_chan=1, compile=False, batch=3, seq=16),
}  # fmt: skip
# Images the reference tokenises: name -> (side in pixels, patch size).
TOKEN_IMAGES = {"grid5": (40, 8), "grid4": (32, 8)}
SPIRAL_SIDES = list(range(1, 10))
# Our exports that the reference loads.
EXPORTS = ("roundtrip_aim", "fresh_affine_bias")
INPUT_SEED = 1234


def install_reference(ref_dir: Path = REF_DIR) -> str:
    """pip-install astropt==2.0.9 and loralib (no dependencies) into ``ref_dir`` once.

    Returns ``""`` on success, else pip's reason (the tests skip the live
    comparison with it).
    """
    if (ref_dir / "astropt" / "model.py").is_file() and (ref_dir / "loralib").is_dir():
        return ""
    staging = ref_dir.with_name(f"{ref_dir.name}.partial-{os.getpid()}")
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
        return f"cannot pip-install the reference astropt=={REF_VERSION}: {reason}"
    try:
        os.replace(staging, ref_dir)
    except OSError:  # another run installed it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
        if not (ref_dir / "astropt" / "model.py").is_file():
            raise
    return ""


def run_worker(ref_dir: Path, spec: dict, workdir: Path) -> None:
    """Run the reference on ``spec`` (see ``astropt_ref_worker.py``); RuntimeError on failure."""
    workdir.mkdir(parents=True, exist_ok=True)
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
        raise RuntimeError(
            f"reference worker failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )


def asymmetric_image(side: int) -> np.ndarray:
    """A smooth ``(side, side, 3)`` uint8 image with no symmetry (a transpose or flip changes it)."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float64) * (80 / side)
    red = 128 + 90 * np.sin(x / 13.0 + 0.4) * (0.3 + y / 80)
    green = 30 + 2.2 * x + 0.4 * y
    blue = 210 - 1.6 * y + 25 * np.cos(x * y / 700.0)
    return np.clip(np.stack([red, green, blue], axis=-1), 0, 255).astype(np.uint8)


def randomise(model, seed: int):
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


def fresh_model():
    """Our model with biases, the affine tokeniser and 2 channels, seeded weights."""
    from astropt.model import GPT, GPTConfig

    config = GPTConfig(
        n_layer=2, n_head=2, n_embd=8, block_size=12, tokeniser="affine", bias=True,
        patch_size=4, n_chan=2,
    )  # fmt: skip
    return randomise(GPT(config), seed=3).eval()


def generate(ref_dir: Path, out: Path) -> None:
    """Write everything listed in the module docstring into ``out`` (see there)."""
    from astropt.interop import export_astropt_checkpoint, load_astropt_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}-work"
    rng = np.random.default_rng(INPUT_SEED)
    build = []
    for name, shape in MODELS.items():
        inputs = rng.standard_normal(
            (shape["batch"], shape["seq"], shape["patch_size"] ** 2 * shape["n_chan"])
        ).astype(np.float32)
        np.save(out / f"{name}_inputs.npy", inputs)
        build.append(
            dict(name=name, seed=len(build), inputs=str(out / f"{name}_inputs.npy"), **shape)
        )
    tokens = []
    for name, (side, patch_size) in TOKEN_IMAGES.items():
        Image.fromarray(asymmetric_image(side)).save(out / f"{name}.png")
        tokens.append({"name": name, "image": str(out / f"{name}.png"), "patch_size": patch_size})
    spec = {"out": str(out), "build": build, "tokens": tokens, "spiral": SPIRAL_SIDES}
    run_worker(ref_dir, spec, work)

    models = {
        "roundtrip_aim": load_astropt_checkpoint(out / "aim" / "ckpt.pt"),
        "fresh_affine_bias": fresh_model(),
    }
    jobs = []
    for name in EXPORTS:
        model = models[name]
        export_astropt_checkpoint(model, out / name)
        inputs = rng.standard_normal((2, model.config.block_size, model.config.patch_dim))
        np.save(out / f"{name}_inputs.npy", inputs.astype(np.float32))
        jobs.append(
            {"name": name, "ckpt_dir": str(out / name), "inputs": str(out / f"{name}_inputs.npy")}
        )
    run_worker(ref_dir, {"out": str(out), "load": jobs}, work)
    shutil.rmtree(work)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref-dir", type=Path, default=REF_DIR, help="reference install folder")
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR, help="folder to (re)write")
    args = parser.parse_args(argv)
    reason = install_reference(args.ref_dir)
    if reason:
        sys.exit(reason)
    torch.set_num_threads(1)
    started = time.time()
    generate(args.ref_dir.resolve(), args.out.resolve())
    # The folder holds other golden files too (the simulator's): count only these.
    written = [p for p in args.out.rglob("*") if p.is_file() and p.stat().st_mtime >= started]
    total = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} files, {total / 1024:.0f} KiB, to {args.out}")


if __name__ == "__main__":
    main()
