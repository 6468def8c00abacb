"""ParametricMap's variants on one layer of a recorded run: temporal preservation, trustworthiness, CPU time.

Each variant is a JSON object of ``ParametricMap`` arguments, fitted on every fit snapshot of the layer (all splits,
samples in every snapshot) and measured on all rows: TP min / median over the steps, trust min / median over the
snapshots, and the first and last snapshot's trust. With ``--threads``, instead: the wall time of 300 steps on 1 and
on 2 torch threads, twice each (run it once on an idle machine and once beside a busy core).

    python benchmarks/parametric_variants.py RUN_DIR LAYER '{}' '{"steps": 1500, "learning_rate": 0.06}' ...
    python benchmarks/parametric_variants.py RUN_DIR LAYER --threads

``RUN_DIR``: e.g. a run of ``benchmarks/paths.py --dir DIR`` (``DIR/digits-pca``) or of ``examples/digits.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np


def snapshots(path: str, layer: str) -> np.ndarray:
    """The layer's fit snapshots ``(T, N, D)``, the samples present in every one (all splits)."""
    from lightning_embeddings import EmbeddingRun

    run = EmbeddingRun(path)
    fit = [s for s in run.snapshots if s["stage"] == "fit"]
    splits = sorted(set(run.table(epochs=[fit[-1]["epoch"]], layers=[layer])["split"]))
    per = [[run.vectors(layer, epoch=s["epoch"], step=s["step"], split=split) for split in splits] for s in fit]
    common = [set.intersection(*(set(ids.tolist()) for ids, _ in (p[i] for p in per))) for i in range(len(splits))]
    return np.stack([np.concatenate([x[np.isin(ids, sorted(c))] for (ids, x), c in zip(p, common)]) for p in per])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("layer")
    parser.add_argument("variants", nargs="*", default=["{}"], help="JSON objects of ParametricMap arguments")
    parser.add_argument("--threads", action="store_true", help="time 1 against 2 torch threads instead")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from lightning_embeddings import ParametricMap
    from lightning_embeddings.faithfulness import temporal_preservation
    from lightning_embeddings.faithfulness import trustworthiness as faithfulness

    data = snapshots(args.run_dir, args.layer)
    print(f"{args.layer}: {data.shape[0]} snapshots x {data.shape[1]} samples x {data.shape[2]} dims; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    ParametricMap(steps=2).fit(data[:2, :50])  # numba's compile of the neighbour graph, outside the timings
    if args.threads:
        for threads in (1, 2, 1, 2):
            wall = time.perf_counter()
            ParametricMap(steps=300, threads=threads, random_state=0).fit(data)
            print(f"threads {threads}: {time.perf_counter() - wall:.1f} s wall for 300 steps", flush=True)
        return
    for variant in args.variants:
        cpu = time.process_time()
        points = ParametricMap(random_state=0, **json.loads(variant)).fit_transform(data)
        cpu = time.process_time() - cpu
        motion = [temporal_preservation(points[t], points[t + 1], data[t], data[t + 1]) for t in range(len(data) - 1)]
        trust = [faithfulness(data[t], points[t]) for t in range(len(data))]
        print(f"{variant:<50} cpu {cpu:6.1f} s  TP {np.nanmin(motion):.3f} / {np.nanmedian(motion):.3f}  trust "
              f"{min(trust):.3f} / {np.median(trust):.3f}  first {trust[0]:.3f}  last {trust[-1]:.3f}", flush=True)


if __name__ == "__main__":
    main()
