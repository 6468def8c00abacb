"""What a layer's pictures are drawn from, read and chosen once for the PNGs and the page alike: its keyed
projections of the evaluated split, its snapshots in panel order, each snapshot's faithfulness, the samples' dynamics
and the top suspects, the palette, which points fit on a picture (:func:`stratified_sample`) and the words of a
panel's title (:func:`panel_title`). Nothing here draws, and nothing here computes the samples' dynamics: the
caller hands them over (:func:`~lightning_embeddings.run_samples.recorded`).

Example::

    view = load_layer(RunReader(path), "head.1", recorded(RunReader(path), "head.1"))
    view.snapshots[-1]["name"], len(view.suspects), view.palette.kind  # ('epoch_0004-step_0000110', 10, 'categorical')
"""

from __future__ import annotations

import html as html_escape
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
import pandas as pd
from lightning.pytorch.utilities import rank_zero_warn

from lightning_embeddings.paths import keyed
from lightning_embeddings.faithfulness import (
    FAITHFUL,
    FAITHFUL_MOTION,
    faithful_paths_advice,
    panel_warning,
    unfaithful_paths,
)
from lightning_embeddings.layers import LayerSpec
from lightning_embeddings.layout import PLOTS, SPLIT, file_stem, projection_file, snapshot_name
from lightning_embeddings.palette import Palette, label_palette, plain
from lightning_embeddings.reader import RunReader
from lightning_embeddings.run_samples import gallery_split, sample_columns

MAX_POINTS = 20_000  # points drawn per panel (PNG) or per frame (HTML); above it a per-class sample is drawn
N_SUSPECTS = 10  # the samples most likely mislabelled, marked with their ids
# samples()' columns shown on the page's hover, where present: suspicion first, then as samples() orders them
HOVER_DYNAMICS = (
    "suspicion", "knn_agreement", "knn_agreement_last", "movement", "settled_epoch", "correct", "learned_epoch",
    "forgetting_events", "confidence", "variability", "aum",
)
SEED = 0

PathLike = Union[str, "os.PathLike[str]"]


def three_d_note(info: "LayerView") -> str:
    """What a picture of a 3-D map says: which axes it draws, and where the third is."""
    return (f"3-D map: x and y drawn, z not shown (it is the z column of "
            f"projections/{file_stem(info.column)}.parquet)")


def page_text(value: Any) -> Any:
    """A value as the page shows it: text escaped, since plotly reads names and hover values as HTML (a label
    ``"<b>7</b>"`` is shown as written, not bold); numbers as they are."""
    value = plain(value)
    return html_escape.escape(value, quote=False) if isinstance(value, str) else value


# --------------------------------------------------------------------------- what is drawn: pure functions


