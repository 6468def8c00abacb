"""Real multi-process DDP on the CPU (gloo): two ranks, an odd validation set that DistributedSampler pads, one file
per rank and snapshot, the map written once by rank 0 while the other rank waits.

Each test writes a small training script into ``tmp_path`` and runs it as separate processes, as ``torchrun`` or
Lightning's own launcher would, then reads what they wrote from this (the parent) process.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from conftest import EXAMPLES, DigitsCNN, DigitsDataModule

from lightning_embeddings import EmbeddingRun

pytestmark = pytest.mark.slow  # DDP ranks in their own processes

TESTS = Path(__file__).resolve().parent
N_VAL = 449  # the digits validation set: odd, so DistributedSampler pads rank 1 with a duplicate of sample 0
N_TRAIN = 1347  # the training set cut to an odd size for record_train (the whole set: 1348)
RANKS = 2
TIMEOUT_S = 120  # per launch; a healthy run takes well under a minute

SCRIPT = textwrap.dedent(
    '''
    """One DDP training run with an EmbeddingCollector; its settings come as JSON in argv[1]."""
    import importlib
    import json
    import sys
    import time
    from datetime import timedelta
    from pathlib import Path

    import lightning.pytorch as pl
    import torch

    from digits import DigitsCNN, DigitsDataModule
    from lightning_embeddings import EmbeddingCollector

    cfg = json.loads(Path(sys.argv[1]).read_text())
    out = Path(cfg["out"])
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)

    reducer = cfg["reducer"]
    if isinstance(reducer, dict):  # a user's estimator: {"module": ..., "class": ..., "kwargs": {...}}
        reducer = getattr(importlib.import_module(reducer["module"]), reducer["class"])(**reducer["kwargs"])
    collector = EmbeddingCollector(
        layers=cfg["layers"], reshape={k: v for k, v in {3: "avg_pool_2_2", "head.1": "flatten"}.items() if k in cfg["layers"]},
        reducer=reducer, reducer_kwargs=cfg["reducer_kwargs"], plots=False, record_train=cfg["record_train"],
        dirpath=out / "embeddings",
    )


    class Data(DigitsDataModule):
        """Digits, with the training set cut to an odd size when asked (DistributedSampler then pads it)."""

        def setup(self, stage):
            super().setup(stage)
            if cfg["train_samples"] is not None:
                self.train_set = torch.utils.data.Subset(self.train_set, range(cfg["train_samples"]))


    class ShortTimeout(pl.Callback):
        """Once every rank is up, give the default process group a short timeout: a rank left waiting on it for
        longer fails (checked by hand: a plain torch.distributed.barrier() in on_fit_end while rank 0 sleeps 6 s kills
        rank 1 with "Timed out waiting 3000ms"). Start-up, while the ranks import, keeps the default 30 minutes."""

        def setup(self, trainer, pl_module, stage):
            if cfg["ddp_timeout_s"] is not None:
                from torch.distributed.distributed_c10d import _set_pg_timeout

                _set_pg_timeout(timedelta(seconds=cfg["ddp_timeout_s"]))

    model = DigitsCNN()
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp",
        max_epochs=2, limit_train_batches=cfg["limit_train_batches"], num_sanity_val_steps=2,
        default_root_dir=out, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[ShortTimeout(), collector],
    )
    trainer.fit(model, Data())
    fit_returned = time.time()
    rank = trainer.global_rank
    projections = sorted(p.name for p in (collector.dirpath / "projections").glob("*.parquet"))
    if rank == 0:
        torch.save(model.state_dict(), out / "final.pt")
    children = []
    launcher = trainer.strategy.launcher
    if rank == 0 and getattr(launcher, "procs", None):  # Lightning launched the other rank: wait for its exit code
        children = [proc.wait(timeout=60) for proc in launcher.procs]
    (out / f"done-rank{rank}.json").write_text(json.dumps({
        "rank": rank,
        "world_size": trainer.world_size,
        "status": trainer.state.status.value,
        "dirpath": str(collector.dirpath),
        "hooks": sum(len(m._forward_hooks) for m in model.modules()),
        "projections_when_fit_returned": projections,
        "fit_returned": fit_returned,
        "children_exit_codes": children,
    }))
    '''
)

SLOW_REDUCER = textwrap.dedent(
    '''
    """A user's reducer whose fit takes long: rank 0 spends it in on_fit_end while the other ranks wait."""
    import json
    import time
    from pathlib import Path

    from sklearn.decomposition import PCA


    class SlowPCA:
        def __init__(self, seconds, log):
            self.seconds = seconds
            self.log = log

        def fit(self, X):
            started = time.time()
            time.sleep(self.seconds)
            self.pca_ = PCA(n_components=2, random_state=0).fit(X)
            with open(self.log, "a") as f:
                f.write(json.dumps({"started": started, "ended": time.time(), "rows": len(X)}) + "\\n")
            return self

        def transform(self, X):
            return self.pca_.transform(X)
    '''
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(EXAMPLES), str(TESTS), env.get("PYTHONPATH", "")])
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _write_script(tmp_path: Path, **cfg) -> tuple[Path, Path]:
    out = tmp_path / "out"
    out.mkdir()
    cfg = {"out": str(out), "layers": [3, "head.1"], "reducer": "pca", "ddp_timeout_s": None,
           "limit_train_batches": 6, "record_train": False, "train_samples": None, "reducer_kwargs": {}, **cfg}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    return script, out


def _launch_each_rank(tmp_path: Path, script: Path) -> list[tuple[int, str]]:
    """Start one process per rank ourselves (as torchrun does: LOCAL_RANK set, so Lightning launches nothing) and
    return each rank's exit code and output."""
    env = _env(tmp_path, _free_port())
    logs = [tmp_path / f"rank{rank}.log" for rank in range(RANKS)]
    procs = []
    for rank, log in enumerate(logs):
        with open(log, "w") as f:  # the child keeps its own copy of the descriptor
            procs.append(subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / "cfg.json")], cwd=tmp_path, stdout=f,
                stderr=subprocess.STDOUT, env={**env, "LOCAL_RANK": str(rank), "NODE_RANK": "0", "WORLD_SIZE": str(RANKS)},
            ))
    deadline = time.monotonic() + TIMEOUT_S
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            codes.append(proc.wait())
    return [(code, log.read_text()) for code, log in zip(codes, logs)]


def _launch_with_lightning(tmp_path: Path, script: Path) -> tuple[int, str]:
    """Run the script once; Lightning's launcher starts rank 1 as a child of rank 0."""
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "cfg.json")], cwd=tmp_path,
                          env=_env(tmp_path, _free_port()), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=TIMEOUT_S, check=False)
    return proc.returncode, proc.stdout


def _done(out: Path) -> list[dict]:
    return [json.loads((out / f"done-rank{rank}.json").read_text()) for rank in range(RANKS)]


def test_ddp_two_ranks_odd_validation_set_one_file_per_rank_no_duplicates(tmp_path):
    script, out = _write_script(tmp_path)
    results = _launch_each_rank(tmp_path, script)
    for rank, (code, log) in enumerate(results):
        assert code == 0, f"rank {rank} exited {code}:\n{log[-4000:]}"
    done = _done(out)
    dirpath = out / "embeddings"
    assert [d["rank"] for d in done] == [0, 1] and {d["world_size"] for d in done} == {2}
    assert {d["status"] for d in done} == {"finished"}
    assert {d["dirpath"] for d in done} == {str(dirpath)}  # every rank wrote into one run directory
    assert [d["hooks"] for d in done] == [0, 0]

    run = EmbeddingRun(dirpath)
    assert run.epochs == [0, 1]
    assert len(run.snapshots) == 2  # the sanity check recorded nothing, every validation once
    assert len({s["name"] for s in run.snapshots}) == 2
    # each snapshot: exactly one file per rank, nothing else (no single-process name, no partial file)
    names = sorted(p.name for p in (dirpath / "vectors").iterdir())
    assert names == sorted(f"{s['name']}-rank{r}.parquet" for s in run.snapshots for r in range(RANKS))

    datamodule = DigitsDataModule()
    datamodule.setup("validate")
    images, labels = datamodule.val_set.tensors
    reference = DigitsCNN()
    reference.load_state_dict(torch.load(out / "final.pt"))
    fresh = {}
    handle = reference.head[1].register_forward_hook(lambda m, a, o: fresh.update(v=o.detach().clone()))
    reference.eval()
    with torch.no_grad():
        reference(images)
    handle.remove()

    for snapshot in run.snapshots:
        rank_tables = [pq.read_table(dirpath / "vectors" / f"{snapshot['name']}-rank{r}.parquet") for r in range(RANKS)]
        # DistributedSampler(shuffle=False) over 449 samples: rank 0 gets 0, 2, ..., 448; rank 1 gets 1, 3, ..., 447
        # and then sample 0 again as padding, which is not written: every sample is in the files exactly once
        ids = [t.column("sample_id").to_numpy() for t in rank_tables]
        assert ids[0].tolist() == list(range(0, N_VAL, 2))
        assert ids[1].tolist() == list(range(1, N_VAL, 2))
        assert sum(len(t) for t in rank_tables) == N_VAL
        # sample_id is the true dataset index: every row's stored label is the dataset's label at that index
        for table in rank_tables:
            stored = table.column("label").to_numpy()
            assert np.array_equal(stored, labels.numpy()[table.column("sample_id").to_numpy()])
            assert set(table.column("epoch").to_pylist()) == {snapshot["epoch"]}
        # the reader drops the padding: every sample exactly once, in order
        for layer in run.layers:
            read_ids, vectors = run.vectors(layer, epoch=snapshot["epoch"])
            assert read_ids.tolist() == list(range(N_VAL)) and len(vectors) == N_VAL
        table = run.table(epochs=[snapshot["epoch"]])
        assert len(table) == N_VAL and table["sample_id"].is_unique
    # pandas and DuckDB on the raw files count every sample once
    raw = pd.read_parquet(dirpath / "vectors", columns=["epoch", "sample_id"])
    assert raw.groupby("epoch").size().to_dict() == {0: N_VAL, 1: N_VAL}
    assert duckdb.sql(f"SELECT count(*) FROM '{dirpath}/vectors/*.parquet'").fetchall() == [(2 * N_VAL,)]

    # the last snapshot's vectors are those of a fresh single-process forward pass of the final weights
    ids, last = run.vectors("head.1", epoch=1)
    np.testing.assert_allclose(last, fresh["v"].numpy()[ids], rtol=1e-4, atol=1e-5)
    _, first_epoch = run.vectors("head.1", epoch=0)
    assert not np.allclose(first_epoch, last)  # epoch 0 was recorded before epoch 1's training

    # the map: written once (by rank 0), every epoch and every sample in it once, present on both ranks after fit
    for layer in run.layers:
        maps = run.projections(layer)
        assert maps.groupby("epoch").size().to_dict() == {0: N_VAL, 1: N_VAL}
        assert not maps.duplicated(["epoch", "sample_id"]).any()
    assert sorted(p.name for p in (dirpath / "projections").iterdir()) == ["features.1.parquet", "head.1.parquet"]
    assert [d["projections_when_fit_returned"] for d in done] == [["features.1.parquet", "head.1.parquet"]] * 2
    assert run.manifest["reducer"]["name"] == "pca"
    assert [p.name for p in dirpath.rglob(".*")] == [".lock"]  # no temporary file left by any rank, only the lock
    assert "Traceback" not in results[0][1] + results[1][1]

    # what each sample is (issue 25): one file per rank, each sample once (not the padding), each its own image
    assert sorted(p.name for p in (dirpath / "inputs").iterdir()) == ["val-rank0.parquet", "val-rank1.parquet"]
    assert pq.read_table(dirpath / "inputs" / "val-rank1.parquet").column("sample_id").to_pylist() == list(range(1, N_VAL, 2))
    kept = run.inputs("val")
    assert kept["sample_id"].tolist() == list(range(N_VAL))
    for sample_id, png in zip(kept["sample_id"], kept["image"]):
        image = images[sample_id, 0].numpy()
        expected = np.round((image - image.min()) / (image.max() - image.min()) * 255)
        assert np.abs(np.asarray(Image.open(io.BytesIO(png)), dtype=float) - expected).max() <= 1, sample_id


def test_ddp_slow_reduction_on_rank_zero_does_not_time_out_the_other_rank(tmp_path):
    """Rank 0 fits a reducer for longer than the process group's timeout (3 s); rank 1 waits for it and exits 0.

    Launched the usual way: the script is started once and Lightning's launcher starts rank 1.
    """
    (tmp_path / "slow_reducer.py").write_text(SLOW_REDUCER)
    fit_log = tmp_path / "fits.jsonl"
    script, out = _write_script(
        tmp_path, layers=["head.1"], ddp_timeout_s=3, limit_train_batches=1.0, record_train=True, train_samples=N_TRAIN,
        reducer={"module": "slow_reducer", "class": "SlowPCA", "kwargs": {"seconds": 5.0, "log": str(fit_log)}},
    )
    code, log = _launch_with_lightning(tmp_path, script)
    assert code == 0, log[-4000:]
    done = _done(out)
    assert done[0]["children_exit_codes"] == [0], log[-4000:]  # rank 1's own exit code
    assert {d["status"] for d in done} == {"finished"}
    fits = [json.loads(line) for line in fit_log.read_text().splitlines()]
    # fitted once, by one rank, on the last epoch (align="last", the default), without DDP's padding duplicates
    assert len(fits) == 1 and fits[0]["rows"] == N_VAL + N_TRAIN
    assert fits[0]["ended"] - fits[0]["started"] >= 5.0
    # rank 1 came out of fit only after rank 0's reduction had ended, and found the map there
    assert done[1]["fit_returned"] >= fits[0]["ended"]
    assert done[1]["projections_when_fit_returned"] == ["head.1.parquet"]
    run = EmbeddingRun(out / "embeddings")
    assert run.epochs == [0, 1]
    assert run.manifest["reducer"]["layers"]["head.1"]["class"] == "slow_reducer.SlowPCA"
    maps = run.projections("head.1")
    assert maps.groupby(["split", "epoch"]).size().to_dict() == {("train", 0): N_TRAIN, ("train", 1): N_TRAIN,
                                                                  ("val", 0): N_VAL, ("val", 1): N_VAL}
    # record_train under DDP: each rank its share of the training set in a fixed order, every sample exactly once
    raw = pd.read_parquet(out / "embeddings" / "vectors", columns=["split", "epoch", "sample_id", "label"])
    train = raw[raw.split == "train"]
    for epoch in (0, 1):
        assert sorted(train[train.epoch == epoch]["sample_id"]) == list(range(N_TRAIN))
    datamodule = DigitsDataModule()
    datamodule.setup("fit")
    labels = datamodule.train_set.tensors[1].numpy()
    assert (train["label"].to_numpy() == labels[train["sample_id"].to_numpy()]).all()
    assert len(run.samples("head.1", split="train")) == N_TRAIN


def test_ddp_parametric_map_is_made_once_on_rank_zero_from_every_rank_s_rows(tmp_path):
    script, out = _write_script(tmp_path, layers=["head.1"], reducer="parametric", reducer_kwargs={"steps": 60})
    results = _launch_each_rank(tmp_path, script)
    for rank, (code, log) in enumerate(results):
        assert code == 0, f"rank {rank} exited {code}:\n{log[-4000:]}"
    done = _done(out)
    assert [d["projections_when_fit_returned"] for d in done] == [["head.1.parquet"]] * 2
    run = EmbeddingRun(out / "embeddings")
    maps = run.projections("head.1")
    assert maps.groupby("epoch").size().to_dict() == {0: N_VAL, 1: N_VAL}  # both ranks' rows, the padding not twice
    assert not maps.duplicated(["epoch", "sample_id"]).any() and np.isfinite(maps[["x", "y"]].to_numpy()).all()
    layer = run.manifest["reducer"]["layers"]["head.1"]
    assert run.manifest["reducer"]["name"] == "parametric" and layer["samples"] == N_VAL
    assert layer["params"]["steps"] == 60 and len(layer["temporal_preservation"]) == 1
    assert sum("fitting parametric" in log for _, log in results) == 1  # rank 0 alone made the map
    assert "Traceback" not in results[0][1] + results[1][1]

