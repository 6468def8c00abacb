"""The on-disk formats of a run: snapshot files of vectors, projections, and ``manifest.json``; their names and
folders are :mod:`~lightning_embeddings.layout`'s.

Every file is written under a hidden temporary name and renamed when complete (``layout.atomic_write``), so a
reader never sees half a file; a reduce's files are put in place together by :func:`switch`, so nobody reads old
and new maps mixed. A manifest or file that cannot be read as this format says raises :class:`RunError`, naming the
file.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import re
import threading
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lightning_embeddings.layout import MANIFEST, SWITCH, atomic_write, snapshot_name, staged

FORMAT_VERSION = 1
FORMAT = f"lightning-embeddings/{FORMAT_VERSION}"
METADATA_KEY = b"lightning_embeddings"
ROW_GROUP_BYTES = 32 * 2**20


def sample_keys(sample_id: np.ndarray, dataloader_idx: Optional[np.ndarray] = None,
                split: Optional[np.ndarray] = None) -> np.ndarray:
    """One int64 naming each row's sample across snapshots: its split (training rows apart), dataloader and id.

    Example::

        >>> sample_keys(np.array([7, 7]), np.array([0, 1])).tolist()
        [7, 1099511627783]
    """
    keys = np.asarray(sample_id, dtype=np.int64).copy()
    if dataloader_idx is not None:
        keys |= np.asarray(dataloader_idx, dtype=np.int64) << 40
    if split is not None:
        keys |= (np.asarray(split) == "train").astype(np.int64) << 48
    return keys


def switch(dirpath: Path, changes: Mapping[Path, bool]) -> None:
    """Put a writer's staged files in place together, in the order of ``changes`` (True: the file's staged copy
    replaces it; False: it is removed). Their list is written first (``.switch.json``), so a switch a kill stops
    is finished by :func:`finish_switch`, and nobody reads old and new files mixed.

    Example::

        switch(run, {run / "projections" / "head.1.parquet": True, run / "manifest.json": True})
    """
    with atomic_write(Path(dirpath) / SWITCH) as tmp:
        tmp.write_text(json.dumps([[path.relative_to(dirpath).as_posix(), replace] for path, replace in changes.items()]))
    finish_switch(dirpath)


def finish_switch(dirpath: Path) -> bool:
    """Finish the :func:`switch` a stopped writer left half done (every staged file still there replaces its file);
    whether there was one. Call it holding the run's lock."""
    listed = Path(dirpath) / SWITCH
    try:
        changes = json.loads(listed.read_text())
    except FileNotFoundError:
        return False
    for name, replace in changes:
        path = Path(dirpath) / name
        if not replace:
            path.unlink(missing_ok=True)
        elif staged(path).exists():  # not yet put in place
            os.replace(staged(path), path)
    listed.unlink()
    return True


def remove_partials(dirpath: Path) -> list[Path]:
    """Finish a switch a killed writer left half done (:func:`finish_switch`), then remove the unfinished
    ``.*.partial`` files it left anywhere in the run; return them."""
    finish_switch(dirpath)
    stray = sorted(Path(dirpath).rglob(".*.partial"))
    for path in stray:
        path.unlink(missing_ok=True)
    return stray


class RunError(ValueError):
    """A run directory that cannot be read as it is: a damaged or foreign manifest or file, or a newer format."""


def read_manifest(dirpath: Path) -> dict[str, Any]:
    """The run's manifest, a JSON object of a format this version reads.

    Raises:
        RunError: ``manifest.json`` is not JSON, not an object, of another format, or of a newer version.
    """
    path = dirpath / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError as err:  # json.JSONDecodeError, UnicodeDecodeError
        raise RunError(f"{path} is not valid JSON ({err}): the run's manifest is damaged.") from err
    if not isinstance(manifest, dict):
        raise RunError(f"{path} is not a lightning-embeddings manifest: it holds a JSON {type(manifest).__name__}.")
    written = manifest.get("format")
    version = re.fullmatch(r"lightning-embeddings/(\d+)", written) if isinstance(written, str) else None
    if version is None:
        raise RunError(f"{path} is not a lightning-embeddings manifest: its format is {written!r}, not {FORMAT!r}.")
    if int(version[1]) > FORMAT_VERSION:
        from lightning_embeddings._version import __version__

        versions = manifest.get("versions")
        writer = versions.get("lightning-embeddings") if isinstance(versions, dict) else None
        raise RunError(
            f"{path} was written by a newer lightning-embeddings ({f'{writer}, ' if writer else ''}format "
            f"{version[1]}); lightning-embeddings {__version__} reads format {FORMAT_VERSION}. Upgrade: pip install "
            "-U lightning-embeddings"
        )
    return manifest


