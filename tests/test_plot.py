"""Pictures: the functions that choose what fits on a picture, the PNGs and the HTML page of a real run, and the page
rendered by a headless Chromium."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pytest


from conftest import DigitsCNN, fit_collector  # noqa: E402

from lightning_embeddings import EmbeddingRun, drawn, figures, plot  # noqa: E402
from lightning_embeddings import paths as map_paths  # noqa: E402
from lightning_embeddings import datamap as datamap_picture  # noqa: E402
from lightning_embeddings import snapshots as snapshots_picture  # noqa: E402
from lightning_embeddings import overview as overview_picture  # noqa: E402
from lightning_embeddings import page as html_page  # noqa: E402
from lightning_embeddings.drawn import panel_title, stratified_sample  # noqa: E402
from lightning_embeddings.page import write_html  # noqa: E402
from lightning_embeddings.plot import plot_layer, plot_run  # noqa: E402
from lightning_embeddings.run_samples import recorded  # noqa: E402

N_VAL = 449  # digits validation samples
RED = np.array([0xC0, 0x00, 0x00]) / 255  # palette.WARNING


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real 3-epoch PCA fit of the digits CNN (layers ``features.1`` and ``head.1``), shared by the module;
    tests work on copies (:func:`fresh`)."""
    _, collector = fit_collector(tmp_path_factory.mktemp("digits"), trainer_kwargs={"max_epochs": 3})
    return Path(collector.dirpath)


class LogitsCNN(DigitsCNN):
    """The digits CNN whose validation_step also returns its logits: samples() gets confidence and variability."""

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        return {**super().validation_step(batch, batch_idx, dataloader_idx), "logits": self(batch[0])}


@pytest.fixture(scope="module")
def train_run(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingRun:
    """A short real fit with ``record_train=True`` and logits (layer ``head.1``, 2 epochs of 4 batches): every
    training sample recorded beside the 449 validation samples. Tests draw elsewhere (``path=``) or read only."""
    _, collector = fit_collector(tmp_path_factory.mktemp("train"), model=LogitsCNN(), layers=["head.1"],
                                 record_train=True, trainer_kwargs={"max_epochs": 2, "limit_train_batches": 4})
    return EmbeddingRun(collector.dirpath)


@pytest.fixture
def fresh(digits_run: Path, tmp_path: Path) -> Path:
    """A private copy of the shared run, without pictures."""
    target = tmp_path / "embeddings"
    shutil.copytree(digits_run, target, ignore=shutil.ignore_patterns("plots"))
    return target


def view(run: EmbeddingRun, layer: str = "head.1") -> drawn.LayerView:
    """What the pictures draw of ``layer``, with its samples handed over as plot_layer does."""
    return drawn.load_layer(run, layer, recorded(run, layer))


def overview_of(info: drawn.LayerView):
    """The overview figure of ``info`` with the paths plot_layer hands it."""
    return overview_picture.overview_figure(info, map_paths.map_paths(info.frame, info.palette.kind == "categorical"))


def edit_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def read_png(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return imread(path)


def distinct_colours(image: np.ndarray) -> int:
    rgb = np.round(image[..., :3] * 255).astype(np.int64)
    return len(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]))


def near(image: np.ndarray, colour: np.ndarray, tolerance: float = 6 / 255) -> int:
    return int((np.abs(image[..., :3] - colour) <= tolerance).all(axis=-1).sum())


# ------------------------------------------------------------------------------------ pure functions


def test_stratified_sample_keeps_every_class_and_the_same_samples():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    frame = pd.concat(
        pd.DataFrame(dict(sample_id=np.arange(1000), stage="fit", epoch=e, step=e, dataloader_idx=0, x=0.0, y=0.0,
                          label=labels))
        for e in range(2)
    )
    keys, total = stratified_sample(frame, limit=100, seed=0)
    assert total == 1000 and 90 <= len(keys) <= 100
    kept = labels[keys]
    assert {int(c): int((kept == c).sum()) for c in (0, 1, 2)} == {0: 90, 1: 9, 2: 1}
    again, _ = stratified_sample(frame, limit=100, seed=0)
    np.testing.assert_array_equal(keys, again)
    assert stratified_sample(frame, limit=1000)[0] is None
    some_unlabelled = frame.astype({"label": "Int64"})
    some_unlabelled.loc[some_unlabelled.sample_id >= 990, "label"] = pd.NA
    keys, _ = stratified_sample(some_unlabelled, limit=100, seed=0)
    assert np.isin(np.arange(990, 1000), keys).sum() == 1  # the unlabelled samples are a class of their own
    assert stratified_sample(frame.drop(columns=["label"]), limit=100)[0].size == 100


