"""The run in the Trainer's own loggers: TensorBoard's projector, W&B (offline), MLflow (local file store), CSV."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

from conftest import DigitsCNN, fit_collector
from lightning_embeddings import EmbeddingRun
from lightning_embeddings.cli import main


class LogitsCNN(DigitsCNN):
    """The digits CNN whose validation_step also returns its logits: each layer gets a data map."""

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return {**super().validation_step(batch, batch_idx, dataloader_idx), "logits": self(batch[0])}


def test_tensorboard_logger_gets_the_projector_files(tmp_path):
    logger = TensorBoardLogger(save_dir=tmp_path, name="tb")
    _, collector = fit_collector(tmp_path, trainer_kwargs={"logger": logger})
    config = (tmp_path / "tb" / "version_0" / "projector_config.pbtxt").read_text()
    for layer in ("features.1", "head.1"):
        assert f'tensor_name: "{layer}/projections:' in config and f'tensor_name: "{layer}/vectors:' in config
    assert collector.dirpath == tmp_path / "tb" / "version_0" / "embeddings"
    # reducing the run again later writes the logger's projector files again: they never show an older map
    tensors = next((tmp_path / "tb" / "version_0").glob("*/head.1%2fprojections/tensors.tsv"))
    assert not np.loadtxt(tensors)[:, 2].any()
    assert main(["reduce", str(collector.dirpath), "--reducer", "pca", "--n-components", "3"]) == 0
    assert np.loadtxt(tensors)[:, 2].any()


def test_csv_logger_gets_nothing_extra(tmp_path):
    logger = CSVLogger(save_dir=tmp_path, name="csv")
    fit_collector(tmp_path, trainer_kwargs={"logger": logger})
    assert sorted(p.name for p in (tmp_path / "csv" / "version_0").iterdir()) == ["embeddings", "hparams.yaml",
                                                                                 "metrics.csv"]


def test_wandb_offline_gets_pictures_and_a_table(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), project="lightning-embeddings-test", offline=True)
    _, collector = fit_collector(tmp_path, model=LogitsCNN(), plots=True, record_train=True, max_samples=200,
                                 trainer_kwargs={"logger": logger})
    logger.experiment.finish()
    media = list((tmp_path / "wandb").glob("offline-run-*/files/media"))
    assert media, f"no offline run in {sorted(os.listdir(tmp_path / 'wandb'))}"
    images = sorted(p.name for p in media[0].rglob("*.png"))
    tables = sorted(media[0].rglob("*.table.json"))
    assert len(images) == 6 and any("head.1-overview" in name for name in images), images  # with the data maps
    assert any("head.1-datamap" in name for name in images), images
    assert len(tables) == 2 and any("head.1" in path.name for path in tables), tables
    # the last snapshot's map, training rows too, each row with its sample's suspicion
    logged = json.loads(next(path for path in tables if "head.1" in path.name).read_text())
    table = pd.DataFrame(logged["data"], columns=logged["columns"])
    assert table.groupby("split").size().to_dict() == {"train": 200, "val": 200}
    run = EmbeddingRun(collector.dirpath)
    for split, rows in table.groupby("split"):
        expected = run.samples("head.1", split=split).set_index("sample_id")["suspicion"]
        np.testing.assert_allclose(rows["suspicion"].astype(float), expected.loc[rows["sample_id"]].to_numpy())


def test_mlflow_gets_pictures_and_projections_as_artifacts(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store, nothing to install or serve
    logger = MLFlowLogger(experiment_name="emb", tracking_uri=f"file:{tmp_path / 'mlruns'}")
    fit_collector(tmp_path, model=LogitsCNN(), plots=True, trainer_kwargs={"logger": logger})
    artifacts = list((tmp_path / "mlruns").glob(f"*/{logger.run_id}/artifacts/embeddings"))
    assert artifacts
    names = sorted(p.name for p in artifacts[0].iterdir())
    assert "projections.parquet" in names and "head.1-overview.png" in names and len(names) == 7, names
    assert "head.1-datamap.png" in names and "features.1-datamap.png" in names, names
