"""The ``lightning-embeddings`` command line, in process through ``main([...])`` and once through the installed
console script in a subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLES, fit_collector
from lightning_embeddings import EmbeddingRun
from lightning_embeddings.cli import main
from lightning_embeddings.cli_parser import parse_value

N_VAL = 449
COMMANDS = ("layers", "info", "reduce", "samples", "plot", "export")
ERROR = re.compile(r"^lightning-embeddings: error: \S.*\n$")  # one line, nothing else


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Two epochs of the digits CNN, PCA maps of layers 3 (features.1) and head.1; the trainer makes checkpoints."""
    trainer, collector = fit_collector(
        tmp_path_factory.mktemp("cli-run"), trainer_kwargs={"max_epochs": 2, "limit_train_batches": 2}
    )
    return trainer, EmbeddingRun(collector.dirpath)


@pytest.fixture(scope="module")
def run(fitted) -> EmbeddingRun:
    return fitted[1]


@pytest.fixture
def run_copy(run, tmp_path) -> EmbeddingRun:
    """A copy to change, so that the module's run stays as fitted."""
    return EmbeddingRun(shutil.copytree(run.path, tmp_path / "embeddings"))


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def table_rows(out: str) -> dict[str, list[str]]:
    """The ``layers`` table's rows by index: cells split on runs of two or more spaces."""
    rows = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0].isdigit():
            rows[cells[0]] = cells
    return rows


# ------------------------------------------------------------------------------------------------------------ help


def test_help_lists_every_command_with_examples(capsys):
    status, out, _ = cli(capsys, "--help")
    assert status == 0
    assert all(f"    {command} " in out for command in COMMANDS)
    assert "examples:" in out and "Exit status" in out
    for command in COMMANDS:
        status, out, _ = cli(capsys, command, "--help")
        assert status == 0, command
        assert out.startswith(f"usage: lightning-embeddings {command} ")
        assert "examples:" in out and f"  lightning-embeddings {command} " in out.split("examples:")[1]


def test_version(capsys):
    import lightning_embeddings

    assert cli(capsys, "--version")[:2] == (0, f"lightning-embeddings {lightning_embeddings.__version__}\n")


# ---------------------------------------------------------------------------------------------------------- layers


def test_layers_table_with_output_shapes_counts_as_the_collector(capsys):
    status, out, err = cli(capsys, "layers", "digits:DigitsCNN", "--input-shape", "1,1,8,8")
    assert status == 0, err
    rows = table_rows(out)
    assert out.splitlines()[0].split() == ["index", "name", "type", "params", "output", "shape"]
    assert rows["0"][:3] == ["0", "root", "DigitsCNN"]
    assert rows["3"] == ["3", "features.1", "ReLU", "0", "(1, 16, 8, 8)"]
    assert rows["9"] == ["9", "head.1", "Linear", "32,832", "(1, 64)"]
    assert rows["2"][3] == "160" and len(rows) == 13  # 12: val_acc, the torchmetrics accuracy, not called
    assert "38,282 parameters" in out


def test_layers_of_a_file_target_without_input_has_no_shapes(capsys):
    status, out, _ = cli(capsys, "layers", EXAMPLES / "digits.py:DigitsCNN")
    assert status == 0
    assert out.splitlines()[0].split() == ["index", "name", "type", "params"]
    assert table_rows(out)["9"] == ["9", "head.1", "Linear", "32,832"]


def test_layers_of_a_checkpoint_with_its_class(fitted, capsys, tmp_path):
    trainer, _ = fitted
    checkpoint = tmp_path / "digits.ckpt"
    trainer.save_checkpoint(checkpoint)
    status, out, err = cli(capsys, "layers", checkpoint, "--class", "digits:DigitsCNN", "--input-shape", "2,1,8,8")
    assert status == 0, err
    assert table_rows(out)["9"][-1] == "(2, 64)"
    status, _, err = cli(capsys, "layers", checkpoint)
    assert status == 2 and ERROR.match(err) and "--class package.module:Class" in err


