"""``EmbeddingCollector``: the Lightning callback. Nothing but wiring of layers, reshape, capture, store and reduce
into Lightning's hooks."""

from __future__ import annotations

import copy
import importlib.util
import os
import uuid
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Literal, Optional, TypeVar, Union

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.rank_zero import WarningCache
from typing_extensions import override

from lightning_embeddings import batch as batches
from lightning_embeddings import reduce as reducers
from lightning_embeddings import store
from lightning_embeddings.capture import LayerCapture, batch_vectors
from lightning_embeddings.finish import finish_run
from lightning_embeddings.layers import LayerSpec, resolve_layers
from lightning_embeddings.layout import (
    MANIFEST,
    holds_run,
    snapshot_file,
    snapshot_files,
    snapshot_name,
)
from lightning_embeddings.live import LiveKnnAccuracy
from lightning_embeddings.outputs import OutputKey
from lightning_embeddings.reshape import Strategy, resolve_strategy
from lightning_embeddings.recorder import Recorder, refuse_uncalled
from lightning_embeddings.rundir import (
    RunDirectory,
    check_writable,
    clear_run,
    default_parent,
    resume_state,
    resumed_dirpath,
    spawn_note,
    throwaway,
)
from lightning_embeddings.train_pass import run_pass, training_bounds, training_loaders

STAGES = ("fit", "validate", "test")
T = TypeVar("T")


