"""Reading a run directory back, below every use of it: the manifest, each snapshot's rows (keys and facts, DDP's
padding duplicates dropped) and their vectors, read a batch at a time and checked when first read. Knows nothing of
maps, analysis or pictures: :class:`~lightning_embeddings.EmbeddingRun` builds on it, and so can what draws or
exports a run without importing back up.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from lightning.pytorch.utilities import rank_zero_info

from lightning_embeddings import reduce as reducers
from lightning_embeddings.layers import LayerSpec
from lightning_embeddings.layout import (
    INPUTS,
    KEYS,
    MANIFEST,
    SPLIT,
    SWITCH,
    inputs_files,
    projection_file,
    snapshot_file,
    snapshot_files,
)
from lightning_embeddings.lock import RunLock, RunLockedError
from lightning_embeddings.store import (
    RunError,
    check_manifest,
    column_vectors,
    finish_switch,
    read_manifest,
    sample_keys,
    vectors_array,
)

SAMPLE_FACTS = ("label", "prediction")
READ_BUFFER = 2**20  # bytes read from a file at once
PLACED, NON_FINITE, MISSING = 0, 1, 2  # a row in a map: placed; left out for a NaN/inf value; left out, no vector


@dataclass
class Rows:
    """One snapshot's samples: its files, their rows' keys and facts in ``(dataloader_idx, sample_id)`` order
    (DDP's padding duplicates dropped), and where each of those rows is stored among all the files' rows."""

    files: list[Path]
    keys: pa.Table
    stored: np.ndarray

    def __len__(self) -> int:
        return len(self.stored)

    def groups(self) -> np.ndarray:
        """An integer per row for stratified sampling: its label's code (all 0 without labels)."""
        if "label" not in self.keys.column_names:
            return np.zeros(len(self), dtype=np.int64)
        return pd.factorize(self.keys.column("label").to_numpy(zero_copy_only=False), use_na_sentinel=False)[0]


def with_points(keys: pa.Table, points: np.ndarray) -> pa.Table:
    """A snapshot's keys and facts with its points as columns ``x, y[, z]``."""
    for axis, values in zip("xyz", np.asarray(points).T):
        keys = keys.append_column(axis, pa.array(values, pa.float32()))
    return keys


def eval_split(snapshot: Mapping[str, Any]) -> str:
    """The split a snapshot's evaluation loop ran on: ``"test"`` for ``trainer.test``, else ``"val"``."""
    return "test" if snapshot["stage"] == "test" else "val"


def row_keys(table: pa.Table) -> np.ndarray:
    """Each row's :func:`~lightning_embeddings.store.sample_keys`."""
    return sample_keys(table.column("sample_id").to_numpy(), table.column("dataloader_idx").to_numpy(),
                       table.column(SPLIT).to_numpy(zero_copy_only=False))


def locate(rows: "Rows", keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of the sorted ``keys`` is among ``rows`` (sorted by key too), and whether it is there at all."""
    theirs = row_keys(rows.keys)
    found = np.minimum(np.searchsorted(theirs, keys), max(len(rows) - 1, 0))
    return found, (theirs[found] == keys) if len(rows) else np.zeros(len(keys), dtype=bool)


def _batches(path: Path, column: str) -> Iterator[pa.RecordBatch]:
    """``column`` of a snapshot file, ``TRANSFORM_ROWS`` rows at a time (a column chunk is not read whole), every
    page's checksum verified.

    Raises:
        RunError: the file is damaged (a page that fails its checksum, a cut), naming it.
    """
    try:
        source = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER, page_checksum_verification=True)
        yield from source.iter_batches(batch_size=reducers.TRANSFORM_ROWS, columns=[column])
    except (OSError, pa.ArrowException) as err:
        raise RunError(f"{path} is damaged ({err}): its {column!r} vectors cannot be read back as written.") from err


def labelled(rows: "Rows") -> bool:
    """Whether any of the rows has a label (``samples()`` ranks by labels)."""
    return "label" in rows.keys.column_names and rows.keys.column("label").null_count < len(rows)


class RunReader:
    """The files of one run directory, read back: its manifest, layers and snapshots, each snapshot's rows and their
    vectors. :class:`~lightning_embeddings.EmbeddingRun` is this and more (samples, reduce).

    Args:
        path: the run directory; raises as :class:`~lightning_embeddings.EmbeddingRun` does.

    Example::

        reader = RunReader("lightning_logs/version_0/embeddings")
        rows = reader.rows(reader.snapshots[-1])         # its samples' keys and facts, in key order
        vectors = reader.read(rows, "head.1", rows.stored)  # (N, D) float32
    """

    def __init__(self, path: Union[str, os.PathLike]) -> None:
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            nested = self.path / "embeddings"
            hint = (
                f"it holds {nested}: pass that"
                if (nested / MANIFEST).is_file()
                else "a run directory holds manifest.json and vectors/, e.g. lightning_logs/version_0/embeddings"
            )
            raise FileNotFoundError(f"{self.path} is not an embeddings run: it has no {MANIFEST}; {hint}.")
        if (self.path / SWITCH).exists():
            self._finish_switch()
        self.manifest = read_manifest(self.path)
        check_manifest(self.manifest, self.path / MANIFEST)
        self._checked: dict[str, list[Path]] = {}  # snapshot name -> its files, checked

    def _finish_switch(self, wait_s: float = 10.0) -> None:
        """Before reading: finish the switch to new files a stopped reduce left half done, or wait while another
        process's reduce switches its files in (a moment)."""
        waited = time.monotonic() + wait_s
        while (self.path / SWITCH).exists():
            try:
                with RunLock(self.path):
                    if finish_switch(self.path):
                        rank_zero_info(f"lightning-embeddings: {self.path}: finished putting in place the new maps "
                                       "of a reduce that was stopped while it did so")
                return
            except RunLockedError as busy:
                if time.monotonic() > waited:
                    raise RunError(f"{self.path}: another process has been putting its new maps in place for "
                                   f"{wait_s:.0f} s ({busy}); open the run again when it is done.") from None
                time.sleep(0.05)
            except OSError as err:
                raise RunError(
                    f"{self.path / SWITCH}: a reduce was stopped while it put its new maps in place, and they cannot "
                    f"be finished here ({err}). Open the run once where it is writable (that finishes them), or "
                    f"run lightning-embeddings reduce {self.path} again."
                ) from err

    @property
    def layers(self) -> list[str]:
        """The recorded layers' column names (module names; ``root`` for the model itself)."""
        return [layer["column"] for layer in self.manifest["layers"]]

    @property
    def snapshots(self) -> list[dict[str, Any]]:
        """Every complete snapshot in the order it was recorded: ``{"name", "stage", "epoch", "step"}``."""
        return [dict(snapshot) for snapshot in self.manifest["snapshots"]]

    @property
    def epochs(self) -> list[int]:
        """The epochs with a complete snapshot recorded during ``fit``, in order."""
        return sorted({s["epoch"] for s in self.manifest["snapshots"] if s["stage"] == "fit"})

    def layer(self, layer: LayerSpec) -> dict[str, Any]:
        """The facts of one layer (index, name, type, strategy, output shape, dim), found by its column name,
        module name, the spec given to the collector, or its index."""
        for facts in self.manifest["layers"]:
            keys = (facts["spec"], facts["index"]) if isinstance(layer, int) else (facts["column"], facts["name"], facts["spec"])
            if layer in keys:
                return facts
        described = ", ".join(f"{f['column']!r} (index {f['index']})" for f in self.manifest["layers"])
        raise ValueError(f"layer {layer!r} was not recorded in {self.path}; recorded: {described}.")

    def column(self, layer: LayerSpec) -> str:
        """The column (file and table name) of a layer given as :meth:`layer` takes it."""
        return self.layer(layer)["column"]

    def vectors(
        self,
        layer: LayerSpec,
        epoch: Optional[int] = None,
        step: Optional[int] = None,
        stage: str = "fit",
        dataloader_idx: Optional[int] = None,
        split: Optional[Literal["val", "test", "train"]] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One layer's vectors in one snapshot, ordered by ``(dataloader_idx, sample_id)``.

        The snapshot is the ``stage``'s last one at ``epoch`` (at ``step``, where an epoch has several), or its
        last one overall when ``epoch`` is None. Its rows of ``split``: by default those of the loop that ran
        (``"val"``, ``"test"`` for ``trainer.test``); ``"train"`` for the training set (``record_train``).

        A sample recorded without a vector in this layer (a layer that ``validation_step`` calls on some batches
        only) has a row of NaN.

        Returns:
            ``(sample_ids, vectors)``: an ``(N,)`` int64 array and an ``(N, D)`` float32 array.
        """
        column = self.column(layer)
        snapshot = self.snapshot(stage, epoch, step)
        rows = self.rows(snapshot, dataloader_idx, split or eval_split(snapshot))
        return rows.keys.column("sample_id").to_numpy(), self.read(rows, column, rows.stored)

    def table(
        self,
        epochs: Optional[Sequence[int]] = None,
        layers: Optional[Sequence[LayerSpec]] = None,
        stages: Optional[Sequence[str]] = None,
    ) -> pd.DataFrame:
        """The recorded rows of the chosen snapshots (all by default) as a DataFrame: keys, label/prediction
        when known, one array-valued column per layer (all NaN for a sample without a vector in that layer)."""
        columns = [self.column(layer) for layer in layers] if layers is not None else self.layers
        chosen = [
            s for s in self.manifest["snapshots"]
            if (epochs is None or s["epoch"] in epochs) and (stages is None or s["stage"] in stages)
        ]
        tables = []
        for snapshot in chosen:
            rows = self.rows(snapshot)
            table = rows.keys
            for column in columns:
                table = table.append_column(column, vectors_array(self.read(rows, column, rows.stored)))
            tables.append(table)
        return pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame(columns=[SPLIT, *KEYS, *columns])

    def projections(self, layer: LayerSpec) -> pd.DataFrame:
        """One layer's map: ``sample_id, split, stage, epoch, step, dataloader_idx, x, y[, z]``, with ``label`` and
        ``prediction`` when known; one row per sample and snapshot."""
        path = projection_file(self.path, self.column(layer))
        if not path.is_file():
            raise FileNotFoundError(
                f"No projections of layer {layer!r} in {self.path}: the run was not reduced (reducer=None, too few "
                "samples, or fit ended early). Call EmbeddingRun(...).reduce() to make them."
            )
        try:
            return pd.read_parquet(path, page_checksum_verification=True)
        except (OSError, pa.ArrowException) as err:
            raise RunError(f"{path} is not a readable Parquet file ({err}): make it again with reduce.") from err

    def inputs(self, split: Literal["val", "test", "train"] = "val") -> pd.DataFrame:
        """What each recorded sample of ``split`` is (``EmbeddingCollector(inputs=...)``): ``sample_id, split,
        dataloader_idx`` and ``image`` (PNG bytes, None for text) or ``text``, ordered by ``(dataloader_idx,
        sample_id)``; each sample once, whichever rank kept it.

        Raises:
            ValueError: the run kept no inputs of ``split`` (``inputs=False``, a batch that is neither image nor
                text, or a split not recorded), naming the splits it has.
            RunError: a file of inputs is damaged.

        Example::

            from PIL import Image
            row = EmbeddingRun(path).inputs("train").set_index("sample_id").loc[1119]
            Image.open(io.BytesIO(row["image"])).show()
        """
        chosen = inputs_files(self.path, split)
        if not chosen:
            kept = sorted(path.name for path in (self.path / INPUTS).glob("*.parquet")) or "none"
            raise ValueError(f"{self.path} keeps no inputs of {split!r} ({INPUTS}/ holds {kept}): they are kept at "
                             "the first recorded snapshot of a split with EmbeddingCollector(inputs='auto').")
        try:
            table = pa.concat_tables([pq.read_table(f, page_checksum_verification=True) for f in chosen])
        except (OSError, pa.ArrowException) as err:
            raise RunError(f"the inputs of {split!r} in {self.path / INPUTS} are not readable Parquet ({err}).") from err
        frame = table.to_pandas().drop_duplicates(["dataloader_idx", "sample_id"])
        return frame.sort_values(["dataloader_idx", "sample_id"], kind="stable").reset_index(drop=True)

    def aligned(self, rows: Rows, column: str, found: np.ndarray, here: np.ndarray) -> np.ndarray:
        """``column``'s vectors of the stored rows at ``found``, a row of NaN where ``here`` is False."""
        if here.all():
            return self.read(rows, column, rows.stored[found])
        vectors = np.full((len(found), self.width(rows, column)), np.nan, dtype=np.float32)
        vectors[here] = self.read(rows, column, rows.stored[found[here]])
        return vectors

    def snapshot(self, stage: str, epoch: Optional[int], step: Optional[int]) -> dict[str, Any]:
        candidates = [
            s for s in self.manifest["snapshots"]
            if s["stage"] == stage and (epoch is None or s["epoch"] == epoch) and (step is None or s["step"] == step)
        ]
        if not candidates:
            recorded = ", ".join(f"{s['stage']} epoch {s['epoch']} step {s['step']}" for s in self.manifest["snapshots"])
            wanted = f"{stage} epoch {epoch!r}" + ("" if step is None else f" step {step!r}")
            raise ValueError(f"{wanted} was not recorded in {self.path}; complete snapshots: {recorded or 'none'}.")
        return candidates[-1]

    def files(self, snapshot: Mapping[str, Any]) -> list[Path]:
        """A snapshot's files, checked when first asked for: there, Parquet, with the keys and every layer's
        column of its recorded dim (each footer read once, not the data).

        Raises:
            RunError: naming the file and what is wrong with it.
        """
        name = snapshot["name"]
        if name in self._checked:
            return self._checked[name]
        files = snapshot_files(self.path, name)
        if not files:
            raise RunError(f"{snapshot_file(self.path, name, 0, 1)} is missing: {MANIFEST} lists snapshot {name}, but "
                           "vectors/ holds no file of it.")
        for path in files:
            try:
                schema = pq.read_schema(path)
            except (OSError, pa.ArrowException) as err:
                raise RunError(f"{path} is not a readable Parquet file ({err}): it is damaged or cut short.") from err
            missing = [key for key in KEYS if key not in schema.names]
            if missing:
                raise RunError(f"{path} has no column {', '.join(map(repr, missing))}: it is not a snapshot file of "
                               "this run; move it out of vectors/.")
            for layer in self.manifest["layers"]:
                found = schema.field(layer["column"]).type if layer["column"] in schema.names else None
                vectors = found is not None and pa.types.is_fixed_size_list(found) and found.value_type == pa.float32()
                if not vectors or found.list_size != layer["dim"]:
                    said = "missing" if found is None else f"{found.list_size} values wide" if vectors else f"a {found}"
                    raise RunError(f"{path}: layer {layer['column']!r} is {said}, but {MANIFEST} records vectors of "
                                   f"dim {layer['dim']} (fixed_size_list<float32>[{layer['dim']}]).")
        self._checked[name] = files
        return files

    def rows(self, snapshot: dict[str, Any], dataloader_idx: Optional[int] = None,
              split: Optional[str] = None) -> Rows:
        """One snapshot's samples of all ranks (keys and facts, not vectors), DDP's padding duplicates dropped,
        ordered by ``(split, dataloader_idx, sample_id)``, the training rows last; of one split when given."""
        files = self.files(snapshot)
        tables = []
        for path in files:
            names = pq.read_schema(path).names
            try:
                table = pq.read_table(path, columns=[c for c in (SPLIT, *KEYS, *SAMPLE_FACTS) if c in names],
                                      page_checksum_verification=True)
            except (OSError, pa.ArrowException) as err:
                raise RunError(f"{path} is damaged: {err}") from err
            if SPLIT not in names:  # written before record_train: every row is the stage's evaluated split
                table = table.add_column(0, SPLIT, pa.array([eval_split(snapshot)] * table.num_rows, pa.string()))
            tables.append(table.cast(table.schema.set(0, pa.field(SPLIT, pa.string()))))
        table = pa.concat_tables(tables, promote_options="default")
        keys = row_keys(table)
        chosen = np.ones(table.num_rows, dtype=bool)
        if dataloader_idx is not None:
            chosen &= table.column("dataloader_idx").to_numpy() == dataloader_idx
        if split is not None:
            chosen &= table.column(SPLIT).to_numpy(zero_copy_only=False) == split
        stored = np.flatnonzero(chosen)
        _, first = np.unique(keys[stored], return_index=True)  # sorted by key; a padding duplicate dropped
        stored = stored[first]
        return Rows(files, table.take(stored), stored)

    def width(self, rows: Rows, column: str) -> int:
        """A vector column's width: a layer's recorded dim, else (``logits``) its files'."""
        if column in self.layers:
            return self.layer(column)["dim"]
        return pq.read_schema(rows.files[0]).field(column).type.list_size

    def read(
        self,
        rows: Rows,
        column: str,
        positions: np.ndarray,
        transform: Optional[Callable[[np.ndarray], Any]] = None,
    ) -> Any:
        """The vectors of the stored rows at ``positions``, in that order, read a batch of at most
        ``TRANSFORM_ROWS`` rows at a time (never the whole column at once).

        With ``transform``, also every stored row's status (``PLACED``; ``NON_FINITE``; ``MISSING``: no vector) and
        each placed row passed through it batch by batch: ``(vectors, points, status)``, ``points`` and ``status``
        in ``rows``' order (``points`` of the placed rows only).
        """
        wanted_order = np.argsort(positions, kind="stable")
        wanted = positions[wanted_order]
        out = np.empty((len(positions), self.width(rows, column)), dtype=np.float32)
        points, status = [], []
        start = 0
        for path in rows.files:
            for batch in _batches(path, column):
                array = batch.column(0)
                vectors = column_vectors(array)
                lo, hi = np.searchsorted(wanted, [start, start + len(vectors)])
                into, take = wanted_order[lo:hi], wanted[lo:hi] - start
                if hi > lo and take[-1] - take[0] == hi - lo - 1 and (np.diff(into) == 1).all():  # a run: copy whole
                    out[into[0]:into[-1] + 1] = vectors[take[0]:take[-1] + 1]
                else:
                    out[into] = vectors[take]
                if transform is not None:
                    placed = reducers.usable(vectors)
                    missing = array.is_null().to_numpy(zero_copy_only=False)
                    status.append(np.where(placed, PLACED, np.where(missing, MISSING, NON_FINITE)))
                    if placed.any():
                        points.append(np.asarray(transform(vectors if placed.all() else vectors[placed]), np.float32))
                start += len(vectors)
        if transform is None:
            return out
        stored_status = np.concatenate(status) if status else np.zeros(0, dtype=np.int64)
        index = np.cumsum(stored_status == PLACED) - 1  # a placed stored row's position among the points
        placed_rows = rows.stored[stored_status[rows.stored] == PLACED]
        stored_points = np.concatenate(points) if points else np.zeros((0, 0), dtype=np.float32)
        return out, stored_points[index[placed_rows]], stored_status[rows.stored]


def as_reader(run: Union[RunReader, str, os.PathLike]) -> RunReader:
    """``run`` itself (an :class:`~lightning_embeddings.EmbeddingRun` is a reader), or the reader of its directory."""
    return run if isinstance(run, RunReader) else RunReader(run)
