"""Per-candidate transferability measures: the peers P2L is compared with.

Each needs one forward pass of the target through *every* candidate source, where P2L needs
one pass through the reference network, whatever the size of the zoo. Higher is better.

- LogME (You et al., ICML 2021): log marginal evidence of a Bayesian linear model on the
  source's penultimate features.
- LEEP (Nguyen et al., ICML 2020): log expected empirical prediction, from the source's own
  classifier head (softmax over its labels).
- NCE (Tran et al., ICCV 2019): negative conditional entropy of the target labels given the
  source head's hard predictions.
"""

import numpy as np

_MAX_ITERATIONS = 11  # as in the authors' reference implementation
_EPSILON = 1e-5


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
