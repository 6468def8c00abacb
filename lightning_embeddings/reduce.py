"""Reducers behind scikit-learn's estimator API, and the pieces of the procedure: choose the rows a map is fitted
on, fit it, pass every snapshot through its ``transform`` in batches.

Every snapshot, the fitted one included, goes through ``transform``, so two snapshots with equal vectors land on
equal points. (UMAP's ``transform`` of its own training data returns exactly its ``embedding_``; PaCMAP's differs
from ``embedding_``, which is why ``embedding_`` is not used.)
"""

from __future__ import annotations

import copy
from typing import Any, Literal, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np

ReducerName = Literal["umap", "pacmap", "pca", "parametric"]
REDUCER_NAMES: tuple[str, ...] = ("umap", "pacmap", "pca", "parametric")
Align = Literal["last", "joint", "aligned"]
ALIGNS: tuple[str, ...] = ("last", "joint", "aligned")
FIT_SAMPLES = 20_000  # by default a map is fitted on at most this many rows
TRANSFORM_ROWS = 65_536  # rows passed to ``transform`` at once
INDEX_ABOVE_PAIRS = 20_000_000  # placed rows x fitted rows above which UMAP finds neighbours with its index


@runtime_checkable
class ReducerLike(Protocol):
    """Anything with scikit-learn's ``fit``/``transform``: ``umap.UMAP``, ``pacmap.PaCMAP``, ``sklearn.decomposition.PCA``..."""

    def fit(self, X: Any) -> Any: ...

    def transform(self, X: Any) -> Any: ...


ReducerSpec = Union[ReducerName, ReducerLike, None]


def check_reducer(reducer: Any, align: str = "last") -> None:
    """Raise at once for a reducer that can never work: an unknown name, an object without fit/transform, an
    unknown ``align``, or ``align="aligned"`` with another reducer than UMAP."""
    if align not in ALIGNS:
        raise ValueError(f"Unknown align {align!r}. Choose one of {', '.join(map(repr, ALIGNS))}.")
    if align == "aligned" and reducer not in ("umap", None):
        raise ValueError(f"align='aligned' uses umap.AlignedUMAP: it needs reducer='umap', got {reducer!r}.")
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


def check_reducer_kwargs(reducer: Any, n_components: int, seed: Optional[int], kwargs: dict[str, Any]) -> None:
    """Build the named reducer once with ``kwargs`` and check its values, so a misspelt argument or a value it
    would refuse in ``fit`` (``n_neighbors=-5``, ``metric="cosinee"``) fails now, not after training.

    Raises:
        ValueError: an argument the reducer does not take, naming the nearest ones it does; a value it refuses,
        with its rule.
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed must be None or an int, got {seed!r}.")
    if not isinstance(reducer, str) and reducer is not None:
        if kwargs:
            raise ValueError(f"reducer_kwargs {kwargs!r} go with a named reducer; configure a "
                             f"{type(reducer).__name__} object itself instead.")
        _check_values(reducer, "reducer ")
        return
    if not kwargs or reducer is None:  # nothing to check: the reducer is not imported (UMAP's import takes seconds)
        return
    try:
        estimator = make_reducer(reducer, n_components, seed, FIT_SAMPLES, **kwargs)
    except TypeError as error:
        import difflib
        import inspect

        estimator = type(make_reducer(reducer, n_components, seed, FIT_SAMPLES))
        taken = [name for name in inspect.signature(estimator).parameters if name not in ("self", "kwargs")]
        close = {key: difflib.get_close_matches(key, taken, n=3) for key in kwargs if key not in taken}
        said = "; ".join(f"{key!r}: did you mean {', '.join(map(repr, near))}?" if near else f"{key!r}: no close match"
                         for key, near in close.items())
        raise ValueError(
            f"reducer_kwargs {kwargs!r} do not fit {estimator.__module__}.{estimator.__qualname__}: "
            f"{said or ' '.join(str(error).split())}"
        ) from error
    except NotImplementedError as error:  # PaCMAP's word for a distance it does not know
        raise ValueError(f"reducer_kwargs {kwargs!r} do not fit {reducer}: {error}") from error
    _check_values(estimator, f"reducer_kwargs {kwargs!r} do not fit ")


def _check_values(estimator: Any, given: str) -> None:
    """Raise ValueError, starting with ``given`` and the estimator's name, for argument values ``estimator`` would
    refuse only in ``fit``: scikit-learn's parameter rules, UMAP's and PaCMAP's own checks (run on a copy)."""
    import difflib
    import warnings

    name = f"{type(estimator).__module__}.{type(estimator).__qualname__}"
    try:
        if hasattr(estimator, "_parameter_constraints"):  # scikit-learn's estimators (PCA, ...)
            estimator._validate_params()
        elif name.startswith("umap."):
            probe = copy.deepcopy(estimator)
            probe._raw_data, probe._initial_alpha = np.zeros((2, 2), np.float32), probe.learning_rate  # what fit sets
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                probe._validate_parameters()
        elif name.startswith("pacmap."):
            copy.deepcopy(estimator).decide_num_pairs(FIT_SAMPLES)
    except ValueError as error:
        said = str(error)
        metric = getattr(estimator, "metric", None)
        if name.startswith("umap.") and "metric" in said and isinstance(metric, str):
            from umap.distances import named_distances

            near = difflib.get_close_matches(metric, sorted(named_distances), n=3)
            said += f": metric={metric!r}" + (f", did you mean {', '.join(map(repr, near))}?" if near else "")
        raise ValueError(f"{given}{name}: {said}") from error

