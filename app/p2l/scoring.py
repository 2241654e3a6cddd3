"""P2L scoring: distances between signatures, the size term, and vectorised ranking.

``score(s, t) = -D(t, s) + lambda * log(n_s)`` with ``D`` one of:

- ``kl``: ``KL(p_t || p_s)``, ``p = (mu + eps) / sum(mu + eps)`` over mean features. With
  ``log p_s`` stored per source the whole ranking is one matrix-vector product.
- ``js``: Jensen-Shannon divergence between the same distributions.
- ``cosine``: ``1 - cos(mu_t, mu_s)``.
- ``emd``: ``gamma * EMD`` between class-mean "histograms" weighted by class counts
  (Euclidean ground distance; Cui et al. 2018, whose similarity is ``exp(-gamma * EMD)``).

Every measure reports ``similarity = exp(-D)``. Methods: ``p2l`` (the score above),
``distance`` (``-D`` alone) and ``largest`` (``log n_s`` alone), the paper's two baselines.
"""

import threading
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from app.measures import MEASURES, METHODS, Measure, Method
from app.p2l.signature import DatasetSignature


@dataclass(frozen=True)
class ScoringParams:
    """Constants of the score (defaults live in Settings; see docs/guide/ranking.md,
    "Calibration")."""

    lam: float
    eps: float
    emd_gamma: float


class ScoredSource(NamedTuple):
    """One source's score and its parts (a tuple: cheap to make by the 100,000)."""

    source_id: str
    rank: int
    score: float
    distance: float
    similarity: float
    size_term: float
    num_images: int


def to_distribution(mean: np.ndarray, eps: float) -> np.ndarray:
    """Mean feature(s) -> probability vector(s) over feature dimensions (last axis)."""
    shifted = np.clip(mean, 0, None) + eps
    distribution: np.ndarray = shifted / shifted.sum(axis=-1, keepdims=True)
    return distribution


def emd(
    weights_a: np.ndarray, points_a: np.ndarray, weights_b: np.ndarray, points_b: np.ndarray
) -> float:
    """Earth mover's distance between two weighted point sets (Euclidean ground distance)."""
    from scipy.optimize import linprog  # here: only emd needs it, and it costs a start 0.7 s

    wa, wb = weights_a / weights_a.sum(), weights_b / weights_b.sum()
    cost = np.linalg.norm(points_a[:, None, :] - points_b[None, :, :], axis=-1)
    na, nb = len(wa), len(wb)
    # Flow f[i, j] >= 0 with row sums wa and column sums wb; minimise sum(cost * f).
    rows = np.kron(np.eye(na), np.ones((1, nb)))
    cols = np.kron(np.ones((1, na)), np.eye(nb))
    result = linprog(
        cost.ravel(),
        A_eq=np.vstack([rows, cols]),
        b_eq=np.concatenate([wa, wb]),
        bounds=(0, None),
        method="highs",
    )
    if not result.success or result.fun is None:
        raise ValueError(f"EMD did not solve: {result.message}")
    return float(result.fun)


