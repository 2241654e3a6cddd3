"""Scoring against hand-computed values on tiny vectors, and ranking behaviour."""

import itertools
import math

import numpy as np
import pytest

from app.p2l import peers
from app.p2l.peers import knn_accuracy, leep, logme, nce
from app.p2l.scoring import ScoringParams, SignatureIndex, emd, to_distribution
from app.p2l.signature import DatasetSignature

pytestmark = pytest.mark.unit

EPS = 1e-12


def signature(
    class_means: list[list[float]], counts: list[int], mean: list[float] | None = None
) -> DatasetSignature:
    """A signature from class means and counts (overall mean = weighted class mean)."""
    means = np.array(class_means, dtype=np.float32)
    weights = np.array(counts, dtype=np.float64)
    overall = (
        np.array(mean, dtype=np.float32)
        if mean is not None
        else (means * weights[:, None]).sum(0) / weights.sum()
    )
    return DatasetSignature(
        class_names=[f"c{i}" for i in range(len(counts))],
        class_counts=np.array(counts, dtype=np.int64),
        mean=overall.astype(np.float32),
        class_means=means,
        variance=np.zeros(means.shape[1], dtype=np.float32),
        reference_sha256="test",
    )


def one_source_index(source: DatasetSignature) -> SignatureIndex:
    index = SignatureIndex(eps=EPS)
    index.add("s", source)
    return index


def test_kl_matches_hand_computation() -> None:
    # p_t = [1/2, 1/2], p_s = [1/4, 3/4]: KL = 1/2 ln 2 + 1/2 ln(2/3) = 0.143841
    index = one_source_index(signature([[1, 3]], [10]))
    (scored,) = index.rank(signature([[1, 1]], [10]), "distance", "kl", ScoringParams(0, EPS, 0.01))
    assert scored.distance == pytest.approx(0.143841, abs=1e-5)
    assert scored.similarity == pytest.approx(math.exp(-0.143841), abs=1e-5)
    assert scored.score == pytest.approx(-0.143841, abs=1e-5)


def test_js_and_cosine_match_hand_computation() -> None:
    index = one_source_index(signature([[1, 3]], [10]))
    target = signature([[1, 1]], [10])
    params = ScoringParams(0, EPS, 0.01)
    assert index.rank(target, "distance", "js", params)[0].distance == pytest.approx(
        0.033822, abs=1e-5
    )
    cosine = one_source_index(signature([[1, 1]], [10]))
    assert cosine.rank(signature([[1, 0]], [10]), "distance", "cosine", params)[
        0
    ].distance == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)


def test_emd_matches_hand_computation() -> None:
    # Target: all mass at (0,0). Source: half at (3,4), half at (0,0) -> EMD = 0.5 * 5 = 2.5.
    assert emd(
        np.array([1.0]),
        np.array([[0.0, 0.0]]),
        np.array([1.0, 1.0]),
        np.array([[3.0, 4.0], [0.0, 0.0]]),
    ) == pytest.approx(2.5)
    # Counts weight the classes: 3:1 in favour of (0,0) -> EMD = 0.25 * 5.
    assert emd(
        np.array([5.0]),
        np.array([[0.0, 0.0]]),
        np.array([1.0, 3.0]),
        np.array([[3.0, 4.0], [0.0, 0.0]]),
    ) == pytest.approx(1.25)
    index = one_source_index(signature([[3, 4], [0, 0]], [1, 1]))
    (scored,) = index.rank(signature([[0, 0]], [7]), "distance", "emd", ScoringParams(0, EPS, 0.01))
    assert scored.distance == pytest.approx(0.01 * 2.5)
    assert scored.similarity == pytest.approx(math.exp(-0.025))


def test_size_term_and_methods() -> None:
    index = SignatureIndex(eps=EPS)
    index.add("near-small", signature([[1, 1]], [100]))
    index.add("far-large", signature([[1, 9]], [10_000]))
    target = signature([[1, 1]], [50])
    params = ScoringParams(lam=0.5, eps=EPS, emd_gamma=0.01)

    p2l = {s.source_id: s for s in index.rank(target, "p2l", "kl", params)}
    assert p2l["near-small"].size_term == pytest.approx(0.5 * math.log(100))
    assert p2l["far-large"].size_term == pytest.approx(0.5 * math.log(10_000))
    for scored in p2l.values():
        assert scored.score == pytest.approx(-scored.distance + scored.size_term, abs=1e-6)
    # far-large: KL([.5,.5] || [.1,.9]) = 0.5 ln 5 + 0.5 ln(5/9) = 0.510826
    assert p2l["far-large"].distance == pytest.approx(0.510826, abs=1e-5)
    assert [s.source_id for s in index.rank(target, "p2l", "kl", params)] == [
        "far-large", "near-small"
    ]  # fmt: skip
    assert [s.source_id for s in index.rank(target, "distance", "kl", params)] == [
        "near-small", "far-large"
    ]  # fmt: skip
    assert [s.source_id for s in index.rank(target, "largest", "kl", params)] == [
        "far-large", "near-small"
    ]  # fmt: skip
    small_lambda = ScoringParams(lam=0.01, eps=EPS, emd_gamma=0.01)
    assert index.rank(target, "p2l", "kl", small_lambda)[0].source_id == "near-small"


