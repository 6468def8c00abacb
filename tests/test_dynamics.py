"""The pure analysis of trajectories (``lightning_embeddings.dynamics``) on hand-made data whose answers are known:
a projections frame for the map's functions, bundles of directions for those in each layer's own vector space."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from lightning_embeddings.dynamics import (
    SnapshotView,
    by_suspicion,
    knn_accuracy,
    knn_agreement,
    neighbours,
    sample_dynamics,
)
from lightning_embeddings.paths import class_medians, distance_to_final, misclassified, movers


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


# In each layer's own vector space.

ANGLES = {0: 0.0, 1: 60.0, 2: 120.0}  # three classes, each a tight bundle of directions


def bundle(label: int, members: int = 4) -> list[list[float]]:
    """``members`` unit vectors within 1.5 degrees of the class's direction."""
    return [[math.cos(math.radians(ANGLES[label] + 0.5 * i)), math.sin(math.radians(ANGLES[label] + 0.5 * i))]
            for i in range(members)]


def three_classes(x_at: int) -> np.ndarray:
    """Rows 0-3 class 0, 4-7 class 1, 8-11 class 2, then row 12 (labelled 0 in ``LABELS``) inside class ``x_at``'s
    bundle; vectors scaled by row so that cosine, not length, must decide."""
    rows = bundle(0) + bundle(1) + bundle(2) + [bundle(x_at, 6)[5]]
    return np.asarray(rows) * np.arange(1, 14)[:, None]


LABELS = np.array([0] * 4 + [1] * 4 + [2] * 4 + [0])


def brute_neighbours(x: np.ndarray, k: int) -> list[set[int]]:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    similar = unit @ unit.T
    np.fill_diagonal(similar, -np.inf)
    return [set(np.argsort(-row, kind="stable")[:k]) for row in similar]


def test_neighbours_are_the_nearest_others_by_cosine_and_skip_bad_rows():
    x = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    found = neighbours(x, 5)
    assert found.shape == (40, 5) and found.dtype == np.int64
    assert [set(row) for row in found] == brute_neighbours(x, 5)
    assert not (found == np.arange(40)[:, None]).any()
    x[3], x[7], x[11, 2] = np.nan, 0.0, np.inf
    found = neighbours(x, 5)
    assert (found[[3, 7, 11]] == -1).all()
    assert not np.isin([3, 7, 11], found).any()
    keep = np.setdiff1d(np.arange(40), [3, 7, 11])
    assert [set(row) for row in found[keep]] == [set(keep[list(s)]) for s in brute_neighbours(x[keep], 5)]
    # fewer other valid rows than k: padded with -1
    small = neighbours(np.array([[1.0, 0.0], [0.0, 1.0], [np.nan, 1.0]]), 3)
    np.testing.assert_array_equal(small, [[1, -1, -1], [0, -1, -1], [-1, -1, -1]])
    with pytest.raises(ValueError, match="k must be at least 1"):
        neighbours(x, 0)


def test_neighbours_by_euclidean_distance_keep_zero_rows_and_match_brute_force():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((60, 5)) * rng.uniform(0.1, 10, (60, 1))).astype(np.float32)  # lengths matter here
    x[4] = 0.0  # a zero row is a point like any other in Euclidean space
    x[9, 1] = np.nan
    found = neighbours(x, 4, metric="euclidean")
    keep = np.setdiff1d(np.arange(60), [9])
    distances = np.linalg.norm(x[keep, None] - x[None, keep], axis=2)
    np.fill_diagonal(distances, np.inf)
    brute = [set(keep[np.argsort(row, kind="stable")[:4]]) for row in distances]
    assert [set(row) for row in found[keep]] == brute
    assert (found[9] == -1).all() and 4 in found
    assert [set(row) for row in found[keep]] != [set(row) for row in neighbours(x, 4)[keep]]  # not cosine's
    with pytest.raises(ValueError, match="metric must be 'cosine' or 'euclidean'"):
        neighbours(x, 3, metric="manhattan")


