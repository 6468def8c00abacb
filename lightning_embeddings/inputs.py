"""What each sample is: a small view of each recorded sample's input, kept once per split beside its vectors, so
that a suspect can be seen rather than looked up: a PNG thumbnail of an image, the text of a text input, or what
``EmbeddingCollector(inputs=callable)`` says. Written to ``inputs/<split>.parquet`` (``<split>-rank<N>.parquet``
under DDP) with ``sample_id``, ``split``, ``dataloader_idx`` and ``image`` (PNG bytes) or ``text``.

Example::

    views = InputViews()                         # inputs="auto": images and text found in the batch
    kind, values = views.of((images, labels), 32)  # ("image", [b"\\x89PNG...", ...]); None: neither
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import pyarrow as pa

THUMBNAIL = 64  # a thumbnail's long side at most, in pixels
TEXT_CHARS = 500  # characters of a text kept; longer ones end in "…"
TEXT_KEYS = ("text", "sentence", "sentences")  # a dict batch's string field, tried in this order
IMAGE_KEYS = ("image", "images", "pixel_values", "img", "input", "inputs", "x")  # a dict batch's image, tried first
TOKEN_KEYS = ("input_ids",)  # a dict batch's token ids, decoded by ``tokenizer``
SCHEMA = pa.schema([("sample_id", pa.int64()), ("split", pa.string()), ("dataloader_idx", pa.int32()),
                    ("image", pa.binary()), ("text", pa.string())])


def thumbnail(image: Any) -> bytes:
    """``image`` as a PNG of at most ``THUMBNAIL`` pixels on its long side, its values scaled to 0..255 (inputs are
    often normalised): a ``(C, H, W)`` or ``(H, W, C)`` array with C in 1, 3, 4, an ``(H, W)`` array, or a PIL
    image.

    Example::

        >>> thumbnail(np.zeros((1, 8, 8)))[:8]
        b'\\x89PNG\\r\\n\\x1a\\n'
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        picture = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    else:
        picture = Image.fromarray(_scaled(_channels_last(np.asarray(image, dtype=np.float32))))
    if max(picture.size) > THUMBNAIL:
        scale = THUMBNAIL / max(picture.size)
        size = (max(1, round(picture.size[0] * scale)), max(1, round(picture.size[1] * scale)))
        picture = picture.resize(size, Image.Resampling.BOX)  # each pixel the mean of those it covers
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _channels_last(image: np.ndarray) -> np.ndarray:
    """An ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array from a channel-first or channel-last image."""
    if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(f"an image is (C, H, W), (H, W, C) with C in 1, 3, 4, or (H, W); got shape {image.shape}.")
    return image


def _scaled(image: np.ndarray) -> np.ndarray:
    """``image``'s finite values scaled to 0..255 as uint8 (a constant image is black)."""
    finite = np.isfinite(image)
    low, high = (image[finite].min(), image[finite].max()) if finite.any() else (0.0, 0.0)
    span = high - low if high > low else 1.0
    return np.round(np.clip(np.where(finite, image - low, 0.0) / span, 0.0, 1.0) * 255).astype(np.uint8)


def shortened(text: str) -> str:
    """``text`` cut to ``TEXT_CHARS`` characters, ending in "…" where it was longer."""
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


def is_image_batch(value: Any) -> bool:
    """Whether ``value`` is a batch of images: a ``(B, C, H, W)`` tensor or array with C in 1, 3, 4, or
    ``(B, H, W)``, of numbers."""
    shape = getattr(value, "shape", None)
    if shape is None or not hasattr(value, "dtype") or str(value.dtype) in ("bool", "torch.bool"):
        return False
    return (len(shape) == 4 and shape[1] in (1, 3, 4)) or (len(shape) == 3 and min(shape[1:]) > 1)


