"""Every shape of validation loop: several validations per epoch, several dataloaders, validate/test after fit,
compiled models."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from torch.utils.data import DataLoader, Subset

from conftest import DigitsCNN, DigitsDataModule, make_trainer
from lightning_embeddings import EmbeddingCollector, EmbeddingRun


def _forward(model, x, layer="head.1"):
    """A fresh forward pass's output of ``layer``."""
    out = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, a, o: out.update(v=o.clone()))
    model.eval()
    with torch.no_grad():
        model(x)
    handle.remove()
    return out["v"].numpy()


def test_several_validations_per_epoch_are_separate_snapshots(fit_digits):
    _, collector = fit_digits(trainer_kwargs={"val_check_interval": 0.5})
    run = EmbeddingRun(collector.dirpath)
    assert [(s["epoch"], s["step"]) for s in run.snapshots] == [(0, 11), (0, 22), (1, 33), (1, 44)]
    assert run.epochs == [0, 1]
    files = sorted(p.name for p in (collector.dirpath / "vectors").iterdir())
    assert files == [f"epoch_000{e}-step_00000{s}.parquet" for e, s in [(0, 11), (0, 22), (1, 33), (1, 44)]]
    _, mid = run.vectors("head.1", epoch=0, step=11)
    _, end = run.vectors("head.1", epoch=0)
    assert np.array_equal(end, run.vectors("head.1", epoch=0, step=22)[1]) and not np.array_equal(mid, end)
    maps = run.projections("head.1")
    assert maps.groupby(["epoch", "step"], sort=False).size().to_dict() == {
        (0, 11): 449, (0, 22): 449, (1, 33): 449, (1, 44): 449
    }
    assert maps["step"].is_monotonic_increasing


class TwoLoaders(DigitsDataModule):
    """The validation set, and a second loader over its first 100 samples in reverse order."""

    def val_dataloader(self):
        reverse = Subset(self.val_set, list(range(99, -1, -1)))
        return [DataLoader(self.val_set, batch_size=64), DataLoader(reverse, batch_size=30)]


def test_several_dataloaders_share_one_map(fit_digits):
    datamodule = TwoLoaders()
    trainer, collector = fit_digits(datamodule=datamodule, align="joint")
    run = EmbeddingRun(collector.dirpath)
    ids_a, a = run.vectors("head.1", 1, dataloader_idx=0)
    ids_b, b = run.vectors("head.1", 1, dataloader_idx=1)
    assert ids_a.tolist() == list(range(449)) and ids_b.tolist() == list(range(100))
    # sample_id is the index in each loader's own dataset: loader 1 visits the first 100 samples backwards
    np.testing.assert_allclose(b, a[99::-1], rtol=1e-5, atol=1e-6)
    table = run.table(epochs=[1])
    assert table.groupby("dataloader_idx").size().to_dict() == {0: 449, 1: 100}
    # the map is fitted on every loader's rows of every fit snapshot together (align="joint")
    every = np.concatenate([run.vectors("head.1", epoch)[1] for epoch in run.epochs])
    expected = PCA(n_components=2, random_state=0).fit(every).transform(b)
    maps = run.projections("head.1")
    last_b = maps[(maps.epoch == 1) & (maps.dataloader_idx == 1)].sort_values("sample_id")
    np.testing.assert_allclose(last_b[["x", "y"]].to_numpy(), expected, rtol=1e-4, atol=1e-4)


