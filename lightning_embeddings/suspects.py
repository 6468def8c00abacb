"""``<layer>-suspects.png``: the samples most likely mislabelled, as they are. One row per suspect (the top of
:meth:`~lightning_embeddings.EmbeddingRun.samples` of the split with the most labels), most suspicious first: what
is said of it (its label, the label its neighbours hold, the model's prediction, its suspicion), its thumbnail or
text, then its nearest neighbours in the layer's vectors with their labels: the picture that says "this 3 is an 8".
It draws the :class:`~lightning_embeddings.run_samples.Gallery` it is given and computes nothing.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import pandas as pd

from lightning_embeddings.figures import figure_class, label_text, save, wrapped
from lightning_embeddings.palette import SUSPECT, Palette
from lightning_embeddings.run_samples import Gallery

if TYPE_CHECKING:
    from matplotlib.axes import Axes

CELL, FRAME, GAP, CAPTION = 64, 3, 10, 26  # mosaic pixels: a thumbnail's room, its frame, between cells, below
COLUMN = CELL + 2 * FRAME + GAP  # a cell's width in the mosaic: drawn one inch wide
ROW = CELL + 2 * FRAME + CAPTION  # a suspect's row in the mosaic
ROW_INCHES = ROW / COLUMN
SAID_INCHES = 2.4  # the column of what is said of each suspect
UNKNOWN_GREY = 224  # a cell whose sample's input was not kept
TEXT_WIDTH = 46  # characters per line of a text input in the gallery
TEXT_LINES = 5  # lines of a suspect's text shown
NEIGHBOUR_CHARS = 44  # characters of a neighbour's text shown


def draw_suspects(gallery: Gallery, palette: Palette, target: Path) -> Path:
    return save(suspects_figure(gallery, palette), target)


def suspects_figure(gallery: Gallery, palette: Palette) -> Any:
    """The gallery of ``gallery.rows``: a row each, what is said of the suspect, then its image and its neighbours'
    images (image inputs: one mosaic, :func:`cell_box` says where each is), or its text and theirs (text inputs),
    or their ids and labels (no inputs kept); labels in ``palette``'s colours, as in the other pictures.

    Example::

        suspects_figure(suspects(run, "head.1", recorded(run, "head.1")), label_palette(range(10))).savefig("s.png")
    """
    kind = "image" if gallery.inputs["image"].notna().any() else "text" if gallery.inputs["text"].notna().any() else None
    shown = int(gallery.neighbours["rank"].max()) if len(gallery.neighbours) else 0
    right = {"image": 1.0 + shown, "text": 7.6}.get(kind, 4.0)  # inches
    title = _title(gallery, shown, kind, chars=int((SAID_INCHES + right) * 12))
    header, n = 0.35 + 0.19 * (title.count("\n") + 1), max(len(gallery.rows), 1)  # inches
    width, height = SAID_INCHES + right + 0.3, ROW_INCHES * n + header + 0.25
    fig = figure_class()(figsize=(width, height))
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / height, va="top")
    box = dict(bottom=0.25 / height, height=ROW_INCHES * n / height)
    said = fig.add_axes((0.15 / width, box["bottom"], SAID_INCHES / width, box["height"]))
    beside = fig.add_axes(((0.15 + SAID_INCHES) / width, box["bottom"], right / width, box["height"]))
    for ax in (said, beside):
        ax.set_axis_off()
        ax.set_xlim(0, 1)
        ax.set_ylim(n, 0)  # row i spans [i, i + 1], top down
    inputs = gallery.inputs.set_index(["dataloader_idx", "sample_id"]) if len(gallery.inputs) else None
    if kind == "image":
        _mosaic(beside, gallery, inputs, palette, shown)
    for i, suspect in gallery.rows.iterrows():
        _said(said, i, suspect, gallery.split, palette)
        if kind == "text":
            _text(beside, i, _input(inputs, suspect, "text"))
        if kind != "image":
            _neighbours_text(beside, i, 0.48 if kind == "text" else 0.0, _near(gallery, i), inputs, palette)
    return fig


def cell_box(row: int, column: int) -> tuple[slice, slice]:
    """Where the thumbnail of a gallery's ``row`` (0: the top suspect) and ``column`` (0: the suspect, then its
    neighbours nearest first) lies in the mosaic: its ``(rows, columns)`` of pixels."""
    top, left = row * ROW + FRAME, column * COLUMN + GAP // 2 + FRAME
    return slice(top, top + CELL), slice(left, left + CELL)


def _mosaic(ax: "Axes", gallery: Gallery, inputs: Optional[pd.DataFrame], palette: Palette, shown: int) -> None:
    """Every thumbnail in one image (one artist, not an axes each: 20 rows draw in a fraction of a second), each in
    a frame of its label's colour (the suspect's in the suspects' colour), its id and label below it."""
    from matplotlib.colors import to_rgb

    rows = max(len(gallery.rows), 1)
    canvas = np.full((rows * ROW, (1 + shown) * COLUMN, 3), 255, np.uint8)
    for i, suspect in gallery.rows.iterrows():
        cells = [(suspect, SUSPECT, f"#{suspect['sample_id']}")]
        cells += [(other, palette.color(other.get("label")), f"#{other['sample_id']}: {label_text(other.get('label'))}")
                  for _, other in _near(gallery, i).iterrows()]
        for j, (sample, frame, caption) in enumerate(cells):
            ys, xs = cell_box(i, j)
            canvas[ys.start - FRAME:ys.stop + FRAME, xs.start - FRAME:xs.stop + FRAME] = np.round(
                np.asarray(to_rgb(frame)) * 255)
            image = _input(inputs, sample, "image")
            canvas[ys, xs] = UNKNOWN_GREY if image is None else _fitted(image)
            ax.text((j + 0.5) / (1 + shown), i + (CELL + 2 * FRAME + 3) / ROW, caption if image is not None
                    else f"{caption} (not kept)", ha="center", va="top", fontsize=7)
    ax.imshow(canvas, extent=(0, 1, rows, 0), aspect="auto", interpolation="nearest")


