"""``record_train``'s pass: ``validation_step`` over the training set, in dataset order, in eval mode without
gradients, bounded by what one training epoch draws; the user's logging silenced and their torchmetrics metrics given
their state back, the random state left as it was, SIGTERM obeyed as Lightning's own loops obey it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import DataLoader, IterableDataset
from torchmetrics import Metric

from lightning_embeddings import batch as batches
from lightning_embeddings.recorder import Recorder


def training_bounds(trainer: pl.Trainer, max_samples: Optional[int], say: bool = False) -> Optional[list[int]]:
    """How many samples of each training loader (per rank) the pass records: as many as one training epoch draws
    (``limit_train_batches``, a sampler's ``num_samples``), at most ``max_samples``; None where the training data
    are not DataLoaders. ``say``: tell once where the pass records part of the training set.

    Raises:
        ValueError: nothing bounds a loader (an endless stream), naming the three ways to bound it.
    """
    given = batches.loaders(trainer.train_dataloader)
    if not all(isinstance(dl, DataLoader) for dl in given):
        return None
    bounds = []
    for dl in given:
        drawn = batches.samples_per_epoch(dl, trainer.num_training_batches)
        if drawn is None and max_samples is None:
            raise ValueError(
                f"EmbeddingCollector(record_train=True): the training data ({type(dl.dataset).__name__}) has no "
                "end: no __len__ and no limit on the epoch, so recording it would never end. Bound it with "
                "EmbeddingCollector(max_samples=...), Trainer(limit_train_batches=<int>), or a __len__ on the "
                "dataset; or set record_train=False."
            )
        bounds.append(min(n for n in (drawn, max_samples) if n is not None))
        size = None if isinstance(dl.dataset, IterableDataset) else len(dl.dataset)
        recorded = bounds[-1] * trainer.world_size if size is None else min(size, bounds[-1] * trainer.world_size)
        if say and recorded != size:
            rank_zero_info(f"EmbeddingCollector(record_train=True) records the first {recorded} of "
                           f"{'the stream of' if size is None else f'the {size}'} training samples at each recorded"
                           " validation: as many as one training epoch draws (limit_train_batches, the sampler's "
                           "num_samples) or max_samples.")
    return bounds


def training_loaders(trainer: pl.Trainer, bounds: list[int]) -> list[DataLoader]:
    """The training loaders again, in dataset order, each rank its own share of the first ``bounds`` samples."""
    return [batches.ordered_loader(dl, trainer.world_size, trainer.global_rank, bound)
            for dl, bound in zip(batches.loaders(trainer.train_dataloader), bounds)]


def record_training_set(trainer: pl.Trainer, pl_module: pl.LightningModule, recorder: Recorder,
                        max_samples: Optional[int], end: Callable[[Any, Any, int], None]) -> None:
    """Record the training set as the ``split="train"`` rows of ``recorder``'s open snapshot (``end(outputs,
    batch, i)`` hands each step's rows to it); training data that are not DataLoaders record nothing, said once."""
    bounds = training_bounds(trainer, max_samples)
    if bounds is None:
        given = [type(dl).__name__ for dl in batches.loaders(trainer.train_dataloader)]
        recorder.warn("EmbeddingCollector(record_train=True) records the training set through its DataLoader, but "
                      f"the trainer's training data is {given}: no training rows are recorded.")
        return
    loaders = training_loaders(trainer, bounds)
    recorder.start_split("train", loaders, bounds)
    run_pass(trainer, pl_module, loaders, start=lambda batch, i: recorder.start_batch(i, batch), end=end,
             done=lambda i: not recorder.wants(i))


def run_pass(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    loaders: list[DataLoader],
    start: Callable[[Any, int], None],
    end: Callable[[Any, Any, int], None],
    done: Callable[[int], bool],
) -> None:
    """``validation_step`` over ``loaders`` until ``done(loader index)``: ``start(batch, i)`` before each step and
    ``end(outputs, batch, i)`` after it. The random state is left as it was, so training goes on as without the
    pass; SIGTERM ends it at the next batch.

    Raises:
        SIGTERMException: the trainer received SIGTERM, as Lightning's loops raise it.
    """
    extra = {"dataloader_idx": 0} if len(batches.loaders(trainer.val_dataloaders)) > 1 else {}
    with isolate_rng(), silenced(pl_module), torch.no_grad(), trainer.precision_plugin.val_step_context():
        for i, loader in enumerate(loaders):
            for batch_idx, batch in enumerate(loader):
                if trainer.received_sigterm:
                    raise SIGTERMException
                if done(i):
                    break
                batch = trainer.strategy.batch_to_device(batch, dataloader_idx=i)
                start(batch, i)
                try:
                    outputs = pl_module.validation_step(batch, batch_idx, **extra)
                except Exception as err:
                    err.add_note(f"EmbeddingCollector(record_train=True) ran validation_step on training batch "
                                 f"{batch_idx}: it must take training batches too.")
                    raise
                end(outputs, batch, i)


@contextmanager
def silenced(pl_module: pl.LightningModule) -> Iterator[None]:
    """``self.log``/``self.log_dict`` do nothing, and torchmetrics metrics get their state back afterwards: a pass of
    ``validation_step`` that must not change what the user logs."""
    metrics = [m for m in pl_module.modules() if isinstance(m, Metric)]
    saved = [({name: _copied(value) for name, value in m.metric_state.items()}, m._update_count, m._computed)
             for m in metrics]
    pl_module.log = pl_module.log_dict = _ignored  # instance attributes, shadowing the methods until deleted
    try:
        yield
    finally:
        del pl_module.log, pl_module.log_dict
        for metric, (state, updates, computed) in zip(metrics, saved):
            for name, value in state.items():
                setattr(metric, name, value)
            metric._update_count, metric._computed = updates, computed


def _copied(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else list(value) if isinstance(value, list) else value


def _ignored(*args: Any, **kwargs: Any) -> None:
    return None
