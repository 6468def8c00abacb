"""The samples' dynamics of a run (``samples.parquet``): computed from every ``fit`` snapshot's vectors where the
snapshots are complete, recorded with what they were computed from, read back while that holds, computed afresh
where it does not. What :meth:`EmbeddingRun.samples` returns and the pictures and exports mark.

Example::

    samples(RunReader(path), "head.1", "train").head(20)  # the training samples most likely mislabelled
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lightning_embeddings.dynamics import SnapshotView, by_suspicion, nearest_to, sample_dynamics
from lightning_embeddings.layout import SAMPLES, SPLIT
from lightning_embeddings.reader import RunReader, labelled, locate, row_keys
from lightning_embeddings.store import METADATA_KEY, RunError, sample_keys

SAMPLE_SPLITS = ("val", "train")  # the splits samples() follows across fit
SAMPLE_KEYS = (SPLIT, "dataloader_idx", "sample_id")  # what names a sample
GALLERY, GALLERY_NEIGHBOURS = 20, 5  # the suspects in the gallery, and the neighbours shown beside each
SAMPLES_FORMAT = 2  # samples.parquet's columns: 2 added neighbour_label and prediction (a file of 1 is made again)


def samples(run: RunReader, column: str, split: str = "val") -> pd.DataFrame:
    """One layer's samples of ``split`` by ``suspicion`` (see :meth:`EmbeddingRun.samples`): read from
    ``samples.parquet`` where it was computed from the run as it is (or says nothing of it), else computed.

    Raises:
        ValueError: ``split`` was not recorded, or the run has no labels or no ``fit`` snapshot.
        RunError: ``samples.parquet`` is damaged.
    """
    path = run.path / SAMPLES
    if path.is_file() and made_from(run) in (None, source(run)):
        try:
            table = pq.read_table(path, filters=[("layer", "==", column), (SPLIT, "==", split)],
                                  page_checksum_verification=True)
        except (OSError, pa.ArrowException) as err:
            raise RunError(f"{path} is not a readable Parquet file ({err}): make it again with reduce.") from err
        if table.num_rows:
            return table.drop_columns(["layer", SPLIT]).to_pandas()
    return compute(run, column, split)


def stale(run: RunReader) -> bool:
    """Whether ``samples.parquet`` is missing or was computed from other snapshots, layers or logits."""
    return made_from(run) != source(run)


def recorded(run: RunReader, column: str, splits: Sequence[str] = SAMPLE_SPLITS) -> pd.DataFrame:
    """:func:`samples` of a layer for each of ``splits`` the run follows, stacked with a ``split`` column (each
    split's rows by ``suspicion``, highest first); an empty frame of the key columns and ``suspicion`` where none
    can be had (a split not recorded, a run without labels).

    Raises:
        RunError: a file of the run is damaged.

    Example::

        recorded(EmbeddingRun(path), "head.1").groupby("split").head(3)
    """
    frames = []
    for split in splits:
        try:
            frames.append(samples(run, column, split).assign(**{SPLIT: split}))
        except RunError:
            raise
        except ValueError:  # not recorded, no labels, no fit snapshot: nothing to say about this split
            continue
    if not frames:
        return pd.DataFrame({SPLIT: pd.Series(dtype=object), "dataloader_idx": pd.Series(dtype=np.int64),
                             "sample_id": pd.Series(dtype=np.int64), "suspicion": pd.Series(dtype=float)})
    return pd.concat(frames, ignore_index=True)


def write(run: RunReader, target: Path) -> bool:
    """``samples.parquet`` written to ``target``: every layer and every split with labels; False when none has."""
    fit = [s for s in run.manifest["snapshots"] if s["stage"] == "fit"]
    splits = [split for split in SAMPLE_SPLITS if fit and labelled(run.rows(fit[-1], split=split))]
    if not splits:
        return False
    frames = [compute(run, column, split).assign(layer=column, split=split)
              for column in run.layers for split in splits]
    table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
    first = ["layer", SPLIT]
    table = table.select([*first, *(c for c in table.column_names if c not in first)])
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),  # pandas' dtypes kept
                                           METADATA_KEY: json.dumps(source(run))})
    pq.write_table(table, target, write_page_checksum=True)
    return True

def source(run: RunReader) -> dict[str, Any]:
    """What ``samples.parquet`` is computed from: the ``fit`` snapshots, the layers and the logits column."""
    return {"format": SAMPLES_FORMAT,
            "snapshots": [s["name"] for s in run.manifest["snapshots"] if s["stage"] == "fit"],
            "layers": [[layer["column"], layer["dim"]] for layer in run.manifest["layers"]],
            "logits": run.manifest.get("logits")}

def made_from(run: RunReader) -> Optional[dict[str, Any]]:
    """The :func:`source` that ``samples.parquet`` records (None: no file, or one written before it
    recorded this)."""
    try:
        metadata = pq.read_schema(run.path / SAMPLES).metadata or {}
    except (OSError, pa.ArrowException):
        return None
    return json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else None

def compute(run: RunReader, column: str, split: str) -> pd.DataFrame:
    """:func:`samples` computed from ``vectors/``: the samples of ``split`` in the last ``fit`` snapshot, over
    every ``fit`` snapshot (a sample missing from one has a NaN row there)."""
    fit = [s for s in run.manifest["snapshots"] if s["stage"] == "fit"]
    if not fit:
        raise ValueError(f"{run.path} has no snapshot of fit: samples() follows the samples across fit.")
    last = run.rows(fit[-1], split=split)
    if not len(last):
        hint = " (record it with EmbeddingCollector(record_train=True))" if split == "train" else ""
        raise ValueError(f"{run.path} holds no {split!r} rows{hint}; recorded splits: "
                         f"{sorted(set(run.rows(fit[-1]).keys.column(SPLIT).to_pylist()))}.")
    if not labelled(last):
        raise ValueError(f"{run.path} has no labels: samples() ranks samples by their labels' agreement with "
                         "their neighbours (pass label_key= to the collector where the batch names them otherwise).")
    keys, logits = row_keys(last.keys), run.manifest.get("logits")

    def views() -> Iterator[SnapshotView]:
        for snapshot in fit:
            rows = run.rows(snapshot, split=split)
            found, here = locate(rows, keys)
            vectors = run.aligned(rows, column, found, here)
            predictions = None
            if "prediction" in rows.keys.column_names:
                stored = pd.Series(rows.keys.column("prediction").to_numpy(zero_copy_only=False)[found])
                predictions = stored.where(pd.Series(here)).to_numpy()  # NaN/None where the sample is missing
            scores = None if logits is None else run.aligned(rows, logits, found, here)
            yield SnapshotView(snapshot["epoch"], vectors, predictions, scores)

    labels = last.keys.column("label").to_numpy(zero_copy_only=False)
    frame = sample_dynamics(labels, views())
    first = ["sample_id", "dataloader_idx", "label", "neighbour_label", "prediction", "suspicion"]
    keys = last.keys.select([c for c in ("sample_id", "dataloader_idx", "label", "prediction")
                             if c in last.keys.column_names]).to_pandas()
    frame = pd.concat([keys, frame], axis=1)
    if "prediction" not in frame:
        frame["prediction"] = pd.Series(np.full(len(frame), None), dtype=frame["neighbour_label"].dtype)
    frame["neighbour_label"] = as_labels(frame["neighbour_label"], frame["label"])
    frame = frame[[*first, *(c for c in frame.columns if c not in first)]]
    epochs = [c for c in frame.columns if c.endswith("_epoch")]  # epochs as integers, <NA> where none
    frame[epochs] = frame[epochs].astype("Int64")
    return by_suspicion(frame).reset_index(drop=True)


def as_labels(values: pd.Series, labels: pd.Series) -> pd.Series:
    """``values`` (labels of other samples, None where none) in the dtype of ``labels``: integers stay integers
    (``Int64`` where some are missing)."""
    if pd.api.types.is_integer_dtype(labels.dtype) or pd.api.types.is_float_dtype(labels.dtype):
        numbers = pd.to_numeric(values)
        whole = numbers.dropna()
        if (whole == whole.round()).all():
            return numbers.astype("Int64") if numbers.isna().any() else numbers.astype(labels.dtype)
        return numbers
    return values.astype(object)


def sample_columns(frame: pd.DataFrame, samples: Optional[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    """``columns`` of ``samples`` (:func:`recorded`) for each row of ``frame`` (rows of projections or
    snapshots), matched by ``split, dataloader_idx, sample_id``; NaN where a row's sample has none. Rows without a
    ``split`` column are those of their stage's evaluated split (``test`` for ``trainer.test``, else ``val``).
    Aligned to ``frame``'s index."""
    split = frame[SPLIT].to_numpy(object) if SPLIT in frame else np.where(frame["stage"] == "test", "test", "val")
    loader = frame["dataloader_idx"].to_numpy(np.int64) if "dataloader_idx" in frame else np.zeros(len(frame), np.int64)
    rows = pd.DataFrame({SPLIT: split, "dataloader_idx": loader, "sample_id": frame["sample_id"].to_numpy(np.int64)})
    columns = list(columns)
    if samples is None or samples.empty or not columns:
        return pd.DataFrame({c: np.full(len(frame), np.nan) for c in columns}, index=frame.index)
    known = samples[[*SAMPLE_KEYS, *columns]].astype({"dataloader_idx": np.int64, "sample_id": np.int64})
    known = known.drop_duplicates(list(SAMPLE_KEYS))
    merged = rows.merge(known, on=list(SAMPLE_KEYS), how="left", validate="many_to_one")
    return merged[columns].set_axis(frame.index)


class Gallery(NamedTuple):
    """What the suspects gallery shows of a layer (:func:`suspects`)."""

    column: str
    split: str  # the split with the most labelled samples: "train" under record_train, else "val"
    rows: pd.DataFrame  # its top suspects: samples()' columns, by suspicion
    neighbours: pd.DataFrame  # per suspect (``suspect``: its position in ``rows``) its nearest: rank, sample_id, ...
    inputs: pd.DataFrame  # image or text of every sample shown (EmbeddingRun.inputs); empty where none were kept


def gallery_split(samples: pd.DataFrame) -> Optional[str]:
    """The split of ``samples`` (:func:`recorded`) with the most labelled rows; None where none has a label."""
    counts = samples[samples["label"].notna()].groupby(SPLIT).size() if "label" in samples else pd.Series(dtype=int)
    return str(counts.sort_values(ascending=False, kind="stable").index[0]) if len(counts) else None


def suspects(run: RunReader, column: str, samples: pd.DataFrame, top: int = GALLERY,
             shown: int = GALLERY_NEIGHBOURS, split: Optional[str] = None) -> Optional[Gallery]:
    """The ``top`` suspects of ``split`` (by default the :func:`gallery_split`) of ``samples`` (:func:`recorded` of
    ``column``), each with its ``shown`` nearest neighbours (cosine, exact) in the layer's vectors at the last
    ``fit`` snapshot, and the inputs kept of all of them; None where no split has labels.

    Example::

        found = suspects(run, "head.1", recorded(run, "head.1"))
        found.rows[["sample_id", "label", "neighbour_label"]]
    """
    split = gallery_split(samples) if split is None else split
    if split is None or not (samples[SPLIT] == split).any():
        return None
    rows = samples[(samples[SPLIT] == split).to_numpy()].head(top).reset_index(drop=True)
    fit = [s for s in run.manifest["snapshots"] if s["stage"] == "fit"]
    last = run.rows(fit[-1], split=split)
    ids, loaders = rows["sample_id"].to_numpy(np.int64), rows["dataloader_idx"].to_numpy(np.int64)
    found, here = locate(last, sample_keys(ids, loaders, np.full(len(rows), split)))
    near = nearest_to(run.read(last, column, last.stored), found, shown)
    near[~here] = -1
    keys = last.keys.select([c for c in ("sample_id", "dataloader_idx", "label") if c in last.keys.column_names])
    picked = keys.take(pa.array(np.maximum(near.ravel(), 0))).to_pandas()
    picked.insert(0, "suspect", np.repeat(np.arange(len(rows)), shown))
    picked.insert(1, "rank", np.tile(np.arange(1, shown + 1), len(rows)))
    neighbours = picked[near.ravel() >= 0].reset_index(drop=True)
    try:
        kept = run.inputs(split)
    except ValueError:  # inputs=False, or neither image nor text: the gallery shows labels only
        kept = pd.DataFrame(columns=["sample_id", "split", "dataloader_idx", "image", "text"])
    return Gallery(column, split, rows, neighbours, kept)
