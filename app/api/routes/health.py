"""Liveness/readiness."""

from importlib.metadata import version

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import SessionDep
from app.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut, summary="Liveness and database readiness")
def health(session: SessionDep) -> JSONResponse:
    """200 when the database answers, 503 otherwise."""
    try:
        session.execute(text("SELECT 1"))
        database, status_code = "ok", 200
    except Exception as exc:
        database, status_code = f"unavailable: {type(exc).__name__}", 503
    body = HealthOut(
        status="ok" if status_code == 200 else "degraded",
        database=database,
        version=version("p2l-service"),
    )
    return JSONResponse(body.model_dump(), status_code=status_code)
