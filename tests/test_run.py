from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from lightning_embeddings import EmbeddingRun


@pytest.fixture
def run(fit_digits):
    _, collector = fit_digits(trainer_kwargs={"max_epochs": 3})
    return EmbeddingRun(collector.dirpath)


def test_layers_epochs_and_lookup_by_name_spec_or_index(run):
    assert run.layers == ["features.1", "head.1"] and run.epochs == [0, 1, 2]
    assert run.layer(3) is run.layer("features.1") is run.layer(run.layer("features.1")["index"])
    assert run.layer("head.1")["index"] == 9
    ids, by_name = run.vectors("features.1", 2)
    _, by_index = run.vectors(3, 2)
    assert np.array_equal(by_name, by_index) and by_name.shape == (449, 16) and by_name.flags["C_CONTIGUOUS"]
    assert ids.dtype == np.int64 and ids.tolist() == list(range(449))


def test_vectors_dir_reads_as_one_dataset_everywhere(run):
    vectors = run.path / "vectors"
    table = ds.dataset(vectors, format="parquet").to_table(columns=["epoch", "sample_id", "head.1"])
    assert table.num_rows == 3 * 449
    assert sorted(set(table.column("epoch").to_pylist())) == [0, 1, 2]

    frame = pd.read_parquet(vectors)
    assert len(frame) == 3 * 449 and frame.groupby("epoch").size().tolist() == [449, 449, 449]
    assert len(frame["head.1"].iloc[0]) == 64

    counts = duckdb.sql(
        f"SELECT epoch, count(*) AS n, avg(len(\"head.1\")) AS dim FROM read_parquet('{vectors}/*.parquet') "
        "GROUP BY epoch ORDER BY epoch"
    ).fetchall()
    assert counts == [(0, 449, 64.0), (1, 449, 64.0), (2, 449, 64.0)]
    # the vectors are the same through every reader
    _, X = run.vectors("head.1", 1)
    from_duckdb = duckdb.sql(
        f"SELECT \"head.1\" FROM read_parquet('{vectors}/*.parquet') WHERE epoch = 1 ORDER BY sample_id"
    ).fetchnumpy()["head.1"]
    np.testing.assert_array_equal(np.stack(from_duckdb), X)


def test_projections_cover_every_epoch_with_labels(run):
    maps = run.projections("head.1")
    assert list(maps.columns) == ["sample_id", "split", "stage", "epoch", "step", "dataloader_idx", "x", "y", "label", "prediction"]
    assert maps.groupby("epoch").size().tolist() == [449] * 3
    assert maps[["x", "y"]].notna().all().all()
    assert run.manifest["reducer"]["layers"]["head.1"]["class"] == "sklearn.decomposition._pca.PCA"


def test_table_holds_keys_facts_and_one_array_column_per_layer(run):
    frame = run.table(epochs=[0, 2], layers=["head.1"])
    assert list(frame.columns) == ["split", "stage", "epoch", "step", "dataloader_idx", "sample_id", "label", "prediction", "head.1"]
    assert frame["epoch"].unique().tolist() == [0, 2]


def test_reduce_again_without_retraining(run):
    maps = run.reduce(reducer="pca", n_components=3, progress=False)
    assert set(maps) == {"features.1", "head.1"}
    assert {"x", "y", "z"} <= set(run.projections("head.1").columns)
    assert EmbeddingRun(run.path).manifest["reducer"]["n_components"] == 3


def test_clear_errors_for_what_is_not_there(run, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"is not an embeddings run: it has no manifest\.json"):
        EmbeddingRun(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"it holds .*embeddings: pass that"):
        EmbeddingRun(run.path.parent)
    with pytest.raises(ValueError, match=r"layer 'head\.2' was not recorded .*recorded: 'features\.1' \(index 3\), 'head\.1'"):
        run.vectors("head.2", 0)
    with pytest.raises(ValueError, match=r"fit epoch 7 was not recorded .*complete snapshots: fit epoch 0 step 22, fit epoch 1 step 44"):
        run.vectors("head.1", 7)
    with pytest.raises(ValueError, match="Unknown reducer 'tsne'"):
        run.reduce(reducer="tsne")


def test_the_readme_duckdb_cosine_query_runs_with_the_fixed_size_cast(run):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    query = readme.split('duckdb.sql(f"""', 1)[1].split('""")', 1)[0].replace("epoch = 4", "epoch = 2")
    rows = duckdb.sql(query.replace("{run.path}", str(run.path))).fetchall()
    _, first = run.vectors("head.1", 0)
    _, last = run.vectors("head.1", 2)
    cos = (first * last).sum(1) / np.linalg.norm(first, axis=1) / np.linalg.norm(last, axis=1)
    assert [r[0] for r in rows] == np.argsort(cos, kind="stable")[:10].tolist()
    np.testing.assert_allclose([r[1] for r in rows], np.sort(cos)[:10], rtol=1e-5)


def test_samples_say_what_the_neighbours_and_the_model_say_each_sample_is(run):
    """Issue 25: each row carries the last snapshot's prediction and the label its 10 nearest neighbours (cosine,
    in the layer's vectors at the last snapshot) hold most often; rows of equal suspicion are ranked by evidence."""
    from sklearn.neighbors import NearestNeighbors

    samples = run.samples("head.1")
    last = run.table(epochs=[run.epochs[-1]], layers=["head.1"], stages=["fit"]).sort_values("sample_id")
    vectors = np.stack(last["head.1"].to_numpy())
    _, found = NearestNeighbors(n_neighbors=11, metric="cosine").fit(vectors).kneighbors(vectors)
    labels = last["label"].to_numpy()
    said = [np.bincount(labels[row[row != i][:10]], minlength=10).argmax() for i, row in enumerate(found)]
    expected = pd.DataFrame({"sample_id": last["sample_id"].to_numpy(), "neighbour_label": said,
                             "prediction": last["prediction"].to_numpy()})
    got = samples[["sample_id", "neighbour_label", "prediction"]].sort_values("sample_id").reset_index(drop=True)
    assert (got["neighbour_label"] == expected["neighbour_label"]).mean() > 0.99  # ties among exact distances aside
    assert got["prediction"].tolist() == expected["prediction"].tolist()
    assert (samples["label"] != samples["neighbour_label"]).sum() >= 5  # some samples the neighbours disagree on
    # equal suspicion: the last snapshot's agreement never rises down the ranking
    for _, tied in samples.groupby(samples["suspicion"].round(9), sort=False):
        assert tied["knn_agreement_last"].is_monotonic_increasing
    assert samples["suspicion"].round(9).is_monotonic_decreasing
