"""Layer specs: an ``int`` indexes ``model.named_modules()`` (0 is the model itself, as 3LC counts), a ``str`` is a
module name such as ``"backbone.layer4.1"``. Resolution fails early, naming the nearest valid choices."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any, Union

from torch import nn

from lightning_embeddings.outputs import select_tensor

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


def module_table(model: nn.Module, example_input: object = None) -> list[dict]:
    """Every module of ``model.named_modules()`` as a row, the view to choose layer specs from.

    Each row holds ``index`` (the int spec: 0 is the model itself), ``name`` (the str spec; ``"root"`` for the
    model itself), ``type`` (the class name), ``params`` (the module's own parameters, its children's not counted)
    and ``output_shape``. Given ``example_input`` (a tensor, a tuple of positional arguments or a dict of keyword
    arguments, batch dimension included), one forward pass runs in eval mode under ``no_grad`` and ``output_shape``
    is the shape of the tensor the collector would record from each module's first call (from a tuple, dict or
    ``ModelOutput``: ``last_hidden_state`` or the first tensor); it is None for a module that was not called, or
    when no input is given. The model's training flags are restored and every hook is removed afterwards.

    Example::

        >>> import torch
        >>> rows = module_table(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), torch.zeros(2, 4))
        >>> [(r["index"], r["name"], r["type"], r["params"], r["output_shape"]) for r in rows]
        [(0, 'root', 'Sequential', 0, (2, 8)), (1, '0', 'Linear', 40, (2, 8)), (2, '1', 'ReLU', 0, (2, 8))]

    Raises:
        ValueError: the forward pass failed; the message names the innermost module that was running and the
            input's shape.
    """
    import torch

    modules = list(model.named_modules())
    rows = [
        {
            "index": index,
            "name": name or ROOT_NAME,
            "type": type(module).__name__,
            "params": sum(p.numel() for p in module.parameters(recurse=False)),
            "output_shape": None,
        }
        for index, (name, module) in enumerate(modules)
    ]
    if example_input is None:
        return rows

    running: list[int] = []  # the modules whose forward is under way, innermost last

    def enter(index: int):
        def hook(module: nn.Module, args: object) -> None:
            running.append(index)
        return hook

    def leave(index: int):
        def hook(module: nn.Module, args: object, output: object) -> None:
            if running and running[-1] == index:
                running.pop()
            if rows[index]["output_shape"] is None:
                try:
                    rows[index]["output_shape"] = tuple(select_tensor(output, None, rows[index]["name"]).shape)
                except ValueError:  # an output that holds no tensor
                    pass
        return hook

    training = [module.training for _, module in modules]
    handles = []
    try:
        for index, (_, module) in enumerate(modules):
            handles.append(module.register_forward_pre_hook(enter(index)))
            handles.append(module.register_forward_hook(leave(index)))
        model.eval()
        with torch.no_grad():
            _call(model, example_input)
    except Exception as error:
        shapes = _shapes(example_input)
        where = (
            f" in module {rows[running[-1]]['name']!r} (index {running[-1]}, {rows[running[-1]]['type']})"
            if running else ""
        )
        message = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(
            f"the forward pass of {type(model).__name__} with an input of shape {shapes} failed{where}: {message}. "
            "Give the shape of one whole input, batch dimension included (e.g. 1,3,224,224)."
        ) from error
    finally:
        for handle in handles:
            handle.remove()
        for (_, module), mode in zip(modules, training):
            module.training = mode
    return rows


def _call(model: nn.Module, example_input: object) -> None:
    """``model`` called on ``example_input``: a dict as keyword arguments, a tuple or list as positional ones."""
    if isinstance(example_input, Mapping):
        model(**example_input)
    elif isinstance(example_input, (tuple, list)):
        model(*example_input)
    else:
        model(example_input)


def _shapes(example_input: object) -> object:
    """The shapes of the tensors in ``example_input``, laid out as it is, for an error message."""
    import torch

    if isinstance(example_input, Mapping):
        return {k: tuple(v.shape) for k, v in example_input.items() if isinstance(v, torch.Tensor)}
    if isinstance(example_input, (tuple, list)):
        return [tuple(v.shape) for v in example_input if isinstance(v, torch.Tensor)]
    return tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__


def per_layer(argument: str, value: Any, layers: list[LayerSpec], default: Any) -> dict[LayerSpec, Any]:
    """One value for every layer, or a mapping from layer spec to value (layers it leaves out get ``default``)."""
    if not isinstance(value, Mapping):
        return {spec: value for spec in layers}
    unknown = [key for key in value if key not in layers]
    if unknown:
        raise ValueError(f"{argument} names {unknown}, which are not in layers={layers}; key it by those specs.")
    return {spec: value.get(spec, default) for spec in layers}
