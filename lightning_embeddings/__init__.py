"""lightning-embeddings: see a model's embeddings while it trains.

``EmbeddingCollector`` records chosen layers every validation epoch; ``EmbeddingRun`` reads a run back and raises
``RunError`` (a ``ValueError``) for a run directory it cannot read: a damaged or foreign file, or a newer format.
A second process writing a run directory that another one writes gets ``RunLockedError``.
"""

from typing import Any

from lightning_embeddings._version import __version__  # noqa: F401  (the package face says its version)

__all__ = ["EmbeddingCollector", "EmbeddingRun", "ParametricMap", "RunError", "RunLockedError"]


def __getattr__(name: str) -> Any:
    """Import the public classes on first use: the command line starts without importing Lightning."""
    if name == "EmbeddingCollector":
        from lightning_embeddings.callback import EmbeddingCollector

        return EmbeddingCollector
    if name == "EmbeddingRun":
        from lightning_embeddings.run import EmbeddingRun

        return EmbeddingRun
    if name == "ParametricMap":
        from lightning_embeddings.parametric import ParametricMap

        return ParametricMap
    if name == "RunError":
        from lightning_embeddings.store import RunError

        return RunError
    if name == "RunLockedError":
        from lightning_embeddings.lock import RunLockedError

        return RunLockedError
    raise AttributeError(f"module 'lightning_embeddings' has no attribute {name!r}")
