"""Which tensor of a module's output is recorded, and whether the module puts the sequence before the batch: shared
by the forward hook (:mod:`~lightning_embeddings.capture`) and the table of modules
(:func:`~lightning_embeddings.layers.module_table`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
from torch import Tensor

OutputKey = Union[int, str]


def select_tensor(output: Any, key: Optional[OutputKey], where: str) -> Tensor:
    """Pick the tensor to record from a module's output.

    A tensor is taken as is. From a tuple, list, dict or Hugging Face ``ModelOutput`` the ``key`` (an index or a
    name) is taken, else ``last_hidden_state`` where there is one, else the first tensor found.

    Example::

        >>> select_tensor((torch.ones(2, 3), torch.zeros(2)), None, "lstm").shape
        torch.Size([2, 3])
    """
    if isinstance(output, Tensor):
        return output
    if key is not None and isinstance(output, (Mapping, tuple, list)):
        try:
            picked = list(output.values())[key] if isinstance(output, Mapping) and isinstance(key, int) else output[key]
        except (KeyError, IndexError, TypeError):
            available = list(output.keys()) if isinstance(output, Mapping) else f"indices 0..{len(output) - 1}"
            raise ValueError(
                f"layer {where!r}: output_key {key!r} is not in its {type(output).__name__} output; available: {available}."
            ) from None
        return select_tensor(picked, None, where)
    if isinstance(output, Mapping) and isinstance(output.get("last_hidden_state"), Tensor):
        return output["last_hidden_state"]
    found = _first_tensor(output)
    if found is None:
        raise ValueError(
            f"layer {where!r} returned a {type(output).__name__} that holds no tensor; record another layer, "
            "or pass output_key to say which part of the output to record."
        )
    return found


def _first_tensor(output: Any) -> Optional[Tensor]:
    if isinstance(output, Tensor):
        return output
    items = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else ()
    return next((t for t in map(_first_tensor, items) if t is not None), None)


def sequence_first(module: torch.nn.Module) -> bool:
    """Whether ``module`` declares sequence-first outputs ``(T, B, ...)``: ``nn.RNN/LSTM/GRU``,
    ``nn.MultiheadAttention`` and ``nn.Transformer*`` with ``batch_first=False`` (PyTorch's default).

    Example::

        >>> sequence_first(torch.nn.LSTM(8, 24)), sequence_first(torch.nn.LSTM(8, 24, batch_first=True))
        (True, False)
    """
    if isinstance(module, (torch.nn.TransformerEncoder, torch.nn.TransformerDecoder)):
        module = module.layers[0]
    if isinstance(module, (torch.nn.TransformerEncoderLayer, torch.nn.TransformerDecoderLayer)):
        module = module.self_attn
    return getattr(module, "batch_first", None) is False