def test_panel_title_warns_in_plain_words_below_0_8():
    snapshot = {"stage": "fit", "epoch": 0, "step": 22}
    unfaithful = panel_title(snapshot, 0.62)
    assert unfaithful.text.splitlines() == ["epoch 0 · step 22", "trustworthiness 0.62"]
    assert unfaithful.warning == "not faithful: points placed by the final map"
    assert panel_title(snapshot, 0.62, fitted=True).warning.startswith("not faithful: neighbours")
    assert panel_title(snapshot, 0.62, align="joint").warning.startswith("not faithful: neighbours")
    assert panel_title(snapshot, 0.93).warning is None
    assert panel_title(snapshot, 0.80).warning is None
    unknown = panel_title(snapshot, None)
    assert unknown.warning is None and "trustworthiness" not in unknown.text
    sampled = panel_title({"stage": "test", "epoch": 4, "step": 110}, 0.9, shown=20_000, total=51_234)
    assert sampled.text.splitlines() == ["test · epoch 4 · step 110", "trustworthiness 0.90", "20,000 of 51,234 points shown"]
    assert "points shown" not in panel_title(snapshot, 0.9, shown=449, total=449).text


def test_panel_title_gives_temporal_preservation_and_leaves_unfaithful_paths_to_the_figure():
    snapshot = {"stage": "fit", "epoch": 1, "step": 44}
    title = panel_title(snapshot, 0.91, motion=0.62)
    assert title.text.splitlines() == ["epoch 1 · step 44", "trustworthiness 0.91", "temporal preservation 0.62"]
    assert title.warning is None
    low = panel_title(snapshot, 0.91, motion=0.31)  # the map's paths, said once per figure: no red panel
    assert low.warning is None and low.text.splitlines()[-1] == "temporal preservation 0.31"
    assert panel_title(snapshot, 0.62, motion=0.31).warning == "not faithful: points placed by the final map"
    assert "temporal" not in panel_title(snapshot, 0.91, motion=float("nan")).text


def test_a_missing_html_extra_is_named(monkeypatch, fresh):
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    with pytest.raises(ImportError, match=r"pip install 'lightning-embeddings\[html\]'"):
        write_html(fresh)


# ---------------------------------------------------------------------------------------------- PNGs


def faithful_paths(manifest):
    """Every layer's paths faithful (the digits run's may not be: its motion is measured, not chosen)."""
    for facts in manifest["reducer"]["layers"].values():
        facts["temporal_preservation"] = {name: 0.9 for name in facts.get("temporal_preservation", {})}


def test_plot_run_writes_two_readable_pngs_per_layer(fresh):
    edit_manifest(fresh, faithful_paths)
    run = EmbeddingRun(fresh)
    written = plot_run(run)
    names = [p.name for p in written]
    assert names == ["features.1-snapshots.png", "features.1-overview.png", "head.1-snapshots.png", "head.1-overview.png"]
    assert all(p.parent == fresh / "plots" for p in written)
    assert sorted(p.name for p in (fresh / "plots").iterdir()) == sorted(names)  # no temporary file left
    for path in written:
        image = read_png(path)
        height, width = image.shape[:2]
        assert 400 <= height <= 3000 and 1000 <= width <= 3000, (path.name, image.shape)
        assert distinct_colours(image) > 200, f"{path.name} looks blank"
    # three fit snapshots side by side: wider than tall; trustworthiness of PCA on digits is high: no red frame
    snapshots = read_png(fresh / "plots" / "head.1-snapshots.png")
    assert snapshots.shape[1] > 2 * snapshots.shape[0]
    assert near(snapshots, RED) < 50
    assert not map_paths.misclassified(run.projections("head.1")).empty  # the overview has marks to draw


def test_unfaithful_panels_are_framed_in_red_and_trustworthiness_may_be_absent(fresh):
    def unfaithful(manifest):
        faithful_paths(manifest)
        trust = manifest["reducer"]["layers"]["head.1"]["trustworthiness"]
        first = next(iter(trust))
        trust[first] = 0.5
        del manifest["reducer"]["layers"]["features.1"]["trustworthiness"]

    edit_manifest(fresh, unfaithful)
    written = plot_run(fresh)
    red = near(read_png(fresh / "plots" / "head.1-snapshots.png"), RED)
    assert red > 500, red  # a 2-px red frame around one panel, and its red title
    assert near(read_png(fresh / "plots" / "features.1-snapshots.png"), RED) < 50
    assert len(written) == 4


