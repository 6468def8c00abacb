"""Which nearest-neighbour index ``dynamics.neighbours`` should use (issue 11): the k = 10 nearest other rows by
cosine distance, for every row of a snapshot, at 10k and 100k rows x 64 and 512 dimensions, on 2 CPU cores.

Data: ten labelled classes of five Gaussian modes each in a 32-d latent space, mapped to D dimensions by a random
linear map, plus noise, through a ReLU (non-negative, like a penultimate layer); 5% of the labels flipped. About
0.87 of a row's 10 nearest neighbours share its label at 10k rows.

Per candidate, in one process (faiss, scikit-learn and pynndescent imported before any timing; pynndescent's numba
compile timed on its own first, on 2,000 rows, which imports it): wall seconds for every row's neighbours, peak RSS growth
(``VmHWM`` after ``clear_refs``, above the resident size before), recall@10 against exact neighbours and the mean
absolute difference of ``knn_agreement`` from the exact one, both on 1,000 random rows. Exact searches over more than
20,000 rows are timed on their first 2,000 queries and scaled (their cost is linear in the queries; marked
``est.``), which keeps the whole run to a few minutes. CPU seconds (the process's, all threads) are steadier than
wall seconds where other work shares the cores.

    python benchmarks/knn_index.py [--sizes 10000 100000] [--dims 64 512] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_embeddings.dynamics import K_NEIGHBOURS, neighbours  # noqa: E402

QUERIES = 1_000  # rows whose neighbours are checked against exact ones
EXACT_FULL_ROWS = 20_000  # above this, exact searches are timed on TIMED_QUERIES queries and scaled
TIMED_QUERIES = 2_000
REFERENCE_ROWS = 10_000  # the bounded reference subset's size


def blobs(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of clustered, non-negative float32 vectors and their (5% flipped) labels 0..9."""
    rng = np.random.default_rng(seed)
    classes, modes, latent = 10, 5, 32
    centres = rng.standard_normal((classes * modes, latent)) * 1.5
    mode = rng.integers(classes * modes, size=n)
    labels = mode % classes
    z = centres[mode] + rng.standard_normal((n, latent))
    w = rng.standard_normal((latent, dim)) / np.sqrt(latent)
    x = np.maximum(z @ w + 0.5 * rng.standard_normal((n, dim)), 0).astype(np.float32)
    flip = rng.random(n) < 0.05
    labels[flip] = (labels[flip] + rng.integers(1, classes, flip.sum())) % classes
    return x, labels


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def drop_self(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` of each row's ``k + 1`` found indices that are not the row itself."""
    order = np.argsort(found == rows[:, None], axis=1, kind="stable")
    return np.take_along_axis(found, order, axis=1)[:, :k]


def torch_exact(x: np.ndarray, k: int, rows: np.ndarray, reference: Optional[np.ndarray] = None) -> np.ndarray:
    """Exact cosine neighbours of ``rows`` among ``reference`` rows (all rows when None): chunked matmul + topk."""
    base = torch.from_numpy(unit(x))
    ref = torch.arange(len(x)) if reference is None else torch.from_numpy(reference)
    out = []
    for start in range(0, len(rows), 2048):
        chunk = torch.from_numpy(rows[start:start + 2048])
        found = ref[torch.topk(base[chunk] @ base[ref].T, k + 1, dim=1).indices]
        out.append(drop_self(found.numpy(), chunk.numpy(), k))
    return np.concatenate(out)


def reference_subset(x: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    """Exact neighbours among at most ``REFERENCE_ROWS`` random rows."""
    reference = np.sort(np.random.default_rng(0).permutation(len(x))[:REFERENCE_ROWS])
    return torch_exact(x, k, rows, reference)


def sklearn_brute(x: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric="cosine").fit(x)
    return drop_self(index.kneighbors(x[rows], return_distance=False), rows, k)


def faiss_flat(x: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    import faiss

    xu = np.ascontiguousarray(unit(x))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(xu)
    return drop_self(index.search(xu[rows], k + 1)[1], rows, k)


def faiss_hnsw(x: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    import faiss

    xu = np.ascontiguousarray(unit(x))
    index = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction, index.hnsw.efSearch = 40, 64
    index.add(xu)
    return drop_self(index.search(xu[rows], k + 1)[1], rows, k)


def faiss_ivf(x: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    import faiss

    xu = np.ascontiguousarray(unit(x))
    lists = max(1, min(int(np.sqrt(len(x))), len(x) // 39))  # faiss wants 39 training rows a list
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(x.shape[1]), x.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
    index.train(xu[np.random.default_rng(0).permutation(len(x))[:50 * lists]])
    index.add(xu)
    index.nprobe = 8
    return drop_self(index.search(xu[rows], k + 1)[1], rows, k)


def pynndescent_graph(x: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    from pynndescent import NNDescent

    graph = NNDescent(x, metric="cosine", n_neighbors=k + 1, random_state=0, n_jobs=-1).neighbor_graph[0]
    return drop_self(graph[rows], rows, k)


def library(x: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    """``dynamics.neighbours`` as shipped."""
    return neighbours(x, k)[rows]


# name -> (function, exact?)
CANDIDATES: dict[str, tuple[Callable[[np.ndarray, int, np.ndarray], np.ndarray], bool]] = {
    "torch exact (matmul + topk)": (torch_exact, True),
    "sklearn brute cosine": (sklearn_brute, True),
    "faiss IndexFlatIP (exact)": (faiss_flat, True),
    "faiss HNSW32 ef 40/64": (faiss_hnsw, False),
    "faiss IVF sqrt(n) lists, nprobe 8": (faiss_ivf, False),
    "pynndescent (cosine), graph of k + 1": (pynndescent_graph, False),
    f"exact among {REFERENCE_ROWS:,} random rows": (reference_subset, False),
    "dynamics.neighbours (exact, or pynndescent's graph of 2k + 1)": (library, False),
}


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def agreement(found: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return (labels[found] == labels[rows, None]).mean(axis=1)


def measure(name: str, x: np.ndarray, labels: np.ndarray, truth: np.ndarray, queries: np.ndarray
            ) -> tuple[float, float, bool, float, float, float]:
    """(wall seconds, CPU seconds, estimated?, peak RSS growth MB, recall@10, mean |agreement - exact agreement|)
    of one candidate."""
    function, exact = CANDIDATES[name]
    k, n = truth.shape[1], len(x)
    estimated = exact and n > EXACT_FULL_ROWS
    timed_rows = np.arange(TIMED_QUERIES if estimated else n)
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_mb("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    found = function(x, k, timed_rows)
    seconds = (time.perf_counter() - start) * (n / len(timed_rows))
    cpu = (time.process_time() - cpu) * (n / len(timed_rows))
    peak = max(rss_mb("VmHWM") - before, 0.0)
    found = function(x, k, queries) if estimated else found[queries]
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)])
    difference = np.abs(agreement(found, labels, queries) - agreement(truth, labels, queries)).mean()
    return seconds, cpu, estimated, peak, recall, difference


def compile_pynndescent() -> float:
    """Seconds of pynndescent's first (compiling) call on 2,000 rows."""
    start = time.perf_counter()
    x, _ = blobs(2_000, 16)
    pynndescent_graph(x, K_NEIGHBOURS, np.arange(len(x)))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[tuple[int, int, str], tuple[float, float, float]]:
    """Print one table row per size and candidate; return (seconds, recall, agreement difference) by
    (rows, dim, candidate)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), help="names as printed")
    parser.add_argument("--quick", action="store_true",
                        help="one tiny size (2,000 x 16), every candidate but pynndescent (its compile takes 20 s)")
    args = parser.parse_args(argv)
    sizes, dims = ([2_000], [16]) if args.quick else (args.sizes, args.dims)
    if args.quick:
        args.candidates = [name for name in args.candidates if not name.startswith("pynndescent")]
    for library_name in ("faiss", "sklearn.neighbors"):  # imported here, not in the first timing
        importlib.import_module(library_name)
    print(f"torch threads {torch.get_num_threads()}, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if any(name.startswith("pynndescent") for name in args.candidates):
        print(f"pynndescent first call (numba compile), 2,000 x 16: {compile_pynndescent():.1f} s", flush=True)
    print(f"| rows | dim | candidate | wall s | CPU s | peak RSS growth MB | recall@{K_NEIGHBOURS} | agreement diff |")
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for n in sizes:
        for dim in dims:
            x, labels = blobs(n, dim)
            queries = np.sort(np.random.default_rng(1).permutation(n)[:min(QUERIES, n)])
            truth = torch_exact(x, K_NEIGHBOURS, queries)
            for name in args.candidates:
                seconds, cpu, estimated, peak, recall, difference = measure(name, x, labels, truth, queries)
                results[n, dim, name] = (seconds, recall, difference)
                mark = " est." if estimated else ""
                print(f"| {n:,} | {dim} | {name} | {seconds:.2f}{mark} | {cpu:.2f}{mark} | {peak:.0f} | {recall:.3f} | "
                      f"{difference:.3f} |", flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return results


if __name__ == "__main__":
    main()
