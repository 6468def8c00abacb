"""The map procedure (maps.py) on small hand-written runs, without a Trainer: fit on the last snapshot, place
every snapshot through the same transform, measure, write all or nothing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from test_reader import FACTS, vector, write_snapshot

from lightning_embeddings import store
from lightning_embeddings.maps import MapSettings, write_maps
from lightning_embeddings.reader import RunReader


def handmade(path, sizes=(12, 12)) -> RunReader:
    snapshots = [write_snapshot(path, epoch, [list(range(0, n, 2)), list(range(1, n, 2))])
                 for epoch, n in enumerate(sizes)]
    store.write_manifest(path, {"format": store.FORMAT, "snapshots": snapshots, "layers": [FACTS], "reducer": None})
    return RunReader(path)


class Fails:
    def fit(self, X, y=None):
        raise FloatingPointError("no")

    def transform(self, X):
        return X[:, :2]


def test_every_snapshot_is_placed_through_the_map_of_the_last_one(tmp_path):
    run = handmade(tmp_path)
    manifest, placed = write_maps(run, MapSettings("pca", fit_samples=None, progress=False), ["embed"])
    assert [path.relative_to(tmp_path).as_posix() for path in placed] == [
        "projections/embed.parquet", "projections.parquet", "manifest.json"]
    projections = pd.read_parquet(tmp_path / "projections" / "embed.parquet")
    assert projections.groupby("epoch").size().tolist() == [12, 12]
    last = np.array([vector(i, 1) for i in range(12)], np.float32)
    pca = PCA(n_components=2, random_state=0).fit(last)
    for epoch in (0, 1):
        rows = projections[projections.epoch == epoch].sort_values("sample_id")
        expected = pca.transform(np.array([vector(i, epoch) for i in range(12)], np.float32))
        np.testing.assert_allclose(rows[["x", "y"]].to_numpy(), expected, atol=1e-4)
    record = manifest["reducer"]
    assert (record["name"], record["align"], record["fitted_on"]["epoch"]) == ("pca", "last", 1)
    assert set(record["layers"]["embed"]["trustworthiness"]) == {s["name"] for s in run.snapshots}
    assert json.loads((tmp_path / "manifest.json").read_text())["reducer"] == record  # switched in


def test_a_layer_that_fails_changes_no_file_and_one_too_small_is_skipped(tmp_path):
    run = handmade(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError, match=r"reducing layer 'embed' failed: FloatingPointError: no"):
        write_maps(run, MapSettings(Fails(), progress=False), ["embed"])
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"} == {
        p: b for p, b in before.items() if p.name != ".lock"}
    small = handmade(tmp_path / "small", sizes=(3, 3))
    with pytest.warns(UserWarning, match=r"layer 'embed' is not reduced: 3 samples per snapshot"):
        manifest, placed = write_maps(small, MapSettings("pca", progress=False), ["embed"])
    assert [path.name for path in placed] == ["manifest.json"]  # no map, so no long table either
    assert "skipped" in manifest["reducer"]["layers"]["embed"]
    assert not (tmp_path / "small" / "projections" / "embed.parquet").exists()
