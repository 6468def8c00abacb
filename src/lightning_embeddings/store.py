"""The on-disk format of a run: snapshot files of vectors, projections, and ``manifest.json``.

```
embeddings/
  manifest.json
  vectors/epoch_0003-step_0000440.parquet        one snapshot: a validation run during fit
  vectors/epoch_0003-step_0000440-rank1.parquet  under DDP, one file per rank
  vectors/test-epoch_0005-step_0000660.parquet   trainer.test() or trainer.validate(), when recorded
  projections/<layer>.parquet
```
Every file is written under a hidden temporary name and renamed when complete, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FORMAT = "lightning-embeddings/1"
MANIFEST = "manifest.json"
VECTORS = "vectors"
PROJECTIONS = "projections"
METADATA_KEY = b"lightning_embeddings"
ROW_GROUP_BYTES = 32 * 2**20


def snapshot_name(stage: str, epoch: int, step: int) -> str:
    """The file stem of one snapshot: ``epoch_0003-step_0000440``, prefixed by the stage outside ``fit``."""
    prefix = "" if stage == "fit" else f"{stage}-"
    return f"{prefix}epoch_{epoch:04d}-step_{step:07d}"


def snapshot_file(dirpath: Path, name: str, rank: int, world_size: int) -> Path:
    suffix = f"-rank{rank}" if world_size > 1 else ""
    return dirpath / VECTORS / f"{name}{suffix}.parquet"


def snapshot_files(dirpath: Path, name: str) -> list[Path]:
    """Every complete file of one snapshot (one per rank under DDP)."""
    return sorted((dirpath / VECTORS).glob(f"{name}.parquet")) + sorted((dirpath / VECTORS).glob(f"{name}-rank*.parquet"))


def projection_file(dirpath: Path, column: str) -> Path:
    return dirpath / PROJECTIONS / f"{column}.parquet"


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds, remove it otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_manifest(dirpath: Path) -> dict[str, Any]:
    with open(dirpath / MANIFEST) as f:
        return json.load(f)


def write_manifest(dirpath: Path, manifest: Mapping[str, Any]) -> None:
    with _atomic(dirpath / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"format": FORMAT, **manifest}, indent=2, default=str))


def write_tables(path: Path, tables: Iterable[pa.Table], schema: pa.Schema) -> None:
    """Write ``tables`` one after another into one Parquet file of ``schema``, atomically; a table's columns are
    taken by name and cast, a column it lacks is written as nulls."""
    with _atomic(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for table in tables:
            columns = [table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
                       for f in schema]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema.remove_metadata()).cast(schema))


def vectors_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """``(N, D)`` float32 as a ``fixed_size_list<float32>[D]`` column, without a copy."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def column_vectors(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A ``fixed_size_list<float32>[D]`` column as an ``(N, D)`` float32 array (zero-copy for an array or a single
    chunk)."""
    array = column if isinstance(column, pa.Array) else column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), array.type.list_size)


class EpochWriter:
    """Streams one epoch's record batches to a Parquet file on a background thread.

    Memory stays bounded: batches wait in a short queue and are written in row groups of about 32 MiB. The file
    is written under a hidden ``.partial`` name and renamed by :meth:`close`; :meth:`abort` removes it. An error
    on the writer thread (a full or unwritable disk) is raised on the caller's thread at the next call, naming
    the file.

    Example::

        writer = EpochWriter(Path("run/vectors/epoch_0000.parquet"), schema)
        writer.write({"sample_id": ids, "layer": vectors})
        writer.close()
    """

    _STOP, _ABORT = object(), object()

    def __init__(self, path: Path, schema: pa.Schema, queue_size: int = 8) -> None:
        self.path = path
        self.schema = schema
        self.rows = 0
        self._tmp = _partial(path)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: Optional[BaseException] = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name=f"EpochWriter[{path.name}]", daemon=True)
        self._thread.start()

    def write(self, columns: Mapping[str, Any], ready: Any = None) -> None:
        """Queue one batch: ``columns`` maps column names to arrays (``(N, D)`` for a vector column).

        ``ready``, when given, is waited on by the writer before it reads the arrays (a CUDA event that marks
        the end of a non-blocking copy to the host).
        """
        self._raise_if_failed()
        self._queue.put((columns, ready))
        self.rows += len(next(iter(columns.values())))

    def close(self) -> None:
        """Write what is left, then make the file visible under its final name."""
        self._finish(self._STOP)
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Stop and remove the unfinished file; never raises for the writer's own errors."""
        if self._thread.is_alive():
            self._queue.put(self._ABORT)
            self._thread.join()
        self._tmp.unlink(missing_ok=True)

    def _finish(self, signal: object) -> None:
        if self._thread.is_alive():
            self._queue.put(signal)
            self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            self._tmp.unlink(missing_ok=True)
            raise OSError(f"Writing embeddings to {self.path} failed: {self._error}") from self._error

    def _run(self) -> None:
        buffered: list[pa.RecordBatch] = []
        buffered_bytes = 0
        done = False
        try:
            scalars = [f.name for f in self.schema if not pa.types.is_fixed_size_list(f.type)]
            with pq.ParquetWriter(self._tmp, self.schema, use_dictionary=scalars, write_statistics=scalars) as writer:
                while not done:
                    item = self._queue.get()
                    if item is self._ABORT:
                        return
                    done = item is self._STOP
                    if not done:
                        batch = self._record_batch(*item)
                        buffered.append(batch)
                        buffered_bytes += batch.nbytes
                    if buffered and (done or buffered_bytes >= ROW_GROUP_BYTES):
                        writer.write_table(pa.Table.from_batches(buffered), row_group_size=sum(map(len, buffered)))
                        buffered, buffered_bytes = [], 0
        except BaseException as err:  # raised on the training thread by _raise_if_failed
            self._error = err
            while not done:  # keep taking batches, so the training thread never blocks on a full queue
                item = self._queue.get()
                done = item is self._STOP or item is self._ABORT

    def _record_batch(self, columns: Mapping[str, Any], ready: Any) -> pa.RecordBatch:
        if ready is not None:
            ready.synchronize()
        n = len(next(iter(columns.values())))
        arrays = []
        for field in self.schema:
            value = columns.get(field.name)
            if value is None:
                arrays.append(pa.nulls(n, field.type))
            elif pa.types.is_fixed_size_list(field.type):
                arrays.append(vectors_array(np.asarray(value)))
            else:
                arrays.append(pa.array(np.asarray(value)).cast(field.type))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def layer_metadata(schema: pa.Schema) -> list[dict[str, Any]]:
    """The per-layer facts an epoch file carries in its schema metadata."""
    return json.loads((schema.metadata or {})[METADATA_KEY])["layers"]
