"""The end of a recording, on rank 0: the maps (a ``fast_dev_run`` gets PCA's, in a second), the samples'
dynamics, the pictures, the loggers' copies, and two lines that say where it all is and what to run next."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_embeddings import reduce as reducers
from lightning_embeddings.layout import SAMPLES
from lightning_embeddings.loggers import export_to_loggers
from lightning_embeddings.run import EmbeddingRun


def finish_run(
    dirpath: Path,
    reducer: Optional[reducers.ReducerSpec],
    n_components: int,
    seed: Optional[int],
    align: reducers.Align,
    fit_samples: Optional[int],
    reducer_kwargs: Mapping[str, Any],
    loggers: Sequence[Logger],
    smoke: bool = False,
    progress: bool = True,
    record_train: bool = False,
) -> None:
    """Map the run in ``dirpath`` (``reducer=None``: no map, the samples' dynamics only) and hand it to
    ``loggers``; ``smoke`` (a ``fast_dev_run``): PCA instead of ``reducer``, said once.

    Example::

        finish_run(Path("lightning_logs/version_0/embeddings"), "umap", 2, 0, "last", 20_000, {}, trainer.loggers)
    """
    run = EmbeddingRun(dirpath)
    if smoke and reducer is not None:  # the whole path, in about a second
        name = reducers.display_name(reducer)
        reducer, align, reducer_kwargs = "pca", "last" if align == "aligned" else align, {}
        rank_zero_info(f"lightning-embeddings: fast_dev_run: the map is made with PCA instead of {name}, in the "
                       f"throwaway run {dirpath} (removed when this process exits)")
    maps = run.reduce(reducer, n_components, seed, align=align, fit_samples=fit_samples, progress=progress,
                      **reducer_kwargs)  # and the pictures
    if reducer is None:
        run.write_samples()
    export_to_loggers(run, loggers, maps.drawn)
    rank_zero_info(f"lightning-embeddings: {len(run.snapshots)} snapshots of {len(run.layers)} layers in {dirpath}; "
                   f"read them with lightning_embeddings.EmbeddingRun({str(dirpath)!r})")
    if (dirpath / SAMPLES).is_file():
        split = " --split train" if record_train else ""
        galleries = _galleries(run) if (run.manifest.get("pictures") or {}).get("png") else []
        shown = f"; as they are: {', '.join(map(str, galleries))}" if galleries else ""
        rank_zero_info(f"lightning-embeddings: the samples most likely mislabelled, per layer: "
                       f"lightning-embeddings samples {dirpath} --layer {run.layers[-1]}{split}{shown}")


def _galleries(run: EmbeddingRun) -> list[Path]:
    """Each layer's suspects gallery (``<layer>-suspects.png``), where its samples have labels."""
    from lightning_embeddings.plot import plot_suspects  # matplotlib, only where pictures are drawn

    return [path for column in run.layers if (path := plot_suspects(run, column)) is not None]


def say_nothing_recorded(stage: str, validated: bool) -> None:
    """Warn that ``stage`` recorded nothing (``validated``: validation ran, but held no batches), so no run is
    written."""
    why = ("its validations held no batches" if validated else
           "no validation ran (limit_val_batches=0, no val_dataloader, or fit ended before the first one)")
    rank_zero_warn(f"EmbeddingCollector recorded nothing during {stage}: {why}. No run is written.")


def say_kept(dirpath: Path, kept: int, exception: BaseException) -> None:
    """After a fit stopped by ``exception``: how many complete snapshots are kept in ``dirpath`` and the command
    that makes their maps and pictures (nothing said where none are kept)."""
    if kept:
        rank_zero_warn(f"lightning-embeddings: the fit stopped ({type(exception).__name__}); {kept} complete "
                       f"snapshot{'s' * (kept != 1)} kept in {dirpath}, without new maps or pictures. Make them "
                       f"with: lightning-embeddings reduce {dirpath}")
