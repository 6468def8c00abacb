"""``EmbeddingRun``: a run directory written by :class:`~lightning_embeddings.EmbeddingCollector`, read back."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_embeddings import reduce as reducers
from lightning_embeddings import faithfulness
from lightning_embeddings.dynamics import SnapshotView, sample_dynamics
from lightning_embeddings.layers import LayerSpec
from lightning_embeddings.layout import (
    HTML_NAME,
    LONG_PROJECTIONS,
    MANIFEST,
    MAP_KEYS,
    PLOTS,
    PROJECTOR_OWNER,
    SAMPLES,
    SPLIT,
    TENSORBOARD,
    projection_file,
    staged,
)
from lightning_embeddings.lock import RunLock
from lightning_embeddings.reader import (
    MISSING,
    NON_FINITE,
    PLACED,
    SAMPLE_FACTS,
    RunReader,
    locate,
    labelled,
    row_keys,
    with_points,
)
from lightning_embeddings.store import (
    METADATA_KEY,
    RunError,
    remove_partials,
    switch,
    write_manifest,
    write_tables,
)

SAMPLE_SPLITS = ("val", "train")  # the splits samples() follows across fit
SAID_SNAPSHOTS = 8  # per-snapshot figures said one by one up to this many snapshots, summed up above


def _skipped(column: str, reason: str) -> dict[str, Any]:
    """Say that a layer gets no map, and why; its manifest record."""
    rank_zero_warn(f"lightning-embeddings: layer {column!r} is not reduced: {reason}.")
    return {"skipped": reason}


def _warn(message: Optional[str]) -> None:
    if message is not None:
        rank_zero_warn(message)


def _facts() -> dict[str, Any]:
    """A layer's facts per snapshot, filled by :func:`_measure`."""
    return {"trustworthiness": {}, "temporal_preservation": {}, "left_out": {}, "missing": {}, "collapsed": []}


@dataclass
class _Sample:
    """The rows of a snapshot a map is measured on: their keys, vectors and points."""

    snapshot: Mapping[str, Any]
    keys: np.ndarray
    vectors: np.ndarray
    points: np.ndarray


def _measure(facts: dict[str, Any], status: np.ndarray, sample: _Sample, before: Optional[_Sample]) -> None:
    """Record one snapshot of a layer's map: its rows left out (non-finite, missing); the trustworthiness of its
    points against the vectors they stand for, None where the vectors are collapsed; for a ``fit`` snapshot after
    another (``before``), the temporal preservation of the samples' motion between the two, None where unmeasurable."""
    name = sample.snapshot["name"]
    for key, code in (("left_out", NON_FINITE), ("missing", MISSING)):
        if (status == code).any():
            facts[key][name] = int((status == code).sum())
    flat = faithfulness.collapsed(sample.vectors)
    if flat:
        facts["collapsed"].append(name)
    facts["trustworthiness"][name] = None if flat else faithfulness.trustworthiness(sample.vectors, sample.points)
    if before is not None and sample.snapshot["stage"] == "fit":
        _, a, b = np.intersect1d(before.keys, sample.keys, assume_unique=True, return_indices=True)
        motion = np.nan  # no sample placed in both
        if len(a):
            motion = faithfulness.temporal_preservation(before.points[a], sample.points[b], before.vectors[a],
                                                        sample.vectors[b])
        facts["temporal_preservation"][name] = None if np.isnan(motion) else round(float(motion), 4)


class Maps(Mapping[str, pd.DataFrame]):
    """What :meth:`EmbeddingRun.reduce` made: layer column -> its projections, read from disk when asked for.

    ``drawn`` lists the pictures (and the page) drawn from the new maps, ``removed`` those of layers left without a
    map, ``exported`` the TensorBoard projector exports of the run written again from the new maps.
    """

    def __init__(self, run: "EmbeddingRun", columns: Sequence[str], drawn: Sequence[Path] = (),
                 removed: Sequence[Path] = (), exported: Sequence[Path] = ()) -> None:
        self._run, self._columns = run, list(columns)
        self.drawn, self.removed, self.exported = list(drawn), list(removed), list(exported)

    def __getitem__(self, column: str) -> pd.DataFrame:
        if column not in self._columns:
            raise KeyError(column)
        return self._run.projections(column)

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


