"""What keeping each sample's input costs (``EmbeddingCollector(inputs=...)``): validation wall time with
``inputs="auto"`` against ``inputs=False``, interleaved in one process, and the bytes a sample takes in ``inputs/``.

Images of noise (the worst case for PNG) at each ``--image-size``, and scikit-learn's real 8x8 digits; the model is
small (pool, two linear layers) so that the time the thumbnails take shows rather than drowns: the ratio is an upper
bound for a real network, the milliseconds per sample are the cost itself.

    python benchmarks/inputs.py [--samples 2000] [--image-sizes 32 224] [--repeats 3] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_embeddings import EmbeddingCollector


class Small(pl.LightningModule):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * channels, 64), nn.ReLU(),
                                 nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def validation_step(self, batch, batch_idx):
        return {"preds": self(batch[0]).argmax(-1)}


def datasets(samples: int, sizes: list[int]) -> dict[str, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    found = {f"noise 3x{s}x{s}": TensorDataset(torch.randn(samples, 3, s, s, generator=g),
                                               torch.randint(0, 10, (samples,), generator=g)) for s in sizes}
    digits = load_digits()
    found["digits 1x8x8"] = TensorDataset(torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)[:samples],
                                          torch.tensor(digits.target)[:samples])
    return found


def validate(model: pl.LightningModule, data: DataLoader, dirpath: Path, inputs: bool) -> float:
    collector = EmbeddingCollector(["net.3"], dirpath=dirpath, reducer=None, stages=("validate",), plots=False,
                                   inputs="auto" if inputs else False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[collector])
    start = time.perf_counter()
    trainer.validate(model, data, verbose=False)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    print(f"inputs: {args.samples} samples per case, {args.repeats} interleaved repeats, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'case':<18} {'without s':>9} {'with s':>8} {'ratio':>6} {'ms/sample':>9} {'bytes/sample':>12}")
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, dataset in datasets(args.samples, args.image_sizes).items():
            model, data = Small(dataset.tensors[0].shape[1]).eval(), DataLoader(dataset, batch_size=args.batch_size)
            validate(model, data, Path(tmp) / f"{name}-warmup", True)  # untimed
            times: dict[bool, list[float]] = {False: [], True: []}
            for rep in range(args.repeats):
                for inputs in ((False, True) if rep % 2 == 0 else (True, False)):
                    times[inputs].append(validate(model, data, Path(tmp) / f"{name}-{rep}-{inputs}", inputs))
            without, with_ = statistics.median(times[False]), statistics.median(times[True])
            kept = Path(tmp) / f"{name}-0-True" / "inputs" / "val.parquet"
            per_sample = kept.stat().st_size / len(dataset)
            ms = (with_ - without) / len(dataset) * 1000
            print(f"{name:<18} {without:>9.3f} {with_:>8.3f} {with_ / without:>5.2f}x {ms:>9.3f} {per_sample:>12.0f}")
            figures[name] = {"without_s": without, "with_s": with_, "ms_per_sample": ms, "bytes_per_sample": per_sample}
    return figures


if __name__ == "__main__":
    main()
