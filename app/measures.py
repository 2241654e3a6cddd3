"""Every measure the service knows, in one place: the API's schema, the scorer, the
second stage and calibration all read their names from here (no torch, no numpy).

Adding a P2L measure: its name in ``Measure`` and an entry in ``MEASURES`` here, and its
vectorised distance in ``SignatureIndex.distances`` (``app.p2l.scoring``). Adding a
second-stage measure: its name in ``RefineMethod`` and its formula in ``app.p2l.peers``
(``app.p2l.refine.transferability`` dispatches on the name), and a line for it where the
second stage's measures are described in words (``RefineRequest`` in ``app.schemas``, the
console's ranking form, docs/guide/ranking.md). The client package keeps its own copy of
both lists (it imports nothing of the service).
"""

from dataclasses import dataclass
from typing import Literal, get_args

Measure = Literal["kl", "js", "cosine", "emd"]
Method = Literal["p2l", "distance", "largest"]
# What POST /v1/rankings takes: the index's methods, and the ranker learned from past
# fine-tunes (app.p2l.learned), which starts from P2L's scores.
RankingMethod = Literal["p2l", "distance", "largest", "learned"]
RefineMethod = Literal["logme", "leep", "nce", "knn"]


@dataclass(frozen=True)
class MeasureInfo:
    """What a P2L measure compares and whether a calibration refit may choose it."""

    name: Measure
    summary: str
    # EMD compares per-class means and is slow per source: refits choose among the others.
    calibrated: bool = True


MEASURES: dict[Measure, MeasureInfo] = {
    info.name: info
    for info in (
        MeasureInfo("kl", "KL(p_t || p_s) of the mean features as distributions"),
        MeasureInfo("js", "Jensen-Shannon divergence of the mean features as distributions"),
        MeasureInfo("cosine", "1 - cosine similarity of the mean features"),
        MeasureInfo(
            "emd",
            "gamma * EMD between class-mean histograms weighted by class counts (Cui et al.)",
            calibrated=False,
        ),
    )
}
METHODS: tuple[Method, ...] = get_args(Method)
# Each re-ranked source costs a forward pass of the target inside the request.
MAX_REFINE_TOP = 20
# The measures a calibration refit chooses among.
CALIBRATED_MEASURES: tuple[Measure, ...] = tuple(m for m, i in MEASURES.items() if i.calibrated)

assert tuple(MEASURES) == get_args(Measure), "every Measure needs its MeasureInfo"
