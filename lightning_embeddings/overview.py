"""``<layer>-overview.png``: the last ``fit`` snapshot coloured by label with misclassified and suspected samples
marked, the path of each class's median across ``fit``, the paths of the samples that moved most and of some that
ended misclassified, each fading in from a faint first step to a bold last one (only where the map's paths are
faithful), and beside it each class's median distance to its final position over training.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import pandas as pd

from lightning_embeddings.drawn import (
    SEED,
    LayerView,
    fit_steps,
    kept,
    limits,
    panel_title,
    reducer_words,
    three_d_note,
)
from lightning_embeddings.paths import MapPaths, fit_rows
from lightning_embeddings.figures import (
    figure_class,
    label_legend,
    label_text,
    mark_suspects,
    point_size,
    save,
    scatter,
    several_loaders,
    wrapped,
    write_ids,
)
from lightning_embeddings.layout import snapshot_name
from lightning_embeddings.palette import MAX_CLASSES, WARNING
from lightning_embeddings.store import sample_keys

if TYPE_CHECKING:
    from matplotlib.axes import Axes

N_MISCLASSIFIED_PATHS = 10  # at most this many paths of samples that ended misclassified
FADE_FROM = 0.12  # a path's first step is drawn at this share of its last step's opacity


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


def draw_overview(info: LayerView, paths: MapPaths, target: Path) -> Path:
    return save(overview_figure(info, paths), target)


def overview_figure(info: LayerView, paths: MapPaths) -> Any:
    """The overview of ``info``'s layer, drawing ``paths`` (:func:`~lightning_embeddings.paths.map_paths` of
    ``info.frame``, per class where the palette is categorical).

    Example::

        overview_figure(info, map_paths(info.frame, info.palette.kind == "categorical")).savefig("overview.png")
    """
    Figure = figure_class()
    fig = Figure(figsize=(14.5, 6.8), layout="constrained")
    grid = fig.add_gridspec(1, 2, width_ratios=[1.55, 1.0])
    ax, curve_ax = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    rows = fit_rows(info.frame)
    steps = fit_steps(rows)
    last = rows[rows["step"] == steps[-1][1]]
    drawn = kept(info, last)
    scatter(ax, info, drawn, alpha=0.45 if len(drawn) < 2000 else 0.5, scale=2.0)
    wrong = paths.misclassified
    handles = _mark_misclassified(ax, info, wrong, len(drawn))
    if len(steps) >= 2 and info.paths_faithful():
        handles += _draw_paths(ax, info, rows, paths)
    marked = mark_suspects(ax, last if info.suspect_rows is None else info.suspect_rows, info.suspects,
                           max(36.0, point_size(len(drawn)) * 8), several_loaders(info), info.suspects_split)
    if marked is not None:
        handles.append(marked.handle)
    xlim, ylim = limits(rows)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    lines, warning = _title_lines(info, steps, last, len(drawn), len(wrong))
    ax.set_title("\n".join(lines), fontsize=10, color=WARNING if warning else "black")
    if handles:  # below the map: inside it would cover points
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.07), ncols=2, fontsize=8,
                  frameon=False)
    _draw_distance_curve(curve_ax, info, steps, paths.distance_to_final)
    how = " and how they got there" if len(steps) >= 2 and info.paths_faithful() else ""
    fig.suptitle(f"{info.column}: {reducer_words(info)}, {info.total:,} samples: where they end{how}", fontsize=12)
    if info.palette.kind == "continuous":
        label_legend(fig, info, [ax, curve_ax])
    write_ids(fig, marked)
    return fig


def _mark_misclassified(ax: "Axes", info: LayerView, wrong: pd.DataFrame, drawn: int) -> list[Any]:
    """An x on each misclassified sample the map shows; its legend entry, if any."""
    from matplotlib.lines import Line2D

    if not len(wrong):
        return []
    marked = kept(info, wrong)
    ax.scatter(marked["x"].to_numpy(float), marked["y"].to_numpy(float), marker="x", c="black",
               s=max(10.0, point_size(drawn) * 3), linewidths=1.0, zorder=4)
    return [Line2D([], [], marker="x", color="black", linestyle="", label=f"misclassified ({len(wrong):,})")]


def _draw_paths(ax: "Axes", info: LayerView, rows: pd.DataFrame, paths: MapPaths) -> list[Any]:
    """Each class median's path with its label, the paths of the samples that moved most and of (at most
    ``N_MISCLASSIFIED_PATHS``) misclassified ones; their legend entries."""
    from matplotlib import patheffects
    from matplotlib.lines import Line2D

    handles: list[Any] = []
    medians, top, wrong = paths.class_medians, paths.movers, paths.misclassified
    for label, path in medians.groupby("label", sort=True):
        xy = path.sort_values("step")[["x", "y"]].to_numpy(float)
        color = info.palette.color(label)
        _draw_path(ax, xy, color, 2.4, zorder=6)
        ax.annotate(label_text(label), xy=tuple(xy[-1]), xytext=(5, 5), textcoords="offset points", color=color,
                    fontsize=10, fontweight="bold", zorder=7,
                    path_effects=[patheffects.withStroke(linewidth=2.5, foreground="white")])
    if len(medians):
        handles.append(Line2D([], [], color="dimgray", linewidth=2.4, marker="o", markersize=4,
                              label="class median path (faint early, bold late; arrow: the last step)"))
    top_keys = sample_keys(top["sample_id"].to_numpy(np.int64), top["dataloader_idx"].to_numpy(np.int64))
    for xy in _sample_paths(rows, top_keys):
        _draw_path(ax, xy, "black", 0.8, outline=False, zorder=5, alpha=0.7)
    if len(top):
        handles.append(Line2D([], [], color="black", linewidth=0.9, marker="o", markersize=2.4,
                              label=f"the {len(top)} samples that moved most"))
    wrong_keys = np.setdiff1d(wrong["_key"].to_numpy(np.int64), top_keys) if len(wrong) else np.array([], np.int64)
    if len(wrong_keys) > N_MISCLASSIFIED_PATHS:
        wrong_keys = np.sort(np.random.default_rng(SEED).choice(wrong_keys, N_MISCLASSIFIED_PATHS, replace=False))
    for xy in _sample_paths(rows, wrong_keys):
        _draw_path(ax, xy, "#555555", 0.8, style="--", outline=False, zorder=5, alpha=0.75)
    if len(wrong_keys):
        said = (f"paths of {len(wrong_keys)} of the {len(wrong):,} misclassified samples (random)"
                if len(wrong) > len(wrong_keys) + len(top) else "paths of the misclassified samples")
        handles.append(Line2D([], [], color="#555555", linewidth=0.8, linestyle="--", label=said))
    return handles


def _title_lines(info: LayerView, steps: list[tuple[int, int]], last: pd.DataFrame, drawn: int,
                 wrong: int) -> tuple[list[str], Optional[str]]:
    """The map's title: the last fit snapshot's panel title, then what is and is not marked; and its warning."""
    last_epoch, last_step = steps[-1]
    fitted = any(s["name"] == info.fitted_on and s["step"] == last_step and s["stage"] == "fit" for s in info.snapshots)
    snapshot = {"stage": "fit", "epoch": last_epoch, "step": last_step}
    name = snapshot_name("fit", last_epoch, last_step)
    title = panel_title(snapshot, info.trust.get(name), motion=info.motion.get(name), shown=drawn,
                        total=len(last), fitted=fitted, align=info.align or "last")
    lines = [f"last fit snapshot: {title.text.replace(chr(10), ', ')}"]
    if {"label", "prediction"} <= set(info.frame.columns):
        lines.append(f"{wrong:,} of {len(last):,} misclassified (x)")
    elif "label" in info.frame:
        lines.append("predictions not recorded: no misclassified marks")
    else:
        lines.append("no labels recorded: points grey, no class paths")
    if info.palette.kind == "continuous":
        lines.append(f"{len(info.palette.classes)} classes: class paths drawn for at most {MAX_CLASSES}")
    if info.three_d:
        lines.append(wrapped(three_d_note(info), 110))
    if len(steps) >= 2 and not info.paths_faithful():
        lines.append(wrapped(f"no paths drawn: this map's paths are not the motion in the vectors; "
                              f"{info.paths_note()}", 110))
    if title.warning:
        lines.append(title.warning)
    return lines, title.warning


def _draw_distance_curve(ax: "Axes", info: LayerView, steps: list[tuple[int, int]], curve: pd.DataFrame) -> None:
    whose = "each class's samples" if info.palette.kind == "categorical" else "the samples"
    ax.set_title(f"median distance of {whose} to their final position", fontsize=10)
    if len(steps) < 2:
        ax.text(0.5, 0.5, "one fit snapshot: no movement to show", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    per_class = curve[curve["label"].notna()] if info.palette.kind == "categorical" else curve.iloc[:0]
    for label, part in per_class.groupby("label", sort=True):
        ax.plot(part["step"], part["distance"], color=info.palette.color(label), linewidth=1.6, marker="o",
                markersize=3, label=label_text(label))
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
