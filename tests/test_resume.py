"""Robustness of a run on disk: resuming a fit from a checkpoint, fits that end by an exception or a
KeyboardInterrupt at any point, a disk that fills up while a snapshot is written, and the validation loop's
limits (``limit_val_batches``, ``check_val_every_n_epoch``, ``fast_dev_run``).

``pytest -s`` prints a table of what each injected fault left on disk.
"""

from __future__ import annotations

import re
import shutil
import signal
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import DigitsCNN, DigitsDataModule, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_embeddings import EmbeddingCollector, EmbeddingRun

N_VAL = 449  # digits validation samples: 8 batches of 64 (the last one holds 1)
VAL_BATCHES = 8
TRAIN_BATCHES = 3  # limit_train_batches everywhere, to keep the file fast


def _collector(**kwargs) -> EmbeddingCollector:
    return EmbeddingCollector(**{"layers": [3, "head.1"], "reducer": "pca", "plots": False, **kwargs})


def _vector_files(dirpath: Path) -> list[str]:
    return sorted(p.name for p in (dirpath / "vectors").iterdir()) if (dirpath / "vectors").is_dir() else []


def _hidden_files(dirpath: Path) -> list[str]:
    """Temporary files (``.name.partial``, ``.write-test-*``) anywhere in the run directory; the lock file, which
    stays (as filelock's files do), is not one."""
    hidden = dirpath.rglob(".*") if dirpath.is_dir() else []
    return sorted(str(p.relative_to(dirpath)) for p in hidden if p.name != ".lock")


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def _forward(model: pl.LightningModule, x: torch.Tensor, layer: str = "head.1") -> np.ndarray:
    out = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, a, o: out.update(v=o.detach().clone()))
    model.eval()
    with torch.no_grad():
        model(x)
    handle.remove()
    return out["v"].numpy()


# ----- 1. resuming a fit from its checkpoint -----


