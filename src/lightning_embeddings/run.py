"""``EmbeddingRun``: a run directory written by :class:`~lightning_embeddings.EmbeddingCollector`, read back."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_embeddings import reduce as reducers
from lightning_embeddings.layers import LayerSpec
from lightning_embeddings.store import (
    MANIFEST,
    column_vectors,
    projection_file,
    read_manifest,
    snapshot_files,
    vectors_array,
    write_manifest,
    write_tables,
)

KEYS = ("stage", "epoch", "step", "dataloader_idx", "sample_id")
MAP_KEYS = ("sample_id", "stage", "epoch", "step", "dataloader_idx")  # the first columns of a projections file
LONG_PROJECTIONS = "projections.parquet"
SAMPLE_FACTS = ("label", "prediction")
READ_BUFFER = 2**20  # bytes read from a file at once


@dataclass
class _Rows:
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


def _with_points(keys: pa.Table, points: np.ndarray) -> pa.Table:
    """A snapshot's keys and facts with its points as columns ``x, y[, z]``."""
    for axis, values in zip("xyz", np.asarray(points).T):
        keys = keys.append_column(axis, pa.array(values, pa.float32()))
    return keys


class Maps(Mapping[str, pd.DataFrame]):
    """What :meth:`EmbeddingRun.reduce` made: layer column -> its projections, read from disk when asked for."""

    def __init__(self, run: "EmbeddingRun", columns: Sequence[str]) -> None:
        self._run, self._columns = run, list(columns)

    def __getitem__(self, column: str) -> pd.DataFrame:
        if column not in self._columns:
            raise KeyError(column)
        return self._run.projections(column)

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


