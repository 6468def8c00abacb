"""Reducers behind scikit-learn's estimator API, and the procedure: fit on the last snapshot, project them all.

Every snapshot, the fitted one included, goes through ``transform`` of the reducer fitted on the last snapshot of
``fit``, so two snapshots with equal vectors land on equal points. (UMAP's ``transform`` of its own training data returns exactly
its ``embedding_``; PaCMAP's differs from ``embedding_``, which is why ``embedding_`` is not used.)
"""

from __future__ import annotations

import copy
from typing import Any, Literal, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np

ReducerName = Literal["umap", "pacmap", "pca"]
REDUCER_NAMES: tuple[str, ...] = ("umap", "pacmap", "pca")


@runtime_checkable
class ReducerLike(Protocol):
    """Anything with scikit-learn's ``fit``/``transform``: ``umap.UMAP``, ``pacmap.PaCMAP``, ``sklearn.decomposition.PCA``..."""

    def fit(self, X: Any) -> Any: ...

    def transform(self, X: Any) -> Any: ...


ReducerSpec = Union[ReducerName, ReducerLike, None]


def check_reducer(reducer: Any) -> None:
    """Raise at once for a reducer that can never work: an unknown name, or an object without fit/transform."""
    if reducer is None or isinstance(reducer, ReducerLike):
        return
    if isinstance(reducer, str):
        if reducer not in REDUCER_NAMES:
            raise ValueError(
                f"Unknown reducer {reducer!r}. Choose one of {', '.join(map(repr, REDUCER_NAMES))}, None (no reduction), "
                "or an object with scikit-learn's fit/transform, e.g. umap.UMAP(n_neighbors=30)."
            )
        return
    raise TypeError(f"reducer must be a name or an object with fit and transform, got {type(reducer).__name__}.")


def min_samples(n_components: int) -> int:
    """The fewest samples a map is fitted on; fewer are skipped with a warning."""
    return max(4, n_components + 2)


def make_reducer(
    reducer: Union[str, ReducerLike], n_components: int, seed: Optional[int], n_samples: int, **kwargs: Any
) -> ReducerLike:
    """A fresh, unfitted estimator for ``n_samples`` samples; neighbour counts shrink to what small data allows.

    Example::

        >>> make_reducer("pca", 2, seed=0, n_samples=100)
        PCA(n_components=2, random_state=0)
    """
    if not isinstance(reducer, str):
        return _fresh_copy(reducer)
    if reducer == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=n_components, random_state=seed, **kwargs)
    if reducer == "umap":
        import umap

        kwargs["n_neighbors"] = min(kwargs.get("n_neighbors", 15), n_samples - 1)
        if seed is not None:
            kwargs.setdefault("n_jobs", 1)  # what UMAP forces anyway with a random_state; said here, not warned
        return umap.UMAP(n_components=n_components, random_state=seed, **kwargs)
    import pacmap

    requested = kwargs.get("n_neighbors")
    if requested is not None or n_samples <= 10:  # left None, PaCMAP picks it from the sample count
        kwargs["n_neighbors"] = min(requested or 10, n_samples - 1)
    kwargs.setdefault("verbose", False)
    return pacmap.PaCMAP(n_components=n_components, random_state=seed, save_tree=True, **kwargs)


def _fresh_copy(estimator: ReducerLike) -> ReducerLike:
    try:
        from sklearn.base import clone

        return clone(estimator)
    except TypeError:  # not a scikit-learn estimator (no get_params)
        return copy.deepcopy(estimator)


def fit_and_project(
    estimator: ReducerLike, fit_on: np.ndarray, snapshots: Sequence[np.ndarray], progress: bool = True
) -> list[np.ndarray]:
    """Fit ``estimator`` on ``fit_on`` and project every snapshot's vectors through its ``transform``."""
    from tqdm.auto import tqdm

    estimator.fit(fit_on)
    bar = tqdm(snapshots, desc="projecting snapshots", unit="snapshot", delay=2, disable=not progress, leave=False)
    return [np.asarray(estimator.transform(vectors), dtype=np.float32) for vectors in bar]


def describe(estimator: ReducerLike) -> dict[str, Any]:
    """The estimator's class and parameters, JSON-friendly, for the manifest."""
    cls = type(estimator)
    params = estimator.get_params() if hasattr(estimator, "get_params") else {}
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "params": {k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v) for k, v in params.items()},
    }