def test_layers_names_the_module_where_the_forward_pass_fails(capsys):
    status, out, err = cli(capsys, "layers", "digits:DigitsCNN", "--input-shape", "1,8,8")
    assert status == 1 and out == ""
    assert ERROR.match(err)
    assert "input of shape (1, 8, 8) failed in module 'head.1' (index 9, Linear)" in err
    assert "batch dimension included" in err


def test_module_table_leaves_the_model_as_it_found_it():
    import torch

    from digits import DigitsCNN
    from lightning_embeddings.layers import module_table

    model = DigitsCNN().train()
    model.head[3].eval()  # a mixed state, restored module by module
    modes = [m.training for m in model.modules()]
    rows = module_table(model, torch.zeros(4, 1, 8, 8))
    assert [r["output_shape"] for r in rows][8:] == [(4, 512), (4, 64), (4, 64), (4, 10), None]  # 12: val_acc
    with pytest.raises(ValueError, match=r"shape \(4, 8, 8\) failed in module 'features\.0' \(index 2, Conv2d\)"):
        module_table(model, torch.zeros(4, 8, 8))
    assert [m.training for m in model.modules()] == modes
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert all(r["output_shape"] is None for r in module_table(model))


# ------------------------------------------------------------------------------------------------------------ info


def test_info_shows_layers_snapshots_samples_reducer_and_trustworthiness(run, capsys):
    status, out, err = cli(capsys, "info", run.path)
    assert status == 0, err
    assert re.search(r"features\.1\s+3\s+ReLU\s+mean\s+\(16, 8, 8\)\s+16", out)
    assert re.search(r"head\.1\s+9\s+Linear\s+mean\s+\(64\)\s+64", out)
    for snapshot in run.snapshots:
        assert re.search(rf"{snapshot['name']}\s+fit\s+{snapshot['epoch']}\s+{snapshot['step']}\s+{N_VAL}\b", out)
    fitted_on = run.manifest["reducer"]["fitted_on"]["name"]
    assert f"reducer: pca, 2-D, seed 0, align 'last'; fitted on {fitted_on}" in out
    trust = run.manifest["reducer"]["layers"]["head.1"]["trustworthiness"]
    first = run.snapshots[0]["name"]
    row = next(line for line in out.splitlines() if line.strip().startswith(first) and "." in line)
    assert row.split()[2] == f"{trust[first]:.2f}"  # snapshot, features.1, head.1 (then "!" when below 0.8)
    motion = run.manifest["reducer"]["layers"]["head.1"]["temporal_preservation"]
    second = run.snapshots[1]["name"]
    paths = out.split("temporal preservation of the paths into each snapshot")[1].splitlines()
    row = next(line for line in paths if line.strip().startswith(second))
    cells = re.split(r"\s{2,}", row.strip())  # snapshot, features.1, head.1; " !" after a value below 0.5
    assert cells[2].split()[0] == f"{motion[second]:.2f}"  # only the pairs: the first snapshot has no row
    assert not any(line.strip().startswith(first) for line in paths)


def test_info_marks_unfaithful_snapshots_and_skipped_layers(run_copy, capsys):
    manifest = json.loads((run_copy.path / "manifest.json").read_text())
    first = run_copy.snapshots[0]["name"]
    manifest["reducer"]["layers"]["head.1"]["trustworthiness"][first] = 0.51
    second = run_copy.snapshots[1]["name"]
    manifest["reducer"]["layers"]["head.1"]["temporal_preservation"][second] = 0.12
    manifest["reducer"]["layers"]["features.1"] = {"skipped": "3 samples per snapshot; a map needs at least 4"}
    (run_copy.path / "manifest.json").write_text(json.dumps(manifest))
    status, out, _ = cli(capsys, "info", run_copy.path)
    assert status == 0
    assert re.search(rf"{first}\s+0\.51 !", out) and re.search(rf"{second}\s+0\.12 !", out)
    assert "below 0.5: the drawn paths misrank how far samples moved. reducer='parametric'" in out
    assert f"lightning-embeddings reduce {run_copy.path} --reducer parametric" in out
    assert "below 0.8" in out and "--align joint" in out  # the run is fitted on the last snapshot
    assert "features.1: not reduced: 3 samples per snapshot" in out


