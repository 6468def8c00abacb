"""Forward hooks that turn a layer's output into per-sample float32 vectors, inside the hook, on the layer's device."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from lightning_embeddings.layers import Layer
from lightning_embeddings.outputs import OutputKey, select_tensor, sequence_first
from lightning_embeddings.reshape import Strategy

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class LayerCapture:
    """A forward hook on one layer. While ``active`` it keeps the first call's vectors of the current batch.

    The hook is registered once and stays inert until switched on, so it survives ``torch.compile`` tracing.
    Vectors are copied out of the output inside the hook: a later in-place op (``ReLU(inplace=True)``) cannot
    change them. The main output of a sequence-first module (see :func:`sequence_first`) is recorded with its
    batch dimension moved first. Vectors that do not hold one row per sample of the batch are an error.
    """

    def __init__(self, layer: Layer, strategy: Strategy, output_key: Optional[OutputKey]) -> None:
        self.layer = layer
        self.strategy = strategy
        self.output_key = output_key
        self.active = False
        self.attention_mask: Optional[Tensor] = None
        self.vectors: Optional[Tensor] = None
        self.copied: Optional[torch.cuda.Event] = None
        self.calls = 0
        self.batch_size: Optional[int] = None
        self.output_shape: Optional[tuple[int, ...]] = None
        self.dim: Optional[int] = None
        self.sequence_first = sequence_first(layer.module) and output_key in (None, 0)
        self._handle = layer.module.register_forward_hook(self._hook)

    def start_batch(self, attention_mask: Optional[Tensor], batch_size: Optional[int]) -> None:
        """Forget the last batch's vectors; ``batch_size`` (None: unknown) is checked against the vectors."""
        self.attention_mask = attention_mask
        self.batch_size = batch_size
        self.vectors = None
        self.copied = None
        self.calls = 0

    def remove(self) -> None:
        self.active = False
        self._handle.remove()

    def _hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if not self.active:
            return
        self.calls += 1
        if self.calls > 1:
            return
        if self.dim is None and self.output_key is not None and isinstance(output, Tensor):  # the first batch only
            warnings.warn(f"lightning-embeddings: layer {self.layer.column!r} returns a plain Tensor of shape "
                          f"{tuple(output.shape)}: output_key {self.output_key!r} has nothing to pick and is ignored; "
                          "remove it (output_key picks a part of a tuple, dict or ModelOutput).", UserWarning)
        t = select_tensor(output, self.output_key, self.layer.column).detach()
        if self.sequence_first and t.ndim >= 2:
            t = t.transpose(0, 1)
        if t.dtype in _LOW_PRECISION:
            t = t.float()
        vectors = self.strategy(t, self.attention_mask).to(torch.float32)
        self._check_rows(t, vectors)
        self._check_dim(t, vectors)
        if vectors.device.type == "cuda":
            host = torch.empty(vectors.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(vectors, non_blocking=True)
            self.copied = torch.cuda.Event()
            self.copied.record()
            vectors = host
        elif vectors.device.type != "cpu":
            vectors = vectors.cpu()
        elif vectors.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
            vectors = vectors.clone()
        self.vectors = vectors

    def _check_rows(self, t: Tensor, vectors: Tensor) -> None:
        """One row per sample: as many as the batch holds (as the output's first dim where that is unknown)."""
        samples = self.batch_size if self.batch_size is not None else t.shape[0]
        if len(vectors) == samples:
            return
        picked = f" (output_key {self.output_key!r})" if self.output_key is not None else ""
        raise ValueError(
            f"layer {self.layer.column!r}{picked} with reshape {self.strategy.name!r} gave {len(vectors)} rows from "
            f"an output of shape {tuple(t.shape)} for a batch of {samples} samples: the recorded tensor needs the "
            "batch as its first dim, one "
            "row per sample. Pick the per-sample tensor with output_key, record another layer, or pass a reshape "
            "callable that moves the batch dim first (e.g. lambda t: t.transpose(0, 1).flatten(1))."
        )

    def _check_dim(self, t: Tensor, vectors: Tensor) -> None:
        if self.dim is None:
            self.output_shape, self.dim = tuple(t.shape[1:]), vectors.shape[1]
        elif vectors.shape[1] != self.dim:
            raise ValueError(
                f"layer {self.layer.column!r} with reshape {self.strategy.name!r} gave {vectors.shape[1]} values per "
                f"sample for an output of shape {tuple(t.shape)}, but {self.dim} earlier (shape (B, "
                f"{', '.join(map(str, self.output_shape))})): every sample needs one size. Use 'mean' or "
                "'avg_pool_N_N' (e.g. 'avg_pool_2_2'), which give a fixed size whatever the input's size."
            )


def sequence_first_notes(captures: Sequence[LayerCapture]) -> list[str]:
    """What to tell of each sequence-first layer (``batch_first=False``): it is recorded per sample all the same."""
    return [f"EmbeddingCollector: layer {c.layer.column!r} ({type(c.layer.module).__name__}, batch_first=False) "
            "returns (T, B, ...): it is recorded per sample, with the batch dim moved first."
            for c in captures if c.sequence_first]


def batch_vectors(captures: Sequence[LayerCapture], warn: Callable[[str], None],
                  called: Optional[dict[str, int]] = None) -> list[Optional[np.ndarray]]:
    """Each layer's vectors of this batch, None for a layer that was not called; ``called`` (the sanity check)
    counts the layers that were. Warns once of a layer that ran twice in a step and of ``mean`` over a
    ``(B, D)`` output.

    Raises:
        ValueError: the layers gave different batch sizes.
    """
    vectors = []
    for capture in captures:
        if capture.vectors is None:
            vectors.append(None)
            continue
        if called is not None:
            called[capture.layer.column] += 1
        if capture.calls > 1:
            warn(f"EmbeddingCollector: layer {capture.layer.column!r} ran {capture.calls} times in one validation "
                 "step; its first call's output is recorded.")
        if capture.strategy.name == "mean" and len(capture.output_shape or ()) == 2:
            warn(f"EmbeddingCollector: 'mean' on layer {capture.layer.column!r} with output (B, "
                 f"{', '.join(map(str, capture.output_shape))}) averages the last dim; for (batch, tokens, dim) "
                 "outputs use reshape 'token_mean' or 'cls'.")
        vectors.append(capture.vectors.numpy())
    if len({len(v) for v in vectors if v is not None}) > 1:
        raise ValueError(
            "EmbeddingCollector: the recorded layers gave different batch sizes "
            f"({dict((c.layer.column, len(v)) for c, v in zip(captures, vectors) if v is not None)}); "
            "record layers that keep one row per sample."
        )
    return vectors
