"""The interactive HTML page of a run's maps (plotly): every layer in one self-contained file (one inlined copy of
plotly.js, no network), a slider and a play button over the snapshots, points moving by sample identity, numeric
hover with each sample's training dynamics. Drawn from :func:`~lightning_embeddings.drawn.load_layer`, in the
colours of :mod:`~lightning_embeddings.palette`, as the PNGs are.

Example::

    write_html("lightning_logs/version_0/embeddings")  # lightning_logs/version_0/embeddings/plots/embeddings.html
"""

from __future__ import annotations

import html as html_escape
import math
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd

from lightning_embeddings.drawn import (
    HOVER_DYNAMICS,
    MAX_POINTS,
    LayerView,
    PathLike,
    kept,
    limits,
    load_layer,
    output_dir,
    page_text,
    panel_title,
    reducer_words,
    snapshot_label,
    three_d_note,
    with_projections,
)
from lightning_embeddings.faithfulness import (
    FAITHFUL,
    FAITHFUL_MOTION,
    MOTION_WRONG,
    NEIGHBOURS_WRONG,
    unfaithful_snapshots,
)
from lightning_embeddings.layers import LayerSpec
from lightning_embeddings.layout import HTML_NAME, atomic_write
from lightning_embeddings.palette import UNKNOWN, WARNING, plain
from lightning_embeddings.reader import RunReader, as_reader
from lightning_embeddings.run_samples import recorded


def require_plotly() -> Any:
    """plotly's ``graph_objects`` and ``io``, or an ImportError that says which extra to install."""
    try:
        import plotly.graph_objects as go
        import plotly.io as pio
    except ImportError as err:
        raise ImportError(
            "lightning-embeddings writes its interactive page with plotly, which is not installed: "
            "pip install 'lightning-embeddings[html]'"
        ) from err
    return go, pio


def _hover(info: LayerView) -> tuple[list[str], str]:
    fields = ["sample_id"] + [c for c in ("label", "prediction") if c in info.frame]
    if info.frame["dataloader_idx"].nunique() > 1:
        fields.append("dataloader_idx")
    names = {"sample_id": "sample", "label": "label", "prediction": "prediction", "dataloader_idx": "dataloader"}
    lines = [f"{names[f]} %{{customdata[{i}]}}" for i, f in enumerate(fields)]
    lines.append("x %{x:.3f}, y %{y:.3f}")
    for f in info.hover:  # each sample's dynamics across fit, as samples() names them
        lines.append(f"{f} %{{customdata[{len(fields)}]}}")
        fields.append(f)
    return fields, "<br>".join(lines) + "<extra></extra>"


_COUNTS = ("settled_epoch", "learned_epoch", "forgetting_events")  # whole numbers among HOVER_DYNAMICS


def _hover_text(field: str, value: Any) -> str:
    """A dynamics value as the hover shows it: counts and epochs whole, shares to 3 decimals, "–" where none."""
    if value is None or pd.isna(value):
        return "–"
    return str(int(value)) if field in _COUNTS else f"{float(value):.3f}"


def _customdata(rows: pd.DataFrame, fields: list[str]) -> list[list[Any]]:
    columns = []
    for f in fields:
        if f in HOVER_DYNAMICS:
            columns.append([_hover_text(f, v) for v in rows[f].tolist()])
            continue
        values = rows[f].astype(object).where(rows[f].notna(), None).tolist()
        columns.append([page_text(v) if v is not None else None for v in values])
    return [list(row) for row in zip(*columns)] if columns else []


def _ids(rows: pd.DataFrame, several_loaders: bool) -> list[str]:
    if several_loaders:
        return [f"{d}:{s}" for d, s in zip(rows["dataloader_idx"].tolist(), rows["sample_id"].tolist())]
    return [str(s) for s in rows["sample_id"].tolist()]