def test_info_json(run, capsys):
    status, out, _ = cli(capsys, "info", run.path, "--json")
    facts = json.loads(out)
    assert status == 0
    assert [s["samples"] for s in facts["snapshots"]] == [N_VAL] * len(run.snapshots)
    assert [layer["column"] for layer in facts["layers"]] == ["features.1", "head.1"]
    assert facts["reducer"]["name"] == "pca"


# ---------------------------------------------------------------------------------------------------------- reduce


def test_reduce_again_in_3d_joint_with_reducer_params_for_one_layer(run_copy, capsys):
    before = run_copy.projections("features.1")
    status, out, err = cli(capsys, "reduce", run_copy.path, "--reducer", "pca", "--n-components", "3",
                           "--align", "joint", "--layers", "9", "--param", "whiten=true", "--seed", "1")
    assert status == 0, err
    assert str(run_copy.path / "projections" / "head.1.parquet") in out and f"({2 * N_VAL} rows" in out
    again = EmbeddingRun(run_copy.path)
    assert {"x", "y", "z"} <= set(again.projections("head.1").columns)
    assert again.projections("features.1").equals(before), "layers not named are left as they were"
    record = again.manifest["reducer"]
    assert (record["align"], record["n_components"], record["seed"]) == ("joint", 3, 1)
    assert record["kwargs"] == {"whiten": True}
    assert record["layers"]["head.1"]["params"]["whiten"] is True


@pytest.mark.parametrize("param, said", [
    ("n_components=3", "--param n_components=... is set by --n-components: use --n-components instead"),
    ("random_state=5", "--param random_state=... is set by --seed: use --seed instead"),
    ("n_neighbour=5", "'n_neighbour': did you mean 'n_neighbors'"),
    ("steps=0", "ParametricMap: steps must be an int >= 1, got 0"),
])
def test_reduce_params_are_checked_before_anything_is_read_or_written(run_copy, capsys, param, said):
    """Issue 20, item 9: these leaked "got multiple values for keyword argument", a reducer's own message, or a raw
    TypeError after a layer's map had been started."""
    reducer = {"n_neighbour=5": "umap", "steps=0": "parametric"}.get(param, "pca")
    before = {p: p.read_bytes() for p in run_copy.path.rglob("*") if p.is_file()}
    status, out, err = cli(capsys, "reduce", run_copy.path, "--reducer", reducer, "--param", param)
    errors = [line for line in err.splitlines() if line.startswith("lightning-embeddings: error:")]
    assert status == 2 and out == "" and len(errors) == 1 and said in errors[0], err
    assert {p: p.read_bytes() for p in run_copy.path.rglob("*") if p.is_file()} == before


def test_reduce_defaults_to_the_runs_reducer(run_copy, capsys):
    status, out, err = cli(capsys, "reduce", run_copy.path)
    assert status == 0, err
    assert out.startswith("reduced with pca, 2-D:")
    assert EmbeddingRun(run_copy.path).manifest["reducer"]["name"] == "pca"


def test_reduce_fit_samples_caps_the_fit_and_all_lifts_the_cap(run_copy, capsys):
    status, out, err = cli(capsys, "reduce", run_copy.path, "--reducer", "pca", "--layers", "head.1", "--fit-samples", "100")
    assert status == 0, err
    assert f"({2 * N_VAL} rows, fitted on 100," in out
    assert EmbeddingRun(run_copy.path).manifest["reducer"]["fit_samples"] == 100
    status, out, err = cli(capsys, "reduce", run_copy.path, "--layers", "head.1")  # the run's cap is kept
    assert status == 0 and "fitted on 100," in out, err
    status, out, err = cli(capsys, "reduce", run_copy.path, "--layers", "head.1", "--fit-samples", "all")
    assert status == 0 and f"fitted on {N_VAL}," in out, err  # align="last": every sample of the last snapshot
    assert EmbeddingRun(run_copy.path).manifest["reducer"]["fit_samples"] is None
    status, _, err = cli(capsys, "reduce", run_copy.path, "--fit-samples", "0")
    assert status == 2 and "'0' is not a number of rows >= 1 or 'all'" in err


