"""The run, in the loggers the Trainer already has: TensorBoard's projector, W&B images and tables, MLflow artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from lightning_embeddings.layout import LONG_PROJECTIONS, file_stem
from lightning_embeddings.reader import RunReader

TABLE_ROWS = 10_000


def export_to_loggers(run: RunReader, loggers: Sequence[Logger], pictures: Sequence[Path]) -> None:
    """Hand the run to each logger in its own terms (a ``CSVLogger`` gets nothing).

    - ``TensorBoardLogger``: the projector files, in its ``log_dir`` (see :func:`~.export.export_tensorboard`).
    - ``WandbLogger``: the pictures as images (the data map too, where drawn), and each layer's map of the last
      snapshot as a table (at most 10,000 rows) with each sample's ``suspicion``.
    - ``MLFlowLogger``: the pictures and ``projections.parquet`` as artifacts under ``embeddings/``.

    Example::

        export_to_loggers(EmbeddingRun(path), trainer.loggers, plot_run(path))
    """
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            from lightning_embeddings.export import export_tensorboard

            export_tensorboard(run, logger.log_dir, progress=False)
        elif isinstance(logger, WandbLogger):
            for picture in pictures:
                if picture.suffix == ".png":
                    logger.log_image(key=f"embeddings/{picture.stem}", images=[str(picture)])
            for layer, table in last_maps(run).items():
                logger.log_table(key=f"embeddings/{file_stem(layer)}", dataframe=table)  # W&B makes a file of it
        elif isinstance(logger, MLFlowLogger):
            for artifact in [*pictures, run.path / LONG_PROJECTIONS]:
                if artifact.is_file():
                    logger.experiment.log_artifact(logger.run_id, str(artifact), artifact_path="embeddings")


def last_maps(run: RunReader, rows: int = TABLE_ROWS) -> dict[str, pd.DataFrame]:
    """Each reduced layer's map of the last snapshot (its training rows too, with ``record_train``), at most
    ``rows`` rows (a fixed random subset beyond), with each sample's ``suspicion`` from
    :meth:`~lightning_embeddings.EmbeddingRun.samples` (NaN where it has none: no labels, a ``test`` row)."""
    from lightning_embeddings.run_samples import recorded, sample_columns

    maps = {}
    for layer in run.layers:
        try:
            projections = run.projections(layer)
        except FileNotFoundError:
            continue
        last = run.snapshots[-1]
        table = projections[(projections["stage"] == last["stage"]) & (projections["step"] == last["step"])]
        table = table.sample(rows, random_state=0) if len(table) > rows else table
        suspicion = sample_columns(table, recorded(run, layer), ["suspicion"])["suspicion"]
        maps[layer] = table.assign(suspicion=suspicion)
    return maps
