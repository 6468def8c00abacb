"""Exports of a run to the tools people already open: TensorBoard's Embedding Projector.

The files are laid out the way ``torch.utils.tensorboard.SummaryWriter.add_embedding`` lays them out, and written
directly, so neither TensorFlow nor the ``tensorboard`` package is needed to write them::

    <logdir>/
      projector_config.pbtxt                        one ``embeddings { ... }`` entry per tensor
      events.out.tfevents.<time>.<host>.<pid>.lightning-embeddings
                                                    an empty event file, so that ``tensorboard --logdir`` on a
                                                    parent directory finds this one as a run
      00044/head.1%2fprojections/tensors.tsv        every snapshot's map stacked, 3 columns
      00044/head.1%2fprojections/metadata.tsv       label, prediction, suspicion, epoch, step, stage, split,
                                                    sample_id, dataloader_idx, __seq_next__
      00044/head.1%2fvectors/tensors.tsv            the last fit snapshot's vectors, at most ``max_vectors`` rows
      00044/head.1%2fvectors/metadata.tsv           label, prediction, suspicion, split, sample_id, dataloader_idx

(``00044`` is the global step of the last snapshot of ``fit``, ``%2f`` an encoded ``/``, both as ``add_embedding``
writes them; the layer's part is :func:`~.store.file_stem`, so it stays in its folder.) View it with
``tensorboard --logdir <logdir>`` and open the Projector tab. ``suspicion`` (how likely a sample's label is wrong,
from :meth:`~lightning_embeddings.EmbeddingRun.samples`) is empty where it is unknown: a split not followed across
``fit`` (``test``), or a run without labels; colour or search by it in the projector.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pandas as pd
from lightning.pytorch.utilities import rank_zero_warn

from lightning_embeddings.layers import LayerSpec
from lightning_embeddings.layout import PROJECTOR_OWNER, SPLIT, atomic_write, file_stem
from lightning_embeddings.lock import RunLock, RunLockedError
from lightning_embeddings.reader import RunReader, as_reader
from lightning_embeddings.reduce import usable
from lightning_embeddings.run_samples import recorded, sample_columns
from lightning_embeddings.store import read_manifest, write_manifest

PROJECTOR_CONFIG = "projector_config.pbtxt"
SEQUENCE_NEXT = "__seq_next__"  # the projector joins a row to the row this column names into a polyline
EVENT_FILE_SUFFIX = "lightning-embeddings"
_TSV_FLOAT = "%.9g"  # 9 significant digits: every float32 reads back exactly


def export_tensorboard(
    run: Union[RunReader, str, os.PathLike],
    logdir: Union[str, os.PathLike],
    layers: Optional[Sequence[LayerSpec]] = None,
    max_vectors: int = 10_000,
    progress: bool = True,
) -> Path:
    """Write a run to TensorBoard's Embedding Projector, two tensors per layer.

    - ``<layer>/projections``: the layer's map, every snapshot's rows stacked in the order they were recorded
      (within a snapshot the evaluated split's rows, then the training rows of ``record_train``, each by
      ``dataloader_idx, sample_id``), padded with zeros to 3 columns (the projector draws nothing for a 2-column
      tensor; choose the "Custom" or "PCA" projection to see it). Metadata: ``label`` and ``prediction`` when
      known, ``suspicion``, ``epoch``, ``step``, ``stage``, ``split``, ``sample_id``, ``dataloader_idx`` and
      ``__seq_next__``, the row of the same sample in the next snapshot of the same stage (empty in its last),
      from which the projector draws each sample's path. Layers without a map (not reduced) have none.
    - ``<layer>/vectors``: the layer's raw vectors in the last snapshot of ``fit`` (the last snapshot where fit
      recorded none), at most ``max_vectors`` rows, a fixed random subset where there are more. Metadata:
      ``label`` and ``prediction`` when known, ``suspicion``, ``split``, ``sample_id``, ``dataloader_idx``.

    ``suspicion`` is each sample's in :meth:`~lightning_embeddings.EmbeddingRun.samples` (higher: more likely
    mislabelled), empty where the run has none for it (no labels, a ``test`` row).

    Files are laid out as ``SummaryWriter.add_embedding`` lays them out, without needing TensorFlow or the
    ``tensorboard`` package. Entries of ``projector_config.pbtxt`` that this function did not write (a user's own
    ``add_embedding`` in the same log directory) are kept; its own are replaced when it runs again.

    Args:
        run: the run, or its directory.
        logdir: the TensorBoard log directory to write into (created where missing).
        layers: the layers to export (column names, module names, specs or indices); all by default.
        max_vectors: the most raw vectors written per layer.
        progress: show a progress bar over layers when the export takes more than a few seconds.

    Returns:
        ``logdir``, as a ``Path``.

    Raises:
        ValueError: an unknown layer, ``max_vectors`` below 1, or a run without any complete snapshot.

    Example::

        export_tensorboard(EmbeddingRun("lightning_logs/version_0/embeddings"), "lightning_logs/version_0")
        # then: tensorboard --logdir lightning_logs, Projector tab
    """
    run = as_reader(run)
    if isinstance(max_vectors, bool) or not isinstance(max_vectors, int) or max_vectors < 1:
        raise ValueError(f"max_vectors must be a positive int, got {max_vectors!r}.")
    columns = [run.column(layer) for layer in layers] if layers is not None else run.layers
    snapshots = run.snapshots
    if not snapshots:
        raise ValueError(f"{run.path} has no complete snapshot: there is nothing to export.")
    last = next((s for s in reversed(snapshots) if s["stage"] == "fit"), snapshots[-1])
    logdir = Path(logdir)  # a log directory inside the run is written holding its lock; one elsewhere only reads it
    with RunLock(run.path) if logdir.resolve().is_relative_to(run.path.resolve()) else contextlib.nullcontext():
        _write_projector(run, logdir, columns, last, max_vectors, progress)
    _record_export(run, logdir)
    return logdir


def _write_projector(run: RunReader, logdir: Path, columns: Sequence[str], last: dict[str, Any], max_vectors: int,
                     progress: bool) -> None:
    """The projector files of ``columns`` (:func:`export_tensorboard`) in ``logdir``."""
    from tqdm.auto import tqdm

    logdir.mkdir(parents=True, exist_ok=True)
    snapshots = run.snapshots
    entries: list[dict[str, str]] = []
    bar = tqdm(columns, desc="exporting to TensorBoard", unit="layer", delay=2, disable=not progress, leave=False)
    for column in bar:
        try:
            projections = run.projections(column)
        except FileNotFoundError:
            projections = None
        samples = recorded(run, column)
        if projections is not None and len(projections):
            tensor, metadata = projector_paths(projections, snapshots, samples)
            entries.append(_write_embedding(logdir, column, "projections", last["step"], tensor, metadata))
        vectors, metadata = _last_vectors(run, column, last, max_vectors, samples)
        entries.append(_write_embedding(logdir, column, "vectors", last["step"], vectors, metadata))
    _write_config(logdir, entries)
    if not any(logdir.glob("events.out.tfevents.*")):
        _write_empty_event_file(logdir)


def projector_paths(
    projections: pd.DataFrame, snapshots: Sequence[dict[str, Any]], samples: Optional[pd.DataFrame] = None
) -> tuple[np.ndarray, pd.DataFrame]:
    """One layer's projections as the projector's tensor and metadata.

    Rows are ordered by snapshot (in ``snapshots``' order), then the evaluated split's rows before the training
    rows (``record_train``), then ``dataloader_idx``, ``sample_id``; the tensor is ``x, y`` and ``z`` or a zero
    column. ``__seq_next__`` holds, for each row, the row of the same sample (``split, dataloader_idx,
    sample_id``) in the next snapshot of the same stage where it appears, or None: samples of ``test`` are other
    samples than those of ``fit`` even where their ids agree, so stages are not joined, nor are splits.

    Args:
        projections: the layer's :meth:`~lightning_embeddings.EmbeddingRun.projections`.
        snapshots: the run's snapshots, in order.
        samples: :func:`~lightning_embeddings.run_samples.recorded` of the layer, whose ``suspicion`` each sample's rows carry (empty
            cells where None or where a sample has none).

    Returns:
        ``(tensor, metadata)``: an ``(N, 3)`` float32 array and a DataFrame with one row per tensor row
        (``__seq_next__`` a nullable ``Int64`` column).
    """
    position = {(s["stage"], int(s["epoch"]), int(s["step"])): i for i, s in enumerate(snapshots)}
    frame = projections.copy()
    frame["_snapshot"] = [
        position.get((stage, int(epoch), int(step)), len(position))
        for stage, epoch, step in zip(frame["stage"], frame["epoch"], frame["step"])
    ]
    frame["_training"] = (frame[SPLIT] == "train").to_numpy() if SPLIT in frame else False
    frame = frame.sort_values(["_snapshot", "epoch", "step", "_training", "dataloader_idx", "sample_id"], kind="stable")
    frame = frame.reset_index(drop=True)
    frame["_row"] = np.arange(len(frame))
    sample = ["stage", *([SPLIT] if SPLIT in frame else []), "dataloader_idx", "sample_id"]
    following = frame.groupby(sample, sort=False)["_row"].shift(-1)
    tensor = np.zeros((len(frame), 3), dtype=np.float32)
    for j, axis in enumerate("xyz"):
        if axis in frame:
            tensor[:, j] = frame[axis].to_numpy(dtype=np.float32)
    facts = [c for c in ("label", "prediction") if c in frame]
    metadata = frame[[*facts, "epoch", "step", "stage", *([SPLIT] if SPLIT in frame else []), "sample_id",
                      "dataloader_idx"]].copy()
    metadata.insert(len(facts), "suspicion", _suspicion(frame, samples))
    metadata[SEQUENCE_NEXT] = pd.array([None if pd.isna(v) else int(v) for v in following], dtype="Int64")
    return tensor, metadata


def _suspicion(frame: pd.DataFrame, samples: Optional[pd.DataFrame]) -> np.ndarray:
    """Each row's ``suspicion``, NaN where unknown."""
    if samples is None or "suspicion" not in samples:
        return np.full(len(frame), np.nan)
    return sample_columns(frame, samples, ["suspicion"])["suspicion"].to_numpy(float)


