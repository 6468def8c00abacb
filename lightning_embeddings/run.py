"""``EmbeddingRun``: a run directory written by :class:`~lightning_embeddings.EmbeddingCollector`, read back."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import pandas as pd
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_embeddings import reduce as reducers
from lightning_embeddings import run_samples
from lightning_embeddings.layers import LayerSpec
from lightning_embeddings.layout import (
    HTML_NAME,
    PLOTS,
    PROJECTOR_OWNER,
    SAMPLES,
    TENSORBOARD,
    projection_file,
    staged,
)
from lightning_embeddings.lock import RunLock
from lightning_embeddings.maps import MapSettings, write_maps
from lightning_embeddings.reader import RunReader



class Maps(Mapping[str, pd.DataFrame]):
    """What :meth:`EmbeddingRun.reduce` made: layer column -> its projections, read from disk when asked for.

    ``written`` lists the run's files the reduce put in place besides the maps (``projections.parquet``,
    ``samples.parquet`` where the dynamics were computed again, ``manifest.json`` last), ``drawn`` the pictures (and
    the page) drawn from the new maps, ``removed`` those of layers left without a map, ``exported`` the TensorBoard
    projector exports of the run written again from the new maps.
    """

    def __init__(self, run: "EmbeddingRun", columns: Sequence[str], drawn: Sequence[Path] = (),
                 removed: Sequence[Path] = (), exported: Sequence[Path] = (), written: Sequence[Path] = ()) -> None:
        self._run, self._columns = run, list(columns)
        self.drawn, self.removed, self.exported = list(drawn), list(removed), list(exported)
        self.written = list(written)

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

        Columns: ``sample_id, dataloader_idx, label, neighbour_label`` (the label its 10 nearest neighbours hold
        most often at the last snapshot), ``prediction`` (the last snapshot's, where recorded), ``suspicion``, then
        the dynamics of :func:`~lightning_embeddings.dynamics.sample_dynamics`: k-NN label agreement (cosine, 10
        neighbours) per snapshot's mean and last, movement between snapshots, the epoch it settled; with
        predictions: how often correct, the epoch it was learned, forgetting events; with logits: confidence,
        variability and margin (AUM). Rows of equal suspicion are ranked by the evidence against their label
        (:func:`~lightning_embeddings.dynamics.by_suspicion`), not by id.
        Read from ``samples.parquet`` (written at the end of fit, and by :meth:`reduce` where the ``fit`` snapshots
        changed since), else computed, one snapshot in memory at a time. ``split="train"`` needs ``EmbeddingCollector(record_train=True)``.

        Raises:
            ValueError: ``split`` was not recorded, or the run has no labels or no ``fit`` snapshot.

        Example::

            suspects = EmbeddingRun(path).samples("head.1", split="train").head(20)
            suspects[["sample_id", "label", "suspicion", "knn_agreement", "forgetting_events"]]
        """
        return run_samples.samples(self, self.column(layer), split)

    def write_samples(self) -> Optional[Path]:
        """Write ``samples.parquet``: :meth:`samples` of every layer and recorded split (``layer`` and ``split``
        columns first); None, and no file, where the run has no labelled ``fit`` snapshot."""
        path = self.path / SAMPLES
        with RunLock(self.path):
            if not run_samples.write(self, staged(path)):
                return None
            os.replace(staged(path), path)
        return path

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

        A map does not change the samples' dynamics: ``samples.parquet`` is computed again only where it is missing
        or the ``fit`` snapshots, layers or logits it was computed from changed.

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
        largest = max(len(self.rows(s)) for s in snapshots) if align == "aligned" else 0
        if fit_samples is not None and largest > fit_samples:
            raise ValueError(
                f"align='aligned' fits every sample of every snapshot (umap.AlignedUMAP has no transform), and "
                f"{self.path} has snapshots of {largest} samples, more than fit_samples={fit_samples}. Use "
                "align='joint', or raise fit_samples (None: no limit) if memory allows."
            )
        columns = [self.column(layer) for layer in layers] if layers is not None else self.layers
        settings = MapSettings(reducer, n_components, seed, align, fit_samples, reducer_kwargs, progress)
        stale = run_samples.stale(self)  # a map does not change the dynamics
        with RunLock(self.path):  # the new maps and the pictures drawn from them, one writer at a time
            self.manifest, placed = write_maps(self, settings, columns,
                                               partial(run_samples.write, self) if stale else None)
            made = [column for column in columns if "skipped" not in self.manifest["reducer"]["layers"][column]]
            maps = {projection_file(self.path, column) for column in made}
            return Maps(self, made, *self._refresh_views(columns), written=[p for p in placed if p not in maps])

    def _refresh_views(self, columns: Sequence[str]) -> tuple[list[Path], list[Path], list[Path]]:
        """After a reduce, so that every picture and export shows the new maps: draw the pictures of ``columns``
        again where the run had them or wants them (the manifest's ``pictures``, from the collector's ``plots`` and
        ``html``), and the page; remove those of layers left without a map; write every projector export of the run
        again (:meth:`projector_exports`). Each said once; returns (drawn, removed, exported)."""
        from lightning_embeddings.export import export_tensorboard
        from lightning_embeddings.page import write_html
        from lightning_embeddings.plot import layer_pictures, plot_run

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