def check_manifest(manifest: Mapping[str, Any], path: Path) -> None:
    """Check the shape of a manifest's layers and snapshots: every layer a unique non-empty column name (a file
    name is made of it) with its dim, every snapshot named by its stage, epoch and step.

    Raises:
        RunError: naming ``path`` and the entry that is wrong.
    """
    def fail(what: str) -> NoReturn:
        raise RunError(f"{path} is not a lightning-embeddings manifest: {what}.")

    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    layers, snapshots = manifest.get("layers"), manifest.get("snapshots")
    if not isinstance(layers, list) or not isinstance(snapshots, list):
        fail("its 'layers' and 'snapshots' are not lists")
    columns: set[str] = set()
    for i, layer in enumerate(layers):
        column = layer.get("column") if isinstance(layer, dict) else None
        if not isinstance(column, str) or not column:
            fail(f"layer {i} has column {column!r}, not a non-empty string")
        if column in columns:
            fail(f"it names layer {column!r} twice")
        if not (count(layer.get("dim")) and layer["dim"] > 0 and count(layer.get("index"))
                and isinstance(layer.get("name"), str) and "spec" in layer):
            fail(f"layer {column!r} lacks a dim, index, name or spec: {layer!r}")
        columns.add(column)
    for i, snapshot in enumerate(snapshots):
        stage = snapshot.get("stage") if isinstance(snapshot, dict) else None
        if not (isinstance(stage, str) and re.fullmatch("[a-z]+", stage) and count(snapshot.get("epoch"))
                and count(snapshot.get("step"))
                and snapshot.get("name") == snapshot_name(stage, snapshot["epoch"], snapshot["step"])):
            fail(f"snapshot {i} is not named by its stage, epoch and step: {snapshot!r}")
    if not isinstance(manifest.get("reducer"), (dict, type(None))):
        fail(f"its 'reducer' is {manifest['reducer']!r}, not an object")


def add_snapshot(manifest: dict[str, Any], snapshot: dict[str, Any], file: Path, logits: Optional[str],
                 pictures: Mapping[str, bool]) -> None:
    """Add a complete snapshot (``file``: one of its files) to ``manifest``, in place: the snapshot, the layers its
    file describes, the column that holds logits (``logits``: a recorded layer's, else the ``logits`` column if
    the file has one), the run's id (kept once made: a copy has it too, so resume knows its copies), the pictures
    a reduce draws (``{"png": ..., "html": ...}``) and the versions that wrote it."""
    schema = pq.read_schema(file)
    manifest.setdefault("snapshots", []).append(snapshot)
    manifest["layers"] = layer_metadata(schema)
    if logits is not None or "logits" in schema.names:
        manifest["logits"] = logits or "logits"
    manifest.setdefault("run_id", uuid.uuid4().hex)
    manifest["pictures"] = dict(pictures)
    manifest.setdefault("reducer", None)
    manifest["versions"] = writer_versions()


@functools.cache
def writer_versions() -> dict[str, str]:
    """The versions of the packages that write and map a run, for its manifest."""
    import importlib.metadata as md

    names = ("lightning-embeddings", "lightning", "torch", "pyarrow", "umap-learn", "pacmap", "scikit-learn")
    found = {}
    for name in names:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return found


def write_manifest(dirpath: Path, manifest: Mapping[str, Any], path: Optional[Path] = None) -> None:
    """Write ``dirpath/manifest.json`` atomically (``path`` instead, when given: a staged manifest)."""
    with atomic_write(path or dirpath / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"format": FORMAT, **manifest}, indent=2, default=str))


def write_tables(path: Path, tables: Iterable[pa.Table], schema: pa.Schema) -> None:
    """Write ``tables`` one after another into one Parquet file of ``schema``, atomically; a table's columns are
    taken by name and cast, a column it lacks is written as nulls."""
    with atomic_write(path) as tmp, pq.ParquetWriter(tmp, schema, write_page_checksum=True) as writer:
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
    chunk without nulls); a null entry (a sample without a vector in that layer) is a row of NaN.

    The values are read at the array's offset, not through ``flatten``, which skips null entries.
    """
    array = column if isinstance(column, pa.Array) else column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    size = array.type.list_size
    values = array.values.slice(array.offset * size, len(array) * size).to_numpy(zero_copy_only=False)
    vectors = values.reshape(len(array), size)
    if array.null_count:
        vectors = vectors.copy()
        vectors[array.is_null().to_numpy(zero_copy_only=False)] = np.nan
    return vectors


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
        self._tmp = staged(path)
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
            with pq.ParquetWriter(self._tmp, self.schema, use_dictionary=scalars, write_statistics=scalars,
                                  write_page_checksum=True) as writer:  # a page damaged later fails its read
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
            elif isinstance(value, pa.Array):
                arrays.append(value.cast(field.type))
            else:
                arrays.append(pa.array(np.asarray(value)).cast(field.type))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def layer_metadata(schema: pa.Schema) -> list[dict[str, Any]]:
    """The per-layer facts an epoch file carries in its schema metadata."""
    return json.loads((schema.metadata or {})[METADATA_KEY])["layers"]
