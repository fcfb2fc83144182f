"""Runs the reference ``astropt`` package (2.0.9) for the equivalence tests.

Usage: ``python astropt_ref_worker.py REF_DIR SPEC_JSON``. ``REF_DIR`` holds the
reference package (``pip install --no-deps --target REF_DIR astropt==2.0.9
loralib``); it shares our import name, so this script puts it first on
``sys.path`` and removes our repository from it (DESIGN.md section 9), then
checks which ``astropt`` it got. Tensors come in and go out as ``.npy`` files;
checkpoints are written the way AstroPT's ``scripts/train.py`` writes them.

SPEC_JSON: ``{"out": DIR, "build": [...], "tokens": [...], "spiral": [...],
"load": [...]}``:

* build: ``{"name", "seed", "n_layer", "n_head", "n_embd", "block_size",
  "tokeniser", "patch_size", "n_chan", "compile", "inputs"}``: build their GPT
  with random weights, take one AdamW step (so the optimiser state is real),
  save ``DIR/NAME/ckpt.pt``, then run the forward pass, the training loss and
  ``generate_embeddings`` on ``inputs`` (``(B, T, patch values)`` float32):
  ``DIR/NAME_preds.npy``, ``DIR/NAME_loss.npy`` (their train script's split:
  inputs ``0..T-2``, targets ``1..T-1``) and ``DIR/NAME_emb.npy``;
* tokens: ``{"name", "image", "patch_size"}``: their preprocessing of an image
  file (``np.array(PIL image).swapaxes(0, 2)``, ``process_galaxy`` with spiral
  order and their train script's per-patch normalisation):
  ``DIR/NAME_tokens.npy`` (as trained: float16) and ``DIR/NAME_tokens_fp32.npy``;
* spiral: grid sides ``n``: their ``spiralise`` applied to the raster indices
  ``0..n*n-1`` (the raster index of each sequence position), all in
  ``DIR/spiral.json`` as ``{"n": [...]}``;
* load: ``{"name", "ckpt_dir", "inputs"}``: load a checkpoint with their
  ``model_utils.load_astropt`` (strict ``load_state_dict``), then as build.
"""

import json
import os
import sys
import types

REF_DIR = os.path.abspath(sys.argv[1])
_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
# Our package must not be importable here: drop the repository, this folder and
# the working directory ('') from the search path, and put the reference first.
sys.path[:] = [REF_DIR] + [
    p for p in sys.path if p and os.path.abspath(p) not in (_REPO, _HERE, REF_DIR)
]

# Their local_datasets imports torchvision.io at module level but the functions
# used here never touch it; a stub keeps torchvision out of the test environment.
try:
    import torchvision  # noqa: F401
except ImportError:
    _tv = types.ModuleType("torchvision")
    _tv.io = types.ModuleType("torchvision.io")
    sys.modules["torchvision"] = _tv
    sys.modules["torchvision.io"] = _tv.io

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import astropt  # noqa: E402

if not os.path.abspath(astropt.__file__).startswith(REF_DIR + os.sep):
    sys.exit(f"imported the wrong astropt: {astropt.__file__} (expected under {REF_DIR})")

from astropt import _version, local_datasets, model_utils  # noqa: E402
from astropt import model as ref_model  # noqa: E402

GalaxyImageDataset = local_datasets.GalaxyImageDataset
GPT, GPTConfig = ref_model.GPT, ref_model.GPTConfig
ModalityConfig, ModalityRegistry = ref_model.ModalityConfig, ref_model.ModalityRegistry
load_astropt = model_utils.load_astropt


def their_normalise(x, use_hf=True, half=True):
    """The per-patch normalisation of AstroPT's train script (``normalise``)."""
    if use_hf:
        x = torch.from_numpy(x).to(torch.float32)
    std, mean = torch.std_mean(x, dim=1, keepdim=True)
    x_norm = (x - mean) / (std + 1e-8)
    return x_norm.to(torch.float16) if half else x_norm


def image_registry(patch_size, n_chan):
    modalities = [
        ModalityConfig(
            name="images",
            input_size=patch_size * patch_size * n_chan,
            patch_size=patch_size,
            loss_weight=1.0,
            embed_pos=True,
            pos_input_size=1,
        )
    ]
    return modalities, ModalityRegistry(modalities)


def run_model(model, inputs_path, out, name):
    x = torch.from_numpy(np.load(inputs_path))
    batch, seq, _ = x.shape
    inputs = {
        "images": x,
        "images_positions": torch.arange(seq, dtype=torch.long).expand(batch, seq),
    }
    model.eval()
    with torch.no_grad():
        outputs, _ = model(inputs)
        embeddings = model.generate_embeddings(inputs)
        split = GalaxyImageDataset.process_modes(inputs, model.modality_registry, "cpu")
        _, loss = model(split["X"], targets=split["Y"])
    np.save(os.path.join(out, f"{name}_preds.npy"), outputs["images"].numpy())
    np.save(os.path.join(out, f"{name}_emb.npy"), embeddings["images"].numpy())
    np.save(os.path.join(out, f"{name}_loss.npy"), loss.numpy())


