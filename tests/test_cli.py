"""Real LightningCLI runs of ``examples/digits_cli.py`` in subprocesses, configured by YAML and by command-line flags.

Each subprocess spends ~5 s importing Lightning, so the runs that the selected tests ask for are started by a pool
(``cli_runs``), as many at a time as there are cores, in the order the tests want them; each test waits for its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from lightning_embeddings import EmbeddingRun

pytestmark = pytest.mark.slow  # LightningCLI runs in their own processes

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CLI = EXAMPLES / "digits_cli.py"
TIMEOUT_S = 300
N_VAL = 449  # digits' validation split (25% of 1,797)

# what every config shares: quick, quiet, written under the run's own tmp dir
TRAINER = """\
seed_everything: 0
trainer:
  max_epochs: {max_epochs}
  limit_train_batches: 2
  default_root_dir: {root}
  enable_progress_bar: false
  enable_model_summary: false
  enable_checkpointing: false
  logger: {logger}
"""

MYSTRAT = '''\
import torch


def first_channels(t: torch.Tensor) -> torch.Tensor:
    """The first 3 channels (or features) of each sample, flattened."""
    return t[:, :3].reshape(t.shape[0], -1)
'''


class CliRun:
    """One ``digits_cli.py`` subprocess in its own directory (its cwd, and on its PYTHONPATH)."""

    def __init__(self, workdir: Path, args: list[str]) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.args = args
        self.returncode: int | None = None
        self.stdout = self.stderr = ""
        self._proc: subprocess.Popen | None = None

    def start(self) -> CliRun:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(EXAMPLES), str(self.workdir), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        env["OMP_NUM_THREADS"] = "1"  # several runs share the cores
        with open(self.workdir / "stdout.txt", "w") as out, open(self.workdir / "stderr.txt", "w") as err:
            self._proc = subprocess.Popen(
                [sys.executable, str(CLI), *self.args], cwd=self.workdir, env=env, stdout=out, stderr=err
            )
        return self

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self) -> CliRun:
        if self._proc is None:
            self.start()
        if self.returncode is None:
            try:
                self.returncode = self._proc.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"digits_cli.py {' '.join(self.args)} ran past {TIMEOUT_S} s")
            self.stdout = (self.workdir / "stdout.txt").read_text()
            self.stderr = (self.workdir / "stderr.txt").read_text()
        return self

    def kill(self) -> None:
        if self.running():
            self._proc.kill()
            self._proc.wait()

    def ok(self) -> CliRun:
        """Wait, and fail the test with the end of stderr if the run failed."""
        self.wait()
        assert self.returncode == 0, f"digits_cli.py {' '.join(self.args)} exited {self.returncode}:\n{self.stderr[-4000:]}"
        return self

    def run(self) -> EmbeddingRun:
        """The one embeddings run this CLI run wrote."""
        manifests = sorted(self.root.rglob("embeddings/manifest.json"))
        assert len(manifests) == 1, manifests
        return EmbeddingRun(manifests[0].parent)

    def saved_config(self) -> str:
        """The config LightningCLI saved beside the logs: the same serialization as ``--print_config``."""
        saved = sorted(self.root.rglob("config.yaml"))
        assert len(saved) == 1, saved
        return saved[0].read_text()


class Pool:
    """Runs as many ``CliRun`` at a time as there are cores, in the order the tests will want them."""

    def __init__(self, runs: dict[str, CliRun]) -> None:
        self.runs = runs
        self.queue = list(runs)
        self.jobs = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        self._fill()

    def _fill(self) -> None:
        while self.queue and sum(run.running() for run in self.runs.values()) < self.jobs:
            self.runs[self.queue.pop(0)].start()

    def get(self, name: str) -> CliRun:
        if name in self.queue:  # wanted now: next to start
            self.queue.remove(name)
            self.queue.insert(0, name)
        deadline = time.monotonic() + TIMEOUT_S
        while self.runs[name]._proc is None or self.runs[name].running():
            self._fill()
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        result = self.runs[name].wait()
        self._fill()  # keep the cores busy while this test checks its run
        return result

    def close(self) -> None:
        self.queue.clear()
        for run in self.runs.values():
            run.kill()


def write_config(workdir: Path, body: str, max_epochs: int = 1, logger: str = "false", name: str = "config.yaml") -> Path:
    """A config of the shared trainer options and ``body`` (the callbacks, indented under ``trainer:``)."""
    (workdir / "mystrat.py").write_text(MYSTRAT)
    path = workdir / name
    head = TRAINER.format(max_epochs=max_epochs, root=workdir / "root", logger=logger)
    path.write_text(head + textwrap.indent(textwrap.dedent(body), "  "))
    return path


# ---------------------------------------------------------------------------------------------------------------
# The runs: name -> the command-line arguments, given the run's directory (where its files are written). A test
# asks for a run by naming it as a fixture (or as a parameter it passes to request.getfixturevalue).

SPECS: dict[str, Callable[[Path], list[str]]] = {}


def spec(name: str) -> Callable:
    def register(fn: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
        SPECS[name] = fn
        return fn

    return register


DIGITS_COLLECTOR = """\
callbacks:
  - class_path: lightning_embeddings.EmbeddingCollector
    init_args:
      layers: [3, head.1]                           # an int index and a module name
      reshape: {3: avg_pool_2_2, head.1: flatten}   # keyed by both
      reducer: pca
