"""How far a map can be believed, measured and said once: each snapshot's trustworthiness (are neighbours in the
picture neighbours in the vectors?), each step's temporal preservation (do the samples that move far in the picture
move far in their vectors?), collapsed layers, and the words every warning, picture and the CLI use for them.

Example::

    trust = {"epoch_0000-step_0000022": 0.62, "epoch_0004-step_0000110": 0.97}
    unfaithful_snapshots(trust)                     # ['epoch_0000-step_0000022']
    map_advice("last", "lightning_logs/version_0/embeddings")  # "align='last' draws every snapshot through ..."
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence, Sized
from typing import Optional, Union

import numpy as np
from scipy.stats import spearmanr

FAITHFUL = 0.8  # below this trustworthiness a snapshot's map is called not faithful
FAITHFUL_MOTION = 0.5  # below this temporal preservation (Spearman) a map's paths are called not faithful
FAITHFUL_ROWS = 2_000  # trustworthiness is measured on at most this many samples of a snapshot
NEIGHBOURS_WRONG = "neighbours in the picture are often not neighbours in the vectors"
MOTION_WRONG = "the samples that move far in the picture are not those that move far in their vectors"

PathLike = Union[str, "os.PathLike[str]"]


def trustworthiness(vectors: np.ndarray, points: np.ndarray) -> Optional[float]:
    """``sklearn.manifold.trustworthiness`` (10 neighbours) of ``points`` against the ``vectors`` they stand for;
    None where there are too few samples to tell.

    Example::

        trustworthiness(vectors, projections[["x", "y"]].to_numpy())  # 0.97: neighbours kept
    """
    from sklearn import manifold

    neighbours = min(10, len(vectors) // 2 - 1)
    return float(manifold.trustworthiness(vectors, points, n_neighbors=neighbours)) if neighbours >= 1 else None


def temporal_preservation(map_a: np.ndarray, map_b: np.ndarray, vectors_a: np.ndarray,
                          vectors_b: np.ndarray) -> float:
    """Whether a map's movements rank as the vectors' do between two snapshots: the Spearman correlation between
    each sample's displacement in the map (``map_a`` -> ``map_b``) and in its own vector space (``vectors_a`` ->
    ``vectors_b``), both Euclidean (the temporal preservation of DeepVisualInsight and TimeVis).

    Args:
        map_a, map_b: ``(n, 2)`` or ``(n, 3)`` positions, rows aligned.
        vectors_a, vectors_b: ``(n, D)`` vectors of the same samples.

    Returns:
        In [-1, 1] (1: the samples that move most in the vectors move most in the map); NaN when fewer than 3 rows
        are finite on both sides or a side's displacements are all equal.

    Raises:
        ValueError: the four arrays do not have the same number of rows.

    Example::

        temporal_preservation(maps[3][["x", "y"]].to_numpy(), maps[4][["x", "y"]].to_numpy(), vectors[3], vectors[4])
    """
    if not len(map_a) == len(map_b) == len(vectors_a) == len(vectors_b):
        raise ValueError(f"map_a, map_b, vectors_a and vectors_b must have the same rows, got {len(map_a)}, "
                         f"{len(map_b)}, {len(vectors_a)}, {len(vectors_b)}.")
    in_map = np.linalg.norm(np.asarray(map_b, np.float64) - np.asarray(map_a, np.float64), axis=1)
    in_vectors = np.linalg.norm(np.asarray(vectors_b, np.float64) - np.asarray(vectors_a, np.float64), axis=1)
    keep = np.isfinite(in_map) & np.isfinite(in_vectors)
    in_map, in_vectors = in_map[keep], in_vectors[keep]
    if len(in_map) < 3 or any(np.ptp(side) <= 1e-9 * side.max() for side in (in_map, in_vectors)):
        return float("nan")  # equal displacements (up to rounding) have no ranks
    return float(spearmanr(in_map, in_vectors).statistic)


def collapsed(vectors: np.ndarray, tolerance: float = 1e-6) -> bool:
    """Whether every row of ``vectors`` is (nearly) the same vector: a dead ReLU, a constant output. Such rows have
    no neighbours to keep; a map of them is one point (or noise), whatever its trustworthiness says.

    Example::

        >>> collapsed(np.zeros((5, 3))), collapsed(np.eye(3))
        (True, False)
    """
    if len(vectors) < 2:
        return False
    spread = float((vectors.max(axis=0) - vectors.min(axis=0)).max())
    return spread <= tolerance * float(np.abs(vectors).max())


def unfaithful_snapshots(trust: Mapping[str, Optional[float]]) -> list[str]:
    """The snapshots whose map is not faithful: trustworthiness below ``FAITHFUL`` (None: not measured)."""
    return [name for name, value in trust.items() if value is not None and value < FAITHFUL]


def panel_warning(align: Optional[str], fitted: bool) -> str:
    """The words on a picture's panel whose map is not faithful: with ``align="last"`` a panel not fitted on was
    placed by the final map."""
    if align == "last" and not fitted:
        return "not faithful: points placed by the final map"
    return "not faithful: neighbours here are often not neighbours in the vectors"


def unfaithful_paths(motion: Mapping[str, Optional[float]]) -> list[str]:
    """The snapshots whose incoming paths are not faithful: temporal preservation below ``FAITHFUL_MOTION``.

    Example::

        >>> unfaithful_paths({"epoch_0001-step_0000044": 0.12, "epoch_0002-step_0000066": 0.93})
        ['epoch_0001-step_0000044']
    """
    return [name for name, value in motion.items() if value is not None and value < FAITHFUL_MOTION]


def faithful_paths_advice(path: PathLike) -> str:
    """How to draw paths that are faithful, in the words every warning, picture and the CLI use: the parametric
    map, named as an argument and as the command that redraws the run at ``path`` without retraining."""
    return (f"reducer='parametric' is trained on the samples' motion and draws it faithfully; without retraining: "
            f"lightning-embeddings reduce {path} --reducer parametric")


def map_advice(how: str, path: PathLike) -> str:
    """What may make an unfaithful map of the run at ``path`` faithful, by ``how`` it was made (its ``align``:
    ``"last"``, ``"joint"``, ``"aligned"``, or ``"parametric"``), with the command that makes it."""
    return {
        "last": "align='last' draws every snapshot through the map of the last one, so snapshots unlike it (early "
                "epochs, before the structure formed) come out as the final structure; align='joint' fits on every "
                "snapshot of fit together and shows each by its own neighbours (docs/align.md: digits, epoch 0, "
                f"0.79 with 'last', 0.979 with 'joint'): lightning-embeddings reduce {path} --align joint",
        "joint": f"align='aligned' gives each snapshot its own UMAP: lightning-embeddings reduce {path} --align "
                 "aligned --reducer umap",
        "parametric": f"more training may help (lightning-embeddings reduce {path} --reducer parametric --param "
                      f"steps=3000), or UMAP on every snapshot of fit: lightning-embeddings reduce {path} --align "
                      "joint --reducer umap",
        "aligned": "more neighbours (n_neighbors) or another reducer may help",
    }[how]


def named(names: Sequence[str], among: Sized) -> str:
    """Snapshot names for a message: all of a few, else the first two, the last, and how many of how many."""
    if len(names) <= 3:
        return ", ".join(names)
    return f"{names[0]}, {names[1]}, ..., {names[-1]} ({len(names)} of {len(among)})"


def unfaithful_map_warning(column: str, trust: Mapping[str, Optional[float]], how: str, path: PathLike) -> Optional[str]:
    """The warning for a layer whose map is not faithful at some snapshots (None where it is at all), with
    :func:`map_advice`."""
    unfaithful = unfaithful_snapshots(trust)
    if not unfaithful:
        return None
    return (f"lightning-embeddings: the map of layer {column!r} is not faithful at {named(unfaithful, trust)} "
            f"(trustworthiness below {FAITHFUL}): there, {NEIGHBOURS_WRONG}. {map_advice(how, path)}.")


def unfaithful_paths_warning(motion: Mapping[str, Mapping[str, Optional[float]]], path: PathLike) -> Optional[str]:
    """One warning for every layer whose drawn paths are not faithful somewhere (``motion``: layer column -> its
    temporal preservation per snapshot), with how to draw faithful ones; None where all are."""
    said = "; ".join(f"layer {column!r} into {named(names, motion[column])}"
                     for column, names in ((c, unfaithful_paths(v)) for c, v in motion.items()) if names)
    if not said:
        return None
    return (f"lightning-embeddings: the drawn paths are not faithful (temporal preservation below {FAITHFUL_MOTION}: "
            f"{MOTION_WRONG}) for {said}. {faithful_paths_advice(path)}. Movement measured in the vectors: "
            "EmbeddingRun(...).samples().")
