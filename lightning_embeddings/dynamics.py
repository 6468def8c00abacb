"""What a run's samples say in each layer's own vector space (cosine distance, never the map), tested on their own:
arrays in, arrays or a DataFrame out.

    neighbours(vectors)                         each row's k nearest other rows
    knn_agreement(vectors, labels)              the share of them that carry the row's label
    knn_accuracy(vectors, labels)               leave-one-out k-NN accuracy (torch): the live per-layer signal
    sample_dynamics(labels, snapshots)          per sample across fit: agreement, movement, learned and forgotten,
                                                cartography, AUM, suspicion

What the map's paths say is :mod:`~lightning_embeddings.paths`'s; how far the map itself can be believed is
:mod:`~lightning_embeddings.faithfulness`'s.
"""

from __future__ import annotations

from typing import Iterable, Literal, NamedTuple, Optional

import numpy as np
import pandas as pd
import torch
from scipy.special import logsumexp
from torchmetrics.functional.classification import multiclass_accuracy


K_NEIGHBOURS = 10  # neighbours of a row in its layer's vector space
PREDICTION_COLUMNS = ("correct", "learned_epoch", "forgetting_events")  # of samples(), from predictions
LOGIT_COLUMNS = ("confidence", "variability", "aum")  # of samples(), from logits
# among samples of equal suspicion, the evidence against the label ranks them, the lowest value first: the last
# snapshot's agreement with the neighbours, the confidence in the label, its margin, the share of snapshots right
EVIDENCE = ("knn_agreement_last", "confidence", "aum", "correct")
# Up to rows^2 x (dim + 256) of work (10,000 rows at 512-d: about 1.5 s on 2 cores) neighbours() searches exactly;
# above, pynndescent's graph (benchmarks/README.md, "k-NN index").
EXACT_WORK = 10_000**2 * (512 + 256)
CHUNK_VALUES = 1 << 24  # similarities an exact search holds at once (64 MiB)


def _search_rows(vectors: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the rows a search can take, those rows as float32): for ``"cosine"`` the finite, non-zero rows
    scaled to unit length; for ``"euclidean"`` the finite rows."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"vectors must be a 2-D array (rows, dim), got shape {x.shape}.")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    if metric == "euclidean":
        valid = np.flatnonzero(np.isfinite(norms))
        return valid, x[valid]
    valid = np.flatnonzero(np.isfinite(norms) & (norms > 0))
    return valid, x[valid] / norms[valid, None].astype(np.float32)


def _exact(rows: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Each row's ``k + 1`` nearest rows, itself among them: chunked matrix products (for unit rows the largest
    dot product; for Euclidean distance the largest ``2 x.y - |y|^2``)."""
    base = torch.from_numpy(rows)
    penalty = (base * base).sum(1) if metric == "euclidean" else torch.zeros(len(rows))
    scale = 2.0 if metric == "euclidean" else 1.0
    chunk = max(1, CHUNK_VALUES // len(rows))
    found = [torch.topk(scale * (base[i:i + chunk] @ base.T) - penalty, k + 1, dim=1).indices
             for i in range(0, len(rows), chunk)]
    return torch.cat(found).numpy()


def _approximate(rows: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Each row's nearest rows in pynndescent's graph of ``2k + 1`` (recall@10 0.99 where ``k + 1`` gives
    0.89 at 100,000 x 512)."""
    from pynndescent import NNDescent  # numba-compiled on first use: only for snapshots too large to search exactly

    return NNDescent(rows, metric=metric, n_neighbors=2 * k + 1, random_state=0).neighbor_graph[0]


