"""A model whose recorded layer forms clusters over training: at epoch e each sample's vector is
``(1 - t) * noise + t * centre`` with ``t = e / (epochs - 1)``. Real ``Trainer.fit`` runs, known ground truth."""

from __future__ import annotations

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
