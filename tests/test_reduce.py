"""Reducers and the fit-on-last, project-every-epoch procedure (``align="last"``), with real ``Trainer.fit`` runs
on digits and real UMAP / PaCMAP / PCA. The other alignments are tested in test_align.py.

Run with ``-s`` to see the measured figures (displacement of a frozen model's points, trustworthiness).
"""

from __future__ import annotations

import json
import shutil
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
from conftest import DigitsCNN, DigitsDataModule, fit_collector
from sklearn.decomposition import PCA
from sklearn.manifold import trustworthiness
from torch import nn

from lightning_embeddings import EmbeddingRun
from lightning_embeddings import reduce as reducers
from lightning_embeddings import run_samples

LAYERS = ["features.1", "head.1"]  # what the default specs [3, "head.1"] resolve to on DigitsCNN
N_VAL = 449  # int(1797 * 0.25): the digits validation set


# ---------------------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def fit_digits(tmp_path: Path):
    """conftest's ``fit_digits``, fitting the map on the last snapshot (``align="last"``) unless told otherwise."""
    return partial(fit_collector, tmp_path, align="last")


def _fit(
    root: Path,
    model: Optional[pl.LightningModule] = None,
    datamodule: Optional[pl.LightningDataModule] = None,
    trainer_kwargs: Optional[dict] = None,
    **collector_kwargs: Any,
) -> tuple[pl.Trainer, EmbeddingRun]:
    """A quiet CPU fit of the digits CNN with ``align="last"``, usable from module-scoped fixtures."""
    trainer, collector = fit_collector(root, model, datamodule, trainer_kwargs, **{"align": "last", **collector_kwargs})
    assert trainer.state.finished, f"fit did not finish: {trainer.state}"
    return trainer, EmbeddingRun(collector.dirpath)


def _axes(frame: pd.DataFrame) -> list[str]:
    return [a for a in "xyz" if a in frame.columns]


def _points(projections: pd.DataFrame, epoch: int, ids: Optional[np.ndarray] = None) -> np.ndarray:
    """One epoch's map points, rows matched to ``ids`` (sorted sample ids when not given)."""
    rows = projections[projections["epoch"] == epoch].set_index("sample_id")
    assert rows.index.is_unique, f"epoch {epoch}: duplicate sample ids in the projections"
    return rows.loc[np.sort(rows.index.to_numpy()) if ids is None else ids, _axes(projections)].to_numpy()


def _extent(points: np.ndarray) -> float:
    return float((points.max(axis=0) - points.min(axis=0)).max())


def _copy_run(run: EmbeddingRun, dest: Path) -> EmbeddingRun:
    shutil.copytree(run.path, dest)
    return EmbeddingRun(dest)


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


class FirstTwoColumns:
    """Not a scikit-learn estimator (no get_params): fit centres the first two columns, transform applies it."""

    fitted: list["FirstTwoColumns"] = []  # every instance fitted, across copies (held: their id()s stay distinct)

    def fit(self, X: np.ndarray) -> "FirstTwoColumns":
        self.offset_ = np.asarray(X)[:, :2].mean(axis=0)
        FirstTwoColumns.fitted.append(self)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X)[:, :2] - self.offset_


# --------------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=["pca", "umap", "pacmap"])
def frozen_run(request, tmp_path_factory) -> tuple[str, EmbeddingRun]:
    """3 epochs of a digits CNN whose weights never change (lr=0), mapped by the reducer of the param."""
    pl.seed_everything(0, verbose=False)  # the same initial weights whatever ran before
    model = DigitsCNN(lr=0.0)
    stateful = [m for m in model.modules() if isinstance(m, (nn.modules.batchnorm._NormBase, nn.Dropout))]
    assert not stateful, f"the frozen model must have no BatchNorm/Dropout, found {stateful}"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, run = _fit(tmp_path_factory.mktemp(f"frozen_{request.param}"), model, trainer_kwargs={"max_epochs": 3},
                  reducer=request.param)
    changed = [k for k, v in model.state_dict().items() if not v.equal(before[k])]
    assert not changed, f"lr=0 still changed {changed}"
    return request.param, run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> EmbeddingRun:
    """5 epochs of the digits CNN (it learns), the penultimate layer mapped by UMAP at the end of fit."""
    _, run = _fit(tmp_path_factory.mktemp("trained"), trainer_kwargs={"max_epochs": 5}, layers=["head.1"],
                  reducer="umap")
    return run


