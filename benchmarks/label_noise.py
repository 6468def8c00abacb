"""Finding planted label errors: ``EmbeddingRun.samples(...).suspicion`` from one training run, against cleanlab and
against each single signal.

scikit-learn's digits (1,797 real 8x8 images; 1,348 to train, 449 to validate), a share of the training labels
flipped to another class at random (symmetric noise), two models (the digits example's CNN; an MLP). Each run
trains with ``EmbeddingCollector(layers=[<penultimate>], record_train=True)`` and the model's logits returned by
``validation_step``; then ranks the training samples by:

- ``suspicion`` and each single signal of :meth:`EmbeddingRun.samples` (k-NN disagreement, forgetting events,
  confidence, AUM, ...), all from that one run;
- cleanlab's ``cleanlab.rank.get_label_quality_scores`` with in-sample predicted probabilities (the final model's
  softmax on its own training set: free, from the same run's last snapshot) and with K-fold cross-validated ones
  (K more trainings, each on (K-1)/K of the training set: their time is reported).

Reported per model and noise level: AUROC (flipped vs clean) and precision@k (k = number of flipped labels), mean and
standard deviation over seeds, and the training time each method needs.

    python benchmarks/label_noise.py [--noise 0.1 0.2 0.3 0.4] [--seeds 3] [--epochs 40] [--models cnn mlp] [--folds 5]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from label_errors import LogitsCNN, NoisyDigits  # noqa: E402

from lightning_embeddings import EmbeddingCollector, EmbeddingRun  # noqa: E402

# a signal's name -> how to turn the samples() frame into "higher is more suspicious"
SIGNALS = {
    "suspicion": lambda f: f["suspicion"],
    "1 - knn_agreement (mean)": lambda f: 1 - f["knn_agreement"],
    "1 - knn_agreement (last)": lambda f: 1 - f["knn_agreement_last"],
    "1 - confidence": lambda f: 1 - f["confidence"],
    "-aum": lambda f: -f["aum"],
    "forgetting_events": lambda f: f["forgetting_events"],
    "1 - correct": lambda f: 1 - f["correct"],
}


class CNN(LogitsCNN):
    """The digits example's CNN, returning its logits. Penultimate layer: ``head.1`` (64-d)."""

    penultimate = "head.1"


class MLP(CNN):
    """A second model: 64 -> 128 -> 64 -> 10 on the flattened image. Penultimate layer: ``body.3`` (64-d)."""

    penultimate = "body.3"

    def __init__(self, lr: float = 3e-3) -> None:
        super().__init__(lr)
        del self.features, self.head
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                                  nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


MODELS = {"cnn": CNN, "mlp": MLP}


def trainer(epochs: int, callbacks: list) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=callbacks)


def one_run(model_name: str, data: NoisyDigits, epochs: int, seed: int, root: Path) -> tuple[pd.DataFrame, float]:
    """Train once with the collector; the training samples' frame (in dataset order) and the fit's seconds."""
    pl.seed_everything(seed, verbose=False)
    model = MODELS[model_name]()
    collector = EmbeddingCollector(layers=[model.penultimate], record_train=True, reducer=None, plots=False,
                                   dirpath=root / f"{model_name}-{data.noise}-{seed}")
    started = time.perf_counter()
    trainer(epochs, [collector]).fit(model, data)
    seconds = time.perf_counter() - started
    run = EmbeddingRun(collector.dirpath)
    frame = run.samples(model.penultimate, split="train").sort_values("sample_id").reset_index(drop=True)
    return frame, seconds


def last_logits(dirpath: Path) -> np.ndarray:
    """The final model's logits of every training sample (in dataset order), as the collector recorded them at the
    last validation: cleanlab's in-sample probabilities cost no extra training."""
    import pyarrow.dataset as ds

    step = EmbeddingRun(dirpath).snapshots[-1]["step"]
    table = ds.dataset(dirpath / "vectors", format="parquet").to_table(
        columns=["sample_id", "logits"], filter=(ds.field("split") == "train") & (ds.field("step") == step))
    order = np.argsort(table.column("sample_id").to_numpy())
    return np.stack(table.column("logits").to_numpy(zero_copy_only=False))[order]


