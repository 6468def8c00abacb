"""Trust at the edges (issue 9), the collector's side: sequence-first layers, tensors that are not one row per
sample, layers called on some batches only, errors before the first training step, validations that record
nothing, run directories that never collide (default names, two collectors, a second process), stray files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from conftest import DigitsCNN, DigitsDataModule, fit_collector, make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_embeddings import EmbeddingCollector, EmbeddingRun


# ------------------------------------------------------------------------------------------ sequence-first layers


class SequenceModel(pl.LightningModule):
    """A batch-first ``(B, T, 8)`` input fed to a sequence-first LSTM (PyTorch's default), as many models do."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 24)
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.transpose(0, 1))  # (T, B, 24)
        return self.head(out.mean(0))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return {"preds": self(x).argmax(-1)}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _sequences(samples: int, steps: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(samples, steps, 8, generator=generator), torch.arange(samples) % 3)


@pytest.mark.parametrize("steps", [5, 8])  # T != B, and T == B (the case that used to average over the batch)
def test_a_sequence_first_lstm_is_recorded_per_sample(tmp_path, steps, caplog):
    data = _sequences(24, steps)
    model = SequenceModel()
    collector = EmbeddingCollector(layers=["lstm"], reshape="token_mean", reducer=None, plots=False)
    trainer = make_trainer(tmp_path, [collector], max_epochs=1, limit_train_batches=1)
    with caplog.at_level("INFO"):
        trainer.fit(model, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    ids, vectors = EmbeddingRun(collector.dirpath).vectors("lstm")
    model.eval()
    with torch.no_grad():
        expected = model.lstm(data.tensors[0].transpose(0, 1))[0].mean(0)  # per sample: the mean over its steps
    assert ids.tolist() == list(range(24))
    np.testing.assert_allclose(vectors, expected.numpy(), rtol=1e-5, atol=1e-6)
    labels = pq.read_table(next((collector.dirpath / "vectors").glob("*.parquet"))).column("label").to_pylist()
    assert labels == (torch.arange(24) % 3).tolist()
    said = [r.getMessage() for r in caplog.records if "batch_first=False" in r.getMessage()]
    assert len(said) == 1 and "'lstm'" in said[0], said


class SummaryModule(nn.Module):
    """Returns the per-sample features and a ``(1, D)`` batch summary."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.linear(x)
        return h, h.mean(0, keepdim=True)


class SummaryCNN(DigitsCNN):
    steps = 0

    def __init__(self) -> None:
        super().__init__()
        self.summary = SummaryModule()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head[1](self.head[0](self.features(x)))
        features, _ = self.summary(h)
        return self.head[3](F.relu(h)) + 0 * features.sum()

    def training_step(self, batch, batch_idx):
        SummaryCNN.steps += 1
        return super().training_step(batch, batch_idx)


def test_an_output_key_that_is_not_one_row_per_sample_fails_before_training(tmp_path):
    SummaryCNN.steps = 0
    with pytest.raises(ValueError, match=r"layer 'summary' \(output_key 1\) with reshape 'mean' gave 1 rows from an "
                                         r"output of shape \(1, 16\) for a batch of 64 samples"):
        fit_collector(tmp_path, model=SummaryCNN(), layers=["summary"], output_key={"summary": 1})
    assert SummaryCNN.steps == 0
    assert not list(tmp_path.rglob("*.parquet"))
    # the per-sample part of the same output is recorded as before
    _, collector = fit_collector(tmp_path / "ok", model=SummaryCNN(), layers=["summary"], output_key={"summary": 0},
                                 trainer_kwargs={"max_epochs": 1})
    assert EmbeddingRun(collector.dirpath).vectors("summary")[1].shape == (449, 16)


# ---------------------------------------------------------------------------- a layer called on some batches only


class SometimesCNN(DigitsCNN):
    """``aux`` runs in validation on even batches only."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(10, 4)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        out = super().validation_step(batch, batch_idx, dataloader_idx)
        if batch_idx % 2 == 0:
            self.aux(self(batch[0]))
        return out


def test_a_layer_called_on_some_batches_records_what_exists(tmp_path):
    with pytest.warns(UserWarning, match=r"layer 'aux' was not called for 193 samples of epoch_0000-step_0000022"):
        _, collector = fit_collector(tmp_path, model=SometimesCNN(), layers=["head.1", "aux"],
                                     trainer_kwargs={"num_sanity_val_steps": 0})
    run = EmbeddingRun(collector.dirpath)
    # batches 1, 3, 5 of 64 samples are not run through aux: 3 * 64 + (449 - 448 = 1 in the last, 7th... ) samples
    table = pq.read_table(collector.dirpath / "vectors" / f"{run.snapshots[0]['name']}.parquet")
    aux = table.column("aux")
    assert len(table) == 449 and aux.null_count == 193 and table.column("head.1").null_count == 0
    missing = np.flatnonzero(aux.is_null().to_numpy(zero_copy_only=False))
    assert missing.tolist() == [*range(64, 128), *range(192, 256), *range(320, 384), *range(448, 449)]
    assert [s["missing"] for s in run.snapshots] == [{"aux": 193}, {"aux": 193}]
    assert run.vectors("head.1")[1].shape == (449, 64) and np.isfinite(run.vectors("head.1")[1]).all()


# ------------------------------------------------------------------------------ errors before training spends time


def test_a_misspelt_reducer_argument_fails_at_construction():
    with pytest.raises(ValueError, match=r"reducer_kwargs \{'n_neighbour': 30\} do not fit umap.*did you mean 'n_neighbors'"):
        EmbeddingCollector(layers=["head.1"], reducer="umap", reducer_kwargs={"n_neighbour": 30})
    with pytest.raises(ValueError, match=r"'whitn': did you mean 'whiten'"):
        EmbeddingCollector(layers=["head.1"], reducer="pca", reducer_kwargs={"whitn": True})


@pytest.mark.parametrize(("reducer", "arguments", "said"), [
    ("umap", {"reducer_kwargs": {"n_neighbors": -5}}, r"n_neighbors must be greater than 1"),
    ("umap", {"reducer_kwargs": {"metric": "cosinee"}}, r"metric .*'cosinee'.*did you mean 'cosine'"),
    ("umap", {"reducer_kwargs": {"min_dist": -1.0}}, r"min_dist cannot be negative"),
    ("pacmap", {"reducer_kwargs": {"n_neighbors": -5}}, r"n_neighbors.*can't be less than 1"),
    ("pacmap", {"reducer_kwargs": {"distance": "cosinee"}}, r"distance.*must be one of"),
    ("pca", {"reducer_kwargs": {"svd_solver": "fast"}}, r"'svd_solver' parameter of PCA must be a str among"),
    ("umap", {"seed": "abc"}, r"seed must be None or an int, got 'abc'"),
    ("pca", {"seed": 1.5}, r"seed must be None or an int, got 1.5"),
])
def test_reducer_values_are_checked_at_construction(reducer, arguments, said):
    """Issue 20, item 5: these raised out of trainer.fit after every epoch had run."""
    with pytest.raises(ValueError, match=said):
        EmbeddingCollector(layers=["head.1"], reducer=reducer, **arguments)


def test_a_reducer_object_s_values_are_checked_at_construction():
    from sklearn.decomposition import PCA

    with pytest.raises(ValueError, match=r"'n_components' parameter of PCA must be"):
        EmbeddingCollector(layers=["head.1"], reducer=PCA(n_components=-1))


class CountingCNN(DigitsCNN):
    steps = 0

    def training_step(self, batch, batch_idx):
        CountingCNN.steps += 1
        return super().training_step(batch, batch_idx)


class GrowingVal(DigitsDataModule):
    """Validation images of 8x8, then 12x12: a ``flatten`` of varying size."""

    def val_dataloader(self):
        x, y = self.val_set.tensors
        return DataLoader(list(zip(x[:64], y[:64])) + list(zip(F.interpolate(x[64:128], size=(12, 12)), y[64:128])),
                          batch_size=64)


@pytest.mark.parametrize(
    "kwargs, datamodule, match",
    [
        ({"layers": ["summary"], "output_key": "hidden"}, None, r"output_key 'hidden' is not in its tuple output"),
        ({"layers": ["features.1"], "reshape": "cls"}, None, r"'cls' needs a 3-D output, but the layer returned shape"),
        ({"layers": ["features.1"], "reshape": "flatten"}, GrowingVal(), r"gave 2304 values per sample .* 1024 earlier"),
    ],
)
def test_shape_and_key_errors_surface_in_the_sanity_check(tmp_path, kwargs, datamodule, match):
    SummaryCNN.steps = 0
    with pytest.raises(ValueError, match=match):
        fit_collector(tmp_path, model=SummaryCNN(), datamodule=datamodule, **kwargs)
    assert SummaryCNN.steps == 0
    assert not list(tmp_path.rglob("*.parquet"))


def test_the_sanity_check_writes_nothing(tmp_path):
    trainer, collector = fit_collector(tmp_path, trainer_kwargs={"max_epochs": 1, "num_sanity_val_steps": 2})
    assert [s["epoch"] for s in EmbeddingRun(collector.dirpath).snapshots] == [0]
    assert len(list((collector.dirpath / "vectors").glob("*.parquet"))) == 1


# ---------------------------------------------------------------------------------------- runs that record nothing


def test_no_validation_says_so_and_leaves_no_folder(tmp_path):
    with pytest.warns(UserWarning, match=r"EmbeddingCollector recorded nothing during fit: no validation ran"):
        _, collector = fit_collector(tmp_path, trainer_kwargs={"limit_val_batches": 0, "max_epochs": 1})
    assert not collector.dirpath.exists()
    assert not (tmp_path / "embeddings").exists()


def test_every_n_epochs_counts_the_validations_that_run(tmp_path):
    _, collector = fit_collector(tmp_path, every_n_epochs=2,
                                 trainer_kwargs={"max_epochs": 5, "check_val_every_n_epoch": 2, "limit_train_batches": 2})
    # validations run after epochs 1 and 3: the first is due, the second is the last
    assert EmbeddingRun(collector.dirpath).epochs == [1, 3]
    _, collector = fit_collector(tmp_path / "b", every_n_epochs=2, trainer_kwargs={"max_epochs": 5, "limit_train_batches": 2})
    assert EmbeddingRun(collector.dirpath).epochs == [0, 2, 4]


# ------------------------------------------------------------------------------------------- run directories


def test_runs_without_a_logger_take_fresh_names_and_never_overwrite(tmp_path):
    _, first = fit_collector(tmp_path, trainer_kwargs={"max_epochs": 1})
    before = {p: p.read_bytes() for p in first.dirpath.rglob("*.parquet")}
    _, second = fit_collector(tmp_path, trainer_kwargs={"max_epochs": 1})
    _, third = fit_collector(tmp_path, trainer_kwargs={"max_epochs": 1})
    assert [first.dirpath, second.dirpath, third.dirpath] == [tmp_path / "embeddings", tmp_path / "embeddings-v1",
                                                              tmp_path / "embeddings-v2"]
    assert {p: p.read_bytes() for p in first.dirpath.rglob("*.parquet")} == before
    assert len(EmbeddingRun(third.dirpath).snapshots) == 1


def test_an_explicit_dirpath_holding_a_run_is_still_refused(tmp_path):
    fit_collector(tmp_path, dirpath=tmp_path / "run", trainer_kwargs={"max_epochs": 1})
    with pytest.raises(FileExistsError, match="already holds a run"):
        fit_collector(tmp_path, dirpath=tmp_path / "run", trainer_kwargs={"max_epochs": 1})


def test_two_collectors_resolving_to_one_directory_are_refused_in_setup(tmp_path):
    CountingCNN.steps = 0
    collectors = [EmbeddingCollector(layers=["head.1"], reducer="pca"), EmbeddingCollector(layers=[3], reducer="pca")]
    trainer = make_trainer(tmp_path, collectors, max_epochs=1)
    with pytest.raises(ValueError, match=r"two collectors of this Trainer would write to the default run directory"):
        trainer.fit(CountingCNN(), DigitsDataModule())
    assert CountingCNN.steps == 0
    same = [EmbeddingCollector(layers=["head.1"], dirpath=tmp_path / "x"), EmbeddingCollector(layers=[3], dirpath=tmp_path / "x")]
    with pytest.raises(ValueError, match=r"two collectors of this Trainer would write to .*/x\."):
        make_trainer(tmp_path, same, max_epochs=1).fit(CountingCNN(), DigitsDataModule())
    # with a dirpath each, both record
    apart = [EmbeddingCollector(layers=["head.1"], reducer="pca", plots=False),
             EmbeddingCollector(layers=[3], reducer="pca", plots=False, dirpath=tmp_path / "second")]
    make_trainer(tmp_path, apart, max_epochs=1).fit(DigitsCNN(), DigitsDataModule())
    assert EmbeddingRun(apart[0].dirpath).layers == ["head.1"] and EmbeddingRun(apart[1].dirpath).layers == ["features.1"]


def test_wandb_runs_get_their_own_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    dirpaths = []
    for _ in range(2):
        logger = WandbLogger(save_dir=str(tmp_path), project="emb", offline=True)
        _, collector = fit_collector(tmp_path, trainer_kwargs={"logger": logger, "max_epochs": 1})
        logger.experiment.finish()
        dirpaths.append(collector.dirpath)
        assert collector.dirpath == tmp_path / "emb" / logger.version / "embeddings"
    assert dirpaths[0] != dirpaths[1] and all(EmbeddingRun(d).epochs == [0] for d in dirpaths)


def test_mlflow_runs_get_their_own_directory_and_the_store_stays_clean(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{tmp_path / 'mlruns'}"
    dirpaths = []
    for _ in range(2):
        logger = MLFlowLogger(experiment_name="emb", tracking_uri=uri)
        _, collector = fit_collector(tmp_path, trainer_kwargs={"logger": logger, "max_epochs": 1})
        dirpaths.append(collector.dirpath)
    assert dirpaths[0] != dirpaths[1] and all(EmbeddingRun(d).epochs == [0] for d in dirpaths)
    assert not (tmp_path / "mlruns" / "embeddings").exists()
    client = MlflowClient(tracking_uri=uri)
    experiments = client.search_experiments()
    assert sorted(e.name for e in experiments) == ["Default", "emb"] or [e.name for e in experiments] == ["emb"]
    emb = next(e for e in experiments if e.name == "emb")
    assert len(client.search_runs([emb.experiment_id])) == 2


# -------------------------------------------------------------------------------------- one writer at a time


HOLDER = textwrap.dedent(
    """
    import sys, time
    from lightning_embeddings.lock import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
)


def _hold_lock(dirpath: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(dirpath)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_fails_at_once_naming_the_directory_and_the_holder(tmp_path):
    dirpath = tmp_path / "run"
    holder = _hold_lock(dirpath)
    try:
        CountingCNN.steps = 0
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=rf"{dirpath} is being written by another process \(pid {holder.pid} on "):
            fit_collector(tmp_path, model=CountingCNN(), dirpath=dirpath)
        assert time.monotonic() - started < 10 and CountingCNN.steps == 0
        # without a dirpath, a locked default directory is passed over
        (tmp_path / "default").mkdir()
        other = _hold_lock(tmp_path / "default" / "embeddings")
        try:
            _, collector = fit_collector(tmp_path / "default", trainer_kwargs={"max_epochs": 1})
            assert collector.dirpath == tmp_path / "default" / "embeddings-v1"
        finally:
            other.kill()
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the OS releases the lock
        holder.wait()
    _, collector = fit_collector(tmp_path, dirpath=dirpath, trainer_kwargs={"max_epochs": 1})
    assert EmbeddingRun(collector.dirpath).epochs == [0]
    assert not (dirpath / ".lock.holder").exists()


def test_reduce_plot_and_export_wait_for_no_one_and_readers_need_no_lock(tmp_path, capsys):
    from lightning_embeddings.cli import main
    from lightning_embeddings.lock import RunLockedError

    _, collector = fit_collector(tmp_path, trainer_kwargs={"max_epochs": 1})
    before = {p: p.read_bytes() for p in collector.dirpath.rglob("*") if p.is_file() and not p.name.startswith(".")}
    holder = _hold_lock(collector.dirpath)
    try:
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid} "):
            EmbeddingRun(collector.dirpath).reduce(reducer="pca")
        for command in (["reduce", "--reducer", "pca"], ["plot"], ["export", "--to", "tensorboard"]):
            capsys.readouterr()
            assert main([command[0], str(collector.dirpath), *command[1:]]) == 1
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"is being written by another process (pid {holder.pid} " in err[0], err
        assert main(["info", str(collector.dirpath)]) == 0  # reading needs no lock
        assert EmbeddingRun(collector.dirpath).vectors("head.1")[1].shape == (449, 64)
    finally:
        holder.kill()
        holder.wait()
    assert {p: p.read_bytes() for p in before} == before
    assert main(["reduce", str(collector.dirpath), "--reducer", "pca"]) == 0


def test_stray_partial_files_are_cleaned_by_the_next_fit(tmp_path):
    _, collector = fit_collector(tmp_path, dirpath=tmp_path / "run", trainer_kwargs={"max_epochs": 1})
    stray = [collector.dirpath / "vectors" / ".epoch_0005-step_0000100.parquet.partial",
             collector.dirpath / "projections" / ".head.1.parquet.partial"]
    for path in stray:
        path.write_bytes(b"half a file")
    fit_collector(tmp_path, dirpath=tmp_path / "run", overwrite=True, trainer_kwargs={"max_epochs": 1})
    assert not any(path.exists() for path in stray)
    assert not list(collector.dirpath.rglob("*.partial"))


# -------------------------------------------------------------------------------------------------- ddp_spawn


@pytest.mark.slow  # two spawned ranks
def test_dirpath_is_known_in_the_main_process_after_ddp_spawn(tmp_path):
    script = tmp_path / "spawn_run.py"
    script.write_text(textwrap.dedent(
        f"""
        import lightning.pytorch as pl
        import torch
        from digits import DigitsCNN, DigitsDataModule
        from lightning_embeddings import EmbeddingCollector, EmbeddingRun

        if __name__ == "__main__":
            torch.set_num_threads(1)
            collector = EmbeddingCollector(layers=["head.1"], reducer="pca", plots=False)
            trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, limit_train_batches=2,
                                 default_root_dir={str(tmp_path)!r}, logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False, callbacks=[collector])
            trainer.fit(DigitsCNN(), DigitsDataModule())
            print("DIRPATH", collector.dirpath)
            print("EPOCHS", EmbeddingRun(collector.dirpath).epochs)
        """
    ))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "examples"),
                                                         os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"DIRPATH {tmp_path / 'embeddings'}" in done.stdout and "EPOCHS [0]" in done.stdout, done.stdout[-2000:]