def evaluated(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the evaluated split (``val``, ``test``): the training rows of ``record_train`` left out."""
    return frame[(frame[SPLIT] != "train").to_numpy()] if SPLIT in frame else frame


def fit_steps(rows: pd.DataFrame) -> list[tuple[int, int]]:
    """The ``(epoch, step)`` of each snapshot in ``rows``, in order."""
    pairs = rows[["epoch", "step"]].drop_duplicates().sort_values(["step", "epoch"])
    return [(int(e), int(s)) for e, s in pairs.itertuples(index=False)]


def stratified_sample(
    frame: pd.DataFrame, limit: int = MAX_POINTS, seed: Optional[int] = SEED
) -> tuple[Optional[np.ndarray], int]:
    """The samples to draw when a snapshot has more than ``limit`` points: the same samples in every snapshot, each
    class keeping its share (at least one sample per class), chosen at random with ``seed``.

    Args:
        frame: the projections (every snapshot; the most points in one snapshot is what ``limit`` bounds).
        limit: the most points per snapshot.
        seed: the random choice's seed.

    Returns:
        ``(keys, total)``: the sorted keys (:func:`~lightning_embeddings.store.sample_keys`) to keep, or None when
        all are kept, and the number of distinct samples.

    Example::

        keys, total = stratified_sample(run.projections("head.1"), limit=5000)
    """
    rows = keyed(frame)
    labels = rows.drop_duplicates("_key", keep="last").set_index("_key")
    total = len(labels)
    snapshot = ["stage", "step", "epoch", *([SPLIT] if SPLIT in rows else [])]
    per_snapshot = int(rows.groupby(snapshot).size().max()) if "stage" in rows and len(rows) else total
    if per_snapshot <= limit:
        return None, total
    share = limit / per_snapshot
    rng = np.random.default_rng(seed)
    groups = (
        labels.groupby(labels["label"].astype(object).where(labels["label"].notna(), "<none>"), sort=False)
        if "label" in labels else [(None, labels)]
    )
    chosen = []
    for _, group in groups:
        keys = group.index.to_numpy()
        take = min(len(keys), max(1, int(len(keys) * share)))
        chosen.append(rng.choice(keys, size=take, replace=False))
    keys = np.sort(np.concatenate(chosen))
    return keys, total


class PanelTitle(NamedTuple):
    """A panel's title and, when its map or the paths into it are not faithful, the warning that goes with it
    (drawn in red; one line per reason)."""

    text: str
    warning: Optional[str]


def snapshot_label(snapshot: Mapping[str, Any]) -> str:
    """``"epoch 2 · step 66"``, prefixed by the stage outside ``fit`` (``"test · epoch 2 · step 66"``)."""
    stage = snapshot.get("stage", "fit")
    words = f"epoch {snapshot['epoch']} · step {snapshot['step']}"
    return words if stage == "fit" else f"{stage} · {words}"


def is_known(value: Optional[float]) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def panel_title(
    snapshot: Mapping[str, Any],
    trustworthiness: Optional[float] = None,
    *,
    motion: Optional[float] = None,
    shown: Optional[int] = None,
    total: Optional[int] = None,
    fitted: bool = False,
    align: Optional[str] = "last",
    threshold: float = FAITHFUL,
) -> PanelTitle:
    """The title of one snapshot's panel: stage, epoch and step, the trustworthiness and the temporal preservation
    when known, how many points are shown when not all, and a warning in plain words when trustworthiness is below
    ``threshold``. (Paths that are not faithful are the map's, said once per figure, not on each panel.)

    Args:
        snapshot: ``{"stage", "epoch", "step"}``.
        trustworthiness: the snapshot's trustworthiness (10 neighbours, against its own vectors), or None.
        motion: the temporal preservation of the paths from the previous ``fit`` snapshot into this one (Spearman
            correlation of how far each sample moves in the map and in its vectors), or None.
        shown: the points drawn, when a subsample.
        total: the points the snapshot has.
        fitted: whether the map was fitted on this snapshot.
        align: how the run's snapshots share one map (``"last"``, ``"joint"``, ``"aligned"``), which decides the
            warning's words.
        threshold: below this trustworthiness the map is called not faithful.

    Example::

        panel_title({"stage": "fit", "epoch": 0, "step": 22}, 0.62)
        # PanelTitle(text='epoch 0 · step 22\\ntrustworthiness 0.62', warning='not faithful: points placed by the final map')
        panel_title({"stage": "fit", "epoch": 1, "step": 44}, 0.91, motion=0.31).text
        # 'epoch 1 · step 44\ntrustworthiness 0.91\ntemporal preservation 0.31'
    """
    lines = [snapshot_label(snapshot) + (" (map fitted here)" if fitted else "")]
    warnings = []
    if is_known(trustworthiness):
        lines.append(f"trustworthiness {trustworthiness:.2f}")
        if trustworthiness < threshold:
            warnings.append(panel_warning(align, fitted))
    if is_known(motion):
        lines.append(f"temporal preservation {motion:.2f}")
    if shown is not None and total is not None and shown < total:
        lines.append(f"{shown:,} of {total:,} points shown")
    return PanelTitle("\n".join(lines), "\n".join(warnings) or None)


# ------------------------------------------------------------------------------------------------ run facts


@dataclass
class LayerView:
    """Everything one layer's pictures need, read once."""

    column: str
    frame: pd.DataFrame  # keyed projections of the evaluated split, panel order in ``_panel``, hover dynamics
    snapshots: list[dict[str, Any]]  # in panel order: fit first, then validate/test
    trust: dict[str, Optional[float]]
    motion: dict[str, Optional[float]]  # temporal preservation of the paths into each fit snapshot after the first
    samples: pd.DataFrame  # samples() of every recorded split, with ``split``; empty where there are none
    suspects: pd.DataFrame  # the top N_SUSPECTS by suspicion of samples() of the split with the most labels
    suspects_split: str  # that split: "train" under record_train (as the table and the gallery), else "val"
    suspect_rows: Optional[pd.DataFrame]  # where they are: keyed rows of the last fit snapshot (None: the panel's)
    hover: list[str]  # the dynamics columns in ``frame`` shown on the page's hover
    fitted_on: Optional[str]
    align: Optional[str]
    reducer: str
    palette: Palette
    three_d: bool
    keep: Optional[np.ndarray]  # keys drawn, None for all
    total: int  # distinct samples
    path: Path  # the run directory, named in the advice

    def paths_faithful(self) -> bool:
        """Whether the map's paths may be drawn as motion: its median temporal preservation (where measured) is at
        least ``FAITHFUL_MOTION``."""
        known = [value for value in self.motion.values() if is_known(value)]
        return not known or float(np.median(known)) >= FAITHFUL_MOTION

    def paths_note(self) -> Optional[str]:
        """One sentence on the map's unfaithful paths and how to draw faithful ones; None where all are."""
        names = unfaithful_paths(self.motion)
        if not names:
            return None
        return (f"paths not faithful into {len(names)} of {len(self.motion)} snapshots (temporal preservation below "
                f"{FAITHFUL_MOTION}): {faithful_paths_advice(self.path)}")


def load_layer(run: RunReader, layer: LayerSpec, samples: pd.DataFrame) -> LayerView:
    """A layer's :class:`LayerView`, read from ``run`` (its projections and the manifest's facts) with ``samples``,
    the layer's :func:`~lightning_embeddings.run_samples.recorded` frame, handed over: the top suspects of the
    split with the most labels (the table's and the gallery's) are marked where they are in the map, the evaluated
    split's dynamics shown on hover.

    Example::

        view = load_layer(run, "head.1", recorded(run, "head.1"))
    """
    column = run.column(layer)
    projections = run.projections(layer)
    frame = keyed(evaluated(projections))
    record = run.manifest.get("reducer") or {}
    facts = (record.get("layers") or {}).get(column) or {}
    trust = dict(facts.get("trustworthiness") or {})
    motion = dict(facts.get("temporal_preservation") or {})
    # only align="last" fits on one snapshot; "joint" and "aligned" fit on all of them
    fitted_on = (record.get("fitted_on") or {}).get("name") if record.get("align", "last") == "last" else None
    order = {s["name"]: i for i, s in enumerate(run.snapshots)}
    present = frame[["stage", "epoch", "step"]].drop_duplicates()
    snapshots = []
    for stage, epoch, step in present.itertuples(index=False):
        name = snapshot_name(str(stage), int(epoch), int(step))
        snapshots.append({"name": name, "stage": str(stage), "epoch": int(epoch), "step": int(step)})
    snapshots.sort(key=lambda s: (s["stage"] != "fit", order.get(s["name"], len(order)), s["step"]))
    frame["_panel"] = frame.set_index(["stage", "epoch", "step"]).index.map(
        {(s["stage"], s["epoch"], s["step"]): i for i, s in enumerate(snapshots)}
    ).to_numpy()
    name = record.get("name") or (facts.get("class") or "reducer").rsplit(".", 1)[-1]
    labels = frame.get("label")
    keep, total = stratified_sample(frame, limit=MAX_POINTS)
    drawn = samples[(samples[SPLIT] == "val").to_numpy()]
    split = gallery_split(samples) or "val"
    marked = samples[(samples[SPLIT] == split).to_numpy()]
    suspects = marked[marked["suspicion"].notna().to_numpy()].head(N_SUSPECTS) if "suspicion" in marked else marked
    hover = [c for c in HOVER_DYNAMICS if c in drawn and drawn[c].notna().any()]
    for dynamic, values in sample_columns(frame, drawn, hover).items():
        frame[dynamic] = values.to_numpy()
    return LayerView(
        column, frame, snapshots, trust, motion, samples, suspects, split, _placed(projections, split, snapshots), hover,
        fitted_on, record.get("align"), str(name), label_palette(labels), "z" in frame, keep, total, run.path,
    )


def _placed(projections: pd.DataFrame, split: str, snapshots: list[dict[str, Any]]) -> Optional[pd.DataFrame]:
    """The keyed rows of ``split`` in the last ``fit`` snapshot of the map, where its suspects are marked; None for
    the evaluated split (its panel's rows hold them)."""
    fit = [s for s in snapshots if s["stage"] == "fit"]
    if split == "val" or not fit or SPLIT not in projections:
        return None
    last = projections[(projections[SPLIT] == split).to_numpy() & (projections["stage"] == "fit").to_numpy()
                       & (projections["step"] == fit[-1]["step"]).to_numpy()]
    return keyed(last)


def kept(info: LayerView, rows: pd.DataFrame) -> pd.DataFrame:
    return rows if info.keep is None else rows[np.isin(rows["_key"].to_numpy(), info.keep)]


def limits(frame: pd.DataFrame) -> tuple[tuple[float, float], tuple[float, float]]:
    limits = []
    for axis in "xy":
        values = frame[axis].to_numpy(float)
        values = values[np.isfinite(values)]
        low, high = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
        pad = (high - low) * 0.04 or 1.0
        limits.append((low - pad, high + pad))
    return limits[0], limits[1]


def reducer_words(info: LayerView) -> str:
    fitted = next((s for s in info.snapshots if s["name"] == info.fitted_on), None)
    words = f"{info.reducer} map"
    if info.align:
        words += f", align={info.align!r}"
    if fitted is not None and info.align in (None, "last"):
        words += f", fitted on {snapshot_label(fitted)}"
    return words


def output_dir(run: RunReader, path: Optional[PathLike]) -> Path:
    return Path(path) if path is not None else run.path / PLOTS


def with_projections(run: RunReader, layers: Optional[Sequence[LayerSpec]]) -> list[str]:
    """The chosen layers' columns that have projections; the others are warned about and left out."""
    columns = [run.column(layer) for layer in layers] if layers is not None else run.layers
    record = ((run.manifest.get("reducer") or {}).get("layers")) or {}
    present = []
    for column in columns:
        if not projection_file(run.path, column).is_file():
            why = (record.get(column) or {}).get("skipped") or "the run was not reduced"
            rank_zero_warn(f"lightning-embeddings: layer {column!r} has no map ({why}); it is not drawn.")
            continue
        present.append(column)
    return present