@pytest.mark.parametrize("explicit_dirpath", [False, True], ids=["dirpath-under-log_dir", "explicit-dirpath"])
def test_resume_continues_the_original_run(tmp_path, explicit_dirpath):
    def fit(max_epochs: int, ckpt_path: Path | None = None):
        pl.seed_everything(0, verbose=False)
        collector = _collector(dirpath=tmp_path / "run" if explicit_dirpath else None)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
        trainer = make_trainer(
            tmp_path, [collector, checkpoint], logger=CSVLogger(tmp_path, name="logs"), enable_checkpointing=True,
            max_epochs=max_epochs, limit_train_batches=TRAIN_BATCHES,
        )
        model = DigitsCNN()
        trainer.fit(model, DigitsDataModule(), ckpt_path=ckpt_path)
        return trainer, collector, model

    trainer, collector, _ = fit(2)
    first = collector.dirpath
    assert first == (tmp_path / "run" if explicit_dirpath else tmp_path / "logs" / "version_0" / "embeddings")
    old = {name: (first / "vectors" / name).read_bytes() for name in _vector_files(first)}
    old_stats = {name: (first / "vectors" / name).stat().st_mtime_ns for name in old}
    assert len(old) == 2
    inputs = first / "inputs" / "val.parquet"
    kept, kept_at = inputs.read_bytes(), inputs.stat().st_mtime_ns

    trainer, collector, model = fit(4, ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    assert Path(trainer.log_dir) == tmp_path / "logs" / "version_1"  # the logger moved on ...
    assert collector.dirpath == first  # ... the run did not
    if not explicit_dirpath:  # nothing was recorded into the new version's directory
        assert not list((tmp_path / "logs" / "version_1").rglob("*.parquet"))

    run = EmbeddingRun(first)
    assert run.epochs == [0, 1, 2, 3]
    assert [s["epoch"] for s in run.snapshots] == [0, 1, 2, 3]  # each epoch once, in order
    assert len({s["name"] for s in run.snapshots}) == 4
    steps = [s["step"] for s in run.snapshots]
    assert steps == sorted(steps) and len(set(steps)) == 4
    assert _vector_files(first) == sorted(f"{s['name']}.parquet" for s in run.snapshots)
    for name, content in old.items():  # the first fit's files were not rewritten
        assert (first / "vectors" / name).read_bytes() == content
        assert (first / "vectors" / name).stat().st_mtime_ns == old_stats[name]
    table = run.table()
    assert table.groupby("epoch").size().to_dict() == {0: N_VAL, 1: N_VAL, 2: N_VAL, 3: N_VAL}
    assert not table.duplicated(["epoch", "sample_id"]).any()
    # the new epochs were recorded from the resumed model
    ids, last = run.vectors("head.1", epoch=3)
    datamodule = DigitsDataModule()
    datamodule.setup("validate")
    np.testing.assert_allclose(last, _forward(model, datamodule.val_set.tensors[0])[ids], rtol=1e-5, atol=1e-6)
    # one map of all four epochs, fitted on the last
    for layer in run.layers:
        maps = run.projections(layer)
        assert maps.groupby("epoch").size().to_dict() == {0: N_VAL, 1: N_VAL, 2: N_VAL, 3: N_VAL}
    assert run.manifest["reducer"]["fitted_on"]["epoch"] == 3
    assert _hidden_files(first) == []
    # what each sample is was kept once, by the first fit: the resumed one left it as it was
    assert inputs.read_bytes() == kept and inputs.stat().st_mtime_ns == kept_at
    assert run.inputs("val")["sample_id"].tolist() == list(range(N_VAL))


@pytest.mark.parametrize("explicit_dirpath", [False, True], ids=["default-dirpath", "explicit-dirpath"])
def test_resume_from_a_copied_experiment_continues_the_copy(tmp_path, explicit_dirpath):
    """Issue 20, item 3: a fit resumed from a copy's checkpoint, with default_root_dir (or dirpath) at the copy,
    continues the copy's run, as ModelCheckpoint follows its new dirpath, and says so; the original is not touched
    (it got the new epochs and was reduced again)."""
    def fit(root: Path, max_epochs: int, ckpt_path: Path | None = None):
        pl.seed_everything(0, verbose=False)
        collector = _collector(dirpath=root / "run" if explicit_dirpath else None)
        trainer = make_trainer(root, [collector, ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)],
                               enable_checkpointing=True, max_epochs=max_epochs, limit_train_batches=TRAIN_BATCHES)
        trainer.fit(DigitsCNN(), DigitsDataModule(), ckpt_path=ckpt_path)
        return collector

    original, copy = tmp_path / "original", tmp_path / "copy"
    first = fit(original, 2).dirpath
    shutil.copytree(original, copy)
    before = {p: p.read_bytes() for p in original.rglob("*") if p.is_file()}
    with pytest.warns(UserWarning, match=r"resumed from a checkpoint of the run in .*original.*continues the run in "
                                         r".*copy"):
        resumed = fit(copy, 4, ckpt_path=copy / "checkpoints" / "last.ckpt")
    assert resumed.dirpath == copy / first.relative_to(original)
    assert EmbeddingRun(resumed.dirpath).epochs == [0, 1, 2, 3]
    assert {p: p.read_bytes() for p in original.rglob("*") if p.is_file()} == before
    assert EmbeddingRun(first).epochs == [0, 1]
    if explicit_dirpath:  # a dirpath that holds another run (not a copy of the checkpoint's) is refused
        other = fit(tmp_path / "other", 1).dirpath
        kept = {p: p.read_bytes() for p in other.rglob("*") if p.is_file() and p.name != ".lock"}
        with pytest.raises(FileExistsError, match=r"resumes the run in .*original.* but dirpath .*other.* holds "
                                                  r"another run"):
            fit(tmp_path / "other", 4, ckpt_path=original / "checkpoints" / "last.ckpt")
        assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file() and p.name != ".lock"} == kept


# ----- 2. fits that end early -----


class Fault(Exception):
    pass


class FaultyCNN(DigitsCNN):
    """Raises ``error`` from ``hook`` (``validation_step`` or ``training_step``) at ``epoch``, ``batch``."""

    def __init__(self, hook: str, error: type, epoch: int, batch: int) -> None:
        super().__init__()
        self.fault = (hook, error, epoch, batch)

    def _maybe_fail(self, hook: str, batch_idx: int) -> None:
        where, error, epoch, batch = self.fault
        if where == hook and self.current_epoch == epoch and batch_idx == batch and not self.trainer.sanity_checking:
            raise error(f"injected {error.__name__} in {hook} at epoch {epoch}, batch {batch}")

    def training_step(self, batch, batch_idx):
        self._maybe_fail("training_step", batch_idx)
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self._maybe_fail("validation_step", batch_idx)
        return super().validation_step(batch, batch_idx, dataloader_idx)


FAULTS = [
    # (label, hook, error, epoch, batch)
    ("val epoch 1, first batch", "validation_step", Fault, 1, 0),
    ("val epoch 1, middle batch", "validation_step", Fault, 1, 3),
    ("val epoch 1, last batch", "validation_step", Fault, 1, VAL_BATCHES - 1),
    ("train epoch 1 (between vals)", "training_step", Fault, 1, 1),
    ("val epoch 0, middle batch", "validation_step", Fault, 0, 3),
    ("val epoch 1, first batch", "validation_step", KeyboardInterrupt, 1, 0),
    ("val epoch 1, middle batch", "validation_step", KeyboardInterrupt, 1, 3),
    ("val epoch 1, last batch", "validation_step", KeyboardInterrupt, 1, VAL_BATCHES - 1),
    ("train epoch 1 (between vals)", "training_step", KeyboardInterrupt, 1, 1),
    ("train epoch 2 (between vals)", "training_step", KeyboardInterrupt, 2, 2),
]