"""


@spec("run_yaml")
def _(workdir: Path) -> list[str]:
    # the default logger (CSV here), so the run lands next to the logs
    return ["fit", "--config", str(write_config(workdir, DIGITS_COLLECTOR, max_epochs=2, logger="true"))]


@spec("run_command_line")
def _(workdir: Path) -> list[str]:
    # jsonargparse: `+=` appends a callback to the list; the flags after it set init_args of the callback just
    # appended. Values are parsed as YAML, so in `{3: ...}` 3 stays an int. Custom strategies by import path, in
    # both spellings, from mystrat.py in the run's directory.
    (workdir / "mystrat.py").write_text(MYSTRAT)
    return [
        "fit",
        "--seed_everything=0",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        f"--trainer.default_root_dir={workdir / 'root'}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.logger=false",
        "--trainer.callbacks+=lightning_embeddings.EmbeddingCollector",
        "--trainer.callbacks.layers=[2, 3, head.1]",
        "--trainer.callbacks.reshape={2: flatten, 3: mystrat:first_channels, head.1: mystrat.first_channels}",
        "--trainer.callbacks.reducer=pca",
    ]


REDUCER_CLASS = """\
callbacks:
  - class_path: lightning_embeddings.EmbeddingCollector
    init_args:
      layers: [head.1]
      reshape: flatten
      reducer:
        class_path: {class_path}
        init_args: {init_args}
"""


@spec("run_reducer_class")
def _(workdir: Path) -> list[str]:
    body = REDUCER_CLASS.format(class_path="sklearn.decomposition.PCA", init_args="{n_components: 2}")
    return ["fit", "--config", str(write_config(workdir, body))]


PARAMETRIC = """\
callbacks:
  - class_path: lightning_embeddings.EmbeddingCollector
    init_args:
      layers: [head.1]
      reducer: parametric
      reducer_kwargs: {steps: 40, hidden_layer_sizes: [32, 32]}
"""


@spec("run_parametric")
def _(workdir: Path) -> list[str]:
    return ["fit", "--config", str(write_config(workdir, PARAMETRIC, max_epochs=2))]


@spec("run_parametric_class")
def _(workdir: Path) -> list[str]:
    body = REDUCER_CLASS.format(class_path="lightning_embeddings.ParametricMap",
                                init_args="{steps: 30, motion_weight: 2.0}")
    return ["fit", "--config", str(write_config(workdir, body, max_epochs=2))]


@spec("run_bad_parametric")
def _(workdir: Path) -> list[str]:
    return ["fit", "--config", str(write_config(workdir, PARAMETRIC.replace("steps: 40", "steps: 0")))]


ROUND_TRIP = """\
callbacks:
  - class_path: lightning_embeddings.EmbeddingCollector
    init_args:
      layers: [3, head.1]
      reshape:
        3: avg_pool_2_2
        head.1: mystrat:first_channels
      output_key: {head.1: 0}
      reducer: pca
