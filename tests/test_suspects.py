"""The suspects gallery (issue 25): each suspect as it is, with what is said of it and its nearest neighbours, drawn
from a real fit and read back."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
from matplotlib.transforms import Bbox
from PIL import Image

from conftest import DigitsDataModule, fit_collector
from lightning_embeddings import EmbeddingRun
from lightning_embeddings.palette import label_palette
from lightning_embeddings.plot import plot_suspects
from lightning_embeddings.run_samples import recorded, suspects
from lightning_embeddings.suspects import COLUMN, FRAME, ROW, cell_box, suspects_figure

pytest.importorskip("matplotlib", reason="drawing needs matplotlib")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> EmbeddingRun:
    """A real 3-epoch fit of the digits CNN with record_train: thumbnails of every sample, labels, predictions."""
    _, collector = fit_collector(tmp_path_factory.mktemp("gallery"), layers=["head.1"], record_train=True,
                                 trainer_kwargs={"max_epochs": 3})
    return EmbeddingRun(collector.dirpath)


def gallery_rows(run: EmbeddingRun):
    return suspects(run, "head.1", recorded(run, "head.1"))


def test_the_gallery_shows_the_training_suspects_beside_their_true_nearest_neighbours(run):
    from sklearn.neighbors import NearestNeighbors

    gallery = suspects(run, "head.1", recorded(run, "head.1"))
    top = run.samples("head.1", split="train").head(20)
    assert gallery.split == "train" and gallery.rows["sample_id"].tolist() == top["sample_id"].tolist()
    last = run.table(epochs=[run.epochs[-1]], layers=["head.1"], stages=["fit"])
    last = last[last["split"] == "train"].sort_values("sample_id").reset_index(drop=True)
    vectors = np.stack(last["head.1"].to_numpy())
    _, found = NearestNeighbors(n_neighbors=6, metric="cosine").fit(vectors).kneighbors(vectors[top["sample_id"]])
    expected = [[int(j) for j in row if j != i][:5] for i, row in zip(top["sample_id"], found)]
    got = gallery.neighbours.groupby("suspect")["sample_id"].apply(list).tolist()
    assert sum(a == b for a, b in zip(got, expected)) >= 19  # exact ties in distance aside
    assert (gallery.neighbours["label"].to_numpy() == last["label"].to_numpy()[gallery.neighbours["sample_id"]]).all()

    figure = suspects_figure(gallery, label_palette(list(range(10))))
    said, beside = figure.axes
    mosaic = np.asarray(beside.images[0].get_array())  # each suspect and its 5 neighbours, as they are
    kept = run.inputs("train").set_index("sample_id")["image"]
    lines = [t.get_text() for t in said.texts]
    captions = [t.get_text() for t in beside.texts]
    for row, (_, suspect) in enumerate(top.iterrows()):
        assert lines[row * 5:row * 5 + 4] == [
            f"{row + 1}. #{suspect['sample_id']} (train)", f"label {suspect['label']}",
            f"neighbours say {suspect['neighbour_label']}", f"predicted {suspect['prediction']}"]
        shown = [suspect["sample_id"], *got[row]]
        assert captions[row * 6:row * 6 + 6] == [f"#{shown[0]}"] + [
            f"#{i}: {last['label'][i]}" for i in shown[1:]]
        for column, sample_id in enumerate(shown):
            thumbnail = np.asarray(Image.open(io.BytesIO(kept[sample_id])))  # 8x8, drawn 8 times larger
            cell = mosaic[cell_box(row, column)][..., 0]
            assert np.array_equal(cell, np.kron(thumbnail, np.ones((8, 8), np.uint8))), (row, column)


def test_the_gallery_png_is_legible_nothing_overprinted(run, tmp_path):
    target = plot_suspects(run, "head.1", path=tmp_path)
    assert target == tmp_path / "head.1-suspects.png"
    png = Image.open(target)
    assert png.format == "PNG" and png.size[1] > 2 * png.size[0]  # 20 rows, one below the other
    assert_legible(suspects_figure(suspects(run, "head.1", recorded(run, "head.1")), label_palette(list(range(10)))))


def assert_legible(figure) -> None:
    """No text of ``figure`` is cut off at its edges, none is printed over another or over a picture."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    texts = [t for ax in figure.axes for t in [*ax.texts, ax.xaxis.label] if t.get_text()] + [figure._suptitle]
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert len(texts) > 20
    width, height = figure.bbox.width, figure.bbox.height
    assert [t.get_text() for t, b in zip(texts, boxes) if b.x0 < 0 or b.y0 < 0 or b.x1 > width or b.y1 > height] == []
    overlaps = [(texts[i].get_text(), texts[j].get_text()) for i, j in itertools.combinations(range(len(boxes)), 2)
                if boxes[i].overlaps(boxes[j])]
    assert overlaps == []
    cells = []  # every thumbnail's box, frame included, on the figure
    for ax in figure.axes:
        if ax.images:
            rows, width = len(ax.images[0].get_array()) // ROW, ax.images[0].get_array().shape[1]
            for row, column in itertools.product(range(rows), range(width // COLUMN)):
                ys, xs = cell_box(row, column)
                top, bottom = row + (ys.start - FRAME - row * ROW) / ROW, row + (ys.stop + FRAME - row * ROW) / ROW
                (x0, y0), (x1, y1) = ax.transData.transform([((xs.start - FRAME) / width, top),
                                                             ((xs.stop + FRAME) / width, bottom)])
                cells.append(Bbox.from_extents(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    assert not [t.get_text() for t, b in zip(texts, boxes) if any(b.overlaps(c) for c in cells)]


def test_a_run_without_inputs_still_gets_a_gallery_of_ids_and_labels(tmp_path):
    _, collector = fit_collector(tmp_path / "plain", datamodule=DigitsDataModule(), layers=["head.1"], inputs=False,
                                 trainer_kwargs={"max_epochs": 2})
    plain = EmbeddingRun(collector.dirpath)
    figure = suspects_figure(gallery_rows(plain), label_palette(list(range(10))))
    assert not [ax for ax in figure.axes if ax.images]  # no thumbnails kept: ids and labels only
    assert [t.get_text() for t in figure.axes[1].texts][:5] == [
        f"#{i}: {label}" for i, label in gallery_rows(plain).neighbours[["sample_id", "label"]].head(5).to_numpy()]
    assert "no inputs kept" in figure._suptitle.get_text()
    assert_legible(figure)
    assert Path(plot_suspects(plain, "head.1")).name == "head.1-suspects.png"


def test_a_text_run_shows_each_suspects_text_and_its_neighbours(tmp_path):
    from test_inputs import DictCNN, TextData

    data = TextData()
    _, collector = fit_collector(tmp_path, model=DictCNN(), datamodule=data, layers=["head.1"],
                                 trainer_kwargs={"max_epochs": 2})
    text_run = EmbeddingRun(collector.dirpath)
    gallery = suspects(text_run, "head.1", recorded(text_run, "head.1"))
    assert gallery.split == "val" and len(gallery.rows) == 20
    figure = suspects_figure(gallery, label_palette(list(range(10))))
    texts = [t.get_text() for t in figure.axes[1].texts]  # per suspect: its text, then its 5 neighbours
    for row, sample_id in enumerate(gallery.rows["sample_id"]):
        shown = texts[row * 6].replace("\n", " ")
        assert data.val_set.texts[sample_id].startswith(shown.removesuffix("…")[:40])
        near = gallery.neighbours[gallery.neighbours["suspect"] == row]
        assert [line.split(":")[0] for line in texts[row * 6 + 1:row * 6 + 6]] == [f"#{i}" for i in near["sample_id"]]
    assert_legible(figure)


def test_the_maps_mark_the_same_splits_suspects_as_the_table_and_the_gallery(run):
    """Issue 25: the PNGs marked the validation set's suspects while the table and the gallery showed the training
    set's. The training rows are placed in the map too: their top suspects are marked where they are."""
    from lightning_embeddings import drawn, overview, snapshots
    from lightning_embeddings.paths import map_paths

    info = drawn.load_layer(run, "head.1", recorded(run, "head.1"))
    top = run.samples("head.1", split="train").head(10)
    assert info.suspects_split == "train" and info.suspects["sample_id"].tolist() == top["sample_id"].tolist()
    maps = run.projections("head.1")
    last = maps[(maps["split"] == "train") & (maps["step"] == maps["step"].max())].set_index("sample_id")
    expected = [(str(i), tuple(last.loc[i, ["x", "y"]].to_numpy(float))) for i in top["sample_id"]]
    for figure in (overview.overview_figure(info, map_paths(info.frame)), snapshots.snapshots_figure(info)):
        marked = [ax for ax in figure.axes if any(t.get_gid() == "suspect" for t in ax.texts)]
        assert len(marked) == 1
        marks = [(t.get_text(), tuple(map(float, t.xy))) for t in marked[0].texts if t.get_gid() == "suspect"]
        assert [name for name, _ in marks] == [name for name, _ in expected]
        np.testing.assert_allclose([xy for _, xy in marks], [xy for _, xy in expected], rtol=1e-6)
        legend = [t.get_text() for legend in [*figure.legends, *(ax.get_legend() for ax in figure.axes)] if legend
                  for t in legend.get_texts()]
        assert "the 10 training samples most likely mislabelled (suspicion), with ids" in legend
    assert set(info.frame["split"]) == {"val"}  # the points drawn are still the evaluated split's
