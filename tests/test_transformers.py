"""Real ``Trainer.fit`` runs of a tiny Hugging Face BERT (built from a config, no weights downloaded) with the
collector: tuple and ``ModelOutput`` layer outputs, ``token_mean`` with padding, ``cls``, ``output_key``.

The core check: the last epoch's stored vectors equal a fresh forward pass of the final weights over the same
validation batches, computed here with our own hooks and our own reshape.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_embeddings import EmbeddingCollector, EmbeddingRun

transformers = pytest.importorskip("transformers")

SEQ_LEN, HIDDEN, VOCAB, N_LABELS = 12, 32, 100, 3
N_TRAIN, N_VAL, BATCH = 32, 22, 8  # validation batches of 8, 8 and 6
ATTENTION = "bert.encoder.layer.0.attention"  # BertAttention: returns a tuple (attention_output, attn_weights)
LAYER_1 = "bert.encoder.layer.1"  # BertLayer: returns a plain tensor in transformers 5


class RandomTokens(Dataset):
    """Random token sequences with real padding at the end of most rows (pad id 0), and a label per sample."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, VOCAB, (n, SEQ_LEN), generator=g)
        lengths = torch.randint(3, SEQ_LEN, (n,), generator=g)
        lengths[::4] = SEQ_LEN  # some rows unpadded
        self.attention_mask = (torch.arange(SEQ_LEN) < lengths[:, None]).long()
        self.input_ids[self.attention_mask == 0] = 0
        self.labels = torch.randint(0, N_LABELS, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i]}


class TinyBert(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        config = transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=SEQ_LEN, pad_token_id=0,
        )
        self.bert = transformers.BertModel(config)
        self.head = nn.Linear(HIDDEN, N_LABELS)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        out = self.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return self.head(out.pooler_output)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch), batch["labels"])

    def validation_step(self, batch, batch_idx):
        return {"preds": self(batch).argmax(-1)}

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)  # large: the weights move visibly between epochs

    def train_dataloader(self):
        return DataLoader(RandomTokens(N_TRAIN, seed=1), batch_size=BATCH, shuffle=True)

    def val_dataloader(self):
        return DataLoader(RandomTokens(N_VAL, seed=2), batch_size=BATCH)


def masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1)


def reference(model: TinyBert, module_name: str, pick: Callable[[Any], Tensor], reshape: Callable) -> tuple[Tensor, Tensor]:
    """A fresh eval-mode forward pass over the validation batches, our own hook on ``module_name``:
    ``(per-sample vectors, the attention masks)``."""
    seen: list[Any] = []
    handle = model.get_submodule(module_name).register_forward_hook(lambda m, a, out: seen.append(out))
    model.eval()
    rows, masks = [], []
    try:
        with torch.no_grad():
            for batch in model.val_dataloader():
                seen.clear()
                model(batch)
                assert len(seen) == 1
                rows.append(reshape(pick(seen[0]), batch["attention_mask"]))
                masks.append(batch["attention_mask"])
    finally:
        handle.remove()
    return torch.cat(rows), torch.cat(masks)


def fit(root: Path, collectors: list[EmbeddingCollector], model: pl.LightningModule | None = None, **trainer_kwargs):
    pl.seed_everything(0, verbose=False)
    model = model or TinyBert()
    options = {"max_epochs": 2, "limit_train_batches": 2, "num_sanity_val_steps": 0}
    options.update(trainer_kwargs)
    trainer = make_trainer(root, collectors, **options)
    trainer.fit(model)
    return trainer, model


