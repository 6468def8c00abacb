"""Reduction when things go wrong (issue 9): a layer that fails leaves every file as it was; pictures and projector
files drawn from old maps are redrawn or removed; non-finite rows, collapsed layers and samples without a vector
are left out of a layer's map (counted in the manifest, warned about once), never a crash at the end of fit.

Runs are real ``Trainer.fit`` runs of the digits CNN (reducer=None, then ``EmbeddingRun.reduce``), with snapshot
files patched where a test needs NaN, constant or missing vectors.
"""

from __future__ import annotations

import copy
import logging
import re
import shutil
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn
from conftest import DigitsCNN, DigitsDataModule, fit_collector

from lightning_embeddings import EmbeddingRun
from lightning_embeddings import reduce as reducers
from lightning_embeddings.cli import main
from lightning_embeddings.export import PROJECTOR_CONFIG, _last_vectors, export_tensorboard
from lightning_embeddings.layout import HTML_NAME, PLOTS
from lightning_embeddings.plot import plot_run
from lightning_embeddings.layout import snapshot_files
from lightning_embeddings.store import column_vectors, vectors_array

SHORT = {"max_epochs": 2, "limit_train_batches": 2}
N = 60  # samples per snapshot


@pytest.fixture(scope="module")
def unreduced(tmp_path_factory) -> EmbeddingRun:
    """Two short epochs, 60 samples, layers features.1 and head.1, reducer=None: copy it before changing it."""
    _, collector = fit_collector(tmp_path_factory.mktemp("edges"), trainer_kwargs=SHORT, max_samples=N, reducer=None)
    return EmbeddingRun(collector.dirpath)


@pytest.fixture
def run(unreduced, tmp_path) -> EmbeddingRun:
    return EmbeddingRun(shutil.copytree(unreduced.path, tmp_path / "embeddings"))


def _patch(run: EmbeddingRun, snapshot: int, column: str, change: Callable[[np.ndarray], Optional[np.ndarray]],
           null: Optional[np.ndarray] = None) -> np.ndarray:
    """Rewrite one snapshot file's vectors of ``column`` (``change`` edits them in place); ``null`` marks rows with
    no vector. Returns the file's sample ids."""
    (path,) = snapshot_files(run.path, run.snapshots[snapshot]["name"])
    table = pq.read_table(path)
    array = table.column(column).combine_chunks()
    vectors = array.values.to_numpy().reshape(len(array), -1).copy()
    change(vectors)
    values = vectors_array(vectors)
    if null is not None:
        values = pa.FixedSizeListArray.from_arrays(values.values, vectors.shape[1], mask=pa.array(null))
    index = table.schema.get_field_index(column)
    pq.write_table(table.set_column(index, table.schema.field(column), values), path)
    return table.column("sample_id").to_numpy()


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _messages(record: list[warnings.WarningMessage], word: str) -> list[str]:
    return [str(w.message) for w in record if word in str(w.message)]


# ------------------------------------------------------------------------------------- 8. all or nothing


