"""How ``sample_dynamics``'s ``suspicion`` was chosen (issue 11): which per-sample signal finds planted label errors.

scikit-learn's digits (1,797 real 8x8 images), split 80/20 (seeded); in both parts a fraction of the labels is
changed: ``symmetric`` noise flips a label to another class uniformly at random, ``pair`` noise to the next class
(c -> c+1 mod 10, a structured confusion, harder). The digits example's CNN (two conv layers, a 64-d penultimate
ReLU, 10 logits) is trained in plain PyTorch with Adam (lr 3e-3, batches of 64, seeded) on the noisy training
labels. After every epoch, one eval-mode pass over each part in a fixed order records its penultimate vectors,
predictions and logits: a :class:`~lightning_embeddings.dynamics.SnapshotView` per epoch, then
:func:`~lightning_embeddings.dynamics.sample_dynamics` over all of them, per part (the ``train`` part, trained on;
the ``held-out`` part, as ``EmbeddingRun.samples(split="val")`` sees validation samples: never trained on, their
neighbours among themselves).

Each signal scores every sample (higher: more suspect); against which labels were changed: AUROC
(``sklearn.metrics.roc_auc_score``) and precision@k, k the number changed (ties broken at random, seeded). Mean and
standard deviation over seeds. ``suspicion (shipped)`` is the column as implemented.

    python benchmarks/explore_suspicion.py [--noise 0.1 0.2 0.3 0.4] [--kinds symmetric pair] [--seeds 0 1 2]
                                           [--epochs 40] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_embeddings.dynamics import SnapshotView, sample_dynamics  # noqa: E402

# name -> score from the sample_dynamics frame (higher: more suspect)
SIGNALS: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "1 - knn_agreement (mean)": lambda f: 1 - f.knn_agreement,
    "1 - knn_agreement_last": lambda f: 1 - f.knn_agreement_last,
    "1 - confidence": lambda f: 1 - f.confidence,
    "-aum": lambda f: -f.aum,
    "forgetting_events": lambda f: f.forgetting_events.astype(float),
    "1 - correct": lambda f: 1 - f.correct,
    "mean(1 - knn_agreement, 1 - confidence)": lambda f: (2 - f.knn_agreement - f.confidence) / 2,
    "mean(1 - knn_agreement, 1 - correct)": lambda f: (2 - f.knn_agreement - f.correct) / 2,
    "1 - knn_agreement * knn_agreement_last": lambda f: 1 - f.knn_agreement * f.knn_agreement_last,
    "suspicion (shipped)": lambda f: f.suspicion,
}


def digits_cnn() -> nn.Module:
    """examples/digits.py's CNN: ``features`` then ``head``, ``head[2]`` the 64-d penultimate ReLU."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                      nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10)),
    )


def noisy(labels: np.ndarray, noise: float, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(labels with about ``noise`` of them changed, which were changed)."""
    changed = rng.random(len(labels)) < noise
    shift = rng.integers(1, 10, len(labels)) if kind == "symmetric" else np.ones(len(labels), np.int64)
    return np.where(changed, (labels + shift) % 10, labels), changed


def train(noise: float, kind: str, seed: int, epochs: int) -> dict[str, tuple[pd.DataFrame, np.ndarray, float]]:
    """Train on digits with noisy labels; per part (``train``, ``held-out``): the ``sample_dynamics`` frame, which
    labels were changed, and the last epoch's accuracy against the true labels."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    n_train = int(0.8 * len(order))
    parts = {"train": order[:n_train], "held-out": order[n_train:]}
    given = {part: noisy(digits.target[rows], noise, kind, rng) for part, rows in parts.items()}
    x, y = images[parts["train"]], torch.from_numpy(given["train"][0])

    torch.manual_seed(seed)
    model = digits_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    penultimate = model[1][:3]
    generator = torch.Generator().manual_seed(seed)
    views: dict[str, list[SnapshotView]] = {part: [] for part in parts}
    for epoch in range(epochs):
        model.train()
        for batch in torch.randperm(n_train, generator=generator).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for part, rows in parts.items():
                vectors = penultimate(model[0](images[rows]))
                logits = model[1][3](vectors)
                views[part].append(SnapshotView(epoch, vectors.numpy(), logits.argmax(1).numpy(), logits.numpy()))
    return {part: (sample_dynamics(given[part][0], iter(views[part])), given[part][1],
                   float((views[part][-1].predictions == digits.target[rows]).mean())) for part, rows in parts.items()}


def precision_at_k(score: np.ndarray, truth: np.ndarray, seed: int) -> float:
    """The share of flipped labels among the ``k`` highest scores, ``k`` the number flipped (ties at random)."""
    k = int(truth.sum())
    shuffle = np.random.default_rng(seed).permutation(len(score))
    top = shuffle[np.argsort(-score[shuffle], kind="stable")[:k]]
    return float(truth[top].mean())


def main(argv: list[str] | None = None) -> dict[tuple[str, str, float, str], tuple[float, float]]:
    """Print, per kind of noise and part, a table of AUROC and precision@k (mean +- std over seeds) by signal and
    noise rate; return their means by (kind, part, noise, signal)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4])
    parser.add_argument("--kinds", nargs="+", choices=["symmetric", "pair"], default=["symmetric", "pair"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="30%% symmetric noise, one seed, 3 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.noise, args.kinds, args.seeds, args.epochs = [0.3], ["symmetric"], [0], 3
    torch.set_num_threads(1)  # as fast for this tiny CNN, and 5x faster where other work shares the cores
    started = time.perf_counter()
    results = {}
    for kind in args.kinds:
        # (part, noise, signal) -> [(auroc, precision) per seed]; (part, noise) -> [accuracy per seed]
        scores: dict[tuple[str, float, str], list[tuple[float, float]]] = {}
        accuracy: dict[tuple[str, float], list[float]] = {}
        for noise in args.noise:
            for seed in args.seeds:
                for part, (frame, changed, right) in train(noise, kind, seed, args.epochs).items():
                    accuracy.setdefault((part, noise), []).append(right)
                    for name, signal in SIGNALS.items():
                        score = signal(frame).to_numpy(np.float64)
                        score = np.where(np.isnan(score), -np.inf, score)
                        scores.setdefault((part, noise, name), []).append(
                            (roc_auc_score(changed, score), precision_at_k(score, changed, seed)))
        for part in ("train", "held-out"):
            print(f"\n{kind} noise, {part} samples, {len(args.seeds)} seed(s), {args.epochs} epochs "
                  f"({time.perf_counter() - started:.0f} s so far); AUROC / precision@k, mean ± std over seeds")
            print(f"| signal | {' | '.join(f'{noise:.0%}' for noise in args.noise)} |")
            print(f"|---|{'---|' * len(args.noise)}")
            right = " | ".join(f"{np.mean(accuracy[part, noise]):.3f}" for noise in args.noise)
            print(f"| (accuracy on the true labels, last epoch) | {right} |")
            for name in SIGNALS:
                cells = []
                for noise in args.noise:
                    auroc, precision = np.asarray(scores[part, noise, name]).T
                    results[kind, part, noise, name] = (auroc.mean(), precision.mean())
                    cells.append(f"{auroc.mean():.3f}±{auroc.std():.3f} / "
                                 f"{precision.mean():.3f}±{precision.std():.3f}")
                print(f"| {name} | {' | '.join(cells)} |", flush=True)
    return results


if __name__ == "__main__":
    main()
