"""Reshape strategies: turn a layer's output ``Tensor[B, ...]`` into one fixed-size vector per sample.

Every strategy is a pure function ``Tensor[B, ...] -> Tensor[B, D]`` computed on the tensor's own device.
``mean``, ``flatten`` and ``avg_pool_N_N`` give the same values as 3LC's strategies of the same name.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch.nn.functional as F
from torch import Tensor

StrategySpec = Union[str, Callable]

_AVG_POOL = re.compile(r"avg_pool_(\d+)_(\d+)")
STRATEGY_NAMES = ("mean", "token_mean", "cls", "flatten", "avg_pool_N_N")


def mean(t: Tensor) -> Tensor:
    """Average over every dimension after the channel one: ``(B, C, H, W) -> (B, C)``; 2-D stays as is."""
    return t.mean(dim=tuple(range(2, t.ndim))) if t.ndim > 2 else t


def flatten(t: Tensor) -> Tensor:
    """``(B, ...) -> (B, prod(...))``."""
    return t.reshape(t.shape[0], -1)


def cls(t: Tensor) -> Tensor:
    """The first token of a ``(B, T, D)`` sequence: ``(B, D)``."""
    _require_ndim(t, 3, "cls", "mean or flatten")
    return t[:, 0]


def token_mean(t: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
    """Mean over the tokens of a ``(B, T, D)`` sequence, leaving out padding where ``attention_mask`` is given."""
    _require_ndim(t, 3, "token_mean", "mean or flatten")
    if attention_mask is None:
        return t.mean(dim=1)
    weights = attention_mask.to(device=t.device, dtype=t.dtype).unsqueeze(-1)
    return (t * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)


def avg_pool(t: Tensor, size: int) -> Tensor:
    """Adaptive average pooling of a ``(B, C, H, W)`` map to ``size x size``, flattened channel-major."""
    _require_ndim(t, 4, f"avg_pool_{size}_{size}", "flatten or mean" if t.ndim == 2 else "token_mean or cls")
    return F.adaptive_avg_pool2d(t, (size, size)).reshape(t.shape[0], -1)


def _require_ndim(t: Tensor, ndim: int, name: str, suggestion: str) -> None:
    if t.ndim != ndim:
        raise ValueError(
            f"reshape strategy {name!r} needs a {ndim}-D output, but the layer returned shape {tuple(t.shape)}; "
            f"use {suggestion} for this layer instead."
        )


@dataclass(frozen=True)
class Strategy:
    """A resolved strategy: its name (as stored in the run's metadata) and its function."""

    name: str
    fn: Callable[..., Tensor]
    uses_attention_mask: bool = False

    def __call__(self, t: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        out = self.fn(t, attention_mask) if self.uses_attention_mask else self.fn(t)
        if not isinstance(out, Tensor) or out.ndim != 2:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"reshape strategy {self.name!r} must return a 2-D (batch, dim) tensor for a layer output of shape "
                f"{tuple(t.shape)}, but returned {got}."
            )
        return out


_NAMED = {
    "mean": Strategy("mean", mean),
    "flatten": Strategy("flatten", flatten),
    "cls": Strategy("cls", cls),
    "token_mean": Strategy("token_mean", token_mean, uses_attention_mask=True),
}


def resolve_strategy(spec: StrategySpec) -> Strategy:
    """Turn a strategy name, a callable or an import path (``package.module:function`` or ``package.module.function``)
    into a :class:`Strategy`.

    Example::

        >>> resolve_strategy("avg_pool_2_2")(torch.ones(3, 8, 5, 5)).shape
        torch.Size([3, 32])
    """
    if callable(spec):
        return Strategy(_callable_name(spec), spec)
    if not isinstance(spec, str):
        raise TypeError(f"reshape strategy must be a name or a callable, got {type(spec).__name__}: {spec!r}.")
    if spec in _NAMED:
        return _NAMED[spec]
    pool = _AVG_POOL.fullmatch(spec)
    if pool:
        n, m = int(pool.group(1)), int(pool.group(2))
        if n != m or n < 1:
            raise ValueError(f"reshape strategy {spec!r}: avg_pool_N_N takes one size N >= 1 twice, e.g. 'avg_pool_2_2'.")
        return Strategy(spec, lambda t: avg_pool(t, n))
    if ":" in spec or "." in spec:
        return Strategy(spec, _import_callable(spec))
    raise ValueError(
        f"Unknown reshape strategy {spec!r}. Choose one of {', '.join(STRATEGY_NAMES)} (N >= 1, e.g. 'avg_pool_2_2'), "
        "a callable Tensor[B, ...] -> Tensor[B, D], or its import path 'package.module:function'."
    )


def _import_callable(path: str) -> Callable:
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"reshape strategy {path!r} cannot be imported: {err}.") from err
    if not callable(obj):
        raise TypeError(f"reshape strategy {path!r} is a {type(obj).__name__}, not a callable.")
    return obj


def _callable_name(fn: Callable) -> str:
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}:{name}"


__all__ = ["Strategy", "StrategySpec", "resolve_strategy", "STRATEGY_NAMES"]
