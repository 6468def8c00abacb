"""The live k-NN accuracy: at each recorded validation, per layer, the leave-one-out k-NN accuracy of its first
``KNN_SAMPLES`` labelled rows, which the callback logs as ``embeddings/<layer>/knn_accuracy``: which layer separates
the classes, and when. Lightning-free."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import pandas as pd
import torch

from lightning_embeddings.dynamics import K_NEIGHBOURS, knn_accuracy

KNN_SAMPLES = 2048  # validation rows per layer behind the live k-NN accuracy


class LiveKnnAccuracy:
    """The rows one validation keeps of each layer, scored at its end.

    Example::

        live = LiveKnnAccuracy()
        live.start(["head.1"])
        live.keep([vectors], labels)  # each batch: one array (or None: not called) per layer
        live.scores()                 # {"head.1": 0.93}, and the rows are dropped
    """

    def __init__(self) -> None:
        self._kept: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def start(self, columns: Sequence[str]) -> None:
        """A validation of these layers begins: nothing kept yet."""
        self._kept = {column: [] for column in columns}

    def room(self, column: Optional[str] = None) -> int:
        """How many more rows are kept of a layer (of the layer with most room when None)."""
        room = {c: KNN_SAMPLES - sum(len(held) for _, held in kept) for c, kept in self._kept.items()}
        return max(room.values(), default=0) if column is None else room.get(column, 0)

    def keep(self, vectors: Sequence[Optional[np.ndarray]], labels: np.ndarray) -> None:
        """Keep a batch's labelled rows of each layer (``vectors`` in the order of :meth:`start`'s columns), up to
        ``KNN_SAMPLES`` a layer; copies, so the caller may reuse its arrays."""
        for column, v in zip(self._kept, vectors):
            room = self.room(column)
            if v is not None and room > 0:
                self._kept[column].append((v[:room].copy(), labels[:room]))

    def scores(self) -> dict[str, float]:
        """Each layer's leave-one-out k-NN accuracy on its kept rows with a label and finite vectors (layers with
        ``K_NEIGHBOURS`` such rows or fewer are left out); the rows are dropped."""
        kept, self._kept = self._kept, {}
        scores = {}
        for column, parts in kept.items():
            if not parts:
                continue
            vectors = torch.from_numpy(np.concatenate([v for v, _ in parts]))
            labels = pd.factorize(np.concatenate([y for _, y in parts]), use_na_sentinel=True)[0]
            known = (labels >= 0) & torch.isfinite(vectors).all(1).numpy()
            if known.sum() > K_NEIGHBOURS:
                scores[column] = knn_accuracy(vectors[known], torch.from_numpy(labels[known])).item()
        return scores