def neighbours(
    vectors: np.ndarray, k: int = K_NEIGHBOURS, metric: Literal["cosine", "euclidean"] = "cosine"
) -> np.ndarray:
    """The ``k`` nearest other rows of each row by cosine (or Euclidean) distance.

    Exact (chunked matrix products) up to ``EXACT_WORK``: rows^2 x (dim + 256), 10,000 rows at 512-d; above it,
    pynndescent's nearest-neighbour graph, whose cost grows about linearly with the rows (100,000 x 512: about 4 s
    on 2 cores, recall@10 0.99; measured in ``benchmarks/knn_index.py``).

    Args:
        vectors: ``(n, D)`` array.
        k: neighbours per row.
        metric: ``"cosine"`` (the dynamics' distance) or ``"euclidean"`` (UMAP's, for the parametric map's graphs).

    Returns:
        ``(n, k)`` int64 row indices, nearest first. Rows whose vector has a non-finite value (or, for cosine, is
        zero) get a row of -1 and are nobody's neighbour; with fewer than ``k`` other valid rows, the rest of a row
        is -1.

    Raises:
        ValueError: ``vectors`` is not 2-D, ``k`` is below 1 or ``metric`` is unknown.

    Example::

        found = neighbours(vectors)            # (n, 10)
        labels[found[0]]                       # the labels around row 0
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}.")
    valid, rows = _search_rows(vectors, metric)
    out = np.full((len(vectors), k), -1, dtype=np.int64)
    width = min(k, len(valid) - 1)
    if width < 1:
        return out
    search = _exact if len(valid) ** 2 * (rows.shape[1] + 256) <= EXACT_WORK else _approximate
    found = search(rows, width, metric)
    itself = found == np.arange(len(valid))[:, None]
    found = np.take_along_axis(found, np.argsort(itself, axis=1, kind="stable"), axis=1)[:, :width]
    out[valid, :width] = np.where(found >= 0, valid[found], -1)
    return out


def nearest_to(vectors: np.ndarray, queries: np.ndarray, k: int = K_NEIGHBOURS) -> np.ndarray:
    """The ``k`` nearest other rows by cosine distance, exactly, of the rows ``queries`` of ``vectors``: an
    ``(len(queries), k)`` int64 array, nearest first, -1 where there are fewer (or the query row has no direction).

    Example::

        nearest_to(vectors, np.array([1119]), k=5)   # the five rows nearest to row 1119
    """
    valid, rows = _search_rows(vectors, "cosine")
    out = np.full((len(queries), k), -1, dtype=np.int64)
    place = {row: i for i, row in enumerate(valid)}
    asked = [(n, place[q]) for n, q in enumerate(np.asarray(queries, np.int64)) if q in place]
    width = min(k, len(valid) - 1)
    if not asked or width < 1:
        return out
    similar = rows[[i for _, i in asked]] @ rows.T
    similar[np.arange(len(asked)), [i for _, i in asked]] = -np.inf  # not itself
    found = np.argsort(-similar, axis=1, kind="stable")[:, :width]
    out[[n for n, _ in asked], :width] = valid[found]
    return out


def _codes(labels: np.ndarray, n: int) -> np.ndarray:
    """Labels as codes 0..C-1 in sorted order, -1 where missing (None/NaN)."""
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} rows: give one label per row, aligned.")
    return pd.factorize(pd.Series(np.asarray(labels, dtype=object)), sort=True)[0].astype(np.int64)


def _labels_of(codes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The labels that :func:`_codes` coded as ``codes``: an object array, None where a code is -1."""
    uniques = pd.factorize(pd.Series(np.asarray(labels, dtype=object)), sort=True)[1]
    values = np.asarray(uniques, dtype=object)[np.maximum(codes, 0)] if len(uniques) else np.full(len(codes), None)
    return np.where(codes >= 0, values, None)


