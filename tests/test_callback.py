import pickle

import lightning.pytorch as pl
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.demos.boring_classes import BoringModel
from torch.utils.data import DataLoader

from conftest import DigitsCNN, DigitsDataModule, make_trainer
from lightning_embeddings import EmbeddingCollector, EmbeddingRun


def _files(dirpath):
    """The run's snapshot files, in order."""
    return sorted((dirpath / "vectors").glob("*.parquet"))


def _first_channels(t):
    """A user strategy: the mean of the first 5 channels' values, per sample."""
    return t.flatten(1)[:, :5] * 2.0


def _reference(model, datamodule, references):
    """A fresh forward pass of ``model`` over the validation set, with 3LC-style reshapes at the given layers."""
    outputs = {name: [] for name in references}
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_hook(lambda m, a, out, name=name, fn=fn: outputs[name].append(fn(out.detach().clone())))
        for name, fn in references.items()
    ]
    model.eval()
    with torch.no_grad():
        for x, _ in datamodule.val_dataloader():
            model(x)
    for handle in handles:
        handle.remove()
    return {name: torch.cat(chunks).numpy() for name, chunks in outputs.items()}


def test_last_epoch_equals_a_fresh_forward_pass_for_every_strategy(fit_digits):
    datamodule = DigitsDataModule()
    trainer, collector = fit_digits(
        datamodule=datamodule,
        layers=[3, "head.1", "features.2", "head.3", 6],
        reshape={3: "avg_pool_2_2", "head.1": "flatten", "features.2": "mean", "head.3": _first_channels,
                 6: "avg_pool_1_1"},
    )
    run = EmbeddingRun(collector.dirpath)
    assert run.layers == ["features.1", "head.1", "features.2", "head.3", "features.4"]
    expected = _reference(
        trainer.lightning_module,
        datamodule,
        {
            "features.1": lambda t: F.adaptive_avg_pool2d(t, (2, 2)).flatten(1),
            "head.1": lambda t: t.flatten(1),
            "features.2": lambda t: t.mean(dim=(2, 3)),
            "head.3": _first_channels,
            "features.4": lambda t: F.adaptive_avg_pool2d(t, (1, 1)).flatten(1),
        },
    )
    for layer, values in expected.items():
        ids, vectors = run.vectors(layer, epoch=run.epochs[-1])
        assert ids.tolist() == list(range(len(datamodule.val_set)))
        assert vectors.dtype == np.float32
        np.testing.assert_allclose(vectors, values, rtol=1e-5, atol=1e-6, err_msg=layer)
    # head.1 is followed by ReLU(inplace=True): what is stored is the Linear's own output, negatives included
    assert (run.vectors("head.1", 1)[1] < 0).any()
    facts = run.layer(3)
    assert facts["name"] == "features.1" and facts["strategy"] == "avg_pool_2_2" and facts["dim"] == 64
    assert facts["output_shape"] == [16, 8, 8] and facts["type"] == "ReLU"


def test_labels_and_predictions_are_recorded(fit_digits):
    datamodule = DigitsDataModule()
    trainer, collector = fit_digits(datamodule=datamodule, max_samples=None)
    table = EmbeddingRun(collector.dirpath).table(epochs=[1])
    labels = datamodule.val_set.tensors[1].numpy()
    assert table["label"].tolist() == labels.tolist()
    model = trainer.lightning_module.eval()
    with torch.no_grad():
        preds = model(datamodule.val_set.tensors[0]).argmax(-1).numpy()
    assert table["prediction"].tolist() == preds.tolist()
    assert set(table["epoch"]) == {1}


