"""Benchmark: build and query a similarity index at 100k and 1M synthetic vectors.

For each size a synthetic export (one parquet file of ``--dim``-wide float32
vectors: a mixture of 2,000 Gaussian clusters, like embeddings that group
galaxies, plus isotropic noise) is written once; then each index kind
(``exact``: faiss ``IndexFlatIP``; ``hnsw``; ``ivf``; see
:mod:`astropt.search.index`) is built and queried in a fresh subprocess through
the library's own :func:`build_index` / :func:`open_index`, which report:

* build: seconds and rows/s (both passes over the export, from disk);
* query latency: median and 95th percentile of single queries (batch 1, ms);
* throughput: queries/s of one batch of ``--queries`` queries;
* memory: the child's peak RSS minus its RSS after imports (MiB), and the
  index's size on disk;
* recall@10 of the approximate kinds against the exact answer (faiss exact
  is the reference), on the same queries: export rows plus small noise.

Timed in CPU seconds of the process (``time.process_time``) on ``--threads``
faiss threads (default 1): on the shared 2-core machine other users' load then
does not inflate the figures, and on one thread CPU time is the time a query
takes on an idle core. ``--dim``
defaults to 256, the width of the quickstart model's ``middle+final`` embeddings.

    python bench/search.py [--sizes 100000 1000000] [--dim 256] [--threads 1] [--kinds exact ivf hnsw]
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
from limits import save_result

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("exact", "ivf", "hnsw")
K = 10


def _rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_export(path: Path, n: int, dim: int, seed: int = 0) -> None:
    """``n`` clustered vectors as a plain parquet export, written in slices."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2000, dim)).astype(np.float32)
    writer = None
    for start in range(0, n, 65536):
        rows = min(65536, n - start)
        x = centres[rng.integers(0, len(centres), rows)] + 0.6 * rng.normal(
            size=(rows, dim)
        ).astype(np.float32)
        flat = pa.array(x.astype(np.float32).reshape(-1), type=pa.float32())
        table = pa.table(
            {
                "id": pa.array(np.arange(start, start + rows, dtype=np.int64)),
                "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
            }
        )
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def child(export: str, kind: str, queries_file: str, out_file: str, threads: int) -> None:
    """Build and query one index kind; print a JSON line of figures."""
    sys.path.insert(0, str(ROOT))
    from astropt.search.index import build_index, open_index, set_threads

    set_threads(threads)
    baseline = _rss_mib()
    folder = Path(out_file).with_suffix(".index")
    clock = time.process_time if threads == 1 else time.perf_counter
    start = clock()
    build_index(export, kind=kind, out=folder)
    build = clock() - start
    opened = open_index(export, folder)
    raw = np.load(queries_file)
    queries = opened.transform(raw)
    single = []
    for row in queries[:200]:
        tick = clock()
        opened.search_vectors(row[None], K)
        single.append(clock() - tick)
    tick = clock()
    positions, _ = opened.search_vectors(queries, K)
    batch = clock() - tick
    np.save(out_file, positions)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(
        json.dumps(
            {
                "kind": kind,
                "rows": opened.rows,
                "clock": "cpu" if threads == 1 else "wall",
                "build_s": build,
                "build_rows_per_s": opened.rows / build,
                "query_ms_median": 1000 * float(np.median(single)),
                "query_ms_p95": 1000 * float(np.quantile(single, 0.95)),
                "batch_queries_per_s": len(queries) / batch,
                "peak_mib": peak,
                "index_mib": peak - baseline,
                "disk_mib": size / 2**20,
                "settings": opened.record["index"],
            }
        )
    )


def run_size(
    n: int, dim: int, n_queries: int, threads: int, folder: Path, kinds=KINDS
) -> list[dict]:
    export = folder / f"synthetic-{n}.parquet"
    write_export(export, n, dim)
    rng = np.random.default_rng(1)
    from astropt.search.index import iter_vectors

    wanted = np.sort(rng.choice(n, n_queries, replace=False))
    picked = []
    for positions, vectors in iter_vectors(export):
        hit = np.isin(positions, wanted)
        picked.append(vectors[hit])
    queries = np.concatenate(picked)
    queries = queries + 0.3 * rng.normal(size=queries.shape).astype(np.float32)
    queries_file = folder / f"queries-{n}.npy"
    np.save(queries_file, queries.astype(np.float32))
    rows, answers = [], {}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    for kind in ("exact", *(k for k in kinds if k != "exact")):  # exact: the reference
        out_file = folder / f"{kind}-{n}.npy"
        command = [sys.executable, __file__, "--child", str(export), kind, str(queries_file),
                   str(out_file), str(threads)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{kind} at {n} rows failed:\n{done.stderr[-2000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        answers[kind] = np.load(out_file)
        rows.append(row)
        print(
            f"{n:>8} {kind:>5}: build {row['build_s']:.1f} s ({row['build_rows_per_s']:.0f} rows/s), "
            f"query {row['query_ms_median']:.2f} ms (p95 {row['query_ms_p95']:.2f}), "
            f"{row['batch_queries_per_s']:.0f} queries/s batched, "
            f"+{row['index_mib']:.0f} MiB RSS, {row['disk_mib']:.0f} MiB on disk",
            flush=True,
        )
    exact = answers["exact"]
    for row in rows:
        found = answers[row["kind"]]
        row["recall_at_10"] = float(
            np.mean([len(set(a) & set(b)) / K for a, b in zip(found, exact)])
        )
        if row["kind"] != "exact":
            print(f"{n:>8} {row['kind']:>5}: recall@10 vs exact {row['recall_at_10']:.3f}")
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        export, kind, queries, out, threads = sys.argv[2:7]
        child(export, kind, queries, out, int(threads))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--tmp", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        for n in args.sizes:  # one record per size, saved as soon as it is measured
            rows = run_size(n, args.dim, args.queries, args.threads, Path(folder), args.kinds)
            record = {"dim": args.dim, "threads": args.threads, "queries": args.queries}
            save_result("search", {**record, "rows": rows})


if __name__ == "__main__":
    main()