def _theirs(found: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The label codes of each row's neighbours, -1 where there is no neighbour or it has no label."""
    return np.where(found >= 0, codes[found], -1)


def _agreement(found: np.ndarray, codes: np.ndarray) -> np.ndarray:
    theirs = _theirs(found, codes)
    known = (theirs >= 0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (theirs == codes[:, None]).sum(axis=1) / known
    share[(codes < 0) | (known == 0)] = np.nan
    return share


def _majority(found: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each row's most common neighbour label code (ties: the smallest), -1 where no neighbour has a label."""
    theirs = _theirs(found, codes)
    votes = (theirs[:, :, None] == theirs[:, None, :]).sum(axis=2)
    score = np.where(theirs >= 0, votes * (codes.max(initial=0) + 2) - theirs, -1)
    return np.take_along_axis(theirs, score.argmax(axis=1)[:, None], axis=1)[:, 0]


def knn_agreement(vectors: np.ndarray, labels: np.ndarray, k: int = K_NEIGHBOURS) -> np.ndarray:
    """The share of each row's ``k`` nearest neighbours (cosine, :func:`neighbours`) that carry its label.

    Neighbours without a label do not count. A low value marks a sample that sits among another class: hard,
    ambiguous, or mislabelled.

    Args:
        vectors: ``(n, D)`` array.
        labels: ``(n,)`` labels of any kind (ints, strings); None/NaN where missing.
        k: neighbours per row.

    Returns:
        ``(n,)`` float in [0, 1]; NaN where the row's vector is not finite, its label is missing, or none of its
        neighbours has a label.

    Example::

        agreement = knn_agreement(vectors, labels)
        np.argsort(agreement)[:20]             # the samples most surrounded by other classes
    """
    return _agreement(neighbours(vectors, k), _codes(labels, len(vectors)))


def knn_accuracy(vectors: torch.Tensor, labels: torch.Tensor, k: int = K_NEIGHBOURS) -> torch.Tensor:
    """Leave-one-out k-NN accuracy: each row's class predicted by the majority of its ``k`` nearest other rows
    (cosine, :func:`neighbours`; ties: the smallest class), scored with torchmetrics' micro-averaged multiclass
    accuracy. A row without neighbours (a zero or non-finite vector) counts as wrong.

    A few thousand rows cost a fraction of a second (exact search; benchmarks/README.md: 2 layers of 2,048 rows,
    63 ms). How well a layer separates the classes, logged live per layer.

    Args:
        vectors: ``(n, D)`` float tensor.
        labels: ``(n,)`` int64 class ids 0..C-1.
        k: neighbours per row (at most ``n - 1`` are used).

    Returns:
        A scalar tensor in [0, 1]; NaN with fewer than 2 rows.

    Example::

        knn_accuracy(torch.randn(4096, 512), torch.randint(0, 10, (4096,)))   # about 0.1: no class structure
    """
    if len(vectors) < 2:
        return torch.tensor(float("nan"))
    target = labels.detach().cpu().to(torch.int64)
    classes = int(target.max()) + 1
    predicted = _majority(neighbours(vectors.detach().cpu().float().numpy(), k), target.numpy())
    unknown = predicted < 0
    predicted[unknown] = (target.numpy()[unknown] + 1) % max(classes, 2)  # no neighbour: not classified right
    return multiclass_accuracy(torch.from_numpy(predicted), target, num_classes=max(classes, 2), average="micro")


class SnapshotView(NamedTuple):
    """One ``fit`` snapshot of one layer as :func:`sample_dynamics` reads it, rows aligned to the labels."""

    epoch: int
    vectors: np.ndarray  # (n, D) float32; a row of NaN where the sample has no vector in this snapshot
    predictions: Optional[np.ndarray] = None  # (n,) predicted class per row (None/NaN where unknown)
    logits: Optional[np.ndarray] = None  # (n, C) float


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine distance between two aligned ``(n, D)`` arrays; NaN where a row is not finite or zero."""
    dot = np.einsum("ij,ij->i", a, b, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64) * np.einsum("ij,ij->i", b, b, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = np.clip(1.0 - dot / norms, 0.0, 2.0)
    distance[~(np.isfinite(norms) & (norms > 0))] = np.nan
    return distance


def _correct(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1.0 where the prediction equals the label, 0.0 where not, NaN where either is missing."""
    predicted, given = pd.Series(np.asarray(predictions, dtype=object)), pd.Series(np.asarray(labels, dtype=object))
    known = (predicted.notna() & given.notna()).to_numpy()
    return np.where(known, predicted.to_numpy(object) == given.to_numpy(object), np.nan)


def _class_ids(labels: np.ndarray, classes: int) -> Optional[np.ndarray]:
    """The labels as int64 indices into ``classes`` logits (-1 where missing); None unless every label present is
    an integer in 0..classes-1."""
    series = pd.Series(np.asarray(labels, dtype=object)).infer_objects()
    if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return None
    values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    known = values[~np.isnan(values)]
    if not len(known) or np.any(known != np.round(known)) or known.min() < 0 or known.max() >= classes:
        return None
    return np.where(np.isnan(values), -1, values).astype(np.int64)


def _cartography(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(softmax probability of the labelled class, its logit minus the largest other logit) per row; NaN where the
    label is missing."""
    logits = np.asarray(logits, dtype=np.float64)
    probability, margin = np.full(len(targets), np.nan), np.full(len(targets), np.nan)
    rows = np.flatnonzero(targets >= 0)
    own = logits[rows, targets[rows]]
    probability[rows] = np.exp(own - logsumexp(logits[rows], axis=1))
    others = logits[rows]
    others[np.arange(len(rows)), targets[rows]] = -np.inf
    margin[rows] = own - others.max(axis=1, initial=-np.inf)
    return probability, margin


def _mean_std(values: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample mean and (population) standard deviation over snapshots, skipping NaN; NaN where none is known."""
    stack = np.asarray(values, dtype=np.float64).reshape(len(values), n)
    count = np.isfinite(stack).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(stack, axis=0) / count
        std = np.sqrt(np.nansum((stack - mean) ** 2, axis=0) / count)
    return np.where(count > 0, mean, np.nan), np.where(count > 0, std, np.nan)


def _stays_from(holds: np.ndarray) -> np.ndarray:
    """Per column of the ``(T, n)`` boolean ``holds``, the first snapshot index t with ``holds[t:]`` all true; T
    where ``holds[-1]`` is false."""
    fails = ~holds
    return np.where(fails.any(axis=0), len(holds) - np.argmax(fails[::-1], axis=0), 0)


def by_suspicion(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` (:func:`sample_dynamics`' columns) by ``suspicion``, highest first; rows of equal
    suspicion (to 9 decimals: a mean's rounding is no evidence) by ``EVIDENCE``, lowest first
    (``knn_agreement_last``, then ``confidence``, ``aum``, ``correct``); NaN last; then in their order in ``frame``.

    Example::

        by_suspicion(sample_dynamics(labels, views)).head(20)
    """
    keys = frame[list(EVIDENCE)].assign(_suspicion=frame["suspicion"].round(9)).reset_index(drop=True)
    order = keys.sort_values(["_suspicion", *EVIDENCE], ascending=[False] + [True] * len(EVIDENCE), kind="stable",
                             na_position="last").index
    return frame.iloc[order.to_numpy()]


def sample_dynamics(labels: np.ndarray, snapshots: Iterable[SnapshotView], k: int = K_NEIGHBOURS) -> pd.DataFrame:
    """Per-sample training dynamics of one layer across its ``fit`` snapshots, in its own vector space.

    ``snapshots`` (in training order) are read one at a time: at most two snapshots' vectors are held (100,000
    samples x 10 snapshots fit in bounded memory); per snapshot, each sample's :func:`neighbours` are found.

    Args:
        labels: ``(n,)`` each sample's label, ints or strings; None/NaN where missing.
        snapshots: :class:`SnapshotView` per snapshot, rows aligned to ``labels``.
        k: neighbours per sample.

    Returns:
        One row per sample, in the order of ``labels``, with columns:

        - ``knn_agreement``: mean over snapshots of :func:`knn_agreement` (skipping snapshots where it is NaN);
          ``knn_agreement_last``: at the last snapshot.
        - ``neighbour_label``: the most common label of the sample's neighbours at the last snapshot (ties: the
          smallest), what its neighbours say it is; None where none of them has a label.
        - ``movement``: mean over consecutive snapshots of the cosine distance between the sample's two vectors.
        - ``settled_epoch``: epoch of the first snapshot from which the majority label of its neighbours never
          changes again (NaN where none of its neighbours has a label at the last snapshot).
        - ``correct`` (fraction of snapshots predicted right), ``learned_epoch`` (epoch of the first snapshot from
          which it stays right; NaN if wrong at the last), ``forgetting_events`` (right -> wrong transitions between
          consecutive snapshots; Toneva et al. 2019): NaN where no predictions are given.
        - ``confidence`` and ``variability`` (mean and standard deviation over snapshots of the softmax probability
          of the labelled class; Swayamdipta et al. 2020), ``aum`` (mean of the labelled class's logit minus the
          largest other logit; Pleiss et al. 2020): NaN where no logits are given or the labels are not integers
          in 0..C-1.
        - ``suspicion``: in [0, 1], higher = more likely a label error: ``1 - knn_agreement``, the same with or
          without predictions and logits. Chosen by ``benchmarks/explore_suspicion.py`` (digits, a small CNN, 40
          epochs, planted label noise, 5 seeds): on training samples with 10-40% symmetric noise, AUROC 0.998-1.000
          and precision@k 0.976-0.989, against 0.940-0.968 for ``1 - confidence``, 0.958-0.975 for ``-aum``,
          0.973-0.984 for ``1 - correct``; with pair noise (c -> c+1) at 30% and 40% it leads (precision@k 0.843
          and 0.661; the prediction-based signals at most 0.788 and 0.638). Its means with ``1 - confidence`` or
          ``1 - correct`` gained at most 0.015 (held-out samples) and lost some under pair noise
          (``benchmarks/README.md``, "Choosing suspicion"). :func:`by_suspicion` ranks by it and, among equal
          values (a sample none of whose neighbours ever shared its label scores 1.0), by the evidence.

        The columns are the same whatever was recorded, so code that selects them runs on any run.

    Raises:
        ValueError: a snapshot's rows do not match the labels.

    Example::

        views = (SnapshotView(epoch, vectors_at[epoch], predictions_at[epoch]) for epoch in range(10))
        frame = sample_dynamics(labels, views)
        frame.sort_values("suspicion", ascending=False).head(20)
    """
    n = len(labels)
    codes = _codes(labels, n)
    epochs, agreement, majority, movement = [], [], [], []
    judged, correct, probability, margin = [], [], [], []
    previous = None
    for view in snapshots:
        vectors = np.asarray(view.vectors, dtype=np.float32)
        if len(vectors) != n:
            raise ValueError(f"The snapshot of epoch {view.epoch} has {len(vectors)} rows for {n} labels: its rows "
                             "must be aligned to the labels (a row of NaN where a sample has no vector).")
        found = neighbours(vectors, k)
        epochs.append(view.epoch)
        agreement.append(_agreement(found, codes))
        majority.append(_majority(found, codes))
        if previous is not None:
            movement.append(_cosine_distance(previous, vectors))
        previous = vectors
        if view.predictions is not None:
            judged.append(view.epoch)
            correct.append(_correct(view.predictions, labels))
        targets = None if view.logits is None else _class_ids(labels, np.shape(view.logits)[1])
        if targets is not None:
            p, m = _cartography(view.logits, targets)
            probability.append(p)
            margin.append(m)
    columns = {
        "knn_agreement": _mean_std(agreement, n)[0],
        "knn_agreement_last": agreement[-1] if agreement else np.full(n, np.nan),
        "neighbour_label": _labels_of(majority[-1] if majority else np.full(n, -1), labels),
        "movement": _mean_std(movement, n)[0],
        "settled_epoch": np.full(n, np.nan),
        **{name: np.full(n, np.nan) for name in PREDICTION_COLUMNS + LOGIT_COLUMNS},  # where not measured
    }
    if majority:
        labelled = np.asarray(majority)
        start = _stays_from(np.vstack([labelled[:-1] == labelled[1:], np.ones((1, n), bool)]))
        columns["settled_epoch"] = np.where(labelled[-1] >= 0, np.asarray(epochs, np.float64)[start], np.nan)
    if correct:
        right = np.asarray(correct) == 1
        start = _stays_from(right)
        learned = np.full(n, np.nan)
        learned[start < len(judged)] = np.asarray(judged, np.float64)[start[start < len(judged)]]
        columns.update(correct=_mean_std(correct, n)[0], learned_epoch=learned,
                       forgetting_events=(right[:-1] & (np.asarray(correct)[1:] == 0)).sum(axis=0))
    if probability:
        confidence, variability = _mean_std(probability, n)
        columns.update(confidence=confidence, variability=variability, aum=_mean_std(margin, n)[0])
    columns["suspicion"] = 1.0 - columns["knn_agreement"]
    return pd.DataFrame(columns)
