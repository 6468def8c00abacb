"""What each ``lightning-embeddings`` command does, given its parsed arguments (:mod:`cli_parser`): list a model's
modules, show a run, reduce it again, rank its samples, draw it, export it; ``COMMANDS`` maps each name to its
function.

Example::

    COMMANDS["info"](build_parser().parse_args(["info", "lightning_logs/version_0/embeddings"]))
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

from lightning_embeddings.cli_model import load_model
from lightning_embeddings.cli_parser import GALLERY_MAX, PROG, CommandError, UsageError
from lightning_embeddings.faithfulness import FAITHFUL, FAITHFUL_MOTION, NEIGHBOURS_WRONG, faithful_paths_advice, map_advice
from lightning_embeddings.layout import TENSORBOARD, projection_file
from lightning_embeddings.reduce import FIT_SAMPLES, REDUCER_NAMES, check_reducer_kwargs


def _open_run(path: str):
    from lightning_embeddings.run import EmbeddingRun

    directory = Path(path)
    if not directory.exists():
        raise CommandError(f"{path} does not exist; give a run directory, e.g. lightning_logs/version_0/embeddings.")
    return EmbeddingRun(directory)


def _columns(run, layers: Optional[Sequence[str]]) -> Optional[list[str]]:
    """Layer arguments as the run's column names: a name as given, else a number as an index or spec."""
    if layers is None:
        return None
    columns = []
    for layer in layers:
        try:
            columns.append(run.column(layer))
        except ValueError:
            if not layer.lstrip("-").isdigit():
                raise
            columns.append(run.column(int(layer)))
    return columns


def _layers(args: argparse.Namespace) -> None:
    import torch

    from lightning_embeddings.layers import module_table

    model = load_model(args.target, args.model_class)
    example = None
    if args.input_shape is not None:
        dtype = getattr(torch, args.dtype)
        if dtype.is_floating_point:
            example = torch.randn(args.input_shape, generator=torch.Generator().manual_seed(0)).to(dtype)
        else:
            example = torch.zeros(args.input_shape, dtype=dtype)
    rows = module_table(model, example)
    table = [
        [row["index"], row["name"], row["type"], f"{row['params']:,}"]
        + ([_format_shape(row["output_shape"])] if example is not None else [])
        for row in rows
    ]
    header = ["index", "name", "type", "params"] + (["output shape"] if example is not None else [])
    print(_format_table(header, table, right={0, 3}))
    total = sum(row["params"] for row in rows)
    inner = [row for row in rows[1:-1] if example is None or row["output_shape"] is not None]
    pick = inner[-1] if inner else rows[-1]  # the last module before the output: an embedding, often
    print(f"\n{len(rows)} modules, {total:,} parameters. Record some with EmbeddingCollector(layers=[...]), by "
          f"index or by name: layers=[{pick['index']}] and layers=[{pick['name']!r}] both record {pick['name']}.")
    if example is not None and any(row["output_shape"] is None for row in rows):
        print('"-": not called in the forward pass (or returned no tensor): recording it would give nothing.')


def describe_run(run) -> dict[str, Any]:
    """What ``info`` shows, as a JSON-friendly dict: path, layers, snapshots with their samples, reducer."""
    layers = [
        {key: facts.get(key) for key in ("column", "index", "type", "strategy", "output_shape", "dim")}
        for facts in run.manifest["layers"]
    ]
    snapshots = [{**snapshot, "samples": len(run.rows(snapshot))} for snapshot in _progress(run.snapshots)]
    reducer = run.manifest.get("reducer")
    return {"path": str(run.path), "layers": layers, "snapshots": snapshots, "reducer": reducer}


def _progress(items: list) -> Any:
    from tqdm.auto import tqdm

    return tqdm(items, desc="counting samples", unit="snapshot", delay=2, leave=False)


def _info(args: argparse.Namespace) -> None:
    run = _open_run(args.run_dir)
    facts = describe_run(run)
    if args.json:
        print(json.dumps(facts, indent=2, default=str))
        return
    print(f"run: {facts['path']}")
    print(f"\nlayers ({len(facts['layers'])}):")
    rows = [
        [layer["column"], layer["index"], layer["type"], layer["strategy"], _format_shape(layer["output_shape"]),
         layer["dim"]]
        for layer in facts["layers"]
    ]
    print(_indent(_format_table(["layer", "index", "type", "strategy", "output shape", "dim"], rows, right={1, 5})))
    print(f"\nsnapshots ({len(facts['snapshots'])}):")
    rows = [[s["name"], s["stage"], s["epoch"], s["step"], s["samples"]] for s in facts["snapshots"]]
    print(_indent(_format_table(["snapshot", "stage", "epoch", "step", "samples"], rows, right={2, 3, 4})))
    reducer = facts["reducer"]
    if not reducer:
        print("\nreducer: none (no maps). Make them: lightning-embeddings reduce " + args.run_dir)
        return
    how = _print_reducer(reducer)
    _print_faithfulness(reducer.get("layers") or {}, [snapshot["name"] for snapshot in facts["snapshots"]], how,
                        args.run_dir)


