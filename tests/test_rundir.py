"""Where a run goes (rundir.py), without a Trainer: versioned folders, the lock, the folder made and removed again,
the run a resumed fit continues, the default directory beside ModelCheckpoint's."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from lightning_embeddings.layout import MANIFEST
from lightning_embeddings.rundir import (
    RunDirectory,
    clear_run,
    continued_manifest,
    default_parent,
    replace_run,
    resume_state,
    resumed_dirpath,
)


def holds(path: Path, run_id: str) -> Path:
    """Make ``path`` hold a run with ``run_id`` (what the rules read of it: a manifest)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / MANIFEST).write_text(json.dumps({"format": "lightning-embeddings/1", "run_id": run_id}))
    return path


def test_versions_skip_folders_that_hold_a_run_and_an_empty_folder_made_is_removed_again(tmp_path):
    first = RunDirectory()
    assert first.open(None, parent=tmp_path, clean=True) == tmp_path / "embeddings"
    first.release()
    assert not (tmp_path / "embeddings").exists()  # made and left empty: removed again
    assert first.open(None, parent=tmp_path, clean=True) == tmp_path / "embeddings"
    holds(tmp_path / "embeddings", "a")
    first.release()
    assert (tmp_path / "embeddings" / MANIFEST).is_file()  # written into: kept
    second = RunDirectory()
    assert second.open(None, parent=tmp_path, clean=True) == tmp_path / "embeddings-v1"  # the first holds a run
    second.release()


def test_opening_cleans_what_a_killed_writer_left(tmp_path):
    run = holds(tmp_path / "run", "a")
    (run / ".samples.parquet.partial").write_bytes(b"half")
    hold = RunDirectory()
    assert hold.open(run, None, clean=False) == run and (run / ".samples.parquet.partial").exists()
    assert hold.open(run, None, clean=True) == run and not (run / ".samples.parquet.partial").exists()
    hold.release()


def test_a_resumed_fit_continues_the_checkpoints_run_or_its_copy(tmp_path, recwarn):
    original = holds(tmp_path / "exp" / "run", "a")
    saved = {**resume_state(original, tmp_path / "exp"), "run_id": "a"}
    assert saved["relative"] == "run"
    assert resumed_dirpath(saved, None, tmp_path / "exp") == original and not recwarn.list
    copy = holds(tmp_path / "copy" / "run", "a")
    assert resumed_dirpath(saved, None, tmp_path / "copy") == copy  # a copied experiment continues its own copy
    assert "this fit continues the run in" in str(recwarn.pop(UserWarning).message)
    holds(tmp_path / "other" / "run", "b")
    assert resumed_dirpath(saved, None, tmp_path / "other") == original  # another run there: not ours
    with pytest.raises(FileExistsError, match="holds another run"):
        resumed_dirpath(saved, tmp_path / "other" / "run", tmp_path / "exp")
    assert resume_state(tmp_path / "elsewhere", tmp_path / "exp")["relative"] is None


def test_the_default_directory_is_where_modelcheckpoint_puts_checkpoints(tmp_path):
    assert default_parent([], tmp_path) == tmp_path
    tensorboard = SimpleNamespace(save_dir=str(tmp_path / "logs"), name="lightning_logs", version=3)
    assert default_parent([tensorboard], tmp_path) == tmp_path / "logs" / "lightning_logs" / "version_3"
    wandb = SimpleNamespace(save_dir=None, name="project", version="abc123")
    assert default_parent([wandb], tmp_path) == tmp_path / "project" / "abc123"


def test_clear_run_removes_the_run_and_nothing_else(tmp_path):
    run = holds(tmp_path / "run", "a")
    for name in ("vectors/epoch_0000-step_0000001.parquet", "projections/head.1.parquet", "projections.parquet",
                 "samples.parquet", "plots/head.1-snapshots.png", "checkpoints/last.ckpt", "notes.txt"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(b"x")
    clear_run(run)
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()) == [
        "checkpoints/last.ckpt", "notes.txt"]


def test_a_continued_run_must_record_the_same_layers(tmp_path):
    assert continued_manifest(tmp_path / "nothing", [("head.1", "flatten")]) == {}
    run = holds(tmp_path / "run", "a")
    manifest = json.loads((run / MANIFEST).read_text())
    layers = [{"column": "head.1", "strategy": "flatten", "dim": 2, "index": 5, "name": "head.1", "spec": "head.1"}]
    (run / MANIFEST).write_text(json.dumps({**manifest, "layers": layers, "snapshots": []}))
    assert continued_manifest(run, [("head.1", "flatten")])["run_id"] == "a"
    with pytest.raises(ValueError, match=r"holds a run of layers \[\('head\.1', 'flatten'\)\].*records \[\('head\.1', 'mean'\)\]"):
        continued_manifest(run, [("head.1", "mean")])


def test_choose_takes_the_chosen_then_the_requested_then_the_default_directory(tmp_path):
    logger = SimpleNamespace(save_dir=str(tmp_path / "logs"), name="lightning_logs", version=0)
    default = RunDirectory()
    default.path = default.choose(fresh=True, loggers=[logger], root=tmp_path)
    assert default.path == tmp_path / "logs" / "lightning_logs" / "version_0" / "embeddings"
    assert default.choose(fresh=False) == default.path  # validate/test after the fit: the same run
    default.release()
    requested = RunDirectory(tmp_path / "mine")
    assert requested.choose(fresh=True, loggers=[logger], root=tmp_path) == tmp_path / "mine"
    requested.release()
    smoke = RunDirectory()
    throwaway = smoke.choose(fresh=True, root=tmp_path, smoke=True)
    assert throwaway.name == "embeddings" and throwaway.parent.name.startswith("lightning-embeddings-fast_dev_run-")
    assert not throwaway.is_relative_to(tmp_path)
    smoke.release()


def test_a_loaded_checkpoint_state_makes_the_fit_resume_its_run(tmp_path):
    run = holds(tmp_path / "exp" / "run", "a")
    hold = RunDirectory()
    hold.load({"dirpath": None, "relative": None})  # a checkpoint taken before any run was chosen
    assert hold.path is None and not hold.saved
    hold.load({**resume_state(run, tmp_path / "exp"), "run_id": "a"})
    assert hold.path == run and hold.resume(tmp_path / "exp") == run
    hold.release()
    assert (run / MANIFEST).is_file()


def test_replacing_a_run_needs_overwrite_and_only_rank_zero_clears(tmp_path):
    run = holds(tmp_path / "run", "a")
    with pytest.raises(FileExistsError, match=r"already holds a run\. Pass another dirpath, delete it, set overwrite=True"):
        replace_run(run, overwrite=False)
    replace_run(run, overwrite=True, clear=False)  # another rank: waits for rank 0, removes nothing
    assert (run / MANIFEST).is_file()
    replace_run(run, overwrite=True)
    assert not (run / MANIFEST).exists()