def test_knn_agreement_counts_labelled_neighbours_sharing_the_label():
    x = three_classes(1)  # row 12 labelled 0 inside class 1
    agreement = knn_agreement(x, LABELS, k=3)
    assert agreement[12] == 0.0
    np.testing.assert_allclose(agreement[[0, 8]], [1.0, 1.0])
    # strings and missing labels: no label, no agreement; unlabelled neighbours do not count
    named = np.array(["zero"] * 4 + ["one"] * 4 + ["two"] * 4 + [None], dtype=object)
    named[1] = None
    agreement = knn_agreement(x, named, k=3)
    assert np.isnan(agreement[[1, 12]]).all()
    assert agreement[0] == 1.0  # neighbours 1 (no label), 2, 3: 2 of 2 labelled ones agree
    with pytest.raises(ValueError, match="labels has 3 entries for 13 rows"):
        knn_agreement(x, LABELS[:3])


def test_knn_accuracy_matches_a_brute_force_vote():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 300)
    x = rng.standard_normal((300, 16)) + 1.5 * np.eye(16)[labels]
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    similar = unit @ unit.T
    np.fill_diagonal(similar, -np.inf)
    nearest = np.argsort(-similar, axis=1)[:, :7]
    votes = np.array([np.bincount(labels[row], minlength=4).argmax() for row in nearest])
    expected = (votes == labels).mean()
    got = knn_accuracy(torch.from_numpy(x).float(), torch.from_numpy(labels), k=7)
    assert 0.4 < expected < 1.0  # neither trivial nor perfect, so the comparison means something
    assert got.item() == pytest.approx(expected)
    assert knn_accuracy(torch.ones(1, 3), torch.zeros(1, dtype=torch.int64)).isnan()
    assert knn_accuracy(torch.zeros(5, 3), torch.tensor([0, 1, 0, 1, 0])).item() == 0.0  # no neighbours: wrong


def test_a_sample_whose_neighbours_change_class():
    views = [SnapshotView(epoch, three_classes(at)) for epoch, at in ((2, 0), (4, 1), (6, 1))]
    frame = sample_dynamics(LABELS, views, k=3)
    assert len(frame) == 13
    x = frame.iloc[12]
    assert x.knn_agreement == pytest.approx(1 / 3) and x.knn_agreement_last == 0.0
    assert x.settled_epoch == 4  # majority label 0, then 1 from epoch 4 on
    assert x.movement == pytest.approx((1 - math.cos(math.radians(60))) / 2)  # 2.5 -> 62.5 degrees, then still
    still = frame.iloc[9]  # a class-2 row: never moves, its neighbours never change
    assert still.movement == pytest.approx(0.0, abs=1e-6) and still.settled_epoch == 2
    assert still.knn_agreement == 1.0
    assert frame[["correct", "confidence", "aum"]].isna().all().all()  # neither predictions nor logits: NaN, same columns


def test_a_missing_vector_is_skipped_not_counted():
    gone = three_classes(1)
    gone[12] = np.nan
    views = [SnapshotView(0, three_classes(1)), SnapshotView(1, gone), SnapshotView(2, three_classes(1))]
    frame = sample_dynamics(LABELS, views, k=3)
    assert frame.knn_agreement[12] == 0.0  # the mean over the two snapshots it has
    assert np.isnan(frame.movement[12])  # no consecutive pair with both vectors
    assert frame.settled_epoch[12] == 2  # no neighbours at epoch 1, then class 1's
    with pytest.raises(ValueError, match="epoch 5 has 12 rows for 13 labels"):
        sample_dynamics(LABELS, [SnapshotView(5, gone[:12])])


def test_learned_and_forgotten():
    x = three_classes(0)
    predictions = np.tile(LABELS, (3, 1))  # snapshots at epochs 3, 5, 7; right unless set below (rows 0-3: label 0)
    predictions[:, 0] = [0, 1, 0]  # right, wrong, right: forgotten once, learned at the last flip
    predictions[:, 1] = [2, 2, 0]  # learned late, never forgotten
    predictions[:, 2] = [0, 0, 2]  # forgotten at the end: not learned
    frame = sample_dynamics(LABELS, [SnapshotView(e, x, p) for e, p in zip((3, 5, 7), predictions)], k=3)
    assert frame.loc[0, ["forgetting_events", "learned_epoch"]].tolist() == [1, 7]
    assert frame.loc[1, ["forgetting_events", "learned_epoch"]].tolist() == [0, 7]
    assert frame.forgetting_events[2] == 1 and np.isnan(frame.learned_epoch[2])
    np.testing.assert_allclose(frame.correct[[0, 1, 2, 5]], [2 / 3, 1 / 3, 2 / 3, 1.0])
    assert frame.learned_epoch[5] == 3 and frame.forgetting_events[5] == 0
    assert frame.forgetting_events.dtype == np.int64