def _frame_traces(go: Any, info: LayerView, rows: pd.DataFrame, fields: list[str], template: str) -> list[Any]:
    """One trace per class (categorical), or one trace (continuous or no labels); same order in every frame."""
    several = info.frame["dataloader_idx"].nunique() > 1
    size = float(np.clip(1600.0 / math.sqrt(max(info.total, 1)) / 10.0, 3.0, 8.0))
    common = dict(mode="markers", hovertemplate=template)
    if info.palette.kind == "categorical":
        traces = []
        labels = rows["label"].astype(object).map(lambda v: None if pd.isna(v) else plain(v))
        for c in info.palette.classes:
            part = rows[(labels == c).to_numpy()]
            traces.append(go.Scatter(
                x=part["x"].to_numpy(float), y=part["y"].to_numpy(float), ids=_ids(part, several),
                customdata=_customdata(part, fields), name=str(page_text(c)), legendgroup=str(c),
                marker=dict(color=info.palette.colors[c], size=size, opacity=0.85), **common,
            ))
        unknown = rows[rows["label"].isna().to_numpy()]
        traces.append(go.Scatter(
            x=unknown["x"].to_numpy(float), y=unknown["y"].to_numpy(float), ids=_ids(unknown, several),
            customdata=_customdata(unknown, fields), name="no label", showlegend=bool(rows["label"].isna().any()),
            marker=dict(color=UNKNOWN, size=size, opacity=0.85), **common,
        ))
        return traces
    if info.palette.kind == "continuous":
        palette = info.palette
        numeric = all(isinstance(c, (int, float)) for c in palette.classes)
        values = rows["label"] if numeric else rows["label"].map({c: i for i, c in enumerate(palette.classes)})
        marker = dict(
            color=values.astype(float).to_numpy(), colorscale=[[p, c] for p, c in palette.scale], cmin=palette.vmin,
            cmax=palette.vmax, size=size, opacity=0.85, showscale=True, colorbar=dict(title="label"),
        )
    else:
        marker = dict(color=UNKNOWN, size=size, opacity=0.85)
    return [go.Scatter(
        x=rows["x"].to_numpy(float), y=rows["y"].to_numpy(float), ids=_ids(rows, several),
        customdata=_customdata(rows, fields), name="samples", marker=marker, showlegend=False, **common,
    )]


