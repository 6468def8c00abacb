"""Making maps: the procedure behind :meth:`EmbeddingRun.reduce`, over a run's files. Per layer: choose the rows a
map is fitted on, fit it, place every snapshot through it a batch at a time, measure how faithful each snapshot is;
then write every map, the long table and the manifest under temporary names and switch them in together (all or
nothing). The reducer comes down once, in :class:`MapSettings`; a new kind of map plugs in at :func:`_layer_map`.

Example::

    settings = MapSettings("pca", n_components=2, seed=0, align="joint")
    manifest, placed = write_maps(RunReader(path), settings, ["head.1"])  # [projections/head.1.parquet, ...]
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_embeddings import faithfulness
from lightning_embeddings import reduce as reducers
from lightning_embeddings.layout import LONG_PROJECTIONS, MANIFEST, MAP_KEYS, SAMPLES, SPLIT, projection_file, staged
from lightning_embeddings.lock import RunLock
from lightning_embeddings.reader import (
    MISSING,
    NON_FINITE,
    PLACED,
    SAMPLE_FACTS,
    RunReader,
    locate,
    row_keys,
    with_points,
)
from lightning_embeddings.store import remove_partials, switch, write_manifest, write_tables

SAID_SNAPSHOTS = 8  # per-snapshot figures said one by one up to this many snapshots, summed up above


@dataclass(frozen=True)
class MapSettings:
    """How a run's maps are made: the reducer (a name or an estimator), its dimensions, seed and arguments, how
    snapshots share a map (``align``), how many rows it is fitted on, and whether a progress bar shows."""

    reducer: Union[str, reducers.ReducerLike]
    n_components: int = 2
    seed: Optional[int] = 0
    align: str = "last"
    fit_samples: Optional[int] = reducers.FIT_SAMPLES
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = True

    def record(self, fitted_on: Mapping[str, Any], layers: Mapping[str, Any]) -> dict[str, Any]:
        """The manifest's ``reducer`` record of maps made with these settings."""
        return {"name": self.reducer if isinstance(self.reducer, str) else None, "n_components": self.n_components,
                "seed": self.seed, "align": self.align, "fit_samples": self.fit_samples, "kwargs": dict(self.kwargs),
                "fitted_on": dict(fitted_on), "layers": dict(layers)}


def write_maps(run: RunReader, settings: MapSettings, columns: Sequence[str],
               samples: Optional[Callable[[Path], bool]] = None) -> tuple[dict[str, Any], list[Path]]:
    """Make the maps of ``columns`` and switch them in with the long table, ``samples`` (writes the samples'
    dynamics to the path it is given; False: none) and the manifest, all or nothing; return the new manifest and
    the files put in place (the manifest last).
    Layers of the run not in ``columns`` keep their maps.

    Raises:
        RuntimeError: a layer failed (chained from the reducer's error); every file is as it was.
    """
    snapshots = run.manifest["snapshots"]
    fitted_on = [s for s in snapshots if s["stage"] == "fit"] or snapshots
    record = settings.record(fitted_on[-1], (run.manifest.get("reducer") or {}).get("layers") or {})
    # samples, not rows: a joint fit on 3 samples of 5 snapshots is still a map of 3 samples
    fewest = min(len(run.rows(s)) for s in (snapshots if settings.align == "aligned" else fitted_on[-1:]))
    with RunLock(run.path):  # one writer at a time; a fit's own collector already holds it
        remove_partials(run.path)
        made: dict[Path, bool] = {}  # final path -> True: its staged file replaces it; False: it is removed
        try:
            for column in columns:
                target = projection_file(run.path, column)
                record["layers"][column] = _layer_map(run, settings, column, staged(target), fitted_on, fewest)
                made[target] = "skipped" not in record["layers"][column]
            _warn(faithfulness.unfaithful_paths_warning(
                {column: record["layers"][column].get("temporal_preservation") or {} for column in columns},
                run.path))
            maps = {}  # every layer's map after this reduce, where it is now
            for column in run.layers:
                path = projection_file(run.path, column)
                if made.get(path, path.is_file()):
                    maps[column] = staged(path) if path in made else path
            long_file = run.path / LONG_PROJECTIONS
            made[long_file] = _write_long_projections(maps, staged(long_file))
            if samples is not None:
                made[run.path / SAMPLES] = False  # known before it is written: a failure removes its staged file
                made[run.path / SAMPLES] = samples(staged(run.path / SAMPLES))
            manifest = {**run.manifest, "reducer": record}
            write_manifest(run.path, manifest, staged(run.path / MANIFEST))
            made[run.path / MANIFEST] = True
        except BaseException as error:
            for path in made:
                staged(path).unlink(missing_ok=True)
            if isinstance(error, OSError):  # a full or read-only disk
                error.add_note("the run's files are as they were (nothing of this reduce was put in place)")
            raise
        switch(run.path, made)  # the manifest last
    return manifest, [path for path, kept in made.items() if kept]