class InputViews:
    """A batch's samples as thumbnails or text, as ``EmbeddingCollector(inputs=..., text_key=..., tokenizer=...)``
    asks.

    Args:
        how: ``"auto"`` (or True) finds an image tensor or a text field in the batch; a callable ``batch -> list``
            gives each sample's ``str``, PIL image or array itself (False: the collector keeps nothing).
        text_key: a dict batch's string field (default: the first of ``TEXT_KEYS`` it has).
        tokenizer: decodes a dict batch's ``input_ids``: a Hugging Face tokenizer or any callable ids -> str.
    """

    def __init__(self, how: Union[bool, str, Callable[[Any], Sequence[Any]]] = "auto", text_key: Optional[str] = None,
                 tokenizer: Optional[Any] = None) -> None:
        if not (isinstance(how, bool) or how == "auto" or callable(how)):
            raise ValueError(f"inputs takes 'auto', True, False or a callable batch -> list, got {how!r}.")
        self.how, self.text_key, self.tokenizer = how, text_key, tokenizer

    def of(self, batch: Any, size: int) -> Optional[tuple[str, list[Any]]]:
        """``("image", [PNG bytes, ...])`` or ``("text", [str, ...])`` for the first ``size`` samples of
        ``batch``; None where its input is neither.

        Raises:
            ValueError: ``inputs=callable`` gave a list of another length or a value that is neither text nor image.
        """
        if callable(self.how):
            return _given(self.how(batch), size)
        if isinstance(batch, Mapping):
            return self._of_dict(batch, size)
        if isinstance(batch, (tuple, list)) and batch:
            batch = batch[0]
        if is_image_batch(batch):
            return "image", [thumbnail(image) for image in _shrunk(batch[:size])]
        if _is_texts(batch, size):
            return "text", [shortened(str(text)) for text in batch[:size]]
        return None

    def _of_dict(self, batch: Mapping[str, Any], size: int) -> Optional[tuple[str, list[Any]]]:
        keys = [self.text_key] if self.text_key is not None else [k for k in TEXT_KEYS if k in batch]
        for key in keys:
            if _is_texts(batch.get(key), size):
                return "text", [shortened(str(text)) for text in batch[key][:size]]
        ids = next((batch[k] for k in TOKEN_KEYS if k in batch), None)
        if self.tokenizer is not None and ids is not None:
            return "text", [shortened(text) for text in self._decoded(ids, batch.get("attention_mask"), size)]
        named = [batch[k] for k in IMAGE_KEYS if k in batch] + list(batch.values())
        image = next((value for value in named if is_image_batch(value)), None)
        if image is not None:
            return "image", [thumbnail(item) for item in _shrunk(image[:size])]
        return None

    def _decoded(self, ids: Any, mask: Any, size: int) -> list[str]:
        rows = [np.asarray(_array(row)).astype(np.int64) for row in ids[:size]]
        if mask is not None:
            rows = [row[np.asarray(_array(keep)).astype(bool)] for row, keep in zip(rows, mask[:size])]
        if hasattr(self.tokenizer, "batch_decode"):
            return [str(text) for text in self.tokenizer.batch_decode([r.tolist() for r in rows],
                                                                      skip_special_tokens=True)]
        return [str(self.tokenizer(row.tolist())) for row in rows]


def _shrunk(images: Any) -> np.ndarray:
    """A batch of images, ``(B, C, H, W)`` or ``(B, H, W)``, as float32 on the CPU at most ``THUMBNAIL`` pixels on
    the long side: shrunk by area on their own device before the copy (3x faster than shrinking each image after;
    ``benchmarks/inputs.py``)."""
    import torch

    batch = images.detach() if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    flat = batch.ndim == 3
    batch = (batch[:, None] if flat else batch).float()
    height, width = batch.shape[-2:]
    if max(height, width) > THUMBNAIL:
        scale = THUMBNAIL / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        batch = torch.nn.functional.interpolate(batch, size=size, mode="area")
    shrunk = batch.cpu().numpy()
    return shrunk[:, 0] if flat else shrunk


def _array(value: Any) -> np.ndarray:
    """A tensor (on any device, any dtype) or array as a NumPy array."""
    if hasattr(value, "detach"):
        value = value.detach().float().cpu() if value.is_floating_point() else value.detach().cpu()
        return value.numpy()
    return np.asarray(value)


