"""How far a map can be believed (faithfulness.py), on hand-made maps with known answers, and the words said."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lightning_embeddings.faithfulness import (
    FAITHFUL,
    collapsed,
    named,
    temporal_preservation,
    trustworthiness,
    unfaithful_map_warning,
    unfaithful_paths_warning,
    unfaithful_snapshots,
)


def test_trustworthiness_is_one_for_a_map_that_keeps_every_neighbourhood_and_low_for_a_shuffled_one():
    rng = np.random.default_rng(0)
    points = rng.standard_normal((200, 2))
    vectors = np.hstack([points, np.zeros((200, 6))])  # the map is the vectors' own plane: every neighbour kept
    assert trustworthiness(vectors, points) == pytest.approx(1.0)
    assert trustworthiness(vectors, rng.permutation(points)) < 0.6  # neighbours drawn at random
    assert trustworthiness(vectors[:3], points[:3]) is None  # too few samples to tell


def test_collapsed_vectors_are_all_one_vector():
    assert collapsed(np.ones((10, 4)) * 3.0) and not collapsed(np.eye(4))
    assert not collapsed(np.zeros((1, 4)))  # one row has nothing to collapse onto


def test_temporal_preservation_ranks_map_moves_against_vector_moves():
    rng = np.random.default_rng(2)
    vectors_a = rng.standard_normal((30, 8))
    steps = rng.permutation(30) + 1.0
    direction = rng.standard_normal((30, 8))
    vectors_b = vectors_a + steps[:, None] * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    map_a = rng.standard_normal((30, 2))
    turn = rng.standard_normal((30, 2))
    turn /= np.linalg.norm(turn, axis=1, keepdims=True)
    assert temporal_preservation(map_a, map_a + 0.1 * steps[:, None] * turn, vectors_a, vectors_b) == pytest.approx(1)
    reversed_steps = steps.max() + 1 - steps
    assert temporal_preservation(map_a, map_a + reversed_steps[:, None] * turn, vectors_a, vectors_b) == (
        pytest.approx(-1))
    # non-finite rows are left out
    map_b = map_a + steps[:, None] * turn
    map_b[0, 1], vectors_b[1, 3] = np.nan, np.inf
    assert temporal_preservation(map_a, map_b, vectors_a, vectors_b) == pytest.approx(1)
    assert math.isnan(temporal_preservation(map_a[:2], map_b[:2], vectors_a[:2], vectors_b[:2]))
    assert math.isnan(temporal_preservation(map_a, map_a + 1.0, vectors_a, vectors_b))  # every map move equal
    with pytest.raises(ValueError, match="same rows"):
        temporal_preservation(map_a, map_b[:5], vectors_a, vectors_b)


def test_unfaithful_snapshots_and_the_warnings_that_name_them_and_the_way_out():
    trust = {"epoch_0000": 0.62, "epoch_0001": None, "epoch_0002": 0.97}
    assert unfaithful_snapshots(trust) == ["epoch_0000"]
    said = unfaithful_map_warning("head.1", trust, "last", "runs/a")
    assert f"layer 'head.1' is not faithful at epoch_0000 (trustworthiness below {FAITHFUL})" in said
    assert "lightning-embeddings reduce runs/a --align joint" in said
    assert "--align aligned --reducer umap" in unfaithful_map_warning("head.1", trust, "joint", "runs/a")
    assert unfaithful_map_warning("head.1", {"epoch_0002": 0.97}, "last", "runs/a") is None
    motion = {"head.1": {"epoch_0001": 0.1, "epoch_0002": 0.9}, "features.1": {"epoch_0001": 0.8}}
    paths = unfaithful_paths_warning(motion, "runs/a")
    assert "for layer 'head.1' into epoch_0001." in paths and "features.1" not in paths
    assert "lightning-embeddings reduce runs/a --reducer parametric" in paths
    assert unfaithful_paths_warning({"features.1": {"epoch_0001": 0.8}}, "runs/a") is None
    assert named([f"s{i}" for i in range(6)], range(10)) == "s0, s1, ..., s5 (6 of 10)"
