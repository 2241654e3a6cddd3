"""Ranking use cases: rank the zoo for a target dataset, store and read rankings."""

import math
import time
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import torch
from sqlalchemy import ColumnElement, Text, and_, cast, delete, false, func, select
from sqlalchemy.orm import Session

from app.errors import InvalidInput
from app.families import get_spec, load_model
from app.measures import Measure, RankingMethod, RefineMethod
from app.models import Dataset, Ranking, Source, utcnow
from app.p2l.refine import source_outputs, transferability
from app.p2l.scoring import ScoringParams
from app.pagination import get_by_id, is_valid_id, paginate
from app.services.access import ALL_PROJECTS
from app.services.context import Context
from app.services.datasets import DatasetArrays, dataset_arrays, dataset_exists
from app.services.handles import find_id, ids_of, resolve_id
from app.services.learning import coverage_summary, learned_state, with_gains
from app.services.sources import catch_up, signature_for_dataset, weights_path


@dataclass(frozen=True)
class Refine:
    """The second stage of a two-stage ranking: ``method`` re-ranks the first stage's top."""

    method: RefineMethod
    top: int


def rank_sources(
    ctx: Context,
    params: ScoringParams,
    *,
    target_dataset_id: str,
    method: RankingMethod,
    measure: Measure,
    source_ids: list[str] | None = None,
    top_k: int | None = None,
    refine: Refine | None = None,
    calibration_id: str | None = None,
) -> tuple[Ranking, float]:
    """Rank (some of) the zoo for a target and add the result; returns it and the ms taken.

    With ``refine``, the first stage's top ``refine.top`` are re-ranked by a per-candidate
    measure (one forward pass of the target through each); the rest keep their order.
    Method ``learned`` re-scores P2L's ranking with the ranker learned from past fine-tunes
    (``app.services.learning``), or says why it kept P2L's. Every ranking says how well the
    zoo covers the target, and the expected gain over scratch of its top results.
    The ranking is flushed, not committed: it lands with the caller's transaction (the
    request's managed session, so a fine-tune refused after ranking keeps no ranking).
    """
    session, store, index, reference = ctx.session, ctx.store, ctx.index, ctx.reference
    # Named by id or name (app.services.handles): the ranking keeps the id.
    target_dataset_id = find_id(session, Dataset, target_dataset_id, "dataset")
    target = signature_for_dataset(session, store, reference, target_dataset_id)
    # The index caches the database: take in what other replicas changed meanwhile.
    catch_up(session, store, index, reference)
    excluded: list[dict[str, str]] = []
    if source_ids is not None:
        wanted = list(dict.fromkeys(ids_of(session, Source, source_ids, "source")))
        valid = [s for s in wanted if is_valid_id(s)]
        known = dict(
            session.execute(select(Source.id, Source.name).where(Source.id.in_(valid))).all()
        )
        if unknown := [s for s in wanted if s not in known]:
            raise InvalidInput(f"unknown sources: {', '.join(map(repr, unknown[:20]))}")
        rankable = [s for s in wanted if s in index]
        stale = [s for s in wanted if s not in index]
    else:
        # What this project may rank over: the shared zoo and its own sources (the
        # session is scoped; the index holds every project's).
        rankable = [s for s in session.scalars(select(Source.id)) if s in index]
        stale_rows = session.execute(
            select(Source.id, Source.name).where(
                Source.reference_sha256 != reference.weights_sha256
            )
        )
        known = dict(stale_rows.all())
        stale = list(known)
    excluded = [
        {
            "source_id": s,
            "name": known.get(s, ""),
            "reason": "signature computed with another reference network; "
            "`python -m app.zoo upgrade` re-signs it if its dataset is stored",
        }
        for s in stale
    ]

    state = learned_state(ctx)  # before the clock: it may wait for the bundled signatures
    started = time.perf_counter()
    first_stage_k = top_k if refine is None or top_k is None else max(top_k, refine.top)
    learned, p2l_rank = None, {}
    if method == "learned":
        # The learned ranker re-scores every source P2L scored; the cut comes after.
        scored = index.rank(target, "p2l", measure, params, source_ids=rankable)
        if not scored:
            learned = {**state.summary(False), "fallback": "no source could be ranked"}
        elif state.ranker.active:
            rescored = state.ranker.rank(target, [s.source_id for s in scored])
            p2l_rank = {s.source_id: s.rank for s in scored}
            order = sorted(scored, key=lambda s: -rescored.scores[s.source_id])  # stable
            scored = [
                s._replace(rank=rank, score=rescored.scores[s.source_id])
                for rank, s in enumerate(order, start=1)
            ]
            learned = state.summary(True, len(rescored.without_record))
        else:
            learned = state.summary(False)
        scored = scored[:first_stage_k]
    else:
        scored = index.rank(
            target, method, measure, params, source_ids=rankable, top_k=first_stage_k
        )
    elapsed_ms = (time.perf_counter() - started) * 1000

    # Each ranked source's name, and whether its counts were verified and it is shared (a
    # source deleted since the ranking: unnamed).
    described = {
        row.id: {"name": row.name, "image_counts": row.image_counts, "shared": row.shared}
        for row in session.execute(
            select(Source.id, Source.name, Source.image_counts, Source.shared).where(
                Source.id.in_([s.source_id for s in scored])
            )
        )
    }
    gone = {"name": "", "image_counts": "verified", "shared": False}
    ranking = Ranking(
        id=uuid.uuid4().hex,
        target_dataset_id=target_dataset_id,
        method=method,
        measure=measure,
        params={"lambda": params.lam, "eps": params.eps, "emd_gamma": params.emd_gamma},
        results=[
            {
                "rank": s.rank,
                "source_id": s.source_id,
                **described.get(s.source_id, gone),
                "score": s.score,
                "distance": s.distance,
                "similarity": s.similarity,
                "size_term": s.size_term,
                "num_images": s.num_images,
                **({"p2l_rank": p2l_rank[s.source_id]} if p2l_rank else {}),
            }
            for s in scored
        ],
        excluded=excluded,
        calibration_id=calibration_id,
        learned=learned,
        coverage=coverage_summary(ctx.session, state, target, rankable),
    )
    nearest = ranking.coverage["nearest_distance"] if ranking.coverage else None
    if refine is not None:
        dataset = get_by_id(session, Dataset, target_dataset_id, "dataset")
        ranking.results, ranking.refine = refine_results(ctx, dataset, ranking.results, refine)
        ranking.refine["first_stage_ms"] = elapsed_ms
        ranking.results = ranking.results[:top_k]
    if nearest is not None:
        with_gains(state, target, nearest, ranking.results)
    session.add(ranking)
    session.flush()
    return ranking, elapsed_ms


