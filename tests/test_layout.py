"""Names on disk and the one atomic write (layout.py), and the import rules the package keeps: layout reads no file
format, nothing inside the package imports its public face."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lightning_embeddings
from lightning_embeddings import layout

PACKAGE = Path(lightning_embeddings.__file__).parent


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """Every import of a module, lazy ones too: ``(module, names)``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", [alias.name for alias in node.names]))
    return found


def test_atomic_write_puts_the_file_in_place_whole_or_leaves_the_old_one(tmp_path):
    target = tmp_path / "deep" / "manifest.json"
    with layout.atomic_write(target) as tmp:
        assert tmp == layout.staged(target) and tmp.name == ".manifest.json.partial"
        tmp.write_text("new")
        assert not target.exists()  # nobody sees it before it is complete
    assert target.read_text() == "new"
    with pytest.raises(OSError, match="disk full"), layout.atomic_write(target) as tmp:
        tmp.write_text("half")
        raise OSError("disk full")
    assert target.read_text() == "new" and sorted(p.name for p in target.parent.iterdir()) == ["manifest.json"]


def test_layout_reads_no_file_format_and_nothing_imports_the_package_face():
    formats = ("pyarrow", "pandas", "numpy")
    assert not [name for name, _ in imports(PACKAGE / "layout.py") if name.split(".")[0] in formats]
    submodules = {path.stem for path in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    for path in PACKAGE.glob("*.py"):
        if path.name == "__init__.py":
            continue
        for module, names in imports(path):
            if module == "lightning_embeddings":
                assert set(names) <= submodules, f"{path.name} imports {set(names) - submodules} from the package face"


RECORDING_SIDE = {"_version", "layout", "outputs", "layers", "reshape", "capture", "batch", "lock", "store", "schedule",
                  "recorder", "rundir", "train_pass", "live"}


def package_imports(module: str) -> set[str]:
    """The package's modules ``module`` imports, lazy imports included."""
    found = set()
    for name, names in imports(PACKAGE / f"{module}.py"):
        if name == "lightning_embeddings":
            found |= set(names)
        elif name.startswith("lightning_embeddings."):
            found.add(name.split(".")[1])
    return found


def test_no_import_circle_on_the_recording_side():
    """Issue 22: capture and layers imported each other (module_table used capture's select_tensor)."""
    graph = {module: package_imports(module) & RECORDING_SIDE for module in RECORDING_SIDE}

    def reaches(start: str, target: str, seen: frozenset = frozenset()) -> bool:
        return any(n == target or (n not in seen and reaches(n, target, seen | {n})) for n in graph[start])

    assert [m for m in sorted(graph) if reaches(m, m)] == []


def test_no_import_circle_anywhere_in_the_package():
    """Issue 23: run imported export and plot (lazily, to redraw after a reduce) while both imported run."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph = {module: package_imports(module) & modules for module in modules}

    def reaches(start: str, target: str, seen: frozenset = frozenset()) -> bool:
        return any(n == target or (n not in seen and reaches(n, target, seen | {n})) for n in graph[start])

    assert [m for m in sorted(graph) if reaches(m, m)] == []


def code_lines(path: Path) -> dict[str, int]:
    """Each function's lines of code in ``path`` (no blank lines, comments or docstrings), by qualified name."""
    import io
    import tokenize

    source = path.read_text()
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    code = set()
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skip:
            code.update(range(token.start[0], token.end[0] + 1))
    return {node.name: len([n for n in range(node.lineno, node.end_lineno + 1) if n in code and n not in docstrings])
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_no_function_over_sixty_lines_of_code():
    long = {f"{path.stem}.{name}": n for path in PACKAGE.glob("*.py") for name, n in code_lines(path).items() if n > 60}
    assert not long, long


def test_no_module_over_five_hundred_lines_and_the_callback_at_most_four_hundred():
    lines = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.glob("*.py")}
    assert {name: n for name, n in lines.items() if n > 500} == {}
    assert lines["callback.py"] <= 400


def test_file_names_on_disk_are_said_only_by_layout():
    names = {value for key, value in vars(layout).items() if key.isupper() and isinstance(value, str) and "." in value}
    assert {"manifest.json", "projections.parquet", "samples.parquet"} <= names
    for path in PACKAGE.glob("*.py"):
        if path.name == "layout.py":
            continue
        literals = {node.value for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        assert not literals & names, f"{path.name} spells {literals & names} instead of importing it from layout"


PICTURES = {"drawn", "palette", "figures", "snapshots", "overview", "datamap", "suspects"}  # read what is drawn, or draw it
MAY_USE = {"paths": {"keyed", "fit_rows", "MapPaths"}, "run_samples": {"sample_columns", "Gallery", "gallery_split"}}


def test_pictures_compute_no_analysis_and_fit_no_map():
    """DESIGN.md: drawing never computes analysis; what the pictures show is computed by their caller (plot_layer,
    write_html) and handed over."""
    for picture in PICTURES:
        for module, names in imports(PACKAGE / f"{picture}.py"):
            name = module.removeprefix("lightning_embeddings.")
            assert name not in {"dynamics", "reduce", "maps", "parametric", "run"}, (picture, module)
            if name in MAY_USE:
                assert set(names) <= MAY_USE[name], f"{picture}.py imports {set(names) - MAY_USE[name]} from {name}"


ANALYSIS = {"dynamics", "paths", "faithfulness", "reduce", "parametric"}  # pure: arrays and DataFrames, maps
HIGHER = {"maps", "run", "run_samples", "reader", "finish", "callback", "export", "loggers", "plot", "page"} | PICTURES


def test_lower_layers_never_import_higher_ones():
    """DESIGN.md: the recording side knows nothing of maps, reading or pictures; analysis knows nothing of
    Lightning."""
    for module in RECORDING_SIDE:
        assert not package_imports(module) & HIGHER, (module, package_imports(module) & HIGHER)
    for module in ANALYSIS:
        lightning = [name for name, _ in imports(PACKAGE / f"{module}.py") if name.split(".")[0] == "lightning"]
        assert lightning == [], (module, lightning)
        assert not package_imports(module) & (HIGHER | RECORDING_SIDE - {"store", "layout", "lock", "_version"})
