"""``EmbeddingCollector``: the Lightning callback. Nothing but wiring of layers, reshape, capture, store and reduce
into Lightning's hooks."""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import WarningCache
from typing_extensions import override

from lightning_embeddings import batch as batches
from lightning_embeddings import reduce as reducers
from lightning_embeddings import store
from lightning_embeddings.capture import LayerCapture, sequence_first_notes
from lightning_embeddings.finish import finish_run, say_kept, say_nothing_recorded
from lightning_embeddings.inputs import InputRecord, InputViews
from lightning_embeddings.layers import LayerSpec, per_layer, resolve_layers
from lightning_embeddings.layout import holds_run, inputs_file, snapshot_file, snapshot_files, snapshot_name
from lightning_embeddings.outputs import OutputKey
from lightning_embeddings.recorder import Recorder
from lightning_embeddings.reshape import Strategy, resolve_strategy
from lightning_embeddings.rundir import (
    RunDirectory,
    check_writable,
    continued_manifest,
    on_rank_zero,
    refuse_shared,
    replace_run,
    resume_state,
)
from lightning_embeddings.schedule import Schedule
from lightning_embeddings.train_pass import record_training_set, training_bounds

STAGES = ("fit", "validate", "test")


class EmbeddingCollector(Callback):
    """Record each validation sample's activations at chosen layers, every validation epoch, to Parquet; at the
    end of ``fit`` place every epoch in one shared map per layer (UMAP, PaCMAP, PCA or your estimator), measure
    how faithful each epoch's map is, and draw the pictures.

    Args:
        layers: the layers to record: an ``int`` is a position in ``pl_module.named_modules()`` (0 is the
            LightningModule itself, as 3LC counts), a ``str`` a module name such as ``"backbone.layer4.1"``.
        reshape: how a layer's output becomes one vector per sample, for every layer or per layer spec:
            ``"mean"`` (over dims 2..), ``"token_mean"`` (over tokens, padding left out), ``"cls"``, ``"flatten"``,
            ``"avg_pool_N_N"``, a callable ``Tensor[B, ...] -> Tensor[B, D]`` or its import path.
        output_key: which part of a tuple, list, dict or ``ModelOutput`` output to record (an index or a key),
            for every layer or as a mapping from layer spec; by default ``last_hidden_state`` or the first tensor.
        dirpath: where the run is written; one that holds a run is refused (see ``overwrite``). By default
            ``embeddings`` where ``ModelCheckpoint`` puts ``checkpoints`` (beside the first logger's run, else in
            ``default_root_dir``), versioned ``embeddings-v1``, ... where that holds a run or is being written.
        every_n_epochs: record the 1st, (n+1)-th, ... epoch in which validation runs, and the last one; each
            validation in such an epoch is its own snapshot.
        max_samples: record at most this many samples per epoch, split and dataloader: the same first ones.
        record_train: also record the training samples (``split="train"``) at every recorded validation of fit,
            in one more ``validation_step`` pass without logging (README.md: "Find label errors").
        logits: the recorded layer whose vectors are the class logits (``"head.2"``); by default what
            ``validation_step`` returns under ``"logits"``. They give confidence, variability and margin in
            :meth:`EmbeddingRun.samples`, and predictions where ``validation_step`` returns no ``"preds"``.
        reducer: ``"umap"``, ``"pacmap"``, ``"pca"``, ``"parametric"`` (:class:`ParametricMap`: drawn motion
            ranks like motion in the vectors), ``None`` (no map), or an object with scikit-learn's
            ``fit``/``transform`` (a fresh copy is fitted per layer).
        n_components: 2 or 3 dimensional maps.
        reducer_kwargs: extra arguments for the named reducer, e.g. ``{"n_neighbors": 30}``; checked here.
        align: how snapshots share one map: ``"last"`` (fit on the last snapshot of fit, place every snapshot
            through ``transform``, as 3LC does), ``"joint"`` (fit on all snapshots of fit together) or
            ``"aligned"`` (``umap.AlignedUMAP``); each snapshot's trustworthiness is stored, with a warning where
            a map is unfaithful (docs/align.md).
        fit_samples: fit each map on at most this many rows (keeping each snapshot's and label's share; ``None``:
            all), then place every row in batches: memory stays bounded.
        seed: random state of the reducer, for reproducible maps (``None``: not reproducible, faster UMAP).
        label_key: the key of the labels in a dict batch; by default ``label``, ``labels``, ``target``,
            ``targets`` or ``y``, or the second item of an ``(x, y)`` batch.
        id_key: the key of dataset ids in a dict batch; by default a sample's index in the dataset.
        inputs: keep what each sample is, once per split, in ``<dirpath>/inputs``: ``"auto"`` (or True) a PNG
            thumbnail of an image input or the text of a text input, a callable ``batch -> list`` of each sample's
            str, PIL image or array, or False.
        text_key: a dict batch's text field for ``inputs``; by default ``text``, ``sentence`` or ``sentences``.
        tokenizer: decodes a dict batch's ``input_ids`` for ``inputs``: a Hugging Face tokenizer or ids -> str.
        stages: record validation during ``"fit"``, ``trainer.validate`` (``"validate"``), ``trainer.test``
            (``"test"``); after a fit, validate/test snapshots join the fit's run and its map.
        plots: draw each layer's pictures into ``<dirpath>/plots`` at the end.
        html: also write ``<dirpath>/plots/embeddings.html`` (needs the ``html`` extra).
        overwrite: replace a run already in ``dirpath``; by default that is an error, so nothing is lost.

    Predictions are what ``validation_step`` returns under ``"preds"``. Each recorded validation logs every layer's
    ``embeddings/<layer>/knn_accuracy``; loggers get the maps. The sanity check runs the hooks and reshapes, writing
    nothing, so a wrong layer fails before training.

    Raises:
        ValueError: a bad argument, at construction; a layer not in the model or two collectors on one
            directory, in ``setup``; a layer output that is not one row per sample, in the sanity check.
        PermissionError, RunLockedError: ``dirpath`` is unwritable, or another process writes it, in ``setup``.

    Example::

        collector = EmbeddingCollector(layers=[3, "head.1"], reshape={3: "avg_pool_2_2", "head.1": "flatten"})
        trainer = Trainer(max_epochs=5, callbacks=[collector])
        trainer.fit(model, datamodule)
        EmbeddingRun(collector.dirpath).projections("head.1")
    """

    def __init__(
        self,
        layers: list[Union[int, str]],
        reshape: Union[Mapping[Union[int, str], Union[str, Callable]], str, Callable] = "mean",
        output_key: Union[Mapping[Union[int, str], Union[int, str]], int, str, None] = None,
        dirpath: Optional[Union[str, Path]] = None,
        every_n_epochs: int = 1,
        max_samples: Optional[int] = None,
        record_train: bool = False,
        logits: Optional[Union[int, str]] = None,
        reducer: reducers.ReducerSpec = "umap",
        n_components: Literal[2, 3] = 2,
        reducer_kwargs: Optional[dict[str, Any]] = None,
        align: reducers.Align = "last",
        fit_samples: Optional[int] = reducers.FIT_SAMPLES,
        seed: Optional[int] = 0,
        label_key: Optional[str] = None,
        id_key: Optional[str] = None,
        inputs: Union[bool, str, Callable] = "auto",
        text_key: Optional[str] = None,
        tokenizer: Optional[Any] = None,
        stages: tuple[Literal["fit", "validate", "test"], ...] = ("fit",),
        plots: bool = True,
        html: bool = False,
        overwrite: bool = False,
    ) -> None:
        _check_arguments(layers, max_samples, logits, stages, html)
        self.layers: list[LayerSpec] = list(layers)
        self._schedule = Schedule(every_n_epochs)  # which validations of the fit are recorded
        self._strategies: dict[LayerSpec, Strategy] = {
            spec: resolve_strategy(value) for spec, value in per_layer("reshape", reshape, self.layers, "mean").items()
        }
        self._output_keys: dict[LayerSpec, Optional[OutputKey]] = per_layer("output_key", output_key, self.layers, None)
        reducers.check_map(reducer, n_components, seed, align, fit_samples, dict(reducer_kwargs or {}))
        self.every_n_epochs, self.max_samples, self.record_train = every_n_epochs, max_samples, record_train
        self.logits, self.label_key, self.id_key = logits, label_key, id_key
        self.reducer, self.n_components, self.reducer_kwargs = reducer, n_components, dict(reducer_kwargs or {})
        self.align, self.fit_samples, self.seed = align, fit_samples, seed
        self.inputs, self.text_key, self.tokenizer = inputs, text_key, tokenizer
        self._views = InputViews(inputs, text_key, tokenizer)  # checks inputs=
        self.stages, self.plots, self.html, self.overwrite = tuple(stages), plots, html, overwrite
        self._run = RunDirectory(Path(dirpath) if dirpath is not None else None)  # where the run is; rank 0's lock
        self._root: Optional[Path] = None  # the trainer's default_root_dir, where checkpoints find the run again
        self._rank_zero_wait: Optional[Any] = None
        self._manifest: dict[str, Any] = {}
        self._recorder: Optional[Recorder] = None  # the layers' hooks and the open snapshot's rows (from setup on)
        self._warnings = WarningCache()

    @property
    def dirpath(self) -> Optional[Path]:
        """The run directory, known from ``setup`` on; also in the main process after a ``ddp_spawn`` fit."""
        return self._run.path

    @dirpath.setter
    def dirpath(self, value: Optional[Path]) -> None:
        self._run.path = value

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, dirpath=str(self._run.requested))

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in self.stages:
            return
        resolved = resolve_layers(pl_module, self.layers)
        self._root = Path(trainer.default_root_dir)
        if stage == "fit" or self.dirpath is None:  # validate/test after fit go into the fit's run
            self._refuse_a_shared_dirpath(trainer, stage)
            self.dirpath = on_rank_zero(trainer, lambda: self._run.choose(
                stage == "fit", trainer.loggers, self._root, smoke=bool(trainer.fast_dev_run)))
            if trainer.is_global_zero:
                self._run.tell_main_process()
        else:
            on_rank_zero(trainer, lambda: self._run.choose(fresh=False))
        check_writable(self.dirpath)
        captures = [LayerCapture(layer, self._strategies[layer.spec], self._output_keys[layer.spec]) for layer in resolved]
        logits = next((c.layer.column for c in captures if c.layer.spec == self.logits), None)
        kept = InputRecord(self._views, self._warnings.warn,
                           lambda split: inputs_file(self.dirpath, split, trainer.global_rank, trainer.world_size))
        self._recorder = Recorder(captures, self.max_samples, self._warnings.warn, logits, kept if self.inputs else None)
        for note in sequence_first_notes(captures):
            self._warnings.info(note)
        if stage != "fit":  # validate/test after fit: add to the fit's run
            self._manifest = continued_manifest(self.dirpath, self._recorder.layers())
        if trainer.world_size > 1 and torch.distributed.is_initialized() and self._rank_zero_wait is None:
            # rank 0 may reduce for long at the end: the other ranks wait on a group with a long timeout
            self._rank_zero_wait = torch.distributed.new_group(backend="gloo", timeout=timedelta(days=7))

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After any checkpoint is restored: continue a resumed run, refuse to mix into another one."""
        if self.dirpath is None or "fit" not in self.stages:
            return
        if self.record_train:
            training_bounds(trainer, self.max_samples, say=True)
        if self._run.saved:  # the checkpoint's run (or its copy), not setup's choice
            self.dirpath = on_rank_zero(trainer, lambda: self._run.resume(Path(trainer.default_root_dir)))
            self._manifest = continued_manifest(self.dirpath, self._recorder.layers())
            return
        self._manifest = {}
        if holds_run(self.dirpath):  # replaced (overwrite=True) by rank 0 while the others wait, or refused
            replace_run(self.dirpath, self.overwrite, clear=trainer.is_global_zero)
            trainer.strategy.barrier("EmbeddingCollector.overwrite")

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:  # the hooks and reshapes run on its batches, nothing is written
            if self._recorder is not None and "fit" in self.stages:
                self._recorder.start_check()
        else:
            self._start_snapshot(trainer, trainer.val_dataloaders)

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_snapshot(trainer, trainer.test_dataloaders)

    @override
    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._recorder is not None:
            self._recorder.start_batch(dataloader_idx, batch)

    @override
    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._end_batch(outputs, batch, dataloader_idx)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log each layer's live k-NN accuracy; under DDP rank 0's (no collective: a rank with too few labelled rows
        cannot leave the others waiting)."""
        for column, accuracy in (self._recorder.live.scores() if self._recorder is not None else {}).items():
            pl_module.log(f"embeddings/{column}/knn_accuracy", accuracy, rank_zero_only=True)

    on_test_batch_start = on_validation_batch_start  # test batches are recorded as validation batches are
    on_test_batch_end = on_validation_batch_end
    on_test_epoch_end = on_validation_epoch_end

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reduce(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After the user's metrics are logged: record the training set (``record_train``), close the snapshot."""
        if self.record_train and _stage(trainer) == "fit" and self._recorder and self._recorder.snapshot is not None:
            record_training_set(trainer, pl_module, self._recorder, self.max_samples, self._end_batch)
        self._end_snapshot(trainer)
        if _stage(trainer) == "validate":
            self._reduce(trainer)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end_snapshot(trainer)
        self._reduce(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._release()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Discard the unfinished snapshot, release the run; say what is kept and the command that finishes it."""
        self._release()
        if trainer.is_global_zero and self.dirpath is not None:
            say_kept(self.dirpath, len(self._manifest.get("snapshots") or []), exception)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**resume_state(self.dirpath, self._root), "run_id": self._manifest.get("run_id"),
                **self._schedule.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._run.load(state_dict)
        self._schedule.load_state_dict(state_dict)

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """A checkpoint whose collector of the same layers had another ``dirpath`` (a copied experiment given a new
        one): restore that collector's state, as Lightning restores ModelCheckpoint's whatever its dirpath."""
        states = checkpoint.get("callbacks") or {}
        prefix = self._generate_state_key(layers=self.layers, dirpath="")[: -len("''}")]
        same_layers = [state for key, state in states.items() if isinstance(key, str) and key.startswith(prefix)]
        if self.state_key not in states and len(same_layers) == 1:
            self.load_state_dict(copy.deepcopy(same_layers[0]))

    def _refuse_a_shared_dirpath(self, trainer: pl.Trainer, stage: str) -> None:
        """Two collectors of one Trainer never write one directory."""
        others = [c._run.requested for c in trainer.callbacks
                  if isinstance(c, EmbeddingCollector) and c is not self and stage in c.stages]
        refuse_shared(self._run.requested, others)

    def _start_snapshot(self, trainer: pl.Trainer, dataloaders: Any) -> None:
        stage = _stage(trainer)
        if self._recorder is None or stage not in self.stages:
            return
        epoch, step = trainer.current_epoch, trainer.global_step
        if stage == "fit" and not self._schedule.due(epoch, trainer.max_epochs, trainer.check_val_every_n_epoch):
            return
        name = snapshot_name(stage, epoch, step)
        if any(s["name"] == name for s in self._manifest.get("snapshots", [])):
            self._warnings.warn(f"EmbeddingCollector: {name} is already recorded in {self.dirpath}; it is kept as is.")
            return
        path = snapshot_file(self.dirpath, name, trainer.global_rank, trainer.world_size)
        snapshot = {"name": name, "stage": stage, "epoch": epoch, "step": step}
        self._recorder.start(path, snapshot, "test" if stage == "test" else "val", batches.loaders(dataloaders))

    def _end_batch(self, outputs: Any, batch: Any, dataloader_idx: int) -> None:
        ended = self._recorder.end_batch() if self._recorder is not None else None
        if ended is None:
            return
        vectors, size = ended
        if self.label_key is not None and not (isinstance(batch, Mapping) and self.label_key in batch):
            self._warnings.warn(batches.missing_label_key(self.label_key, batch))  # once: in the sanity check
        if self._recorder.checking or size is None:  # None: no layer ran, and the batch does not say its size
            return
        warn = self._warnings.warn
        self._recorder.add(vectors, dataloader_idx, size, batches.batch_ids(batch, size, self.id_key),
                           batches.batch_labels(batch, size, self.label_key),
                           batches.step_predictions(outputs, size, warn), batches.step_logits(outputs, size, warn), batch)

    def _end_snapshot(self, trainer: pl.Trainer) -> None:
        if self._recorder is None:
            return
        if self._recorder.checking:
            self._recorder.end_check()
            return
        snapshot = self._recorder.snapshot
        if snapshot is None:
            return
        self._recorder.end()
        mine = self._recorder.missing  # rows each layer missed: summed over the ranks, said once per layer
        counts = torch.tensor(list(mine.values()), dtype=torch.int64, device=trainer.strategy.root_device)
        counts = trainer.strategy.reduce(counts, reduce_op="sum") if trainer.world_size > 1 else counts
        missing = self._recorder.report_missing(dict(zip(mine, counts.tolist())), snapshot["name"])
        trainer.strategy.barrier("EmbeddingCollector.snapshot_end")
        files = snapshot_files(self.dirpath, snapshot["name"])
        if trainer.is_global_zero and files:
            if missing:
                snapshot["missing"] = missing
            marks = {"png": self.plots, "html": self.html}
            store.add_snapshot(self._manifest, snapshot, files[0], self._recorder.logits, marks)
            store.write_manifest(self.dirpath, self._manifest)

    def _reduce(self, trainer: pl.Trainer) -> None:
        """Rank 0 fits the maps of every layer while the other ranks wait for it."""
        if self.dirpath is None or _stage(trainer) not in self.stages:
            return
        if trainer.is_global_zero and not self._manifest.get("snapshots"):
            say_nothing_recorded(_stage(trainer), validated=self._schedule.validations > 0)
        elif trainer.is_global_zero:
            finish_run(self.dirpath, self.reducer, self.n_components, self.seed, self.align, self.fit_samples,
                       self.reducer_kwargs, trainer.loggers, smoke=bool(trainer.fast_dev_run),
                       progress=trainer.progress_bar_callback is not None, record_train=self.record_train)
        if self._rank_zero_wait is not None:
            torch.distributed.barrier(group=self._rank_zero_wait)

    def _release(self) -> None:
        """Remove every hook, discard an unfinished snapshot file, release the run's lock; safe to call twice."""
        if self._recorder is not None:
            self._recorder.remove()
        self._recorder = None
        self._run.release()


def _check_arguments(layers: Any, max_samples: Any, logits: Any, stages: Any, html: bool) -> None:
    """Raise for constructor arguments that can never work, quoting the value and what is allowed."""
    if isinstance(layers, (str, int)) or not layers:
        raise ValueError(f"layers must be a non-empty list of module indices or names, got {layers!r}.")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples must be None or an int >= 1, got {max_samples!r}.")
    if logits is not None and logits not in layers:
        raise ValueError(f"logits={logits!r} must be one of layers={list(layers)}: the recorded layer that gives the "
                         "class logits.")
    if isinstance(stages, str) or [stage for stage in stages if stage not in STAGES]:
        raise ValueError(f"stages takes some of {STAGES}, got {stages!r}.")
    if html and importlib.util.find_spec("plotly") is None:
        raise ImportError("html=True draws with plotly: pip install 'lightning-embeddings[html]'.")


def _stage(trainer: pl.Trainer) -> str:
    """``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``: what the trainer is running."""
    return trainer.state.fn.value if trainer.state.fn is not None else ""
