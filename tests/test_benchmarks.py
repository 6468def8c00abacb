"""A smoke run of every benchmark at a tiny size: the scripts still work (their figures are not judged here)."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize(
    "script, args, printed",
    [
        ("overhead.py", ["--val-samples", "64", "--repeats", "1", "--batch-size", "32", "--no-profile"], "ratio"),
        ("writer.py", ["--rows", "2000", "--dim", "16", "--repeats", "1"], "MB/s"),
        ("memory.py", ["--sizes", "500", "--dims", "16"], "recorded in a validation epoch"),
        ("reduction.py", ["--cases", "pca:500", "--epochs", "2", "--dim", "8"], "reduction: pca, 500 x 8 x 2 epochs"),
        ("numba_compile.py", ["--rows", "300", "--dim", "8", "--reducers", "pacmap"], "pacmap, warm cache"),
    ],
)
def test_benchmark_runs_at_a_tiny_size(tmp_path, script, args, printed):
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert printed in result.stdout