def _print_reducer(reducer: dict[str, Any]) -> str:
    """The reducer's line and each layer's notes (not reduced, collapsed, rows left out); how its maps were made
    (``parametric`` or the alignment), for the advice."""
    fitted = reducer.get("fitted_on") or {}
    name = reducer.get("name") or next(
        (record.get("class") for record in (reducer.get("layers") or {}).values() if record.get("class")), "custom"
    )
    align = reducer.get("align", "last")
    where = {"last": f"fitted on {fitted.get('name')}", "joint": f"fitted on every fit snapshot up to {fitted.get('name')}",
             "aligned": "one map per snapshot"}[align] if fitted else ""
    if fitted and (name == "parametric" or name.endswith(".ParametricMap")):
        where = f"trained on every fit snapshot up to {fitted.get('name')} and the motion between them"
    kwargs = f", {reducer['kwargs']}" if reducer.get("kwargs") else ""
    print(f"\nreducer: {name}, {reducer.get('n_components')}-D, seed {reducer.get('seed')}, align {align!r}{kwargs}"
          + (f"; {where}" if where else ""))
    records = reducer.get("layers") or {}
    skipped = {column: record["skipped"] for column, record in records.items() if "skipped" in record}
    for column, reason in skipped.items():
        print(f"  {column}: not reduced: {reason}")
    for column, record in records.items():
        if record.get("collapsed"):
            print(f"  {column}: collapsed (vectors all equal: no faithful map) at {', '.join(record['collapsed'])}")
        for key, words in (("left_out", "with a non-finite value"), ("missing", "without a vector")):
            if record.get(key):
                counts = ", ".join(f"{n} at {name}" for name, n in record[key].items())
                print(f"  {column}: rows {words} left out of the map: {counts}")
    return "parametric" if name == "parametric" or name.endswith(".ParametricMap") else align


def _print_faithfulness(records: dict[str, Any], names: list[str], how: str, run_dir: str) -> None:
    """Each layer's trustworthiness and temporal preservation per snapshot, with what to do where they are low."""
    trust = {column: record["trustworthiness"] for column, record in records.items() if record.get("trustworthiness")}
    if trust:
        table, low = _snapshot_table(trust, names, FAITHFUL)
        print("\ntrustworthiness per snapshot (10 neighbours; 1 is faithful):")
        print(table)
        if low:
            print(f"  ! below {FAITHFUL}: there, {NEIGHBOURS_WRONG}. {map_advice(how, run_dir)}")
    motion = {column: record["temporal_preservation"] for column, record in records.items()
              if record.get("temporal_preservation")}
    if motion:
        table, low = _snapshot_table(motion, [n for n in names if any(n in values for values in motion.values())],
                                     FAITHFUL_MOTION)
        print("\ntemporal preservation of the paths into each snapshot (Spearman of motion in the map vs in the "
              "vectors; 1 is faithful):")
        print(table)
        if low:
            print(f"  ! below {FAITHFUL_MOTION}: the drawn paths misrank how far samples moved. "
                  f"{faithful_paths_advice(run_dir)}; movement measured in the vectors: {PROG} samples "
                  f"{run_dir} --layer LAYER")


def _snapshot_table(
    values: dict[str, dict[str, Optional[float]]], names: list[str], threshold: float
) -> tuple[str, bool]:
    """A per-snapshot measure as a table, a row per snapshot in ``names`` and a column per layer, values below
    ``threshold`` marked ``!``; and whether any is."""
    rows, low = [], False
    for name in names:
        cells = []
        for column in values:
            value = values[column].get(name)
            below = value is not None and value < threshold
            low |= below
            cells.append("-" if value is None else f"{value:.2f}" + (" !" if below else ""))
        rows.append([name, *cells])
    return _indent(_format_table(["snapshot", *values], rows, right=set(range(1, len(values) + 1)))), low


OWN_FLAGS = {"n_components": "--n-components", "random_state": "--seed", "seed": "--seed", "align": "--align",
             "fit_samples": "--fit-samples", "layers": "--layers", "reducer": "--reducer"}  # --param keys reduce sets


def _reducer_params(reducer: str, n_components: int, seed: Optional[int], params: dict[str, Any]) -> dict[str, Any]:
    """``--param`` values checked before anything is read or written: a key ``reduce`` sets from its own flag, or
    one the reducer does not take (with the nearest it does), is a usage error."""
    for key in params:
        if key in OWN_FLAGS:
            raise UsageError(f"--param {key}=... is set by {OWN_FLAGS[key]}: use {OWN_FLAGS[key]} instead")
    try:
        check_reducer_kwargs(reducer, n_components, seed, params)
    except ValueError as error:
        raise UsageError(f"--param: {error}") from error
    return params


