"""Validation wall time with the EmbeddingCollector vs without it, interleaved in one process, plus a profile.

A small ResNet-style CNN on synthetic 32x32x3 images; the collector records a conv map (``avg_pool_2_2``) and
the 512-d penultimate layer. Each repetition times one ``trainer.validate`` with and one without the collector
(order alternating), after one untimed warm-up of each.

    python benchmarks/overhead.py [--val-samples 10000] [--repeats 5] [--batch-size 256] [--no-profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_embeddings import EmbeddingCollector

TARGET_RATIO = 1.05
LAYERS = ["layer3", "penultimate"]
RESHAPE = {"layer3": "avg_pool_2_2", "penultimate": "flatten"}


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(pl.LightningModule):
    """stem 32 ch -> blocks 32 (32x32), 64 (16x16), 128 (8x8) -> pool -> 512-d penultimate -> 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.layer1 = Block(32, 32)
        self.layer2 = Block(32, 64, 2)
        self.layer3 = Block(64, 128, 2)
        self.penultimate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 512), nn.ReLU())
        self.fc = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.penultimate(self.layer3(self.layer2(self.layer1(self.stem(x))))))

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        return {"preds": logits.argmax(-1)}


def loader(samples: int, batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(samples, 3, 32, 32, generator=g), torch.randint(0, 10, (samples,), generator=g))
    return DataLoader(data, batch_size=batch_size)


def validate(model: pl.LightningModule, data: DataLoader, collector: EmbeddingCollector | None) -> tuple[float, float]:
    """One ``trainer.validate``: (wall seconds, process CPU seconds)."""
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[collector] if collector else [],
    )
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.validate(model, data, verbose=False)
    return time.perf_counter() - wall, time.process_time() - cpu


def collector(dirpath: Path) -> EmbeddingCollector:
    return EmbeddingCollector(LAYERS, reshape=RESHAPE, dirpath=dirpath, reducer=None, stages=("validate",), plots=False)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val-samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.manual_seed(0)
    model, data = SmallResNet().eval(), loader(args.val_samples, args.batch_size)
    times: dict[bool, list[float]] = {False: [], True: []}
    cpus: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        validate(model, data, None)  # warm-up, untimed
        validate(model, data, collector(Path(tmp) / "warmup"))
        for rep in range(args.repeats):
            for with_collector in ((False, True) if rep % 2 == 0 else (True, False)):
                c = collector(Path(tmp) / f"rep{rep}") if with_collector else None
                wall, cpu = validate(model, data, c)
                times[with_collector].append(wall)
                cpus[with_collector].append(cpu)
        without, with_ = statistics.median(times[False]), statistics.median(times[True])
        ratio = with_ / without
        print(f"overhead: {args.val_samples} val samples, {args.repeats} interleaved repeats, "
              f"torch threads {torch.get_num_threads()}")
        print(f"  without collector: {', '.join(f'{t:.2f}' for t in times[False])} s")
        print(f"  with collector:    {', '.join(f'{t:.2f}' for t in times[True])} s")
        print(f"validate wall time without collector (median): {without:.3f} s")
        print(f"validate wall time with collector (median): {with_:.3f} s")
        paired = statistics.median(w / wo for w, wo in zip(times[True], times[False]))
        print(f"median of per-repetition ratios (with / without, same repetition): {paired:.3f}x")
        print(f"process CPU time without / with collector (median): {statistics.median(cpus[False]):.2f} / "
              f"{statistics.median(cpus[True]):.2f} s")
        print(f"collection overhead ratio: {ratio:.3f}x (target <= {TARGET_RATIO}) "
              f"{'OK' if ratio <= TARGET_RATIO else 'MISSED'}")
        if not args.no_profile:
            profile(model, data, collector(Path(tmp) / "profile"))
    return {"without_s": without, "with_s": with_, "ratio": ratio, "paired_ratio": paired}


def profile(model: pl.LightningModule, data: DataLoader, c: EmbeddingCollector) -> None:
    """cProfile one validation with the collector (main thread only: the writer thread is not seen)."""
    profiler = cProfile.Profile()
    profiler.enable()
    validate(model, data, c)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    total = stats.total_tt
    stats.sort_stats("cumulative").print_stats(r"lightning_embeddings|pyarrow|queue", 20)
    ours = sum(  # time in lightning_embeddings entered from outside it (hooks, callbacks), children included
        timing[3] for func, (*_, callers) in stats.stats.items() if "lightning_embeddings" in func[0]
        for caller, timing in callers.items() if "lightning_embeddings" not in caller[0]
    )
    print(f"main-thread time in lightning_embeddings: {ours:.3f} s of {total:.2f} s ({100 * ours / total:.1f}%)")
    print(f"profile of one validation with the collector (main thread, total {total:.2f} s under cProfile); "
          "top cumulative entries in lightning_embeddings / pyarrow / queue:")
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    print("\n".join(line for line in lines[start:] if line.strip()))


if __name__ == "__main__":
    main()
