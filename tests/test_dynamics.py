"""The pure analysis of trajectories (``lightning_embeddings.dynamics``), on a hand-made projections frame whose
answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lightning_embeddings.dynamics import class_medians, distance_to_final, misclassified, movers


def hand_made() -> pd.DataFrame:
    """Three samples over three fit snapshots, then one test snapshot that the fit-only functions must ignore.

    sample 0 (label 0) walks (0,0) -> (3,4) -> (3,4): path 5, ends right.
    sample 1 (label 0) walks (1,0) -> (1,0) -> (1,1): path 1, ends predicted 1: misclassified.
    sample 2 (label 1) walks (10,0) -> (10,0) -> (4,8): path 10, ends right.
    """
    rows = []
    path = {0: [(0, 0), (3, 4), (3, 4)], 1: [(1, 0), (1, 0), (1, 1)], 2: [(10, 0), (10, 0), (4, 8)]}
    labels, final_predictions = {0: 0, 1: 0, 2: 1}, {0: 0, 1: 1, 2: 1}
    for epoch, step in enumerate((10, 20, 30)):
        for sample, points in path.items():
            x, y = points[epoch]
            prediction = final_predictions[sample] if epoch == 2 else (1 - labels[sample])  # all wrong before the end
            rows.append(dict(sample_id=sample, stage="fit", epoch=epoch, step=step, dataloader_idx=0, x=float(x),
                             y=float(y), label=labels[sample], prediction=prediction))
    for sample in path:  # a test snapshot: far away, everything misclassified
        rows.append(dict(sample_id=sample, stage="test", epoch=2, step=30, dataloader_idx=0, x=100.0, y=100.0,
                         label=labels[sample], prediction=9))
    return pd.DataFrame(rows)


def test_misclassified_is_the_last_fit_snapshot_where_prediction_differs():
    frame = hand_made()
    wrong = misclassified(frame)
    assert wrong["sample_id"].tolist() == [1]
    assert wrong["step"].tolist() == [30] and wrong["stage"].tolist() == ["fit"]
    assert misclassified(frame.drop(columns=["prediction"])).empty
    partly_known = frame.astype({"prediction": "Int64"})
    partly_known.loc[(partly_known.sample_id == 1) & (partly_known.step == 30) & (partly_known.stage == "fit"),
                     "prediction"] = pd.NA
    assert misclassified(partly_known).empty


def test_movers_are_ranked_by_path_length():
    top = movers(hand_made(), n=2)
    assert top["sample_id"].tolist() == [2, 0]
    np.testing.assert_allclose(top["distance"], [10.0, 5.0])
    # the same sample id under another dataloader is another sample
    frame = hand_made()
    other = frame[frame.stage == "fit"].assign(dataloader_idx=1, x=lambda f: f.x * 3, y=lambda f: f.y * 3)
    top = movers(pd.concat([frame, other]), n=1)
    assert (top["dataloader_idx"].item(), top["sample_id"].item(), top["distance"].item()) == (1, 2, 30.0)


def test_class_medians_follow_each_class_across_fit_snapshots():
    medians = class_medians(hand_made())
    class0 = medians[medians.label == 0].sort_values("step")
    np.testing.assert_allclose(class0[["x", "y"]].to_numpy(), [[0.5, 0.0], [2.0, 2.0], [2.0, 2.5]])
    class1 = medians[medians.label == 1].sort_values("step")
    np.testing.assert_allclose(class1[["x", "y"]].to_numpy(), [[10, 0], [10, 0], [4, 8]])
    assert set(medians["step"]) == {10, 20, 30}  # the test snapshot at (100, 100) is not part of the path
    assert class_medians(hand_made().drop(columns=["label"])).empty


def test_distance_to_final_falls_to_zero():
    curve = distance_to_final(hand_made())
    class1 = curve[curve.label == 1].sort_values("step")["distance"].to_numpy(float)
    np.testing.assert_allclose(class1, [10.0, 10.0, 0.0])
    class0 = curve[curve.label == 0].sort_values("step")["distance"].to_numpy(float)
    np.testing.assert_allclose(class0, [np.median([5.0, 1.0]), np.median([0.0, 1.0]), 0.0])
    overall = curve[curve.label.isna()].sort_values("step")["distance"].to_numpy(float)
    np.testing.assert_allclose(overall, [5.0, 1.0, 0.0])
    unlabelled = distance_to_final(hand_made().drop(columns=["label"]))
    assert unlabelled["label"].isna().all() and len(unlabelled) == 3