def _last_vectors(
    run: RunReader, column: str, snapshot: dict[str, Any], max_vectors: int,
    samples: Optional[pd.DataFrame] = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """The layer's vectors in ``snapshot`` with their sample facts (``suspicion`` from ``samples``), a fixed random
    subset of ``max_vectors`` rows where there are more; rows without a vector or with a non-finite value are left
    out (the projector cannot place them)."""
    frame = run.table(epochs=[snapshot["epoch"]], layers=[column], stages=[snapshot["stage"]])
    frame = frame[frame["step"] == snapshot["step"]]
    vectors = np.stack(frame[column].to_numpy()).astype(np.float32, copy=False) if len(frame) else np.zeros((0, 1))
    placed = usable(vectors)
    frame, vectors = frame[placed].reset_index(drop=True), vectors[placed]
    if len(frame) > max_vectors:
        keep = np.sort(np.random.default_rng(0).choice(len(frame), max_vectors, replace=False))
        frame, vectors = frame.iloc[keep].reset_index(drop=True), vectors[keep]
    facts = [c for c in ("label", "prediction") if c in frame]
    metadata = frame[[*facts, *([SPLIT] if SPLIT in frame else []), "sample_id", "dataloader_idx"]].copy()
    metadata.insert(len(facts), "suspicion", _suspicion(frame, samples))
    return vectors, metadata


def _record_export(run: RunReader, logdir: Path) -> None:
    """Note ``logdir`` in the run's manifest, relative to the run, and the run in ``logdir`` (``PROJECTOR_OWNER``:
    the run's resolved path), so that a later reduce of this run, and of no copy or moved version of it, writes the
    projector files there again from its new maps."""
    (logdir / PROJECTOR_OWNER).write_text(str(run.path.resolve()), encoding="utf-8")
    where = os.path.relpath(logdir.resolve(), run.path.resolve())
    try:
        with RunLock(run.path):
            manifest = read_manifest(run.path)
            recorded = manifest.setdefault("exports", {}).setdefault("tensorboard", [])
            if str(where) not in recorded:
                recorded.append(str(where))
                write_manifest(run.path, manifest)
            run.manifest = manifest
    except (OSError, RunLockedError) as error:  # a read-only run, or another process writing it
        rank_zero_warn(f"lightning-embeddings: the export to {logdir} is written but not recorded in the run "
                       f"({' '.join(str(error).split())}), so a later reduce of {run.path} does not write it again "
                       "from its new maps; export again after one.")


def _write_embedding(
    logdir: Path, column: str, kind: str, global_step: int, tensor: np.ndarray, metadata: pd.DataFrame
) -> dict[str, str]:
    """``tensors.tsv`` and ``metadata.tsv`` (header row first) of the tag ``<column>/<kind>`` in
    ``<step:05d>/<column's file stem>%2f<kind>/``, as ``add_embedding`` names them; returns the projector config
    entry."""
    tag = f"{column}/{kind}"
    subdir = f"{str(global_step).zfill(5)}/{file_stem(column)}%2f{kind}"
    target = logdir / subdir
    target.mkdir(parents=True, exist_ok=True)
    with open(target / "tensors.tsv", "wb") as f:
        np.savetxt(f, tensor, fmt=_TSV_FLOAT, delimiter="\t")
    lines = ["\t".join(metadata.columns)]
    lines += ["\t".join(map(_cell, row)) for row in metadata.itertuples(index=False, name=None)]
    (target / "metadata.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {
        "tensor_name": f"{tag}:{str(global_step).zfill(5)}",
        "metadata_path": f"{subdir}/metadata.tsv",
        "tensor_path": f"{subdir}/tensors.tsv",
    }


def _cell(value: Any) -> str:
    """One metadata value: empty when missing, integral floats as ints, no tab or newline inside."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return re.sub(r"[\t\r\n]", " ", str(value))


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _write_config(logdir: Path, entries: list[dict[str, str]]) -> None:
    """``projector_config.pbtxt`` in protobuf text format, as ``text_format.MessageToString`` writes it; entries of
    an existing config with other tensor names are kept first."""
    path = logdir / PROJECTOR_CONFIG
    ours = {entry["tensor_name"] for entry in entries}
    kept = [block for block in _top_level_blocks(path.read_text(encoding="utf-8"))
            if _tensor_name(block) not in ours] if path.is_file() else []
    written = [
        "embeddings {\n" + "".join(f"  {key}: {_quote(value)}\n" for key, value in entry.items()) + "}\n"
        for entry in entries
    ]
    with atomic_write(path) as tmp:
        tmp.write_text("".join(block.rstrip("\n") + "\n" for block in kept) + "".join(written), encoding="utf-8")


def _top_level_blocks(text: str) -> list[str]:
    """The top-level fields of a text-format message: ``embeddings { ... }`` blocks and ``key: value`` lines."""
    blocks: list[str] = []
    current: list[str] = []
    depth, quote, i = 0, None, 0

    def flush() -> None:
        field = "".join(current).strip()
        if field:
            blocks.append(field)
        current.clear()

    while i < len(text):
        char = text[i]
        if quote:
            current.append(char)
            if char == "\\" and i + 1 < len(text):
                current.append(text[i + 1])
                i += 1
            elif char == quote:
                quote = None
        elif char == "#":  # a comment, to the end of its line
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline
            continue
        else:
            current.append(char)
            if char in "\"'":
                quote = char
            elif char in "{<":
                depth += 1
            elif char in "}>":
                depth -= 1
                if depth == 0:
                    flush()
            elif char == "\n" and depth == 0:
                field = "".join(current).strip()
                if ":" in field and not field.endswith(":"):  # a scalar field; a message may open on the next line
                    flush()
        i += 1
    flush()
    return blocks


def _tensor_name(block: str) -> Optional[str]:
    found = re.search(r'tensor_name\s*:\s*"((?:[^"\\]|\\.)*)"', block)
    return found.group(1).replace('\\"', '"').replace("\\\\", "\\") if found else None


def _write_empty_event_file(logdir: Path) -> Path:
    """An event file holding only its version record, as every ``SummaryWriter`` starts one: it makes ``logdir`` a
    run for ``tensorboard --logdir <a parent>`` (the projector reads the config of every run)."""
    wall_time = time.time()
    event = b"\x09" + struct.pack("<d", wall_time)  # Event.wall_time, field 1, double
    version = b"brain.Event:2"
    event += b"\x1a" + bytes([len(version)]) + version  # Event.file_version, field 3, string
    header = struct.pack("<Q", len(event))
    record = header + struct.pack("<I", _masked_crc32c(header)) + event + struct.pack("<I", _masked_crc32c(event))
    name = f"events.out.tfevents.{int(wall_time):010d}.{socket.gethostname()}.{os.getpid()}.{EVENT_FILE_SUFFIX}"
    path = logdir / name
    path.write_bytes(record)
    return path


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C (Castagnoli) of ``data``."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
