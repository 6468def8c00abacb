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

The colours of both come from :func:`label_palette`. This module only draws: what the paths say (misclassified
samples, movers, class medians, distance to the final position) comes from :mod:`lightning_embeddings.dynamics`;
:func:`stratified_sample` and :func:`panel_title` choose what fits on a picture.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np
import pandas as pd

from lightning_embeddings.drawn import (
    N_SUSPECTS,
    LayerView,
    PanelTitle,
    PathLike,
    as_run,
    kept,
    limits,
    load_layer,
    output_dir,
    panel_title,
    reducer_words,
    snapshot_label,
    stratified_sample,
    three_d_note,
    with_projections,
)
from lightning_embeddings.dynamics import class_medians, distance_to_final, fit_rows, misclassified, movers
from lightning_embeddings.figures import (
    figure_class,
    label_legend,
    last_fit_index,
    mark_suspects,
    point_size,
    save,
    scatter,
    several_loaders,
    wrapped,
    write_ids,
)
from lightning_embeddings.layers import LayerSpec
from lightning_embeddings.layout import SPLIT, file_stem
from lightning_embeddings.overview import draw_overview
from lightning_embeddings.page import require_plotly, write_html
from lightning_embeddings.palette import CONTINUOUS, UNKNOWN, WARNING, Palette, label_palette
from lightning_embeddings.reader import RunReader
from lightning_embeddings.store import sample_keys

if TYPE_CHECKING:
    from matplotlib.axes import Axes

HEADER_CHARS = 38  # characters per panel column in the snapshots header: it stays clear of the legend
ZOOM_BELOW = 0.2  # a panel whose points span less than this share of the shared axes gets an inset at their scale
MAX_PANELS = 30  # at most this many snapshot panels per PNG, evenly spaced, first and last always kept


def _snapshot_panels(info: LayerView) -> tuple[list[dict[str, Any]], int]:
    """The snapshots that get a panel (at most ``MAX_PANELS``, evenly spaced, first and last kept, the last ``fit``
    one too: it marks the suspects), and how many there are."""
    snapshots = info.snapshots
    if len(snapshots) <= MAX_PANELS:
        return snapshots, len(snapshots)
    picks = sorted(set(np.linspace(0, len(snapshots) - 1, MAX_PANELS).round().astype(int)))
    last_fit = last_fit_index(info)
    if last_fit is not None and last_fit not in picks:  # it takes the place of the nearest pick between the ends
        nearest = min(picks[1:-1], key=lambda i: abs(i - last_fit))
        picks = sorted({*picks, last_fit} - {nearest})
    return [snapshots[i] for i in picks], len(snapshots)


