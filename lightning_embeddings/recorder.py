"""One snapshot's recording, Lightning-free: the layers' hooks switched on for the batches that hold rows to
record, which rows of each loader are recorded (at most ``max_samples``, never a ``DistributedSampler``'s padding),
which sample each row is, its predictions, how many rows each layer missed, the rows kept for the live k-NN accuracy,
and the writer that streams the rows to the snapshot's file, holding batches until every layer has shown its width.
Also the sanity check's dry run: hooks and reshapes run, nothing is kept.

The callback translates Lightning's events into these calls::

    recorder = Recorder(captures, max_samples=1000, warn=print)
    snapshot = {"name": "epoch_0003-step_0000440", "stage": "fit", "epoch": 3, "step": 440}
    recorder.start(path, snapshot, "val", loaders)         # a recorded validation begins
    recorder.start_batch(dataloader_idx, batch)            # each batch: the hooks on where it holds rows to record
    vectors, size = recorder.end_batch()                   # after the step: one array per layer
    recorder.add(vectors, dataloader_idx, size, labels=y)  # its rows, with their ids, labels, predictions, ...
    recorder.end()                                         # the file is complete
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from lightning_embeddings import batch as batches
from lightning_embeddings import store
from lightning_embeddings.capture import LayerCapture, batch_vectors
from lightning_embeddings.inputs import InputRecord
from lightning_embeddings.live import LiveKnnAccuracy


class Recorder:
    """The rows of one snapshot, from ``start`` to ``end`` (or ``abort``); or the sanity check's dry run, from
    ``start_check`` to ``end_check``.

    Args:
        captures: the layers' forward hooks, in column order; their widths are known after their first batch.
        max_samples: at most this many rows of each loader (None: all of them).
        warn: says a warning once (the callback's ``WarningCache.warn``).
        logits: the column of the recorded layer whose vectors are the class logits (None: no such layer).
        inputs: what each sample is, kept once per split (:class:`~lightning_embeddings.inputs.InputRecord`);
            None: not kept.
    """

    def __init__(self, captures: Sequence[LayerCapture], max_samples: Optional[int],
                 warn: Callable[[str], None], logits: Optional[str] = None,
                 inputs: Optional[InputRecord] = None) -> None:
        self.captures = list(captures)
        self.inputs = inputs
        self.max_samples = max_samples
        self.warn = warn
        self.logits = logits
        self.live = LiveKnnAccuracy()  # the validation rows behind each layer's knn_accuracy
        self.snapshot: Optional[Mapping[str, Any]] = None  # the open snapshot: its name, stage, epoch and step
        self.checking = False  # the sanity check: hooks and reshapes run, nothing is kept
        self.split = "val"  # the rows being recorded: "val" or "test", then "train" in record_train's pass
        self.missing: dict[str, int] = {}  # rows each layer was not called for
        self._path: Optional[Path] = None
        self._said_missing: set[str] = set()
        self._called: dict[str, int] = {}  # the sanity check's calls of each layer
        self._in_batch = False  # the current batch is recorded (or checked)
        self._batch_size: Optional[int] = None
        self._writer: Optional[store.EpochWriter] = None
        self._pending: list[dict[str, Any]] = []  # batches waiting for a layer's first vectors (its width)
        self._seen: dict[int, int] = defaultdict(int)
        self._limits: dict[int, Optional[int]] = {}
        self._orders: dict[int, Optional[np.ndarray]] = {}

    def layers(self) -> list[tuple[str, str]]:
        """Each recorded layer's column and reshape, as a run's manifest lists them."""
        return [(capture.layer.column, capture.strategy.name) for capture in self.captures]

    def start_check(self) -> None:
        """The sanity check begins: its batches run through the hooks and reshapes, nothing is kept."""
        self.checking = True
        self._called = {capture.layer.column: 0 for capture in self.captures}

    def end_check(self) -> None:
        """The sanity check ends.

        Raises:
            ValueError: a layer was called in none of its steps, naming it.
        """
        self._switch(False)
        self.checking = False
        refuse_uncalled(self._called, "any sanity-check step")

    def start(self, path: Path, snapshot: Mapping[str, Any], split: str, loaders: list[Any]) -> None:
        """A snapshot (its ``name``, ``stage``, ``epoch`` and ``step``) begins; its rows go to ``path`` (written
        there only when complete)."""
        self._path, self.snapshot = path, snapshot
        self.live.start([capture.layer.column for capture in self.captures])
        self.missing = {capture.layer.column: 0 for capture in self.captures}
        self.start_split(split, loaders)

    def start_split(self, split: str, loaders: list[Any], bounds: Optional[list[int]] = None) -> None:
        """Rows from ``loaders`` come next: at most ``max_samples`` (or ``bounds``) of each, never
        DistributedSampler's padding."""
        self.split = split
        if self.inputs is not None:
            self.inputs.start(split)
        self._seen.clear()
        self._limits = {
            i: min((n for n in (self.max_samples, batches.real_samples(dl), bounds[i] if bounds else None)
                    if n is not None), default=None)
            for i, dl in enumerate(loaders)
        }
        self._orders = {i: batches.sample_order(dl, self._limits[i]) for i, dl in enumerate(loaders)}

    def start_batch(self, dataloader_idx: int, batch: Any) -> None:
        """A batch begins: the hooks run where it holds rows to record (or the sanity check runs), and are off
        otherwise."""
        self._in_batch = self.checking or (self.snapshot is not None and self.wants(dataloader_idx))
        if self._in_batch:
            mask, self._batch_size = batches.attention_mask(batch), batches.batch_size(batch)
            for capture in self.captures:
                capture.start_batch(mask, self._batch_size)
        self._switch(self._in_batch)

    def end_batch(self) -> Optional[tuple[list[Optional[np.ndarray]], Optional[int]]]:
        """The batch's vectors (one array per layer, None for a layer not called) and its number of samples (None
        where no layer ran and the batch did not say); None where the batch is not recorded."""
        if not self._in_batch:
            return None
        self._in_batch = False
        vectors = batch_vectors(self.captures, self.warn, self._called if self.checking else None)
        return vectors, next((len(v) for v in vectors if v is not None), self._batch_size)

    def wants(self, dataloader_idx: int) -> bool:
        """Whether the next batch of this loader holds rows to record."""
        limit = self._limits.get(dataloader_idx)
        return limit is None or self._seen[dataloader_idx] < limit

    def taken(self, dataloader_idx: int, size: int) -> int:
        """How many rows of a batch of ``size`` are recorded: all, or those up to the loader's limit."""
        limit = self._limits.get(dataloader_idx)
        return size if limit is None else min(size, limit - self._seen[dataloader_idx])

    def sample_ids(self, given: Optional[np.ndarray], size: int, dataloader_idx: int) -> np.ndarray:
        """The ids of a batch's rows: ``given`` (an ``id_key``), else their indices in the loader's fixed order,
        else (a shuffled loader; warned once) their positions in the epoch."""
        if given is not None:
            return given
        seen, order = self._seen[dataloader_idx], self._orders.get(dataloader_idx)
        needed = self.taken(dataloader_idx, size)  # the rows kept (the order stops at the limit)
        if order is not None and seen + needed <= len(order):
            return order[seen : seen + needed]
        self.warn(
            f"EmbeddingCollector: {'training' if self.split == 'train' else self.split} dataloader {dataloader_idx} "
            "does not visit its samples in a fixed order (a shuffling sampler or an iterable dataset), so sample_id "
            "records each sample's position in the epoch and may not name the same sample in two epochs. Use an "
            "unshuffled loader, or pass id_key."
        )
        return np.arange(seen, seen + size, dtype=np.int64)

    def add(self, vectors: Sequence[Any], dataloader_idx: int, size: int, ids: Optional[np.ndarray] = None,
            labels: Optional[np.ndarray] = None, predictions: Optional[np.ndarray] = None,
            logits: Optional[np.ndarray] = None, batch: Any = None) -> None:
        """Record a batch of ``size`` rows: its ``vectors`` (from :meth:`end_batch`), its ``ids`` (None: their place
        in the loader's order), labels, predictions and the step's own logits (each may be None; predictions are
        the logits' argmax where not given), and what its samples are (from ``batch``, where inputs are kept);
        rows past the loader's limit are dropped. Labelled validation rows are kept for the live k-NN accuracy."""
        take = self.taken(dataloader_idx, size)
        layer_logits = next((v for c, v in zip(self.captures, vectors) if c.layer.column == self.logits), None)
        keep = self.split != "train" and labels is not None and self.live.room() > 0
        ready = next((c.copied for c in self.captures if c.copied is not None), None)  # the copy off a GPU
        if ready is not None and (keep or (predictions is None and logits is None and layer_logits is not None)):
            ready.synchronize()  # this thread reads the vectors (kept for knn_accuracy, argmax of a logits layer)
            ready = None
        if keep:
            self.live.keep([v if v is None else v[:take] for v in vectors], labels[:take])
        if predictions is None and (logits is not None or layer_logits is not None):
            predictions = (logits if logits is not None else layer_logits).argmax(1)
        columns: dict[str, Any] = {
            "sample_id": self.sample_ids(ids, size, dataloader_idx),
            "split": np.full(size, self.split),
            "stage": np.full(size, self.snapshot["stage"]),
            "epoch": np.full(size, self.snapshot["epoch"], dtype=np.int32),
            "step": np.full(size, self.snapshot["step"], dtype=np.int64),
            "dataloader_idx": np.full(size, dataloader_idx, dtype=np.int32),
            "label": labels,
            "prediction": predictions,
            "logits": logits if self.logits is None else None,  # a recorded layer's logits are in its own column
            **{capture.layer.column: v for capture, v in zip(self.captures, vectors)},
        }
        for capture, v in zip(self.captures, vectors):
            if v is None:
                self.missing[capture.layer.column] += take
        self._write({name: value[:take] for name, value in columns.items() if value is not None}, ready)
        if self.inputs is not None and batch is not None:
            self.inputs.add(batch, columns["sample_id"], dataloader_idx, take)
        self._seen[dataloader_idx] += take

    def report_missing(self, totals: Mapping[str, int], name: str) -> dict[str, int]:
        """The layers that missed rows of snapshot ``name`` (``totals``: :attr:`missing` summed over ranks), with
        how many; each layer said once per fit."""
        missing = {column: int(n) for column, n in totals.items() if n}
        for column, n in missing.items():
            if column not in self._said_missing:
                self._said_missing.add(column)
                self.warn(f"EmbeddingCollector: layer {column!r} was not called for {n} samples of "
                          f"{name} (validation_step skips it on some batches): they have no vector "
                          "for it (null in vectors/, left out of its map); the other layers are whole. The manifest "
                          "counts them per snapshot.")
        return missing

    def end(self) -> bool:
        """Close the snapshot's file; whether one was written.

        Raises:
            ValueError: a layer was never called in the snapshot (its width unknown), naming it.
        """
        self._switch(False)
        pending, self._pending = self._pending, []
        if pending:
            refuse_uncalled({c.layer.column: c.dim or 0 for c in self.captures}, f"any step of {self.snapshot['name']}")
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if self.inputs is not None:
            self.inputs.end()
        self.snapshot = None
        return writer is not None

    def abort(self) -> None:
        """Discard the unfinished snapshot (nothing of it is left on disk) or the sanity check."""
        self._switch(False)
        self.snapshot, self.checking, self._pending = None, False, []
        if self.inputs is not None:
            self.inputs.abort()
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def remove(self) -> None:
        """Discard what is unfinished and remove the layers' hooks: the model carries none of ours."""
        self.abort()
        for capture in self.captures:
            capture.remove()

    def _switch(self, on: bool) -> None:
        for capture in self.captures:
            capture.active = on

    def _write(self, columns: dict[str, Any], ready: Any) -> None:
        """Hand a batch to the snapshot's writer; until every layer has run once (its width unknown), hold it."""
        if self._writer is None:
            if any(capture.dim is None for capture in self.captures):
                if ready is not None:
                    ready.synchronize()
                self._pending.append(columns)
                return
            self._writer = store.EpochWriter(self._path, self._schema(columns))
            for held in self._pending:
                self._writer.write(held)
            self._pending = []
        self._writer.write(columns, ready)

    def _schema(self, columns: Mapping[str, Any]) -> pa.Schema:
        """The snapshot file's schema: the batch's key and fact columns, then one vector column per layer."""
        layer_columns = {c.layer.column for c in self.captures}
        fields = [pa.field(name, pa.list_(pa.float32(), value.shape[1]) if np.ndim(value) == 2
                           else pa.array(value).type)
                  for name, value in columns.items() if name not in layer_columns]
        fields += [pa.field(c.layer.column, pa.list_(pa.float32(), c.dim)) for c in self.captures]
        return pa.schema(fields, metadata={store.METADATA_KEY: json.dumps({"layers": layer_facts(self.captures)})})


def layer_facts(captures: Sequence[LayerCapture]) -> list[dict[str, Any]]:
    """What a snapshot file says of each layer: its spec, index, name, type, reshape, output shape and width."""
    return [
        {
            "column": c.layer.column,
            "spec": c.layer.spec,
            "index": c.layer.index,
            "name": c.layer.name,
            "type": type(c.layer.module).__name__,
            "strategy": c.strategy.name,
            "output_shape": list(c.output_shape or ()),
            "dim": c.dim,
        }
        for c in captures
    ]


def refuse_uncalled(called: Mapping[str, int], where: str) -> None:
    """Raise for the layers ``called`` counts no call of (``where``: in which steps)."""
    never = [column for column, calls in called.items() if not calls]
    if never:
        raise ValueError(
            f"EmbeddingCollector: layer(s) {never} were not called in {where} of validation_step: record "
            "layers on its forward path (lightning-embeddings layers MODEL --input-shape ... lists what runs)."
        )
