"""The ``lightning-embeddings`` command line's grammar: one parser built from a piece per command, the argument
types, and the two ways a command line fails in one line (:class:`UsageError`, exit status 2; :class:`CommandError`,
exit status 1).

Example::

    args = build_parser().parse_args(["reduce", "RUN_DIR", "--reducer", "pca"])
"""

from __future__ import annotations

import argparse
import os
import textwrap
from pathlib import Path
from typing import Any

from lightning_embeddings.layout import LONG_PROJECTIONS, MANIFEST, PLOTS, PROJECTIONS, SAMPLES, TENSORBOARD, VECTORS
from lightning_embeddings.reduce import ALIGNS, FIT_SAMPLES, REDUCER_NAMES

PROG = "lightning-embeddings"
COMMANDS = ("layers", "info", "reduce", "samples", "plot", "export")
DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "bool")
LAYERS_HELP = "only these layers (names or indices); default all"
GALLERY_MAX = 50  # suspects drawn by samples --show: a taller picture is not looked at


class CommandError(Exception):
    """An expected failure: printed as one line, exit status 1."""


class UsageError(Exception):
    """A command line that cannot work whatever the files hold: printed as one line, exit status 2."""


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
    commands: Any, name: str, run_dir: bool, writes: bool = False, **kwargs: Any
) -> argparse.ArgumentParser:
    """One sub-command's parser; with ``run_dir``, its first argument is RUN_DIR, which the command holds the run's
    lock on while it runs when it ``writes``."""
    parser = commands.add_parser(name, formatter_class=_Formatter, **kwargs)
    parser.set_defaults(writes=writes)
    if run_dir:
        parser.add_argument("run_dir", metavar="RUN_DIR", help=f"a run directory (it holds {MANIFEST})")
    return parser


class _Writes(argparse.Action):
    """A flag that makes its command write into the run, so that it holds the run's lock: ``samples --show``."""

    def __init__(self, option_strings: Any, dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, True)
        namespace.writes = True


