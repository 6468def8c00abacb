"""One writer at a time: an exclusive, OS-level lock on a run directory (``filelock``), held for a whole fit,
``reduce``, ``plot`` or ``export``. The OS releases it when the holder exits, also on a crash. Readers never take it."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional

from filelock import FileLock, Timeout

from lightning_embeddings.layout import HOLDER_FILE, LOCK_FILE


class RunLockedError(RuntimeError):
    """Another process is writing the run directory."""


class RunLock:
    """An exclusive lock on ``dirpath``; :meth:`acquire` fails at once when another process holds it. Within one
    process the lock is re-entrant (a fit's collector holds it while its ``EmbeddingRun.reduce`` takes it again).

    Example::

        with RunLock(Path("lightning_logs/version_0/embeddings")):
            ...  # write the run

    Raises:
        RunLockedError: another process holds the lock; the message names the directory and the holder's pid.
    """

    def __init__(self, dirpath: Path) -> None:
        self.dirpath = Path(dirpath)
        self._lock: Optional[FileLock] = None

    def acquire(self) -> "RunLock":
        if self._lock is not None:
            return self
        self.dirpath.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.dirpath / LOCK_FILE, timeout=0, thread_local=False, is_singleton=True)
        try:
            lock.acquire()
        except Timeout:
            raise RunLockedError(
                f"{self.dirpath} is being written by another process ({self._holder()}); wait for it to finish, or "
                "write to another directory. Reading the run needs no lock."
            ) from None
        self._lock = lock
        if lock.lock_counter == 1:
            (self.dirpath / HOLDER_FILE).write_text(f"pid {os.getpid()} on {socket.gethostname()}\n")
        return self

    def release(self) -> None:
        """Release the lock (a no-op when not held); the lock file stays, as filelock's do."""
        lock, self._lock = self._lock, None
        if lock is None:
            return
        if lock.lock_counter == 1:
            (self.dirpath / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()

    def _holder(self) -> str:
        try:
            return (self.dirpath / HOLDER_FILE).read_text().strip()
        except OSError:
            return "pid unknown"

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_lock_files(dirpath: Path) -> None:
    """Remove the lock file of a directory nobody holds (before removing the directory itself)."""
    for name in (LOCK_FILE, HOLDER_FILE):
        (Path(dirpath) / name).unlink(missing_ok=True)
