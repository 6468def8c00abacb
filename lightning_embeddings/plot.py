"""Pictures of a run's maps: PNGs per layer (matplotlib) and one interactive HTML page (plotly).

Per layer, under ``<run>/plots/``:

- ``<layer>-snapshots.png``: one panel per snapshot (``fit`` first, then ``validate``/``test``) on shared axes,
  coloured by label, each panel titled with its epoch, step, trustworthiness and the temporal preservation of the
  paths into it; a panel whose map is not faithful (trustworthiness below 0.8) is framed and titled in red with a
  warning in plain words. Paths that are not faithful (temporal preservation below 0.5) are a property of the
  map, not of a panel: the figure says so once, with the command that draws faithful ones. The last ``fit`` panel
  marks the samples most likely mislabelled (the top of :meth:`~lightning_embeddings.EmbeddingRun.samples` by
  ``suspicion``) with their ids, placed apart (:func:`_write_ids`). A panel whose points fill a sliver of the shared
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
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Sequence, Union

import numpy as np
import pandas as pd

from lightning_embeddings.dynamics import (
    N_MOVERS,
    class_medians,
    distance_to_final,
    fit_rows,
    misclassified,
    movers,
)
from lightning_embeddings.drawn import (
    N_SUSPECTS,
    SEED,
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
    fit_steps,
    stratified_sample,
    three_d_note,
    with_projections,
)
from lightning_embeddings.layers import LayerSpec
from lightning_embeddings.layout import SPLIT, atomic_write, file_stem, snapshot_name
from lightning_embeddings.page import require_plotly, write_html
from lightning_embeddings.palette import (
    CONTINUOUS,
    MAX_CLASSES,
    SUSPECT,
    UNKNOWN,
    WARNING,
    Palette,
    label_palette,
    plain,
)
from lightning_embeddings.reader import RunReader
from lightning_embeddings.store import sample_keys

if TYPE_CHECKING:
    from matplotlib.axes import Axes

HEADER_CHARS = 38  # characters per panel column in the snapshots header: it stays clear of the legend
ZOOM_BELOW = 0.2  # a panel whose points span less than this share of the shared axes gets an inset at their scale
MAX_PANELS = 30  # at most this many snapshot panels per PNG, evenly spaced, first and last always kept
N_MISCLASSIFIED_PATHS = 10  # at most this many paths of samples that ended misclassified
FADE_FROM = 0.12  # a path's first step is drawn at this share of its last step's opacity
ID_GAPS = (1.0, 4.0, 10.0, 17.0, 26.0, 36.0, 50.0)  # points tried between a suspect's marker and its id; past the
# first, a thin line joins them

SUSPECTS_SAID = "most likely mislabelled (suspicion)"



def _shown(label: Any) -> str:
    """A label as matplotlib draws it: the plain text it is (a ``$`` escaped, so ``"$x_$"`` is not mathtext)."""
    return str(plain(label)).replace("$", r"\$")


def _wrapped(text: str, width: int) -> str:
    """``text`` in lines of at most ``width`` characters, never breaking a word or a path at its hyphens."""
    return textwrap.fill(text, width, break_long_words=False, break_on_hyphens=False)


def _matplotlib() -> Any:
    from matplotlib.figure import Figure  # imported on first use: it is slow to import

    return Figure


def _save(fig: Any, target: Path) -> Path:
    """Write ``fig`` to ``target`` (atomically)."""
    with atomic_write(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return target


def _point_size(n: int) -> float:
    return float(np.clip(3000.0 / max(n, 1), 0.5, 14.0))


def _scatter(ax: "Axes", info: LayerView, rows: pd.DataFrame, alpha: Optional[float] = None, scale: float = 1.0) -> None:
    colors = info.palette.colors_of(rows["label"]) if "label" in rows else np.full(len(rows), UNKNOWN, dtype=object)
    n = len(rows)
    ax.scatter(
        rows["x"].to_numpy(float), rows["y"].to_numpy(float), c=list(colors), s=_point_size(n) * scale, linewidths=0,
        alpha=alpha if alpha is not None else (0.85 if n < 2000 else 0.6), rasterized=True,
    )


def _label_legend(fig: Any, info: LayerView, where: Any) -> None:
    """A legend of class colours (categorical), a colour bar (continuous) or a note (no labels)."""
    palette = info.palette
    if palette.kind == "categorical":
        from matplotlib.lines import Line2D

        handles = [
            Line2D([], [], marker="o", linestyle="", markersize=7, markerfacecolor=palette.colors[c],
                   markeredgewidth=0, label=_shown(c))
            for c in palette.classes
        ]
        fig.legend(handles=handles, title="label", loc="outside right upper", frameon=False)
    elif palette.kind == "continuous":
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import LinearSegmentedColormap, Normalize

        cmap = LinearSegmentedColormap.from_list("lightning-embeddings", list(CONTINUOUS))
        mappable = ScalarMappable(norm=Normalize(palette.vmin, palette.vmax), cmap=cmap)
        fig.colorbar(mappable, ax=where, label=f"label ({len(palette.classes)} classes)", shrink=0.8)


def _snapshot_panels(info: LayerView) -> tuple[list[dict[str, Any]], int]:
    """The snapshots that get a panel (at most ``MAX_PANELS``, evenly spaced, first and last kept, the last ``fit``
    one too: it marks the suspects), and how many there are."""
    snapshots = info.snapshots
    if len(snapshots) <= MAX_PANELS:
        return snapshots, len(snapshots)
    picks = sorted(set(np.linspace(0, len(snapshots) - 1, MAX_PANELS).round().astype(int)))
    last_fit = _last_fit_index(info)
    if last_fit is not None and last_fit not in picks:  # it takes the place of the nearest pick between the ends
        nearest = min(picks[1:-1], key=lambda i: abs(i - last_fit))
        picks = sorted({*picks, last_fit} - {nearest})
    return [snapshots[i] for i in picks], len(snapshots)


def _last_fit_index(info: LayerView) -> Optional[int]:
    """The position in ``info.snapshots`` of the last ``fit`` snapshot, None without one."""
    fit = [i for i, s in enumerate(info.snapshots) if s["stage"] == "fit"]
    return fit[-1] if fit else None


def _several(info: LayerView) -> bool:
    """Whether the samples come from several dataloaders (then a sample is named ``dataloader:id``)."""
    loaders = info.frame["dataloader_idx"]
    if len(info.samples):
        loaders = pd.concat([loaders, info.samples["dataloader_idx"]])
    return loaders.nunique() > 1


def _sample_name(dataloader_idx: Any, sample_id: Any, several_loaders: bool) -> str:
    return f"{int(dataloader_idx)}:{int(sample_id)}" if several_loaders else str(int(sample_id))


def _suspect_keys(suspects: pd.DataFrame, split: str = "val") -> np.ndarray:
    return sample_keys(suspects["sample_id"].to_numpy(np.int64), suspects["dataloader_idx"].to_numpy(np.int64),
                       np.full(len(suspects), split, dtype=object))


class _Suspects(NamedTuple):
    """The suspects marked on one axes: their ids, where they are (data coordinates), the area of their marker
    (points², as ``scatter`` takes it) and their legend handle."""

    ax: "Axes"
    names: list[str]
    xy: np.ndarray
    size: float
    handle: Any


def _mark_suspects(ax: "Axes", rows: pd.DataFrame, suspects: pd.DataFrame, size: float, several: bool,
                   split: str = "val") -> Optional[_Suspects]:
    """Mark ``suspects`` (rows of samples() of ``split``) among ``rows`` (one point per sample: ``_key, x, y,
    dataloader_idx, sample_id``) with a hollow diamond; None when none is there. Their ids are written by
    :func:`_write_ids` once the rest of the figure is drawn."""
    if suspects.empty:
        return None
    keys = _suspect_keys(suspects, split)
    rank = {int(key): i for i, key in enumerate(keys)}
    at = rows[np.isin(rows["_key"].to_numpy(), keys) & np.isfinite(rows["x"].to_numpy(float))
              & np.isfinite(rows["y"].to_numpy(float))]
    at = at.iloc[np.argsort([rank[int(key)] for key in at["_key"]], kind="stable")]
    if at.empty:
        return None
    from matplotlib.lines import Line2D

    xy = at[["x", "y"]].to_numpy(float)
    ax.scatter(xy[:, 0], xy[:, 1], marker="D", facecolors="none", edgecolors=SUSPECT, s=size, linewidths=1.4, zorder=8)
    handle = Line2D([], [], marker="D", markerfacecolor="none", markeredgecolor=SUSPECT, markeredgewidth=1.4,
                    linestyle="", label=f"the {len(at)} {SUSPECTS_SAID}, with ids")
    names = [_sample_name(loader, i, several) for loader, i in zip(at["dataloader_idx"], at["sample_id"])]
    return _Suspects(ax, names, xy, size, handle)


def _id_places(width: float, height: float, reach: float, scale: float,
               crowded: bool) -> list[tuple[float, float, float]]:
    """Where an id of ``width`` x ``height`` pixels may go around its marker (``reach`` pixels from its centre to
    its edge; ``scale`` pixels to a point), nearest first: ``(dx, dy, gap)``, the offset in pixels of the id's
    centre and its gap to the marker in points. A ``crowded`` marker (touching another) gets its id further out,
    on a line: beside it, the id could be read as its neighbour's."""
    places = []
    for gap in ID_GAPS[2:] if crowded else ID_GAPS:
        for degrees in range(45, 405, 30):  # upper right first, then round the marker
            cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
            distance = reach / max(abs(cos), abs(sin)) + gap * scale  # to the marker's square edge, then the gap
            dx = cos * distance + (width / 2 if cos > 0.3 else -width / 2 if cos < -0.3 else 0.0)
            dy = sin * distance + (height / 2 if sin > 0.3 else -height / 2 if sin < -0.3 else 0.0)
            places.append((dx, dy, gap))
    return places