@pytest.fixture(scope="module")
def bert_fit(tmp_path_factory):
    """One 2-epoch fit with two collectors on the same model:
    ``a`` (default output parts) and ``b`` (parts chosen with output_key), and the fitted model."""
    root = tmp_path_factory.mktemp("bert")
    a = EmbeddingCollector(
        layers=[ATTENTION, LAYER_1, "bert"],
        reshape={ATTENTION: "token_mean", LAYER_1: "cls", "bert": "token_mean"},
        reducer="pca",
        dirpath=root / "a",
    )
    b = EmbeddingCollector(
        layers=["bert", ATTENTION],
        reshape={"bert": "flatten", ATTENTION: "cls"},
        output_key={"bert": "pooler_output", ATTENTION: 0},
        reducer=None,
        dirpath=root / "b",
    )
    _, model = fit(root, [a, b])
    return {"a": EmbeddingRun(a.dirpath), "b": EmbeddingRun(b.dirpath)}, model


def test_bert_module_outputs_are_what_these_tests_cover():
    """Guard: the layers below are a tuple, a plain tensor and a ModelOutput in this transformers version."""
    model = TinyBert().eval()
    outputs = {}
    for name in (ATTENTION, LAYER_1, "bert"):
        model.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(name, out))
    with torch.no_grad():
        model(next(iter(model.val_dataloader())))
    assert isinstance(outputs[ATTENTION], tuple) and outputs[ATTENTION][0].shape == (BATCH, SEQ_LEN, HIDDEN)
    assert isinstance(outputs[LAYER_1], Tensor)
    assert isinstance(outputs["bert"], transformers.utils.ModelOutput)
    assert set(outputs["bert"].keys()) >= {"last_hidden_state", "pooler_output"}


CASES = {
    # (collector, layer): (how to pick the tensor from the module's output, reference reshape, strategy, output_shape)
    ("a", ATTENTION): (lambda out: out[0], masked_mean, "token_mean", [SEQ_LEN, HIDDEN]),
    ("a", LAYER_1): (lambda out: out, lambda h, m: h[:, 0], "cls", [SEQ_LEN, HIDDEN]),
    ("a", "bert"): (lambda out: out.last_hidden_state, masked_mean, "token_mean", [SEQ_LEN, HIDDEN]),
    ("b", "bert"): (lambda out: out.pooler_output, lambda h, m: h, "flatten", [HIDDEN]),
    ("b", ATTENTION): (lambda out: out[0], lambda h, m: h[:, 0], "cls", [SEQ_LEN, HIDDEN]),
}


@pytest.mark.parametrize("case", list(CASES), ids=lambda c: f"{c[0]}-{c[1]}")
def test_last_epoch_equals_fresh_forward_of_final_weights(bert_fit, case):
    runs, model = bert_fit
    run, layer = runs[case[0]], case[1]
    pick, reshape, strategy, output_shape = CASES[case]
    assert run.epochs == [0, 1]
    facts = run.layer(layer)
    assert (facts["strategy"], facts["output_shape"], facts["dim"]) == (strategy, output_shape, HIDDEN)

    expected, _ = reference(model, layer, pick, reshape)
    ids, X = run.vectors(layer, epoch=1)
    np.testing.assert_array_equal(ids, np.arange(N_VAL))
    assert X.dtype == np.float32 and X.shape == (N_VAL, HIDDEN)
    torch.testing.assert_close(torch.tensor(X), expected, rtol=1e-5, atol=1e-6)
    # the check can tell epochs apart: epoch 0 was recorded before the last optimizer steps
    _, X0 = run.vectors(layer, epoch=0)
    assert not np.allclose(X0, expected.numpy(), rtol=1e-3, atol=1e-4)


def test_token_mean_leaves_padding_out(bert_fit):
    runs, model = bert_fit
    _, X = runs["a"].vectors("bert", epoch=1)
    hidden, mask = reference(model, "bert", lambda out: out.last_hidden_state, lambda h, m: h)
    padded = mask.sum(1) < SEQ_LEN
    assert padded.sum() >= N_VAL // 2 and (~padded).sum() >= 3  # real padding in most rows, none in some
    torch.testing.assert_close(torch.tensor(X), masked_mean(hidden, mask), rtol=1e-5, atol=1e-6)
    plain = hidden.mean(1).numpy()
    np.testing.assert_allclose(X[~padded.numpy()], plain[~padded.numpy()], rtol=1e-5, atol=1e-6)
    # where a row is padded, averaging the padding in would give another vector
    assert not np.allclose(X[padded.numpy()], plain[padded.numpy()], rtol=1e-3, atol=1e-4)


