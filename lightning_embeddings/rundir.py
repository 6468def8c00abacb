"""Where a run goes: the default directory (where ``ModelCheckpoint`` puts ``checkpoints/``), the first free
``embeddings``, ``embeddings-v1``, ... there, the run's lock held by rank 0, the run a resumed fit continues, a
``fast_dev_run``'s throwaway folder, and the note a spawned rank 0 leaves the main process. Lightning-free: the
callback passes in what the ``Trainer`` knows (``on_rank_zero`` takes the trainer, for its strategy's broadcast).
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, TypeVar

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_embeddings.layout import (
    HOLDER_FILE,
    LOCK_FILE,
    LONG_PROJECTIONS,
    MANIFEST,
    PLOTS,
    PROJECTIONS,
    SAMPLES,
    VECTORS,
    holds_run,
)
from lightning_embeddings.lock import RunLock, RunLockedError, remove_lock_files
from lightning_embeddings.store import check_manifest, read_manifest, remove_partials

T = TypeVar("T")


class RunDirectory:
    """Which directory a collector's run is in, in every process, and rank 0's hold on it: its lock, and whether
    this process made the folder (then it is removed again if nothing was written into it).

    Args:
        requested: the collector's ``dirpath`` (None: the default, beside the first logger's files).

    Example::

        hold = RunDirectory()
        hold.path = hold.choose(fresh=True, root=Path("lightning_logs"))  # lightning_logs/embeddings, locked
        hold.release()
    """

    def __init__(self, requested: Optional[Path] = None) -> None:
        self.requested = requested
        self.saved: dict[str, Any] = {}  # a checkpoint's state (resume_state and run_id): the fit resumes its run
        self._path: Optional[Path] = None
        self._origin = (os.getpid(), uuid.uuid4().hex)  # to find the run again after ddp_spawn's worker chose it
        self._lock: Optional[RunLock] = None
        self._created: Optional[Path] = None

    @property
    def path(self) -> Optional[Path]:
        """The run directory, once chosen; also in the main process after a ``ddp_spawn`` fit."""
        note = spawn_note(self._origin[1])
        if os.getpid() == self._origin[0] and note.is_file():  # a spawned rank 0 chose it
            self._path = Path(note.read_text())
            note.unlink(missing_ok=True)
        return self._path

    @path.setter
    def path(self, value: Optional[Path]) -> None:
        self._path = value

    def choose(self, fresh: bool, loggers: Sequence[Any] = (), root: Optional[Path] = None, smoke: bool = False) -> Path:
        """Rank 0: lock the run directory and return it: the one chosen before (validate or test after a fit, a
        resumed fit) unless ``fresh`` (a new fit), else ``requested``, else the first free ``embeddings``, ... beside
        the first of ``loggers`` or in ``root`` (a ``fast_dev_run``, ``smoke``: in a throwaway folder). A fresh or
        resumed run is cleaned of what a killed writer left."""
        clean = fresh or bool(self.saved)
        if self.path is not None and not fresh:
            return self.open(self.path, None, clean)
        if self.requested is not None:
            return self.open(self.requested, None, clean)
        return self.open(None, throwaway() if smoke else default_parent(loggers, root or Path.cwd()), clean)

    def resume(self, root: Path) -> Path:
        """Rank 0, a fit resumed from a checkpoint that holds ``saved``: lock its run, or the copy this trainer
        points at (see :func:`resumed_dirpath`; ``root``: its ``default_root_dir``)."""
        self.path = resumed_dirpath(self.saved, self.requested, root)
        return self.choose(fresh=False)

    def load(self, state: Mapping[str, Any]) -> None:
        """A checkpoint's state (:func:`resume_state` and the ``run_id``): the run a resumed fit continues."""
        if state.get("dirpath"):
            self.path = Path(state["dirpath"])
            self.saved = dict(state)

    def tell_main_process(self) -> None:
        """In a spawned worker (``ddp_spawn``), note the chosen directory for the process that started it."""
        if os.getpid() != self._origin[0]:
            spawn_note(self._origin[1]).write_text(str(self._path))

    def open(self, dirpath: Optional[Path], parent: Optional[Path], clean: bool) -> Path:
        """Lock ``dirpath`` (keeping a lock already held on it), or the first of ``parent``'s ``embeddings``,
        ``embeddings-v1``, ... that holds no run and no writer, as ``ModelCheckpoint`` versions; with ``clean``,
        finish or remove what a killed writer left there. Return the directory.

        Raises:
            PermissionError: the directory cannot be written.
            RunLockedError: another process writes ``dirpath``.
        """
        if parent is None:
            if self._lock is not None and self._lock.dirpath != dirpath:  # resumed: setup's choice gives way
                self.release()
            if self._lock is None:
                self._take(dirpath)
        else:
            self.release()
            candidates = (parent / ("embeddings" if v == 0 else f"embeddings-v{v}") for v in itertools.count())
            dirpath = next(c for c in candidates if not holds_run(c) and self._take(c, quietly=True))
        if clean:
            stray = remove_partials(dirpath)
            if stray:
                rank_zero_info(f"EmbeddingCollector: removed {len(stray)} unfinished files a stopped writer left in "
                               f"{dirpath}: {', '.join(p.name for p in stray)}")
        return dirpath

    def release(self) -> None:
        """Release the lock; remove the run directory again if this process made it and wrote nothing there."""
        lock, self._lock = self._lock, None
        if lock is None:
            return
        lock.release()
        created, self._created = self._created, None
        if created is not None and not any(p.is_file() and p.name not in (LOCK_FILE, HOLDER_FILE)
                                           for p in created.rglob("*")):
            remove_lock_files(created)
            shutil.rmtree(created, ignore_errors=True)

    def _take(self, dirpath: Path, quietly: bool = False) -> bool:
        """Take ``dirpath``'s lock (False when another process holds it and ``quietly``)."""
        existed = dirpath.exists()
        check_writable(dirpath)
        try:
            self._lock = RunLock(dirpath).acquire()
        except RunLockedError:
            if quietly:
                return False
            raise
        self._created = None if existed else dirpath
        return True


