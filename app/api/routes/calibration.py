"""Calibration: the ranking parameters in force, and refitting them on finished fine-tunes."""

from fastapi import APIRouter, status

from app.api.deps import PAGE_PROBLEMS, ContextDep, PageSize, PageToken, SessionDep
from app.api.problems import problem_responses
from app.schemas import CalibrationOut, EvidenceOut, Page
from app.services import calibration as service

router = APIRouter(prefix="/v1/calibration", tags=["calibration"])


@router.get("", response_model=CalibrationOut, summary="The ranking parameters in force")
def get_calibration(ctx: ContextDep) -> CalibrationOut:
    """Measure and lambda in force (a refit's, or the bundled defaults), the evidence left by
    successful fine-tunes, and the mean regret on it of the parameters in force, of the
    defaults and of a refit (leave one target out)."""
    return CalibrationOut.model_validate(service.calibration_status(ctx))


@router.get(
    "/evidence",
    response_model=Page[EvidenceOut],
    summary="List the evidence of finished fine-tunes, newest first",
    responses=PAGE_PROBLEMS,
)
def list_evidence(
    session: SessionDep,
    page_size: PageSize = 50,
    page_token: PageToken = None,
) -> Page[EvidenceOut]:
    """One page of evidence rows: target, source, accuracy (and its split), schedule and the
    baseline's accuracy of each successful fine-tune, whatever the reference network."""
    rows, next_token = service.list_evidence(session, page_size, page_token)
    return Page[EvidenceOut](
        items=[EvidenceOut.model_validate(r) for r in rows], next_page_token=next_token
    )


@router.post(
    "/refit",
    status_code=status.HTTP_201_CREATED,
    response_model=CalibrationOut,
    responses=problem_responses(_409="No target has evidence from two or more sources yet."),
    summary="Refit measure and lambda on the evidence, and put them in force",
)
def refit_calibration(ctx: ContextDep) -> CalibrationOut:
    """Choose the measure and lambda with the lowest mean regret on the evidence, but keep
    the parameters in force unless refitting beats them leave one target out (never on a
    single usable target); later rankings use the result and record the calibration's id.
    409 while no target has evidence from two or more sources."""
    service.refit(ctx)
    return get_calibration(ctx)


@router.post(
    "/reset",
    status_code=status.HTTP_201_CREATED,
    response_model=CalibrationOut,
    summary="Put the bundled defaults back in force",
)
def reset_calibration(ctx: ContextDep) -> CalibrationOut:
    """Later rankings use the settings' measure and lambda again, and record this reset as
    their calibration; the evidence stays, and an automatic refit waits for a new target."""
    service.reset(ctx)
    return get_calibration(ctx)
