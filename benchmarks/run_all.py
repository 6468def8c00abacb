"""Run every benchmark, at reduced sizes (a few minutes on 2 CPU cores) or at the issue's sizes with ``--full``.

    python benchmarks/run_all.py [--full]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import inputs
import numba_compile
import memory
import overhead
import record_train
import reduction
import samples
import writer

REDUCED = {
    "overhead": ["--val-samples", "2000", "--repeats", "5"],
    "record_train": ["--train-samples", "4000", "--val-samples", "4000", "--repeats", "3"],
    "writer": ["--rows", "50000", "--dim", "256"],
    "memory": ["--sizes", "10000", "50000", "--dims", "512"],
    "reduction": ["--cases", "pca:10000", "pacmap:10000", "pca:100000", "--epochs", "5"],
    "samples": ["--rows", "10000", "--epochs", "10", "--dim", "256"],
    "numba_compile": ["--reducers", "pacmap"],
    "inputs": ["--samples", "1000", "--image-sizes", "32", "224"],
}
FULL = {"overhead": [], "record_train": [], "writer": [], "memory": [], "reduction": [], "samples": [],
        "numba_compile": [], "inputs": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's sizes (10k validation samples, 200k x 2048)")
    args = parser.parse_args()
    sizes = FULL if args.full else REDUCED
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, module in (("overhead", overhead), ("record_train", record_train), ("writer", writer), ("memory", memory),
                         ("reduction", reduction), ("samples", samples), ("numba_compile", numba_compile),
                         ("inputs", inputs)):
        print(f"== {name} {' '.join(sizes[name])}", flush=True)
        module.main(sizes[name])
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