def on_rank_zero(trainer: Any, work: Callable[[], T]) -> T:
    """Do ``work`` on rank 0 of ``trainer`` (choosing or locking the run directory) and give every rank its
    result, or raise its error on every rank."""
    result, error = None, None
    if trainer.is_global_zero:
        try:
            result = work()
        except Exception as err:  # raised below on every rank, so none waits for rank 0 forever
            error = err
    result, error = trainer.strategy.broadcast((result, error))
    if error is not None:
        raise error
    return result


def clear_run(dirpath: Path) -> None:
    """Remove the run in ``dirpath`` (``overwrite=True``): its manifest, snapshots, maps, samples and pictures; what
    else the folder holds stays."""
    for old in [dirpath / MANIFEST, dirpath / LONG_PROJECTIONS, dirpath / SAMPLES,
                *(dirpath / VECTORS).glob("*.parquet"), *(dirpath / PROJECTIONS).glob("*.parquet"),
                *(dirpath / PLOTS).glob("*")]:
        old.unlink(missing_ok=True)


def refuse_shared(mine: Optional[Path], others: Sequence[Optional[Path]]) -> None:
    """Two collectors of one Trainer never write one directory: ``mine`` is this collector's requested dirpath,
    ``others`` those of the Trainer's other collectors of the stage (None: the default directory).

    Raises:
        ValueError: another resolves to the same directory, naming it.
    """
    resolved = mine.resolve() if mine is not None else None
    if any((other.resolve() if other is not None else None) == resolved for other in others):
        where = str(resolved) if resolved is not None else "the default run directory (<log_dir>/embeddings)"
        raise ValueError(f"EmbeddingCollector: two collectors of this Trainer would write to {where}. Give each its "
                         "own dirpath=..., or record all the layers with one collector.")


def replace_run(dirpath: Path, overwrite: bool, clear: bool = True) -> None:
    """A new fit records into ``dirpath``, which holds a run: remove that run (``overwrite``; only where ``clear``,
    rank 0 under DDP) or refuse.

    Raises:
        FileExistsError: without ``overwrite``, naming the ways out.
    """
    if not overwrite:
        raise FileExistsError(
            f"EmbeddingCollector: {dirpath} already holds a run. Pass another dirpath, delete it, set overwrite=True "
            "to replace it, or resume its fit with ckpt_path=..."
        )
    if clear:
        clear_run(dirpath)