class EmbeddingRun(RunReader):
    """The vectors and projections of one run directory.

    A run holds snapshots: one per recorded validation (several per epoch with ``val_check_interval < 1``), and
    one per recorded ``trainer.validate``/``trainer.test``, each named by its stage, epoch and global step.

    Args:
        path: the run directory (``collector.dirpath``, by default ``<log_dir>/embeddings``).

    Raises:
        FileNotFoundError: ``path`` holds no run.
        RunError: its manifest is damaged, foreign or of a newer format; a file is checked when first read, and
            a missing, damaged or foreign one raises it too, naming the file.

    Example::

        run = EmbeddingRun("lightning_logs/version_0/embeddings")
        run.layers, run.epochs                      # ['conv2', 'head.1'], [0, 1, 2, 3, 4]
        ids, X = run.vectors("head.1", epoch=4)     # (N,) int64, (N, D) float32
        run.projections("head.1")                   # sample_id, split, stage, epoch, step, dataloader_idx, x, y, label...
        run.reduce(reducer="pca")                   # fit again, no retraining
    """

    def samples(self, layer: LayerSpec, split: Literal["val", "train"] = "val") -> pd.DataFrame:
        """Which samples to look at: one row per sample of ``split``, over the ``fit`` snapshots, measured in the
        layer's own vectors (never in the map), sorted by ``suspicion`` (higher: more likely a label error).

        Columns: ``sample_id, dataloader_idx, label, suspicion``, then the dynamics of
        :func:`~lightning_embeddings.dynamics.sample_dynamics`: k-NN label agreement (cosine, 10 neighbours) per
        snapshot's mean and last, movement between snapshots, the epoch it settled; with predictions: how often
        correct, the epoch it was learned, forgetting events; with logits: confidence, variability and margin (AUM).
        Read from ``samples.parquet`` (written at the end of fit and by :meth:`reduce`), else computed, one snapshot
        in memory at a time. ``split="train"`` needs ``EmbeddingCollector(record_train=True)``.

        Raises:
            ValueError: ``split`` was not recorded, or the run has no labels or no ``fit`` snapshot.

        Example::

            suspects = EmbeddingRun(path).samples("head.1", split="train").head(20)
            suspects[["sample_id", "label", "suspicion", "knn_agreement", "forgetting_events"]]
        """
        column = self.layer(layer)["column"]
        path = self.path / SAMPLES
        if path.is_file() and self._samples_made_from() in (None, self._samples_source()):
            try:
                table = pq.read_table(path, filters=[("layer", "==", column), (SPLIT, "==", split)],
                                      page_checksum_verification=True)
            except (OSError, pa.ArrowException) as err:
                raise RunError(f"{path} is not a readable Parquet file ({err}): make it again with reduce.") from err
            if table.num_rows:
                return table.drop_columns(["layer", SPLIT]).to_pandas()
        return self._sample_dynamics(column, split)

    def write_samples(self) -> Optional[Path]:
        """Write ``samples.parquet``: :meth:`samples` of every layer and recorded split (``layer`` and ``split``
        columns first); None, and no file, where the run has no labelled ``fit`` snapshot."""
        path = self.path / SAMPLES
        with RunLock(self.path):
            if not self._write_samples(staged(path)):
                return None
            os.replace(staged(path), path)
        return path

    def _write_samples(self, target: Path) -> bool:
        """:meth:`write_samples` into ``target``: every layer and every split with labels; False when none has."""
        fit = [s for s in self.manifest["snapshots"] if s["stage"] == "fit"]
        splits = [split for split in SAMPLE_SPLITS if fit and labelled(self.rows(fit[-1], split=split))]
        if not splits:
            return False
        frames = [self._sample_dynamics(column, split).assign(layer=column, split=split)
                  for column in self.layers for split in splits]
        table = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
        first = ["layer", SPLIT]
        table = table.select([*first, *(c for c in table.column_names if c not in first)])
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),  # pandas' dtypes kept
                                               METADATA_KEY: json.dumps(self._samples_source())})
        pq.write_table(table, target, write_page_checksum=True)
        return True

    def _samples_source(self) -> dict[str, Any]:
        """What ``samples.parquet`` is computed from: the ``fit`` snapshots, the layers and the logits column."""
        return {"snapshots": [s["name"] for s in self.manifest["snapshots"] if s["stage"] == "fit"],
                "layers": [[layer["column"], layer["dim"]] for layer in self.manifest["layers"]],
                "logits": self.manifest.get("logits")}

    def _samples_made_from(self) -> Optional[dict[str, Any]]:
        """The :meth:`_samples_source` that ``samples.parquet`` records (None: no file, or one written before it
        recorded this)."""
        try:
            metadata = pq.read_schema(self.path / SAMPLES).metadata or {}
        except (OSError, pa.ArrowException):
            return None
        return json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else None

    def _sample_dynamics(self, column: str, split: str) -> pd.DataFrame:
        """:meth:`samples` computed from ``vectors/``: the samples of ``split`` in the last ``fit`` snapshot, over
        every ``fit`` snapshot (a sample missing from one has a NaN row there)."""
        fit = [s for s in self.manifest["snapshots"] if s["stage"] == "fit"]
        if not fit:
            raise ValueError(f"{self.path} has no snapshot of fit: samples() follows the samples across fit.")
        last = self.rows(fit[-1], split=split)
        if not len(last):
            hint = " (record it with EmbeddingCollector(record_train=True))" if split == "train" else ""
            raise ValueError(f"{self.path} holds no {split!r} rows{hint}; recorded splits: "
                             f"{sorted(set(self.rows(fit[-1]).keys.column(SPLIT).to_pylist()))}.")
        if not labelled(last):
            raise ValueError(f"{self.path} has no labels: samples() ranks samples by their labels' agreement with "
                             "their neighbours (pass label_key= to the collector where the batch names them otherwise).")
        keys, logits = row_keys(last.keys), self.manifest.get("logits")

        def views() -> Iterator[SnapshotView]:
            for snapshot in fit:
                rows = self.rows(snapshot, split=split)
                found, here = locate(rows, keys)
                vectors = self.aligned(rows, column, found, here)
                predictions = None
                if "prediction" in rows.keys.column_names:
                    stored = pd.Series(rows.keys.column("prediction").to_numpy(zero_copy_only=False)[found])
                    predictions = stored.where(pd.Series(here)).to_numpy()  # NaN/None where the sample is missing
                scores = None if logits is None else self.aligned(rows, logits, found, here)
                yield SnapshotView(snapshot["epoch"], vectors, predictions, scores)

        labels = last.keys.column("label").to_numpy(zero_copy_only=False)
        frame = sample_dynamics(labels, views())
        first = ["sample_id", "dataloader_idx", "label", "suspicion"]
        frame = pd.concat([last.keys.select(first[:3]).to_pandas(), frame], axis=1)
        frame = frame[[*first, *(c for c in frame.columns if c not in first)]]
        epochs = [c for c in frame.columns if c.endswith("_epoch")]  # epochs as integers, <NA> where none
        frame[epochs] = frame[epochs].astype("Int64")
        return frame.sort_values("suspicion", ascending=False, kind="stable", na_position="last").reset_index(drop=True)

    def reduce(
        self,
        reducer: reducers.ReducerSpec = "umap",
        n_components: int = 2,
        seed: Optional[int] = 0,
        layers: Optional[Sequence[LayerSpec]] = None,
        align: reducers.Align = "last",
        fit_samples: Optional[int] = reducers.FIT_SAMPLES,
        progress: bool = True,
        **reducer_kwargs: Any,
    ) -> Mapping[str, pd.DataFrame]:
        """Fit a map per layer, place every snapshot in it, write the maps and measure how faithful each one is.

        ``align`` chooses how snapshots share one space (docs/align.md compares them):

        - ``"last"`` (default, the procedure of 3LC and of this package's card): fit on the last snapshot of
          ``fit`` and pass every snapshot through ``transform``: each sample is drawn where it sits relative to the
          final structure. Early snapshots can look more formed than they were; their trustworthiness says so,
          and the warning then names ``"joint"``.
        - ``"joint"``: fit on all snapshots of ``fit`` together (all dataloaders), then pass every snapshot
          through ``transform``: each keeps its own structure in one shared space.
        - ``"aligned"``: ``umap.AlignedUMAP``, one map per snapshot tied by each sample's identity (UMAP only;
          it fits every sample of every snapshot, so each snapshot may hold at most ``fit_samples``).

        ``reducer="parametric"`` (:class:`~lightning_embeddings.ParametricMap`) is trained on the whole trajectories
        of at most ``fit_samples`` samples across every snapshot of ``fit`` (``align`` "last" or "joint" alike),
        on each snapshot's neighbours and on the samples' motion between snapshots, so drawn paths rank like the
        motion in the vectors (temporal preservation, measured per step); every row is then placed by its encoder.

        ``fit_samples`` caps the rows a map is fitted on (None: all): a random sample that keeps each snapshot's
        and each label's share. Every row is then placed by ``transform``, 65,536 rows at a time, one snapshot
        after another, so memory holds one snapshot's keys and points, not its vectors. Equal vectors in two
        snapshots give equal points. Each snapshot's ``trustworthiness`` (10 neighbours, against its own vectors,
        on at most 2,000 samples) goes into the manifest; below 0.8 a warning says the map is not faithful there.
        Snapshots of ``trainer.validate``/``test`` are placed in the map, never fitted on. Layers with too few
        samples are skipped with a warning.

        Rows with a non-finite value (NaN, inf) or without a vector (a layer called on some batches only) are left
        out of their layer's map (they stay in ``vectors/``), counted per snapshot in the manifest's ``left_out``
        and ``missing``, and said in one warning per layer. A layer whose vectors are (nearly) all equal in a
        snapshot (a dead ReLU) is ``collapsed`` there: its trustworthiness is None, a warning says so, and where
        every snapshot it is fitted on is collapsed it is skipped.

        All or nothing: the maps, ``projections.parquet`` and the manifest are written under temporary names and
        switched in once every layer is done; when a layer fails, no file changes. The reduced layers' pictures
        under ``plots/`` and the page are then drawn again from the new maps, where they were or where the run wants
        them (the collector's ``plots``/``html``), those of layers left without a map removed, and
        every projector export of the run (:meth:`projector_exports`) is written again; stray ``.*.partial`` files
        of a killed process are removed. The run is locked meanwhile (``RunLockedError`` if another process
        writes it).

        Returns:
            Layer column -> its projections (read from ``projections/<layer>.parquet`` when looked up); its
            ``drawn``, ``removed`` and ``exported`` list the pictures and exports made again.

        Raises:
            RuntimeError: reducing a layer failed (chained from the reducer's error); every file is as it was.

        Example::

            maps = EmbeddingRun(path).reduce(reducer="pacmap", n_components=3)
            maps["head.1"].groupby("epoch")[["x", "y", "z"]].mean()
        """
        reducers.check_map(reducer, n_components, align=align, fit_samples=fit_samples)
        if reducer is None:
            return Maps(self, [])
        if reducers.fits_snapshots(reducer):  # trained on every snapshot of fit together, whatever align says
            align = "joint"
        snapshots = self.manifest["snapshots"]
        if not snapshots:
            rank_zero_warn(f"{self.path} has no complete snapshot: nothing to reduce.")
            return Maps(self, [])
        fitted_on = [s for s in snapshots if s["stage"] == "fit"] or snapshots
        largest = max(len(self.rows(s)) for s in snapshots) if align == "aligned" else 0
        if fit_samples is not None and largest > fit_samples:
            raise ValueError(
                f"align='aligned' fits every sample of every snapshot (umap.AlignedUMAP has no transform), and "
                f"{self.path} has snapshots of {largest} samples, more than fit_samples={fit_samples}. Use "
                "align='joint', or raise fit_samples (None: no limit) if memory allows."
            )
        columns = [self.layer(layer)["column"] for layer in layers] if layers is not None else self.layers
        earlier = dict((self.manifest.get("reducer") or {}).get("layers") or {})  # layers reduced before and not now
        record: dict[str, Any] = {"name": reducer if isinstance(reducer, str) else None, "n_components": n_components,
                                  "seed": seed, "align": align, "fit_samples": fit_samples, "kwargs": reducer_kwargs,
                                  "fitted_on": dict(fitted_on[-1]), "layers": earlier}
        # samples, not rows: a joint fit on 3 samples of 5 snapshots is still a map of 3 samples
        fewest = min(len(self.rows(s)) for s in (snapshots if align == "aligned" else fitted_on[-1:]))
        with RunLock(self.path):  # one writer at a time; a fit's own collector already holds it
            remove_partials(self.path)
            made: dict[Path, bool] = {}  # final path -> True: its staged file replaces it; False: it is removed
            try:
                for column in columns:
                    target = projection_file(self.path, column)
                    try:
                        if fewest < reducers.min_samples(n_components):
                            layer = _skipped(column, f"{fewest} samples per snapshot; a map needs at least "
                                                     f"{reducers.min_samples(n_components)}")
                        elif align == "aligned":
                            layer = self._aligned_map(column, staged(target), snapshots, n_components, seed,
                                                      **reducer_kwargs)
                        else:
                            layer = self._fitted_map(column, staged(target), reducer, n_components, seed,
                                                     [fitted_on] if align == "joint" else [[s] for s in fitted_on[::-1]],
                                                     snapshots,
                                                     fit_samples, progress, reducer_kwargs)
                    except Exception as error:
                        raise RuntimeError(f"reducing layer {column!r} failed: {type(error).__name__}: {error}") from error
                    record["layers"][column] = layer
                    made[target] = "skipped" not in layer
                    how = "parametric" if reducers.fits_snapshots(reducer) else align
                    _warn(faithfulness.unfaithful_map_warning(column, layer.get("trustworthiness") or {}, how,
                                                              self.path))
                _warn(faithfulness.unfaithful_paths_warning(
                    {column: record["layers"][column].get("temporal_preservation") or {} for column in columns},
                    self.path))
                maps = {}  # every layer's map after this reduce, where it is now
                for column in self.layers:
                    path = projection_file(self.path, column)
                    if made.get(path, path.is_file()):
                        maps[column] = staged(path) if path in made else path
                long_file, samples_file = self.path / LONG_PROJECTIONS, self.path / SAMPLES
                made[long_file] = self._write_long_projections(maps, staged(long_file))
                if self._samples_made_from() != self._samples_source():  # a map does not change the dynamics
                    made[samples_file] = False  # known before it is written: a failure removes its staged file
                    made[samples_file] = self._write_samples(staged(samples_file))
                manifest = {**self.manifest, "reducer": record}
                write_manifest(self.path, manifest, staged(self.path / MANIFEST))
                made[self.path / MANIFEST] = True
            except BaseException as error:
                for path in made:
                    staged(path).unlink(missing_ok=True)
                if isinstance(error, OSError):  # a full or read-only disk
                    error.add_note("the run's files are as they were (nothing of this reduce was put in place)")
                raise
            switch(self.path, made)  # the manifest last
            self.manifest = manifest
            return Maps(self, [column for column in columns if "skipped" not in record["layers"][column]],
                        *self._refresh_views(columns))

    def _fitted_map(
        self,
        column: str,
        path: Path,
        reducer: Union[str, reducers.ReducerLike],
        n_components: int,
        seed: Optional[int],
        fit_choices: Sequence[Sequence[dict[str, Any]]],
        snapshots: Sequence[dict[str, Any]],
        fit_samples: Optional[int],
        progress: bool,
        reducer_kwargs: dict[str, Any],
    ) -> dict[str, Any]:
        """Fit one layer's map on the first of ``fit_choices`` (each a list of snapshots) with a finite vector, and
        place every snapshot in it, written to ``path``; return the layer's manifest record."""
        read_fit_data = self._trajectories if reducers.fits_snapshots(reducer) else self._fit_sample
        for fit_snapshots in fit_choices:
            fit_on, collapsed = read_fit_data(column, fit_snapshots, fit_samples, seed)
            if fit_on.shape[-2]:  # rows, or the samples of (snapshots, samples, dim)
                break
        fallback = {}
        if fit_on.shape[-2] and fit_snapshots is not fit_choices[0]:  # align="last" and the last snapshot is all NaN/inf
            fallback = {"fitted_on": fit_snapshots[-1]["name"]}
            rank_zero_warn(
                f"lightning-embeddings: layer {column!r} has no finite vector in {fit_choices[0][-1]['name']} (did "
                f"the model diverge?): its map is fitted on {fit_snapshots[-1]['name']}, the last snapshot with one."
            )
        if collapsed:
            return _skipped(column, "its vectors are constant (collapsed: a dead ReLU or a constant output) in every "
                                    "snapshot the map is fitted on")
        samples = fit_on.shape[-2]
        if samples < reducers.min_samples(n_components):
            return _skipped(column, f"{samples} samples with finite vectors to fit on; a map needs at least "
                                    f"{reducers.min_samples(n_components)}")
        name = reducer if isinstance(reducer, str) else type(reducer).__name__
        across = f" across {len(fit_on)} snapshots" if fit_on.ndim == 3 else ""
        rank_zero_info(
            f"lightning-embeddings: fitting {name} on layer {column!r}: {samples} samples x {fit_on.shape[-1]} "
            f"dims{across}, placing {len(snapshots)} snapshots"
        )
        placing = len(snapshots) * samples // len(fit_snapshots)  # rows, as many a snapshot as the fit's average
        estimator = reducers.make_reducer(reducer, n_components, seed, samples, placing, **reducer_kwargs)
        estimator.fit(fit_on)
        facts = self._project(column, path, snapshots, estimator.transform, n_components, seed, progress)
        return self._report(column, {"samples": samples, **fallback, **reducers.describe(estimator), **facts})

    def _fit_sample(
        self, column: str, snapshots: Sequence[dict[str, Any]], fit_samples: Optional[int], seed: Optional[int]
    ) -> tuple[np.ndarray, bool]:
        """The vectors a map is fitted on: at most ``fit_samples`` rows of ``snapshots``, each snapshot and each
        label keeping its share, rows with a non-finite value or no vector left out; and whether each snapshot's
        share is collapsed (all vectors equal)."""
        # each snapshot's keys are read twice (its size, then its rows) rather than all held at once
        sizes = [len(self.rows(s)) for s in snapshots]
        quotas = reducers.quotas(np.array(sizes), sys.maxsize if fit_samples is None else fit_samples)
        parts = []
        for snapshot, quota in zip(snapshots, quotas):
            rows = self.rows(snapshot)
            vectors = self.read(rows, column, rows.stored[reducers.choose_rows(rows.groups(), int(quota), seed)])
            parts.append(vectors[reducers.usable(vectors)])
        shares = [part for part in parts if len(part)]
        return np.concatenate(parts), bool(shares) and all(map(faithfulness.collapsed, shares))

    def _trajectories(
        self, column: str, snapshots: Sequence[dict[str, Any]], fit_samples: Optional[int], seed: Optional[int]
    ) -> tuple[np.ndarray, bool]:
        """What a reducer that :func:`~lightning_embeddings.reduce.fits_snapshots` is fitted on: at most
        ``fit_samples`` whole trajectories, ``(len(snapshots), samples, dim)``, each label keeping its share of the
        last snapshot's samples, a row of NaN where a sample has no usable vector in a snapshot, samples with none
        in any left out; and whether every snapshot's usable rows are collapsed (all vectors equal)."""
        last = self.rows(snapshots[-1])
        keys = row_keys(last.keys)[reducers.choose_rows(last.groups(), fit_samples, seed)]
        stacked = np.stack([self.aligned(rows, column, *locate(rows, keys))
                            for rows in map(self.rows, snapshots)])
        usable = reducers.usable(stacked.reshape(-1, stacked.shape[-1])).reshape(stacked.shape[:2])
        stacked[~usable] = np.nan
        shares = [x[ok] for x, ok in zip(stacked, usable) if ok.any()]
        anywhere = usable.any(axis=0)
        collapsed = bool(shares) and all(map(faithfulness.collapsed, shares))
        return (stacked if anywhere.all() else stacked[:, anywhere]), collapsed

    def _project(
        self,
        column: str,
        path: Path,
        snapshots: Sequence[dict[str, Any]],
        transform: Callable[[np.ndarray], Any],
        n_components: int,
        seed: Optional[int],
        progress: bool,
    ) -> dict[str, Any]:
        """Place every snapshot's rows with ``transform``, a batch at a time, writing the layer's projections to
        ``path``; return what :func:`_measure` records of each snapshot."""
        from tqdm.auto import tqdm

        facts = _facts()

        def tables() -> Iterator[pa.Table]:
            bar = tqdm(snapshots, desc=f"placing {column}", unit="snapshot", delay=2, disable=not progress, leave=False)
            before = None
            for snapshot in bar:
                rows = self.rows(snapshot)
                measured = reducers.choose_rows(np.zeros(len(rows)), faithfulness.FAITHFUL_ROWS, seed)
                vectors, points, status = self.read(rows, column, rows.stored[measured], transform)
                placed = status == PLACED
                measured, vectors = measured[placed[measured]], vectors[placed[measured]]
                sample = _Sample(snapshot, row_keys(rows.keys)[measured], vectors, points[np.cumsum(placed)[measured] - 1])
                _measure(facts, status, sample, before)
                before = sample if snapshot["stage"] == "fit" else before
                yield with_points(rows.keys.filter(pa.array(placed)), points)

        write_tables(path, tables(), self._map_schema(snapshots, n_components))
        return facts

    def _aligned_map(
        self,
        column: str,
        path: Path,
        snapshots: Sequence[dict[str, Any]],
        n_components: int,
        seed: Optional[int],
        **reducer_kwargs: Any,
    ) -> dict[str, Any]:
        """``umap.AlignedUMAP`` on every usable sample of every snapshot (it has no ``transform``), written to
        ``path``; return the layer's manifest record."""
        every = [self.rows(s) for s in snapshots]
        # through the identity, a row's "point" is its vector: the usable vectors, and each row's status
        read = [self.read(rows, column, rows.stored[:0], lambda v: v)[1:] for rows in every]
        vectors = [v for v, _ in read]
        keys = [rows.keys.filter(pa.array(status == PLACED)) for rows, (_, status) in zip(every, read)]
        fewest = min(map(len, vectors))
        collapsed = [s["name"] for s, v in zip(snapshots, vectors) if faithfulness.collapsed(v)]
        if collapsed or fewest < reducers.min_samples(n_components):
            why = f"its vectors are constant (collapsed) at {', '.join(collapsed)}" if collapsed else (
                f"a snapshot has {fewest} samples with finite vectors (a map needs at least "
                f"{reducers.min_samples(n_components)})")
            return _skipped(column, f"{why}, and align='aligned' fits a map on every snapshot: use align='joint'")
        rank_zero_info(f"lightning-embeddings: fitting AlignedUMAP on layer {column!r}: {len(snapshots)} snapshots "
                       f"of up to {max(map(len, vectors))} samples x {vectors[0].shape[1]} dims")
        ids = [row_keys(k) for k in keys]
        points, estimator = reducers.aligned_maps(vectors, ids, n_components, seed, **reducer_kwargs)
        write_tables(path, map(with_points, keys, points), self._map_schema(snapshots, n_components))
        facts = _facts()
        before = None
        for snapshot, v, xyz, (_, status), sample_ids in zip(snapshots, vectors, points, read, ids):
            measured = reducers.choose_rows(np.zeros(len(v)), faithfulness.FAITHFUL_ROWS, seed)
            sample = _Sample(snapshot, sample_ids[measured], v[measured], xyz[measured])
            _measure(facts, status, sample, before)
            before = sample if snapshot["stage"] == "fit" else before
        return self._report(column, {"samples": sum(map(len, vectors)), **reducers.describe(estimator), **facts})

    def _report(self, column: str, layer: dict[str, Any]) -> dict[str, Any]:
        """Say how faithful a layer's new map is and which rows it left out; return its record, without empty
        counts."""
        def said(values: Mapping[str, Optional[float]]) -> str:  # a few each, many summed up in one line
            if len(values) <= SAID_SNAPSHOTS:
                return ", ".join(f"{name} {v:.2f}" if v is not None else f"{name} -" for name, v in values.items())
            known = {name: v for name, v in values.items() if v is not None}
            if not known:
                return f"- at all {len(values)} snapshots"
            lowest = min(known, key=known.get)
            return (f"min {known[lowest]:.2f} ({lowest}), median {np.median(list(known.values())):.2f}, max "
                    f"{max(known.values()):.2f} over {len(values)} snapshots (each: lightning-embeddings info {self.path})")

        rank_zero_info(f"lightning-embeddings: trustworthiness of layer {column!r} per snapshot: "
                       f"{said(layer['trustworthiness'])}")
        if layer["temporal_preservation"]:
            rank_zero_info(f"lightning-embeddings: temporal preservation of layer {column!r}'s paths (Spearman, motion "
                           f"in the map vs in the vectors) into each snapshot: {said(layer['temporal_preservation'])}")
        counts = [f"{words}: {', '.join(f'{name}: {n}' for name, n in layer[key].items())}"
                  for key, words in (("left_out", "with a non-finite value (NaN or inf)"),
                                     ("missing", "without a vector (the layer was not called for them)"))
                  if layer[key]]
        if counts:
            rank_zero_warn(f"lightning-embeddings: rows of layer {column!r} left out of its map (they stay in "
                           f"vectors/), per snapshot: {'; '.join(counts)}.")
        if layer["collapsed"]:
            rank_zero_warn(
                f"lightning-embeddings: layer {column!r} collapsed at {', '.join(layer['collapsed'])}: its vectors "
                "are (nearly) all equal there (a dead ReLU or a constant output), so its map there is one point and "
                "no trustworthiness is claimed."
            )
        return {key: value for key, value in layer.items() if value or key not in ("left_out", "missing", "collapsed")}

    def _refresh_views(self, columns: Sequence[str]) -> tuple[list[Path], list[Path], list[Path]]:
        """After a reduce, so that every picture and export shows the new maps: draw the pictures of ``columns``
        again where the run had them or wants them (the manifest's ``pictures``, from the collector's ``plots`` and
        ``html``), and the page; remove those of layers left without a map; write every projector export of the run
        again (:meth:`projector_exports`). Each said once; returns (drawn, removed, exported)."""
        from lightning_embeddings.export import export_tensorboard
        from lightning_embeddings.plot import layer_pictures, plot_run, write_html

        plots, wanted = self.path / PLOTS, self.manifest.get("pictures") or {}
        page = plots / HTML_NAME
        had = {column: [p for p in layer_pictures(plots, column) if p.is_file()] for column in columns}
        stale = [p for found in had.values() for p in found] + ([page] if page.is_file() else [])
        for path in stale:
            path.unlink()
        mapped = [column for column in self.layers if projection_file(self.path, column).is_file()]
        drawn = plot_run(self, layers=[c for c in columns if c in mapped and (had[c] or wanted.get("png"))])
        if (page in stale or wanted.get("html")) and mapped:
            drawn.append(write_html(self, mapped))
        removed = [path for path in stale if not path.exists()]
        exported = [export_tensorboard(self, logdir, progress=False) for logdir in self.projector_exports()]
        for said, paths in (("drew from the new maps", drawn), ("removed the pictures of layers without a map now",
                                                                removed),
                            ("wrote the TensorBoard projector files again from the new maps", exported)):
            if paths:  # said here once, for the API and the CLI alike
                rank_zero_info("\n  ".join([f"lightning-embeddings: {said}:", *map(str, paths)]))
        return drawn, removed, exported

    def projector_exports(self) -> list[Path]:
        """The TensorBoard log directories this run was exported to (by a ``TensorBoardLogger`` at the end of fit or
        by ``lightning-embeddings export``) that still exist and are this run's to write: inside the run, or
        written from this directory (not from the run it was copied from, nor from where it was before a move:
        those are named in a warning and left alone)."""
        recorded = [Path(os.path.normpath(self.path / where))  # relative to the run; absolute in older runs
                    for where in self.manifest.get("exports", {}).get("tensorboard", [])]
        default = self.path / TENSORBOARD  # runs exported before exports were recorded
        found = [path for path in dict.fromkeys([*recorded, default]) if (path / "projector_config.pbtxt").is_file()]
        ours, theirs = [], []
        for path in found:
            owner = path / PROJECTOR_OWNER
            written_from = owner.read_text(encoding="utf-8") if owner.is_file() else None
            inside = path.resolve().is_relative_to(self.path.resolve())
            mine = inside or written_from == str(self.path.resolve())  # inside: a copy's own, never another run's
            (ours if mine else theirs).append((path, written_from))
        for path, written_from in theirs:
            rank_zero_warn(
                f"lightning-embeddings: the TensorBoard projector in {path} was written from "
                f"{written_from or 'an earlier version of this package'}, not from {self.path} (a copy, or a run "
                f"that moved): left as it is. Write this run's there with: lightning-embeddings export {self.path} "
                f"--to tensorboard --logdir {path}"
            )
        return [path for path, _ in ours]

    def _write_long_projections(self, maps: Mapping[str, Path], target: Path) -> bool:
        """``projections.parquet`` written to ``target``: every layer's map (column -> its file) in one long
        table, with ``correct``; streamed a row group at a time. False when there is no map to write."""
        if not maps:
            return False

        def tables() -> Iterator[pa.Table]:
            for column, path in maps.items():
                source = pq.ParquetFile(path)
                for i in range(source.num_row_groups):
                    table = source.read_row_group(i)
                    table = table.add_column(0, "layer", pa.array([column] * table.num_rows, pa.string()))
                    if {"label", "prediction"} <= set(table.column_names):
                        table = table.append_column("correct", pc.equal(table.column("label"), table.column("prediction")))
                    yield table

        stored = pa.unify_schemas([pq.read_schema(path) for path in maps.values()])
        names = [c for c in (*MAP_KEYS, *"xyz", *SAMPLE_FACTS) if c in stored.names]
        correct = [pa.field("correct", pa.bool_())] if {"label", "prediction"} <= set(names) else []
        write_tables(target, tables(), pa.schema([pa.field("layer", pa.string()), *map(stored.field, names), *correct]))
        return True

    def _map_schema(self, snapshots: Sequence[dict[str, Any]], n_components: int) -> pa.Schema:
        """A layer's projections file: ``sample_id, split, stage, epoch, step, dataloader_idx, x, y[, z]``, then the
        sample facts any of ``snapshots`` holds."""
        stored = pa.unify_schemas([pq.read_schema(path) for snapshot in snapshots for path in self.files(snapshot)])
        axes = [pa.field(axis, pa.float32()) for axis in "xyz"[:n_components]]
        keys = [pa.field(SPLIT, pa.string()) if c == SPLIT else stored.field(c) for c in MAP_KEYS]
        return pa.schema([*keys, *axes,
                          *(stored.field(c) for c in SAMPLE_FACTS if c in stored.names)])
