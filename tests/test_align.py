"""How faithful each snapshot's map is, and the three ways to share one space across snapshots, on clusters
that form over 5 epochs (examples/forming.py's ``FormingClusters``, 200 samples) and on digits."""

import numpy as np
import pandas as pd
import pytest

from conftest import make_trainer
from lightning_embeddings import EmbeddingCollector, EmbeddingRun
from forming import FormingClusters


@pytest.fixture(scope="module")
def forming(tmp_path_factory):
    root = tmp_path_factory.mktemp("forming")
    collector = EmbeddingCollector(layers=["forming"], reducer=None, dirpath=root / "run")
    make_trainer(root, [collector], max_epochs=5, num_sanity_val_steps=0).fit(FormingClusters(n=200))
    return EmbeddingRun(root / "run")


def _trust(run, layer="forming"):
    return list(EmbeddingRun(run.path).manifest["reducer"]["layers"][layer]["trustworthiness"].values())


def test_each_snapshot_map_is_measured_and_an_unfaithful_one_is_said(forming):
    with pytest.warns(UserWarning, match=r"map of layer 'forming' is not faithful at epoch_0000-step_0000002.*"
                                         r"align='joint' fits on every snapshot of fit together.*"
                                         r"lightning-embeddings reduce .* --align joint"):
        forming.reduce(reducer="pca", progress=False)
    trust = _trust(forming)
    assert len(trust) == 5 and trust[0] < 0.8 < trust[-1]
    assert trust == sorted(trust[:3]) + trust[3:], f"clusters form over the first epochs: {trust}"


def test_joint_keeps_early_structure_better_than_last(forming):
    forming.reduce(reducer="pacmap", align="last", progress=False)
    last = _trust(forming)
    forming.reduce(reducer="pacmap", align="joint", progress=False)
    joint = _trust(forming)
    assert EmbeddingRun(forming.path).manifest["reducer"]["align"] == "joint"
    assert joint[1] > last[1] + 0.05, f"last {last}, joint {joint}"
    assert abs(joint[-1] - last[-1]) < 0.05


@pytest.mark.slow  # numba compiles AlignedUMAP: about 17 s
def test_aligned_umap_gives_each_snapshot_its_own_map(forming):
    maps = forming.reduce(reducer="umap", align="aligned", progress=False)["forming"]
    trust = _trust(forming)
    assert trust[1] > 0.8 and trust[-1] > 0.9, trust
    assert maps.groupby("epoch").size().tolist() == [200] * 5
    assert np.isfinite(maps[["x", "y"]].to_numpy()).all()
    assert EmbeddingRun(forming.path).manifest["reducer"]["layers"]["forming"]["class"] == "umap.aligned_umap.AlignedUMAP"


def test_align_arguments_are_checked():
    with pytest.raises(ValueError, match=r"Unknown align 'first'\. Choose one of 'last', 'joint', 'aligned'"):
        EmbeddingCollector(layers=["head.1"], align="first")
    with pytest.raises(ValueError, match=r"align='aligned' uses umap\.AlignedUMAP: it needs reducer='umap', got 'pca'"):
        EmbeddingCollector(layers=["head.1"], align="aligned", reducer="pca")


def test_long_projections_file_holds_every_layer(fit_digits):
    _, collector = fit_digits()
    frame = pd.read_parquet(collector.dirpath / "projections.parquet")
    assert list(frame.columns) == ["layer", "sample_id", "split", "stage", "epoch", "step", "dataloader_idx", "x", "y", "label",
                                   "prediction", "correct"]
    assert frame.groupby("layer").size().to_dict() == {"features.1": 2 * 449, "head.1": 2 * 449}
    assert (frame["correct"] == (frame["label"] == frame["prediction"])).all()
    assert 0.3 < frame.loc[frame.epoch == 1, "correct"].mean() <= 1.0


@pytest.mark.parametrize("align", ["joint", "aligned"])
def test_too_few_samples_are_counted_per_snapshot_not_over_all_of_them(fit_digits, align):
    with pytest.warns(UserWarning, match=r"layer 'head\.1' is not reduced: 3 samples per snapshot; a map needs at least 4"):
        _, collector = fit_digits(layers=["head.1"], reducer="umap", align=align, max_samples=3,
                                  trainer_kwargs={"max_epochs": 3, "limit_train_batches": 1})
    assert "skipped" in EmbeddingRun(collector.dirpath).manifest["reducer"]["layers"]["head.1"]