class EmbeddingCollector(Callback):
    """Record each validation sample's activations at chosen layers, every validation epoch, to Parquet; at the
    end of ``fit`` place every epoch in one shared map per layer (UMAP, PaCMAP, PCA or your estimator), measure
    how faithful each epoch's map is, and draw the pictures.

    Args:
        layers: the layers to record: an ``int`` is a position in ``pl_module.named_modules()`` (0 is the
            LightningModule itself, as 3LC counts), a ``str`` a module name such as ``"backbone.layer4.1"``.
        reshape: how a layer's output becomes one vector per sample, for every layer or as a mapping from layer
            spec to strategy: ``"mean"`` (average over dims 2.., ``(B, C, H, W) -> (B, C)``), ``"token_mean"``
            (``(B, T, D) -> (B, D)``, padding left out where the batch has an ``attention_mask``), ``"cls"``
            (token 0), ``"flatten"``, ``"avg_pool_N_N"`` (pool a ``(B, C, H, W)`` map to ``N x N``, then flatten),
            a callable ``Tensor[B, ...] -> Tensor[B, D]``, or its import path (``"package.module:function"`` or
            ``"package.module.function"``).
        output_key: which part of a tuple, list, dict or ``ModelOutput`` output to record (an index or a key),
            for every layer or as a mapping from layer spec; by default ``last_hidden_state`` or the first tensor.
        dirpath: where the run is written; one that holds a run is refused (see ``overwrite``). By default
            ``embeddings`` beside the first logger's run, where ``ModelCheckpoint`` puts ``checkpoints``
            (``<log_dir>/embeddings`` for TensorBoard/CSV, ``<save_dir>/<project>/<run id>/embeddings`` for W&B and
            MLflow, ``<default_root_dir>/embeddings`` without a logger), versioned ``embeddings-v1``, ... when that
            holds a run or another process writes it: a run never fails for it and never overwrites one.
        every_n_epochs: record the 1st, (n+1)-th, (2n+1)-th, ... epoch in which validation runs (counting only
            epochs that validate, so ``check_val_every_n_epoch`` does not leave it empty), and the last one;
            every validation in such an epoch is its own snapshot (``val_check_interval < 1`` gives several).
        max_samples: record at most this many samples per epoch, split and dataloader: the same first ones every
            epoch.
        record_train: at every recorded validation of ``fit``, also record the training samples (``split="train"``
            rows in the same snapshot; validation rows are ``"val"``): one more pass of ``validation_step`` over the
            training dataset, in eval mode without gradients, with the training loader's dataset, batch size and
            collate, in a fixed order (each sample once over all ranks under DDP). The pass takes the first samples
            in dataset order, as many as one training epoch draws (all of them, or fewer under
            ``limit_train_batches`` or a sampler's ``num_samples``) and at most ``max_samples``; a stream that
            nothing bounds is refused before training, and SIGTERM ends the pass at the next batch. It costs one
            more inference pass per recorded validation (benchmarks/README.md measures it). ``self.log`` does
            nothing during this pass and torchmetrics metrics keep their state, so what you log is unchanged; other
            side effects of ``validation_step`` (appending to a list) also happen for the training batches.
            :meth:`EmbeddingRun.samples` ranks the training samples by how likely their label is wrong.
        logits: the recorded layer whose vectors are the class logits (``"head.2"``); by default logits are what
            ``validation_step`` returns under ``"logits"``, when it does. They give each sample's confidence,
            variability and margin in :meth:`EmbeddingRun.samples`, and its prediction (their argmax) where
            ``validation_step`` returns no ``"preds"`` (with a logits layer on a GPU, each step then waits for its
            vectors' copy to the host: return ``"preds"`` to keep it asynchronous).
        reducer: ``"umap"``, ``"pacmap"``, ``"pca"``, ``"parametric"`` (:class:`ParametricMap`: one encoder
            trained on every snapshot, so drawn motion ranks like motion in the vectors), ``None`` (no map), or an
            object with scikit-learn's ``fit``/``transform`` (a fresh copy is fitted per layer).
        n_components: 2 or 3 dimensional maps.
        reducer_kwargs: extra arguments for the named reducer, e.g. ``{"n_neighbors": 30}`` or, for
            ``"parametric"``, ``{"steps": 300}``; names and values are checked here, before training.
        align: how snapshots share one map: ``"last"`` (fit on the last snapshot of fit, place every snapshot
            through ``transform``, as 3LC does), ``"joint"`` (fit on all snapshots of fit together, then place each:
            early snapshots keep their own structure), ``"aligned"`` (``umap.AlignedUMAP``). Each snapshot's
            trustworthiness is measured and stored, with a warning naming ``"joint"`` where ``"last"`` draws a
            snapshot unfaithfully; see :meth:`EmbeddingRun.reduce` and docs/align.md. ``"parametric"`` always
            learns from every snapshot of fit (``"aligned"`` does not apply to it).
        fit_samples: fit each map on at most this many rows (a random sample keeping each snapshot's and each
            label's share; ``None``: all), then place every row through ``transform`` in batches, so memory stays
            bounded however many samples and epochs were recorded.
        seed: random state of the reducer, for reproducible maps (``None``: not reproducible, faster UMAP).
        label_key: the key of the per-sample labels in a dict batch; by default ``label``, ``labels``,
            ``target``, ``targets`` or ``y``, or the second item of an ``(x, y)`` batch.
        id_key: the key of per-sample dataset ids in a dict batch; by default a sample's id is its index in the
            validation dataset, read from a sequential sampler's order.
        stages: what to record: ``"fit"`` (validation during fit), ``"validate"`` (``trainer.validate``),
            ``"test"`` (``trainer.test``). After a fit, validate/test snapshots go into the fit's run and its map.
        plots: draw each layer's pictures into ``<dirpath>/plots`` at the end (see :func:`~.plot.plot_run`).
        html: also write the interactive page ``<dirpath>/plots/embeddings.html`` (needs the ``html`` extra).
        overwrite: replace a run already in ``dirpath``; by default that is an error, so nothing is lost.

    With a ``TensorBoardLogger`` the projector files are written to its log directory, a ``WandbLogger`` gets the
    pictures and a table of the last snapshot's map, an ``MLFlowLogger`` the pictures and ``projections.parquet``.

    Predictions are recorded when ``validation_step`` returns a dict with ``"preds"`` (one value per sample), logits
    when it returns ``"logits"`` (one row per sample). At every recorded validation each layer's leave-one-out k-NN
    accuracy on at most 2048 labelled validation samples (rank 0's under DDP) is logged as
    ``embeddings/<layer>/knn_accuracy``: which layer separates the classes, and when.

    Before the first training step the sanity check's batches run through the hooks and reshapes (nothing is
    written), so a layer off the validation path, a bad ``output_key`` or reshape fails there. The run directory is
    locked while the fit writes it: a second process writing it fails at once.

    Raises:
        ValueError: an unknown strategy or reducer, a misspelt ``reducer_kwargs`` key, or a bad number, at
            construction; a layer that is not in the model, or two collectors on one directory, in ``setup``; a
            layer output that is not one row per sample, in the sanity check.
        PermissionError: an unwritable ``dirpath``, in ``setup``.
        RunLockedError: another process is writing ``dirpath``, in ``setup``.

    Example::

        collector = EmbeddingCollector(layers=[3, "head.1"], reshape={3: "avg_pool_2_2", "head.1": "flatten"})
        trainer = Trainer(max_epochs=5, callbacks=[collector])
        trainer.fit(model, datamodule)
        run = EmbeddingRun(collector.dirpath)
        ids, X = run.vectors("head.1", epoch=4)
        run.projections("head.1")
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
        stages: tuple[Literal["fit", "validate", "test"], ...] = ("fit",),
        plots: bool = True,
        html: bool = False,
        overwrite: bool = False,
    ) -> None:
        if isinstance(layers, (str, int)) or not layers:
            raise ValueError(f"layers must be a non-empty list of module indices or names, got {layers!r}.")
        self.layers: list[LayerSpec] = list(layers)
        self._strategies: dict[LayerSpec, Strategy] = {
            spec: resolve_strategy(value) for spec, value in _per_layer("reshape", reshape, self.layers, "mean").items()
        }
        self._output_keys: dict[LayerSpec, Optional[OutputKey]] = _per_layer("output_key", output_key, self.layers, None)
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an int >= 1, got {every_n_epochs!r}.")
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise ValueError(f"max_samples must be None or an int >= 1, got {max_samples!r}.")
        reducers.check_reducer(reducer, align)
        if n_components not in (2, 3):
            raise ValueError(f"n_components must be 2 or 3, got {n_components!r}.")
        reducers.check_reducer_kwargs(reducer, n_components, seed, dict(reducer_kwargs or {}))
        reducers.check_fit_samples(fit_samples, n_components)
        if logits is not None and logits not in self.layers:
            raise ValueError(f"logits={logits!r} must be one of layers={self.layers}: the recorded layer that gives the "
                             "class logits.")
        self.every_n_epochs = every_n_epochs
        self.max_samples = max_samples
        self.record_train = record_train
        self.logits = logits
        self.reducer = reducer
        self.n_components = n_components
        self.reducer_kwargs = dict(reducer_kwargs or {})
        self.align = align
        self.fit_samples = fit_samples
        self.seed = seed
        self.label_key = label_key
        self.id_key = id_key
        self.overwrite = overwrite
        unknown = [stage for stage in stages if stage not in STAGES]
        if isinstance(stages, str) or unknown:
            raise ValueError(f"stages takes some of {STAGES}, got {stages!r}.")
        self.stages = tuple(stages)
        if html and importlib.util.find_spec("plotly") is None:
            raise ImportError("html=True draws with plotly: pip install 'lightning-embeddings[html]'.")
        self.plots = plots
        self.html = html
        self._dirpath_arg = Path(dirpath) if dirpath is not None else None
        self._dirpath: Optional[Path] = None
        self._origin = (os.getpid(), uuid.uuid4().hex)  # to find the run again after ddp_spawn's worker chose it
        self._saved: dict[str, Any] = {}  # the checkpoint's state: set when the fit resumes its run
        self._root: Optional[Path] = None  # the trainer's default_root_dir, where checkpoints find the run again
        self._run = RunDirectory()  # rank 0's hold on the run directory: its lock
        self._checking = False  # the sanity check: hooks and reshapes run, nothing is written
        self._validations = 0  # validation epochs of this fit so far (every_n_epochs counts these)
        self._validated_epoch = -1
        self._snapshot: Optional[dict[str, Any]] = None
        self._live = LiveKnnAccuracy()  # the rows behind each layer's knn_accuracy
        self._rank_zero_wait: Optional[Any] = None
        self._captures: list[LayerCapture] = []
        self._manifest: dict[str, Any] = {}
        self._recorder: Optional[Recorder] = None  # the open snapshot's rows (made in setup, with the captures)
        self._wanted = False
        self._batch_size: Optional[int] = None
        self._called: dict[str, int] = {}
        self._said_missing: set[str] = set()
        self._warnings = WarningCache()

    @property
    def dirpath(self) -> Optional[Path]:
        """The run directory, known from ``setup`` on; also in the main process after a ``ddp_spawn`` fit."""
        note = spawn_note(self._origin[1])
        if os.getpid() == self._origin[0] and note.is_file():  # a spawned rank 0 chose it
            self._dirpath = Path(note.read_text())
            note.unlink(missing_ok=True)
        return self._dirpath

    @dirpath.setter
    def dirpath(self, value: Optional[Path]) -> None:
        self._dirpath = value

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, dirpath=str(self._dirpath_arg))

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in self.stages:
            return
        resolved = resolve_layers(pl_module, self.layers)
        self._root = Path(trainer.default_root_dir)
        if stage == "fit" or self.dirpath is None:  # validate/test after fit go into the fit's run
            self._refuse_a_shared_dirpath(trainer, stage)
            smoke = bool(trainer.fast_dev_run) and self._dirpath_arg is None  # a throwaway run, never in the cwd
            parent = None if self._dirpath_arg is not None or smoke else default_parent(trainer.loggers, self._root)
            self.dirpath = _on_rank_zero(trainer, lambda: self._open(throwaway() if smoke else parent, stage == "fit"))
            if trainer.is_global_zero and os.getpid() != self._origin[0]:  # a spawned worker: tell the main process
                spawn_note(self._origin[1]).write_text(str(self.dirpath))
        else:
            _on_rank_zero(trainer, lambda: self._open(None, fresh=False))
        check_writable(self.dirpath)
        self._captures = [
            LayerCapture(layer, self._strategies[layer.spec], self._output_keys[layer.spec]) for layer in resolved
        ]
        self._recorder = Recorder(self._captures, self.max_samples, self._warnings.warn)
        for capture in self._captures:
            if capture.sequence_first:
                self._warnings.info(
                    f"EmbeddingCollector: layer {capture.layer.column!r} ({type(capture.layer.module).__name__}, "
                    "batch_first=False) returns (T, B, ...): it is recorded per sample, with the batch dim moved first."
                )
        if stage != "fit":
            self._continue_run()
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
        if self._saved:
            def resume() -> Path:  # the checkpoint's run (or its copy), not setup's choice
                self.dirpath = resumed_dirpath(self._saved, self._dirpath_arg, Path(trainer.default_root_dir))
                return self._open(None, fresh=False)

            self.dirpath = _on_rank_zero(trainer, resume)
            self._continue_run()
            return
        self._manifest = {}
        if not holds_run(self.dirpath):
            return
        if not self.overwrite:
            raise FileExistsError(
                f"EmbeddingCollector: {self.dirpath} already holds a run. Pass another dirpath, delete it, set "
                "overwrite=True to replace it, or resume its fit with ckpt_path=..."
            )
        if trainer.is_global_zero:
            clear_run(self.dirpath)
        trainer.strategy.barrier("EmbeddingCollector.overwrite")

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            self._start_check()
        else:
            self._start_snapshot(trainer, trainer.val_dataloaders)

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_snapshot(trainer, trainer.test_dataloaders)

    @override
    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._start_batch(batch, dataloader_idx)

    @override
    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._start_batch(batch, dataloader_idx)

    @override
    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._end_batch(trainer, outputs, batch, dataloader_idx)

    @override
    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._end_batch(trainer, outputs, batch, dataloader_idx)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_knn_accuracy(pl_module)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_knn_accuracy(pl_module)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reduce(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After the user's metrics are logged: record the training set (``record_train``), close the snapshot."""
        if self.record_train and _stage(trainer) == "fit" and self._snapshot is not None:
            self._record_train(trainer, pl_module)
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
        kept = len(self._manifest.get("snapshots") or []) if trainer.is_global_zero else 0
        if kept and self.dirpath is not None:
            rank_zero_warn(f"lightning-embeddings: the fit stopped ({type(exception).__name__}); {kept} complete "
                           f"snapshot{'s' * (kept != 1)} kept in {self.dirpath}, without new maps or pictures. Make "
                           f"them with: lightning-embeddings reduce {self.dirpath}")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**resume_state(self.dirpath, self._root), "run_id": self._manifest.get("run_id"),
                "validations": self._validations, "validated_epoch": self._validated_epoch}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("dirpath"):
            self.dirpath = Path(state_dict["dirpath"])
            self._saved = state_dict
        self._validations = state_dict.get("validations", 0)
        self._validated_epoch = state_dict.get("validated_epoch", -1)

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """A checkpoint whose collector of the same layers had another ``dirpath`` (a copied experiment given a new
        one): restore that collector's state, as Lightning restores ModelCheckpoint's whatever its dirpath."""
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return
        prefix = self._generate_state_key(layers=self.layers, dirpath="")[: -len("''}")]
        same_layers = [state for key, state in states.items() if isinstance(key, str) and key.startswith(prefix)]
        if len(same_layers) == 1:
            self.load_state_dict(copy.deepcopy(same_layers[0]))

    def _refuse_a_shared_dirpath(self, trainer: pl.Trainer, stage: str) -> None:
        """Two collectors of one Trainer never write one directory."""
        mine = self._dirpath_arg.resolve() if self._dirpath_arg is not None else None
        for other in trainer.callbacks:
            theirs = other._dirpath_arg.resolve() if isinstance(other, EmbeddingCollector) and other._dirpath_arg else None
            if other is self or not isinstance(other, EmbeddingCollector) or stage not in other.stages or theirs != mine:
                continue
            where = str(mine) if mine is not None else "the default run directory (<log_dir>/embeddings)"
            raise ValueError(
                f"EmbeddingCollector: two collectors of this Trainer would write to {where}. Give each its own "
                "dirpath=..., or record all the layers with one collector."
            )

    def _open(self, parent: Optional[Path], fresh: bool) -> Path:
        """Rank 0: lock the run directory (``dirpath``, or a fresh one under ``parent``) and clean what a killed
        writer left there; return it."""
        dirpath = self.dirpath if self.dirpath is not None and not fresh else self._dirpath_arg
        return self._run.open(dirpath if parent is None else None, parent, clean=fresh or bool(self._saved))

    def _start_check(self) -> None:
        """The sanity check: run the hooks and reshapes on its batches, write nothing."""
        if not self._captures or "fit" not in self.stages:
            return
        self._checking = True
        self._called = {capture.layer.column: 0 for capture in self._captures}

    def _start_snapshot(self, trainer: pl.Trainer, dataloaders: Any) -> None:
        stage = _stage(trainer)
        if not self._captures or stage not in self.stages:
            return
        epoch, step = trainer.current_epoch, trainer.global_step
        if stage == "fit":
            if epoch != self._validated_epoch:
                self._validated_epoch, self._validations = epoch, self._validations + 1
            if (self._validations - 1) % self.every_n_epochs != 0 and not _last_validation(trainer):
                return
        name = snapshot_name(stage, epoch, step)
        if any(s["name"] == name for s in self._manifest.get("snapshots", [])):
            self._warnings.warn(f"EmbeddingCollector: {name} is already recorded in {self.dirpath}; it is kept as is.")
            return
        self._snapshot = {"name": name, "stage": stage, "epoch": epoch, "step": step}
        self._live.start([capture.layer.column for capture in self._captures])
        path = snapshot_file(self.dirpath, name, trainer.global_rank, trainer.world_size)
        self._recorder.start(path, name, "test" if stage == "test" else "val", batches.loaders(dataloaders))

    def _record_train(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The training set as ``split="train"`` rows of the open snapshot (:mod:`~lightning_embeddings.train_pass`)."""
        bounds = training_bounds(trainer, self.max_samples)
        if bounds is None:
            self._warnings.warn("EmbeddingCollector(record_train=True) records the training set through its DataLoader, "
                                "but the trainer's training data is "
                                f"{[type(dl).__name__ for dl in batches.loaders(trainer.train_dataloader)]}: no "
                                "training rows are recorded.")
            return
        loaders = training_loaders(trainer, bounds)
        self._recorder.start_split("train", loaders, bounds)
        run_pass(trainer, pl_module, loaders, start=self._start_batch,
                 end=lambda outputs, batch, i: self._end_batch(trainer, outputs, batch, i),
                 done=lambda i: not self._recorder.wants(i))

    def _start_batch(self, batch: Any, dataloader_idx: int) -> None:
        self._wanted = self._checking or (self._snapshot is not None and self._recorder.wants(dataloader_idx))
        if not self._wanted:
            for capture in self._captures:
                capture.active = False
            return
        mask, size = batches.attention_mask(batch), batches.batch_size(batch)
        self._batch_size = size
        for capture in self._captures:
            capture.start_batch(mask, size)
            capture.active = True

    def _end_batch(self, trainer: pl.Trainer, outputs: Any, batch: Any, dataloader_idx: int) -> None:
        if not self._wanted:
            return
        self._wanted = False
        vectors = batch_vectors(self._captures, self._warnings.warn, self._called if self._checking else None)
        if self.label_key is not None and not (isinstance(batch, Mapping) and self.label_key in batch):
            self._warnings.warn(_missing_label_key(self.label_key, batch))  # once: in the sanity check where it runs
        if self._checking:
            return
        size = next((len(v) for v in vectors if v is not None), self._batch_size)
        if size is None:  # no recorded layer ran, and the batch does not say how many samples it holds
            return
        recorder = self._recorder
        labels = batches.batch_labels(batch, size, self.label_key)
        logits = batches.step_logits(outputs, size, self._warnings.warn)
        predictions = batches.step_predictions(outputs, size, self._warnings.warn)
        keep = recorder.split != "train" and labels is not None and self._live.room()
        ready = next((c.copied for c in self._captures if c.copied is not None), None)
        if ready is not None and (keep or (predictions is None and logits is None and self.logits is not None)):
            ready.synchronize()  # this thread reads the vectors (kept for knn_accuracy, argmax of a logits layer)
            ready = None
        if logits is None and self.logits is not None:
            logits = next(v for c, v in zip(self._captures, vectors) if c.layer.spec == self.logits)
        if predictions is None and logits is not None:
            predictions = logits.argmax(1)
        columns: dict[str, Any] = {
            "sample_id": recorder.sample_ids(batches.batch_ids(batch, size, self.id_key), size, dataloader_idx),
            "split": np.full(size, recorder.split),
            "stage": np.full(size, self._snapshot["stage"]),
            "epoch": np.full(size, self._snapshot["epoch"], dtype=np.int32),
            "step": np.full(size, self._snapshot["step"], dtype=np.int64),
            "dataloader_idx": np.full(size, dataloader_idx, dtype=np.int32),
            "label": labels,
            "prediction": predictions,
            "logits": logits if self.logits is None else None,  # a recorded layer's logits are in its own column
            **{capture.layer.column: v for capture, v in zip(self._captures, vectors)},
        }
        if keep:
            take = recorder.taken(dataloader_idx, size)
            self._live.keep([v if v is None else v[:take] for v in vectors], labels[:take])
        recorder.add(columns, dataloader_idx, size, ready)

    def _end_snapshot(self, trainer: pl.Trainer) -> None:
        for capture in self._captures:
            capture.active = False
        if self._checking:
            self._checking = False
            refuse_uncalled(self._called, "any sanity-check step")
            return
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is None:
            return
        self._recorder.end()
        missing = self._count_missing(trainer, snapshot["name"])
        trainer.strategy.barrier("EmbeddingCollector.snapshot_end")
        files = snapshot_files(self.dirpath, snapshot["name"])
        if trainer.is_global_zero and files:
            if missing:
                snapshot["missing"] = missing
            logits = next((c.layer.column for c in self._captures if c.layer.spec == self.logits), None)
            store.add_snapshot(self._manifest, snapshot, files[0], logits, {"png": self.plots, "html": self.html})
            store.write_manifest(self.dirpath, self._manifest)

    def _count_missing(self, trainer: pl.Trainer, name: str) -> dict[str, int]:
        """Samples of this snapshot, over all ranks, that a layer was not called for; said once per layer."""
        mine = self._recorder.missing
        counts = torch.tensor(list(mine.values()), dtype=torch.int64, device=trainer.strategy.root_device)
        counts = trainer.strategy.reduce(counts, reduce_op="sum").tolist() if trainer.world_size > 1 else counts.tolist()
        missing = {column: int(n) for column, n in zip(mine, counts) if n}
        for column, n in missing.items():
            if column not in self._said_missing:
                self._said_missing.add(column)
                rank_zero_warn(
                    f"EmbeddingCollector: layer {column!r} was not called for {n} samples of {name} (validation_step "
                    "skips it on some batches): they have no vector for it (null in vectors/, left out of its map); "
                    "the other layers are whole. The manifest counts them per snapshot."
                )
        return missing

    def _reduce(self, trainer: pl.Trainer) -> None:
        """Rank 0 fits the maps of every layer while the other ranks wait for it."""
        if self.dirpath is None or _stage(trainer) not in self.stages:
            return
        if trainer.is_global_zero and not self._manifest.get("snapshots"):
            why = ("no validation ran (limit_val_batches=0, no val_dataloader, or fit ended before the first one)"
                   if not self._validations else "its validations held no batches")
            rank_zero_warn(f"EmbeddingCollector recorded nothing during {_stage(trainer)}: {why}. No run is written.")
        if trainer.is_global_zero and self._manifest.get("snapshots"):
            finish_run(self.dirpath, self.reducer, self.n_components, self.seed, self.align, self.fit_samples,
                       self.reducer_kwargs, trainer.loggers, smoke=bool(trainer.fast_dev_run),
                       progress=trainer.progress_bar_callback is not None, record_train=self.record_train)
        if self._rank_zero_wait is not None:
            torch.distributed.barrier(group=self._rank_zero_wait)

    def _continue_run(self) -> None:
        """Append to the run already in ``dirpath`` (a resumed fit, or validate/test after fit), if there is one."""
        if not (self.dirpath / MANIFEST).is_file():
            return
        self._manifest = store.read_manifest(self.dirpath)
        store.check_manifest(self._manifest, self.dirpath / MANIFEST)
        theirs = [(f["column"], f["strategy"]) for f in self._manifest.get("layers", [])]
        ours = [(c.layer.column, c.strategy.name) for c in self._captures]
        if theirs and theirs != ours:
            raise ValueError(
                f"EmbeddingCollector: {self.dirpath} holds a run of layers {theirs} (name, reshape), but this collector "
                f"records {ours}. Record the same layers to add to that run, or pass another dirpath."
            )

    def _release(self) -> None:
        """Remove every hook, discard an unfinished snapshot file, release the run's lock; safe to call twice."""
        for capture in self._captures:
            capture.remove()
        self._captures = []
        self._snapshot = None
        self._checking = False
        if self._recorder is not None:
            self._recorder.abort()
        self._run.release()

    def _log_knn_accuracy(self, pl_module: pl.LightningModule) -> None:
        """Log each layer's live k-NN accuracy; under DDP rank 0's (no collective: a rank with too few labelled rows
        cannot leave the others waiting)."""
        for column, accuracy in self._live.scores().items():
            pl_module.log(f"embeddings/{column}/knn_accuracy", accuracy, rank_zero_only=True)


def _on_rank_zero(trainer: pl.Trainer, work: Callable[[], T]) -> T:
    """Do ``work`` on rank 0 and give every rank its result, or raise its error on every rank."""
    result, error = None, None
    if trainer.is_global_zero:
        try:
            result = work()
        except Exception as err:  # raised below on every rank, so none waits for rank 0 forever
            error = err
    result, error = trainer.strategy.broadcast((result, error))
    if error is not None:
        raise error
    return result


def _missing_label_key(label_key: str, batch: Any) -> str:
    """Why ``label_key`` finds no labels in ``batch``, with what the batch holds."""
    holds = (f"its keys: {', '.join(map(repr, batch))}" if isinstance(batch, Mapping) else
             f"it is a {type(batch).__name__}" + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
             + "; label_key names a key of a dict batch, leave it None to take the second item of an (x, y) batch")
    return f"lightning-embeddings: label_key={label_key!r} is not in the batch ({holds}): no labels are recorded."


def _last_validation(trainer: pl.Trainer) -> bool:
    """Whether this epoch's validation is the last one ``max_epochs`` leaves."""
    if trainer.max_epochs is None or trainer.max_epochs < 1:
        return False
    every = trainer.check_val_every_n_epoch or 1
    return trainer.current_epoch + every > trainer.max_epochs - 1


def _stage(trainer: pl.Trainer) -> str:
    """``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``: what the trainer is running."""
    return trainer.state.fn.value if trainer.state.fn is not None else ""


def _per_layer(argument: str, value: Any, layers: list[LayerSpec], default: Any) -> dict[LayerSpec, Any]:
    """One value for every layer, or a mapping from layer spec to value (layers it leaves out get ``default``)."""
    if not isinstance(value, Mapping):
        return {spec: value for spec in layers}
    unknown = [key for key in value if key not in layers]
    if unknown:
        raise ValueError(f"{argument} names {unknown}, which are not in layers={layers}; key it by those specs.")
    return {spec: value.get(spec, default) for spec in layers}