class EmbeddingRun:
    """The vectors and projections of one run directory.

    A run holds snapshots: one per recorded validation (several per epoch with ``val_check_interval < 1``), and
    one per recorded ``trainer.validate``/``trainer.test``, each named by its stage, epoch and global step.

    Args:
        path: the run directory (``collector.dirpath``, by default ``<log_dir>/embeddings``).

    Raises:
        FileNotFoundError: ``path`` holds no run.

    Example::

        run = EmbeddingRun("lightning_logs/version_0/embeddings")
        run.layers, run.epochs                      # ['conv2', 'head.1'], [0, 1, 2, 3, 4]
        ids, X = run.vectors("head.1", epoch=4)     # (N,) int64, (N, D) float32
        run.projections("head.1")                   # sample_id, stage, epoch, step, dataloader_idx, x, y, label...
        run.reduce(reducer="pca")                   # fit again, no retraining
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
        self.manifest = read_manifest(self.path)

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

    def vectors(
        self,
        layer: LayerSpec,
        epoch: Optional[int] = None,
        step: Optional[int] = None,
        stage: str = "fit",
        dataloader_idx: Optional[int] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One layer's vectors in one snapshot, ordered by ``(dataloader_idx, sample_id)``.

        The snapshot is the ``stage``'s last one at ``epoch`` (at ``step``, where an epoch has several), or its
        last one overall when ``epoch`` is None.

        Returns:
            ``(sample_ids, vectors)``: an ``(N,)`` int64 array and an ``(N, D)`` float32 array.
        """
        column = self.layer(layer)["column"]
        rows = self._rows(self._snapshot(stage, epoch, step), dataloader_idx)
        return rows.keys.column("sample_id").to_numpy(), self._read(rows, column, rows.stored)

    def table(
        self,
        epochs: Optional[Sequence[int]] = None,
        layers: Optional[Sequence[LayerSpec]] = None,
        stages: Optional[Sequence[str]] = None,
    ) -> pd.DataFrame:
        """The recorded rows of the chosen snapshots (all by default) as a DataFrame: keys, label/prediction
        when known, one array-valued column per layer."""
        columns = [self.layer(layer)["column"] for layer in layers] if layers is not None else self.layers
        chosen = [
            s for s in self.manifest["snapshots"]
            if (epochs is None or s["epoch"] in epochs) and (stages is None or s["stage"] in stages)
        ]
        tables = []
        for snapshot in chosen:
            rows = self._rows(snapshot)
            table = rows.keys
            for column in columns:
                table = table.append_column(column, vectors_array(self._read(rows, column, rows.stored)))
            tables.append(table)
        return pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame(columns=[*KEYS, *columns])

    def projections(self, layer: LayerSpec) -> pd.DataFrame:
        """One layer's map: ``sample_id, stage, epoch, step, dataloader_idx, x, y[, z]``, with ``label`` and
        ``prediction`` when known; one row per sample and snapshot."""
        path = projection_file(self.path, self.layer(layer)["column"])
        if not path.is_file():
            raise FileNotFoundError(
                f"No projections of layer {layer!r} in {self.path}: the run was not reduced (reducer=None, too few "
                "samples, or fit ended early). Call EmbeddingRun(...).reduce() to make them."
            )
        return pd.read_parquet(path)

    def reduce(
        self,
        reducer: reducers.ReducerSpec = "umap",
        n_components: int = 2,
        seed: Optional[int] = 0,
        layers: Optional[Sequence[LayerSpec]] = None,
        align: reducers.Align = "joint",
        fit_samples: Optional[int] = reducers.FIT_SAMPLES,
        progress: bool = True,
        **reducer_kwargs: Any,
    ) -> Mapping[str, pd.DataFrame]:
        """Fit a map per layer, place every snapshot in it, write the maps and measure how faithful each one is.

        ``align`` chooses how snapshots share one space (docs/align.md compares them):

        - ``"joint"`` (default): fit on all snapshots of ``fit`` together (all dataloaders), then pass every
          snapshot through ``transform``: each keeps its own structure in one shared space.
        - ``"last"``: fit on the last snapshot of ``fit`` and pass every snapshot through ``transform``: each
          sample is drawn where it sits relative to the final structure (as 3LC does). Early snapshots can look
          more formed than they were; their trustworthiness says so.
        - ``"aligned"``: ``umap.AlignedUMAP``, one map per snapshot tied by each sample's identity (UMAP only;
          it fits every sample of every snapshot, so each snapshot may hold at most ``fit_samples``).

        ``fit_samples`` caps the rows a map is fitted on (None: all): a random sample that keeps each snapshot's
        and each label's share. Every row is then placed by ``transform``, 65,536 rows at a time, one snapshot
        after another, so memory holds one snapshot's keys and points, not its vectors. Equal vectors in two
        snapshots give equal points. Each snapshot's ``trustworthiness`` (10 neighbours, against its own vectors,
        on at most 2,000 samples) goes into the manifest; below 0.8 a warning says the map is not faithful there.
        Snapshots of ``trainer.validate``/``test`` are placed in the map, never fitted on. Layers with too few
        samples are skipped with a warning.

        Returns:
            Layer column -> its projections (read from ``projections/<layer>.parquet`` when looked up).

        Example::

            maps = EmbeddingRun(path).reduce(reducer="pacmap", n_components=3, align="joint")
            maps["head.1"].groupby("epoch")[["x", "y", "z"]].mean()
        """
        reducers.check_reducer(reducer, align)
        if reducer is None:
            return {}
        if n_components not in (2, 3):
            raise ValueError(f"n_components must be 2 or 3, got {n_components!r}.")
        reducers.check_fit_samples(fit_samples, n_components)
        snapshots = self.manifest["snapshots"]
        if not snapshots:
            rank_zero_warn(f"{self.path} has no complete snapshot: nothing to reduce.")
            return {}
        fitted_on = [s for s in snapshots if s["stage"] == "fit"] or snapshots
        largest = max(len(self._rows(s)) for s in snapshots) if align == "aligned" else 0
        if fit_samples is not None and largest > fit_samples:
            raise ValueError(
                f"align='aligned' fits every sample of every snapshot (umap.AlignedUMAP has no transform), and "
                f"{self.path} has snapshots of {largest} samples, more than fit_samples={fit_samples}. Use "
                "align='joint', or raise fit_samples (None: no limit) if memory allows."
            )
        columns = [self.layer(layer)["column"] for layer in layers] if layers is not None else self.layers
        earlier = (self.manifest.get("reducer") or {}).get("layers", {})  # layers reduced before and not now
        record: dict[str, Any] = {"name": reducer if isinstance(reducer, str) else None, "n_components": n_components,
                                  "seed": seed, "align": align, "fit_samples": fit_samples, "kwargs": reducer_kwargs,
                                  "fitted_on": dict(fitted_on[-1]), "layers": earlier}
        # samples, not rows: a joint fit on 3 samples of 5 snapshots is still a map of 3 samples
        fewest = min(len(self._rows(s)) for s in (snapshots if align == "aligned" else fitted_on[-1:]))
        reduced = []
        for column in columns:
            if fewest < reducers.min_samples(n_components):
                reason = f"{fewest} samples per snapshot; a map needs at least {reducers.min_samples(n_components)}"
                rank_zero_warn(f"lightning-embeddings: layer {column!r} is not reduced: {reason}.")
                record["layers"][column] = {"skipped": reason}
                projection_file(self.path, column).unlink(missing_ok=True)
                continue
            if align == "aligned":
                estimator, samples, trust = self._aligned_map(column, snapshots, n_components, seed, **reducer_kwargs)
            else:
                fit_on = self._fit_sample(column, fitted_on if align == "joint" else fitted_on[-1:], fit_samples, seed)
                name = reducer if isinstance(reducer, str) else type(reducer).__name__
                rank_zero_info(
                    f"lightning-embeddings: fitting {name} (align={align!r}) on layer {column!r}: {len(fit_on)} "
                    f"samples x {fit_on.shape[1]} dims, placing {len(snapshots)} snapshots"
                )
                estimator = reducers.make_reducer(reducer, n_components, seed, len(fit_on), **reducer_kwargs)
                estimator.fit(fit_on)
                samples, trust = len(fit_on), self._project(column, snapshots, estimator.transform, n_components,
                                                             seed, progress)
            record["layers"][column] = {"samples": samples, **reducers.describe(estimator), "trustworthiness": trust}
            self._report_faithfulness(column, trust)
            reduced.append(column)
        self.manifest["reducer"] = record
        write_manifest(self.path, self.manifest)
        self._write_long_projections()
        return Maps(self, reduced)

    def _fit_sample(
        self, column: str, snapshots: Sequence[dict[str, Any]], fit_samples: Optional[int], seed: Optional[int]
    ) -> np.ndarray:
        """The vectors a map is fitted on: at most ``fit_samples`` rows of ``snapshots``, each snapshot and each
        label keeping its share."""
        # each snapshot's keys are read twice (its size, then its rows) rather than all held at once
        sizes = [len(self._rows(s)) for s in snapshots]
        quotas = reducers.quotas(np.array(sizes), sys.maxsize if fit_samples is None else fit_samples)
        parts = []
        for snapshot, quota in zip(snapshots, quotas):
            rows = self._rows(snapshot)
            parts.append(self._read(rows, column, rows.stored[reducers.choose_rows(rows.groups(), int(quota), seed)]))
        return np.concatenate(parts)

    def _project(
        self,
        column: str,
        snapshots: Sequence[dict[str, Any]],
        transform: Callable[[np.ndarray], Any],
        n_components: int,
        seed: Optional[int],
        progress: bool,
    ) -> dict[str, Optional[float]]:
        """Place every snapshot's rows with ``transform``, a batch at a time, writing the layer's projections file;
        return each snapshot's trustworthiness."""
        from tqdm.auto import tqdm

        trust: dict[str, Optional[float]] = {}

        def tables() -> Iterator[pa.Table]:
            bar = tqdm(snapshots, desc=f"placing {column}", unit="snapshot", delay=2, disable=not progress, leave=False)
            for snapshot in bar:
                rows = self._rows(snapshot)
                measured = reducers.choose_rows(np.zeros(len(rows)), reducers.FAITHFUL_ROWS, seed)
                vectors, points = self._read(rows, column, rows.stored[measured], transform)
                trust[snapshot["name"]] = reducers.faithfulness(vectors, points[measured])
                yield _with_points(rows.keys, points)

        write_tables(projection_file(self.path, column), tables(), self._map_schema(snapshots, n_components))
        return trust

    def _aligned_map(
        self,
        column: str,
        snapshots: Sequence[dict[str, Any]],
        n_components: int,
        seed: Optional[int],
        **reducer_kwargs: Any,
    ) -> tuple[reducers.ReducerLike, int, dict[str, Optional[float]]]:
        """``umap.AlignedUMAP`` on every sample of every snapshot (it has no ``transform``)."""
        every = [self._rows(s) for s in snapshots]
        largest = max(map(len, every))
        vectors = [self._read(rows, column, rows.stored) for rows in every]
        keys = [rows.keys.column("dataloader_idx").to_numpy().astype(np.int64) << 40
                | rows.keys.column("sample_id").to_numpy() for rows in every]
        rank_zero_info(f"lightning-embeddings: fitting AlignedUMAP on layer {column!r}: {len(snapshots)} snapshots "
                       f"of up to {largest} samples x {vectors[0].shape[1]} dims")
        points, estimator = reducers.aligned_maps(vectors, keys, n_components, seed, **reducer_kwargs)
        write_tables(projection_file(self.path, column), map(_with_points, (rows.keys for rows in every), points),
                     self._map_schema(snapshots, n_components))
        trust = {}
        for snapshot, v, xyz in zip(snapshots, vectors, points):
            measured = reducers.choose_rows(np.zeros(len(v)), reducers.FAITHFUL_ROWS, seed)
            trust[snapshot["name"]] = reducers.faithfulness(v[measured], xyz[measured])
        return estimator, sum(map(len, vectors)), trust

    def _report_faithfulness(self, column: str, trust: dict[str, Optional[float]]) -> None:
        said = ", ".join(f"{name} {value:.2f}" if value is not None else f"{name} -" for name, value in trust.items())
        rank_zero_info(f"lightning-embeddings: trustworthiness of layer {column!r} per snapshot: {said}")
        unfaithful = [name for name, value in trust.items() if value is not None and value < reducers.FAITHFUL]
        if unfaithful:
            rank_zero_warn(
                f"lightning-embeddings: the map of layer {column!r} is not faithful at {', '.join(unfaithful)} "
                f"(trustworthiness below {reducers.FAITHFUL}): there, neighbours in the picture are often not "
                "neighbours in the vectors. With align='last' early snapshots are drawn by the final structure; "
                "align='joint' or 'aligned' keep each snapshot's own."
            )

    def _write_long_projections(self) -> None:
        """``projections.parquet`` at the run's root: every layer's map in one long table, with ``correct``;
        streamed a row group at a time."""
        files = [(column, projection_file(self.path, column)) for column in self.layers]
        files = [(column, path) for column, path in files if path.is_file()]
        target = self.path / LONG_PROJECTIONS
        if not files:
            target.unlink(missing_ok=True)
            return

        def tables() -> Iterator[pa.Table]:
            for column, path in files:
                source = pq.ParquetFile(path)
                for i in range(source.num_row_groups):
                    table = source.read_row_group(i)
                    table = table.add_column(0, "layer", pa.array([column] * table.num_rows, pa.string()))
                    if {"label", "prediction"} <= set(table.column_names):
                        table = table.append_column("correct", pc.equal(table.column("label"), table.column("prediction")))
                    yield table

        stored = pa.unify_schemas([pq.read_schema(path) for _, path in files])
        names = [c for c in (*MAP_KEYS, *"xyz", *SAMPLE_FACTS) if c in stored.names]
        correct = [pa.field("correct", pa.bool_())] if {"label", "prediction"} <= set(names) else []
        write_tables(target, tables(), pa.schema([pa.field("layer", pa.string()), *map(stored.field, names), *correct]))

    def _map_schema(self, snapshots: Sequence[dict[str, Any]], n_components: int) -> pa.Schema:
        """A layer's projections file: ``sample_id, stage, epoch, step, dataloader_idx, x, y[, z]``, then the
        sample facts any of ``snapshots`` holds."""
        stored = pa.unify_schemas([pq.read_schema(path) for snapshot in snapshots
                                   for path in snapshot_files(self.path, snapshot["name"])])
        axes = [pa.field(axis, pa.float32()) for axis in "xyz"[:n_components]]
        return pa.schema([*(stored.field(c) for c in MAP_KEYS), *axes,
                          *(stored.field(c) for c in SAMPLE_FACTS if c in stored.names)])

    def _snapshot(self, stage: str, epoch: Optional[int], step: Optional[int]) -> dict[str, Any]:
        candidates = [
            s for s in self.manifest["snapshots"]
            if s["stage"] == stage and (epoch is None or s["epoch"] == epoch) and (step is None or s["step"] == step)
        ]
        if not candidates:
            recorded = ", ".join(f"{s['stage']} epoch {s['epoch']} step {s['step']}" for s in self.manifest["snapshots"])
            wanted = f"{stage} epoch {epoch!r}" + ("" if step is None else f" step {step!r}")
            raise ValueError(f"{wanted} was not recorded in {self.path}; complete snapshots: {recorded or 'none'}.")
        return candidates[-1]

    def _rows(self, snapshot: dict[str, Any], dataloader_idx: Optional[int] = None) -> _Rows:
        """One snapshot's samples of all ranks (keys and facts, not vectors), DDP's padding duplicates dropped,
        ordered by ``(dataloader_idx, sample_id)``."""
        files = snapshot_files(self.path, snapshot["name"])
        tables = []
        for path in files:
            names = pq.read_schema(path).names
            tables.append(pq.read_table(path, columns=[c for c in (*KEYS, *SAMPLE_FACTS) if c in names]))
        table = pa.concat_tables(tables, promote_options="default")
        stored = np.arange(table.num_rows)
        if dataloader_idx is not None:
            stored = np.flatnonzero(table.column("dataloader_idx").to_numpy() == dataloader_idx)
        loader, ids = table.column("dataloader_idx").to_numpy()[stored], table.column("sample_id").to_numpy()[stored]
        order = np.lexsort((ids, loader))
        keep = np.ones(len(order), dtype=bool)
        keep[1:] = (np.diff(loader[order]) != 0) | (np.diff(ids[order]) != 0)
        stored = stored[order[keep]]
        return _Rows(files, table.take(stored), stored)

    def _read(
        self,
        rows: _Rows,
        column: str,
        positions: np.ndarray,
        transform: Optional[Callable[[np.ndarray], Any]] = None,
    ) -> Any:
        """The vectors of the stored rows at ``positions``, in that order, read a batch of at most
        ``TRANSFORM_ROWS`` rows at a time (never the whole column at once).

        With ``transform``, also every stored row passed through it batch by batch, returned in ``rows``' order:
        ``(vectors, points)``.
        """
        wanted_order = np.argsort(positions, kind="stable")
        wanted = positions[wanted_order]
        out = np.empty((len(positions), self.layer(column)["dim"]), dtype=np.float32)
        points = []
        start = 0
        for path in rows.files:
            source = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER)  # a column chunk is not read whole
            for batch in source.iter_batches(batch_size=reducers.TRANSFORM_ROWS, columns=[column]):
                vectors = column_vectors(batch.column(0))
                lo, hi = np.searchsorted(wanted, [start, start + len(vectors)])
                into, take = wanted_order[lo:hi], wanted[lo:hi] - start
                if hi > lo and take[-1] - take[0] == hi - lo - 1 and (np.diff(into) == 1).all():  # a run: copy whole
                    out[into[0]:into[-1] + 1] = vectors[take[0]:take[-1] + 1]
                else:
                    out[into] = vectors[take]
                if transform is not None:
                    points.append(np.asarray(transform(vectors), dtype=np.float32))
                start += len(vectors)
        return out if transform is None else (out, np.concatenate(points)[rows.stored])