"""


@spec("run_print_config")
def _(workdir: Path) -> list[str]:
    return ["fit", "--config", str(write_config(workdir, ROUND_TRIP)), "--print_config"]


@spec("run_bad_reshape")
def _(workdir: Path) -> list[str]:
    return ["fit", "--config", str(write_config(workdir, DIGITS_COLLECTOR.replace("avg_pool_2_2", "avg_pol_2_2")))]


@spec("run_bad_layer")
def _(workdir: Path) -> list[str]:
    return ["fit", "--config", str(write_config(workdir, DIGITS_COLLECTOR.replace("head.1", "head.11")))]


@pytest.fixture(scope="module")
def cli_runs(request, tmp_path_factory):
    """A pool that runs, as many at a time as there are cores, every run this module's selected tests ask for."""
    wanted: list[str] = []
    for item in request.session.items:
        if item.module is request.module:
            params = getattr(item, "callspec", None)
            asked = [*item.fixturenames, *(params.params.values() if params else ())]
            wanted += [name for name in asked if isinstance(name, str) and name in SPECS and name not in wanted]
    runs = {}
    for name in wanted:
        workdir = tmp_path_factory.mktemp(name)
        runs[name] = CliRun(workdir, SPECS[name](workdir))
    pool = Pool(runs)
    yield pool
    pool.close()


def _run_fixture(name: str):
    @pytest.fixture(scope="module", name=name)
    def fixture(cli_runs: Pool) -> CliRun:
        return cli_runs.get(name)

    return fixture


run_yaml = _run_fixture("run_yaml")
run_command_line = _run_fixture("run_command_line")
run_reducer_class = _run_fixture("run_reducer_class")
run_print_config = _run_fixture("run_print_config")
run_parametric = _run_fixture("run_parametric")
run_parametric_class = _run_fixture("run_parametric_class")
run_bad_parametric = _run_fixture("run_bad_parametric")
run_bad_reshape = _run_fixture("run_bad_reshape")
run_bad_layer = _run_fixture("run_bad_layer")


# ---------------------------------------------------------------------------------------------------------------


def test_print_config_round_trips(run_print_config, tmp_path):
    # first in the file: its second run (the printed config) then overlaps the pool's other runs
    printed = run_print_config.ok().stdout
    assert "Unable to serialize" not in printed + run_print_config.stderr
    init_args = yaml.safe_load(printed)["trainer"]["callbacks"][0]["init_args"]
    assert init_args["layers"] == [3, "head.1"]
    assert init_args["reshape"] == {3: "avg_pool_2_2", "head.1": "mystrat:first_channels"}  # 3 stays an int
    assert init_args["output_key"] == {"head.1": 0}
    assert not list(run_print_config.root.rglob("manifest.json"))  # --print_config trains nothing

    (tmp_path / "printed.yaml").write_text(printed)
    (tmp_path / "mystrat.py").write_text(MYSTRAT)
    CliRun(tmp_path, ["fit", "--config", str(tmp_path / "printed.yaml")]).ok()
    run = run_print_config.run()  # the printed config keeps the first run's default_root_dir
    assert (run.layer(3)["strategy"], run.layer(3)["dim"]) == ("avg_pool_2_2", 64)
    assert (run.layer("head.1")["strategy"], run.layer("head.1")["dim"]) == ("mystrat:first_channels", 3)
    assert run.epochs == [0] and run.manifest["reducer"]["name"] == "pca"


def test_yaml_callback_with_int_and_str_keyed_reshape(run_yaml):
    run = run_yaml.ok().run()
    assert run.path == run_yaml.root / "lightning_logs" / "version_0" / "embeddings"  # next to the logs
    assert run.layers == ["features.1", "head.1"]
    conv = run.layer(3)
    assert (conv["spec"], conv["name"], conv["type"]) == (3, "features.1", "ReLU")
    assert (conv["strategy"], conv["output_shape"], conv["dim"]) == ("avg_pool_2_2", [16, 8, 8], 16 * 2 * 2)
    head = run.layer("head.1")
    assert (head["spec"], head["strategy"], head["output_shape"], head["dim"]) == ("head.1", "flatten", [64], 64)
    assert run.epochs == [0, 1]
    ids, X = run.vectors(3, epoch=1)
    np.testing.assert_array_equal(ids, np.arange(N_VAL))
    assert X.shape == (N_VAL, 64) and (X >= 0).all()  # pooled ReLU output
    assert run.manifest["reducer"]["name"] == "pca"
    for layer in run.layers:
        proj = run.projections(layer)
        assert len(proj) == 2 * N_VAL and {"x", "y", "label"} <= set(proj.columns)
    saved = yaml.safe_load(run_yaml.saved_config())["trainer"]["callbacks"][0]["init_args"]
    assert saved["reshape"] == {3: "avg_pool_2_2", "head.1": "flatten"}


