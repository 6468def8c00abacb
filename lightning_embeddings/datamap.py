"""``<layer>-datamap.png`` (where logits were recorded): the data map of Dataset Cartography (Swayamdipta et al.
2020), each sample's variability against its confidence in its label across ``fit``, coloured by how often it was
predicted right, of the training split where recorded (``record_train``), else of the validation split.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from lightning_embeddings.drawn import N_SUSPECTS, LayerView
from lightning_embeddings.figures import figure_class, mark_suspects, point_size, several_loaders, write_ids
from lightning_embeddings.layout import SPLIT
from lightning_embeddings.palette import CONTINUOUS, UNKNOWN
from lightning_embeddings.store import sample_keys

def datamap_rows(info: LayerView) -> Optional[tuple[str, pd.DataFrame]]:
    """The samples a data map shows, by suspicion: the training split's where recorded, else the validation
    split's; None where samples() has no confidence and variability (logits were not recorded)."""
    for split in ("train", "val"):
        rows = info.samples[(info.samples[SPLIT] == split).to_numpy()]
        if {"confidence", "variability"} <= set(rows.columns):
            rows = rows[(rows["confidence"].notna() & rows["variability"].notna()).to_numpy()]
            if len(rows):
                return split, rows
    return None


def datamap_figure(info: LayerView, split: str, rows: pd.DataFrame) -> Any:
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
