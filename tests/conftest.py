"""Shared helpers: the digits example's model and data, and a small real ``Trainer.fit`` with the collector."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import lightning.pytorch as pl
import pytest

from lightning_embeddings import EmbeddingCollector

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

from digits import DigitsCNN, DigitsDataModule  # noqa: E402


def make_trainer(root: Path, callbacks: list, **kwargs: Any) -> pl.Trainer:
    """A quiet CPU Trainer writing under ``root``; ``kwargs`` override the defaults."""
    options = dict(
        default_root_dir=root,
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
    )
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


def fit_collector(
    root: Path,
    model: Optional[pl.LightningModule] = None,
    datamodule: Optional[pl.LightningDataModule] = None,
    trainer_kwargs: Optional[dict] = None,
    **collector_kwargs: Any,
) -> tuple[pl.Trainer, EmbeddingCollector]:
    """Fit the digits CNN (or ``model``) with an ``EmbeddingCollector`` (PCA, no pictures, layers ``[3, "head.1"]``
    unless ``collector_kwargs`` say otherwise) writing under ``root``."""
    pl.seed_everything(0, verbose=False)
    collector = EmbeddingCollector(**{"layers": [3, "head.1"], "reducer": "pca", "plots": False, **collector_kwargs})
    trainer = make_trainer(root, [collector], **(trainer_kwargs or {}))
    trainer.fit(model if model is not None else DigitsCNN(), datamodule or DigitsDataModule())
    return trainer, collector


@pytest.fixture
def fit_digits(tmp_path: Path) -> Callable[..., tuple[pl.Trainer, EmbeddingCollector]]:
    """``fit_digits(model=None, datamodule=None, trainer_kwargs=None, **collector_kwargs)``: :func:`fit_collector`
    under ``tmp_path``."""
    return partial(fit_collector, tmp_path)


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail with TimeoutError where the block runs longer than ``seconds`` (a hang ends the test, not the suite)."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
