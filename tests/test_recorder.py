"""One snapshot's recording (recorder.py) without a Trainer: real forward hooks on a small model, batches from a
real DataLoader, the snapshot file read back."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_embeddings.capture import LayerCapture, sequence_first_notes
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


def record(tmp_path, max_samples=None, skip=(), batches=4, logits=None, split="val"):
    """Record ``batches`` batches of 4 rows (every row's input is its index, its label the index's parity) into one
    snapshot; the model, the recorder, the file and what warned."""
    torch.manual_seed(0)
    model = Branchy().eval()
    captures = [LayerCapture(layer, resolve_strategy("flatten"), None)
                for layer in resolve_layers(model, ["first", "second"])]
    warned = []
    recorder = Recorder(captures, max_samples, warned.append, logits)
    loader = DataLoader(TensorDataset(torch.arange(48.0).reshape(16, 3)), batch_size=4)
    path = tmp_path / "vectors" / "epoch_0000-step_0000001.parquet"
    recorder.start(path, {"name": "epoch_0000-step_0000001", "stage": "fit", "epoch": 0, "step": 1}, split, [loader])
    for index, batch in zip(range(batches), loader):
        recorder.start_batch(0, batch)
        if not all(capture.active for capture in captures):
            break
        model.skip_second = index in skip
        with torch.no_grad():
            model(batch[0])
        vectors, size = recorder.end_batch()
        recorder.add(vectors, 0, size, labels=batch[0][:, 0].long().numpy() % 2)
    return model, recorder, path, warned


def test_rows_up_to_max_samples_in_the_loaders_order_with_their_vectors(tmp_path):
    model, recorder, path, warned = record(tmp_path, max_samples=6)
    assert not recorder.wants(0)  # 6 rows: the second batch was cut, the third not wanted
    assert not any(capture.active for capture in recorder.captures)  # ... so the hooks are off for it
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
    name = "epoch_0000-step_0000001"
    assert recorder.report_missing({"first": 0, "second": 8}, name) == {"second": 8}
    assert recorder.report_missing({"first": 0, "second": 3}, name) == {"second": 3}
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


def test_predictions_are_a_logits_layer_s_argmax_and_validation_rows_are_kept_for_knn(tmp_path):
    model, recorder, path, _ = record(tmp_path, logits="second")
    kept = recorder.live._kept
    assert [sum(len(v) for v, _ in kept[column]) for column in ("first", "second")] == [16, 16]
    assert recorder.end()
    table = pq.read_table(path)
    assert "logits" not in table.column_names  # the layer's own column holds them
    with torch.no_grad():
        expected = model(torch.arange(48.0).reshape(16, 3)).argmax(1).numpy()
    assert table.column("prediction").to_pylist() == expected.tolist()
    _, train, _, _ = record(tmp_path / "train", split="train")
    assert not any(train.live._kept.values())  # training rows never count toward the live k-NN accuracy


def test_the_sanity_check_runs_the_hooks_keeps_nothing_and_names_a_layer_never_called(tmp_path):
    model = Branchy().eval()
    captures = [LayerCapture(layer, resolve_strategy("flatten"), None)
                for layer in resolve_layers(model, ["first", "second"])]
    recorder = Recorder(captures, None, print)
    recorder.start_check()
    model.skip_second = True
    batch = [torch.zeros(4, 3)]
    recorder.start_batch(0, batch)
    with torch.no_grad():
        model(batch[0])
    vectors, size = recorder.end_batch()
    assert size == 4 and vectors[0].shape == (4, 4) and vectors[1] is None
    with pytest.raises(ValueError, match=r"\['second'\] were not called in any sanity-check step"):
        recorder.end_check()
    assert not recorder.checking and not any(capture.active for capture in captures)
    assert model.first._forward_hooks and model.second._forward_hooks
    recorder.remove()
    assert not model.first._forward_hooks and not model.second._forward_hooks  # the model carries none of ours


def test_sequence_first_layers_are_told_once_each():
    model = nn.Sequential(nn.GRU(3, 4), nn.Linear(4, 2), nn.GRU(2, 2, batch_first=True))
    captures = [LayerCapture(layer, resolve_strategy("mean"), None) for layer in resolve_layers(model, ["0", "1", "2"])]
    notes = sequence_first_notes(captures)
    assert len(notes) == 1 and "layer '0' (GRU, batch_first=False) returns (T, B, ...)" in notes[0]
