"""LogME (You et al., ICML 2021): transferability as the log marginal evidence of a Bayesian
linear model on a source model's features. The peer P2L is compared with: it needs one
forward pass of the target through *every* candidate, where P2L needs one through the
reference network.
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
