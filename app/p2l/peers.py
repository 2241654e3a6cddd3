"""Per-candidate transferability measures: the peers P2L is compared with.

Each needs one forward pass of the target through *every* candidate source, where P2L needs
one pass through the reference network, whatever the size of the zoo. Higher is better.

- LogME (You et al., ICML 2021): log marginal evidence of a Bayesian linear model on the
  source's penultimate features.
- LEEP (Nguyen et al., ICML 2020): log expected empirical prediction, from the source's own
  classifier head (softmax over its labels).
- NCE (Tran et al., ICCV 2019): negative conditional entropy of the target labels given the
  source head's hard predictions.
- k-NN (Sorkhei et al. 2025): leave-one-out k-nearest-neighbour accuracy of the target labels
  on the source's penultimate features.
"""

import numpy as np

_MAX_ITERATIONS = 11  # as in the authors' reference implementation
_EPSILON = 1e-5
# k-NN: rows of the similarity matrix per block, so that a block holds at most this squared.
_KNN_BLOCK = 4096


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the per-sample log evidence of one-vs-rest linear regression.

    ``features``: (n, d) penultimate features of the target under one candidate model;
    ``labels``: (n,) integer classes. Higher is better.
    """
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    # Eigen-decomposition of F^T F once; every class reuses it.
    eigenvectors, sigma, _ = np.linalg.svd(f.T @ f)
    evidences = []
    for label in np.unique(labels):
        y = (labels == label).astype(np.float64)
        projected = eigenvectors.T @ (f.T @ y)
        alpha, beta = 1.0, 1.0
        for _ in range(_MAX_ITERATIONS):
            gamma = float(np.sum(beta * sigma / (alpha + beta * sigma)))
            m = eigenvectors @ (projected * beta / (alpha + beta * sigma))
            alpha_de = float(m @ m)
            beta_de = float(np.sum((y - f @ m) ** 2))
            new_alpha = gamma / (alpha_de + _EPSILON)
            new_beta = (n - gamma) / (beta_de + _EPSILON)
            converged = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < 0.01
            alpha, beta = new_alpha, new_beta
            if converged:
                break
        evidence = (
            d / 2 * np.log(alpha)
            + n / 2 * np.log(beta)
            - 0.5 * np.sum(np.log(alpha + beta * sigma))
            - beta / 2 * (beta_de + _EPSILON)
            - alpha / 2 * (alpha_de + _EPSILON)
            - n / 2 * np.log(2 * np.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def _joint(source_probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Empirical joint ``P(y, z)`` of target label y and source label z, shape (Y, Z)."""
    classes = np.unique(labels)
    joint = np.stack([source_probabilities[labels == y].sum(0) for y in classes])
    return joint / len(labels)


def leep(source_probabilities: np.ndarray, labels: np.ndarray) -> float:
    """LEEP: mean over target images of ``log sum_z P(y_i | z) theta(x_i)_z``.

    ``source_probabilities``: (n, Z) softmax of the source's own head on the target images;
    ``labels``: (n,) target classes.
    """
    theta = np.asarray(source_probabilities, dtype=np.float64)
    joint = _joint(theta, labels)
    conditional = joint / np.maximum(joint.sum(0, keepdims=True), 1e-300)  # P(y | z)
    row = np.searchsorted(np.unique(labels), labels)
    expected = np.einsum("iz,iz->i", theta, conditional[row])
    return float(np.mean(np.log(np.maximum(expected, 1e-300))))


def nce(source_probabilities: np.ndarray, labels: np.ndarray) -> float:
    """NCE: ``-H(Y | Z)`` with ``Z`` the source head's hard prediction (argmax)."""
    theta = np.asarray(source_probabilities)
    hard = np.zeros_like(theta, dtype=np.float64)
    hard[np.arange(len(theta)), theta.argmax(1)] = 1.0
    joint = _joint(hard, labels)
    marginal = joint.sum(0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, joint * np.log(joint / marginal), 0.0)
    return float(terms.sum())


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-NN accuracy of the target labels on the source's features, in [0, 1].

    Sorkhei et al. 2025, "k-NN as a simple and effective estimator of transferability":
    ahead of 23 transferability metrics. Each image is classified by the majority label of
    its ``k`` nearest *other* images (cosine similarity of the mean-centred, L2-normalised
    features); a tie goes to the label with the larger summed similarity, then the smaller
    label. ``k`` is clipped to ``n - 1``; fewer than 2 images score 0.0. ``features``: (n, d)
    penultimate features of the target under one candidate model; ``labels``: (n,) classes.
    Higher is better.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    f = np.asarray(features, dtype=np.float64)
    n = len(f)
    if len(labels) != n:
        raise ValueError(f"{n} feature rows but {len(labels)} labels")
    if n < 2:
        return 0.0
    f = f.reshape(n, -1)
    f = f - f.mean(0)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    f = f / np.where(norms > 0, norms, 1.0)  # an all-mean image stays at the origin
    classes, codes = np.unique(labels, return_inverse=True)  # sorted: smaller label first
    codes = codes.reshape(-1)
    num_classes = len(classes)
    k = min(k, n - 1)
    # One n x n block up to _KNN_BLOCK images; above, fewer rows per block.
    rows_per_block = max(1, _KNN_BLOCK * _KNN_BLOCK // n)
    correct = 0
    for first in range(0, n, rows_per_block):
        block = slice(first, min(first + rows_per_block, n))
        similarity = f[block] @ f.T
        rows = np.arange(similarity.shape[0])
        similarity[rows, rows + first] = -np.inf  # never one's own neighbour
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        votes = codes[nearest] + rows[:, None] * num_classes
        size = len(rows) * num_classes
        counts = np.bincount(votes.ravel(), minlength=size).reshape(len(rows), num_classes)
        weights = np.take_along_axis(similarity, nearest, axis=1).ravel()
        sums = np.bincount(votes.ravel(), weights, minlength=size).reshape(len(rows), -1)
        # The most votes; among those, the largest summed similarity; then the smaller label
        # (argmax takes the first of equal maxima).
        tied = counts == counts.max(1, keepdims=True)
        predicted = np.where(tied, sums, -np.inf).argmax(1)
        correct += int(np.count_nonzero(predicted == codes[block]))
    return correct / n
