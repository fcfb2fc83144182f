"""Benchmark: peak memory of an embedding export does not grow with the number of galaxies.

Each export runs in a fresh subprocess; its peak resident set size
(``getrusage`` ``ru_maxrss``) is read when it ends. Two sources:

* ``synthetic``: the built-in synthetic survey rendered on the fly (the real
  loader, decoding and exporter), small stamps so the renderer's cost stays
  bearable on a shared CPU (``--real-sizes``, default 1000 and 10000);
* ``stream``: the exporter fed batches of random normalised tokens with ids
  and a catalogue column, as fast as the model embeds them, so 10k and 100k
  galaxies (``--sizes``) take minutes: what the exporter itself holds
  (pending rows of one part, the manifest, the writer) is all that can grow.

An export keeps at most one part (``rows_per_part`` rows) in memory and
writes it atomically; so peak RSS is flat in the number of galaxies, and the
table shows the difference between the largest and the smallest export. At
``rows_per_part=16384`` (the default) a part of 64-wide float32 embeddings is
4 MiB: anything above a few MiB of growth would be a leak.

    python bench/export_memory.py [--sizes 10000 100000] [--real-sizes 1000 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from limits import save_result

ROOT = Path(__file__).resolve().parents[1]
BATCH = 256


class RandomBatches:
    """A loader stand-in: ``n`` galaxies of random normalised tokens, batch by batch, resumable."""

    def __init__(self, n: int, tokens: int, dim: int) -> None:
        self.n, self.tokens, self.dim = n, tokens, dim
        self.num_samples = n
        self.position = 0

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]

    def __iter__(self):
        from types import SimpleNamespace

        generator = torch.Generator().manual_seed(0)
        while self.position < self.n:
            size = min(BATCH, self.n - self.position)
            ids = list(range(self.position, self.position + size))
            tokens = torch.randn(size, self.tokens, self.dim, generator=generator)
            self.position += size
            yield SimpleNamespace(
                tokens=tokens, ids=ids, catalogue={"redshift": np.linspace(0, 1, size)}
            )


def child(kind: str, n: int, out: str) -> None:
    """One export; prints the peak RSS in MiB and the seconds it took."""
    sys.path.insert(0, str(ROOT))
    from astropt.data import DataConfig
    from astropt.embed import ModelEncoder, export_embeddings
    from astropt.export import export_loader
    from astropt.model import GPT, GPTConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=16, patch_size=8)).eval()
    start = time.perf_counter()
    if kind == "synthetic":
        data = DataConfig(
            source="synthetic", path="", image_size=32, patch_size=8, augment=False,
            synthetic_n=n, synthetic_val_fraction=0.0, synthetic_test_fraction=1.0,
        )  # fmt: skip
        export_embeddings(model, data, out, "test", batch_size=BATCH, device="cpu",
                          dtype="float32", progress=False)  # fmt: skip
    else:
        encoder = ModelEncoder(model, layer="final", device="cpu", dtype="float32")
        export_loader(encoder, lambda: RandomBatches(n, 16, 192), out, settings={"n": n},
                      batch_size=BATCH, progress=False)  # fmt: skip
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_mib": peak, "seconds": seconds}))


def measure(kind: str, n: int, folder: str) -> dict:
    out = os.path.join(folder, f"{kind}-{n}.parquet")
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(n), out]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    sys.path.insert(0, str(ROOT))
    from astropt.export import read_manifest

    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["rows"] == n, manifest
    return dict(result, kind=kind, n=n, parts=len(manifest["parts"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000, 100000])
    parser.add_argument("--real-sizes", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="astropt-bench-export-") as tmp:
        for kind, sizes in (("stream", args.sizes), ("synthetic", args.real_sizes)):
            for n in sizes:
                rows.append(measure(kind, n, tmp))
    print(f"{'source':<10}{'galaxies':>10}{'parts':>7}{'peak RSS MiB':>14}{'seconds':>9}")
    for row in rows:
        print(
            f"{row['kind']:<10}{row['n']:>10}{row['parts']:>7}{row['peak_mib']:>14.1f}"
            f"{row['seconds']:>9.1f}"
        )
    for kind in ("stream", "synthetic"):
        mine = [r for r in rows if r["kind"] == kind]
        for low, high in zip(mine, mine[1:]):
            growth = high["peak_mib"] - low["peak_mib"]
            print(
                f"peak RSS growth {kind}: {growth:+.1f} MiB from {low['n']} to {high['n']} "
                f"galaxies ({high['n'] / low['n']:.0f}x the rows; {low['parts']} -> "
                f"{high['parts']} parts; the first part's buffers are the only growth expected)"
            )
    save_result("export_memory", {"rows": rows})


if __name__ == "__main__":
    main()