@pytest.fixture(scope="module")
def run_with_train(tmp_path_factory) -> EmbeddingRun:
    """One epoch with the training set recorded too (record_train), 200 samples of each split."""
    _, collector = fit_collector(tmp_path_factory.mktemp("cli-train"), layers=["head.1"], record_train=True,
                                 max_samples=200, trainer_kwargs={"max_epochs": 2, "limit_train_batches": 2})
    return EmbeddingRun(collector.dirpath)


def test_samples_prints_the_ranked_table_and_json(run_with_train, capsys):
    expected = run_with_train.samples("head.1", split="train").head(5)
    status, out, _ = cli(capsys, "samples", run_with_train.path, "--split", "train", "--top", "5")  # its only layer
    assert status == 0
    lines = out.splitlines()
    assert "train samples of layer 'head.1' most likely mislabelled" in lines[0]
    header = re.split(r"\s{2,}", lines[1].strip())
    assert header[:7] == ["rank", "sample_id", "label", "neighbour_label", "prediction", "suspicion", "knn_agreement"]
    ranked = [re.split(r"\s{2,}", line.strip()) for line in lines[2:]]
    assert [int(cells[1]) for cells in ranked] == expected["sample_id"].tolist()
    assert [int(cells[3]) for cells in ranked] == expected["neighbour_label"].tolist()
    assert [float(cells[5]) for cells in ranked] == pytest.approx(expected["suspicion"].tolist(), abs=5e-4)
    status, out, _ = cli(capsys, "samples", run_with_train.path, "--layer", "head.1", "--split", "train", "--top",
                         "5", "--json")
    records = json.loads(out)
    assert [r["sample_id"] for r in records] == expected["sample_id"].tolist()
    assert records[0]["suspicion"] == pytest.approx(expected["suspicion"].iloc[0])
    assert [(r["neighbour_label"], r["prediction"]) for r in records] == list(
        zip(expected["neighbour_label"], expected["prediction"]))


def test_samples_show_draws_the_gallery_and_json_stays_json(run_with_train, capsys, tmp_path):
    import shutil

    from PIL import Image

    copy = tmp_path / "run"
    shutil.copytree(run_with_train.path, copy)
    status, out, _ = cli(capsys, "samples", copy, "--split", "train", "--top", "4", "--show")
    assert status == 0
    gallery = copy / "plots" / "head.1-suspects.png"
    assert out.splitlines()[-1] == str(gallery) and Image.open(gallery).format == "PNG"
    assert len(out.splitlines()) == 2 + 4 + 1  # title, header, 4 rows, the gallery's path
    status, out, err = cli(capsys, "samples", copy, "--split", "val", "--top", "3", "--show", "--json")
    assert status == 0 and len(json.loads(out)) == 3  # stdout stays one JSON document
    assert err.strip().endswith("head.1-suspects.png")


def test_samples_show_makes_the_command_a_writer_that_holds_the_run_lock():
    from lightning_embeddings.cli_parser import build_parser

    parser = build_parser()
    assert parser.parse_args(["samples", "RUN", "--show"]).writes is True
    assert parser.parse_args(["samples", "RUN"]).writes is False
    assert parser.parse_args(["plot", "RUN"]).writes is True and parser.parse_args(["info", "RUN"]).writes is False


def test_parse_value():
    assert [parse_value(v) for v in ["30", "-2", "0.5", "1e-3", "TRUE", "false", "None", "cosine"]] == [
        30, -2, 0.5, 0.001, True, False, None, "cosine"
    ]


# ------------------------------------------------------------------------------------------------- plot and export


