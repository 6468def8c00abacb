"""What each sample is (issue 25): thumbnails and text kept once per split beside the vectors, read back with
``EmbeddingRun.inputs``; checked sample by sample against the dataset on real fits."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DigitsCNN, DigitsDataModule, fit_collector
from lightning_embeddings import EmbeddingRun
from lightning_embeddings.inputs import TEXT_CHARS, InputViews, shortened, thumbnail


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def scaled(image: np.ndarray) -> np.ndarray:
    """What a thumbnail holds of a small image: its values min-max scaled to 0..255."""
    low, high = image.min(), image.max()
    return np.round((image - low) / (high - low if high > low else 1) * 255)


def test_a_thumbnail_is_a_png_of_at_most_64_pixels_scaled_per_image():
    digit = np.random.default_rng(0).normal(size=(1, 8, 8))  # normalised values, some negative
    small = pixels(thumbnail(digit))
    assert small.shape == (8, 8) and small.min() == 0 and small.max() == 255
    assert np.abs(small - scaled(digit[0])).max() <= 1
    big = pixels(thumbnail(np.random.default_rng(1).random((3, 200, 100))))
    assert big.shape == (64, 32, 3)  # the long side at 64, the aspect kept
    assert pixels(thumbnail(np.ones((5, 7, 4)))).shape == (5, 7, 4)  # channel-last RGBA; constant: black
    assert pixels(thumbnail(Image.new("RGB", (300, 30), "red"))).shape == (6, 64, 3)
    with pytest.raises(ValueError, match=r"an image is \(C, H, W\), \(H, W, C\) with C in 1, 3, 4, or \(H, W\)"):
        thumbnail(np.zeros((2, 5, 5, 5)))


def test_views_find_images_and_text_in_common_batches_and_say_none_otherwise():
    images = torch.randn(4, 3, 16, 16)
    kind, values = InputViews().of((images, torch.arange(4)), 3)
    assert kind == "image" and len(values) == 3 and pixels(values[2]).shape == (16, 16, 3)
    assert InputViews().of({"pixel_values": images, "labels": torch.arange(4)}, 4)[0] == "image"
    texts = ["a cat", "a dog", "x" * (TEXT_CHARS + 10), "an eel"]
    assert InputViews().of({"sentence": texts, "label": torch.arange(4)}, 4) == ("text", [*texts[:2], shortened(texts[2]), texts[3]])
    assert len(shortened(texts[2])) == TEXT_CHARS and shortened(texts[2]).endswith("…")
    ids = {"input_ids": torch.tensor([[5, 6, 0], [7, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}
    assert InputViews(tokenizer=lambda row: "-".join(map(str, row))).of(ids, 2) == ("text", ["5-6", "7"])
    assert InputViews().of(ids, 2) is None  # token ids without a tokenizer: neither image nor text
    assert InputViews().of((torch.randn(4, 16), torch.arange(4)), 4) is None  # feature vectors
    assert InputViews(text_key="caption").of({"caption": texts, "sentence": ["no"] * 4}, 1) == ("text", ["a cat"])
    given = InputViews(lambda batch: [f"row {int(i)}" for i in batch[1]]).of((images, torch.arange(4)), 4)
    assert given == ("text", ["row 0", "row 1", "row 2", "row 3"])
    with pytest.raises(ValueError, match=r"gave 2 values for a batch of 4 samples"):
        InputViews(lambda batch: ["a", "b"]).of((images, torch.arange(4)), 4)


def test_each_thumbnail_is_its_own_samples_image_for_every_id(tmp_path):
    data = DigitsDataModule()
    _, collector = fit_collector(tmp_path, datamodule=data, layers=["head.1"], record_train=True,
                                 trainer_kwargs={"max_epochs": 2})
    run = EmbeddingRun(collector.dirpath)
    for split, dataset in (("val", data.val_set), ("train", data.train_set)):
        kept = run.inputs(split)
        assert list(kept.columns) == ["sample_id", "split", "dataloader_idx", "image", "text"]
        assert kept["sample_id"].tolist() == list(range(len(dataset)))  # each recorded sample once
        assert (kept["split"] == split).all() and kept["text"].isna().all()
        for sample_id, png in zip(kept["sample_id"], kept["image"]):
            image = dataset[sample_id][0].numpy()[0]
            assert np.abs(pixels(png).astype(float) - scaled(image)).max() <= 1, (split, sample_id)
    assert sorted(p.name for p in (run.path / "inputs").iterdir()) == ["train.parquet", "val.parquet"]
    with pytest.raises(ValueError, match=r"keeps no inputs of 'test' \(inputs/ holds \['train.parquet', 'val.parquet'\]\)"):
        run.inputs("test")


class Sentences(torch.utils.data.Dataset):
    """Texts with features the model reads and labels: the text itself is never a tensor."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.texts = [f"sample {i}: " + " ".join(rng.choice(["héllo", "wörld", "ünïcode ✓", "a"], 5)) for i in range(n)]
        self.texts[3] = "long " * 200  # kept to TEXT_CHARS
        self.x = torch.tensor(rng.normal(size=(n, 64)), dtype=torch.float32).view(n, 1, 8, 8)
        self.y = torch.tensor(rng.integers(0, 10, n))

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict:
        return {"text": self.texts[i], "x": self.x[i], "label": self.y[i]}


