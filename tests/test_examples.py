"""The examples run as written in the README."""

import subprocess
import sys
from pathlib import Path

from lightning_embeddings import EmbeddingRun

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_digits_example_runs_and_prints_its_run(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "digits.py"), "--root-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "lightning_logs" / "version_0" / "embeddings"
    assert f"run directory: {run_dir}" in result.stdout
    assert "epochs: [0, 1, 2, 3, 4]" in result.stdout
    assert "layer 'features.1' (index 3, ReLU, avg_pool_2_2): 64 dims, 449 samples per epoch" in result.stdout
    run = EmbeddingRun(run_dir)
    assert run.manifest["reducer"]["name"] == "umap"
    assert len(run.projections("head.1")) == 5 * 449


def test_digits_cli_example_runs_from_its_yaml(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "digits_cli.py"), "fit", "--config", str(EXAMPLES / "digits.yaml"),
         "--trainer.default_root_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = EmbeddingRun(tmp_path / "lightning_logs" / "version_0" / "embeddings")
    assert run.epochs == [0, 1, 2, 3, 4]
    assert [run.layer(l)["strategy"] for l in run.layers] == ["avg_pool_2_2", "flatten"]
    assert run.manifest["reducer"]["name"] == "pacmap"


def test_forming_example_compares_the_alignments(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "forming.py"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(("forming ", "digits "))]
    assert [row[:3] for row in rows] == [
        [case, align, reducer] for case in ("forming", "digits")
        for align, reducer in [("last", "pca"), ("last", "umap"), ("joint", "umap"), ("aligned", "umap")]
    ]
    trust = {(row[0], row[1], row[2]): [float(v) for v in row[3:]] for row in rows}
    assert trust["digits", "joint", "umap"][0] > trust["digits", "last", "umap"][0]  # the honesty problem, measured
    assert len(list((tmp_path / "pictures").glob("*.png"))) == 16
