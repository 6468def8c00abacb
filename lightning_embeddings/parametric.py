"""``ParametricMap``: one small torch encoder shared by every snapshot, trained so that drawn motion means motion.

UMAP fitted on one snapshot and applied to the others keeps each snapshot's neighbours, not its samples' motion: a
sample's drawn step barely ranks its real step in the vectors (temporal preservation about 0.1). This map is a
function ``f: R^D -> R^k`` (an MLP plus a linear path that starts as the PCA of all snapshots) trained on the
snapshots of one layer together, on UMAP's loss over each snapshot's own fuzzy neighbour graph plus a motion term:
for every pair of consecutive snapshots, 1 - the Pearson correlation, over the samples, of ``log|f(x') - f(x)|``
and ``log|x' - x|``. Equal rows land on equal points, so a frozen model's map does not move.

The recipe and its figures come from shared/reference/parametric_map_prototype.py; docs/align.md compares it with
the other maps.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional, Union

import numpy as np
import torch
from sklearn.base import BaseEstimator

from lightning_embeddings.dynamics import neighbours

PCA_SCALE = 5.0  # std of the first principal component at step 0 (UMAP's coordinates are of this order)
PCA_ROWS = 20_000  # rows the initial PCA is computed on
FULL_ROWS = 50_000  # up to this many rows in all snapshots, every row is embedded at each step (all motion pairs)
MOTION_PAIRS = 8_192  # above it, (sample, step) pairs sampled per step for the motion term
LOG_GUARD = 1e-4  # added to a drawn displacement before its log
CLAMP = 1e-4  # smallest probability inside a log of UMAP's cross-entropy


class _Encoder(torch.nn.Module):
    """``inner(z) = head(mlp(z)) + skip(z)`` on normalised rows ``z = (x - mean) / scale``; the head starts at zero,
    the skip at the PCA, so before training the map is the PCA."""

    def __init__(self, mean: np.ndarray, scale: float, hidden: Sequence[int], pca: np.ndarray, offset: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))
        self.register_buffer("scale", torch.tensor(float(scale)))
        widths = [len(mean), *hidden]
        self.mlp = torch.nn.Sequential(*(module for before, after in zip(widths, widths[1:])
                                         for module in (torch.nn.Linear(before, after), torch.nn.ReLU())))
        self.head = torch.nn.Linear(widths[-1], len(pca))
        self.skip = torch.nn.Linear(len(mean), len(pca))
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.skip.weight.copy_(torch.from_numpy(pca))
            self.skip.bias.copy_(torch.from_numpy(offset))

    def inner(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(z)) + self.skip(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner((x - self.mean) / self.scale)


class _Rows:
    """The usable rows of ``(T, N, D)`` snapshots, normalised, snapshot after snapshot (``offsets[t]`` is where
    snapshot ``t`` starts), and the pairs ``(a, b)`` of rows holding one sample in consecutive snapshots, with the
    step ``t`` and the length of the sample's move ``|x_b - x_a|`` (pairs that do not move are left out)."""

    def __init__(self, snapshots: np.ndarray) -> None:
        present = np.isfinite(snapshots).all(axis=2)
        if present.sum(axis=1).max() < 3:
            raise ValueError(f"ParametricMap.fit needs a snapshot with at least 3 rows of finite values; the largest "
                             f"of {len(snapshots)} has {present.sum(axis=1).max()}.")
        usable = snapshots[present]
        self.mean = usable.mean(axis=0, dtype=np.float64)
        self.scale = max(float(np.sqrt(((usable - self.mean) ** 2).sum(axis=1).mean())), 1e-12)
        self.z = ((usable - self.mean) / self.scale).astype(np.float32)
        self.sizes = present.sum(axis=1)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        row_of = np.full(present.shape, -1, dtype=np.int64)
        row_of[present] = np.arange(len(usable))
        step, sample = np.nonzero(present[:-1] & present[1:])
        a, b = row_of[step, sample], row_of[step + 1, sample]
        moved = np.linalg.norm(self.z[b] - self.z[a], axis=1)
        keep = moved > 0
        self.a, self.b, self.step, self.moved = a[keep], b[keep], step[keep].astype(np.int64), moved[keep]

    def snapshot(self, t: int) -> np.ndarray:
        return self.z[self.offsets[t]:self.offsets[t] + self.sizes[t]]


