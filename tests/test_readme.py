"""The README runs as written (issue 21): after its two set-up commands, every bash block in one terminal (the
environment activated by the README's own line), then every Python block in one session, from a folder that holds
the repository's ``examples`` and ``.venv`` as the repository's root does.

Left out, each for its reason: the set-up commands themselves (the test runs in the environment they made), and
``embedding-atlas`` (it serves a web page until stopped; the line before it, which writes its input, runs).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SET_UP = ('python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e ".[examples]" && ',
          'python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install -e ".[test]" && ')
NOT_RUN = {"embedding-atlas": "serves a web page until stopped"}

pytestmark = pytest.mark.slow  # the README's commands, each in its own process


def blocks(language: str) -> list[tuple[int, str]]:
    """The README's fenced blocks in ``language``: (line number, text)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = []
    for match in re.finditer(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M):
        found.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return found


def bash_session() -> str:
    """Every bash block, in order, as one script: the set-up blocks' last command only (the one that runs the
    example), each block announced on stderr so that a failure says where."""
    lines = ["set -euo pipefail"]
    for number, block in blocks("bash"):
        if block.startswith(SET_UP[1]):
            continue  # the test command
        if block.startswith(SET_UP[0]):
            block = block[len(SET_UP[0]):]
        kept = [line for line in block.splitlines() if line.split(" ", 1)[0] not in NOT_RUN]
        lines += [f"echo '@@ README.md line {number}' >&2", *kept]
    return "\n".join(lines) + "\n"


def python_session() -> str:
    """Every Python block, in order, in one namespace; the test functions a block defines are called."""
    parts = []
    for number, block in blocks("python"):
        parts.append(f"print('@@ README.md line {number}', file=sys.stderr, flush=True)\n"
                     f"exec(compile({block!r}, 'README.md line {number}', 'exec'), session)\n"
                     f"for name in [n for n in session if n.startswith('test_') and n not in called]:\n"
                     f"    called.add(name)\n"
                     f"    session[name]()\n")
    return "import sys\nsession, called = {'__name__': '__readme__'}, set()\n" + "".join(parts)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A fresh folder laid out as the repository's root: ``examples`` and the environment ``.venv``."""
    path = tmp_path_factory.mktemp("readme")
    (path / "examples").symlink_to(ROOT / "examples")
    (path / ".venv").symlink_to(Path(sys.prefix))
    return path


def run(workdir: Path, argv: list[str], timeout: int) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "MPLBACKEND": "Agg", "WANDB_MODE": "offline"}
    return subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def test_every_bash_line_runs_as_written(workdir):
    (workdir / "session.sh").write_text(bash_session())
    done = run(workdir, ["bash", "session.sh"], timeout=1200)
    where = [line for line in done.stderr.splitlines() if line.startswith("@@")]
    assert done.returncode == 0, f"failed after {where[-1:]}:\n{done.stderr[-4000:]}"
    assert len(where) == len(blocks("bash")) - 1  # every block but the test command
    run_dir = workdir / "runs/digits/lightning_logs/version_0/embeddings"
    assert sorted(p.name for p in (run_dir / "plots").glob("*.html")) == ["embeddings.html"]
    assert (workdir / "runs/tb/projector_config.pbtxt").is_file() and (workdir / "runs/head.1-last.parquet").is_file()
    assert "head.1" in done.stdout and "suspicion" in done.stdout  # the samples tables
    cli_runs = sorted((workdir / "lightning_logs").glob("version_*/embeddings/manifest.json"))
    assert len(cli_runs) == 1 and len(list(cli_runs[0].parent.glob("vectors/*.parquet"))) == 5  # 5 epochs, not 1,000


def test_every_python_block_runs_as_written(workdir):
    (workdir / "session.py").write_text(python_session())
    (workdir / "activate.sh").write_text("source .venv/bin/activate\npython session.py\n")
    done = run(workdir, ["bash", "activate.sh"], timeout=1200)
    where = [line for line in done.stderr.splitlines() if line.startswith("@@")]
    assert done.returncode == 0, f"failed in {where[-1:]}:\n{done.stderr[-4000:]}"
    assert len(where) == len(blocks("python"))
    # the quick start's run.reduce(reducer="pacmap", n_components=3) leaves pictures of its maps (it removed them)
    (quick_start,) = [m.parent for m in workdir.glob("lightning_logs/version_*/embeddings/manifest.json")
                      if (json.loads(m.read_text())["reducer"] or {}).get("name") == "pacmap"]
    assert sorted(p.name for p in (quick_start / "plots").glob("*.png")) == [
        "features.1-overview.png", "features.1-snapshots.png", "features.1-suspects.png", "head.1-overview.png",
        "head.1-snapshots.png", "head.1-suspects.png"]
