"""The zoo map's labels (#26): legible, however close the sources sit."""

import io

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

from app.zoo import plots


def overlapping(boxes: list[tuple[float, float, float, float]]) -> list[tuple[int, int]]:
    """Pairs of boxes (x0, y0, x1, y1) that overlap by more than a pixel."""
    pairs = []
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes[:i]):
            if min(a[2], b[2]) - max(a[0], b[0]) > 1 and min(a[3], b[3]) - max(a[1], b[1]) > 1:
                pairs.append((j, i))
    return pairs


@pytest.mark.unit
def test_labels_of_near_points_are_pushed_apart_and_stay_in_the_axes() -> None:
    rng = np.random.default_rng(0)
    # Two tight clusters (as same-family sources sit) and a few loners.
    xy = np.vstack([rng.normal(0, 0.01, (6, 2)), rng.normal(1, 0.01, (4, 2)), rng.random((5, 2))])
    labels = [f"source_{i}_{'x' * (i % 4)}" for i in range(len(xy))]
    fig = Figure(figsize=(7, 6), dpi=110)
    ax = fig.subplots()
    ax.scatter(xy[:, 0], xy[:, 1], s=60)
    ax.margins(0.12)
    fig.tight_layout()
    naive = [(x, y, x + 60, y + 10) for x, y in ax.transData.transform(xy)]
    assert overlapping(naive), "the clusters' labels would overlap where they start"
    boxes = plots.place_labels(fig, ax, xy, labels, [8] * len(xy), np.full(len(xy), 60.0))
    assert overlapping(boxes) == []
    frame = ax.get_window_extent()
    for x0, y0, x1, y1 in boxes:
        assert frame.x0 <= x0 and x1 <= frame.x1 and frame.y0 <= y0 and y1 <= frame.y1
    assert len(ax.texts) == len(labels)
    # What is drawn, not only what was planned: the labels as the renderer lays them out
    # (the text's own box: an annotation's extent takes in its leader line too).
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    drawn = [Text.get_window_extent(text, renderer) for text in ax.texts]
    assert overlapping([(b.x0, b.y0, b.x1, b.y1) for b in drawn]) == []


@pytest.mark.unit
def test_the_zoo_map_draws_with_a_target_and_with_one_source() -> None:
    means = np.abs(np.random.default_rng(1).normal(1, 0.3, (5, 8)))
    # A name with two $ is drawn as written (matplotlib parsed it as math and failed).
    dollars = ["a", "b$\\frac{$x", "c", "d", "e"]
    for names, rows in ((dollars, means), (["only"], means[:1])):
        png = plots.zoo_map(names, rows, [100] * len(names), 1e-6, ("target", means[0] * 1.1))
        assert Image.open(io.BytesIO(png)).size == (770, 660)
