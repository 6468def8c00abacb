"""``export_tensorboard``: projector files read back as TensorBoard reads them, compared with
``SummaryWriter.add_embedding``'s own layout, and served by TensorBoard's projector plugin where installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import DigitsCNN, fit_collector
from lightning_embeddings import EmbeddingRun, run_samples
from lightning_embeddings.export import PROJECTOR_CONFIG, export_tensorboard, projector_paths
from lightning_embeddings.store import RunError

N_VAL = 449
LAYERS = ["features.1", "head.1"]
NEEDS_TENSORBOARD = "needs the tensorboard package: pip install 'lightning-embeddings[tensorboard]'"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> EmbeddingRun:
    """Three epochs of the digits CNN, PCA maps (2-D) of layers 3 (features.1) and head.1."""
    root = tmp_path_factory.mktemp("export-run")
    _, collector = fit_collector(root, trainer_kwargs={"max_epochs": 3, "limit_train_batches": 2})
    return EmbeddingRun(collector.dirpath)


@pytest.fixture
def copy_of(tmp_path):
    def copy(run: EmbeddingRun) -> EmbeddingRun:
        return EmbeddingRun(shutil.copytree(run.path, tmp_path / "run"))

    return copy


def read_config(logdir: Path) -> list[dict[str, str]]:
    """projector_config.pbtxt's ``embeddings`` entries, parsed by hand (no protobuf needed)."""
    entries, entry, depth = [], None, 0
    for line in (logdir / PROJECTOR_CONFIG).read_text().splitlines():
        line = line.strip()
        if line.endswith("{"):
            depth += 1
            entry = {} if depth == 1 else entry
        elif line == "}":
            depth -= 1
            if depth == 0:
                entries.append(entry)
        elif depth == 1:
            key, _, value = line.partition(": ")
            entry[key] = value.strip('"')
    return entries


def read_embedding(logdir: Path, entry: dict[str, str]) -> tuple[np.ndarray, pd.DataFrame]:
    """The tensor as TensorBoard's projector plugin parses it (float per cell, then float32) and the metadata."""
    tensor = np.loadtxt(logdir / entry["tensor_path"], delimiter="\t", dtype=np.float64, ndmin=2).astype(np.float32)
    metadata = pd.read_csv(logdir / entry["metadata_path"], sep="\t", dtype=str, keep_default_na=False)
    return tensor, metadata


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> tuple[Path, dict[str, dict[str, str]]]:
    logdir = export_tensorboard(run, tmp_path_factory.mktemp("tb") / "logs", progress=False)
    return logdir, {entry["tensor_name"]: entry for entry in read_config(logdir)}


def test_config_names_two_tensors_per_layer_in_add_embedding_layout(run, exported):
    logdir, entries = exported
    step = run.snapshots[-1]["step"]
    assert list(entries) == [f"{layer}/{kind}:{step:05d}" for layer in LAYERS for kind in ("projections", "vectors")]
    entry = entries[f"head.1/projections:{step:05d}"]
    assert entry["tensor_path"] == f"{step:05d}/head.1%2fprojections/tensors.tsv"
    assert entry["metadata_path"] == f"{step:05d}/head.1%2fprojections/metadata.tsv"
    for entry in entries.values():
        assert (logdir / entry["tensor_path"]).is_file() and (logdir / entry["metadata_path"]).is_file()
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1


def test_projections_of_all_snapshots_stacked_in_order_padded_to_three_columns(run, exported):
    logdir, entries = exported
    tensor, metadata = read_embedding(logdir, entries[f"head.1/projections:{run.snapshots[-1]['step']:05d}"])
    assert tensor.shape == (3 * N_VAL, 3)
    assert not tensor[:, 2].any(), "a 2-D map's third column is zeros"
    assert list(metadata.columns) == [
        "label", "prediction", "suspicion", "epoch", "step", "stage", "split", "sample_id", "dataloader_idx",
        "__seq_next__",
    ]
    assert set(metadata["split"]) == {"val"}
    assert metadata["epoch"].astype(int).tolist() == [0] * N_VAL + [1] * N_VAL + [2] * N_VAL
    assert metadata["step"].astype(int).tolist() == [s["step"] for s in run.snapshots for _ in range(N_VAL)]
    assert set(metadata["stage"]) == {"fit"}

    maps = run.projections("head.1").sort_values(["epoch", "sample_id"], kind="stable").reset_index(drop=True)
    np.testing.assert_array_equal(tensor[:, :2], maps[["x", "y"]].to_numpy(np.float32))
    assert metadata["sample_id"].astype(int).tolist() == maps["sample_id"].tolist()
    assert metadata["label"].astype(int).tolist() == maps["label"].tolist()
    assert metadata["prediction"].astype(int).tolist() == maps["prediction"].tolist()
    # each sample's suspicion from samples(), on each of its rows
    suspicion = run.samples("head.1").set_index("sample_id")["suspicion"]
    np.testing.assert_allclose(metadata["suspicion"].astype(float), suspicion.loc[maps["sample_id"]].to_numpy())