class FailsOnDim:
    """fit/transform that raises for vectors of one size: a reducer that fails on one layer only."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def fit(self, X: np.ndarray) -> "FailsOnDim":
        if X.shape[1] == self.dim:
            raise ValueError("the reducer broke")
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X)[:, :2]


def test_a_reduce_that_fails_on_its_second_layer_changes_no_file(run):
    run.reduce(reducer="pca", progress=False)
    plot_run(run, html=True)
    export_tensorboard(run, run.path / "tensorboard", progress=False)
    assert run.layers == ["features.1", "head.1"] and run.layer("features.1")["dim"] != run.layer("head.1")["dim"]
    before, manifest = _files(run.path), copy.deepcopy(run.manifest)
    with pytest.raises(RuntimeError, match=r"reducing layer 'head\.1' failed: .*the reducer broke") as raised:
        run.reduce(reducer=FailsOnDim(run.layer("head.1")["dim"]), progress=False)
    assert isinstance(raised.value.__cause__, ValueError)
    after = _files(run.path)
    assert sorted(after) == sorted(before), "files were added or removed"
    assert [name for name in before if before[name] != after[name]] == []
    assert run.manifest == manifest == EmbeddingRun(run.path).manifest


def test_cli_reduce_that_fails_on_a_layer_says_so_in_one_line_and_changes_no_file(run, capsys, monkeypatch):
    run.reduce(reducer="pca", progress=False)
    before = _files(run.path)
    monkeypatch.setattr(reducers, "make_reducer", lambda *args, **kwargs: FailsOnDim(run.layer("head.1")["dim"]))
    assert main(["reduce", str(run.path), "--reducer", "pca"]) == 1
    last = capsys.readouterr().err.splitlines()[-1]  # after the warnings of features.1, one line
    assert re.fullmatch(r"lightning-embeddings: error: reducing layer 'head\.1' failed: ValueError: the reducer broke;"
                        r" the run's files are as they were\.", last), last
    assert _files(run.path) == before


def test_reduce_removes_stray_partial_files(run):
    strays = [run.path / ".manifest.json.partial.partial", run.path / "projections" / ".features.1.parquet.partial",
              run.path / "plots" / ".head.1-overview.png.partial"]
    for path in strays:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"left by a killed process")
    run.reduce(reducer="pca", layers=["head.1"], progress=False)
    assert [path for path in strays if path.exists()] == []
    assert not list(run.path.rglob(".*.partial"))


def _projector_z(logdir: Path, column: str = "head.1") -> np.ndarray:
    tensors = sorted(logdir.glob(f"*/{column}%2fprojections/tensors.tsv"))
    assert len(tensors) == 1, tensors
    return np.loadtxt(tensors[0])[:, 2]


def test_reduce_removes_stale_pictures_and_writes_the_projector_exports_again(run, caplog, tmp_path):
    run.reduce(reducer="pca", progress=False)
    pictures = plot_run(run, html=True)
    exports = [export_tensorboard(run, run.path / "tensorboard", progress=False),
               export_tensorboard(run, tmp_path / "elsewhere", progress=False)]  # e.g. a TensorBoardLogger's log_dir
    assert EmbeddingRun(run.path).manifest["exports"]["tensorboard"] == ["tensorboard", "../elsewhere"]  # relative
    assert not any(_projector_z(logdir).any() for logdir in exports)
    plots = run.path / PLOTS
    kept = [p for p in pictures if p.name.startswith("features.1-")]
    stale = [p for p in pictures if p not in kept]
    assert len(kept) == 2 and plots / HTML_NAME in stale and len(stale) == 3
    before = {p: p.read_bytes() for p in pictures}
    with caplog.at_level(logging.INFO):
        maps = run.reduce(reducer="pca", n_components=3, layers=["head.1"], progress=False)
    assert sorted(maps.drawn) == sorted(stale) and maps.removed == []  # drawn again, as the CLI does (issue 21)
    assert all(p.read_bytes() != before[p] for p in stale), "a picture still shows the old map"
    assert all(p.read_bytes() == before[p] for p in kept), "pictures of a layer not reduced again are still current"
    assert maps.exported == exports and all(_projector_z(logdir).any() for logdir in exports), "a stale projector"
    said = caplog.text
    assert all(p.name in said for p in stale) and all(str(logdir) in said for logdir in exports)


def test_a_reduce_draws_the_pictures_a_run_wants_even_where_the_fit_drew_none(tmp_path):
    """Issue 21: the quick start's run.reduce() removed the fit's pictures and drew none, and a fit stopped before
    its maps left a run whose reduce drew none either. The manifest keeps the collector's plots/html wish."""
    _, collector = fit_collector(tmp_path, trainer_kwargs=SHORT, max_samples=N, reducer=None, plots=True)
    run = EmbeddingRun(collector.dirpath)
    assert run.manifest["pictures"] == {"png": True, "html": False}
    galleries = ["features.1-suspects.png", "head.1-suspects.png"]  # issue 25: the suspects need no map
    assert sorted(p.name for p in (run.path / PLOTS).iterdir()) == galleries  # no map, no pictures of one
    maps = run.reduce(reducer="pca", progress=False)
    names = ["features.1-snapshots.png", "features.1-overview.png", "head.1-snapshots.png", "head.1-overview.png"]
    assert [p.name for p in maps.drawn] == names
    assert sorted(p.name for p in (run.path / PLOTS).iterdir()) == sorted(names + galleries)