def _graph(z: np.ndarray, n_neighbors: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One snapshot's UMAP fuzzy simplicial set (umap-learn's own), Euclidean, as ``(heads, tails, weights)``."""
    from umap.umap_ import fuzzy_simplicial_set

    k = min(n_neighbors, len(z))
    found = neighbours(z, k - 1, metric="euclidean")
    indices = np.concatenate([np.arange(len(z))[:, None], found], axis=1)  # UMAP's convention: the row itself first
    distances = np.linalg.norm(z[indices] - z[:, None], axis=2).astype(np.float32)
    graph = fuzzy_simplicial_set(z, k, np.random.RandomState(seed), "euclidean", knn_indices=indices,
                                 knn_dists=distances)[0].tocoo()
    keep = graph.data > 0
    return graph.row[keep].astype(np.int64), graph.col[keep].astype(np.int64), graph.data[keep].astype(np.float64)


def _motion_loss(drawn: torch.Tensor, moved: torch.Tensor, step: torch.Tensor, steps: int) -> torch.Tensor:
    """Mean over steps of 1 - Pearson(log drawn, log moved) within each step; a step with fewer than 3 pairs, or
    whose moves are all equal, adds nothing (a frozen model gives 0, never NaN)."""
    drawn_log, moved_log = torch.log(drawn + LOG_GUARD), torch.log(moved)
    zeros = torch.zeros(steps, device=drawn.device)
    count = zeros.index_add(0, step, torch.ones_like(drawn_log))

    def centred(values: torch.Tensor) -> torch.Tensor:
        return values - (zeros.index_add(0, step, values) / count.clamp(min=1))[step]

    drawn_log, moved_log = centred(drawn_log), centred(moved_log)
    s_dd, s_mm, s_dm = (zeros.index_add(0, step, v) for v in (drawn_log ** 2, moved_log ** 2, drawn_log * moved_log))
    valid = (count >= 3) & (s_mm > 0)
    if not bool(valid.any()):
        return drawn.sum() * 0.0
    return 1.0 - (s_dm[valid] / (torch.sqrt(s_dd[valid] * s_mm[valid]) + 1e-12)).mean()


def _pca(z: np.ndarray, n_components: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The weights and offset of the linear map onto the first principal axes of ``z``, the first of std
    ``PCA_SCALE``."""
    sample = z[np.sort(rng.choice(len(z), min(len(z), PCA_ROWS), replace=False))].astype(np.float64)
    centre = sample.mean(axis=0)
    _, singular, axes = np.linalg.svd(sample - centre, full_matrices=False)
    weights = np.zeros((n_components, z.shape[1]))
    weights[:len(axes)] = axes[:n_components]
    weights *= PCA_SCALE / max(singular[0] / math.sqrt(len(sample)), 1e-12)
    return weights.astype(np.float32), (-(centre @ weights.T)).astype(np.float32)


def _check(name: str, value: Any, kind: type, least: float, strictly: bool = False) -> None:
    """Raise a ValueError naming ``name`` where ``value`` is not a ``kind`` at least (above) ``least``."""
    kinds = numbers.Real if kind is float else numbers.Integral  # numpy's numbers too
    if isinstance(value, bool) or not isinstance(value, kinds) or value < least or (strictly and value == least):
        bound = f"{'>' if strictly else '>='} {least}"
        raise ValueError(f"ParametricMap: {name} must be {'a number' if kind is float else 'an int'} {bound}, "
                         f"got {value!r}.")


