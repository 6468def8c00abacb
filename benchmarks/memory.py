"""Peak RSS of streaming N samples x D float32 through ``store.EpochWriter`` in batches of 256, each size in a
fresh subprocess; the largest size's peak should exceed the smallest's by at most 64 MB (Linux).

Each batch is a new array (as the collector makes one per validation step): ``sample_id``, ``label`` and one
``fixed_size_list<float32>[D]`` column. Peak RSS is ``VmHWM`` of ``/proc/self/status`` after ``close`` (not
``getrusage``'s ``ru_maxrss``, which keeps the parent's peak across ``exec``); the baseline is the same figure
after imports, before the writer is made.

    python benchmarks/memory.py [--sizes 10000 200000] [--dims 2048] [--dir DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from lightning_embeddings import store

TARGET_MB = 64
BATCH = 256


def peak_mb() -> float:
    """This process's peak resident set size so far, in MB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # kB


def stream(rows: int, dim: int, path: Path) -> None:
    """The child: stream, then print baseline MB, peak MB, seconds."""
    rng = np.random.default_rng(0)
    schema = pa.schema([("sample_id", pa.int64()), ("label", pa.int64()), ("vectors", pa.list_(pa.float32(), dim))])
    baseline = peak_mb()
    start = time.perf_counter()
    writer = store.EpochWriter(path, schema)
    for first in range(0, rows, BATCH):
        n = min(BATCH, rows - first)
        writer.write({"sample_id": np.arange(first, first + n), "label": rng.integers(0, 10, n),
                      "vectors": rng.random((n, dim), dtype=np.float32)})
    writer.close()
    print(baseline, peak_mb(), time.perf_counter() - start)


def measure(rows: int, dim: int, directory: Path) -> tuple[float, float, float]:
    """(baseline MB, peak MB, seconds) of one fresh subprocess."""
    path = directory / f"{rows}x{dim}.parquet"
    out = subprocess.run([sys.executable, __file__, "--child", str(rows), str(dim), str(path)],
                         check=True, capture_output=True, text=True).stdout
    path.unlink()
    baseline, peak, seconds = map(float, out.split())
    return baseline, peak, seconds


def main(argv: list[str] | None = None) -> dict[int, dict[int, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 200_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[2048])
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        stream(int(args.child[0]), int(args.child[1]), Path(args.child[2]))
        return {}
    peaks: dict[int, dict[int, float]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for dim in args.dims:
            peaks[dim] = {}
            for rows in args.sizes:
                baseline, peak, seconds = measure(rows, dim, Path(tmp))
                peaks[dim][rows] = peak
                gb = rows * dim * 4 / 1e9
                print(f"memory: {rows} x {dim} float32 ({gb:.2f} GB) through EpochWriter: peak RSS {peak:.0f} MB "
                      f"(baseline {baseline:.0f} MB, growth {peak - baseline:.0f} MB), {seconds:.1f} s, "
                      f"{gb * 1e3 / seconds:.0f} MB/s including making the data")
            small, large = min(args.sizes), max(args.sizes)
            extra = peaks[dim][large] - peaks[dim][small]
            print(f"peak RSS of {large} minus {small} samples at {dim}-d: {extra:.0f} MB (target <= {TARGET_MB} MB) "
                  f"{'OK' if extra <= TARGET_MB else 'MISSED'}")
    return peaks


if __name__ == "__main__":
    main()