def _snapshots_figure(info: LayerView) -> Any:
    Figure = figure_class()
    panels, count = _snapshot_panels(info)
    n = len(panels)
    ncols = min(n, max(3, math.ceil(math.sqrt(n))))
    nrows = math.ceil(n / ncols)
    extra = 1.4 if info.palette.kind != "none" else 0.0
    fig = Figure(figsize=(3.3 * ncols + extra, 3.4 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    xlim, ylim = limits(info.frame)
    last_fit = last_fit_index(info)
    marked = None
    for ax, snapshot in zip(axes, panels):
        index = info.snapshots.index(snapshot)
        rows = info.frame[info.frame["_panel"] == index]
        drawn = kept(info, rows)
        scatter(ax, info, drawn)
        _zoom_in(ax, info, drawn, xlim, ylim)
        if index == last_fit:
            marked = mark_suspects(ax, rows, info.suspects, max(24.0, point_size(len(drawn)) * 5), several_loaders(info))
        title = panel_title(
            snapshot, info.trust.get(snapshot["name"]), motion=info.motion.get(snapshot["name"]), shown=len(drawn),
            total=len(rows), fitted=snapshot["name"] == info.fitted_on, align=info.align or "last",
        )
        text = title.text if title.warning is None else f"{title.text}\n{title.warning}"
        ax.set_title(text, fontsize=9, color=WARNING if title.warning else "black")
        if title.warning:
            for spine in ax.spines.values():
                spine.set_edgecolor(WARNING)
                spine.set_linewidth(2.0)
        ax.tick_params(labelsize=7)
    for ax in axes[n:]:
        ax.set_visible(False)
    axes[0].set_xlim(*xlim)
    axes[0].set_ylim(*ylim)
    header = f"{info.column}: {reducer_words(info)}, {info.total:,} samples"
    header += ", coloured by label" if info.palette.kind != "none" else ", no labels recorded (grey)"
    if count > n:
        header += f"\n{n} of {count} snapshots shown, evenly spaced"
    if info.three_d:
        header += "\n" + wrapped(three_d_note(info), HEADER_CHARS * ncols)
    note = info.paths_note()
    if note:
        header += "\n" + wrapped(note, HEADER_CHARS * ncols)
    fig.suptitle(header, fontsize=11)
    label_legend(fig, info, list(axes[:n]))
    if marked is not None:  # below the panels: inside one it would cover points
        fig.legend(handles=[marked.handle], loc="outside lower center", fontsize=9, frameon=False)
    write_ids(fig, marked)
    return fig


def _zoom_in(ax: "Axes", info: LayerView, drawn: pd.DataFrame, xlim: tuple[float, float],
             ylim: tuple[float, float]) -> None:
    """Where most of a panel's points (2nd to 98th percentile) span less than ``ZOOM_BELOW`` of the shared axes
    both ways (``align="last"`` often puts the untrained epoch 0 in one spot), add an inset of them at their own
    scale, in the corner where it covers least of them: the shared axes keep the panels comparable, the inset keeps
    the shape readable."""
    finite = drawn[np.isfinite(drawn["x"].to_numpy(float)) & np.isfinite(drawn["y"].to_numpy(float))]
    if finite.empty:
        return
    own_x, own_y = limits(finite[["x", "y"]].quantile([0.02, 0.98]))
    share = max((own_x[1] - own_x[0]) / (xlim[1] - xlim[0]), (own_y[1] - own_y[0]) / (ylim[1] - ylim[0]))
    if share >= ZOOM_BELOW:
        return
    span = [((own_x[0] - xlim[0]) / (xlim[1] - xlim[0]), (own_x[1] - xlim[0]) / (xlim[1] - xlim[0])),
            ((own_y[0] - ylim[0]) / (ylim[1] - ylim[0]), (own_y[1] - ylim[0]) / (ylim[1] - ylim[0]))]
    side = 0.4

    def covered(corner: tuple[float, float]) -> float:
        return math.prod(max(0.0, min(hi, start + side) - max(lo, start)) for (lo, hi), start in zip(span, corner))

    corner = min(((x, y) for x in (0.04, 0.96 - side) for y in (0.04, 0.96 - side)), key=covered)
    inset = ax.inset_axes([*corner, side, side])
    scatter(inset, info, drawn)
    inset.set_xlim(*own_x)
    inset.set_ylim(*own_y)
    inset.set_xticks([])
    inset.set_yticks([])
    inset.set_title(f"zoomed x{1 / share:.0f}", fontsize=7, pad=2)
    ax.indicate_inset_zoom(inset, edgecolor="dimgray")


def _draw_snapshots(info: LayerView, target: Path) -> Path:
    return save(_snapshots_figure(info), target)


def _datamap_samples(info: LayerView) -> Optional[tuple[str, pd.DataFrame]]:
    """The samples a data map shows, by suspicion: the training split's where recorded, else the validation
    split's; None where samples() has no confidence and variability (logits were not recorded)."""
    for split in ("train", "val"):
        rows = info.samples[(info.samples[SPLIT] == split).to_numpy()]
        if {"confidence", "variability"} <= set(rows.columns):
            rows = rows[(rows["confidence"].notna() & rows["variability"].notna()).to_numpy()]
            if len(rows):
                return split, rows
    return None


def _datamap_figure(info: LayerView, split: str, rows: pd.DataFrame) -> Any:
    """Dataset Cartography's data map (Swayamdipta et al. 2020): each sample's variability against its confidence
    in its label across ``fit``, coloured by the share of snapshots that predicted it right; the top suspects
    marked with their ids."""
    from matplotlib.colors import LinearSegmentedColormap

    Figure = figure_class()
    fig = Figure(figsize=(10.0, 7.4), layout="constrained")
    ax = fig.add_subplot()
    n = len(rows)
    points = pd.DataFrame({
        "_key": sample_keys(rows["sample_id"].to_numpy(np.int64), rows["dataloader_idx"].to_numpy(np.int64),
                            np.full(n, split, dtype=object)),
        "x": rows["variability"].to_numpy(float), "y": rows["confidence"].to_numpy(float),
        "dataloader_idx": rows["dataloader_idx"].to_numpy(np.int64), "sample_id": rows["sample_id"].to_numpy(np.int64),
    })
    size, alpha = point_size(n) * 2.0, (0.85 if n < 2000 else 0.6)
    if "correct" in rows and rows["correct"].notna().any():
        cmap = LinearSegmentedColormap.from_list("lightning-embeddings", list(CONTINUOUS)).with_extremes(bad=UNKNOWN)
        drawn = ax.scatter(points["x"], points["y"], c=rows["correct"].to_numpy(float), cmap=cmap, vmin=0.0, vmax=1.0,
                           s=size, linewidths=0, alpha=alpha, rasterized=True, plotnonfinite=True)
        fig.colorbar(drawn, ax=ax, label="correct: share of fit snapshots that predicted the label right", shrink=0.85)
    else:
        ax.scatter(points["x"], points["y"], c=UNKNOWN, s=size, linewidths=0, alpha=alpha, rasterized=True)
    top = rows[rows["suspicion"].notna().to_numpy()].head(N_SUSPECTS) if "suspicion" in rows else rows.iloc[:0]
    marked = mark_suspects(ax, points, top, max(36.0, size * 4), several_loaders(info), split)
    if marked is not None:
        ax.legend(handles=[marked.handle], loc="lower right", fontsize=8, framealpha=0.85)
    for x, y, words, where in ((0.02, 0.98, "easy to learn", "top"), (0.02, 0.02, "hard to learn", "bottom"),
                               (0.98, 0.5, "ambiguous", "center")):
        ax.text(x, y, words, transform=ax.transAxes, ha="right" if x > 0.5 else "left", va=where, fontsize=11,
                color="dimgray", style="italic", zorder=0.5)  # under the points: "hard to learn" is where they pile
    ax.set_xlim(0.0, max(float(np.nanmax(points["x"])) * 1.08, 0.05))
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("variability: standard deviation over fit snapshots of p(label)")
    ax.set_ylabel("confidence: mean over fit snapshots of p(label)")
    ax.grid(alpha=0.3)
    fit = sum(s["stage"] == "fit" for s in info.snapshots)
    which = "training split (record_train)" if split == "train" else "validation split"
    lines = [f"{info.column}: data map of the {which}, {n:,} samples over {fit} fit snapshots",
             "Dataset Cartography (Swayamdipta et al. 2020): mislabelled samples gather bottom left"]
    if fit < 3:
        lines.append(f"only {fit} fit snapshot{'s' if fit != 1 else ''}: variability is coarse")
    ax.set_title("\n".join(lines), fontsize=10)
    write_ids(fig, marked)
    return fig


def plot_layer(
    run: Union[RunReader, PathLike], layer: LayerSpec, path: Optional[PathLike] = None
) -> list[Path]:
    """Draw one layer's PNGs: ``<layer>-snapshots.png``, ``<layer>-overview.png`` and, where logits were
    recorded, ``<layer>-datamap.png`` (``<layer>`` the column as :func:`~.store.file_stem` names files: ``head.1``
    as is, ``/`` and a leading ``.`` percent-encoded).

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
    :meth:`~lightning_embeddings.EmbeddingRun.samples`, by ``suspicion``) with a hollow diamond and their ids,
    where the run has labels.

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
    run = as_run(run)
    info = load_layer(run, layer)
    directory = output_dir(run, path)
    if info.frame.empty:
        raise ValueError(f"Layer {info.column!r} of {run.path} has an empty map: nothing to draw.")
    snapshots_png, overview_png, datamap_png = layer_pictures(directory, info.column)
    written = [_draw_snapshots(info, snapshots_png), draw_overview(info, overview_png)]
    datamap = _datamap_samples(info)
    if datamap is not None:
        written.append(save(_datamap_figure(info, *datamap), datamap_png))
    return written


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
    run = as_run(run)
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
    "snapshot_label",
    "stratified_sample",
    "write_html",
]