def cross_validated_probabilities(model_name: str, data: NoisyDigits, epochs: int, seed: int,
                                  folds: int) -> tuple[np.ndarray, float]:
    """Out-of-fold softmax probabilities of every training sample (K trainings without the collector), and their
    total training seconds."""
    images, labels = data.train_set.tensors
    order = np.random.default_rng(seed).permutation(len(labels))
    probabilities = np.zeros((len(labels), 10), dtype=np.float32)
    started = time.perf_counter()
    for held in np.array_split(order, folds):
        kept = np.setdiff1d(order, held)
        pl.seed_everything(seed, verbose=False)
        model = MODELS[model_name]()
        train = DataLoader(TensorDataset(images[kept], labels[kept]), batch_size=64, shuffle=True)
        trainer(epochs, []).fit(model, train)
        model.eval()
        with torch.no_grad():
            probabilities[held] = F.softmax(model(images[held]), dim=1).numpy()
    return probabilities, time.perf_counter() - started


def scores(suspicion: np.ndarray, flipped: np.ndarray) -> tuple[float, float]:
    """AUROC and precision@k (k = number flipped) of a ranking, NaN-safe (NaN ranks last)."""
    suspicion = np.nan_to_num(np.asarray(suspicion, dtype=float), nan=-np.inf)
    k = int(flipped.sum())
    top = np.argsort(-suspicion, kind="stable")[:k]
    return float(roc_auc_score(flipped, np.nan_to_num(suspicion, neginf=-1e9))), float(flipped[top].mean())


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["cnn", "mlp"])
    parser.add_argument("--folds", type=int, default=5, help="cleanlab's cross-validation folds (0: skip it)")
    args = parser.parse_args(argv)
    from cleanlab.rank import get_label_quality_scores

    warnings.filterwarnings("ignore", ".*does not have many workers.*|.*smaller than the logging interval.*|"
                                      ".*no `val_dataloader`.*|.*LeafSpec.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models:
            for noise in args.noise:
                for seed in range(args.seeds):
                    data = NoisyDigits(noise, noise_seed=seed)
                    data.setup("fit")
                    frame, seconds = one_run(model_name, data, args.epochs, seed, Path(tmp))
                    noisy = data.train_set.tensors[1].numpy()
                    for name, signal in SIGNALS.items():
                        if name == "suspicion" or all(c in frame for c in ("knn_agreement", "confidence", "correct")):
                            rows.append((model_name, noise, seed, name, *scores(signal(frame), data.flipped), seconds))
                    logits = last_logits(Path(tmp) / f"{model_name}-{data.noise}-{seed}")
                    in_sample = F.softmax(torch.from_numpy(logits), dim=1).numpy()
                    quality = get_label_quality_scores(noisy, in_sample)
                    rows.append((model_name, noise, seed, "cleanlab, in-sample probabilities",
                                 *scores(1 - quality, data.flipped), seconds))
                    if args.folds:
                        probabilities, cv_seconds = cross_validated_probabilities(model_name, data, args.epochs, seed,
                                                                                  args.folds)
                        quality = get_label_quality_scores(noisy, probabilities)
                        rows.append((model_name, noise, seed, f"cleanlab, {args.folds}-fold cross-validated",
                                     *scores(1 - quality, data.flipped), cv_seconds))
                    print(f"  {model_name} noise {noise:.0%} seed {seed}: fit {seconds:.1f} s", flush=True)
    results = pd.DataFrame(rows, columns=["model", "noise", "seed", "method", "auroc", "precision_at_k", "train_s"])
    table = results.groupby(["model", "noise", "method"], sort=False).agg(
        auroc=("auroc", "mean"), auroc_sd=("auroc", "std"), precision_at_k=("precision_at_k", "mean"),
        precision_sd=("precision_at_k", "std"), train_s=("train_s", "mean"))
    print(f"label noise: digits, {args.epochs} epochs, {args.seeds} seeds, symmetric flips; mean (sd) over seeds")
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.max_columns", 20,
                           "display.float_format", "{:.3f}".format):
        print(table)
    return results


if __name__ == "__main__":
    main()
