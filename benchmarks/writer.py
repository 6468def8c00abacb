"""Write throughput of ``store.EpochWriter`` vs ``numpy.save`` of the same bytes on the same disk, reading it back,
and a table of compression choices.

The writer is fed batches of 256 rows (as the collector feeds it) of a ``sample_id`` column and one
``fixed_size_list<float32>[D]`` column; ``numpy.save`` writes the same ``(N, D)`` float32 array in one call. Times
include closing the file (page cache, no fsync, for both). Reading is what ``EmbeddingRun.vectors`` does:
``store.column_vectors(pq.read_table(path).column(...))``.

    python benchmarks/writer.py [--rows 200000] [--dim 256] [--repeats 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lightning_embeddings import store

TARGET_RATIO = 0.5
BATCH = 256
CODECS = [("none", None), ("snappy", None), ("zstd", 1), ("lz4", None)]


def data(rows: int, dim: int, kind: str) -> np.ndarray:
    """Gaussian values (incompressible) or ReLU'd Gaussian (half zeros, like activations after a ReLU)."""
    x = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    return np.maximum(x, 0) if kind == "relu" else x


def schema(dim: int) -> pa.Schema:
    return pa.schema([("sample_id", pa.int64()), ("vectors", pa.list_(pa.float32(), dim))])


def timed(fn, *args) -> float:
    """Seconds of one call of ``fn(*args)``."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def write_epoch_writer(path: Path, vectors: np.ndarray) -> None:
    writer = store.EpochWriter(path, schema(vectors.shape[1]))
    for start in range(0, len(vectors), BATCH):
        writer.write({"sample_id": np.arange(start, start + len(vectors[start:start + BATCH]), dtype=np.int64),
                      "vectors": vectors[start:start + BATCH]})
    writer.close()


def write_codec(path: Path, vectors: np.ndarray, codec: str, level: int | None) -> None:
    """The writer's layout (row groups of ``store.ROW_GROUP_BYTES``, no dictionary/statistics on vectors) with
    another codec."""
    rows_per_group = max(1, store.ROW_GROUP_BYTES // (vectors.shape[1] * 4))
    table = pa.table({"sample_id": np.arange(len(vectors), dtype=np.int64), "vectors": store.vectors_array(vectors)},
                     schema=schema(vectors.shape[1]))
    with pq.ParquetWriter(path, table.schema, compression=codec, compression_level=level,
                          use_dictionary=["sample_id"], write_statistics=["sample_id"]) as writer:
        writer.write_table(table, row_group_size=rows_per_group)


def read_vectors(path: Path) -> tuple[np.ndarray, pa.ChunkedArray]:
    column = pq.read_table(path).column("vectors")
    return store.column_vectors(column), column


def zero_copy(array: np.ndarray, column: pa.ChunkedArray) -> bool:
    """Whether ``array`` is a view of the Arrow column's buffer (not a copy)."""
    values = column.chunk(0).values
    return column.num_chunks == 1 and array.ctypes.data == values.buffers()[1].address + values.offset * 4


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="median of this many writes/reads of each")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        vectors = data(args.rows, args.dim, "gaussian")
        mb = vectors.nbytes / 1e6
        npy, pqt = tmp / "vectors.npy", tmp / "vectors.parquet"
        # interleaved, the median of each
        writer_s, numpy_s = [], []
        for _ in range(args.repeats):
            numpy_s.append(timed(np.save, npy, vectors))
            writer_s.append(timed(write_epoch_writer, pqt, vectors))
        writer_mbs, numpy_mbs = mb / statistics.median(writer_s), mb / statistics.median(numpy_s)
        ratio = writer_mbs / numpy_mbs
        read_vectors(pqt)  # warm-up, untimed
        read_s = statistics.median(timed(read_vectors, pqt) for _ in range(args.repeats))
        back, column = read_vectors(pqt)
        assert np.array_equal(back, vectors)
        print(f"writer: {args.rows} x {args.dim} float32 ({mb:.0f} MB), Gaussian values, batches of {BATCH}, "
              f"median of {args.repeats}, in {tmp.parent}")
        print(f"numpy.save write throughput: {numpy_mbs:.0f} MB/s ({npy.stat().st_size / 1e6:.1f} MB file)")
        print(f"EpochWriter write throughput: {writer_mbs:.0f} MB/s ({pqt.stat().st_size / 1e6:.1f} MB file, snappy)")
        print(f"EpochWriter / numpy.save throughput ratio: {ratio:.2f}x (target >= {TARGET_RATIO}) "
              f"{'OK' if ratio >= TARGET_RATIO else 'MISSED'}")
        print(f"read back (pq.read_table + store.column_vectors): {read_s:.3f} s, {args.rows / read_s:,.0f} rows/s, "
              f"{mb / read_s:.0f} MB/s; {column.num_chunks} chunks, zero-copy: {zero_copy(back, column)}")
        load_s = statistics.median(timed(np.load, npy) for _ in range(args.repeats))
        print(f"np.load for comparison: {load_s:.3f} s")
        print("compression (writer's layout, pq.ParquetWriter; MB/s of raw float32 bytes):")
        print(f"  {'codec':<8} {'data':<9} {'size MB':>8} {'write MB/s':>11} {'read MB/s':>10}")
        for kind in ("gaussian", "relu"):
            vectors = data(args.rows, args.dim, kind)
            for codec, level in CODECS:
                path = tmp / f"{codec}.parquet"
                write = statistics.median(timed(write_codec, path, vectors, codec, level) for _ in range(args.repeats))
                read_vectors(path)  # warm-up, untimed
                read = statistics.median(timed(read_vectors, path) for _ in range(args.repeats))
                name = f"{codec}-{level}" if level else codec
                print(f"  {name:<8} {kind:<9} {path.stat().st_size / 1e6:>8.1f} {mb / write:>11.0f} {mb / read:>10.0f}")
    return {"ratio": ratio, "read_s": read_s}


if __name__ == "__main__":
    main()