@pytest.fixture(scope="module")
def fault_table():
    rows: list[dict] = []
    yield rows
    if not rows:
        return
    header = ["fault", "where", "status", "files on disk", "complete", "rows lost", "rows dup", "hooks",
              "temp files", "reduce"]
    lines = [[r[h] for h in header] for r in rows]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines)]
    print("\n\nWhat each injected fault left on disk (3 epochs planned, 449 validation samples per snapshot):")
    for line in [header, ["-" * w for w in widths], *lines]:
        print("  " + " | ".join(str(x).ljust(w) for x, w in zip(line, widths)))


@pytest.fixture
def restore_sigint():
    """Lightning ignores SIGINT after a KeyboardInterrupt ("disable KeyboardInterrupt for shutdown"): undo that."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.mark.parametrize("label, hook, error, epoch, batch", FAULTS,
                         ids=[f"{e.__name__}-{label}" for label, _, e, _, _ in FAULTS])
def test_an_interrupted_fit_leaves_only_complete_snapshots(tmp_path, fault_table, restore_sigint,
                                                           label, hook, error, epoch, batch):
    model = FaultyCNN(hook, error, epoch, batch)
    collector = _collector(dirpath=tmp_path / "run")
    trainer = make_trainer(tmp_path, [collector], max_epochs=3, limit_train_batches=TRAIN_BATCHES)
    pl.seed_everything(0, verbose=False)
    # Lightning re-raises an exception after on_exception; a KeyboardInterrupt it handles ("graceful shutdown")
    # and then leaves the process with sys.exit(1)
    expected = SystemExit if error is KeyboardInterrupt else Fault
    with warnings.catch_warnings(record=True) as caught, pytest.raises(expected) as raised:
        warnings.simplefilter("always")
        trainer.fit(model, DigitsDataModule())
    said = [str(w.message) for w in caught if "lightning-embeddings reduce" in str(w.message)]
    if epoch:  # issue 21: one line says what was kept and the command that finishes it (nothing was said)
        assert len(said) == 1 and f"stopped ({error.__name__})" in said[0], said
        assert f"{epoch} complete snapshot" in said[0] and f"lightning-embeddings reduce {collector.dirpath}" in said[0]
    else:
        assert said == []  # nothing kept, nothing to finish
    if error is KeyboardInterrupt:
        assert raised.value.code == 1
    else:
        assert "injected Fault" in str(raised.value)
    assert trainer.state.status == "interrupted"
    assert model.current_epoch == epoch  # the fault fired where it was meant to

    dirpath = collector.dirpath
    complete = list(range(epoch))  # every validation before the fault's epoch finished
    files = _vector_files(dirpath)
    temp = _hidden_files(dirpath)
    expected_files = [f"epoch_{e:04d}-step_{(e + 1) * TRAIN_BATCHES:07d}.parquet" for e in complete]

    # rows of the snapshots that completed, read raw from their files
    rows_lost = rows_duplicated = 0
    for name in expected_files:
        path = dirpath / "vectors" / name
        if not path.is_file():
            rows_lost += N_VAL
            continue
        ids = pq.read_table(path, columns=["sample_id"]).column("sample_id").to_pylist()
        rows_lost += N_VAL - len(set(ids) & set(range(N_VAL)))
        rows_duplicated += len(ids) - len(set(ids))

    try:
        run = EmbeddingRun(dirpath)
        listed = [f"{s['name']}.parquet" for s in run.snapshots]
        maps = run.reduce(reducer="pca", progress=False)
        reduced = f"ok, epochs {sorted(set(maps['head.1']['epoch']))}" if maps else "nothing"
    except FileNotFoundError:  # no manifest: no snapshot ever finished
        listed, maps, reduced = [], {}, "no run"

    fault_table.append({
        "fault": error.__name__, "where": label, "status": trainer.state.status.value,
        "files on disk": len(files), "complete": len(complete), "rows lost": rows_lost,
        "rows dup": rows_duplicated, "hooks": _hooks(model), "temp files": len(temp), "reduce": reduced,
    })
    assert listed == expected_files  # the manifest lists exactly the complete snapshots
    if complete:
        assert set(maps) == {"features.1", "head.1"}
        assert maps["head.1"].groupby("epoch").size().to_dict() == {e: N_VAL for e in complete}
    else:  # nothing finished: no manifest, no run to read, and nothing that looks like one
        assert not (dirpath / "manifest.json").exists() and reduced == "no run"
    assert files == expected_files  # nothing of the unfinished snapshot, under any name
    assert temp == []
    assert rows_lost == 0 and rows_duplicated == 0
    assert _hooks(model) == 0


# ----- 3. a full or unwritable disk while a snapshot is written -----


def _failing_from_the_second_snapshot(monkeypatch, method: str, error: OSError) -> None:
    """Make ``ParquetWriter.<method>`` raise ``error`` for every vectors file but the first epoch's."""
    real = getattr(pq.ParquetWriter, method)

    def failing(self, *args, **kwargs):
        if method == "__init__":
            where = args[0]
        else:
            where = self.where
        if "epoch_0000" not in str(where) and "vectors" in str(where):
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, method, failing)


