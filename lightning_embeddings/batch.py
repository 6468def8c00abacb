"""What a validation batch says about its samples: their dataset indices, labels, predictions, attention mask."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Optional

import numpy as np
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, IterableDataset, SequentialSampler

LABEL_KEYS = ("label", "labels", "target", "targets", "y")


def per_sample(value: Any, batch_size: int) -> Optional[np.ndarray]:
    """``value`` as a 1-D array of ``batch_size`` values, or None when it does not hold one value per sample."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    elif isinstance(value, (list, tuple)):
        if not all(isinstance(v, (int, float, str, np.generic)) for v in value):
            return None
        value = np.asarray(value)
    if not isinstance(value, np.ndarray) or value.ndim == 0 or value.shape[0] != batch_size or value.size != batch_size:
        return None
    return value.reshape(batch_size)


def batch_labels(batch: Any, batch_size: int, label_key: Optional[str] = None) -> Optional[np.ndarray]:
    """The batch's per-sample labels: ``batch[label_key]``, a dict's ``label``/``labels``/``target``/``targets``/``y``,
    or the second item of an ``(x, y)`` tuple; None when there are none."""
    if label_key is not None:
        return per_sample(batch[label_key], batch_size) if isinstance(batch, Mapping) and label_key in batch else None
    if isinstance(batch, Mapping):
        key = next((k for k in LABEL_KEYS if k in batch), None)
        return None if key is None else per_sample(batch[key], batch_size)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return per_sample(batch[1], batch_size)
    return None


def batch_ids(batch: Any, batch_size: int, id_key: Optional[str]) -> Optional[np.ndarray]:
    """Sample ids the batch carries under ``id_key``, as int64."""
    if id_key is None:
        return None
    ids = per_sample(batch[id_key], batch_size) if isinstance(batch, Mapping) and id_key in batch else None
    if ids is None or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"id_key {id_key!r}: the batch must hold one integer id per sample under {id_key!r}.")
    return ids.astype(np.int64)


def batch_size(batch: Any) -> Optional[int]:
    """The number of samples in ``batch``: the first dim its tensors share; None where they disagree (e.g.
    sequence-first inputs beside per-sample labels) or it holds none.

    Example::

        >>> batch_size({"input_ids": torch.zeros(4, 7), "labels": torch.zeros(4)})
        4
    """
    sizes = set()
    pending = [batch]
    while pending:
        item = pending.pop()
        if isinstance(item, Tensor):
            if item.ndim:
                sizes.add(item.shape[0])
        elif isinstance(item, Mapping):
            pending.extend(item.values())
        elif isinstance(item, (tuple, list)):
            pending.extend(item)
    return sizes.pop() if len(sizes) == 1 else None


def attention_mask(batch: Any) -> Optional[Tensor]:
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    return mask if isinstance(mask, Tensor) else None


def sample_order(loader: Any, limit: Optional[int] = None) -> Optional[np.ndarray]:
    """The first ``limit`` (all when None) dataset indices in the order ``loader`` visits them, when that order is
    fixed; None when it is not (a shuffling sampler, an iterable dataset, a sampler of unknown kind)."""
    if not isinstance(loader, DataLoader):
        return None
    sampler = loader.batch_sampler.sampler if isinstance(loader.batch_sampler, BatchSampler) else loader.sampler
    if isinstance(sampler, range):
        return np.arange(sampler.start, sampler.stop, sampler.step, dtype=np.int64)[:limit]
    if isinstance(sampler, SequentialSampler):
        return np.arange(len(sampler) if limit is None else min(len(sampler), limit), dtype=np.int64)
    if isinstance(sampler, DistributedSampler) and not sampler.shuffle:  # its padding wraps to the start
        stop = sampler.total_size if limit is None else min(sampler.total_size, sampler.rank + limit * sampler.num_replicas)
        return np.arange(sampler.rank, stop, sampler.num_replicas, dtype=np.int64) % len(sampler.dataset)
    return None


def real_samples(loader: Any) -> Optional[int]:
    """How many samples a ``DistributedSampler``'s rank sees before its padding (the duplicates that make every
    rank's share equal); None for other samplers."""
    if not isinstance(loader, DataLoader):
        return None
    sampler = loader.batch_sampler.sampler if isinstance(loader.batch_sampler, BatchSampler) else loader.sampler
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return None
    return len(range(sampler.rank, len(sampler.dataset), sampler.num_replicas))


