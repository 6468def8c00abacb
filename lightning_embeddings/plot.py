"""Pictures of a run's maps: PNGs per layer (matplotlib) and one interactive HTML page (plotly).

Per layer, under ``<run>/plots/``:

- ``<layer>-snapshots.png``: one panel per snapshot (``fit`` first, then ``validate``/``test``) on shared axes,
  coloured by label, each panel titled with its epoch, step, trustworthiness and the temporal preservation of the
  paths into it; a panel whose map is not faithful (trustworthiness below 0.8) is framed and titled in red with a
  warning in plain words. Paths that are not faithful (temporal preservation below 0.5) are a property of the
  map, not of a panel: the figure says so once, with the command that draws faithful ones. The last ``fit`` panel
  marks the samples most likely mislabelled (the top of :meth:`~lightning_embeddings.EmbeddingRun.samples` by
  ``suspicion``) with their ids, placed apart (:func:`write_ids`). A panel whose points fill a sliver of the shared
  axes gets an inset at their own scale.
- ``<layer>-overview.png``: the last ``fit`` snapshot coloured by label with misclassified samples and the most
  likely mislabelled ones marked, the path of each class's median across ``fit``, the paths of the samples that
  moved most and of some that ended misclassified, each fading in from faint first steps to a bold last one (only
  where the map's paths are faithful: median temporal preservation at least 0.5; else it says why none are
  drawn), and beside it each class's median distance to its final position over training. Never every sample's path: that is a hairball.
- ``<layer>-datamap.png`` (where logits were recorded): the data map of Dataset Cartography (Swayamdipta et al.
  2020), each sample's variability against its confidence in its label across ``fit``, coloured by how often it
  was predicted right, of the training split where recorded (``record_train``), else of the validation split.

The pictures and the page draw the evaluated split (the ``val`` rows, ``test`` rows for ``trainer.test``): the
training rows of ``record_train`` are drawn in the data map only.

``embeddings.html``: every layer in one self-contained page (one inlined copy of plotly.js, no network), a
slider and a play button over the snapshots, points moving by sample identity, numeric hover with each sample's
training dynamics (suspicion, k-NN agreement, ...).

The colours of both come from :func:`label_palette`. :func:`plot_layer` is the caller: it reads what is drawn
(:func:`~lightning_embeddings.drawn.load_layer`), with the samples' dynamics
(:func:`~lightning_embeddings.run_samples.recorded`, computed where ``samples.parquet`` cannot be read) and what the
paths say (:func:`~lightning_embeddings.paths.map_paths`: misclassified samples, movers, class medians, distance to
the final position), and hands them to the pictures, which only draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import pandas as pd

from lightning_embeddings.datamap import datamap_figure, datamap_rows
from lightning_embeddings.drawn import (
    PanelTitle,
    PathLike,
    load_layer,
    output_dir,
    panel_title,
    snapshot_label,
    stratified_sample,
    with_projections,
)
from lightning_embeddings.paths import class_medians, distance_to_final, fit_rows, map_paths, misclassified, movers
from lightning_embeddings.figures import save
from lightning_embeddings.layers import LayerSpec
from lightning_embeddings.layout import SPLIT, file_stem
from lightning_embeddings.overview import draw_overview
from lightning_embeddings.page import require_plotly, write_html
from lightning_embeddings.palette import Palette, label_palette
from lightning_embeddings.reader import RunReader, as_reader
from lightning_embeddings.run_samples import GALLERY, recorded, suspects
from lightning_embeddings.snapshots import draw_snapshots
from lightning_embeddings.suspects import draw_suspects


def plot_layer(
    run: Union[RunReader, PathLike], layer: LayerSpec, path: Optional[PathLike] = None
) -> list[Path]:
    """Draw one layer's PNGs: ``<layer>-snapshots.png``, ``<layer>-overview.png`` and, where logits were
    recorded, ``<layer>-datamap.png`` (``<layer>`` the column as :func:`~.store.file_stem` names files: ``head.1``
    as is, ``/`` and a leading ``.`` percent-encoded). The suspects' gallery, which needs no map, is
    :func:`plot_suspects`'.

    The pictures of the map draw the evaluated split (``val``; ``test`` for ``trainer.test`` snapshots), never the
    training rows of ``record_train``. The snapshots picture has one panel per snapshot (``fit`` first, then
    ``validate``/``test``; at most 30, evenly spaced) on shared axes, coloured by label, each titled with its epoch,
    step, trustworthiness and the temporal preservation of the paths into it; a panel whose trustworthiness is
    below 0.8 or whose temporal preservation is below 0.5 is framed and titled in red with a warning in plain
    words. Above 20,000 points a panel draws a per-class sample, and says so.

    The overview draws the last ``fit`` snapshot coloured by label with misclassified samples marked ``x`` (when
    labels and predictions were recorded), each class's median path across ``fit``, the paths of the 10 samples that
    moved most and of up to 20 that ended misclassified, and beside it each class's median distance to its final
    position against the global step. A 3-D map is drawn by its x and y, and the titles say so.

    In both, the last ``fit`` snapshot marks the 10 samples most likely mislabelled (the first rows of
    :meth:`~lightning_embeddings.EmbeddingRun.samples`, by ``suspicion``, of the split with the most labels: the
    training split under ``record_train``, as the table and the gallery, marked where its rows are in the map) with
    a hollow diamond and their ids, where the run has labels.

    The data map (Dataset Cartography, Swayamdipta et al. 2020) draws each sample's variability against its
    confidence in its label across ``fit``, coloured by the share of snapshots that predicted it right, of the
    training split where it was recorded, else of the validation split, its top suspects marked with their ids.

    Files are written under a temporary name and renamed, so a reader never sees half a picture.

    Args:
        run: an :class:`EmbeddingRun` or its directory.
        layer: the layer (column name, module name, spec or index).
        path: the directory to write to; ``<run>/plots`` by default.

    Returns:
        The PNGs' paths: snapshots, overview, then the data map where drawn.

    Raises:
        FileNotFoundError: the layer has no projections.
        ValueError: the layer was not recorded.

    Example::

        from lightning_embeddings.plot import plot_layer

        snapshots_png, overview_png = plot_layer(EmbeddingRun(collector.dirpath), "head.1")
    """
    run = as_reader(run)
    info = load_layer(run, layer, recorded(run, run.column(layer)))
    directory = output_dir(run, path)
    if info.frame.empty:
        raise ValueError(f"Layer {info.column!r} of {run.path} has an empty map: nothing to draw.")
    snapshots_png, overview_png, datamap_png = layer_pictures(directory, info.column)
    paths = map_paths(info.frame, per_class=info.palette.kind == "categorical")
    written = [draw_snapshots(info, snapshots_png), draw_overview(info, paths, overview_png)]
    datamap = datamap_rows(info)
    if datamap is not None:
        written.append(save(datamap_figure(info, *datamap), datamap_png))
    return written


def plot_suspects(run: Union[RunReader, PathLike], layer: LayerSpec, path: Optional[PathLike] = None,
                  samples: Optional[pd.DataFrame] = None, split: Optional[str] = None, top: int = GALLERY) -> Optional[Path]:
    """Draw ``<layer>-suspects.png``: the ``top`` samples most likely mislabelled of ``split`` (by default the split
    with the most labels: the training split under ``record_train``), each with its thumbnail or text, its label,
    the label its neighbours hold and its prediction, beside its 5 nearest neighbours (cosine, in the layer's
    vectors at the last ``fit`` snapshot) and theirs. Needs no map. None, and no file, where the split has no
    labels.

    Args:
        run: an :class:`EmbeddingRun` or its directory.
        layer: the layer (column name, module name, spec or index).
        path: the directory to write to; ``<run>/plots`` by default.
        samples: the layer's :func:`~lightning_embeddings.run_samples.recorded` samples, where the caller has them.
        split: ``"val"`` or ``"train"``.
        top: how many suspects.

    Example::

        from lightning_embeddings.plot import plot_suspects

        plot_suspects(EmbeddingRun(collector.dirpath), "head.1")   # .../plots/head.1-suspects.png
    """
    run = as_reader(run)
    column = run.column(layer)
    samples = recorded(run, column) if samples is None else samples
    gallery = suspects(run, column, samples, top=top, split=split)
    if gallery is None:
        return None
    evaluated = samples[(samples[SPLIT] != "train").to_numpy()]  # the maps' colours: of the evaluated split's labels
    palette = label_palette((evaluated if len(evaluated) else samples)["label"].to_numpy())
    return draw_suspects(gallery, palette, output_dir(run, path) / f"{file_stem(column)}-suspects.png")


def layer_pictures(directory: Path, column: str) -> list[Path]:
    """Where :func:`plot_layer` draws a layer's PNGs in ``directory``: snapshots, overview, then the data map (drawn
    only where logits were recorded)."""
    return [directory / f"{file_stem(column)}-{kind}.png" for kind in ("snapshots", "overview", "datamap")]


def plot_run(
    run: Union[RunReader, PathLike],
    layers: Optional[Sequence[LayerSpec]] = None,
    html: bool = False,
    path: Optional[PathLike] = None,
) -> list[Path]:
    """Draw every layer's PNGs (see :func:`plot_layer`) and, with ``html=True``, the interactive page
    (see :func:`~lightning_embeddings.page.write_html`). Layers without a map are left out with a warning.

    Args:
        run: an :class:`EmbeddingRun` or its directory.
        layers: the layers to draw; all recorded layers by default.
        html: also write ``embeddings.html``.
        path: the directory to write to; ``<run>/plots`` by default.

    Returns:
        The written files: two PNGs per layer (three where logits were recorded: the data map), then the HTML page
        when asked.

    Raises:
        ImportError: with ``html=True``, plotly is not installed.

    Example::

        from lightning_embeddings.plot import plot_run

        for picture in plot_run("lightning_logs/version_0/embeddings", html=True):
            print(picture)
    """
    if html:
        require_plotly()  # fail before drawing anything
    run = as_reader(run)
    columns = with_projections(run, layers)
    written = [picture for column in columns for picture in plot_layer(run, column, path)]
    if html and columns:
        written.append(write_html(run, columns, path))
    return written


__all__ = [
    "Palette",
    "PanelTitle",
    "class_medians",
    "distance_to_final",
    "fit_rows",
    "label_palette",
    "misclassified",
    "movers",
    "panel_title",
    "plot_layer",
    "plot_run",
    "plot_suspects",
    "snapshot_label",
    "stratified_sample",
    "write_html",
]
