"""Ranking speed: the vectorised in-memory index versus a per-source Python loop.

    python -m bench.ranking_speed [--sizes 1000 10000 100000]

Synthetic signatures (d = the bundled reference's 128 dimensions), KL measure, P2L score.
Both sides rank the same sources in the same process; figures are medians of repeated runs.
Writes bench/results/ranking.json and ranking.md.
"""

import argparse
import json
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np

from app.p2l.scoring import ScoringParams, SignatureIndex, to_distribution
from app.p2l.signature import DatasetSignature

RESULTS = Path(__file__).parent / "results"
DIM = 128
PARAMS = ScoringParams(lam=0.05, eps=1e-3, emd_gamma=0.01)


def synthetic_signature(rng: np.random.Generator, dim: int) -> DatasetSignature:
    """A one-class signature with a random non-negative mean and a random size."""
    mean = rng.gamma(0.5, 1.0, dim).astype(np.float32)
    return DatasetSignature(
        class_names=["all"],
        class_counts=np.array([int(rng.integers(100, 100_000))]),
        mean=mean,
        class_means=mean[None, :],
        variance=np.ones(dim, np.float32),
        reference_sha256="bench",
    )


def python_loop_ranking(
    signatures: dict[str, DatasetSignature], target: DatasetSignature, params: ScoringParams
) -> list[tuple[float, str]]:
    """Weak baseline: score each source in turn, normalising it on every query, then sort."""
    p_t = to_distribution(target.mean, params.eps)
    scored = []
    for source_id, sig in signatures.items():
        p_s = to_distribution(sig.mean, params.eps)
        kl = float(np.sum(p_t * np.log(p_t / p_s)))
        scored.append((-kl + params.lam * np.log(sig.n), source_id))
    return sorted(scored, reverse=True)


def prepared_loop_ranking(
    prepared: list[tuple[str, np.ndarray, float]], target: DatasetSignature, params: ScoringParams
) -> list[tuple[float, str]]:
    """A loop over sources whose ``log p_s`` and size term were computed once, in advance."""
    p_t = to_distribution(target.mean, params.eps)
    neg_entropy = float(np.sum(p_t * np.log(p_t)))
    scored = [(size - (neg_entropy - float(p_t @ log_p)), sid) for sid, log_p, size in prepared]
    return sorted(scored, reverse=True)