def test_seq_next_links_each_sample_through_every_snapshot_in_order(run, exported):
    logdir, entries = exported
    _, metadata = read_embedding(logdir, entries[f"features.1/projections:{run.snapshots[-1]['step']:05d}"])
    following = [int(v) if v else None for v in metadata["__seq_next__"]]
    assert following[2 * N_VAL:] == [None] * N_VAL, "rows of the last snapshot end their paths"
    visited = []
    for start in range(N_VAL):  # every path starts in the first snapshot
        row, path = start, []
        while row is not None:
            path.append(row)
            row = following[row]
        assert metadata["epoch"].iloc[path].astype(int).tolist() == [0, 1, 2]
        assert metadata["sample_id"].iloc[path].nunique() == 1
        visited += path
    assert sorted(visited) == list(range(3 * N_VAL)), "every row is on exactly one path"


def test_last_snapshot_vectors_all_rows_with_labels(run, exported):
    logdir, entries = exported
    tensor, metadata = read_embedding(logdir, entries[f"head.1/vectors:{run.snapshots[-1]['step']:05d}"])
    ids, X = run.vectors("head.1")  # the last snapshot of fit
    assert tensor.shape == X.shape == (N_VAL, 64)
    np.testing.assert_array_equal(tensor, X)
    assert list(metadata.columns) == ["label", "prediction", "suspicion", "split", "sample_id", "dataloader_idx"]
    assert metadata["sample_id"].astype(int).tolist() == ids.tolist()
    suspicion = run.samples("head.1").set_index("sample_id")["suspicion"]
    np.testing.assert_allclose(metadata["suspicion"].astype(float), suspicion.loc[ids].to_numpy())
    labels = run.projections("head.1").query(f"epoch == {run.epochs[-1]}").sort_values("sample_id")["label"]
    assert metadata["label"].astype(int).tolist() == labels.tolist()


def test_vectors_subsampled_to_max_vectors_the_same_way_each_time(run, tmp_path):
    tag = f"features.1/vectors:{run.snapshots[-1]['step']:05d}"
    first, second = (export_tensorboard(run, tmp_path / name, layers=[3], max_vectors=100, progress=False)
                     for name in ("a", "b"))
    (tensor, metadata), (again, metadata_again) = (
        read_embedding(logdir, {e["tensor_name"]: e for e in read_config(logdir)}[tag]) for logdir in (first, second)
    )
    assert tensor.shape == (100, 16)
    np.testing.assert_array_equal(tensor, again)
    assert metadata.equals(metadata_again)
    ids = metadata["sample_id"].astype(int).to_numpy()
    assert len(set(ids)) == 100 and not np.array_equal(ids, np.arange(100)), "a spread subset, not the first rows"
    all_ids, X = run.vectors("features.1")
    np.testing.assert_array_equal(tensor, X[np.searchsorted(all_ids, ids)])
    assert [e["tensor_name"].split("/")[0] for e in read_config(first)] == ["features.1", "features.1"]


def test_a_3d_map_fills_the_third_column(run, copy_of, tmp_path):
    copy = copy_of(run)
    copy.reduce(reducer="pca", n_components=3, layers=["head.1"], progress=False)
    logdir = export_tensorboard(copy, tmp_path / "tb", layers=["head.1"], progress=False)
    entries = read_config(logdir)
    tensor, _ = read_embedding(logdir, entries[0])
    maps = copy.projections("head.1").sort_values(["epoch", "sample_id"], kind="stable")
    np.testing.assert_array_equal(tensor, maps[["x", "y", "z"]].to_numpy(np.float32))
    assert tensor[:, 2].any()


def test_a_layer_without_a_map_exports_its_vectors_only(run, copy_of, tmp_path):
    copy = copy_of(run)
    (copy.path / "projections" / "features.1.parquet").unlink()
    names = [e["tensor_name"].rsplit(":", 1)[0] for e in read_config(export_tensorboard(copy, tmp_path / "tb"))]
    assert names == ["features.1/vectors", "head.1/projections", "head.1/vectors"]