def _reduce(args: argparse.Namespace) -> None:
    run = _open_run(args.run_dir)
    recorded = run.manifest.get("reducer") or {}
    reducer = args.reducer or (recorded.get("name") if recorded.get("name") in REDUCER_NAMES else "umap")
    n_components = args.n_components or recorded.get("n_components") or 2
    columns = _columns(run, args.layers)
    fit_samples = args.fit_samples if args.fit_samples is not None else recorded.get("fit_samples", FIT_SAMPLES)
    params = _reducer_params(reducer, n_components, args.seed, dict(args.param))
    try:
        maps = run.reduce(reducer=reducer, n_components=n_components, seed=args.seed, layers=columns,
                          align=args.align or recorded.get("align") or "last",
                          fit_samples=None if fit_samples == "all" else fit_samples,
                          progress=True, **params)
    except RuntimeError as error:  # a layer failed; no file changed
        raise CommandError(f"{error}; the run's files are as they were.") from error
    records = (run.manifest.get("reducer") or {}).get("layers") or {}
    import pyarrow.parquet as pq

    print(f"reduced with {reducer}, {n_components}-D" + (f", align {args.align!r}" if args.align else "") + ":")
    for column in columns or run.layers:
        record = records.get(column, {})
        if column in maps:
            trust = [v for v in (record.get("trustworthiness") or {}).values() if v is not None]
            said = f", trustworthiness {min(trust):.2f}..{max(trust):.2f}" if trust else ""
            path = projection_file(run.path, column)
            print(f"  {path}  ({pq.ParquetFile(path).metadata.num_rows} rows, fitted on {record['samples']}{said})")
        elif "skipped" in record:
            print(f"  {column}: not reduced: {record['skipped']}")
    for written in maps.written:  # the pictures drawn again: said by the reduce's log
        print(f"  {written}")


def _samples(args: argparse.Namespace) -> None:
    run = _open_run(args.run_dir)
    if args.layer is None and len(run.layers) > 1:
        raise UsageError(f"give --layer: the run has layers {', '.join(run.layers)}")
    column = _columns(run, [args.layer])[0] if args.layer is not None else run.layers[0]
    top = run.samples(column, split=args.split).head(args.top)
    if args.json:
        print(top.to_json(orient="records", indent=2))
    else:
        _print_samples(top, args.split, column, run.path)
    if args.show:
        from lightning_embeddings.plot import plot_suspects

        gallery = plot_suspects(run, column, split=args.split, top=min(args.top, GALLERY_MAX))
        print(gallery if gallery is not None else f"no gallery: the {args.split} samples have no labels",
              file=sys.stderr if args.json else sys.stdout)


def _print_samples(top: Any, split: str, column: str, path: Path) -> None:
    """The top samples as a table, ranked."""
    shown = [c for c in top.columns if c != "dataloader_idx" or top[c].nunique() > 1]
    rows = [[_cell(value) for value in row] for row in top[shown].itertuples(index=False, name=None)]
    print(f"{split} samples of layer {column!r} most likely mislabelled (of {path}):")
    print(_indent(_format_table(["rank", *shown], [[i + 1, *row] for i, row in enumerate(rows)],
                                right=set(range(len(shown) + 1)))))


def _cell(value: Any) -> str:
    """A table cell: floats to 3 decimals, missing values as '-'."""
    import pandas as pd

    if pd.isna(value):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _plot(args: argparse.Namespace) -> None:
    run = _open_run(args.run_dir)
    columns = _columns(run, args.layers)
    from lightning_embeddings.plot import plot_run

    try:
        paths = plot_run(run, layers=columns, html=args.html)
    except ImportError as error:  # the html extra
        raise CommandError(str(error)) from error
    if not paths:
        print(f"no pictures drawn: the run has no projections; make them with: {PROG} reduce {args.run_dir}")
    for path in paths:
        print(path)


def _export(args: argparse.Namespace) -> None:
    from lightning_embeddings.export import PROJECTOR_CONFIG, export_tensorboard

    run = _open_run(args.run_dir)
    columns = _columns(run, args.layers)
    logdir = args.logdir if args.logdir is not None else run.path / TENSORBOARD
    written = export_tensorboard(run, logdir, layers=columns, max_vectors=args.max_vectors)
    print(f"wrote TensorBoard projector files to {written} ({written / PROJECTOR_CONFIG}):")
    for column in columns or run.layers:
        print(f"  {column}: projections of all snapshots, vectors of the last fit snapshot"
              if projection_file(run.path, column).is_file()
              else f"  {column}: vectors of the last fit snapshot (no projections: reduce the run first)")
    print(f"view them: tensorboard --logdir {written}  (then the Projector tab)")


def _format_shape(shape: Optional[Sequence[int]]) -> str:
    return "-" if shape is None else "(" + ", ".join(str(size) for size in shape) + ")"


def _format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: set[int] = frozenset()) -> str:
    cells = [list(map(str, header))] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[j]) for row in cells) for j in range(len(header))]
    lines = [
        "  ".join(cell.rjust(w) if j in right else cell.ljust(w) for j, (cell, w) in enumerate(zip(row, widths)))
        for row in cells
    ]
    lines = [line.rstrip() for line in lines]
    return "\n".join(lines)


def _indent(text: str) -> str:
    return textwrap.indent(text, "  ")


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "layers": _layers, "info": _info, "reduce": _reduce, "samples": _samples, "plot": _plot, "export": _export,
}