def min_samples(n_components: int) -> int:
    """The fewest samples a map is fitted on; fewer are skipped with a warning."""
    return max(4, n_components + 2)


def check_fit_samples(fit_samples: Optional[int], n_components: int) -> None:
    """Raise for a ``fit_samples`` a map cannot be fitted on."""
    fewest = min_samples(n_components)
    if fit_samples is not None and (not isinstance(fit_samples, int) or fit_samples < fewest):
        raise ValueError(f"fit_samples must be None or an int >= {fewest} for a {n_components}-D map, got {fit_samples!r}.")


def check_map(reducer: Any, n_components: int, seed: Optional[int] = None, align: str = "last",
              fit_samples: Optional[int] = FIT_SAMPLES, kwargs: Optional[dict[str, Any]] = None) -> None:
    """Raise at once for map arguments that can never work: the reducer and ``align`` (:func:`check_reducer`),
    ``n_components``, ``fit_samples``, and where ``kwargs`` are given the reducer's arguments and ``seed``
    (:func:`check_reducer_kwargs`).

    Example::

        check_map("umap", 2, seed=0, kwargs={"n_neigbors": 30})  # ValueError: ... did you mean 'n_neighbors'?
    """
    check_reducer(reducer, align)
    if n_components not in (2, 3):
        raise ValueError(f"n_components must be 2 or 3, got {n_components!r}.")
    if kwargs is not None:
        check_reducer_kwargs(reducer, n_components, seed, kwargs)
    check_fit_samples(fit_samples, n_components)


def make_reducer(
    reducer: Union[str, ReducerLike], n_components: int, seed: Optional[int], n_samples: int, placing: int = 0,
    **kwargs: Any,
) -> ReducerLike:
    """A fresh, unfitted estimator for ``n_samples`` samples; neighbour counts shrink to what small data allows.
    A UMAP that will place ``placing`` rows finds their neighbours with its search index
    (``force_approximation_algorithm=True``, unless ``kwargs`` say otherwise) where ``placing x n_samples`` passes
    ``INDEX_ABOVE_PAIRS``: below 4,096 fitted samples umap-learn otherwise measures each placed row's distance to
    every fitted row one pair at a time in Python (1-1.5 us a pair here), while the index costs one compile (14-16 s
    on first use in a process, benchmarks/README.md "Many snapshots") and then about 0.2 ms a row, at the same
    trustworthiness.

    Example::

        >>> make_reducer("pca", 2, seed=0, n_samples=100)
        PCA(n_components=2, random_state=0)
    """
    if not isinstance(reducer, str):
        return _fresh_copy(reducer)
    if reducer == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=n_components, random_state=seed, **kwargs)
    if reducer == "parametric":
        from lightning_embeddings.parametric import ParametricMap

        return ParametricMap(n_components=n_components, random_state=seed, **kwargs)
    if reducer == "umap":
        import umap

        kwargs["n_neighbors"] = min(kwargs.get("n_neighbors", 15), n_samples - 1)
        if placing * n_samples > INDEX_ABOVE_PAIRS:
            kwargs.setdefault("force_approximation_algorithm", True)
        if seed is not None:
            kwargs.setdefault("n_jobs", 1)  # what UMAP forces anyway with a random_state; said here, not warned
        return umap.UMAP(n_components=n_components, random_state=seed, **kwargs)
    import pacmap

    requested = kwargs.get("n_neighbors")
    if requested is not None or n_samples <= 10:  # left None, PaCMAP picks it from the sample count
        kwargs["n_neighbors"] = min(requested or 10, n_samples - 1)
    kwargs.setdefault("verbose", False)
    return pacmap.PaCMAP(n_components=n_components, random_state=seed, save_tree=True, **kwargs)