def test_nothing_is_recorded_during_the_sanity_check(tmp_path):
    seen = {}

    class Spy(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["files"] = sorted(p.name for p in tmp_path.rglob("*.parquet*"))

    collector = EmbeddingCollector(layers=["head.1"], reducer=None, dirpath=tmp_path / "spy")
    pl.seed_everything(0)
    make_trainer(tmp_path, [collector, Spy()], num_sanity_val_steps=3, max_epochs=1).fit(DigitsCNN(), DigitsDataModule())
    assert seen["files"] == []
    assert EmbeddingRun(collector.dirpath).epochs == [0]
    assert pq.read_metadata(_files(collector.dirpath)[0]).num_rows == 449


def test_hooks_are_removed_after_fit_and_the_model_pickles(fit_digits):
    trainer, _ = fit_digits()
    model = trainer.lightning_module
    assert all(not m._forward_hooks for m in model.modules())
    pickle.dumps(model)


class FailingCNN(DigitsCNN):
    def validation_step(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 3 and not self.trainer.sanity_checking:
            raise RuntimeError("boom in validation")
        return super().validation_step(batch, batch_idx)


def test_an_exception_mid_epoch_removes_hooks_and_leaves_earlier_epochs_intact(fit_digits, tmp_path):
    model = FailingCNN()
    with pytest.raises(RuntimeError, match="boom in validation"):
        fit_digits(model=model, trainer_kwargs={"max_epochs": 3})
    assert all(not m._forward_hooks for m in model.modules())
    vectors = tmp_path / "embeddings" / "vectors"
    run = EmbeddingRun(tmp_path / "embeddings")
    assert sorted(p.name for p in vectors.iterdir()) == ["epoch_0000-step_0000022.parquet"]
    assert run.epochs == [0]
    assert len(run.vectors("head.1", 0)[0]) == 449
    run.reduce(reducer="pca", progress=False)
    assert set(run.projections("head.1")["epoch"]) == {0}


def test_every_n_epochs_records_the_due_epochs_and_the_last(fit_digits):
    _, collector = fit_digits(every_n_epochs=2, trainer_kwargs={"max_epochs": 4})
    assert EmbeddingRun(collector.dirpath).epochs == [0, 2, 3]


def test_max_samples_records_the_same_first_samples_every_epoch(fit_digits):
    _, collector = fit_digits(max_samples=100, trainer_kwargs={"max_epochs": 3})
    run = EmbeddingRun(collector.dirpath)
    for epoch in run.epochs:
        ids, vectors = run.vectors("head.1", epoch)
        assert ids.tolist() == list(range(100)) and vectors.shape == (100, 64)


def test_a_shuffled_loader_warns_once_and_id_key_gives_true_ids(fit_digits):
    class Shuffled(DigitsDataModule):
        def val_dataloader(self):
            return DataLoader(self.val_set, batch_size=64, shuffle=True)

    with pytest.warns(UserWarning, match="does not visit its samples in a fixed order") as record:
        fit_digits(datamodule=Shuffled(), dirpath=None)
    assert sum("fixed order" in str(w.message) for w in record) == 1


class DictDigits(DigitsDataModule):
    """Shuffled batches as dicts that carry each sample's dataset index."""

    def val_dataloader(self):
        x, y = self.val_set.tensors
        rows = [{"image": x[i], "target": y[i], "index": i} for i in range(len(y))]
        return DataLoader(rows, batch_size=50, shuffle=True)


class DictCNN(DigitsCNN):
    def validation_step(self, batch, batch_idx):
        return {"preds": self(batch["image"]).argmax(-1)}


def test_id_key_and_dict_labels(fit_digits):
    datamodule = DictDigits()
    _, collector = fit_digits(model=DictCNN(), datamodule=datamodule, id_key="index")
    table = EmbeddingRun(collector.dirpath).table(epochs=[1]).sort_values("sample_id")
    assert table["sample_id"].tolist() == list(range(449))
    assert table["label"].tolist() == datamodule.val_set.tensors[1].tolist()


@pytest.mark.parametrize("dict_batches", [False, True], ids=["tuple", "dict"])
def test_a_label_key_the_batch_lacks_is_said_once_in_the_sanity_check_with_what_the_batch_holds(fit_digits,
                                                                                                 dict_batches):
    """Issue 20, item 7: a misspelt label_key recorded no labels and said nothing."""
    kwargs = {"model": DictCNN(), "datamodule": DictDigits(), "id_key": "index"} if dict_batches else {}
    with pytest.warns(UserWarning, match="label_key='lbl' is not in the batch") as record:
        _, collector = fit_digits(label_key="lbl", max_samples=100, trainer_kwargs={"max_epochs": 1,
                                                                                   "limit_train_batches": 1}, **kwargs)
    said = [str(w.message) for w in record if "label_key='lbl'" in str(w.message)]
    holds = "its keys: 'image', 'target', 'index'" if dict_batches else "it is a list of 2; label_key names a key"
    assert len(said) == 1 and holds in said[0], said
    assert "label" not in EmbeddingRun(collector.dirpath).table().columns


def test_an_output_key_on_a_layer_that_returns_a_plain_tensor_is_said_once(fit_digits):
    with pytest.warns(UserWarning, match=r"layer 'head.1' returns a plain Tensor of shape \(\d+, 64\): output_key "
                                         r"'hidden' has nothing to pick and is ignored") as record:
        fit_digits(layers=["head.1"], output_key={"head.1": "hidden"}, max_samples=100,
                   trainer_kwargs={"max_epochs": 2, "limit_train_batches": 1})
    assert sum("has nothing to pick" in str(w.message) for w in record) == 1


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_is_stored_as_float32(fit_digits, precision):
    _, collector = fit_digits(trainer_kwargs={"precision": precision, "max_epochs": 1})
    schema = pq.read_schema(_files(collector.dirpath)[0])
    assert str(schema.field("head.1").type) == "fixed_size_list<element: float>[64]"
    ids, vectors = EmbeddingRun(collector.dirpath).vectors("head.1", 0)
    assert vectors.dtype == np.float32 and np.isfinite(vectors).all()


def test_default_dirpath_is_under_the_log_dir_and_fast_dev_run_records_one_epoch(tmp_path):
    collector = EmbeddingCollector(layers=["head.1"], reducer="pca")
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=1, enable_progress_bar=False, callbacks=[collector],
                         limit_train_batches=2, limit_val_batches=2)
    trainer.fit(DigitsCNN(), DigitsDataModule())
    assert collector.dirpath == tmp_path / "lightning_logs" / "version_0" / "embeddings"
    assert (collector.dirpath / "projections" / "head.1.parquet").is_file()

    collector = EmbeddingCollector(layers=["head.1"], reducer="pca")
    pl.Trainer(default_root_dir=tmp_path / "dev", fast_dev_run=True, callbacks=[collector]).fit(
        DigitsCNN(), DigitsDataModule()
    )
    run = EmbeddingRun(collector.dirpath)  # a throwaway directory, not in default_root_dir (see test_smoke.py)
    assert run.epochs == [0] and len(run.vectors("head.1", 0)[0]) == 64
    assert not (tmp_path / "dev" / "embeddings").exists()


def test_a_lightning_demo_model_without_labels(tmp_path):
    collector = EmbeddingCollector(layers=["layer"], reducer="pca")
    make_trainer(tmp_path, [collector], max_epochs=2, limit_train_batches=4, limit_val_batches=4).fit(BoringModel())
    run = EmbeddingRun(collector.dirpath)
    table = run.table()
    assert "label" not in table and len(table) == 2 * 4  # BoringModel: 4 batches of 1 sample, 2 epochs
    assert run.layer("layer")["dim"] == 2 and set(run.projections("layer")["epoch"]) == {0, 1}


class TwiceCNN(DigitsCNN):
    def forward(self, x):
        self.head[1](self.features(x).flatten(1))  # head.1 runs twice per step
        return super().forward(x)


def test_a_module_called_twice_warns_once_and_records_the_first_call(fit_digits):
    with pytest.warns(UserWarning, match="ran 2 times in one validation step; its first call's output") as record:
        fit_digits(model=TwiceCNN(), layers=["head.1"])
    assert sum("ran 2 times" in str(w.message) for w in record) == 1


# ----- bad input: clear, early errors -----


class CountingCNN(DigitsCNN):
    steps = 0

    def training_step(self, batch, batch_idx):
        CountingCNN.steps += 1
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"layers": ["head.l"]}, ValueError, r"'head\.l' is not a module of CountingCNN\. Nearest: .*9: 'head\.1'"),
        ({"layers": [42]}, ValueError, r"layer index 42 is out of range"),
        ({"layers": [9, "head.1"]}, ValueError, r"both name module 'head\.1'"),
    ],
)
def test_bad_layers_fail_in_setup_before_any_step(fit_digits, kwargs, error, match):
    CountingCNN.steps = 0
    with pytest.raises(error, match=match):
        fit_digits(model=CountingCNN(), **kwargs)
    assert CountingCNN.steps == 0


