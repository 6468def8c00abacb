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
    epoch_files,
    projection_file,
    read_manifest,
    write_manifest,
    write_table,
)

KEYS = ("epoch", "dataloader_idx", "sample_id")
SAMPLE_FACTS = ("label", "prediction")


class EmbeddingRun:
    """The vectors and projections of one run directory.

    Args:
        path: the run directory (``collector.dirpath``, by default ``<log_dir>/embeddings``).

    Raises:
        FileNotFoundError: ``path`` holds no run.

    Example::

        run = EmbeddingRun("lightning_logs/version_0/embeddings")
        run.layers, run.epochs                      # ['conv2', 'head.1'], [0, 1, 2, 3, 4]
        ids, X = run.vectors("head.1", epoch=4)     # (N,) int64, (N, D) float32
        run.projections("head.1")                   # sample_id, epoch, dataloader_idx, x, y, label...
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
    def epochs(self) -> list[int]:
        """The complete recorded epochs, in order."""
        return sorted(self.manifest["epochs"])

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
        self, layer: LayerSpec, epoch: int, dataloader_idx: Optional[int] = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One layer's vectors at one epoch, ordered by ``(dataloader_idx, sample_id)``.

        Returns:
            ``(sample_ids, vectors)``: an ``(N,)`` int64 array and an ``(N, D)`` float32 array.
        """
        column = self.layer(layer)["column"]
        table = self._epoch_table(epoch, [column], dataloader_idx)
        return table.column("sample_id").to_numpy(), column_vectors(table.column(column))

    def table(self, epochs: Optional[Sequence[int]] = None, layers: Optional[Sequence[LayerSpec]] = None) -> pd.DataFrame:
        """The recorded rows as a DataFrame: keys, label/prediction when known, one array-valued column per layer."""
        columns = [self.layer(layer)["column"] for layer in layers] if layers is not None else self.layers
        wanted = self.epochs if epochs is None else list(epochs)
        tables = [self._epoch_table(epoch, columns) for epoch in wanted]
        return pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame(columns=[*KEYS, *columns])

    def projections(self, layer: LayerSpec) -> pd.DataFrame:
        """One layer's map: ``sample_id, epoch, dataloader_idx, x, y[, z]``, with ``label``/``prediction`` when known."""
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
        progress: bool = True,
        **reducer_kwargs: Any,
    ) -> dict[str, pd.DataFrame]:
        """Fit ``reducer`` on the last epoch of each layer, project every epoch through it, and write the maps.

        Every epoch, the last one included, goes through the fitted reducer's ``transform``: equal vectors in two
        epochs give equal points. Layers with too few samples are skipped with a warning.

        Example::

            maps = EmbeddingRun(path).reduce(reducer="pacmap", n_components=3)
            maps["head.1"].groupby("epoch")[["x", "y", "z"]].mean()
        """
        reducers.check_reducer(reducer)
        if reducer is None:
            return {}
        if n_components not in (2, 3):
            raise ValueError(f"n_components must be 2 or 3, got {n_components!r}.")
        if not self.epochs:
            rank_zero_warn(f"{self.path} has no complete epoch: nothing to reduce.")
            return {}
        last = self.epochs[-1]
        columns = [self.layer(layer)["column"] for layer in layers] if layers is not None else self.layers
        earlier = (self.manifest.get("reducer") or {}).get("layers", {})  # layers reduced before and not now
        record: dict[str, Any] = {"name": reducer if isinstance(reducer, str) else None, "n_components": n_components,
                                  "seed": seed, "kwargs": reducer_kwargs, "fitted_on_epoch": last, "layers": earlier}
        maps = {}
        for column in columns:
            _, fit_on = self.vectors(column, last)
            if len(fit_on) < reducers.min_samples(n_components):
                reason = f"{len(fit_on)} samples at epoch {last}; a map needs at least {reducers.min_samples(n_components)}"
                rank_zero_warn(f"lightning-embeddings: layer {column!r} is not reduced: {reason}.")
                record["layers"][column] = {"skipped": reason}
                projection_file(self.path, column).unlink(missing_ok=True)
                continue
            estimator = reducers.make_reducer(reducer, n_components, seed, len(fit_on), **reducer_kwargs)
            described = reducers.describe(estimator)
            rank_zero_info(
                f"lightning-embeddings: fitting {described['class'].rsplit('.', 1)[-1]} on layer {column!r}: "
                f"{fit_on.shape[0]} samples x {fit_on.shape[1]} dims (epoch {last}), projecting {len(self.epochs)} epochs"
            )
            tables = {epoch: self._epoch_table(epoch, [column]) for epoch in self.epochs}
            points = reducers.fit_and_project(
                estimator, fit_on, {e: column_vectors(t.column(column)) for e, t in tables.items()}, progress
            )
            maps[column] = self._write_map(column, tables, points)
            record["layers"][column] = {"samples": len(fit_on), **described}
        self.manifest["reducer"] = record
        write_manifest(self.path, self.manifest)
        return maps

    def _write_map(self, column: str, tables: dict[int, pa.Table], points: dict[int, np.ndarray]) -> pd.DataFrame:
        frames = []
        for epoch, table in tables.items():
            frame = table.drop_columns([column]).to_pandas()
            for axis, values in zip("xyz", points[epoch].T):
                frame[axis] = values
            frames.append(frame)
        projections = pd.concat(frames, ignore_index=True)
        axes = [a for a in "xyz" if a in projections]
        facts = [c for c in SAMPLE_FACTS if c in projections]
        projections = projections[["sample_id", "epoch", "dataloader_idx", *axes, *facts]]
        write_table(projection_file(self.path, column), pa.Table.from_pandas(projections, preserve_index=False))
        return projections

    def _epoch_table(self, epoch: int, columns: Sequence[str], dataloader_idx: Optional[int] = None) -> pa.Table:
        """One epoch's rows of all ranks, padding duplicates dropped, ordered by ``(dataloader_idx, sample_id)``."""
        if epoch not in self.epochs:
            raise ValueError(f"epoch {epoch!r} was not recorded in {self.path}; complete epochs: {self.epochs}.")
        tables = []
        for path in epoch_files(self.path, epoch):
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