def build(job, out):
    torch.manual_seed(job["seed"])
    modalities, registry = image_registry(job["patch_size"], job["n_chan"])
    # model_args exactly as scripts/train.py builds them.
    model_args = dict(
        n_layer=job["n_layer"],
        n_head=job["n_head"],
        n_embd=job["n_embd"],
        n_chan=job["n_chan"],
        block_size=job["block_size"],
        dropout=0.0,
        modalities=modalities,
        attn_type="causal",
        tokeniser=job["tokeniser"],
    )
    model = GPT(GPTConfig(**model_args), registry, master_process=False)
    model.master_process = False
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cpu")
    seq = job["block_size"]
    batch = torch.randn(2, seq, job["patch_size"] ** 2 * job["n_chan"])
    positions = torch.arange(seq, dtype=torch.long).expand(2, seq)
    split = GalaxyImageDataset.process_modes(
        {"images": batch, "images_positions": positions}, registry, "cpu"
    )
    _, loss = model(split["X"], targets=split["Y"])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    # LayerNorm gains start at exactly 1, where swapping two of them goes unseen:
    # spread them (all 1-D parameters here, biases being off).
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:
                parameter.mul_(1 + 0.3 * torch.randn_like(parameter))
    # The train script's config: every int/float/bool/str setting.
    config = {
        "out_dir": f"logs/{job['name']}",
        "eval_interval": 1000,
        "init_from": "scratch",
        "use_hf": True,
        "stream_hf_dataset": True,
        "gradient_accumulation_steps": 5,
        "batch_size": 8,
        "spiral": True,
        "block_size": job["block_size"],
        "image_size": int(job["block_size"] ** 0.5) * job["patch_size"],
        "n_layer": job["n_layer"],
        "n_head": job["n_head"],
        "n_embd": job["n_embd"],
        "n_chan": job["n_chan"],
        "dropout": 0.0,
        "bias": False,
        "tokeniser": job["tokeniser"],
        "learning_rate": 6e-4,
        "lr_decay_iters": 27000 * 1.1,
        "attn_type": "causal",
        "dtype": "float32",
        "compile": job["compile"],
    }
    raw_model = model
    if job["compile"]:
        # As in their script (no DDP): raw_model is the compiled wrapper, whose
        # state_dict keys carry "_orig_mod.". Compilation itself is lazy.
        raw_model = torch.compile(model)
    # Their best_val_loss is np.mean over 0-d tensors: a numpy float32.
    losses = {"val": {"dummy": torch.zeros(4).mean() + 0.5}}
    best_val_loss = np.mean(list(losses["val"].values()))
    checkpoint = {
        "model": raw_model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_args": model_args,
        "iter_num": 1000,
        "best_val_loss": best_val_loss,
        "config": config,
        "modality_registry": registry,
    }
    os.makedirs(os.path.join(out, job["name"]), exist_ok=True)
    torch.save(checkpoint, os.path.join(out, job["name"], "ckpt.pt"))
    run_model(model, job["inputs"], out, job["name"])


def tokens(job, out):
    _, registry = image_registry(job["patch_size"], 3)
    for half, suffix in ((True, ""), (False, "_fp32")):
        dataset = GalaxyImageDataset(
            paths=None,
            spiral=True,
            transform={"images": lambda x, half=half: their_normalise(x, True, half)},
            modality_registry=registry,
        )
        # process_galaxy_wrapper of their train script, on a decoded PIL image.
        galaxy = Image.open(job["image"]).convert("RGB")
        patches = dataset.process_galaxy(np.array(galaxy).swapaxes(0, 2))
        if not half:
            patches = patches.to(torch.float)
        np.save(os.path.join(out, f"{job['name']}_tokens{suffix}.npy"), patches.numpy())


def spiral(sides, out):
    _, registry = image_registry(1, 1)
    dataset = GalaxyImageDataset(paths=None, spiral=True, modality_registry=registry)
    orders = {str(n): dataset.spiralise(np.arange(n * n)).tolist() for n in sides}
    with open(os.path.join(out, "spiral.json"), "w") as handle:
        json.dump(orders, handle)


def load(job, out):
    model = load_astropt(repo_id=None, path=job["ckpt_dir"].rstrip("/") + "/")
    run_model(model, job["inputs"], out, job["name"])


def main():
    with open(sys.argv[2]) as handle:
        spec = json.load(handle)
    out = spec["out"]
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    for job in spec.get("build", []):
        build(job, out)
    for job in spec.get("tokens", []):
        tokens(job, out)
    if spec.get("spiral"):
        spiral(spec["spiral"], out)
    for job in spec.get("load", []):
        load(job, out)
    with open(os.path.join(out, "worker.json"), "w") as handle:
        versions = {"astropt": _version.__version__, "torch": torch.__version__}
        json.dump({**versions, "numpy": np.__version__}, handle, indent=1)


if __name__ == "__main__":
    main()