def test_an_unwritable_dirpath_fails_before_training(fit_digits, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    CountingCNN.steps = 0
    with pytest.raises(PermissionError, match=r"cannot write to dirpath '.*a_file/embeddings'"):
        fit_digits(model=CountingCNN(), dirpath=blocker / "embeddings")
    assert CountingCNN.steps == 0 and blocker.read_text() == "not a directory"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"reshape": "avg_pool"}, ValueError, r"Unknown reshape strategy 'avg_pool'\. Choose one of mean, token_mean"),
        ({"reshape": {"head.2": "mean"}}, ValueError, r"reshape names \['head\.2'\], which are not in layers"),
        ({"reducer": "tsne"}, ValueError, r"Unknown reducer 'tsne'\. Choose one of 'umap', 'pacmap', 'pca'"),
        ({"reducer": object()}, TypeError, r"fit and transform"),
        ({"n_components": 4}, ValueError, r"n_components must be 2 or 3, got 4"),
        ({"every_n_epochs": 0}, ValueError, r"every_n_epochs must be an int >= 1, got 0"),
        ({"max_samples": 0}, ValueError, r"max_samples must be None or an int >= 1"),
        ({"layers": []}, ValueError, r"layers must be a non-empty list"),
        ({"layers": "head.1"}, ValueError, r"layers must be a non-empty list"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        EmbeddingCollector(**{"layers": [3, "head.1"], **kwargs})


class GrowingDigits(DigitsDataModule):
    """Validation images whose size changes between batches (8x8, then 12x12)."""

    def val_dataloader(self):
        x, y = self.val_set.tensors
        big = F.interpolate(x[64:128], size=(12, 12))
        return [DataLoader(list(zip(torch.cat([x[:64]]), y[:64])) + list(zip(big, y[64:128])), batch_size=64)]


def test_flatten_on_a_size_changing_layer_suggests_pooling(fit_digits):
    with pytest.raises(ValueError, match=r"layer 'features\.1' with reshape 'flatten' gave 2304 .* but 1024 earlier.*"
                                         r"Use 'mean' or 'avg_pool_N_N'"):
        fit_digits(datamodule=GrowingDigits(), layers=["features.1"], reshape="flatten",
                   trainer_kwargs={"num_sanity_val_steps": 0})


def test_a_callable_with_the_wrong_batch_size_fails_the_fit_clearly(fit_digits):
    with pytest.raises(ValueError, match=r"layer 'head\.1' with reshape '.*<lambda>' gave 1 rows from an output of shape "
                                         r"\(64, 64\) for a batch of 64 samples"):
        fit_digits(layers=["head.1"], reshape=lambda t: t[:1])


def test_an_existing_run_is_never_overwritten_by_accident(fit_digits, tmp_path):
    _, collector = fit_digits(dirpath=tmp_path / "run")
    second = _files(collector.dirpath)[1]
    before = second.read_bytes()
    CountingCNN.steps = 0
    with pytest.raises(FileExistsError, match="already holds a run.*overwrite=True"):
        fit_digits(model=CountingCNN(), dirpath=tmp_path / "run")
    assert CountingCNN.steps == 0
    assert second.read_bytes() == before
    (collector.dirpath / "plots").mkdir()
    (collector.dirpath / "plots" / "head.1-overview.png").write_bytes(b"an old picture")
    _, collector = fit_digits(dirpath=tmp_path / "run", overwrite=True, trainer_kwargs={"max_epochs": 1})
    assert EmbeddingRun(collector.dirpath).epochs == [0]
    assert not (collector.dirpath / "plots" / "head.1-overview.png").exists()
    assert not second.exists() and len(_files(collector.dirpath)) == 1


class UnusedLayerCNN(CountingCNN):
    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Linear(2, 2)


def test_a_layer_not_on_the_validation_path_is_a_clear_error(fit_digits):
    CountingCNN.steps = 0
    with pytest.raises(ValueError, match=r"layer\(s\) \['unused'\] were not called in any sanity-check step"):
        fit_digits(model=UnusedLayerCNN(), layers=["unused"])
    assert CountingCNN.steps == 0
    with pytest.raises(ValueError, match=r"\['unused'\] were not called in any step of epoch_0000-step_0000022"):
        fit_digits(model=UnusedLayerCNN(), layers=["unused"], trainer_kwargs={"num_sanity_val_steps": 0})