def test_exporting_again_replaces_its_own_entries_and_keeps_others(run, tmp_path):
    logdir = tmp_path / "tb"
    logdir.mkdir()
    foreign = 'embeddings {\n  tensor_name: "mine:00003"\n  tensor_path: "00003/mine/tensors.tsv"\n' \
              '  sprite {\n    image_path: "00003/mine/sprite.png"\n    single_image_dim: 8\n  }\n}\n'
    (logdir / PROJECTOR_CONFIG).write_text(foreign)
    export_tensorboard(run, logdir, progress=False)
    export_tensorboard(run, logdir, progress=False)
    text = (logdir / PROJECTOR_CONFIG).read_text()
    assert text.startswith(foreign)
    names = [entry["tensor_name"] for entry in read_config(logdir)]
    assert len(names) == 5 and len(set(names)) == 5 and names[0] == "mine:00003"
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1


def test_bad_arguments(run, tmp_path):
    with pytest.raises(ValueError, match=r"layer 'nope' was not recorded"):
        export_tensorboard(run, tmp_path, layers=["nope"])
    with pytest.raises(ValueError, match=r"max_vectors must be a positive int, got 0"):
        export_tensorboard(run, tmp_path, max_vectors=0)
    with pytest.raises(FileNotFoundError, match="not an embeddings run"):
        export_tensorboard(tmp_path, tmp_path / "tb")


def test_paths_join_samples_within_a_stage_and_skip_missing_snapshots():
    snapshots = [
        {"name": "a", "stage": "fit", "epoch": 0, "step": 10},
        {"name": "b", "stage": "fit", "epoch": 1, "step": 20},
        {"name": "c", "stage": "fit", "epoch": 2, "step": 30},
        {"name": "t", "stage": "test", "epoch": 2, "step": 30},
    ]
    rows = [  # listed out of order on purpose; sample 1 is missing from epoch 1
        ("test", 2, 30, 0, 0), ("fit", 2, 30, 0, 1), ("fit", 0, 10, 0, 1), ("fit", 0, 10, 0, 0),
        ("fit", 1, 20, 0, 0), ("fit", 2, 30, 0, 0),
    ]
    frame = pd.DataFrame(rows, columns=["stage", "epoch", "step", "dataloader_idx", "sample_id"])
    frame["x"], frame["y"] = np.arange(6.0), -np.arange(6.0)
    tensor, metadata = projector_paths(frame, snapshots)
    order = list(zip(metadata["stage"], metadata["epoch"], metadata["sample_id"]))
    assert order == [("fit", 0, 0), ("fit", 0, 1), ("fit", 1, 0), ("fit", 2, 0), ("fit", 2, 1), ("test", 2, 0)]
    assert [None if pd.isna(v) else v for v in metadata["__seq_next__"]] == [2, 4, 3, None, None, None]
    assert tensor.shape == (6, 3) and tensor[:, 2].tolist() == [0.0] * 6
    assert tensor[:, 0].tolist() == [3.0, 2.0, 4.0, 5.0, 1.0, 0.0]
    assert "label" not in metadata, "no label column where labels are unknown"
    assert metadata["suspicion"].isna().all(), "no samples(): the column is there, its cells empty"


class LogitsCNN(DigitsCNN):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return {**super().validation_step(batch, batch_idx, dataloader_idx), "logits": self(batch[0])}


def test_record_train_rows_have_their_split_paths_and_suspicion(tmp_path):
    _, collector = fit_collector(tmp_path, model=LogitsCNN(), layers=["head.1"], record_train=True, max_samples=60,
                                 trainer_kwargs={"max_epochs": 2, "limit_train_batches": 2})
    run = EmbeddingRun(collector.dirpath)
    logdir = export_tensorboard(run, tmp_path / "tb", progress=False)
    entries = {entry["tensor_name"].rsplit(":", 1)[0]: entry for entry in read_config(logdir)}
    _, metadata = read_embedding(logdir, entries["head.1/projections"])
    assert metadata["split"].tolist() == (["val"] * 60 + ["train"] * 60) * 2  # per snapshot: evaluated split first
    following = [int(v) if v else None for v in metadata["__seq_next__"]]
    assert [following[i] for i in (0, 59, 60, 119)] == [120, 179, 180, 239]  # train and val samples never joined
    assert following[120:] == [None] * 120
    for split in ("val", "train"):  # samples() of each split, on that split's rows: val 7 and train 7 are others
        rows = metadata[metadata["split"] == split]
        expected = run.samples("head.1", split=split).set_index("sample_id")["suspicion"]
        np.testing.assert_allclose(rows["suspicion"].astype(float), expected.loc[rows["sample_id"].astype(int)])
    first = metadata.iloc[:120].groupby("split")["suspicion"]  # samples of the same id in either split: others
    assert not np.allclose(first.get_group("val").astype(float), first.get_group("train").astype(float))
    _, vectors = read_embedding(logdir, entries["head.1/vectors"])
    assert sorted(vectors["split"].unique()) == ["train", "val"] and (vectors["suspicion"] != "").all()
    samples = run_samples.recorded(run, "head.1")
    assert list(samples.groupby("split", sort=False).size().items()) == [("val", 60), ("train", 60)]


