"""Time and peak RSS of ``EmbeddingRun.samples`` (the per-sample dynamics, computed from ``vectors/``) on runs of N
samples x D float32 x E snapshots, each case in a fresh subprocess: snapshots are read one at a time and at most two
are held, so peak memory should grow with one snapshot's vectors, not with N x E.

The runs are :mod:`reduction`'s (ten Gaussian clusters that tighten epoch by epoch, with labels). Peak RSS is
``VmHWM`` of the child after ``samples``; the baseline is the same figure before it, after imports and after a
first call of ``dynamics.neighbours`` on 20,000 x 8 rows (pynndescent's numba compile, paid once per process and
shared with UMAP; ``--cold`` counts it in).

    python benchmarks/samples.py [--rows 10000 100000] [--epochs 10] [--dim 256] [--cold] [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reduction import peak_mb, write_run  # noqa: E402


def samples_child(path: Path, warm: bool) -> None:
    """The child: samples(), then print baseline MB, peak MB, seconds, rows and the mean k-NN agreement."""
    import numpy as np

    from lightning_embeddings.dynamics import neighbours
    from lightning_embeddings.run import EmbeddingRun

    if warm:  # pynndescent's numba compile (once per process, shared with UMAP) before the baseline
        neighbours(np.random.default_rng(0).standard_normal((20_000, 8), dtype=np.float32))
    baseline = peak_mb()
    start = time.perf_counter()
    frame = EmbeddingRun(path).samples("embed")
    seconds = time.perf_counter() - start
    print(baseline, peak_mb(), seconds, len(frame), frame["knn_agreement"].mean())


def main(argv: list[str] | None = None) -> dict[int, tuple[float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the runs (default: a temporary directory)")
    parser.add_argument("--cold", action="store_true", help="count pynndescent's compile in the peak too")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        samples_child(args.child, warm=not args.cold)
        return {}
    figures = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for rows in args.rows:
            path = Path(tmp) / f"run_{rows}"
            write_run(path, rows, args.dim, args.epochs)
            out = subprocess.run([sys.executable, __file__, "--child", str(path), *(["--cold"] if args.cold else [])],
                                 check=True, capture_output=True, text=True).stdout
            baseline, peak, seconds, n, agreement = map(float, out.split()[-5:])
            snapshot_mb = rows * args.dim * 4 / 1e6
            figures[rows] = (seconds, peak - baseline)
            print(f"samples: {rows} x {args.dim} float32 x {args.epochs} snapshots ({snapshot_mb:.0f} MB of vectors "
                  f"each, {snapshot_mb * args.epochs:.0f} MB in all): {seconds:.1f} s for {n:.0f} samples, peak RSS "
                  f"growth {peak - baseline:.0f} MB = {(peak - baseline) / snapshot_mb:.1f} snapshots' vectors "
                  f"(mean k-NN agreement {agreement:.3f})", flush=True)
            shutil.rmtree(path)
    return figures


if __name__ == "__main__":
    main()
