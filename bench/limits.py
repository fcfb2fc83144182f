"""The machine's measured limits, printed beside every benchmark's figure.

A ratio against another implementation says who is faster; the fraction of
what the hardware can do says how much is left. Every benchmark in ``bench/``
measures, in its own run and under its own thread count:

* dense matmul peak in float32 and bfloat16 (FLOP/s): the ceiling of
  compute-bound work (training steps, embedding, batched generation);
* memory bandwidth from one large copy (bytes read + bytes written per
  second): the ceiling of memory-bound work (tokenising, data loading,
  one-token decode steps that stream every weight).

Use::

    from limits import Limits
    limits = Limits.measure(device)
    print(limits.describe())
    print(limits.compute_fraction(flops_per_second, "bfloat16"))

``python bench/limits.py [--threads N]`` prints them alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float) -> float:
    """Best over a few square sizes: which size a CPU's kernels like best varies by dtype."""
    from astropt.training import measure_matmul_peak

    sizes = (4096, 8192) if device.type == "cuda" else (512, 1024, 2048)
    return max(measure_matmul_peak(device, dtype, size=n, seconds=seconds) for n in sizes)


def measure_copy_bandwidth(
    device: torch.device | str = "cpu", megabytes: int = 256, seconds: float = 0.5
) -> float:
    """Bytes per second of ``dst.copy_(src)`` over ``megabytes`` (read + write counted).

    The buffer is far larger than any cache, so this is the memory system's
    streaming rate, the ceiling of any pass that touches each byte once.
    """
    device = torch.device(device)
    n = megabytes * 2**20 // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    dst.copy_(src)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        sync()
        start = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return 2 * src.numel() * src.element_size() / best


@dataclass
class Limits:
    """Measured ceilings of this machine at the current thread count."""

    device: str
    threads: int
    float32_flops: float  # FLOP/s
    bfloat16_flops: float  # FLOP/s
    copy_bytes: float  # bytes/s, read + write

    @classmethod
    def measure(cls, device: torch.device | str = "cpu", seconds: float = 0.3) -> Limits:
        device = torch.device(device)
        return cls(
            device=str(device),
            threads=torch.get_num_threads(),
            float32_flops=_matmul_peak(device, torch.float32, seconds),
            bfloat16_flops=_matmul_peak(device, torch.bfloat16, seconds),
            copy_bytes=measure_copy_bandwidth(device, seconds=seconds),
        )

    def peak(self, dtype: str) -> float:
        return self.bfloat16_flops if dtype in ("bfloat16", "bf16") else self.float32_flops

    def describe(self) -> str:
        return (
            f"machine limits ({self.device}, {self.threads} thread(s), measured now): "
            f"matmul float32 {self.float32_flops / 1e9:.1f} GFLOP/s, bfloat16 "
            f"{self.bfloat16_flops / 1e9:.1f} GFLOP/s; copy bandwidth {self.copy_bytes / 1e9:.1f} GB/s"
        )

    def compute_fraction(self, flops_per_second: float, dtype: str) -> str:
        """``"12.3 GFLOP/s = 45% of the float32 matmul peak"``."""
        share = flops_per_second / self.peak(dtype)
        return (
            f"{flops_per_second / 1e9:.1f} GFLOP/s = {100 * share:.0f}% of the {dtype} matmul peak"
        )

    def bandwidth_fraction(self, bytes_per_second: float) -> str:
        """``"1.2 GB/s = 8% of the copy bandwidth"``."""
        share = bytes_per_second / self.copy_bytes
        return f"{bytes_per_second / 1e9:.2f} GB/s = {100 * share:.1f}% of the copy bandwidth"


def save_result(name: str, result: dict, folder: str | os.PathLike | None = None) -> Path | None:
    """Append ``result`` (JSON-able) as one line to ``bench/results/NAME.jsonl`` (or ``folder``).

    The README's benchmark table is written from these files (``bench/report.py``),
    so figures quoted there come from runs, never from typing.
    """
    folder = Path(
        folder or os.environ.get("ASTROPT_BENCH_RESULTS", Path(__file__).parent / "results")
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    record = dict(result, time=time.strftime("%Y-%m-%dT%H:%M:%S"), load=os.getloadavg()[0])
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    return path


def limits_record(limits: Limits) -> dict:
    return asdict(limits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(Limits.measure(args.device).describe())


if __name__ == "__main__":
    main()
