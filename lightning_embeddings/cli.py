"""The ``lightning-embeddings`` command line: choose layers, inspect a run, reduce it again, draw it, export it.

    lightning-embeddings layers examples/digits.py:DigitsCNN --input-shape 1,1,8,8
    lightning-embeddings info lightning_logs/version_0/embeddings
    lightning-embeddings reduce lightning_logs/version_0/embeddings --reducer pacmap --n-components 3
    lightning-embeddings plot lightning_logs/version_0/embeddings --html
    lightning-embeddings export lightning_logs/version_0/embeddings --to tensorboard

Exit status: 0 on success, 1 when the command failed (a directory that holds no run, a damaged run, an unknown
layer, a model that cannot be imported or run), 2 for a command line that does not parse, 141 when the reader of
the output went away (``... | head``), as for other Unix tools. Errors are one line on stderr,
``lightning-embeddings: error: ...``, saying what to do; ``--traceback`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

from lightning_embeddings.lock import RunLock, RunLockedError
from lightning_embeddings.faithfulness import FAITHFUL, FAITHFUL_MOTION, NEIGHBOURS_WRONG, faithful_paths_advice, map_advice
from lightning_embeddings.reduce import ALIGNS, FIT_SAMPLES, REDUCER_NAMES, check_reducer_kwargs

PROG = "lightning-embeddings"
DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "bool")
LAYERS_HELP = "only these layers (names or indices); default all"


class CommandError(Exception):
    """An expected failure: printed as one line, exit status 1."""


class UsageError(Exception):
    """A command line that cannot work whatever the files hold: printed as one line, exit status 2."""


# --------------------------------------------------------------------------------------------------------- parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' and examples' line breaks; shows defaults where a help text asks with %(default)s."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=min(100, _terminal_width()))


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 100


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see: {self.prog} --help)")


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _command(
    commands: Any, name: str, handler: Callable[[argparse.Namespace], None], run_dir: bool, writes: bool = False,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """One sub-command's parser, calling ``handler``; with ``run_dir``, its first argument is RUN_DIR, which it
    holds the run's lock on while it runs when it ``writes``."""
    parser = commands.add_parser(name, formatter_class=_Formatter, **kwargs)
    parser.set_defaults(handler=handler, writes=writes)
    if run_dir:
        parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (it holds manifest.json)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``lightning-embeddings`` argument parser, one sub-parser per command."""
    from lightning_embeddings._version import __version__

    parser = _Parser(
        prog=PROG,
        formatter_class=_Formatter,
        description=textwrap.dedent(
            """\
            See a model's embeddings while it trains. The EmbeddingCollector callback writes a run directory
            (by default <trainer.log_dir>/embeddings: manifest.json, vectors/, projections/); these commands
            help choose the layers to record and look at what was recorded, without retraining.
            """
        ),
        epilog=_examples(
            "lightning-embeddings layers my_package.models:Net --input-shape 1,3,32,32",
            "lightning-embeddings info lightning_logs/version_0/embeddings",
            "lightning-embeddings reduce lightning_logs/version_0/embeddings --reducer pca --align joint",
            "lightning-embeddings samples lightning_logs/version_0/embeddings --layer head.1 --split train --top 20",
            "lightning-embeddings plot lightning_logs/version_0/embeddings --html",
            "lightning-embeddings export lightning_logs/version_0/embeddings --to tensorboard",
        )
        + "\n\nRun 'lightning-embeddings COMMAND --help' for a command's options. Exit status: 0 done, 1 failed, "
        "2 bad command line.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--traceback", action="store_true", help="on an error, show the full traceback")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", parser_class=_Parser)

    layers = _command(
        commands, "layers", _layers, run_dir=False,
        help="list a model's modules with the index and name to pass as EmbeddingCollector(layers=...)",
        description=textwrap.dedent(
            """\
            List every module of a model as EmbeddingCollector counts them: the index (0 is the model itself)
            and the name are what layers=[...] accepts, with the module's type, its own parameter count and,
            given --input-shape, the shape of its output for one forward pass on random input (a module that
            returns a tuple or dict shows the tensor the collector records; "-" marks a module not called).

            TARGET is a class (or a function) that builds the model with no arguments, as
            package.module:Class or path/to/file.py:Class, or a Lightning checkpoint (.ckpt) together with
            --class package.module:Class, which is loaded with Class.load_from_checkpoint (its saved
            hyper-parameters give the architecture).
            """
        ),
        epilog=_examples(
            "lightning-embeddings layers my_package.models:Net",
            "lightning-embeddings layers examples/digits.py:DigitsCNN --input-shape 1,1,8,8",
            "lightning-embeddings layers models/net.py:Net --input-shape 2,3,224,224",
            "lightning-embeddings layers last.ckpt --class my_package.models:Net --input-shape 1,3,32,32",
            "lightning-embeddings layers my_package.text:Encoder --input-shape 1,128 --dtype int64",
        ),
    )
    layers.add_argument("target", metavar="TARGET", help="package.module:Class, path/to/file.py:Class, or a .ckpt file")
    layers.add_argument(
        "--input-shape", type=_shape, metavar="N,C,H,W",
        help="shape of one input tensor, batch dimension included (e.g. 1,3,224,224): adds the output shapes",
    )
    layers.add_argument(
        "--dtype", default="float32", choices=DTYPES,
        help="dtype of that input (default: %(default)s; integer dtypes give zeros, e.g. token ids)",
    )
    layers.add_argument(
        "--class", dest="model_class", metavar="package.module:Class",
        help="with a .ckpt TARGET: the model's class, whose load_from_checkpoint reads it",
    )

    info = _command(
        commands, "info", _info, run_dir=True,
        help="show what a run holds: layers, snapshots, samples, the reducer and how faithful its maps are",
        description=textwrap.dedent(
            """\
            Show what a run directory holds: each recorded layer (index, type, reshape strategy, output shape,
            vector size), each snapshot (stage, epoch, global step, samples), the reducer with the snapshot it
            was fitted on, and each snapshot's trustworthiness per layer (10 neighbours: how often neighbours
            in the map are neighbours in the vectors; below 0.8 the picture is not faithful there).
            """
        ),
        epilog=_examples(
            "lightning-embeddings info lightning_logs/version_0/embeddings",
            "lightning-embeddings info lightning_logs/version_0/embeddings --json | jq .snapshots",
        ),
    )
    info.add_argument("--json", action="store_true", help="print the same facts as one JSON object")

    reduce = _command(
        commands, "reduce", _reduce, run_dir=True, writes=True,
        help="fit the maps again (another reducer, 3-D, another alignment) without retraining",
        description=textwrap.dedent(
            """\
            Fit each layer's map again from the recorded vectors and place every snapshot in it, without
            retraining: projections/<layer>.parquet, projections.parquet and the manifest are rewritten, all
            or nothing (when a layer fails, no file changes). Pictures in RUN_DIR/plots that showed the old
            maps are drawn again, and so is every projector export of the run (RUN_DIR/tensorboard, a
            TensorBoardLogger's log directory). Rows with NaN/inf or no
            vector are left out of a map and counted. The reducer, number of components and alignment default
            to the run's current ones.

            --align chooses how snapshots share one space: "last" fits on the last snapshot of fit and places
            every snapshot through it (the default for a new run); "joint" fits on all snapshots of fit
            together, so each keeps its own structure (early epochs more faithfully); "aligned" fits one UMAP
            per snapshot tied by sample identity (umap only). --reducer parametric trains one small network on
            every snapshot of fit, on each snapshot's neighbours and on the samples' motion, so that a sample's
            drawn step ranks like its step in the vectors (paths you can compare; docs/align.md).

            --fit-samples caps the rows a map is fitted on (a sample keeping each snapshot's and label's share);
            every row is then placed through transform in batches, so memory stays bounded on large runs.
            """
        ),
        epilog=_examples(
            "lightning-embeddings reduce RUN_DIR --reducer pca",
            "lightning-embeddings reduce RUN_DIR --reducer parametric --param steps=3000",
            "lightning-embeddings reduce RUN_DIR --fit-samples 50000",
            "lightning-embeddings reduce RUN_DIR --reducer pacmap --n-components 3 --align last",
            "lightning-embeddings reduce RUN_DIR --reducer umap --param n_neighbors=30 --param min_dist=0.05",
            "lightning-embeddings reduce RUN_DIR --layers head.1",
        ),
    )
    reduce.add_argument("--reducer", choices=REDUCER_NAMES, help="the reducer (default: the run's, else umap)")
    reduce.add_argument("--n-components", type=int, choices=(2, 3), help="2-D or 3-D maps (default: the run's, else 2)")
    reduce.add_argument("--seed", type=int, default=0, help="random seed for reproducible maps (default: %(default)s)")
    reduce.add_argument("--align", choices=ALIGNS, help="how snapshots share one space (default: the run's, else last)")
    reduce.add_argument(
        "--fit-samples", type=_fit_samples, metavar="N|all",
        help=f"fit each map on at most N rows, or all (default: the run's, else {FIT_SAMPLES})",
    )
    reduce.add_argument("--layers", nargs="+", metavar="LAYER", help=LAYERS_HELP)
    reduce.add_argument(
        "--param", action="append", default=[], type=_param, metavar="KEY=VALUE",
        help="a reducer argument, repeatable; values read as int, float, true/false, none, else text",
    )

    samples = _command(
        commands, "samples", _samples, run_dir=True,
        help="rank a layer's samples by how likely their label is wrong (k-NN agreement, forgetting, confidence)",
        description=textwrap.dedent(
            """\
            The samples to look at first: one row per sample of a split, measured in the layer's own vectors
            across the fit's snapshots (never in the 2-D map), sorted by suspicion (0..1; higher: more likely a
            label error). Columns: suspicion, the k-NN label agreement (cosine, 10 neighbours; mean over the
            snapshots and at the last), movement between snapshots, the epoch a sample settled; with recorded
            predictions how often it was right, when it was learned and how often forgotten; with recorded logits
            its confidence, variability and margin (AUM). Read from RUN_DIR/samples.parquet (written at the end
            of fit and by reduce). --split train needs EmbeddingCollector(record_train=True).
            """
        ),
        epilog=_examples(
            "lightning-embeddings samples RUN_DIR --layer head.1",
            "lightning-embeddings samples RUN_DIR --layer head.1 --split train --top 50",
            "lightning-embeddings samples RUN_DIR --layer head.1 --split train --json | jq '.[0]'",
        ),
    )
    samples.add_argument("--layer", help="the layer, by name or index (default: the run's only layer)")
    samples.add_argument("--split", choices=("val", "train"), default="val",
                         help="the validation or the training samples (default: %(default)s)")
    samples.add_argument("--top", type=_positive_int, default=20, help="how many rows (default: %(default)s)")
    samples.add_argument("--json", action="store_true", help="print the rows as a JSON list of objects")

    plot = _command(
        commands, "plot", _plot, run_dir=True, writes=True,
        help="draw the pictures of a run's maps again (PNG; --html for interactive pages)",
        description="Draw each layer's pictures from the run's projections again and print where they are.",
        epilog=_examples(
            "lightning-embeddings plot RUN_DIR",
            "lightning-embeddings plot RUN_DIR --html --layers head.1",
        ),
    )
    plot.add_argument("--html", action="store_true", help="also write interactive HTML pages (needs plotly)")
    plot.add_argument("--layers", nargs="+", metavar="LAYER", help=LAYERS_HELP)

    export = _command(
        commands, "export", _export, run_dir=True,  # it locks the run itself where it writes into it
        help="write a run for another tool (TensorBoard's Embedding Projector)",
        description=textwrap.dedent(
            """\
            Write a run for another tool. --to tensorboard writes, per layer, the projections of all snapshots
            stacked (3 columns, with epoch/step/stage/label metadata and __seq_next__, from which the
            projector draws each sample's path) and the last fit snapshot's vectors (at most --max-vectors
            rows). TensorFlow is not needed to write them; view them with: tensorboard --logdir LOGDIR,
            then the Projector tab.
            """
        ),
        epilog=_examples(
            "lightning-embeddings export RUN_DIR --to tensorboard",
            "lightning-embeddings export RUN_DIR --to tensorboard --logdir lightning_logs/version_0",
        ),
    )
    export.add_argument("--to", required=True, choices=("tensorboard",), help="the tool to export to")
    export.add_argument("--logdir", type=Path, help="where to write (default: RUN_DIR/tensorboard)")
    export.add_argument("--layers", nargs="+", metavar="LAYER", help=LAYERS_HELP)
    export.add_argument(
        "--max-vectors", type=_positive_int, default=10_000,
        help="the most raw vectors written per layer (default: %(default)s)",
    )
    return parser


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        shape = ()
    if not shape or any(size < 1 for size in shape):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a shape: give positive sizes separated by commas, batch dimension first, e.g. 1,3,224,224"
        )
    return shape


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE, e.g. n_neighbors=30")
    return key.strip(), parse_value(value.strip())


def _fit_samples(text: str) -> int | str:
    if text == "all":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of rows >= 1 or 'all'")
    return int(text)


def parse_value(text: str) -> Any:
    """A command-line value as int, float, bool (``true``/``false``), None (``none``/``null``), or the text itself.

    Example::

        >>> [parse_value(v) for v in ["30", "0.1", "1e-3", "True", "none", "cosine"]]
        [30, 0.1, 0.001, True, None, 'cosine']
    """
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# ----------------------------------------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (``sys.argv[1:]`` when None) and return the exit status.

    Example::

        main(["info", "lightning_logs/version_0/embeddings"])
    """
    try:
        status = _run(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # a reader gone early (`... | head`) shows here rather than at exit
        return status
    except BrokenPipeError:
        # as Python's docs advise (signal module, "Note on SIGPIPE"): send the rest to devnull, so that the flush
        # at exit is quiet too, and exit as a Unix tool stopped by SIGPIPE does
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13


def _run(argv: list[str]) -> int:
    show_traceback = "--traceback" in argv
    args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            raise UsageError(f"give a command: layers, info, reduce, samples, plot or export (see: {PROG} --help)")
        with _one_line_warnings(), _lock_while_writing(args):
            args.handler(args)
        return 0
    except SystemExit as stop:  # --help and --version exit 0 through argparse
        return stop.code if isinstance(stop.code, int) else 0
    except UsageError as error:
        return _fail(error, 2, show_traceback)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except OSError as error:
        return _fail(_os_error(error, getattr(args, "run_dir", None)), 1, show_traceback)
    except (CommandError, RunLockedError, ValueError, TypeError, ImportError) as error:  # RunError: a ValueError
        return _fail(error, 1, show_traceback)


def _lock_while_writing(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """The run's lock for a command that writes into an existing run; nothing otherwise."""
    run_dir = Path(args.run_dir) if getattr(args, "writes", False) else None
    return RunLock(run_dir) if run_dir is not None and (run_dir / "manifest.json").is_file() else contextlib.nullcontext()


def _os_error(error: OSError, run_dir: Optional[str]) -> BaseException:
    """A read-only or full disk said in one line: the error, the file (else the run), and what its writer says is
    left as it was (its notes)."""
    if error.errno is None:  # raised with a message of ours
        return error
    said = CommandError("; ".join([f"{error.strerror}: {error.filename or run_dir}", *getattr(error, "__notes__", [])]))
    said.__cause__ = error
    return said


def _fail(error: BaseException, status: int, show_traceback: bool) -> int:
    if show_traceback:
        import traceback

        traceback.print_exception(type(error), error, error.__traceback__)
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Warnings as ``lightning-embeddings: warning: ...`` lines on stderr, each once, without source lines."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        text = " ".join(str(message).split()).removeprefix(f"{PROG}: ")
        print(f"{PROG}: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=ImportWarning)  # umap-learn's "Tensorflow not installed"
        warnings.showwarning = show
        yield


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


# --------------------------------------------------------------------------------------------------------- layers


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


def load_model(target: str, model_class: Optional[str] = None):
    """Build the model named by ``target``: ``package.module:Class`` or ``path/to/file.py:Class`` called with no
    arguments, or a ``.ckpt`` checkpoint loaded by ``model_class`` (``package.module:Class``).

    Raises:
        UsageError: a target of neither form, or a checkpoint without ``model_class``.
        CommandError: the class cannot be imported or built, or the checkpoint cannot be loaded.
    """
    from torch import nn

    if target.endswith(".ckpt") or (Path(target).is_file() and not target.endswith(".py")):
        if model_class is None:
            hint = _ckpt_hint(target)
            raise UsageError(f"a checkpoint needs the model's class: add --class package.module:Class{hint}.")
        if not Path(target).is_file():
            raise CommandError(f"checkpoint {target} does not exist.")
        cls = _import_object(model_class)
        model = _load_checkpoint(cls, target)
    else:
        if model_class is not None:
            raise UsageError("--class goes with a checkpoint TARGET (.ckpt); here TARGET names the class itself.")
        factory = _import_object(target)
        try:
            model = factory()
        except TypeError as error:
            raise CommandError(
                f"could not build {target} with no arguments ({' '.join(str(error).split())}); pass a checkpoint "
                "instead: lightning-embeddings layers model.ckpt --class " + target
            ) from error
    if not isinstance(model, nn.Module):
        raise CommandError(f"{target} gave a {type(model).__name__}, not a torch.nn.Module.")
    return model


def _import_object(target: str) -> Callable[..., Any]:
    module_part, sep, attribute = target.rpartition(":")
    if not sep or not module_part or not attribute or (len(module_part) == 1 and module_part.isalpha()):
        raise UsageError(
            f"{target!r} does not name a class: give package.module:Class, path/to/file.py:Class, or a .ckpt file."
        )
    if module_part.endswith(".py") or os.sep in module_part or "/" in module_part:
        path = Path(module_part)
        if not path.is_file():
            raise CommandError(f"{module_part} is not a file; give path/to/file.py:Class or package.module:Class.")
        sys.path.insert(0, str(path.resolve().parent))  # so that the file's own imports of its neighbours work
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(path.stem, module)
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            raise CommandError(f"importing {module_part} failed: {type(error).__name__}: {error}") from error
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m` does: modules beside you import
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as error:
            raise CommandError(
                f"cannot import {module_part!r} ({error}): run from the directory that holds it, add that directory "
                "to PYTHONPATH, or give path/to/file.py:Class."
            ) from error
        except Exception as error:
            raise CommandError(f"importing {module_part!r} failed: {type(error).__name__}: {error}") from error
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            from torch import nn

            classes = sorted(
                name for name, value in vars(module).items()
                if isinstance(value, type) and issubclass(value, nn.Module) and value.__module__ == module.__name__
            )
            hint = f"it defines {', '.join(classes)}" if classes else "it defines no torch.nn.Module class"
            raise CommandError(f"{module_part} has no {attribute!r}: {hint}.")
        found = getattr(found, part)
    if not callable(found):
        raise CommandError(f"{target} is a {type(found).__name__}, not a class.")
    return found


def _load_checkpoint(cls: Any, path: str):
    import torch
    from lightning.pytorch import LightningModule
    from torch import nn

    try:
        if isinstance(cls, type) and issubclass(cls, LightningModule):
            return cls.load_from_checkpoint(path, map_location="cpu")
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            model = cls()
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(checkpoint.get("state_dict", checkpoint))
            return model
    except Exception as error:
        raise CommandError(
            f"loading {path} with {cls.__name__} failed: {type(error).__name__}: {' '.join(str(error).split())}"
        ) from error
    raise CommandError(f"--class must name a LightningModule or torch.nn.Module class, got {cls!r}.")


def _ckpt_hint(path: str) -> str:
    """The class a LightningCLI checkpoint names in its hyper-parameters, said, never imported from the file."""
    try:
        import torch

        hparams = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
        class_path = hparams.get("_class_path") if isinstance(hparams, dict) else None
    except Exception:
        return ""
    if not isinstance(class_path, str) or "." not in class_path:
        return ""
    module, _, name = class_path.rpartition(".")
    return f" (this checkpoint was saved from {module}:{name})"


# ----------------------------------------------------------------------------------------------------------- info


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
    names = [snapshot["name"] for snapshot in facts["snapshots"]]
    trust = {column: record["trustworthiness"] for column, record in records.items() if record.get("trustworthiness")}
    if trust:
        table, low = _snapshot_table(trust, names, FAITHFUL)
        print("\ntrustworthiness per snapshot (10 neighbours; 1 is faithful):")
        print(table)
        if low:
            how = "parametric" if name == "parametric" or name.endswith(".ParametricMap") else align
            print(f"  ! below {FAITHFUL}: there, {NEIGHBOURS_WRONG}. {map_advice(how, args.run_dir)}")
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
                  f"{faithful_paths_advice(args.run_dir)}; movement measured in the vectors: {PROG} samples "
                  f"{args.run_dir} --layer LAYER")


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


# --------------------------------------------------------------------------------------------------------- reduce


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

    from lightning_embeddings.layout import projection_file

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


# -------------------------------------------------------------------------------------------------------- samples


def _samples(args: argparse.Namespace) -> None:
    run = _open_run(args.run_dir)
    if args.layer is None and len(run.layers) > 1:
        raise UsageError(f"give --layer: the run has layers {', '.join(run.layers)}")
    column = _columns(run, [args.layer])[0] if args.layer is not None else run.layers[0]
    top = run.samples(column, split=args.split).head(args.top)
    if args.json:
        print(top.to_json(orient="records", indent=2))
        return
    shown = [c for c in top.columns if c != "dataloader_idx" or top[c].nunique() > 1]
    rows = [[_cell(value) for value in row] for row in top[shown].itertuples(index=False, name=None)]
    print(f"{args.split} samples of layer {column!r} most likely mislabelled (of {run.path}):")
    print(_indent(_format_table(["rank", *shown], [[i + 1, *row] for i, row in enumerate(rows)],
                                right=set(range(len(shown) + 1)))))


def _cell(value: Any) -> str:
    """A table cell: floats to 3 decimals, missing values as '-'."""
    import pandas as pd

    if pd.isna(value):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------------------------------------- plot


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


# --------------------------------------------------------------------------------------------------------- export


def _export(args: argparse.Namespace) -> None:
    from lightning_embeddings.export import PROJECTOR_CONFIG, export_tensorboard
    from lightning_embeddings.layout import projection_file

    run = _open_run(args.run_dir)
    columns = _columns(run, args.layers)
    logdir = args.logdir if args.logdir is not None else run.path / "tensorboard"
    written = export_tensorboard(run, logdir, layers=columns, max_vectors=args.max_vectors)
    print(f"wrote TensorBoard projector files to {written} ({written / PROJECTOR_CONFIG}):")
    for column in columns or run.layers:
        print(f"  {column}: projections of all snapshots, vectors of the last fit snapshot"
              if projection_file(run.path, column).is_file()
              else f"  {column}: vectors of the last fit snapshot (no projections: reduce the run first)")
    print(f"view them: tensorboard --logdir {written}  (then the Projector tab)")


# ---------------------------------------------------------------------------------------------------------- tables


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


if __name__ == "__main__":
    sys.exit(main())