@pytest.fixture(scope="module")
def unreduced_run(tmp_path_factory) -> EmbeddingRun:
    """3 short epochs, 150 samples, reducer=None: vectors only, to be reduced after the fact (copy it first)."""
    _, run = _fit(tmp_path_factory.mktemp("unreduced"), trainer_kwargs={"max_epochs": 3, "limit_train_batches": 3},
                  max_samples=150, reducer=None)
    return run


# ------------------------------------------------------------------------------------ 1. a frozen model moves no point


def test_frozen_model_moves_no_point(frozen_run):
    reducer, run = frozen_run
    assert run.epochs == [0, 1, 2]
    last = run.epochs[-1]
    figures = []
    for layer in LAYERS:
        ids_last, X_last = run.vectors(layer, last)
        assert len(ids_last) == N_VAL
        for epoch in run.epochs[:-1]:
            ids, X = run.vectors(layer, epoch)
            assert np.array_equal(ids, ids_last) and np.array_equal(X, X_last), (
                f"{layer}: epoch {epoch}'s vectors differ from epoch {last}'s although the weights are frozen"
            )

        projections = run.projections(layer)
        assert sorted(projections["epoch"].unique()) == run.epochs
        Y_last = _points(projections, last, ids_last)
        extent = _extent(Y_last)
        assert extent > 0, f"{reducer} {layer}: the map collapsed to a point"
        worst = 0.0
        for epoch in run.epochs[:-1]:
            Y = _points(projections, epoch, ids_last)
            if reducer == "pca":
                assert np.array_equal(Y, Y_last), f"pca {layer}: epoch {epoch} moved although its vectors are equal"
            worst = max(worst, float(np.median(np.linalg.norm(Y - Y_last, axis=1))) / extent)
        figures.append((layer, worst, extent))

    message = "; ".join(f"{reducer} {layer}: median displacement / extent = {r:.3e} (extent {e:.3g})"
                        for layer, r, e in figures)
    print(f"\n[frozen model] {message}")
    assert all(r < 0.01 for _, r, _ in figures), f"a frozen model's points moved by >= 1% of the map: {message}"


# --------------------------------------------------------------------------- 2. the last epoch's map keeps neighbours


def test_last_epoch_umap_map_is_trustworthy(trained_run):
    run = trained_run
    assert run.epochs == [0, 1, 2, 3, 4]
    last = run.epochs[-1]
    ids, X = run.vectors("head.1", last)
    Y = _points(run.projections("head.1"), last, ids)
    score = trustworthiness(X, Y, n_neighbors=10)
    print(f"\n[trustworthiness] head.1 UMAP map of epoch {last}, {len(ids)} samples x {X.shape[1]} dims, "
          f"n_neighbors=10: {score:.4f}")
    assert score >= 0.9, f"trustworthiness of the head.1 UMAP map is {score:.4f} < 0.9"


# ------------------------------------------------------------------------------------ 3. small runs never crash


SHORT = {"max_epochs": 2, "limit_train_batches": 2}


@pytest.mark.parametrize(
    "reducer, max_samples, n_components",
    [("umap", 3, 2), ("pacmap", 3, 2), ("pca", 3, 2), ("pacmap", 4, 3), ("umap", 4, 3)],
)
def test_too_few_samples_skips_the_layer_with_a_warning(fit_digits, reducer, max_samples, n_components):
    assert max_samples < reducers.min_samples(n_components)
    with pytest.warns(UserWarning, match="is not reduced") as record:
        trainer, collector = fit_digits(trainer_kwargs=SHORT, reducer=reducer, n_components=n_components,
                                        max_samples=max_samples)
    skipped = [str(w.message) for w in record if "is not reduced" in str(w.message)]
    assert sorted(layer for layer in LAYERS for m in skipped if repr(layer) in m) == sorted(LAYERS), (
        f"expected one warning per layer, got {skipped}"
    )
    run = EmbeddingRun(collector.dirpath)
    assert run.epochs == [0, 1]
    for layer in LAYERS:
        ids, X = run.vectors(layer, 1)
        assert len(ids) == max_samples
        with pytest.raises(FileNotFoundError, match="No projections of layer"):
            run.projections(layer)
        assert "skipped" in run.manifest["reducer"]["layers"][layer]


