"""The learned ranker: scores sources from cheap features, fitted on what past fine-tunes showed.

Evidence is a list of past targets, each with its signature and the test accuracy every
source tried on it reached (and training from scratch's, when it was measured): the bundled
benchmark's ground truth to start with, then every finished fine-tune the service scores.

Features of a (target, source) pair, none of which needs a forward pass through the source:

- ``kl``, ``js``, ``cosine``: P2L's distances between the target's and the source's signatures;
- ``log_size``: log of the source's image count (P2L's size term);
- ``record``: the source's mean standardised accuracy over the past targets it was tried on;
- ``near_record``: the same over the ``neighbours`` past targets nearest to this one in
  signature space (Jensen-Shannon), falling back to ``record`` where none of them tried it
  (a source no past target tried counts as an average one).

The ranking model (gradient-boosted trees, or ridge) learns how far below a target's best
each source tried there came (in standard deviations of their accuracies, capped) from the
features standardised within the target over every source some past target tried, so that
only differences between a target's sources are learned, and a source's features do not
depend on which others were tried beside it or are ranked with it. Rows of a past target never see a
record made on a target of its own group (a benchmark family; each dataset of the service is
its own group): otherwise a near-twin would hand over its answer. A source with no record
yet is scored by the same kind of model fitted on the distances and the size alone.

The expected gain over training from scratch is a second ridge regression, of
``accuracy - scratch`` on the uncentred features and the target's distance to its nearest
source, with an interval from its cross-validated residuals (5th to 95th percentile).

Coverage: the target's distance to its nearest source, against the same distance of every
past target to this zoo. A target farther than ``coverage_quantile`` of them is flagged as
lying outside what the zoo covers.

Model, features and constants were chosen on the benchmark's development targets
(``bench/learned.py``; ``bench/results/selection.md``).
"""

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from app.measures import Measure
from app.p2l.scoring import SignatureIndex
from app.p2l.signature import DatasetSignature

if TYPE_CHECKING:  # imported where a ranker is fitted: at module level it cost every start 0.7 s
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import Ridge

DISTANCE_MEASURES: tuple[Measure, ...] = ("kl", "js", "cosine")
FEATURES = (*DISTANCE_MEASURES, "log_size", "record", "near_record")
BASE_FEATURES = (*DISTANCE_MEASURES, "log_size")
MIN_SPREAD = 0.01  # floor of a target's accuracy SD when standardising (one point)
TOP_DEPTH = 1.0  # standard deviations below the best that the ranking model tells apart


@dataclass(frozen=True)
class LearnedConfig:
    """What the learned ranker is made of (defaults: chosen on the development targets)."""

    alpha: float = 1.0  # ridge only
    features: tuple[str, ...] = FEATURES
    model: str = "boosted"  # gradient-boosted trees, or "ridge" for the ranking model
    record: str = "z"  # a source's record in standard scores ("z") or closeness to the best
    neighbours: int = 3
    min_targets: int = 5  # below this many usable past targets: P2L answers instead
    coverage_quantile: float = 0.6
    eps: float = 1e-3
    emd_gamma: float = 0.01


@dataclass(frozen=True)
class EvidenceTarget:
    """A past target: its signature and what each source tried on it reached."""

    key: str
    group: str  # targets of one group never inform each other's training rows
    signature: DatasetSignature
    accuracy: dict[str, float]  # source id -> mean test accuracy
    scratch: float | None = None  # training from scratch's test accuracy, when measured
    jobs: int = 0  # the service's fine-tunes behind it (0: the bundled benchmark)


@dataclass(frozen=True)
class Gain:
    """Expected accuracy gain of fine-tuning a source over training from scratch."""

    expected: float
    low: float
    high: float


@dataclass(frozen=True)
class Coverage:
    """How well the zoo covers a target, judged against the past targets."""

    nearest_source_id: str
    nearest_distance: float
    percentile: float  # share of past targets at most this far from their nearest source
    covered: bool
    past_targets: int


@dataclass
class LearnedRanking:
    """Scores (higher first) of the candidates, and which were scored without a record."""

    scores: dict[str, float]
    without_record: list[str] = field(default_factory=list)


def _standardised(accuracy: dict[str, float]) -> dict[str, float]:
    values = np.array(list(accuracy.values()))
    spread = max(float(values.std()), MIN_SPREAD)
    return {s: (a - float(values.mean())) / spread for s, a in accuracy.items()}


def _closeness_to_best(accuracy: dict[str, float]) -> dict[str, float]:
    """What the ranking model learns: how far below the target's best each source is, in
    standard deviations, and no farther than ``TOP_DEPTH``: the model is judged by its pick,
    so the order among the poor sources should not steer it."""
    values = np.array(list(accuracy.values()))
    spread = max(float(values.std()), MIN_SPREAD)
    best = float(values.max())
    return {s: max((a - best) / spread, -TOP_DEPTH) for s, a in accuracy.items()}