def display_name(reducer: Union[str, ReducerLike]) -> str:
    """How messages name a reducer: its name, or its estimator's class."""
    return reducer if isinstance(reducer, str) else type(reducer).__name__


def fits_snapshots(reducer: Union[str, ReducerLike]) -> bool:
    """Whether a reducer is fitted on the aligned snapshots of a layer, ``(T, N, D)`` (``ParametricMap``: it learns
    from every snapshot's neighbours and from the samples' motion between them), not on rows.

    Example::

        >>> fits_snapshots("parametric"), fits_snapshots("umap")
        (True, False)
    """
    return reducer == "parametric" or bool(getattr(reducer, "fits_snapshots", False))


def _fresh_copy(estimator: ReducerLike) -> ReducerLike:
    try:
        from sklearn.base import clone

        return clone(estimator)
    except TypeError:  # not a scikit-learn estimator (no get_params)
        return copy.deepcopy(estimator)


def quotas(sizes: np.ndarray, rows: int) -> np.ndarray:
    """Split ``rows`` over groups of ``sizes`` in proportion (largest remainders), never more than a group holds.

    Example::

        >>> quotas(np.array([600, 300, 100]), 100).tolist()
        [60, 30, 10]
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if rows >= sizes.sum():
        return sizes
    share = sizes * rows / sizes.sum()
    quota = np.floor(share).astype(np.int64)
    quota[np.argsort(quota - share, kind="stable")[: rows - quota.sum()]] += 1
    return quota


def choose_rows(groups: np.ndarray, rows: Optional[int], seed: Optional[int]) -> np.ndarray:
    """Sorted positions of at most ``rows`` of ``len(groups)`` rows, picked at random within each group so that
    every group (e.g. a label) keeps its share; all positions when ``rows`` is None or not fewer.

    Example::

        >>> choose_rows(np.array([0, 0, 0, 1]), 2, seed=0).tolist()
        [0, 2]
    """
    n = len(groups)
    if rows is None or rows >= n:
        return np.arange(n)
    shuffled = np.random.default_rng(seed).permutation(n)
    grouped = shuffled[np.argsort(groups[shuffled], kind="stable")]  # group by group, random order within each
    _, first, sizes = np.unique(groups[grouped], return_index=True, return_counts=True)
    rank = np.arange(n) - np.repeat(first, sizes)
    return np.sort(grouped[rank < np.repeat(quotas(sizes, rows), sizes)])


def aligned_maps(
    snapshots: Sequence[np.ndarray], keys: Sequence[np.ndarray], n_components: int, seed: Optional[int], **kwargs: Any
) -> tuple[list[np.ndarray], ReducerLike]:
    """One UMAP map per snapshot, fitted together by ``umap.AlignedUMAP``: a sample's points in consecutive
    snapshots are tied by its key (e.g. ``(dataloader_idx, sample_id)``), each snapshot keeps its own structure."""
    import umap

    relations = []
    for before, after in zip(keys, keys[1:]):
        where = {key: j for j, key in enumerate(after.tolist())}
        relations.append({i: where[key] for i, key in enumerate(before.tolist()) if key in where})
    kwargs["n_neighbors"] = min(kwargs.get("n_neighbors", 15), min(map(len, snapshots)) - 1)
    estimator = umap.AlignedUMAP(n_components=n_components, random_state=seed, **kwargs)
    estimator.fit(list(snapshots), relations=relations)
    return [np.asarray(e, dtype=np.float32) for e in estimator.embeddings_], estimator


def usable(vectors: np.ndarray) -> np.ndarray:
    """The rows a map can take: every value finite (a sample without a vector reads as a row of NaN)."""
    return np.isfinite(vectors).all(axis=1)


def describe(estimator: ReducerLike) -> dict[str, Any]:
    """The estimator's class and parameters, JSON-friendly, for the manifest."""
    cls = type(estimator)
    params = estimator.get_params() if hasattr(estimator, "get_params") else {}
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "params": {k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v) for k, v in params.items()},
    }