@pytest.mark.parametrize(
    "reducer, max_samples, n_components",
    [
        ("umap", 4, 2), ("pacmap", 4, 2), ("pca", 4, 2),  # exactly the minimum for 2-D
        ("umap", 5, 3), ("pacmap", 5, 3), ("pca", 5, 3),  # exactly the minimum for 3-D
        ("umap", 8, 2), ("pacmap", 8, 3),
        ("umap", 12, 3), ("pacmap", 12, 2),
    ],
)
def test_small_runs_are_projected(fit_digits, reducer, max_samples, n_components):
    assert max_samples >= reducers.min_samples(n_components)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer, collector = fit_digits(trainer_kwargs=SHORT, reducer=reducer, n_components=n_components,
                                        max_samples=max_samples)
    assert not [w for w in record if "is not reduced" in str(w.message)]
    _check_small_maps(EmbeddingRun(collector.dirpath), max_samples, n_components)


@pytest.mark.parametrize("reducer", ["umap", "pacmap", "pca"])
def test_tiny_validation_set(fit_digits, reducer):
    """6 validation samples in batches of 4 (the last one short); nothing limits the samples but the data."""
    datamodule = DigitsDataModule(batch_size=4, val_fraction=6.5 / 1797)
    trainer, collector = fit_digits(datamodule=datamodule, trainer_kwargs=SHORT, reducer=reducer)
    _check_small_maps(EmbeddingRun(collector.dirpath), 6, 2)


def test_tiny_validation_set_below_the_minimum(fit_digits):
    datamodule = DigitsDataModule(batch_size=2, val_fraction=3.5 / 1797)
    with pytest.warns(UserWarning, match="is not reduced"):
        trainer, collector = fit_digits(datamodule=datamodule, trainer_kwargs=SHORT, reducer="pacmap")
    run = EmbeddingRun(collector.dirpath)
    assert len(run.vectors("head.1", 1)[0]) == 3
    with pytest.raises(FileNotFoundError, match="No projections of layer"):
        run.projections("head.1")


def test_reduce_that_skips_a_layer_leaves_no_stale_map(fit_digits):
    trainer, collector = fit_digits(trainer_kwargs=SHORT, max_samples=4, reducer="pca")  # 4 >= min_samples(2)
    run = EmbeddingRun(collector.dirpath)
    assert _axes(run.projections("head.1")) == ["x", "y"]
    with pytest.warns(UserWarning, match="is not reduced"):
        run.reduce(reducer="pca", n_components=3, align="last", progress=False)  # 4 < min_samples(3)
    assert "skipped" in _manifest(run.path)["reducer"]["layers"]["head.1"]
    with pytest.raises(FileNotFoundError, match="No projections of layer"):
        EmbeddingRun(run.path).projections("head.1")


def _check_small_maps(run: EmbeddingRun, n: int, n_components: int) -> None:
    assert run.epochs == [0, 1]
    for layer in LAYERS:
        projections = run.projections(layer)
        assert _axes(projections) == list("xyz"[:n_components])
        assert projections.groupby("epoch").size().to_dict() == {0: n, 1: n}
        assert set(projections["sample_id"]) == set(run.vectors(layer, 1)[0])
        assert np.isfinite(projections[_axes(projections)].to_numpy()).all()


# ------------------------------------------------------------------------------- 4. a user's estimator via reducer=


