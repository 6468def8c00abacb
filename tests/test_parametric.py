"""ParametricMap on arrays: hand-made trajectories with a known answer, a frozen model, missing rows, seeding."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.base import clone

from lightning_embeddings import ParametricMap, parametric
from lightning_embeddings.dynamics import temporal_preservation


def trajectories(n: int = 240, dim: int = 12, snapshots: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four clusters; between snapshots each sample moves by its own amount (from 0 to far: a quarter stays put
    exactly), in a random direction. Returns the snapshots (T, n, dim) and each sample's amount of motion."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(4, dim))
    start = centres[np.arange(n) % 4] + rng.normal(size=(n, dim))
    amount = np.where(np.arange(n) % 4 == 0, 0.0, rng.uniform(0.05, 3.0, n))
    steps = [start]
    for _ in range(snapshots - 1):
        direction = rng.normal(size=(n, dim))
        steps.append(steps[-1] + amount[:, None] * direction / np.linalg.norm(direction, axis=1, keepdims=True))
    return np.stack(steps).astype(np.float32), amount


@pytest.fixture(scope="module")
def moving() -> tuple[np.ndarray, np.ndarray, ParametricMap, np.ndarray]:
    snapshots, amount = trajectories()
    mapper = ParametricMap(steps=200, random_state=0)
    return snapshots, amount, mapper, mapper.fit_transform(snapshots)


def test_samples_that_move_far_are_drawn_moving_far_and_those_that_stay_stay(moving):
    snapshots, amount, mapper, points = moving
    assert points.shape == (4, 240, 2) and points.dtype == np.float32 and np.isfinite(points).all()
    drawn = np.linalg.norm(points[1:] - points[:-1], axis=2)  # (T-1, n)
    for step in range(3):
        assert spearmanr(drawn[step], amount).statistic > 0.8
        assert temporal_preservation(points[step], points[step + 1], snapshots[step], snapshots[step + 1]) > 0.8
    still = amount == 0
    assert (drawn[:, still] == 0).all()  # equal rows, equal points: zero-motion pairs stay exactly put
    assert np.median(drawn[:, amount > 2]) > 10 * np.median(drawn[:, (amount > 0) & (amount < 0.3)])
    assert np.isfinite(mapper.loss_).all() and len(mapper.loss_) == 200
    assert mapper.n_features_in_ == 12 and mapper.n_snapshots_ == 4 and mapper.device_.type in ("cpu", "cuda")


def test_the_motion_term_is_what_makes_the_paths_faithful(moving):
    snapshots, amount, _, points = moving
    without = ParametricMap(steps=200, motion_weight=0.0, random_state=0).fit_transform(snapshots)
    movers = amount > 0  # those that stay put rank first either way

    def preservation(p: np.ndarray) -> float:
        return float(np.median([temporal_preservation(p[t][movers], p[t + 1][movers], snapshots[t][movers],
                                                      snapshots[t + 1][movers]) for t in range(3)]))

    assert preservation(points) > 0.85 and preservation(points) > preservation(without) + 0.1


def test_a_frozen_model_gives_a_map_that_does_not_move_and_no_nan():
    x = np.random.default_rng(0).normal(size=(150, 10)).astype(np.float32)
    mapper = ParametricMap(steps=40, random_state=0)
    points = mapper.fit_transform([x] * 5)
    assert np.isfinite(points).all() and np.isfinite(mapper.loss_).all()
    assert np.abs(points[1:] - points[:-1]).max() == 0.0


def test_same_seed_same_map_other_seed_other_map():
    snapshots, _ = trajectories(n=120, snapshots=3)
    first = ParametricMap(steps=30, random_state=3).fit_transform(snapshots)
    np.testing.assert_array_equal(first, ParametricMap(steps=30, random_state=3).fit_transform(snapshots))
    assert not np.array_equal(first, ParametricMap(steps=30, random_state=4).fit_transform(snapshots))


def test_rows_missing_from_a_snapshot_are_left_out_of_its_graph_and_of_the_motion_pairs():
    snapshots, amount = trajectories(n=160, snapshots=3)
    snapshots[1, :20] = np.nan  # 20 samples missing from the middle snapshot
    snapshots[2, 20, 3] = np.inf
    snapshots[:, 150:] = np.nan  # a layer that is not called on some samples: missing everywhere
    mapper = ParametricMap(steps=60, random_state=0).fit(snapshots)
    assert np.isfinite(mapper.loss_).all()
    points = mapper.transform(snapshots.reshape(-1, 12)).reshape(3, 160, 2)
    assert np.isnan(points[1, :20]).all() and np.isnan(points[:, 150:]).all() and np.isnan(points[2, 20]).all()
    assert np.isfinite(points[0, :150]).all() and np.isfinite(points[1, 20:150]).all()


def test_the_sampled_path_for_large_runs_keeps_paths_faithful(monkeypatch):
    """Above FULL_ROWS rows, each step embeds only the rows its edges, negatives and motion pairs need."""
    monkeypatch.setattr(parametric, "FULL_ROWS", 100)
    monkeypatch.setattr(parametric, "MOTION_PAIRS", 300)
    snapshots, amount = trajectories(n=200, snapshots=3)
    points = ParametricMap(steps=150, edges_per_step=2048, random_state=0).fit_transform(snapshots)
    drawn = np.linalg.norm(points[1:] - points[:-1], axis=2)
    assert all(spearmanr(drawn[t], amount).statistic > 0.7 for t in range(2))


def test_a_3d_map_and_a_single_snapshot():
    snapshots, _ = trajectories(n=80, snapshots=2)
    assert ParametricMap(n_components=3, steps=10, random_state=0).fit_transform(snapshots).shape == (2, 80, 3)
    mapper = ParametricMap(steps=10, random_state=0, hidden_layer_sizes=()).fit(snapshots[0])  # (N, D): one snapshot
    assert mapper.n_snapshots_ == 1 and mapper.transform(snapshots[1]).shape == (80, 2)


def test_fit_restores_torch_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ParametricMap(steps=5, threads=1, random_state=0).fit(trajectories(n=40, snapshots=2)[0])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_components": 0}, "n_components must be an int >= 1, got 0"),
    ({"steps": 2.5}, "steps must be an int >= 1, got 2.5"),
    ({"learning_rate": 0}, "learning_rate must be a number > 0, got 0"),
    ({"motion_weight": -1}, "motion_weight must be a number >= 0"),
    ({"n_neighbors": True}, "n_neighbors must be an int >= 2"),
    ({"hidden_layer_sizes": (64, 0)}, "hidden_layer_sizes must be a sequence of ints >= 1"),
    ({"threads": 0}, "threads must be an int >= 1"),
])
def test_bad_values_are_refused_when_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ParametricMap(**kwargs)


def test_scikit_learn_api_and_its_errors():
    mapper = ParametricMap(steps=7, hidden_layer_sizes=[32], random_state=1)
    assert clone(mapper).get_params() == mapper.get_params() and mapper.get_params()["steps"] == 7
    with pytest.raises(TypeError, match="stepz"):
        ParametricMap(stepz=3)
    with pytest.raises(ValueError, match="not fitted yet"):
        mapper.transform(np.zeros((3, 4)))
    snapshots, _ = trajectories(n=40, snapshots=2)
    assert mapper.fit(snapshots) is mapper
    with pytest.raises(ValueError, match=r"takes \(n, 12\) rows, got shape \(3, 4\)"):
        mapper.transform(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="same samples in the same order"):
        mapper.fit([snapshots[0], snapshots[1][:30]])
    with pytest.raises(ValueError, match="at least 3 rows of finite values"):
        mapper.fit(np.full((2, 10, 4), np.nan))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fits_and_places_on_cuda_as_on_the_cpu():
    snapshots, amount = trajectories(n=200, snapshots=3)
    mapper = ParametricMap(steps=150, device="cuda", random_state=0).fit(snapshots)
    assert mapper.device_.type == "cuda" and next(mapper.encoder_.parameters()).is_cuda
    points = mapper.transform(snapshots.reshape(-1, 12)).reshape(3, 200, 2)
    assert points.dtype == np.float32 and np.isfinite(points).all()
    drawn = np.linalg.norm(points[1:] - points[:-1], axis=2)
    assert spearmanr(drawn[0], amount).statistic > 0.8
    assert ParametricMap().fit(snapshots[:, :50]).device_.type == "cuda"  # the default where CUDA is there
