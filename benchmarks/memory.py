"""Peak RSS of recording N samples x D float32 in batches of 256, each size in a fresh subprocess; the largest
size's peak should exceed the smallest's by at most 64 MB (Linux).

- ``writer``: streaming through ``store.EpochWriter`` alone. Each batch is a new array (as the collector makes one
  per validation step): ``sample_id``, ``label`` and one ``fixed_size_list<float32>[D]`` column.
- ``epoch``: one ``trainer.validate`` (CPU) of a model whose recorded layer ``embed`` is ``Linear(32, D)``,
  followed by ReLU and ``Linear(D, 10)``, through an ``EmbeddingCollector(layers=["embed"], reducer=None,
  plots=False, stages=("validate",))``. The N samples cycle through one fixed pool of 1024 inputs, so the data
  takes the same memory whatever N.

Peak RSS is ``VmHWM`` of ``/proc/self/status`` at the end (not ``getrusage``'s ``ru_maxrss``, which keeps the
parent's peak across ``exec``); the baseline is the same figure just before recording starts (after imports, and in
``epoch`` mode after the model, data loader, collector and ``Trainer`` are made). The rows of the written Parquet
file are read back and printed.

    python benchmarks/memory.py [--mode writer|epoch|both] [--sizes 10000 200000] [--dims 2048] [--dir DIR]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lightning_embeddings import store

TARGET_MB = 64
BATCH = 256
FEATURES = 32
MODES = ("writer", "epoch")
TITLES = {"writer": "through EpochWriter", "epoch": "recorded in a validation epoch"}


class Cycled:
    """A map-style dataset of ``rows`` samples ``(x, label)`` taken in turn from one fixed pool of 1024 inputs of 32
    float32 features: it takes the same memory whatever ``rows``."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.inputs = np.random.default_rng(0).standard_normal((1024, FEATURES), dtype=np.float32)

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.inputs[index % len(self.inputs)], index % 10


def peak_mb() -> float:
    """This process's peak resident set size so far, in MB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024  # kB


def stream(rows: int, dim: int, directory: Path) -> tuple[float, float]:
    """Stream through ``EpochWriter`` alone: (baseline MB, seconds)."""
    rng = np.random.default_rng(0)
    schema = pa.schema([("sample_id", pa.int64()), ("label", pa.int64()), ("vectors", pa.list_(pa.float32(), dim))])
    baseline = peak_mb()
    start = time.perf_counter()
    writer = store.EpochWriter(directory / "vectors.parquet", schema)
    for first in range(0, rows, BATCH):
        n = min(BATCH, rows - first)
        writer.write({"sample_id": np.arange(first, first + n), "label": rng.integers(0, 10, n),
                      "vectors": rng.random((n, dim), dtype=np.float32)})
    writer.close()
    return baseline, time.perf_counter() - start


def validate(rows: int, dim: int, directory: Path) -> tuple[float, float]:
    """One ``trainer.validate`` with the collector writing under ``directory``: (baseline MB, seconds)."""
    # imported here, not at the top: the parent and the writer-only child stay without torch (5 s and 400 MB)
    import lightning.pytorch as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from lightning_embeddings import EmbeddingCollector

    class Embedder(pl.LightningModule):
        """``embed`` (``Linear(32, dim)``, the recorded layer) -> ReLU -> ``Linear(dim, 10)``."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(FEATURES, dim)
            self.head = nn.Sequential(nn.ReLU(), nn.Linear(dim, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(x))

        def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
            return {"preds": self(batch[0]).argmax(-1)}

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.manual_seed(0)
    model, data = Embedder().eval(), DataLoader(Cycled(rows), batch_size=BATCH)
    collector = EmbeddingCollector(layers=["embed"], reducer=None, plots=False, stages=("validate",), dirpath=directory)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[collector])
    baseline = peak_mb()
    start = time.perf_counter()
    trainer.validate(model, data, verbose=False)
    return baseline, time.perf_counter() - start


def child(mode: str, rows: int, dim: int, directory: Path) -> None:
    """The child: record, then print baseline MB, peak MB, seconds, rows read back from the Parquet files."""
    baseline, seconds = (stream if mode == "writer" else validate)(rows, dim, directory)
    peak = peak_mb()
    written = sum(pq.read_metadata(path).num_rows for path in directory.rglob("*.parquet"))
    print(baseline, peak, seconds, written)


def measure(mode: str, rows: int, dim: int, directory: Path) -> tuple[float, float, float, int]:
    """(baseline MB, peak MB, seconds, rows written) of one fresh subprocess."""
    where = directory / f"{mode}-{rows}x{dim}"
    where.mkdir()
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(rows), str(dim), str(where)],
                         check=True, capture_output=True, text=True).stdout
    shutil.rmtree(where)
    baseline, peak, seconds, written = out.split()[-4:]
    return float(baseline), float(peak), float(seconds), int(written)


def main(argv: list[str] | None = None) -> dict[str, dict[int, dict[int, float]]]:
    """Print each figure; return the peaks in MB by mode, dim and size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 200_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[2048])
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]), Path(args.child[3]))
        return {}
    peaks: dict[str, dict[int, dict[int, float]]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for mode in MODES if args.mode == "both" else (args.mode,):
            peaks[mode] = {}
            for dim in args.dims:
                peaks[mode][dim] = {}
                for rows in args.sizes:
                    baseline, peak, seconds, written = measure(mode, rows, dim, Path(tmp))
                    peaks[mode][dim][rows] = peak
                    gb = rows * dim * 4 / 1e9
                    print(f"memory: {rows} x {dim} float32 ({gb:.2f} GB) {TITLES[mode]}: peak RSS {peak:.0f} MB "
                          f"(baseline {baseline:.0f} MB, growth {peak - baseline:.0f} MB), {seconds:.1f} s, "
                          f"{gb * 1e3 / seconds:.0f} MB/s including making the data")
                    print(f"rows read back from the file of {rows} samples {TITLES[mode]}: {written} "
                          f"{'OK' if written == rows else 'MISSED'}")
                small, large = min(args.sizes), max(args.sizes)
                extra = peaks[mode][dim][large] - peaks[mode][dim][small]
                print(f"peak RSS of {large} minus {small} samples at {dim}-d {TITLES[mode]}: {extra:.0f} MB "
                      f"(target <= {TARGET_MB} MB) {'OK' if extra <= TARGET_MB else 'MISSED'}")
    return peaks


if __name__ == "__main__":
    main()
