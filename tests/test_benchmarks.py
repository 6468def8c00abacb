"""A smoke run of every benchmark at a tiny size: the scripts still work (their figures are not judged here). Not
``smoke.py``: even at ``--repeats 1`` it is five fresh processes (28 s); test_smoke.py runs the same smoke test.

Each script runs as ``python benchmarks/<script> args`` does, in this process as ``__main__`` (``runpy``), saving
an import of torch and Lightning per script, except ``writer.py`` (it imports neither) and ``numba_compile.py``.
The scripts that measure fresh processes (imports, peak memory, numba's compile) start those themselves. They run
one at a time, not in the background beside other tests: on 2 cores that was slower overall (test_align's PaCMAP
test took 77 s instead of 1 s beside numba_compile.py, their OpenMP threads contending)."""

import logging
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SLOW = pytest.mark.slow  # fresh processes that import torch (and compile numba): CI runs them, pytest -m slow
IN_PROCESS = {"overhead.py", "record_train.py", "label_noise.py", "knn_index.py", "explore_suspicion.py", "memory.py",
              "reduction.py", "samples.py", "paths.py", "many_snapshots.py", "inputs.py"}


@pytest.mark.parametrize(
    "script, args, printed",
    [
        ("overhead.py", ["--val-samples", "64", "--repeats", "1", "--batch-size", "32", "--no-profile"], "ratio"),
        ("record_train.py", ["--train-samples", "64", "--val-samples", "64", "--repeats", "1", "--batch-size", "32"],
         "the pass over the training set"),
        ("label_noise.py", ["--noise", "0.3", "--seeds", "1", "--epochs", "2", "--models", "mlp", "--folds", "2"],
         "cleanlab, 2-fold cross-validated"),
        pytest.param("samples.py", ["--rows", "500", "--epochs", "2", "--dim", "8", "--cold"], "peak RSS growth",
                     marks=SLOW),
        ("knn_index.py", ["--quick"], "dynamics.neighbours"),
        pytest.param("paths.py", ["--epochs", "2", "--runs", "label_errors", "--maps", "pca", "parametric",
                                  "--parametric-steps", "20"], "label_errors head.1     train parametric", marks=SLOW),
        ("explore_suspicion.py", ["--quick"], "suspicion (shipped)"),
        ("writer.py", ["--rows", "2000", "--dim", "16", "--repeats", "1"], "MB/s"),
        ("inputs.py", ["--samples", "64", "--image-sizes", "16", "--repeats", "1", "--batch-size", "32"], "bytes/sample"),
        pytest.param("memory.py", ["--sizes", "500", "--dims", "16"], "recorded in a validation epoch", marks=SLOW),
        pytest.param("reduction.py", ["--cases", "pca:500", "--epochs", "2", "--dim", "8"],
                     "reduction: pca, 500 x 8 x 2 epochs", marks=SLOW),
        pytest.param("many_snapshots.py", ["--epochs", "3", "--placed", "2"], "force_approximation_algorithm=True",
                     marks=SLOW),
        pytest.param("numba_compile.py", ["--rows", "300", "--dim", "8", "--reducers", "pacmap", "--conditions",
                                          "cold cache"], "pacmap, cold cache", marks=SLOW),
    ],
)
def test_benchmark_runs_at_a_tiny_size(tmp_path, monkeypatch, capsys, script, args, printed):
    if script in IN_PROCESS:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / script), *args])
        lightning_logger = logging.getLogger("lightning.pytorch")
        level, threads = lightning_logger.level, torch.get_num_threads()
        try:
            runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
        finally:
            lightning_logger.setLevel(level)  # the script quiets Lightning's info messages
            torch.set_num_threads(threads)  # and may use one thread
        assert printed in capsys.readouterr().out
        return
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert printed in result.stdout


@SLOW  # a fit, then the script's five parametric maps
def test_parametric_variants_runs_on_a_recorded_run(tmp_path, monkeypatch, capsys):
    from conftest import fit_collector

    _, collector = fit_collector(tmp_path, reducer=None, max_samples=60, layers=["head.1"],
                                 trainer_kwargs={"max_epochs": 2, "limit_train_batches": 2})
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / "parametric_variants.py"), str(collector.dirpath), "head.1",
                                      '{"steps": 5}'])
    runpy.run_path(str(BENCHMARKS / "parametric_variants.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "head.1: 2 snapshots x 60 samples x 64 dims" in out and '{"steps": 5}' in out and "TP " in out
