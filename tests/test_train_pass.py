"""record_train's pass (train_pass.py) on its own: what it silences and restores. Its bounds and its run under a real
Trainer are tested in test_record_train.py."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torchmetrics.classification import MulticlassAccuracy

from lightning_embeddings.train_pass import silenced


class WithMetric(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.accuracy = MulticlassAccuracy(num_classes=3)


def test_silenced_drops_logging_and_gives_metrics_their_state_back():
    module = WithMetric()
    module.accuracy.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]))
    before = module.accuracy.compute().item()
    with silenced(module):
        module.log("val_acc", 1.0)  # outside a Trainer Lightning would raise: here it does nothing
        module.log_dict({"val_loss": 0.5})
        module.accuracy.update(torch.tensor([0, 0, 0]), torch.tensor([1, 2, 1]))  # all wrong
        assert module.accuracy.compute().item() < before
    assert module.accuracy.compute().item() == before == 1.0
    assert "log" not in vars(module) and "log_dict" not in vars(module)  # the methods are the class's again