def test_cartography_and_aum_from_hand_logits():
    x = three_classes(0)
    logits = np.zeros((2, 13, 3))
    logits[1, 0] = [math.log(2), 0, 0]  # row 0 (label 0): p 1/3 then 1/2, margin 0 then log 2
    logits[:, 4] = [[3, 1, 0], [0, 1, 3]]  # row 4 (label 1): p(1) = e/(e^3+e+1) both times, margin -2
    frame = sample_dynamics(LABELS, [SnapshotView(e, x, None, logits[e]) for e in (0, 1)], k=3)
    assert frame.confidence[0] == pytest.approx(5 / 12) and frame.variability[0] == pytest.approx(1 / 12)
    assert frame.aum[0] == pytest.approx(math.log(2) / 2)
    p = math.e / (math.e**3 + math.e + 1)
    assert frame.confidence[4] == pytest.approx(p) and frame.variability[4] == pytest.approx(0.0)
    assert frame.aum[4] == pytest.approx(-2.0)
    assert frame["correct"].isna().all()  # no predictions given: NaN, the column kept
    # labels that cannot index the logits (strings, or out of range): no cartography
    named = sample_dynamics(LABELS.astype(str), [SnapshotView(0, x, None, logits[0])], k=3)
    assert named[["confidence", "aum"]].isna().all().all()
    assert sample_dynamics(LABELS + 1, [SnapshotView(0, x, None, logits[0])], k=3)["confidence"].isna().all()
    missing = LABELS.astype(float)
    missing[0] = np.nan
    partly = sample_dynamics(missing, [SnapshotView(0, x, None, logits[0])], k=3)
    assert np.isnan(partly.confidence[0]) and partly.confidence[1] == pytest.approx(1 / 3)


def test_suspicion_ranks_a_planted_mislabel_first():
    labels = LABELS.copy()
    labels[6] = 2  # a class-1 row labelled 2
    views = [SnapshotView(e, three_classes(0) * (e + 1)) for e in range(3)]
    frame = sample_dynamics(labels, views, k=3)
    assert frame.suspicion.between(0, 1).all()
    assert frame.suspicion.idxmax() == 6
    assert frame.suspicion[6] == 1.0 and (frame.suspicion.drop(6) < 0.5).all()
    empty = sample_dynamics(labels, [], k=3)
    assert len(empty) == 13 and empty.suspicion.isna().all()


def test_neighbour_label_says_what_the_neighbours_say_a_sample_is():
    """Issue 25: row 12 is labelled 0 but lies in class 2's bundle at the last snapshot: its neighbours say 2."""
    views = [SnapshotView(0, three_classes(0)), SnapshotView(1, three_classes(2))]
    frame = sample_dynamics(LABELS, views, k=3)
    assert frame.neighbour_label[12] == 2 and frame.neighbour_label[0] == 0 and frame.neighbour_label[9] == 2
    named = sample_dynamics(np.array(["cat"] * 4 + ["dog"] * 4 + ["eel"] * 4 + ["cat"]), views, k=3)
    assert named.neighbour_label[12] == "eel"
    unlabelled = np.array([None] * 12 + [0], dtype=object)  # nobody else has a label: the neighbours say nothing
    assert sample_dynamics(unlabelled, views, k=3).neighbour_label[12] is None


def test_ties_in_suspicion_are_broken_by_evidence_not_by_position():
    """Issue 25: the top of a label_errors run all tied at suspicion 1.000 and came out in id order."""
    frame = pd.DataFrame({
        "suspicion": [1.0, 1.0, 1.0, 1.0, 0.8, 1 - (0.1 + 0.2 + 0.3) / 3],  # 0.8 and 0.7999999999999999
        "knn_agreement_last": [0.0, 0.0, 0.0, 0.1, 0.0, 0.0],
        "confidence": [0.30, 0.05, np.nan, 0.0, 0.3, 0.2],
        "aum": [-1.0, -2.0, np.nan, -9.0, -9.0, 0.0],
        "correct": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    }, index=[10, 11, 12, 13, 14, 15])
    ranked = by_suspicion(frame)
    # agreement at the end first, then confidence in the label (NaN last); 14 and 15 tie up to a mean's rounding
    assert list(ranked.index) == [11, 10, 12, 13, 15, 14]