def test_command_line_flags_and_custom_strategies_by_import_path(run_command_line):
    run = run_command_line.ok().run()
    assert run.layers == ["features.0", "features.1", "head.1"]
    assert [run.layer(spec)["spec"] for spec in (2, 3, "head.1")] == [2, 3, "head.1"]
    assert [run.layer(spec)["strategy"] for spec in (2, 3, "head.1")] == [
        "flatten", "mystrat:first_channels", "mystrat.first_channels"
    ]
    assert [run.layer(spec)["dim"] for spec in (2, 3, "head.1")] == [16 * 8 * 8, 3 * 8 * 8, 3]
    _, conv = run.vectors(2, epoch=0)  # features.0, flattened channel-major
    _, relu = run.vectors(3, epoch=0)  # features.1 = ReLU(features.0): its first 3 channels
    np.testing.assert_array_equal(relu, np.maximum(conv[:, : 3 * 64], 0))
    _, head = run.vectors("head.1", epoch=0)
    assert head.shape == (N_VAL, 3)
    assert (head < 0).any()  # recorded before head.2, a ReLU(inplace=True), could change it
    assert run.manifest["reducer"]["name"] == "pca"


def test_reducer_class_path_from_yaml(run_reducer_class):
    run = run_reducer_class.ok().run()
    described = run.manifest["reducer"]["layers"]["head.1"]
    assert described["class"].startswith("sklearn.decomposition.") and described["class"].endswith(".PCA")
    assert described["params"]["n_components"] == 2
    assert run.manifest["reducer"]["name"] is None  # an object, not a named reducer
    assert {"x", "y"} <= set(run.projections("head.1").columns)
    saved = run_reducer_class.saved_config()  # serialized as --print_config would
    assert "Unable to serialize" not in saved + run_reducer_class.stderr
    assert yaml.safe_load(saved)["trainer"]["callbacks"][0]["init_args"]["reducer"]["class_path"] == (
        "sklearn.decomposition.PCA"
    )


def test_parametric_map_from_yaml_by_name_and_by_class_path(run_parametric, run_parametric_class):
    for cli_run, params in ((run_parametric, {"steps": 40, "hidden_layer_sizes": "[32, 32]"}),
                            (run_parametric_class, {"steps": 30, "motion_weight": 2.0})):
        run = cli_run.ok().run()
        layer = run.manifest["reducer"]["layers"]["head.1"]
        assert layer["class"] == "lightning_embeddings.parametric.ParametricMap"
        assert {key: layer["params"][key] for key in params} == params
        assert len(layer["temporal_preservation"]) == 1  # one step between the two epochs' snapshots
        assert run.projections("head.1").groupby("epoch").size().to_dict() == {0: N_VAL, 1: N_VAL}
        assert "Unable to serialize" not in cli_run.saved_config() + cli_run.stderr
    assert run_parametric.run().manifest["reducer"]["name"] == "parametric"
    saved = yaml.safe_load(run_parametric_class.saved_config())["trainer"]["callbacks"][0]["init_args"]["reducer"]
    assert saved["class_path"] == "lightning_embeddings.ParametricMap" and saved["init_args"]["steps"] == 30


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("run_bad_parametric", ["ParametricMap: steps must be an int >= 1, got 0"]),
        ("run_bad_reshape", ["Unknown reshape strategy 'avg_pol_2_2'", "token_mean", "avg_pool_N_N", "flatten"]),
        ("run_bad_layer", ["layer 'head.11' is not a module of DigitsCNN", "Nearest: 9: 'head.1' (Linear)"]),
    ],
)
def test_bad_yaml_value_exits_with_our_message(request, name, fragments):
    run = request.getfixturevalue(name)
    assert run.returncode != 0
    for fragment in fragments:
        assert fragment in run.stderr, f"{fragment!r} not in stderr:\n{run.stderr[-4000:]}"
    assert not list(run.root.rglob("manifest.json"))
