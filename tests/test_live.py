"""The live k-NN accuracy (live.py), without a Trainer: what it keeps of each layer and what it scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from lightning_embeddings.dynamics import knn_accuracy
from lightning_embeddings.live import KNN_SAMPLES, LiveKnnAccuracy


def test_keeps_the_first_labelled_rows_of_each_layer_and_scores_them_as_knn_accuracy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 3000)
    separated = (rng.normal(size=(3000, 4)) + 6 * np.eye(4)[labels]).astype(np.float32)  # a direction per class
    noise = rng.normal(size=(3000, 8)).astype(np.float32)
    live = LiveKnnAccuracy()
    live.start(["separated", "noise", "never called"])
    for start in range(0, 3000, 500):  # batches of 500: the layer's room ends inside the fifth
        batch = slice(start, start + 500)
        live.keep([separated[batch], noise[batch], None], labels[batch])
        separated[batch] = 0  # the caller reuses its arrays: what was kept is a copy
    assert live.room("separated") == 0 and live.room("never called") == KNN_SAMPLES
    scores = live.scores()
    assert set(scores) == {"separated", "noise"}  # a layer with no rows is left out
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 3000)
    again = (rng.normal(size=(3000, 4)) + 6 * np.eye(4)[labels]).astype(np.float32)
    first = labels[:KNN_SAMPLES]  # numbered as kept: by first appearance
    numbered = torch.from_numpy(pd.factorize(first)[0])
    expected = knn_accuracy(torch.from_numpy(again[:KNN_SAMPLES]), numbered).item()
    assert scores["separated"] == expected and expected > 0.95
    assert scores["noise"] < 0.5  # chance is 1/3
    assert live.scores() == {}  # the rows are dropped once scored


def test_rows_without_a_label_or_a_finite_vector_are_left_out_and_too_few_give_no_score():
    live = LiveKnnAccuracy()
    live.start(["layer"])
    vectors = np.repeat(np.arange(12, dtype=np.float32)[:, None], 2, axis=1)
    vectors[0] = np.nan
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, None], dtype=object)
    live.keep([vectors], labels)
    assert live.scores() == {}  # 10 usable rows: not more than K_NEIGHBOURS