def _write_ids(fig: Any, marked: Optional[_Suspects]) -> None:
    """Write each suspect's id beside its marker where it covers no other id, no marker, no text or legend of the
    axes and stays inside them; an id pushed away from its marker gets a thin line back to it. Call it last: the
    places are found in the laid-out figure, and the ids take no part in the layout."""
    if marked is None:
        return
    from matplotlib import patheffects
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig.draw_without_rendering()
    ax, scale = marked.ax, fig.dpi / 72.0  # pixels per point
    frame = ax.get_window_extent()
    centres = ax.transData.transform(marked.xy)
    reach = math.sqrt(marked.size) / 2 * scale
    taken = [Bbox.from_bounds(x - reach, y - reach, 2 * reach, 2 * reach) for x, y in centres]
    taken += [Text.get_window_extent(text) for text in ax.texts if text.get_text()]  # words, not the paths' arrows
    if ax.get_legend() is not None:
        taken.append(ax.get_legend().get_window_extent())
    style = dict(fontsize=7, color=SUSPECT, zorder=9,
                 path_effects=[patheffects.withStroke(linewidth=2.0, foreground="white")])
    apart = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
    crowded = ((apart < 2 * reach).sum(axis=1) > 1).tolist()
    for name, (x, y), xy, near in zip(marked.names, centres, marked.xy, crowded):
        probe = ax.text(0.0, 0.0, name, **style)
        extent = probe.get_window_extent()
        width, height = extent.width, extent.height
        probe.remove()
        best, least = None, math.inf
        for dx, dy, gap in _id_places(width, height, reach, scale, near):
            box = Bbox.from_bounds(x + dx - width / 2, y + dy - height / 2, width, height)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            covered = sum(_overlap(box, other) for other in taken) + (0.0 if inside else width * height)
            if covered < least:
                best, least = (dx, dy, gap, box), covered
            if covered == 0.0:
                break
        dx, dy, gap, box = best
        leader = dict(arrowstyle="-", color=SUSPECT, linewidth=0.6, shrinkA=0, shrinkB=reach / scale)
        label = ax.annotate(name, xy=tuple(xy), xytext=(dx / scale, dy / scale), textcoords="offset points",
                            ha="center", va="center", gid="suspect", annotation_clip=False,
                            arrowprops=leader if gap > ID_GAPS[0] else None, **style)
        label.set_in_layout(False)
        taken.append(box.expanded(1.0 + 4 * scale / width, 1.0))  # a space between ids: "3" beside "20" reads "320"


