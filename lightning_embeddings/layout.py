"""Names on disk: a run's files, folders and key columns, file names from layer names, and the one atomic write.

```
embeddings/
  manifest.json
  vectors/epoch_0003-step_0000440.parquet        one snapshot: a validation run during fit
  vectors/epoch_0003-step_0000440-rank1.parquet  under DDP, one file per rank
  vectors/test-epoch_0005-step_0000660.parquet   trainer.test() or trainer.validate(), when recorded
  projections/<layer>.parquet                    <layer> as file_stem encodes it: head.1 as is, never a path
  projections.parquet                            every layer's map in one long table
  samples.parquet                                per layer, split and sample: dynamics and suspicion
  plots/                                         <layer>-snapshots.png, ..., embeddings.html
  .lock, .lock.holder, .switch.json              while a writer is at work
```
Every file is written under a hidden name (:func:`staged`) and renamed when complete (:func:`atomic_write`), so a
reader never sees half a file. This module reads no file format: the formats are :mod:`~lightning_embeddings.store`'s.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

MANIFEST = "manifest.json"
VECTORS = "vectors"
PROJECTIONS = "projections"
LONG_PROJECTIONS = "projections.parquet"
SAMPLES = "samples.parquet"
PLOTS = "plots"
INPUTS = "inputs"  # what each sample is: <split>.parquet, <split>-rank<N>.parquet under DDP
HTML_NAME = "embeddings.html"
TENSORBOARD = "tensorboard"  # where `lightning-embeddings export` writes projector files by default
PROJECTOR_OWNER = ".lightning-embeddings-run"  # in a TensorBoard log directory: the run its projector was written from
LOCK_FILE = ".lock"
HOLDER_FILE = ".lock.holder"  # who holds the lock, for the message of the writer that is refused
SWITCH = ".switch.json"  # the files a switch puts in place, while it is under way (store.switch)

SPLIT = "split"
KEYS = ("stage", "epoch", "step", "dataloader_idx", "sample_id")  # in every snapshot file; SPLIT since record_train
MAP_KEYS = ("sample_id", SPLIT, "stage", "epoch", "step", "dataloader_idx")  # the first columns of a projections file


def snapshot_name(stage: str, epoch: int, step: int) -> str:
    """The file stem of one snapshot: ``epoch_0003-step_0000440``, prefixed by the stage outside ``fit``.

    Example::

        >>> snapshot_name("fit", 3, 440), snapshot_name("test", 5, 660)
        ('epoch_0003-step_0000440', 'test-epoch_0005-step_0000660')
    """
    prefix = "" if stage == "fit" else f"{stage}-"
    return f"{prefix}epoch_{epoch:04d}-step_{step:07d}"


def snapshot_file(dirpath: Path, name: str, rank: int, world_size: int) -> Path:
    suffix = f"-rank{rank}" if world_size > 1 else ""
    return dirpath / VECTORS / f"{name}{suffix}.parquet"


def inputs_file(dirpath: Path, split: str, rank: int, world_size: int) -> Path:
    """Where one rank keeps what the samples of ``split`` are: ``inputs/val.parquet``, ``inputs/val-rank1.parquet``."""
    suffix = f"-rank{rank}" if world_size > 1 else ""
    return dirpath / INPUTS / f"{split}{suffix}.parquet"


def inputs_files(dirpath: Path, split: str) -> list[Path]:
    """Every file of what the samples of ``split`` are: ``<split>.parquet`` and ``<split>-rank<N>.parquet``."""
    pattern = re.compile(re.escape(split) + r"(?:-rank\d+)?\.parquet")
    return sorted(path for path in (dirpath / INPUTS).glob("*.parquet") if pattern.fullmatch(path.name))


def snapshot_files(dirpath: Path, name: str) -> list[Path]:
    """Every complete file of one snapshot: ``<name>.parquet``, then ``<name>-rank<N>.parquet`` by rank (DDP), and
    nothing else (``<name>-rank1-copy.parquet`` is not one of them)."""
    pattern = re.compile(re.escape(name) + r"(?:-rank(\d+))?\.parquet")
    ranked = []
    for path in (dirpath / VECTORS).glob(f"{glob.escape(name)}*.parquet"):
        found = pattern.fullmatch(path.name)
        if found:
            ranked.append((-1 if found[1] is None else int(found[1]), path))
    return [path for _, path in sorted(ranked)]


def file_stem(column: str) -> str:
    """A layer's column as a file name that stays in its folder: percent-encoded but for letters, digits and
    ``_.-~``, a leading ``.`` too, so no ``/``, ``..`` or hidden name can occur; ``urllib.parse.unquote`` gives the
    column back. ``head.1`` stays ``head.1``.

    Example::

        >>> file_stem("head.1"), file_stem("../x"), file_stem("/tmp/x")
        ('head.1', '%2E.%2Fx', '%2Ftmp%2Fx')
    """
    if not isinstance(column, str) or not column:
        raise ValueError(f"a layer's column must be a non-empty string, got {column!r}.")
    stem = quote(column, safe="")
    return "%2E" + stem[1:] if stem.startswith(".") else stem


def projection_file(dirpath: Path, column: str) -> Path:
    return dirpath / PROJECTIONS / f"{file_stem(column)}.parquet"


def staged(path: Path) -> Path:
    """The hidden name a file is written under until it replaces ``path``: ``.<name>.partial``."""
    return path.with_name(f".{path.name}.partial")


def holds_run(dirpath: Path) -> bool:
    """Whether ``dirpath`` holds a run: a manifest or a snapshot file."""
    return (dirpath / MANIFEST).is_file() or any((dirpath / VECTORS).glob("*.parquet"))


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield the hidden path to write ``path`` under (:func:`staged`, its folder made); when the block ends it is
    renamed to ``path``, or removed if the block raised, leaving ``path`` as it was.

    Example::

        with atomic_write(run / "manifest.json") as tmp:
            tmp.write_text("{}")
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = staged(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