def test_labels_ids_and_predictions_are_stored_per_sample(bert_fit):
    runs, model = bert_fit
    val = model.val_dataloader().dataset
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(batch).argmax(-1) for batch in model.val_dataloader()]).numpy()
    for run in runs.values():
        table = run.table()
        assert len(table) == 2 * N_VAL
        for epoch, rows in table.groupby("epoch"):
            np.testing.assert_array_equal(rows["sample_id"].to_numpy(), np.arange(N_VAL))
            np.testing.assert_array_equal(rows["label"].to_numpy(), val.labels.numpy())
            assert (rows["dataloader_idx"] == 0).all()
        np.testing.assert_array_equal(table[table.epoch == 1]["prediction"].to_numpy(), preds)


def test_projections_follow_the_reducer_and_hooks_are_gone(bert_fit):
    runs, model = bert_fit
    for layer in runs["a"].layers:
        proj = runs["a"].projections(layer)
        assert len(proj) == 2 * N_VAL and {"x", "y", "label"} <= set(proj.columns)
    assert runs["a"].manifest["reducer"]["name"] == "pca"
    with pytest.raises(FileNotFoundError, match="not reduced"):
        runs["b"].projections("bert")  # reducer=None: no map
    assert not any(m._forward_hooks for m in model.modules())


def test_mean_on_token_output_warns_once(tmp_path, recwarn):
    collector = EmbeddingCollector(layers=[LAYER_1], reshape="mean", reducer=None)
    fit(tmp_path, [collector])  # 2 epochs x 3 batches
    warned = [w for w in recwarn if "token_mean" in str(w.message)]
    assert len(warned) == 1, [str(w.message) for w in warned]
    assert LAYER_1 in str(warned[0].message)
    facts = EmbeddingRun(collector.dirpath).layer(LAYER_1)
    assert (facts["strategy"], facts["dim"]) == ("mean", SEQ_LEN)  # averaged the hidden dim, as asked


def test_token_strategies_do_not_warn(tmp_path, recwarn):
    collector = EmbeddingCollector(layers=[LAYER_1], reshape="token_mean", reducer=None)
    fit(tmp_path, [collector], max_epochs=1)
    assert not [w for w in recwarn if "token_mean" in str(w.message)]


class NoTensor(nn.Module):
    def forward(self, x: Tensor) -> None:
        return None


class BertWithProbe(TinyBert):
    def __init__(self) -> None:
        super().__init__()
        self.probe = NoTensor()

    def validation_step(self, batch, batch_idx):
        self.probe(batch["input_ids"])
        return super().validation_step(batch, batch_idx)


def test_layer_that_returns_no_tensor_fails_clearly(tmp_path):
    model = BertWithProbe()
    collector = EmbeddingCollector(layers=["probe"], reducer=None)
    with pytest.raises(ValueError, match=r"'probe'.*holds no tensor"):
        fit(tmp_path, [collector], model=model, max_epochs=1, limit_train_batches=1)
    assert not model.probe._forward_hooks
    assert not list((collector.dirpath / "vectors").glob("*epoch*"))  # no (partial) epoch file left behind


def test_unknown_output_key_names_the_available_keys(tmp_path):
    collector = EmbeddingCollector(layers=["bert"], output_key="pooled", reducer=None)
    with pytest.raises(ValueError, match=r"output_key 'pooled'.*last_hidden_state.*pooler_output"):
        fit(tmp_path, [collector], max_epochs=1, limit_train_batches=1)