def test_plot_prints_the_pictures_it_drew(run_copy, capsys):
    pytest.importorskip("lightning_embeddings.plot", reason="lightning_embeddings.plot is not in this checkout yet")
    pytest.importorskip("matplotlib", reason="drawing needs matplotlib")
    status, out, err = cli(capsys, "plot", run_copy.path, "--layers", "head.1")
    assert status == 0, err
    paths = [Path(line) for line in out.splitlines()]
    assert paths and all(path.is_file() and path.stat().st_size > 0 for path in paths)
    assert all("head.1" in path.name for path in paths if path.suffix == ".png")


def test_export_to_tensorboard_default_and_given_logdir(run_copy, capsys, tmp_path):
    status, out, err = cli(capsys, "export", run_copy.path, "--to", "tensorboard")
    assert status == 0, err
    config = run_copy.path / "tensorboard" / "projector_config.pbtxt"
    assert config.is_file() and str(config) in out and "tensorboard --logdir" in out
    assert config.read_text().count("embeddings {") == 4

    status, out, err = cli(capsys, "export", run_copy.path, "--to", "tensorboard", "--logdir", tmp_path / "tb",
                           "--layers", "head.1", "--max-vectors", "50")
    assert status == 0, err
    text = (tmp_path / "tb" / "projector_config.pbtxt").read_text()
    assert text.count("embeddings {") == 2 and "features.1" not in text
    (vectors,) = (tmp_path / "tb").glob("*/head.1%2fvectors/tensors.tsv")
    assert len(vectors.read_text().splitlines()) == 50


def _files(path: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in path.rglob("*") if p.is_file() and p.name not in (".lock", ".lock.holder")}


def test_export_of_a_read_only_run_to_another_logdir_writes_it_and_says_it_is_not_recorded(run_copy, capsys,
                                                                                          tmp_path, monkeypatch):
    """Issue 20, item 9: export only reads the run, but failed on the run's lock where the run is read-only."""
    import errno

    from lightning_embeddings.lock import RunLock

    def read_only(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(self.dirpath / ".lock"))

    before = _files(run_copy.path)
    monkeypatch.setattr(RunLock, "acquire", read_only)
    status, out, err = cli(capsys, "export", run_copy.path, "--to", "tensorboard", "--logdir", tmp_path / "tb")
    assert status == 0, err
    assert (tmp_path / "tb" / "projector_config.pbtxt").read_text().count("embeddings {") == 4
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "not recorded in the run" in warnings[0] and "Permission denied" in warnings[0]
    assert _files(run_copy.path) == before


def test_a_reduce_that_runs_out_of_disk_names_the_run_and_says_it_is_unchanged(run_copy, capsys, monkeypatch):
    """Issue 20, item 9: a full disk gave a bare '[Errno 28] No space left on device' naming no file."""
    import errno

    from lightning_embeddings import maps

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    before = _files(run_copy.path)
    monkeypatch.setattr(maps, "write_manifest", full)
    status, out, err = cli(capsys, "reduce", run_copy.path, "--reducer", "pca", "--n-components", "3")
    errors = [line for line in err.splitlines() if line.startswith("lightning-embeddings: error:")]
    assert status == 1 and len(errors) == 1, err
    assert f"No space left on device: {run_copy.path}" in errors[0]
    assert "the run's files are as they were" in errors[0]
    assert _files(run_copy.path) == before