def test_index_follows_additions_removals_and_restrictions() -> None:
    index = SignatureIndex(eps=1e-6)
    rng = np.random.default_rng(0)
    for i in range(20):
        index.add(f"s{i}", signature([rng.random(8).tolist()], [int(10 + i)]))
    target = signature([rng.random(8).tolist()], [10])
    params = ScoringParams(0.1, 1e-6, 0.01)
    ranked = index.rank(target, "p2l", "kl", params)
    assert [s.rank for s in ranked] == list(range(1, 21))
    assert all(a.score >= b.score for a, b in itertools.pairwise(ranked))
    assert [s.source_id for s in index.rank(target, "p2l", "kl", params, top_k=3)] == [
        s.source_id for s in ranked[:3]
    ]
    subset = index.rank(target, "p2l", "kl", params, source_ids=["s3", "s7"])
    assert {s.source_id for s in subset} == {"s3", "s7"}
    index.remove(ranked[0].source_id)
    assert ranked[0].source_id not in {s.source_id for s in index.rank(target, "p2l", "kl", params)}


def test_index_kept_row_by_row_ranks_like_one_built_from_scratch() -> None:
    """Interleaved adds, replacements and deletes (rows compacted later) change no ranking."""
    rng = np.random.default_rng(2)
    index = SignatureIndex(eps=1e-3)
    alive: dict[str, DatasetSignature] = {}
    for step in range(300):
        source_id = f"s{rng.integers(60)}"
        if source_id in alive and rng.random() < 0.4:
            index.remove(source_id)
            del alive[source_id]
        else:
            alive[source_id] = signature([rng.random(8).tolist()], [int(rng.integers(5, 500))])
            index.add(source_id, alive[source_id])
        if step % 37 == 0 or step == 299:
            fresh = SignatureIndex(eps=1e-3)
            for fresh_id, sig in alive.items():
                fresh.add(fresh_id, sig)
            target = signature([rng.random(8).tolist()], [10])
            params = ScoringParams(0.05, 1e-3, 0.01)
            for measure in ("kl", "js", "cosine"):
                got = index.rank(target, "p2l", measure, params)
                want = fresh.rank(target, "p2l", measure, params)
                assert [s.source_id for s in got] == [s.source_id for s in want]
                assert [s.score for s in got] == pytest.approx([s.score for s in want])
    assert len(index) == len(alive)


def test_a_new_feature_width_replaces_the_old_rows_as_sources_are_upgraded() -> None:
    index = SignatureIndex(eps=1e-3)
    index.add("a", signature([[0.1, 0.2, 0.3]], [10]))
    index.add("b", signature([[0.3, 0.2, 0.1]], [10]))
    target = signature([[0.1, 0.2, 0.3, 0.4]], [10])
    params = ScoringParams(0.0, 1e-3, 0.01)
    index.add("a", signature([[0.1, 0.2, 0.3, 0.4]], [10]))  # upgraded to 4 dimensions
    assert [s.source_id for s in index.rank(target, "p2l", "kl", params)] == ["a"]
    index.add("b", signature([[0.4, 0.3, 0.2, 0.1]], [10]))
    assert [s.source_id for s in index.rank(target, "p2l", "kl", params)] == ["a", "b"]


def test_vectorised_kl_equals_per_source_loop() -> None:
    rng = np.random.default_rng(1)
    index = SignatureIndex(eps=1e-3)
    sources = {f"s{i}": signature([rng.random(16).tolist()], [5]) for i in range(50)}
    for source_id, sig in sources.items():
        index.add(source_id, sig)
    target = signature([rng.random(16).tolist()], [5])
    p_t = to_distribution(target.mean.astype(np.float64), 1e-3)
    for scored in index.rank(target, "distance", "kl", ScoringParams(0, 1e-3, 0.01)):
        p_s = to_distribution(sources[scored.source_id].mean.astype(np.float64), 1e-3)
        assert scored.distance == pytest.approx(float(np.sum(p_t * np.log(p_t / p_s))), abs=1e-5)


def test_logme_prefers_features_that_separate_the_classes() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    noise = rng.normal(size=(120, 16))
    informative = noise * 0.3 + np.eye(16)[labels] * 3  # class shows in its own dimension
    assert logme(informative, labels) > logme(noise, labels) + 0.1
    # Deterministic, and invariant to the order of the samples.
    order = rng.permutation(120)
    assert logme(informative[order], labels[order]) == pytest.approx(logme(informative, labels))