class TextData(DigitsDataModule):
    def setup(self, stage: str) -> None:
        self.train_set, self.val_set = Sentences(96, 0), Sentences(40, 1)


class DictCNN(DigitsCNN):
    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self(batch["x"]), batch["label"])

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return {"preds": self(batch["x"]).argmax(-1)}


def test_text_survives_exactly_and_inputs_false_keeps_nothing(tmp_path):
    data = TextData()
    _, collector = fit_collector(tmp_path / "text", model=DictCNN(), datamodule=data, layers=["head.1"],
                                 max_samples=30, trainer_kwargs={"max_epochs": 2})
    kept = EmbeddingRun(collector.dirpath).inputs("val")
    assert kept["text"].tolist() == [shortened(text) for text in data.val_set.texts[:30]]  # max_samples: as vectors
    assert kept["text"][1] == data.val_set.texts[1] and kept["image"].isna().all()
    _, collector = fit_collector(tmp_path / "off", layers=["head.1"], inputs=False, trainer_kwargs={"max_epochs": 1})
    assert not (collector.dirpath / "inputs").exists()


class Features(DigitsDataModule):
    """Batches of 64 plain features: neither image nor text."""

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.train_set = torch.utils.data.TensorDataset(self.train_set.tensors[0].flatten(1), self.train_set.tensors[1])
        self.val_set = torch.utils.data.TensorDataset(self.val_set.tensors[0].flatten(1), self.val_set.tensors[1])


class FlatCNN(DigitsCNN):
    def forward(self, x):
        return super().forward(x.view(-1, 1, 8, 8))


def test_a_batch_that_is_neither_image_nor_text_keeps_nothing_and_says_so_once(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, collector = fit_collector(tmp_path, model=FlatCNN(), datamodule=Features(), layers=["head.1"],
                                     trainer_kwargs={"max_epochs": 2})
    said = [w for w in caught if "hold neither images" in str(w.message)]
    assert len(said) == 1 and "inputs=callable(batch)" in str(said[0].message)
    assert not (collector.dirpath / "inputs").exists()
    assert len(EmbeddingRun(collector.dirpath).snapshots) == 2  # the vectors are recorded as ever


def test_inputs_argument_is_checked():
    from lightning_embeddings import EmbeddingCollector

    with pytest.raises(ValueError, match=r"inputs takes 'auto', True, False or a callable batch -> list, got 'yes'"):
        EmbeddingCollector(layers=["head.1"], inputs="yes")