@pytest.mark.parametrize("motion", [0.2, 0.95])
def test_unfaithful_paths_are_said_once_with_the_fix_and_not_drawn_as_motion(fresh, motion):
    def paths(manifest):
        facts = manifest["reducer"]["layers"]["head.1"]
        facts["trustworthiness"] = {name: 0.95 for name in facts["trustworthiness"]}
        facts["temporal_preservation"] = {name: motion for name in facts["temporal_preservation"]}

    edit_manifest(fresh, paths)
    plot_run(fresh, layers=["head.1"])
    assert near(read_png(fresh / "plots" / "head.1-snapshots.png"), RED) < 50  # no panel in red for its paths
    info = view(EmbeddingRun(fresh))
    header = snapshots_picture.snapshots_figure(info)._suptitle.get_text()
    fix = f"lightning-embeddings reduce {fresh} --reducer parametric"
    assert ("paths not faithful into 2 of 2 snapshots" in header and fix in header.replace("\n", " ")) == (motion < 0.5)
    overview = overview_of(info)
    ax, said = overview.axes[0], overview._suptitle.get_text()
    paths_drawn = sum(c.get_gid() == "path" for c in ax.collections)  # class medians, movers, misclassified: one each
    if motion < 0.5:
        assert paths_drawn == 0 and said.endswith("samples: where they end")
        assert "no paths drawn: this map's paths are not the motion in the vectors" in ax.get_title()
        assert fix in ax.get_title().replace("\n", " ")
    else:
        assert paths_drawn >= 10 and said.endswith("where they end and how they got there")
        assert "no paths drawn" not in ax.get_title()


def test_labels_with_dollar_signs_are_drawn_as_the_plain_text_they_are(fresh, capsys):
    """Issue 20, item 4: "$\\notacommand$" and "$x_$" are not valid mathtext and made matplotlib raise after
    training; "$x^2$" was drawn as math. All are drawn as written, by the CLI's plot as at the end of fit."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lightning_embeddings.cli import main

    names = ["$\\notacommand$", "$x_$", "$x^2$", "plain"]
    for path in [*(fresh / "projections").glob("*.parquet"), fresh / "projections.parquet"]:
        table = pq.read_table(path)
        labels = pa.array([names[value % 4] for value in table.column("label").to_pylist()])
        pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", labels), path)
    assert main(["plot", str(fresh)]) == 0, capsys.readouterr().err
    assert len(list((fresh / "plots").glob("*.png"))) == 4
    info = view(EmbeddingRun(fresh))
    legend = snapshots_picture.snapshots_figure(info).legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [n.replace("$", "\\$") for n in sorted(names)]


def test_labels_with_markup_are_shown_as_written_in_the_page(fresh, capsys):
    """Issue 21: plotly reads legend names and hover values as HTML, so a label "<b>seven</b>" was drawn bold and
    "AT&amp;T" as "AT&T"; they are shown as written."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ["<b>seven</b>", "AT&amp;T", "a<br>b", "plain"]
    for path in [*(fresh / "projections").glob("*.parquet"), fresh / "projections.parquet"]:
        table = pq.read_table(path)
        labels = pa.array([names[value % 4] for value in table.column("label").to_pylist()])
        pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", labels), path)
    page = write_html(EmbeddingRun(fresh), ["head.1"])
    figure = json.loads(re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", page.read_text(),
                                  flags=re.S).group(1))
    shown = {trace["name"] for trace in figure}
    assert {"&lt;b&gt;seven&lt;/b&gt;", "AT&amp;amp;T", "a&lt;br&gt;b", "plain"} <= shown, shown
    hovered = {value for trace in figure for row in trace.get("customdata") or [] for value in row}
    assert "&lt;b&gt;seven&lt;/b&gt;" in hovered and "<b>seven</b>" not in hovered


def panel_points(ax) -> int:
    """The points of a panel's scatter of samples (its first collection)."""
    return len(ax.collections[0].get_offsets())


def suspect_marks(ax) -> list[tuple[str, tuple[float, float]]]:
    return [(t.get_text(), tuple(map(float, t.xy))) for t in ax.texts if t.get_gid() == "suspect"]


def test_record_train_pictures_draw_the_evaluated_split_and_mark_the_top_suspects(train_run, digits_run):
    projections = train_run.projections("head.1")
    assert set(projections["split"]) == {"train", "val"}  # the run holds the training rows: 3x the points
    info = view(train_run)
    assert set(info.frame["split"]) == {"val"} and info.total == N_VAL
    figure = snapshots_picture.snapshots_figure(info)
    panels = [ax for ax in figure.axes if ax.get_visible() and ax.collections]
    plain = [ax for ax in snapshots_picture.snapshots_figure(view(EmbeddingRun(digits_run))).axes
             if ax.get_visible() and ax.collections]
    assert [panel_points(ax) for ax in panels] == [N_VAL] * 2  # the same points as a run without record_train
    assert {panel_points(ax) for ax in plain} == {N_VAL}

    # the 10 first rows of samples(): marked with their ids where they are in the last fit snapshot, and no other
    top = train_run.samples("head.1").head(10)
    last = projections[(projections["split"] == "val") & (projections["step"] == projections["step"].max())]
    where = last.set_index("sample_id").loc[top["sample_id"], ["x", "y"]].to_numpy(float)
    expected = [(str(i), tuple(xy)) for i, xy in zip(top["sample_id"], where)]
    assert suspect_marks(panels[0]) == []
    marks = suspect_marks(panels[-1])
    assert [name for name, _ in marks] == [name for name, _ in expected]
    np.testing.assert_allclose([xy for _, xy in marks], [xy for _, xy in expected], rtol=1e-6)
    assert "most likely mislabelled (suspicion)" in figure.legends[-1].get_texts()[0].get_text()
    overview = overview_of(info).axes[0]
    assert panel_points(overview) == N_VAL
    assert [name for name, _ in suspect_marks(overview)] == [str(i) for i in top["sample_id"]]
    assert any("most likely mislabelled (suspicion)" in t.get_text() for t in overview.get_legend().get_texts())


