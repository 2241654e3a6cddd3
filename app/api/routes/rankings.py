"""Rankings: order the zoo for a target dataset by P2L or a baseline."""

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.api.deps import PAGE_PROBLEMS, ContextDep, PageSize, PageToken, RankingId, SessionDep
from app.models import Ranking
from app.schemas import Page, RankingOut, RankingRequest, RankingSummary
from app.services import rankings as service
from app.services.calibration import ranking_params
from app.zoo import plots

router = APIRouter(prefix="/v1/rankings", tags=["rankings"])


def ranking_out(ranking: Ranking, elapsed_ms: float | None = None) -> RankingOut:
    """Response view of a stored ranking."""
    return RankingOut(
        id=ranking.id,
        created_at=ranking.created_at,
        target_dataset_id=ranking.target_dataset_id,
        method=ranking.method,
        measure=ranking.measure,
        params=ranking.params,
        results=ranking.results,
        excluded=ranking.excluded,
        elapsed_ms=elapsed_ms,
        refine=ranking.refine,
        calibration_id=ranking.calibration_id,
        warnings=service.ranking_warnings(ranking),
        learned=ranking.learned,
        coverage=ranking.coverage,
    )


def ranking_summary(listed: service.ListedRanking) -> RankingSummary:
    """Listing view of a stored ranking (its results were not loaded)."""
    ranking = listed.ranking
    return RankingSummary(
        id=ranking.id,
        created_at=ranking.created_at,
        target_dataset_id=ranking.target_dataset_id,
        method=ranking.method,
        measure=ranking.measure,
        refine_method=ranking.refine["method"] if ranking.refine else None,
        calibration_id=ranking.calibration_id,
        num_results=listed.num_results,
        num_excluded=listed.num_excluded,
        top_source_id=listed.top_source_id,
        top_source_name=listed.top_source_name,
        top_score=listed.top_score,
        source_rank=listed.source_rank,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=RankingOut,
    summary="Rank the sources for a target dataset",
)
def create_ranking(ctx: ContextDep, request: RankingRequest, response: Response) -> RankingOut:
    """One vectorised scoring pass over the in-memory signature matrix; parts of every score.

    With `refine`, a second stage re-ranks the first's top `k` by LogME, LEEP, NCE or k-NN
    accuracy: one forward pass of the target through each of those `k` sources (a fraction
    of a second per source for compact networks at 32 px, seconds at 224 px; `refine` in
    the answer says what it cost).
    """
    params, measure, calibration_id = ranking_params(
        ctx, request.method, request.measure, request.lam
    )
    ranking, elapsed_ms = service.rank_sources(
        ctx,
        params,
        target_dataset_id=request.target_dataset_id,
        method=request.method,
        measure=measure,
        calibration_id=calibration_id,
        source_ids=request.source_ids,
        top_k=request.top_k,
        refine=service.Refine(request.refine.method, request.refine.top)
        if request.refine is not None
        else None,
    )
    response.headers["Location"] = f"/v1/rankings/{ranking.id}"
    return ranking_out(ranking, elapsed_ms)


@router.get(
    "",
    response_model=Page[RankingSummary],
    summary="List past rankings, newest first",
    responses=PAGE_PROBLEMS,
)
def list_rankings(
    session: SessionDep,
    page_size: PageSize = 50,
    page_token: PageToken = None,
    target_dataset_id: Annotated[
        str | None,
        Query(
            max_length=255,
            description="Only the rankings made for this dataset, by id or name (an id no "
            "ranking names, a deleted dataset's included, gives an empty page; a name no "
            "dataset has, a 404).",
        ),
    ] = None,
    source_id: Annotated[
        str | None,
        Query(
            max_length=255,
            description="Only the rankings that ranked this source, by id or name, each with "
            "`source_rank`: its position there (where a source ranked, over time; an id no "
            "ranking names gives an empty page, a name no source has a 404). A page may hold "
            "fewer items than page_size; follow next_page_token to the end.",
        ),
    ] = None,
) -> Page[RankingSummary]:
    """One page of the project's rankings, each without its results: method, measure, how
    many sources it ranked and which came first. The whole ranking is at
    `GET /v1/rankings/{ranking_id}`."""
    rows, next_token = service.list_rankings(
        session, page_size, page_token, target_dataset_id, source_id
    )
    return Page[RankingSummary](
        items=[ranking_summary(r) for r in rows], next_page_token=next_token
    )


@router.get("/{ranking_id}", response_model=RankingOut, summary="Get a ranking")
def get_ranking(session: SessionDep, ranking_id: RankingId) -> RankingOut:
    """A ranking as it was computed."""
    return ranking_out(service.get_ranking(session, ranking_id))


@router.get(
    "/{ranking_id}/plot.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "PNG image"}},
    summary="Bar chart of a ranking's score parts",
)
def plot_ranking(session: SessionDep, ranking_id: RankingId) -> Response:
    """-distance and size term per source, with the final score marked."""
    ranking = service.get_ranking(session, ranking_id)
    title = (
        f"{ranking.method} ({ranking.measure}, lambda={ranking.params['lambda']:g}) "
        f"for target {ranking.target_dataset_id[:8]}"
    )
    png = plots.ranking_plot(title, ranking.results, ranking.method)
    return Response(png, media_type="image/png")


@router.delete(
    "/{ranking_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a ranking",
)
def delete_ranking(session: SessionDep, ranking_id: RankingId) -> Response:
    """Jobs that were started from the ranking keep its pick in their params."""
    service.delete_ranking(session, ranking_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