def test_a_reduce_of_a_copied_or_moved_run_never_rewrites_another_runs_projector(run, tmp_path):
    """Issue 20, item 2: the manifest held the projector's absolute path, so a reduce of a copy rewrote the
    original's projector (with the copy's map), and a moved run's went stale without a word."""
    run.reduce(reducer="pca", progress=False)
    logdir = export_tensorboard(run, tmp_path / "logs", progress=False)  # outside the run, as a logger's log_dir
    inside = export_tensorboard(run, run.path / "tensorboard", progress=False)
    before = {p: p.read_bytes() for p in logdir.rglob("*") if p.is_file()}
    copy = EmbeddingRun(shutil.copytree(run.path, tmp_path / "copy"))
    with pytest.warns(UserWarning, match=rf"projector in {re.escape(str(logdir))} was written from "
                                         rf"{re.escape(str(run.path.resolve()))}, not from {re.escape(str(copy.path))}"):
        maps = copy.reduce(reducer="pca", n_components=3, progress=False)
    assert {p: p.read_bytes() for p in logdir.rglob("*") if p.is_file()} == before  # the original's, untouched
    assert maps.exported == [copy.path / "tensorboard"] and _projector_z(copy.path / "tensorboard").any()
    assert not _projector_z(inside).any()  # the original's own export inside it: untouched too
    assert run.reduce(reducer="pca", n_components=3, progress=False).exported == [logdir, inside]
    assert _projector_z(logdir).any()  # the original still rewrites its own
    moved = EmbeddingRun(shutil.move(run.path, tmp_path / "moved"))
    with pytest.warns(UserWarning, match="a copy, or a run that moved"):
        assert moved.reduce(reducer="pca", progress=False).exported == [moved.path / "tensorboard"]
    assert _projector_z(logdir).any(), "the moved run did not write where it no longer is the owner"


def test_cli_reduce_redraws_the_pictures_and_projector_files_that_existed(run, capsys, caplog):
    run.reduce(reducer="pca", progress=False)
    pictures = plot_run(run, html=True)
    assert main(["export", str(run.path), "--to", "tensorboard"]) == 0
    before = {p: p.read_bytes() for p in pictures}
    capsys.readouterr()
    with caplog.at_level(logging.INFO):
        assert main(["reduce", str(run.path), "--reducer", "pca", "--n-components", "3"]) == 0
    out, said = capsys.readouterr().out, caplog.text
    assert all(p.is_file() and p.read_bytes() != data for p, data in before.items()), "a picture was not redrawn"
    assert all(str(p) in said for p in pictures) and said.count("drew from the new maps:") == 1
    assert "drew from the new maps" not in out  # said once (issue 21: the CLI printed the log's list again)
    assert _projector_z(run.path / "tensorboard").any(), "the projector still shows the 2-D map"
    assert (run.path / "tensorboard" / PROJECTOR_CONFIG).is_file() and "projector files again" in said


# ------------------------------------------------------------------------------------- 10. non-finite values