def _overlap(a: Any, b: Any) -> float:
    """The area two pixel boxes share."""
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


def _snapshots_figure(info: LayerView) -> Any:
    Figure = _matplotlib()
    panels, count = _snapshot_panels(info)
    n = len(panels)
    ncols = min(n, max(3, math.ceil(math.sqrt(n))))
    nrows = math.ceil(n / ncols)
    extra = 1.4 if info.palette.kind != "none" else 0.0
    fig = Figure(figsize=(3.3 * ncols + extra, 3.4 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    xlim, ylim = limits(info.frame)
    last_fit = _last_fit_index(info)
    marked = None
    for ax, snapshot in zip(axes, panels):
        index = info.snapshots.index(snapshot)
        rows = info.frame[info.frame["_panel"] == index]
        drawn = kept(info, rows)
        _scatter(ax, info, drawn)
        _zoom_in(ax, info, drawn, xlim, ylim)
        if index == last_fit:
            marked = _mark_suspects(ax, rows, info.suspects, max(24.0, _point_size(len(drawn)) * 5), _several(info))
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
        header += "\n" + _wrapped(three_d_note(info), HEADER_CHARS * ncols)
    note = info.paths_note()
    if note:
        header += "\n" + _wrapped(note, HEADER_CHARS * ncols)
    fig.suptitle(header, fontsize=11)
    _label_legend(fig, info, list(axes[:n]))
    if marked is not None:  # below the panels: inside one it would cover points
        fig.legend(handles=[marked.handle], loc="outside lower center", fontsize=9, frameon=False)
    _write_ids(fig, marked)
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
    _scatter(inset, info, drawn)
    inset.set_xlim(*own_x)
    inset.set_ylim(*own_y)
    inset.set_xticks([])
    inset.set_yticks([])
    inset.set_title(f"zoomed x{1 / share:.0f}", fontsize=7, pad=2)
    ax.indicate_inset_zoom(inset, edgecolor="dimgray")


def _draw_snapshots(info: LayerView, target: Path) -> Path:
    return _save(_snapshots_figure(info), target)


def _draw_path(ax: "Axes", xy: np.ndarray, color: str, width: float, style: str = "-", outline: bool = True,
               zorder: float = 3, alpha: float = 1.0) -> None:
    """Draw the path through ``xy`` (oldest first) fading in, from ``FADE_FROM`` of ``alpha`` at its first step to
    ``alpha`` at its last, with an arrow on the last: the late motion reads, the long early jumps (from where the
    untrained vectors were) stay faint instead of crossing the map in bold. ``outline``: a white edge under it."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgba

    if len(xy) < 2:
        return
    fade = np.linspace(FADE_FROM, 1.0, len(xy) - 1) * alpha  # one per step
    segments = np.stack([xy[:-1], xy[1:]], axis=1)
    if outline:
        ax.add_collection(LineCollection(segments, colors=[to_rgba("white", a) for a in fade], linewidths=width + 2.2,
                                         capstyle="round", zorder=zorder - 0.01))
    ax.add_collection(LineCollection(segments, colors=[to_rgba(color, a) for a in fade], linewidths=width,
                                     linestyles=style, capstyle="round", zorder=zorder, gid="path"))
    ax.scatter(xy[:, 0], xy[:, 1], s=(width + 1.5) ** 2, c=[to_rgba(color, a) for a in [fade[0], *fade]],
               linewidths=0, zorder=zorder)
    if not np.allclose(xy[-2], xy[-1]):
        ax.annotate("", xy=tuple(xy[-1]), xytext=tuple(xy[-2]), zorder=zorder + 0.1,
                    arrowprops=dict(arrowstyle="-|>", color=color, lw=width, mutation_scale=8 + 3 * width,
                                    shrinkA=0, shrinkB=0, alpha=alpha))


def _sample_paths(rows: pd.DataFrame, keys: np.ndarray) -> list[np.ndarray]:
    picked = rows[np.isin(rows["_key"].to_numpy(), keys)].sort_values(["_key", "step", "epoch"])
    return [group[["x", "y"]].to_numpy(float) for _, group in picked.groupby("_key", sort=False)]


def _draw_overview(info: LayerView, target: Path) -> Path:
    return _save(_overview_figure(info), target)


def _overview_figure(info: LayerView) -> Any:
    from matplotlib import patheffects
    from matplotlib.lines import Line2D

    Figure = _matplotlib()
    fig = Figure(figsize=(14.5, 6.8), layout="constrained")
    grid = fig.add_gridspec(1, 2, width_ratios=[1.55, 1.0])
    ax, curve_ax = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    rows = fit_rows(info.frame)
    steps = fit_steps(rows)
    last_epoch, last_step = steps[-1]
    last = rows[rows["step"] == last_step]
    drawn = kept(info, last)
    _scatter(ax, info, drawn, alpha=0.45 if len(drawn) < 2000 else 0.5, scale=2.0)
    handles: list[Any] = []

    wrong = misclassified(info.frame)
    has_predictions = {"label", "prediction"} <= set(info.frame.columns)
    if len(wrong):
        marked = kept(info, wrong)
        ax.scatter(marked["x"].to_numpy(float), marked["y"].to_numpy(float), marker="x", c="black",
                   s=max(10.0, _point_size(len(drawn)) * 3), linewidths=1.0, zorder=4)
        handles.append(Line2D([], [], marker="x", color="black", linestyle="", label=f"misclassified ({len(wrong):,})"))

    many = len(steps) >= 2
    if many and info.paths_faithful():
        medians = class_medians(info.frame) if info.palette.kind == "categorical" else class_medians(info.frame.iloc[:0])
        for label, path in medians.groupby("label", sort=True):
            xy = path.sort_values("step")[["x", "y"]].to_numpy(float)
            color = info.palette.color(label)
            _draw_path(ax, xy, color, 2.4, zorder=6)
            ax.annotate(_shown(label), xy=tuple(xy[-1]), xytext=(5, 5), textcoords="offset points", color=color,
                        fontsize=10, fontweight="bold", zorder=7,
                        path_effects=[patheffects.withStroke(linewidth=2.5, foreground="white")])
        if len(medians):
            handles.append(Line2D([], [], color="dimgray", linewidth=2.4, marker="o", markersize=4,
                                  label="class median path (faint early, bold late; arrow: the last step)"))
        top = movers(info.frame, N_MOVERS)  # of the fit snapshots: the "val" split
        top_keys = sample_keys(top["sample_id"].to_numpy(np.int64), top["dataloader_idx"].to_numpy(np.int64))
        for xy in _sample_paths(rows, top_keys):
            _draw_path(ax, xy, "black", 0.8, outline=False, zorder=5, alpha=0.7)
        if len(top):
            handles.append(Line2D([], [], color="black", linewidth=0.9, marker="o", markersize=2.4,
                                  label=f"the {len(top)} samples that moved most"))
        if len(wrong):
            wrong_keys = np.setdiff1d(wrong["_key"].to_numpy(np.int64), top_keys)
            if len(wrong_keys) > N_MISCLASSIFIED_PATHS:
                wrong_keys = np.sort(np.random.default_rng(SEED).choice(wrong_keys, N_MISCLASSIFIED_PATHS, replace=False))
            for xy in _sample_paths(rows, wrong_keys):
                _draw_path(ax, xy, "#555555", 0.8, style="--", outline=False, zorder=5, alpha=0.75)
            if len(wrong_keys):
                said = (f"paths of {len(wrong_keys)} of the {len(wrong):,} misclassified samples (random)"
                        if len(wrong) > len(wrong_keys) + len(top) else "paths of the misclassified samples")
                handles.append(Line2D([], [], color="#555555", linewidth=0.8, linestyle="--", label=said))

    marked = _mark_suspects(ax, last, info.suspects, max(36.0, _point_size(len(drawn)) * 8), _several(info))
    if marked is not None:
        handles.append(marked.handle)

    xlim, ylim = limits(rows)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    fitted = any(s["name"] == info.fitted_on and s["step"] == last_step and s["stage"] == "fit" for s in info.snapshots)
    snapshot = {"stage": "fit", "epoch": last_epoch, "step": last_step}
    name = snapshot_name("fit", last_epoch, last_step)
    title = panel_title(snapshot, info.trust.get(name), motion=info.motion.get(name), shown=len(drawn),
                        total=len(last), fitted=fitted, align=info.align or "last")
    lines = [f"last fit snapshot: {title.text.replace(chr(10), ', ')}"]
    if has_predictions:
        lines.append(f"{len(wrong):,} of {len(last):,} misclassified (x)")
    elif "label" in info.frame:
        lines.append("predictions not recorded: no misclassified marks")
    else:
        lines.append("no labels recorded: points grey, no class paths")
    if info.palette.kind == "continuous":
        lines.append(f"{len(info.palette.classes)} classes: class paths drawn for at most {MAX_CLASSES}")
    if info.three_d:
        lines.append(_wrapped(three_d_note(info), 110))
    if many and not info.paths_faithful():
        lines.append(_wrapped(f"no paths drawn: this map's paths are not the motion in the vectors; "
                              f"{info.paths_note()}", 110))
    if title.warning:
        lines.append(title.warning)
    ax.set_title("\n".join(lines), fontsize=10, color=WARNING if title.warning else "black")
    if handles:  # below the map: inside it would cover points
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncols=2, fontsize=8,
                  frameon=False)

    _draw_distance_curve(curve_ax, info, steps)
    how = " and how they got there" if many and info.paths_faithful() else ""
    fig.suptitle(f"{info.column}: {reducer_words(info)}, {info.total:,} samples: where they end{how}", fontsize=12)
    if info.palette.kind == "continuous":
        _label_legend(fig, info, [ax, curve_ax])
    _write_ids(fig, marked)
    return fig


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

    Figure = _matplotlib()
    fig = Figure(figsize=(10.0, 7.4), layout="constrained")
    ax = fig.add_subplot()
    n = len(rows)
    points = pd.DataFrame({
        "_key": sample_keys(rows["sample_id"].to_numpy(np.int64), rows["dataloader_idx"].to_numpy(np.int64),
                            np.full(n, split, dtype=object)),
        "x": rows["variability"].to_numpy(float), "y": rows["confidence"].to_numpy(float),
        "dataloader_idx": rows["dataloader_idx"].to_numpy(np.int64), "sample_id": rows["sample_id"].to_numpy(np.int64),
    })
    size, alpha = _point_size(n) * 2.0, (0.85 if n < 2000 else 0.6)
    if "correct" in rows and rows["correct"].notna().any():
        cmap = LinearSegmentedColormap.from_list("lightning-embeddings", list(CONTINUOUS)).with_extremes(bad=UNKNOWN)
        drawn = ax.scatter(points["x"], points["y"], c=rows["correct"].to_numpy(float), cmap=cmap, vmin=0.0, vmax=1.0,
                           s=size, linewidths=0, alpha=alpha, rasterized=True, plotnonfinite=True)
        fig.colorbar(drawn, ax=ax, label="correct: share of fit snapshots that predicted the label right", shrink=0.85)
    else:
        ax.scatter(points["x"], points["y"], c=UNKNOWN, s=size, linewidths=0, alpha=alpha, rasterized=True)
    top = rows[rows["suspicion"].notna().to_numpy()].head(N_SUSPECTS) if "suspicion" in rows else rows.iloc[:0]
    marked = _mark_suspects(ax, points, top, max(36.0, size * 4), _several(info), split)
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
    _write_ids(fig, marked)
    return fig


def _draw_distance_curve(ax: "Axes", info: LayerView, steps: list[tuple[int, int]]) -> None:
    whose = "each class's samples" if info.palette.kind == "categorical" else "the samples"
    ax.set_title(f"median distance of {whose} to their final position", fontsize=10)
    if len(steps) < 2:
        ax.text(0.5, 0.5, "one fit snapshot: no movement to show", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    curve = distance_to_final(info.frame)
    per_class = curve[curve["label"].notna()] if info.palette.kind == "categorical" else curve.iloc[:0]
    for label, part in per_class.groupby("label", sort=True):
        ax.plot(part["step"], part["distance"], color=info.palette.color(label), linewidth=1.6, marker="o",
                markersize=3, label=_shown(label))
    overall = curve[curve["label"].isna()]
    ax.plot(overall["step"], overall["distance"], color="black", linewidth=2.6, linestyle="--", label="all samples")
    shown = steps if len(steps) <= 12 else [steps[i] for i in np.linspace(0, len(steps) - 1, 12).round().astype(int)]
    ax.set_xticks([s for _, s in shown], [f"{s}\ne{e}" for e, s in shown], fontsize=8)
    ax.set_xlabel("global step (e: epoch)")
    ax.set_ylabel("median distance to final position (map units)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(title="label" if len(per_class) else None, fontsize=8,
              ncols=2 if per_class["label"].nunique() > 10 else 1, loc="upper right")


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
    written = [_draw_snapshots(info, snapshots_png), _draw_overview(info, overview_png)]
    datamap = _datamap_samples(info)
    if datamap is not None:
        written.append(_save(_datamap_figure(info, *datamap), datamap_png))
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
