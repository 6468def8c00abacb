"""The ``lightning-embeddings`` command line's entry point: choose layers, inspect a run, reduce it again, draw it,
export it.

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
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional

from lightning_embeddings.cli_commands import COMMANDS
from lightning_embeddings.cli_parser import PROG, CommandError, UsageError, build_parser
from lightning_embeddings.layout import MANIFEST
from lightning_embeddings.lock import RunLock, RunLockedError


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
        args = build_parser().parse_args(argv)
        if args.command is None:
            *others, last = COMMANDS
            raise UsageError(f"give a command: {', '.join(others)} or {last} (see: {PROG} --help)")
        with _one_line_warnings(), _lock_while_writing(args):
            COMMANDS[args.command](args)
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
    return RunLock(run_dir) if run_dir is not None and (run_dir / MANIFEST).is_file() else contextlib.nullcontext()


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


if __name__ == "__main__":
    sys.exit(main())
