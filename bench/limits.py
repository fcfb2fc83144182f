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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


def _clock(clock: str, device: torch.device):
    """``time.process_time`` for ``clock="cpu"`` on a CPU device, else ``time.perf_counter``."""
    return time.process_time if clock == "cpu" and device.type == "cpu" else time.perf_counter


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul(
    device: torch.device, dtype: torch.dtype, size: int, seconds: float, clock: str = "wall"
) -> float:
    """FLOP/s of ``size``-square matmuls, best of timed bursts, on ``clock``.

    ``clock="cpu"`` times the process's CPU seconds: on a shared machine that
    stays comparable with benchmarks timed the same way, where wall time
    counts other users' load against us.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    now = _clock(clock, device)
    for _ in range(2):
        a @ b
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        _sync(device)
        start = now()
        for _ in range(4):
            a @ b
        _sync(device)
        best = min(best, (now() - start) / 4)
        if time.perf_counter() > deadline:
            break
    return 2.0 * size**3 / max(best, 1e-9)


def _matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float, clock: str) -> float:
    """Best over a few square sizes: which size a CPU's kernels like best varies by dtype."""
    sizes = (4096, 8192) if device.type == "cuda" else (512, 1024, 2048)
    return max(measure_matmul(device, dtype, n, seconds, clock) for n in sizes)


def measure_copy_bandwidth(
    device: torch.device | str = "cpu", megabytes: int = 256, seconds: float = 0.5,
    clock: str = "wall",
) -> float:  # fmt: skip
    """Bytes per second of ``dst.copy_(src)`` over ``megabytes`` (read + write counted).

    The buffer is far larger than any cache, so this is the memory system's
    streaming rate, the ceiling of any pass that touches each byte once.
    """
    device = torch.device(device)
    n = megabytes * 2**20 // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    now = _clock(clock, device)
    dst.copy_(src)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        _sync(device)
        start = now()
        dst.copy_(src)
        _sync(device)
        best = min(best, now() - start)
        if time.perf_counter() > deadline:
            break
    return 2 * src.numel() * src.element_size() / max(best, 1e-9)


@dataclass
class Limits:
    """Measured ceilings of this machine at the current thread count."""

    device: str
    threads: int
    float32_flops: float  # FLOP/s
    bfloat16_flops: float  # FLOP/s
    copy_bytes: float  # bytes/s, read + write
    clock: str = "wall"

    @classmethod
    def measure(
        cls, device: torch.device | str = "cpu", seconds: float = 0.3, clock: str = "wall"
    ) -> Limits:
        """Measure now; ``clock``: ``"wall"`` or ``"cpu"``, as the benchmark times itself."""
        device = torch.device(device)
        return cls(
            device=str(device),
            threads=torch.get_num_threads(),
            float32_flops=_matmul_peak(device, torch.float32, seconds, clock),
            bfloat16_flops=_matmul_peak(device, torch.bfloat16, seconds, clock),
            copy_bytes=measure_copy_bandwidth(device, seconds=seconds, clock=clock),
            clock=clock,
        )

    def peak(self, dtype: str) -> float:
        return self.bfloat16_flops if dtype in ("bfloat16", "bf16") else self.float32_flops

    def describe(self) -> str:
        return (
            f"machine limits ({self.device}, {self.threads} thread(s), {self.clock} clock, "
            "measured now): "
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

    The benchmark table of docs/benchmarks.md is written from these files (``bench/report.py``),
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
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(Limits.measure(args.device, clock=args.clock).describe())


if __name__ == "__main__":
    main()