def test_user_sklearn_estimator_is_copied_not_fitted(fit_digits):
    user = PCA(n_components=2)
    trainer, collector = fit_digits(trainer_kwargs=SHORT, max_samples=100, reducer=user)
    assert collector.reducer is user
    assert not hasattr(user, "components_"), "the user's own PCA was fitted; a copy should be"
    assert user.get_params() == PCA(n_components=2).get_params()
    run = EmbeddingRun(collector.dirpath)
    record = _manifest(run.path)["reducer"]
    for layer in LAYERS:
        assert record["layers"][layer]["class"] == "sklearn.decomposition._pca.PCA"
        assert record["layers"][layer]["params"]["n_components"] == 2
        ids, X_last = run.vectors(layer, 1)
        expected = PCA(n_components=2).fit(X_last)
        projections = run.projections(layer)
        for epoch in run.epochs:
            ids, X = run.vectors(layer, epoch)
            np.testing.assert_allclose(_points(projections, epoch, ids), expected.transform(X), rtol=1e-4, atol=1e-4)


def test_user_object_with_only_fit_and_transform(fit_digits):
    FirstTwoColumns.fitted.clear()
    user = FirstTwoColumns()
    trainer, collector = fit_digits(trainer_kwargs=SHORT, max_samples=100, reducer=user)
    assert not hasattr(user, "offset_"), "the user's own object was fitted; a copy should be"
    assert len(FirstTwoColumns.fitted) == len(LAYERS), f"expected one fit per layer, got {FirstTwoColumns.fitted}"
    assert len({id(f) for f in FirstTwoColumns.fitted}) == len(LAYERS)
    assert all(f is not user for f in FirstTwoColumns.fitted)
    run = EmbeddingRun(collector.dirpath)
    record = _manifest(run.path)["reducer"]
    for layer in LAYERS:
        assert record["layers"][layer]["class"].endswith(".FirstTwoColumns")
        _, X_last = run.vectors(layer, run.epochs[-1])
        _, X_first = run.vectors(layer, run.epochs[0])
        assert not np.array_equal(X_first[:, :2], X_last[:, :2]), "the model did not change: nothing is checked"
        offset = X_last[:, :2].mean(axis=0)  # fitted on the LAST epoch
        projections = run.projections(layer)
        for epoch in run.epochs:
            ids, X = run.vectors(layer, epoch)
            np.testing.assert_allclose(_points(projections, epoch, ids), X[:, :2] - offset, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- 5. EmbeddingRun.reduce after the fact


def test_reduce_after_the_fact_pca_then_pacmap_3d(unreduced_run, tmp_path):
    run = _copy_run(unreduced_run, tmp_path / "run")
    assert run.manifest["reducer"] is None
    for layer in LAYERS:
        with pytest.raises(FileNotFoundError, match="No projections of layer"):
            run.projections(layer)

    maps = run.reduce(reducer="pca", align="last", progress=False)
    assert sorted(maps) == sorted(LAYERS)
    record = _manifest(run.path)["reducer"]
    assert (record["name"], record["n_components"], record["fitted_on"]["epoch"]) == ("pca", 2, 2)
    for layer in LAYERS:
        assert (run.path / "projections" / f"{layer}.parquet").is_file()
        projections = EmbeddingRun(run.path).projections(layer)
        pd.testing.assert_frame_equal(projections, maps[layer], check_dtype=False)
        assert list(projections.columns) == ["sample_id", "split", "stage", "epoch", "step", "dataloader_idx", "x", "y", "label", "prediction"]
        assert projections.groupby("epoch").size().to_dict() == {0: 150, 1: 150, 2: 150}
        assert record["layers"][layer]["class"].endswith(".PCA")
        _, X_last = run.vectors(layer, 2)
        expected = PCA(n_components=2, random_state=0).fit(X_last)
        for epoch in run.epochs:
            ids, X = run.vectors(layer, epoch)
            np.testing.assert_allclose(_points(projections, epoch, ids), expected.transform(X), rtol=1e-4, atol=1e-4)

    maps = run.reduce(reducer="pacmap", n_components=3, align="last", progress=False)
    record = _manifest(run.path)["reducer"]
    assert (record["name"], record["n_components"], record["fitted_on"]["epoch"]) == ("pacmap", 3, 2)
    for layer in LAYERS:
        assert record["layers"][layer]["class"].endswith(".PaCMAP")
        projections = EmbeddingRun(run.path).projections(layer)
        assert _axes(projections) == ["x", "y", "z"]
        assert projections.groupby("epoch").size().to_dict() == {0: 150, 1: 150, 2: 150}
        assert np.isfinite(projections[["x", "y", "z"]].to_numpy()).all()
        np.testing.assert_array_equal(projections[["x", "y", "z"]].to_numpy(), maps[layer][["x", "y", "z"]].to_numpy())


def test_reduce_same_seed_gives_identical_umap_maps(unreduced_run, tmp_path):
    run = _copy_run(unreduced_run, tmp_path / "run")
    first = run.reduce(reducer="umap", seed=0, layers=["head.1"], align="last", progress=False, n_neighbors=10)["head.1"]
    record = _manifest(run.path)["reducer"]
    assert record["kwargs"] == {"n_neighbors": 10}
    assert record["layers"]["head.1"]["params"]["n_neighbors"] == 10
    assert record["layers"]["head.1"]["params"]["random_state"] == 0
    second = run.reduce(reducer="umap", seed=0, layers=["head.1"], align="last", progress=False, n_neighbors=10)["head.1"]
    np.testing.assert_array_equal(first[["x", "y"]].to_numpy(), second[["x", "y"]].to_numpy())
    np.testing.assert_array_equal(first[["x", "y"]].to_numpy(), run.projections("head.1")[["x", "y"]].to_numpy())
    other = run.reduce(reducer="umap", seed=1, layers=["head.1"], align="last", progress=False, n_neighbors=10)["head.1"]
    assert not np.array_equal(first[["x", "y"]].to_numpy(), other[["x", "y"]].to_numpy()), "the seed is ignored"


# ------------------------------------------------------------- 6. why every epoch, the last included, goes through transform


def test_umap_projection_of_the_fitted_epoch_is_the_fitted_map(unreduced_run):
    _, X_last = unreduced_run.vectors("head.1", 2)
    _, X_first = unreduced_run.vectors("head.1", 0)
    estimator = reducers.make_reducer("umap", 2, seed=0, n_samples=len(X_last)).fit(X_last)
    first, last = estimator.transform(X_first), estimator.transform(X_last.copy())
    np.testing.assert_array_equal(last, estimator.embedding_)
    np.testing.assert_array_equal(last, estimator.transform(X_last.copy()))  # transforming it twice agrees
    assert first.shape == last.shape and not np.array_equal(first, last)


def test_pacmap_identical_epochs_land_on_identical_points(unreduced_run):
    _, X_last = unreduced_run.vectors("head.1", 2)
    _, X_first = unreduced_run.vectors("head.1", 0)
    estimator = reducers.make_reducer("pacmap", 2, seed=0, n_samples=len(X_last))
    estimator.fit(X_last)
    first, last, again = (estimator.transform(X) for X in (X_first, X_last.copy(), X_last.copy()))
    np.testing.assert_array_equal(last, again)
    assert not np.array_equal(first, last)


def test_callback_umap_map_of_the_last_epoch_is_the_fitted_map(trained_run):
    """The callback's last-epoch UMAP points are the ``embedding_`` of UMAP fitted on that epoch with the same seed."""
    ids, X_last = trained_run.vectors("head.1", trained_run.epochs[-1])
    estimator = reducers.make_reducer("umap", 2, seed=0, n_samples=len(X_last)).fit(X_last)
    np.testing.assert_array_equal(_points(trained_run.projections("head.1"), trained_run.epochs[-1], ids),
                                  estimator.embedding_)


@pytest.mark.parametrize("frozen_run", ["umap", "pacmap"], indirect=True)
def test_frozen_epochs_are_exactly_equal_points(frozen_run):
    """Equal vectors in two epochs give equal points: with PaCMAP only because the last epoch too goes through
    ``transform`` (its ``embedding_`` differs from ``transform`` of the same data)."""
    reducer, run = frozen_run
    for layer in LAYERS:
        projections = run.projections(layer)
        ids, _ = run.vectors(layer, run.epochs[-1])
        last = _points(projections, run.epochs[-1], ids)
        for epoch in run.epochs[:-1]:
            np.testing.assert_array_equal(_points(projections, epoch, ids), last, err_msg=f"{reducer} {layer} {epoch}")


# ------------------------------------------------- 7. at scale: fit on a sample, place every row in bounded batches


class Recording:
    """PCA that records what it is fitted on and the size of every ``transform`` batch (across copies)."""

    fitted_on: list[np.ndarray] = []
    batches: list[int] = []

    def fit(self, X: np.ndarray) -> "Recording":
        Recording.fitted_on.append(np.array(X))
        self.pca_ = PCA(n_components=2, random_state=0).fit(X)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        Recording.batches.append(len(X))
        return self.pca_.transform(X)


def test_quotas_and_stratified_rows_keep_every_group_share():
    assert reducers.quotas(np.array([600, 300, 100]), 100).tolist() == [60, 30, 10]
    assert reducers.quotas(np.array([5, 5, 5]), 7).tolist() == [3, 2, 2]
    assert reducers.quotas(np.array([5, 1]), 50).tolist() == [5, 1]  # never more than a group holds
    groups = np.repeat([2, 0, 1], [600, 300, 100])
    rows = reducers.choose_rows(groups, 100, seed=0)
    assert len(rows) == len(set(rows.tolist())) == 100 and np.all(np.diff(rows) > 0)
    assert np.bincount(groups[rows]).tolist() == [30, 10, 60]
    np.testing.assert_array_equal(rows, reducers.choose_rows(groups, 100, seed=0))
    assert not np.array_equal(rows, reducers.choose_rows(groups, 100, seed=1)), "the seed is ignored"
    np.testing.assert_array_equal(reducers.choose_rows(groups, None, seed=0), np.arange(1000))
    np.testing.assert_array_equal(reducers.choose_rows(groups, 5000, seed=0), np.arange(1000))


def test_fit_samples_fits_on_a_stratified_sample_and_places_every_row_in_batches(unreduced_run, tmp_path, monkeypatch):
    run = _copy_run(unreduced_run, tmp_path / "run")
    monkeypatch.setattr(reducers, "TRANSFORM_ROWS", 40)
    Recording.fitted_on.clear(), Recording.batches.clear()
    maps = run.reduce(reducer=Recording(), layers=["head.1"], fit_samples=60, align="joint", progress=False)

    (fit_on,) = Recording.fitted_on
    assert fit_on.shape == (60, 64)
    assert _manifest(run.path)["reducer"]["layers"]["head.1"]["samples"] == 60
    assert _manifest(run.path)["reducer"]["fit_samples"] == 60
    # 20 rows of each epoch's 150, each label keeping its share of them
    table = run.table(layers=["head.1"])
    stored = {np.asarray(v, dtype=np.float32).tobytes(): (e, label) for e, label, v in
              zip(table["epoch"], table["label"], table["head.1"])}
    drawn = pd.DataFrame([stored[row.tobytes()] for row in fit_on], columns=["epoch", "label"])
    assert drawn.groupby("epoch").size().tolist() == [20, 20, 20]
    shares = table[table["epoch"] == 0]["label"].value_counts(normalize=True)
    drawn_shares = drawn[drawn["epoch"] == 0]["label"].value_counts(normalize=True)
    assert (drawn_shares.reindex(shares.index, fill_value=0) - shares).abs().max() <= 1 / 20 + 1e-9

    # every row placed, by transform batches of at most 40 rows; the same points as one transform of all of them
    assert max(Recording.batches) == 40 and sum(Recording.batches) == 3 * 150
    projections = maps["head.1"]
    assert projections.groupby("epoch").size().tolist() == [150, 150, 150]
    expected = PCA(n_components=2, random_state=0).fit(fit_on)
    for epoch in run.epochs:
        ids, X = run.vectors("head.1", epoch)
        np.testing.assert_allclose(_points(projections, epoch, ids), expected.transform(X), rtol=1e-4, atol=1e-4)


def test_umap_placing_many_snapshots_finds_neighbours_with_an_index(unreduced_run, tmp_path, monkeypatch):
    """Issue 21: below 4,096 fitted samples umap-learn places a new row by measuring its distance to every fitted
    row one pair at a time in Python (0.2-0.8 s per 449-row snapshot of digits); a UMAP that will measure more than
    INDEX_ABOVE_PAIRS pairs uses its search index instead, unless told otherwise."""
    def indexed(placing: int, **kwargs: Any) -> bool:
        return reducers.make_reducer("umap", 2, 0, 1000, placing, **kwargs).force_approximation_algorithm

    enough = reducers.INDEX_ABOVE_PAIRS // 1000
    assert indexed(enough + 1) and not indexed(enough) and not indexed(0)
    assert not indexed(10 * enough, force_approximation_algorithm=False)
    placing = []
    made = reducers.make_reducer
    monkeypatch.setattr(reducers, "make_reducer", lambda *args, **kwargs: placing.append(args[4]) or made(*args, **kwargs))
    _copy_run(unreduced_run, tmp_path / "run").reduce(reducer="pca", layers=["head.1"], progress=False)
    assert placing == [3 * 150]  # a reduce says how many rows the map will place: 3 snapshots of 150
    _copy_run(unreduced_run, tmp_path / "joint").reduce(reducer="pca", layers=["head.1"], align="joint", progress=False)
    assert placing[-1] == 3 * 150


def test_fit_samples_none_fits_on_every_row_and_bad_values_are_refused(unreduced_run, tmp_path):
    run = _copy_run(unreduced_run, tmp_path / "run")
    run.reduce(reducer="pca", layers=["head.1"], fit_samples=None, align="joint", progress=False)
    assert _manifest(run.path)["reducer"]["layers"]["head.1"]["samples"] == 3 * 150
    run.reduce(reducer="pca", layers=["head.1"], align="last", fit_samples=None, progress=False)
    assert _manifest(run.path)["reducer"]["layers"]["head.1"]["samples"] == 150
    with pytest.raises(ValueError, match=r"fit_samples must be None or an int >= 5 for a 3-D map, got 2\."):
        run.reduce(reducer="pca", n_components=3, fit_samples=2)
    with pytest.raises(ValueError, match=r"fit_samples must be None or an int >= 4 for a 2-D map, got 0\."):
        from lightning_embeddings import EmbeddingCollector

        EmbeddingCollector(layers=[1], fit_samples=0)


def test_aligned_refuses_snapshots_larger_than_fit_samples_before_writing_anything(unreduced_run, tmp_path):
    run = _copy_run(unreduced_run, tmp_path / "run")
    run.reduce(reducer="pca", progress=False)
    before = {p.name: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"align='aligned' fits every sample .* snapshots of 150 samples, more than "
                                         r"fit_samples=100\. Use align='joint'"):
        run.reduce(reducer="umap", align="aligned", fit_samples=100, progress=False)
    assert {p.name: p.read_bytes() for p in run.path.rglob("*") if p.is_file()} == before


def test_maps_are_read_when_looked_up_and_the_long_file_holds_layers_of_any_dimension(unreduced_run, tmp_path):
    run = _copy_run(unreduced_run, tmp_path / "run")
    maps = run.reduce(reducer="pca", n_components=3, layers=["features.1"], progress=False)
    assert list(maps) == ["features.1"] and len(maps) == 1 and "head.1" not in maps
    with pytest.raises(KeyError):
        maps["head.1"]
    pd.testing.assert_frame_equal(maps["features.1"], run.projections("features.1"))
    run.reduce(reducer="pca", n_components=2, layers=["head.1"], progress=False)
    long = pd.read_parquet(run.path / "projections.parquet")
    assert list(long.columns) == ["layer", "sample_id", "split", "stage", "epoch", "step", "dataloader_idx", "x", "y", "z",
                                  "label", "prediction", "correct"]
    assert long.groupby("layer").size().to_dict() == {"features.1": 450, "head.1": 450}
    assert long[long["layer"] == "features.1"]["z"].notna().all() and long[long["layer"] == "head.1"]["z"].isna().all()
    assert (long["correct"] == (long["label"] == long["prediction"])).all()


def test_vectors_read_in_batches_equal_the_stored_rows(unreduced_run, monkeypatch):
    monkeypatch.setattr(reducers, "TRANSFORM_ROWS", 7)  # many batches, the last one short
    stored = pd.read_parquet(unreduced_run.path / "vectors", columns=["epoch", "sample_id", "features.1"])
    for epoch in unreduced_run.epochs:
        ids, X = unreduced_run.vectors("features.1", epoch)
        rows = stored[stored["epoch"] == epoch].set_index("sample_id").loc[ids, "features.1"]
        np.testing.assert_array_equal(X, np.stack(rows.to_numpy()))
        assert X.dtype == np.float32 and X.flags["C_CONTIGUOUS"]


def test_rows_read_in_any_order_come_back_in_that_order(unreduced_run):
    rows = unreduced_run.rows(unreduced_run.snapshots[0])
    everything = unreduced_run.read(rows, "head.1", np.arange(150))
    for positions in ([5, 7, 6, 8], [3, 2, 1, 0], [0, 149, 1, 148], list(range(10, 20))):
        np.testing.assert_array_equal(unreduced_run.read(rows, "head.1", np.array(positions)), everything[positions])


@pytest.mark.parametrize(("arguments", "error"), [
    ({"n_components": 4}, r"n_components must be 2 or 3, got 4"),
    ({"align": "aligned", "reducer": "pca"}, r"align='aligned' uses umap.AlignedUMAP"),
    ({"fit_samples": 2}, r"fit_samples must be None or an int >= 4"),
    ({"kwargs": {"n_componets": 3}}, r"'n_componets': did you mean 'n_components'"),
])
def test_check_map_refuses_arguments_that_can_never_work(arguments, error):
    given = {"reducer": "pca", "n_components": 2, **arguments}
    with pytest.raises(ValueError, match=error):
        reducers.check_map(**given)
    reducers.check_map("pca", 3, seed=1, fit_samples=None, kwargs={"svd_solver": "full"})  # all fine: no error


def test_reduce_refuses_a_bad_n_components_before_writing(fit_digits):
    _, collector = fit_digits(reducer="pca", plots=False, trainer_kwargs={"max_epochs": 1})
    run = EmbeddingRun(collector.dirpath)
    before = {p: p.stat().st_mtime_ns for p in run.path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=r"n_components must be 2 or 3, got 1"):
        run.reduce(reducer="pca", n_components=1, progress=False)
    assert {p: p.stat().st_mtime_ns for p in run.path.rglob("*") if p.is_file()} == before


def test_a_reduce_changes_the_maps_not_the_samples_dynamics(fit_digits, monkeypatch):
    """Issue 23: every reduce recomputed samples.parquet (k-NN in every snapshot's vectors, which no map changes)."""
    _, collector = fit_digits(reducer="pca", plots=False, trainer_kwargs={"max_epochs": 2})
    run = EmbeddingRun(collector.dirpath)
    samples = run.path / "samples.parquet"
    before, written = run.samples("head.1"), samples.stat().st_mtime_ns
    computed = []
    monkeypatch.setattr(run_samples, "compute", lambda *args: computed.append(args) or pytest.fail("recomputed"))
    maps = run.reduce(reducer="pca", n_components=3, progress=False)
    assert computed == [] and samples.stat().st_mtime_ns == written
    assert [path.name for path in maps.written] == ["projections.parquet", "manifest.json"]  # what the CLI lists
    pd.testing.assert_frame_equal(EmbeddingRun(run.path).samples("head.1"), before)


def test_samples_made_from_other_snapshots_are_computed_again(fit_digits, monkeypatch):
    _, collector = fit_digits(reducer="pca", plots=False, trainer_kwargs={"max_epochs": 3})
    run = EmbeddingRun(collector.dirpath)
    whole = run.samples("head.1")
    shorter = {**run.manifest, "snapshots": run.manifest["snapshots"][:2]}  # as if the fit had stopped after two
    (run.path / "manifest.json").write_text(json.dumps(shorter))
    run = EmbeddingRun(run.path)
    stale = run.samples("head.1")  # samples.parquet follows three snapshots: not read, computed from the two
    assert not stale.equals(whole) and stale["knn_agreement_last"].notna().all()
    maps = run.reduce(reducer="pca", progress=False)  # computes samples.parquet again, from the two snapshots
    assert [path.name for path in maps.written] == ["projections.parquet", "samples.parquet", "manifest.json"]
    monkeypatch.setattr(run_samples, "compute", lambda *args: pytest.fail("dynamics recomputed"))
    pd.testing.assert_frame_equal(EmbeddingRun(run.path).samples("head.1"), stale)
