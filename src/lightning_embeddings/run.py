"""``EmbeddingRun``: a run directory written by :class:`~lightning_embeddings.EmbeddingCollector`, read back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

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
    snapshot_files,
    read_manifest,
    write_manifest,
    write_table,
)

KEYS = ("stage", "epoch", "step", "dataloader_idx", "sample_id")
LONG_PROJECTIONS = "projections.parquet"
SAMPLE_FACTS = ("label", "prediction")


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
        table = self._snapshot_table(self._snapshot(stage, epoch, step), [column], dataloader_idx)
        return table.column("sample_id").to_numpy(), column_vectors(table.column(column))

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
        tables = [self._snapshot_table(snapshot, columns) for snapshot in chosen]
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
        progress: bool = True,
        **reducer_kwargs: Any,
    ) -> dict[str, pd.DataFrame]:
        """Fit a map per layer, place every snapshot in it, write the maps and measure how faithful each one is.

        ``align`` chooses how snapshots share one space (docs/align.md compares them):

        - ``"joint"`` (default): fit on all snapshots of ``fit`` together (all dataloaders, at most 20,000 rows),
          then pass every snapshot through ``transform``: each keeps its own structure in one shared space.
        - ``"last"``: fit on the last snapshot of ``fit`` and pass every snapshot through ``transform``: each
          sample is drawn where it sits relative to the final structure (as 3LC does). Early snapshots can look
          more formed than they were; their trustworthiness says so.
        - ``"aligned"``: ``umap.AlignedUMAP``, one map per snapshot tied by each sample's identity (UMAP only).

        Either way equal vectors in two snapshots give equal points. Each snapshot's ``trustworthiness`` (10
        neighbours, against its own vectors) goes into the manifest; below 0.8 a warning says the map is not
        faithful there. Snapshots of ``trainer.validate``/``test`` are placed in the map, never fitted on. Layers
        with too few samples are skipped with a warning.

        Example::

            maps = EmbeddingRun(path).reduce(reducer="pacmap", n_components=3, align="joint")
            maps["head.1"].groupby("epoch")[["x", "y", "z"]].mean()
        """
        reducers.check_reducer(reducer, align)
        if reducer is None:
            return {}
        if n_components not in (2, 3):
            raise ValueError(f"n_components must be 2 or 3, got {n_components!r}.")
        snapshots = self.manifest["snapshots"]
        if not snapshots:
            rank_zero_warn(f"{self.path} has no complete snapshot: nothing to reduce.")
            return {}
        fit_stage = [i for i, s in enumerate(snapshots) if s["stage"] == "fit"] or list(range(len(snapshots)))
        fitted = snapshots[fit_stage[-1]]  # the last snapshot fitted on
        columns = [self.layer(layer)["column"] for layer in layers] if layers is not None else self.layers
        earlier = (self.manifest.get("reducer") or {}).get("layers", {})  # layers reduced before and not now
        record: dict[str, Any] = {"name": reducer if isinstance(reducer, str) else None, "n_components": n_components,
                                  "seed": seed, "align": align, "kwargs": reducer_kwargs, "fitted_on": dict(fitted),
                                  "layers": earlier}
        maps = {}
        for column in columns:
            tables = [self._snapshot_table(snapshot, [column]) for snapshot in snapshots]
            vectors = [column_vectors(t.column(column)) for t in tables]
            fit_on = vectors[fit_stage[-1]] if align == "last" else reducers.joint_sample([vectors[i] for i in fit_stage], seed)
            # samples, not rows: a joint fit on 3 samples of 5 snapshots is still a map of 3 samples
            fewest = min(map(len, vectors)) if align == "aligned" else len(vectors[fit_stage[-1]])
            if fewest < reducers.min_samples(n_components):
                reason = f"{fewest} samples per snapshot; a map needs at least {reducers.min_samples(n_components)}"
                rank_zero_warn(f"lightning-embeddings: layer {column!r} is not reduced: {reason}.")
                record["layers"][column] = {"skipped": reason}
                projection_file(self.path, column).unlink(missing_ok=True)
                continue
            name = reducer if isinstance(reducer, str) else type(reducer).__name__
            rank_zero_info(
                f"lightning-embeddings: fitting {name} (align={align!r}) on layer {column!r}: {len(fit_on)} samples x "
                f"{fit_on.shape[1]} dims, placing {len(snapshots)} snapshots"
            )
            if align == "aligned":
                keys = [t.column("dataloader_idx").to_numpy().astype(np.int64) << 40 | t.column("sample_id").to_numpy()
                        for t in tables]
                points, estimator = reducers.aligned_maps(vectors, keys, n_components, seed, **reducer_kwargs)
            else:
                estimator = reducers.make_reducer(reducer, n_components, seed, len(fit_on), **reducer_kwargs)
                points = reducers.fit_and_project(estimator, fit_on, vectors, progress)
            maps[column] = self._write_map(column, tables, points)
            trust = {s["name"]: reducers.faithfulness(v, p, seed) for s, v, p in zip(snapshots, vectors, points)}
            record["layers"][column] = {"samples": len(fit_on), **reducers.describe(estimator), "trustworthiness": trust}
            self._report_faithfulness(column, trust)
        self.manifest["reducer"] = record
        write_manifest(self.path, self.manifest)
        self._write_long_projections()
        return maps

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
        """``projections.parquet`` at the run's root: every layer's map in one long table, with ``correct``."""
        frames = []
        for column in self.layers:
            path = projection_file(self.path, column)
            if path.is_file():
                frame = pd.read_parquet(path)
                frame.insert(0, "layer", column)
                if {"label", "prediction"} <= set(frame.columns):
                    frame["correct"] = frame["label"] == frame["prediction"]
                frames.append(frame)
        target = self.path / LONG_PROJECTIONS
        if not frames:
            target.unlink(missing_ok=True)
            return
        write_table(target, pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False))

    def _write_map(self, column: str, tables: list[pa.Table], points: list[np.ndarray]) -> pd.DataFrame:
        frames = []
        for table, xyz in zip(tables, points):
            frame = table.drop_columns([column]).to_pandas()
            for axis, values in zip("xyz", xyz.T):
                frame[axis] = values
            frames.append(frame)
        projections = pd.concat(frames, ignore_index=True)
        axes = [a for a in "xyz" if a in projections]
        facts = [c for c in SAMPLE_FACTS if c in projections]
        projections = projections[["sample_id", "stage", "epoch", "step", "dataloader_idx", *axes, *facts]]
        write_table(projection_file(self.path, column), pa.Table.from_pandas(projections, preserve_index=False))
        return projections

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

    def _snapshot_table(
        self, snapshot: dict[str, Any], columns: Sequence[str], dataloader_idx: Optional[int] = None
    ) -> pa.Table:
        """One snapshot's rows of all ranks, DDP's padding duplicates dropped, ordered by (dataloader_idx, sample_id)."""
        tables = []
        for path in snapshot_files(self.path, snapshot["name"]):
            schema = pq.read_schema(path)
            present = [c for c in (*KEYS, *SAMPLE_FACTS) if c in schema.names]
            tables.append(pq.read_table(path, columns=[*present, *columns]))
        table = pa.concat_tables(tables, promote_options="default")
        if dataloader_idx is not None:
            table = table.filter(pc.equal(table.column("dataloader_idx"), dataloader_idx))
        loader, ids = table.column("dataloader_idx").to_numpy(), table.column("sample_id").to_numpy()
        order = np.lexsort((ids, loader))
        keep = np.ones(len(order), dtype=bool)
        keep[1:] = (np.diff(loader[order]) != 0) | (np.diff(ids[order]) != 0)
        return table.take(order[keep])