class LearnedRanker:
    """Fitted on evidence over the sources of ``index``; ranks them for new targets."""

    def __init__(
        self, index: SignatureIndex, evidence: list[EvidenceTarget], config: LearnedConfig
    ) -> None:
        self.index, self.config = index, config
        self.evidence = [
            e for e in evidence if sum(s in index for s in e.accuracy) >= 2
        ]  # usable: two or more rankable sources tried
        scale = _standardised if config.record == "z" else _closeness_to_best
        self.zscores = [scale({s: a for s, a in e.accuracy.items() if s in index})
                        for e in self.evidence]  # fmt: skip
        # The sources some usable past target tried: each is looked up for every source ranked.
        self.recorded: set[str] = set().union(*self.zscores)
        # Features are standardised over these: a fixed set, however many sources are ranked.
        self.pool = [source for source in index.source_ids() if source in self.recorded]
        self.targets_index = SignatureIndex(eps=config.eps)
        for i, item in enumerate(self.evidence):
            self.targets_index.add(str(i), item.signature)
        self.model: Ridge | HistGradientBoostingRegressor | None = None
        self.base: Ridge | None = None
        self.gain_model: Ridge | None = None
        self.gain_residuals = np.zeros(2)
        self._coverage_past: tuple[int, np.ndarray] | None = None
        if self.active:
            self._fit()

    @property
    def active(self) -> bool:
        """Whether there is enough evidence to rank (else P2L answers)."""
        return len(self.evidence) >= self.config.min_targets

    @property
    def jobs(self) -> int:
        """Fine-tunes of the service behind the usable evidence."""
        return sum(e.jobs for e in self.evidence)

    # --- features ---------------------------------------------------------------------

    def _records(self, exclude_group: str | None) -> dict[str, float]:
        sums: dict[str, list[float]] = defaultdict(list)
        for item, z in zip(self.evidence, self.zscores, strict=True):
            if item.group != exclude_group:
                for source, value in z.items():
                    sums[source].append(value)
        return {s: float(np.mean(v)) for s, v in sums.items()}

    def _near(self, signature: DatasetSignature, exclude_group: str | None) -> list[int]:
        """Past targets nearest to ``signature`` (indices into the evidence), nearest first."""
        distance = self.targets_index.distances(signature, "js", None, self.config.emd_gamma)
        order = np.argsort(distance, kind="stable")
        allowed = [int(i) for i in order if self.evidence[int(i)].group != exclude_group]
        return allowed[: self.config.neighbours]

    def features(
        self,
        signature: DatasetSignature,
        sources: list[str],
        exclude_group: str | None = None,
        nearest: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Every feature of (target, source) for ``sources``, uncentred, by name; and
        ``nearest``, the target's distance to its nearest source (given, or the nearest of
        ``sources``), for the gain model."""
        gamma = self.config.emd_gamma
        columns: dict[str, np.ndarray] = {
            m: self.index.distances_to(signature, m, sources, gamma).astype(np.float64)
            for m in DISTANCE_MEASURES
        }
        columns["log_size"] = self.index.log_sizes_of(sources).astype(np.float64)
        records = self._records(exclude_group)
        # A source no past target tried counts as an average one.
        unknown = float(np.mean(list(records.values()))) if records else 0.0
        near = [self.zscores[i] for i in self._near(signature, exclude_group)]
        columns["record"] = np.array([records.get(s, unknown) for s in sources])
        near_values = []
        for source in sources:
            seen = [z[source] for z in near if source in z]
            near_values.append(sum(seen) / len(seen) if seen else records.get(source, unknown))
        columns["near_record"] = np.array(near_values)
        low = float(columns["js"].min()) if nearest is None and len(sources) else nearest
        columns["nearest"] = np.full(len(sources), low if low is not None else 0.0)
        return columns

    def best_record(self, zoo: list[str]) -> str | None:
        """The source of ``zoo`` with the best record over the past targets (the generalist to
        try where the zoo covers a target poorly); None: none has a record."""
        records = self._records(exclude_group=None)
        known = [s for s in zoo if s in records]
        return max(known, key=records.__getitem__) if known else None

    @staticmethod
    def _matrix(columns: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
        """The features ``names`` as columns, one row per source."""
        return np.stack([columns[n] for n in names], axis=1)

    def _scaled(
        self,
        signature: DatasetSignature,
        sources: list[str],
        exclude_group: str | None = None,
        nearest: float | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[tuple[str, ...], np.ndarray]]:
        """``sources``' uncentred features, and their ranking and base matrices standardised
        with the mean and spread of the same features over ``pool`` (every source some past
        target tried), not over ``sources``: a source's score does not depend on which others
        are ranked beside it, nor a past target's rows on how few sources it tried."""
        # Standardised so that targets whose distances span different scales teach the same;
        # a pool source deleted since the fit no longer counts.
        pool = [source for source in self.pool if source in self.index]
        everything = list(dict.fromkeys([*pool, *sources]))
        columns = self.features(signature, everything, exclude_group, nearest)
        rows = {source: i for i, source in enumerate(everything)}
        picked = [rows[source] for source in sources]
        matrices = {}
        for names in {self.config.features, BASE_FEATURES}:
            matrix = self._matrix(columns, names)
            reference = matrix[: len(pool)] if pool else matrix
            spread = np.maximum(reference.std(axis=0, keepdims=True), 1e-9)
            matrices[names] = (matrix[picked] - reference.mean(axis=0, keepdims=True)) / spread
        return {name: column[picked] for name, column in columns.items()}, matrices

    # --- fitting ----------------------------------------------------------------------

    def _fit(self) -> None:
        ranking_rows: list[np.ndarray] = []
        base_rows: list[np.ndarray] = []
        gain_rows: list[np.ndarray] = []
        labels: list[float] = []
        gains: list[float] = []
        groups: list[str] = []
        for item, z in zip(self.evidence, self.zscores, strict=True):
            sources = list(z)
            columns, matrices = self._scaled(item.signature, sources, item.group)
            ranking_rows.append(matrices[self.config.features])
            base_rows.append(matrices[BASE_FEATURES])
            closeness = _closeness_to_best({s: item.accuracy[s] for s in sources})
            labels.extend(closeness[s] for s in sources)
            if item.scratch is not None:
                gain_rows.append(self._gain_matrix(columns))
                gains.extend(item.accuracy[s] - item.scratch for s in sources)
                groups.extend([item.group] * len(sources))
        from sklearn.linear_model import Ridge
        from sklearn.model_selection import GroupKFold, cross_val_predict

        y = np.array(labels)
        self.model = self._ranking_model().fit(np.vstack(ranking_rows), y)
        self.base = Ridge(alpha=self.config.alpha).fit(np.vstack(base_rows), y)
        if len(set(groups)) >= 3:
            x_gain, y_gain = np.vstack(gain_rows), np.array(gains)
            self.gain_model = Ridge(alpha=self.config.alpha).fit(x_gain, y_gain)
            folds = min(5, len(set(groups)))
            predicted = cross_val_predict(
                Ridge(alpha=self.config.alpha), x_gain, y_gain, groups=groups,
                cv=GroupKFold(n_splits=folds),
            )  # fmt: skip
            self.gain_residuals = np.quantile(y_gain - predicted, [0.05, 0.95])

    def _ranking_model(self) -> "Ridge | HistGradientBoostingRegressor":
        from sklearn.ensemble import HistGradientBoostingRegressor
        from sklearn.linear_model import Ridge

        if self.config.model == "boosted":
            return HistGradientBoostingRegressor(
                max_iter=100, max_depth=3, learning_rate=0.05, random_state=0
            )
        return Ridge(alpha=self.config.alpha)

    def _gain_matrix(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        matrix = self._matrix(columns, self.config.features)
        return np.hstack([matrix, columns["nearest"][:, None]])

    # --- answers ----------------------------------------------------------------------

    def rank(self, signature: DatasetSignature, sources: list[str]) -> LearnedRanking:
        """Learned scores of ``sources`` for a target (higher first)."""
        assert self.model is not None and self.base is not None, "not active: rank with P2L"
        _, matrices = self._scaled(signature, sources)
        full = self.model.predict(matrices[self.config.features])
        base = self.base.predict(matrices[BASE_FEATURES])
        without = [s for s in sources if s not in self.recorded]
        missing = set(without)
        scores = {s: float(base[i] if s in missing else full[i]) for i, s in enumerate(sources)}
        return LearnedRanking(scores, without)

    def gains(
        self, signature: DatasetSignature, wanted: list[str], nearest: float
    ) -> dict[str, Gain]:
        """Expected gain over scratch of each of ``wanted``, for a target ``nearest`` away from
        its nearest source (``coverage``); empty without scratch evidence to learn it from.
        The interval is the model's cross-validated residuals around its prediction."""
        if self.gain_model is None or not wanted:
            return {}
        columns = self.features(signature, wanted, nearest=nearest)
        predicted = self.gain_model.predict(self._gain_matrix(columns))
        low, high = self.gain_residuals
        return {
            s: Gain(float(value), float(value + min(low, 0.0)), float(value + max(high, 0.0)))
            for s, value in zip(wanted, predicted, strict=True)
        }

    def coverage(self, signature: DatasetSignature, zoo: list[str]) -> Coverage | None:
        """How the target's nearest source in ``zoo`` compares with the past targets' nearest
        sources in it (None: an empty zoo)."""
        if not zoo:
            return None
        gamma = self.config.emd_gamma
        distance = self.index.distances_to(signature, "js", zoo, gamma)
        nearest = int(np.argmin(distance))
        key = hash(tuple(zoo))
        cached = self._coverage_past  # one read: another request may replace it meanwhile
        if cached is None or cached[0] != key:
            past = np.array(
                [float(self.index.distances_to(e.signature, "js", zoo, gamma).min())
                 for e in self.evidence]
            )  # fmt: skip
            self._coverage_past = cached = (key, past)
        past = cached[1]
        value = float(distance[nearest])
        percentile = float(np.mean(past <= value)) if len(past) else 0.0
        return Coverage(
            nearest_source_id=zoo[nearest],
            nearest_distance=value,
            percentile=percentile,
            covered=not (len(past) and percentile > self.config.coverage_quantile),
            past_targets=len(past),
        )
