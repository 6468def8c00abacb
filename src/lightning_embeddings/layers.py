"""Layer specs: an ``int`` indexes ``model.named_modules()`` (0 is the model itself, as 3LC counts), a ``str`` is a
module name such as ``"backbone.layer4.1"``. Resolution fails early, naming the nearest valid choices."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Sequence, Union

from torch import nn

LayerSpec = Union[int, str]
ROOT_NAME = "root"


@dataclass(frozen=True)
class Layer:
    """A layer spec resolved against a model: where it sits and what it is stored as."""

    spec: LayerSpec
    index: int
    name: str
    module: nn.Module

    @property
    def column(self) -> str:
        """The Parquet column holding this layer's vectors: the module's name (``root`` for the model itself)."""
        return self.name or ROOT_NAME


def resolve_layers(model: nn.Module, specs: Sequence[LayerSpec]) -> list[Layer]:
    """Resolve every spec against ``model.named_modules()``.

    Example::

        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> [(l.index, l.name) for l in resolve_layers(net, [1, "2"])]
        [(1, '0'), (3, '2')]

    Raises:
        ValueError: an index out of range, an unknown name, or two specs naming one module.
    """
    modules = list(model.named_modules())
    index_of = {name: i for i, (name, _) in enumerate(modules)}
    layers: list[Layer] = []
    for spec in specs:
        if isinstance(spec, bool) or not isinstance(spec, (int, str)):
            raise TypeError(f"layer spec must be an int index or a module name, got {type(spec).__name__}: {spec!r}.")
        if isinstance(spec, int):
            if not 0 <= spec < len(modules):
                raise ValueError(
                    f"layer index {spec} is out of range: the model has {len(modules)} modules (0..{len(modules) - 1}). "
                    f"The last ones: {_describe(modules, range(max(0, len(modules) - 5), len(modules)))}."
                )
            index = spec
        else:
            if spec not in index_of:
                close = difflib.get_close_matches(spec, list(index_of), n=5, cutoff=0.4)
                hint = _describe(modules, [index_of[n] for n in close]) if close else "no close match"
                raise ValueError(f"layer {spec!r} is not a module of {type(model).__name__}. Nearest: {hint}.")
            index = index_of[spec]
        name, module = modules[index]
        layer = Layer(spec, index, name, module)
        clash = next((other for other in layers if other.column == layer.column), None)
        if clash is not None:
            raise ValueError(
                f"layer specs {clash.spec!r} and {spec!r} both name module {layer.column!r} (index {index}); give each once."
            )
        layers.append(layer)
    return layers


def _describe(modules: list[tuple[str, nn.Module]], indices) -> str:
    return ", ".join(f"{i}: {modules[i][0] or ROOT_NAME!r} ({type(modules[i][1]).__name__})" for i in indices)