def resume_state(dirpath: Optional[Path], root: Optional[Path]) -> dict[str, Optional[str]]:
    """What a checkpoint keeps of where the run is: its path, and its path relative to the trainer's
    ``default_root_dir`` where it lies inside (a copied experiment finds its own copy by it)."""
    if dirpath is None or root is None:
        return {"dirpath": str(dirpath) if dirpath is not None else None, "relative": None}
    run, base = dirpath.resolve(), root.resolve()
    return {"dirpath": str(dirpath), "relative": str(run.relative_to(base)) if run.is_relative_to(base) else None}


def resumed_dirpath(saved: Mapping[str, Any], requested: Optional[Path], root: Path) -> Path:
    """Where a resumed fit records: the checkpoint's run (``saved``: :func:`resume_state` and the ``run_id``),
    unless the new trainer points elsewhere, as ``ModelCheckpoint`` follows its new dirpath: the collector's own
    ``requested`` dirpath, or the same place under a new ``default_root_dir`` (``root``) where that holds the
    checkpoint's run (a copied or moved experiment); said once.

    Raises:
        FileExistsError: ``requested`` holds another run.
    """
    checkpointed, run_id = Path(saved["dirpath"]), saved.get("run_id")
    moved = root / saved["relative"] if saved.get("relative") else None
    if requested is not None and requested.resolve() != checkpointed.resolve():
        target = requested
        if holds_run(target) and read_manifest(target).get("run_id") != run_id:
            raise FileExistsError(
                f"EmbeddingCollector: this fit resumes the run in {checkpointed} (from its checkpoint), but dirpath "
                f"{target} holds another run. Pass the dirpath of that run or of a copy of it, or a new one."
            )
    elif (moved is not None and moved.resolve() != checkpointed.resolve() and holds_run(moved)
          and read_manifest(moved).get("run_id") == run_id):
        target = moved
    else:
        return checkpointed
    rank_zero_warn(f"EmbeddingCollector: resumed from a checkpoint of the run in {checkpointed}; this fit continues "
                   f"the run in {target}, where this trainer points (as ModelCheckpoint follows its new dirpath). "
                   f"{checkpointed} is not changed.")
    return target


def continued_manifest(dirpath: Path, layers: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The manifest of the run in ``dirpath`` that a resumed fit, or validate/test after fit, adds to (empty where
    there is none), checked: it records the same ``layers`` (column, reshape) as the collector.

    Raises:
        RunError: the manifest is not one this version reads.
        ValueError: the run records other layers, naming both.
    """
    if not (dirpath / MANIFEST).is_file():
        return {}
    manifest = read_manifest(dirpath)
    check_manifest(manifest, dirpath / MANIFEST)
    theirs = [(f["column"], f["strategy"]) for f in manifest.get("layers", [])]
    if theirs and theirs != list(layers):
        raise ValueError(
            f"EmbeddingCollector: {dirpath} holds a run of layers {theirs} (name, reshape), but this collector "
            f"records {list(layers)}. Record the same layers to add to that run, or pass another dirpath."
        )
    return manifest


def default_parent(loggers: Sequence[Any], root: Path) -> Path:
    """Where ``ModelCheckpoint`` puts its ``checkpoints/``: ``<save_dir>/<name>/<version>`` of the first logger (one
    folder per run also for W&B and MLflow, whose ``log_dir`` has no version), else ``root``
    (``default_root_dir``)."""
    if not loggers:
        return root
    logger = loggers[0]
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(logger.save_dir or root, str(logger.name or ""), version)


def throwaway() -> Path:
    """A fresh temporary folder for a ``fast_dev_run``'s run, removed when the process exits (a smoke test's reruns
    never pile up, in the cwd or in the temporary folder)."""
    path = Path(tempfile.mkdtemp(prefix="lightning-embeddings-fast_dev_run-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def spawn_note(token: str) -> Path:
    """Where a spawned rank 0 notes the run directory it chose, for the process that started it (``ddp_spawn``)."""
    return Path(tempfile.gettempdir()) / f"lightning-embeddings-{token}.dirpath"


def check_writable(dirpath: Path) -> None:
    """Raise ``PermissionError`` naming ``dirpath`` where it cannot be made or written."""
    probe = dirpath / f".write-test-{os.getpid()}"
    try:
        dirpath.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"EmbeddingCollector cannot write to dirpath {str(dirpath)!r} ({err.strerror or err}); pass a dirpath "
            "you can write to."
        ) from err
