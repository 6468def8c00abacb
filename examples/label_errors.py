"""Find label errors: digits with a share of the training labels flipped, ranked by ``EmbeddingRun.samples``.

The digits CNN trains on labels of which ``--noise`` (20% by default) were flipped to another class at random;
``record_train=True`` records every training sample at each validation, and ``validation_step`` returns its logits.
At the end the training samples are ranked by ``suspicion`` (how little their label agrees with their neighbours'
in the penultimate layer, over the epochs) and the ranking is scored against the flips we know of.

    python examples/label_errors.py [--noise 0.2] [--max-epochs 20] [--reducer umap] [--root-dir runs/label_errors]
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import numpy as np
import torch
from digits import DigitsCNN, DigitsDataModule
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from lightning_embeddings import EmbeddingCollector, EmbeddingRun


class LogitsCNN(DigitsCNN):
    """The digits CNN; ``validation_step`` returns the logits (recorded: confidence, margin, predictions)."""

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        return {"logits": logits}


class NoisyDigits(DigitsDataModule):
    """Digits with ``noise`` of the training labels flipped to another class (seeded by ``noise_seed``);
    ``flipped[i]`` says whether training sample ``i``'s label was flipped."""

    def __init__(self, noise: float = 0.2, noise_seed: int = 0, batch_size: int = 64) -> None:
        super().__init__(batch_size=batch_size)
        self.noise, self.noise_seed = noise, noise_seed

    def setup(self, stage: str) -> None:
        super().setup(stage)
        images, labels = self.train_set.tensors
        rng = np.random.default_rng(self.noise_seed)
        chosen = rng.choice(len(labels), size=int(round(self.noise * len(labels))), replace=False)
        noisy = labels.clone()
        noisy[chosen] = torch.from_numpy((labels[chosen].numpy() + rng.integers(1, 10, len(chosen))) % 10)
        self.flipped = np.zeros(len(labels), dtype=bool)
        self.flipped[chosen] = True
        self.train_set = TensorDataset(images, noisy)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, default=0.2, help="share of training labels flipped")
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--reducer", default="umap", choices=["umap", "pacmap", "pca", "parametric"])
    parser.add_argument("--root-dir", default="runs/label_errors", help="where Lightning writes logs")
    args = parser.parse_args(argv)

    pl.seed_everything(0)
    data = NoisyDigits(noise=args.noise)
    collector = EmbeddingCollector(layers=["head.1"], record_train=True, reducer=args.reducer)
    trainer = pl.Trainer(max_epochs=args.max_epochs, default_root_dir=args.root_dir, callbacks=[collector],
                         enable_model_summary=False)
    trainer.fit(LogitsCNN(), data)

    run = EmbeddingRun(collector.dirpath)
    suspects = run.samples("head.1", split="train")  # most suspicious first
    suspects["flipped"] = data.flipped[suspects["sample_id"]]
    k = int(data.flipped.sum())
    print(f"\nrun directory: {run.path}")
    print(f"the 10 training samples most likely mislabelled ({k} of {len(suspects)} labels were flipped):")
    print(suspects.head(10)[["sample_id", "label", "neighbour_label", "prediction", "suspicion", "confidence",
                             "flipped"]].to_string(index=False))
    print(f"flipped among the top {k}: {suspects['flipped'].head(k).mean():.3f} (precision@k); AUROC "
          f"{roc_auc_score(suspects['flipped'], suspects['suspicion']):.3f}")
    pictures = sorted((run.path / "plots").glob("*"))
    print(f"pictures in {run.path / 'plots'}: {', '.join(p.name for p in pictures) or 'none'}")


if __name__ == "__main__":
    main()
