"""One snapshot's recording (recorder.py) without a Trainer: real forward hooks on a small model, batches from a
real DataLoader, the snapshot file read back."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_embeddings.capture import LayerCapture
from lightning_embeddings.layers import resolve_layers
from lightning_embeddings.recorder import Recorder
from lightning_embeddings.reshape import resolve_strategy
from lightning_embeddings.store import column_vectors


class Branchy(nn.Module):
    """Two recorded layers; ``skip_second`` leaves the second one uncalled."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(3, 4), nn.Linear(4, 2)
        self.skip_second = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.first(x)
        return hidden if self.skip_second else self.second(hidden)


def record(tmp_path, max_samples=None, skip=(), batches=4):
    """Record ``batches`` batches of 4 rows (every row's input is its index) into one snapshot; the model, the
    recorder, the file and what warned."""
    torch.manual_seed(0)
    model = Branchy().eval()
    captures = [LayerCapture(layer, resolve_strategy("flatten"), None)
                for layer in resolve_layers(model, ["first", "second"])]
    warned = []
    recorder = Recorder(captures, max_samples, warned.append)
    loader = DataLoader(TensorDataset(torch.arange(48.0).reshape(16, 3)), batch_size=4)
    path = tmp_path / "vectors" / "epoch_0000-step_0000001.parquet"
    recorder.start(path, {"name": "epoch_0000-step_0000001", "stage": "fit", "epoch": 0, "step": 1}, "val", [loader])
    for index, (x,) in zip(range(batches), loader):
        if not recorder.wants(0):
            break
        model.skip_second = index in skip
        for capture in captures:
            capture.start_batch(None, len(x))
            capture.active = True
        with torch.no_grad():
            model(x)
        labels = x[:, 0].long().numpy() % 2
        recorder.add([None if c.vectors is None else c.vectors.numpy() for c in captures], 0, len(x), labels=labels)
    return model, recorder, path, warned


def test_rows_up_to_max_samples_in_the_loaders_order_with_their_vectors(tmp_path):
    model, recorder, path, warned = record(tmp_path, max_samples=6)
    assert not recorder.wants(0)  # 6 rows: the second batch was cut, the third not wanted
    assert recorder.end() and path.is_file() and warned == []
    table = pq.read_table(path)
    assert table.column("sample_id").to_pylist() == [0, 1, 2, 3, 4, 5]
    assert table.column("label").to_pylist() == [0, 1, 0, 1, 0, 1]
    assert set(table.column_names) == {"sample_id", "split", "stage", "epoch", "step", "dataloader_idx", "label",
                                       "first", "second"}  # no predictions or logits given: no such columns
    assert {name: set(table.column(name).to_pylist()) for name in ("split", "stage", "epoch", "step")} == {
        "split": {"val"}, "stage": {"fit"}, "epoch": {0}, "step": {1}}
    inputs = torch.arange(18.0).reshape(6, 3)
    with torch.no_grad():
        np.testing.assert_allclose(column_vectors(table.column("first")), model.first(inputs).numpy(), rtol=1e-6)
        np.testing.assert_allclose(column_vectors(table.column("second")), model(inputs).numpy(), rtol=1e-6)
    assert recorder.missing == {"first": 0, "second": 0}


def test_a_layer_skipped_on_the_first_batches_is_null_there_and_counted(tmp_path):
    _, recorder, path, warned = record(tmp_path, skip=(0, 1))  # its width is unknown until batch 2: batches are held
    assert recorder.end()
    second = pq.read_table(path).column("second").to_pylist()
    assert second[:8] == [None] * 8 and all(v is not None for v in second[8:])
    assert recorder.missing == {"first": 0, "second": 8}
    assert recorder.report_missing({"first": 0, "second": 8}) == {"second": 8}
    assert recorder.report_missing({"first": 0, "second": 3}) == {"second": 3}
    said = [w for w in warned if "not called for" in w]
    assert said == [said[0]] and "'second' was not called for 8 samples of epoch_0000-step_0000001" in said[0]


def test_a_layer_never_called_is_refused_and_abort_leaves_no_file(tmp_path):
    _, recorder, path, _ = record(tmp_path, skip=(0, 1, 2, 3))
    with pytest.raises(ValueError, match=r"\['second'\] were not called in any step of epoch_0000-step_0000001"):
        recorder.end()
    assert not path.exists()
    _, recorder, path, _ = record(tmp_path, batches=2)
    recorder.abort()
    assert not path.exists() and not list(path.parent.glob(".*"))