def _is_texts(value: Any, size: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) >= size and all(isinstance(v, str) for v in value[:size])


def _given(values: Sequence[Any], size: int) -> tuple[str, list[Any]]:
    """What ``inputs=callable`` gave for a batch of ``size``, as text or thumbnails."""
    if len(values) < size:
        raise ValueError(f"EmbeddingCollector(inputs=...) gave {len(values)} values for a batch of {size} samples: "
                         "give one str, PIL image or array per sample.")
    values = list(values)[:size]
    if all(isinstance(v, str) for v in values):
        return "text", [shortened(v) for v in values]
    try:
        return "image", [thumbnail(v) for v in values]
    except (ValueError, TypeError) as error:
        raise ValueError(f"EmbeddingCollector(inputs=...) must give each sample's str, PIL image or image array "
                         f"((C, H, W), (H, W, C) or (H, W)): {error}") from error


class InputRecord:
    """The inputs of each split, written once: at its first recorded snapshot, to a file of its own, put in place
    when that snapshot is complete (nothing of an unfinished one stays); a later snapshot (or a resumed fit) finds
    the file there and leaves it as it is.

    Example::

        record = InputRecord(InputViews(), print, lambda split: Path(f"run/inputs/{split}.parquet"))
        record.start("val")
        record.add(batch, ids, dataloader_idx=0, size=32)
        record.end()
    """

    def __init__(self, views: InputViews, warn: Callable[[str], None], file_of: Callable[[str], Path]) -> None:
        self.views = views
        self.warn = warn
        self.file_of = file_of  # where a split's inputs go
        self.split = "val"
        self._writers: dict[str, Any] = {}  # the snapshot's splits whose inputs are being kept

    def start(self, split: str) -> None:
        """``split``'s rows come next; they are kept where its file does not exist yet."""
        from lightning_embeddings.store import EpochWriter

        self.split, path = split, self.file_of(split)
        if split not in self._writers and not path.exists():
            self._writers[split] = EpochWriter(path, SCHEMA)

    def add(self, batch: Any, ids: np.ndarray, dataloader_idx: int, size: int) -> None:
        """Keep the views of the first ``size`` samples of ``batch`` (``ids``: theirs); a batch whose input is
        neither image nor text keeps nothing, said once."""
        writer = self._writers.get(self.split)
        if writer is None or size == 0:
            return
        found = self.views.of(batch, size)
        if found is None:
            self.warn(f"EmbeddingCollector(inputs='auto'): the {self.split} batches hold neither images (a tensor "
                      "(B, C, H, W) with C in 1, 3, 4, or (B, H, W)) nor text (a str field "
                      f"{'/'.join(TEXT_KEYS)} or text_key=, or input_ids with tokenizer=): what those samples are "
                      "is not recorded. Pass inputs=callable(batch) -> list of str or images, or inputs=False.")
            return
        kind, values = found
        writer.write({"sample_id": np.asarray(ids[:size], np.int64), "split": np.full(size, self.split),
                      "dataloader_idx": np.full(size, dataloader_idx, np.int32),
                      kind: pa.array(values, pa.binary() if kind == "image" else pa.string())})

    def end(self) -> None:
        """The snapshot is complete: put each split's file in place, where it holds rows."""
        writers, self._writers = self._writers, {}
        for writer in writers.values():
            if writer.rows:
                writer.close()
            else:
                self._discard(writer)

    def abort(self) -> None:
        """Leave no file of the unfinished snapshot's splits."""
        writers, self._writers = self._writers, {}
        for writer in writers.values():
            self._discard(writer)

    @staticmethod
    def _discard(writer: Any) -> None:
        """Remove the writer's unfinished file, and its folder where nothing else is in it."""
        writer.abort()
        with contextlib.suppress(OSError):  # another rank's file, or one of an earlier split, is there
            writer.path.parent.rmdir()