def _fitted(image: np.ndarray) -> np.ndarray:
    """A thumbnail as ``CELL`` x ``CELL`` RGB: enlarged by the largest whole factor that fits (pixels stay sharp),
    centred on black; transparency laid on white."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 4:
        alpha = image[..., 3:4].astype(np.float64) / 255
        image = np.round(image[..., :3] * alpha + 255 * (1 - alpha))
    factor = max(1, CELL // max(image.shape[:2]))
    image = np.repeat(np.repeat(image[:CELL // factor * factor, :CELL // factor * factor], factor, 0), factor, 1)
    cell = np.zeros((CELL, CELL, 3), np.uint8)
    top, left = (CELL - image.shape[0]) // 2, (CELL - image.shape[1]) // 2
    cell[top:top + image.shape[0], left:left + image.shape[1]] = image[:CELL, :CELL]
    return cell


def _title(gallery: Gallery, shown: int, kind: Optional[str], chars: int) -> str:
    """What the gallery shows and how its neighbours are found, wrapped to ``chars`` characters a line."""
    lines = [f"{gallery.column}: the {len(gallery.rows)} {_split_words(gallery.split)} most likely mislabelled, each "
             f"beside its {shown} nearest neighbours",
             "neighbours: cosine, in the layer's vectors at the last fit snapshot; 'neighbours say': the label its 10 "
             "nearest hold most often"]
    if kind is None:
        lines.append("no inputs kept (EmbeddingCollector(inputs='auto') keeps thumbnails and text): ids and labels")
    return "\n".join(wrapped(line, chars) for line in lines)


def _split_words(split: str) -> str:
    return {"train": "training samples", "val": "validation samples", "test": "test samples"}.get(split, f"{split} samples")


def _near(gallery: Gallery, row: int) -> pd.DataFrame:
    """The neighbours of the suspect in ``row``, nearest first."""
    return gallery.neighbours[(gallery.neighbours["suspect"] == row).to_numpy()].sort_values("rank")


def _input(inputs: Optional[pd.DataFrame], row: pd.Series, kind: str) -> Any:
    """The kept image (decoded) or text of ``row``'s sample; None where none was kept."""
    key = (int(row.get("dataloader_idx", 0)), int(row["sample_id"]))
    if inputs is None or key not in inputs.index:
        return None
    value = inputs.loc[key, kind]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if kind == "image":
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(value)))
    return str(value)


def _said(ax: "Axes", row: int, suspect: pd.Series, split: str, palette: Palette) -> None:
    """What is said of a suspect, one fact a line, the labels in their colours."""
    lines = [(f"{row + 1}. #{suspect['sample_id']} ({split})", "black", "bold"),
             (f"label {label_text(suspect.get('label'))}", palette.color(suspect.get("label")), "bold"),
             (f"neighbours say {label_text(suspect.get('neighbour_label'))}", palette.color(suspect.get("neighbour_label")),
              "normal"),
             (f"predicted {label_text(suspect.get('prediction'))}", palette.color(suspect.get("prediction")), "normal"),
             (f"suspicion {suspect['suspicion']:.3f}", "dimgray", "normal")]
    for j, (words, color, weight) in enumerate(lines):
        ax.text(0.0, row + 0.04 + j * 0.17, words, va="top", ha="left", fontsize=8.5, color=color, fontweight=weight)


def _text(ax: "Axes", row: int, text: Optional[str]) -> None:
    """A suspect's text, wrapped, cut to ``TEXT_LINES`` lines."""
    lines = textwrap.wrap("not kept" if text is None else text, TEXT_WIDTH) or [""]
    if len(lines) > TEXT_LINES:
        lines = lines[: TEXT_LINES - 1] + [lines[TEXT_LINES - 1][: TEXT_WIDTH - 1] + "…"]
    ax.text(0.0, row + 0.04, "\n".join(lines), va="top", ha="left", fontsize=8, family="monospace", color="black")


def _neighbours_text(ax: "Axes", row: int, x: float, near: pd.DataFrame, inputs: Optional[pd.DataFrame],
                     palette: Palette) -> None:
    """A suspect's neighbours, one a line: id, label in its colour, the start of its text where kept."""
    for j, (_, other) in enumerate(near.iterrows()):
        text = _input(inputs, other, "text")
        start = "" if text is None else " · " + (text if len(text) <= NEIGHBOUR_CHARS else text[: NEIGHBOUR_CHARS - 1] + "…")
        ax.text(x, row + 0.04 + j * 0.16, f"#{other['sample_id']}: {label_text(other.get('label'))}{start}",
                va="top", ha="left", fontsize=7.5, color=palette.color(other.get("label")))