def test_suspicion_empty_where_samples_has_none_and_a_damaged_file_said(run, copy_of, tmp_path, monkeypatch):
    copy = copy_of(run)

    def unlabelled(run, column, split="val"):
        raise ValueError("no labels")

    with monkeypatch.context() as patched:
        patched.setattr(run_samples, "samples", unlabelled)
        logdir = export_tensorboard(copy, tmp_path / "tb", layers=["head.1"], progress=False)
    for entry in read_config(logdir):
        _, metadata = read_embedding(logdir, entry)
        assert (metadata["suspicion"] == "").all() and metadata["label"].ne("").all()
    (copy.path / "samples.parquet").write_bytes(b"not parquet")
    with pytest.raises(RunError, match="samples.parquet is not a readable Parquet file"):
        export_tensorboard(copy, tmp_path / "tb2", progress=False)


# ---------------------------------------------------------------------------------------- with TensorBoard itself


def test_layout_and_files_equal_summary_writer_add_embedding(run, exported, tmp_path):
    """The same tensors and metadata through ``SummaryWriter.add_embedding`` give the same config and paths."""
    pytest.importorskip("tensorboard", reason=NEEDS_TENSORBOARD)
    from torch.utils.tensorboard import SummaryWriter

    logdir, entries = exported
    theirs = tmp_path / "writer"
    with SummaryWriter(str(theirs)) as writer:
        for name, entry in entries.items():
            tag, step = name.rsplit(":", 1)
            tensor, metadata = read_embedding(logdir, entry)
            writer.add_embedding(tensor, metadata=metadata.values.tolist(), metadata_header=list(metadata.columns),
                                 global_step=int(step), tag=tag)
    assert (theirs / PROJECTOR_CONFIG).read_text() == (logdir / PROJECTOR_CONFIG).read_text()
    files = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*.tsv"))  # noqa: E731
    assert files(theirs) == files(logdir)
    for entry in entries.values():
        assert (theirs / entry["metadata_path"]).read_bytes() == (logdir / entry["metadata_path"]).read_bytes()
        np.testing.assert_array_equal(read_embedding(theirs, entry)[0], read_embedding(logdir, entry)[0])


def test_tensorboard_parses_the_config_finds_the_run_and_serves_the_tensors(run, exported):
    pytest.importorskip("tensorboard", reason=NEEDS_TENSORBOARD)
    from google.protobuf import text_format
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector import ProjectorConfig
    from tensorboard.plugins.projector.projector_plugin import ProjectorPlugin
    from werkzeug.test import Client

    logdir, entries = exported
    config = text_format.Parse((logdir / PROJECTOR_CONFIG).read_text(), ProjectorConfig())
    assert [e.tensor_name for e in config.embeddings] == list(entries)

    (event_file,) = logdir.glob("events.out.tfevents.*")
    (event,) = EventFileLoader(str(event_file)).Load()  # checks the record's CRCs
    assert event.file_version == "brain.Event:2"

    parent = logdir.parent  # `tensorboard --logdir <parent>` finds the export as a run through its event file
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(parent))
    multiplexer.Reload()
    context = base_plugin.TBContext(
        logdir=str(parent), multiplexer=multiplexer,
        data_provider=data_provider.MultiplexerDataProvider(multiplexer, str(parent)),
    )
    plugin = ProjectorPlugin(context)
    client = Client(_routes(plugin.get_plugin_apps()))
    runs = client.get("/runs").get_json()
    assert logdir.name in runs
    served = {e["tensorName"]: e for e in client.get(f"/info?run={logdir.name}").get_json()["embeddings"]}
    name = f"head.1/projections:{run.snapshots[-1]['step']:05d}"
    assert served[name]["tensorShape"] == [3 * N_VAL, 3]
    response = client.get(f"/tensor?run={logdir.name}&name={name}")
    tensor = np.frombuffer(response.data, dtype=np.float32).reshape(-1, 3)
    np.testing.assert_array_equal(tensor, read_embedding(logdir, entries[name])[0])
    metadata = client.get(f"/metadata?run={logdir.name}&name={name}").get_data(as_text=True).splitlines()
    assert metadata[0].split("\t")[-1] == "__seq_next__" and len(metadata) == 1 + 3 * N_VAL


def _routes(apps):
    """One WSGI app dispatching on the path, as TensorBoard mounts a plugin's routes."""
    def app(environ, start_response):
        return apps[environ["PATH_INFO"]](environ, start_response)

    return app