def test_validate_and_test_after_fit_land_in_the_fit_run_and_map(fit_digits):
    datamodule = DigitsDataModule()
    trainer, collector = fit_digits(datamodule=datamodule, stages=("fit", "validate", "test"), align="joint")
    datamodule.test_dataloader = lambda: DataLoader(Subset(datamodule.val_set, range(120)), batch_size=50)
    trainer.validate(trainer.lightning_module, datamodule=datamodule)
    trainer.test(trainer.lightning_module, datamodule=datamodule, verbose=False)
    run = EmbeddingRun(collector.dirpath)
    assert [(s["stage"], s["epoch"], s["step"]) for s in run.snapshots] == [
        ("fit", 0, 22), ("fit", 1, 44), ("validate", 2, 44), ("test", 2, 44)
    ]
    # trainer.validate runs under inference_mode: the same values as the last validation during fit
    np.testing.assert_array_equal(run.vectors("head.1", stage="validate")[1], run.vectors("head.1", 1)[1])
    ids, test_vectors = run.vectors("head.1", stage="test")
    assert ids.tolist() == list(range(120))
    np.testing.assert_allclose(test_vectors, _forward(trainer.lightning_module, datamodule.val_set.tensors[0][:120]),
                               rtol=1e-5, atol=1e-6)
    # the test snapshot is placed in the fit's map: the reducer is fitted on the fit snapshots only
    maps = run.projections("head.1")
    assert maps.groupby("stage", sort=False).size().to_dict() == {"fit": 898, "validate": 449, "test": 120}
    pca = PCA(n_components=2, random_state=0).fit(np.concatenate([run.vectors("head.1", e)[1] for e in run.epochs]))
    test_points = maps[maps.stage == "test"].sort_values("sample_id")[["x", "y"]].to_numpy()
    np.testing.assert_allclose(test_points, pca.transform(test_vectors), rtol=1e-4, atol=1e-4)
    assert run.manifest["reducer"]["fitted_on"]["stage"] == "fit"


def test_a_test_only_collector_adds_to_an_existing_run_of_the_same_layers(fit_digits, tmp_path):
    datamodule = DigitsDataModule()
    trainer, collector = fit_digits(datamodule=datamodule)
    datamodule.test_dataloader = datamodule.val_dataloader
    tester = EmbeddingCollector(layers=[3, "head.1"], reducer="pca", dirpath=collector.dirpath, stages=("test",))
    make_trainer(tmp_path, [tester]).test(trainer.lightning_module, datamodule=datamodule, verbose=False)
    run = EmbeddingRun(collector.dirpath)
    assert [s["stage"] for s in run.snapshots] == ["fit", "fit", "test"]
    assert set(run.projections("head.1")["stage"]) == {"fit", "test"}

    other = EmbeddingCollector(layers=["head.3"], dirpath=collector.dirpath, stages=("test",))
    with pytest.raises(ValueError, match=r"holds a run of layers .*'features\.1'.*but this collector records \[\('head\.3'"):
        make_trainer(tmp_path, [other]).test(trainer.lightning_module, datamodule=datamodule, verbose=False)
    assert len(EmbeddingRun(collector.dirpath).snapshots) == 3


def test_stages_are_validated():
    with pytest.raises(ValueError, match=r"stages takes some of \('fit', 'validate', 'test'\), got \('predict',\)"):
        EmbeddingCollector(layers=["head.1"], stages=("predict",))


class QuietCNN(DigitsCNN):
    """No self.log: Lightning's logging does not compile under this torch (a Lightning/torch matter, not ours)."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        return {"preds": self(batch[0]).argmax(-1)}


@pytest.mark.slow  # torch.compile's inductor starts compile workers (6-17 s in a fresh clone)
def test_a_compiled_model_is_recorded(fit_digits):
    model = QuietCNN()
    datamodule = DigitsDataModule()
    trainer, collector = fit_digits(model=torch.compile(model), datamodule=datamodule,
                                    trainer_kwargs={"limit_train_batches": 3})
    run = EmbeddingRun(collector.dirpath)
    assert run.epochs == [0, 1]
    _, vectors = run.vectors("head.1", 1)
    np.testing.assert_allclose(vectors, _forward(model, datamodule.val_set.tensors[0]), rtol=1e-4, atol=1e-5)
    assert all(not m._forward_hooks for m in model.modules())


class FrozenFeatures(DigitsCNN):
    def __init__(self):
        super().__init__()
        self.features.requires_grad_(False)

    def on_validation_epoch_start(self):
        self.features.eval()


def test_frozen_and_eval_modules_are_recorded_the_same(fit_digits):
    model = FrozenFeatures()
    datamodule = DigitsDataModule()
    fit_digits(model=model, datamodule=datamodule, layers=["features.2"], reshape="flatten")
    run = EmbeddingRun(fit_digits.args[0] / "embeddings")
    _, vectors = run.vectors("features.2", 1)
    expected = _forward(model, datamodule.val_set.tensors[0], "features.2").reshape(449, -1)
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)


def test_a_test_only_collector_does_nothing_during_fit(fit_digits, tmp_path):
    _, collector = fit_digits(stages=("test",))
    assert collector.dirpath is None and not (tmp_path / "embeddings").exists()