def test_non_finite_rows_are_left_out_of_the_map_counted_and_warned_about_once(run):
    first, last = (s["name"] for s in run.snapshots)
    ids_first = _patch(run, 0, "head.1", lambda v: v.__setitem__(2, np.nan))
    ids_last = _patch(run, 1, "head.1", lambda v: (v.__setitem__((0, 3), np.nan), v.__setitem__((1, 5), np.inf)))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        maps = run.reduce(reducer="pca", progress=False)
    said = _messages(record, "non-finite")
    assert len(said) == 1 and "'head.1'" in said[0] and f"{first}: 1" in said[0] and f"{last}: 2" in said[0], said
    layers = EmbeddingRun(run.path).manifest["reducer"]["layers"]
    assert layers["head.1"]["left_out"] == {first: 1, last: 2}
    assert "left_out" not in layers["features.1"]
    assert all(v is not None and np.isfinite(v) for v in layers["head.1"]["trustworthiness"].values())
    projections = maps["head.1"]
    absent = {(0, ids_first[2]), (1, ids_last[0]), (1, ids_last[1])}
    present = set(zip(projections["epoch"], projections["sample_id"]))
    assert len(projections) == 2 * N - 3 and not absent & present
    assert np.isfinite(projections[["x", "y"]].to_numpy()).all()
    assert len(maps["features.1"]) == 2 * N
    ids, vectors = run.vectors("head.1", epoch=1)  # kept in vectors/
    assert np.isnan(vectors[ids == ids_last[0]]).any() and np.isinf(vectors[ids == ids_last[1]]).any()


@pytest.mark.slow  # numba compiles AlignedUMAP: about 17 s
def test_aligned_umap_leaves_non_finite_rows_out_too(run):
    last = run.snapshots[1]["name"]
    ids = _patch(run, 1, "head.1", lambda v: v.__setitem__(0, np.nan))
    with pytest.warns(UserWarning, match="non-finite"):
        maps = run.reduce(reducer="umap", align="aligned", layers=["head.1"], progress=False)
    projections = maps["head.1"]
    assert len(projections) == 2 * N - 1 and ids[0] not in set(projections[projections["epoch"] == 1]["sample_id"])
    assert run.manifest["reducer"]["layers"]["head.1"]["left_out"] == {last: 1}


class DivergesInEpochOne(DigitsCNN):
    """Its head's first Linear turns NaN before the second validation: every vector of head.1 is NaN there."""

    def on_validation_epoch_start(self) -> None:
        if not self.trainer.sanity_checking and self.current_epoch == 1:
            with torch.no_grad():
                self.head[1].weight[0, 0] = float("nan")


def test_a_model_that_diverges_in_a_later_epoch_gets_a_map_of_its_finite_rows_at_the_end_of_fit(tmp_path):
    with pytest.warns(UserWarning, match="non-finite") as record:
        _, collector = fit_collector(tmp_path, DivergesInEpochOne(), trainer_kwargs=SHORT, max_samples=N)
    run = EmbeddingRun(collector.dirpath)
    diverged = run.snapshots[1]["name"]
    (said,) = _messages(record, "non-finite")
    assert "'head.1'" in said and f"{diverged}: {N}" in said
    assert run.manifest["reducer"]["layers"]["head.1"]["left_out"] == {diverged: N}
    # align="last", and the last snapshot has no finite vector: the map is fitted on the last one that has
    assert run.manifest["reducer"]["layers"]["head.1"]["fitted_on"] == run.snapshots[0]["name"]
    assert any(f"no finite vector in {diverged}" in str(w.message) for w in record)
    assert set(run.projections("head.1")["epoch"]) == {0} and set(run.projections("features.1")["epoch"]) == {0, 1}