@pytest.mark.parametrize(
    "method, error",
    [("write_table", OSError(28, "No space left on device")), ("__init__", PermissionError(13, "Permission denied"))],
    ids=["disk-full-while-writing", "unwritable-at-open"],
)
def test_a_failing_disk_stops_the_fit_naming_the_file_and_keeps_earlier_snapshots(tmp_path, monkeypatch,
                                                                                    method, error):
    _failing_from_the_second_snapshot(monkeypatch, method, error)
    collector = _collector(dirpath=tmp_path / "run")
    model = DigitsCNN()
    trainer = make_trainer(tmp_path, [collector], max_epochs=3, limit_train_batches=TRAIN_BATCHES)
    second = tmp_path / "run" / "vectors" / f"epoch_0001-step_{2 * TRAIN_BATCHES:07d}.parquet"
    with pytest.raises(OSError, match=re.escape(str(second)) + f".*{error.strerror}") as raised:
        trainer.fit(model, DigitsDataModule())
    assert raised.value.__cause__ is error or raised.value is error
    assert trainer.state.status == "interrupted" and model.current_epoch == 1
    assert _vector_files(collector.dirpath) == [f"epoch_0000-step_{TRAIN_BATCHES:07d}.parquet"]
    assert _hidden_files(collector.dirpath) == []
    assert _hooks(model) == 0
    run = EmbeddingRun(collector.dirpath)
    assert run.epochs == [0]
    ids, vectors = run.vectors("head.1", epoch=0)
    assert ids.tolist() == list(range(N_VAL)) and np.isfinite(vectors).all()


# ----- 4. the validation loop's limits -----


def test_limit_val_batches_records_the_same_samples_every_epoch(fit_digits):
    _, collector = fit_digits(trainer_kwargs={"max_epochs": 3, "limit_val_batches": 3,
                                              "limit_train_batches": TRAIN_BATCHES})
    run = EmbeddingRun(collector.dirpath)
    assert run.epochs == [0, 1, 2]
    vectors = {}
    for epoch in run.epochs:
        ids, vectors[epoch] = run.vectors("head.1", epoch=epoch)
        assert ids.tolist() == list(range(3 * 64))
    assert not np.allclose(vectors[0], vectors[2])  # the same samples, seen by a model that trained in between
    assert run.projections("head.1").groupby("epoch").size().to_dict() == {0: 192, 1: 192, 2: 192}


def test_check_val_every_n_epoch_records_only_the_validated_epochs(fit_digits):
    _, collector = fit_digits(trainer_kwargs={"max_epochs": 4, "check_val_every_n_epoch": 2,
                                              "limit_train_batches": TRAIN_BATCHES})
    run = EmbeddingRun(collector.dirpath)
    assert run.epochs == [1, 3]
    assert [(s["epoch"], s["step"]) for s in run.snapshots] == [(1, 2 * TRAIN_BATCHES), (3, 4 * TRAIN_BATCHES)]
    assert len(_vector_files(collector.dirpath)) == 2
    assert set(run.projections("head.1")["epoch"]) == {1, 3}


def test_fast_dev_run_records_one_snapshot(tmp_path):
    collector = _collector()
    model = DigitsCNN()
    trainer = pl.Trainer(default_root_dir=tmp_path, fast_dev_run=True, callbacks=[collector],
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, DigitsDataModule())
    assert trainer.state.status == "finished"
    assert collector.dirpath.parent.name.startswith("lightning-embeddings-fast_dev_run-")  # a throwaway run
    run = EmbeddingRun(collector.dirpath)
    assert [(s["epoch"], s["step"]) for s in run.snapshots] == [(0, 1)]
    assert _vector_files(collector.dirpath) == ["epoch_0000-step_0000001.parquet"]
    ids, _ = run.vectors("head.1", epoch=0)
    assert ids.tolist() == list(range(64))  # fast_dev_run validates one batch
    assert len(run.projections("head.1")) == 64
    assert _hooks(model) == 0
