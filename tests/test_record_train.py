"""``record_train=True``: every training sample recorded at each recorded validation, in a fixed order, beside the
validation rows (``split``), without changing what the user logs; logits recorded; the live k-NN accuracy logged."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
import torch
from conftest import DigitsCNN, DigitsDataModule, deadline, fit_collector, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torchmetrics.classification import MulticlassAccuracy

from lightning_embeddings import EmbeddingCollector, EmbeddingRun

N_TRAIN, N_VAL = 1348, 449  # digits with val_fraction 0.25


def read_vectors(dirpath: Path) -> pd.DataFrame:
    return ds.dataset(dirpath / "vectors", format="parquet").to_table(
        columns=["sample_id", "split", "stage", "epoch", "step", "label", "prediction"]).to_pandas()


class LoggingCNN(DigitsCNN):
    """Logs the way users do: a loss through ``self.log``, plus a torchmetrics metric it computes and resets itself
    at the end of the epoch (state a pass over other data would change), and ``val_loss`` per epoch kept here."""

    def __init__(self) -> None:
        super().__init__()
        self.manual_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.seen: list[float] = []

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        logits = self(x)
        self.log("val_loss", torch.nn.functional.cross_entropy(logits, y))
        self.manual_acc.update(logits, y)
        return {"logits": logits}

    def on_validation_epoch_start(self) -> None:
        self.manual_acc.reset()

    def on_validation_epoch_end(self) -> None:
        self.seen.append(float(self.manual_acc.compute()))
        self.manual_acc.reset()


def fit_logging(root: Path, record_train: bool) -> tuple[pl.Trainer, LoggingCNN, EmbeddingCollector]:
    pl.seed_everything(0, verbose=False)
    model = LoggingCNN()
    collector = EmbeddingCollector(layers=["head.1"], reducer="pca", plots=False, record_train=record_train)
    trainer = make_trainer(root, [collector], max_epochs=2)
    trainer.fit(model, DigitsDataModule())
    return trainer, model, collector


def test_every_training_sample_once_per_snapshot_with_its_label_and_split(tmp_path):
    trainer, model, collector = fit_logging(tmp_path / "with", record_train=True)
    rows = read_vectors(collector.dirpath)
    assert set(rows["split"]) == {"train", "val"}
    datamodule = DigitsDataModule()
    datamodule.setup("fit")
    train_labels = np.array([int(datamodule.train_set[i][1]) for i in range(N_TRAIN)])
    for epoch in (0, 1):
        train = rows[(rows.epoch == epoch) & (rows.split == "train")].sort_values("sample_id")
        assert train["sample_id"].tolist() == list(range(N_TRAIN))  # each once, in dataset order, no shuffling
        np.testing.assert_array_equal(train["label"].to_numpy(), train_labels)
        assert train["prediction"].notna().all()  # from validation_step's logits
        val = rows[(rows.epoch == epoch) & (rows.split == "val")]
        assert sorted(val["sample_id"]) == list(range(N_VAL))
    assert (rows["stage"] == "fit").all()
    run = EmbeddingRun(collector.dirpath)
    assert run.manifest["logits"] == "logits"
    table = ds.dataset(collector.dirpath / "vectors", format="parquet").to_table(columns=["logits"])
    assert table.schema.field("logits").type.list_size == 10
    # the model is back in training mode, and the user's own logged values are those of a run without the pass
    assert model.training
    plain_trainer, plain_model, _ = fit_logging(tmp_path / "without", record_train=False)
    assert model.seen == pytest.approx(plain_model.seen)
    assert trainer.callback_metrics["val_loss"] == pytest.approx(float(plain_trainer.callback_metrics["val_loss"]))
    assert list(trainer.callback_metrics) == list(plain_trainer.callback_metrics)  # the same keys, knn_accuracy too


def test_knn_accuracy_logged_per_layer_each_recorded_validation(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    pl.seed_everything(0, verbose=False)
    collector = EmbeddingCollector(layers=[3, "head.1"], reducer="pca", plots=False, every_n_epochs=2)
    trainer = make_trainer(tmp_path, [collector], max_epochs=3, limit_train_batches=4,
                           logger=CSVLogger(tmp_path, name="csv"))
    trainer.fit(DigitsCNN(), DigitsDataModule())
    metrics = pd.read_csv(Path(trainer.logger.log_dir) / "metrics.csv")
    for column in ("features.1", "head.1"):
        key = f"embeddings/{column}/knn_accuracy"
        logged = metrics[["epoch", key]].dropna()
        assert logged["epoch"].tolist() == [0, 2]  # the recorded validations only
        assert ((logged[key] > 0.1) & (logged[key] <= 1.0)).all()  # above chance (10 classes) after a few steps


def test_max_samples_bounds_the_training_rows_too(fit_digits):
    _, collector = fit_digits(layers=["head.1"], record_train=True, max_samples=100, trainer_kwargs={"max_epochs": 1})
    rows = read_vectors(collector.dirpath)
    assert sorted(rows[rows.split == "train"]["sample_id"]) == list(range(100))
    assert sorted(rows[rows.split == "val"]["sample_id"]) == list(range(100))


def test_resumed_fit_keeps_recording_the_training_set(tmp_path):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    pl.seed_everything(0, verbose=False)
    collector = EmbeddingCollector(layers=["head.1"], reducer="pca", plots=False, record_train=True, max_samples=64)
    trainer = make_trainer(tmp_path, [collector, checkpoints], max_epochs=1, limit_train_batches=2,
                           enable_checkpointing=True)
    trainer.fit(DigitsCNN(), DigitsDataModule())
    again = EmbeddingCollector(layers=["head.1"], reducer="pca", plots=False, record_train=True, max_samples=64)
    trainer = make_trainer(tmp_path, [again, ModelCheckpoint(dirpath=tmp_path / "ckpt")], max_epochs=3,
                           limit_train_batches=2, enable_checkpointing=True)
    trainer.fit(DigitsCNN(), DigitsDataModule(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert again.dirpath == collector.dirpath
    rows = read_vectors(again.dirpath)
    counts = rows.groupby(["epoch", "split"]).size().unstack()
    assert counts.index.tolist() == [0, 1, 2]
    assert (counts["train"] == 64).all() and (counts["val"] == 64).all()


def test_logits_named_as_a_recorded_layer(fit_digits):
    _, collector = fit_digits(layers=[3, "head.3"], logits="head.3", record_train=True, max_samples=50,
                              trainer_kwargs={"max_epochs": 1})
    assert EmbeddingRun(collector.dirpath).manifest["logits"] == "head.3"
    table = ds.dataset(collector.dirpath / "vectors", format="parquet").to_table()
    assert "logits" not in table.column_names


def test_logits_must_be_a_recorded_layer():
    with pytest.raises(ValueError, match=r"logits='head.3' must be one of layers=\[3\]"):
        EmbeddingCollector(layers=[3], logits="head.3")


def test_validation_step_that_fails_on_training_batches_says_why(tmp_path):
    class ValOnly(DigitsCNN):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            if len(batch[0]) == 7:  # the training loader's batch size: this step cannot take training batches
                raise RuntimeError("validation_step got a training batch")
            return super().validation_step(batch, batch_idx, dataloader_idx)

    class SevenPerBatch(DigitsDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(self.train_set, batch_size=7, shuffle=True)

    collector = EmbeddingCollector(layers=["head.1"], reducer="pca", plots=False, record_train=True)
    trainer = make_trainer(tmp_path, [collector], max_epochs=1, limit_train_batches=2)
    with pytest.raises(RuntimeError, match="validation_step got a training batch") as caught:
        trainer.fit(ValOnly(), SevenPerBatch())
    assert "record_train=True) ran validation_step on training batch 0" in "".join(caught.value.__notes__)
    assert not list((collector.dirpath or tmp_path).rglob("*.parquet"))  # the unfinished snapshot is discarded


def test_fast_dev_run_with_record_train(tmp_path):
    trainer, collector = fit_collector(tmp_path, layers=["head.1"], record_train=True,
                                       trainer_kwargs={"fast_dev_run": True})
    rows = read_vectors(collector.dirpath)
    assert (rows["split"] == "train").sum() == 64  # one batch of the training set, as of the validation set


def test_training_data_that_is_not_a_dataloader_is_said_not_recorded(fit_digits):
    class Batches:
        """An iterable of training batches, not a DataLoader."""

        def __init__(self, dataset):
            self.batches = [(x.unsqueeze(0), y.unsqueeze(0)) for x, y in list(dataset)[:8]]

        def __iter__(self):
            return iter(self.batches)

    class Plain(DigitsDataModule):
        def train_dataloader(self):
            return Batches(self.train_set)

    with pytest.warns(UserWarning, match=r"record_train=True\) records the training set through its DataLoader"):
        _, collector = fit_digits(layers=["head.1"], record_train=True, datamodule=Plain(),
                                  trainer_kwargs={"max_epochs": 1})
    rows = read_vectors(collector.dirpath)
    assert set(rows["split"]) == {"val"} and len(rows) == N_VAL


def test_training_batches_without_labels_leave_the_training_split_out_of_samples(fit_digits):
    """A training loader of dict batches whose label key the collector does not know: the training rows have no
    label, the fit ends, samples.parquet ranks the validation split only, and samples(split="train") says why."""

    class Dicts(torch.utils.data.Dataset):
        def __init__(self, dataset):
            self.dataset = dataset

        def __len__(self):
            return len(self.dataset)

        def __getitem__(self, i):
            x, y = self.dataset[i]
            return {"image": x, "digit": y}

    class DictTraining(DigitsCNN):
        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self(batch["image"]), batch["digit"])

        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            x = batch["image"] if isinstance(batch, dict) else batch[0]
            return {"preds": self(x).argmax(-1)}

    class DictData(DigitsDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(Dicts(self.train_set), batch_size=64, shuffle=True)

    _, collector = fit_digits(model=DictTraining(), datamodule=DictData(), layers=["head.1"], record_train=True,
                              max_samples=100, trainer_kwargs={"max_epochs": 1})
    run = EmbeddingRun(collector.dirpath)
    assert pd.read_parquet(run.path / "samples.parquet")["split"].unique().tolist() == ["val"]
    assert len(run.samples("head.1")) == 100
    with pytest.raises(ValueError, match="has no labels"):
        run.samples("head.1", split="train")


class Endless(torch.utils.data.IterableDataset):
    """The digits training set over and over, without end or ``__len__`` (a stream)."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __iter__(self):
        while True:
            yield from self.dataset