def test_cli_reduce_leaves_non_finite_rows_out_with_a_one_line_warning(run, capsys):
    _patch(run, 1, "head.1", lambda v: v.__setitem__(4, np.inf))
    assert main(["reduce", str(run.path), "--reducer", "pca"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "non-finite" in line]
    assert len(lines) == 1 and lines[0].startswith("lightning-embeddings: warning:") and "'head.1'" in lines[0]


# ---------------------------------------------------------------------------------------- 11. collapsed layers


def test_a_constant_layer_is_skipped_with_a_warning_not_a_pacmap_crash(run):
    run.reduce(reducer="pca", progress=False)
    assert (run.path / "projections" / "head.1.parquet").is_file()
    for snapshot in (0, 1):
        _patch(run, snapshot, "head.1", lambda v: v.fill(0.0))
    with pytest.warns(UserWarning, match=r"layer 'head\.1' is not reduced: .*constant"):
        maps = run.reduce(reducer="pacmap", progress=False)
    assert list(maps) == ["features.1"]
    assert "constant" in run.manifest["reducer"]["layers"]["head.1"]["skipped"]
    assert not (run.path / "projections" / "head.1.parquet").exists(), "the stale PCA map of head.1 is left"
    assert set(EmbeddingRun(run.path).projections("features.1")["epoch"]) == {0, 1}


def test_a_layer_collapsed_in_one_snapshot_is_not_called_faithful_there(run, capsys):
    first, last = (s["name"] for s in run.snapshots)
    _patch(run, 0, "head.1", lambda v: v.fill(1.5))
    with pytest.warns(UserWarning, match=rf"layer 'head\.1' .*collapsed.* {first}"):
        maps = run.reduce(reducer="pca", progress=False)
    record = run.manifest["reducer"]["layers"]["head.1"]
    assert record["collapsed"] == [first]
    assert record["trustworthiness"][first] is None and record["trustworthiness"][last] > 0.8
    assert len(maps["head.1"]) == 2 * N
    capsys.readouterr()
    assert main(["info", str(run.path)]) == 0
    assert f"head.1: collapsed (vectors all equal: no faithful map) at {first}" in capsys.readouterr().out


class DeadReLU(DigitsCNN):
    """head.2 (a ReLU) never fires: head.1's bias is far below zero, so its gradient is zero and it stays so."""

    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            self.head[1].bias.fill_(-1e4)


def test_a_dead_relu_recorded_during_fit_is_skipped_not_crashing_pacmap(tmp_path):
    with pytest.warns(UserWarning, match=r"layer 'head\.2' is not reduced: .*constant"):
        trainer, collector = fit_collector(tmp_path, DeadReLU(), trainer_kwargs=SHORT, max_samples=N,
                                           layers=["head.1", "head.2"], reducer="pacmap")
    assert trainer.state.finished
    run = EmbeddingRun(collector.dirpath)
    assert not run.vectors("head.2", epoch=1)[1].any()
    assert "skipped" in run.manifest["reducer"]["layers"]["head.2"]
    assert len(run.projections("head.1")) == 2 * N


# ----------------------------------------------------------------------------------- 3. samples without a vector


def test_column_vectors_gives_nan_rows_for_null_entries():
    values = pa.array(np.arange(8, dtype=np.float32))
    array = pa.FixedSizeListArray.from_arrays(values, 2, mask=pa.array([False, True, False, False]))
    expected = np.array([[0, 1], [np.nan, np.nan], [4, 5], [6, 7]], dtype=np.float32)
    np.testing.assert_array_equal(column_vectors(array), expected)
    np.testing.assert_array_equal(column_vectors(array.slice(1, 2)), expected[1:3])
    np.testing.assert_array_equal(column_vectors(pa.chunked_array([array.slice(0, 2), array.slice(2)])), expected)
    assert column_vectors(array).dtype == np.float32


def test_samples_without_a_vector_are_nan_rows_left_out_as_missing_and_pictures_and_exports_still_work(run, capsys):
    first, last = (s["name"] for s in run.snapshots)
    no_vector = np.zeros(N, dtype=bool)
    no_vector[[1, 7, 8]] = True
    ids = _patch(run, 1, "head.1", lambda v: None, null=no_vector)
    _patch(run, 0, "head.1", lambda v: v.__setitem__(3, np.nan))
    got_ids, vectors = run.vectors("head.1", epoch=1)
    order = np.argsort(ids)
    assert np.array_equal(got_ids, ids[order])
    assert np.isnan(vectors).all(axis=1).tolist() == no_vector[order].tolist()
    assert np.isfinite(vectors[~no_vector[order]]).all()
    table = run.table(epochs=[1], layers=["head.1"])
    assert sum(np.isnan(np.stack(table["head.1"])).all(axis=1)) == 3

    with pytest.warns(UserWarning, match="without a vector") as record:
        maps = run.reduce(reducer="pca", progress=False)
    said = _messages(record, "left out")
    assert len(said) == 1 and "'head.1'" in said[0] and f"{last}: 3" in said[0] and f"{first}: 1" in said[0], said
    layer = run.manifest["reducer"]["layers"]["head.1"]
    assert layer["missing"] == {last: 3} and layer["left_out"] == {first: 1}
    epoch_1 = set(maps["head.1"].query("epoch == 1")["sample_id"])
    assert len(epoch_1) == N - 3 and not epoch_1 & set(ids[no_vector])
    assert main(["info", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert f"head.1: rows without a vector left out of the map: 3 at {last}" in out
    assert f"head.1: rows with a non-finite value left out of the map: 1 at {first}" in out

    pictures = plot_run(run, html=True)
    assert len(pictures) == 5 and all(p.stat().st_size > 0 for p in pictures)
    logdir = export_tensorboard(run, run.path / "tensorboard", progress=False)
    (vectors_tsv,) = logdir.glob("*/head.1%2fvectors/tensors.tsv")
    assert len(np.loadtxt(vectors_tsv)) == N - 3 and "nan" not in vectors_tsv.read_text().lower()
    exported, metadata = _last_vectors(run, "head.1", run.snapshots[1], 1000)
    assert len(exported) == len(metadata) == N - 3 and not set(metadata["sample_id"]) & set(ids[no_vector])


class AuxOnEvenBatches(DigitsCNN):
    """``aux`` runs in validation on even batches only: the collector records its other samples as nulls."""

    def __init__(self) -> None:
        super().__init__()
        self.aux = nn.Linear(10, 4)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if batch_idx % 2 == 0:
            self.aux(self(batch[0]))
        return super().validation_step(batch, batch_idx, dataloader_idx)


def test_a_layer_called_on_some_batches_gets_a_map_of_the_samples_it_saw_at_the_end_of_fit(tmp_path):
    with pytest.warns(UserWarning, match="without a vector"):
        _, collector = fit_collector(tmp_path, AuxOnEvenBatches(), DigitsDataModule(batch_size=16), max_samples=N,
                                     layers=["head.1", "aux"], trainer_kwargs={**SHORT, "num_sanity_val_steps": 0})
    run = EmbeddingRun(collector.dirpath)
    unseen = 16 + 12  # batches 1 and 3 of 16, 16, 16, 12 samples
    assert [int(np.isnan(run.vectors("aux", epoch=e)[1]).all(axis=1).sum()) for e in (0, 1)] == [unseen, unseen]
    assert run.manifest["reducer"]["layers"]["aux"]["missing"] == {s["name"]: unseen for s in run.snapshots}
    assert len(run.projections("aux")) == 2 * (N - unseen) and len(run.projections("head.1")) == 2 * N


# ---------------------------------------------------------------------------- are the drawn paths true? (issue 11)


class FirstTwo:
    """A map that is the vectors' first two dims: it draws a motion along them exactly, and none along the others."""

    def fit(self, X: np.ndarray) -> "FirstTwo":
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X)[:, :2]


@pytest.mark.parametrize("hidden", [False, True])
def test_temporal_preservation_per_step_is_stored_printed_and_warned(run, caplog, hidden):
    """Between the two snapshots sample i moves i + 1 along dim 0 (the map sees it); with ``hidden``, also
    10 * (N - i) along dim 2 (the map does not), so the motion in the vectors ranks the other way round."""
    _, before = run.vectors("head.1", epoch=0)
    step = np.arange(N, dtype=np.float32) + 1

    def moved(vectors: np.ndarray) -> None:
        vectors[:] = before
        vectors[:, 0] += step
        if hidden:
            vectors[:, 2] += 10 * (N + 1 - step)

    ids = _patch(run, 1, "head.1", moved)
    assert ids.tolist() == list(range(N))
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run.reduce(reducer=FirstTwo(), layers=["head.1"], progress=False)
    motion = run.manifest["reducer"]["layers"]["head.1"]["temporal_preservation"]
    assert list(motion) == [run.snapshots[1]["name"]]  # one pair of consecutive fit snapshots
    assert motion[run.snapshots[1]["name"]] == pytest.approx(-1.0 if hidden else 1.0)
    assert "temporal preservation of layer 'head.1''s paths" in caplog.text
    warned = _messages(record, "drawn paths are not faithful")
    assert len(warned) == (1 if hidden else 0)
    if hidden:
        assert "(temporal preservation below 0.5" in warned[0]
        assert f"for layer 'head.1' into {run.snapshots[1]['name']}. reducer='parametric'" in warned[0]
        assert f"lightning-embeddings reduce {run.path} --reducer parametric" in warned[0]


KILLED_REDUCE = """
import os
import signal
import sys

from lightning_embeddings import EmbeddingRun

run_path, at = sys.argv[1], int(sys.argv[2])
FINAL = ("manifest.json", "projections.parquet", "samples.parquet", ".switch.json")
real_replace, switched = os.replace, []


def replace(src, dst):
    src, dst = str(src), str(dst)
    final = os.path.basename(dst) in FINAL or os.path.dirname(dst).endswith("projections")
    if src.endswith(".partial") and not dst.endswith(".partial") and final:
        switched.append(dst)
        if len(switched) == at:  # killed before the at-th file of the switch is put in place
            os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)


os.replace = replace
EmbeddingRun(run_path).reduce(reducer="pca", n_components=3, progress=False)
"""


@pytest.mark.slow  # reduces in processes that are killed
@pytest.mark.parametrize("at", [1, 2, 4, 5])
def test_a_reduce_killed_while_it_switches_its_files_leaves_no_mix(run, tmp_path, at):
    """Issue 20, item 6: the switch of a reduce is several renames (the list of them, each layer's map,
    projections.parquet, manifest.json; samples.parquet too where its snapshots changed); killed between two of
    them, the run held one layer's new 3-D map beside another's old 2-D one under the old manifest. Now the next one
    to open it sees either the old files or the new ones, all of them."""
    import subprocess
    import sys

    run.reduce(reducer="pca", progress=False)  # the old maps: 2-D
    script = tmp_path / "killed_reduce.py"
    script.write_text(KILLED_REDUCE)
    done = subprocess.run([sys.executable, str(script), str(run.path), str(at)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -9, done.stderr[-3000:]  # killed in the switch
    reopened = EmbeddingRun(run.path)
    three_d = {column: "z" in pq.read_schema(reopened.path / "projections" / f"{column}.parquet").names
               for column in reopened.layers}
    three_d["projections.parquet"] = "z" in pq.read_schema(reopened.path / "projections.parquet").names
    three_d["manifest.json"] = reopened.manifest["reducer"]["n_components"] == 3
    assert len(set(three_d.values())) == 1, three_d  # all old or all new
    assert three_d["manifest.json"] is (at > 1)  # the switch goes on once its list of files is written
    assert not (run.path / ".switch.json").exists()
    assert reopened.projections("head.1")[["x", "y"]].notna().all().all()


def test_a_run_of_many_snapshots_says_its_figures_in_one_short_line_each(tmp_path, caplog):
    """Issue 21: a reduce logged every snapshot's trustworthiness and temporal preservation, one line of 200
    snapshots' figures each; more than 8 are summed up (min, where, median, max) and the CLI's info lists them."""
    _, collector = fit_collector(tmp_path, layers=["head.1"], max_samples=N, reducer=None,
                                 trainer_kwargs={"max_epochs": 12, "limit_train_batches": 1})
    with caplog.at_level(logging.INFO):
        EmbeddingRun(collector.dirpath).reduce(reducer="pca", progress=False)
    lines = [r.getMessage() for r in caplog.records if "per snapshot" in r.getMessage() or "into each" in r.getMessage()]
    assert len(lines) == 2 and all(len(line) < 400 for line in lines), lines
    assert all(re.search(r"min \d\.\d\d \(epoch_00\d\d-step_\d+\), median \d\.\d\d, max \d\.\d\d over 1[12] "
                         rf"snapshots \(each: lightning-embeddings info {re.escape(str(collector.dirpath))}\)", line)
               for line in lines), lines