def refine_results(
    ctx: Context, dataset: Dataset, results: list[dict[str, Any]], refine: Refine
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The first stage's results with its top ``refine.top`` re-ranked by ``refine.method``
    (every result keeps its first-stage rank as ``first_stage_rank``), and what it cost."""
    session, store, settings, device = ctx.session, ctx.store, ctx.settings, ctx.reference.device
    started = time.perf_counter()
    shortlist = results[: refine.top]
    sources = {s.id: s for s in session.scalars(
        select(Source).where(Source.id.in_([r["source_id"] for r in shortlist])))}  # fmt: skip
    targets: dict[int, DatasetArrays] = {}  # by input size: decoded once each
    scored = []
    for result in shortlist:
        source = sources.get(result["source_id"])
        if source is None:  # deleted since the first stage: unscored, after the scored ones
            continue
        if source.input_size not in targets:
            targets[source.input_size] = dataset_arrays(
                store, dataset, source.input_size, settings.pixel_cache_max_bytes,
                processes=None if settings.decode_processes else False,
                dataset_exists=lambda: dataset_exists(session, dataset.id),
            )  # fmt: skip
        target = targets[source.input_size]
        spec = get_spec(source.architecture)
        model = load_model(source.architecture, source.num_classes, weights_path(store, source))
        features, probabilities = source_outputs(model, target.images, spec.mean, spec.std, device)
        del model
        score = transferability(refine.method, features, probabilities, target.labels)
        result["refine_score"] = score if math.isfinite(score) else None
        scored.append(result)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # Scored first (best first), then the shortlist's unscored, then the rest, in order.
    ranked_first = sorted(
        scored, key=lambda r: -r["refine_score"] if r["refine_score"] is not None else math.inf
    )
    taken = {id(r) for r in ranked_first}
    rest = [r for r in results if id(r) not in taken]
    ranked = [
        {**r, "rank": rank, "first_stage_rank": r["rank"]}
        for rank, r in enumerate(ranked_first + rest, start=1)
    ]
    cost = {
        "method": refine.method,
        "top": len(shortlist),
        "forward_passes": len(scored),
        "images_per_pass": next((len(t.labels) for t in targets.values()), 0),
        "seconds": time.perf_counter() - started,
    }
    return ranked, cost


def get_ranking(session: Session, ranking_id: str) -> Ranking:
    """The ranking with this id, or NotFound."""
    return get_by_id(session, Ranking, ranking_id, "ranking")


@dataclass(frozen=True)
class ListedRanking:
    """A stored ranking as a listing shows it: its row without the results (not loaded), the
    results' and exclusions' counts, and the first result."""

    ranking: Ranking
    num_results: int
    num_excluded: int
    top_source_id: str | None
    top_source_name: str | None
    top_score: float | None
    # With a source filter: the source's rank in the ranking.
    source_rank: int | None = None


def list_rankings(
    session: Session,
    page_size: int,
    page_token: str | None,
    target_dataset_id: str | None = None,
    source_id: str | None = None,
) -> tuple[list[ListedRanking], str | None]:
    """One page of the project's rankings (of one target, if given; that ranked one source,
    if given), newest first, and the next page's token.

    Both are named by id or name; a name names its row (NotFound if none does), an id is
    taken as given (one no ranking names lists nothing: rankings outlive their dataset).

    A ranking of the whole zoo holds one result per source (up to 10^5): the page loads
    none of them; the database counts them and reads the first.
    """
    filters = []
    if target_dataset_id:
        target_dataset_id = resolve_id(session, Dataset, target_dataset_id, "dataset")
        filters.append(Ranking.target_dataset_id == target_dataset_id)
    if source_id:
        source_id = resolve_id(session, Source, source_id, "source")
        filters.append(_names_source(source_id))
    where = and_(*filters) if filters else None
    skipped = (Ranking.results, Ranking.excluded)
    rows, next_token = paginate(session, Ranking, page_size, page_token, skipped, where)
    if not rows:
        return [], next_token
    # JSON paths and json_array_length read the same on SQLite and PostgreSQL.
    facts = {
        row.id: row
        for row in session.execute(
            select(
                Ranking.id,
                func.json_array_length(Ranking.results).label("num_results"),
                func.json_array_length(Ranking.excluded).label("num_excluded"),
                Ranking.results[(0, "source_id")].as_string().label("source_id"),
                Ranking.results[(0, "name")].as_string().label("name"),
                Ranking.results[(0, "score")].as_float().label("score"),
            ).where(Ranking.id.in_([row.id for row in rows]))
        )
    }
    listed = []
    for ranking in rows:
        fact = facts[ranking.id]
        listed.append(
            ListedRanking(
                ranking=ranking,
                num_results=int(fact.num_results),
                num_excluded=int(fact.num_excluded),
                top_source_id=fact.source_id,
                top_source_name=fact.name,
                top_score=fact.score,
            )
        )
    if source_id:
        listed = _with_source_rank(session, listed, source_id)
    return listed, next_token


def _names_source(source_id: str) -> ColumnElement[bool]:
    """Rankings whose results name the source: a text search of the stored JSON (the same
    on SQLite and PostgreSQL); an id is 32 hex digits, so a match is that source (the
    exact rank is read in Python). An id that cannot be one matches nothing."""
    if not is_valid_id(source_id):
        return false()
    return cast(Ranking.results, Text).like(f"%{source_id}%")


def _with_source_rank(
    session: Session, listed: list[ListedRanking], source_id: str
) -> list[ListedRanking]:
    """The page's rankings with the source's rank in each; one that names the id only
    elsewhere in its text (a name, say) is left out."""
    if not listed:
        return listed
    results: dict[str, list[dict[str, Any]]] = {
        row.id: row.results
        for row in session.execute(
            select(Ranking.id, Ranking.results).where(
                Ranking.id.in_([item.ranking.id for item in listed])
            )
        )
    }
    ranked = []
    for item in listed:
        rank = next(
            (
                r.get("rank")
                for r in results.get(item.ranking.id, [])
                if r.get("source_id") == source_id
            ),
            None,
        )
        if rank is not None:
            ranked.append(replace(item, source_rank=int(rank)))
    return ranked


def delete_ranking(session: Session, ranking_id: str) -> None:
    """Remove a stored ranking (jobs that name it keep their own record of the pick)."""
    session.delete(get_ranking(session, ranking_id))
    session.commit()


def prune_rankings(session: Session, older_than_days: float) -> int:
    """Delete the rankings (of every project) older than this many days (0: none); returns
    how many went. Jobs keep their own record of the pick."""
    if older_than_days <= 0:
        return 0
    cutoff = utcnow() - timedelta(days=older_than_days)
    done = session.execute(
        delete(Ranking).where(Ranking.created_at < cutoff).execution_options(**{ALL_PROJECTS: True})
    )
    session.commit()
    return int(getattr(done, "rowcount", 0) or 0)


def ranking_warnings(ranking: Ranking) -> list[str]:
    """Why a ranking ranks nothing, said to its reader (an empty list when it ranks some)."""
    if ranking.results:
        return []
    if ranking.excluded:
        return [
            f"no source could be ranked: all {len(ranking.excluded)} candidate(s) are "
            "excluded (see `excluded` for why)"
        ]
    return [
        "no source could be ranked: the zoo is empty; register one with POST /v1/sources, "
        "or start the service with P2L_IMPORT_BUNDLED_ZOO=true on an empty zoo to import "
        "the bundled sources"
    ]
