"""The colours every picture and the HTML page share: one per label (matplotlib's ``tab10``/``tab20``, a viridis
scale past 20 classes or for numeric labels), grey for samples without one, and the marks' colours (a warning's red,
the suspects' purple, which no label gets).

Example::

    palette = label_palette([0, 1, 2, 1])
    palette.color(1), palette.colors_of([2, None])  # '#ff7f0e', ['#2ca02c', '#a0a0a0']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

MAX_CLASSES = 20  # up to this many classes get categorical colours; above, a continuous scale
# matplotlib's tab20, its dark half first: the first ten are exactly tab10.
CATEGORICAL = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)
# viridis at ten evenly spaced stops (plotly's ``sequential.Viridis``): interpolated the same way in both outputs.
CONTINUOUS = ("#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725")
UNKNOWN = "#a0a0a0"  # samples without a label
WARNING = "#c00000"
SUSPECT = "#8b008b"  # the marks of the samples most likely mislabelled: a colour no label gets


@dataclass(frozen=True)
class Palette:
    """Colours of labels, shared by the PNGs and the HTML page; build it with :func:`label_palette`.

    Attributes:
        kind: ``"categorical"`` (at most 20 classes, one colour each), ``"continuous"`` (more classes, or
            non-integer numeric labels: a viridis scale from ``vmin`` to ``vmax``) or ``"none"`` (no labels: grey).
        classes: the distinct labels, sorted.
        colors: ``{label: "#rrggbb"}`` for every class.
        vmin, vmax: the continuous scale's range.
        scale: the continuous scale's stops ``[(position in [0, 1], "#rrggbb"), ...]``.
    """

    kind: str
    classes: tuple = ()
    colors: dict = field(default_factory=dict)
    vmin: float = 0.0
    vmax: float = 1.0
    scale: tuple = ()

    def color(self, label: Any) -> str:
        """The colour of one label; grey for a missing or unknown one."""
        if label is None or (isinstance(label, float) and math.isnan(label)) or label is pd.NA:
            return UNKNOWN
        if self.kind == "continuous":
            return _interpolate(CONTINUOUS, (float(label) - self.vmin) / ((self.vmax - self.vmin) or 1.0))
        return self.colors.get(plain(label), UNKNOWN)

    def colors_of(self, labels: Any) -> np.ndarray:
        """The colours of many labels, as an array of ``"#rrggbb"`` strings."""
        values = pd.Series(labels, dtype=object) if labels is not None else pd.Series([], dtype=object)
        known = values.notna()
        colors = np.full(len(values), UNKNOWN, dtype=object)
        lookup = {v: self.color(v) for v in pd.unique(values[known])}
        colors[known.to_numpy()] = [lookup[v] for v in values[known]]
        return colors


def label_palette(labels: Any = None, max_classes: int = MAX_CLASSES) -> Palette:
    """The colours of a run's labels, the same in every picture and on the HTML page.

    Up to ``max_classes`` distinct labels get matplotlib's ``tab10`` colours (``tab20`` beyond ten, its first ten
    being ``tab10``'s), in sorted label order. More classes, or non-integer numeric labels, get a continuous viridis
    scale over the labels' range. No labels (None, empty, all missing) give grey.

    Args:
        labels: the labels of the samples (any iterable; missing values are ignored), or None.
        max_classes: the most classes that get categorical colours.

    Example::

        palette = label_palette(run.projections("head.1")["label"])
        palette.kind, palette.color(3)          # ('categorical', '#d62728')
    """
    if labels is None:
        return Palette("none")
    values = pd.Series(labels).dropna()
    if values.empty:
        return Palette("none")
    classes = tuple(sorted({plain(v) for v in values}, key=_sort_key))
    numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in classes)
    integral = numeric and all(float(c).is_integer() for c in classes)
    if len(classes) <= max_classes and (integral or not numeric):
        colors = {c: CATEGORICAL[i % len(CATEGORICAL)] for i, c in enumerate(classes)}
        return Palette("categorical", classes, colors)
    if numeric:
        vmin, vmax = float(min(classes)), float(max(classes))
    else:  # many non-numeric classes: spread them over the scale by their sorted order
        vmin, vmax = 0.0, float(len(classes) - 1)
    stops = tuple((i / (len(CONTINUOUS) - 1), c) for i, c in enumerate(CONTINUOUS))
    palette = Palette("continuous", classes, {}, vmin, vmax, stops)
    if numeric:
        colors = {c: palette.color(c) for c in classes}
    else:
        colors = {c: _interpolate(CONTINUOUS, i / max(len(classes) - 1, 1)) for i, c in enumerate(classes)}
    return Palette("continuous", classes, colors, vmin, vmax, stops)


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (so ``np.int64(3)`` and ``3`` are one class)."""
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _sort_key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _interpolate(stops: Sequence[str], t: float) -> str:
    t = min(max(float(t), 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    a, b = (np.array([int(s[k:k + 2], 16) for k in (1, 3, 5)], dtype=float) for s in (stops[i], stops[i + 1]))
    r, g, bl = np.rint(a + (b - a) * (t - i)).astype(int)
    return f"#{r:02x}{g:02x}{bl:02x}"
