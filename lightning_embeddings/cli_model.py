"""Loading the model that ``lightning-embeddings layers`` lists: a class (or function) built with no arguments, named
as ``package.module:Class`` or ``path/to/file.py:Class``, or a checkpoint loaded by its class.

Example::

    model = load_model("examples/digits.py:DigitsCNN")
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from lightning_embeddings.cli_parser import CommandError, UsageError


def load_model(target: str, model_class: Optional[str] = None):
    """Build the model named by ``target``: ``package.module:Class`` or ``path/to/file.py:Class`` called with no
    arguments, or a ``.ckpt`` checkpoint loaded by ``model_class`` (``package.module:Class``).

    Raises:
        UsageError: a target of neither form, or a checkpoint without ``model_class``.
        CommandError: the class cannot be imported or built, or the checkpoint cannot be loaded.
    """
    from torch import nn

    if target.endswith(".ckpt") or (Path(target).is_file() and not target.endswith(".py")):
        if model_class is None:
            hint = _ckpt_hint(target)
            raise UsageError(f"a checkpoint needs the model's class: add --class package.module:Class{hint}.")
        if not Path(target).is_file():
            raise CommandError(f"checkpoint {target} does not exist.")
        cls = _import_object(model_class)
        model = _load_checkpoint(cls, target)
    else:
        if model_class is not None:
            raise UsageError("--class goes with a checkpoint TARGET (.ckpt); here TARGET names the class itself.")
        factory = _import_object(target)
        try:
            model = factory()
        except TypeError as error:
            raise CommandError(
                f"could not build {target} with no arguments ({' '.join(str(error).split())}); pass a checkpoint "
                "instead: lightning-embeddings layers model.ckpt --class " + target
            ) from error
    if not isinstance(model, nn.Module):
        raise CommandError(f"{target} gave a {type(model).__name__}, not a torch.nn.Module.")
    return model


def _import_object(target: str) -> Callable[..., Any]:
    module_part, sep, attribute = target.rpartition(":")
    if not sep or not module_part or not attribute or (len(module_part) == 1 and module_part.isalpha()):
        raise UsageError(
            f"{target!r} does not name a class: give package.module:Class, path/to/file.py:Class, or a .ckpt file."
        )
    if module_part.endswith(".py") or os.sep in module_part or "/" in module_part:
        path = Path(module_part)
        if not path.is_file():
            raise CommandError(f"{module_part} is not a file; give path/to/file.py:Class or package.module:Class.")
        sys.path.insert(0, str(path.resolve().parent))  # so that the file's own imports of its neighbours work
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(path.stem, module)
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            raise CommandError(f"importing {module_part} failed: {type(error).__name__}: {error}") from error
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m` does: modules beside you import
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as error:
            raise CommandError(
                f"cannot import {module_part!r} ({error}): run from the directory that holds it, add that directory "
                "to PYTHONPATH, or give path/to/file.py:Class."
            ) from error
        except Exception as error:
            raise CommandError(f"importing {module_part!r} failed: {type(error).__name__}: {error}") from error
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            from torch import nn

            classes = sorted(
                name for name, value in vars(module).items()
                if isinstance(value, type) and issubclass(value, nn.Module) and value.__module__ == module.__name__
            )
            hint = f"it defines {', '.join(classes)}" if classes else "it defines no torch.nn.Module class"
            raise CommandError(f"{module_part} has no {attribute!r}: {hint}.")
        found = getattr(found, part)
    if not callable(found):
        raise CommandError(f"{target} is a {type(found).__name__}, not a class.")
    return found


def _load_checkpoint(cls: Any, path: str):
    import torch
    from lightning.pytorch import LightningModule
    from torch import nn

    try:
        if isinstance(cls, type) and issubclass(cls, LightningModule):
            return cls.load_from_checkpoint(path, map_location="cpu")
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            model = cls()
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(checkpoint.get("state_dict", checkpoint))
            return model
    except Exception as error:
        raise CommandError(
            f"loading {path} with {cls.__name__} failed: {type(error).__name__}: {' '.join(str(error).split())}"
        ) from error
    raise CommandError(f"--class must name a LightningModule or torch.nn.Module class, got {cls!r}.")


def _ckpt_hint(path: str) -> str:
    """The class a LightningCLI checkpoint names in its hyper-parameters, said, never imported from the file."""
    try:
        import torch

        hparams = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
        class_path = hparams.get("_class_path") if isinstance(hparams, dict) else None
    except Exception:
        return ""
    if not isinstance(class_path, str) or "." not in class_path:
        return ""
    module, _, name = class_path.rpartition(".")
    return f" (this checkpoint was saved from {module}:{name})"
