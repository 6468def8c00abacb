"""Record a small CNN's embeddings on scikit-learn's digits (real 8x8 images) over 5 epochs.

    python examples/digits.py [--root-dir runs/digits] [--reducer umap] [--max-epochs 5]

Prints where the run is written, a short summary of what it holds, and where its pictures are (the run's
``plots/``). About 25 s on 2 CPU cores, most of it numba compiling UMAP on its first use in the process.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_embeddings import EmbeddingCollector, EmbeddingRun


class DigitsDataModule(pl.LightningDataModule):
    """scikit-learn's 1,797 digits as (1, 8, 8) images; a fixed 75/25 split, the validation set in order."""

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.25, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed

    def setup(self, stage: str) -> None:
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(digits.target)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        n_val = int(len(labels) * self.val_fraction)
        self.train_set = TensorDataset(images[order[n_val:]], labels[order[n_val:]])
        self.val_set = TensorDataset(images[order[:n_val]], labels[order[:n_val]])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class DigitsCNN(pl.LightningModule):
    """Two conv layers and a two-layer head; ``head.1`` is the 64-d penultimate layer. Logs ``val_acc``, the
    fraction of validation samples classified right, with torchmetrics."""

    def __init__(self, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(inplace=True), nn.Linear(64, 10))
        self.val_acc = MulticlassAccuracy(num_classes=10, average="micro")  # last of named_modules(): index 12

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        preds = self(x).argmax(-1)
        self.val_acc(preds, y)
        self.log("val_acc", self.val_acc, prog_bar=True)  # computed over the whole epoch, then reset
        return {"preds": preds}  # recorded as each sample's prediction

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        return self.validation_step(batch, batch_idx, dataloader_idx)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root-dir", default="runs/digits", help="where Lightning writes logs (default: %(default)s)")
    parser.add_argument("--reducer", default="umap", choices=["umap", "pacmap", "pca", "parametric"])
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--record-train", action="store_true",
                        help="also record the training set, to rank it by how likely each label is wrong")
    args = parser.parse_args(argv)

    pl.seed_everything(0)
    collector = EmbeddingCollector(
        layers=[3, "head.1"],  # index 3 in named_modules() is features.1, the first conv's ReLU
        reshape={3: "avg_pool_2_2", "head.1": "flatten"},
        reducer=args.reducer,
        record_train=args.record_train,
    )
    trainer = pl.Trainer(
        max_epochs=args.max_epochs, default_root_dir=args.root_dir, callbacks=[collector], enable_model_summary=False
    )
    trainer.fit(DigitsCNN(), DigitsDataModule())

    run = EmbeddingRun(collector.dirpath)
    print(f"\nrun directory: {run.path}")
    print(f"epochs: {run.epochs}")
    for layer in run.layers:
        facts = run.layer(layer)
        ids, vectors = run.vectors(layer, epoch=run.epochs[-1])
        print(f"layer {layer!r} (index {facts['index']}, {facts['type']}, {facts['strategy']}): "
              f"{vectors.shape[1]} dims, {len(ids)} samples per epoch")
    projections = run.projections("head.1")
    print(f"projections of 'head.1': {len(projections)} rows, columns {list(projections.columns)}")
    pictures = sorted((run.path / "plots").glob("*"))
    print(f"pictures in {run.path / 'plots'}: {', '.join(p.name for p in pictures) or 'none'}")


if __name__ == "__main__":
    main()
