"""Are the drawn paths true? Every map of two real runs, side by side: temporal preservation, trustworthiness, time.

Two runs are trained first (15 epochs each, ``record_train=True``, ``reducer=None``): the digits example (layers
``features.1`` and ``head.1``) and the label_errors example (``head.1``, 20% of the training labels flipped,
logits recorded). Each map is then made by ``EmbeddingRun.reduce`` on its own copy of each run, timed (wall and
CPU seconds of this process, after numba's compile, which a warm-up reduce pays first), and measured per layer and
split against the vectors it stands for:

- temporal preservation (TP): per pair of consecutive fit snapshots, the Spearman correlation of each sample's
  displacement in the map with its displacement in the vectors; min / median over the steps;
- trustworthiness (trust, 10 neighbours): per fit snapshot; min / median over the snapshots.

    python benchmarks/paths.py [--epochs 15] [--maps umap-last umap-joint pacmap pca parametric]
                               [--runs digits label_errors] [--dir DIR] [--json FILE] [--parametric-steps N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

MAPS: dict[str, dict[str, Any]] = {
    "umap-last": {"reducer": "umap", "align": "last"},
    "umap-joint": {"reducer": "umap", "align": "joint"},
    "pacmap": {"reducer": "pacmap", "align": "last"},
    "pca": {"reducer": "pca", "align": "last"},
    "parametric": {"reducer": "parametric"},
}


def train(root: Path, epochs: int, example: str) -> Path:
    """Train one example with ``record_train=True`` and no map; its run directory."""
    import lightning.pytorch as pl
    from digits import DigitsCNN, DigitsDataModule
    from label_errors import LogitsCNN, NoisyDigits

    from lightning_embeddings import EmbeddingCollector

    pl.seed_everything(0, verbose=False)
    if example == "digits":
        model, data = DigitsCNN(), DigitsDataModule()
        collector = EmbeddingCollector(layers=[3, "head.1"], reshape={3: "avg_pool_2_2", "head.1": "flatten"},
                                       record_train=True, reducer=None, plots=False)
    else:
        model, data = LogitsCNN(), NoisyDigits(noise=0.2)
        collector = EmbeddingCollector(layers=["head.1"], record_train=True, reducer=None, plots=False)
    trainer = pl.Trainer(max_epochs=epochs, default_root_dir=root / example, callbacks=[collector], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    return Path(collector.dirpath)


def measure(run: Any, column: str, split: str) -> dict[str, float]:
    """TP and trust (min / median) of one layer's map of ``split``, over the fit snapshots."""
    from lightning_embeddings.faithfulness import temporal_preservation
    from lightning_embeddings.faithfulness import trustworthiness as faithfulness

    frame = run.projections(column)
    frame = frame[(frame["stage"] == "fit") & (frame["split"] == split)]
    axes = [a for a in "xyz" if a in frame.columns]
    trust, motion, before = [], [], None
    for snapshot in (s for s in run.snapshots if s["stage"] == "fit"):
        ids, vectors = run.vectors(column, epoch=snapshot["epoch"], step=snapshot["step"], split=split)
        points = frame[frame["step"] == snapshot["step"]].set_index("sample_id")[axes]
        ids, vectors = ids[np.isin(ids, points.index)], vectors[np.isin(ids, points.index)]
        here = (ids, vectors, points.loc[ids].to_numpy())
        trust.append(faithfulness(here[1], here[2]))
        if before is not None:
            _, a, b = np.intersect1d(before[0], ids, return_indices=True)
            motion.append(temporal_preservation(before[2][a], here[2][b], before[1][a], here[1][b]))
        before = here
    return {"tp_min": float(np.nanmin(motion)), "tp_med": float(np.nanmedian(motion)),
            "trust_min": float(np.min(trust)), "trust_med": float(np.median(trust))}


def timed(action: Callable[[], Any]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--maps", nargs="+", default=list(MAPS), choices=list(MAPS))
    parser.add_argument("--runs", nargs="+", default=["digits", "label_errors"], choices=["digits", "label_errors"])
    parser.add_argument("--dir", type=Path, help="where the runs are written (default: a temporary directory)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--parametric-steps", type=int, help="the parametric map's steps (default: its own)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from lightning_embeddings import EmbeddingRun

    maps = dict(MAPS)
    if args.parametric_steps is not None:
        maps["parametric"] = {**maps["parametric"], "steps": args.parametric_steps}
    root = args.dir or Path(tempfile.mkdtemp(prefix="paths-"))
    runs = {name: train(root, args.epochs, name) for name in args.runs}
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # the reduces' reports (after its import)
    print(f"runs in {root}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    warm = EmbeddingRun(shutil.copytree(runs[args.runs[0]], root / "warm-up"))
    for name in args.maps:  # numba's compile (UMAP, PaCMAP, the fuzzy graphs) paid here, outside the timings
        warm.reduce(layers=[warm.layers[-1]], fit_samples=100, progress=False, **maps[name])
    results, header = [], (f"{'run':<13}{'layer':<11}{'split':<6}{'map':<11}{'TP min':>7}{'TP med':>7}"
                           f"{'trust min':>10}{'trust med':>10}{'reduce s':>9}{'cpu s':>7}{'x UMAP-last':>12}")
    print(header)
    for run_name, path in runs.items():
        times = {}
        for name in args.maps:
            run = EmbeddingRun(shutil.copytree(path, root / f"{run_name}-{name}"))
            times[name] = timed(lambda: run.reduce(progress=False, **maps[name]))
            for column in run.layers:
                for split in ("val", "train"):
                    figures = {"run": run_name, "layer": column, "split": split, "map": name,
                               **measure(run, column, split), "wall_s": times[name][0], "cpu_s": times[name][1]}
                    results.append(figures)
                    ratio = times[name][1] / times["umap-last"][1] if "umap-last" in times else float("nan")
                    print(f"{run_name:<13}{column:<11}{split:<6}{name:<11}{figures['tp_min']:>7.3f}"
                          f"{figures['tp_med']:>7.3f}{figures['trust_min']:>10.3f}{figures['trust_med']:>10.3f}"
                          f"{times[name][0]:>9.1f}{times[name][1]:>7.1f}{ratio:>12.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.dir is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
