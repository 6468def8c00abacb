"""What the collector adds to a CI smoke test: ``Trainer(fast_dev_run=True).fit`` of the digits CNN in a fresh
process, without and with ``EmbeddingCollector(layers=[3, "head.1"])`` at its defaults (reducer "umap", pictures on;
under ``fast_dev_run`` the map is made with PCA and the run goes to a throwaway directory).

Each figure is the median over ``--repeats`` fresh processes, run side by side (without, with, without, with, ...):
the seconds of the whole process and of ``fit`` alone. Two cache conditions: "cold" gives every process an empty
``NUMBA_CACHE_DIR`` and ``MPLCONFIGDIR`` (a new CI machine: numba compiles, matplotlib builds its font cache);
"warm" shares one of each, filled by a first process that is not counted.

    python benchmarks/smoke.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CASES = ("without", "with")


def child(case: str) -> None:
    """One smoke test; prints the seconds of ``fit``."""
    import lightning.pytorch as pl
    from digits import DigitsCNN, DigitsDataModule

    from lightning_embeddings import EmbeddingCollector

    callbacks = [EmbeddingCollector(layers=[3, "head.1"], reshape={3: "avg_pool_2_2"})] if case == "with" else []
    trainer = pl.Trainer(fast_dev_run=True, callbacks=callbacks, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    started = time.perf_counter()
    trainer.fit(DigitsCNN(), DigitsDataModule())
    print(json.dumps({"fit": time.perf_counter() - started}))


def run_once(case: str, caches: dict[str, str], cwd: Path) -> tuple[float, float]:
    """A fresh process running one smoke test: (seconds of the process, seconds of fit)."""
    env = {**os.environ, **caches, "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", case], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    total = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the {case} smoke test failed:\n{done.stderr[-3000:]}")
    return total, json.loads(done.stdout.strip().splitlines()[-1])["fit"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per case and condition")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("cache  case     process s  fit s   (median of", args.repeats, "fresh processes)")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        warm = {"NUMBA_CACHE_DIR": str(root / "numba"), "MPLCONFIGDIR": str(root / "mpl")}
        run_once("with", warm, root)  # fills the warm caches
        for condition in ("cold", "warm"):
            times: dict[str, list[tuple[float, float]]] = {case: [] for case in CASES}
            for repeat in range(args.repeats):
                for case in CASES:
                    fresh = root / f"{condition}-{case}-{repeat}"
                    caches = warm if condition == "warm" else {"NUMBA_CACHE_DIR": str(fresh / "numba"),
                                                               "MPLCONFIGDIR": str(fresh / "mpl")}
                    times[case].append(run_once(case, caches, root))
            medians = {case: tuple(statistics.median(t[i] for t in times[case]) for i in (0, 1)) for case in CASES}
            for case in CASES:
                print(f"{condition:6} {case:8} {medians[case][0]:9.2f}  {medians[case][1]:6.2f}")
            added = [medians["with"][i] - medians["without"][i] for i in (0, 1)]
            print(f"{condition:6} added    {added[0]:9.2f}  {added[1]:6.2f}   smoke test: collector adds "
                  f"{added[0]:.2f} s to the process, {added[1]:.2f} s to fit")


if __name__ == "__main__":
    main()