@contextmanager
def _threads(count: Optional[int]) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` (None: left as it is) inside, and back as it was after."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _as_snapshots(snapshots: Union[np.ndarray, Sequence[np.ndarray]]) -> np.ndarray:
    """``(T, N, D)`` float32 from a ``(T, N, D)`` array, an ``(N, D)`` array (one snapshot) or ``T`` aligned
    ``(N, D)`` arrays."""
    if not isinstance(snapshots, np.ndarray):
        shapes = {np.shape(s) for s in snapshots}
        if len(shapes) > 1:
            raise ValueError(f"ParametricMap.fit: the snapshots must hold the same samples in the same order (row i of "
                             f"each is one sample; NaN rows where one is missing), got shapes {sorted(shapes)}.")
    array = np.asarray(snapshots, dtype=np.float32)
    array = array[None] if array.ndim == 2 else array
    if array.ndim != 3 or 0 in array.shape:
        raise ValueError(f"ParametricMap.fit takes snapshots of one layer: a (T, N, D) array or a list of (N, D) "
                         f"arrays, got shape {np.shape(snapshots)}.")
    return array


class ParametricMap(BaseEstimator):
    """A 2-D (or 3-D) map of one layer's snapshots whose drawn motion ranks like the motion in the vectors.

    One encoder (an MLP plus a linear path started at the PCA) maps every snapshot. It is trained on UMAP's loss
    over each snapshot's own fuzzy neighbour graph (umap-learn's ``fuzzy_simplicial_set``, ``a, b`` from
    ``min_dist``) plus ``motion_weight`` x a motion term: for each pair of consecutive snapshots, 1 - the Pearson
    correlation over the samples of ``log`` drawn displacement and ``log`` displacement in the vectors. Equal rows
    give equal points; ``transform`` places any rows (a ``trainer.test`` snapshot, a user's own).

    Args:
        n_components: the map's dimensions.
        n_neighbors: neighbours of a row in its snapshot's graph, as UMAP's ``n_neighbors``.
        min_dist: how tightly points pack, as UMAP's ``min_dist``.
        motion_weight: weight of the motion term (0: a parametric UMAP of each snapshot, motion left to chance).
        steps: optimiser steps (Adam, cosine-decayed learning rate).
        learning_rate: Adam's initial learning rate.
        hidden_layer_sizes: the MLP's widths.
        edges_per_step: graph edges sampled (by weight, as many from each snapshot) per step.
        negatives: negative samples per edge, drawn from the edge's snapshot.
        batch_size: rows embedded at once by ``transform``.
        device: where to train and embed (``"cuda"``, ``"cpu"``, ...); None: CUDA when available, else the CPU.
        threads: torch's intra-op threads inside ``fit``/``transform`` (restored after); None leaves them as they
            are. 1 by default: on a loaded 2-core machine 2 threads were several times slower per step.
        random_state: seed of the initialisation and of the sampling; the same seed gives the same map (on one
            device and thread count).

    Example::

        >>> snapshots = np.random.default_rng(0).normal(size=(5, 200, 16)).astype(np.float32)  # (T, N, D)
        >>> mapper = ParametricMap(steps=50, random_state=0).fit(snapshots)
        >>> mapper.transform(snapshots[-1]).shape
        (200, 2)
    """

    fits_snapshots = True  # fit takes (T, N, D) snapshots, not rows: how a run's reduce knows to hand it trajectories

    def __init__(
        self,
        n_components: int = 2,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        motion_weight: float = 1.0,
        steps: int = 1500,
        learning_rate: float = 6e-2,
        hidden_layer_sizes: Sequence[int] = (64, 64),
        edges_per_step: int = 8192,
        negatives: int = 5,
        batch_size: int = 65_536,
        device: Optional[str] = None,
        threads: Optional[int] = 1,
        random_state: Optional[int] = None,
    ) -> None:
        for name, kind, least, strictly in (
            ("n_components", int, 1, False), ("n_neighbors", int, 2, False), ("min_dist", float, 0, False),
            ("motion_weight", float, 0, False), ("steps", int, 1, False), ("learning_rate", float, 0, True),
            ("edges_per_step", int, 1, False), ("negatives", int, 1, False), ("batch_size", int, 1, False),
        ):
            _check(name, locals()[name], kind, least, strictly)
        if isinstance(hidden_layer_sizes, (str, bytes)) or not all(
            isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1 for w in hidden_layer_sizes
        ):
            raise ValueError(f"ParametricMap: hidden_layer_sizes must be a sequence of ints >= 1 (e.g. (64, 64); () "
                             f"for the linear map alone), got {hidden_layer_sizes!r}.")
        if threads is not None:
            _check("threads", threads, int, 1)
        if device is not None:
            torch.device(device)  # raises for a device string torch cannot read
        if random_state is not None:
            _check("random_state", random_state, int, 0)
        self.n_components, self.n_neighbors, self.min_dist = n_components, n_neighbors, min_dist
        self.motion_weight, self.steps, self.learning_rate = motion_weight, steps, learning_rate
        self.hidden_layer_sizes, self.edges_per_step, self.negatives = hidden_layer_sizes, edges_per_step, negatives
        self.batch_size, self.device, self.threads, self.random_state = batch_size, device, threads, random_state

    def fit(self, X: Union[np.ndarray, Sequence[np.ndarray]], y: Any = None) -> "ParametricMap":
        """Train the encoder on the snapshots of one layer.

        Args:
            X: the snapshots, a ``(T, N, D)`` array, or ``T`` arrays ``(N, D)``: the same ``N`` samples in the
                same order in every snapshot, oldest first. A row with a non-finite value (a sample missing from a
                snapshot) is left out of that snapshot's graph and of the motion pairs it is part of.
            y: ignored (scikit-learn's signature).

        Returns:
            ``self``, fitted: ``encoder_`` (the torch module), ``n_features_in_``, ``n_snapshots_``, ``a_``, ``b_``
            (UMAP's curve for ``min_dist``), ``loss_`` (the loss at each step), ``device_``.

        Raises:
            ValueError: the snapshots are not of one shape, or no snapshot has 3 usable rows.
        """
        from umap.umap_ import find_ab_params  # imported before the thread count is set: importing umap resets it

        data = _as_snapshots(X)
        seed = self.random_state if self.random_state is not None else int(np.random.SeedSequence().entropy % 2**31)
        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        with _threads(self.threads):
            rows = _Rows(data)
            graphs = [_graph(rows.snapshot(t), self.n_neighbors, seed) if size >= 3 else None
                      for t, size in enumerate(rows.sizes)]
            rng = np.random.default_rng(seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                encoder = _Encoder(rows.mean, rows.scale, self.hidden_layer_sizes,
                                   *_pca(rows.z, self.n_components, rng))
            a, b = find_ab_params(1.0, self.min_dist)
            self.loss_ = _Training(self, encoder.to(device), rows, graphs, (float(a), float(b)), rng).run()
        self.encoder_, self.device_ = encoder.eval(), device
        self.n_features_in_, self.n_snapshots_, self.a_, self.b_ = data.shape[2], len(data), float(a), float(b)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Place rows in the map: ``(n, D)`` -> ``(n, n_components)`` float32, ``batch_size`` rows at a time (a row
        with a NaN gives a row of NaN).

        Raises:
            ValueError: not fitted, or rows of another width than the snapshots it was fitted on.
        """
        if not hasattr(self, "encoder_"):
            raise ValueError("This ParametricMap is not fitted yet: call fit(snapshots) first.")
        rows = np.asarray(X, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_features_in_:
            raise ValueError(f"ParametricMap.transform takes (n, {self.n_features_in_}) rows, got shape {rows.shape}.")
        source = torch.from_numpy(np.require(rows, requirements=["C", "W"]))  # a run's rows may be read-only views
        with _threads(self.threads), torch.no_grad():
            parts = [self.encoder_(source[s:s + self.batch_size].to(self.device_)).float().cpu()
                     for s in range(0, len(rows), self.batch_size)]
        return torch.cat(parts).numpy() if parts else np.zeros((0, self.n_components), np.float32)

    def fit_transform(self, X: Union[np.ndarray, Sequence[np.ndarray]], y: Any = None) -> np.ndarray:
        """:meth:`fit` on the snapshots ``X``, then every snapshot placed: ``(T, N, n_components)`` float32."""
        data = _as_snapshots(X)
        self.fit(data)
        return self.transform(data.reshape(-1, data.shape[2])).reshape(*data.shape[:2], self.n_components)


class _Training:
    """One fit's optimisation. Each step samples ``edges_per_step`` edges of the snapshots' graphs (as many from
    each snapshot, by weight within it), a pool of rows of each snapshot that the edges' negatives are drawn from,
    and the motion pairs (all of them when every row is embedded, else ``MOTION_PAIRS``); only the rows these need
    go through the encoder, unless the snapshots hold at most ``FULL_ROWS`` rows (then all)."""

    def __init__(self, spec: ParametricMap, encoder: _Encoder, rows: _Rows,
                 graphs: Sequence[Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]],
                 ab: tuple[float, float], rng: np.random.Generator) -> None:
        self.spec, self.encoder, self.rows, self.rng, (self.a, self.b) = spec, encoder, rows, rng, ab
        self.device = encoder.mean.device
        live = [t for t, graph in enumerate(graphs) if graph is not None]
        self.heads = np.concatenate([graphs[t][0] + rows.offsets[t] for t in live])
        self.tails = np.concatenate([graphs[t][1] + rows.offsets[t] for t in live])
        self.edge_snapshot = np.concatenate([np.full(len(graphs[t][0]), t) for t in live])
        self.cdf = np.cumsum(np.concatenate([graphs[t][2] / graphs[t][2].sum() for t in live]))
        self.cdf /= self.cdf[-1]
        self.pool = max(spec.negatives, spec.edges_per_step // len(live))
        self.full = len(rows.z) <= FULL_ROWS
        self.z = torch.from_numpy(rows.z).to(self.device)
        self.moved = torch.from_numpy(rows.moved).to(self.device)
        self.step = torch.from_numpy(rows.step).to(self.device)

    def run(self) -> np.ndarray:
        """Train ``spec.steps`` steps; the loss at each."""
        optimiser = torch.optim.Adam(self.encoder.parameters(), lr=self.spec.learning_rate)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, self.spec.steps)
        self.encoder.train()
        losses = []
        for _ in range(self.spec.steps):
            loss = self.loss()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.detach())
        return torch.stack(losses).cpu().numpy()

    def _q(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """UMAP's probability that two points are neighbours, from their distance in the map."""
        return 1.0 / (1.0 + self.a * ((a - b) ** 2).sum(-1).clamp(min=1e-10) ** self.b)

    def loss(self) -> torch.Tensor:
        """UMAP's cross-entropy on sampled edges and negatives, plus ``motion_weight`` x the motion term."""
        spec, rows, rng = self.spec, self.rows, self.rng
        edges, snapshots = spec.edges_per_step, len(rows.sizes)
        pick = np.searchsorted(self.cdf, rng.random(edges)).clip(max=len(self.cdf) - 1)
        pool = rows.offsets[:, None] + (rng.random((snapshots, self.pool)) * rows.sizes[:, None]).astype(np.int64)
        pairs = (np.arange(len(rows.a)) if self.full
                 else np.sort(rng.choice(len(rows.a), min(len(rows.a), MOTION_PAIRS), replace=False)))
        index = np.concatenate([self.heads[pick], self.tails[pick], np.minimum(pool, len(rows.z) - 1).ravel(),
                                rows.a[pairs], rows.b[pairs]])
        index = torch.from_numpy(index).to(self.device)
        y = self.encoder.inner(self.z)[index] if self.full else self.encoder.inner(self.z[index])
        head, tail, pooled, before, after = torch.split(y, [edges, edges, pool.size, len(pairs), len(pairs)])
        choice = torch.from_numpy(rng.integers(self.pool, size=(edges, spec.negatives))).to(self.device)
        owner = torch.from_numpy(self.edge_snapshot[pick]).to(self.device)
        negative = pooled.view(snapshots, self.pool, -1)[owner[:, None], choice]
        loss = -torch.log(self._q(head, tail).clamp(min=CLAMP)).mean()
        loss = loss - torch.log((1 - self._q(head[:, None], negative)).clamp(min=CLAMP)).mean() * spec.negatives
        if len(pairs) and spec.motion_weight > 0:
            drawn = (after - before).pow(2).sum(-1).add(1e-12).sqrt()
            chosen = torch.from_numpy(pairs).to(self.device)
            loss = loss + spec.motion_weight * _motion_loss(drawn, self.moved[chosen], self.step[chosen], snapshots - 1)
        return loss