# ---------------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        ([], 2, "give a command"),
        (["frob"], 2, "invalid choice: 'frob'"),
        (["info"], 2, "the following arguments are required: RUN_DIR"),
        (["export", "{run}"], 2, "required: --to"),
        (["reduce", "{run}", "--param", "n_neighbors"], 2, "'n_neighbors' is not KEY=VALUE"),
        (["reduce", "{run}", "--n-components", "4"], 2, "invalid choice: 4"),
        (["layers", "digits:DigitsCNN", "--input-shape", "1,x"], 2, "'1,x' is not a shape"),
        (["layers", "digits"], 2, "does not name a class"),
        (["info", "{tmp}"], 1, "is not an embeddings run: it has no manifest.json"),
        (["info", "{run}/.."], 1, "it holds .*embeddings: pass that"),
        (["info", "{tmp}/missing"], 1, "does not exist"),
        (["reduce", "{run}", "--layers", "head.7"], 1, r"layer 'head\.7' was not recorded .* recorded: 'features\.1'"),
        (["reduce", "{run}", "--reducer", "pca", "--align", "aligned"], 1, "needs reducer='umap'"),
        (["export", "{run}", "--to", "tensorboard", "--layers", "7"], 1, "layer 7 was not recorded"),
        (["plot", "{run}", "--layers", "nope"], 1, "layer 'nope' was not recorded"),
        (["samples", "{run}", "--layer", "head.1", "--split", "train"], 1, r"no 'train' rows .*record_train=True"),
        (["samples", "{run}"], 2, "give --layer: the run has layers features.1, head.1"),
        (["layers", "no_such_module:Net"], 1, "cannot import 'no_such_module'.*PYTHONPATH"),
        (["layers", "digits:Nope"], 1, "digits has no 'Nope': it defines DigitsCNN"),
    ],
)
def test_errors_are_one_line_with_the_exit_status(run, capsys, tmp_path, argv, status, message):
    argv = [a.format(run=run.path, tmp=tmp_path) for a in argv]
    got, out, err = cli(capsys, *argv)
    assert got == status
    assert ERROR.match(err), err
    assert re.search(message, err), err
    assert "Traceback" not in err and out == ""


def test_traceback_flag_shows_the_traceback(capsys, tmp_path):
    status, _, err = cli(capsys, "--traceback", "info", tmp_path)
    assert status == 1
    assert err.startswith("Traceback") and err.rstrip().splitlines()[-1].startswith("lightning-embeddings: error:")


def test_import_warnings_are_not_printed(capsys):
    """umap-learn's "Tensorflow not installed; ParametricUMAP will be unavailable" (an ImportWarning, which Python
    hides by default) was printed as a warning on every CLI reduce."""
    import warnings

    from lightning_embeddings.cli import _one_line_warnings

    with _one_line_warnings():
        warnings.warn("Tensorflow not installed; ParametricUMAP will be unavailable", ImportWarning)
    assert capsys.readouterr().err == ""


def test_warnings_print_as_one_line_each(capsys):
    import warnings

    from lightning_embeddings.cli import _one_line_warnings

    with _one_line_warnings():
        warnings.warn("the map of layer 'head.1' is not faithful\n at epoch 0", UserWarning)
    err = capsys.readouterr().err
    assert err == "lightning-embeddings: warning: the map of layer 'head.1' is not faithful at epoch 0\n"


# ---------------------------------------------------------------------------------------- the installed script


@pytest.mark.slow  # starts another process
def test_console_script_runs_in_a_subprocess():
    """One real process (each spends seconds importing Lightning): the table on stdout, exit status 0."""
    script = Path(sys.executable).with_name("lightning-embeddings")
    if not script.is_file():
        pytest.skip(f"no console script at {script}: install the package first (pip install -e .)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(EXAMPLES), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([str(script), "layers", "digits:DigitsCNN", "--input-shape", "1,1,8,8"], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    assert rows["3"] == ["3", "features.1", "ReLU", "0", "(1, 16, 8, 8)"]
    assert rows["9"] == ["9", "head.1", "Linear", "32,832", "(1, 64)"]



def test_the_readme_layers_command_works_from_the_repository_root(capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    readme = (Path("README.md")).read_text()
    command = next(line for line in readme.splitlines() if line.startswith("lightning-embeddings layers "))
    argv = command.split("#")[0].split()[1:]
    status, out, err = cli(capsys, *argv)
    assert status == 0, err
    assert re.search(r"9\s+head\.1\s+Linear\s+32,832\s+\(1, 64\)", out)


def test_reduce_of_a_run_without_a_complete_snapshot_says_so_and_exits_0(run_copy, capsys):
    manifest = json.loads((run_copy.path / "manifest.json").read_text())
    manifest["snapshots"] = []
    (run_copy.path / "manifest.json").write_text(json.dumps(manifest))
    status, out, err = cli(capsys, "reduce", run_copy.path, "--reducer", "pca")
    assert status == 0, err
    assert "has no complete snapshot: nothing to reduce" in err and "redrew" not in out