def drawn_ids(fig, ax) -> tuple[list, list, object]:
    """The pixel boxes of the suspects' ids on ``ax`` and of their diamonds, and the axes' box, in the drawn figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ids = [Text.get_window_extent(t, renderer) for t in ax.texts if t.get_gid() == "suspect"]
    diamonds = [c for c in ax.collections if len(c.get_offsets()) and c.get_paths()
                and len(c.get_paths()[0].vertices) == 5]  # the "D" marker: a closed square of 5 vertices
    half = np.sqrt(diamonds[0].get_sizes()[0]) / 2 * fig.dpi / 72
    centres = ax.transData.transform(diamonds[0].get_offsets())
    return ids, [Bbox.from_bounds(x - half, y - half, 2 * half, 2 * half) for x, y in centres], ax.get_window_extent(renderer)


def shared(a, b) -> float:
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


def assert_readable_ids(fig, ax, n: int) -> None:
    ids, diamonds, frame = drawn_ids(fig, ax)
    assert len(ids) == len(diamonds) == n
    for i, box in enumerate(ids):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, (box, frame)
        assert all(shared(box, other) == 0 for other in ids[i + 1:]), f"id {i} is written over another id"
        assert all(shared(box, diamond) == 0 for diamond in diamonds), f"id {i} is written over a diamond"


def test_suspects_ids_never_overlap_and_their_legend_covers_no_panel(train_run):
    """Issue 21: ids of suspects close together were printed over each other ("296" over "175"), the data map's
    pile of suspects was unreadable, and the suspects' legend sat inside the last panel over its points."""
    info = view(train_run)
    fig = snapshots_picture.snapshots_figure(info)
    last = [ax for ax in fig.axes if ax.get_visible() and ax.collections][-1]
    assert_readable_ids(fig, last, 10)
    assert all(ax.get_legend() is None for ax in fig.axes)  # the suspects' legend is the figure's, below the panels
    assert any("most likely mislabelled" in t.get_text() for legend in fig.legends for t in legend.get_texts())
    overview = overview_of(info)
    assert_readable_ids(overview, overview.axes[0], 10)
    legend = overview.axes[0].get_legend().get_window_extent()
    assert shared(legend, overview.axes[0].get_window_extent()) == 0  # below the map, not over it
    split, rows = datamap_picture.datamap_rows(info)
    datamap = datamap_picture.datamap_figure(info, split, rows)
    assert_readable_ids(datamap, datamap.axes[0], 10)

    # ten suspects piled on one spot: their ids still apart, each joined to its diamond by a line
    keys = figures.suspect_keys(info.suspects)
    piled = np.isin(info.frame["_key"].to_numpy(), keys)
    spot = info.frame.loc[piled, ["x", "y"]].mean().to_numpy()
    info.frame.loc[piled, ["x", "y"]] = (spot + np.random.default_rng(0).normal(0, 0.01, (piled.sum(), 2))).astype(
        info.frame["x"].dtype)
    overview = overview_of(info)
    assert_readable_ids(overview, overview.axes[0], 10)
    assert all(t.arrow_patch is not None for t in overview.axes[0].texts if t.get_gid() == "suspect")


def test_a_panel_squeezed_by_the_shared_axes_gets_a_zoomed_inset(fresh):
    """Issue 21: under align="last" the untrained epoch 0 often sits in one spot of the final map, a sliver on the
    shared axes; its panel gets an inset at its own scale, the others none."""
    file = fresh / "projections" / "head.1.parquet"
    table = pd.read_parquet(file)
    first = (table["step"] == table["step"].min()).to_numpy()
    centre = table.loc[first, ["x", "y"]].mean().to_numpy()
    table.loc[first, ["x", "y"]] = centre + (table.loc[first, ["x", "y"]].to_numpy() - centre) * 0.03
    table.to_parquet(file)
    info = view(EmbeddingRun(fresh))
    panels = [ax for ax in snapshots_picture.snapshots_figure(info).axes if ax.get_visible() and ax.collections]
    insets = [[child for child in ax.child_axes] for ax in panels]
    assert [len(found) for found in insets] == [1, 0, 0]
    inset = insets[0][0]
    assert inset.get_title().startswith("zoomed x")
    xs = table.loc[first, "x"].to_numpy()
    low, high = inset.get_xlim()
    assert low <= np.quantile(xs, 0.02) and np.quantile(xs, 0.98) <= high
    assert (high - low) < 0.2 * np.diff(panels[0].get_xlim())[0]  # its own scale, not the shared one
    assert len(inset.collections[0].get_offsets()) == first.sum() // 1  # every point of the panel


