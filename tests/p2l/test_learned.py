"""The learned ranker on hand-made signatures: what it learns from evidence, and when not."""

import numpy as np
import pytest

from app.p2l.learned import EvidenceTarget, LearnedConfig, LearnedRanker
from app.p2l.scoring import SignatureIndex
from app.p2l.signature import DatasetSignature

pytestmark = pytest.mark.unit

DIM = 8


def signature(mean: np.ndarray, n: int = 100) -> DatasetSignature:
    """A one-class signature with this mean feature."""
    mean = np.asarray(mean, dtype=np.float32)
    return DatasetSignature(
        ["a"], np.array([n]), mean, mean[None, :], np.ones(DIM, np.float32), "ref"
    )


def corner(i: int, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    """A mean feature near the ``i``-th axis."""
    mean = np.full(DIM, 0.1) + rng.random(DIM) * noise
    mean[i] += 1.0
    return mean


@pytest.fixture
def zoo() -> SignatureIndex:
    """Sources 'near0' .. 'near3' each close to one axis, and a 'generalist' close to none."""
    rng = np.random.default_rng(0)
    index = SignatureIndex(eps=1e-3)
    for i in range(4):
        index.add(f"near{i}", signature(corner(i, rng)))
    index.add("generalist", signature(np.full(DIM, 0.5)))
    return index


def generalist_wins(count: int, rng: np.random.Generator) -> list[EvidenceTarget]:
    """Past targets near each source's axis on which the far-away generalist did best."""
    evidence = []
    for t in range(count):
        accuracy = {f"near{i}": 0.6 + 0.02 * (i == t % 4) for i in range(4)}
        accuracy["generalist"] = 0.8
        evidence.append(
            EvidenceTarget(f"t{t}", f"family{t}", signature(corner(t % 4, rng)), accuracy, 0.5)
        )
    return evidence


def test_below_the_minimum_of_evidence_it_stays_inactive(zoo: SignatureIndex) -> None:
    rng = np.random.default_rng(1)
    ranker = LearnedRanker(zoo, generalist_wins(4, rng), LearnedConfig(min_targets=5))
    assert not ranker.active
    # A past target with a single rankable source says nothing about a ranking.
    lone = EvidenceTarget("x", "x", signature(corner(0, rng)), {"near0": 0.9, "gone": 0.5})
    assert LearnedRanker(zoo, [lone] * 9, LearnedConfig(min_targets=1)).evidence == []


def test_the_record_learned_from_past_targets_overrides_distance(zoo: SignatureIndex) -> None:
    rng = np.random.default_rng(2)
    target = signature(corner(1, rng))
    ids = zoo.source_ids()
    distance = dict(zip(ids, zoo.distances(target, "js", None, 0.01), strict=True))
    assert min(distance, key=distance.__getitem__) == "near1"  # P2L's pick: the nearest

    # Ridge: 12 targets of 5 sources are too few rows for the trees (leaves of 20 or more) to
    # tell the generalist from the nearest source by a margin wider than rounding.
    config = LearnedConfig(features=("js", "record"), min_targets=5, model="ridge")
    ranker = LearnedRanker(zoo, generalist_wins(12, rng), config)
    assert ranker.active and len(ranker.evidence) == 12
    scores = ranker.rank(target, ids).scores
    assert max(scores, key=scores.__getitem__) == "generalist"
    assert ranker.rank(target, ids).without_record == []


def test_a_source_without_record_is_scored_by_distance_and_size(zoo: SignatureIndex) -> None:
    rng = np.random.default_rng(3)
    zoo.add("newcomer", signature(corner(2, rng)))
    ranker = LearnedRanker(zoo, generalist_wins(8, rng), LearnedConfig(min_targets=5))
    ranked = ranker.rank(signature(corner(2, rng)), zoo.source_ids())
    assert ranked.without_record == ["newcomer"]
    assert np.isfinite(ranked.scores["newcomer"])


def test_records_never_come_from_the_targets_own_group(zoo: SignatureIndex) -> None:
    rng = np.random.default_rng(4)
    evidence = generalist_wins(6, rng)
    twin = EvidenceTarget("twin", "family0", evidence[0].signature,
                          {"near0": 0.99, "generalist": 0.1, "near1": 0.5})  # fmt: skip
    ranker = LearnedRanker(zoo, [*evidence, twin], LearnedConfig(min_targets=1))
    with_twin = ranker._records(exclude_group=None)["near0"]
    without = ranker._records(exclude_group="family0")["near0"]
    assert with_twin > without  # the twin's answer is seen only from other groups


def test_coverage_flags_a_target_farther_than_the_past_ones(zoo: SignatureIndex) -> None:
    rng = np.random.default_rng(5)
    ranker = LearnedRanker(zoo, generalist_wins(10, rng), LearnedConfig(min_targets=5))
    zoo = zoo.source_ids()
    near = ranker.coverage(signature(corner(0, rng)), zoo)
    far_mean = np.zeros(DIM)
    far_mean[0], far_mean[1] = 5.0, 5.0  # between two sources, far from both
    far = ranker.coverage(signature(far_mean), zoo)
    assert near is not None and far is not None
    assert near.covered and near.nearest_source_id == "near0"
    assert not far.covered and far.percentile > near.percentile
    assert far.past_targets == 10


def test_expected_gain_over_scratch_comes_with_an_interval(zoo: SignatureIndex) -> None:
    rng = np.random.default_rng(6)
    ranker = LearnedRanker(zoo, generalist_wins(12, rng), LearnedConfig(min_targets=5))
    target = signature(corner(3, rng))
    coverage = ranker.coverage(target, zoo.source_ids())
    assert coverage is not None
    gains = ranker.gains(target, ["generalist", "near3"], coverage.nearest_distance)
    assert set(gains) == {"generalist", "near3"}
    for gain in gains.values():
        assert gain.low <= gain.expected <= gain.high
    # The evidence: the generalist gains 0.3 over scratch, the others about 0.1.
    assert gains["generalist"].expected > gains["near3"].expected
    assert abs(gains["generalist"].expected - 0.3) < 0.1


@pytest.mark.parametrize("model", ["boosted", "ridge"])
def test_a_subset_of_the_zoo_is_scored_as_in_the_whole_zoo(zoo: SignatureIndex, model: str) -> None:
    """Features are standardised over the whole zoo, not over the sources asked for (or, in
    a past target, tried): ranking a subset keeps each source's score and their order."""
    rng = np.random.default_rng(6)
    evidence = generalist_wins(8, rng)
    # A past fine-tune of two sources only, as the service's evidence mostly is.
    evidence.append(EvidenceTarget("job", "job", signature(corner(2, rng)),
                                   {"near2": 0.7, "generalist": 0.75}))  # fmt: skip
    ranker = LearnedRanker(zoo, evidence, LearnedConfig(model=model, min_targets=5))
    target = signature(corner(3, rng))
    full = ranker.rank(target, zoo.source_ids()).scores
    some = ["near0", "near3", "generalist"]
    assert ranker.rank(target, some).scores == pytest.approx({s: full[s] for s in some})
