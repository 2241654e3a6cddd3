"""Ranking use cases: rank the zoo for a target dataset, store and read rankings."""

import time
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import InvalidInput
from app.models import Ranking, Source
from app.p2l.reference import ReferenceNetwork
from app.p2l.scoring import Measure, Method, ScoringParams, SignatureIndex
from app.pagination import get_by_id, is_valid_id
from app.store import ArtifactStore
from app.zoo.sources import catch_up, signature_for_dataset


def rank_sources(
    session: Session,
    store: ArtifactStore,
    index: SignatureIndex,
    reference: ReferenceNetwork,
    params: ScoringParams,
    *,
    target_dataset_id: str,
    method: Method,
    measure: Measure,
    source_ids: list[str] | None = None,
    top_k: int | None = None,
) -> tuple[Ranking, float]:
    """Rank (some of) the zoo for a target and add the result; returns it and the ms taken.

    The ranking is flushed, not committed: it lands with the caller's transaction (the
    request's managed session, so a fine-tune refused after ranking keeps no ranking).
    """
    target = signature_for_dataset(session, store, reference, target_dataset_id)
    # The index caches the database: take in what other replicas changed meanwhile.
    catch_up(session, store, index, reference)
    excluded: list[dict[str, str]] = []
    if source_ids is not None:
        wanted = list(dict.fromkeys(source_ids))
        valid = [s for s in wanted if is_valid_id(s)]
        known = dict(
            session.execute(select(Source.id, Source.name).where(Source.id.in_(valid))).all()
        )
        if unknown := [s for s in wanted if s not in known]:
            raise InvalidInput(f"unknown source ids: {', '.join(map(repr, unknown[:20]))}")
        rankable = [s for s in wanted if s in index]
        stale = [s for s in wanted if s not in index]
    else:
        rankable = None
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

    started = time.perf_counter()
    scored = index.rank(target, method, measure, params, source_ids=rankable, top_k=top_k)
    elapsed_ms = (time.perf_counter() - started) * 1000

    names = dict(
        session.execute(
            select(Source.id, Source.name).where(Source.id.in_([s.source_id for s in scored]))
        ).all()
    )
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
                "name": names.get(s.source_id, ""),
                "score": s.score,
                "distance": s.distance,
                "similarity": s.similarity,
                "size_term": s.size_term,
                "num_images": s.num_images,
            }
            for s in scored
        ],
        excluded=excluded,
    )
    session.add(ranking)
    session.flush()
    return ranking, elapsed_ms


def get_ranking(session: Session, ranking_id: str) -> Ranking:
    """The ranking with this id, or NotFound."""
    return get_by_id(session, Ranking, ranking_id, "ranking")


def delete_ranking(session: Session, ranking_id: str) -> None:
    """Remove a stored ranking (jobs that name it keep their own record of the pick)."""
    session.delete(get_ranking(session, ranking_id))
    session.commit()


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
