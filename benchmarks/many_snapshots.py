"""The end of a fit of many snapshots: how long a reduce takes per snapshot (issue 21).

Records a digits run of ``--epochs`` snapshots (one training batch per epoch, every validation sample, layers
``features.1`` and ``head.1``, no map), then measures, side by side in this process:

- the whole ``EmbeddingRun.reduce(reducer="pca")`` (placing, trustworthiness, temporal preservation, samples);
- the whole ``EmbeddingRun.reduce(reducer="umap")`` of ``head.1`` as the package does it (above ``INDEX_ABOVE_PAIRS``
  measured pairs UMAP finds neighbours with its search index) and with ``force_approximation_algorithm=False``;
- UMAP fitted on the last snapshot of ``head.1``, then ``transform`` of ``--placed`` snapshots spread over the run,
  as umap-learn does it by default and with ``force_approximation_algorithm=True`` (a search index instead of
  umap-learn's small-data path, which computes the distances to the fitted rows one pair at a time in Python),
  each with the trustworthiness of the placed snapshots. The first fit of each includes numba's compile.

    python benchmarks/many_snapshots.py                      # 200 snapshots of 449 samples
    python benchmarks/many_snapshots.py --epochs 20 --placed 5
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


def record(dirpath: Path, epochs: int) -> float:
    """A run of ``epochs`` snapshots, without a map; the fit's wall time."""
    import lightning.pytorch as pl
    from digits import DigitsCNN, DigitsDataModule

    from lightning_embeddings import EmbeddingCollector

    pl.seed_everything(0, verbose=False)
    collector = EmbeddingCollector(layers=[3, "head.1"], reshape={3: "avg_pool_2_2", "head.1": "flatten"},
                                   reducer=None, plots=False, dirpath=dirpath)
    trainer = pl.Trainer(max_epochs=epochs, limit_train_batches=1, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[collector])
    start = time.perf_counter()
    trainer.fit(DigitsCNN(), DigitsDataModule())
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200, help="snapshots recorded (default: %(default)s)")
    parser.add_argument("--placed", type=int, default=20, help="snapshots UMAP places (default: %(default)s)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import umap

    from lightning_embeddings import EmbeddingRun
    from lightning_embeddings.faithfulness import trustworthiness as faithfulness

    with tempfile.TemporaryDirectory() as tmp:
        fit = record(Path(tmp) / "run", args.epochs)
        run = EmbeddingRun(Path(tmp) / "run")
        print(f"{len(run.snapshots)} snapshots x {len(run.vectors('head.1', epoch=0)[0])} samples x 2 layers, "
              f"recorded in {fit:.1f} s; load average {os.getloadavg()[0]:.1f}")
        start = time.perf_counter()
        run.reduce(reducer="pca", progress=False)
        pca = time.perf_counter() - start
        print(f"reduce, pca: {pca:.1f} s ({1000 * pca / len(run.snapshots) / 2:.0f} ms per snapshot and layer)")
        # without the index first: both pay UMAP's own compile, the index its compile on top
        for said, kwargs in (("force_approximation_algorithm=False", {"force_approximation_algorithm": False}),
                             ("package default", {})):
            start = time.perf_counter()
            run.reduce(reducer="umap", layers=["head.1"], progress=False, **kwargs)
            whole = time.perf_counter() - start
            facts = run.manifest["reducer"]["layers"]["head.1"]
            indexed = facts.get("params", {}).get("force_approximation_algorithm")
            print(f"reduce, umap, head.1, {said} (force_approximation_algorithm={indexed}): {whole:.1f} s "
                  f"({1000 * whole / len(run.snapshots):.0f} ms per snapshot, fit and compile included), "
                  f"trustworthiness median {np.median([v for v in facts['trustworthiness'].values() if v]):.3f}")
        epochs = run.epochs
        chosen = sorted(set(np.linspace(0, len(epochs) - 1, min(args.placed, len(epochs))).round().astype(int)))
        snapshots = [run.vectors("head.1", epoch=epochs[i])[1] for i in chosen]
        for force in (False, True):
            reducer = umap.UMAP(random_state=0, n_jobs=1, force_approximation_algorithm=force)
            start = time.perf_counter()
            reducer.fit(snapshots[-1])
            fitted = time.perf_counter() - start
            reducer.transform(snapshots[0])  # the transform's own compile, outside the timing
            start = time.perf_counter()
            placed = [reducer.transform(x) for x in snapshots]
            per = (time.perf_counter() - start) / len(snapshots)
            trust = [faithfulness(x, y) for x, y in zip(snapshots, placed)]
            print(f"umap head.1, force_approximation_algorithm={force}: fit {fitted:.1f} s (first: with numba's "
                  f"compile), transform {1000 * per:.0f} ms per snapshot over {len(snapshots)}, trustworthiness "
                  f"min {min(trust):.3f} median {np.median(trust):.3f}")


if __name__ == "__main__":
    main()
