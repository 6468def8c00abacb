"""Reading a run back (reader.py) on small hand-written runs, without a Trainer: two ranks' files with a
DistributedSampler's padding duplicate, rows in key order, vectors read at any positions, a sample missing from a
snapshot."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from lightning_embeddings import layout, store
from lightning_embeddings.reader import RunReader, locate, row_keys

FACTS = {"column": "embed", "name": "embed", "spec": "embed", "index": 1, "type": "Linear", "strategy": "flatten",
         "output_shape": [3], "dim": 3}
SCHEMA = pa.schema([("sample_id", pa.int64()), ("split", pa.string()), ("stage", pa.string()), ("epoch", pa.int32()),
                    ("step", pa.int64()), ("dataloader_idx", pa.int32()), ("label", pa.int64()),
                    ("embed", pa.list_(pa.float32(), 3))],
                   metadata={store.METADATA_KEY: json.dumps({"layers": [FACTS]})})


def vector(sample_id: int, epoch: int) -> list[float]:
    return [float(sample_id), float(epoch), float(sample_id * 10 + epoch)]


def write_snapshot(path, epoch: int, ranks: list[list[int]]) -> dict:
    """One snapshot whose rank r recorded the samples ``ranks[r]`` (in that order)."""
    name = layout.snapshot_name("fit", epoch, 10 * (epoch + 1))
    for rank, ids in enumerate(ranks):
        writer = store.EpochWriter(layout.snapshot_file(path, name, rank, len(ranks)), SCHEMA)
        writer.write({"sample_id": np.array(ids), "split": ["val"] * len(ids), "stage": ["fit"] * len(ids),
                      "epoch": np.full(len(ids), epoch, np.int32), "step": np.full(len(ids), 10 * (epoch + 1)),
                      "dataloader_idx": np.zeros(len(ids), np.int32), "label": np.array(ids) % 2,
                      "embed": np.array([vector(i, epoch) for i in ids], np.float32)})
        writer.close()
    return {"name": name, "stage": "fit", "epoch": epoch, "step": 10 * (epoch + 1)}


@pytest.fixture
def reader(tmp_path):
    # 5 samples on 2 ranks: rank 1 pads with sample 0 again, as DistributedSampler does; epoch 1 lacks sample 3
    snapshots = [write_snapshot(tmp_path, 0, [[0, 2, 4], [1, 3, 0]]), write_snapshot(tmp_path, 1, [[4, 0], [2, 1]])]
    store.write_manifest(tmp_path, {"format": store.FORMAT, "snapshots": snapshots, "layers": [FACTS],
                                    "reducer": None})
    return RunReader(tmp_path)


def test_rows_are_every_sample_once_in_key_order_and_read_gives_their_vectors(reader):
    rows = reader.rows(reader.snapshots[0])
    assert rows.keys.column("sample_id").to_pylist() == [0, 1, 2, 3, 4]  # the padding duplicate dropped
    np.testing.assert_array_equal(reader.read(rows, "embed", rows.stored), [vector(i, 0) for i in range(5)])
    positions = rows.stored[[4, 1, 1]]  # any positions, in the order asked
    np.testing.assert_array_equal(reader.read(rows, "embed", positions), [vector(4, 0), vector(1, 0), vector(1, 0)])
    ids, vectors = reader.vectors("embed", epoch=0)
    assert ids.tolist() == [0, 1, 2, 3, 4] and vectors.shape == (5, 3)


def test_a_sample_missing_from_a_snapshot_is_located_as_absent_and_read_as_nan(reader):
    first, second = (reader.rows(s) for s in reader.snapshots)
    found, here = locate(second, row_keys(first.keys))
    assert here.tolist() == [True, True, True, False, True]  # sample 3 was not recorded at epoch 1
    vectors = reader.aligned(second, "embed", found, here)
    assert np.isnan(vectors[3]).all()
    np.testing.assert_array_equal(vectors[[0, 1, 2, 4]], [vector(i, 1) for i in (0, 1, 2, 4)])
    table = reader.table(layers=["embed"])
    assert len(table) == 9 and table.groupby("epoch").size().tolist() == [5, 4]


def test_a_snapshot_the_manifest_lists_without_its_file_is_named(reader, tmp_path):
    for path in layout.snapshot_files(tmp_path, reader.snapshots[1]["name"]):
        path.unlink()
    with pytest.raises(store.RunError, match=r"epoch_0001-step_0000020.parquet is missing"):
        RunReader(tmp_path).vectors("embed", epoch=1)