def test_leep_matches_its_definition_and_prefers_an_informative_head() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 20)
    # A source head whose 4 labels track the target classes (label 3 never wins) ...
    informative = np.full((60, 4), 0.02)
    informative[np.arange(60), labels] = 0.94
    # ... and one whose predictions ignore them.
    uninformative = rng.dirichlet(np.ones(4), size=60)
    assert leep(informative, labels) > leep(uninformative, labels) + 0.5

    # The definition, spelled out: log sum_z P(y|z) theta_z with P from the empirical joint.
    theta = rng.dirichlet(np.ones(4), size=60)
    joint = np.array([theta[labels == y].sum(0) for y in range(3)]) / 60
    conditional = joint / joint.sum(0)
    expected = np.mean([np.log(theta[i] @ conditional[labels[i]]) for i in range(60)])
    assert leep(theta, labels) == pytest.approx(expected)
    assert leep(theta, labels) <= 0


def test_nce_is_minus_the_conditional_entropy_of_labels_given_source_predictions() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    # Source predictions that determine the target label: H(Y|Z) = 0.
    determined = np.eye(3)[[2, 2, 0, 0, 1, 1]]
    assert nce(determined, labels) == pytest.approx(0.0)
    # One source label for everything: H(Y|Z) = H(Y) = log 3.
    constant = np.tile([0.9, 0.05, 0.05], (6, 1))
    assert nce(constant, labels) == pytest.approx(-np.log(3))
    # Two source labels, each covering one and a half classes.
    mixed = np.eye(2)[[0, 0, 0, 1, 1, 1]]
    h = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))  # H(Y | Z) within each z
    assert nce(mixed, labels) == pytest.approx(-h)


def test_knn_accuracy_is_leave_one_out_and_ignores_the_features_scale() -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat([3, 7], 100)
    # Two well-separated clusters: every image's nearest others share its label.
    centres = np.array([[10.0, 0, 0, 0], [-10.0, 0, 0, 0]])
    clusters = centres[(labels == 7).astype(int)] + rng.normal(size=(200, 4))
    assert knn_accuracy(clusters, labels) == 1.0
    # Random labels on random points: about chance (0.5).
    noise = rng.normal(size=(200, 16))
    random_labels = rng.permutation(labels)
    assert 0.25 < knn_accuracy(noise, random_labels) < 0.75
    # Invariant to the features' scale and offset (cosine of the mean-centred features), and
    # to the order of the images.
    score = knn_accuracy(noise, labels)
    assert knn_accuracy(noise * 1000.0 + 5.0, labels) == pytest.approx(score)
    order = rng.permutation(200)
    assert knn_accuracy(noise[order], labels[order]) == pytest.approx(score)

    # Leave-one-out: an image is never its own neighbour. Three pairs, each pair's images
    # nearest one another, labelled so that each image's partner has the other label.
    pairs = np.array([[1.0, 0], [1.0, 0.01], [-1, 1], [-1, 1.01], [-1, -1], [-1, -1.01]])
    assert knn_accuracy(pairs, np.array([0, 1, 0, 1, 0, 1]), k=1) == 0.0
    assert knn_accuracy(pairs, np.array([0, 0, 1, 1, 2, 2]), k=1) == 1.0
    # k larger than n is clipped to n - 1: every other image votes.
    assert knn_accuracy(pairs, np.array([0, 0, 1, 1, 2, 2]), k=50) == pytest.approx(
        knn_accuracy(pairs, np.array([0, 0, 1, 1, 2, 2]), k=5)
    )
    # With every other image voting, the majority is the other label in a set of 1 a and
    # 2 b's: the a is wrong, each b sees one a and one b (a tie) and wins it by similarity.
    line = np.array([[0.0, 1], [1, 0], [1, 0.1]])
    assert knn_accuracy(line, np.array([0, 1, 1]), k=10) == pytest.approx(2 / 3)
    # Identical features (the origin, once centred): a tie of votes and of summed similarity
    # goes to the smaller label.
    same = np.ones((3, 4))
    assert knn_accuracy(same, np.array([5, 9, 5]), k=2) == pytest.approx(2 / 3)
    assert knn_accuracy(same, np.array([9, 5, 9]), k=2) == 0.0
    # Fewer than 2 images: nothing to compare with.
    assert knn_accuracy(np.ones((1, 4)), np.array([0])) == 0.0
    assert knn_accuracy(np.ones((0, 4)), np.array([], dtype=int)) == 0.0


def test_knn_accuracy_in_blocks_of_rows_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    features, labels = rng.normal(size=(90, 8)), rng.integers(0, 3, 90)
    features[labels == 0] += 0.7  # some signal, so that the accuracy is no constant
    whole = knn_accuracy(features, labels, k=4)
    monkeypatch.setattr(peers, "_KNN_BLOCK", 7)  # 7 * 7 // 90 = 0: one row a block
    assert knn_accuracy(features, labels, k=4) == whole
    monkeypatch.setattr(peers, "_KNN_BLOCK", 20)  # blocks of 4 rows, the last of 2
    assert knn_accuracy(features, labels, k=4) == whole
