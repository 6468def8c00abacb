"""What ``record_train=True`` and the live ``knn_accuracy`` cost, measured inside real fits, side by side.

The overhead benchmark's small ResNet on synthetic 32x32x3 images (two recorded layers: a conv map pooled to 2x2
and the 512-d penultimate layer). Each fit trains a few batches, then validates once. Stopwatch callbacks placed
before and after the collector time its own hooks: ``on_validation_epoch_end`` (the k-NN accuracy of each layer on
at most 2,048 validation samples) and ``on_validation_end`` (the pass over the training set, then closing the
snapshot). Fits alternate without and with ``record_train``.

    python benchmarks/record_train.py [--train-samples 10000] [--val-samples 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import LAYERS, RESHAPE, SmallResNet, loader  # noqa: E402

from lightning_embeddings import EmbeddingCollector  # noqa: E402

KNN_TARGET = 0.02  # of a validation epoch


class Trained(SmallResNet):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Stopwatch(pl.Callback):
    """The time at which each timed hook reached this callback."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def on_validation_epoch_start(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.at["epoch_start"] = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.at["epoch_end"] = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.at["end"] = time.perf_counter()


def fit(train: int, val: int, batch_size: int, dirpath: Path, record_train: bool) -> dict[str, float]:
    torch.manual_seed(0)
    before, after = Stopwatch(), Stopwatch()
    collector = EmbeddingCollector(LAYERS, reshape=RESHAPE, dirpath=dirpath, reducer=None, plots=False,
                                   record_train=record_train)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[before, collector, after],
    )
    started = time.perf_counter()
    trainer.fit(Trained(), loader(train, batch_size), loader(val, batch_size))
    return {
        "fit": time.perf_counter() - started,
        "validation": before.at["epoch_end"] - before.at["epoch_start"],  # the loop over the validation set
        "knn": after.at["epoch_end"] - before.at["epoch_end"],
        "end": after.at["end"] - before.at["end"],
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=10_000)
    parser.add_argument("--val-samples", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", ".*does not have many workers.*|.*smaller than the logging interval.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        fit(args.batch_size, args.batch_size, args.batch_size, Path(tmp) / "warmup", True)  # untimed
        for rep in range(args.repeats):
            for record_train in ((False, True) if rep % 2 == 0 else (True, False)):
                runs[record_train].append(fit(args.train_samples, args.val_samples, args.batch_size,
                                              Path(tmp) / f"{rep}-{record_train}", record_train))

    def median(record_train: bool, key: str) -> float:
        return statistics.median(run[key] for run in runs[record_train])

    validation, knn = median(True, "validation"), median(True, "knn")
    plain_end, train_end = median(False, "end"), median(True, "end")
    train_pass = train_end - plain_end
    print(f"record_train: {args.train_samples} training and {args.val_samples} validation samples, batch "
          f"{args.batch_size}, {args.repeats} interleaved repeats, torch threads {torch.get_num_threads()}")
    print(f"  validation epoch (loop over the validation set, collector recording): {validation:.3f} s")
    print(f"  knn_accuracy of {len(LAYERS)} layers (on_validation_epoch_end): {knn * 1000:.1f} ms = "
          f"{100 * knn / validation:.2f}% of the validation epoch (target < {100 * KNN_TARGET:.0f}%) "
          f"{'OK' if knn < KNN_TARGET * validation else 'MISSED'}")
    print(f"  on_validation_end without / with record_train: {plain_end:.3f} / {train_end:.3f} s")
    print(f"  the pass over the training set: {train_pass:.3f} s = {train_pass / validation:.2f}x the validation "
          f"epoch ({1e6 * train_pass / args.train_samples:.0f} us per training sample vs "
          f"{1e6 * validation / args.val_samples:.0f} us per validation sample)")
    print(f"  fit wall time without / with record_train (median): {median(False, 'fit'):.2f} / "
          f"{median(True, 'fit'):.2f} s")
    return {"validation_s": validation, "knn_s": knn, "train_pass_s": train_pass}


if __name__ == "__main__":
    main()
