"""ParametricMap on arrays: hand-made trajectories with a known answer, a frozen model, missing rows, seeding."""

import shutil
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import DigitsDataModule, fit_collector
from scipy.stats import spearmanr
from sklearn.base import clone

from lightning_embeddings import EmbeddingCollector, EmbeddingRun, ParametricMap, parametric
from lightning_embeddings.cli import main
from lightning_embeddings.faithfulness import temporal_preservation
from lightning_embeddings.layout import snapshot_files
from lightning_embeddings.store import column_vectors, vectors_array


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


def test_read_only_rows_are_placed_without_a_warning(moving):
    """Issue 21: a run's rows come as read-only views of its files; torch warned on each CLI reduce that it does not
    support non-writable arrays."""
    snapshots, _, mapper, points = moving
    rows = snapshots[-1].copy()
    rows.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        placed = mapper.transform(rows)
    np.testing.assert_array_equal(placed, points[-1])


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
    assert ParametricMap(steps=np.int64(7), random_state=np.int64(1)).steps == 7  # numpy ints are ints
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


# ------------------------------------------------------------------------------------------------------- in a run


@pytest.fixture(scope="module")
def unreduced(tmp_path_factory) -> EmbeddingRun:
    """3 short epochs of the digits CNN (100 validation samples) and a ``trainer.test`` snapshot, reducer=None."""
    trainer, collector = fit_collector(tmp_path_factory.mktemp("parametric"), reducer=None, max_samples=100,
                                       stages=("fit", "test"),
                                       trainer_kwargs={"max_epochs": 3, "limit_train_batches": 4})
    datamodule = DigitsDataModule()
    datamodule.test_dataloader = datamodule.val_dataloader
    trainer.test(trainer.lightning_module, datamodule, verbose=False)
    return EmbeddingRun(collector.dirpath)


@pytest.fixture
def run(unreduced, tmp_path) -> EmbeddingRun:
    return EmbeddingRun(shutil.copytree(unreduced.path, tmp_path / "embeddings"))


def test_a_run_reduced_with_the_parametric_map_places_every_snapshot_with_faithful_paths(run, monkeypatch):
    fitted = []
    monkeypatch.setattr(ParametricMap, "fit", lambda self, x, y=None: fitted.append(x.shape) or FIT(self, x))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        maps = run.reduce(reducer="parametric", fit_samples=60, progress=False, steps=150)
    assert fitted == [(3, 60, 16), (3, 60, 64)]  # whole trajectories of 60 samples in the 3 fit snapshots
    stages = [s["stage"] for s in run.snapshots]
    assert stages == ["fit", "fit", "fit", "test"]
    for column in ("features.1", "head.1"):
        frame = maps[column]
        assert frame.groupby("stage").size().to_dict() == {"fit": 300, "test": 100}
        assert np.isfinite(frame[["x", "y"]].to_numpy()).all()
        layer = run.manifest["reducer"]["layers"][column]
        assert layer["class"] == "lightning_embeddings.parametric.ParametricMap" and layer["samples"] == 60
        assert layer["params"]["steps"] == 150 and layer["params"]["random_state"] == 0
        assert min(layer["temporal_preservation"].values()) > 0.7  # above the warning line (0.5)
    assert run.manifest["reducer"]["name"] == "parametric"
    assert run.manifest["reducer"]["align"] == "joint"  # trained on every fit snapshot together, whatever align says
    assert not [w for w in record if "drawn paths are not faithful" in str(w.message)]


FIT = ParametricMap.fit


def test_the_same_seed_gives_the_same_map_in_a_run(run, tmp_path):
    other = EmbeddingRun(shutil.copytree(run.path, tmp_path / "other"))
    first = run.reduce(reducer="parametric", layers=["head.1"], progress=False, steps=20)["head.1"]
    again = other.reduce(reducer="parametric", layers=["head.1"], progress=False, steps=20)["head.1"]
    pd.testing.assert_frame_equal(first, again)
    reseeded = other.reduce(reducer="parametric", layers=["head.1"], seed=1, progress=False, steps=20)["head.1"]
    assert not np.allclose(first[["x", "y"]], reseeded[["x", "y"]])


def test_missing_and_non_finite_rows_are_left_out_as_with_every_reducer(run):
    (path,) = snapshot_files(run.path, run.snapshots[1]["name"])
    table = pq.read_table(path)
    vectors = column_vectors(table.column("head.1").combine_chunks()).copy()
    vectors[:5] = np.nan
    null = np.zeros(len(vectors), dtype=bool)
    null[10:13] = True
    values = pa.FixedSizeListArray.from_arrays(vectors_array(vectors).values, vectors.shape[1], mask=pa.array(null))
    pq.write_table(table.set_column(table.schema.get_field_index("head.1"), table.schema.field("head.1"), values), path)
    with pytest.warns(UserWarning, match="left out of its map"):
        maps = run.reduce(reducer="parametric", layers=["head.1"], progress=False, steps=30)
    layer = run.manifest["reducer"]["layers"]["head.1"]
    assert layer["left_out"] == {run.snapshots[1]["name"]: 5} and layer["missing"] == {run.snapshots[1]["name"]: 3}
    sizes = maps["head.1"].groupby(["stage", "epoch"]).size().to_dict()
    assert sizes == {("fit", 0): 100, ("fit", 1): 92, ("fit", 2): 100, ("test", 3): 100}


def test_the_collector_checks_parametric_arguments_before_training_and_maps_at_the_end_of_fit(tmp_path):
    with pytest.raises(ValueError, match="'stepz': did you mean 'steps'"):
        EmbeddingCollector(layers=["head.1"], reducer="parametric", reducer_kwargs={"stepz": 10})
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        EmbeddingCollector(layers=["head.1"], reducer="parametric", reducer_kwargs={"steps": 0})
    with pytest.raises(ValueError, match="align='aligned' uses umap.AlignedUMAP"):
        EmbeddingCollector(layers=["head.1"], reducer="parametric", align="aligned")
    _, collector = fit_collector(tmp_path, layers=["head.1"], reducer="parametric", reducer_kwargs={"steps": 40},
                                 max_samples=80, trainer_kwargs={"max_epochs": 2, "limit_train_batches": 2})
    run = EmbeddingRun(collector.dirpath)
    assert run.manifest["reducer"]["name"] == "parametric" and run.manifest["reducer"]["kwargs"] == {"steps": 40}
    assert run.projections("head.1").groupby("epoch").size().to_dict() == {0: 80, 1: 80}


def test_cli_reduce_with_the_parametric_map_and_info_say_what_it_learnt_from(run, capsys):
    assert main(["reduce", str(run.path), "--reducer", "parametric", "--param", "steps=30", "--layers", "head.1"]) == 0
    out = capsys.readouterr().out
    assert "reduced with parametric, 2-D" in out
    assert run.path.joinpath("projections", "head.1.parquet").is_file()
    assert EmbeddingRun(run.path).manifest["reducer"]["kwargs"] == {"steps": 30}
    assert main(["info", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "reducer: parametric, 2-D, seed 0, align 'joint'" in out and "trained on every fit snapshot" in out
