import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_embeddings import layout, store


def _schema(dim=3):
    return pa.schema([("sample_id", pa.int64()), ("label", pa.int64()), ("layer", pa.list_(pa.float32(), dim))])


def _batch(start, n, dim=3):
    ids = np.arange(start, start + n)
    return {"sample_id": ids, "label": ids % 2, "layer": np.tile(ids[:, None], (1, dim)).astype(np.float32)}


def test_writer_streams_batches_and_renames_only_when_complete(tmp_path):
    path = tmp_path / "vectors" / "epoch_0000.parquet"
    writer = store.EpochWriter(path, _schema())
    for start in range(0, 100, 10):
        writer.write(_batch(start, 10))
    assert not path.exists(), "the file must not be visible before close"
    assert [p.name for p in path.parent.iterdir()] == [".epoch_0000.parquet.partial"]
    writer.close()
    assert [p.name for p in path.parent.iterdir()] == ["epoch_0000.parquet"]
    table = pq.read_table(path)
    assert table.column("sample_id").to_pylist() == list(range(100))
    vectors = store.column_vectors(table.column("layer"))
    assert vectors.dtype == np.float32 and vectors.shape == (100, 3)
    assert np.array_equal(vectors[:, 0], np.arange(100, dtype=np.float32))
    assert writer.rows == 100


def test_writer_fills_missing_columns_with_nulls(tmp_path):
    path = tmp_path / "e.parquet"
    writer = store.EpochWriter(path, _schema())
    batch = _batch(0, 4)
    del batch["label"]
    writer.write(batch)
    writer.close()
    assert pq.read_table(path).column("label").null_count == 4


def test_writer_writes_off_the_calling_thread(tmp_path, monkeypatch):
    threads = set()
    real = pq.ParquetWriter.write_table

    def spy(self, *args, **kwargs):
        threads.add(threading.current_thread().name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", spy)
    writer = store.EpochWriter(tmp_path / "e.parquet", _schema())
    writer.write(_batch(0, 5))
    writer.close()
    assert threads and threading.current_thread().name not in threads


def test_row_groups_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "ROW_GROUP_BYTES", 4096)
    path = tmp_path / "e.parquet"
    writer = store.EpochWriter(path, _schema(dim=64))
    for start in range(0, 1000, 50):
        writer.write(_batch(start, 50, dim=64))
    writer.close()
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 1000 and meta.num_row_groups > 10
    assert max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) <= 50


def test_a_failing_disk_surfaces_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    path = tmp_path / "vectors" / "epoch_0002.parquet"
    writer = store.EpochWriter(path, _schema())
    writer.write(_batch(0, 5))
    with pytest.raises(OSError, match=r"Writing embeddings to .*epoch_0002\.parquet failed: .*No space left"):
        writer.close()
    assert list(path.parent.iterdir()) == []


def test_abort_removes_the_unfinished_file(tmp_path):
    path = tmp_path / "e.parquet"
    writer = store.EpochWriter(path, _schema())
    writer.write(_batch(0, 5))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_manifest_is_replaced_atomically(tmp_path):
    store.write_manifest(tmp_path, {"epochs": [0]})
    store.write_manifest(tmp_path, {"epochs": [0, 1]})
    assert store.read_manifest(tmp_path) == {"format": store.FORMAT, "epochs": [0, 1]}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_snapshot_files_of_every_rank(tmp_path):
    name = layout.snapshot_name("fit", 3, 440)
    assert name == "epoch_0003-step_0000440"
    assert layout.snapshot_name("test", 5, 660) == "test-epoch_0005-step_0000660"
    for rank in (1, 0):
        layout.snapshot_file(tmp_path, name, rank, 2).parent.mkdir(exist_ok=True)
        layout.snapshot_file(tmp_path, name, rank, 2).touch()
    layout.snapshot_file(tmp_path, "epoch_0004-step_0000550", 0, 1).touch()
    assert [p.name for p in layout.snapshot_files(tmp_path, name)] == [f"{name}-rank0.parquet", f"{name}-rank1.parquet"]
    assert [p.name for p in layout.snapshot_files(tmp_path, "epoch_0004-step_0000550")] == ["epoch_0004-step_0000550.parquet"]


def test_a_single_chunk_reads_without_a_copy_and_several_chunks_read_in_order():
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    single = pa.chunked_array([store.vectors_array(X)])
    vectors = store.column_vectors(single)
    assert np.array_equal(vectors, X) and np.shares_memory(vectors, single.chunk(0).flatten().to_numpy())
    several = pa.chunked_array([store.vectors_array(X[:1]), store.vectors_array(X[1:])])
    assert np.array_equal(store.column_vectors(several), X)
    assert np.array_equal(store.column_vectors(pa.chunked_array([store.vectors_array(X).slice(1, 2)])), X[1:3])
