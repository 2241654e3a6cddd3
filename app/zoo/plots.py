"""Pictures of rankings and of the zoo in feature space (PNG bytes, matplotlib Agg)."""

import functools
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from app.p2l.scoring import to_distribution

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@functools.cache
def _figure_class() -> "type[Figure]":
    """matplotlib's pyplot-free Figure (safe in a threaded server), imported with the first
    picture: at module level it cost every start of the service 0.6 s."""
    import matplotlib
    from matplotlib.figure import Figure

    # Every text drawn here is a user's (source, dataset and class names), never math: a
    # name with two $ must be drawn as written, not parsed as mathtext (a parse error, a
    # 500). Set for the process (matplotlib draws nothing else in it), not per figure:
    # rc_context is not thread-safe.
    matplotlib.rcParams["text.parse_math"] = False
    return Figure


def ranking_plot(title: str, results: Sequence[dict[str, Any]], method: str) -> bytes:
    """Horizontal bars per source: -distance and the size term, with the score marked."""
    rows = list(results)[::-1]
    names = [f"{r['rank']}. {r['name'] or r['source_id'][:8]}" for r in rows]
    distance_part = np.array([-r["distance"] for r in rows])
    size_part = np.array([r["size_term"] for r in rows])
    score = np.array([r["score"] for r in rows])
    y = np.arange(len(rows))
    fig = _figure_class()(figsize=(8, 1.2 + 0.38 * len(rows)), dpi=110)
    ax = fig.subplots()
    ax.barh(y - 0.18, distance_part, height=0.36, color="#d95f02", label="-distance")
    ax.barh(y + 0.18, size_part, height=0.36, color="#1b9e77", label="lambda * log(n)")
    ax.scatter(score, y, color="black", zorder=3, marker="D", s=18, label=f"score ({method})")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(y, names)
    ax.set_xlabel("score parts")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    return _png(fig)


def classical_mds(distances: np.ndarray, dims: int = 2) -> np.ndarray:
    """Points whose Euclidean distances approximate ``distances`` (Torgerson MDS)."""
    n = len(distances)
    centering = np.eye(n) - np.ones((n, n)) / n
    gram = -0.5 * centering @ (distances**2) @ centering
    values, vectors = np.linalg.eigh(gram)
    top = np.argsort(values)[::-1][:dims]
    return vectors[:, top] * np.sqrt(np.clip(values[top], 0, None))