def layer_figure(info: LayerView) -> Any:
    """One layer's plotly figure: a frame per snapshot, a slider and a play button over them.

    Example::

        from lightning_embeddings.drawn import load_layer
        from lightning_embeddings.page import layer_figure
        from lightning_embeddings.run_samples import recorded

        layer_figure(load_layer(run, "head.1", recorded(run, "head.1"))).show()
    """
    go, _ = require_plotly()
    fields, template = _hover(info)
    xlim, ylim = limits(info.frame)
    frames, steps, titles = [], [], []
    for i, snapshot in enumerate(info.snapshots):
        rows = info.frame[info.frame["_panel"] == i].sort_values(["dataloader_idx", "sample_id"])
        drawn = kept(info, rows)
        title = panel_title(snapshot, info.trust.get(snapshot["name"]), motion=info.motion.get(snapshot["name"]),
                            shown=len(drawn), total=len(rows), fitted=snapshot["name"] == info.fitted_on,
                            align=info.align or "last")
        text = title.text.replace("\n", " · ")
        if title.warning:
            warning = html_escape.escape(title.warning).replace("\n", "; ")
            text += f"<br><span style='color:{WARNING}'><b>{warning}</b></span>"
        titles.append(dict(text=text, font=dict(size=14)))
        # each frame carries its own title; plotly.js merges a frame's layout into the figure's but draws it only
        # on a redraw: without redraw=True the points move and the title stays the first frame's
        frames.append(go.Frame(data=_frame_traces(go, info, drawn, fields, template), name=snapshot["name"],
                               layout=go.Layout(title=titles[-1])))
        steps.append(dict(
            method="animate", label=snapshot_label(snapshot),
            args=[[snapshot["name"]], dict(mode="immediate", frame=dict(duration=0, redraw=True),
                                           transition=dict(duration=400))],
        ))
    play = dict(frame=dict(duration=900, redraw=True), transition=dict(duration=500), fromcurrent=True, mode="immediate")
    pause = dict(frame=dict(duration=0, redraw=False), transition=dict(duration=0), mode="immediate")
    figure = go.Figure(
        data=frames[0].data,
        frames=frames,
        layout=go.Layout(
            title=titles[0],
            xaxis=dict(range=list(xlim), title="x", zeroline=False),
            yaxis=dict(range=list(ylim), title="y", zeroline=False),
            height=680,
            template="plotly_white",
            legend=dict(title="label", itemsizing="constant"),
            hovermode="closest",
            updatemenus=[dict(
                type="buttons", direction="left", x=0.0, y=-0.12, xanchor="left", yanchor="top", showactive=False,
                buttons=[dict(label="▶ play", method="animate", args=[None, play]),
                         dict(label="❚❚ pause", method="animate", args=[[None], pause])],
            )],
            sliders=[dict(active=0, steps=steps, x=0.16, len=0.84, y=-0.06, yanchor="top",
                          currentvalue=dict(prefix="snapshot: "), transition=dict(duration=400))],
            margin=dict(t=110, b=150),
        ),
    )
    return figure


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.15em; margin-top: 2em; }}
.note {{ color: #555; font-size: 0.92em; }} .warning {{ color: {warning}; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="note">{intro}</p>
{sections}
</body>
</html>
"""


def write_html(
    run: Union[RunReader, PathLike],
    layers: Optional[Sequence[LayerSpec]] = None,
    path: Optional[PathLike] = None,
) -> Path:
    """Write one self-contained interactive page of the chosen layers' maps: ``<run>/plots/embeddings.html``.

    Each layer gets a figure with a slider and a play button over its snapshots; points move between frames by
    sample identity (plotly's ``ids``, what ``animation_group`` sets), are coloured as in the PNGs
    (:func:`label_palette`), and show sample id, label and prediction on hover, then the sample's training dynamics
    where :meth:`~lightning_embeddings.EmbeddingRun.samples` has them (``suspicion``, ``knn_agreement``, and those
    of ``movement, settled_epoch, correct, learned_epoch, forgetting_events, confidence, variability, aum`` it
    has). The evaluated split is drawn (``val``, ``test``): not the training rows of ``record_train``. Every
    frame's title gives its trustworthiness and the temporal preservation of the paths into it, in red where
    either is not faithful. Above 20,000 points per frame a per-class sample is drawn (the same samples in every
    frame), and the page says so. plotly.js is inlined once for all figures: the page opens offline.

    Args:
        run: an :class:`EmbeddingRun` or its directory.
        layers: the layers to draw; all recorded layers with a map by default (others are warned about).
        path: the directory to write to; ``<run>/plots`` by default.

    Returns:
        The page's path.

    Raises:
        ImportError: plotly is not installed (``pip install 'lightning-embeddings[html]'``).
        ValueError: none of the layers has a map.

    Example::

        from lightning_embeddings.page import write_html

        page = write_html("lightning_logs/version_0/embeddings", layers=["head.1"])
        # open it in a browser; no network needed
    """
    go, pio = require_plotly()
    run = as_reader(run)
    columns = with_projections(run, layers)
    if not columns:
        raise ValueError(f"No layer of {run.path} has a map to draw; reduce the run first (EmbeddingRun.reduce()).")
    sections = []
    for i, column in enumerate(columns):
        info = load_layer(run, column, recorded(run, column))
        notes = [f"{reducer_words(info)}; {len(info.snapshots)} snapshots, {info.total:,} samples."]
        if info.keep is not None:
            notes.append(
                f"<b>Subsampled:</b> {len(info.keep):,} of {info.total:,} samples drawn in every frame (more than "
                f"{MAX_POINTS:,} points per frame; each class keeps its share, the same samples in every frame)."
            )
        if info.three_d:
            notes.append(html_escape.escape(three_d_note(info)) + ".")
        unfaithful = set(unfaithful_snapshots(info.trust))
        unfaithful = [snapshot_label(s) for s in info.snapshots if s["name"] in unfaithful]
        if unfaithful:
            notes.append(f"<span class='warning'>Not faithful (trustworthiness below {FAITHFUL}) at "
                         f"{html_escape.escape(', '.join(unfaithful))}: there, {NEIGHBOURS_WRONG}.</span>")
        paths_note = info.paths_note()
        if paths_note:
            notes.append(f"<span class='warning'>{html_escape.escape(paths_note[0].upper() + paths_note[1:])}. "
                         f"{MOTION_WRONG[0].upper() + MOTION_WRONG[1:]}.</span>")
        if info.hover:
            notes.append(f"Hover shows each sample's {', '.join(info.hover)} (EmbeddingRun.samples()).")
        figure = layer_figure(info)
        div = pio.to_html(figure, include_plotlyjs=(i == 0), full_html=False, auto_play=False,
                          div_id=f"lightning-embeddings-{i}", config={"responsive": True, "displaylogo": False})
        sections.append(f"<section>\n<h2>{html_escape.escape(column)}</h2>\n<p class=\"note\">{' '.join(notes)}</p>\n"
                        f"{div}\n</section>")
    intro = (
        "Each point is a validation sample; drag the slider or press play to follow it across training. Colours "
        "are labels; hover shows sample id, label and prediction, and the sample's training dynamics where known "
        "(suspicion: higher is more likely mislabelled). Trustworthiness (10 neighbours) says how far "
        f"neighbours in the picture are neighbours in the vectors; below {FAITHFUL} a frame is not faithful. "
        "Temporal preservation says how far the samples that move far in the picture are those that move far in "
        f"their vectors; below {FAITHFUL_MOTION} the paths into a frame are not faithful."
    )
    title = f"Embeddings of {run.path}"
    page = _PAGE.format(title=html_escape.escape(title), intro=intro, sections="\n".join(sections), warning=WARNING)
    target = output_dir(run, path) / HTML_NAME
    with atomic_write(target) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target
