"""The examples run as written in the README, each with its own command line, in this process as ``__main__``
(``runpy``): they share numba's UMAP compile and the import of Lightning with the other tests. test_cli.py starts
``python examples/digits_cli.py`` in fresh interpreters, as users do (a script finding ``digits`` beside it)."""

import runpy
import sys
from pathlib import Path

import pytest

from lightning_embeddings import EmbeddingRun

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def run_example(tmp_path, monkeypatch):
    """``run_example("digits.py", *args)``: what ``python examples/digits.py args`` does, in this process, from
    ``tmp_path``; the environment variables ``seed_everything`` sets are restored after the test."""
    monkeypatch.chdir(tmp_path)
    for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
        monkeypatch.delenv(name, raising=False)

    def run(script: str, *args: str) -> None:
        monkeypatch.setattr(sys, "argv", [str(EXAMPLES / script), *args])
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")

    return run


def test_digits_example_runs_and_prints_its_run(tmp_path, run_example, capsys):
    run_example("digits.py", "--root-dir", str(tmp_path), "--max-epochs", "3", "--reducer", "pca")  # default: 5, umap
    out = capsys.readouterr().out
    run_dir = tmp_path / "lightning_logs" / "version_0" / "embeddings"
    assert f"run directory: {run_dir}" in out
    assert "epochs: [0, 1, 2]" in out
    assert "layer 'features.1' (index 3, ReLU, avg_pool_2_2): 64 dims, 449 samples per epoch" in out
    assert (f"pictures in {run_dir / 'plots'}: features.1-overview.png, features.1-snapshots.png, "
            "features.1-suspects.png, head.1-overview.png, head.1-snapshots.png, head.1-suspects.png") in out
    run = EmbeddingRun(run_dir)
    assert run.manifest["reducer"]["name"] == "pca"
    assert len(run.projections("head.1")) == 3 * 449
    assert all((run_dir / "plots" / f"head.1-{kind}.png").stat().st_size > 0 for kind in ("overview", "snapshots"))


@pytest.mark.slow  # a LightningCLI run, as the other LightningCLI tests
def test_digits_cli_example_runs_from_its_yaml(tmp_path, run_example):
    run_example("digits_cli.py", "fit", "--config", str(EXAMPLES / "digits.yaml"), "--trainer.default_root_dir",
                str(tmp_path))
    run = EmbeddingRun(tmp_path / "lightning_logs" / "version_0" / "embeddings")
    assert run.epochs == [0, 1, 2, 3, 4]
    assert [run.layer(l)["strategy"] for l in run.layers] == ["avg_pool_2_2", "flatten"]
    assert run.manifest["reducer"]["name"] == "pacmap"


@pytest.mark.slow  # its align="aligned" maps: numba compiles AlignedUMAP, about 17 s
def test_forming_example_compares_the_alignments(tmp_path, run_example, capsys):
    # at a reduced size: 3 epochs of 100 samples (by default 5 epochs, all 600 forming and 449 digits samples)
    run_example("forming.py", "--out", str(tmp_path), "--epochs", "3", "--samples", "100")
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("forming ", "digits "))]
    assert [row[:3] for row in rows] == [
        [case, align, reducer] for case in ("forming", "digits")
        for align, reducer in [("last", "pca"), ("last", "umap"), ("joint", "umap"), ("aligned", "umap")]
    ]
    trust = {(row[0], row[1], row[2]): [float(v) for v in row[3:]] for row in rows}
    assert all(len(values) == 3 for values in trust.values())  # one per snapshot
    assert trust["digits", "joint", "umap"][0] > trust["digits", "last", "umap"][0]  # the honesty problem, measured
    assert len(list((tmp_path / "pictures").glob("*.png"))) == 16
    assert len(EmbeddingRun(tmp_path / "digits").vectors("head.1", epoch=0)[0]) == 100


def test_label_errors_example_finds_the_flipped_labels(tmp_path, run_example, capsys):
    # at a reduced size: 3 epochs, PCA (by default 20 epochs, UMAP)
    run_example("label_errors.py", "--max-epochs", "3", "--reducer", "pca", "--root-dir", str(tmp_path))
    out = capsys.readouterr().out
    assert "the 10 training samples most likely mislabelled (270 of 1348 labels were flipped)" in out
    top = [line.split() for line in out.split("mislabelled")[1].splitlines()[2:12]]
    assert sum(row[-1] == "True" for row in top) >= 9  # the top of the ranking is flipped labels
    precision = float(out.split("(precision@k)")[0].split()[-1])
    assert precision > 0.8  # 0.2 by chance
    assert "head.1-datamap.png" in out