def zoo_map(
    names: Sequence[str],
    means: np.ndarray,
    sizes: Sequence[int],
    eps: float,
    target: tuple[str, np.ndarray] | None = None,
) -> bytes:
    """2-D map of sources (and a target) by Jensen-Shannon distance of their signatures.

    Sources whose mean is not finite are left off: one bad row must not blank the map.
    """
    finite = np.isfinite(means).all(axis=1)
    names = [name for name, keep in zip(names, finite, strict=True) if keep]
    sizes = [size for size, keep in zip(sizes, finite, strict=True) if keep]
    means = means[finite]
    labels = list(names) + ([target[0]] if target else [])
    points = np.vstack([means, target[1][None, :]]) if target else means
    p = to_distribution(points.astype(np.float64), eps)
    mix = 0.5 * (p[:, None, :] + p[None, :, :])
    kl = lambda a, b: np.sum(a * np.log(a / b), axis=-1)  # noqa: E731
    js = 0.5 * kl(p[:, None, :], mix) + 0.5 * kl(p[None, :, :], mix)
    xy = classical_mds(np.sqrt(np.clip(js, 0, None))) if len(labels) > 1 else np.zeros((1, 2))
    fig = _figure_class()(figsize=(7, 6), dpi=110)
    ax = fig.subplots()
    count = len(names)
    marker_sizes = 30 + 25 * np.log10(np.maximum(np.asarray(sizes, dtype=float), 1))
    ax.scatter(xy[:count, 0], xy[:count, 1], s=marker_sizes, c="#7570b3", alpha=0.8,
               label="source (size ~ log n)")  # fmt: skip
    areas = list(marker_sizes)
    if target:
        ax.scatter(xy[-1, 0], xy[-1, 1], marker="*", s=260, c="#e7298a", label="target")
        areas.append(260.0)
    ax.set_title("Dataset signatures in reference-feature space (MDS of JS distance)", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    # Room around the points for their labels.
    ax.margins(0.12)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    sizes_pt = [8] * count + ([9] if target else [])
    place_labels(fig, ax, xy, labels, sizes_pt, np.asarray(areas, dtype=float))
    return _png(fig)


def place_labels(
    fig: "Figure",
    ax: Any,
    xy: np.ndarray,
    labels: Sequence[str],
    fontsizes: Sequence[float],
    marker_areas: np.ndarray,
) -> list[tuple[float, float, float, float]]:
    """Annotate every point with its label so that no label covers another, a marker or
    the legend: each label in turn takes the first free place of a spiral around its point
    (beside it first, then farther out; a label away from its point gets a leader line).
    Beyond MAX_PLACED_LABELS points every label sits beside its point (the search is
    quadratic, and such a map is a cloud anyway).

    Returns each label's box (x0, y0, x1, y1) in display pixels (for tests)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # fixes the layout and the legend's place
    renderer = canvas.get_renderer()
    anchors = ax.transData.transform(xy) if len(xy) else np.zeros((0, 2))
    scale = fig.dpi / 72.0  # pixels per point
    radii = np.sqrt(marker_areas) / 2 * scale + 1.5
    size = np.zeros((len(labels), 2))
    for i, (label, fontsize) in enumerate(zip(labels, fontsizes, strict=True)):
        probe = ax.text(0, 0, label, fontsize=fontsize)
        box = probe.get_window_extent(renderer)
        probe.remove()
        size[i] = (box.width + 2, box.height + 1)
    frame = ax.get_window_extent(renderer)
    # Taken: every marker's box, the legend, then each label placed.
    taken = [np.column_stack([anchors - radii[:, None], anchors + radii[:, None]])]
    legend = ax.get_legend()
    if legend is not None:
        lb = legend.get_window_extent(renderer)
        taken.append(np.array([[lb.x0, lb.y0, lb.x1, lb.y1]]))
    blocked = np.vstack(taken)
    search = len(labels) <= MAX_PLACED_LABELS
    boxes = []
    for i, (label, fontsize) in enumerate(zip(labels, fontsizes, strict=True)):
        w, h = size[i]
        lower_left = anchors[i] + (radii[i], radii[i] * 0.3 - h / 2)
        away = 0.0
        for ring, angle in _SPIRAL if search else ():
            direction = np.array([np.cos(angle), np.sin(angle)])
            centre = anchors[i] + direction * (radii[i] + ring + np.array([w, h]) / 2)
            x0, y0 = centre - (w / 2, h / 2)
            if x0 < frame.x0 or y0 < frame.y0 or x0 + w > frame.x1 or y0 + h > frame.y1:
                continue
            others = np.delete(blocked, i, axis=0) if i < len(anchors) else blocked
            if not _overlaps((x0, y0, x0 + w, y0 + h), others).any():
                lower_left, away = np.array([x0, y0]), ring
                break
        box = (lower_left[0], lower_left[1], lower_left[0] + w, lower_left[1] + h)
        blocked = np.vstack([blocked, np.array([box])])
        boxes.append(box)
        arrow = (
            {"arrowstyle": "-", "color": "#888888", "lw": 0.6, "shrinkA": 0, "shrinkB": radii[i]}
            if away >= 12
            else None
        )
        offset = (lower_left - anchors[i]) / scale  # in points, as textcoords says
        ax.annotate(label, xy[i], textcoords="offset points", xytext=tuple(offset),
                    fontsize=fontsize, ha="left", va="bottom", arrowprops=arrow,
                    annotation_clip=False)  # fmt: skip
    return boxes


# Places tried around a point, nearest first: (pixels beyond the marker, angle); to the
# right and left of a point before above and below (labels are wide and short).
_SPIRAL = [
    (ring, np.deg2rad(angle))
    for ring in (0, 4, 10, 18, 28, 40, 55, 75, 100, 130)
    for angle in (10, -10, 170, -170, 40, -40, 140, -140, 90, -90, 65, -65, 115, -115)
]
MAX_PLACED_LABELS = 300


def _overlaps(box: tuple[float, float, float, float], boxes: np.ndarray) -> np.ndarray:
    """Which of ``boxes`` (rows of x0, y0, x1, y1) ``box`` overlaps."""
    return (np.minimum(box[2], boxes[:, 2]) > np.maximum(box[0], boxes[:, 0])) & (
        np.minimum(box[3], boxes[:, 3]) > np.maximum(box[1], boxes[:, 1])
    )


def _png(fig: "Figure") -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def confusion_plot(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str
) -> bytes:
    """A confusion matrix as a heat map: true class down, predicted across, counts in cells.

    Colour is the share of each true class (row-normalised), so small classes show too.
    """
    counts = np.asarray(matrix, dtype=np.int64).reshape(len(class_names), len(class_names))
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    n = len(class_names)
    side = min(max(4.5, 1.2 + 0.55 * n), 16.0)
    fig = _figure_class()(figsize=(side + 1.2, side), dpi=110)
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    labels = [name if len(name) <= 24 else name[:23] + "…" for name in class_names]
    slanted = n > 3  # long names side by side would overlap
    ax.set_xticks(
        np.arange(n), labels, rotation=45 if slanted else 0, ha="right" if slanted else "center"
    )
    ax.set_yticks(np.arange(n), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 30:  # beyond that, the numbers would not be legible
        fontsize = 9 if n <= 12 else 6
        for (row, column), count in np.ndenumerate(counts):
            colour = "white" if shares[row, column] > 0.5 else "black"
            ax.text(column, row, str(count), ha="center", va="center", color=colour,
                    fontsize=fontsize)  # fmt: skip
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)