def _layer_map(run: RunReader, settings: MapSettings, column: str, path: Path, fitted_on: Sequence[dict[str, Any]],
               fewest: int) -> dict[str, Any]:
    """One layer's map, written to ``path``, said where it is not faithful; its manifest record."""
    try:
        if fewest < reducers.min_samples(settings.n_components):
            layer = _skipped(column, f"{fewest} samples per snapshot; a map needs at least "
                                     f"{reducers.min_samples(settings.n_components)}")
        elif settings.align == "aligned":
            layer = _aligned_map(run, settings, column, path, run.manifest["snapshots"])
        else:
            choices = [fitted_on] if settings.align == "joint" else [[s] for s in fitted_on[::-1]]
            layer = _fitted_map(run, settings, column, path, choices, run.manifest["snapshots"])
    except Exception as error:
        raise RuntimeError(f"reducing layer {column!r} failed: {type(error).__name__}: {error}") from error
    how = "parametric" if reducers.fits_snapshots(settings.reducer) else settings.align
    _warn(faithfulness.unfaithful_map_warning(column, layer.get("trustworthiness") or {}, how, run.path))
    return layer


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


def _fitted_map(
    run: RunReader,
    settings: MapSettings,
    column: str,
    path: Path,
    fit_choices: Sequence[Sequence[dict[str, Any]]],
    snapshots: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """Fit one layer's map on the first of ``fit_choices`` (each a list of snapshots) with a finite vector, and
    place every snapshot in it, written to ``path``; return the layer's manifest record."""
    read_fit_data = _trajectories if reducers.fits_snapshots(settings.reducer) else _fit_sample
    for fit_snapshots in fit_choices:
        fit_on, collapsed = read_fit_data(run, column, fit_snapshots, settings.fit_samples, settings.seed)
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
    if samples < reducers.min_samples(settings.n_components):
        return _skipped(column, f"{samples} samples with finite vectors to fit on; a map needs at least "
                                f"{reducers.min_samples(settings.n_components)}")
    name = reducers.display_name(settings.reducer)
    across = f" across {len(fit_on)} snapshots" if fit_on.ndim == 3 else ""
    rank_zero_info(
        f"lightning-embeddings: fitting {name} on layer {column!r}: {samples} samples x {fit_on.shape[-1]} "
        f"dims{across}, placing {len(snapshots)} snapshots"
    )
    placing = len(snapshots) * samples // len(fit_snapshots)  # rows, as many a snapshot as the fit's average
    estimator = reducers.make_reducer(settings.reducer, settings.n_components, settings.seed, samples, placing,
                                      **settings.kwargs)
    estimator.fit(fit_on)
    facts = _project(run, settings, column, path, snapshots, estimator.transform)
    return _report(run, column, {"samples": samples, **fallback, **reducers.describe(estimator), **facts})


def _fit_sample(
    run: RunReader, column: str, snapshots: Sequence[dict[str, Any]], fit_samples: Optional[int], seed: Optional[int]
) -> tuple[np.ndarray, bool]:
    """The vectors a map is fitted on: at most ``fit_samples`` rows of ``snapshots``, each snapshot and each
    label keeping its share, rows with a non-finite value or no vector left out; and whether each snapshot's
    share is collapsed (all vectors equal)."""
    # each snapshot's keys are read twice (its size, then its rows) rather than all held at once
    sizes = [len(run.rows(s)) for s in snapshots]
    quotas = reducers.quotas(np.array(sizes), sys.maxsize if fit_samples is None else fit_samples)
    parts = []
    for snapshot, quota in zip(snapshots, quotas):
        rows = run.rows(snapshot)
        vectors = run.read(rows, column, rows.stored[reducers.choose_rows(rows.groups(), int(quota), seed)])
        parts.append(vectors[reducers.usable(vectors)])
    shares = [part for part in parts if len(part)]
    return np.concatenate(parts), bool(shares) and all(map(faithfulness.collapsed, shares))


def _trajectories(
    run: RunReader, column: str, snapshots: Sequence[dict[str, Any]], fit_samples: Optional[int], seed: Optional[int]
) -> tuple[np.ndarray, bool]:
    """What a reducer that :func:`~lightning_embeddings.reduce.fits_snapshots` is fitted on: at most
    ``fit_samples`` whole trajectories, ``(len(snapshots), samples, dim)``, each label keeping its share of the
    last snapshot's samples, a row of NaN where a sample has no usable vector in a snapshot, samples with none
    in any left out; and whether every snapshot's usable rows are collapsed (all vectors equal)."""
    last = run.rows(snapshots[-1])
    keys = row_keys(last.keys)[reducers.choose_rows(last.groups(), fit_samples, seed)]
    stacked = np.stack([run.aligned(rows, column, *locate(rows, keys))
                        for rows in map(run.rows, snapshots)])
    usable = reducers.usable(stacked.reshape(-1, stacked.shape[-1])).reshape(stacked.shape[:2])
    stacked[~usable] = np.nan
    shares = [x[ok] for x, ok in zip(stacked, usable) if ok.any()]
    anywhere = usable.any(axis=0)
    collapsed = bool(shares) and all(map(faithfulness.collapsed, shares))
    return (stacked if anywhere.all() else stacked[:, anywhere]), collapsed


def _project(
    run: RunReader,
    settings: MapSettings,
    column: str,
    path: Path,
    snapshots: Sequence[dict[str, Any]],
    transform: Callable[[np.ndarray], Any],
) -> dict[str, Any]:
    """Place every snapshot's rows with ``transform``, a batch at a time, writing the layer's projections to
    ``path``; return what :func:`_measure` records of each snapshot."""
    from tqdm.auto import tqdm

    facts = _facts()

    def tables() -> Iterator[pa.Table]:
        bar = tqdm(snapshots, desc=f"placing {column}", unit="snapshot", delay=2, disable=not settings.progress,
                   leave=False)
        before = None
        for snapshot in bar:
            rows = run.rows(snapshot)
            measured = reducers.choose_rows(np.zeros(len(rows)), faithfulness.FAITHFUL_ROWS, settings.seed)
            vectors, points, status = run.read(rows, column, rows.stored[measured], transform)
            placed = status == PLACED
            measured, vectors = measured[placed[measured]], vectors[placed[measured]]
            sample = _Sample(snapshot, row_keys(rows.keys)[measured], vectors, points[np.cumsum(placed)[measured] - 1])
            _measure(facts, status, sample, before)
            before = sample if snapshot["stage"] == "fit" else before
            yield with_points(rows.keys.filter(pa.array(placed)), points)

    write_tables(path, tables(), _map_schema(run, snapshots, settings.n_components))
    return facts


def _aligned_map(run: RunReader, settings: MapSettings, column: str, path: Path,
                 snapshots: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``umap.AlignedUMAP`` on every usable sample of every snapshot (it has no ``transform``), written to
    ``path``; return the layer's manifest record."""
    every = [run.rows(s) for s in snapshots]
    # through the identity, a row's "point" is its vector: the usable vectors, and each row's status
    read = [run.read(rows, column, rows.stored[:0], lambda v: v)[1:] for rows in every]
    vectors = [v for v, _ in read]
    keys = [rows.keys.filter(pa.array(status == PLACED)) for rows, (_, status) in zip(every, read)]
    fewest = min(map(len, vectors))
    collapsed = [s["name"] for s, v in zip(snapshots, vectors) if faithfulness.collapsed(v)]
    if collapsed or fewest < reducers.min_samples(settings.n_components):
        why = f"its vectors are constant (collapsed) at {', '.join(collapsed)}" if collapsed else (
            f"a snapshot has {fewest} samples with finite vectors (a map needs at least "
            f"{reducers.min_samples(settings.n_components)})")
        return _skipped(column, f"{why}, and align='aligned' fits a map on every snapshot: use align='joint'")
    rank_zero_info(f"lightning-embeddings: fitting AlignedUMAP on layer {column!r}: {len(snapshots)} snapshots "
                   f"of up to {max(map(len, vectors))} samples x {vectors[0].shape[1]} dims")
    ids = [row_keys(k) for k in keys]
    points, estimator = reducers.aligned_maps(vectors, ids, settings.n_components, settings.seed, **settings.kwargs)
    write_tables(path, map(with_points, keys, points), _map_schema(run, snapshots, settings.n_components))
    facts = _facts()
    before = None
    for snapshot, v, xyz, (_, status), sample_ids in zip(snapshots, vectors, points, read, ids):
        measured = reducers.choose_rows(np.zeros(len(v)), faithfulness.FAITHFUL_ROWS, settings.seed)
        sample = _Sample(snapshot, sample_ids[measured], v[measured], xyz[measured])
        _measure(facts, status, sample, before)
        before = sample if snapshot["stage"] == "fit" else before
    return _report(run, column, {"samples": sum(map(len, vectors)), **reducers.describe(estimator), **facts})


def _report(run: RunReader, column: str, layer: dict[str, Any]) -> dict[str, Any]:
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
                f"{max(known.values()):.2f} over {len(values)} snapshots (each: lightning-embeddings info {run.path})")

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


def _write_long_projections(maps: Mapping[str, Path], target: Path) -> bool:
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


def _map_schema(run: RunReader, snapshots: Sequence[dict[str, Any]], n_components: int) -> pa.Schema:
    """A layer's projections file: ``sample_id, split, stage, epoch, step, dataloader_idx, x, y[, z]``, then the
    sample facts any of ``snapshots`` holds."""
    stored = pa.unify_schemas([pq.read_schema(path) for snapshot in snapshots for path in run.files(snapshot)])
    axes = [pa.field(axis, pa.float32()) for axis in "xyz"[:n_components]]
    keys = [pa.field(SPLIT, pa.string()) if c == SPLIT else stored.field(c) for c in MAP_KEYS]
    return pa.schema([*keys, *axes,
                      *(stored.field(c) for c in SAMPLE_FACTS if c in stored.names)])
