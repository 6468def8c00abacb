"""``<layer>-snapshots.png``: one panel per snapshot (``fit`` first, then ``validate``/``test``) on shared axes,
coloured by label, each titled with its epoch, step, trustworthiness and the temporal preservation of the paths into
it; an unfaithful panel framed in red with the warning in words; the last ``fit`` panel marks the suspects; a panel
whose points fill a sliver of the shared axes gets an inset at their own scale.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lightning_embeddings.drawn import LayerView, kept, limits, panel_title, reducer_words, three_d_note
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
from lightning_embeddings.palette import WARNING

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


def snapshots_figure(info: LayerView) -> Any:
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
            marked = mark_suspects(ax, rows if info.suspect_rows is None else info.suspect_rows, info.suspects,
                                   max(24.0, point_size(len(drawn)) * 5), several_loaders(info), info.suspects_split)
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


def draw_snapshots(info: LayerView, target: Path) -> Path:
    return save(snapshots_figure(info), target)
