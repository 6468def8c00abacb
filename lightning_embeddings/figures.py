"""What the PNG pictures share (matplotlib): a figure without pyplot's global state, saving it atomically, the
points of a panel in the palette's colours, the labels' legend, and the suspects: their diamonds and their ids,
placed apart after the figure is laid out (:func:`write_ids`).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

import numpy as np
import pandas as pd

from lightning_embeddings.drawn import LayerView
from lightning_embeddings.layout import atomic_write
from lightning_embeddings.palette import CONTINUOUS, SUSPECT, UNKNOWN, plain
from lightning_embeddings.store import sample_keys

if TYPE_CHECKING:
    from matplotlib.axes import Axes

ID_GAPS = (1.0, 4.0, 10.0, 17.0, 26.0, 36.0, 50.0)  # points tried between a suspect's marker and its id; past the
# first, a thin line joins them

SUSPECTS_SAID = "most likely mislabelled (suspicion)"


def label_text(label: Any) -> str:
    """A label as matplotlib draws it: the plain text it is (a ``$`` escaped, so ``"$x_$"`` is not mathtext)."""
    return str(plain(label)).replace("$", r"\$")


def wrapped(text: str, width: int) -> str:
    """``text`` in lines of at most ``width`` characters, never breaking a word or a path at its hyphens."""
    return textwrap.fill(text, width, break_long_words=False, break_on_hyphens=False)


def figure_class() -> Any:
    from matplotlib.figure import Figure  # imported on first use: it is slow to import

    return Figure


def save(fig: Any, target: Path) -> Path:
    """Write ``fig`` to ``target`` (atomically)."""
    with atomic_write(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return target


def point_size(n: int) -> float:
    return float(np.clip(3000.0 / max(n, 1), 0.5, 14.0))


def scatter(ax: "Axes", info: LayerView, rows: pd.DataFrame, alpha: Optional[float] = None, scale: float = 1.0) -> None:
    colors = info.palette.colors_of(rows["label"]) if "label" in rows else np.full(len(rows), UNKNOWN, dtype=object)
    n = len(rows)
    ax.scatter(
        rows["x"].to_numpy(float), rows["y"].to_numpy(float), c=list(colors), s=point_size(n) * scale, linewidths=0,
        alpha=alpha if alpha is not None else (0.85 if n < 2000 else 0.6), rasterized=True,
    )


def label_legend(fig: Any, info: LayerView, where: Any) -> None:
    """A legend of class colours (categorical), a colour bar (continuous) or a note (no labels)."""
    palette = info.palette
    if palette.kind == "categorical":
        from matplotlib.lines import Line2D

        handles = [
            Line2D([], [], marker="o", linestyle="", markersize=7, markerfacecolor=palette.colors[c],
                   markeredgewidth=0, label=label_text(c))
            for c in palette.classes
        ]
        fig.legend(handles=handles, title="label", loc="outside right upper", frameon=False)
    elif palette.kind == "continuous":
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import LinearSegmentedColormap, Normalize

        cmap = LinearSegmentedColormap.from_list("lightning-embeddings", list(CONTINUOUS))
        mappable = ScalarMappable(norm=Normalize(palette.vmin, palette.vmax), cmap=cmap)
        fig.colorbar(mappable, ax=where, label=f"label ({len(palette.classes)} classes)", shrink=0.8)


def last_fit_index(info: LayerView) -> Optional[int]:
    """The position in ``info.snapshots`` of the last ``fit`` snapshot, None without one."""
    fit = [i for i, s in enumerate(info.snapshots) if s["stage"] == "fit"]
    return fit[-1] if fit else None


def several_loaders(info: LayerView) -> bool:
    """Whether the samples come from several dataloaders (then a sample is named ``dataloader:id``)."""
    loaders = info.frame["dataloader_idx"]
    if len(info.samples):
        loaders = pd.concat([loaders, info.samples["dataloader_idx"]])
    return loaders.nunique() > 1


def sample_name(dataloader_idx: Any, sample_id: Any, several_loaders: bool) -> str:
    return f"{int(dataloader_idx)}:{int(sample_id)}" if several_loaders else str(int(sample_id))


def suspect_keys(suspects: pd.DataFrame, split: str = "val") -> np.ndarray:
    return sample_keys(suspects["sample_id"].to_numpy(np.int64), suspects["dataloader_idx"].to_numpy(np.int64),
                       np.full(len(suspects), split, dtype=object))


class Suspects(NamedTuple):
    """The suspects marked on one axes: their ids, where they are (data coordinates), the area of their marker
    (points², as ``scatter`` takes it) and their legend handle."""

    ax: "Axes"
    names: list[str]
    xy: np.ndarray
    size: float
    handle: Any


def mark_suspects(ax: "Axes", rows: pd.DataFrame, suspects: pd.DataFrame, size: float, several: bool,
                   split: str = "val") -> Optional[Suspects]:
    """Mark ``suspects`` (rows of samples() of ``split``) among ``rows`` (one point per sample: ``_key, x, y,
    dataloader_idx, sample_id``) with a hollow diamond; None when none is there. Their ids are written by
    :func:`write_ids` once the rest of the figure is drawn."""
    if suspects.empty:
        return None
    keys = suspect_keys(suspects, split)
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
                    linestyle="", label=f"the {len(at)} {'training samples ' * (split == 'train')}{SUSPECTS_SAID}, with ids")
    names = [sample_name(loader, i, several) for loader, i in zip(at["dataloader_idx"], at["sample_id"])]
    return Suspects(ax, names, xy, size, handle)


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


def write_ids(fig: Any, marked: Optional[Suspects]) -> None:
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
