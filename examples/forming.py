"""Clusters that form over training, and a comparison of the ways to draw every epoch in one map.

    python examples/forming.py [--out runs/align] [--epochs 5] [--samples N]

``FormingClusters`` is a model whose recorded layer forms clusters over 5 epochs: at epoch e each sample's vector
is ``(1 - t) * noise + t * centre`` with ``t = e / (epochs - 1)``, a known ground truth. ``main`` records it and the
digits CNN, reduces each run with PCA and with UMAP under ``align='last'``, ``'joint'`` and ``'aligned'``, prints each
snapshot's trustworthiness and draws the pictures (docs/align.md shows them). ``--epochs`` and ``--samples``
make it smaller (the tests run it at 3 epochs of 100 samples); by default it runs at the size docs/align.md shows.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Forming(nn.Module):
    """Mixes each sample's noise with its class centre by ``self.t``."""

    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0

    def forward(self, noise: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        return (1 - self.t) * noise + self.t * centre


class FormingClusters(pl.LightningModule):
    """``n`` samples of ``classes`` clusters in ``dim`` dimensions that form over ``epochs`` validation epochs."""

    def __init__(self, n: int = 600, classes: int = 6, dim: int = 32, epochs: int = 5, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % classes
        centres = torch.randn(classes, dim, generator=g) * 4
        self.noise = torch.randn(n, dim, generator=g) * 2
        self.centres = centres[self.labels] + torch.randn(n, dim, generator=g) * 0.5
        self.epochs = epochs
        self.forming = Forming()
        self.dummy = nn.Linear(1, 1)

    def on_validation_epoch_start(self) -> None:
        self.forming.t = self.current_epoch / max(1, self.epochs - 1)

    def training_step(self, batch, batch_idx):
        return self.dummy(torch.zeros(1, 1)).sum() * 0

    def validation_step(self, batch, batch_idx):
        index, label = batch
        self.forming(self.noise[index], self.centres[index])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(2)), batch_size=1)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.arange(len(self.labels)), self.labels), batch_size=100)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def main(argv: list[str] | None = None) -> None:
    """Compare align='last', 'joint' and 'aligned' on forming clusters and on the digits CNN: per-snapshot
    trustworthiness, and pictures under --out."""
    import argparse
    import warnings

    from digits import DigitsCNN, DigitsDataModule

    from lightning_embeddings import EmbeddingCollector, EmbeddingRun
    from lightning_embeddings.plot import plot_layer

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", default="runs/align", help="where runs and pictures go (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each run (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=None,
                        help="samples per snapshot: forming clusters' count and at most this many of digits' 449 "
                             "validation samples (default: 600 forming clusters, every digits validation sample)")
    args = parser.parse_args(argv)
    sizes = {} if args.samples is None else {"n": args.samples}
    cases = {  # each model made after seeding, so its weights do not depend on what ran before
        "forming": (lambda: FormingClusters(epochs=args.epochs, **sizes), None, "forming"),
        "digits": (DigitsCNN, DigitsDataModule(), "head.1"),
    }
    print("case     align    reducer  trustworthiness per snapshot")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case, (make_model, datamodule, layer) in cases.items():
            pl.seed_everything(0, verbose=False)
            model = make_model()
            dirpath = Path(args.out) / case
            collector = EmbeddingCollector(layers=[layer], reducer=None, plots=False, dirpath=dirpath,
                                           max_samples=args.samples, overwrite=True)
            trainer = pl.Trainer(max_epochs=args.epochs, default_root_dir=args.out, logger=False,
                                 enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                 num_sanity_val_steps=0, callbacks=[collector])
            trainer.fit(model, datamodule=datamodule)
            run = EmbeddingRun(dirpath)
            for reducer, align in [("pca", "last"), ("umap", "last"), ("umap", "joint"), ("umap", "aligned")]:
                run.reduce(reducer=reducer, align=align, progress=False)
                trust = run.manifest["reducer"]["layers"][layer]["trustworthiness"].values()
                print(f"{case:8} {align:8} {reducer:8} " + " ".join(f"{t:.3f}" for t in trust))
                for picture in plot_layer(run, layer, Path(args.out) / "pictures"):
                    picture.rename(picture.with_name(f"{case}-{reducer}-{align}-{picture.name}"))


if __name__ == "__main__":
    main()
