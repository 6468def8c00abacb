"""Time and peak RSS of ``EmbeddingRun.reduce`` on runs of N samples x D float32 x E epochs, each case in a fresh
subprocess: the map is fitted on ``fit_samples`` rows (20,000 by default), then every row of every snapshot is
placed through ``transform`` in batches, so peak memory should not grow with N x E.

The run is written first (``store.EpochWriter``, one file per epoch, as the collector writes it): ten Gaussian
clusters that tighten epoch by epoch, with their labels. The first ``reduce`` of a run also computes the samples'
dynamics (``samples.parquet``, as at the end of a fit); a second ``reduce`` ("again") makes the maps only. Peak RSS
is ``VmHWM`` of the child after both; the baseline is the same figure after importing the reducer's library.

    python benchmarks/reduction.py [--cases pca:10000 umap:100000 ...] [--epochs 10] [--dim 256] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from lightning_embeddings import layout, store

DEFAULT_CASES = ["pca:10000", "pacmap:10000", "umap:10000", "pca:100000", "pacmap:100000", "umap:100000",
                 "pca:1000000"]
BATCH = 8_192  # rows written at once: row groups of about 32 MiB, as the collector writes them
CLASSES = 10


def write_run(path: Path, rows: int, dim: int, epochs: int) -> None:
    """A run directory of ``epochs`` snapshots of ``rows`` x ``dim`` float32 in layer ``embed``, with labels."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLASSES, dim)).astype(np.float32) * 2
    facts = {"column": "embed", "name": "embed", "spec": "embed", "index": 1, "type": "Linear", "strategy": "flatten",
             "shape": [dim], "dim": dim}
    schema = pa.schema(
        [("sample_id", pa.int64()), ("stage", pa.string()), ("epoch", pa.int64()), ("step", pa.int64()),
         ("dataloader_idx", pa.int64()), ("label", pa.int64()), ("embed", pa.list_(pa.float32(), dim))],
        metadata={store.METADATA_KEY: json.dumps({"layers": [facts]})},
    )
    snapshots = []
    for epoch in range(epochs):
        name = layout.snapshot_name("fit", epoch, (epoch + 1) * 100)
        writer = store.EpochWriter(layout.snapshot_file(path, name, 0, 1), schema)
        noise = 3.0 / (1 + epoch)  # the clusters form as training goes on
        for first in range(0, rows, BATCH):
            ids = np.arange(first, min(first + BATCH, rows))
            labels = ids % CLASSES
            vectors = centres[labels] + noise * rng.standard_normal((len(ids), dim), dtype=np.float32)
            writer.write({"sample_id": ids, "stage": ["fit"] * len(ids), "epoch": np.full(len(ids), epoch),
                          "step": np.full(len(ids), (epoch + 1) * 100), "dataloader_idx": np.zeros(len(ids), np.int64),
                          "label": labels, "embed": vectors})
        writer.close()
        snapshots.append({"name": name, "stage": "fit", "epoch": epoch, "step": (epoch + 1) * 100})
    store.write_manifest(path, {"snapshots": snapshots, "layers": [facts], "reducer": None})


def peak_mb() -> float:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # kB


def reduce_child(path: Path, reducer: str) -> None:
    """The child: reduce, then print baseline MB, peak MB, seconds, rows fitted on."""
    import importlib

    import lightning_embeddings.run as run_module

    importlib.import_module({"pca": "sklearn.decomposition"}.get(reducer, reducer))
    baseline = peak_mb()
    start = time.perf_counter()
    run = run_module.EmbeddingRun(path)
    run.reduce(reducer=reducer, align="joint", progress=False)  # as measured for issue 5
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    run.reduce(reducer=reducer, align="joint", progress=False)  # a user's reduce of a run already reduced
    again = time.perf_counter() - start
    print(baseline, peak_mb(), seconds, again, run.manifest["reducer"]["layers"]["embed"]["samples"])


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, metavar="REDUCER:ROWS")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the runs (default: a temporary directory)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        reduce_child(Path(args.child[0]), args.child[1])
        return {}
    figures: dict[str, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for rows in sorted({int(case.split(":")[1]) for case in args.cases}):
            path = Path(tmp) / f"run_{rows}"
            start = time.perf_counter()
            write_run(path, rows, args.dim, args.epochs)
            gb = rows * args.dim * 4 * args.epochs / 1e9
            print(f"reduction: wrote {rows} x {args.dim} float32 x {args.epochs} epochs ({gb:.2f} GB) in "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
            for reducer in [case.split(":")[0] for case in args.cases if int(case.split(":")[1]) == rows]:
                out = subprocess.run([sys.executable, __file__, "--child", str(path), reducer], check=True,
                                     capture_output=True, text=True).stdout
                baseline, peak, seconds, again, fitted = map(float, out.split()[-5:])
                figures[f"{reducer}:{rows}"] = (seconds, peak - baseline, again)
                print(f"reduction: {reducer}, {rows} x {args.dim} x {args.epochs} epochs ({gb:.2f} GB of vectors), "
                      f"fitted on {fitted:.0f} rows: {seconds:.1f} s ({rows * args.epochs / seconds:,.0f} rows/s placed), "
                      f"reduce again {again:.1f} s, peak RSS {peak:.0f} MB (baseline {baseline:.0f} MB, growth "
                      f"{peak - baseline:.0f} MB)", flush=True)
            shutil.rmtree(path)
    return figures


if __name__ == "__main__":
    main()