class Huge(torch.utils.data.Dataset):
    """10^8 samples (the digits training set repeated), each made only when read."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return 10**8

    def __getitem__(self, i: int):
        return self.dataset[i % len(self.dataset)]


class CountingCNN(DigitsCNN):
    def __init__(self) -> None:
        super().__init__()
        self.training_steps = 0

    def training_step(self, batch, batch_idx):
        self.training_steps += 1
        return super().training_step(batch, batch_idx)


def training_data(make_loader):
    class Data(DigitsDataModule):
        def train_dataloader(self):
            return make_loader(self.train_set)

    return Data()


def train_rows(dirpath: Path) -> pd.DataFrame:
    rows = read_vectors(dirpath)
    return rows[rows.split == "train"]


def test_an_endless_training_stream_is_refused_before_training(tmp_path):
    """No length, no limit_train_batches, no max_samples: the pass would never end, so the fit stops before its
    first training step, saying what bounds it (it hung, ignoring SIGTERM, and grew its snapshot without end)."""
    model = CountingCNN()
    collector = EmbeddingCollector(layers=["head.1"], reducer="pca", plots=False, record_train=True)
    trainer = make_trainer(tmp_path, [collector], max_steps=4, val_check_interval=2)
    with deadline(60), pytest.raises(ValueError, match=r"record_train=True.*Endless.*no end.*max_samples=.*"
                                                       r"limit_train_batches="):
        trainer.fit(model, training_data(lambda d: torch.utils.data.DataLoader(Endless(d), batch_size=16)))
    assert model.training_steps == 0
    assert not list(tmp_path.rglob("*.parquet")) and not list(tmp_path.rglob("*.partial"))


@pytest.mark.parametrize(("limits", "recorded"), [({"limit_train_batches": 3}, 48), ({"max_samples": 40}, 40)])
def test_an_endless_training_stream_is_recorded_as_far_as_its_bound(tmp_path, limits, recorded):
    collector = EmbeddingCollector(layers=["head.1"], reducer="pca", plots=False, record_train=True,
                                   max_samples=limits.get("max_samples"))
    trainer = make_trainer(tmp_path, [collector], max_steps=4, val_check_interval=2,
                           limit_train_batches=limits.get("limit_train_batches", 1.0))
    with deadline(120):
        trainer.fit(DigitsCNN(), training_data(lambda d: torch.utils.data.DataLoader(Endless(d), batch_size=16)))
    counts = train_rows(collector.dirpath).groupby("step").size()
    assert len(counts) >= 1 and (counts == recorded).all()


def test_a_huge_dataset_sampled_by_num_samples_records_what_an_epoch_draws(tmp_path):
    """10^8 samples trained through RandomSampler(num_samples=320): the pass records 320 samples in dataset order
    (it was a sequential pass over all 10^8 after an 800 MB id array)."""
    def loader(dataset):
        huge = Huge(dataset)
        return torch.utils.data.DataLoader(huge, batch_size=32, sampler=torch.utils.data.RandomSampler(
            huge, replacement=True, num_samples=320))  # without replacement, torch draws a permutation of 10^8

    collector = EmbeddingCollector(layers=["head.1"], reducer="pca", plots=False, record_train=True)
    trainer = make_trainer(tmp_path, [collector], max_epochs=2)
    with deadline(120):
        trainer.fit(DigitsCNN(), training_data(loader))
    rows = train_rows(collector.dirpath)
    for epoch in (0, 1):
        assert rows[rows.epoch == epoch]["sample_id"].tolist() == list(range(320))


def test_limit_train_batches_bounds_the_training_rows(tmp_path, caplog):
    """Two training batches of 64 per epoch: 128 training rows per snapshot, the first in dataset order (it was
    all 1,348); the fit says once how many of the training set it records."""
    collector = EmbeddingCollector(layers=["head.1"], reducer="pca", plots=False, record_train=True)
    trainer = make_trainer(tmp_path, [collector], max_epochs=2, limit_train_batches=2)
    trainer.fit(DigitsCNN(), DigitsDataModule())
    said = [r.getMessage() for r in caplog.records if "records the first" in r.getMessage()]
    assert len(said) == 1 and "record_train=True) records the first 128 of the 1348 training samples" in said[0]
    rows = train_rows(collector.dirpath)
    for epoch in (0, 1):
        assert rows[rows.epoch == epoch]["sample_id"].tolist() == list(range(128))


SIGTERM_SCRIPT = """
import sys
from pathlib import Path