class SignatureIndex:
    """Source signatures held in memory as ``N x d`` float32 matrices, ready to rank.

    Each source's row (its distribution, log-distribution, norms, size) is computed once,
    when it is added: registering or deleting one source in a zoo of 100,000 costs
    microseconds, not a rebuild. Rows keep insertion order (ties rank in that order);
    deleted rows are compacted away, with numpy, on the next ranking.
    """

    def __init__(self, eps: float, claimed_images_cap: int | None = None) -> None:
        self.eps = eps
        # A claimed image count (an uploaded signature's word, not counted by the service)
        # weighs at most this many images in the size term: a claim of 10^9 cannot buy
        # first place. None: claims weigh as they are.
        self.claimed_images_cap = claimed_images_cap
        self._weighed: dict[str, int] = {}  # source id -> images its size term counts
        self._signatures: dict[str, DatasetSignature] = {}
        self._row_of: dict[str, int] = {}  # source id -> row in the matrices
        self._row_ids: list[str | None] = []  # row -> source id (None: deleted)
        self._deleted = 0
        self._dim: int | None = None
        self._allocate(0, 0)
        self.ids: list[str] = []  # live rows' source ids, in row order (after _build)
        self._ids_stale = False
        # Requests register, delete and rank from several threads at once.
        self._lock = threading.RLock()
        # The last zoo_changes seq applied: the index is a cache of the database up to it.
        self.version = 0
        # One catch-up at a time, so an older read of the log is never applied over a newer.
        self.catch_up_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._signatures)

    def __contains__(self, source_id: str) -> bool:
        return source_id in self._signatures

    def add(self, source_id: str, signature: DatasetSignature, claimed: bool = False) -> None:
        """Add or replace a source's signature; ``claimed``: its image count was not counted
        by the service (its size term is capped at ``claimed_images_cap``)."""
        with self._lock:
            self._signatures[source_id] = signature
            weighed = signature.n
            if claimed and self.claimed_images_cap is not None:
                weighed = min(weighed, self.claimed_images_cap)
            self._weighed[source_id] = weighed
            if self._dim is not None and signature.feature_dim != self._dim:
                # A new reference network's signatures arrive one by one (app.zoo.upgrade):
                # start over from the signatures, with the new width.
                self._rebuild(signature.feature_dim)
                return
            if self._dim is None:
                self._dim = signature.feature_dim
                self._allocate(16, self._dim)
            row = self._row_of.get(source_id)
            if row is None:
                row = len(self._row_ids)
                if row == len(self._sizes):
                    self._grow(2 * row)
                self._row_ids.append(source_id)
                self._row_of[source_id] = row
            self._fill(row, signature, weighed)
            self._ids_stale = True

    def signature(self, source_id: str) -> DatasetSignature:
        """The stored signature of one source."""
        return self._signatures[source_id]

    def remove(self, source_id: str) -> None:
        """Forget a source (no error if absent)."""
        with self._lock:
            if self._signatures.pop(source_id, None) is None:
                return
            self._weighed.pop(source_id, None)
            row = self._row_of.pop(source_id, None)
            if row is not None:
                self._row_ids[row] = None
                self._deleted += 1
            self._ids_stale = True

    def _allocate(self, rows: int, dim: int) -> None:
        self._means = np.zeros((rows, dim), np.float32)
        self._p = np.zeros((rows, dim), np.float32)
        self._log_p = np.zeros((rows, dim), np.float32)
        self._neg_entropy = np.zeros(rows, np.float32)
        self._norms = np.zeros(rows, np.float32)
        self._sizes = np.zeros(rows, np.int64)
        self._log_n = np.zeros(rows, np.float32)

    def _matrices(self) -> list[np.ndarray]:
        return [self._means, self._p, self._log_p, self._neg_entropy, self._norms,
                self._sizes, self._log_n]  # fmt: skip

    def _grow(self, rows: int) -> None:
        old = self._matrices()
        self._allocate(rows, self._dim or 0)
        for target, source in zip(self._matrices(), old, strict=True):
            target[: len(source)] = source

    def _fill(self, row: int, signature: DatasetSignature, weighed_images: int) -> None:
        mean = signature.mean.astype(np.float32)
        p = to_distribution(mean, self.eps).astype(np.float32)
        log_p = np.log(p)
        self._means[row], self._p[row], self._log_p[row] = mean, p, log_p
        self._neg_entropy[row] = np.sum(p * log_p)
        self._norms[row] = np.linalg.norm(mean)
        self._sizes[row] = signature.n
        self._log_n[row] = np.log(max(weighed_images, 1))

    def _rebuild(self, dim: int) -> None:
        """Every row again from the signatures (after a change of feature width)."""
        signatures = list(self._signatures.items())
        self._dim = dim
        self._allocate(max(16, len(signatures)), dim)
        self._row_ids, self._row_of, self._deleted = [], {}, 0
        self._ids_stale = True
        for source_id, signature in signatures:
            if signature.feature_dim != dim:
                continue  # not yet upgraded: left out of rankings until it is
            self._row_of[source_id] = len(self._row_ids)
            self._row_ids.append(source_id)
            self._fill(self._row_of[source_id], signature, self._weighed[source_id])

    def _build(self) -> None:
        """Compact deleted rows away and expose the live matrices (cheap when nothing changed)."""
        if self._deleted:
            keep = np.array([i is not None for i in self._row_ids])
            for matrix in self._matrices():  # boolean indexing copies: safe in place
                matrix[: int(keep.sum())] = matrix[: len(keep)][keep]
            live = [i for i in self._row_ids if i is not None]
            self._row_ids = list(live)
            self._row_of = {source_id: row for row, source_id in enumerate(live)}
            self._deleted = 0
        if self._ids_stale:
            self.ids = [i for i in self._row_ids if i is not None]
            self._ids_stale = False
        count = len(self.ids)
        self.means, self.p, self.log_p = self._means[:count], self._p[:count], self._log_p[:count]
        self.neg_entropy, self.norms = self._neg_entropy[:count], self._norms[:count]
        self.sizes, self.log_n = self._sizes[:count], self._log_n[:count]

    def distances_to(
        self,
        target: DatasetSignature,
        measure: Measure,
        source_ids: list[str] | None,
        gamma: float,
    ) -> np.ndarray:
        """``D(target, s)`` for the sources named (None: all, in row order), in their order:
        ids mapped to rows and distances taken under one lock, so that a concurrent register
        or delete cannot shift the rows in between."""
        with self._lock:
            self._build()
            if source_ids is None:
                return self.distances(target, measure, None, gamma).copy()
            position = {source_id: i for i, source_id in enumerate(self.ids)}
            rows = np.array([position[s] for s in source_ids], dtype=np.int64)
            return self.distances(target, measure, rows, gamma)

    def log_sizes_of(self, source_ids: list[str]) -> np.ndarray:
        """``log(n_s)`` of the sources named, as the size term weighs them (a claimed count
        capped), under the same lock as ``distances_to``."""
        with self._lock:
            self._build()
            position = {source_id: i for i, source_id in enumerate(self.ids)}
            return self.log_n[[position[s] for s in source_ids]].copy()

    def distances(
        self, target: DatasetSignature, measure: Measure, rows: np.ndarray | None, gamma: float
    ) -> np.ndarray:
        """``D(target, s)`` for the sources at ``rows`` of the index (None: all, no copy).
        Rows are positions after the last compaction: callers outside the index hold its lock
        or name sources by id (``distances_to``)."""
        self._build()

        def take(matrix: np.ndarray) -> np.ndarray:
            return matrix if rows is None else matrix[rows]

        if measure == "kl":
            p_t = to_distribution(target.mean, self.eps).astype(np.float32)
            kl: np.ndarray = float(np.sum(p_t * np.log(p_t))) - take(self.log_p) @ p_t
            return kl
        if measure == "js":
            p_t = to_distribution(target.mean, self.eps).astype(np.float32)
            p_s = take(self.p)
            log_mix = np.log(0.5 * (p_s + p_t))
            kl_t = np.sum(p_t * np.log(p_t)) - log_mix @ p_t
            kl_s = take(self.neg_entropy) - np.einsum("ij,ij->i", p_s, log_mix)
            js: np.ndarray = 0.5 * (kl_t + kl_s)
            return js
        if measure == "cosine":
            norm_t = np.linalg.norm(target.mean)
            dots = take(self.means) @ target.mean.astype(np.float32)
            cosine: np.ndarray = 1.0 - dots / np.maximum(take(self.norms) * norm_t, 1e-12)
            return cosine
        if measure == "emd":
            return np.array(
                [
                    gamma
                    * emd(
                        target.class_counts.astype(float),
                        target.class_means,
                        sig.class_counts.astype(float),
                        sig.class_means,
                    )
                    for sig in (
                        self._signatures[self.ids[r]]
                        for r in (range(len(self.ids)) if rows is None else rows)
                    )
                ]
            )
        raise ValueError(f"unknown measure {measure!r}; choose one of {tuple(MEASURES)}")

    def source_ids(self) -> list[str]:
        """The indexed sources' ids, in row order (the order ``rows`` arguments index)."""
        with self._lock:
            self._build()
            return list(self.ids)

    def rank(
        self,
        target: DatasetSignature,
        method: Method,
        measure: Measure,
        params: ScoringParams,
        source_ids: list[str] | None = None,
        top_k: int | None = None,
    ) -> list[ScoredSource]:
        """Sources ordered by score (best first), with the parts of each score."""
        with self._lock:
            return self._rank(target, method, measure, params, source_ids, top_k)

    def _rank(
        self,
        target: DatasetSignature,
        method: Method,
        measure: Measure,
        params: ScoringParams,
        source_ids: list[str] | None,
        top_k: int | None,
    ) -> list[ScoredSource]:
        self._build()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
        rows = None
        if source_ids is not None:
            position = {source_id: i for i, source_id in enumerate(self.ids)}
            rows = np.array([position[s] for s in source_ids], dtype=np.int64)
        if (len(self.ids) if rows is None else len(rows)) == 0:
            return []
        if target.feature_dim != self.means.shape[1]:
            raise ValueError(
                f"target signature has {target.feature_dim} dimensions, sources have "
                f"{self.means.shape[1]}"
            )
        distance = self.distances(target, measure, rows, params.emd_gamma).astype(np.float64)
        log_n = (self.log_n if rows is None else self.log_n[rows]).astype(np.float64)
        size_term = params.lam * log_n
        if method == "p2l":
            score = size_term - distance
        elif method == "distance":
            score = -distance
        else:
            score = log_n
        if rows is None:
            rows = np.arange(len(self.ids))
        count = len(rows) if top_k is None else min(top_k, len(rows))
        if count < len(rows):
            best = np.argpartition(-score, count - 1)[:count]
            order = best[np.argsort(-score[best], kind="stable")]
        else:
            order = np.argsort(-score, kind="stable")
        chosen = rows[order]
        ids = self.ids
        return [
            ScoredSource(ids[row], rank, value, dist, sim, size, n)
            for rank, (row, value, dist, sim, size, n) in enumerate(
                zip(
                    chosen.tolist(),
                    score[order].tolist(),
                    distance[order].tolist(),
                    np.exp(-distance[order]).tolist(),
                    size_term[order].tolist(),
                    self.sizes[chosen].tolist(),
                    strict=True,
                ),
                start=1,
            )
        ]
