"""The colours every picture and the page share (palette.py)."""

from __future__ import annotations

import numpy as np

from lightning_embeddings.palette import CATEGORICAL, CONTINUOUS, UNKNOWN, label_palette


def test_palette_is_tab10_then_tab20_then_continuous():
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    ten = label_palette(np.arange(10).repeat(3))
    assert ten.kind == "categorical"
    assert [ten.color(c) for c in range(10)] == [to_hex(c) for c in colormaps["tab10"].colors]
    assert ten.color(np.int64(3)) == ten.color(3.0) == "#d62728"
    fifteen = label_palette(list(range(15)))
    assert [fifteen.color(c) for c in range(10)] == list(CATEGORICAL[:10])
    assert len({fifteen.color(c) for c in range(15)}) == 15
    assert set(map(to_hex, colormaps["tab20"].colors)) >= {fifteen.color(c) for c in range(15)}
    many = label_palette(range(100))
    assert many.kind == "continuous" and (many.vmin, many.vmax) == (0.0, 99.0)
    assert (many.color(0), many.color(99)) == (CONTINUOUS[0], CONTINUOUS[-1])
    viridis = np.array([int(many.color(50)[i:i + 2], 16) for i in (1, 3, 5)]) / 255
    np.testing.assert_allclose(viridis, colormaps["viridis"](50 / 99)[:3], atol=0.03)
    assert label_palette(None).kind == label_palette([np.nan, None]).kind == "none"
    assert label_palette([1, 2]).color(None) == UNKNOWN
    assert label_palette(["cat", "dog"]).colors == {"cat": CATEGORICAL[0], "dog": CATEGORICAL[1]}
