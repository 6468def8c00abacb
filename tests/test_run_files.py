"""A run directory's files: names made from layer names stay inside the run, and a damaged or foreign run directory
fails with one clear error naming the file, in Python (``RunError``) and on the command line (exit status 1)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torch import nn

from conftest import DigitsCNN, fit_collector
from lightning_embeddings import EmbeddingRun, RunError, layout
from lightning_embeddings.cli import main
from lightning_embeddings.export import export_tensorboard
from lightning_embeddings.plot import plot_run

N_VAL = 449
ERROR = re.compile(r"^lightning-embeddings: error: \S.*\n$")  # one line, nothing else


class PathNamedModules(DigitsCNN):
    """The digits CNN with two more modules on its way, named like paths: ``add_module`` takes a ``/`` in a name,
    and plain attribute assignment takes any name, ``..`` included."""

    def __init__(self, absolute: str) -> None:
        super().__init__()
        self.absolute = absolute
        self.add_module(absolute, nn.Identity())
        setattr(self, "../../escape", nn.Identity())

    def forward(self, x):
        return self.head(self._modules["../../escape"](self._modules[self.absolute](self.features(x))))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """Two epochs of the digits CNN, layers features.1 and head.1, no maps: each test damages a copy."""
    _, collector = fit_collector(tmp_path_factory.mktemp("files-run"), reducer=None,
                                 trainer_kwargs={"limit_train_batches": 2})
    return collector.dirpath


@pytest.fixture
def run_dir(fitted, tmp_path) -> Path:
    return Path(shutil.copytree(fitted, tmp_path / "run"))


def cli(capsys, *argv: object) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def edit_manifest(run_dir: Path, change: Callable[[dict], None]) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    change(manifest)
    (run_dir / "manifest.json").write_text(json.dumps(manifest))


def snapshot_path(run_dir: Path, i: int) -> Path:
    name = json.loads((run_dir / "manifest.json").read_text())["snapshots"][i]["name"]
    return run_dir / "vectors" / f"{name}.parquet"


# ------------------------------------------------------------------------------------------ names from layers


def test_module_names_like_paths_write_nothing_outside_the_run(tmp_path):
    outside = tmp_path / "outside"
    layers = [str(outside / "abs"), "../../escape", "head.1"]
    _, collector = fit_collector(tmp_path / "root", PathNamedModules(layers[0]), layers=layers, plots=True,
                                 dirpath=tmp_path / "root" / "run", trainer_kwargs={"limit_train_batches": 2})
    run = EmbeddingRun(collector.dirpath)
    export_tensorboard(run, run.path / "tensorboard", progress=False)

    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert [path for path in written if run.path not in path.parents] == []
    assert run.layers == layers
    for column in layers:
        path = layout.projection_file(run.path, column)
        assert path.parent == run.path / "projections" and unquote(path.stem) == column
        assert len(run.projections(column)) == 2 * N_VAL
    assert run.vectors("../../escape")[1].shape == (N_VAL, 32)
    pictures = sorted(path.name for path in (run.path / "plots").iterdir())
    assert pictures == sorted(f"{layout.file_stem(c)}-{kind}.png" for c in layers
                              for kind in ("snapshots", "overview", "suspects"))
    assert layout.file_stem("head.1") == "head.1" and layout.file_stem("..") == "%2E."  # old names kept, none hidden


def _rename_layer(run_dir: Path, column: str) -> None:
    """Rename layer head.1 to ``column`` in the manifest and the vector files."""
    edit_manifest(run_dir, lambda manifest: manifest["layers"][1].update(column=column, name=column, spec=column))
    for path in (run_dir / "vectors").glob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.rename_columns([column if c == "head.1" else c for c in table.column_names]), path)


@pytest.mark.parametrize("relative", [True, False], ids=["dot-dot", "absolute"])
def test_a_crafted_manifest_cannot_make_reduce_or_plot_write_or_delete_outside_the_run(run_dir, tmp_path, relative):
    column = "../../victim" if relative else str(tmp_path / "victim")
    victims = [tmp_path / f"victim{suffix}" for suffix in (".parquet", "-snapshots.png", "-overview.png")]
    for victim in victims:
        victim.write_bytes(b"keep me")
    _rename_layer(run_dir, column)
    run = EmbeddingRun(run_dir)
    assert set(run.reduce(reducer="pca", progress=False)) == {"features.1", column}
    assert len(plot_run(run, layers=[column])) == 2

    for path in (run_dir / "vectors").glob("*.parquet"):  # too few samples: reduce skips the layer, removes its map
        pq.write_table(pq.read_table(path).slice(0, 3), path)
    EmbeddingRun(run_dir).reduce(reducer="pca", progress=False)
    assert not layout.projection_file(run_dir, column).exists()
    assert [victim.read_bytes() for victim in victims] == [b"keep me"] * 3
    assert {path for path in tmp_path.rglob("*") if path.is_file() and run_dir not in path.parents} == set(victims)


@pytest.mark.parametrize(
    ("column", "message"),
    [("", "layer 1 .*a non-empty string"), (None, "layer 1 .*a non-empty string"), (7, "layer 1 .*non-empty string"),
     ("features.1", "'features.1' twice")],
)
def test_manifest_layer_names_that_cannot_name_a_file_are_refused(run_dir, column, message):
    edit_manifest(run_dir, lambda manifest: manifest["layers"][1].update(column=column))
    with pytest.raises(RunError, match=rf"manifest\.json .*{message}"):
        EmbeddingRun(run_dir)


# ------------------------------------------------------------------------------------- damaged or foreign runs


def _not_json(run_dir: Path) -> str:
    (run_dir / "manifest.json").write_text('{"format": "lightning-embeddings/1", "layers": [')
    return r"manifest\.json is not valid JSON"


def _empty_object(run_dir: Path) -> str:
    (run_dir / "manifest.json").write_text("{}")
    return r"manifest\.json is not a lightning-embeddings manifest: its format is None"


def _list(run_dir: Path) -> str:
    (run_dir / "manifest.json").write_text("[]")
    return r"manifest\.json is not a lightning-embeddings manifest: it holds a JSON list"


def _newer(run_dir: Path) -> str:
    newer = {"format": "lightning-embeddings/99", "versions": {"lightning-embeddings": "9.0"}}
    edit_manifest(run_dir, lambda manifest: manifest.update(newer))
    return (r"manifest\.json was written by a newer lightning-embeddings \(9\.0, format 99\); .* reads format 1\. "
            r"Upgrade: pip install -U lightning-embeddings")


def _missing(run_dir: Path) -> str:
    path = snapshot_path(run_dir, 1)  # the last: export reads it too
    path.unlink()
    return rf"{re.escape(path.name)} is missing: manifest\.json lists snapshot"


def _truncated(run_dir: Path) -> str:
    path = snapshot_path(run_dir, 1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return rf"{re.escape(path.name)} is not a readable Parquet file"


def _zeros(run_dir: Path) -> str:
    path = snapshot_path(run_dir, 1)
    path.write_bytes(bytes(path.stat().st_size))
    return rf"{re.escape(path.name)} is not a readable Parquet file"


def _narrow(run_dir: Path) -> str:
    path = snapshot_path(run_dir, 1)
    table = pq.read_table(path)
    i = table.column_names.index("head.1")
    narrow = pa.FixedSizeListArray.from_arrays(pa.array([0.0] * 3 * table.num_rows, pa.float32()), 3)
    pq.write_table(table.set_column(i, "head.1", narrow), path)
    return rf"{re.escape(path.name)}: layer 'head\.1' is 3 values wide, but manifest\.json records vectors of dim 64"


def _foreign_rank(run_dir: Path) -> str:
    path = snapshot_path(run_dir, 1).with_suffix("")
    foreign = path.with_name(f"{path.name}-rank1.parquet")
    pq.write_table(pa.table({"a": [1, 2]}), foreign)
    return rf"{re.escape(foreign.name)} has no column 'stage', 'epoch', 'step', 'dataloader_idx', 'sample_id'"


MANIFEST_DAMAGE = [_not_json, _empty_object, _list, _newer]
FILE_DAMAGE = [_missing, _truncated, _zeros, _narrow, _foreign_rank]


@pytest.mark.parametrize("damage", MANIFEST_DAMAGE + FILE_DAMAGE, ids=lambda f: f.__name__.strip("_"))
def test_a_damaged_run_raises_one_run_error_naming_the_file(run_dir, damage):
    message = damage(run_dir)
    with pytest.raises(RunError, match=message):
        EmbeddingRun(run_dir).table()
    assert issubclass(RunError, ValueError)


@pytest.mark.parametrize("damage", MANIFEST_DAMAGE + FILE_DAMAGE, ids=lambda f: f.__name__.strip("_"))
def test_the_command_line_says_what_is_damaged_in_one_line(run_dir, capsys, damage):
    message = damage(run_dir)
    commands = [["info"], ["info", "--json"], ["export", "--to", "tensorboard"], ["reduce", "--reducer", "pca"]]
    if damage in MANIFEST_DAMAGE:
        commands.append(["plot"])
    for command in commands:
        status, out, err = cli(capsys, command[0], run_dir, *command[1:])
        assert (status, out) == (1, ""), (command, out, err)
        assert ERROR.match(err) and re.search(message, err), (command, err)


def test_bytes_changed_inside_a_vectors_page_fail_its_checksum_naming_the_file(run_dir, capsys):
    """Issue 20, item 8: 21 bytes overwritten mid-file read back as other numbers (a 0.0 as 50503.25), and info,
    samples and reduce exited 0. Every page is now written with a CRC and verified when read."""
    path = snapshot_path(run_dir, 1)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2  # inside the vectors' column chunk, by far the largest
    data[middle:middle + 21] = b"\x11" * 21
    path.write_bytes(bytes(data))
    message = rf"{re.escape(str(path))} is damaged \(.*CRC checksum verification failed.*\): its 'head\.1' vectors"
    with pytest.raises(RunError, match=message):
        EmbeddingRun(run_dir).vectors("head.1")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    for command in (["reduce", "--reducer", "pca"], ["export", "--to", "tensorboard"]):
        status, out, err = cli(capsys, command[0], run_dir, *command[1:])
        assert status == 1 and ERROR.match(err) and re.search(message, err), (command, out, err)
        if command[0] == "reduce":  # all or nothing: the run is as it was
            assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_foreign_files_beside_a_snapshot_are_not_read(run_dir, capsys):
    path = snapshot_path(run_dir, 1).with_suffix("")
    for name in (f"{path.name}-rank1-copy.parquet", f"{path.name}-copy.parquet", f"{path.name}-rankX.parquet"):
        pq.write_table(pa.table({"a": [1, 2]}), path.with_name(name))
    assert layout.snapshot_files(run_dir, path.name) == [path.with_suffix(".parquet")]
    assert len(EmbeddingRun(run_dir).table()) == 2 * N_VAL
    status, out, _ = cli(capsys, "info", run_dir, "--json")
    assert status == 0 and [s["samples"] for s in json.loads(out)["snapshots"]] == [N_VAL, N_VAL]


def test_snapshot_files_are_the_snapshot_and_its_ranks_in_rank_order(tmp_path):
    (tmp_path / "vectors").mkdir()
    name = layout.snapshot_name("fit", 1, 10)
    for suffix in ("-rank10", "-rank2", "-rank0", "-rank1-copy", "-rank", "-rank1.parquet", "0"):
        (tmp_path / "vectors" / f"{name}{suffix}.parquet").touch()
    assert [p.name for p in layout.snapshot_files(tmp_path, name)] == [f"{name}-rank{r}.parquet" for r in (0, 2, 10)]


@pytest.mark.slow  # starts another process
def test_info_into_a_closed_pipe_stops_quietly(fitted):
    """As ``lightning-embeddings info RUN | head -2`` once head has exited: no BrokenPipeError traceback."""
    script = Path(sys.executable).with_name("lightning-embeddings")
    if not script.is_file():
        pytest.skip(f"no console script at {script}: install the package first (pip install -e .)")
    process = subprocess.Popen([str(script), "info", str(fitted)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before the first line is written
    err = process.stderr.read().decode()
    assert process.wait(timeout=180) == 141 and err == ""