def loaders(val_dataloaders: Any) -> list[Any]:
    """The trainer's validation dataloaders as a list indexed by ``dataloader_idx``."""
    if isinstance(val_dataloaders, Mapping):
        return list(val_dataloaders.values())
    if isinstance(val_dataloaders, (list, tuple)):
        return list(val_dataloaders)
    return [val_dataloaders]


def samples_per_epoch(loader: DataLoader, batches_per_epoch: float) -> Optional[int]:
    """How many samples one training epoch of ``batches_per_epoch`` batches (``trainer.num_training_batches``)
    draws from ``loader``: its sampler's length, or fewer where ``limit_train_batches`` cuts the epoch; None where
    nothing bounds it (an iterable dataset without ``__len__``, an epoch without a limit).

    Example::

        samples_per_epoch(DataLoader(data, batch_size=32, sampler=RandomSampler(data, num_samples=320)), 10)  # 320
    """
    by_batches = None if math.isinf(batches_per_epoch) else int(batches_per_epoch) * _loader_batch_size(loader)
    sampler = getattr(loader.batch_sampler, "sampler", loader.sampler)
    try:
        drawn: Optional[int] = len(loader.dataset if isinstance(loader.dataset, IterableDataset) else sampler)
    except TypeError:
        drawn = None
    return min((n for n in (drawn, by_batches) if n is not None), default=None)


def ordered_loader(loader: DataLoader, num_replicas: int = 1, rank: int = 0, limit: Optional[int] = None) -> DataLoader:
    """A loader of ``loader``'s dataset, batch size, collate and workers that visits its first samples once each in
    a fixed order: at most ``limit`` per rank, this rank's share under DDP (every ``num_replicas``-th index from
    ``rank``, no padding); the last short batch is kept. An iterable dataset keeps its own order (its caller stops
    after ``limit``).

    Example::

        ordered_loader(trainer.train_dataloader)        # the training set, unshuffled
    """
    sampler = None
    if not isinstance(loader.dataset, IterableDataset):
        size = len(loader.dataset)
        sampler = range(rank, size if limit is None else min(size, rank + limit * num_replicas), num_replicas)
    return DataLoader(loader.dataset, batch_size=_loader_batch_size(loader), sampler=sampler,
                      collate_fn=loader.collate_fn, num_workers=loader.num_workers, pin_memory=loader.pin_memory)


def _loader_batch_size(loader: DataLoader) -> int:
    return loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or 1


def step_logits(outputs: Any, size: int, warn: Callable[[str], None]) -> Optional[np.ndarray]:
    """The ``logits`` that ``validation_step`` returned for a batch of ``size``, as float32 ``(size, classes)``; None
    when it returned none, or (``warn``-ed once) something else than a ``(batch, classes)`` tensor."""
    logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
    if logits is None:
        return None
    if not isinstance(logits, Tensor) or logits.ndim != 2 or len(logits) != size:
        warn("EmbeddingCollector: validation_step returned 'logits' that are not a (batch, classes) tensor (batch "
             f"of {size}, got {getattr(logits, 'shape', type(logits).__name__)}); logits are not recorded.")
        return None
    return logits.detach().float().cpu().numpy()


def step_predictions(outputs: Any, size: int, warn: Callable[[str], None]) -> Optional[np.ndarray]:
    """The ``preds`` that ``validation_step`` returned for a batch of ``size``, one per sample; None when it returned
    none, or (``warn``-ed once) not one value per sample."""
    if not isinstance(outputs, Mapping) or "preds" not in outputs:
        return None
    preds = per_sample(outputs["preds"], size)
    if preds is None:
        warn("EmbeddingCollector: validation_step returned 'preds' that do not hold one value per sample "
             f"(batch of {size}); predictions are not recorded. Return e.g. logits.argmax(-1).")
    return preds


def missing_label_key(label_key: str, batch: Any) -> str:
    """Why ``label_key`` finds no labels in ``batch``, with what the batch holds."""
    holds = (f"its keys: {', '.join(map(repr, batch))}" if isinstance(batch, Mapping) else
             f"it is a {type(batch).__name__}" + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
             + "; label_key names a key of a dict batch, leave it None to take the second item of an (x, y) batch")
    return f"lightning-embeddings: label_key={label_key!r} is not in the batch ({holds}): no labels are recorded."