def numpy_ranking(
    means: np.ndarray, sizes: np.ndarray, target: DatasetSignature, params: ScoringParams, k: int
) -> np.ndarray:
    """Strong baseline: the stacked means, normalised and scored with numpy on every query."""
    p_t = to_distribution(target.mean, params.eps)
    p_s = to_distribution(means, params.eps)
    score = params.lam * np.log(sizes) - (p_t * (np.log(p_t) - np.log(p_s))).sum(1)
    best = np.argpartition(-score, k - 1)[:k]
    return best[np.argsort(-score[best])]


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(sizes: list[int]) -> dict:
    """Time the index and the baselines at each size; check they agree on the order."""
    rng = np.random.default_rng(0)
    target = synthetic_signature(rng, DIM)
    rows = []
    for n in sizes:
        signatures = {f"s{i}": synthetic_signature(rng, DIM) for i in range(n)}
        start = time.perf_counter()
        index = SignatureIndex(eps=PARAMS.eps)
        for source_id, sig in signatures.items():
            index.add(source_id, sig)
        index.rank(target, "p2l", "kl", PARAMS, top_k=10)
        build_s = time.perf_counter() - start
        extra = synthetic_signature(rng, DIM)

        def register_then_rank(
            index: SignatureIndex = index, extra: DatasetSignature = extra
        ) -> None:
            index.add("new", extra)
            index.rank(target, "p2l", "kl", PARAMS, top_k=10)
            index.remove("new")

        means = np.stack([s.mean for s in signatures.values()])
        sizes_n = np.array([s.n for s in signatures.values()], dtype=np.float64)
        prepared = [
            (sid, np.log(to_distribution(s.mean, PARAMS.eps)), PARAMS.lam * np.log(s.n))
            for sid, s in signatures.items()
        ]
        vectorised = index.rank(target, "p2l", "kl", PARAMS)
        loop = python_loop_ranking(signatures, target, PARAMS)
        ids = list(signatures)
        strong = [ids[i] for i in numpy_ranking(means, sizes_n, target, PARAMS, 10)]
        agree = [s.source_id for s in vectorised[:100]] == [sid for _, sid in loop[:100]] and (
            strong == [s.source_id for s in vectorised[:10]]
        )
        top10_s = median_seconds(partial(index.rank, target, "p2l", "kl", PARAMS, top_k=10), 21)
        index_s = median_seconds(partial(index.rank, target, "p2l", "kl", PARAMS), 21)
        changed_s = median_seconds(register_then_rank, 21)
        numpy_s = median_seconds(partial(numpy_ranking, means, sizes_n, target, PARAMS, 10), 21)
        prepared_s = median_seconds(partial(prepared_loop_ranking, prepared, target, PARAMS), 3)
        loop_s = median_seconds(partial(python_loop_ranking, signatures, target, PARAMS), 3)
        rows.append(
            {
                "sources": n,
                "index_top10_ms": round(top10_s * 1000, 3),
                "index_ms": round(index_s * 1000, 3),
                "index_after_registering_one_ms": round(changed_s * 1000, 3),
                "index_fill_from_empty_ms": round(build_s * 1000, 1),
                "numpy_top10_ms": round(numpy_s * 1000, 3),
                "prepared_loop_ms": round(prepared_s * 1000, 1),
                "python_loop_ms": round(loop_s * 1000, 1),
                "speedup_top10_vs_numpy": round(numpy_s / top10_s, 1),
                "speedup_top10_vs_prepared_loop": round(prepared_s / top10_s, 1),
                "speedup_top10": round(loop_s / top10_s, 1),
                "speedup": round(loop_s / index_s, 1),
                "same_order": agree,
            }
        )
        print(f"{n:>7} sources: {rows[-1]}", flush=True)
    return {
        "benchmark": "ranking_speed",
        "measure": "kl",
        "method": "p2l",
        "feature_dim": DIM,
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "cpus": __import__("os").cpu_count(),
        },
        "rows": rows,
    }


TABLE_HEAD = [
    "| sources | index, top-10 (ms) | after registering one (ms) | numpy per query (ms) "
    "| speed-up vs numpy | index, all rows (ms) | filling the index (ms) "
    "| extra: prepared loop (ms) | extra: naive loop (ms) | same order |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
]


def table_rows(rows: list[dict]) -> list[str]:
    """Markdown rows of the table under TABLE_HEAD."""
    return [
        f"| {r['sources']:,} | {r['index_top10_ms']} | {r['index_after_registering_one_ms']} | "
        f"{r['numpy_top10_ms']} | {r['speedup_top10_vs_numpy']}x | {r['index_ms']} | "
        f"{r['index_fill_from_empty_ms']} | {r['prepared_loop_ms']} | {r['python_loop_ms']} | "
        f"{'yes' if r['same_order'] else 'NO'} |"
        for r in rows
    ]


LEGEND = [
    "Medians; all columns measured in the same process. *index, top-10*: score every source,",
    "select and order the best 10 (a ranking request with `top_k`). *after registering one*:",
    "add a source, rank, remove it (rows are kept per source: a change costs no rebuild).",
    "*numpy per query* (the strong baseline): stacked means normalised and scored with numpy",
    "on every query, top 10 by argpartition. *index, all rows*: every source as a row object.",
    "*filling the index*: adding every source one by one and the first ranking (at start-up).",
    "Extra, weaker baselines: a Python loop over sources prepared in advance, and a naive loop",
    "normalising each source on every query.",
]


def write(results: dict) -> None:
    """JSON and a Markdown table under bench/results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ranking.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Ranking speed (P2L, KL, d=128)",
        "",
        f"Machine: {results['machine']['cpus']} CPUs, Python {results['machine']['python']}.",
        *LEGEND,
        "",
        *TABLE_HEAD,
        *table_rows(results["rows"]),
    ]
    (RESULTS / "ranking.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    write(run(parser.parse_args().sizes))


if __name__ == "__main__":
    main()
