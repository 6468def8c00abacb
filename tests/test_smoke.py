"""CI smoke tests (issue 10): under ``fast_dev_run`` the collector runs its whole path (hooks, reshapes, Parquet, a
map, the pictures) in about a second, with PCA whatever the reducer, in a throwaway directory, so reruns in one
place always work and never pile up in the working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import EXAMPLES

# what a team puts in its smoke test (README, "In CI"), run twice in one directory in a fresh process
SMOKE = textwrap.dedent(
    """
    import json, sys
    import lightning.pytorch as pl
    from digits import DigitsCNN, DigitsDataModule
    from lightning_embeddings import EmbeddingCollector, EmbeddingRun

    runs = []
    for _ in range(2):
        collector = EmbeddingCollector(layers=[3, "head.1"], reshape={3: "avg_pool_2_2"})  # reducer="umap"
        pl.Trainer(fast_dev_run=True, callbacks=[collector], enable_progress_bar=False).fit(DigitsCNN(),
                                                                                           DigitsDataModule())
        run = EmbeddingRun(collector.dirpath)
        assert run.layers == ["features.1", "head.1"] and len(run.projections("head.1")) == 64
        runs.append({"dirpath": str(collector.dirpath), "reducer": run.manifest["reducer"]["name"],
                     "pictures": sorted(p.name for p in (run.path / "plots").iterdir())})
    print("RESULT", json.dumps({"runs": runs, "umap_imported": "umap" in sys.modules}))
    """
)


@pytest.mark.slow  # the smoke test runs in a fresh process
def test_fast_dev_run_smoke_tests_rerun_in_one_place_with_a_pca_map(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", SMOKE], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    first, second = result["runs"]
    assert first["dirpath"] != second["dirpath"]  # the rerun works and does not overwrite
    for run in result["runs"]:
        path = Path(run["dirpath"])
        assert path.parent.name.startswith("lightning-embeddings-fast_dev_run-") and tmp_path not in path.parents
        assert run["reducer"] == "pca"
        assert run["pictures"] == ["features.1-overview.png", "features.1-snapshots.png", "features.1-suspects.png",
                                   "head.1-overview.png", "head.1-snapshots.png", "head.1-suspects.png"]
        assert f"fast_dev_run: the map is made with PCA instead of umap, in the throwaway run {path}" in done.stderr
    assert not result["umap_imported"]  # no UMAP import, no numba compile in a smoke test
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing piles up where the tests run
    # ... nor in the temporary folder: the throwaway runs are removed when the process exits (they were kept for good)
    assert not any(Path(run["dirpath"]).parent.exists() for run in result["runs"])
    assert "removed when this process exits" in done.stderr