def test_paths_fade_in_so_the_early_jumps_stay_faint(fresh):
    """Issue 21: the overview's paths crossed the whole map in bold: the first step, from where the untrained
    vectors were, is the longest. A path is drawn faint at its start and bold at its end."""
    def faithful(manifest):
        facts = manifest["reducer"]["layers"]["head.1"]
        facts["temporal_preservation"] = {name: 0.9 for name in facts["temporal_preservation"]}

    edit_manifest(fresh, faithful)
    ax = overview_of(view(EmbeddingRun(fresh))).axes[0]
    paths = [c for c in ax.collections if c.get_gid() == "path"]
    assert len(paths) >= 10
    for path in paths:
        alphas = path.get_colors()[:, 3]
        assert alphas[0] <= 0.15 * alphas[-1] and np.all(np.diff(alphas) >= 0), alphas


def test_data_map_only_where_logits_were_recorded(train_run, fresh, tmp_path):
    written = plot_run(train_run, path=tmp_path / "pictures")
    assert [p.name for p in written] == ["head.1-snapshots.png", "head.1-overview.png", "head.1-datamap.png"]
    assert distinct_colours(read_png(written[-1])) > 100
    assert [p.name for p in plot_run(fresh, layers=["head.1"])] == [  # the digits CNN returns no logits: no data map
        "head.1-snapshots.png", "head.1-overview.png"]

    info = view(train_run)
    split, rows = datamap_picture.datamap_rows(info)
    train = train_run.samples("head.1", split="train")
    assert split == "train" and len(rows) == len(train) == 4 * 64  # the training split where recorded: what 4 batches of 64 draw
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's set_bad was warned about on every CLI plot and reduce
        ax = datamap_picture.datamap_figure(info, split, rows).axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), train[["variability", "confidence"]].to_numpy())
    np.testing.assert_allclose(ax.collections[0].get_array(), train["correct"].to_numpy())
    assert [name for name, _ in suspect_marks(ax)] == [str(i) for i in train["sample_id"].head(10)]
    assert "data map of the training split" in ax.get_title()

    # a layer's data map is one of its pictures: a new map of the layer draws it again with the others
    assert plot.layer_pictures(tmp_path, "head.1")[-1].name == "head.1-datamap.png"
    copy = EmbeddingRun(shutil.copytree(train_run.path, tmp_path / "copy", ignore=shutil.ignore_patterns("plots")))
    (copy.path / "plots").mkdir()
    (copy.path / "plots" / "head.1-datamap.png").write_bytes(b"a data map of the old map's run")
    copy.reduce(reducer="pca", progress=False)
    assert (copy.path / "plots" / "head.1-datamap.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_run_skips_a_layer_without_a_map(fresh):
    (fresh / "projections" / "features.1.parquet").unlink()
    with pytest.warns(UserWarning, match="layer 'features.1' has no map"):
        written = plot_run(fresh, html=True)
    assert [p.name for p in written] == ["head.1-snapshots.png", "head.1-overview.png", "embeddings.html"]
    with pytest.raises(FileNotFoundError, match="No projections of layer 'features.1'"):
        plot_layer(fresh, "features.1")


def test_a_3d_map_is_drawn_by_x_and_y(fresh, tmp_path):
    run = EmbeddingRun(fresh)
    run.reduce(reducer="pca", n_components=3, layers=["head.1"], progress=False)
    assert "z" in run.projections("head.1")
    written = plot_run(run, layers=["head.1"], html=True, path=tmp_path / "pictures")
    assert [p.parent for p in written] == [tmp_path / "pictures"] * 3
    assert distinct_colours(read_png(written[0])) > 200
    assert "3-D map: x and y drawn, z not shown (it is the z column of projections/head.1.parquet)." in written[-1].read_text()


def test_the_snapshots_header_stays_inside_the_picture_and_off_the_legend(fresh):
    """Issue 21: the header's note on unfaithful paths (with the run's path in its command) ran past the picture's
    right edge and over the label legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    run = EmbeddingRun(fresh)
    run.reduce(reducer="pca", n_components=3, layers=["head.1"], progress=False)  # 3-D: one more header line
    info = view(run)
    assert info.paths_note(), "this run's PCA paths are unfaithful: the header carries the long note"
    fig = snapshots_picture.snapshots_figure(info)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    title = fig._suptitle.get_window_extent(renderer)
    assert title.x0 >= 0 and title.x1 <= fig.bbox.width, (title, fig.bbox)
    legend = fig.legends[0].get_window_extent(renderer)
    assert not title.overlaps(legend), (title, legend)


# ---------------------------------------------------------------------------------------------- HTML


def page_scripts(page: str) -> list[str]:
    return re.findall(r"<script[^>]*>(.*?)</script>", page, flags=re.DOTALL)


def test_html_is_one_offline_page_with_plotly_inlined_once(fresh):
    pytest.importorskip("plotly", reason="the page needs the 'html' extra: pip install 'lightning-embeddings[html]'")
    run = EmbeddingRun(fresh)
    page_path = write_html(run)
    assert page_path == fresh / "plots" / "embeddings.html"
    page = page_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<html") == 1
    scripts = page_scripts(page)
    assert sum(len(s) > 1_000_000 for s in scripts) == 1, [len(s) for s in scripts]  # plotly.js, once
    assert len(re.findall(r'Plotly\.newPlot\(\s*"lightning-embeddings-\d+"', page)) == 2  # one figure per layer
    assert not re.search(r"<script[^>]*\bsrc=", page), "the page loads a script from elsewhere: not offline"
    assert not re.search(r"src=[\"']?https?://cdn\.plot\.ly", page)
    for layer in run.layers:
        assert f"<h2>{layer}</h2>" in page
    figure = next(s for s in scripts if "lightning-embeddings-0" in s)
    ids = set(re.findall(r'"ids":\[([^\]]*)\]', figure)[0:11])  # the first frame's traces
    shown = {int(i) for part in ids for i in re.findall(r'"(\d+)"', part)}
    assert shown == set(range(N_VAL))
    assert "sample %{customdata[0]}<br>label %{customdata[1]}<br>prediction %{customdata[2]}" in figure.replace(
        "\\u003cbr\\u003e", "<br>")
    for snapshot in run.snapshots:
        assert f'"name":"{snapshot["name"]}"' in figure  # one frame per snapshot
    assert "Subsampled" not in page


def test_html_hover_gives_each_samples_dynamics_and_draws_the_evaluated_split(train_run, tmp_path):
    pytest.importorskip("plotly", reason="the page needs the 'html' extra")
    samples = train_run.samples("head.1")
    figure = html_page.layer_figure(view(train_run))
    template = figure.frames[-1].data[0].hovertemplate
    fields = re.findall(r"(\w+) %\{customdata\[(\d+)\]\}", template)
    index = {name: int(i) for name, i in fields}
    assert {"suspicion", "knn_agreement", "forgetting_events", "confidence", "learned_epoch"} <= set(index)
    for frame in figure.frames:
        assert sum(len(trace.ids) for trace in frame.data) == N_VAL  # the validation samples, not the training rows
    points = {(trace.ids[i]): row for trace in figure.frames[-1].data for i, row in enumerate(trace.customdata)}
    for _, sample in samples.iloc[[0, 1, len(samples) // 2, -1]].iterrows():
        hover = points[str(int(sample["sample_id"]))]
        assert hover[index["suspicion"]] == f"{sample['suspicion']:.3f}"
        assert hover[index["knn_agreement"]] == f"{sample['knn_agreement']:.3f}"
        assert hover[index["forgetting_events"]] == str(int(sample["forgetting_events"]))
        assert hover[index["confidence"]] == f"{sample['confidence']:.3f}"
    page = write_html(train_run, path=tmp_path).read_text()
    assert "suspicion %{customdata[" in page.replace("\\u003cbr\\u003e", "<br>")


def test_html_says_when_it_subsamples(fresh, monkeypatch):
    pytest.importorskip("plotly", reason="the page needs the 'html' extra")
    monkeypatch.setattr(drawn, "MAX_POINTS", 100)
    page = write_html(fresh, layers=["head.1"]).read_text()
    note = re.search(r"<b>Subsampled:</b> (\d+) of 449 samples drawn in every frame", page)
    assert note and 90 <= int(note.group(1)) <= 100
    figure = next(s for s in page_scripts(page) if "lightning-embeddings-0" in s)
    first = re.findall(r'"ids":\[([^\]]*)\]', figure)[:11]
    assert sum(len(re.findall(r'"\d+"', part)) for part in first) == int(note.group(1))
    assert "of 449 points shown" in figure


def chromium_or_skip() -> str:
    pytest.importorskip("plotly", reason="the page needs the 'html' extra")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium): the page is not opened in a browser")
    return chromium


class Chromium:
    """A headless Chromium driven through the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
    messages ending in NUL, commands on fd 3, answers and events on fd 4): no port, no extra library. Pages run in
    real time: under ``--virtual-time-budget`` requestAnimationFrame stops firing, and plotly's slider and
    transitions wait on it."""

    def __init__(self, executable: str, profile: Path, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.log = profile.with_suffix(".log")
        commands_r, self._commands = os.pipe()
        self._answers, answers_w = os.pipe()
        # the browser's ends, moved out of the way so that putting them on 3 and 4 cannot overwrite one another
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (commands_r, answers_w)]
        os.close(commands_r)
        os.close(answers_w)
        args = [
            executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
            "--window-size=1280,1000", "--remote-debugging-pipe", "about:blank",
        ]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", f'exec "$@" 3<&{ends[0]} 4>&{ends[1]}', "bash", *args],
                pass_fds=ends, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        for fd in ends:
            os.close(fd)
        self._buffer, self._id, self._events = b"", 0, []

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._send("Browser.close")
        except (OSError, TimeoutError, RuntimeError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._answers)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._answers], [], [], left)[0]:
                raise TimeoutError(f"Chromium did not answer in {self.timeout} s; its log: {self.log}")
            chunk = os.read(self._answers, 1 << 16)
            if not chunk:
                raise ConnectionError(f"Chromium closed its DevTools pipe; its log ends: "
                                      f"{self.log.read_text(errors='replace')[-2000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _send(self, method: str, session: Optional[str] = None, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") != self._id:
                self._events.append(answer)
            elif "error" in answer:
                raise RuntimeError(f"{method}: {answer['error']}")
            else:
                return answer["result"]

    def _event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == method for e in self._events):
            self._events.append(self._read(deadline))
        event = next(e for e in self._events if e.get("method") == method)
        self._events.remove(event)
        return event

    def evaluate(self, page: Path, expression: str):
        """Open ``page`` in a new tab, wait for its load event, and return what ``expression`` gives (a promise is
        awaited); a JavaScript exception fails the test with its text."""
        target = self._send("Target.createTarget", url="about:blank")["targetId"]
        session = self._send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self._send("Page.enable", session)
        navigated = self._send("Page.navigate", session, url=page.resolve().as_uri())
        assert not navigated.get("errorText"), f"Chromium could not open {page}: {navigated['errorText']}"
        self._events.clear()  # what came before the navigation was answered belongs to about:blank
        self._event("Page.loadEventFired")
        result = self._send("Runtime.evaluate", session, expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, json.dumps(result["exceptionDetails"])[:3000]
        return result["result"].get("value")


# Waits for both figures to be drawn (their sliders are drawn last), then gives the whole DOM.
RENDERED = """
(async () => {
  for (let t = 0; t < 400 && document.querySelectorAll(".js-plotly-plot .slider-container").length < 2; t++) {
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  return document.documentElement.outerHTML;
})()
"""


@pytest.mark.slow  # starts another process
def test_html_renders_in_headless_chromium(fresh, tmp_path):
    chromium = chromium_or_skip()
    page = write_html(fresh)
    with Chromium(chromium, tmp_path / "profile") as browser:
        dom = browser.evaluate(page, RENDERED)
    assert "lightning-embeddings-1" in dom
    first, second = dom.split('id="lightning-embeddings-1"', 1)
    assert first.count('class="main-svg"') >= 1 and second.count('class="main-svg"') >= 1
    points = [len(re.findall(r'<path class="point\b', part)) for part in (first, second)]
    assert points == [N_VAL, N_VAL], points
    assert 'class="slider-container"' in first and 'class="slider-container"' in second


# Drives the page's first figure as a user would (a press on the slider's rail at a step, a click on play) and
# gives, on load and after each action, the title drawn, the slider's value and which frame's points are drawn.
DRIVER = """
(async () => {
  const states = [];
  const gd = document.getElementById("lightning-embeddings-0");
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  for (let t = 0; !(gd._fullLayout && gd.querySelector(".slider-rail-touch-rect")) && t < 200; t++) await sleep(50);
  const frames = gd._transitionData._frames;
  const key = (x) => x && x.bdata !== undefined ? x.bdata : JSON.stringify(x);  // x: a typed array spec {dtype, bdata}
  const same = (a, b) => key(a) === key(b);
  const shown = () => frames.findIndex((f) => f.data.every((trace, i) => same(trace.x, gd.data[i].x)));
  const title = () => {
    const node = gd.querySelector(".g-gtitle .gtitle");
    if (!node) return {text: null, warningFill: null};
    const lines = node.querySelectorAll("tspan.line");
    const warning = Array.from(node.querySelectorAll("tspan")).filter((t) => t.textContent.includes("not faithful"));
    return {text: lines.length ? Array.from(lines, (l) => l.textContent).join("\\n") : node.textContent,
            warningFill: warning.length ? getComputedStyle(warning[warning.length - 1]).fill : null};
  };
  const record = (action) => {
    const current = gd.querySelector(".slider-group > text").textContent;  // the slider's "snapshot: <label>"
    states.push({action, shown: shown(), active: gd._fullLayout.sliders[0].active, current, ...title()});
  };
  // resolves on plotly_animated (the animation, and its redraw, are done), or says "timeout" when it never comes
  const settled = (act) => new Promise((resolve) => {
    let done = false;
    const finish = (how) => { if (!done) { done = true; resolve(how); } };
    gd.on("plotly_animated", () => finish("animated"));
    act();
    setTimeout(() => finish("timeout"), 8000);
  }).then(async (how) => { await sleep(50); return how; });
  const mouse = (node, type, x, y) => node.dispatchEvent(new MouseEvent(type, {bubbles: true, cancelable: true,
    view: window, clientX: x, clientY: y, button: 0}));
  const slide = async (k) => {
    const rail = gd.querySelector(".slider-rail-touch-rect"), box = rail.getBoundingClientRect();
    const x = box.left + 10 + (box.width - 20) * k / (frames.length - 1), y = box.top + box.height / 2;
    record(`slider to ${k}: ${await settled(() => { mouse(rail, "mousedown", x, y); mouse(rail, "mouseup", x, y); })}`);
  };
  record("load");
  await slide(1);
  await slide(frames.length - 1);
  await slide(0);
  const play = Array.from(gd.querySelectorAll(".updatemenu-button")).find((b) => b.textContent.includes("play"));
  record(`play: ${await settled(() => mouse(play, "click", 0, 0))}`);
  return states;
})()
"""


@pytest.mark.slow  # starts another process
def test_html_title_follows_the_slider_and_play_in_headless_chromium(fresh, tmp_path):
    chromium = chromium_or_skip()
    run = EmbeddingRun(fresh)
    names = [s["name"] for s in run.snapshots]
    assert len(names) == 3
    trust = dict(zip(names, [0.93, 0.5, 0.87]))  # the middle snapshot is not faithful
    motion = dict(zip(names[1:], [0.95, 0.3]))  # nor are the paths into the last

    def forced(manifest):
        manifest["reducer"]["layers"]["head.1"]["trustworthiness"] = trust
        manifest["reducer"]["layers"]["head.1"]["temporal_preservation"] = motion

    edit_manifest(fresh, forced)
    page = write_html(fresh, layers=["head.1"])
    with Chromium(chromium, tmp_path / "profile") as browser:
        states = browser.evaluate(page, DRIVER)
    assert [s["action"] for s in states] == [
        "load", "slider to 1: animated", "slider to 2: animated", "slider to 0: animated", "play: animated",
    ], states
    snapshots = {s["name"]: s for s in run.snapshots}
    for state, expected in zip(states, [0, 1, 2, 0, 2]):
        assert state["shown"] == state["active"] == expected, state
        label = plot.snapshot_label(snapshots[names[expected]])
        assert state["current"] == f"snapshot: {label}", state
        lines = state["text"].splitlines()
        assert lines[0].startswith(label + " ") and f"trustworthiness {trust[names[expected]]:.2f}" in lines[0], state
        moved = motion.get(names[expected])
        assert (f"temporal preservation {moved:.2f}" in lines[0]) if moved else ("temporal" not in lines[0]), state
        unfaithful = trust[names[expected]] < 0.8  # paths are the map's: said once above the figure, not per frame
        assert any("not faithful" in line for line in lines[1:]) == unfaithful, state
        assert state["warningFill"] == ("rgb(192, 0, 0)" if unfaithful else None), state  # red: palette.WARNING


def test_drawing_computes_no_dynamics_the_caller_hands_them_over(fresh, monkeypatch, tmp_path):
    """Issue 24: reading what is drawn never computes the samples' dynamics (a k-NN pass over every snapshot);
    plot_layer, the caller, computes them where samples.parquet is missing and hands them over."""
    from lightning_embeddings import run_samples

    (fresh / "samples.parquet").unlink()
    run = EmbeddingRun(fresh)
    computed = []
    real_compute = run_samples.compute
    monkeypatch.setattr(run_samples, "compute", lambda *args: computed.append(args[1:]) or real_compute(*args))
    given = recorded(run, "head.1")
    assert ("head.1", "val") in computed  # the caller's computation: samples.parquet is gone
    by_caller = len(computed)
    info = drawn.load_layer(run, "head.1", given.iloc[:0])
    assert info.suspects.empty and info.hover == []  # nothing handed over, nothing marked
    info = drawn.load_layer(run, "head.1", given)
    assert list(info.suspects["sample_id"]) == list(given["sample_id"].head(drawn.N_SUSPECTS))
    overview_picture.overview_figure(info, map_paths.map_paths(info.frame))
    snapshots_picture.snapshots_figure(info)
    assert len(computed) == by_caller  # reading and drawing computed nothing
    plot_layer(run, "head.1", path=tmp_path)
    assert len(computed) == 2 * by_caller  # plot_layer, the caller, computed them again: nothing to read
