"""Numba's compile cost for UMAP and PaCMAP on a fresh process, and whether numba's on-disk cache helps (issue 5).

Each figure comes from a fresh subprocess: the time to import the library, of a first ``fit`` + ``transform``
(``random_state=0``; PaCMAP with ``save_tree=True``) of an N x D float32 Gaussian array, and of a second identical
one in the same process; first minus second is the compile cost at the first call. Functions declared with their
signature (19 of PaCMAP's 20, 39 of pynndescent's) compile when their module is imported: that part of the cost is
in the import time, and "import + first" is what a fresh process waits for its first map. Three cache conditions,
each reducer with its own ``NUMBA_CACHE_DIR`` in a temporary directory removed at the end: no cache (numba 0.68 has
no setting that turns caching off, so the child makes ``Dispatcher.enable_caching`` a no-op before the import), a
cold cache (an empty directory: compiles and writes the cache) and a warm cache (the same directory again, in a new
process). Below 4096 rows UMAP computes exact neighbours, so pynndescent's nearest-neighbour descent is not run.

What is cached (``cache=True``): all 20 of PaCMAP's jitted functions (its neighbours come from faiss), but only 1 of
umap-learn's 117 (``layouts.rdist``; not ``fuzzy_simplicial_set``'s helpers nor the layout optimizer) and 173 of
pynndescent's 335 (most of its random-projection trees, distances and heaps; not ``nn_descent`` itself nor the
search functions ``NNDescent`` makes at run time).

    python benchmarks/numba_compile.py [--rows 5000] [--dim 64] [--reducers umap pacmap] [--conditions ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REDUCERS = ("umap", "pacmap")
CONDITIONS = ("no cache", "cold cache", "warm cache")


def fit_transform(reducer: str, x: np.ndarray) -> None:
    """A new estimator's ``fit`` then ``transform`` of ``x``."""
    if reducer == "umap":
        import umap

        estimator = umap.UMAP(n_components=2, random_state=0)
    else:
        import pacmap

        estimator = pacmap.PaCMAP(n_components=2, random_state=0, save_tree=True, verbose=False)
    estimator.fit(x)
    estimator.transform(x)


def child(reducer: str, rows: int, dim: int, cache: bool) -> None:
    """The child: print the seconds of the import, the first and the second fit + transform."""
    start = time.perf_counter()
    if not cache:
        from numba.core.dispatcher import Dispatcher

        Dispatcher.enable_caching = lambda self: None  # leaves every function on numba's NullCache
    __import__(reducer)
    imported = time.perf_counter()
    x = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    seconds = []
    for _ in range(2):
        begin = time.perf_counter()
        fit_transform(reducer, x)
        seconds.append(time.perf_counter() - begin)
    print(imported - start, *seconds)


def measure(reducer: str, rows: int, dim: int, cache_dir: Path, cache: bool) -> tuple[float, float, float]:
    """(import, first, second fit + transform) seconds of one fresh subprocess using ``cache_dir``."""
    args = [sys.executable, __file__, "--child", reducer, str(rows), str(dim), "cache" if cache else "none"]
    out = subprocess.run(args, check=True, capture_output=True, text=True,
                         env={**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}).stdout
    imported, first, second = map(float, out.split()[-3:])
    return imported, first, second


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Print each figure; return the compile costs in seconds by reducer and condition."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--reducers", choices=REDUCERS, nargs="+", default=list(REDUCERS))
    parser.add_argument("--conditions", choices=CONDITIONS, nargs="+", default=list(CONDITIONS),
                        help="which cache conditions to measure (a warm cache is one a cold-cache run filled before)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        reducer, rows, dim, cache = args.child
        child(reducer, int(rows), int(dim), cache == "cache")
        return {}
    costs: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        print(f"compile: {args.rows} x {args.dim} float32, fit + transform, each condition a fresh process")
        for reducer in args.reducers:
            costs[reducer] = {}
            cache_dir = Path(tmp) / reducer
            for condition in args.conditions:
                imported, first, second = measure(reducer, args.rows, args.dim, cache_dir, condition != "no cache")
                costs[reducer][condition] = first - second
                files = sum(1 for _ in cache_dir.rglob("*.nbi")) if cache_dir.exists() else 0
                print(f"compile: {reducer}, {condition}: import {imported:.1f} s, first fit+transform {first:.1f} s, "
                      f"second {second:.1f} s, compile cost {first - second:.1f} s; "
                      f"import + first {imported + first:.1f} s ({files} functions in the cache)")
    return costs


if __name__ == "__main__":
    main()