def build_parser() -> argparse.ArgumentParser:
    """The ``lightning-embeddings`` argument parser, one sub-parser per command."""
    from lightning_embeddings._version import __version__

    parser = _Parser(
        prog=PROG,
        formatter_class=_Formatter,
        description=textwrap.dedent(
            f"""\
            See a model's embeddings while it trains. The EmbeddingCollector callback writes a run directory
            (by default <trainer.log_dir>/embeddings: {MANIFEST}, {VECTORS}/, {PROJECTIONS}/); these commands
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

    for add in (_add_layers, _add_info, _add_reduce, _add_samples, _add_plot, _add_export):
        add(commands)
    return parser


def _add_layers(commands: Any) -> None:
    """The ``layers`` command's parser."""
    parser = _command(
        commands, "layers", run_dir=False,
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
    parser.add_argument("target", metavar="TARGET", help="package.module:Class, path/to/file.py:Class, or a .ckpt file")
    parser.add_argument(
        "--input-shape", type=_shape, metavar="N,C,H,W",
        help="shape of one input tensor, batch dimension included (e.g. 1,3,224,224): adds the output shapes",
    )
    parser.add_argument(
        "--dtype", default="float32", choices=DTYPES,
        help="dtype of that input (default: %(default)s; integer dtypes give zeros, e.g. token ids)",
    )
    parser.add_argument(
        "--class", dest="model_class", metavar="package.module:Class",
        help="with a .ckpt TARGET: the model's class, whose load_from_checkpoint reads it",
    )


def _add_info(commands: Any) -> None:
    """The ``info`` command's parser."""
    parser = _command(
        commands, "info", run_dir=True,
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
    parser.add_argument("--json", action="store_true", help="print the same facts as one JSON object")


def _add_reduce(commands: Any) -> None:
    """The ``reduce`` command's parser."""
    parser = _command(
        commands, "reduce", run_dir=True, writes=True,
        help="fit the maps again (another reducer, 3-D, another alignment) without retraining",
        description=textwrap.dedent(
            f"""\
            Fit each layer's map again from the recorded vectors and place every snapshot in it, without
            retraining: {PROJECTIONS}/<layer>.parquet, {LONG_PROJECTIONS} and the manifest are rewritten, all
            or nothing (when a layer fails, no file changes). Pictures in RUN_DIR/{PLOTS} that showed the old
            maps are drawn again, and so is every projector export of the run (RUN_DIR/{TENSORBOARD}, a
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
    parser.add_argument("--reducer", choices=REDUCER_NAMES, help="the reducer (default: the run's, else umap)")
    parser.add_argument("--n-components", type=int, choices=(2, 3), help="2-D or 3-D maps (default: the run's, else 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for reproducible maps (default: %(default)s)")
    parser.add_argument("--align", choices=ALIGNS, help="how snapshots share one space (default: the run's, else last)")
    parser.add_argument(
        "--fit-samples", type=_fit_samples, metavar="N|all",
        help=f"fit each map on at most N rows, or all (default: the run's, else {FIT_SAMPLES})",
    )
    parser.add_argument("--layers", nargs="+", metavar="LAYER", help=LAYERS_HELP)
    parser.add_argument(
        "--param", action="append", default=[], type=_param, metavar="KEY=VALUE",
        help="a reducer argument, repeatable; values read as int, float, true/false, none, else text",
    )


def _add_samples(commands: Any) -> None:
    """The ``samples`` command's parser."""
    parser = _command(
        commands, "samples", run_dir=True,
        help="rank a layer's samples by how likely their label is wrong (k-NN agreement, forgetting, confidence)",
        description=textwrap.dedent(
            f"""\
            The samples to look at first: one row per sample of a split, measured in the layer's own vectors
            across the fit's snapshots (never in the 2-D map), sorted by suspicion (0..1; higher: more likely a
            label error; ties ranked by the evidence against the label). Columns: the label, the label its
            10 nearest neighbours hold most often at the last snapshot (neighbour_label), the last
            prediction, suspicion, the k-NN label agreement (cosine, 10 neighbours; mean over the snapshots
            and at the last), movement between snapshots, the epoch a sample settled; with recorded
            predictions how often it was right, when it was learned and how often forgotten; with recorded
            logits its confidence, variability and margin (AUM). Read from RUN_DIR/{SAMPLES} (written at
            the end of fit and by reduce). --split train needs EmbeddingCollector(record_train=True).
            """
        ),
        epilog=_examples(
            "lightning-embeddings samples RUN_DIR --layer head.1",
            "lightning-embeddings samples RUN_DIR --layer head.1 --split train --top 50",
            "lightning-embeddings samples RUN_DIR --layer head.1 --split train --json | jq '.[0]'",
            "lightning-embeddings samples RUN_DIR --layer head.1 --split train --show",
        ),
    )
    parser.add_argument("--layer", help="the layer, by name or index (default: the run's only layer)")
    parser.add_argument("--split", choices=("val", "train"), default="val",
                         help="the validation or the training samples (default: %(default)s)")
    parser.add_argument("--top", type=_positive_int, default=20, help="how many rows (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list of objects")
    parser.add_argument("--show", action=_Writes,
                        help=f"also draw the gallery of the top suspects (at most {GALLERY_MAX}) as they are, each "
                             f"beside its nearest neighbours, to RUN_DIR/{PLOTS}/<layer>-suspects.png, and print it")


def _add_plot(commands: Any) -> None:
    """The ``plot`` command's parser."""
    parser = _command(
        commands, "plot", run_dir=True, writes=True,
        help="draw the pictures of a run's maps again (PNG; --html for interactive pages)",
        description="Draw each layer's pictures from the run's projections again and print where they are.",
        epilog=_examples(
            "lightning-embeddings plot RUN_DIR",
            "lightning-embeddings plot RUN_DIR --html --layers head.1",
        ),
    )
    parser.add_argument("--html", action="store_true", help="also write interactive HTML pages (needs plotly)")
    parser.add_argument("--layers", nargs="+", metavar="LAYER", help=LAYERS_HELP)


def _add_export(commands: Any) -> None:
    """The ``export`` command's parser."""
    parser = _command(
        commands, "export", run_dir=True,  # it locks the run itself where it writes into it
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
    parser.add_argument("--to", required=True, choices=("tensorboard",), help="the tool to export to")
    parser.add_argument("--logdir", type=Path, help=f"where to write (default: RUN_DIR/{TENSORBOARD})")
    parser.add_argument("--layers", nargs="+", metavar="LAYER", help=LAYERS_HELP)
    parser.add_argument(
        "--max-vectors", type=_positive_int, default=10_000,
        help="the most raw vectors written per layer (default: %(default)s)",
    )


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
