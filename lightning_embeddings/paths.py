"""What a layer's paths in its map say: pure functions of the DataFrame of
:meth:`~lightning_embeddings.EmbeddingRun.projections` (``sample_id, split, stage, epoch, step, dataloader_idx, x,
y[, z]``, ``label``/``prediction`` when known), each returning a DataFrame. ``overview.py`` draws them.

    misclassified(frame)       the samples wrong at the last ``fit`` snapshot
    movers(frame, n)           the samples whose path across ``fit`` is longest
    class_medians(frame)       each class's median position at every ``fit`` snapshot
    distance_to_final(frame)   per class, the median distance to where the samples end
    map_paths(frame)           all four, what the overview picture draws
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from lightning_embeddings.store import sample_keys

N_MOVERS = 10  # paths of the samples that moved most


def keyed(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a ``_key`` column naming each sample across snapshots: ``(split, dataloader_idx, sample_id)``."""
    frame = frame.copy()
    loader = frame["dataloader_idx"].to_numpy(np.int64) if "dataloader_idx" in frame else None
    frame["_key"] = sample_keys(frame["sample_id"].to_numpy(np.int64), loader,
                                frame["split"].to_numpy() if "split" in frame else None)
    if "dataloader_idx" not in frame:
        frame["dataloader_idx"] = 0
    return frame


def fit_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the ``fit`` snapshots (all rows when the frame has no ``stage`` column or no ``fit`` row),
    ordered by global step."""
    rows = frame
    if "stage" in frame and (frame["stage"] == "fit").any():
        rows = frame[frame["stage"] == "fit"]
    return rows.sort_values(["step", "epoch"], kind="stable")


def misclassified(frame: pd.DataFrame) -> pd.DataFrame:
    """The samples misclassified at the last ``fit`` snapshot: its rows where ``prediction != label``.

    Empty when labels or predictions were not recorded; rows missing either value are left out.

    Example::

        wrong = misclassified(run.projections("head.1"))
        wrong[["sample_id", "label", "prediction"]]
    """
    if not {"label", "prediction"} <= set(frame.columns) or frame.empty:
        return frame.iloc[:0]
    rows = fit_rows(frame)
    last = rows[rows["step"] == rows["step"].max()]
    known = last["label"].notna() & last["prediction"].notna()
    wrong = known & (last["label"] != last["prediction"])
    return last[wrong.astype(bool)]


def movers(frame: pd.DataFrame, n: int = N_MOVERS) -> pd.DataFrame:
    """The ``n`` samples whose path across the ``fit`` snapshots is longest (sum of the distances between
    consecutive snapshots, in map units), longest first.

    Returns:
        A DataFrame with ``dataloader_idx, sample_id, distance``.

    Example::

        movers(run.projections("head.1"), n=5)
    """
    rows = keyed(fit_rows(frame))
    if rows.empty:
        return pd.DataFrame({"dataloader_idx": [], "sample_id": [], "distance": []})
    rows = rows.sort_values(["_key", "step", "epoch"], kind="stable")
    same = rows["_key"].to_numpy()[1:] == rows["_key"].to_numpy()[:-1]
    steps = np.hypot(np.diff(rows["x"].to_numpy(float)), np.diff(rows["y"].to_numpy(float)))
    lengths = np.zeros(len(rows))
    lengths[1:] = np.where(same, steps, 0.0)
    rows = rows.assign(_length=lengths)
    total = rows.groupby("_key", sort=True).agg(
        dataloader_idx=("dataloader_idx", "first"), sample_id=("sample_id", "first"), distance=("_length", "sum")
    )
    top = total.sort_values(["distance"], ascending=False, kind="stable").head(n)
    return top.reset_index(drop=True)


def class_medians(frame: pd.DataFrame) -> pd.DataFrame:
    """Each class's median position at every ``fit`` snapshot: ``label, epoch, step, x, y`` ordered by label then
    step. Empty without labels.

    Example::

        for label, path in class_medians(run.projections("head.1")).groupby("label"):
            print(label, path[["x", "y"]].to_numpy())
    """
    if "label" not in frame or frame["label"].isna().all():
        return pd.DataFrame(columns=["label", "epoch", "step", "x", "y"])
    rows = fit_rows(frame)
    rows = rows[rows["label"].notna()]
    medians = rows.groupby(["label", "step", "epoch"], sort=True)[["x", "y"]].median().reset_index()
    return medians[["label", "epoch", "step", "x", "y"]].reset_index(drop=True)


def distance_to_final(frame: pd.DataFrame) -> pd.DataFrame:
    """Per class (and over all samples, ``label`` ``None``), the median distance of the samples at each ``fit``
    snapshot to where the same samples are at the last one: ``label, epoch, step, distance``.

    Only samples present in the last snapshot count. Per-class rows are left out without labels.

    Example::

        curve = distance_to_final(run.projections("head.1"))
        curve[curve.label.isna()]              # all samples: falls to 0 at the last snapshot
    """
    rows = keyed(fit_rows(frame))
    columns = ["label", "epoch", "step", "distance"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    final = rows[rows["step"] == rows["step"].max()].drop_duplicates("_key", keep="last").set_index("_key")
    joined = rows.join(final[["x", "y"]], on="_key", rsuffix="_final", how="inner")
    joined["distance"] = np.hypot(joined["x"] - joined["x_final"], joined["y"] - joined["y_final"])
    overall = joined.groupby(["step", "epoch"], sort=True)["distance"].median().reset_index()
    overall.insert(0, "label", None)
    parts = [overall[columns]]
    if "label" in joined and joined["label"].notna().any():
        # the label a sample ends with names its class along the whole path
        joined["_final_label"] = joined["_key"].map(final["label"]) if "label" in final else joined["label"]
        per_class = (
            joined[joined["_final_label"].notna()]
            .groupby(["_final_label", "step", "epoch"], sort=True)["distance"].median().reset_index()
            .rename(columns={"_final_label": "label"})
        )
        parts.insert(0, per_class[columns].astype({"label": object}))
    out = pd.concat(parts, ignore_index=True)
    return out


class MapPaths(NamedTuple):
    """What the overview picture draws of where a layer's samples end and how they got there (:func:`map_paths`)."""

    misclassified: pd.DataFrame
    class_medians: pd.DataFrame  # empty when not drawn per class
    movers: pd.DataFrame
    distance_to_final: pd.DataFrame


def map_paths(frame: pd.DataFrame, per_class: bool = True) -> MapPaths:
    """:func:`misclassified`, :func:`class_medians` (only ``per_class``), :func:`movers` and
    :func:`distance_to_final` of the projections ``frame``.

    Example::

        paths = map_paths(run.projections("head.1"))
        paths.movers.head(3)
    """
    medians = class_medians(frame if per_class else frame.iloc[:0])
    return MapPaths(misclassified(frame), medians, movers(frame, N_MOVERS), distance_to_final(frame))