import torch
sys.path.insert(0, {tests!r})
from conftest import DigitsCNN, make_trainer
from test_record_train import Endless, training_data

from lightning_embeddings import EmbeddingCollector

started = Path({started!r})


class Announcing(DigitsCNN):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if len(batch[0]) == 16 and batch_idx == 3:  # a training batch of record_train's pass
            started.write_text("pass started")
        return super().validation_step(batch, batch_idx, dataloader_idx)


collector = EmbeddingCollector(layers=["head.1"], dirpath={run!r}, reducer="pca", plots=False, record_train=True,
                               max_samples=10**9)
trainer = make_trainer({root!r}, [collector], max_steps=4, val_check_interval=2)
trainer.fit(Announcing(), training_data(lambda d: torch.utils.data.DataLoader(Endless(d), batch_size=16)))
"""


@pytest.mark.slow  # a fit in its own process, to send it a signal
def test_sigterm_ends_the_training_pass(tmp_path):
    """SIGTERM during a long record_train pass ends the fit as Lightning's own loops do: at the next batch, the
    unfinished snapshot discarded and the run's lock released (the pass ignored it)."""
    import signal
    import subprocess
    import sys
    import time

    from lightning_embeddings.lock import RunLock

    started, run = tmp_path / "started", tmp_path / "run"
    script = tmp_path / "endless.py"
    script.write_text(SIGTERM_SCRIPT.format(tests=str(Path(__file__).parent), started=str(started), run=str(run),
                                            root=str(tmp_path)))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        begun = time.monotonic()
        while not started.exists() and process.poll() is None and time.monotonic() - begun < 120:
            time.sleep(0.2)
        assert started.exists(), process.communicate()[0][-3000:]
        process.send_signal(signal.SIGTERM)
        log = process.communicate(timeout=60)[0]
    finally:
        process.kill()
    assert "Traceback" not in log, log[-3000:]
    assert not list(run.rglob("*.partial")) and not list(run.rglob("*.parquet"))
    if run.exists():
        RunLock(run).acquire().release()  # free
